-- Large values of a run, each kept once (see values.rs): a node of a
-- value's JSON text, LZ4-compressed, named by the SHA-256 of its bytes.
CREATE TABLE run_values (
    run_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;
