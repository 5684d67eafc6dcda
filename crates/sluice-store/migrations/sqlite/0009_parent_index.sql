-- Only the runs of fan-out items have a parent: top-level runs (nearly
-- all) no longer add an entry to this index with every run.
DROP INDEX runs_by_parent;
CREATE INDEX runs_by_parent ON runs (parent_run, item) WHERE parent_run IS NOT NULL;
