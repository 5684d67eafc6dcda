//! Connections and transactions: the backends, `${env:…}` in URLs and
//! their redaction, the pools (opened on first use, shared by the runs of
//! the registry's connector), the live schema cache that checks every
//! identifier before it is quoted, statements with bound parameters, and
//! `Tx` (dropping it rolls back) under every write.

use crate::backend::{Backend, Table};
use crate::decode::{
    Got, decode_mysql, decode_pg, decode_sqlite, numbers_again, pg_cast_from_text,
    push_pg_cast_type, readable, text_type,
};
use serde_json::{Map, Value};
use sluice_action::ActionError;
use sluice_action::valid_ident;
use sqlx::{AssertSqlSafe, Column, TypeInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub use sluice_action::expand;

/// Whether the database refused the data itself: a constraint (unique,
/// foreign key, not null, check, exclusion) or a value its column cannot
/// take (SQLSTATE classes 23 and 22 on PostgreSQL and MariaDB; SQLite's
/// codes are numbers of another kind). A person must fix the data (or the
/// flow); trying again later would fail the same way, so the failure is
/// the data's, not the outside system's (which a `retry` waits out).
pub(crate) fn refuses_data(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    match d.kind() {
        ErrorKind::UniqueViolation
        | ErrorKind::ForeignKeyViolation
        | ErrorKind::NotNullViolation
        | ErrorKind::CheckViolation
        | ErrorKind::ExclusionViolation => true,
        _ => {
            d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_none()
                && d.code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
        }
    }
}

/// A URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The URL ends at the first whitespace (in a message that names it);
    // its user part at the last `@` before its query, so that a password
    // holding an `@` is hidden whole.
    let url_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let before_query = rest[..url_end].split('?').next().unwrap_or_default();
    let Some(at) = before_query.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_owned(),
    }
}

pub(crate) enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// One open database with its schema cache.
pub struct Db {
    pub(crate) backend: Backend,
    pub(crate) pool: Pool,
    /// table -> (column -> database type)
    pub(crate) schema: Mutex<HashMap<String, Arc<Table>>>,
    pub(crate) shown: String,
    /// Set once the completions table exists (see [`Tx::completed`]).
    pub(crate) completions: OnceCell<()>,
}

/// A driver's message without the place in the driver's source that some
/// of its errors add (`... (sqlx_mysql::connection::executor:131)`): it
/// tells a user nothing and names internals.
pub(crate) fn without_internals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" (sqlx") {
        let tail = &rest[at + 2..];
        let close = tail.find(')');
        let internal = close.is_some_and(|c| {
            let inner = &tail[..c];
            let (path, line) = inner.rsplit_once(':').unwrap_or((inner, ""));
            !line.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit())
                && path
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':')
        });
        out.push_str(&rest[..at]);
        match close {
            Some(c) if internal => rest = &tail[c + 1..],
            _ => {
                out.push_str(" (");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The databases of the flows' connections, keyed by URL: opened on first
/// use and shared by every run (the SQL connector keeps one for all its
/// step types).
#[derive(Default)]
pub struct Pools {
    pub(crate) by_url: Mutex<HashMap<String, Arc<OnceCell<Arc<Db>>>>>,
}

impl Pools {
    /// The database of connection `name` of a flow's `declared`
    /// connections, opened on first use.
    pub async fn db(
        &self,
        declared: &BTreeMap<String, Value>,
        name: &str,
    ) -> Result<Arc<Db>, ActionError> {
        let decl = declared
            .get(name)
            .ok_or_else(|| ActionError::flow(format!("no connection `{name}` in the flow")))?;
        let raw = decl
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ActionError::flow(format!("connection `{name}` has no `url`")))?;
        let url =
            expand(raw).map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))?;
        let cell = {
            let mut map = self
                .by_url
                .lock()
                .map_err(|_| ActionError::external("connection pools are poisoned"))?;
            map.entry(url.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| open(name, &url)).await.cloned()
    }
}

