//! Where an import stands: its row of `sluice_imports` in the database it
//! writes to, committed with each chunk's writes.

use super::*;

impl Batch {
    /// Create the bookkeeping table when missing and read import `key`'s position.
    pub async fn position(&self, key: &str) -> Result<Option<Position>, ActionError> {
        let db = &self.db;
        db.run(
            &Stmt {
                sql: "CREATE TABLE IF NOT EXISTS sluice_imports (\
                      import_key VARCHAR(255) NOT NULL PRIMARY KEY, \
                      source TEXT NOT NULL, \
                      file_hash VARCHAR(64) NOT NULL, \
                      next_record BIGINT NOT NULL, \
                      finished BIGINT NOT NULL, \
                      updated_at VARCHAR(40) NOT NULL)"
                    .into(),
                params: Vec::new(),
            },
            false,
        )
        .await?;
        let p = |n| db.backend.placeholder(n);
        let rows = db
            .rows(&Stmt {
                sql: format!(
                    "SELECT file_hash, next_record, finished FROM sluice_imports WHERE import_key = {}",
                    p(1)
                ),
                params: vec![Value::from(key)],
            })
            .await?;
        Ok(rows.into_iter().next().map(|r| Position {
            file_hash: r
                .get("file_hash")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            next_record: r.get("next_record").and_then(Value::as_u64).unwrap_or(0),
            finished: r.get("finished").and_then(Value::as_i64).unwrap_or(0) != 0,
        }))
    }

    /// Start import `key` from the first record (forgetting any earlier one).
    pub async fn start(&self, key: &str, source: &str, hash: &str) -> Result<(), ActionError> {
        let db = &self.db;
        let p = |n| db.backend.placeholder(n);
        let mut tx = db.begin().await?;
        tx.run(
            &Stmt {
                sql: format!("DELETE FROM sluice_imports WHERE import_key = {}", p(1)),
                params: vec![Value::from(key)],
            },
            false,
        )
        .await?;
        tx.run(
            &Stmt {
                sql: format!(
                    "INSERT INTO sluice_imports (import_key, source, file_hash, next_record, finished, updated_at) \
                     VALUES ({}, {}, {}, 0, 0, {})",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ),
                params: vec![
                    Value::from(key),
                    Value::from(source),
                    Value::from(hash),
                    Value::from(now_text()),
                ],
            },
            false,
        )
        .await?;
        tx.commit().await
    }

    /// Commit chunk `chunk`'s writes (if any) together with the import's new
    /// position.
    pub async fn commit_chunk(
        &self,
        key: &str,
        chunk: Option<u64>,
        next_record: u64,
        finished: bool,
    ) -> Result<(), ActionError> {
        let tx = match chunk {
            Some(c) => self.take_tx(c)?,
            None => None,
        };
        // What the chunk had left to send (see `write_group`'s `carry`) is
        // not sent: the commit ends the savepoints, and the lock timeout a
        // follower set stays, since the position row's update waits for no
        // lock (the chunk before has committed, and no one else writes this
        // import's row). But for a refused write's rollback: a transaction
        // in error would take the position row's update for an error, and
        // roll back whole at the commit.
        let ended = async {
            let tx = match tx {
                Some((mut tx, carry)) => {
                    if carry.starts_with(UNDO) {
                        tx.raw(carry.trim_end_matches([';', ' '])).await?;
                    }
                    Some(tx)
                }
                None => None,
            };
            self.end_chunk(tx, key, next_record, finished).await
        }
        .await;
        if let Some(c) = chunk {
            locked(&self.open)?.remove(&c);
            self.end_stage(c);
        }
        ended?;
        // The patch failures of records committed now are told (those of a
        // chunk written meanwhile stay).
        if let Ok(mut m) = self.failed_patches.lock() {
            m.retain(|record, _| *record > next_record);
        }
        Ok(())
    }

    /// Record the import's position in `tx` (a new transaction: `None`) and commit.
    pub(super) async fn end_chunk(
        &self,
        tx: Option<Tx>,
        key: &str,
        next_record: u64,
        finished: bool,
    ) -> Result<(), ActionError> {
        let mut tx = match tx {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        let p = |n| self.db.backend.placeholder(n);
        tx.run(
            &Stmt {
                sql: format!(
                    "UPDATE sluice_imports SET next_record = {}, finished = {}, updated_at = {} WHERE import_key = {}",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ),
                params: vec![
                    Value::from(next_record),
                    Value::from(i64::from(finished)),
                    Value::from(now_text()),
                    Value::from(key),
                ],
            },
            false,
        )
        .await?;
        tx.commit().await
    }
}
