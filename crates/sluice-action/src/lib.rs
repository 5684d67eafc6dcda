//! Step types and triggers: the [`Action`] trait, the one [`Registry`], the
//! core operations that need no outside system, and the traits through which
//! the engine and the server reach what only some connectors have.
//!
//! A step type is a typed options struct (its JSON Schema names the options
//! the model accepts) and an async `run`. The registry erases the types so the
//! engine can run any step by name, and implements the model's
//! [`Catalog`] so that `sluice check` validates options from the same structs
//! the steps run with.
//!
//! A connector is a crate of its own (`sluice-sql`) that depends on this one
//! and on no other connector: its step types are structs that keep what the
//! connector shares between runs (pools, caches), added to a [`Registry`] by
//! one `register` function. What the engine and the server need of a
//! connector beyond its steps is a trait here: [`batch::Batches`] (an
//! import's envelopes written together), [`poll::PollSource`] (the rows a
//! `poll` trigger reads), [`hooks::DataHooks`] (the flows a change starts,
//! which the engine implements and connectors ask).

pub mod batch;
pub mod core_ops;
pub mod hooks;
pub mod poll;
pub mod triggers;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_expr::{Limits, PathSeg, Program, Scope};
use sluice_model::{Catalog, OptionIssue, StepSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Who has to act on an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The flow failed the step on purpose (`throw`, a false `condition`), or
    /// is wrong in a way only its author can fix.
    Flow,
    /// The data did not fit what the flow expects (an expression failed on
    /// it, a mapping found nothing, a merge met another kind, an option was
    /// invalid after templating): a person can fix the data, or the flow, and
    /// resume. With no failure path the run stops as an incident.
    Data,
    /// An outside system refused or failed.
    External,
    /// Sluice's own store.
    Store,
    /// A bug in Sluice.
    Bug,
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Who must act.
    pub blame: Blame,
    /// What happened.
    pub message: String,
}

impl ActionError {
    /// An error the flow's author must fix.
    pub fn flow(message: impl Into<String>) -> Self {
        Self {
            blame: Blame::Flow,
            message: message.into(),
        }
    }

    /// An error in the data: a person can fix it and resume.
    pub fn data(message: impl Into<String>) -> Self {
        Self {
            blame: Blame::Data,
            message: message.into(),
        }
    }

    /// An error of an outside system.
    pub fn external(message: impl Into<String>) -> Self {
        Self {
            blame: Blame::External,
            message: message.into(),
        }
    }
}

impl From<sluice_expr::Error> for ActionError {
    fn from(e: sluice_expr::Error) -> Self {
        Self::data(e.to_string())
    }
}

/// What a step produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The result, or `None` when the step returns no payload.
    pub payload: Option<Value>,
    /// Lines for the run log.
    pub logs: Vec<String>,
    /// Tokens the step set, for the run's `$tokens`.
    pub tokens: Option<serde_json::Map<String, Value>>,
    /// Results emitted individually: the steps after this one run once per
    /// item, each in a run of its own.
    pub items: Option<Vec<Value>>,
    /// Work the engine does for the step: suspending the run, or starting
    /// another flow (the step's result comes from it).
    pub effect: Option<Effect>,
}

/// Work a step asks of the engine, returned as data (in the manner of
/// Restate's state machine): the engine records the run's suspension or the
/// other flow's run durably before it does anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Suspend the run for `ms` milliseconds from now; the step is then run
    /// again with [`ActionCx::wake`] set.
    Sleep {
        /// How long.
        ms: u64,
    },
    /// Suspend the run until a CloudEvent that matches arrives (the step is
    /// run again with the event in [`ActionCx::wake`]) or the timeout passes
    /// (the step fails).
    WaitEvent {
        /// The event's `type` (any when `None`).
        event_type: Option<String>,
        /// The event's `source` (any when `None`).
        source: Option<String>,
        /// Context attributes the event must carry, with their values.
        correlation: serde_json::Map<String, Value>,
        /// How long until it times out, in milliseconds from now, if ever.
        timeout_ms: Option<u64>,
    },
    /// Start a run of another flow with `input`; the step's result is that
    /// run's output (when `wait`) or `{runId}`.
    StartFlow {
        /// The flow's id.
        flow: String,
        /// The run's input.
        input: Value,
        /// Whether the step waits for the run to end.
        wait: bool,
    },
}

