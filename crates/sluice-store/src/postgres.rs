//! The PostgreSQL store: the same records and the same rules as the SQLite
//! store, for processes that share one database. Runs' records are written
//! together by one writer (`pg_group`), as the SQLite store writes them;
//! a claim (a wait, a schedule's fire, an event, a poll's page) is one
//! conditional statement, so that of two processes one takes it.
//!
//! Leases: every process that opens the store is a row of `processes`,
//! alive until a time it renews every quarter of its lease (default 10 s),
//! by the database's clock, so that processes' clocks need not agree. A
//! running run is held by the process that created, claimed or took it
//! (`runs.lease_owner`), and every write that moves it is fenced by that
//! owner: a process whose lease lapsed and whose runs another took over
//! writes nothing more to them. Runs of a process that is not alive are
//! taken over with `FOR UPDATE SKIP LOCKED`, each by one taker. Suspended
//! runs and cancels are announced on the channel `sluice_notices`
//! (LISTEN/NOTIFY) so that other processes act at once; periodic scans
//! make up for a missed notice.

use crate::pg_group::{
    Owner, PgRecord, PgWrite, held_elsewhere, insert_run, insert_values, record_moving,
};
use crate::pg_url::{pool_size, redact_url};
use crate::rows;
use crate::scrub::json;
use crate::values::{Encoder, Known, Loaded};
use crate::{
    ApiToken, AuditEntry, FlowStats, Leases, NewRun, Notice, Notification, Process, Reader,
    RunDetail, RunFilter, RunStatus, RunSummary, RunUpdate, SeenEvent, StepRecord, Store,
    StoreError, Wait,
};
use serde_json::Value;
use sluice_expr::Val;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Now by the database's clock, in µs since the epoch (every lease time is
/// read and compared by it).
macro_rules! db_now {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"
    };
}

/// The channel of [`Notice`]s.
const CHANNEL: &str = "sluice_notices";

/// How long a process's leases hold unrenewed, unless set
/// ([`PgStore::set_lease`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "the store",
        include_str!("../migrations/postgres/0001_store.sql"),
    ),
    (
        2,
        "large values kept once per run",
        include_str!("../migrations/postgres/0002_run_values.sql"),
    ),
    (
        3,
        "processes and their leases on runs",
        include_str!("../migrations/postgres/0003_leases.sql"),
    ),
    (
        4,
        "runs listed by their start",
        include_str!("../migrations/postgres/0004_runs_by_start.sql"),
    ),
    (
        5,
        "notifications",
        include_str!("../migrations/postgres/0005_notifications.sql"),
    ),
];

/// This process, as the store knows it.
#[derive(Debug)]
struct Me {
    id: Owner,
    host: String,
    started_at: i64,
    /// How long a lease holds unrenewed, in µs.
    lease: AtomicI64,
    /// Told when the lease's length changes (the heartbeat renews then).
    lease_changed: Arc<tokio::sync::Notify>,
    /// As last renewed.
    leases: std::sync::Mutex<Leases>,
    taken_over: AtomicU64,
    /// Set once it stopped: renew no more.
    retired: AtomicBool,
    notices: broadcast::Sender<Notice>,
    /// Dropped with the last handle of the store: its tasks end.
    _stop: watch::Sender<()>,
}

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The writer of runs' records (see `pg_group`).
    group: crate::pg_group::PgGroup,
    /// Nodes of large values already written (`values.rs`).
    known: std::sync::Arc<Known>,
    me: Arc<Me>,
}

/// The advisory lock that servers of earlier versions held (one server per
/// store): a server holding it is of a version that does not share runs.
const OLD_SERVER_LOCK: i64 = 0x0051_1CE0_0000_0001;

