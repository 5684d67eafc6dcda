//! The validated flow and the checks that build it.

use crate::diag::{Diagnostic, Diagnostics, Source, locate_in_scalar};
use crate::node::{self, Key, Kind, Node, Span};
use serde_json::{Map, Value};
use sluice_expr::{MappingPath, PathSeg, Program, TemplateValue};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Variables every expression sees besides the upstream steps' keys.
pub const BUILTIN_VARS: [&str; 4] = ["trigger", "last", "accountability", "tokens"];

/// What the step types and triggers are, as the model needs to know them.
/// The connector registry implements it.
pub trait Catalog {
    /// A step type, by name.
    fn step(&self, kind: &str) -> Option<StepSpec>;
    /// Every step type's name.
    fn step_kinds(&self) -> Vec<&'static str>;
    /// A trigger type, by name.
    fn trigger(&self, kind: &str) -> Option<StepSpec>;
    /// Every trigger type's name.
    fn trigger_kinds(&self) -> Vec<&'static str>;
}

/// How the model checks the options of one step or trigger type.
#[derive(Clone, Copy)]
pub struct StepSpec {
    /// Options that are jq expressions (compiled when the flow loads, not templated).
    pub expressions: &'static [&'static str],
    /// Options whose templates the step renders itself, piece by piece (for
    /// example an envelope's patches, which read tokens set by earlier ones).
    pub deferred: &'static [&'static str],
    /// Check options against the type's typed options; templated strings are
    /// passed as they are written.
    pub check: fn(&Value) -> Vec<OptionIssue>,
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
    /// The file it came from.
    pub source: Arc<Source>,
    /// The file's version: a hash of its text (see [`version_of`]), by which
    /// the store keeps it for resuming runs.
    pub version: String,
}

impl Flow {
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

const FLOW_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "trigger",
    "steps",
    "connections",
    "unmappedResults",
];
const STEP_KEYS: &[&str] = &[
    "key",
    "type",
    "name",
    "description",
    "options",
    "resolve",
    "reject",
    "stateDataFilter",
    "actionDataFilter",
    "inputMappings",
    "outputMappings",
    "eventDataFilter",
    "retry",
];
const RESERVED_KEYS: &[&str] = &[
    "trigger",
    "last",
    "accountability",
    "tokens",
    "env",
    "ENV",
    "__loc__",
];

/// Parse and check a flow file; `name` is how diagnostics name the file.
pub fn load(name: &str, text: &str, catalog: &dyn Catalog) -> Result<Flow, Diagnostics> {
    let source = Arc::new(Source {
        name: name.to_owned(),
        text: text.to_owned(),
    });
    let mut cx = Checker {
        source: source.clone(),
        diags: Vec::new(),
        catalog,
        connection_names: Vec::new(),
    };
    let flow = match node::parse(text) {
        Ok(root) => cx.flow(&root, name),
        Err(e) => {
            let span = if e.span.is_empty() && e.span.start < text.len() {
                e.span.start..e.span.start + 1
            } else {
                e.span
            };
            cx.diags.push(
                Diagnostic::new(
                    span,
                    format!("not valid YAML or JSON: {}", e.message),
                    "here",
                )
                .with_help(
                    "a flow file is a YAML or JSON mapping with `id`, `trigger` and `steps`",
                ),
            );
            None
        }
    };
    let mut diags = cx.diags;
    match flow {
        Some(flow) if diags.is_empty() => Ok(flow),
        _ => {
            diags.sort_by_key(|d| d.span.start);
            diags.dedup();
            Err(Diagnostics {
                file: source,
                items: diags,
            })
        }
    }
}

struct Checker<'c> {
    source: Arc<Source>,
    diags: Vec<Diagnostic>,
    catalog: &'c dyn Catalog,
    /// The names under `connections`, for steps' `connection` options.
    connection_names: Vec<String>,
}

impl RawStep<'_> {
    /// Where to point at the step, and how to name it, in messages.
    fn place(&self, i: usize) -> (Span, String) {
        match &self.key {
            Some((k, span)) => (span.clone(), format!("`{k}`")),
            None => (self.node.span.clone(), format!("number {}", i + 1)),
        }
    }
}

/// A step as read, before the graph is known.
struct RawStep<'n> {
    node: &'n Node,
    key: Option<(String, Span)>,
    kind: Option<(String, Span)>,
    options: Option<&'n Node>,
    resolve: Option<&'n Node>,
    reject: Option<&'n Node>,
}