impl Outcome {
    /// A result.
    pub fn value(v: Value) -> Self {
        Self {
            payload: Some(v),
            logs: Vec::new(),
            tokens: None,
            items: None,
            effect: None,
        }
    }

    /// Ask the engine for `effect`.
    pub fn effect(effect: Effect) -> Self {
        Self {
            effect: Some(effect),
            ..Self::default()
        }
    }

    /// No payload.
    pub fn none() -> Self {
        Self::default()
    }
}

/// What a running step can see.
pub struct ActionCx<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The step's key.
    pub step_key: &'a str,
    /// The data the action works on (the state data, after `fromStateData`
    /// and input mappings).
    pub input: &'a Value,
    /// The same input as templates and filters read it (made a jq value
    /// the first time a program needs one).
    pub program_input: &'a sluice_expr::Input<'a>,
    /// The flow object: `$trigger`, `$last`, `$<key>`.
    pub scope: &'a (dyn Scope + Sync),
    /// The step's expression options, compiled.
    pub expressions: &'a BTreeMap<String, Program>,
    /// Limits for expressions.
    pub limits: &'a Limits,
    /// The flow's `connections`, as declared (a connector opens what it
    /// names, and keeps it for the runs after).
    pub connections: &'a BTreeMap<String, Value>,
    /// The deferred options, compiled: the step renders them itself.
    pub deferred: &'a BTreeMap<String, (Value, sluice_expr::TemplateValue)>,
    /// Set when the run is one record of an import: envelopes are written
    /// by the import's batch.
    pub batch: Option<batch::InBatch<'a>>,
    /// Set when the step runs again after its run was suspended by its
    /// [`Effect`]: `null` for a sleep that ended, the CloudEvent for a wait.
    pub wake: Option<&'a Value>,
    /// This attempt of the step, from 1 (see a step's `retry`).
    pub attempt: u32,
    /// The key of this attempt, the same for every run of it (after a
    /// restart too) and different for every other: run, step, item and
    /// attempt. An outside system that is handed it can recognise a request
    /// it already carried out. Empty for runs that are not recorded.
    pub idempotency_key: &'a str,
    /// The data hooks of the flows the run can reach (`event` triggers),
    /// which SQL actions ask before and after each change; `None` when the
    /// run has none.
    pub hooks: Option<&'a dyn hooks::DataHooks>,
}

impl ActionCx<'_> {
    /// A compiled expression option.
    pub fn expression(&self, name: &str) -> Result<&Program, ActionError> {
        self.expressions.get(name).ok_or_else(|| ActionError {
            blame: Blame::Bug,
            message: format!(
                "step `{}` has no compiled expression `{name}`",
                self.step_key
            ),
        })
    }
}

/// A boxed future, as the registry hands them out.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step type.
pub trait Action: Send + Sync + 'static {
    /// The name flows use in `type:`.
    const KIND: &'static str;
    /// Options that are jq expressions rather than templated values.
    const EXPRESSIONS: &'static [&'static str] = &[];
    /// Options whose templates the step renders itself (see
    /// [`ActionCx::deferred`]). They are required, and they reach the step
    /// only through [`ActionCx::deferred`], not in its typed options (whose
    /// fields for them are `#[serde(default)]`).
    const DEFERRED: &'static [&'static str] = &[];
    /// The step touches nothing outside the run: no outside system, no other
    /// run, no clock to wait for; what it did is seen only through the run's
    /// record. The engine may then commit its record with the next write (a
    /// stretch of such steps is recorded in one; see docs/data-flow.md).
    const PURE: bool = false;
    /// The typed options.
    type Options: DeserializeOwned + JsonSchema + Send;
    /// Run once with templated options.
    fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: Self::Options,
    ) -> impl Future<Output = Result<Outcome, ActionError>> + Send + 'a;
}

