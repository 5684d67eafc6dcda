//! Trigger types and their options: `manual`, `webhook`, `schedule` (the
//! `cloudevent` trigger's options live with the CloudEvent helpers in
//! [`crate::core_ops`]; `poll` lives with the connector that reads its rows). Options are checked when a flow file is loaded, so
//! `sluice check` reports a cron expression that cannot fire or an unknown
//! time zone with its line and column.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;

pub use crate::manual::ManualTrigger;

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
    /// How callers prove who they are (none: anyone may call).
    pub auth: Option<HookAuth>,
    /// More headers left out of `$trigger.headers` (any case), besides
    /// those that carry a credential by their name.
    #[serde(default)]
    pub drop_headers: Vec<String>,
}

/// How a webhook's callers prove who they are. Secrets are
/// `${secret:NAME}` (or `${env:NAME}`): never written in the flow file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum HookAuth {
    /// An HMAC-SHA256 of the body in a header, as GitHub and Stripe sign
    /// theirs: `x-hub-signature-256: sha256=HEX`.
    #[serde(rename_all = "camelCase")]
    Hmac {
        /// The shared secret.
        secret: String,
        /// The header that carries the signature.
        header: String,
        /// What comes before the digest in it (such as `sha256=`).
        #[serde(default)]
        prefix: String,
        /// `hex` (default) or `base64`.
        #[serde(default)]
        encoding: SignatureEncoding,
        /// A header with the time of signing (seconds since the epoch):
        /// then `TIMESTAMP.BODY` is signed, and the time must be recent.
        timestamp_header: Option<String>,
        /// How old the time of signing may be, in seconds (default 300).
        #[serde(default = "five_minutes")]
        tolerance_secs: u64,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer {
        /// The token.
        token: String,
    },
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A token in a query parameter (left out of `$trigger.query`).
    Query {
        /// The parameter.
        param: String,
        /// The token.
        token: String,
    },
}

impl HookAuth {
    /// Its `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hmac { .. } => "hmac",
            Self::Bearer { .. } => "bearer",
            Self::Basic { .. } => "basic",
            Self::Query { .. } => "query",
        }
    }
}

/// How a signature is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SignatureEncoding {
    /// Hexadecimal.
    #[default]
    Hex,
    /// Base64.
    Base64,
}

fn five_minutes() -> u64 {
    300
}

/// A webhook's secrets are secrets (`${secret:NAME}`) or come from the
/// environment (`${env:NAME}`), never from the flow file itself.
pub(crate) fn check_webhook(options: &Value) -> Vec<sluice_model::OptionIssue> {
    let mut issues = crate::check::check_options::<WebhookTrigger>(options);
    if let Some(auth) = options.get("auth").and_then(Value::as_object) {
        for key in ["secret", "token", "password"] {
            if let Some(v) = auth.get(key).and_then(Value::as_str)
                && !((v.starts_with("${env:") || v.starts_with("${secret:")) && v.ends_with('}'))
            {
                issues.push(sluice_model::OptionIssue {
                    path: vec![
                        sluice_expr::PathSeg::Key("auth".into()),
                        sluice_expr::PathSeg::Key(key.into()),
                    ],
                    message: format!(
                        "a webhook's `{key}` is a secret, never written in the flow file"
                    ),
                    at_key: false,
                    help: Some(format!(
                        "write `{key}: \"${{secret:NAME}}\"` and set SLUICE_SECRET_NAME (or a file NAME in the secrets folder) where sluice runs"
                    )),
                });
            }
        }
    }
    issues
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
pub(crate) fn check_schedule(options: &serde_json::Value) -> Vec<sluice_model::OptionIssue> {
    let mut issues = crate::check::check_options::<ScheduleTrigger>(options);
    if issues.is_empty()
        && let Ok(t) = serde_json::from_value::<ScheduleTrigger>(options.clone())
        && let Err(message) = t.schedule()
    {
        let key = if message.contains("time zone") {
            "timezone"
        } else {
            "cron"
        };
        issues.push(sluice_model::OptionIssue {
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
