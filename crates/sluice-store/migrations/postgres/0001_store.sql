-- The store on PostgreSQL: the same tables as the SQLite store's
-- migrations build, in one step. Times are microseconds since the epoch;
-- documents are JSON text, as the SQLite store keeps them.
CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    flow_id            TEXT NOT NULL,
    status             TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    input              TEXT NOT NULL,
    state              TEXT NOT NULL,
    output             TEXT,
    next_step          TEXT,
    error              TEXT,
    error_step         TEXT,
    steps              BIGINT NOT NULL DEFAULT 0,
    started_at         BIGINT NOT NULL,
    ended_at           BIGINT,
    updated_at         BIGINT NOT NULL,
    flow_version       TEXT,
    accountability     TEXT,
    parent_run         TEXT,
    item               BIGINT,
    recoveries         BIGINT NOT NULL DEFAULT 0,
    recovered_at_steps BIGINT
);
CREATE INDEX runs_by_flow ON runs (flow_id, started_at DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC);
CREATE INDEX runs_by_parent ON runs (parent_run, item) WHERE parent_run IS NOT NULL;

CREATE TABLE run_steps (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    seq         BIGINT NOT NULL,
    step_key    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    ok          BOOLEAN NOT NULL,
    options     TEXT NOT NULL,
    input       TEXT NOT NULL,
    result      TEXT,
    output      TEXT,
    error       TEXT,
    blame       TEXT,
    logs        TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE flow_versions (
    flow_id     TEXT NOT NULL,
    version     TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE schedule_fires (
    flow_id     TEXT NOT NULL,
    fire_at     BIGINT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    PRIMARY KEY (flow_id, fire_at)
);

CREATE TABLE waits (
    run_id       TEXT PRIMARY KEY REFERENCES runs (id),
    flow_id      TEXT NOT NULL,
    step_key     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    wake_at      BIGINT,
    event_type   TEXT,
    event_source TEXT,
    correlation  TEXT NOT NULL,
    since        BIGINT NOT NULL
);
CREATE INDEX waits_by_wake ON waits (wake_at);
CREATE INDEX waits_by_event ON waits (event_type);

CREATE TABLE poll_snapshots (
    flow_id     TEXT PRIMARY KEY,
    seq         BIGINT NOT NULL,
    snapshot    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE events (
    source       TEXT NOT NULL,
    id           TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    answer       TEXT NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX events_received_at ON events (received_at);

CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    expires_at  BIGINT
);

CREATE TABLE audit (
    seq      BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
    "user"   TEXT,
    role     TEXT,
    ip       TEXT,
    action   TEXT NOT NULL,
    target   TEXT,
    details  TEXT NOT NULL
);
CREATE INDEX audit_target ON audit (target, seq);