/// A step type with its types erased.
pub trait DynAction: Send + Sync {
    /// Deserialize the options (as the step's record shows them) and run.
    fn run_json<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: &'a Value,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>>;
}

impl<A: Action> DynAction for A {
    fn run_json<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: &'a Value,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let options: A::Options = serde_path_to_error::deserialize(options).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(" at `{path}`")
                };
                ActionError::data(format!(
                    "options after templating are invalid{at}: {}",
                    e.inner()
                ))
            })?;
            self.run(cx, options).await
        })
    }
}

/// Check a step's options: [`check_options`], and its deferred options,
/// which the step requires.
fn check_action<A: Action>(options: &Value) -> Vec<OptionIssue> {
    let mut issues = check_options::<A::Options>(options);
    for name in A::DEFERRED {
        if options.get(*name).is_none() {
            issues.push(OptionIssue {
                path: Vec::new(),
                message: format!("missing field `{name}`"),
                at_key: false,
                help: None,
            });
        }
    }
    issues
}

/// Check options against `T`: unknown options (from its JSON Schema), then
/// types and required options (through serde). A value that is a template
/// cannot be checked before it runs and is passed over.
pub fn check_options<T: DeserializeOwned + JsonSchema>(options: &Value) -> Vec<OptionIssue> {
    let mut issues = Vec::new();
    let schema = schemars::schema_for!(T);
    let props: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut known = options.clone();
    if let Value::Object(map) = &mut known {
        let unknown: Vec<String> = map.keys().filter(|k| !props.contains(k)).cloned().collect();
        for k in unknown {
            let refs: Vec<&str> = props.iter().map(String::as_str).collect();
            let help = match sluice_model::flow::closest(&k, &refs) {
                Some(c) => format!("did you mean `{c}`? Options: {}", refs.join(", ")),
                None if refs.is_empty() => "this type takes no options".to_owned(),
                None => format!("options: {}", refs.join(", ")),
            };
            issues.push(OptionIssue {
                path: vec![PathSeg::Key(k.clone())],
                message: format!("unknown option `{k}`"),
                at_key: true,
                help: Some(help),
            });
            map.remove(&k);
        }
    } else if !options.is_null() {
        issues.push(OptionIssue {
            path: vec![],
            message: "options must be a mapping".into(),
            at_key: false,
            help: None,
        });
        return issues;
    }
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(&known) {
        let path: Vec<PathSeg> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                _ => None,
            })
            .collect();
        let templated = value_at(&known, &path)
            .and_then(Value::as_str)
            .is_some_and(sluice_expr::template::has_template);
        if !templated {
            issues.push(OptionIssue {
                path,
                message: e.inner().to_string(),
                at_key: false,
                help: None,
            });
        }
    }
    issues
}

fn value_at<'v>(v: &'v Value, path: &[PathSeg]) -> Option<&'v Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            PathSeg::Key(k) => cur.get(k)?,
            PathSeg::Index(i) => cur.get(i)?,
        };
    }
    Some(cur)
}

fn model_event_trigger(kind: &str) -> bool {
    sluice_model::EVENT_TRIGGERS.contains(&kind)
}

/// The JSON Schema of an options struct, as a value.
fn options_schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// Let every option of `schema` also be a templated string, as flow files may
/// write any value as a template.
fn templatable(mut schema: Value) -> Value {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut() {
            let original = std::mem::take(p);
            *p = serde_json::json!({"anyOf": [original, {"type": "string", "pattern": "\\{\\{"}]});
        }
    }
    schema
}

