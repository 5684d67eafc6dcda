-- What woke a suspended run (its wait's kind and start, and the event that
-- ended an event wait), kept with the claim that moved it back to running,
-- so that a run stopped before its step was recorded continues from that
-- wake instead of waiting again; valid while `steps` is still
-- `woken_at_steps`.
ALTER TABLE runs ADD COLUMN woken TEXT;
ALTER TABLE runs ADD COLUMN woken_at_steps INTEGER;