pub(crate) async fn open(name: &str, url: &str) -> Result<Arc<Db>, ActionError> {
    let shown = redact(url);
    let fail = |e: sqlx::Error| {
        ActionError::external(format!(
            "connection `{name}` ({shown}) refused: {}",
            redact(&without_internals(&e.to_string()))
        ))
    };
    let backend = Backend::of(url).ok_or_else(|| {
        ActionError::flow(format!(
            "connection `{name}`: `{shown}` is not a sqlite:, postgres: or mysql: URL"
        ))
    })?;
    let pool = match backend {
        Backend::Sqlite => Pool::Sqlite(
            pool_options()
                .max_connections(if url.contains(":memory:") { 1 } else { 8 })
                .connect(url)
                .await
                .map_err(fail)?,
        ),
        Backend::Postgres => Pool::Postgres(
            pool_options()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(fail)?,
        ),
        Backend::MySql => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            Pool::MySql(
                pool_options()
                    .max_connections(8)
                    .connect(&url)
                    .await
                    .map_err(fail)?,
            )
        }
    };
    Ok(Arc::new(Db {
        backend,
        pool,
        schema: Mutex::new(HashMap::new()),
        shown,
        completions: OnceCell::new(),
    }))
}

/// A pooled connection idle longer than this is checked (a round trip)
/// before it is handed out: the server or the network may have closed it
/// meanwhile. One handed back a moment ago (as an import's, chunk after
/// chunk) is not.
const CHECK_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn pool_options<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_IDLE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The table, in the database a step writes to, where each write step
/// records that it committed: its idempotency key and its result.
const COMPLETIONS: &str = "sluice_completions";

/// How long a completion is kept: a step is run again after a crash at the
/// next start, long before.
const COMPLETIONS_KEPT_DAYS: i64 = 7;

/// The longest idempotency key kept (longer ones are not recorded: their
/// step is at least once).
const COMPLETION_KEY_MAX: usize = 255;

/// The key under which a write step records its completion: its
/// idempotency key without the attempt (run, step, item). A step commits
/// at most one attempt (a failed one rolls back), so whichever attempt
/// runs after a crash (a retry's next one, when the first run again failed
/// before writing) finds the one that committed.
pub(crate) fn completion_key<'k>(cx: &sluice_action::ActionCx<'k>) -> &'k str {
    let key = cx.idempotency_key;
    key.rsplit_once('/')
        .filter(|(_, attempt)| attempt.parse::<u32>().is_ok_and(|a| a == cx.attempt))
        .map_or(key, |(instance, _)| instance)
}

/// What [`or_completed`] needs of a write step's context (taken before the
/// step consumes it).
pub(crate) struct Attempt<'k> {
    key: &'k str,
    connections: &'k BTreeMap<String, Value>,
    /// The step writes in the run's one transaction (`transaction: flow`),
    /// whose completion records commit with the whole run.
    in_run_tx: bool,
}

impl<'k> Attempt<'k> {
    pub(crate) fn of(cx: &sluice_action::ActionCx<'k>) -> Self {
        Self {
            key: completion_key(cx),
            connections: cx.connections,
            in_run_tx: cx.flow_tx.is_some(),
        }
    }
}

/// A write step's outcome `r`, or, when it failed and an execution of the
/// same attempt committed (before, or meanwhile), that execution's
/// recorded result (`recorded` makes it an outcome). A run again after a
/// crash meets its own completion record; and two processes may run one
/// attempt at once (one whose lease on the run lapsed while it worked, and
/// the one that took the run over): the later meets the earlier's writes (a
/// unique key, the completion record's key) and fails, its transaction
/// rolled back, nothing written twice; its answer is the earlier's. Not in
/// a run's one transaction, which is begun again whole.
pub(crate) async fn or_completed(
    pools: &Pools,
    attempt: Attempt<'_>,
    connection: &str,
    r: Result<sluice_action::Outcome, ActionError>,
    recorded: fn(Value) -> sluice_action::Outcome,
) -> Result<sluice_action::Outcome, ActionError> {
    let Err(e) = r else {
        return r;
    };
    let Attempt {
        key,
        connections,
        in_run_tx,
    } = attempt;
    if key.is_empty() || in_run_tx {
        return Err(e);
    }
    let Ok(db) = pools.db(connections, connection).await else {
        return Err(e);
    };
    let done = match db.begin().await {
        Ok(mut tx) => tx.completed(key).await.ok().flatten(),
        Err(_) => None,
    };
    done.map(recorded).ok_or(e)
}

