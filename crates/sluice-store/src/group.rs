//! Group commit for the SQLite store: runs' new records and step records
//! from concurrent runs are written by one task, many in one transaction,
//! instead of one transaction each.
//!
//! Each caller still waits until its own write is committed, so the
//! durability of a step is unchanged (DESIGN.md: a step's record is
//! committed before anything downstream happens); only the cost is shared.
//! Writes in one batch belong to different runs (a run waits for each of its
//! writes before it makes the next), so they are independent, and a batch
//! is written with a few multi-row statements (every new run, then every
//! step record, then every run's new position) rather than a few statements
//! per write: each statement is a round trip to sqlx's SQLite thread. When
//! a batch fails (a duplicate run id, a step of an unknown run, a cancelled
//! run), it is rolled back and each write is done alone, so that each gets
//! its own answer. A write done alone (the usual case with few clients)
//! goes as one multi-statement command, `BEGIN IMMEDIATE` to `COMMIT`, or
//! two when it moves a run (the commit waits on whether the run was there).
//!
//! The writer keeps one connection of its own for a store on file, so that
//! SQLite's page cache stays valid from one transaction to the next, and
//! checkpoints the WAL beside its writes rather than in them: SQLite's own
//! checkpoint runs inside the commit that crosses its threshold and holds up
//! every run waiting on that commit (a p99 of 150 ms under load). Instead, a
//! passive checkpoint on another connection copies the WAL while commits go
//! on; when it is done, the writer checkpoints once more between two
//! batches, which copies only what came since and completes, so that the
//! next commit starts the WAL again from its beginning (a checkpoint that
//! never catches up would let the WAL grow without end).

use crate::StoreError;
use crate::values::{Chunk, Known};
use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The most writes in one transaction.
const MAX_BATCH: usize = 128;

/// How often the writer starts a checkpoint of the WAL (while it writes).
/// Measured with the webhook benchmark: 30 ms costs more CPU per run, 250 ms
/// and 1 s cost more CPU and a longer pause for the finishing checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The background checkpoint's state (see the module doc).
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const COPIED: u8 = 2;

const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// Copy what the WAL holds into the database on a connection of the pool,
/// without holding up the writer; `state` goes to [`COPIED`] when done.
fn checkpoint(pool: &SqlitePool, state: &Arc<AtomicU8>, failing: &Arc<Failing>) {
    state.store(RUNNING, Ordering::Release);
    let (pool, state, failing) = (pool.clone(), state.clone(), failing.clone());
    tokio::spawn(async move {
        let r = sqlx::query(CHECKPOINT).execute(&pool).await;
        let next = if r.is_ok() { COPIED } else { IDLE };
        failing.tell(r.map(drop));
        state.store(next, Ordering::Release);
    });
}

/// Whether the WAL's checkpoints fail (on a full disk, say): the first
/// failure is told, and the first success after it, not every attempt in
/// between (one every [`CHECKPOINT_EVERY`] while writes go on).
#[derive(Default)]
struct Failing(std::sync::atomic::AtomicBool);

impl Failing {
    fn tell(&self, r: Result<(), sqlx::Error>) {
        match r {
            Ok(()) => {
                if self.0.swap(false, Ordering::AcqRel) {
                    eprintln!("sluice: the store's WAL checkpoints work again");
                }
            }
            Err(e) => {
                if !self.0.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "sluice: the store's WAL checkpoint failed (it is tried again while writes go on): {e}"
                    );
                }
            }
        }
    }
}

/// How many times the writer lets ready tasks run before it writes, while
/// that brings more writes. Each round costs a trip through tokio's run
/// queue; with 16 clients, four rounds gather about all their writes.
const GATHER_ROUNDS: usize = 8;

/// The most rows in one statement (at most 18 values each, far below
/// SQLite's limit on bound values); a batch needs a statement per chunk.
const CHUNK: usize = 32;

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

/// A step record, ready to bind.
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
}

