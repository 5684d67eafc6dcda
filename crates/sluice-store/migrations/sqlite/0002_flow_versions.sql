-- The exact flow file each run was started with, so that a run can be
-- resumed with the flow it ran (or knowingly with a fixed one).
CREATE TABLE flow_versions (
    flow_id     TEXT NOT NULL,
    version     TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, version)
);
ALTER TABLE runs ADD COLUMN flow_version TEXT;
