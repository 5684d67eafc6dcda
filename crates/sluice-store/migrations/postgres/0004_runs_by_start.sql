-- The runs listing, newest first, unfiltered or by data: read in the
-- order of this index instead of sorting every run.
CREATE INDEX runs_by_start ON runs (started_at DESC, id DESC);
