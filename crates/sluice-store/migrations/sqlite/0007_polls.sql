-- The snapshot of each flow's poll trigger (SEMANTICS.md section 6), with
-- a sequence number: a poll advances it from the number it read, together
-- with the runs it starts, so no page starts runs twice, across restarts
-- and processes sharing the store.
CREATE TABLE poll_snapshots (
    flow_id     TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    snapshot    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