impl Checker<'_> {
    fn err(&mut self, span: Span, message: impl Into<String>, label: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, message, label));
    }

    fn err_help(
        &mut self,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::new(span, message, label).with_help(help));
    }

    /// Report repeated and unknown keys of a mapping.
    fn check_keys(&mut self, map: &[(Key, Node)], allowed: &[&str], what: &str) {
        let mut seen: HashMap<&str, &Key> = HashMap::new();
        for (k, _) in map {
            if let Some(first) = seen.get(k.name.as_str()) {
                let (line, _) = self.source.line_col(first.span.start);
                self.err(
                    k.span.clone(),
                    format!(
                        "duplicate key `{}` in {what} (first given on line {line})",
                        k.name
                    ),
                    "repeated here",
                );
            } else {
                seen.insert(&k.name, k);
            }
            if !allowed.contains(&k.name.as_str()) {
                let hint = closest(&k.name, allowed)
                    .map(|c| format!("did you mean `{c}`? Allowed: {}", allowed.join(", ")))
                    .unwrap_or_else(|| format!("allowed keys: {}", allowed.join(", ")));
                self.err_help(
                    k.span.clone(),
                    format!("unknown key `{}` in {what}", k.name),
                    "not allowed here",
                    hint,
                );
            }
        }
    }

    fn string<'n>(
        &mut self,
        parent: &'n Node,
        key: &str,
        what: &str,
    ) -> Option<(String, &'n Node)> {
        let n = parent.get(key)?;
        match &n.kind {
            Kind::Str(s) => Some((s.clone(), n)),
            _ => {
                self.err(
                    n.span.clone(),
                    format!(
                        "`{key}` of {what} must be a string, found {}",
                        n.kind_name()
                    ),
                    "expected a string",
                );
                None
            }
        }
    }

    fn flow(&mut self, root: &Node, file_name: &str) -> Option<Flow> {
        let Some(map) = root.as_map() else {
            self.err_help(
                root.span.clone(),
                format!("a flow file must be a mapping, found {}", root.kind_name()),
                "expected a mapping",
                "start with `id:`, `trigger:` and `steps:`",
            );
            return None;
        };
        self.check_keys(map, FLOW_KEYS, "the flow");

        let id = match self.string(root, "id", "the flow") {
            Some((id, n)) => {
                if id.is_empty()
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    self.err(
                        n.span.clone(),
                        format!("flow id `{id}` must be letters, digits, `_`, `-` or `.`"),
                        "invalid id",
                    );
                }
                id
            }
            None => std::path::Path::new(file_name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("flow")
                .split('.')
                .next()
                .unwrap_or("flow")
                .to_owned(),
        };
        let name = self.string(root, "name", "the flow").map(|(s, _)| s);
        let description = self.string(root, "description", "the flow").map(|(s, _)| s);
        let unmapped_results = match root.get("unmappedResults") {
            None => UnmappedResults::Merge,
            Some(n) => match n.as_str() {
                Some("merge") => UnmappedResults::Merge,
                Some("replace") => UnmappedResults::Replace,
                _ => {
                    self.err(
                        n.span.clone(),
                        "`unmappedResults` must be `merge` or `replace`",
                        "expected merge or replace",
                    );
                    UnmappedResults::Merge
                }
            },
        };
        let connections = match root.get("connections") {
            None => BTreeMap::new(),
            Some(n) => match n.as_map() {
                Some(entries) => {
                    let mut out = BTreeMap::new();
                    for (k, v) in entries {
                        if !is_identifier(&k.name) {
                            self.err(
                                k.span.clone(),
                                format!("connection name `{}` must be an identifier", k.name),
                                "invalid name",
                            );
                        }
                        match v.get("url") {
                            Some(u) if u.as_str().is_some() => {
                                let url = u.as_str().unwrap_or_default();
                                let known =
                                    ["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"];
                                if !url.starts_with("${env:")
                                    && !known.iter().any(|p| url.starts_with(p))
                                {
                                    self.err_help(u.span.clone(), format!("connection `{}`: unsupported URL scheme", k.name), "unknown scheme", "use sqlite:, postgres:, mysql: or mariadb:, or ${env:NAME} to take the URL from the environment");
                                }
                            }
                            Some(u) => self.err(
                                u.span.clone(),
                                format!("connection `{}`: `url` must be a string", k.name),
                                "expected a string",
                            ),
                            None => self.err(
                                v.span.clone(),
                                format!("connection `{}` has no `url`", k.name),
                                "missing `url`",
                            ),
                        }
                        if let Some(m) = v.as_map() {
                            self.check_keys(m, &["url"], "a connection");
                        }
                        self.connection_names.push(k.name.clone());
                        out.insert(k.name.clone(), v.to_json());
                    }
                    out
                }
                None => {
                    self.err(
                        n.span.clone(),
                        format!(
                            "`connections` must be a mapping of names to connections, found {}",
                            n.kind_name()
                        ),
                        "expected a mapping",
                    );
                    BTreeMap::new()
                }
            },
        };
        // After the connections: a trigger may name one.
        let trigger = self.trigger(root.get("trigger"));
        let steps = self.steps(root);
        Some(Flow {
            id,
            name,
            description,
            trigger: trigger?,
            steps: steps?,
            connections,
            unmapped_results,
            source: self.source.clone(),
            version: version_of(&self.source.text),
        })
    }

    /// Whether the `connection` option (in `options`, written under
    /// `node`), if any, names a connection of the flow; reported when not.
    fn known_connection(&mut self, options: &Value, node: &Node, who: &str) -> bool {
        let Some(Value::String(c)) = options.get("connection") else {
            return true;
        };
        if self.connection_names.contains(c) {
            return true;
        }
        let span = node
            .get("connection")
            .map(|n| n.span.clone())
            .unwrap_or_else(|| node.span.clone());
        let help = if self.connection_names.is_empty() {
            "declare it under `connections:` with a `url`".to_owned()
        } else {
            format!("connections: {}", self.connection_names.join(", "))
        };
        self.err_help(
            span,
            format!("{who}: no connection `{c}` in the flow"),
            "unknown connection",
            help,
        );
        false
    }

    fn trigger(&mut self, node: Option<&Node>) -> Option<Trigger> {
        let Some(node) = node else {
            return Some(Trigger {
                kind: "manual".into(),
                options: Value::Object(Map::new()),
                event_filter: EventDataFilter::default(),
                data_only: true,
            });
        };
        let Some(map) = node.as_map() else {
            self.err(
                node.span.clone(),
                format!(
                    "`trigger` must be a mapping with a `type`, found {}",
                    node.kind_name()
                ),
                "expected a mapping",
            );
            return None;
        };
        let Some((kind, kind_node)) = self.string(node, "type", "the trigger") else {
            if node.get("type").is_none() {
                self.err_help(
                    node.span.clone(),
                    "the trigger has no `type`",
                    "missing `type`",
                    format!("trigger types: {}", self.catalog.trigger_kinds().join(", ")),
                );
            }
            return None;
        };
        let mut options = Map::new();
        let is_event = EVENT_TRIGGERS.contains(&kind.as_str());
        let mut event_filter = EventDataFilter::default();
        let mut data_only = true;
        let mut ok = true;
        for (k, v) in map {
            match k.name.as_str() {
                "type" => {}
                "eventDataFilter" | "dataOnly" if !is_event => {
                    ok = false;
                    self.err_help(
                        k.span.clone(),
                        format!("a `{kind}` trigger has no `{}`", k.name),
                        "not for this trigger",
                        format!(
                            "only event triggers ({}) carry an event",
                            EVENT_TRIGGERS.join(", ")
                        ),
                    );
                }
                "eventDataFilter" => {
                    let vars: Vec<&str> = BUILTIN_VARS.to_vec();
                    match self.event_filter(v, &vars, &[], "the trigger") {
                        Some(f) => event_filter = f,
                        None => ok = false,
                    }
                }
                "dataOnly" => match v.kind {
                    Kind::Bool(b) => data_only = b,
                    _ => {
                        ok = false;
                        self.err(
                            v.span.clone(),
                            "`dataOnly` must be true or false",
                            "expected a boolean",
                        );
                    }
                },
                _ => {
                    options.insert(k.name.clone(), v.to_json());
                }
            }
        }
        let options = Value::Object(options);
        match self.catalog.trigger(&kind) {
            None => {
                let kinds = self.catalog.trigger_kinds();
                self.err_help(
                    kind_node.span.clone(),
                    format!("unknown trigger type `{kind}`"),
                    "unknown type",
                    format!("trigger types: {}", kinds.join(", ")),
                );
                None
            }
            Some(spec) => {
                // A poll reads through one of the flow's connections (an
                // event trigger's `connection` names the writing flow's).
                if kind == "poll" {
                    ok &= self.known_connection(&options, node, &format!("trigger `{kind}`"));
                }
                // Trigger options sit beside `type`: check them as a mapping.
                let before = self.diags.len();
                self.option_issues(node, (spec.check)(&options), &format!("trigger `{kind}`"));
                (ok && self.diags.len() == before).then_some(Trigger {
                    kind,
                    options,
                    event_filter,
                    data_only,
                })
            }
        }
    }

    fn option_issues(&mut self, options_node: &Node, issues: Vec<OptionIssue>, what: &str) {
        for issue in issues {
            let span = if issue.at_key {
                options_node.key_at(&issue.path).map(|k| k.span.clone())
            } else {
                None
            }
            .or_else(|| options_node.at(&issue.path).map(|n| n.span.clone()))
            .unwrap_or_else(|| options_node.span.clone());
            let mut d = Diagnostic::new(
                span,
                format!("{what}: {}", issue.message),
                if issue.at_key {
                    "unknown option"
                } else {
                    "invalid value"
                },
            );
            if let Some(h) = issue.help {
                d = d.with_help(h);
            }
            self.diags.push(d);
        }
    }

    fn steps(&mut self, root: &Node) -> Option<Vec<Step>> {
        let Some(steps_node) = root.get("steps") else {
            self.err_help(
                root.span.start..root.span.start,
                "the flow has no `steps`",
                "missing `steps`",
                "add `steps:` with at least one step",
            );
            return None;
        };
        let Kind::Seq(items) = &steps_node.kind else {
            self.err(
                steps_node.span.clone(),
                format!("`steps` must be a list, found {}", steps_node.kind_name()),
                "expected a list",
            );
            return None;
        };
        if items.is_empty() {
            self.err(
                steps_node.span.clone(),
                "the flow has no steps",
                "empty list",
            );
            return None;
        }
        let before = self.diags.len();
        let mut raws = Vec::new();
        let mut first_by_key: HashMap<String, Span> = HashMap::new();
        for item in items {
            let Some(map) = item.as_map() else {
                self.err(
                    item.span.clone(),
                    format!(
                        "a step must be a mapping with `key` and `type`, found {}",
                        item.kind_name()
                    ),
                    "expected a mapping",
                );
                continue;
            };
            self.check_keys(map, STEP_KEYS, "a step");
            let key = match self.string(item, "key", "a step") {
                Some((k, n)) => {
                    if !is_identifier(&k) {
                        self.err_help(n.span.clone(), format!("step key `{k}` is not an identifier"), "invalid key", "keys are letters, digits and `_`, not starting with a digit, so that `$key` works in expressions");
                        None
                    } else if RESERVED_KEYS.contains(&k.as_str()) {
                        self.err(
                            n.span.clone(),
                            format!("step key `{k}` is reserved (the flow object has `${k}`)"),
                            "reserved",
                        );
                        None
                    } else if let Some(first) = first_by_key.get(&k) {
                        let (line, _) = self.source.line_col(first.start);
                        self.err(
                            n.span.clone(),
                            format!("duplicate step key `{k}` (first used on line {line})"),
                            "duplicate key",
                        );
                        None
                    } else {
                        first_by_key.insert(k.clone(), n.span.clone());
                        Some((k, n.span.clone()))
                    }
                }
                None => {
                    if item.get("key").is_none() {
                        self.err(item.span.clone(), "a step has no `key`", "missing `key`");
                    }
                    None
                }
            };
            let kind = match self.string(item, "type", "a step") {
                Some((t, n)) => {
                    if self.catalog.step(&t).is_none() {
                        let kinds = self.catalog.step_kinds();
                        let help = match closest(&t, &kinds) {
                            Some(c) => {
                                format!("did you mean `{c}`? Step types: {}", kinds.join(", "))
                            }
                            None => format!("step types: {}", kinds.join(", ")),
                        };
                        let who = key
                            .as_ref()
                            .map(|(k, _)| format!("step `{k}`: "))
                            .unwrap_or_default();
                        self.err_help(
                            n.span.clone(),
                            format!("{who}unknown step type `{t}`"),
                            "unknown type",
                            help,
                        );
                        None
                    } else {
                        Some((t, n.span.clone()))
                    }
                }
                None => {
                    if item.get("type").is_none() {
                        self.err(item.span.clone(), "a step has no `type`", "missing `type`");
                    }
                    None
                }
            };
            let options = item.get("options");
            if let Some(o) = options
                && !matches!(o.kind, Kind::Map(_) | Kind::Null)
            {
                self.err(
                    o.span.clone(),
                    format!("`options` must be a mapping, found {}", o.kind_name()),
                    "expected a mapping",
                );
            }
            raws.push(RawStep {
                node: item,
                key,
                kind,
                options,
                resolve: item.get("resolve"),
                reject: item.get("reject"),
            });
        }

        // The graph: where each step goes on success and on failure.
        let index: HashMap<&str, usize> = raws
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.key.as_ref().map(|(k, _)| (k.as_str(), i)))
            .collect();
        let n = raws.len();
        let mut success = vec![Next::End; n];
        let mut failure = vec![Next::End; n];
        for (i, r) in raws.iter().enumerate() {
            let who = r
                .key
                .as_ref()
                .map(|(k, _)| format!("step `{k}`"))
                .unwrap_or_else(|| format!("step {}", i + 1));
            success[i] = match r.resolve {
                None => {
                    if i + 1 < n {
                        Next::Step(i + 1)
                    } else {
                        Next::End
                    }
                }
                Some(node) => self.target(node, &index, &who, "resolve", i, true),
            };
            if let Some(node) = r.reject {
                failure[i] = self.target(node, &index, &who, "reject", i, false);
            }
        }

        // Reachability from the first step, and cycles.
        let edges = |i: usize| {
            [success[i], failure[i]]
                .into_iter()
                .filter_map(|n| match n {
                    Next::Step(j) => Some(j),
                    Next::End => None,
                })
        };
        let mut reachable = vec![false; n];
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reachable[i], true) {
                stack.extend(edges(i));
            }
        }
        for (i, r) in raws.iter().enumerate() {
            if !reachable[i] {
                let (span, who) = r.place(i);
                self.err_help(span, format!("step {who} can never run: no path from the first step leads to it"), "unreachable", "point a `resolve` or `reject` at it, or remove it; a step with `resolve` does not fall through to the next one");
            }
        }
        // reach[a][b]: a path leads from step a to step b.
        let reach: Vec<Vec<bool>> = (0..n)
            .map(|start| {
                let mut seen = vec![false; n];
                let mut stack: Vec<usize> = edges(start).collect();
                while let Some(j) = stack.pop() {
                    if !std::mem::replace(&mut seen[j], true) {
                        stack.extend(edges(j));
                    }
                }
                seen
            })
            .collect();
        for (i, r) in raws.iter().enumerate() {
            if reach[i][i] && reachable[i] {
                let (span, who) = r.place(i);
                self.err_help(
                    span,
                    format!("step {who} is part of a cycle: a run could loop through it forever"),
                    "in a cycle",
                    "flows are acyclic; repeat work with a list and fan-out instead",
                );
            }
        }

        // Options, expressions and templates, now that upstream is known.
        let mut steps = Vec::new();
        for (i, r) in raws.iter().enumerate() {
            let mut vars: Vec<String> = BUILTIN_VARS.iter().map(|s| (*s).to_owned()).collect();
            for (j, other) in raws.iter().enumerate() {
                if reach[j][i]
                    && j != i
                    && let Some((k, _)) = &other.key
                {
                    vars.push(k.clone());
                }
            }
            let step_keys: Vec<&str> = index.keys().copied().collect();
            let step = self.step_body(r, i, vars, &step_keys, success[i], failure[i]);
            if let Some(s) = step {
                steps.push(s);
            }
        }
        (self.diags.len() == before && steps.len() == n).then_some(steps)
    }

    fn target(
        &mut self,
        node: &Node,
        index: &HashMap<&str, usize>,
        who: &str,
        field: &str,
        me: usize,
        allow_end: bool,
    ) -> Next {
        match &node.kind {
            Kind::Null if allow_end => Next::End,
            Kind::Str(t) => match index.get(t.as_str()) {
                Some(&j) if j == me => {
                    self.err(
                        node.span.clone(),
                        format!("{who}: `{field}` points at the step itself"),
                        "a step cannot follow itself",
                    );
                    Next::End
                }
                Some(&j) => Next::Step(j),
                None => {
                    let keys: Vec<&str> = index.keys().copied().collect();
                    let help = match closest(t, &keys) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("steps: {}", sorted(&keys).join(", ")),
                    };
                    self.err_help(
                        node.span.clone(),
                        format!("{who}: `{field}` names step `{t}`, which does not exist"),
                        "no such step",
                        help,
                    );
                    Next::End
                }
            },
            _ => {
                let expect = if allow_end {
                    "a step key, or null to end the run"
                } else {
                    "a step key"
                };
                self.err(
                    node.span.clone(),
                    format!(
                        "{who}: `{field}` must be {expect}, found {}",
                        node.kind_name()
                    ),
                    "expected a step key",
                );
                Next::End
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_body(
        &mut self,
        r: &RawStep<'_>,
        i: usize,
        vars: Vec<String>,
        step_keys: &[&str],
        on_success: Next,
        on_failure: Next,
    ) -> Option<Step> {
        let key = r
            .key
            .as_ref()
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| format!("#{}", i + 1));
        let who = format!("step `{key}`");
        let var_refs: Vec<&str> = vars.iter().map(String::as_str).collect();
        let mut ok = r.key.is_some() && r.kind.is_some();

        let options_json = r
            .options
            .map(Node::to_json)
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| Value::Object(Map::new()));
        let mut expressions = BTreeMap::new();
        let mut templated = options_json.clone();
        if let Some((kind, _)) = &r.kind
            && let Some(spec) = self.catalog.step(kind)
        {
            ok &= self.known_connection(&options_json, r.options.unwrap_or(r.node), &who);
            let before = self.diags.len();
            let anchor = r.options.unwrap_or(r.node);
            self.option_issues(
                anchor,
                (spec.check)(&options_json),
                &format!("{who} ({kind})"),
            );
            ok &= self.diags.len() == before;
            for name in spec.expressions {
                let Some(Value::String(code)) = options_json.get(*name) else {
                    continue;
                };
                if let Value::Object(o) = &mut templated {
                    o.remove(*name);
                }
                let node = r.options.and_then(|o| o.get(name));
                match self.program(code, node, &var_refs, step_keys, &who, name) {
                    Some(p) => {
                        expressions.insert((*name).to_owned(), p);
                    }
                    None => ok = false,
                }
            }
        }
        let mut deferred = BTreeMap::new();
        if let Some((kind, _)) = &r.kind
            && let Some(spec) = self.catalog.step(kind)
        {
            for name in spec.deferred {
                let Some(raw) = templated.as_object_mut().and_then(|o| o.remove(*name)) else {
                    continue;
                };
                match TemplateValue::compile(&raw, &var_refs) {
                    Ok(t) => {
                        deferred.insert((*name).to_owned(), (raw, t));
                    }
                    Err(errors) => {
                        ok = false;
                        let at = [PathSeg::Key((*name).to_owned())];
                        self.template_issues(r.options, &at, errors, step_keys, &who);
                    }
                }
            }
        }
        let options = match TemplateValue::compile(&templated, &var_refs) {
            Ok(t) => t,
            Err(errors) => {
                ok = false;
                self.template_issues(r.options, &[], errors, step_keys, &who);
                TemplateValue::Const(Value::Null)
            }
        };

        // Data filters and mappings.
        let mut state_filter = StateDataFilter::default();
        if let Some(n) = r.node.get("stateDataFilter") {
            if let Some(map) = self.mapping(n, "stateDataFilter") {
                self.check_keys(map, &["input", "output"], "stateDataFilter");
                state_filter.input = self.jq_field(
                    n,
                    "input",
                    &var_refs,
                    step_keys,
                    &who,
                    "stateDataFilter.input",
                    &mut ok,
                );
                state_filter.output = self.jq_field(
                    n,
                    "output",
                    &var_refs,
                    step_keys,
                    &who,
                    "stateDataFilter.output",
                    &mut ok,
                );
            } else {
                ok = false;
            }
        }
        let mut action_filter = ActionDataFilter::default();
        if let Some(n) = r.node.get("actionDataFilter") {
            if let Some(map) = self.mapping(n, "actionDataFilter") {
                self.check_keys(
                    map,
                    &["fromStateData", "results", "toStateData", "useResults"],
                    "actionDataFilter",
                );
                action_filter.from_state_data = self.jq_field(
                    n,
                    "fromStateData",
                    &var_refs,
                    step_keys,
                    &who,
                    "actionDataFilter.fromStateData",
                    &mut ok,
                );
                action_filter.results = self.jq_field(
                    n,
                    "results",
                    &var_refs,
                    step_keys,
                    &who,
                    "actionDataFilter.results",
                    &mut ok,
                );
                match self.state_path(n, &who, "actionDataFilter") {
                    Ok(p) => action_filter.to_state_data = p,
                    Err(()) => ok = false,
                }
                match self.bool_field(n, "useResults", &who, "actionDataFilter") {
                    Ok(b) => action_filter.use_results = b.unwrap_or(true),
                    Err(()) => ok = false,
                }
            } else {
                ok = false;
            }
        }
        let event_filter = match r.node.get("eventDataFilter") {
            None => None,
            Some(n) => {
                let f = self.event_filter(n, &var_refs, step_keys, &who);
                if f.is_none() {
                    ok = false;
                }
                f
            }
        };
        let retry = match r.node.get("retry") {
            None => None,
            Some(n) => match serde_json::from_value::<Retry>(n.to_json()) {
                Ok(p) => match p.problem() {
                    None => Some(p),
                    Some(m) => {
                        ok = false;
                        self.err(
                            n.span.clone(),
                            format!("{who}: retry: {m}"),
                            "invalid retry",
                        );
                        None
                    }
                },
                Err(e) => {
                    ok = false;
                    self.err_help(
                        n.span.clone(),
                        format!("{who}: retry: {e}"),
                        "invalid retry",
                        "retry: {attempts, delayMs, factor, maxDelayMs, jitter, on: [external, data, flow]}".to_owned(),
                    );
                    None
                }
            },
        };
        let input_mappings = r
            .node
            .get("inputMappings")
            .and_then(|n| self.mappings(n, &who, "inputMappings", &mut ok));
        let output_mappings = r
            .node
            .get("outputMappings")
            .and_then(|n| self.mappings(n, &who, "outputMappings", &mut ok));

        if !ok {
            return None;
        }
        Some(Step {
            key,
            kind: r.kind.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(),
            options,
            expressions,
            deferred,
            on_success,
            on_failure,
            has_failure_path: r.reject.is_some(),
            vars,
            state_filter,
            action_filter,
            input_mappings,
            output_mappings,
            event_filter,
            retry,
            span: r.node.span.clone(),
        })
    }

    /// Read an `eventDataFilter` mapping.
    fn event_filter(
        &mut self,
        n: &Node,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
    ) -> Option<EventDataFilter> {
        let map = self.mapping(n, "eventDataFilter")?;
        self.check_keys(map, &["data", "toStateData", "useData"], "eventDataFilter");
        let before = self.diags.len();
        let mut ok = true;
        let mut f = EventDataFilter {
            data: self.jq_field(
                n,
                "data",
                vars,
                step_keys,
                who,
                "eventDataFilter.data",
                &mut ok,
            ),
            ..EventDataFilter::default()
        };
        f.to_state_data = self.state_path(n, who, "eventDataFilter").unwrap_or(None);
        f.use_data = self
            .bool_field(n, "useData", who, "eventDataFilter")
            .unwrap_or(None)
            .unwrap_or(true);
        (ok && self.diags.len() == before).then_some(f)
    }

    /// `toStateData` of a data filter: a jq path of names and indexes, kept
    /// as written and parsed. `Err` when it is reported as invalid.
    fn state_path(
        &mut self,
        filter: &Node,
        who: &str,
        what: &str,
    ) -> Result<Option<(String, MappingPath)>, ()> {
        let Some(t) = filter.get("toStateData") else {
            return Ok(None);
        };
        match t.as_str().map(|s| (s, jq_path_to_mapping(s))) {
            Some((s, Ok(p))) => Ok(Some((s.to_owned(), p))),
            _ => {
                self.err_help(
                    t.span.clone(),
                    format!("{who}: `{what}.toStateData` must be a jq path such as `.a.b`"),
                    "not a path",
                    "names (`.name` or `.[\"name\"]`) and indexes (`[0]`) only",
                );
                Err(())
            }
        }
    }

    /// A boolean field of a data filter. `Err` when it is reported as invalid.
    fn bool_field(
        &mut self,
        filter: &Node,
        field: &str,
        who: &str,
        what: &str,
    ) -> Result<Option<bool>, ()> {
        match filter.get(field).map(|n| (n, &n.kind)) {
            None => Ok(None),
            Some((_, Kind::Bool(b))) => Ok(Some(*b)),
            Some((n, _)) => {
                self.err(
                    n.span.clone(),
                    format!("{who}: `{what}.{field}` must be true or false"),
                    "expected a boolean",
                );
                Err(())
            }
        }
    }

    fn mapping<'n>(&mut self, n: &'n Node, what: &str) -> Option<&'n [(Key, Node)]> {
        let m = n.as_map();
        if m.is_none() {
            self.err(
                n.span.clone(),
                format!("`{what}` must be a mapping, found {}", n.kind_name()),
                "expected a mapping",
            );
        }
        m
    }

    #[allow(clippy::too_many_arguments)]
    fn jq_field(
        &mut self,
        parent: &Node,
        field: &str,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
        what: &str,
        ok: &mut bool,
    ) -> Option<Program> {
        let n = parent.get(field)?;
        let Some(code) = n.as_str() else {
            *ok = false;
            self.err(
                n.span.clone(),
                format!(
                    "{who}: `{what}` must be a jq expression (a string), found {}",
                    n.kind_name()
                ),
                "expected a string",
            );
            return None;
        };
        let p = self.program(code, Some(n), vars, step_keys, who, what);
        if p.is_none() {
            *ok = false;
        }
        p
    }

    fn mappings(&mut self, n: &Node, who: &str, what: &str, ok: &mut bool) -> Option<Vec<Mapping>> {
        let Kind::Seq(items) = &n.kind else {
            *ok = false;
            self.err(
                n.span.clone(),
                format!(
                    "{who}: `{what}` must be a list of {{source, target}}, found {}",
                    n.kind_name()
                ),
                "expected a list",
            );
            return None;
        };
        if items.is_empty() {
            *ok = false;
            self.err_help(
                n.span.clone(),
                format!("{who}: `{what}` is empty"),
                "no mappings",
                "give at least one {source, target} pair, or remove the key",
            );
            return None;
        }
        let mut out = Vec::new();
        for item in items {
            let Some(map) = item.as_map() else {
                *ok = false;
                self.err(
                    item.span.clone(),
                    format!("{who}: each of `{what}` must be a mapping with `source` and `target`"),
                    "expected a mapping",
                );
                continue;
            };
            self.check_keys(map, &["source", "target"], what);
            let path = |field: &str, this: &mut Self| -> Option<MappingPath> {
                let Some(p) = item.get(field) else {
                    this.err(
                        item.span.clone(),
                        format!("{who}: a mapping of `{what}` has no `{field}`"),
                        format!("missing `{field}`"),
                    );
                    return None;
                };
                let Some(text) = p.as_str() else {
                    this.err(
                        p.span.clone(),
                        format!("{who}: `{field}` must be a JSONPath string"),
                        "expected a string",
                    );
                    return None;
                };
                match MappingPath::parse(text) {
                    Ok(mp) => Some(mp),
                    Err(e) => {
                        let span = locate_in_scalar(
                            &this.source.text,
                            &p.span,
                            text,
                            &(e.offset..(e.offset + 1).min(text.len()).max(e.offset)),
                        );
                        this.err_help(
                            span,
                            format!(
                                "{who}: invalid {field} path `{text}` in `{what}`: {}",
                                e.message
                            ),
                            "here",
                            "mapping paths use `$`, `.name`, `['name']` and `[n]`",
                        );
                        None
                    }
                }
            };
            let source = path("source", self);
            let target = path("target", self);
            match (source, target) {
                (Some(source), Some(target)) => out.push(Mapping { source, target }),
                _ => *ok = false,
            }
        }
        Some(out)
    }

    fn program(
        &mut self,
        code: &str,
        node: Option<&Node>,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
        what: &str,
    ) -> Option<Program> {
        match Program::compile(code, vars) {
            Ok(p) => Some(p),
            Err(e) => {
                self.expr_issues(
                    node,
                    code,
                    &e.issues,
                    step_keys,
                    who,
                    &format!("`{what}`"),
                    "expression",
                );
                None
            }
        }
    }

    /// Report the templates of a step's options (under `at`) that did not
    /// compile, each at its place in `options`.
    fn template_issues(
        &mut self,
        options: Option<&Node>,
        at: &[PathSeg],
        errors: Vec<sluice_expr::template::LocatedTemplateError>,
        step_keys: &[&str],
        who: &str,
    ) {
        for e in errors {
            let mut path = at.to_vec();
            path.extend(e.path.iter().cloned());
            let node = options.and_then(|o| o.at(&path));
            self.expr_issues(
                node,
                &e.error.source_text,
                &e.error.issues,
                step_keys,
                who,
                &format!("option `{}`", display_path(&path)),
                "template",
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn expr_issues(
        &mut self,
        node: Option<&Node>,
        content: &str,
        issues: &[sluice_expr::CompileIssue],
        step_keys: &[&str],
        who: &str,
        what: &str,
        noun: &str,
    ) {
        for issue in issues {
            let span = match node {
                Some(n) => locate_in_scalar(&self.source.text, &n.span, content, &issue.span),
                None => 0..0,
            };
            let d = match &issue.undefined_var {
                Some(v) if step_keys.contains(&v.as_str()) => Diagnostic::new(span, format!("{who}: {what} refers to step `{v}`, which is not upstream of this step"), "not upstream")
                    .with_help(format!("a {noun} can read `$trigger`, `$last`, `$accountability` and the steps that can run before this one")),
                Some(v) => Diagnostic::new(span, format!("{who}: {what} uses unknown variable `${v}`"), "unknown variable")
                    .with_help("the flow object has `$trigger`, `$last`, `$accountability`, `$tokens` and one `$<key>` per upstream step"),
                None => Diagnostic::new(span, format!("{who}: {what} is not a valid jq {noun}: {}", issue.message), "here"),
            };
            self.diags.push(d);
        }
    }
}

/// Turn a jq path such as `.a.b`, `.["x"]` or `.list[0]` into a mapping path.
pub fn jq_path_to_mapping(text: &str) -> Result<MappingPath, sluice_expr::PathError> {
    let t = text.trim();
    let Some(body) = t.strip_prefix('.') else {
        return Err(sluice_expr::PathError {
            text: text.to_owned(),
            offset: 0,
            message: "a jq path starts with `.`".to_owned(),
        });
    };
    let body = body
        .strip_prefix('[')
        .map(|b| format!("[{b}"))
        .unwrap_or_else(|| {
            if body.is_empty() {
                String::new()
            } else {
                format!(".{body}")
            }
        });
    let body = body
        .replace(".[", "[")
        .replace("[\"", "['")
        .replace("\"]", "']");
    MappingPath::parse(&format!("${body}"))
}

fn display_path(path: &[PathSeg]) -> String {
    let mut s = String::new();
    for (i, p) in path.iter().enumerate() {
        match p {
            PathSeg::Key(k) if i == 0 => s.push_str(k),
            PathSeg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            PathSeg::Index(n) => s.push_str(&format!("[{n}]")),
        }
    }
    s
}

fn sorted<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// The allowed word closest to `word`, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
