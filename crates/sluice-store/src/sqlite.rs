//! The embedded store: one SQLite file (or memory), WAL journal.
//!
//! Durability: the journal is WAL with `synchronous = NORMAL`, so a committed
//! step survives a crash or `kill -9` of the process; a power failure may lose
//! the last commits (those not yet checkpointed: up to the last 512 KB of
//! them after short `sluice run`s). Add `?synchronous=full` to the URL to
//! sync every commit. The WAL is checkpointed into the database ten times a
//! second while runs are written, mostly by a passive checkpoint that does
//! not hold up commits, and when the store closes or settles (a server
//! stopping) if it has grown past 512 KB; not when a connection closes (see
//! `group.rs`).

use crate::group::{
    CreateVals, Group, RecordVals, RunVals, StepVals, SuspendVals, VersionVals, Write, WriterFile,
    Writes, create_runs,
};
use crate::rows;
use crate::values::{Chunk, Encoder, Known, Loaded};
use crate::{
    ApiToken, AuditEntry, FlowStats, NewRun, Notification, Reader, RunDetail, RunFilter, RunStatus,
    RunSummary, RunUpdate, SeenEvent, StepRecord, Store, StoreError, Wait,
};
use serde_json::Value;
use sluice_expr::{Val, data};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The tables [`MIGRATIONS`] make, in one script (a test keeps it so).
const SCHEMA: &str = include_str!("../migrations/sqlite/schema.sql");

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "runs and the run log",
        include_str!("../migrations/sqlite/0001_runs.sql"),
    ),
    (
        2,
        "flow versions",
        include_str!("../migrations/sqlite/0002_flow_versions.sql"),
    ),
    (
        3,
        "accountability",
        include_str!("../migrations/sqlite/0003_accountability.sql"),
    ),
    (
        4,
        "fan-out",
        include_str!("../migrations/sqlite/0004_fan_out.sql"),
    ),
    (
        5,
        "schedules",
        include_str!("../migrations/sqlite/0005_schedules.sql"),
    ),
    (
        6,
        "waits",
        include_str!("../migrations/sqlite/0006_waits.sql"),
    ),
    (
        7,
        "polls",
        include_str!("../migrations/sqlite/0007_polls.sql"),
    ),
    (
        8,
        "events",
        include_str!("../migrations/sqlite/0008_events.sql"),
    ),
    (
        9,
        "the parent index holds item runs only",
        include_str!("../migrations/sqlite/0009_parent_index.sql"),
    ),
    (
        10,
        "recoveries of a running run",
        include_str!("../migrations/sqlite/0010_recoveries.sql"),
    ),
    (
        11,
        "API tokens",
        include_str!("../migrations/sqlite/0011_api_tokens.sql"),
    ),
    (
        12,
        "the audit of people's actions",
        include_str!("../migrations/sqlite/0012_audit.sql"),
    ),
    (
        13,
        "tokens that expire",
        include_str!("../migrations/sqlite/0013_token_expiry.sql"),
    ),
    (
        14,
        "large values kept once per run",
        include_str!("../migrations/sqlite/0014_run_values.sql"),
    ),
    (
        15,
        "what woke a suspended run",
        include_str!("../migrations/sqlite/0015_woken.sql"),
    ),
    (
        16,
        "runs listed by their start",
        include_str!("../migrations/sqlite/0016_runs_by_start.sql"),
    ),
    (
        17,
        "notifications",
        include_str!("../migrations/sqlite/0017_notifications.sql"),
    ),
    (
        18,
        "runs by status, but succeeded ones",
        include_str!("../migrations/sqlite/0018_runs_by_open_status.sql"),
    ),
];