/// A run's new position, ready to bind.
#[derive(Debug)]
pub(crate) struct RunVals {
    pub run_id: String,
    pub status: &'static str,
    pub state: String,
    pub next_step: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub error_step: Option<String>,
    pub ended_at: Option<i64>,
    pub updated_at: i64,
}

/// Step records of one run and its new position; with `create`, the run is
/// new and its record is written at that position at once.
#[derive(Debug)]
pub(crate) struct RecordVals {
    pub create: Option<CreateVals>,
    pub steps: Vec<StepVals>,
    pub run: RunVals,
}

/// A run suspended: the failed attempt it records (if any, with the run's
/// new position as status `waiting`), or else its new position alone, and
/// its wait.
#[derive(Debug)]
pub(crate) struct SuspendVals {
    pub record: Option<RecordVals>,
    pub state: String,
    pub wait: crate::Wait,
    pub correlation: String,
}

/// A flow's version to keep (its source), if it is not kept already.
#[derive(Debug)]
pub(crate) struct VersionVals {
    pub flow_id: String,
    pub version: String,
    pub source: String,
    pub at: i64,
}

/// One write.
#[derive(Debug)]
pub(crate) enum Write {
    Create(Box<CreateVals>),
    Record(Box<RecordVals>),
    Suspend(Box<SuspendVals>),
    Version(Box<VersionVals>),
}

