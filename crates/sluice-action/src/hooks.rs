//! Data hooks: flows that run before or after Sluice's own SQL actions
//! create, update or delete a row (the `event` trigger, after Directus's
//! event hooks). A before-hook runs while the change waits and can refuse it
//! (its run does not succeed) or rewrite what is written
//! (`replacePayload`); after-hooks start once the change is committed and do
//! not hold it up.
//!
//! The SQL actions see hooks through [`DataHooks`] on [`crate::ActionCx`];
//! the engine implements it with the flows it knows, so this crate does no
//! more than describe changes and ask.

use crate::error::{ActionError, BoxFuture};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// When a hook runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Before the change is written: the hook can refuse it.
    Before,
    /// Once it is committed (the default).
    #[default]
    After,
}

impl When {
    /// Its name in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::After => "after",
        }
    }
}

/// What happens to a row. An upsert is a `create` or an `update`, whichever
/// it turns out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// A row is inserted.
    Create,
    /// A row is updated.
    Update,
    /// A row is deleted.
    Delete,
}

impl ChangeOp {
    /// Its name in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

fn every_op() -> Vec<ChangeOp> {
    vec![ChangeOp::Create, ChangeOp::Update, ChangeOp::Delete]
}

/// Options of the `event` trigger: a run starts before or after Sluice's
/// SQL actions (`sql.create`, `sql.update`, `sql.upsert`, `sql.delete` and
/// the patches of an `envelope`) change a row of one of `collections`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventTrigger {
    /// `before` (the run must succeed for the change to be written) or
    /// `after` (default: the run starts once the change is committed).
    #[serde(default)]
    pub when: When,
    /// Which changes: `create`, `update`, `delete` (default all three).
    #[serde(default = "every_op")]
    pub on: Vec<ChangeOp>,
    /// The tables watched (at least one).
    pub collections: Vec<String>,
    /// Only changes made through connections of this name (default: any).
    #[serde(default)]
    pub connection: Option<String>,
    /// For `before`: the run's output (its state data at the end) replaces
    /// the fields written. Default false: the hook only checks.
    #[serde(default)]
    pub replace_payload: bool,
    /// For `before`: how long the change waits for the run, in milliseconds
    /// (default 30000); when it passes, the change is refused as an outside
    /// failure would be (a step's `retry` applies).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    30_000
}

impl EventTrigger {
    /// Whether this trigger listens to a change.
    pub fn listens(&self, when: When, op: ChangeOp, connection: &str, collection: &str) -> bool {
        self.when == when
            && self.on.contains(&op)
            && self.collections.iter().any(|c| c == collection)
            && self.connection.as_deref().is_none_or(|c| c == connection)
    }
}

/// Check an `event` trigger's options (the model calls this when a flow
/// file loads).
pub(crate) fn check_event(options: &Value) -> Vec<sluice_model::OptionIssue> {
    let mut issues = crate::check::check_options::<EventTrigger>(options);
    if !issues.is_empty() {
        return issues;
    }
    let Ok(t) = serde_json::from_value::<EventTrigger>(options.clone()) else {
        return issues;
    };
    let issue = |key: &str, message: String, help: &str| sluice_model::OptionIssue {
        path: vec![sluice_expr::PathSeg::Key(key.to_owned())],
        message,
        at_key: false,
        help: Some(help.to_owned()),
    };
    if t.collections.is_empty() {
        issues.push(issue(
            "collections",
            "an event trigger watches at least one collection".into(),
            "name the tables, such as `collections: [customers]`",
        ));
    }
    if let Some(bad) = t.collections.iter().find(|c| !crate::check::valid_ident(c)) {
        issues.push(issue(
            "collections",
            format!("`{bad}` is not a table name"),
            "use letters, digits and `_`",
        ));
    }
    if t.on.is_empty() {
        issues.push(issue(
            "on",
            "an event trigger listens to at least one change".into(),
            "use `create`, `update` and `delete`, or leave `on` out for all three",
        ));
    }
    if t.replace_payload && t.when == When::After {
        issues.push(issue(
            "replacePayload",
            "`replacePayload` is for `when: before`: after the change there is nothing left to replace"
                .into(),
            "add `when: before`, or remove `replacePayload`",
        ));
    }
    issues
}

