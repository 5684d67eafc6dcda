-- The run of one item of a fan-out points at the run that emitted it.
ALTER TABLE runs ADD COLUMN parent_run TEXT;
ALTER TABLE runs ADD COLUMN item INTEGER;
CREATE INDEX runs_by_parent ON runs (parent_run, item);