/// Keep a flow's version (one statement, which commits by itself outside
/// a transaction).
async fn version_statement(conn: &mut SqliteConnection, v: &VersionVals) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO flow_versions (flow_id, version, source, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
        .bind(&v.flow_id)
        .bind(&v.version)
        .bind(&v.source)
        .bind(v.at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

struct Pending {
    write: Write,
    /// The nodes of the write's large values (`values.rs`).
    values: Vec<Chunk>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The columns of a new run's record.
const RUN_COLUMNS: &str = "id, flow_id, status, trigger, input, state, next_step, steps, started_at, updated_at, flow_version, accountability, parent_run, item, output, error, error_step, ended_at";

/// The columns of a step's record.
const STEP_COLUMNS: &str = "run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at";

/// The runs' new positions, from a table of values (column1 the run's id);
/// a cancelled run keeps its status. After `UPDATE` and its conflict clause.
const MOVE_RUNS: &str = " runs SET status = v.column2, state = v.column3, next_step = v.column4, output = v.column5, error = v.column6, error_step = v.column7, ended_at = v.column8, updated_at = v.column9, steps = runs.steps + v.column10 FROM (VALUES ";
const MOVE_RUNS_END: &str = ") AS v WHERE runs.id = v.column1 AND runs.status <> 'cancelled'";

/// The three multi-row statements, by the number of rows (1 to [`CHUNK`]).
#[derive(Clone, Copy)]
enum Rows {
    Runs,
    Steps,
    Moves,
}

/// The text of a multi-row statement of `n` rows (built once per size, so
/// that sqlx's statement cache keeps each prepared).
///
/// A statement of several rows says `OR ROLLBACK`: SQLite would otherwise
/// keep a statement journal (a copy of every page the statement touches,
/// so that a failing row undoes only its statement), while a failing batch
/// is rolled back whole anyway and done again write by write. One row needs
/// no statement journal, and keeps the default so that a caller's own
/// transaction survives its failure.
fn rows_sql(kind: Rows, n: usize) -> &'static str {
    // Each text is made when first needed (a short run needs one or two).
    static TEXTS: [[OnceLock<String>; CHUNK]; 3] =
        [const { [const { OnceLock::new() }; CHUNK] }; 3];
    let n = n.clamp(1, CHUNK);
    TEXTS[kind as usize][n - 1].get_or_init(|| {
        let or = if n == 1 { "" } else { " OR ROLLBACK" };
        let (head, cols, tail) = match kind {
            Rows::Runs => (
                format!("INSERT{or} INTO runs ({RUN_COLUMNS}) VALUES "),
                18,
                "",
            ),
            Rows::Steps => (
                format!("INSERT{or} INTO run_steps ({STEP_COLUMNS}) VALUES "),
                14,
                "",
            ),
            Rows::Moves => (format!("UPDATE{or}{MOVE_RUNS}"), 10, MOVE_RUNS_END),
        };
        let row = format!("({})", vec!["?"; cols].join(", "));
        format!("{head}{}{tail}", vec![row.as_str(); n].join(", "))
    })
}

/// A new run's record: as started, or (from a record) at its new position.
struct NewRow<'a> {
    run: &'a CreateVals,
    at: Option<(&'a RunVals, i64)>,
}

/// The writes of a transaction, sorted into the three statements.
#[derive(Default)]
struct Sorted<'a> {
    runs: Vec<NewRow<'a>>,
    steps: Vec<&'a StepVals>,
    moves: Vec<(&'a RunVals, i64)>,
}

impl<'a> Sorted<'a> {
    fn add(&mut self, r: &'a RecordVals) {
        let n = i64::try_from(r.steps.len()).unwrap_or(i64::MAX);
        match &r.create {
            Some(run) => self.runs.push(NewRow {
                run,
                at: Some((&r.run, n)),
            }),
            None => self.moves.push((&r.run, n)),
        }
        self.steps.extend(r.steps.iter());
    }

    /// Write them: new runs first, then steps (whose runs now exist), then
    /// the positions.
    async fn write(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        for chunk in self.runs.chunks(CHUNK) {
            insert_runs(conn, chunk).await?;
        }
        for chunk in self.steps.chunks(CHUNK) {
            insert_steps(conn, chunk).await?;
        }
        for chunk in self.moves.chunks(CHUNK) {
            move_runs(conn, chunk).await?;
        }
        Ok(())
    }
}

/// A statement on the writer's connection, its values being bound.
type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

async fn insert_runs(conn: &mut SqliteConnection, rows: &[NewRow<'_>]) -> Result<(), StoreError> {
    let q = bind_runs(sqlx::query(rows_sql(Rows::Runs, rows.len())), rows);
    q.execute(&mut *conn)
        .await
        .map(drop)
        .map_err(|e| refused(e, rows.first(), &[]))
}

/// What a refused write means: a run that is there already, the steps of
/// a run that is not (when checked), or a fault of the store.
fn refused(e: sqlx::Error, run: Option<&NewRow<'_>>, steps: &[&StepVals]) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        if let Some(r) = run.filter(|_| d.is_unique_violation()) {
            return StoreError::Conflict(r.run.id.clone());
        }
        if let Some(s) = steps.first().filter(|_| d.is_foreign_key_violation()) {
            return StoreError::NoSuchRun(s.run_id.clone());
        }
    }
    e.into()
}

/// Bind the values of new runs' rows.
fn bind_runs<'q>(mut q: Query<'q>, rows: &[NewRow<'_>]) -> Query<'q> {
    for NewRow { run, at } in rows {
        q = q.bind(&run.id).bind(&run.flow_id);
        q = match at {
            None => q
                .bind("running")
                .bind(&run.trigger)
                .bind(&run.input)
                .bind(&run.input)
                .bind(&run.next_step)
                .bind(0_i64)
                .bind(run.started_at)
                .bind(run.started_at),
            Some((p, n)) => q
                .bind(p.status)
                .bind(&run.trigger)
                .bind(&run.input)
                .bind(&p.state)
                .bind(&p.next_step)
                .bind(*n)
                .bind(run.started_at)
                .bind(p.updated_at),
        };
        q = q
            .bind(&run.flow_version)
            .bind(&run.accountability)
            .bind(&run.parent_run)
            .bind(run.item);
        q = match at {
            None => q
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<i64>),
            Some((p, _)) => q
                .bind(&p.output)
                .bind(&p.error)
                .bind(&p.error_step)
                .bind(p.ended_at),
        };
    }
    q
}

async fn insert_steps(conn: &mut SqliteConnection, rows: &[&StepVals]) -> Result<(), StoreError> {
    let q = bind_steps(sqlx::query(rows_sql(Rows::Steps, rows.len())), rows);
    // The step of a run that does not exist (alone, the run is known).
    q.execute(&mut *conn)
        .await
        .map(drop)
        .map_err(|e| refused(e, None, rows))
}

/// Bind the values of step records' rows.
fn bind_steps<'q>(mut q: Query<'q>, rows: &[&StepVals]) -> Query<'q> {
    for v in rows {
        q = q
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
            .bind(v.ended_at);
    }
    q
}

