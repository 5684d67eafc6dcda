-- API tokens: a name, a role, and the SHA-256 of the token (the token
-- itself is printed once, when it is made, and kept nowhere).
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
