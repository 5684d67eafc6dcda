//! The validated flow: its trigger, its steps with their filters, mappings
//! and retries, and the [`Catalog`] of step types it is checked against.

use crate::diag::Source;
use crate::node::Span;
use serde_json::{Map, Value};
use sluice_expr::{MappingPath, PathSeg, Program, TemplateValue};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Variables every expression sees besides the upstream steps' keys.
pub const BUILTIN_VARS: [&str; 5] = ["trigger", "last", "accountability", "tokens", "env"];

/// What the step types and triggers are, as the model needs to know them.
/// The connector registry implements it.
pub trait Catalog {
    /// A step type, by name.
    fn step(&self, kind: &str) -> Option<StepSpec>;
    /// Every step type's name.
    fn step_kinds(&self) -> Vec<&'static str>;
    /// A trigger type, by name.
    fn trigger(&self, kind: &str) -> Option<StepSpec>;
    /// Whether a flow may list environment variable `name` under `env`
    /// (the process's own allow-list; all by default).
    fn env_allowed(&self, _name: &str) -> bool {
        true
    }
    /// Every trigger type's name.
    fn trigger_kinds(&self) -> Vec<&'static str>;
    /// A connection type (a connection's `type:`, such as `http`), by name;
    /// a connection without `type` is a database (`sql`), checked by the
    /// model itself.
    fn connection(&self, _kind: &str) -> Option<ConnectionSpec> {
        None
    }
    /// Every connection type's name besides `sql`.
    fn connection_kinds(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// How the model checks a connection of one type.
#[derive(Clone, Copy)]
pub struct ConnectionSpec {
    /// Check the connection's keys (`type` among them) and values.
    pub check: fn(&Value) -> Vec<OptionIssue>,
    /// Check a step's options against the connection it names (the step's
    /// type, its options, the connection): issues at the step's options.
    pub uses: fn(&str, &Value, &Value) -> Vec<OptionIssue>,
}

/// The type of a connection without `type:`: a database.
pub const SQL_CONNECTION: &str = "sql";

/// How the model checks the options of one step or trigger type.
#[derive(Clone, Copy)]
pub struct StepSpec {
    /// Options that are jq expressions (compiled when the flow loads, not templated).
    pub expressions: &'static [&'static str],
    /// Options whose templates the step renders itself, piece by piece (for
    /// example an envelope's patches, which read tokens set by earlier ones).
    pub deferred: &'static [&'static str],
    /// Options taken as written, never templated.
    pub verbatim: &'static [&'static str],
    /// Check options against the type's typed options; templated strings are
    /// passed as they are written.
    pub check: fn(&Value) -> Vec<OptionIssue>,
    /// The type of connection its `connection` option names, if it takes one.
    pub connection: Option<&'static str>,
}

/// A problem with one option value.
#[derive(Clone, Debug)]
pub struct OptionIssue {
    /// Path from the options' root to the value.
    pub path: Vec<PathSeg>,
    /// What is wrong.
    pub message: String,
    /// Point at the key rather than the value (for unknown options).
    pub at_key: bool,
    /// A hint.
    pub help: Option<String>,
}

/// Where the run goes after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// To the step at this index.
    Step(usize),
    /// The run ends (successfully after a success, as failed after a failure).
    End,
}

/// What a flow's writes are committed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transaction {
    /// Each write step (each envelope) commits on its own.
    #[default]
    Step,
    /// Every write of a run is one database transaction, committed when
    /// the run succeeds and rolled back when it fails.
    Flow,
}

/// How a step's result meets the state data when the step has no mappings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnmappedResults {
    /// Merge the result into the state data (SEMANTICS.md section 3).
    #[default]
    Merge,
    /// The result replaces the state data; no result leaves it as it was.
    Replace,
}

/// `stateDataFilter` of a step.
#[derive(Clone, Debug, Default)]
pub struct StateDataFilter {
    /// Applied to the step's input when it starts.
    pub input: Option<Program>,
    /// Applied to the step's data before it is handed on.
    pub output: Option<Program>,
}

/// `actionDataFilter` of a step.
#[derive(Clone, Debug)]
pub struct ActionDataFilter {
    /// The part of the state data the action's options can see.
    pub from_state_data: Option<Program>,
    /// Filters the action's result before merging.
    pub results: Option<Program>,
    /// Where in the state data the result is merged, as written and parsed.
    pub to_state_data: Option<(String, MappingPath)>,
    /// Whether the result is merged at all.
    pub use_results: bool,
}

impl Default for ActionDataFilter {
    fn default() -> Self {
        Self {
            from_state_data: None,
            results: None,
            to_state_data: None,
            use_results: true,
        }
    }
}

pub use sluice_expr::Mapping;

