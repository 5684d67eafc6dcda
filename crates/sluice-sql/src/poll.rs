//! The `poll` trigger: its options, its snapshot, and the page of rows
//! changed since the snapshot (SEMANTICS.md section 6), read for the
//! server through [`sluice_action::poll::PollSource`].

use crate::db::{Pools, Stmt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_action::poll::{PollSource, PolledPage};
use sluice_action::valid_ident;
use sluice_action::{ActionError, BoxFuture};
use sluice_model::OptionIssue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Options of the `poll` trigger: new and updated rows of a SQL table or
/// query, read by the snapshot rules of SEMANTICS.md section 6.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PollTrigger {
    /// One of the flow's connections.
    pub connection: String,
    /// The table (or give `query`).
    #[serde(default)]
    pub collection: Option<String>,
    /// A `SELECT` whose rows are polled instead of a table's (such as a
    /// join); `timestampField` and `keyField` name columns of its result.
    #[serde(default)]
    pub query: Option<String>,
    /// The column that holds when a row last changed (its `lastModified`).
    pub timestamp_field: String,
    /// The column that orders rows of one time (default: the table's
    /// one-column primary key; required with `query`).
    #[serde(default)]
    pub key_field: Option<String>,
    /// Time between polls, in milliseconds (default 60000, at least 100).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Rows changed at or after this time (in the column's own form, such as
    /// `2026-01-01T00:00:00Z`); default: all.
    #[serde(default)]
    pub start_time: Option<Value>,
    /// Rows changed at or before this time; default: no end.
    #[serde(default)]
    pub end_time: Option<Value>,
    /// Rows read per page (default 100, at most 10000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// One page per interval (the default); `false` reads every page of new
    /// rows at each poll.
    #[serde(default = "yes")]
    pub single_page_per_interval: bool,
}

fn default_interval() -> u64 {
    60_000
}

fn default_page_size() -> u32 {
    100
}

fn yes() -> bool {
    true
}

/// Where a poll is: kept in the store, advanced with the runs each page
/// starts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollSnapshot {
    /// The newest `lastModified` of the rounds done (at first the
    /// trigger's `startTime`, or none: from the beginning).
    pub previous_last_modified: Option<Value>,
    /// Whether a round found rows: until then polls read
    /// `lastModified >= previousLastModified`, afterwards `>`.
    pub found: bool,
    /// The page of the round under way, from 0.
    pub page: u64,
    /// The last row read in the round under way: its `lastModified` and
    /// key (the next page starts after it).
    pub after: Option<(Value, Value)>,
}

impl PollSnapshot {
    /// The snapshot a poll starts from.
    pub fn start(t: &PollTrigger) -> Self {
        Self {
            previous_last_modified: t.start_time.clone(),
            ..Self::default()
        }
    }

    /// The snapshot after reading `rows` (a page, in time order; each row's
    /// time and key given): a full page means more may follow in this
    /// round; a shorter one ends the round, whose newest time becomes
    /// `previousLastModified`. Returns whether the round goes on.
    pub fn advance(&mut self, rows: &[(Value, Value)], page_size: u32) -> bool {
        let last = rows.last().cloned();
        if rows.len() >= page_size as usize && page_size > 0 {
            self.page += 1;
            self.after = last;
            return true;
        }
        if let Some((t, _)) = last.or_else(|| self.after.take()) {
            self.previous_last_modified = Some(t);
            self.found = true;
        }
        self.page = 0;
        self.after = None;
        false
    }
}

