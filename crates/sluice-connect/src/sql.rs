//! SQL connections (SQLite, PostgreSQL, MariaDB/MySQL through sqlx) and the
//! standardized actions on them (SEMANTICS.md section 6).
//!
//! * A flow declares `connections: {NAME: {url: ...}}`; `${env:VAR}` in a URL
//!   is replaced by the environment variable, so credentials stay out of flow
//!   files, and URLs are shown with their password hidden.
//! * Pools are opened on first use and shared by every run of an engine.
//! * Collections and fields are checked against the database's own schema and
//!   quoted; values are always bound parameters.
//!
//! Actions so far: `sql.query`, `sql.create`, `sql.lookup`, `sql.update`,
//! `sql.upsert` and `sql.delete`; each write runs in one transaction.

use crate::hooks::{Change, ChangeOp, DataHooks, When};
use crate::{Action, ActionCx, ActionError, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::{AssertSqlSafe, Column, Row, TypeInfo, ValueRef};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub mod bulk;

/// The database behind a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        Some(match scheme {
            "sqlite" => Self::Sqlite,
            "postgres" | "postgresql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MySql,
            _ => return None,
        })
    }

    /// Quote an identifier that has been validated.
    fn quote(self, ident: &str) -> String {
        match self {
            Self::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// The placeholder for the `n`th parameter (from 1).
    fn placeholder(self, n: usize) -> String {
        let mut s = String::new();
        self.push_placeholder(&mut s, n);
        s
    }

    /// [`Backend::placeholder`], written at the end of `out`.
    fn push_placeholder(self, out: &mut String, n: usize) {
        match self {
            Self::Postgres => {
                use std::fmt::Write;
                let _ = write!(out, "${n}");
            }
            _ => out.push('?'),
        }
    }
}

/// Replace `${env:NAME}` by the variable's value.
pub fn expand_env(url: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = url;
    while let Some(i) = rest.find("${env:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after
            .find('}')
            .ok_or("unclosed `${env:` in the connection URL")?;
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether the database refused the data itself: a constraint (unique,
/// foreign key, not null, check, exclusion) or a value its column cannot
/// take (SQLSTATE classes 23 and 22 on PostgreSQL and MariaDB; SQLite's
/// codes are numbers of another kind). A person must fix the data (or the
/// flow); trying again later would fail the same way, so the failure is
/// the data's, not the outside system's (which a `retry` waits out).
fn refuses_data(e: &sqlx::Error) -> bool {
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
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_owned(),
    }
}

/// Whether `s` is a plain identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes.
pub fn valid_ident(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 63
        && matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// A table as the database describes it.
#[derive(Debug, Default)]
struct Table {
    /// column -> database type (lower case)
    cols: BTreeMap<String, String>,
    /// the primary key's columns
    pk: Vec<String>,
}

/// One open database with its schema cache.
pub struct Db {
    backend: Backend,
    pool: Pool,
    /// table -> (column -> database type)
    schema: Mutex<HashMap<String, Arc<Table>>>,
    shown: String,
}

/// Pools shared by every run of an engine, keyed by URL.
#[derive(Default)]
pub struct Pools {
    by_url: Mutex<HashMap<String, Arc<OnceCell<Arc<Db>>>>>,
}

/// The connections a step can use: the flow's declarations and the pools.
pub struct Connections<'a> {
    /// The flow's `connections`.
    pub declared: &'a BTreeMap<String, Value>,
    /// The engine's pools.
    pub pools: &'a Pools,
}

impl Connections<'_> {
    /// The database of connection `name`, opened on first use.
    pub async fn db(&self, name: &str) -> Result<Arc<Db>, ActionError> {
        let decl = self
            .declared
            .get(name)
            .ok_or_else(|| ActionError::flow(format!("no connection `{name}` in the flow")))?;
        let raw = decl
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ActionError::flow(format!("connection `{name}` has no `url`")))?;
        let url =
            expand_env(raw).map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))?;
        let cell = {
            let mut map = self
                .pools
                .by_url
                .lock()
                .map_err(|_| ActionError::external("connection pools are poisoned"))?;
            map.entry(url.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| open(name, &url)).await.cloned()
    }
}

async fn open(name: &str, url: &str) -> Result<Arc<Db>, ActionError> {
    let shown = redact(url);
    let fail = |e: sqlx::Error| {
        ActionError::external(format!(
            "connection `{name}` ({shown}) refused: {}",
            redact(&e.to_string())
        ))
    };
    let backend = Backend::of(url).ok_or_else(|| {
        ActionError::flow(format!(
            "connection `{name}`: `{shown}` is not a sqlite:, postgres: or mysql: URL"
        ))
    })?;
    let opts = sqlx::pool::PoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5));
    let pool = match backend {
        Backend::Sqlite => Pool::Sqlite(
            sqlx::pool::PoolOptions::new()
                .max_connections(if url.contains(":memory:") { 1 } else { 8 })
                .connect(url)
                .await
                .map_err(fail)?,
        ),
        Backend::Postgres => Pool::Postgres(opts.connect(url).await.map_err(fail)?),
        Backend::MySql => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            Pool::MySql(
                sqlx::pool::PoolOptions::new()
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
    }))
}

/// A statement with its parameters.
struct Stmt {
    sql: String,
    params: Vec<Value>,
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

enum TxConn {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
}

/// A transaction on one connection of a [`Db`]. Dropped without
/// [`Tx::commit`], it rolls back.
pub struct Tx {
    db: Arc<Db>,
    conn: TxConn,
}

impl Tx {
    async fn run(&mut self, st: &Stmt, fetch: bool) -> Result<Fetched, ActionError> {
        let db = self.db.clone();
        match &mut self.conn {
            TxConn::Sqlite(t) => exec!(db, st, fetch, &mut **t, decode_sqlite),
            TxConn::Postgres(t) => exec!(db, st, fetch, &mut **t, decode_pg),
            TxConn::MySql(t) => exec!(db, st, fetch, &mut **t, decode_mysql),
        }
    }