/// One step of a flow.
#[derive(Clone, Debug)]
pub struct Step {
    /// Unique identifier within the flow.
    pub key: String,
    /// The step type.
    pub kind: String,
    /// Options with their templates compiled (expression options excluded).
    pub options: TemplateValue,
    /// Options that are jq expressions, compiled.
    pub expressions: BTreeMap<String, Program>,
    /// Options the step renders itself: as written, and compiled.
    pub deferred: BTreeMap<String, (Value, TemplateValue)>,
    /// Options taken as written (never templated).
    pub verbatim: Map<String, Value>,
    /// Where the run goes on success.
    pub on_success: Next,
    /// Where the run goes on failure.
    pub on_failure: Next,
    /// Whether a failure path was written.
    pub has_failure_path: bool,
    /// The flow-object entries this step's expressions may read.
    pub vars: Vec<String>,
    /// `stateDataFilter`.
    pub state_filter: StateDataFilter,
    /// `actionDataFilter`.
    pub action_filter: ActionDataFilter,
    /// `inputMappings`, in order (`None` when absent).
    pub input_mappings: Option<Vec<Mapping>>,
    /// `outputMappings`, in order (`None` when absent).
    pub output_mappings: Option<Vec<Mapping>>,
    /// `eventDataFilter`: the step consumes the run's event, merging it into
    /// its input after `stateDataFilter.input` (for a `wait` step: the event
    /// it waited for, merged into its output).
    pub event_filter: Option<EventDataFilter>,
    /// `retry`: attempt the step again when it fails.
    pub retry: Option<Retry>,
    /// Where the step is in the file.
    pub span: Span,
}

impl Step {
    /// Option `name` as written, when it holds no template (`None` when it
    /// is absent or templated).
    pub fn const_option(&self, name: &str) -> Option<&Value> {
        match &self.options {
            TemplateValue::Const(v) => v.get(name),
            TemplateValue::Object(fields) => fields.iter().find_map(|(k, v)| match v {
                TemplateValue::Const(c) if k == name => Some(c),
                _ => None,
            }),
            _ => None,
        }
    }

    /// Whether option `name` is given (templated or not).
    pub fn has_option(&self, name: &str) -> bool {
        match &self.options {
            TemplateValue::Const(v) => v.get(name).is_some(),
            TemplateValue::Object(fields) => fields.iter().any(|(k, _)| k == name),
            _ => false,
        }
    }

    /// Every expression of the step (options' templates, expression
    /// options, data filters), each with what it is, for messages.
    pub fn programs(&self) -> Vec<(String, &Program)> {
        fn templates<'a>(what: &str, t: &'a TemplateValue, out: &mut Vec<(String, &'a Program)>) {
            for t in t.templates() {
                out.extend(t.programs().map(|p| (what.to_owned(), p)));
            }
        }
        let mut out = Vec::new();
        templates("options", &self.options, &mut out);
        for (name, (_, t)) in &self.deferred {
            templates(&format!("option `{name}`"), t, &mut out);
        }
        for (name, p) in &self.expressions {
            out.push((format!("option `{name}`"), p));
        }
        let filters = [
            ("stateDataFilter.input", &self.state_filter.input),
            ("stateDataFilter.output", &self.state_filter.output),
            (
                "actionDataFilter.fromStateData",
                &self.action_filter.from_state_data,
            ),
            ("actionDataFilter.results", &self.action_filter.results),
        ];
        for (what, p) in filters {
            if let Some(p) = p {
                out.push((what.to_owned(), p));
            }
        }
        if let Some(p) = self.event_filter.as_ref().and_then(|f| f.data.as_ref()) {
            out.push(("eventDataFilter.data".to_owned(), p));
        }
        out
    }
}

/// `retry` of a step: how many times it is attempted and how long the run
/// waits between attempts (durably: a retry's backoff survives a restart).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Attempts in all, the first one included (1 to 100).
    pub attempts: u32,
    /// The wait after the first failed attempt, in milliseconds.
    #[serde(default = "Retry::default_delay")]
    pub delay_ms: u64,
    /// Each later wait is the one before times this (at least 1).
    #[serde(default = "Retry::default_factor")]
    pub factor: f64,
    /// No wait is longer than this, in milliseconds.
    #[serde(default = "Retry::default_max_delay")]
    pub max_delay_ms: u64,
    /// Spread the waits: each is drawn between half the computed wait and
    /// the whole of it, so that runs failing together do not retry together.
    #[serde(default = "Retry::yes")]
    pub jitter: bool,
    /// Which failures are attempted again, by who must act on them.
    #[serde(default = "Retry::default_on")]
    pub on: Vec<RetryOn>,
}

/// A kind of failure that `retry` attempts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RetryOn {
    /// An outside system refused or failed (the default).
    External,
    /// The data did not fit.
    Data,
    /// The flow failed the step on purpose (`throw`, a false `condition`).
    Flow,
}

