//! Group commit for the SQLite store: runs' new records and step records
//! from concurrent runs are written by one task, many in one transaction,
//! instead of one transaction each.
//!
//! Each caller still waits until its own write is committed, so the
//! durability of a step is unchanged (DESIGN.md: a step's record is
//! committed before anything downstream happens); only the cost is shared.
//! Writes in one batch belong to different runs (a run waits for each of its
//! writes before it makes the next), so they are independent. When a batch
//! fails (a duplicate run id, a step of an unknown run, a cancelled run), it
//! is rolled back and each write is done alone, so that each gets its own
//! answer.
//!
//! The writer makes its SQLite calls itself, on the runtime that drives the
//! runs, through rusqlite: on a connection of its own for a store on file,
//! which it opens itself (sqlx's pool opens its connections, each with a
//! thread of its own, only for the readers that need one), and for a store
//! in memory on the handle of the pool's one connection, which sqlx's own
//! thread for that connection then leaves alone (`lock_handle`). Sending
//! each statement to that thread and waiting for its answer cost two thread
//! wakes per write, more than the statements themselves when writes come
//! one at a time. A commit takes tens of microseconds in WAL mode with
//! `synchronous = NORMAL` (a write to the WAL, no sync), about what a
//! step's own work takes on that runtime. A one-step `sluice run` on a
//! store file thus makes no thread for SQLite at all.
//!
//! The writer keeps its connection for a store on file, so that SQLite's
//! page cache stays valid from one transaction to the next, and
//! checkpoints the WAL beside its writes rather than in them: SQLite's own
//! checkpoint runs inside the commit that crosses its threshold and holds up
//! every run waiting on that commit (a p99 of 150 ms under load). Instead, a
//! passive checkpoint on another connection copies the WAL while commits go
//! on; when it is done, the writer checkpoints once more between two
//! batches, which copies only what came since and completes, so that the
//! next commit starts the WAL again from its beginning (a checkpoint that
//! never catches up would let the WAL grow without end). When the writer
//! ends, it checkpoints only a WAL grown past [`WAL_LEFT`], and the
//! connections do not when they close: a short `sluice run` leaves its few
//! pages in the WAL for the next process rather than syncing twice to copy
//! them (see [`no_checkpoint_on_close`]). A store in memory
//! has one connection, which readers share: its writer takes it for each
//! batch and gives it back.