    async fn rows(
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
    async fn pg_rows_of_arrays(
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

    /// Run a statement without parameters or results (savepoints).
    async fn raw(&mut self, sql: &str) -> Result<(), ActionError> {
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
enum Fetched {
    Rows(Vec<Map<String, Value>>),
    Affected(u64),
}

/// What a multi-row insert of the bulk writer made: its rows, or (when
/// none is read) how many.
enum Made {
    Rows(Vec<Got>),
    Count(u64),
}

impl Db {
    fn err(&self, e: sqlx::Error) -> ActionError {
        let mut message = format!("{}: {}", self.shown, redact(&e.to_string()));
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
    async fn table_rows(
        &self,
        st: &Stmt,
        cols: &BTreeMap<String, String>,
    ) -> Result<Vec<Map<String, Value>>, ActionError> {
        Ok(numbers_again(self.rows(st).await?, cols))
    }

    /// The columns of a query's result and their types (PostgreSQL's names,
    /// as the schema gives them; empty for the other databases, whose
    /// parameters need no type), from the database's description of it.
    async fn query_columns(&self, sql: &str) -> Result<BTreeMap<String, String>, ActionError> {
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

    async fn rows(&self, st: &Stmt) -> Result<Vec<Map<String, Value>>, ActionError> {
        match self.run(st, true).await? {
            Fetched::Rows(r) => Ok(r),
            Fetched::Affected(_) => Ok(Vec::new()),
        }
    }

    async fn run(&self, st: &Stmt, fetch: bool) -> Result<Fetched, ActionError> {
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
    pub async fn begin_write(self: &Arc<Self>) -> Result<Tx, ActionError> {
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
    async fn table(&self, table: &str) -> Result<Arc<Table>, ActionError> {
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
    async fn check_fields<'f>(
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
    fn param(&self, n: usize, column_type: Option<&String>) -> String {
        let mut s = String::new();
        self.push_param(&mut s, n, column_type);
        s
    }

    /// [`Db::param`], written at the end of `out` (a statement of many rows
    /// writes thousands).
    fn push_param(&self, out: &mut String, n: usize, column_type: Option<&String>) {
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
    fn param_value(&self, v: &Value, column_type: Option<&String>) -> Value {
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
    fn select_list<'c>(&self, cols: impl IntoIterator<Item = (&'c String, &'c String)>) -> String {
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

fn text_type(b: Backend) -> &'static str {
    match b {
        Backend::MySql => "CHAR",
        _ => "TEXT",
    }
}

/// Whether a PostgreSQL column of type `t` takes a value sent as text only
/// after a cast: text and varchar columns take text as it is.
fn pg_cast_from_text(t: &str) -> bool {
    !matches!(t, "text" | "varchar")
}

/// A PostgreSQL type as a cast target (array types start with `_`).
fn push_pg_cast_type(out: &mut String, udt: &str) {
    match udt.strip_prefix('_') {
        Some(elem) => {
            out.push_str(elem);
            out.push_str("[]");
        }
        None => out.push_str(udt),
    }
}

fn readable(b: Backend, t: &str) -> bool {
    match b {
        Backend::Sqlite => true,
        Backend::Postgres => matches!(
            t,
            "bool"
                | "int2"
                | "int4"
                | "int8"
                | "float4"
                | "float8"
                | "text"
                | "varchar"
                | "bpchar"
                | "name"
                | "json"
                | "jsonb"
        ),
        Backend::MySql => matches!(
            t,
            "tinyint"
                | "smallint"
                | "mediumint"
                | "int"
                | "bigint"
                | "float"
                | "double"
                | "varchar"
                | "char"
                | "text"
                | "tinytext"
                | "mediumtext"
                | "longtext"
                | "json"
        ),
    }
}

/// Whether a column of type `t` holds decimals, which some databases give
/// as text.
fn decimal(t: &str) -> bool {
    matches!(t, "numeric" | "decimal")
}

/// A decimal read as text becomes a number again.
fn number_again(v: &mut Value) {
    if let Value::String(s) = &*v {
        *v = number_from_text(s);
    }
}

/// The columns of `cols` that hold decimals.
fn decimal_columns(cols: &BTreeMap<String, String>) -> Vec<&String> {
    cols.iter()
        .filter(|(_, t)| decimal(t))
        .map(|(c, _)| c)
        .collect()
}

/// The decimals of `row` (in columns `decimals`) read as text become
/// numbers again.
fn row_numbers_again(row: &mut Map<String, Value>, decimals: &[&String]) {
    for c in decimals {
        if let Some(v) = row.get_mut(*c) {
            number_again(v);
        }
    }
}

/// Decimals read as text become numbers again.
fn numbers_again(
    mut rows: Vec<Map<String, Value>>,
    cols: &BTreeMap<String, String>,
) -> Vec<Map<String, Value>> {
    let decimals = decimal_columns(cols);
    if !decimals.is_empty() {
        for row in &mut rows {
            row_numbers_again(row, &decimals);
        }
    }
    rows
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn number_from_text(s: &str) -> Value {
    s.parse::<i64>()
        .map(Value::from)
        .or_else(|_| s.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::String(s.to_owned()))
}

fn unreadable(col: &str, ty: &str) -> ActionError {
    ActionError::data(format!(
        "column `{col}` has type {ty}, which Sluice cannot read yet; cast it to text in the query"
    ))
}

fn decode_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| ActionError::external(e.to_string()))?;
        let v = if raw.is_null() {
            Value::Null
        } else if let Ok(x) = row.try_get::<i64, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<f64, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<String, _>(i) {
            Value::from(x)
        } else if let Ok(x) = row.try_get::<Vec<u8>, _>(i) {
            Value::from(String::from_utf8_lossy(&x).into_owned())
        } else {
            return Err(unreadable(c.name(), c.type_info().name()));
        };
        m.insert(c.name().to_owned(), v);
    }
    Ok(m)
}

/// The PostgreSQL types Sluice reads, by sqlx's (upper-case) names.
#[derive(Clone, Copy)]
enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Json,
    Numeric,
    Uuid,
    TimestampTz,
    Timestamp,
    Date,
    Time,
}

fn pg_kind(ty: &str) -> Option<PgKind> {
    Some(match ty {
        "BOOL" => PgKind::Bool,
        "INT2" => PgKind::Int2,
        "INT4" => PgKind::Int4,
        "INT8" => PgKind::Int8,
        "FLOAT4" => PgKind::Float4,
        "FLOAT8" => PgKind::Float8,
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" => PgKind::Text,
        "JSON" | "JSONB" => PgKind::Json,
        "NUMERIC" => PgKind::Numeric,
        "UUID" => PgKind::Uuid,
        "TIMESTAMPTZ" => PgKind::TimestampTz,
        "TIMESTAMP" => PgKind::Timestamp,
        "DATE" => PgKind::Date,
        "TIME" => PgKind::Time,
        _ => return None,
    })
}

/// Cell `i` of a PostgreSQL row.
fn decode_pg_cell(row: &sqlx::postgres::PgRow, i: usize) -> Result<Value, ActionError> {
    use sqlx::Decode;
    use sqlx::postgres::{PgValueRef, Postgres};
    /// Decode a value of the type sqlx names (checked here): no second
    /// lookup and type check as `Row::try_get` does per cell.
    fn de<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, ActionError> {
        T::decode(raw).map_err(|e| ActionError::external(e.to_string()))
    }
    let raw = row
        .try_get_raw(i)
        .map_err(|e| ActionError::external(e.to_string()))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let c = &row.columns()[i];
    let ty = c.type_info().name();
    let Some(kind) = pg_kind(ty) else {
        return Err(unreadable(c.name(), ty));
    };
    Ok(match kind {
        PgKind::Bool => Value::from(de::<bool>(raw)?),
        PgKind::Int2 => Value::from(de::<i16>(raw)?),
        PgKind::Int4 => Value::from(de::<i32>(raw)?),
        PgKind::Int8 => Value::from(de::<i64>(raw)?),
        PgKind::Float4 => Value::from(de::<f32>(raw)?),
        PgKind::Float8 => Value::from(de::<f64>(raw)?),
        PgKind::Text => Value::from(de::<String>(raw)?),
        PgKind::Json => de::<sqlx::types::Json<Value>>(raw)?.0,
        PgKind::Numeric => number_from_text(&de::<sqlx::types::BigDecimal>(raw)?.to_string()),
        PgKind::Uuid => Value::from(de::<sqlx::types::Uuid>(raw)?.to_string()),
        PgKind::TimestampTz => Value::from(rfc3339(de::<time::OffsetDateTime>(raw)?)),
        PgKind::Timestamp => Value::from(
            rfc3339(de::<time::PrimitiveDateTime>(raw)?.assume_utc())
                .trim_end_matches('Z')
                .to_owned(),
        ),
        PgKind::Date => Value::from(de::<time::Date>(raw)?.to_string()),
        PgKind::Time => Value::from(de::<time::Time>(raw)?.to_string()),
    })
}

fn decode_pg(row: &sqlx::postgres::PgRow) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        m.insert(c.name().to_owned(), decode_pg_cell(row, i)?);
    }
    Ok(m)
}

/// A row a statement of the bulk writer returned: decoded, or (PostgreSQL)
/// as it came, each cell decoded where it is needed: the writer reads the
/// key and the fields tokens take, the record's own task the rest.
enum Got {
    Map(Map<String, Value>),
    /// Every column of a type Sluice reads (so decoding it cannot fail
    /// but for a broken connection); the cell decoded first, kept (the
    /// writer reads a row's key up to three times: to match the row, for
    /// its children, for a token).
    Pg(sqlx::postgres::PgRow, std::sync::OnceLock<(usize, Value)>),
}

impl Got {
    /// PostgreSQL rows kept as they came when every column is of a type
    /// Sluice reads; decoded now otherwise (for the error).
    fn pg(
        rows: Vec<sqlx::postgres::PgRow>,
        cols: &BTreeMap<String, String>,
    ) -> Result<Vec<Got>, ActionError> {
        let readable = rows.first().is_none_or(|r| {
            r.columns()
                .iter()
                .all(|c| pg_kind(c.type_info().name()).is_some())
        });
        if readable {
            return Ok(rows
                .into_iter()
                .map(|r| Got::Pg(r, std::sync::OnceLock::new()))
                .collect());
        }
        let rows = rows.iter().map(decode_pg).collect::<Result<Vec<_>, _>>()?;
        Ok(numbers_again(rows, cols)
            .into_iter()
            .map(Got::Map)
            .collect())
    }

    /// Field `name` of the row.
    fn field(
        &self,
        name: &str,
        cols: &BTreeMap<String, String>,
    ) -> Result<Option<Value>, ActionError> {
        match self {
            Got::Map(m) => Ok(m.get(name).cloned()),
            Got::Pg(r, first) => match r.columns().iter().position(|c| c.name() == name) {
                None => Ok(None),
                Some(i) => {
                    if let Some((at, v)) = first.get()
                        && *at == i
                    {
                        return Ok(Some(v.clone()));
                    }
                    let mut v = decode_pg_cell(r, i)?;
                    if cols.get(name).is_some_and(|t| decimal(t)) {
                        number_again(&mut v);
                    }
                    let _ = first.set((i, v.clone()));
                    Ok(Some(v))
                }
            },
        }
    }

    /// The row's new id: its key, or else its field `id`.
    fn new_id(&self, t: &Table) -> Result<Value, ActionError> {
        for k in t.pk.first().map(String::as_str).into_iter().chain(["id"]) {
            if let Some(v) = self.field(k, &t.cols)? {
                return Ok(v);
            }
        }
        Ok(Value::Null)
    }

    /// The whole row.
    fn into_map(self, cols: &BTreeMap<String, String>) -> Result<Map<String, Value>, ActionError> {
        match self {
            Got::Map(m) => Ok(m),
            Got::Pg(r, _) => {
                let mut m = decode_pg(&r)?;
                row_numbers_again(&mut m, &decimal_columns(cols));
                Ok(m)
            }
        }
    }
}

fn decode_mysql(row: &sqlx::mysql::MySqlRow) -> Result<Map<String, Value>, ActionError> {
    let mut m = Map::with_capacity(row.columns().len());
    for (i, c) in row.columns().iter().enumerate() {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| ActionError::external(e.to_string()))?;
        let ty = c.type_info().name().to_ascii_uppercase();
        let get = |e: sqlx::Error| ActionError::external(e.to_string());
        let v = if raw.is_null() {
            Value::Null
        } else if ty == "BOOLEAN" {
            Value::from(row.try_get::<bool, _>(i).map_err(get)?)
        } else if ty.ends_with("UNSIGNED") {
            Value::from(row.try_get::<u64, _>(i).map_err(get)?)
        } else if matches!(
            ty.as_str(),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT"
        ) {
            Value::from(row.try_get::<i64, _>(i).map_err(get)?)
        } else if ty == "FLOAT" {
            Value::from(row.try_get::<f32, _>(i).map_err(get)?)
        } else if ty == "DOUBLE" {
            Value::from(row.try_get::<f64, _>(i).map_err(get)?)
        } else if ty == "DECIMAL" {
            number_from_text(
                &row.try_get::<sqlx::types::BigDecimal, _>(i)
                    .map_err(get)?
                    .to_string(),
            )
        } else if ty == "DATETIME" {
            Value::from(
                rfc3339(
                    row.try_get::<time::PrimitiveDateTime, _>(i)
                        .map_err(get)?
                        .assume_utc(),
                )
                .trim_end_matches('Z')
                .to_owned(),
            )
        } else if ty == "TIMESTAMP" {
            Value::from(rfc3339(
                row.try_get::<time::OffsetDateTime, _>(i).map_err(get)?,
            ))
        } else if ty == "DATE" {
            Value::from(row.try_get::<time::Date, _>(i).map_err(get)?.to_string())
        } else if ty == "JSON" {
            row.try_get::<sqlx::types::Json<Value>, _>(i)
                .map_err(get)?
                .0
        } else if let Ok(s) = row.try_get::<String, _>(i) {
            Value::from(s)
        } else {
            return Err(unreadable(c.name(), &ty));
        };
        m.insert(c.name().to_owned(), v);
    }
    Ok(m)
}

/// Replace `:name` parameters by the backend's placeholders, outside string
/// literals, quoted identifiers and PostgreSQL's `::` casts.
fn named_params(
    sql: &str,
    backend: Backend,
    values: &Map<String, Value>,
) -> Result<Stmt, ActionError> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut params = Vec::new();
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
            {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let name = &sql[start..j];
                let v = values.get(name).ok_or_else(|| {
                    ActionError::flow(format!(
                        "the query uses `:{name}`, which `params` does not give"
                    ))
                })?;
                out.push_str(&sql[last..i]);
                params.push(v.clone());
                out.push_str(&backend.placeholder(params.len()));
                last = j;
                i = j;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[last..]);
    Ok(Stmt { sql: out, params })
}

fn where_clause(
    db: &Db,
    cols: &BTreeMap<String, String>,
    criteria: &Map<String, Value>,
    params: &mut Vec<Value>,
) -> String {
    criteria
        .iter()
        .map(|(k, v)| {
            let col = db.backend.quote(k);
            if v.is_null() {
                format!("{col} IS NULL")
            } else {
                params.push(db.param_value(v, cols.get(k)));
                format!("{col} = {}", db.param(params.len(), cols.get(k)))
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Rows emitted one by one: the steps after run once per row.
fn emit_individually(rows: Vec<Map<String, Value>>) -> Outcome {
    let items: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    Outcome {
        payload: Some(Value::Array(items.clone())),
        items: Some(items),
        ..Outcome::default()
    }
}

/// `sql.query`: a query or statement with named parameters.
pub struct SqlQuery;

/// How `sql.query` emits what it read.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum QueryMode {
    /// `{results: [rows]}`.
    #[default]
    FetchAll,
    /// The one row; more than one fails; none fails unless `allowZeroResults`.
    ExpectSingle,
    /// A statement: `{rowsAffected}`.
    Statement,
    /// Each row continues the flow on its own (a run per row).
    EmitIndividually,
}

/// Options of `sql.query`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlQueryOptions {
    /// The connection's name in the flow's `connections`.
    pub connection: String,
    /// The SQL, with `:name` parameters.
    pub query: String,
    /// Values of the parameters (templates allowed).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// `fetchAll` (default), `expectSingle`, `statement` or `emitIndividually`.
    #[serde(default)]
    pub mode: QueryMode,
    /// With `expectSingle`: no row emits `{}` instead of failing.
    #[serde(default)]
    pub allow_zero_results: bool,
}

impl Action for SqlQuery {
    const KIND: &'static str = "sql.query";
    type Options = SqlQueryOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlQueryOptions,
    ) -> Result<Outcome, ActionError> {
        let db = cx.connections.db(&o.connection).await?;
        let st = named_params(&o.query, db.backend, &o.params)?;
        match o.mode {
            QueryMode::Statement => match db.run(&st, false).await? {
                Fetched::Affected(n) => Ok(Outcome::value(serde_json::json!({"rowsAffected": n}))),
                Fetched::Rows(_) => Ok(Outcome::value(serde_json::json!({"rowsAffected": 0}))),
            },
            QueryMode::EmitIndividually => Ok(emit_individually(db.rows(&st).await?)),
            QueryMode::FetchAll => {
                let rows = db.rows(&st).await?;
                Ok(Outcome::value(serde_json::json!({"results": rows})))
            }
            QueryMode::ExpectSingle => {
                let mut rows = db.rows(&st).await?;
                match rows.len() {
                    1 => Ok(Outcome::value(Value::Object(rows.remove(0)))),
                    0 if o.allow_zero_results => Ok(Outcome::value(Value::Object(Map::new()))),
                    0 => Err(ActionError::data("not found: the query returned no row")),
                    n => Err(ActionError::data(format!(
                        "more than one matching object: the query returned {n} rows"
                    ))),
                }
            }
        }
    }
}

/// `sql.create`: insert one object and emit it as stored.
pub struct SqlCreate;

/// Options of `sql.create`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlCreateOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Field values (templates allowed).
    pub properties: Map<String, Value>,
}

impl Action for SqlCreate {
    const KIND: &'static str = "sql.create";
    type Options = SqlCreateOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlCreateOptions,
    ) -> Result<Outcome, ActionError> {
        let none = Map::new();
        single_change(
            &cx,
            &o.connection,
            &o.collection,
            PatchOp::Create,
            Target::Criteria(&none),
            o.properties,
        )
        .await
    }
}

/// `sql.lookup`: at most one object by criteria.
pub struct SqlLookup;

/// Options of `sql.lookup`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlLookupOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Field values that identify the object (templates allowed).
    #[serde(default)]
    pub criteria: Map<String, Value>,
    /// No match emits `{}` instead of failing.
    #[serde(default)]
    pub allow_zero_results: bool,
    /// Empty criteria (or all null) emit `{}` instead of failing.
    #[serde(default)]
    pub allow_criteria_to_be_omitted: bool,
}

impl Action for SqlLookup {
    const KIND: &'static str = "sql.lookup";
    type Options = SqlLookupOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupOptions,
    ) -> Result<Outcome, ActionError> {
        let db = cx.connections.db(&o.connection).await?;
        let table_info = db.check_fields(&o.collection, o.criteria.keys()).await?;
        let cols = &table_info.cols;
        if o.criteria.values().all(Value::is_null) {
            return if o.allow_criteria_to_be_omitted {
                Ok(Outcome::value(Value::Object(Map::new())))
            } else {
                Err(ActionError::data(
                    "the lookup criteria are missing (allowCriteriaToBeOmitted is false)",
                ))
            };
        }
        let mut params = Vec::new();
        let w = where_clause(&db, cols, &o.criteria, &mut params);
        let st = Stmt {
            sql: format!(
                "SELECT {} FROM {} WHERE {w} LIMIT 2",
                db.select_list(cols),
                db.backend.quote(&o.collection)
            ),
            params,
        };
        let mut rows = db.table_rows(&st, cols).await?;
        match rows.len() {
            1 => Ok(Outcome::value(Value::Object(rows.remove(0)))),
            0 if o.allow_zero_results => Ok(Outcome::value(Value::Object(Map::new()))),
            0 => Err(ActionError::data(format!(
                "not found: no object in `{}` matches the criteria",
                o.collection
            ))),
            _ => Err(ActionError::data(format!(
                "more than one matching object in `{}`",
                o.collection
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rendered_patch_reads_as_serde_reads_it() {
        let same = |v: Value| {
            let fast = Patch::from_json(v.clone()).map(|p| format!("{p:?}"));
            let serde = serde_json::from_value::<Patch>(v).map(|p| format!("{p:?}"));
            match (fast, serde) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{a:?} against {b:?}"),
            }
        };
        same(json!({
            "op": "create", "collection": "customers",
            "properties": {"name": "Ada", "n": 1, "z": null, "a": [1]},
            "setTokens": {"customer": "id"},
            "children": [{"op": "upsert", "collection": "contacts", "parentKey": "customer_id",
                          "criteria": {"email": "a@x"}, "properties": {"b": 2}}]
        }));
        same(json!({"op": "delete", "collection": "t", "criteria": {"id": 1}, "parentKey": null}));
        // Refused as serde refuses them, with its messages.
        same(json!({"op": "merge", "collection": "t"}));
        same(json!({"op": "create", "collection": "t", "extra": 1}));
        same(json!({"op": "create"}));
        same(json!({"op": "create", "collection": "t", "setTokens": {"a": 1}}));
        same(json!({"op": "create", "collection": "t", "properties": [1]}));
        same(json!({"op": "create", "collection": "t", "children": [{"op": "create"}]}));
        same(json!("create"));
    }

    #[test]
    fn env_and_redaction() {
        // SAFETY of the test: a variable name no other test uses.
        unsafe { std::env::set_var("SLUICE_TEST_PW", "s3cret") };
        let url = expand_env("postgres://app:${env:SLUICE_TEST_PW}@db/x").unwrap();
        assert_eq!(url, "postgres://app:s3cret@db/x");
        assert_eq!(redact(&url), "postgres://app:***@db/x");
        assert!(
            expand_env("x${env:SLUICE_NOT_SET_ANYWHERE}")
                .unwrap_err()
                .contains("SLUICE_NOT_SET_ANYWHERE")
        );
    }

    #[test]
    fn identifiers() {
        assert!(valid_ident("customers_2"));
        for bad in ["", "2x", "a-b", "a b", "a;drop", "x\"", &"a".repeat(64)] {
            assert!(!valid_ident(bad), "{bad}");
        }
    }

    #[test]
    fn named_parameters_skip_literals_and_casts() {
        let mut p = Map::new();
        p.insert("id".into(), json!(1));
        p.insert("n".into(), json!("x"));
        let st = named_params(
            "SELECT ':id', a::text FROM t WHERE id = :id AND n = :n OR id = :id",
            Backend::Postgres,
            &p,
        )
        .unwrap();
        assert_eq!(
            st.sql,
            "SELECT ':id', a::text FROM t WHERE id = $1 AND n = $2 OR id = $3"
        );
        assert_eq!(st.params, vec![json!(1), json!("x"), json!(1)]);
        assert!(named_params("SELECT :missing", Backend::Sqlite, &p).is_err());
    }
}

/// Objects matching `criteria` (at most two: enough to tell one from several).
async fn find(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    criteria: &Map<String, Value>,
) -> Result<Vec<Map<String, Value>>, ActionError> {
    let mut params = Vec::new();
    let w = where_clause(db, &t.cols, criteria, &mut params);
    let sql = format!(
        "SELECT {} FROM {} WHERE {w} LIMIT 2",
        db.select_list(&t.cols),
        db.backend.quote(name)
    );
    tx.rows(&Stmt { sql, params }, t).await
}

/// What selects exactly `row`: its primary key, or else the criteria.
fn row_key(
    t: &Table,
    row: &Map<String, Value>,
    criteria: &Map<String, Value>,
) -> Map<String, Value> {
    if !t.pk.is_empty()
        && t.pk
            .iter()
            .all(|k| row.get(k).is_some_and(|v| !v.is_null()))
    {
        t.pk.iter().map(|k| (k.clone(), row[k].clone())).collect()
    } else {
        criteria.clone()
    }
}

/// Update `props` of the row selected by `key`, and read it back.
async fn update_row(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    key: &Map<String, Value>,
    props: &Map<String, Value>,
) -> Result<Map<String, Value>, ActionError> {
    if !props.is_empty() {
        let mut params = Vec::new();
        let sets: Vec<String> = props
            .iter()
            .map(|(k, v)| {
                params.push(db.param_value(v, t.cols.get(k)));
                format!(
                    "{} = {}",
                    db.backend.quote(k),
                    db.param(params.len(), t.cols.get(k))
                )
            })
            .collect();
        let w = where_clause(db, &t.cols, key, &mut params);
        let sql = format!(
            "UPDATE {} SET {} WHERE {w}",
            db.backend.quote(name),
            sets.join(", ")
        );
        tx.run(&Stmt { sql, params }, false).await?;
    }
    // The key may have been updated too.
    let mut after = key.clone();
    for (k, v) in props {
        if after.contains_key(k) {
            after.insert(k.clone(), v.clone());
        }
    }
    Ok(find(tx, db, name, t, &after)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

fn criteria_missing(c: &Map<String, Value>) -> bool {
    c.values().all(Value::is_null)
}

/// Options of `sql.update` and `sql.upsert`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlWriteOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Field values that identify the object: its id or unique fields.
    pub criteria: Map<String, Value>,
    /// The fields to write (an update is partial: other fields are kept).
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// `sql.update`: update the one object matching the criteria; none is "not found".
pub struct SqlUpdate;

/// `sql.upsert`: update the one object matching the criteria, or create it.
pub struct SqlUpsert;

/// Create one object in a transaction and read it back.
async fn create_in(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    props: &Map<String, Value>,
) -> Result<Map<String, Value>, ActionError> {
    let table = db.backend.quote(name);
    let names: Vec<String> = props.keys().map(|k| db.backend.quote(k)).collect();
    let marks: Vec<String> = props
        .keys()
        .enumerate()
        .map(|(i, k)| db.param(i + 1, t.cols.get(k)))
        .collect();
    let params: Vec<Value> = props
        .iter()
        .map(|(k, v)| db.param_value(v, t.cols.get(k)))
        .collect();
    let insert = if names.is_empty() {
        match db.backend {
            Backend::MySql => format!("INSERT INTO {table} () VALUES ()"),
            _ => format!("INSERT INTO {table} DEFAULT VALUES"),
        }
    } else {
        format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        )
    };
    // SQLite, PostgreSQL and MariaDB (10.5+) all return the stored row.
    let sql = format!("{insert} RETURNING {}", db.select_list(&t.cols));
    Ok(tx
        .rows(&Stmt { sql, params }, t)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// Update (or, with `create`, create) the one object matching `criteria`.
async fn write_in(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    criteria: &Map<String, Value>,
    props: &Map<String, Value>,
    create: bool,
) -> Result<Map<String, Value>, ActionError> {
    let op = if create {
        PatchOp::Upsert
    } else {
        PatchOp::Update
    };
    let planned = plan_in(tx, db, name, t, op, criteria, props.clone()).await?;
    apply_in(tx, db, name, t, planned).await.map(|(row, _)| row)
}

/// Delete the one object matching `criteria`; its key, or `{}` when none.
async fn delete_in(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    criteria: &Map<String, Value>,
) -> Result<Map<String, Value>, ActionError> {
    let planned = plan_in(tx, db, name, t, PatchOp::Delete, criteria, Map::new()).await?;
    apply_in(tx, db, name, t, planned).await.map(|(row, _)| row)
}

/// The change `op` makes to `name`, decided in `tx` (not written yet):
/// `None` for a delete that finds nothing; "not found" and "more than one
/// matching object" are errors, as SEMANTICS.md section 6 says.
async fn plan_in(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    op: PatchOp,
    criteria: &Map<String, Value>,
    props: Map<String, Value>,
) -> Result<Option<Change>, ActionError> {
    let change = |op, key, payload, previous| Change {
        connection: String::new(),
        collection: name.to_owned(),
        op,
        key,
        payload,
        previous,
        row: None,
    };
    if op == PatchOp::Create {
        return Ok(Some(change(ChangeOp::Create, Map::new(), props, None)));
    }
    if criteria_missing(criteria) {
        return Err(ActionError::data(
            "the criteria are missing: give the object's id or unique fields",
        ));
    }
    let mut found = find(tx, db, name, t, criteria).await?;
    if found.len() > 1 {
        let what = if op == PatchOp::Delete {
            "deleted"
        } else {
            "written"
        };
        return Err(ActionError::data(format!(
            "more than one matching object in `{name}`; nothing was {what}"
        )));
    }
    Ok(match (op, found.pop()) {
        (PatchOp::Upsert, None) => {
            let mut all = criteria.clone();
            all.extend(props);
            Some(change(ChangeOp::Create, Map::new(), all, None))
        }
        (PatchOp::Delete, None) => None,
        (_, None) => {
            return Err(ActionError::data(format!(
                "not found: no object in `{name}` matches the criteria"
            )));
        }
        (PatchOp::Delete, Some(row)) => Some(change(
            ChangeOp::Delete,
            row_key(t, &row, criteria),
            Map::new(),
            Some(row),
        )),
        (_, Some(row)) => Some(change(
            ChangeOp::Update,
            row_key(t, &row, criteria),
            props,
            Some(row),
        )),
    })
}

/// Write a planned change in `tx`: the row as stored (for a delete, its
/// key; `{}` when there was nothing to delete), and the change with its key
/// and row filled in, for after-hooks.
async fn apply_in(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    planned: Option<Change>,
) -> Result<(Map<String, Value>, Option<Change>), ActionError> {
    let Some(mut c) = planned else {
        return Ok((Map::new(), None));
    };
    let out = match c.op {
        ChangeOp::Create => {
            let row = create_in(tx, db, name, t, &c.payload).await?;
            c.key = row_key(t, &row, &Map::new());
            c.row = Some(row.clone());
            row
        }
        ChangeOp::Update => {
            let row = update_row(tx, db, name, t, &c.key, &c.payload).await?;
            c.row = Some(row.clone());
            row
        }
        ChangeOp::Delete => {
            let mut params = Vec::new();
            let w = where_clause(db, &t.cols, &c.key, &mut params);
            let sql = format!("DELETE FROM {} WHERE {w}", db.backend.quote(name));
            tx.run(&Stmt { sql, params }, false).await?;
            c.key.clone()
        }
    };
    Ok((out, Some(c)))
}

/// The hooks a change through one connection meets.
#[derive(Clone, Copy)]
struct Hooked<'a> {
    hooks: &'a dyn DataHooks,
    connection: &'a str,
}

impl<'a> Hooked<'a> {
    /// The step's hooks on `connection`, if the run has any.
    fn of(cx: &ActionCx<'a>, connection: &'a str) -> Option<Self> {
        cx.hooks.map(|hooks| Self { hooks, connection })
    }

    fn listens(self, when: When, op: ChangeOp, collection: &str) -> bool {
        self.hooks.listens(when, op, self.connection, collection)
    }

    /// Whether a before-hook listens to any change `op` may turn out to be.
    fn before_any(self, op: PatchOp, collection: &str) -> bool {
        let ops: &[ChangeOp] = match op {
            PatchOp::Create => &[ChangeOp::Create],
            PatchOp::Update => &[ChangeOp::Update],
            PatchOp::Upsert => &[ChangeOp::Create, ChangeOp::Update],
            PatchOp::Delete => &[ChangeOp::Delete],
        };
        ops.iter()
            .any(|o| self.listens(When::Before, *o, collection))
    }

    /// Run the before-hooks of a planned change: the change with the fields
    /// they let through, checked against the table again when a hook
    /// replaced them.
    async fn before(self, db: &Db, planned: Option<Change>) -> Result<Option<Change>, ActionError> {
        let Some(mut c) = planned else {
            return Ok(None);
        };
        if !self.listens(When::Before, c.op, &c.collection) {
            return Ok(Some(c));
        }
        c.connection = self.connection.to_owned();
        let payload = self.hooks.before(c.clone()).await?;
        if payload != c.payload {
            db.check_fields(&c.collection, payload.keys()).await?;
            c.payload = payload;
        }
        Ok(Some(c))
    }

    /// Start the after-hooks of committed changes: lines for the step's
    /// log about hooks that could not start.
    async fn after(self, changes: Vec<Change>) -> Vec<String> {
        let heard: Vec<Change> = changes
            .into_iter()
            .filter(|c| self.listens(When::After, c.op, &c.collection))
            .map(|mut c| {
                c.connection = self.connection.to_owned();
                c
            })
            .collect();
        if heard.is_empty() {
            return Vec::new();
        }
        self.hooks.after(heard).await
    }
}

/// What the row of a single change is found by.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The step's criteria.
    Criteria(&'a Map<String, Value>),
    /// A link's two objects, each found by its own criteria (in the
    /// change's transaction): their ids, in the link table's fields.
    Link(&'a SqlLinkOptions),
}

impl<'a> Target<'a> {
    /// The fields of the changed table it names.
    fn fields(self) -> Vec<&'a String> {
        match self {
            Target::Criteria(c) => c.keys().collect(),
            Target::Link(o) => vec![&o.from.field, &o.to.field],
        }
    }

    async fn criteria(
        self,
        tx: &mut Tx,
        db: &Db,
    ) -> Result<Cow<'a, Map<String, Value>>, ActionError> {
        match self {
            Target::Criteria(c) => Ok(Cow::Borrowed(c)),
            Target::Link(o) => link_key(tx, db, o).await.map(Cow::Owned),
        }
    }
}

/// One change by a step of its own (`sql.create`, `sql.update`,
/// `sql.upsert`, `sql.delete`, `sql.assertOption`, `sql.link`,
/// `sql.unlink`), in its own transaction. Its before-hooks
/// run before that transaction begins, on the row as it is then, so that a
/// hook's flow may write to the same database (SQLite has one writer at a
/// time); its after-hooks start once it is committed.
async fn single_change(
    cx: &ActionCx<'_>,
    connection: &str,
    name: &str,
    op: PatchOp,
    target: Target<'_>,
    props: Map<String, Value>,
) -> Result<Outcome, ActionError> {
    let db = cx.connections.db(connection).await?;
    let t = db
        .check_fields(name, target.fields().into_iter().chain(props.keys()))
        .await?;
    let hooked = Hooked::of(cx, connection);
    let mut props = props;
    if let Some(h) = hooked.filter(|h| h.before_any(op, name)) {
        let mut look = db.begin().await?;
        let criteria = target.criteria(&mut look, &db).await?;
        let planned = plan_in(&mut look, &db, name, &t, op, &criteria, props.clone()).await?;
        drop(look);
        if let Some(c) = h.before(&db, planned).await? {
            props = c.payload;
        }
    }
    let mut tx = db.begin_write().await?;
    let criteria = target.criteria(&mut tx, &db).await?;
    let planned = plan_in(&mut tx, &db, name, &t, op, &criteria, props).await?;
    let (out, change) = apply_in(&mut tx, &db, name, &t, planned).await?;
    tx.commit().await?;
    let mut outcome = Outcome::value(Value::Object(out));
    if let (Some(h), Some(c)) = (hooked, change) {
        outcome.logs = h.after(vec![c]).await;
    }
    Ok(outcome)
}

async fn write(
    cx: &ActionCx<'_>,
    o: SqlWriteOptions,
    create: bool,
) -> Result<Outcome, ActionError> {
    let op = if create {
        PatchOp::Upsert
    } else {
        PatchOp::Update
    };
    single_change(
        cx,
        &o.connection,
        &o.collection,
        op,
        Target::Criteria(&o.criteria),
        o.properties,
    )
    .await
}

impl Action for SqlUpdate {
    const KIND: &'static str = "sql.update";
    type Options = SqlWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlWriteOptions,
    ) -> Result<Outcome, ActionError> {
        write(&cx, o, false).await
    }
}

impl Action for SqlUpsert {
    const KIND: &'static str = "sql.upsert";
    type Options = SqlWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlWriteOptions,
    ) -> Result<Outcome, ActionError> {
        write(&cx, o, true).await
    }
}

/// `sql.delete`: delete the one object matching the criteria, emitting its
/// key (`{id}`); none emits `{}`; several fail and delete nothing.
pub struct SqlDelete;

/// Options of `sql.delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlDeleteOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Field values that identify the object: its id or unique fields.
    pub criteria: Map<String, Value>,
}

impl Action for SqlDelete {
    const KIND: &'static str = "sql.delete";
    type Options = SqlDeleteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlDeleteOptions,
    ) -> Result<Outcome, ActionError> {
        single_change(
            &cx,
            &o.connection,
            &o.collection,
            PatchOp::Delete,
            Target::Criteria(&o.criteria),
            Map::new(),
        )
        .await
    }
}

/// A row a `poll` trigger read, with its time and key (for the snapshot).
pub struct Polled {
    /// The row, as `sql.lookup` emits rows.
    pub row: Map<String, Value>,
    /// Its `timestampField` and key.
    pub at: (Value, Value),
}

/// One page of a `poll` trigger: the rows of its collection changed since
/// the snapshot (SEMANTICS.md section 6: `lastModified >= start` until a
/// round found rows, `> previousLastModified` afterwards, always
/// `<= endTime`), in the order of their time and key. The page after a full
/// one starts after its last row's time and key rather than at an offset, so
/// rows that change while a round is read do not shift the pages.
pub async fn poll_page(
    connections: &Connections<'_>,
    o: &crate::triggers::PollTrigger,
    snap: &crate::triggers::PollSnapshot,
) -> Result<Vec<Polled>, ActionError> {
    let db = connections.db(&o.connection).await?;
    let ts = &o.timestamp_field;
    // What is read: a table (its columns' types from the schema) or a
    // query, as a derived table (its columns' types from the database's
    // description of it).
    let (from, cols, key) = match (&o.collection, &o.query) {
        (Some(c), _) => {
            let t = db.table(c).await?;
            let key = match (&o.key_field, t.pk.as_slice()) {
                (Some(k), _) => k.clone(),
                (None, [k]) => k.clone(),
                (None, _) => {
                    return Err(ActionError::flow(format!(
                        "collection `{c}` has no one-column primary key: name the column that orders rows of one time as `keyField`"
                    )));
                }
            };
            db.check_fields(c, [ts, &key].into_iter()).await?;
            (db.backend.quote(c), t.cols.clone(), key)
        }
        (None, Some(q)) => {
            let q = q.trim().trim_end_matches(';').trim_end();
            let from = format!("({q}) sluice_poll");
            let cols = db.query_columns(&format!("SELECT * FROM {from}")).await?;
            let key = o
                .key_field
                .clone()
                .ok_or_else(|| ActionError::flow("a poll of a query needs `keyField`"))?;
            for f in [ts, &key] {
                if !valid_ident(f) || !cols.contains_key(f) {
                    return Err(ActionError::data(format!(
                        "the poll's query has no column `{f}` (columns: {})",
                        cols.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            (from, cols, key)
        }
        (None, None) => {
            return Err(ActionError::flow(
                "a poll needs a `collection` (a table) or a `query`",
            ));
        }
    };
    let key = &key;
    let (qt, qk) = (db.backend.quote(ts), db.backend.quote(key));
    let mut params = Vec::new();
    let mut bind = |v: &Value, col: &str| {
        params.push(db.param_value(v, cols.get(col)));
        db.param(params.len(), cols.get(col))
    };
    let mut conds = vec![format!("{qt} IS NOT NULL")];
    if let Some(prev) = &snap.previous_last_modified {
        let op = if snap.found { ">" } else { ">=" };
        conds.push(format!("{qt} {op} {}", bind(prev, ts)));
    }
    if let Some(end) = &o.end_time {
        conds.push(format!("{qt} <= {}", bind(end, ts)));
    }
    if let Some((at, k)) = &snap.after {
        let (a1, a2, k1) = (bind(at, ts), bind(at, ts), bind(k, key));
        conds.push(format!("({qt} > {a1} OR ({qt} = {a2} AND {qk} > {k1}))"));
    }
    let list = if o.collection.is_some() {
        db.select_list(&cols)
    } else {
        "*".to_owned()
    };
    let sql = format!(
        "SELECT {list} FROM {from} WHERE {} ORDER BY {qt}, {qk} LIMIT {}",
        conds.join(" AND "),
        o.page_size
    );
    let rows = db.table_rows(&Stmt { sql, params }, &cols).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let at = (
                row.get(ts).cloned().unwrap_or(Value::Null),
                row.get(key).cloned().unwrap_or(Value::Null),
            );
            Polled { row, at }
        })
        .collect())
}

/// A condition of a search term.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub enum Condition {
    /// Equal (`null` matches `IS NULL`).
    #[serde(rename = "=")]
    Eq,
    /// Not equal (`null` matches `IS NOT NULL`).
    #[serde(rename = "!=")]
    Ne,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// SQL `LIKE` (`%` and `_` wildcards).
    #[serde(rename = "like")]
    Like,
}

/// One search term.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Term {
    /// The field.
    pub field: String,
    /// The condition (default `=`).
    #[serde(default = "eq")]
    pub condition: Condition,
    /// The value (templates allowed).
    pub value: Value,
}

fn eq() -> Condition {
    Condition::Eq
}

/// How terms are joined.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// All terms hold.
    #[default]
    And,
    /// Any term holds.
    Or,
}

/// How `sql.lookupMany` emits.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ManyMode {
    /// `{results}`; fails with "too many results" when the count reaches `maxResultSize`.
    #[default]
    FetchAll,
    /// One page: `{results, pageNumber, pageSize}`.
    FetchPage,
    /// Each result continues the flow on its own (a run per result).
    EmitIndividually,
}

/// Sort order.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// One `orderBy` pair.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    /// The field.
    pub field: String,
    /// `asc` (default) or `desc`.
    #[serde(default)]
    pub order: Order,
}

