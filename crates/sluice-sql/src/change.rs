//! One change of one object in a transaction: the patch ops, the object a
//! change targets (by criteria, or a link table's row by its two objects),
//! plan and apply, and the data hooks asked before and after (a before-hook
//! runs on the row as it is, an after-hook once the change is committed).

use crate::backend::{Backend, Table};
use crate::db::{Db, Pools, Stmt, Tx};
use crate::shared::StepTx;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_action::hooks::{Change, ChangeOp, DataHooks, When};
use sluice_action::{ActionCx, ActionError, Outcome};
use std::borrow::Cow;
use std::collections::BTreeMap;

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
    pub(crate) const ALL: [Self; 4] = [Self::Create, Self::Update, Self::Upsert, Self::Delete];

    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Upsert => "upsert",
            Self::Delete => "delete",
        }
    }

    /// The write `word` names (as a flow writes it), if it names one.
    pub(crate) fn of_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.word() == word)
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
    // By id (OIH): every field of the id, or none of them; none given, an
    // upsert creates.
    if !t.pk.is_empty() && criteria.keys().all(|k| t.pk.contains(k)) {
        let given = |k: &&String| criteria.get(*k).is_some_and(|v| !v.is_null());
        let (some, none): (Vec<&String>, Vec<&String>) = t.pk.iter().partition(given);
        if !some.is_empty() && !none.is_empty() {
            let names = |v: &[&String]| {
                v.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(ActionError::data(format!(
                "the criteria give {} of the id of `{name}` but not {}: give every field of the id, or none",
                names(&some),
                names(&none)
            )));
        }
        if some.is_empty() && op == PatchOp::Upsert {
            return Ok(Some(change(ChangeOp::Create, Map::new(), props, None)));
        }
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
    locked_change(pools, cx, connection, name, op, target, props, None).await
}

/// [`single_change`], holding lock `lock` (see [`crate::db::Tx::lock`])
/// from the start of its transaction, when given.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn locked_change(
    pools: &Pools,
    cx: &ActionCx<'_>,
    connection: &str,
    name: &str,
    op: PatchOp,
    target: Target<'_>,
    props: Map<String, Value>,
    lock: Option<&str>,
) -> Result<Outcome, ActionError> {
    // A transaction the database gave up on to break a deadlock (MariaDB
    // and MySQL may pick one of two changes taking one lock, under load)
    // is rolled back whole: it is made again, a few times.
    let mut tries = 0;
    let r = loop {
        let r =
            locked_change_once(pools, cx, connection, name, op, target, props.clone(), lock).await;
        match r {
            Err(e) if tries < 3 && deadlocked(&e) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
            }
            r => break r,
        }
    };
    let attempt = crate::db::Attempt::of(cx);
    crate::db::or_completed(pools, attempt, connection, r, Outcome::value).await
}

/// Whether the database rolled a transaction back to break a deadlock
/// (MariaDB and MySQL: error 1213, SQLSTATE 40001; PostgreSQL: "deadlock
/// detected", 40P01), as its message says.
fn deadlocked(e: &ActionError) -> bool {
    e.message.contains("1213 (40001)") || e.message.contains("deadlock detected")
}

/// [`locked_change`], once.
#[allow(clippy::too_many_arguments)]
async fn locked_change_once(
    pools: &Pools,
    cx: &ActionCx<'_>,
    connection: &str,
    name: &str,
    op: PatchOp,
    target: Target<'_>,
    props: Map<String, Value>,
    lock: Option<&str>,
) -> Result<Outcome, ActionError> {
    let db = pools.db(cx.connections, connection).await?;
    let t = db
        .check_fields(name, target.fields().into_iter().chain(props.keys()))
        .await?;
    let hooked = Hooked::of(cx, connection);
    refuse_hooks_in_flow_tx(cx, hooked, name)?;
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
    let mut step = StepTx::begin(&db, cx, connection).await?;
    let tx = step.tx();
    if let Some(name) = lock {
        tx.lock(name).await?;
    }
    // Run again after a crash, a step that committed meets its own
    // completion record (its key, below), is rolled back, and takes the
    // recorded result ([`crate::db::or_completed`]): nothing is written
    // twice, and a first run saves the record's lookup.
    let criteria = target.criteria(tx, &db).await?;
    let planned = plan_in(tx, &db, name, &t, op, &criteria, props).await?;
    let (out, change) = apply_in(tx, &db, name, &t, planned).await?;
    let out = Value::Object(out);
    tx.complete(crate::db::completion_key(cx), &out).await?;
    step.commit().await?;
    let mut outcome = Outcome::value(out);
    if let (Some(h), Some(c)) = (hooked, change) {
        outcome.logs = h.after(vec![c]).await;
    }
    Ok(outcome)
}

/// Under `transaction: flow` a change cannot start other runs: data hooks
/// see each write committed on its own.
pub(crate) fn refuse_hooks_in_flow_tx(
    cx: &ActionCx<'_>,
    hooked: Option<Hooked<'_>>,
    collection: &str,
) -> Result<(), ActionError> {
    if cx.flow_tx.is_none() {
        return Ok(());
    }
    let heard = hooked.is_some_and(|h| {
        [When::Before, When::After].into_iter().any(|w| {
            [ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete]
                .into_iter()
                .any(|op| h.listens(w, op, collection))
        })
    });
    if heard {
        return Err(ActionError::flow(format!(
            "flows with an `event` trigger listen to changes of `{collection}`, and this flow runs in one transaction (`transaction: flow`): data hooks need each change committed on its own"
        )));
    }
    Ok(())
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

/// The ids of a link's two objects, each found by its criteria, in the
/// link table's fields.
pub(crate) async fn link_key(
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

/// The id a child's `parentKey` receives: the parent's primary key (or `id`).
pub(crate) fn new_id(t: &Table, row: &Map<String, Value>) -> Value {
    t.pk.first()
        .and_then(|k| row.get(k))
        .or_else(|| row.get("id"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlocks_are_told_apart_by_what_the_databases_say() {
        let said = |m: &str| ActionError::external(format!("mysql://db: {m}"));
        assert!(deadlocked(&said(
            "error returned from database: 1213 (40001): Deadlock found when trying to get lock; try restarting transaction"
        )));
        assert!(deadlocked(&said(
            "error returned from database: deadlock detected"
        )));
        assert!(!deadlocked(&said(
            "error returned from database: 1062 (23000): Duplicate entry 'vip' for key 'code'"
        )));
    }
}