/// The outcome of a write whose recorded result holds `tokens` (an
/// envelope's, a document's).
pub(crate) fn recorded_with_tokens(done: Value) -> sluice_action::Outcome {
    let tokens = done.get("tokens").and_then(Value::as_object).cloned();
    sluice_action::Outcome {
        payload: Some(done),
        tokens,
        ..sluice_action::Outcome::default()
    }
}

/// A statement with its parameters.
pub(crate) struct Stmt {
    pub(crate) sql: String,
    pub(crate) params: Vec<Value>,
}

macro_rules! bind_all {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Value::Null => q.bind(Option::<String>::None),
                Value::Bool(b) => q.bind(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => q.bind(i),
                    None => q.bind(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => q.bind(s.as_str()),
                other => q.bind(other.to_string()),
            };
        }
        q
    }};
}

/// Run a statement on an executor, decoding rows with `$decode`.
macro_rules! exec {
    ($db:expr, $st:expr, $fetch:expr, $ex:expr, $decode:expr) => {{
        let q = bind_all!(sqlx::query(AssertSqlSafe($st.sql.clone())), &$st.params);
        if $fetch {
            let rows = q.fetch_all($ex).await.map_err(|e| $db.err(e))?;
            rows.iter()
                .map($decode)
                .collect::<Result<_, _>>()
                .map(Fetched::Rows)
        } else {
            Ok(Fetched::Affected(
                q.execute($ex)
                    .await
                    .map_err(|e| $db.err(e))?
                    .rows_affected(),
            ))
        }
    }};
}

/// Run a query on an executor and decode its first `$most` rows with
/// `$decode`: the rows after them are never held (a query that returns
/// millions of rows costs no more memory than `$most`).
macro_rules! fetch_most {
    ($db:expr, $st:expr, $most:expr, $ex:expr, $decode:expr) => {{
        use futures_util::TryStreamExt;
        let q = bind_all!(sqlx::query(AssertSqlSafe($st.sql.clone())), &$st.params);
        let mut rows = q.fetch($ex);
        let mut out = Vec::new();
        while out.len() < $most {
            match rows.try_next().await.map_err(|e| $db.err(e))? {
                Some(row) => out.push($decode(&row)?),
                None => break,
            }
        }
        Ok(out)
    }};
}

pub(crate) enum TxConn {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
}

/// A transaction on one connection of a [`Db`]. Dropped without
/// [`Tx::commit`], it rolls back.
pub struct Tx {
    pub(crate) db: Arc<Db>,
    pub(crate) conn: TxConn,
}

impl Tx {
    /// The result that the write step of idempotency key `key` recorded
    /// when it committed in this database, if it did: a step run again
    /// after a crash takes it instead of writing again. `None` too for an
    /// unrecorded run (no key).
    pub(crate) async fn completed(&mut self, key: &str) -> Result<Option<Value>, ActionError> {
        if key.is_empty() || key.len() > COMPLETION_KEY_MAX {
            return Ok(None);
        }
        let p = self.db.backend.placeholder(1);
        let st = Stmt {
            sql: format!("SELECT result FROM {COMPLETIONS} WHERE step_key = {p}"),
            params: vec![Value::from(key)],
        };
        let Fetched::Rows(rows) = self.run(&st, true).await? else {
            return Ok(None);
        };
        let Some(text) = rows
            .first()
            .and_then(|r| r.get("result"))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        serde_json::from_str(text).map(Some).map_err(|e| {
            ActionError::external(format!(
                "the result recorded for step `{key}` in {COMPLETIONS} is not JSON: {e}"
            ))
        })
    }