/// Options of `sql.lookupMany`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlLookupManyOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Search terms (none: every object).
    #[serde(default)]
    pub terms: Vec<Term>,
    /// `and` (default) or `or`.
    #[serde(default)]
    pub join: Join,
    /// `fetchAll` (default) or `fetchPage`.
    #[serde(default)]
    pub mode: ManyMode,
    /// With `fetchAll`: the count that fails (default 1000).
    #[serde(default = "default_max")]
    pub max_result_size: u32,
    /// With `fetchPage`: objects per page (default 100).
    #[serde(default = "default_page")]
    pub page_size: u32,
    /// With `fetchPage`: the page, from 0.
    #[serde(default)]
    pub page_number: u32,
    /// Sort order; with `fetchPage` the primary key breaks ties.
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
}

fn default_max() -> u32 {
    1000
}

fn default_page() -> u32 {
    100
}

/// `sql.lookupMany`: every object matching the search terms.
pub struct SqlLookupMany;

impl Action for SqlLookupMany {
    const KIND: &'static str = "sql.lookupMany";
    type Options = SqlLookupManyOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupManyOptions,
    ) -> Result<Outcome, ActionError> {
        let db = cx.connections.db(&o.connection).await?;
        let fields = o
            .terms
            .iter()
            .map(|t| &t.field)
            .chain(o.order_by.iter().map(|b| &b.field));
        let t = db.check_fields(&o.collection, fields).await?;
        let mut params = Vec::new();
        let conds: Vec<String> = o
            .terms
            .iter()
            .map(|term| {
                let col = db.backend.quote(&term.field);
                let op = match term.condition {
                    Condition::Eq if term.value.is_null() => return format!("{col} IS NULL"),
                    Condition::Ne if term.value.is_null() => return format!("{col} IS NOT NULL"),
                    Condition::Eq => "=",
                    Condition::Ne => "<>",
                    Condition::Lt => "<",
                    Condition::Le => "<=",
                    Condition::Gt => ">",
                    Condition::Ge => ">=",
                    Condition::Like => "LIKE",
                };
                let ty = t.cols.get(&term.field);
                params.push(db.param_value(&term.value, ty));
                let mark = if matches!(term.condition, Condition::Like) {
                    // LIKE compares text whatever the column's type.
                    let ty = Some("text".to_owned());
                    db.param(params.len(), ty.as_ref())
                } else {
                    db.param(params.len(), ty)
                };
                format!("{col} {op} {mark}")
            })
            .collect();
        let joiner = match o.join {
            Join::And => " AND ",
            Join::Or => " OR ",
        };
        let mut sql = format!(
            "SELECT {} FROM {}",
            db.select_list(&t.cols),
            db.backend.quote(&o.collection)
        );
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(joiner));
        }
        let mut order: Vec<String> = o
            .order_by
            .iter()
            .map(|b| {
                format!(
                    "{} {}",
                    db.backend.quote(&b.field),
                    if matches!(b.order, Order::Desc) {
                        "DESC"
                    } else {
                        "ASC"
                    }
                )
            })
            .collect();
        match o.mode {
            ManyMode::FetchAll | ManyMode::EmitIndividually => {
                if !order.is_empty() {
                    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
                }
                sql.push_str(&format!(" LIMIT {}", o.max_result_size));
                let rows = db.table_rows(&Stmt { sql, params }, &t.cols).await?;
                if rows.len() >= o.max_result_size as usize {
                    return Err(ActionError::data(format!(
                        "too many results: {} or more objects match (maxResultSize is {})",
                        o.max_result_size, o.max_result_size
                    )));
                }
                if o.mode == ManyMode::EmitIndividually {
                    return Ok(emit_individually(rows));
                }
                Ok(Outcome::value(serde_json::json!({ "results": rows })))
            }
            ManyMode::FetchPage => {
                for k in &t.pk {
                    if !o.order_by.iter().any(|b| &b.field == k) {
                        order.push(db.backend.quote(k));
                    }
                }
                if !order.is_empty() {
                    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
                }
                let offset = u64::from(o.page_size) * u64::from(o.page_number);
                sql.push_str(&format!(" LIMIT {} OFFSET {offset}", o.page_size));
                let rows = db.table_rows(&Stmt { sql, params }, &t.cols).await?;
                Ok(Outcome::value(
                    serde_json::json!({ "results": rows, "pageNumber": o.page_number, "pageSize": o.page_size }),
                ))
            }
        }
    }
}

