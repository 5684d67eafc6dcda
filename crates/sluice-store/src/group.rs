//! Group commit for the SQLite store: runs' new records and step records
//! from concurrent runs are written by one task, many in one transaction,
//! instead of one transaction each.
//!
//! Each caller still waits until its own write is committed, so the
//! durability of a step is unchanged (DESIGN.md: a step's record is
//! committed before anything downstream happens); only the cost is shared.
//! Writes in one batch belong to different runs (a run waits for each of its
//! writes before it makes the next), so they are independent. When a batch
//! fails (a duplicate run id, a step of an unknown run), it is rolled back
//! and each write is done alone, so that each gets its own answer.

use crate::StoreError;
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

/// The most writes in one transaction.
const MAX_BATCH: usize = 128;

/// A new run, its values ready to bind.
#[derive(Debug)]
pub(crate) struct CreateVals {
    pub id: String,
    pub flow_id: String,
    pub trigger: String,
    pub input: String,
    pub next_step: Option<String>,
    pub started_at: i64,
    pub flow_version: Option<String>,
    pub accountability: String,
    pub parent_run: Option<String>,
    pub item: Option<i64>,
}

/// A step record and the run's new position, ready to bind.
#[derive(Debug)]
pub(crate) struct StepVals {
    pub run_id: String,
    pub seq: i64,
    pub step_key: String,
    pub kind: String,
    pub ok: bool,
    pub options: String,
    pub input: String,
    pub result: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub blame: Option<String>,
    pub logs: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub status: &'static str,
    pub state: String,
    pub next_step: Option<String>,
    pub run_output: Option<String>,
    pub run_error: Option<String>,
    pub error_step: Option<String>,
    pub run_ended_at: Option<i64>,
    pub updated_at: i64,
}

/// A run suspended: the failed attempt it records (if any, with the run's
/// new position as status `waiting`), or else its new position alone, and
/// its wait.
#[derive(Debug)]
pub(crate) struct SuspendVals {
    pub step: Option<StepVals>,
    pub state: String,
    pub wait: crate::Wait,
    pub correlation: String,
}

/// One write.
#[derive(Debug)]
pub(crate) enum Write {
    Create(Box<CreateVals>),
    Step(Box<StepVals>),
    Suspend(Box<SuspendVals>),
}