use crate::StoreError;
use crate::values::{Chunk, Known};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, params};
use sqlx::sqlite::{LockedSqliteHandle, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
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

/// How large a store file's WAL may be left when its writer ends (see
/// [`finish`]). Alternated with 128 KB, 256 KB and 1 MB (one-step `sluice
/// run`s, 400 each): the same within the noise; past it the next process
/// reads more of the WAL when it opens the file.
const WAL_LEFT: u64 = 512 * 1024;

/// Whether the WAL beside the database file `db` has grown past
/// [`WAL_LEFT`] (false for a store in memory, which has no WAL file).
pub(crate) fn wal_grown(db: &std::ffi::OsStr) -> bool {
    let mut wal = db.to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_LEFT)
}

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
    fn tell<E: std::fmt::Display>(&self, r: Result<(), E>) {
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

struct Pending {
    write: Write,
    /// The nodes of the write's large values (`values.rs`).
    values: Vec<Chunk>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

const INSERT_RUN: &str = "INSERT INTO runs (id, flow_id, status, trigger, input, state, next_step, steps, started_at, updated_at, flow_version, accountability, parent_run, item, output, error, error_step, ended_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

const INSERT_STEP: &str = "INSERT INTO run_steps (run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// A run's new position; a cancelled run keeps its status.
const MOVE_RUN: &str = "UPDATE runs SET status = ?2, state = ?3, next_step = ?4, output = ?5, error = ?6, error_step = ?7, ended_at = ?8, updated_at = ?9, steps = steps + ?10 WHERE id = ?1 AND status <> 'cancelled'";

const INSERT_WAIT: &str = "INSERT INTO waits (run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// rusqlite's view of the handle `locked` holds, which must be dropped
/// before `locked` (see the module doc).
fn raw(locked: &mut LockedSqliteHandle<'_>) -> rusqlite::Result<Connection> {
    // SAFETY: the handle is that of an open connection, on which sqlx's
    // thread makes no call while `locked` lives; the connection made does
    // not close it, and its callers drop it (its statements finalized)
    // before `locked`.
    unsafe { Connection::from_handle(locked.as_raw_handle().as_ptr()) }
}

/// Keep `conn` from checkpointing the WAL when it closes, which SQLite does
/// on the last connection to a file: that checkpoint syncs the WAL and the
/// database file, deletes the WAL, and the next process's first commit
/// makes it again and syncs its header and its folder (four syncs, about 1
/// ms of a one-step `sluice run`'s 5). The writer checkpoints instead (the
/// module doc, and [`finish`]).
pub(crate) async fn no_checkpoint_on_close(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    on_handle(conn, |db| {
        db.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        Ok(())
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

/// When a store file's WAL has grown past [`WAL_LEFT`], copy it into the
/// database and empty it on `conn`, trying again for at most `wait` while
/// readers, a writer or a checkpoint of this process or another are in
/// the way (a checkpoint under way refuses another at once); what they
/// hold is copied by a later checkpoint. A smaller WAL is left for the
/// next process, which reads it when it opens the file: less than the
/// syncs of a checkpoint (see [`no_checkpoint_on_close`]). `conn` waits on
/// no busy database afterwards: it is one that closes next.
pub(crate) async fn empty_grown_wal(
    conn: &mut SqliteConnection,
    wait: Duration,
) -> Result<(), StoreError> {
    let until = Instant::now() + wait;
    loop {
        let busy = on_handle(conn, empty_if_grown).await?;
        if !busy || Instant::now() >= until {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One try of [`empty_grown_wal`] on `db`: whether others were in the way.
fn empty_if_grown(db: &Connection) -> Result<bool, StoreError> {
    if !db.path().is_some_and(|p| wal_grown(p.as_ref())) {
        return Ok(false);
    }
    db.busy_timeout(Duration::ZERO)?;
    let busy: i64 = db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(busy != 0)
}

/// Settle SQLite's settings for the process before its first connection
/// (afterwards SQLite refuses them, and they stay as they were): no count
/// of the memory it holds, which takes a lock at every allocation and
/// which nothing here reads (opening a store file parses its schema in
/// some 2,700 allocations).
pub(crate) fn settle_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `SQLITE_CONFIG_MEMSTATUS` takes one int; SQLite answers
        // `SQLITE_MISUSE` (and changes nothing) once it has started.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                std::ffi::c_int::from(0_u8),
            );
        }
    });
}

/// What the writer of a store file opens: the file, and the settings of
/// the store's URL.
#[derive(Clone, Debug)]
pub(crate) struct WriterFile {
    pub path: PathBuf,
    pub synchronous: SqliteSynchronous,
    pub max_page_count: Option<u32>,
}

/// Open the writer's connection to a store file (made if missing), in WAL
/// mode, with foreign keys off (the writes check what the keys would: a
/// step record comes with its run's new position, which fails for a run
/// that is not there, and a wait is inserted only for a run found
/// waiting), and without SQLite's own checkpoints (see the module doc and
/// [`no_checkpoint_on_close`]).
pub(crate) fn open_writer(f: &WriterFile) -> Result<Connection, StoreError> {
    let db = Connection::open_with_flags(
        &f.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    db.set_prepared_statement_cache_capacity(32);
    let synchronous = match f.synchronous {
        SqliteSynchronous::Off => "OFF",
        SqliteSynchronous::Normal => "NORMAL",
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Extra => "EXTRA",
    };
    let mut pragmas = format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA wal_autocheckpoint = 0; PRAGMA foreign_keys = OFF;"
    );
    if let Some(n) = f.max_page_count {
        pragmas.push_str(&format!(" PRAGMA max_page_count = {n};"));
    }
    db.execute_batch(&pragmas)?;
    Ok(db)
}

/// Run `f` on the SQLite handle of `conn`, taken from sqlx's thread for
/// the time (see the module doc).
async fn on_handle<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut locked = conn.lock_handle().await?;
    let db = raw(&mut locked)?;
    let r = f(&db);
    drop(db);
    r
}

/// Whether `e` is SQLite's refusal of a duplicate key (`unique`) or of a
/// row whose foreign key points nowhere.
fn violates(e: &rusqlite::Error, unique: bool) -> bool {
    use rusqlite::ffi;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            if unique {
                matches!(
                    f.extended_code,
                    ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE
                )
            } else {
                f.extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY
            }
        }
        _ => false,
    }
}