/// The write a patch makes.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    /// Insert.
    Create,
    /// Update the one object matching `criteria`.
    Update,
    /// Update it, or create it when none matches.
    Upsert,
    /// Delete the one object matching `criteria`.
    Delete,
}

impl PatchOp {
    const ALL: [Self; 4] = [Self::Create, Self::Update, Self::Upsert, Self::Delete];

    fn word(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Upsert => "upsert",
            Self::Delete => "delete",
        }
    }

    /// The write `word` names (as a flow writes it), if it names one.
    fn of_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.word() == word)
    }
}

/// One patch of an envelope.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Patch {
    /// `create`, `update`, `upsert` or `delete`.
    pub op: PatchOp,
    /// The table.
    pub collection: String,
    /// Field values (templates allowed; `$tokens` holds tokens set so far).
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// For update, upsert and delete: what identifies the object.
    #[serde(default)]
    pub criteria: Map<String, Value>,
    /// Tokens to set from the patch's response: token name -> field.
    #[serde(default)]
    pub set_tokens: BTreeMap<String, String>,
    /// For a child patch: the field that receives the parent's new id.
    #[serde(default)]
    pub parent_key: Option<String>,
    /// Patches of objects that belong to this one, written after it.
    #[serde(default)]
    pub children: Vec<Patch>,
}