/// The runs' new positions. A run the update misses is an error unless it
/// is one run and cancelled; with several, the batch is then done write by
/// write to tell which.
async fn move_runs(
    conn: &mut SqliteConnection,
    rows: &[(&RunVals, i64)],
) -> Result<(), StoreError> {
    let q = bind_moves(sqlx::query(rows_sql(Rows::Moves, rows.len())), rows);
    let done = q.execute(&mut *conn).await?;
    if done.rows_affected() == rows.len() as u64 {
        return Ok(());
    }
    missed(conn, rows).await
}

/// Bind the values of runs' new positions.
fn bind_moves<'q>(mut q: Query<'q>, rows: &[(&RunVals, i64)]) -> Query<'q> {
    for (v, n) in rows {
        q = q
            .bind(&v.run_id)
            .bind(v.status)
            .bind(&v.state)
            .bind(&v.next_step)
            .bind(&v.output)
            .bind(&v.error)
            .bind(&v.error_step)
            .bind(v.ended_at)
            .bind(v.updated_at)
            .bind(*n);
    }
    q
}

/// An update of runs' positions missed a run: fine for one cancelled run
/// (it keeps its status), else the run is not there.
async fn missed(conn: &mut SqliteConnection, rows: &[(&RunVals, i64)]) -> Result<(), StoreError> {
    let first = &rows[0].0.run_id;
    if rows.len() == 1 {
        let cancelled: Option<(String,)> =
            sqlx::query_as("SELECT status FROM runs WHERE id = ? AND status = 'cancelled'")
                .bind(first)
                .fetch_optional(&mut *conn)
                .await?;
        if cancelled.is_some() {
            return Ok(());
        }
    }
    Err(StoreError::NoSuchRun(first.clone()))
}

/// A new run, alone (in the caller's transaction).
pub(crate) async fn create_statement(
    conn: &mut SqliteConnection,
    v: &CreateVals,
) -> Result<(), StoreError> {
    insert_runs(conn, &[NewRow { run: v, at: None }]).await
}

/// Suspend a run (see [`crate::Store::suspend`]); a cancelled run is left
/// as it is, with no wait.
async fn suspend_statements(
    conn: &mut SqliteConnection,
    v: &SuspendVals,
) -> Result<(), StoreError> {
    let w = &v.wait;
    match &v.record {
        Some(record) => {
            let mut s = Sorted::default();
            s.add(record);
            s.write(conn).await?;
        }
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

/// The nodes of large values, each once per run.
pub(crate) async fn insert_values(
    conn: &mut SqliteConnection,
    values: &[Chunk],
) -> Result<(), StoreError> {
    for v in values {
        sqlx::query("INSERT OR IGNORE INTO run_values (run_id, hash, body) VALUES (?, ?, ?)")
            .bind(&v.run_id)
            .bind(&v.hash[..])
            .bind(&v.body)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every write's statements, in one go.
async fn statements(conn: &mut SqliteConnection, writes: &[&Pending]) -> Result<(), StoreError> {
    let mut sorted = Sorted::default();
    let mut suspends = Vec::new();
    for p in writes {
        insert_values(conn, &p.values).await?;
    }
    for w in writes.iter().map(|p| &p.write) {
        match w {
            Write::Create(run) => sorted.runs.push(NewRow { run, at: None }),
            Write::Record(r) => sorted.add(r),
            Write::Suspend(s) => suspends.push(s),
            Write::Version(v) => version_statement(conn, v).await?,
        }
    }
    sorted.write(conn).await?;
    for s in suspends {
        suspend_statements(conn, s).await?;
    }
    Ok(())
}

/// Run `writes` in one transaction on `conn`; on any error, roll back.
async fn in_transaction(
    conn: &mut SqliteConnection,
    writes: &[&Pending],
) -> Result<(), StoreError> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    if let Err(e) = statements(conn, writes).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e);
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e.into());
    }
    Ok(())
}