/// A new run's record: as started, or (from a record) at its new position
/// `at` after `n` steps.
fn insert_run(
    db: &Connection,
    run: &CreateVals,
    at: Option<(&RunVals, i64)>,
) -> Result<(), StoreError> {
    let mut st = db.prepare_cached(INSERT_RUN)?;
    let r = match at {
        None => st.execute(params![
            run.id,
            run.flow_id,
            "running",
            run.trigger,
            run.input,
            run.input,
            run.next_step,
            0_i64,
            run.started_at,
            run.started_at,
            run.flow_version,
            run.accountability,
            run.parent_run,
            run.item,
            None::<&str>,
            None::<&str>,
            None::<&str>,
            None::<i64>,
        ]),
        Some((p, n)) => st.execute(params![
            run.id,
            run.flow_id,
            p.status,
            run.trigger,
            run.input,
            p.state,
            p.next_step,
            n,
            run.started_at,
            p.updated_at,
            run.flow_version,
            run.accountability,
            run.parent_run,
            run.item,
            p.output,
            p.error,
            p.error_step,
            p.ended_at,
        ]),
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) if violates(&e, true) => Err(StoreError::Conflict(run.id.clone())),
        Err(e) => Err(e.into()),
    }
}

/// A step record (of a run that is not there: refused where foreign keys
/// are checked, else by the run's move that comes with it).
fn insert_step(db: &Connection, v: &StepVals) -> Result<(), StoreError> {
    let r = db.prepare_cached(INSERT_STEP)?.execute(params![
        v.run_id,
        v.seq,
        v.step_key,
        v.kind,
        v.ok,
        v.options,
        v.input,
        v.result,
        v.output,
        v.error,
        v.blame,
        v.logs,
        v.started_at,
        v.ended_at,
    ]);
    match r {
        Ok(_) => Ok(()),
        Err(e) if violates(&e, false) => Err(StoreError::NoSuchRun(v.run_id.clone())),
        Err(e) => Err(e.into()),
    }
}

/// A run's new position after `n` more steps; a run the update misses is
/// an error unless it is cancelled (it keeps its status).
fn move_run(db: &Connection, v: &RunVals, n: i64) -> Result<(), StoreError> {
    let moved = db.prepare_cached(MOVE_RUN)?.execute(params![
        v.run_id,
        v.status,
        v.state,
        v.next_step,
        v.output,
        v.error,
        v.error_step,
        v.ended_at,
        v.updated_at,
        n,
    ])?;
    if moved == 1 || is(db, &v.run_id, "cancelled")? {
        return Ok(());
    }
    Err(StoreError::NoSuchRun(v.run_id.clone()))
}

/// Whether run `id` is there with `status`.
fn is(db: &Connection, id: &str, status: &str) -> Result<bool, StoreError> {
    let mut st = db.prepare_cached("SELECT 1 FROM runs WHERE id = ?1 AND status = ?2")?;
    Ok(st.exists(params![id, status])?)
}