/// Whether `s` is a plain name for a collection or field: a letter or `_`,
/// then letters, digits or `_`, at most 63 characters (so that it can be
/// quoted into SQL, or a path, without question).
pub fn valid_ident(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 63
        && matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// One registered step type.
#[derive(Clone)]
pub struct Entry {
    /// How the model checks it.
    pub spec: StepSpec,
    /// How the engine runs it.
    pub action: Arc<dyn DynAction>,
    /// See [`Action::PURE`].
    pub pure: bool,
    /// The JSON Schema of its options.
    pub schema: fn() -> Value,
}

/// A trigger type: only its options, for now.
#[derive(Clone, Copy)]
pub struct TriggerEntry {
    /// How the model checks it.
    pub spec: StepSpec,
    /// The JSON Schema of its options.
    pub schema: fn() -> Value,
}

/// The one list of step types and triggers, with what the connectors that
/// registered them offer besides steps.
#[derive(Clone, Default)]
pub struct Registry {
    steps: BTreeMap<&'static str, Entry>,
    triggers: BTreeMap<&'static str, TriggerEntry>,
    /// Trigger types whose rows a connector reads, by kind.
    polls: BTreeMap<&'static str, Arc<dyn poll::PollSource>>,
    /// The connector that writes an import's envelopes together.
    batches: Option<Arc<dyn batch::Batches>>,
}

impl Registry {
    /// The core step types and triggers: those that need no connector.
    pub fn core() -> Self {
        let mut r = Self::default();
        r.add(core_ops::Transform);
        r.add(core_ops::Condition);
        r.add(core_ops::Log);
        r.add(core_ops::Sleep);
        r.add(core_ops::Throw);
        r.add(core_ops::Split);
        r.add(core_ops::WaitEvent);
        r.add(core_ops::StartFlow);
        r.add_trigger::<triggers::ManualTrigger>("manual");
        r.add_trigger::<core_ops::CloudEventTrigger>("cloudevent");
        r.add_trigger::<triggers::WebhookTrigger>("webhook");
        r.add_trigger::<core_ops::FlowTrigger>("flow");
        r.add_trigger_checked::<hooks::EventTrigger>("event", hooks::check_event);
        r.add_trigger_checked::<triggers::ScheduleTrigger>("schedule", triggers::check_schedule);
        r
    }

    /// Register a step type.
    pub fn add<A: Action>(&mut self, action: A) {
        self.steps.insert(
            A::KIND,
            Entry {
                spec: StepSpec {
                    expressions: A::EXPRESSIONS,
                    deferred: A::DEFERRED,
                    check: check_action::<A>,
                },
                action: Arc::new(action),
                pure: A::PURE,
                schema: options_schema::<A::Options>,
            },
        );
    }

    /// Register a trigger type with its options.
    pub fn add_trigger<O: DeserializeOwned + JsonSchema>(&mut self, kind: &'static str) {
        self.add_trigger_checked::<O>(kind, check_options::<O>);
    }

    /// Register a trigger type whose options need more checks than their
    /// type says (`check` reports every issue, those of the type included).
    pub fn add_trigger_checked<O: DeserializeOwned + JsonSchema>(
        &mut self,
        kind: &'static str,
        check: fn(&Value) -> Vec<OptionIssue>,
    ) {
        self.triggers.insert(
            kind,
            TriggerEntry {
                spec: StepSpec {
                    expressions: &[],
                    deferred: &[],
                    check,
                },
                schema: options_schema::<O>,
            },
        );
    }

    /// The JSON Schema of flow files with these step types and triggers
    /// (draft 2020-12), for editors to complete and check flow files.
    pub fn flow_schema(&self) -> Value {
        use serde_json::json;
        let jq = json!({"type": "string", "description": "a jq expression"});
        let path = json!({"type": "string", "description": "a JSONPath of names and indexes"});
        let mappings = json!({"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": false, "required": ["source", "target"], "properties": {"source": path, "target": path}}});
        let event_filter = json!({"type": "object", "additionalProperties": false, "properties": {"data": jq, "toStateData": jq, "useData": {"type": "boolean"}}});
        let key = json!({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"});
        let retry = json!({"type": "object", "additionalProperties": false, "required": ["attempts"], "properties": {
            "attempts": {"type": "integer", "minimum": 1, "maximum": 100, "description": "attempts in all, the first included"},
            "delayMs": {"type": "integer", "minimum": 0, "description": "the wait after the first failure (default 1000)"},
            "factor": {"type": "number", "minimum": 1, "maximum": 100, "description": "each wait is the one before times this (default 2)"},
            "maxDelayMs": {"type": "integer", "minimum": 0, "description": "no wait is longer (default 60000)"},
            "jitter": {"type": "boolean", "description": "draw each wait between half and all of it (default true)"},
            "on": {"type": "array", "items": {"enum": ["external", "data", "flow"]}, "description": "which failures are retried (default [external])"}
        }});
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|(kind, e)| {
                let mut options = templatable((e.schema)());
                if let Some(o) = options.as_object_mut() {
                    o.remove("$schema");
                }
                json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["key", "type"],
                    "properties": {
                        "key": key, "type": {"const": kind}, "name": {"type": "string"}, "description": {"type": "string"},
                        "options": options,
                        "resolve": {"anyOf": [key, {"type": "null"}]}, "reject": key,
                        "stateDataFilter": {"type": "object", "additionalProperties": false, "properties": {"input": jq, "output": jq}},
                        "actionDataFilter": {"type": "object", "additionalProperties": false, "properties": {"fromStateData": jq, "results": jq, "toStateData": jq, "useResults": {"type": "boolean"}}},
                        "inputMappings": mappings, "outputMappings": mappings,
                        "eventDataFilter": event_filter,
                        "retry": retry,
                    }
                })
            })
            .collect();
        let triggers: Vec<Value> = self
            .triggers
            .iter()
            .map(|(kind, t)| {
                let mut s = templatable((t.schema)());
                if let Some(o) = s.as_object_mut() {
                    o.remove("$schema");
                    let props = o.entry("properties").or_insert_with(|| json!({}));
                    if let Some(p) = props.as_object_mut() {
                        p.insert("type".into(), json!({"const": kind}));
                        if model_event_trigger(kind) {
                            p.insert("dataOnly".into(), json!({"type": "boolean"}));
                            p.insert("eventDataFilter".into(), event_filter.clone());
                        }
                    }
                    o.insert("required".into(), json!(["type"]));
                }
                s
            })
            .collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Sluice flow file",
            "type": "object",
            "additionalProperties": false,
            "required": ["steps"],
            "properties": {
                "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "trigger": {"oneOf": triggers},
                "unmappedResults": {"enum": ["merge", "replace"]},
                "connections": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": false, "required": ["url"], "properties": {"url": {"type": "string"}}}},
                "steps": {"type": "array", "minItems": 1, "items": {"oneOf": steps}},
            }
        })
    }

    /// A step type by name.
    pub fn get(&self, kind: &str) -> Option<&Entry> {
        self.steps.get(kind)
    }

    /// Register a trigger type whose rows `source` reads (a `poll`
    /// trigger), with the check of its options.
    pub fn add_poll_trigger<O: DeserializeOwned + JsonSchema>(
        &mut self,
        kind: &'static str,
        check: fn(&Value) -> Vec<OptionIssue>,
        source: Arc<dyn poll::PollSource>,
    ) {
        self.add_trigger_checked::<O>(kind, check);
        self.polls.insert(kind, source);
    }

    /// What reads the rows of trigger type `kind`, when a connector does.
    pub fn poll_source(&self, kind: &str) -> Option<&Arc<dyn poll::PollSource>> {
        self.polls.get(kind)
    }

    /// Write an import's envelopes through `batches` (one connector does).
    pub fn set_batches(&mut self, batches: Arc<dyn batch::Batches>) {
        self.batches = Some(batches);
    }

    /// The connector that writes an import's envelopes together, if one
    /// was registered.
    pub fn batches(&self) -> Option<&Arc<dyn batch::Batches>> {
        self.batches.as_ref()
    }
}

impl Catalog for Registry {
    fn step(&self, kind: &str) -> Option<StepSpec> {
        self.steps.get(kind).map(|e| e.spec)
    }

    fn step_kinds(&self) -> Vec<&'static str> {
        self.steps.keys().copied().collect()
    }

    fn trigger(&self, kind: &str) -> Option<StepSpec> {
        self.triggers.get(kind).map(|t| t.spec)
    }

    fn trigger_kinds(&self) -> Vec<&'static str> {
        self.triggers.keys().copied().collect()
    }
}