struct Pending {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A new run. (Statements are run one at a time, so that each has its
/// result checked.)
const INSERT_RUN: &str = "INSERT INTO runs (id, flow_id, status, trigger, input, state, next_step, steps, started_at, updated_at, flow_version, accountability, parent_run, item) VALUES (?1, ?2, 'running', ?3, ?4, ?4, ?5, 0, ?6, ?6, ?7, ?8, ?9, ?10)";

/// The step's record.
const INSERT_STEP: &str = "INSERT INTO run_steps (run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The run's new position; a cancelled run keeps its status.
const UPDATE_RUN: &str = "UPDATE runs SET status = ?, state = ?, next_step = ?, output = ?, error = ?, error_step = ?, ended_at = ?, updated_at = ?, steps = steps + 1 WHERE id = ? AND status <> 'cancelled'";

/// The step's record and the run's new position, on a connection inside a
/// transaction; a run that is gone (or that the update did not find while
/// not cancelled) is an error.
async fn step_statements(
    conn: &mut sqlx::SqliteConnection,
    v: &StepVals,
) -> Result<(), StoreError> {
    let r = sqlx::query(INSERT_STEP)
        .bind(&v.run_id)
        .bind(v.seq)
        .bind(&v.step_key)
        .bind(&v.kind)
        .bind(v.ok)
        .bind(&v.options)
        .bind(&v.input)
        .bind(&v.result)
        .bind(&v.output)
        .bind(&v.error)
        .bind(&v.blame)
        .bind(&v.logs)
        .bind(v.started_at)
        .bind(v.ended_at)
        .execute(&mut *conn)
        .await;
    match r {
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Err(StoreError::NoSuchRun(v.run_id.clone()));
        }
        r => r?,
    };
    let done = sqlx::query(UPDATE_RUN)
        .bind(v.status)
        .bind(&v.state)
        .bind(&v.next_step)
        .bind(&v.run_output)
        .bind(&v.run_error)
        .bind(&v.error_step)
        .bind(v.run_ended_at)
        .bind(v.updated_at)
        .bind(&v.run_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() != 1 {
        let cancelled: Option<(String,)> =
            sqlx::query_as("SELECT status FROM runs WHERE id = ? AND status = 'cancelled'")
                .bind(&v.run_id)
                .fetch_optional(&mut *conn)
                .await?;
        if cancelled.is_none() {
            return Err(StoreError::NoSuchRun(v.run_id.clone()));
        }
    }
    Ok(())
}

pub(crate) async fn create_statement(
    conn: &mut sqlx::SqliteConnection,
    v: &CreateVals,
) -> Result<(), StoreError> {
    let r = sqlx::query(INSERT_RUN)
        .bind(&v.id)
        .bind(&v.flow_id)
        .bind(&v.trigger)
        .bind(&v.input)
        .bind(&v.next_step)
        .bind(v.started_at)
        .bind(&v.flow_version)
        .bind(&v.accountability)
        .bind(&v.parent_run)
        .bind(v.item)
        .execute(&mut *conn)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::Conflict(v.id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Suspend a run (see [`crate::Store::suspend`]); a cancelled run is left
/// as it is, with no wait.
async fn suspend_statements(
    conn: &mut sqlx::SqliteConnection,
    v: &SuspendVals,
) -> Result<(), StoreError> {
    let w = &v.wait;
    match &v.step {
        Some(step) => step_statements(conn, step).await?,
        None => {
            sqlx::query("UPDATE runs SET status = 'waiting', state = ?, next_step = ?, updated_at = ? WHERE id = ? AND status = 'running'")
                .bind(&v.state)
                .bind(&w.step_key)
                .bind(crate::now_micros())
                .bind(&w.run_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    let waiting: Option<(String,)> =
        sqlx::query_as("SELECT status FROM runs WHERE id = ? AND status = 'waiting'")
            .bind(&w.run_id)
            .fetch_optional(&mut *conn)
            .await?;
    if waiting.is_none() {
        return Ok(());
    }
    sqlx::query("INSERT INTO waits (run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(&w.run_id)
        .bind(&w.flow_id)
        .bind(&w.step_key)
        .bind(w.kind.as_str())
        .bind(w.wake_at)
        .bind(&w.event_type)
        .bind(&w.source)
        .bind(&v.correlation)
        .bind(w.since)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn statements(conn: &mut sqlx::SqliteConnection, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Create(v) => create_statement(conn, v).await,
        Write::Step(v) => step_statements(conn, v).await,
        Write::Suspend(v) => suspend_statements(conn, v).await,
    }
}

/// Run `writes` in one transaction on one connection; on any error, roll back.
async fn in_transaction(pool: &SqlitePool, writes: &[&Write]) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    for w in writes {
        if let Err(e) = statements(&mut conn, w).await {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e.into());
    }
    Ok(())
}

/// Do one write alone, in its own transaction, with its own answer.
pub(crate) async fn write_one(pool: &SqlitePool, w: &Write) -> Result<(), StoreError> {
    in_transaction(pool, &[w]).await
}

async fn writer(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let together = if batch.len() == 1 {
            None
        } else {
            let writes: Vec<&Write> = batch.iter().map(|p| &p.write).collect();
            Some(in_transaction(&pool, &writes).await)
        };
        for p in batch.drain(..) {
            let r = match &together {
                Some(Ok(())) => Ok(()),
                // One failed (or the batch could not be written): each alone.
                _ => write_one(&pool, &p.write).await,
            };
            let _ = p.done.send(r);
        }
    }
}

/// The queue of writes into one store; its task ends when the queue is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Group {
    pub(crate) fn start(pool: SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool, rx));
        Self { tx }
    }

    /// Queue `write` and wait until it is committed.
    pub(crate) async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { write, done })
            .map_err(|_| StoreError::Stopped)?;
        wait.await.map_err(|_| StoreError::Stopped)?
    }
}