/// Step records of one run and its new position (or, for a new run, its
/// record at that position).
fn record(db: &Connection, r: &RecordVals) -> Result<(), StoreError> {
    let n = i64::try_from(r.steps.len()).unwrap_or(i64::MAX);
    if let Some(run) = &r.create {
        insert_run(db, run, Some((&r.run, n)))?;
    }
    for s in &r.steps {
        insert_step(db, s)?;
    }
    if r.create.is_none() {
        move_run(db, &r.run, n)?;
    }
    Ok(())
}

/// Suspend a run (see [`crate::Store::suspend`]); a cancelled run is left
/// as it is, with no wait.
fn suspend(db: &Connection, v: &SuspendVals) -> Result<(), StoreError> {
    let w = &v.wait;
    match &v.record {
        Some(r) => record(db, r)?,
        None => {
            db.prepare_cached("UPDATE runs SET status = 'waiting', state = ?1, next_step = ?2, updated_at = ?3 WHERE id = ?4 AND status = 'running'")?
                .execute(params![v.state, w.step_key, crate::now_micros(), w.run_id])?;
        }
    }
    if !is(db, &w.run_id, "waiting")? {
        return Ok(());
    }
    db.prepare_cached(INSERT_WAIT)?.execute(params![
        w.run_id,
        w.flow_id,
        w.step_key,
        w.kind.as_str(),
        w.wake_at,
        w.event_type,
        w.source,
        v.correlation,
        w.since,
    ])?;
    Ok(())
}

