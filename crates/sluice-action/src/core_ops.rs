//! Core operations, modelled on Directus's: `transform`, `condition`, `log`,
//! `sleep`, `throw` and `split`; `wait` (for a CloudEvent) and `flow` (run
//! another flow), which ask the engine for an [`Effect`]; and the
//! `cloudevent` and `flow` triggers.

use crate::action::{Action, ActionCx, Effect, Iteration, Outcome};
use crate::error::ActionError;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;

/// `transform`: the result is the templated `value` option.
pub struct Transform;

/// Options of `transform`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformOptions {
    /// The result: any JSON value; templates are rendered.
    pub value: Value,
}

impl Action for Transform {
    const KIND: &'static str = "transform";
    const PURE: bool = true;
    type Options = TransformOptions;

    fn result_of(options: &sluice_expr::Val) -> Option<sluice_expr::Val> {
        match options {
            sluice_expr::Val::Obj(m) if m.len() == 1 => {
                sluice_expr::data::field(options, "value").cloned()
            }
            _ => None,
        }
    }

    async fn run<'a>(
        &'a self,
        _cx: ActionCx<'a>,
        options: TransformOptions,
    ) -> Result<Outcome, ActionError> {
        Ok(Outcome::value(options.value))
    }
}

/// `condition`: a jq predicate over the step's input; `false` or `null`
/// fails the step, so the run takes the failure path.
pub struct Condition;

/// Options of `condition`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionOptions {
    /// jq predicate; `.` is the step's input, the flow object is in variables.
    pub filter: String,
}

impl Action for Condition {
    const KIND: &'static str = "condition";
    const PURE: bool = true;
    const EXPRESSIONS: &'static [&'static str] = &["filter"];
    type Options = ConditionOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        _options: ConditionOptions,
    ) -> Result<Outcome, ActionError> {
        let p = cx.expression("filter")?;
        let v = p.first(cx.program_input.as_val().clone(), cx.scope, cx.limits)?;
        let truthy = !matches!(
            v,
            None | Some(sluice_expr::Val::Null) | Some(sluice_expr::Val::Bool(false))
        );
        if truthy {
            Ok(Outcome::none())
        } else {
            Err(ActionError::flow(format!(
                "condition `{}` is false",
                p.code()
            )))
        }
    }
}

/// `log`: writes its templated message to the run log; no payload.
pub struct Log;

/// Options of `log`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogOptions {
    /// The message; a value that is not a string is written as JSON.
    pub message: Value,
}

impl Action for Log {
    const KIND: &'static str = "log";
    const PURE: bool = true;
    type Options = LogOptions;

    async fn run<'a>(
        &'a self,
        _cx: ActionCx<'a>,
        options: LogOptions,
    ) -> Result<Outcome, ActionError> {
        Ok(Outcome {
            logs: vec![text(options.message)],
            ..Outcome::default()
        })
    }
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// `sleep`: waits `ms` milliseconds; no payload. In a recorded run the run
/// is suspended durably: after a restart it wakes at the time it was due.
pub struct Sleep;

/// Options of `sleep`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepOptions {
    /// How long to wait, in milliseconds.
    pub ms: u64,
}

impl Action for Sleep {
    const KIND: &'static str = "sleep";
    type Options = SleepOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: SleepOptions,
    ) -> Result<Outcome, ActionError> {
        if cx.wake.is_some() {
            return Ok(Outcome::none());
        }
        Ok(Outcome::effect(Effect::Sleep { ms: options.ms }))
    }
}

/// `wait`: suspends the run until a CloudEvent that matches arrives at
/// `POST /events`, or the timeout passes (the step then fails, so a failure
/// path can handle it). The step's result is the whole event; its
/// `eventDataFilter` merges the event's `data` into the state data.
pub struct WaitEvent;

/// Options of `wait`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WaitOptions {
    /// The CloudEvent `type` that ends the wait (any type when absent).
    pub event_type: Option<String>,
    /// The CloudEvent `source` that ends the wait (any source when absent).
    pub source: Option<String>,
    /// Context attributes the event must carry, each with the value given
    /// (templates allowed, such as `orderid: "{{ .orderId }}"`): this is
    /// how an event finds the run that waits for it.
    #[serde(default)]
    pub correlation: serde_json::Map<String, Value>,
    /// Give up after this many milliseconds (the step fails); none: wait
    /// for as long as it takes.
    pub timeout_ms: Option<u64>,
}