    /// Record, in this transaction, that the write step of idempotency key
    /// `key` committed with `result`.
    pub(crate) async fn complete(&mut self, key: &str, result: &Value) -> Result<(), ActionError> {
        if key.is_empty() || key.len() > COMPLETION_KEY_MAX {
            return Ok(());
        }
        let p = |n| self.db.backend.placeholder(n);
        let st = Stmt {
            sql: format!(
                "INSERT INTO {COMPLETIONS} (step_key, result, completed_at) VALUES ({}, {}, {})",
                p(1),
                p(2),
                p(3)
            ),
            params: vec![
                Value::from(key),
                Value::from(result.to_string()),
                Value::from(crate::decode::rfc3339(time::OffsetDateTime::now_utc())),
            ],
        };
        self.run(&st, false).await.map(|_| ())
    }

    pub(crate) async fn run(&mut self, st: &Stmt, fetch: bool) -> Result<Fetched, ActionError> {
        let db = self.db.clone();
        match &mut self.conn {
            TxConn::Sqlite(t) => exec!(db, st, fetch, &mut **t, decode_sqlite),
            TxConn::Postgres(t) => exec!(db, st, fetch, &mut **t, decode_pg),
            TxConn::MySql(t) => exec!(db, st, fetch, &mut **t, decode_mysql),
        }
    }

    /// The first `most` rows of a query (see [`Db::rows_at_most`]).
    pub(crate) async fn rows_at_most(
        &mut self,
        st: &Stmt,
        most: usize,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        let db = self.db.clone();
        match &mut self.conn {
            TxConn::Sqlite(t) => fetch_most!(db, st, most, &mut **t, decode_sqlite),
            TxConn::Postgres(t) => fetch_most!(db, st, most, &mut **t, decode_pg),
            TxConn::MySql(t) => fetch_most!(db, st, most, &mut **t, decode_mysql),
        }
    }

    pub(crate) async fn rows(
        &mut self,
        st: &Stmt,
        table: &Table,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        let rows = match self.run(st, true).await? {
            Fetched::Rows(r) => r,
            Fetched::Affected(_) => Vec::new(),
        };
        Ok(numbers_again(rows, &table.cols))
    }

    /// PostgreSQL: run `sql` with text arrays as its parameters and read
    /// the rows it returns (`fetch`), or how many it changed. `None` on
    /// another database.
    pub(crate) async fn pg_rows_of_arrays(
        &mut self,
        sql: String,
        arrays: &[Vec<Option<&str>>],
        table: &Table,
        fetch: bool,
    ) -> Option<Result<Made, ActionError>> {
        let TxConn::Postgres(t) = &mut self.conn else {
            return None;
        };
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for a in arrays {
            q = q.bind(a);
        }
        Some(if fetch {
            match q.fetch_all(&mut **t).await {
                Ok(rows) => Got::pg(rows, &table.cols).map(Made::Rows),
                Err(e) => Err(self.db.err(e)),
            }
        } else {
            match q.execute(&mut **t).await {
                Ok(done) => Ok(Made::Count(done.rows_affected())),
                Err(e) => Err(self.db.err(e)),
            }
        })
    }

    /// [`Tx::pg_rows_of_arrays`] of a statement that returns one row, its
    /// one column an array of integers (the keys a multi-row insert made).
    pub(crate) async fn pg_keys_of_arrays(
        &mut self,
        sql: String,
        arrays: &[Vec<Option<&str>>],
    ) -> Option<Result<Vec<i64>, ActionError>> {
        let TxConn::Postgres(t) = &mut self.conn else {
            return None;
        };
        let mut q = sqlx::query_scalar::<_, Option<Vec<i64>>>(AssertSqlSafe(sql));
        for a in arrays {
            q = q.bind(a);
        }
        Some(match q.fetch_one(&mut **t).await {
            Ok(keys) => Ok(keys.unwrap_or_default()),
            Err(e) => Err(self.db.err(e)),
        })
    }

