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
);
CREATE INDEX runs_by_flow ON runs (flow_id, started_at DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC);

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