/// A change to one row, as hooks see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The connection's name in the flow that makes the change.
    pub connection: String,
    /// The table.
    pub collection: String,
    /// What happens.
    pub op: ChangeOp,
    /// What identifies the row: its primary key, or the criteria given
    /// (empty for a create before it is written).
    pub key: Map<String, Value>,
    /// The fields written (for a delete: none).
    pub payload: Map<String, Value>,
    /// The row as it was (update and delete).
    pub previous: Option<Map<String, Value>>,
    /// The row as it is now (after a create or update).
    pub row: Option<Map<String, Value>>,
}

impl Change {
    /// `$trigger` of a hook's run (without what started the run, which the
    /// engine adds).
    pub fn trigger(&self, when: When) -> Value {
        let obj = |m: &Option<Map<String, Value>>| m.clone().map_or(Value::Null, Value::Object);
        json!({
            "event": self.op.as_str(),
            "when": when.as_str(),
            "collection": self.collection,
            "connection": self.connection,
            "key": self.key,
            "payload": self.payload,
            "previous": obj(&self.previous),
            "row": obj(&self.row),
        })
    }
}

/// The hooks of the flows a run can reach: the SQL actions ask before and
/// after each change they make.
pub trait DataHooks: Send + Sync {
    /// Whether any hook listens to this change (cheap; the actions describe
    /// a change only when one does).
    fn listens(&self, when: When, op: ChangeOp, connection: &str, collection: &str) -> bool;

    /// Run the before-hooks of `change`, one after the other: the fields to
    /// write (the payload, or what a hook with `replacePayload` made of
    /// it), or the error of the first hook whose run did not succeed.
    fn before<'a>(
        &'a self,
        change: Change,
    ) -> BoxFuture<'a, Result<Map<String, Value>, ActionError>>;

    /// Start the after-hooks of committed changes (they run on their own):
    /// the change is made, so a hook that cannot start does not fail the
    /// step; each such problem is a line for the step's log.
    fn after<'a>(&'a self, changes: Vec<Change>) -> BoxFuture<'a, Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(o: Value) -> String {
        check_event(&o)
            .into_iter()
            .map(|i| i.message)
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn event_triggers_are_checked() {
        assert_eq!(messages(json!({"collections": ["customers"]})), "");
        assert!(messages(json!({})).contains("collections"));
        assert!(messages(json!({"collections": []})).contains("at least one collection"));
        assert!(messages(json!({"collections": ["a;b"]})).contains("not a table name"));
        assert!(messages(json!({"collections": ["a"], "on": []})).contains("at least one change"));
        assert!(
            messages(json!({"collections": ["a"], "on": ["insert"]})).contains("unknown variant")
        );
        assert!(
            messages(json!({"collections": ["a"], "replacePayload": true}))
                .contains("`replacePayload` is for `when: before`")
        );
        assert_eq!(
            messages(json!({"collections": ["a"], "when": "before", "replacePayload": true})),
            ""
        );
    }

    #[test]
    fn listening_is_by_when_op_collection_and_connection() {
        let t: EventTrigger = serde_json::from_value(
            json!({"when": "before", "on": ["create"], "collections": ["orders"], "connection": "shop"}),
        )
        .unwrap();
        assert!(t.listens(When::Before, ChangeOp::Create, "shop", "orders"));
        assert!(!t.listens(When::After, ChangeOp::Create, "shop", "orders"));
        assert!(!t.listens(When::Before, ChangeOp::Update, "shop", "orders"));
        assert!(!t.listens(When::Before, ChangeOp::Create, "crm", "orders"));
        assert!(!t.listens(When::Before, ChangeOp::Create, "shop", "customers"));
        let any: EventTrigger = serde_json::from_value(json!({"collections": ["orders"]})).unwrap();
        assert!(any.listens(When::After, ChangeOp::Delete, "x", "orders"));
    }
}