    /// Hold lock `name` until the transaction ends, so that writers that
    /// take it one after another each see what the one before committed.
    /// SQLite's write transaction holds the whole database already;
    /// PostgreSQL takes an advisory lock; MariaDB locks a row of the
    /// completions table kept for it.
    pub(crate) async fn lock(&mut self, name: &str) -> Result<(), ActionError> {
        let key = format!("lock:{name}");
        let p = |n| self.db.backend.placeholder(n);
        let st = |sql: String| Stmt {
            sql,
            params: vec![Value::String(key.clone())],
        };
        match self.db.backend {
            crate::backend::Backend::Sqlite => {}
            crate::backend::Backend::Postgres => {
                let sql = format!(
                    "SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtext({}))",
                    p(1)
                );
                self.run(&st(sql), true).await?;
            }
            crate::backend::Backend::MySql => {
                // The lock's row is made outside the transaction (two
                // transactions making it at once would deadlock), then
                // locked inside it.
                let make = format!(
                    "INSERT IGNORE INTO {COMPLETIONS} (step_key, result, completed_at) VALUES ({}, '{{}}', '9999-12-31T00:00:00Z')",
                    p(1)
                );
                self.db.run(&st(make), false).await?;
                let take = format!(
                    "SELECT step_key FROM {COMPLETIONS} WHERE step_key = {} FOR UPDATE",
                    p(1)
                );
                self.run(&st(take), true).await?;
            }
        }
        Ok(())
    }

    /// Run a statement without parameters or results (savepoints).
    pub(crate) async fn raw(&mut self, sql: &str) -> Result<(), ActionError> {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        match &mut self.conn {
            TxConn::Sqlite(t) => q.execute(&mut **t).await.map(drop),
            TxConn::Postgres(t) => q.execute(&mut **t).await.map(drop),
            TxConn::MySql(t) => q.execute(&mut **t).await.map(drop),
        }
        .map_err(|e| self.db.err(e))
    }

    /// Commit.
    pub async fn commit(self) -> Result<(), ActionError> {
        let db = self.db;
        match self.conn {
            TxConn::Sqlite(t) => t.commit().await,
            TxConn::Postgres(t) => t.commit().await,
            TxConn::MySql(t) => t.commit().await,
        }
        .map_err(|e| db.err(e))
    }
}

/// What a statement returned.
pub(crate) enum Fetched {
    Rows(Vec<Map<String, Value>>),
    Affected(u64),
}

/// What a multi-row insert of the bulk writer made: its rows, or (when
/// none is read) how many.
pub(crate) enum Made {
    Rows(Vec<Got>),
    Count(u64),
}

impl Db {
    pub(crate) fn err(&self, e: sqlx::Error) -> ActionError {
        let mut message = format!(
            "{}: {}",
            self.shown,
            redact(&without_internals(&e.to_string()))
        );
        // PostgreSQL says which key or row in a detail of its own.
        if let sqlx::Error::Database(d) = &e
            && let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            && let Some(detail) = pg.detail()
        {
            message.push_str(" (");
            message.push_str(&redact(detail));
            message.push(')');
        }
        if refuses_data(&e) {
            ActionError::data(message)
        } else {
            ActionError::external(message)
        }
    }

    /// Rows of a table read with [`Db::select_list`]: decimals read as text
    /// become numbers again.
    pub(crate) async fn table_rows(
        &self,
        st: &Stmt,
        cols: &BTreeMap<String, String>,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        Ok(numbers_again(self.rows(st).await?, cols))
    }

    /// The columns of a query's result and their types (PostgreSQL's names,
    /// as the schema gives them; empty for the other databases, whose
    /// parameters need no type), from the database's description of it.
    pub(crate) async fn query_columns(
        &self,
        sql: &str,
    ) -> Result<BTreeMap<String, String>, ActionError> {
        use sqlx::{Executor, SqlSafeStr, Statement};
        fn described<C: Column>(cols: &[C], typed: bool) -> BTreeMap<String, String> {
            cols.iter()
                .map(|c| {
                    let ty = if typed {
                        c.type_info().name().to_lowercase()
                    } else {
                        String::new()
                    };
                    (c.name().to_owned(), ty)
                })
                .collect()
        }
        let sql = AssertSqlSafe(sql.to_owned()).into_sql_str();
        match &self.pool {
            Pool::Sqlite(p) => p.prepare(sql).await.map(|s| described(s.columns(), false)),
            Pool::Postgres(p) => p.prepare(sql).await.map(|s| described(s.columns(), true)),
            Pool::MySql(p) => p.prepare(sql).await.map(|s| described(s.columns(), false)),
        }
        .map_err(|e| self.err(e))
    }

