//! The PostgreSQL store's writer: the runs' records written together, as
//! the SQLite store's are. Writes that arrive while a transaction is under
//! way wait for it and then go together in the next one, so that many runs
//! under way share few commits. A batch that fails is rolled back whole and
//! done again write by write, so that each write gets its own answer and
//! one bad write takes no other down.

use crate::scrub::{json, opt_text};
use crate::values::{Chunk, Encoder, Known};
use crate::{NewRun, RunUpdate, StepRecord, StoreError};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most writes in one transaction.
const MOST: usize = 256;

/// One write: a new run, or steps of one run and its new position (with
/// the run itself when it is new).
pub(crate) enum PgWrite {
    Create(Box<NewRun>),
    Record(Box<PgRecord>),
}

/// Steps of one run and its new position (with the run itself when new).
pub(crate) struct PgRecord {
    pub(crate) new: Option<NewRun>,
    pub(crate) run_id: String,
    pub(crate) steps: Vec<StepRecord>,
    pub(crate) run: RunUpdate,
}

struct Pending {
    write: PgWrite,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle to the writer task (which ends when every handle is gone).
#[derive(Clone, Debug)]
pub(crate) struct PgGroup {
    tx: mpsc::UnboundedSender<Pending>,
}

/// The process that writes: new runs are its, and it moves only runs it
/// holds (see postgres.rs).
pub(crate) type Owner = Arc<str>;

impl PgGroup {
    /// Nodes of large values it commits are remembered in `known`.
    pub(crate) fn start(pool: PgPool, known: Arc<Known>, owner: Owner) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool, known, owner, rx));
        Self { tx }
    }

    /// Write `write` in the next transaction; its own outcome.
    pub(crate) async fn write(&self, write: PgWrite) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending { write, done })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The statements of one write; the nodes of its large values are added
/// to `values`.
async fn statements(
    conn: &mut PgConnection,
    w: &PgWrite,
    known: &Known,
    owner: &str,
    values: &mut Vec<Chunk>,
    written: &mut Vec<Chunk>,
) -> Result<(), StoreError> {
    match w {
        PgWrite::Create(run) => {
            let mut enc = Encoder::new(&run.id, known);
            insert_run(conn, run, None, owner, &mut enc).await?;
            values.append(&mut enc.chunks);
        }
        PgWrite::Record(r) => match &r.new {
            Some(new) => {
                let mut enc = Encoder::new(&r.run_id, known);
                let n = i64::try_from(r.steps.len()).unwrap_or(i64::MAX);
                insert_run(conn, new, Some((&r.run, n)), owner, &mut enc).await?;
                insert_steps(conn, &r.steps, &mut enc).await?;
                values.append(&mut enc.chunks);
            }
            None => written.extend(record_moving(conn, r, owner, known).await?),
        },
    }
    Ok(())
}