impl PgStore {
    /// Open the store at `url` (`postgres://…` or `postgresql://…`),
    /// making its tables when they are missing.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let fail = |message: String| StoreError::Open {
            url: redact_url(url),
            message,
        };
        let (url_of_server, pool_size) = pool_size(url).map_err(fail)?;
        let options =
            PgConnectOptions::from_str(&url_of_server).map_err(|e| fail(e.to_string()))?;
        // One connection first, for the reason a server cannot be reached
        // (the pool would only say that it timed out).
        match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::ConnectOptions::connect(&options),
        )
        .await
        {
            Ok(Ok(conn)) => drop(sqlx::Connection::close(conn).await),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail("no answer within 10 s".into())),
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| fail(e.to_string()))?;
        may_migrate(&pool).await.map_err(fail)?;
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
        let known = std::sync::Arc::new(Known::default());
        let id: Owner = crate::new_run_id().into();
        let group = crate::pg_group::PgGroup::start(pool.clone(), known.clone(), id.clone());
        let (stop, stopped) = watch::channel(());
        let me = Arc::new(Me {
            id,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            started_at: crate::now_micros(),
            lease: AtomicI64::new(micros(DEFAULT_LEASE)),
            lease_changed: Arc::default(),
            leases: Default::default(),
            taken_over: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            notices: broadcast::channel(1024).0,
            _stop: stop,
        });
        // Alive before it creates or claims a run (which its lease covers).
        renew(&pool, &me).await.map_err(|e| fail(e.to_string()))?;
        // Processes gone for a day that hold no run are forgotten (every
        // command that opens the store is one).
        sqlx::query(concat!(
            "DELETE FROM processes WHERE alive_until < ",
            db_now!(),
            " - 86400000000 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.status = 'running' AND r.lease_owner = processes.id)"
        ))
        .execute(&pool)
        .await
        .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(heartbeat(
            pool.clone(),
            Arc::downgrade(&me),
            me.lease_changed.clone(),
            stopped.clone(),
        ));
        tokio::spawn(listen(pool.clone(), Arc::downgrade(&me), stopped));
        Ok(Self {
            pool,
            known,
            group,
            me,
        })
    }

    /// See [`crate::AnyStore::close`]: the writer ends when its queue is
    /// dropped, the heartbeat and the listener when `me` is, and each gives
    /// its connection back, which the pool then closes.
    pub async fn close(self) {
        let Self {
            pool, group, me, ..
        } = self;
        drop(group);
        drop(me);
        pool.close().await;
    }

    /// Hold leases `lease` long unrenewed (renewed every quarter of it): how
    /// long the runs of a process that died wait before another takes them.
    pub async fn set_lease(&self, lease: Duration) -> Result<(), StoreError> {
        self.me.lease.store(micros(lease), Ordering::Relaxed);
        renew(&self.pool, &self.me).await?;
        // The heartbeat's next renewal comes within a quarter of this lease.
        self.me.lease_changed.notify_one();
        Ok(())
    }

    /// End this process's leases now (it stops): the runs it still holds
    /// are taken over by the others at once, without waiting for the lease
    /// to lapse.
    pub async fn retire(&self) -> Result<(), StoreError> {
        self.me.retired.store(true, Ordering::Relaxed);
        sqlx::query("UPDATE processes SET alive_until = 0 WHERE id = $1")
            .bind(&*self.me.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn status_of(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
        let row = sqlx::query("SELECT status FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| rows::status(r.try_get::<&str, _>("status")?))
            .transpose()
    }

    /// Why a status change guarded by the run's status did not happen.
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

    /// End a claim made in `tx`: when it took (`claimed`), record `runs`
    /// in the same transaction.
    async fn claimed_with_runs(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        claimed: bool,
        runs: &[NewRun],
    ) -> Result<bool, StoreError> {
        if !claimed {
            return Ok(false);
        }
        for run in runs {
            let mut enc = Encoder::new(&run.id, &self.known);
            insert_run(&mut tx, run, None, &self.me.id, &mut enc).await?;
            insert_values(&mut tx, &enc.chunks).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

impl Store for PgStore {
    async fn create_run(&self, run: &NewRun) -> Result<(), StoreError> {
        self.group
            .write(PgWrite::Create(Box::new(run.clone())))
            .await
    }

    async fn record_steps(
        &self,
        new: Option<&NewRun>,
        steps: &[StepRecord],
        run: &RunUpdate,
    ) -> Result<(), StoreError> {
        let Some(run_id) = new
            .map(|n| n.id.as_str())
            .or_else(|| steps.first().map(|s| s.run_id.as_str()))
        else {
            return Ok(());
        };
        self.group
            .write(PgWrite::Record(Box::new(PgRecord {
                new: new.cloned(),
                run_id: run_id.to_owned(),
                steps: steps.to_vec(),
                run: run.clone(),
            })))
            .await
    }

    async fn update_run(&self, run_id: &str, run: &RunUpdate) -> Result<(), StoreError> {
        let r = PgRecord {
            new: None,
            run_id: run_id.to_owned(),
            steps: Vec::new(),
            run: run.clone(),
        };
        let mut conn = self.pool.acquire().await?;
        let written = record_moving(&mut conn, &r, &self.me.id, &self.known).await?;
        self.known.remember(&written);
        Ok(())
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let limit = (filter.limit != 0).then_some(i64::from(filter.limit));
        let sql = filter.query(true);
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
        let rows = sqlx::query("SELECT flow_id, COUNT(*)::BIGINT AS runs, SUM(CASE WHEN status IN ('failed', 'incident') THEN 1 ELSE 0 END)::BIGINT AS failures FROM runs WHERE started_at >= $1 GROUP BY flow_id ORDER BY flow_id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::flow_stats).collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, flow_id, status, started_at, ended_at, steps, error, error_step, trigger, input, state, output, next_step, flow_version, accountability, parent_run, item, woken, woken_at_steps FROM runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let step_rows = sqlx::query(
            "SELECT run_id, seq, step_key, kind, ok, options, input, result, output, error, blame, logs, started_at, ended_at FROM run_steps WHERE run_id = $1 ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let roots = rows::roots(&row, &step_rows)?;
        let values = Loaded::load(roots, |hash| async move {
            let row = sqlx::query("SELECT body FROM run_values WHERE run_id = $1 AND hash = $2")
                .bind(run_id)
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| r.try_get("body")).transpose()?)
        })
        .await?;
        Ok(Some(rows::run_detail(&row, &step_rows, &values)?))
    }

    async fn flow_of_run(
        &self,
        run_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT flow_id, flow_version FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn save_flow_version(
        &self,
        flow_id: &str,
        version: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO flow_versions (flow_id, version, source, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(flow_id)
            .bind(version)
            .bind(source)
            .bind(crate::now_micros())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn flow_version(
        &self,
        flow_id: &str,
        version: &str,
    ) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT source FROM flow_versions WHERE flow_id = $1 AND version = $2")
                .bind(flow_id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("source")).transpose()?)
    }

    async fn resume_run(&self, run_id: &str, state: &Val) -> Result<(), StoreError> {
        let mut enc = Encoder::new(run_id, &self.known);
        let state = enc.val(state);
        let mut tx = self.pool.begin().await?;
        insert_values(&mut tx, &enc.chunks).await?;
        let done = sqlx::query("UPDATE runs SET status = 'running', state = $1, error = NULL, error_step = NULL, updated_at = $2, lease_owner = $4 WHERE id = $3 AND status = 'incident'")
            .bind(state)
            .bind(crate::now_micros())
            .bind(run_id)
            .bind(&*self.me.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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

    async fn count_recovery(&self, run_id: &str) -> Result<u32, StoreError> {
        let n: Option<i64> = sqlx::query_scalar(
            "UPDATE runs SET recoveries = CASE WHEN recovered_at_steps = steps THEN recoveries + 1 ELSE 1 END, recovered_at_steps = steps WHERE id = $1 AND status = 'running' AND lease_owner = $2 RETURNING recoveries",
        )
        .bind(run_id)
        .bind(&*self.me.id)
        .fetch_optional(&self.pool)
        .await?;
        match n {
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None => {
                // Running but held by another process, or not running.
                let row: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT status, lease_owner FROM runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_optional(&self.pool)
                        .await?;
                Err(match row {
                    None => StoreError::NoSuchRun(run_id.to_owned()),
                    Some((status, owner)) => match rows::status(&status)? {
                        RunStatus::Running => StoreError::LeaseLost {
                            run: run_id.to_owned(),
                            owner: owner.unwrap_or_else(|| "(none)".to_owned()),
                        },
                        status => StoreError::NotRunning {
                            run: run_id.to_owned(),
                            status: status.as_str(),
                        },
                    },
                })
            }
        }
    }

    async fn create_token(&self, t: &ApiToken) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, role, hash, created_at, revoked_at, expires_at) VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (name) DO NOTHING",
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
            "SELECT name, role, hash, created_at, revoked_at, expires_at FROM api_tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(crate::now_micros())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, \"user\", role, ip, action, target, details) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "SELECT at, \"user\", role, ip, action, target, details FROM audit WHERE $1::TEXT IS NULL OR target = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(target)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit).collect()
    }

    async fn notify(&self, n: &Notification) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO notifications (id, at, recipient, recipient_role, subject, message, run_id, step_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING")
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
        let rows = sqlx::query("SELECT n.id, n.at, n.recipient, n.recipient_role, n.subject, n.message, n.run_id, n.step_key, (CASE WHEN EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = $1) THEN 1 ELSE 0 END)::BIGINT AS seen, (SELECT COUNT(*) FROM notifications n WHERE ($2::BIGINT = 1 OR n.recipient = $1 OR (n.recipient IS NULL AND n.recipient_role IN ($3, $4, $5))) AND NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = $1)) AS unseen FROM notifications n WHERE ($2::BIGINT = 1 OR n.recipient = $1 OR (n.recipient IS NULL AND n.recipient_role IN ($3, $4, $5))) AND (NOT $7::BOOLEAN OR NOT EXISTS (SELECT 1 FROM notification_reads r WHERE r.id = n.id AND r.reader = $1)) ORDER BY n.at DESC, n.id DESC LIMIT $6")
            .bind(reader.name)
            .bind(i64::from(reader.roles.is_none()))
            .bind(role(0))
            .bind(role(1))
            .bind(role(2))
            .bind(i64::from(limit))
            .bind(unread)
            .fetch_all(&self.pool)
            .await?;
        rows::notification_page(&rows)
    }

    async fn mark_read(&self, id: &str, reader: &str) -> Result<bool, StoreError> {
        sqlx::query("INSERT INTO notification_reads (id, reader, at) SELECT id, $2, $3 FROM notifications WHERE id = $1 ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(reader)
            .bind(crate::now_micros())
            .execute(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) AS n FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n == 1)
    }

    async fn cancel_run(&self, run_id: &str) -> Result<(), StoreError> {
        let now = crate::now_micros();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE runs SET status = 'cancelled', error = 'cancelled', ended_at = $1, updated_at = $1 WHERE id = $2 AND status IN ('running', 'incident', 'waiting')")
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            sqlx::query("DELETE FROM waits WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            notify(&mut tx, &format!("cancel {run_id}")).await?;
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

    async fn suspend(
        &self,
        step: Option<&StepRecord>,
        state: &Val,
        wait: &Wait,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut enc = Encoder::new(&wait.run_id, &self.known);
        let mut written = Vec::new();
        match step {
            Some(s) => {
                let r = PgRecord {
                    new: None,
                    run_id: s.run_id.clone(),
                    steps: vec![s.clone()],
                    run: RunUpdate {
                        status: RunStatus::Waiting,
                        state: state.clone(),
                        next_step: Some(wait.step_key.clone()),
                        output: None,
                        error: None,
                        error_step: None,
                        ended_at: None,
                    },
                };
                written = record_moving(&mut tx, &r, &self.me.id, &self.known).await?;
            }
            None => {
                let done = sqlx::query("UPDATE runs SET status = 'waiting', state = $1, next_step = $2, updated_at = $3 WHERE id = $4 AND status = 'running' AND lease_owner = $5")
                    .bind(enc.val(state))
                    .bind(&wait.step_key)
                    .bind(crate::now_micros())
                    .bind(&wait.run_id)
                    .bind(&*self.me.id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    // Not running (cancelled, or no such run: nothing is
                    // suspended), or held by another process (refused).
                    if let Err(e @ StoreError::LeaseLost { .. }) =
                        held_elsewhere(&mut tx, &wait.run_id).await
                    {
                        return Err(e);
                    }
                }
            }
        }
        let waiting = sqlx::query("SELECT 1 FROM runs WHERE id = $1 AND status = 'waiting'")
            .bind(&wait.run_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if waiting {
            sqlx::query("INSERT INTO waits (run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(&wait.run_id)
                .bind(&wait.flow_id)
                .bind(&wait.step_key)
                .bind(wait.kind.as_str())
                .bind(wait.wake_at)
                .bind(&wait.event_type)
                .bind(&wait.source)
                .bind(json(&wait.correlation))
                .bind(wait.since)
                .execute(&mut *tx)
                .await?;
            if let Some(at) = wait.wake_at {
                notify(&mut tx, &format!("wait {at} {}", wait.run_id)).await?;
            }
        }
        insert_values(&mut tx, &enc.chunks).await?;
        tx.commit().await?;
        self.known.remember(&enc.chunks);
        self.known.remember(&written);
        Ok(waiting)
    }

    async fn claim_wait(
        &self,
        run_id: &str,
        event: Option<&Value>,
    ) -> Result<Option<Wait>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "DELETE FROM waits WHERE run_id = $1 RETURNING run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let wait = rows::wait(&row)?;
        let done = sqlx::query(
            "UPDATE runs SET status = 'running', updated_at = $1, lease_owner = $3, woken = $4, woken_at_steps = steps WHERE id = $2 AND status = 'waiting'",
        )
        .bind(crate::now_micros())
        .bind(run_id)
        .bind(&*self.me.id)
        .bind(rows::woken_text(&wait, event))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((done.rows_affected() == 1).then_some(wait))
    }

    async fn list_waits(&self, event_type: Option<&str>) -> Result<Vec<Wait>, StoreError> {
        let rows = match event_type {
            None => {
                sqlx::query("SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits ORDER BY since")
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(t) => {
                sqlx::query("SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE kind = 'event' AND (event_type = $1 OR event_type IS NULL) ORDER BY since")
                    .bind(t)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(rows::wait).collect()
    }

    async fn claim_fire(&self, flow_id: &str, at: i64, run: &NewRun) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("INSERT INTO schedule_fires (flow_id, fire_at, claimed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(flow_id)
            .bind(at)
            .bind(crate::now_micros())
            .execute(&mut *tx)
            .await?;
        self.claimed_with_runs(tx, done.rows_affected() == 1, std::slice::from_ref(run))
            .await
    }

    async fn last_fire(&self, flow_id: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(fire_at) AS at FROM schedule_fires WHERE flow_id = $1")
            .bind(flow_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("at")?)
    }

    async fn seen_event(&self, source: &str, id: &str) -> Result<Option<SeenEvent>, StoreError> {
        let row =
            sqlx::query("SELECT received_at, answer FROM events WHERE source = $1 AND id = $2")
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM events WHERE received_at < $1")
            .bind(received_at - crate::EVENTS_KEPT_MICROS)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("INSERT INTO events (source, id, received_at, answer) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(source)
            .bind(id)
            .bind(received_at)
            .bind(json(answer))
            .execute(&mut *tx)
            .await?;
        self.claimed_with_runs(tx, done.rows_affected() == 1, runs)
            .await
    }

    async fn poll_snapshot(&self, flow_id: &str) -> Result<(i64, Option<Value>), StoreError> {
        let row = sqlx::query("SELECT seq, snapshot FROM poll_snapshots WHERE flow_id = $1")
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
        let mut tx = self.pool.begin().await?;
        let moved = if seq == 0 {
            sqlx::query("INSERT INTO poll_snapshots (flow_id, seq, snapshot, updated_at) VALUES ($1, 1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(flow_id)
                .bind(json(snapshot))
                .bind(now)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("UPDATE poll_snapshots SET seq = seq + 1, snapshot = $1, updated_at = $2 WHERE flow_id = $3 AND seq = $4")
                .bind(json(snapshot))
                .bind(now)
                .bind(flow_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?
        };
        self.claimed_with_runs(tx, moved.rows_affected() == 1, runs)
            .await
    }

    fn process_id(&self) -> &str {
        &self.me.id
    }

    fn shared(&self) -> bool {
        true
    }

    async fn take_over(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        let limit = if limit == 0 {
            None
        } else {
            Some(i64::from(limit))
        };
        let taken: Vec<String> = sqlx::query_scalar(concat!(
            "UPDATE runs SET lease_owner = $1 WHERE status = 'running' AND id IN (",
            "SELECT r.id FROM runs r WHERE r.status = 'running' AND (r.lease_owner IS NULL OR (r.lease_owner <> $1 AND NOT EXISTS (",
            "SELECT 1 FROM processes p WHERE p.id = r.lease_owner AND p.alive_until > ",
            db_now!(),
            "))) ORDER BY r.started_at LIMIT $2 FOR UPDATE OF r SKIP LOCKED) RETURNING id"
        ))
        .bind(&*self.me.id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.me
            .taken_over
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        Ok(taken)
    }

    async fn held_runs(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE status = 'running' AND lease_owner = $1 ORDER BY started_at",
        )
        .bind(&*self.me.id)
        .fetch_all(&self.pool)
        .await?)
    }

    fn leases(&self) -> Option<Leases> {
        let mut l = self.me.leases.lock().ok()?.clone();
        l.taken_over = self.me.taken_over.load(Ordering::Relaxed);
        Some(l)
    }

    async fn own_poll(&self, flow_id: &str) -> Result<bool, StoreError> {
        let owner: Option<String> = sqlx::query_scalar(concat!(
            "INSERT INTO poll_owners (flow_id, owner) VALUES ($1, $2) ON CONFLICT (flow_id) DO UPDATE SET owner = EXCLUDED.owner ",
            "WHERE poll_owners.owner = EXCLUDED.owner OR NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = poll_owners.owner AND p.alive_until > ",
            db_now!(),
            ") RETURNING owner"
        ))
        .bind(flow_id)
        .bind(&*self.me.id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(owner.is_some())
    }

    async fn wait_of(&self, run_id: &str) -> Result<Option<Wait>, StoreError> {
        let row = sqlx::query("SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::wait).transpose()
    }

    async fn due_waits(&self, before: i64) -> Result<Vec<Wait>, StoreError> {
        let rows = sqlx::query("SELECT run_id, flow_id, step_key, kind, wake_at, event_type, event_source, correlation, since FROM waits WHERE wake_at < $1 ORDER BY wake_at")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::wait).collect()
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.me.notices.subscribe())
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Tell every process listening (on commit of `tx`).
async fn notify(tx: &mut PgConnection, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Renew `me`'s leases, and read how many runs each live process holds.
async fn renew(pool: &PgPool, me: &Me) -> Result<(), StoreError> {
    if me.retired.load(Ordering::Relaxed) {
        return Ok(());
    }
    let lease = me.lease.load(Ordering::Relaxed);
    sqlx::query(concat!(
        "INSERT INTO processes (id, host, pid, version, started_at, alive_until) VALUES ($1, $2, $3, $4, $5, ",
        db_now!(),
        " + $6) ON CONFLICT (id) DO UPDATE SET alive_until = EXCLUDED.alive_until"
    ))
    .bind(&*me.id)
    .bind(&me.host)
    .bind(i64::from(std::process::id()))
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(me.started_at)
    .bind(lease)
    .execute(pool)
    .await?;
    let rows = sqlx::query(concat!(
        "SELECT p.id, p.host, p.pid, p.version, p.started_at, p.alive_until, ",
        "(SELECT COUNT(*) FROM runs r WHERE r.status = 'running' AND r.lease_owner = p.id) AS runs ",
        "FROM processes p WHERE p.alive_until > ",
        db_now!(),
        " ORDER BY p.started_at, p.id"
    ))
    .fetch_all(pool)
    .await?;
    let processes = rows
        .iter()
        .map(rows::process)
        .collect::<Result<Vec<Process>, StoreError>>()?;
    let held = processes
        .iter()
        .find(|p| *p.id == *me.id)
        .map_or(0, |p| p.runs);
    if let Ok(mut l) = me.leases.lock() {
        *l = Leases {
            process: me.id.to_string(),
            // As it is now (a renewal begun before a change ends after it).
            lease_micros: me.lease.load(Ordering::Relaxed),
            renewed_at: crate::now_micros(),
            held,
            taken_over: 0,
            processes,
        };
    }
    Ok(())
}

/// Renew the leases every quarter of a lease until the store is dropped.
/// A renewal that fails is tried again at the next (the leases hold until
/// they lapse; after that other processes may take the runs over, and this
/// one's writes to them are refused).
async fn heartbeat(
    pool: PgPool,
    me: Weak<Me>,
    changed: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let every = {
            let Some(me) = me.upgrade() else { return };
            let _ = renew(&pool, &me).await;
            me.lease.load(Ordering::Relaxed) / 4
        };
        let every = Duration::from_micros(u64::try_from(every.max(1_000)).unwrap_or(1_000));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Hand the notices of the channel to `me`'s subscribers until the store
/// is dropped; reconnects when the connection drops (notices sent
/// meanwhile are lost: the periodic scans make up for them).
async fn listen(pool: PgPool, me: Weak<Me>, mut stop: watch::Receiver<()>) {
    loop {
        let listening = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => l.listen(CHANNEL).await.map(|()| l),
            Err(e) => Err(e),
        };
        let Ok(mut listener) = listening else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        };
        loop {
            let got = tokio::select! {
                n = listener.recv() => n,
                _ = stop.changed() => return,
            };
            let Ok(n) = got else { break };
            let Some(me) = me.upgrade() else { return };
            if let Some(notice) = parse_notice(n.payload()) {
                let _ = me.notices.send(notice);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A notice's payload: `wait AT RUN` or `cancel RUN`.
fn parse_notice(payload: &str) -> Option<Notice> {
    let mut words = payload.splitn(3, ' ');
    match words.next()? {
        "wait" => {
            let wake_at = words.next()?.parse().ok()?;
            Some(Notice::Waiting {
                run_id: words.next()?.to_owned(),
                wake_at,
            })
        }
        "cancel" => Some(Notice::Cancelled {
            run_id: words.next()?.to_owned(),
        }),
        _ => None,
    }
}

/// Refuse to change the store's tables while processes of another version
/// use them, and say so when the tables are newer than this version knows
/// (sqlx's migrator, which runs next under a lock of its own, makes
/// processes of one version that start together wait for each other).
async fn may_migrate(pool: &PgPool) -> Result<(), String> {
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
            .flatten();
    let Some(applied) = applied else {
        return Ok(());
    };
    let latest = MIGRATIONS.len() as i64;
    if applied > latest {
        return Err(format!(
            "its tables were made by a later version of Sluice (at migration {applied}; this version {} knows {latest}): run that version, or a later one",
            env!("CARGO_PKG_VERSION")
        ));
    }
    if applied == latest {
        return Ok(());
    }
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(OLD_SERVER_LOCK)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    if free {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(OLD_SERVER_LOCK)
            .execute(&mut *conn)
            .await;
    } else {
        return Err("a `sluice serve` of an earlier version uses this store; stop it before this version changes the store's tables".into());
    }
    let has_processes: bool = sqlx::query_scalar("SELECT to_regclass('processes') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    if has_processes {
        let others: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT DISTINCT version FROM processes WHERE version <> $1 AND alive_until > ",
            db_now!()
        ))
        .bind(env!("CARGO_PKG_VERSION"))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        if !others.is_empty() {
            return Err(format!(
                "processes of Sluice {} use this store; stop them before this version changes the store's tables",
                others.join(", ")
            ));
        }
    }
    Ok(())
}
