-- The SQLite store's tables as its migrations leave them, made in one
-- script for a new in-memory store (altering tables costs SQLite a reading
-- of the whole schema each time). Written by the test
-- `sqlite::tests::the_schema_is_what_the_migrations_make`: run it with
-- SLUICE_BLESS=1 after adding a migration.

CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    flow_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    input       TEXT NOT NULL,
    state       TEXT NOT NULL,
    output      TEXT,
    next_step   TEXT,
    error       TEXT,
    error_step  TEXT,
    steps       INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    updated_at  INTEGER NOT NULL
, flow_version TEXT, accountability TEXT, parent_run TEXT, item INTEGER, recoveries INTEGER NOT NULL DEFAULT 0, recovered_at_steps INTEGER, woken TEXT, woken_at_steps INTEGER);

CREATE INDEX runs_by_flow ON runs (flow_id, started_at DESC);

CREATE TABLE run_steps (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    seq         INTEGER NOT NULL,
    step_key    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    ok          INTEGER NOT NULL,
    options     TEXT NOT NULL,
    input       TEXT NOT NULL,
    result      TEXT,
    output      TEXT,
    error       TEXT,
    blame       TEXT,
    logs        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE flow_versions (
    flow_id     TEXT NOT NULL,
    version     TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE schedule_fires (
    flow_id     TEXT NOT NULL,
    fire_at     INTEGER NOT NULL,
    claimed_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, fire_at)
);

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

CREATE TABLE poll_snapshots (
    flow_id     TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    snapshot    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE events (
    source       TEXT NOT NULL,
    id           TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    answer       TEXT NOT NULL,
    PRIMARY KEY (source, id)
);

CREATE INDEX events_received_at ON events (received_at);

CREATE INDEX runs_by_parent ON runs (parent_run, item) WHERE parent_run IS NOT NULL;

CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
, expires_at INTEGER);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    user TEXT,
    role TEXT,
    ip TEXT,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL
);

CREATE INDEX audit_target ON audit (target, seq);

CREATE TABLE run_values (
    run_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;

CREATE INDEX runs_by_start ON runs (started_at DESC, id DESC);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    recipient TEXT,
    recipient_role TEXT,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    run_id TEXT,
    step_key TEXT
);

CREATE INDEX notifications_by_time ON notifications (at DESC);

CREATE TABLE notification_reads (
    id TEXT NOT NULL,
    reader TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (id, reader)
);

CREATE INDEX runs_by_status ON runs (status, started_at DESC, id DESC) WHERE status <> 'succeeded';