/// The command of a write alone: a new run (`run`, at most one), `steps`
/// step records (at most [`CHUNK`]) and, when `moving`, a run's new
/// position, which returns the run it moved and leaves the commit to the
/// caller. Made once per shape, when first needed.
fn alone_sql(run: bool, steps: usize, moving: bool) -> &'static str {
    static TEXTS: [[[OnceLock<String>; 2]; CHUNK + 1]; 2] =
        [const { [const { [const { OnceLock::new() }; 2] }; CHUNK + 1] }; 2];
    let steps = steps.min(CHUNK);
    TEXTS[usize::from(run)][steps][usize::from(moving)].get_or_init(|| {
        let mut sql = String::from("BEGIN IMMEDIATE;\n");
        if run {
            sql.push_str(rows_sql(Rows::Runs, 1));
            sql.push_str(";\n");
        }
        if steps > 0 {
            sql.push_str(rows_sql(Rows::Steps, steps));
            sql.push_str(";\n");
        }
        if moving {
            sql.push_str(rows_sql(Rows::Moves, 1));
            sql.push_str(" RETURNING runs.id");
        } else {
            sql.push_str("COMMIT");
        }
        sql
    })
}

/// One write alone, in as few commands to SQLite's thread as it allows:
/// each command is a round trip between two threads, which costs more than
/// the statements themselves when writes come one at a time. A new run,
/// with or without its first steps, is written and committed in one
/// command; steps of a run under way with its new position in one (which
/// tells whether the run was there to move), then the commit. `None`: a
/// write this does not take (large values, a suspension, more steps than
/// one statement holds), for [`in_transaction`].
async fn alone(conn: &mut SqliteConnection, p: &Pending) -> Option<Result<(), StoreError>> {
    let mut s = Sorted::default();
    match &p.write {
        Write::Create(run) => s.runs.push(NewRow { run, at: None }),
        Write::Record(r) => s.add(r),
        Write::Suspend(_) => return None,
        Write::Version(v) => return Some(version_statement(conn, v).await),
    }
    if !p.values.is_empty() || s.steps.len() > CHUNK {
        return None;
    }
    let moving = !s.moves.is_empty();
    let q = sqlx::query(alone_sql(!s.runs.is_empty(), s.steps.len(), moving));
    let q = bind_moves(bind_steps(bind_runs(q, &s.runs), &s.steps), &s.moves);
    let moved = match q.fetch_all(&mut *conn).await {
        Ok(rows) => rows.len(),
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Some(Err(refused(e, s.runs.first(), &s.steps)));
        }
    };
    if !moving {
        return Some(Ok(()));
    }
    let end = async {
        if moved != s.moves.len() {
            missed(conn, &s.moves).await?;
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
    };
    let r = end.await;
    if r.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    Some(r)
}

/// Whether a connection that failed a write should be given up (anything
/// but an answer about the data written).
fn broken(e: &StoreError) -> bool {
    !matches!(e, StoreError::Conflict(_) | StoreError::NoSuchRun(_))
}

