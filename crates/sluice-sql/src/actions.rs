//! The standardized actions on one object: `sql.query`, `sql.create`,
//! `sql.lookup`, `sql.update`, `sql.upsert` and `sql.delete`, each write in
//! one transaction, with the data hooks of the changes it makes.

use crate::backend::Backend;
use crate::change::{PatchOp, SqlWriteOptions, Target, single_change, where_clause, write};
use crate::db::{Fetched, Pools, Stmt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::sync::Arc;

/// Replace `:name` parameters by the backend's placeholders, outside string
/// literals, quoted identifiers and PostgreSQL's `::` casts.
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

/// Rows emitted one by one: the steps after run once per row.
pub(crate) fn emit_individually(rows: Vec<Map<String, Value>>) -> Outcome {
    let items: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    Outcome {
        payload: Some(Value::Array(items.clone())),
        items: Some(items),
        ..Outcome::default()
    }
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
}

impl Action for SqlQuery {
    const KIND: &'static str = "sql.query";
    type Options = SqlQueryOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlQueryOptions,
    ) -> Result<Outcome, ActionError> {
        let db = self.0.db(cx.connections, &o.connection).await?;
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

/// `sql.update`: update the one object matching the criteria; none is "not found".
pub struct SqlUpdate(pub(crate) Arc<Pools>);

/// `sql.upsert`: update the one object matching the criteria, or create it.
pub struct SqlUpsert(pub(crate) Arc<Pools>);

impl Action for SqlUpdate {
    const KIND: &'static str = "sql.update";
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
}
