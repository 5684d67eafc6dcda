-- A run suspended at a step (a sleep, a retry's backoff, a wait for an
-- event) has one row here until it is woken; claiming the row (deleting it)
-- is what lets exactly one process wake the run.
CREATE TABLE waits (
    run_id       TEXT PRIMARY KEY REFERENCES runs (id),
    flow_id      TEXT NOT NULL,
    step_key     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    wake_at      INTEGER,
    event_type   TEXT,
    event_source TEXT,
    correlation  TEXT NOT NULL,
    since        INTEGER NOT NULL
);
CREATE INDEX waits_by_wake ON waits (wake_at);
CREATE INDEX waits_by_event ON waits (event_type);
