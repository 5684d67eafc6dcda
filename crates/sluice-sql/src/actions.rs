//! The standardized actions on one object: `sql.query`, `sql.create`,
//! `sql.lookup`, `sql.update`, `sql.upsert` and `sql.delete`, each write in
//! one transaction, with the data hooks of the changes it makes.

use crate::backend::Backend;
use crate::change::{PatchOp, SqlWriteOptions, Target, single_change, where_clause, write};
use crate::db::{Fetched, Pools, Stmt};
use crate::shared::Reads;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::core_ops::count_issue;
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::sync::Arc;

/// Replace `:name` parameters by the backend's placeholders. A parameter is
/// found only in the statement's own text: not in a string literal or a
/// quoted identifier (`'...'`, `"..."`, `` `...` ``, with the backend's
/// escapes), a comment (`-- ...`, `/* ... */`, on MariaDB/MySQL `# ...`),
/// a PostgreSQL dollar-quoted string (`$$...$$`, `$tag$...$tag$`), or a
/// PostgreSQL `::` cast.
pub(crate) fn named_params(
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
            q @ (b'\'' | b'"' | b'`') => i = quoted_end(b, i, q, backend),
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            b'#' if backend == Backend::MySql => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = comment_end(b, i, backend),
            b'$' if backend == Backend::Postgres => i = dollar_end(sql, i),
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

/// Past the quoted text that starts at `i` with `q`: a doubled quote stands
/// for itself; on MariaDB/MySQL, and in a PostgreSQL `E'...'` string, a
/// backslash escapes the next character.
fn quoted_end(b: &[u8], i: usize, q: u8, backend: Backend) -> usize {
    let escapes = q != b'`'
        && (backend == Backend::MySql
            || (backend == Backend::Postgres
                && q == b'\''
                && i > 0
                && matches!(b[i - 1], b'E' | b'e')
                && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'))));
    let mut j = i + 1;
    while j < b.len() {
        if escapes && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            // A doubled quote goes on; the loop meets the next one as a
            // quote of its own, which reopens the literal.
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// Past the end of the line at `i` (a `--` or `#` comment).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |n| i + n + 1)
}

/// Past the `/* ... */` comment at `i` (nested on PostgreSQL).
fn comment_end(b: &[u8], i: usize, backend: Backend) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j + 1 < b.len() {
        match (b[j], b[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 || backend != Backend::Postgres {
                    return j;
                }
            }
            _ => j += 1,
        }
        if backend != Backend::Postgres {
            depth = depth.min(1);
        }
    }
    b.len()
}

/// Past the PostgreSQL dollar-quoted string at `i` (`$$...$$` or
/// `$tag$...$tag$`); just past the `$` when it opens none (`$1`).
fn dollar_end(sql: &str, i: usize) -> usize {
    let rest = &sql[i + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count();
    let opens = rest.as_bytes().get(tag_len) == Some(&b'$')
        && !rest.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if !opens {
        return i + 1;
    }
    let delim = &sql[i..i + tag_len + 2];
    let body = i + delim.len();
    sql[body..]
        .find(delim)
        .map_or(sql.len(), |n| body + n + delim.len())
}

/// `maxResultSize` when not given: OIH's "too many results" bound.
pub(crate) fn default_max() -> u32 {
    1000
}

/// Rows emitted one by one: the steps after run once per row.
pub(crate) fn emit_individually(
    rows: Vec<Map<String, Value>>,
    concurrency: Option<usize>,
) -> Outcome {
    Outcome::each(rows.into_iter().map(Value::Object).collect(), concurrency)
}

/// `concurrency` is a count, and only for `mode: emitIndividually`.
pub(crate) fn concurrency_issues(options: &Value) -> Vec<OptionIssue> {
    if options.get("concurrency").is_none() {
        return Vec::new();
    }
    let mut issues: Vec<OptionIssue> = count_issue(options, "concurrency").into_iter().collect();
    if options.get("mode").and_then(Value::as_str) != Some("emitIndividually") {
        issues.push(OptionIssue {
            path: vec![PathSeg::Key("concurrency".into())],
            message:
                "`concurrency` is for `mode: emitIndividually` (how many rows' runs go at once)"
                    .into(),
            at_key: true,
            help: None,
        });
    }
    issues
}

/// `sql.query`: a query or statement with named parameters.
pub struct SqlQuery(pub(crate) Arc<Pools>);

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
    /// With `fetchAll`: the count of rows that fails with "too many
    /// results" (default 1000).
    #[serde(default = "default_max")]
    pub max_result_size: u32,
    /// With `emitIndividually`: how many rows' runs may be under way at
    /// once (default 1: one after another).
    pub concurrency: Option<usize>,
}

impl Action for SqlQuery {
    const KIND: &'static str = "sql.query";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlQueryOptions;

    /// A templated query is refused: a value templated into SQL is SQL.
    fn check(options: &Value) -> Vec<OptionIssue> {
        let mut issues = concurrency_issues(options);
        let templated = options
            .get("query")
            .and_then(Value::as_str)
            .is_some_and(sluice_expr::template::has_template);
        if !templated {
            return issues;
        }
        issues.push(OptionIssue {
            path: vec![PathSeg::Key("query".into())],
            message: "the query is a template: a value templated into SQL becomes SQL (anyone who controls it can run their own statement)".into(),
            at_key: false,
            help: Some(
                "write the query out and give values as `:name` parameters through `params`, such as `query: \"SELECT * FROM t WHERE id = :id\"` with `params: {id: \"{{ .id }}\"}`".into(),
            ),
        });
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlQueryOptions,
    ) -> Result<Outcome, ActionError> {
        let db = self.0.db(cx.connections, &o.connection).await?;
        let st = named_params(&o.query, db.backend, &o.params)?;
        let mut via = Reads::of(&db, &cx, &o.connection).await?;
        let out = match o.mode {
            QueryMode::Statement => match via.run(&st, false).await? {
                Fetched::Affected(n) => Outcome::value(serde_json::json!({"rowsAffected": n})),
                Fetched::Rows(_) => Outcome::value(serde_json::json!({"rowsAffected": 0})),
            },
            // Rows are read up to the bound and no further: a query that
            // returns millions fails without holding them.
            QueryMode::FetchAll | QueryMode::EmitIndividually => {
                let most = o.max_result_size as usize;
                let rows = via.rows_at_most(&st, most).await?;
                if rows.len() >= most {
                    return Err(ActionError::data(format!(
                        "too many results: the query returned {most} rows or more (maxResultSize is {most})"
                    )));
                }
                if o.mode == QueryMode::EmitIndividually {
                    emit_individually(rows, o.concurrency)
                } else {
                    Outcome::value(serde_json::json!({"results": rows}))
                }
            }
            QueryMode::ExpectSingle => {
                let mut rows = via.rows_at_most(&st, 2).await?;
                match rows.len() {
                    1 => Outcome::value(Value::Object(rows.remove(0))),
                    0 if o.allow_zero_results => Outcome::value(Value::Object(Map::new())),
                    0 => return Err(ActionError::data("not found: the query returned no row")),
                    _ => {
                        return Err(ActionError::data(
                            "more than one matching object: the query returned more than one row",
                        ));
                    }
                }
            }
        };
        via.done().await?;
        Ok(out)
    }
}

/// `sql.create`: insert one object and emit it as stored.
pub struct SqlCreate(pub(crate) Arc<Pools>);

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
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlCreateOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlCreateOptions,
    ) -> Result<Outcome, ActionError> {
        let none = Map::new();
        single_change(
            &self.0,
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
pub struct SqlLookup(pub(crate) Arc<Pools>);

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
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlLookupOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupOptions,
    ) -> Result<Outcome, ActionError> {
        let db = self.0.db(cx.connections, &o.connection).await?;
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
        let mut via = Reads::of(&db, &cx, &o.connection).await?;
        let mut rows = via.table_rows(&st, cols).await?;
        via.done().await?;
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

/// `sql.update`: update the one object matching the criteria; none is "not found".
pub struct SqlUpdate(pub(crate) Arc<Pools>);

/// `sql.upsert`: update the one object matching the criteria, or create it.
pub struct SqlUpsert(pub(crate) Arc<Pools>);

impl Action for SqlUpdate {
    const KIND: &'static str = "sql.update";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlWriteOptions,
    ) -> Result<Outcome, ActionError> {
        write(&self.0, &cx, o, false).await
    }
}

impl Action for SqlUpsert {
    const KIND: &'static str = "sql.upsert";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlWriteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlWriteOptions,
    ) -> Result<Outcome, ActionError> {
        write(&self.0, &cx, o, true).await
    }
}

/// `sql.delete`: delete the one object matching the criteria, emitting its
/// key (`{id}`); none emits `{}`; several fail and delete nothing.
pub struct SqlDelete(pub(crate) Arc<Pools>);

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
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlDeleteOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlDeleteOptions,
    ) -> Result<Outcome, ActionError> {
        single_change(
            &self.0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn named_parameters_skip_comments_and_quoted_strings() {
        let mut p = Map::new();
        p.insert("v".into(), json!(1));
        let sql = |q: &str, b: Backend| named_params(q, b, &p).map(|s| (s.sql, s.params.len()));
        // Comments: a parameter named in one is not one.
        for b in [Backend::Sqlite, Backend::Postgres, Backend::MySql] {
            let ph = b.placeholder(1);
            assert_eq!(
                sql("SELECT :v AS a -- :w", b).unwrap(),
                (format!("SELECT {ph} AS a -- :w"), 1)
            );
            assert_eq!(
                sql("SELECT /* :w */ :v", b).unwrap(),
                (format!("SELECT /* :w */ {ph}"), 1)
            );
            assert_eq!(sql("SELECT ':w'', :w' AS a", b).unwrap().1, 0);
        }
        assert_eq!(
            sql("SELECT :v # :w\n", Backend::MySql).unwrap(),
            ("SELECT ? # :w\n".to_owned(), 1)
        );
        // MariaDB/MySQL: a backslash escapes a quote.
        assert_eq!(sql(r"SELECT 'it\' :w' AS a", Backend::MySql).unwrap().1, 0);
        // PostgreSQL: dollar quotes, nested comments, E'' escapes, $1.
        assert_eq!(sql("SELECT $$ :w $$", Backend::Postgres).unwrap().1, 0);
        assert_eq!(
            sql("SELECT $x$ :w $$ :w $x$, :v", Backend::Postgres)
                .unwrap()
                .1,
            1
        );
        assert_eq!(
            sql("SELECT /* a /* :w */ :w */ :v", Backend::Postgres)
                .unwrap()
                .1,
            1
        );
        assert_eq!(sql(r"SELECT E'\' :w', :v", Backend::Postgres).unwrap().1, 1);
        assert_eq!(sql(r"SELECT '\', :v", Backend::Postgres).unwrap().1, 1);
        assert_eq!(sql("SELECT $1::int", Backend::Postgres).unwrap().1, 0);
    }
}