impl Retry {
    fn default_delay() -> u64 {
        1_000
    }
    fn default_factor() -> f64 {
        2.0
    }
    fn default_max_delay() -> u64 {
        60_000
    }
    fn yes() -> bool {
        true
    }
    fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::External]
    }

    /// What is wrong with the policy, if anything.
    pub fn problem(&self) -> Option<String> {
        if !(1..=100).contains(&self.attempts) {
            return Some(format!(
                "`attempts` must be from 1 to 100, found {}",
                self.attempts
            ));
        }
        if !self.factor.is_finite() || self.factor < 1.0 || self.factor > 100.0 {
            return Some(format!(
                "`factor` must be from 1 to 100, found {}",
                self.factor
            ));
        }
        if self.max_delay_ms < self.delay_ms {
            return Some(format!(
                "`maxDelayMs` ({}) is less than `delayMs` ({})",
                self.max_delay_ms, self.delay_ms
            ));
        }
        None
    }

    /// The wait, in milliseconds, after the `failed`-th failed attempt
    /// (from 1), given `random` in [0, 1) for the jitter.
    pub fn delay_after(&self, failed: u32, random: f64) -> u64 {
        let exp = f64::from(failed.saturating_sub(1).min(64));
        let full = (self.delay_ms as f64 * self.factor.powf(exp)).min(self.max_delay_ms as f64);
        let ms = if self.jitter {
            full / 2.0 + full / 2.0 * random.clamp(0.0, 1.0)
        } else {
            full
        };
        ms.round() as u64
    }
}

/// `eventDataFilter` of an event trigger or of a step that consumes an event.
#[derive(Clone, Debug)]
pub struct EventDataFilter {
    /// Selects from the event (its `data`, or the whole event when the
    /// trigger's `dataOnly` is false).
    pub data: Option<Program>,
    /// Where in the state data the selection is merged, as written and parsed.
    pub to_state_data: Option<(String, MappingPath)>,
    /// Whether it is merged at all.
    pub use_data: bool,
}

impl Default for EventDataFilter {
    fn default() -> Self {
        Self {
            data: None,
            to_state_data: None,
            use_data: true,
        }
    }
}

/// The trigger of a flow.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// The trigger type.
    pub kind: String,
    /// Its options (without `eventDataFilter` and `dataOnly`).
    pub options: Value,
    /// For an event trigger: how the event meets the run's input.
    pub event_filter: EventDataFilter,
    /// For an event trigger: expressions see only the event's `data` (the
    /// default) rather than the whole CloudEvent.
    pub data_only: bool,
}

/// The trigger types that carry a CloudEvent.
pub const EVENT_TRIGGERS: &[&str] = &["cloudevent"];

/// A checked flow, ready to run.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Identifier.
    pub id: String,
    /// Human name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// What starts a run.
    pub trigger: Trigger,
    /// The steps; the first one runs first.
    pub steps: Vec<Step>,
    /// Named connections (used by connector steps).
    pub connections: BTreeMap<String, Value>,
    /// How results without mappings meet the state data.
    pub unmapped_results: UnmappedResults,
    /// `enabled: false` turns the flow off: it is loaded and checked, but
    /// no trigger starts it (webhooks and the API answer `flow_disabled`,
    /// schedules, polls, events and data hooks pass it over, `flow` steps
    /// fail). Runs already under way go on.
    pub enabled: bool,
    /// `env`: the environment variables the flow's expressions read as
    /// `$env.NAME` (no others are visible).
    pub env: Vec<String>,
    /// `transaction`: what the run's writes are committed with.
    pub transaction: Transaction,
    /// The file it came from.
    pub source: Arc<Source>,
    /// The file's version: a hash of its text (see [`version_of`]), by which
    /// the store keeps it for resuming runs.
    pub version: String,
}

impl Flow {
    /// The connection of a run's one transaction (`transaction: flow`):
    /// the one its steps name (`sluice check` sees that there is one, and
    /// not a template); `None` for a flow that writes in steps.
    pub fn transaction_connection(&self) -> Option<&str> {
        if self.transaction != Transaction::Flow {
            return None;
        }
        self.steps
            .iter()
            .filter_map(|s| s.const_option("connection").and_then(Value::as_str))
            .find(|c| self.connection_type(c) == SQL_CONNECTION)
    }

    /// The type of connection `name` (`sql` when it gives none).
    pub fn connection_type(&self, name: &str) -> &str {
        self.connections
            .get(name)
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .unwrap_or(SQL_CONNECTION)
    }

    /// The index of a step by key.
    pub fn step_index(&self, key: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.key == key)
    }
}

/// The version of a flow file: a hash of its text (FNV-1a, 64 bits, hex).
pub fn version_of(source: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a string is a valid step key: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