impl Patch {
    /// A patch from its JSON (a templated patch, once rendered). The usual
    /// shape is taken apart as it is: its `properties` and `criteria`
    /// become the patch's, where serde would build them again key by key
    /// (a good part of an import's cost). Anything else goes through serde,
    /// for its messages.
    pub fn from_json(v: Value) -> Result<Self, serde_json::Error> {
        let usual = |m: &Map<String, Value>| {
            m.contains_key("op")
                && m.contains_key("collection")
                && m.iter().all(|(k, v)| match k.as_str() {
                    "op" | "collection" => v.is_string(),
                    "properties" | "criteria" => v.is_object(),
                    "setTokens" => v
                        .as_object()
                        .is_some_and(|t| t.values().all(Value::is_string)),
                    "parentKey" => v.is_string() || v.is_null(),
                    "children" => v.is_array(),
                    _ => false,
                })
        };
        let mut m = match v {
            Value::Object(m) if usual(&m) => m,
            v => return serde_json::from_value(v),
        };
        let op = serde_json::from_value(m.remove("op").unwrap_or_default())?;
        let mut object = |k: &str| match m.remove(k) {
            Some(Value::Object(o)) => o,
            _ => Map::new(),
        };
        let (properties, criteria, set_tokens) = (
            object("properties"),
            object("criteria"),
            object("setTokens"),
        );
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(Self {
            op,
            collection: text(m.remove("collection")).unwrap_or_default(),
            properties,
            criteria,
            set_tokens: set_tokens
                .into_iter()
                .filter_map(|(k, v)| text(Some(v)).map(|s| (k, s)))
                .collect(),
            parent_key: text(m.remove("parentKey")),
            children: match m.remove("children") {
                Some(Value::Array(a)) => a
                    .into_iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            },
        })
    }
}