impl Action for WaitEvent {
    const KIND: &'static str = "wait";
    type Options = WaitOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: WaitOptions,
    ) -> Result<Outcome, ActionError> {
        if let Some(event) = cx.wake {
            return Ok(Outcome::value(event.clone()));
        }
        for (attr, v) in &options.correlation {
            if !v.is_string() {
                return Err(ActionError::data(format!(
                    "correlation `{attr}` must be a string after templating (CloudEvent attributes are strings), found {v}"
                )));
            }
        }
        Ok(Outcome::effect(Effect::WaitEvent {
            event_type: options.event_type,
            source: options.source,
            correlation: options.correlation,
            timeout_ms: options.timeout_ms,
        }))
    }
}

/// Whether `event` (a CloudEvent) ends a wait for `event_type` from
/// `source` with the `correlation` attributes.
pub fn event_matches(
    event: &Value,
    event_type: Option<&str>,
    source: Option<&str>,
    correlation: &Value,
) -> bool {
    let attr = |name: &str| event.get(name).and_then(Value::as_str);
    event_type.is_none_or(|t| attr("type") == Some(t))
        && source.is_none_or(|s| attr("source") == Some(s))
        && correlation.as_object().is_none_or(|c| {
            c.iter()
                .all(|(name, want)| event.get(name).is_some_and(|got| got == want))
        })
}

/// `flow`: starts a run of another flow (one whose trigger is `flow`) with
/// `input`, and waits for its output (the step's result) or, with
/// `wait: false`, goes on at once with `{runId}`.
pub struct StartFlow;

/// Options of `flow`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartFlowOptions {
    /// The id of the flow to run.
    pub flow: String,
    /// The run's input (templates allowed); the step's input when absent.
    pub input: Option<Value>,
    /// Wait for the run to end (the default), or not.
    #[serde(default = "yes")]
    pub wait: bool,
    /// Run the flow once per element of `input` (a list): `serial` (one
    /// after another), `batch` (`batchSize` at once, batch after batch) or
    /// `parallel` (at most `concurrency` at once). The result is the list
    /// of the runs' outputs, in the order of the elements.
    pub iteration_mode: Option<IterationMode>,
    /// For `batch`: how many runs each batch holds (default 10).
    pub batch_size: Option<usize>,
    /// For `parallel`: how many runs may be under way at once (default 10).
    pub concurrency: Option<usize>,
}

/// `iterationMode` of a `flow` step.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IterationMode {
    /// One run after another.
    Serial,
    /// `batchSize` runs at once, each batch after the one before.
    Batch,
    /// At most `concurrency` runs at once.
    Parallel,
}

pub use crate::action::MAX_CONCURRENCY;

/// An issue with a count option (`concurrency`, `batchSize`) that must be
/// from 1 to [`MAX_CONCURRENCY`], unless it is a template.
pub fn count_issue(options: &Value, name: &str) -> Option<OptionIssue> {
    let v = options.get(name)?;
    let ok = v
        .as_u64()
        .is_some_and(|n| (1..=MAX_CONCURRENCY as u64).contains(&n));
    let templated = v.as_str().is_some_and(sluice_expr::template::has_template);
    (!ok && !templated).then(|| OptionIssue {
        path: vec![PathSeg::Key(name.into())],
        message: format!("`{name}` must be from 1 to {MAX_CONCURRENCY}, found {v}"),
        at_key: false,
        help: None,
    })
}

fn yes() -> bool {
    true
}

impl Action for StartFlow {
    const KIND: &'static str = "flow";
    type Options = StartFlowOptions;

