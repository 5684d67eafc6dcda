//! The standardized actions on one object: `sql.query`, `sql.create`,
//! `sql.lookup`, `sql.update`, `sql.upsert` and `sql.delete`, each write in
//! one transaction, with the data hooks of the changes it makes.

use crate::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::hooks::{Change, ChangeOp, DataHooks, When};
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::borrow::Cow;
use std::collections::BTreeMap;
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

pub(crate) fn where_clause(
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

/// Objects matching `criteria` (at most two: enough to tell one from several).
pub(crate) async fn find(
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
pub(crate) fn row_key(
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
pub(crate) async fn update_row(
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

pub(crate) fn criteria_missing(c: &Map<String, Value>) -> bool {
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
pub struct SqlUpdate(pub(crate) Arc<Pools>);

/// `sql.upsert`: update the one object matching the criteria, or create it.
pub struct SqlUpsert(pub(crate) Arc<Pools>);

/// Create one object in a transaction and read it back.
pub(crate) async fn create_in(
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
pub(crate) async fn write_in(
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
pub(crate) async fn delete_in(
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
pub(crate) async fn plan_in(
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
pub(crate) async fn apply_in(
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
pub(crate) struct Hooked<'a> {
    pub(crate) hooks: &'a dyn DataHooks,
    pub(crate) connection: &'a str,
}

impl<'a> Hooked<'a> {
    /// The step's hooks on `connection`, if the run has any.
    pub(crate) fn of(cx: &ActionCx<'a>, connection: &'a str) -> Option<Self> {
        cx.hooks.map(|hooks| Self { hooks, connection })
    }

    pub(crate) fn listens(self, when: When, op: ChangeOp, collection: &str) -> bool {
        self.hooks.listens(when, op, self.connection, collection)
    }

    /// Whether a before-hook listens to any change `op` may turn out to be.
    pub(crate) fn before_any(self, op: PatchOp, collection: &str) -> bool {
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
    pub(crate) async fn before(
        self,
        db: &Db,
        planned: Option<Change>,
    ) -> Result<Option<Change>, ActionError> {
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
    pub(crate) async fn after(self, changes: Vec<Change>) -> Vec<String> {
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
pub(crate) enum Target<'a> {
    /// The step's criteria.
    Criteria(&'a Map<String, Value>),
    /// A link's two objects, each found by its own criteria (in the
    /// change's transaction): their ids, in the link table's fields.
    Link(&'a SqlLinkOptions),
}

impl<'a> Target<'a> {
    /// The fields of the changed table it names.
    pub(crate) fn fields(self) -> Vec<&'a String> {
        match self {
            Target::Criteria(c) => c.keys().collect(),
            Target::Link(o) => vec![&o.from.field, &o.to.field],
        }
    }

    pub(crate) async fn criteria(
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
pub(crate) async fn single_change(
    pools: &Pools,
    cx: &ActionCx<'_>,
    connection: &str,
    name: &str,
    op: PatchOp,
    target: Target<'_>,
    props: Map<String, Value>,
) -> Result<Outcome, ActionError> {
    let db = pools.db(cx.connections, connection).await?;
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

pub(crate) async fn write(
    pools: &Pools,
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
        pools,
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