/// The runs left running, oldest first (through the index of the
/// statuses other than succeeded, which the query names for SQLite to use it).
const LEFT_RUNNING: &str = "SELECT id FROM runs WHERE status = 'running' AND status <> 'succeeded' ORDER BY started_at, id LIMIT ?";

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    group: Group,
    /// Nodes of large values already written (`values.rs`).
    known: Arc<Known>,
    /// This process's id (see [`Store::process_id`]).
    process: Arc<str>,
    /// Whether the running runs were handed over (see [`Store::take_over`]).
    taken: Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteStore {
    /// Open (creating if needed) the store at `url`: `sqlite::memory:`,
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let fail = |message: String| StoreError::Open {
            url: url.to_owned(),
            message,
        };
        crate::group::settle_sqlite();
        let memory = url == "sqlite::memory:" || url == ":memory:";
        let mut file = None;
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(|e| fail(e.to_string()))?
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            if path.is_empty() {
                return Err(fail("no file path given".into()));
            }
            let p = std::path::Path::new(path);
            if let Some(parent) = p.parent()
                && !parent.as_os_str().is_empty()
                && !parent.is_dir()
            {
                return Err(fail(format!(
                    "the folder `{}` does not exist",
                    parent.display()
                )));
            }
            if p.is_dir() {
                return Err(fail(format!("`{path}` is a folder, not a database file")));
            }
            let mut writer = WriterFile {
                path: p.to_owned(),
                synchronous: SqliteSynchronous::Normal,
                max_page_count: None,
            };
            for pair in query.split('&').filter(|s| !s.is_empty()) {
                match pair.split_once('=') {
                    Some(("synchronous", v)) => {
                        writer.synchronous =
                            SqliteSynchronous::from_str(v).map_err(|e| fail(e.to_string()))?;
                    }
                    // The most pages the database file may hold: past it,
                    // writes fail as on a full disk.
                    Some(("max_page_count", v)) => match v.parse::<u32>() {
                        Ok(n) if n > 0 => writer.max_page_count = Some(n),
                        _ => {
                            return Err(fail(format!(
                                "`max_page_count` must be a positive number of pages (got `{v}`)"
                            )));
                        }
                    },
                    _ => {
                        return Err(fail(format!(
                            "unknown store option `{pair}` (supported: synchronous, max_page_count)"
                        )));
                    }
                }
            }
            // The pool's connections (readers, checkpoints, migrations)
            // take the writer's settings.
            let mut o = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(writer.synchronous);
            if let Some(n) = writer.max_page_count {
                o = o.pragma("max_page_count", n.to_string());
            }
            file = Some(writer);
            o
        };
        let options = options
            .busy_timeout(Duration::from_secs(10))
            .statement_cache_capacity(256)
            // The writer checkpoints the WAL itself, beside its commits
            // (group.rs); SQLite's own would run inside a commit.
            .pragma("wal_autocheckpoint", if memory { "1000" } else { "0" })
            .foreign_keys(true);
        let pool_options = SqlitePoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if memory {
                        Ok(())
                    } else {
                        crate::group::no_checkpoint_on_close(conn).await
                    }
                })
            })
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            });
        let Some(file) = file else {
            let pool = pool_options
                .connect_with(options)
                .await
                .map_err(|e| fail(e.to_string()))?;
            // A new, empty database: its tables in one go, as the
            // migrations leave them (there is no earlier version to move
            // from, nor any to keep track of).
            sqlx::raw_sql(SCHEMA)
                .execute(&pool)
                .await
                .map_err(|e| fail(format!("cannot prepare its tables: {e}")))?;
            let known = Arc::new(Known::default());
            let group = Group::start(pool.clone(), Writes::Memory, known.clone());
            return Ok(Self::with(pool, group, known));
        };
        // The writer's connection is opened here, on this thread; the
        // pool's connections (each with a thread of sqlx's) only when a
        // reader needs one.
        let db = crate::group::open_writer(&file).map_err(|e| fail(e.to_string()))?;
        // A store whose migrations are all applied needs no more than one
        // look (sqlx's migrator takes a few dozen statements to say so).
        // The connection that looks is the writer's (a second one would
        // read the schema again).
        let applied: Option<(i64, i64)> = db
            .query_row(
                "SELECT COUNT(*), MAX(version) FROM _sqlx_migrations WHERE success",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let latest = MIGRATIONS.len() as i64;
        if let Some((_, at)) = applied.filter(|(_, at)| *at > latest) {
            return Err(fail(format!(
                "its tables were made by a later version of Sluice (at migration {at}; this version knows {latest}): run that version, or a later one"
            )));
        }
        if applied == Some((latest, latest)) {
            let pool = pool_options.connect_lazy_with(options);
            let known = Arc::new(Known::default());
            let group = Group::start(pool.clone(), Writes::File(file, db), known.clone());
            return Ok(Self::with(pool, group, known));
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    (*d).into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .map_err(|e| fail(format!("cannot prepare its tables: {e}")))?;
        let known = Arc::new(Known::default());
        let group = Group::start(pool.clone(), Writes::File(file, db), known.clone());
        Ok(Self::with(pool, group, known))
    }

    /// See [`crate::AnyStore::close`]: the writer's task ends once its
    /// queue is dropped (checkpointing a WAL grown past 512 KB and closing
    /// its connection) and is awaited, then the pool closes its own.
    pub async fn close(self) {
        let Self { pool, group, .. } = self;
        group.close().await;
        pool.close().await;
    }

    /// What a store file's close does to its WAL (empty it when it has
    /// grown past 512 KB), for a store that others still hold: a server
    /// stopping, whose runs' tasks may keep the store until the process
    /// ends. Nothing for a store in memory (it has no WAL file).
    pub async fn settle(&self) -> Result<(), StoreError> {
        if !crate::group::wal_grown(self.pool.connect_options().get_filename().as_os_str()) {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        // A checkpoint of the writer's may be under way.
        crate::group::empty_grown_wal(&mut conn, Duration::from_secs(2)).await
    }

    fn with(pool: SqlitePool, group: Group, known: Arc<Known>) -> Self {
        Self {
            pool,
            group,
            known,
            process: crate::new_run_id().into(),
            taken: Arc::default(),
        }
    }
}

/// End a claim made in `tx` (a fire, a poll's page, an event; `claimed`:
/// whether its statement took it): record `runs`, the runs it starts, and
/// commit; false, with nothing recorded, when it was taken already.
async fn claimed_with_runs(
    known: &Known,
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    claimed: bool,
    runs: &[NewRun],
) -> Result<bool, StoreError> {
    if !claimed {
        return Ok(false);
    }
    let rows: Vec<_> = runs
        .iter()
        .map(|run| {
            let mut enc = Encoder::new(&run.id, known);
            let vals = create_vals(run, &mut enc);
            (vals, enc.chunks)
        })
        .collect();
    create_runs(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(true)
}

use crate::group::insert_values;
use crate::scrub::{json, opt_text};

/// A step record, ready for the writer.
fn step_vals(step: &StepRecord, enc: &mut Encoder<'_>) -> StepVals {
    StepVals {
        run_id: step.run_id.clone(),
        seq: step.seq,
        step_key: step.step_key.clone(),
        kind: step.kind.clone(),
        ok: step.ok,
        options: enc.val(&step.options),
        input: enc.val(&step.input),
        result: enc.opt_val(step.result.as_ref()),
        output: enc.opt_val(step.output.as_ref()),
        error: opt_text(&step.error),
        blame: step.blame.clone(),
        logs: json(&Value::from(step.logs.clone())),
        started_at: step.started_at,
        ended_at: step.ended_at,
    }
}

/// Steps of one run (and the run, when new) and its new position, ready for
/// the writer. The state is usually the last step's output: its text is
/// then reused, and so is the state's for the run's output.
fn record_vals(
    run_id: &str,
    new: Option<&NewRun>,
    steps: &[StepRecord],
    run: &RunUpdate,
    enc: &mut Encoder<'_>,
) -> RecordVals {
    let same = steps
        .last()
        .and_then(|s| s.output.as_ref())
        .is_some_and(|o| data::same(o, &run.state));
    let steps: Vec<StepVals> = steps.iter().map(|s| step_vals(s, enc)).collect();
    let state = match steps.last().and_then(|s| s.output.as_ref()) {
        Some(text) if same => text.clone(),
        _ => enc.val(&run.state),
    };
    let output = match &run.output {
        Some(o) if data::same(o, &run.state) => Some(state.clone()),
        o => enc.opt_val(o.as_ref()),
    };
    RecordVals {
        create: new.map(|n| create_vals(n, enc)),
        steps,
        run: RunVals {
            run_id: run_id.to_owned(),
            status: run.status.as_str(),
            state,
            next_step: run.next_step.clone(),
            output,
            error: opt_text(&run.error),
            error_step: run.error_step.clone(),
            ended_at: run.ended_at,
            updated_at: crate::now_micros(),
        },
    }
}

const CLAIM_WAIT: &str = "DELETE FROM waits WHERE run_id = ? RETURNING run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since";
const ALL_WAITS: &str = "SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits ORDER BY since";
const EVENT_WAITS: &str = "SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE kind = 'event' AND (event_type = ? OR event_type IS NULL) ORDER BY since";

const WAIT_OF: &str = "SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE run_id = ?";
const DUE_WAITS: &str = "SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE wake_at < ? ORDER BY wake_at";

const UPDATE_RUN: &str = "UPDATE runs SET status = ?, state = ?, next_step = ?, output = ?, error = ?, error_step = ?, ended_at = ?, updated_at = ? WHERE id = ? AND status <> 'cancelled'";

impl Store for SqliteStore {
    async fn create_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let mut enc = Encoder::new(&run.id, &self.known);
        let vals = create_vals(run, &mut enc);
        self.group
            .write(Write::Create(Box::new(vals)), enc.chunks)
            .await
    }

    async fn record_steps(
        &self,
        new: Option<&NewRun>,
        steps: &[StepRecord],
        run: &RunUpdate,
    ) -> Result<(), StoreError> {
        // The steps' records and the run's new position in one transaction
        // (shared with other runs' writes). The foreign key refuses a step
        // of an unknown run.
        let Some(run_id) = new
            .map(|n| n.id.as_str())
            .or_else(|| steps.first().map(|s| s.run_id.as_str()))
        else {
            return Ok(());
        };
        let mut enc = Encoder::new(run_id, &self.known);
        let vals = record_vals(run_id, new, steps, run, &mut enc);
        self.group
            .write(Write::Record(Box::new(vals)), enc.chunks)
            .await
    }

    async fn suspend(
        &self,
        step: Option<&StepRecord>,
        state: &Val,
        wait: &Wait,
    ) -> Result<bool, StoreError> {
        let mut enc = Encoder::new(&wait.run_id, &self.known);
        let record = step.map(|s| {
            record_vals(
                &s.run_id,
                None,
                std::slice::from_ref(s),
                &RunUpdate {
                    status: RunStatus::Waiting,
                    state: state.clone(),
                    next_step: Some(wait.step_key.clone()),
                    output: None,
                    error: None,
                    error_step: None,
                    ended_at: None,
                },
                &mut enc,
            )
        });
        let state = enc.val(state);
        self.group
            .write(
                Write::Suspend(Box::new(SuspendVals {
                    record,
                    state,
                    wait: wait.clone(),
                    correlation: json(&wait.correlation),
                })),
                enc.chunks,
            )
            .await?;
        Ok(self.status_of(&wait.run_id).await? == Some(RunStatus::Waiting))
    }

    async fn claim_wait(
        &self,
        run_id: &str,
        event: Option<&Value>,
    ) -> Result<Option<Wait>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(CLAIM_WAIT)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let wait = rows::wait(&row)?;
        let done = sqlx::query(
            "UPDATE runs SET status = 'running', updated_at = ?, woken = ?, woken_at_steps = steps WHERE id = ? AND status = 'waiting'",
        )
        .bind(crate::now_micros())
        .bind(rows::woken_text(&wait, event))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((done.rows_affected() == 1).then_some(wait))
    }

    async fn list_waits(&self, event_type: Option<&str>) -> Result<Vec<Wait>, StoreError> {
        let rows = match event_type {
            None => sqlx::query(ALL_WAITS).fetch_all(&self.pool).await?,
            Some(t) => {
                sqlx::query(EVENT_WAITS)
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(rows::wait).collect()
    }

    async fn wait_of(&self, run_id: &str) -> Result<Option<Wait>, StoreError> {
        let row = sqlx::query(WAIT_OF)
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::wait).transpose()
    }

    async fn due_waits(&self, before: i64) -> Result<Vec<Wait>, StoreError> {
        let rows = sqlx::query(DUE_WAITS)
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::wait).collect()
    }

    fn process_id(&self) -> &str {
        &self.process
    }

    async fn take_over(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        // One process per file: every running run is its own once it
        // starts (what another process left running has no other taker).
        if self.taken.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(Vec::new());
        }
        let limit = if limit == 0 { -1 } else { i64::from(limit) };
        Ok(sqlx::query_scalar(LEFT_RUNNING)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn update_run(&self, run_id: &str, run: &RunUpdate) -> Result<(), StoreError> {
        let mut enc = Encoder::new(run_id, &self.known);
        let state = enc.val(&run.state);
        let output = enc.opt_val(run.output.as_ref());
        let q = bind_run(sqlx::query(UPDATE_RUN), run, state, output).bind(run_id);
        let done = self.with_values(enc.chunks, q).await?;
        if done.rows_affected() != 1 {
            // A cancelled run keeps its status; any other miss is no run.
            return match self.status_of(run_id).await? {
                Some(RunStatus::Cancelled) => Ok(()),
                _ => Err(StoreError::NoSuchRun(run_id.to_owned())),
            };
        }
        Ok(())
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let limit: i64 = if filter.limit == 0 {
            -1
        } else {
            i64::from(filter.limit)
        };
        let sql = filter.query(false);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(flow) = &filter.flow_id {
            q = q.bind(flow);
        }
        if let Some(status) = filter.status {
            q = q.bind(status.as_str());
        }
        if let Some(t) = filter.started_after {
            q = q.bind(t);
        }
        if let Some(t) = filter.started_before {
            q = q.bind(t);
        }
        if let Some((at, id)) = &filter.after {
            q = q.bind(*at).bind(id);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(rows::summary).collect()
    }

    async fn flow_stats(&self, since: i64) -> Result<Vec<FlowStats>, StoreError> {
        let rows = sqlx::query("SELECT flow_id, COUNT(*) AS runs, SUM(CASE WHEN status IN ('failed', 'incident') THEN 1 ELSE 0 END) AS failures FROM runs WHERE started_at >= ? GROUP BY flow_id ORDER BY flow_id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::flow_stats).collect()
    }

    async fn save_flow_version(
        &self,
        flow_id: &str,
        version: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        // By the writer: on its connection, which a `sluice run` may then
        // be the only one to open.
        let vals = VersionVals {
            flow_id: flow_id.to_owned(),
            version: version.to_owned(),
            source: source.to_owned(),
            at: crate::now_micros(),
        };
        self.group
            .write(Write::Version(Box::new(vals)), Vec::new())
            .await
    }

    async fn flow_version(
        &self,
        flow_id: &str,
        version: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT source FROM flow_versions WHERE flow_id = ? AND version = ?")
            .bind(flow_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("source")).transpose()?)
    }

    async fn resume_run(&self, run_id: &str, state: &Val) -> Result<(), StoreError> {
        let mut enc = Encoder::new(run_id, &self.known);
        let q = sqlx::query("UPDATE runs SET status = 'running', state = ?, error = NULL, error_step = NULL, updated_at = ? WHERE id = ? AND status = 'incident'")
            .bind(enc.val(state))
            .bind(crate::now_micros())
            .bind(run_id);
        let done = self.with_values(enc.chunks, q).await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        Err(self
            .refused(run_id, |run, status| StoreError::NotResumable {
                run,
                status,
            })
            .await)
    }

    async fn create_token(&self, t: &ApiToken) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, role, hash, created_at, revoked_at, expires_at) VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.role)
        .bind(&t.hash)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenExists(t.name.clone()));
        }
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, hash, created_at, revoked_at, expires_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, hash, created_at, revoked_at, expires_at FROM api_tokens WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, user, role, ip, action, target, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.at)
        .bind(&e.user)
        .bind(&e.role)
        .bind(&e.ip)
        .bind(&e.action)
        .bind(&e.target)
        .bind(json(&e.details))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_log(
        &self,
        target: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, user, role, ip, action, target, details FROM audit WHERE ?1 IS NULL OR target = ?1 ORDER BY seq DESC LIMIT ?2",
        )
        .bind(target)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit).collect()
    }

    async fn notify(&self, n: &Notification) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO notifications (id, at, recipient, recipient_role, subject, message, run_id, step_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(&n.id)
            .bind(n.at)
            .bind(&n.user)
            .bind(&n.role)
            .bind(&n.subject)
            .bind(&n.message)
            .bind(&n.run_id)
            .bind(&n.step_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn notifications(
        &self,
        reader: Reader<'_>,
        limit: u32,
        unread: bool,
    ) -> Result<(Vec<(Notification, bool)>, u64), StoreError> {
        let roles = reader.roles.unwrap_or_default();
        let role = |i: usize| roles.get(i).copied().unwrap_or_default();
        let rows = sqlx::query("SELECT n.id, n.at, n.recipient, n.recipient_role, n.subject, n.message, n.run_id, n.step_key, (CASE WHEN EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = ?1) THEN 1 ELSE 0 END) AS seen, (SELECT COUNT(*) FROM notifications n WHERE (?2 = 1 OR n.recipient = ?1 OR (n.recipient IS NULL AND n.recipient_role IN (?3, ?4, ?5))) AND NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = ?1)) AS unseen FROM notifications n WHERE (?2 = 1 OR n.recipient = ?1 OR (n.recipient IS NULL AND n.recipient_role IN (?3, ?4, ?5))) AND (?7 = 0 OR NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = ?1)) ORDER BY n.at DESC, n.id DESC LIMIT ?6")
            .bind(reader.name)
            .bind(i64::from(reader.roles.is_none()))
            .bind(role(0))
            .bind(role(1))
            .bind(role(2))
            .bind(i64::from(limit))
            .bind(i64::from(unread))
            .fetch_all(&self.pool)
            .await?;
        rows::notification_page(&rows)
    }

    async fn mark_read(&self, id: &str, reader: &str) -> Result<bool, StoreError> {
        sqlx::query("INSERT INTO notification_reads (id, reader, at) SELECT id, ?2, ?3 FROM notifications WHERE id = ?1 ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(reader)
            .bind(crate::now_micros())
            .execute(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) AS n FROM notifications WHERE id = ?1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n == 1)
    }

    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
        )
        .bind(crate::now_micros())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_recovery(&self, run_id: &str) -> Result<u32, StoreError> {
        let n: Option<i64> = sqlx::query_scalar(
            "UPDATE runs SET recoveries = CASE WHEN recovered_at_steps = steps THEN recoveries + 1 ELSE 1 END, recovered_at_steps = steps WHERE id = ? AND status = 'running' RETURNING recoveries",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        match n {
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None => Err(self
                .refused(run_id, |run, status| StoreError::NotRunning { run, status })
                .await),
        }
    }

    async fn cancel_run(&self, run_id: &str) -> Result<(), StoreError> {
        let now = crate::now_micros();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("UPDATE runs SET status = 'cancelled', error = 'cancelled', ended_at = ?, updated_at = ? WHERE id = ? AND status IN ('running', 'incident', 'waiting')")
            .bind(now)
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            sqlx::query("DELETE FROM waits WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        drop(tx);
        Err(self
            .refused(run_id, |run, status| StoreError::NotCancellable {
                run,
                status,
            })
            .await)
    }

    async fn claim_fire(&self, flow_id: &str, at: i64, run: &NewRun) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("INSERT INTO schedule_fires (flow_id, fire_at, claimed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(flow_id)
            .bind(at)
            .bind(crate::now_micros())
            .execute(&mut *tx)
            .await?;
        claimed_with_runs(
            &self.known,
            tx,
            done.rows_affected() == 1,
            std::slice::from_ref(run),
        )
        .await
    }

    async fn poll_snapshot(&self, flow_id: &str) -> Result<(i64, Option<Value>), StoreError> {
        let row = sqlx::query("SELECT seq, snapshot FROM poll_snapshots WHERE flow_id = ?")
            .bind(flow_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok((0, None)),
            Some(r) => {
                let snap = rows::required(
                    r.try_get("snapshot")?,
                    &format!("poll snapshot of `{flow_id}`"),
                )?;
                Ok((r.try_get("seq")?, Some(snap)))
            }
        }
    }

    async fn advance_poll(
        &self,
        flow_id: &str,
        seq: i64,
        snapshot: &Value,
        runs: &[NewRun],
    ) -> Result<bool, StoreError> {
        let now = crate::now_micros();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let moved = if seq == 0 {
            sqlx::query("INSERT INTO poll_snapshots (flow_id, seq, snapshot, updated_at) VALUES (?, 1, ?, ?) ON CONFLICT DO NOTHING")
                .bind(flow_id)
                .bind(json(snapshot))
                .bind(now)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("UPDATE poll_snapshots SET seq = seq + 1, snapshot = ?, updated_at = ? WHERE flow_id = ? AND seq = ?")
                .bind(json(snapshot))
                .bind(now)
                .bind(flow_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?
        };
        claimed_with_runs(&self.known, tx, moved.rows_affected() == 1, runs).await
    }

    async fn seen_event(&self, source: &str, id: &str) -> Result<Option<SeenEvent>, StoreError> {
        let row = sqlx::query("SELECT received_at, answer FROM events WHERE source = ? AND id = ?")
            .bind(source)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let answer = rows::required(
            row.try_get("answer")?,
            &format!("answer to event `{id}` of `{source}`"),
        )?;
        Ok(Some(SeenEvent {
            received_at: row.try_get("received_at")?,
            answer,
        }))
    }

    async fn accept_event(
        &self,
        source: &str,
        id: &str,
        received_at: i64,
        answer: &Value,
        runs: &[NewRun],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM events WHERE received_at < ?")
            .bind(received_at - crate::EVENTS_KEPT_MICROS)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("INSERT INTO events (source, id, received_at, answer) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(source)
            .bind(id)
            .bind(received_at)
            .bind(json(answer))
            .execute(&mut *tx)
            .await?;
        claimed_with_runs(&self.known, tx, done.rows_affected() == 1, runs).await
    }

    async fn last_fire(&self, flow_id: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(fire_at) AS at FROM schedule_fires WHERE flow_id = ?")
            .bind(flow_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("at")?)
    }

    async fn flow_of_run(
        &self,
        run_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT flow_id, flow_version FROM runs WHERE id = ?")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, flow_id, status, started_at, ended_at, steps, error, error_step, trigger, input, state, output, next_step, flow_version, accountability, parent_run, item, woken, woken_at_steps FROM runs WHERE id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let step_rows = sqlx::query(
            "SELECT run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at FROM run_steps WHERE run_id = ? ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let roots = rows::roots(&row, &step_rows)?;
        let values = Loaded::load(roots, |hash| async move {
            let row = sqlx::query("SELECT body FROM run_values WHERE run_id = ? AND hash = ?")
                .bind(run_id)
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| r.try_get("body")).transpose()?)
        })
        .await?;
        Ok(Some(rows::run_detail(&row, &step_rows, &values)?))
    }
}

impl SqliteStore {
    /// Run `q` after writing `values` (the nodes of the large values it
    /// names), in one transaction when there are any.
    async fn with_values(
        &self,
        values: Vec<Chunk>,
        q: Query<'_>,
    ) -> Result<sqlx::sqlite::SqliteQueryResult, StoreError> {
        if values.is_empty() {
            return Ok(q.execute(&self.pool).await?);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        insert_values(&mut tx, &values).await?;
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        self.known.remember(&values);
        Ok(done)
    }

    /// Why a status change guarded by the run's status did not happen: no
    /// such run, or `refusal` with the status it is in.
    async fn refused(
        &self,
        run_id: &str,
        refusal: fn(String, &'static str) -> StoreError,
    ) -> StoreError {
        match self.status_of(run_id).await {
            Err(e) => e,
            Ok(None) => StoreError::NoSuchRun(run_id.to_owned()),
            Ok(Some(s)) => refusal(run_id.to_owned(), s.as_str()),
        }
    }

    async fn status_of(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
        let row = sqlx::query("SELECT status FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| rows::status(r.try_get::<&str, _>("status")?))
            .transpose()
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Bind a run's new position (its state and output written already).
fn bind_run<'q>(
    q: Query<'q>,
    run: &'q RunUpdate,
    state: String,
    output: Option<String>,
) -> Query<'q> {
    q.bind(run.status.as_str())
        .bind(state)
        .bind(&run.next_step)
        .bind(output)
        .bind(opt_text(&run.error))
        .bind(&run.error_step)
        .bind(run.ended_at)
        .bind(crate::now_micros())
}

/// A new run's values, ready to bind.
fn create_vals(run: &NewRun, enc: &mut Encoder<'_>) -> CreateVals {
    CreateVals {
        id: run.id.clone(),
        flow_id: run.flow_id.clone(),
        trigger: enc.val(&run.trigger),
        input: enc.val(&run.input),
        next_step: run.next_step.clone(),
        started_at: run.started_at,
        flow_version: run.flow_version.clone(),
        accountability: json(&run.accountability),
        parent_run: run.parent.as_ref().map(|p| p.0.clone()),
        item: run.parent.as_ref().map(|p| p.1),
    }
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::{RunFilter, RunStatus};

    /// The text of `schema.sql` for the tables `script` makes.
    async fn schema_of(script: String) -> String {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&pool)
            .await
            .expect("the migrations apply");
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL \
             AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )
        .fetch_all(&pool)
        .await
        .expect("the schema reads");
        let header: String = super::SCHEMA
            .lines()
            .take_while(|l| l.starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        rows.iter().fold(header + "\n", |mut s, (sql,)| {
            s.push_str(sql);
            s.push_str(";\n\n");
            s
        })
    }

    /// Listings by a status other than `succeeded`, and the runs left
    /// running at start, are read through the index of those statuses;
    /// succeeded runs in the order of their start.
    #[tokio::test]
    async fn listings_by_status_read_an_index() {
        let store = super::SqliteStore::open("sqlite::memory:")
            .await
            .expect("a store");
        let plan = |sql: String| {
            let pool = store.pool.clone();
            async move {
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                        .fetch_all(&pool)
                        .await
                        .expect("a plan");
                rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; ")
            }
        };
        for status in [RunStatus::Failed, RunStatus::Running, RunStatus::Incident] {
            let filter = RunFilter {
                status: Some(status),
                limit: 50,
                ..Default::default()
            };
            let p = plan(filter.query(false)).await;
            assert!(p.contains("INDEX runs_by_status"), "{status:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{status:?}: {p}");
        }
        let succeeded = RunFilter {
            status: Some(RunStatus::Succeeded),
            limit: 50,
            ..Default::default()
        };
        let p = plan(succeeded.query(false)).await;
        assert!(p.contains("INDEX runs_by_start"), "{p}");
        let p = plan(super::LEFT_RUNNING.replace('?', "10")).await;
        assert!(p.contains("INDEX runs_by_status"), "{p}");
    }

    /// A new in-memory store gets its tables from `schema.sql`; they are
    /// exactly what the migrations make of an empty file.
    #[tokio::test]
    async fn the_schema_is_what_the_migrations_make() {
        let migrated = MIGRATIONS
            .iter()
            .map(|(_, _, sql)| *sql)
            .collect::<Vec<_>>();
        let made = schema_of(migrated.join("\n")).await;
        if std::env::var_os("SLUICE_BLESS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite/schema.sql");
            std::fs::write(path, &made).expect("schema.sql is written");
        }
        assert_eq!(
            made,
            super::SCHEMA,
            "migrations/sqlite/schema.sql is not what the migrations make: run this test with SLUICE_BLESS=1"
        );
        // And the script makes the same tables again.
        assert_eq!(schema_of(super::SCHEMA.to_owned()).await, made);
    }
}