    /// `batchSize` belongs to `batch`, `concurrency` to `parallel`, and an
    /// iteration waits for its runs.
    fn check(options: &Value) -> Vec<OptionIssue> {
        let mode = options.get("iterationMode").and_then(Value::as_str);
        let mut issues: Vec<OptionIssue> = ["batchSize", "concurrency"]
            .into_iter()
            .filter_map(|n| count_issue(options, n))
            .collect();
        let misplaced = |name: &str, mode_of: &str| OptionIssue {
            path: vec![PathSeg::Key(name.into())],
            message: format!("`{name}` is for `iterationMode: {mode_of}`"),
            at_key: true,
            help: None,
        };
        if options.get("batchSize").is_some() && mode != Some("batch") {
            issues.push(misplaced("batchSize", "batch"));
        }
        if options.get("concurrency").is_some() && mode != Some("parallel") {
            issues.push(misplaced("concurrency", "parallel"));
        }
        if mode.is_some() && options.get("wait") == Some(&Value::Bool(false)) {
            issues.push(OptionIssue {
                path: vec![PathSeg::Key("wait".into())],
                message: "an `iterationMode` waits for its runs: `wait: false` cannot go with it"
                    .into(),
                at_key: false,
                help: Some("leave `wait` out, or start one run per step".into()),
            });
        }
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: StartFlowOptions,
    ) -> Result<Outcome, ActionError> {
        let size = |n: Option<usize>| n.unwrap_or(10).clamp(1, MAX_CONCURRENCY);
        let each = options.iteration_mode.map(|m| match m {
            IterationMode::Serial => Iteration::Serial,
            IterationMode::Batch => Iteration::Batch(size(options.batch_size)),
            IterationMode::Parallel => Iteration::Parallel(size(options.concurrency)),
        });
        Ok(Outcome::effect(Effect::StartFlow {
            flow: options.flow,
            input: options
                .input
                .unwrap_or_else(|| cx.program_input.to_json().clone()),
            wait: options.wait,
            each,
        }))
    }
}

/// Options of the `flow` trigger: the flow is run by other flows' `flow`
/// steps, with the step's input as its input and `$trigger` =
/// `{flow, run, step, body}` (the starting flow, run and step, and the input).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowTrigger {}

/// `throw`: fails the step with its templated message.
pub struct Throw;

/// Options of `throw`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrowOptions {
    /// The error message.
    pub message: Value,
}

impl Action for Throw {
    const KIND: &'static str = "throw";
    const PURE: bool = true;
    type Options = ThrowOptions;

    async fn run<'a>(
        &'a self,
        _cx: ActionCx<'a>,
        options: ThrowOptions,
    ) -> Result<Outcome, ActionError> {
        Err(ActionError::flow(text(options.message)))
    }
}

/// `split`: emits each element of its `items` option individually; the
/// steps after it run once per element, each in a run of its own.
pub struct Split;

/// Options of `split`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitOptions {
    /// The elements (templates allowed, such as `"{{ .orders }}"`).
    pub items: Vec<Value>,
    /// How many of the elements' runs may be under way at once (default 1:
    /// one after another).
    pub concurrency: Option<usize>,
}

impl Action for Split {
    const KIND: &'static str = "split";
    type Options = SplitOptions;

    fn check(options: &Value) -> Vec<OptionIssue> {
        count_issue(options, "concurrency").into_iter().collect()
    }

    async fn run<'a>(
        &'a self,
        _cx: ActionCx<'a>,
        options: SplitOptions,
    ) -> Result<Outcome, ActionError> {
        Ok(Outcome::each(options.items, options.concurrency))
    }
}

/// Options of the `cloudevent` trigger (besides `eventDataFilter` and
/// `dataOnly`, which every event trigger has): which events start a run.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudEventTrigger {
    /// The CloudEvent `type` that starts a run (any type when absent).
    pub event_type: Option<String>,
    /// The CloudEvent `source` that starts a run (any source when absent).
    pub source: Option<String>,
}

impl CloudEventTrigger {
    /// Why `event` does not start a run of this trigger, if it does not.
    pub fn mismatch(options: &Value, event: &Value) -> Option<String> {
        for (option, attribute) in [("eventType", "type"), ("source", "source")] {
            if let Some(want) = options.get(option).and_then(Value::as_str) {
                let got = event
                    .get(attribute)
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if got != want {
                    return Some(format!(
                        "the event's {attribute} `{got}` is not the trigger's {option} `{want}`"
                    ));
                }
            }
        }
        None
    }
}

