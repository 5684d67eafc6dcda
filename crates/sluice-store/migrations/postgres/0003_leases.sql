-- Processes that share the store, and their leases on runs. A process
-- renews `alive_until` (by the database's clock) while it lives; a running
-- run is held by its `lease_owner`, and a run whose owner is not alive may
-- be taken over by another process. A poll trigger is polled by its owner.
CREATE TABLE processes (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    alive_until  BIGINT NOT NULL
);

ALTER TABLE runs ADD COLUMN lease_owner TEXT;
CREATE INDEX runs_running_by_owner ON runs (lease_owner, started_at) WHERE status = 'running';

CREATE TABLE poll_owners (
    flow_id  TEXT PRIMARY KEY,
    owner    TEXT NOT NULL
);

-- What woke a suspended run (see the SQLite store's migration 15).
ALTER TABLE runs ADD COLUMN woken TEXT;
ALTER TABLE runs ADD COLUMN woken_at_steps BIGINT;
