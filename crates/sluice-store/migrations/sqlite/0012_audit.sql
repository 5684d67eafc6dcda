-- What people did through the API and the command line: who cancelled,
-- resumed, retried or started a run, reloaded the flows, made or revoked a
-- token. Rows are only ever added.
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