/// Check that `v` is a CloudEvent 1.0 in the structured JSON format: an
/// object with the required context attributes `specversion`, `id`,
/// `source` and `type` (non-empty strings); attribute names of lower-case
/// letters and digits; `data` or `data_base64`, not both (`data_base64` a
/// string); `time`, when given, an RFC 3339 time; the other attributes
/// strings, and extensions strings, integers, booleans or null (an event
/// carries no object or array but in its data).
pub fn check_cloudevent(v: &Value) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err(
            "a CloudEvent is a JSON object with specversion, id, source and type".to_owned(),
        );
    };
    for attr in ["specversion", "id", "source", "type"] {
        match o.get(attr) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(format!(
                    "the CloudEvent attribute `{attr}` must be a non-empty string"
                ));
            }
            None => {
                return Err(format!(
                    "the CloudEvent has no `{attr}` (required: specversion, id, source, type)"
                ));
            }
        }
    }
    if o.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Err("only CloudEvents `specversion` 1.0 is supported".to_owned());
    }
    if o.contains_key("data") && o.contains_key("data_base64") {
        return Err("a CloudEvent carries `data` or `data_base64`, not both".to_owned());
    }
    for (name, value) in o {
        match name.as_str() {
            "data" => continue,
            "data_base64" if !value.is_string() => {
                return Err("the CloudEvent's `data_base64` must be a base64 string".to_owned());
            }
            "data_base64" => continue,
            _ => {}
        }
        if !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(format!(
                "`{name}` is not a CloudEvent attribute name: lower-case letters and digits only"
            ));
        }
        let string_only = matches!(
            name.as_str(),
            "datacontenttype" | "dataschema" | "subject" | "time"
        );
        match value {
            Value::String(_) => {}
            Value::Null | Value::Bool(_) if !string_only => {}
            Value::Number(n) if !string_only && (n.is_i64() || n.is_u64()) => {}
            _ if string_only => {
                return Err(format!(
                    "the CloudEvent attribute `{name}` must be a string"
                ));
            }
            _ => {
                return Err(format!(
                    "the CloudEvent extension `{name}` must be a string, an integer, a boolean or null"
                ));
            }
        }
    }
    if let Some(t) = o.get("time").and_then(Value::as_str)
        && t.parse::<jiff::Timestamp>().is_err()
    {
        return Err(format!(
            "the CloudEvent's `time` `{t}` is not an RFC 3339 time (such as 2026-12-01T09:30:00Z)"
        ));
    }
    Ok(())
}