/// Options of `envelope`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvelopeOptions {
    /// The connection's name.
    pub connection: String,
    /// The patches, in order; all or none are written. Templated: a step
    /// of a flow receives them through `ActionCx::deferred` and renders each
    /// just before writing it.
    #[serde(default)]
    pub patches: Vec<Patch>,
}

/// `envelope`: patches written all or none, in one transaction.
pub struct Envelope;

/// A scope with the envelope's tokens over the run's.
struct WithTokens<'a> {
    inner: &'a (dyn sluice_expr::Scope + Sync),
    /// The tokens (an object), and as jq value once a program needs that.
    tokens: &'a Value,
    tokens_val: &'a std::sync::OnceLock<sluice_expr::Val>,
}

impl sluice_expr::Scope for WithTokens<'_> {
    fn get(&self, name: &str) -> Option<sluice_expr::Val> {
        if name == "tokens" {
            let v = self
                .tokens_val
                .get_or_init(|| sluice_expr::to_val(self.tokens));
            Some(v.clone())
        } else {
            self.inner.get(name)
        }
    }

    fn get_json(&self, name: &str) -> Option<&Value> {
        if name == "tokens" {
            Some(self.tokens)
        } else {
            self.inner.get_json(name)
        }
    }
}

/// The run's tokens, `$tokens`, as JSON.
fn global_tokens(scope: &dyn sluice_expr::Scope) -> Map<String, Value> {
    let tokens = match scope.get_json("tokens") {
        Some(v) => Some(sluice_expr::as_from_jq(v).into_owned()),
        None => scope
            .get("tokens")
            .and_then(|v| sluice_expr::from_val(&v).ok()),
    };
    match tokens {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The id a child's `parentKey` receives: the parent's primary key (or `id`).
fn new_id(t: &Table, row: &Map<String, Value>) -> Value {
    t.pk.first()
        .and_then(|k| row.get(k))
        .or_else(|| row.get("id"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// What an envelope's patches leave for the patches after them and for the
/// end of the envelope.
#[derive(Default)]
struct Written {
    /// The tokens set so far (over the run's).
    tokens: Map<String, Value>,
    /// The changes made, for after-hooks once the envelope commits.
    changes: Vec<Change>,
}

/// Write one patch and its children; `Err` carries the failing patch's label.
/// Its before-hooks run in the envelope's transaction, between finding the
/// row and writing it.
fn apply_patch<'a>(
    tx: &'a mut Tx,
    db: &'a Db,
    patch: &'a Patch,
    label: String,
    parent_id: Option<Value>,
    hooked: Option<Hooked<'a>>,
    written: &'a mut Written,
) -> crate::BoxFuture<'a, Result<Value, (String, ActionError)>> {
    Box::pin(async move {
        let fail = |e: ActionError| {
            (
                format!("{label} ({} {})", patch.op.word(), patch.collection),
                e,
            )
        };
        let mut props = patch.properties.clone();
        if let Some(k) = &patch.parent_key {
            let id = parent_id
                .ok_or_else(|| fail(ActionError::flow("`parentKey` is only for child patches")))?;
            props.insert(k.clone(), id);
        }
        let t = db
            .check_fields(&patch.collection, props.keys().chain(patch.criteria.keys()))
            .await
            .map_err(fail)?;
        let name = &patch.collection;
        let mut planned = plan_in(tx, db, name, &t, patch.op, &patch.criteria, props)
            .await
            .map_err(fail)?;
        if let Some(h) = hooked {
            planned = h.before(db, planned).await.map_err(fail)?;
        }
        let (row, change) = apply_in(tx, db, name, &t, planned).await.map_err(fail)?;
        written.changes.extend(change);
        for (token, field) in &patch.set_tokens {
            let v = row.get(field).cloned().ok_or_else(|| {
                fail(ActionError::flow(format!(
                    "setTokens: the response has no field `{field}` for token `{token}`"
                )))
            })?;
            written.tokens.insert(token.clone(), v);
        }
        let id = new_id(&t, &row);
        let mut children = Vec::new();
        for (i, child) in patch.children.iter().enumerate() {
            children.push(
                apply_patch(
                    tx,
                    db,
                    child,
                    format!("{label}.{}", i + 1),
                    Some(id.clone()),
                    hooked,
                    written,
                )
                .await?,
            );
        }
        let mut out = row;
        if !children.is_empty() {
            out.insert("children".into(), Value::Array(children));
        }
        Ok(Value::Object(out))
    })
}

impl Action for Envelope {
    const KIND: &'static str = "envelope";
    const DEFERRED: &'static [&'static str] = &["patches"];
    type Options = EnvelopeOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: EnvelopeOptions,
    ) -> Result<Outcome, ActionError> {
        match cx.batch {
            Some(b) => b.batch.submit(&cx, b, &o.connection, o.patches).await,
            // Boxed: this future is much larger than an import's, which
            // would otherwise copy its size for every record.
            None => Box::pin(write_envelope(cx, o)).await,
        }
    }
}

/// Write an envelope in a transaction of its own.
async fn write_envelope(cx: ActionCx<'_>, o: EnvelopeOptions) -> Result<Outcome, ActionError> {
    let db = cx.connections.db(&o.connection).await?;
    let compiled = cx.deferred.get("patches").map(|(_, t)| t);
    let count = patch_count(compiled, &o.patches);
    let input = cx.program_input;
    let global = global_tokens(cx.scope);
    let hooked = Hooked::of(&cx, &o.connection);
    let mut written = Written {
        tokens: global.clone(),
        changes: Vec::new(),
    };
    let mut tx = db.begin_write().await?;
    let mut results = Vec::new();
    for i in 0..count {
        // Each patch is templated just before it is written, so that it
        // sees the tokens the patches before it have set.
        let patch = match compiled {
            Some(t) => {
                let tokens = Value::Object(written.tokens.clone());
                let scope = WithTokens {
                    inner: cx.scope,
                    tokens: &tokens,
                    tokens_val: &std::sync::OnceLock::new(),
                };
                let v = t
                    .render_item(i, input, &scope, cx.limits)?
                    .unwrap_or(Value::Null);
                templated(i, v)?
            }
            None => o.patches[i].clone(),
        };
        match apply_patch(
            &mut tx,
            &db,
            &patch,
            format!("patch {}", i + 1),
            None,
            hooked,
            &mut written,
        )
        .await
        {
            Ok(v) => results.push(v),
            Err((which, e)) => {
                // Dropping the transaction rolls back every earlier patch.
                drop(tx);
                return Err(envelope_failure(&which, e));
            }
        }
    }
    tx.commit().await?;
    let mut outcome = envelope_outcome(&global, written.tokens, results);
    if let Some(h) = hooked {
        outcome.logs = h.after(written.changes).await;
    }
    Ok(outcome)
}

/// Patch `i` (from 0) of an envelope, from its templated value.
fn templated(i: usize, v: Value) -> Result<Patch, ActionError> {
    Patch::from_json(v)
        .map_err(|e| ActionError::data(format!("patch {}: after templating: {e}", i + 1)))
}

/// How many patches an envelope has: its compiled template's (a step of a
/// flow), or else those given in its options.
fn patch_count(compiled: Option<&sluice_expr::TemplateValue>, given: &[Patch]) -> usize {
    compiled.map_or(given.len(), |t| t.array_len().unwrap_or(0))
}

/// The error of an envelope whose patch `which` failed.
fn envelope_failure(which: &str, e: ActionError) -> ActionError {
    ActionError {
        blame: e.blame,
        message: format!(
            "{which} failed: {}; the envelope was rolled back, none of its patches was written",
            e.message
        ),
    }
}

/// What an envelope emits: its patches' results and the tokens it set
/// (they shadow the run's from now on).
fn envelope_outcome(
    global: &Map<String, Value>,
    tokens: Map<String, Value>,
    results: Vec<Value>,
) -> Outcome {
    envelope_payload(set_tokens(global, tokens), results)
}

/// The tokens an envelope set: those that are not the run's as they were.
fn set_tokens(global: &Map<String, Value>, tokens: Map<String, Value>) -> Map<String, Value> {
    tokens
        .into_iter()
        .filter(|(k, v)| global.get(k) != Some(v))
        .collect()
}

/// [`envelope_outcome`], of the tokens it set.
fn envelope_payload(set_tokens: Map<String, Value>, results: Vec<Value>) -> Outcome {
    let mut payload = Map::with_capacity(2);
    payload.insert("results".into(), Value::Array(results));
    payload.insert("tokens".into(), Value::Object(set_tokens.clone()));
    Outcome {
        payload: Some(Value::Object(payload)),
        logs: Vec::new(),
        tokens: Some(set_tokens),
        items: None,
        effect: None,
    }
}

/// Options of `sql.lookupSet`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlLookupSetOptions {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// Single-field ids to find; the result is a dictionary id -> object.
    #[serde(default)]
    pub ids: Option<Vec<Value>>,
    /// The field `ids` are values of (default: the primary key).
    #[serde(default)]
    pub id_field: Option<String>,
    /// Multi-field criteria to find; the result is `[{key, value}]`.
    #[serde(default)]
    pub criteria: Option<Vec<Map<String, Value>>>,
}