    pub(crate) async fn rows(&self, st: &Stmt) -> Result<Vec<Map<String, Value>>, ActionError> {
        match self.run(st, true).await? {
            Fetched::Rows(r) => Ok(r),
            Fetched::Affected(_) => Ok(Vec::new()),
        }
    }

    /// The first `most` rows of a query: the rest are not read into memory
    /// (a statement that returns no rows gives none).
    pub(crate) async fn rows_at_most(
        &self,
        st: &Stmt,
        most: usize,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        match &self.pool {
            Pool::Sqlite(p) => fetch_most!(self, st, most, p, decode_sqlite),
            Pool::Postgres(p) => fetch_most!(self, st, most, p, decode_pg),
            Pool::MySql(p) => fetch_most!(self, st, most, p, decode_mysql),
        }
    }

    pub(crate) async fn run(&self, st: &Stmt, fetch: bool) -> Result<Fetched, ActionError> {
        match &self.pool {
            Pool::Sqlite(p) => exec!(self, st, fetch, p, decode_sqlite),
            Pool::Postgres(p) => exec!(self, st, fetch, p, decode_pg),
            Pool::MySql(p) => exec!(self, st, fetch, p, decode_mysql),
        }
    }

    /// Begin a transaction that will write. SQLite takes its write lock at
    /// once (`BEGIN IMMEDIATE`), waiting for another writer up to the busy
    /// timeout: a transaction that reads first and writes later fails at
    /// once ("database is locked") when another connection wrote meanwhile,
    /// such as an after-hook's flow writing to the same file.
    /// Make the completions table when missing (once per pool), and forget
    /// completions older than a week.
    pub(crate) async fn completions_ready(self: Arc<Self>) -> Result<(), ActionError> {
        self.completions
            .get_or_try_init(|| async {
                let create = Stmt {
                    sql: format!(
                        "CREATE TABLE IF NOT EXISTS {COMPLETIONS} (step_key VARCHAR(255) NOT NULL PRIMARY KEY, result TEXT NOT NULL, completed_at VARCHAR(40) NOT NULL)"
                    ),
                    params: Vec::new(),
                };
                // Two processes that make it at once: PostgreSQL refuses the
                // second (a duplicate type name, despite `IF NOT EXISTS`);
                // asked again, it sees the table made.
                if self.run(&create, false).await.is_err() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    self.run(&create, false).await?;
                }
                let before = time::OffsetDateTime::now_utc()
                    - time::Duration::days(COMPLETIONS_KEPT_DAYS);
                let prune = Stmt {
                    sql: format!(
                        "DELETE FROM {COMPLETIONS} WHERE completed_at < {}",
                        self.backend.placeholder(1)
                    ),
                    params: vec![Value::from(crate::decode::rfc3339(before))],
                };
                self.run(&prune, false).await.map(|_| ())
            })
            .await
            .map(|_| ())
    }

    /// A transaction for a write step (with the completions table ready,
    /// made before the transaction takes SQLite's write lock).
    pub async fn begin_write(self: &Arc<Self>) -> Result<Tx, ActionError> {
        self.clone().completions_ready().await?;
        match &self.pool {
            Pool::Sqlite(p) => Ok(Tx {
                db: self.clone(),
                conn: TxConn::Sqlite(
                    p.begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(|e| self.err(e))?,
                ),
            }),
            _ => self.begin().await,
        }
    }

    /// Begin a transaction on one connection; dropping it rolls back.
    pub async fn begin(self: &Arc<Self>) -> Result<Tx, ActionError> {
        let conn = match &self.pool {
            Pool::Sqlite(p) => TxConn::Sqlite(p.begin().await.map_err(|e| self.err(e))?),
            Pool::Postgres(p) => TxConn::Postgres(p.begin().await.map_err(|e| self.err(e))?),
            Pool::MySql(p) => TxConn::MySql(p.begin().await.map_err(|e| self.err(e))?),
        };
        Ok(Tx {
            db: self.clone(),
            conn,
        })
    }

    /// The columns of `table` with their types and its primary key, from
    /// the database itself (cached).
    pub(crate) async fn table(&self, table: &str) -> Result<Arc<Table>, ActionError> {
        if !valid_ident(table) {
            return Err(ActionError::flow(format!(
                "`{table}` is not a valid collection name (letters, digits and `_`)"
            )));
        }
        if let Some(c) = self.schema.lock().ok().and_then(|s| s.get(table).cloned()) {
            return Ok(c);
        }
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name AS column_name, type AS data_type, pk > 0 AS is_pk FROM pragma_table_info(?)"
            }
            Backend::Postgres => {
                "SELECT c.column_name::text AS column_name, c.udt_name::text AS data_type, \
                 EXISTS (SELECT 1 FROM information_schema.table_constraints tc \
                   JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema \
                   WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = c.table_schema AND tc.table_name = c.table_name AND k.column_name = c.column_name) AS is_pk \
                 FROM information_schema.columns c WHERE c.table_schema = current_schema() AND c.table_name = $1"
            }
            Backend::MySql => {
                "SELECT CAST(column_name AS CHAR) AS column_name, CAST(data_type AS CHAR) AS data_type, column_key = 'PRI' AS is_pk \
                 FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?"
            }
        };
        let rows = self
            .rows(&Stmt {
                sql: sql.into(),
                params: vec![Value::from(table)],
            })
            .await?;
        if rows.is_empty() {
            return Err(ActionError::data(format!(
                "collection `{table}` does not exist in {}",
                self.shown
            )));
        }
        let mut t = Table::default();
        for r in rows {
            let Some(name) = r.get("column_name").and_then(Value::as_str) else {
                continue;
            };
            let ty = r
                .get("data_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_lowercase();
            let pk = matches!(r.get("is_pk"), Some(Value::Bool(true)))
                || r.get("is_pk")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| n != 0);
            if pk {
                t.pk.push(name.to_owned());
            }
            t.cols.insert(name.to_owned(), ty);
        }
        let t = Arc::new(t);
        if let Ok(mut s) = self.schema.lock() {
            s.insert(table.to_owned(), t.clone());
        }
        Ok(t)
    }

    /// The table, after checking that every field exists in it.
    pub(crate) async fn check_fields<'f>(
        &self,
        table: &str,
        fields: impl Iterator<Item = &'f String>,
    ) -> Result<Arc<Table>, ActionError> {
        let t = self.table(table).await?;
        for f in fields {
            if !valid_ident(f) || !t.cols.contains_key(f) {
                return Err(ActionError::data(format!(
                    "collection `{table}` has no field `{f}` (fields: {})",
                    t.cols.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(t)
    }

    /// A placeholder for a value written to or compared with a column of
    /// type `column_type`. PostgreSQL infers a parameter's type from its
    /// context, so its values are sent as text and cast to the column's type
    /// there (see [`Db::param_value`]).
    pub(crate) fn param(&self, n: usize, column_type: Option<&String>) -> String {
        let mut s = String::new();
        self.push_param(&mut s, n, column_type);
        s
    }

    /// [`Db::param`], written at the end of `out` (a statement of many rows
    /// writes thousands).
    pub(crate) fn push_param(&self, out: &mut String, n: usize, column_type: Option<&String>) {
        match (self.backend, column_type) {
            (Backend::Postgres, Some(t)) if !t.is_empty() && pg_cast_from_text(t) => {
                out.push_str("CAST(CAST(");
                self.backend.push_placeholder(out, n);
                out.push_str(" AS TEXT) AS ");
                push_pg_cast_type(out, t);
                out.push(')');
            }
            _ => self.backend.push_placeholder(out, n),
        }
    }

    /// The value to bind for [`Db::param`].
    pub(crate) fn param_value(&self, v: &Value, column_type: Option<&String>) -> Value {
        match (self.backend, column_type, v) {
            (_, _, Value::Null) => Value::Null,
            (Backend::Postgres, Some(t), Value::String(_)) if !t.is_empty() => v.clone(),
            (Backend::Postgres, Some(t), other) if !t.is_empty() => {
                Value::String(other.to_string())
            }
            _ => v.clone(),
        }
    }

    /// The select list for `table`: columns whose type cannot be read
    /// directly are read as text.
    pub(crate) fn select_list<'c>(
        &self,
        cols: impl IntoIterator<Item = (&'c String, &'c String)>,
    ) -> String {
        cols.into_iter()
            .map(|(c, t)| {
                let q = self.backend.quote(c);
                if readable(self.backend, t) {
                    q
                } else {
                    format!("CAST({q} AS {}) AS {q}", text_type(self.backend))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_redaction() {
        // SAFETY of the test: a variable name no other test uses.
        unsafe { std::env::set_var("SLUICE_TEST_PW", "s3cret") };
        let url = expand("postgres://app:${env:SLUICE_TEST_PW}@db/x").unwrap();
        assert_eq!(url, "postgres://app:s3cret@db/x");
        assert_eq!(redact(&url), "postgres://app:***@db/x");
        // A password holding `@` is hidden whole; a message keeps its words.
        assert_eq!(
            redact("postgres://app:p@ss@db/x?sslmode=require"),
            "postgres://app:***@db/x?sslmode=require"
        );
        assert_eq!(
            redact("cannot reach postgres://app:p@ss@db/x: refused by ops@example.com"),
            "cannot reach postgres://app:***@db/x: refused by ops@example.com"
        );
        assert!(
            expand("x${env:SLUICE_NOT_SET_ANYWHERE}")
                .unwrap_err()
                .contains("SLUICE_NOT_SET_ANYWHERE")
        );
    }

    #[test]
    fn driver_internals_are_left_out_of_messages() {
        assert_eq!(
            without_internals(
                "expected 2 parameters, got 1 (sqlx_mysql::connection::executor:131)"
            ),
            "expected 2 parameters, got 1"
        );
        assert_eq!(
            without_internals("a (b) (sqlx_core::x:1); c (sqlx is fine)"),
            "a (b); c (sqlx is fine)"
        );
    }

    /// A pooled connection that the server closed while it was idle is
    /// not handed out broken: it is checked, found closed and replaced.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let cases = [
            (
                "SLUICE_TEST_POSTGRES_URL",
                "SELECT pg_backend_pid() AS id",
                "SELECT pg_terminate_backend({id}) AS done",
            ),
            (
                "SLUICE_TEST_MYSQL_URL",
                "SELECT CONNECTION_ID() AS id",
                "KILL CONNECTION {id}",
            ),
        ];
        for (var, who, kill) in cases {
            let url = match std::env::var(var) {
                Ok(url) if !url.is_empty() => url,
                _ => {
                    assert!(std::env::var("CI").is_err(), "{var} must be set under CI");
                    continue;
                }
            };
            let st = |sql: &str, params: Vec<Value>| Stmt {
                sql: sql.into(),
                params,
            };
            let db = open("db", &url).await.expect("open");
            let other = open("other", &url).await.expect("open");
            let rows = db.rows(&st(who, Vec::new())).await.expect(who);
            let id = rows[0]["id"].clone();
            let kill = kill.replace("{id}", &id.to_string());
            other.run(&st(&kill, Vec::new()), false).await.expect(&kill);
            tokio::time::sleep(CHECK_IDLE_AFTER + std::time::Duration::from_millis(200)).await;
            let rows = db
                .rows(&st(who, Vec::new()))
                .await
                .expect("a new connection");
            assert_ne!(rows[0]["id"], id, "{var}");
        }
    }

    #[test]
    fn identifiers() {
        assert!(valid_ident("customers_2"));
        for bad in ["", "2x", "a-b", "a b", "a;drop", "x\"", &"a".repeat(64)] {
            assert!(!valid_ident(bad), "{bad}");
        }
    }
}