/// A content type's media type, lower case, without its parameters.
pub fn mime_of(ctype: &str) -> String {
    ctype
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// An event's `data_base64`, checked, and decoded into `data` when its
/// `datacontenttype` is JSON or text (a flow then reads it as it reads any
/// event's data); other bytes stay base64.
pub fn decode_cloudevent_data(event: &mut Value) -> Result<(), String> {
    let Some(Value::String(b64)) = event.get("data_base64") else {
        return Ok(());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the event's `data_base64` is not base64: {e}"))?;
    let ctype = event
        .get("datacontenttype")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mime = mime_of(ctype);
    let data = if mime == "application/json" || mime.ends_with("+json") {
        serde_json::from_slice(&bytes).map_err(|e| {
            format!("the event's `data_base64` is not the JSON its `datacontenttype` says: {e}")
        })?
    } else if mime.starts_with("text/") {
        Value::String(String::from_utf8(bytes).map_err(|_| {
            "the event's `data_base64` is not the UTF-8 text its `datacontenttype` says".to_owned()
        })?)
    } else {
        return Ok(());
    };
    if let Value::Object(o) = event {
        o.remove("data_base64");
        o.insert("data".into(), data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_base64_is_checked_and_decoded_when_json_or_text() {
        let ev = |extra: Value| {
            let mut e = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
            if let (Value::Object(m), Value::Object(x)) = (&mut e, extra) {
                m.extend(x);
            }
            e
        };
        // {"a":1}
        let mut e =
            ev(json!({"datacontenttype": "application/json", "data_base64": "eyJhIjoxfQ=="}));
        decode_cloudevent_data(&mut e).unwrap();
        assert_eq!(e["data"], json!({"a": 1}));
        assert!(e.get("data_base64").is_none());
        let mut e =
            ev(json!({"datacontenttype": "text/plain; charset=utf-8", "data_base64": "aGk="}));
        decode_cloudevent_data(&mut e).unwrap();
        assert_eq!(e["data"], json!("hi"));
        let mut e =
            ev(json!({"datacontenttype": "application/octet-stream", "data_base64": "AP8="}));
        decode_cloudevent_data(&mut e).unwrap();
        assert_eq!(e["data_base64"], json!("AP8="));
        let mut e = ev(json!({"data_base64": "not base64!"}));
        assert!(
            decode_cloudevent_data(&mut e)
                .unwrap_err()
                .contains("not base64")
        );
        let mut e = ev(json!({"datacontenttype": "application/json", "data_base64": "AP8="}));
        assert!(decode_cloudevent_data(&mut e).is_err());
    }
    use crate::check_options;
    use serde_json::json;
    use sluice_expr::Program;
    use std::collections::BTreeMap;

    async fn run(
        kind: &str,
        options: Value,
        input: Value,
        exprs: BTreeMap<String, Program>,
    ) -> Result<Outcome, ActionError> {
        crate::testing::run_step(kind, "s", options, input, exprs, None).await
    }

    #[test]
    fn cloudevents_that_break_the_spec_are_refused() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        let with = |k: &str, v: Value| {
            let mut e = base.clone();
            e[k] = v;
            e
        };
        assert_eq!(check_cloudevent(&base), Ok(()));
        let ok = [
            with("time", json!("2026-12-01T09:30:00Z")),
            with("time", json!("2026-12-01T09:30:00.5+01:00")),
            with("traceparent", json!("00-ab")),
            with("count2", json!(3)),
            with("flag", json!(true)),
            with("data", json!({"a": [1]})),
            with("data_base64", json!("AP8=")),
        ];
        for e in ok {
            assert_eq!(check_cloudevent(&e), Ok(()), "{e}");
        }
        let mut both = with("data", json!(1));
        both["data_base64"] = json!("AP8=");
        let bad = [
            (both, "not both"),
            (with("time", json!("yesterday")), "RFC 3339"),
            (with("Traceparent", json!("x")), "attribute name"),
            (with("trace_parent", json!("x")), "attribute name"),
            (with("ext", json!({"a": 1})), "extension `ext`"),
            (with("ext", json!([1])), "extension `ext`"),
            (with("ext", json!(1.5)), "extension `ext`"),
            (with("subject", json!(1)), "`subject` must be a string"),
            (with("data_base64", json!(5)), "base64 string"),
            (with("specversion", json!("0.3")), "specversion"),
        ];
        for (e, why) in bad {
            let err = check_cloudevent(&e).unwrap_err();
            assert!(err.contains(why), "{e}: {err}");
        }
    }

    #[tokio::test]
    async fn transform_returns_its_value() {
        let out = run(
            "transform",
            json!({"value": {"a": 1}}),
            json!({}),
            BTreeMap::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.payload, Some(json!({"a": 1})));
    }

    #[tokio::test]
    async fn condition_fails_when_false() {
        let mut exprs = BTreeMap::new();
        exprs.insert(
            "filter".to_owned(),
            Program::compile(".n > 1", &[]).unwrap(),
        );
        assert!(
            run(
                "condition",
                json!({"filter": ".n > 1"}),
                json!({"n": 2}),
                exprs.clone()
            )
            .await
            .is_ok()
        );
        let err = run(
            "condition",
            json!({"filter": ".n > 1"}),
            json!({"n": 0}),
            exprs,
        )
        .await
        .unwrap_err();
        assert_eq!(err.message, "condition `.n > 1` is false");
    }

    #[tokio::test]
    async fn throw_and_log_and_sleep() {
        let err = run(
            "throw",
            json!({"message": "bad"}),
            json!({}),
            BTreeMap::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.message, "bad");
        let out = run(
            "log",
            json!({"message": {"a": 1}}),
            json!({}),
            BTreeMap::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.logs, vec!["{\"a\":1}".to_owned()]);
        // A sleep asks the engine to suspend the run for its time.
        let out = run("sleep", json!({"ms": 5}), json!({}), BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(out.effect, Some(Effect::Sleep { ms: 5 }));
        assert_eq!(out.payload, None);
        let err = run("sleep", json!({"ms": "x"}), json!({}), BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.message.contains("`ms`"), "{}", err.message);
    }

    #[test]
    fn options_are_checked_from_the_types() {
        let issues = check_options::<SleepOptions>(&json!({"ms": 5, "msec": 1}));
        assert_eq!(issues.len(), 1);
        assert!(issues[0].at_key && issues[0].message.contains("msec"));
        let issues = check_options::<SleepOptions>(&json!({"ms": "soon"}));
        assert_eq!(issues.len(), 1);
        assert!(check_options::<SleepOptions>(&json!({"ms": "{{ $trigger.ms }}"})).is_empty());
        let issues = check_options::<SleepOptions>(&json!({}));
        assert!(
            issues[0].message.contains("missing field `ms`"),
            "{:?}",
            issues
        );
    }
}