/// `sql.lookupSet`: many objects at once, each matched exactly once.
pub struct SqlLookupSet;

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Action for SqlLookupSet {
    const KIND: &'static str = "sql.lookupSet";
    type Options = SqlLookupSetOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupSetOptions,
    ) -> Result<Outcome, ActionError> {
        let db = cx.connections.db(&o.connection).await?;
        match (o.ids, o.criteria) {
            (Some(ids), None) => {
                let t = db.table(&o.collection).await?;
                let field = match o
                    .id_field
                    .or_else(|| (t.pk.len() == 1).then(|| t.pk[0].clone()))
                {
                    Some(f) => f,
                    None => {
                        return Err(ActionError::flow(
                            "`idField` is needed: the table has no single-column primary key",
                        ));
                    }
                };
                db.check_fields(&o.collection, std::iter::once(&field))
                    .await?;
                let mut found: BTreeMap<String, Vec<Map<String, Value>>> =
                    ids.iter().map(|i| (id_text(i), Vec::new())).collect();
                if !ids.is_empty() {
                    let mut params = Vec::new();
                    let marks: Vec<String> = ids
                        .iter()
                        .map(|v| {
                            params.push(db.param_value(v, t.cols.get(&field)));
                            db.param(params.len(), t.cols.get(&field))
                        })
                        .collect();
                    let sql = format!(
                        "SELECT {} FROM {} WHERE {} IN ({})",
                        db.select_list(&t.cols),
                        db.backend.quote(&o.collection),
                        db.backend.quote(&field),
                        marks.join(", ")
                    );
                    for row in db.table_rows(&Stmt { sql, params }, &t.cols).await? {
                        let key = row.get(&field).map(id_text).unwrap_or_default();
                        if let Some(list) = found.get_mut(&key) {
                            list.push(row);
                        }
                    }
                }
                let mut out = Map::new();
                for (id, mut rows) in found {
                    if rows.len() != 1 {
                        return Err(ActionError::data(format!(
                            "id `{id}` of `{}` matched {} objects, not exactly one",
                            o.collection,
                            rows.len()
                        )));
                    }
                    out.insert(id, Value::Object(rows.remove(0)));
                }
                Ok(Outcome::value(Value::Object(out)))
            }
            (None, Some(list)) => {
                let fields: Vec<String> = list.iter().flat_map(|c| c.keys().cloned()).collect();
                let t = db.check_fields(&o.collection, fields.iter()).await?;
                let mut tx = db.begin().await?;
                let mut out = Vec::new();
                for (i, c) in list.iter().enumerate() {
                    if criteria_missing(c) {
                        return Err(ActionError::data(format!("criteria {} are missing", i + 1)));
                    }
                    let mut rows = find(&mut tx, &db, &o.collection, &t, c).await?;
                    if rows.len() != 1 {
                        let n = if rows.is_empty() {
                            "no object"
                        } else {
                            "more than one object"
                        };
                        return Err(ActionError::data(format!(
                            "criteria {} ({}) matched {n} of `{}`, not exactly one",
                            i + 1,
                            Value::Object(c.clone()),
                            o.collection
                        )));
                    }
                    out.push(serde_json::json!({"key": c, "value": rows.remove(0)}));
                }
                Ok(Outcome::value(Value::Array(out)))
            }
            _ => Err(ActionError::flow("give either `ids` or `criteria`")),
        }
    }
}