/// The nodes of large values, each once per run.
fn values(db: &Connection, values: &[Chunk]) -> Result<(), StoreError> {
    for v in values {
        db.prepare_cached(
            "INSERT OR IGNORE INTO run_values (run_id, hash, body) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![v.run_id, &v.hash[..], v.body])?;
    }
    Ok(())
}

/// New runs with the nodes of their large values, on `conn` (in the
/// caller's transaction).
pub(crate) async fn create_runs(
    conn: &mut SqliteConnection,
    runs: &[(CreateVals, Vec<Chunk>)],
) -> Result<(), StoreError> {
    on_handle(conn, |db| {
        runs.iter().try_for_each(|(run, chunks)| {
            values(db, chunks)?;
            insert_run(db, run, None)
        })
    })
    .await
}

/// The nodes of large values, on `conn` (in the caller's transaction).
pub(crate) async fn insert_values(
    conn: &mut SqliteConnection,
    chunks: &[Chunk],
) -> Result<(), StoreError> {
    if chunks.is_empty() {
        return Ok(());
    }
    on_handle(conn, |db| values(db, chunks)).await
}

/// One write's statements.
fn statements(db: &Connection, p: &Pending) -> Result<(), StoreError> {
    values(db, &p.values)?;
    match &p.write {
        Write::Create(run) => insert_run(db, run, None),
        Write::Record(r) => record(db, r),
        Write::Suspend(s) => suspend(db, s),
        Write::Version(v) => {
            db.prepare_cached("INSERT INTO flow_versions (flow_id, version, source, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING")?
                .execute(params![v.flow_id, v.version, v.source, v.at])?;
            Ok(())
        }
    }
}

fn exec(db: &Connection, sql: &str) -> Result<(), StoreError> {
    db.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Run `writes` in one transaction on `db`; on any error, roll back.
fn in_transaction(db: &Connection, writes: &[&Pending]) -> Result<(), StoreError> {
    exec(db, "BEGIN IMMEDIATE")?;
    let r = writes
        .iter()
        .try_for_each(|p| statements(db, p))
        .and_then(|()| exec(db, "COMMIT"));
    if r.is_err() && !db.is_autocommit() {
        let _ = exec(db, "ROLLBACK");
    }
    r
}

/// Whether a connection that failed a write should be given up (anything
/// but an answer about the data written).
fn broken(e: &StoreError) -> bool {
    !matches!(e, StoreError::Conflict(_) | StoreError::NoSuchRun(_))
}

/// Write a batch in one transaction (each write alone when one fails, so
/// that each gets its own answer) and answer each; false when the
/// connection should be given up.
fn write_batch(db: &Connection, batch: &mut Vec<Pending>, known: &Known) -> bool {
    let mut healthy = true;
    let together = (batch.len() > 1).then(|| {
        let writes: Vec<&Pending> = batch.iter().collect();
        in_transaction(db, &writes)
    });
    if let Some(Err(e)) = &together {
        healthy &= !broken(e);
    }
    for p in batch.drain(..) {
        let r = match &together {
            Some(Ok(())) => Ok(()),
            _ => in_transaction(db, &[&p]),
        };
        match &r {
            Ok(()) => known.remember(&p.values),
            Err(e) => healthy &= !broken(e),
        }
        let _ = p.done.send(r);
    }
    healthy
}

/// Let the tasks that are ready run first, as long as that brings more
/// writes: those about to write join the batch.
async fn gather(batch: &mut Vec<Pending>, rx: &mut mpsc::UnboundedReceiver<Pending>) {
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
}

/// Answer every write of `batch` with `message` (no connection to write them).
fn unreachable(batch: &mut Vec<Pending>, message: &str) {
    for p in batch.drain(..) {
        let _ = p
            .done
            .send(Err(StoreError::Unreachable(message.to_owned())));
    }
}

/// The WAL's checkpoints of a store on file (see the module doc).
struct Checkpoints {
    pool: SqlitePool,
    state: Arc<AtomicU8>,
    failing: Arc<Failing>,
    at: Instant,
}

impl Checkpoints {
    /// Between two batches: finish a checkpoint that copied the WAL, or
    /// start one when it is time.
    fn tick(&mut self, db: &Connection) {
        match self.state.load(Ordering::Acquire) {
            COPIED => {
                // The rest, between two batches: it completes.
                let r = db.query_row(CHECKPOINT, [], |_| Ok(()));
                self.failing.tell(r);
                self.state.store(IDLE, Ordering::Release);
            }
            IDLE if self.at.elapsed() >= CHECKPOINT_EVERY => {
                self.at = Instant::now();
                checkpoint(&self.pool, &self.state, &self.failing);
            }
            _ => {}
        }
    }
}

/// Write `batch` on the SQLite handle of `conn` (the pool's one connection
/// of a store in memory); false when the connection should be given up.
async fn on_connection(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Pending>,
    known: &Known,
) -> bool {
    let mut locked = match conn.lock_handle().await {
        Ok(l) => l,
        Err(e) => {
            unreachable(batch, &e.to_string());
            return false;
        }
    };
    // Dropped before `locked` (declared after it).
    let db = match raw(&mut locked) {
        Ok(db) => db,
        Err(e) => {
            unreachable(batch, &e.to_string());
            return false;
        }
    };
    write_batch(&db, batch, known)
}

/// The writer of a store in memory: takes what is queued, writes it in one
/// transaction on the pool's connection, answers.
async fn memory_writer(
    pool: SqlitePool,
    known: Arc<Known>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        gather(&mut batch, &mut rx).await;
        match pool.acquire().await {
            Ok(mut conn) => {
                on_connection(&mut conn, &mut batch, &known).await;
            }
            // Every write of the batch waited on this one connection.
            Err(e) => unreachable(&mut batch, &e.to_string()),
        }
    }
}

/// The writer of a store file: takes what is queued, writes it in one
/// transaction on its own connection `db` (opened again from `file` when
/// it had to be given up), answers, and checkpoints the WAL between
/// batches (the module doc).
async fn file_writer(
    pool: SqlitePool,
    file: WriterFile,
    db: Connection,
    known: Arc<Known>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut held = Some(db);
    let mut checkpoints = Checkpoints {
        pool,
        state: Arc::new(AtomicU8::new(IDLE)),
        failing: Arc::new(Failing::default()),
        at: Instant::now(),
    };
    while let Some(first) = rx.recv().await {
        batch.push(first);
        gather(&mut batch, &mut rx).await;
        let db = match held.take() {
            Some(db) => db,
            None => match open_writer(&file) {
                Ok(db) => db,
                Err(e) => {
                    unreachable(&mut batch, &e.to_string());
                    continue;
                }
            },
        };
        if write_batch(&db, &mut batch, &known) {
            checkpoints.tick(&db);
            held = Some(db);
        }
    }
    if let Some(db) = held {
        // Its own checkpoint under way would refuse the last one at once.
        let waited = Instant::now();
        while checkpoints.state.load(Ordering::Acquire) == RUNNING
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A short `sluice run` does not wait on another process.
        checkpoints.failing.tell(empty_if_grown(&db).map(drop));
    }
}

/// The connection a store's writer writes on.
pub(crate) enum Writes {
    /// A store in memory: the pool's one connection, taken for each batch
    /// and given back (readers share it).
    Memory,
    /// A store file: a connection of the writer's own (see [`open_writer`]).
    File(WriterFile, Connection),
}

/// The queue of writes into one store; its task ends when the queue is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    tx: mpsc::UnboundedSender<Pending>,
    /// The writer's task, awaited by [`Group::close`].
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Group {
    /// Start the writer of `pool`, writing on `writes`; nodes it commits
    /// are remembered in `known`.
    pub(crate) fn start(pool: SqlitePool, writes: Writes, known: Arc<Known>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = match writes {
            Writes::Memory => tokio::spawn(memory_writer(pool, known, rx)),
            Writes::File(file, db) => tokio::spawn(file_writer(pool, file, db, known, rx)),
        };
        Self {
            tx,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Stop taking writes and wait until the writer has ended (its last
    /// writes committed, a grown WAL emptied, its connection closed), when
    /// no other holder of the queue can still write.
    pub(crate) async fn close(self) {
        let Self { tx, task } = self;
        drop(tx);
        // Another holder (a clone of this store) keeps the writer going.
        if Arc::strong_count(&task) > 1 {
            return;
        }
        let task = task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
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

#[cfg(test)]
mod tests {
    use crate::{NewRun, SqliteStore, Store};
    use serde_json::json;

    /// A store file's writer writes on a connection it opens itself: the
    /// writes of a run open no connection of sqlx's pool (each a thread),
    /// and what they wrote reads back once the store is closed and opened
    /// again.
    #[tokio::test]
    async fn a_store_files_writes_open_no_connection_of_the_pool() {
        let dir = std::env::temp_dir().join(format!("sluice-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp folder");
        let url = dir.join("store.db").display().to_string();
        // Made (its migrations run on the pool), then opened as usual.
        SqliteStore::open(&url)
            .await
            .expect("a new store")
            .close()
            .await;
        let store = SqliteStore::open(&url).await.expect("the store again");
        let run = NewRun {
            id: crate::new_run_id(),
            flow_id: "orders".into(),
            trigger: sluice_expr::to_val(&json!({"body": {"a": 1}})),
            input: sluice_expr::to_val(&json!({"a": 1})),
            next_step: None,
            started_at: crate::now_micros(),
            flow_version: None,
            accountability: json!({"user": "ada"}),
            parent: None,
        };
        store.create_run(&run).await.expect("the run is written");
        assert_eq!(store.pool.size(), 0, "a connection of the pool was opened");
        store.close().await;
        let store = SqliteStore::open(&url)
            .await
            .expect("the store a third time");
        let got = store.get_run(&run.id).await.expect("a read");
        assert_eq!(got.map(|r| r.summary.flow_id), Some("orders".to_owned()));
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
