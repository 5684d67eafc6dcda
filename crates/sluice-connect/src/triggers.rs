//! Trigger types and their options: `manual`, `webhook`, `schedule`, `poll` (the
//! `cloudevent` trigger's options live with the CloudEvent helpers in
//! [`crate::core_ops`]). Options are checked when a flow file is loaded, so
//! `sluice check` reports a cron expression that cannot fire or an unknown
//! time zone with its line and column.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Options of the `manual` trigger: none. A manual flow starts from
/// `POST /api/flows/ID/runs` (or `sluice run`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {}

/// The HTTP method a webhook answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HookMethod {
    /// `POST` (the default).
    #[default]
    Post,
    /// `GET`.
    Get,
}

impl HookMethod {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Get => "GET",
        }
    }
}

/// Options of the `webhook` trigger: a request to `/hooks/PATH` starts a run.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookTrigger {
    /// The path under `/hooks/`: segments of letters, digits, `-`, `_` and
    /// `.`, separated by `/` (for example `orders/new`).
    #[serde(deserialize_with = "hook_path")]
    pub path: String,
    /// `POST` (default) or `GET`.
    #[serde(default)]
    pub method: HookMethod,
    /// Answer at once with `202` and the run's id, instead of waiting for the
    /// run to end (the default).
    #[serde(default, rename = "async")]
    pub is_async: bool,
    /// The largest request body accepted, in bytes (default 1 MiB).
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u64,
    /// What a synchronous webhook answers (default: status 200 with `$last`).
    #[serde(default)]
    pub response: HookResponse,
}

fn default_body_limit() -> u64 {
    1 << 20
}

/// The answer of a synchronous webhook.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookResponse {
    /// A jq expression over the run's output (the state data after the last
    /// step), with `$trigger` and `$last`; default `$last`.
    pub body: Option<String>,
    /// The status of a successful run's answer (default 200).
    pub status: Option<u16>,
    /// Headers added to the answer.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// What a schedule does about fires missed while no server ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MissedFires {
    /// Skip them (the default): the next fire is the next time after now.
    #[default]
    Skip,
    /// Run once, at start-up, for the latest missed time (however many were missed).
    RunOnce,
}

/// Options of the `schedule` trigger.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleTrigger {
    /// A cron expression: five fields (minute hour day month weekday) or six
    /// with seconds first (`*/10 * * * * *`: every ten seconds).
    pub cron: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Fires missed while no server ran: `skip` (default) or `runOnce`.
    #[serde(default)]
    pub missed: MissedFires,
}

fn utc() -> String {
    "UTC".to_owned()
}

impl ScheduleTrigger {
    /// The schedule these options describe, checked.
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::new(&self.cron, &self.timezone)
    }
}

/// A cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
}

impl Schedule {
    /// Parse `cron` (five or six fields) in the time zone `tz`; an
    /// expression that never fires (such as the 30th of February) is refused.
    pub fn new(cron: &str, tz: &str) -> Result<Self, String> {
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| format!("`{cron}` is not a cron expression: {e}"))?;
        let zone = jiff::tz::TimeZone::get(tz).map_err(|_| {
            format!("unknown time zone `{tz}` (use an IANA name such as `Europe/Paris` or `UTC`)")
        })?;
        let s = Self {
            cron: parsed,
            tz: zone,
        };
        let now = jiff::Timestamp::now().as_microsecond();
        if s.next_after(now).is_none() {
            return Err(format!("`{cron}` never fires"));
        }
        Ok(s)
    }

    /// The first fire strictly after `at` (µs since the epoch).
    pub fn next_after(&self, at: i64) -> Option<i64> {
        let t = jiff::Timestamp::from_microsecond(at).ok()?;
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|n| n.timestamp().as_microsecond())
    }

    /// The last fire at or before `at` (µs since the epoch), if any.
    pub fn latest_until(&self, at: i64) -> Option<i64> {
        let t = jiff::Timestamp::from_microsecond(at).ok()?;
        let z = t.to_zoned(self.tz.clone());
        self.cron
            .find_previous_occurrence(&z, true)
            .ok()
            .map(|n| n.timestamp().as_microsecond())
    }
}

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
pub(crate) fn check_poll(options: &serde_json::Value) -> Vec<crate::OptionIssue> {
    let mut issues = crate::check_options::<PollTrigger>(options);
    if !issues.is_empty() {
        return issues;
    }
    let Ok(t) = serde_json::from_value::<PollTrigger>(options.clone()) else {
        return issues;
    };
    let mut bad = |key: &str, message: String, help: &str| {
        issues.push(crate::OptionIssue {
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
        if let Some(v) = v.filter(|v| !crate::sql::valid_ident(v)) {
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

/// A webhook path: non-empty segments of `[A-Za-z0-9._-]` joined by `/`.
fn hook_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let p = s.trim_matches('/');
    let ok = !p.is_empty()
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "`{s}` is not a webhook path: use segments of letters, digits, `-`, `_` and `.` separated by `/`, such as `orders/new`"
        )));
    }
    Ok(p.to_owned())
}

