-- How many times in a row a running run was continued after the process
-- that drove it stopped, at the same step (`steps` recorded then): a run
-- whose step crashes the process is not continued for ever.
ALTER TABLE runs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN recovered_at_steps INTEGER;
