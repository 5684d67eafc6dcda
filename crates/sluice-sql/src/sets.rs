//! Many-to-many and option sets: `sql.lookupSet`, `sql.link`,
//! `sql.unlink` and `sql.assertOption`.

use crate::change::{
    PatchOp, SqlLinkOptions, Target, criteria_missing, find, locked_change, single_change,
};
use crate::db::{Pools, Stmt};
use crate::shared::Reads;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use std::collections::BTreeMap;
use std::sync::Arc;

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
pub struct SqlLookupSet(pub(crate) Arc<Pools>);

pub(crate) fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Action for SqlLookupSet {
    const KIND: &'static str = "sql.lookupSet";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlLookupSetOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLookupSetOptions,
    ) -> Result<Outcome, ActionError> {
        let db = self.0.db(cx.connections, &o.connection).await?;
        let mut via = Reads::of(&db, &cx, &o.connection).await?;
        let out = match (o.ids, o.criteria) {
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
                    for row in via.table_rows(&Stmt { sql, params }, &t.cols).await? {
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
                Value::Object(out)
            }
            (None, Some(list)) => {
                let fields: Vec<String> = list.iter().flat_map(|c| c.keys().cloned()).collect();
                let t = db.check_fields(&o.collection, fields.iter()).await?;
                let tx = via.tx().await?;
                let mut out = Vec::new();
                for (i, c) in list.iter().enumerate() {
                    if criteria_missing(c) {
                        return Err(ActionError::data(format!("criteria {} are missing", i + 1)));
                    }
                    let mut rows = find(tx, &db, &o.collection, &t, c).await?;
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
                Value::Array(out)
            }
            _ => return Err(ActionError::flow("give either `ids` or `criteria`")),
        };
        via.done().await?;
        Ok(Outcome::value(out))
    }
}

/// `sql.link`: link two objects in a many-to-many relation (updating the
/// link's data when they are linked already).
pub struct SqlLink(pub(crate) Arc<Pools>);

/// `sql.unlink`: remove the link between two objects.
pub struct SqlUnlink(pub(crate) Arc<Pools>);

/// A link (or unlink) is a change of the link table: an upsert of the row
/// that joins the two objects (a delete for an unlink), found by their ids;
/// data hooks hear it as a change of that table.
pub(crate) async fn link(
    pools: &Pools,
    cx: &ActionCx<'_>,
    o: SqlLinkOptions,
    add: bool,
) -> Result<Outcome, ActionError> {
    let (op, data) = if add {
        (PatchOp::Upsert, o.data.clone())
    } else {
        (PatchOp::Delete, Map::new())
    };
    single_change(
        pools,
        cx,
        &o.connection,
        &o.link_collection,
        op,
        Target::Link(&o),
        data,
    )
    .await
}

impl Action for SqlLink {
    const KIND: &'static str = "sql.link";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlLinkOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLinkOptions,
    ) -> Result<Outcome, ActionError> {
        link(&self.0, &cx, o, true).await
    }
}

impl Action for SqlUnlink {
    const KIND: &'static str = "sql.unlink";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlLinkOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlLinkOptions,
    ) -> Result<Outcome, ActionError> {
        link(&self.0, &cx, o, false).await
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
pub struct SqlAssertOption(pub(crate) Arc<Pools>);

impl Action for SqlAssertOption {
    const KIND: &'static str = "sql.assertOption";
    const CONNECTION: Option<&'static str> = Some(sluice_model::SQL_CONNECTION);
    type Options = SqlAssertOptionOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: SqlAssertOptionOptions,
    ) -> Result<Outcome, ActionError> {
        let mut criteria = Map::new();
        criteria.insert(o.field.clone(), o.value.clone());
        // Asserts of one option list take turns: two at once make one row.
        let lock = format!("assertOption:{}.{}", o.collection, o.field);
        let mut out = locked_change(
            &self.0,
            &cx,
            &o.connection,
            &o.collection,
            PatchOp::Upsert,
            Target::Criteria(&criteria),
            o.properties,
            Some(&lock),
        )
        .await?;
        // OIH's output: a dictionary of the field to its option.
        out.payload = out.payload.map(|row| {
            let mut m = Map::with_capacity(1);
            m.insert(o.field.clone(), row);
            Value::Object(m)
        });
        Ok(out)
    }
}