/// Check a schedule trigger's cron expression and time zone (the model
/// calls this through the registry when a flow file loads).
pub(crate) fn check_schedule(options: &serde_json::Value) -> Vec<crate::OptionIssue> {
    let mut issues = crate::check_options::<ScheduleTrigger>(options);
    if issues.is_empty()
        && let Ok(t) = serde_json::from_value::<ScheduleTrigger>(options.clone())
        && let Err(message) = t.schedule()
    {
        let key = if message.contains("time zone") {
            "timezone"
        } else {
            "cron"
        };
        issues.push(crate::OptionIssue {
            path: vec![sluice_expr::PathSeg::Key(key.to_owned())],
            message,
            at_key: false,
            help: Some(
                "cron: `MIN HOUR DAY MONTH WEEKDAY`, or with seconds first: `SEC MIN HOUR DAY MONTH WEEKDAY`"
                    .to_owned(),
            ),
        });
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schedules_fire_in_their_time_zone() {
        // 2026-01-01T00:00:00Z
        let start = 1_767_225_600_000_000;
        let every10 = Schedule::new("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(every10.next_after(start), Some(start + 10_000_000));
        assert_eq!(
            every10.latest_until(start + 15_000_000),
            Some(start + 10_000_000)
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let nine = Schedule::new("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(nine.next_after(start), Some(start + 8 * 3_600_000_000));
    }

    #[test]
    fn bad_schedules_are_refused_with_their_reason() {
        let bad = |o: serde_json::Value| {
            check_schedule(&o)
                .into_iter()
                .map(|i| i.message)
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(bad(json!({"cron": "0 0 30 2 *"})).contains("never fires"));
        assert!(bad(json!({"cron": "every day"})).contains("not a cron expression"));
        assert!(
            bad(json!({"cron": "* * * * *", "timezone": "Mars/Olympus"}))
                .contains("unknown time zone")
        );
        assert!(bad(json!({"cron": "* * * * *", "missed": "twice"})).contains("unknown variant"));
        assert_eq!(
            bad(
                json!({"cron": "0 */5 * * * *", "timezone": "America/New_York", "missed": "runOnce"})
            ),
            ""
        );
    }

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

    #[test]
    fn webhook_paths_are_checked() {
        let ok =
            |p: &str| serde_json::from_value::<WebhookTrigger>(json!({"path": p})).map(|t| t.path);
        assert_eq!(ok("/orders/new/").unwrap(), "orders/new");
        assert!(ok("a/../b").is_err());
        assert!(ok("a b").is_err());
        assert!(ok("").is_err());
        let t: WebhookTrigger = serde_json::from_value(json!({"path": "x"})).unwrap();
        assert_eq!(
            (t.method, t.is_async, t.max_body_bytes),
            (HookMethod::Post, false, 1 << 20)
        );
    }
}