/// One side of a link.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkSide {
    /// The table of the object.
    pub collection: String,
    /// What identifies the object (its id or unique fields).
    pub criteria: Map<String, Value>,
    /// The link table's field that holds the object's id.
    pub field: String,
}

/// Options of `sql.link` and `sql.unlink`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlLinkOptions {
    /// The connection's name.
    pub connection: String,
    /// The many-to-many table.
    pub link_collection: String,
    /// One object.
    pub from: LinkSide,
    /// The other object.
    pub to: LinkSide,
    /// Data about the link (other fields of the link table; `sql.link` only).
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// `sql.link`: link two objects in a many-to-many relation (updating the
/// link's data when they are linked already).
pub struct SqlLink;

/// `sql.unlink`: remove the link between two objects.
pub struct SqlUnlink;

/// A link (or unlink) is a change of the link table: an upsert of the row
/// that joins the two objects (a delete for an unlink), found by their ids;
/// data hooks hear it as a change of that table.
async fn link(cx: &ActionCx<'_>, o: SqlLinkOptions, add: bool) -> Result<Outcome, ActionError> {
    let (op, data) = if add {
        (PatchOp::Upsert, o.data.clone())
    } else {
        (PatchOp::Delete, Map::new())
    };
    single_change(
        cx,
        &o.connection,
        &o.link_collection,
        op,
        Target::Link(&o),
        data,
    )
    .await
}

/// The ids of a link's two objects, each found by its criteria, in the
/// link table's fields.
async fn link_key(
    tx: &mut Tx,
    db: &Db,
    o: &SqlLinkOptions,
) -> Result<Map<String, Value>, ActionError> {
    let mut key = Map::new();
    for side in [&o.from, &o.to] {
        let t = db
            .check_fields(&side.collection, side.criteria.keys())
            .await?;
        if criteria_missing(&side.criteria) {
            return Err(ActionError::data(format!(
                "the criteria for `{}` are missing",
                side.collection
            )));
        }
        let rows = find(tx, db, &side.collection, &t, &side.criteria).await?;
        if rows.len() != 1 {
            let n = if rows.is_empty() {
                "not found"
            } else {
                "more than one matching object"
            };
            return Err(ActionError::data(format!(
                "{n} in `{}` for the link",
                side.collection
            )));
        }
        key.insert(side.field.clone(), new_id(&t, &rows[0]));
    }
    Ok(key)
}

impl Action for SqlLink {
    const KIND: &'static str = "sql.link";
    type Options = SqlLinkOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLinkOptions,
    ) -> Result<Outcome, ActionError> {
        link(&cx, o, true).await
    }
}

impl Action for SqlUnlink {
    const KIND: &'static str = "sql.unlink";
    type Options = SqlLinkOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLinkOptions,
    ) -> Result<Outcome, ActionError> {
        link(&cx, o, false).await
    }
}

/// Options of `sql.assertOption`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqlAssertOptionOptions {
    /// The connection's name.
    pub connection: String,
    /// The option list's table.
    pub collection: String,
    /// The field that holds the option's value.
    pub field: String,
    /// The value that must be in the list.
    pub value: Value,
    /// Other fields of the option (such as its label), added or updated.
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// `sql.assertOption`: make sure a value is in an option list, adding it or
/// updating its other fields.
pub struct SqlAssertOption;

impl Action for SqlAssertOption {
    const KIND: &'static str = "sql.assertOption";
    type Options = SqlAssertOptionOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlAssertOptionOptions,
    ) -> Result<Outcome, ActionError> {
        let mut criteria = Map::new();
        criteria.insert(o.field.clone(), o.value.clone());
        write(
            &cx,
            SqlWriteOptions {
                connection: o.connection,
                collection: o.collection,
                criteria,
                properties: o.properties,
            },
            true,
        )
        .await
    }
}
