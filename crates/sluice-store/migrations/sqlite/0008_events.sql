-- CloudEvents taken, by source and id (which together name an event), with
-- the answer given and when: a sender's retry of an event already taken
-- starts nothing again. Kept for a week (older ones are dropped as new ones
-- arrive).
CREATE TABLE events (
    source       TEXT NOT NULL,
    id           TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    answer       TEXT NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX events_received_at ON events (received_at);