/// The nodes of large values, each once per run.
pub(crate) async fn insert_values(
    conn: &mut PgConnection,
    values: &[Chunk],
) -> Result<(), StoreError> {
    for v in values {
        sqlx::query(
            "INSERT INTO run_values (run_id, hash, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&v.run_id)
        .bind(&v.hash[..])
        .bind(&v.body)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `writes` in one transaction.
async fn together(
    pool: &PgPool,
    known: &Known,
    owner: &str,
    writes: &[&PgWrite],
) -> Result<(), StoreError> {
    // One run's steps and position alone: one statement, no transaction
    // around it (one round trip instead of four).
    if let [PgWrite::Record(r)] = writes
        && r.new.is_none()
    {
        let mut conn = pool.acquire().await?;
        let written = record_moving(&mut conn, r, owner, known).await?;
        known.remember(&written);
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let (mut values, mut written) = (Vec::new(), Vec::new());
    for w in writes {
        statements(&mut tx, w, known, owner, &mut values, &mut written).await?;
    }
    insert_values(&mut tx, &values).await?;
    tx.commit().await?;
    known.remember(&values);
    known.remember(&written);
    Ok(())
}

async fn writer(
    pool: PgPool,
    known: Arc<Known>,
    owner: Owner,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MOST {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let writes: Vec<&PgWrite> = batch.iter().map(|p| &p.write).collect();
        let result = together(&pool, &known, &owner, &writes).await;
        match result {
            Ok(()) => {
                for p in batch {
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(p) = batch.pop() {
                    let _ = p.done.send(Err(e));
                }
            }
            Err(_) => {
                for p in batch {
                    let r = together(&pool, &known, &owner, &[&p.write]).await;
                    let _ = p.done.send(r);
                }
            }
        }
    }
}

/// A new run, held by `owner`: as started, or (with `at`) already at a
/// position after `n` steps.
pub(crate) async fn insert_run(
    conn: &mut PgConnection,
    run: &NewRun,
    at: Option<(&RunUpdate, i64)>,
    owner: &str,
    enc: &mut Encoder<'_>,
) -> Result<(), StoreError> {
    let input = enc.val(&run.input);
    let (status, state, next, steps, updated, output, error, error_step, ended) = match at {
        None => (
            "running",
            input.clone(),
            run.next_step.clone(),
            0,
            run.started_at,
            None,
            None,
            None,
            None,
        ),
        Some((u, n)) => (
            u.status.as_str(),
            enc.val(&u.state),
            u.next_step.clone(),
            n,
            crate::now_micros(),
            enc.opt_val(u.output.as_ref()),
            opt_text(&u.error),
            u.error_step.clone(),
            u.ended_at,
        ),
    };
    let done = sqlx::query(
        "INSERT INTO runs (id, flow_id, status, trigger, input, state, next_step, steps, started_at, updated_at, flow_version, accountability, parent_run, item, output, error, error_step, ended_at, lease_owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(&run.id)
    .bind(&run.flow_id)
    .bind(status)
    .bind(enc.val(&run.trigger))
    .bind(&input)
    .bind(state)
    .bind(next)
    .bind(steps)
    .bind(run.started_at)
    .bind(updated)
    .bind(&run.flow_version)
    .bind(json(&run.accountability))
    .bind(run.parent.as_ref().map(|(p, _)| p.as_str()))
    .bind(run.parent.as_ref().map(|(_, i)| *i))
    .bind(output)
    .bind(error)
    .bind(error_step)
    .bind(ended)
    .bind(owner)
    .execute(&mut *conn)
    .await;
    match done {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::Conflict(run.id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// A step's record as the columns of its row.
struct StepRow {
    run_id: String,
    seq: i64,
    step_key: String,
    kind: String,
    ok: bool,
    options: String,
    input: String,
    result: Option<String>,
    output: Option<String>,
    error: Option<String>,
    blame: Option<String>,
    logs: String,
    started_at: i64,
    ended_at: i64,
}

impl StepRow {
    fn of(s: &StepRecord, enc: &mut Encoder<'_>) -> Self {
        Self {
            run_id: s.run_id.clone(),
            seq: s.seq,
            step_key: s.step_key.clone(),
            kind: s.kind.clone(),
            ok: s.ok,
            options: enc.val(&s.options),
            input: enc.val(&s.input),
            result: enc.opt_val(s.result.as_ref()),
            output: enc.opt_val(s.output.as_ref()),
            error: opt_text(&s.error),
            blame: s.blame.clone(),
            logs: json(&Value::from(s.logs.clone())),
            started_at: s.started_at,
            ended_at: s.ended_at,
        }
    }

    /// Bind the columns, in order, to `q`.
    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.run_id)
            .bind(self.seq)
            .bind(self.step_key)
            .bind(self.kind)
            .bind(self.ok)
            .bind(self.options)
            .bind(self.input)
            .bind(self.result)
            .bind(self.output)
            .bind(self.error)
            .bind(self.blame)
            .bind(self.logs)
            .bind(self.started_at)
            .bind(self.ended_at)
    }
}

/// Steps' records as columns (one array per column), for one statement
/// that inserts them all (`UNNEST`).
#[derive(Default)]
struct StepColumns {
    run_id: Vec<String>,
    seq: Vec<i64>,
    step_key: Vec<String>,
    kind: Vec<String>,
    ok: Vec<bool>,
    options: Vec<String>,
    input: Vec<String>,
    result: Vec<Option<String>>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    blame: Vec<Option<String>>,
    logs: Vec<String>,
    started_at: Vec<i64>,
    ended_at: Vec<i64>,
}

impl StepColumns {
    fn of(steps: &[StepRecord], enc: &mut Encoder<'_>) -> Self {
        let mut c = Self::default();
        for s in steps {
            let r = StepRow::of(s, enc);
            c.run_id.push(r.run_id);
            c.seq.push(r.seq);
            c.step_key.push(r.step_key);
            c.kind.push(r.kind);
            c.ok.push(r.ok);
            c.options.push(r.options);
            c.input.push(r.input);
            c.result.push(r.result);
            c.output.push(r.output);
            c.error.push(r.error);
            c.blame.push(r.blame);
            c.logs.push(r.logs);
            c.started_at.push(r.started_at);
            c.ended_at.push(r.ended_at);
        }
        c
    }

    /// Bind the columns, in order, to `q`.
    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.run_id)
            .bind(self.seq)
            .bind(self.step_key)
            .bind(self.kind)
            .bind(self.ok)
            .bind(self.options)
            .bind(self.input)
            .bind(self.result)
            .bind(self.output)
            .bind(self.error)
            .bind(self.blame)
            .bind(self.logs)
            .bind(self.started_at)
            .bind(self.ended_at)
    }
}

/// The steps' columns from parameters `$1` to `$14`, as rows.
macro_rules! unnest_steps {
    () => {
        "SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::BIGINT[], $14::BIGINT[])"
    };
}

/// The columns of a step's record.
macro_rules! step_columns {
    () => {
        "run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at"
    };
}

/// Steps' records, in one statement (a row of values for one step, which
/// PostgreSQL plans for less than arrays).
pub(crate) async fn insert_steps(
    conn: &mut PgConnection,
    steps: &[StepRecord],
    enc: &mut Encoder<'_>,
) -> Result<(), StoreError> {
    let Some(first) = steps.first() else {
        return Ok(());
    };
    let done = if let [s] = steps {
        let q = sqlx::query(concat!(
            "INSERT INTO run_steps (",
            step_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ));
        StepRow::of(s, enc).bind(q).execute(&mut *conn).await
    } else {
        let q = sqlx::query(concat!(
            "INSERT INTO run_steps (",
            step_columns!(),
            ") ",
            unnest_steps!()
        ));
        StepColumns::of(steps, enc)
            .bind(q)
            .execute(&mut *conn)
            .await
    };
    match done {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::NoSuchRun(first.run_id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Steps of a run `owner` holds and the run's new position after them, as
/// one statement (atomic without a transaction of its own), with the nodes
/// of their large values: the steps and nodes are recorded when the run
/// moves, or when it was cancelled (it keeps its status); nothing is when another
/// process holds it ([`StoreError::LeaseLost`]) or there is no such run.
/// The nodes written, to remember once committed.
pub(crate) async fn record_moving(
    conn: &mut PgConnection,
    r: &PgRecord,
    owner: &str,
    known: &Known,
) -> Result<Vec<Chunk>, StoreError> {
    let mut enc = Encoder::new(&r.run_id, known);
    let steps = StepColumns::of(&r.steps, &mut enc);
    let u = &r.run;
    let state = enc.val(&u.state);
    let output = enc.opt_val(u.output.as_ref());
    let chunks = std::mem::take(&mut enc.chunks);
    let n = i64::try_from(r.steps.len()).unwrap_or(i64::MAX);
    let q = sqlx::query(concat!(
        "WITH moved AS (UPDATE runs SET status = $16, state = $17, next_step = $18, output = $19, error = $20, error_step = $21, ended_at = $22, updated_at = $23, steps = steps + $24 ",
        "WHERE id = $15 AND status <> 'cancelled' AND lease_owner = $25 RETURNING 1), ",
        "cancelled AS (SELECT 1 FROM runs WHERE id = $15 AND status = 'cancelled'), ",
        "stepped AS (INSERT INTO run_steps (",
        step_columns!(),
        ") ",
        unnest_steps!(),
        " WHERE EXISTS (SELECT 1 FROM moved) OR EXISTS (SELECT 1 FROM cancelled) RETURNING 1), ",
        "valued AS (INSERT INTO run_values (run_id, hash, body) SELECT * FROM UNNEST($26::TEXT[], $27::BYTEA[], $28::BYTEA[]) ",
        "WHERE EXISTS (SELECT 1 FROM moved) OR EXISTS (SELECT 1 FROM cancelled) ON CONFLICT DO NOTHING RETURNING 1) ",
        "SELECT (SELECT COUNT(*) FROM moved) + (SELECT COUNT(*) FROM cancelled) AS done"
    ));
    let done: i64 = steps
        .bind(q)
        .bind(&r.run_id)
        .bind(u.status.as_str())
        .bind(state)
        .bind(&u.next_step)
        .bind(output)
        .bind(opt_text(&u.error))
        .bind(&u.error_step)
        .bind(u.ended_at)
        .bind(crate::now_micros())
        .bind(n)
        .bind(owner)
        .bind(chunks.iter().map(|c| c.run_id.clone()).collect::<Vec<_>>())
        .bind(chunks.iter().map(|c| c.hash.to_vec()).collect::<Vec<_>>())
        .bind(chunks.iter().map(|c| c.body.clone()).collect::<Vec<_>>())
        .fetch_one(&mut *conn)
        .await?
        .try_get("done")?;
    if done == 0 {
        held_elsewhere(conn, &r.run_id).await?;
    }
    Ok(chunks)
}

/// Why a write fenced by its run's owner moved nothing: `Ok` for a
/// cancelled run (which keeps its status), else no such run or
/// [`StoreError::LeaseLost`].
pub(crate) async fn held_elsewhere(
    conn: &mut PgConnection,
    run_id: &str,
) -> Result<(), StoreError> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, lease_owner FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?;
    match row {
        None => Err(StoreError::NoSuchRun(run_id.to_owned())),
        Some((status, _)) if status == "cancelled" => Ok(()),
        Some((_, owner)) => Err(StoreError::LeaseLost {
            run: run_id.to_owned(),
            owner: owner.unwrap_or_else(|| "(none)".to_owned()),
        }),
    }
}