/// Check a poll trigger's options (the model calls this when a flow file
/// loads; the server checks the connection against the flow's).
pub fn check_poll(options: &serde_json::Value) -> Vec<OptionIssue> {
    let mut issues = sluice_action::check_options::<PollTrigger>(options);
    if !issues.is_empty() {
        return issues;
    }
    let Ok(t) = serde_json::from_value::<PollTrigger>(options.clone()) else {
        return issues;
    };
    let mut bad = |key: &str, message: String, help: &str| {
        issues.push(OptionIssue {
            // "": the options themselves.
            path: if key.is_empty() {
                Vec::new()
            } else {
                vec![sluice_expr::PathSeg::Key(key.to_owned())]
            },
            message,
            at_key: false,
            help: Some(help.to_owned()),
        });
    };
    let ident = "use letters, digits and `_`";
    match (&t.collection, &t.query) {
        (None, None) => bad(
            "",
            "a poll needs a `collection` (a table) or a `query`".to_owned(),
            "such as `collection: customers`",
        ),
        (Some(_), Some(_)) => bad(
            "query",
            "a poll reads a `collection` or a `query`, not both".to_owned(),
            "keep one of the two",
        ),
        (None, Some(q)) => {
            let head = q.trim_start().get(..6).unwrap_or_default();
            if !head.eq_ignore_ascii_case("select") && !head.eq_ignore_ascii_case("with ") {
                bad(
                    "query",
                    "a poll's query must be a `SELECT` (or `WITH ... SELECT`)".to_owned(),
                    "its rows are read a page at a time, ordered by `timestampField` and `keyField`",
                );
            }
            if t.key_field.is_none() {
                bad(
                    "query",
                    "a poll of a query needs `keyField`: the column that orders rows of one time"
                        .to_owned(),
                    "such as `keyField: id`",
                );
            }
        }
        (Some(_), None) => {}
    }
    for (key, v) in [
        ("collection", t.collection.as_ref()),
        ("timestampField", Some(&t.timestamp_field)),
        ("keyField", t.key_field.as_ref()),
    ] {
        if let Some(v) = v.filter(|v| !sluice_action::valid_ident(v)) {
            bad(key, format!("`{v}` is not a table or column name"), ident);
        }
    }
    if t.interval_ms < 100 {
        bad(
            "intervalMs",
            format!("{} ms is too short an interval", t.interval_ms),
            "poll at most ten times a second: `intervalMs: 100` or more",
        );
    }
    if t.page_size == 0 || t.page_size > 10_000 {
        bad(
            "pageSize",
            format!("a page of {} rows", t.page_size),
            "read 1 to 10000 rows a page",
        );
    }
    issues
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
    pools: &Pools,
    connections: &BTreeMap<String, Value>,
    o: &PollTrigger,
    snap: &PollSnapshot,
) -> Result<Vec<Polled>, ActionError> {
    let db = pools.db(connections, &o.connection).await?;
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

/// The SQL connector as the server's source of a `poll` trigger's rows.
pub(crate) struct SqlPolls(pub(crate) Arc<Pools>);

fn trigger_options(options: &Value) -> Result<PollTrigger, ActionError> {
    // Checked when the flow loaded.
    serde_json::from_value(options.clone())
        .map_err(|e| ActionError::flow(format!("poll trigger: {e}")))
}

impl PollSource for SqlPolls {
    fn interval(&self, options: &Value) -> Duration {
        let ms = trigger_options(options).map_or_else(|_| default_interval(), |o| o.interval_ms);
        Duration::from_millis(ms)
    }

    fn page<'a>(
        &'a self,
        connections: &'a BTreeMap<String, Value>,
        options: &'a Value,
        snapshot: Option<Value>,
    ) -> BoxFuture<'a, Result<PolledPage, ActionError>> {
        Box::pin(async move {
            let o = trigger_options(options)?;
            let mut snap = match snapshot {
                Some(v) => serde_json::from_value::<PollSnapshot>(v).map_err(|e| {
                    ActionError::external(format!("the stored snapshot is unreadable: {e}"))
                })?,
                None => PollSnapshot::start(&o),
            };
            let page = snap.page;
            let rows = poll_page(&self.0, connections, &o, &snap).await?;
            let ats: Vec<(Value, Value)> = rows.iter().map(|r| r.at.clone()).collect();
            let more = snap.advance(&ats, o.page_size);
            let mut trigger = Map::new();
            trigger.insert("collection".into(), o.collection.clone().into());
            trigger.insert("page".into(), page.into());
            Ok(PolledPage {
                rows: rows.into_iter().map(|r| r.row).collect(),
                trigger,
                snapshot: serde_json::to_value(&snap)
                    .map_err(|e| ActionError::external(e.to_string()))?,
                again: more && !o.single_page_per_interval,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn poll_snapshots_follow_the_rounds() {
        let t: PollTrigger = serde_json::from_value(json!({
            "connection": "db", "collection": "t", "timestampField": "at",
            "startTime": "2026-01-01", "pageSize": 2
        }))
        .unwrap();
        assert!(t.single_page_per_interval);
        let mut s = PollSnapshot::start(&t);
        assert_eq!(s.previous_last_modified, Some(json!("2026-01-01")));
        assert!(!s.found);
        // A full page: the round goes on after its last row.
        let page = [
            (json!("2026-01-02"), json!(1)),
            (json!("2026-01-03"), json!(2)),
        ];
        assert!(s.advance(&page, 2));
        assert_eq!((s.page, s.after.clone()), (1, Some(page[1].clone())));
        assert_eq!(s.previous_last_modified, Some(json!("2026-01-01")));
        // An empty page ends it: the newest time read becomes the start.
        assert!(!s.advance(&[], 2));
        assert_eq!(s.previous_last_modified, Some(json!("2026-01-03")));
        assert!(s.found);
        assert_eq!((s.page, s.after.clone()), (0, None));
        // A round with nothing new keeps it.
        assert!(!s.advance(&[], 2));
        assert_eq!(s.previous_last_modified, Some(json!("2026-01-03")));
        // A short page ends the round at its last row.
        assert!(!s.advance(&[(json!("2026-01-05"), json!(9))], 2));
        assert_eq!(s.previous_last_modified, Some(json!("2026-01-05")));
        // Until a round finds a row, `>=` stays.
        let mut empty = PollSnapshot::start(&t);
        assert!(!empty.advance(&[], 2));
        assert!(!empty.found);
    }

    #[test]
    fn bad_polls_are_refused() {
        let bad = |o: serde_json::Value| {
            check_poll(&o)
                .into_iter()
                .map(|i| i.message)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let base = json!({"connection": "db", "collection": "t", "timestampField": "at"});
        assert_eq!(bad(base.clone()), "");
        let with = |k: &str, v: serde_json::Value| {
            let mut o = base.clone();
            o[k] = v;
            o
        };
        assert!(bad(with("collection", json!("t; drop"))).contains("not a table or column name"));
        assert!(bad(with("keyField", json!("a b"))).contains("not a table or column name"));
        assert!(bad(with("intervalMs", json!(5))).contains("too short"));
        assert!(bad(with("pageSize", json!(0))).contains("a page of 0 rows"));
        assert!(bad(json!({"connection": "db", "collection": "t"})).contains("timestampField"));
        // A query instead of a table: a SELECT, with its key named.
        let q = json!({"connection": "db", "query": "SELECT id, at FROM t", "timestampField": "at", "keyField": "id"});
        assert_eq!(bad(q.clone()), "");
        let mut both = q.clone();
        both["collection"] = json!("t");
        assert!(bad(both).contains("not both"));
        let mut keyless = q.clone();
        keyless.as_object_mut().unwrap().remove("keyField");
        assert!(bad(keyless).contains("needs `keyField`"));
        let mut delete = q.clone();
        delete["query"] = json!("DELETE FROM t");
        assert!(bad(delete).contains("must be a `SELECT`"));
        assert!(
            bad(json!({"connection": "db", "timestampField": "at"}))
                .contains("needs a `collection` (a table) or a `query`")
        );
    }
}