/// Make a connection of the pool the writer's own: closed when given up
/// rather than returned to the pool, and with foreign keys off. The writes
/// check what the keys would: a step record comes with its run's new
/// position, which fails for a run that is not there, and a wait is
/// inserted only for a run found waiting. Checked keys would make SQLite
/// keep a statement journal for every multi-row insert of step records.
async fn own(conn: &mut PoolConnection<Sqlite>) {
    conn.close_on_drop();
    if let Err(e) = sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut **conn)
        .await
    {
        eprintln!("sluice: the store's writer keeps foreign keys checked: {e}");
    }
}

/// The writer: takes what is queued, writes it in one transaction, answers.
async fn writer(
    pool: SqlitePool,
    first: Option<PoolConnection<Sqlite>>,
    known: Arc<Known>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let keep = first.is_some();
    let mut held = first;
    if let Some(c) = &mut held {
        own(c).await;
    }
    let state = Arc::new(AtomicU8::new(IDLE));
    let failing = Arc::new(Failing::default());
    let mut checkpointed = Instant::now();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Let the tasks that are ready run first, as long as that brings
        // more writes: those about to write join this batch.
        for _ in 0..GATHER_ROUNDS {
            let before = batch.len();
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if batch.len() == before {
                break;
            }
        }
        let mut conn = match held.take() {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(mut c) => {
                    if keep {
                        own(&mut c).await;
                    }
                    c
                }
                Err(e) => {
                    // Every write of the batch waited on this one connection.
                    let message = e.to_string();
                    for p in batch.drain(..) {
                        let _ = p.done.send(Err(StoreError::Unreachable(message.clone())));
                    }
                    continue;
                }
            },
        };
        let mut healthy = true;
        let together = if batch.len() == 1 {
            None
        } else {
            let writes: Vec<&Pending> = batch.iter().collect();
            let r = in_transaction(&mut conn, &writes).await;
            healthy &= r.as_ref().err().is_none_or(|e| !broken(e));
            Some(r)
        };
        for p in batch.drain(..) {
            let r = match &together {
                Some(Ok(())) => Ok(()),
                // One failed (or the batch could not be written): each alone.
                _ => {
                    let r = match alone(&mut conn, &p).await {
                        Some(r) => r,
                        None => in_transaction(&mut conn, &[&p]).await,
                    };
                    healthy &= r.as_ref().err().is_none_or(|e| !broken(e));
                    r
                }
            };
            if r.is_ok() {
                known.remember(&p.values);
            }
            let _ = p.done.send(r);
        }
        if keep && healthy {
            match state.load(Ordering::Acquire) {
                COPIED => {
                    // The rest, between two batches: it completes.
                    let r = sqlx::query(CHECKPOINT).execute(&mut *conn).await;
                    failing.tell(r.map(drop));
                    state.store(IDLE, Ordering::Release);
                }
                IDLE if checkpointed.elapsed() >= CHECKPOINT_EVERY => {
                    checkpointed = Instant::now();
                    checkpoint(&pool, &state, &failing);
                }
                _ => {}
            }
            held = Some(conn);
        }
    }
}

/// The queue of writes into one store; its task ends when the queue is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Group {
    /// Start the writer; `keep`: hold one connection of the pool for it
    /// (not for a store in memory, whose pool has one connection).
    /// Nodes it commits are remembered in `known`.
    /// Start the writer of `pool`. `first`: the connection a file store's
    /// writer keeps for itself (`None`: an in-memory store's writer takes
    /// the pool's one connection for each batch and gives it back).
    pub(crate) fn start(
        pool: SqlitePool,
        first: Option<PoolConnection<Sqlite>>,
        known: Arc<Known>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool, first, known, rx));
        Self { tx }
    }

    /// Queue `write` (with the nodes of its large values) and wait until
    /// it is committed.
    pub(crate) async fn write(&self, write: Write, values: Vec<Chunk>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                write,
                values,
                done,
            })
            .map_err(|_| StoreError::Stopped)?;
        wait.await.map_err(|_| StoreError::Stopped)?
    }
}
