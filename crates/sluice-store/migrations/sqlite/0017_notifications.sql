-- Notifications sent by `notify` steps: to a token's user, or to every
-- token of a role or above. The id is the step attempt's idempotency key,
-- so a step run again after a crash sends nothing twice. Who has read one
-- is kept per reader.
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
