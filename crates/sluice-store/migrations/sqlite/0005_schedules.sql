-- One row per fire of a flow's schedule: the primary key is what keeps a
-- schedule from firing twice for the same time, across restarts.
CREATE TABLE schedule_fires (
    flow_id     TEXT NOT NULL,
    fire_at     INTEGER NOT NULL,
    claimed_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, fire_at)
);
