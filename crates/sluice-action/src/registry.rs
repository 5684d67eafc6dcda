//! The one list of step types and triggers: each connector adds its own,
//! the model checks flows against it ([`Catalog`]), and the published JSON
//! Schema of flow files is made from it.

use crate::action::{Action, Calls, CommittedRuns, DynAction};
use crate::batch::Batches;
use crate::check::{check_options, options_schema, templatable};
use crate::poll::PollSource;
use crate::{core_ops, hooks, triggers};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_model::{Catalog, ConnectionSpec, OptionIssue, StepSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Check a step's options: [`check_options`], and its deferred options,
/// which the step requires.
fn check_action<A: Action>(options: &Value) -> Vec<OptionIssue> {
    let mut issues = check_options::<A::Options>(options);
    issues.extend(A::check(options));
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

fn model_event_trigger(kind: &str) -> bool {
    sluice_model::EVENT_TRIGGERS.contains(&kind)
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
    polls: BTreeMap<&'static str, Arc<dyn PollSource>>,
    /// The connector that writes an import's envelopes together.
    batches: Option<Arc<dyn Batches>>,
    /// The connector that knows whether a run's one transaction committed.
    committed_runs: Option<Arc<dyn CommittedRuns>>,
    /// The connector that makes HTTP calls for other connectors' steps.
    calls: Option<Arc<dyn Calls>>,
    /// Connection types besides databases, by `type:`.
    connections: BTreeMap<&'static str, ConnectionSpec>,
    /// The environment variables flows may list under `env` (`None`: any).
    env_allow: Option<std::collections::BTreeSet<String>>,
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
        r.add(crate::notify::Notify);
        r.add_trigger_checked::<triggers::ManualTrigger>("manual", crate::manual::check_manual);
        r.add_trigger::<core_ops::CloudEventTrigger>("cloudevent");
        r.add_trigger_checked::<triggers::WebhookTrigger>("webhook", triggers::check_webhook);
        r.add_trigger::<core_ops::FlowTrigger>("flow");
        r.add_trigger_checked::<hooks::EventTrigger>("event", hooks::check_event);
        r.add_trigger_checked::<triggers::ScheduleTrigger>("schedule", triggers::check_schedule);
        r
    }

    /// This registry with the action of each step type for which `by`
    /// gives one replaced by it (how `sluice test` answers the steps that
    /// reach outside).
    pub fn with_actions_of(
        &self,
        mut by: impl FnMut(&'static str, &Entry) -> Option<Arc<dyn DynAction>>,
    ) -> Self {
        let mut out = self.clone();
        for (kind, entry) in out.steps.iter_mut() {
            if let Some(action) = by(kind, entry) {
                entry.action = action;
            }
        }
        out
    }

    /// Register a step type.
    pub fn add<A: Action>(&mut self, action: A) {
        self.steps.insert(
            A::KIND,
            Entry {
                spec: StepSpec {
                    expressions: A::EXPRESSIONS,
                    deferred: A::DEFERRED,
                    verbatim: A::VERBATIM,
                    check: check_action::<A>,
                    connection: A::CONNECTION,
                },
                action: Arc::new(action),
                pure: A::PURE,
                schema: options_schema::<A::Options>,
            },
        );
    }

    /// Register a trigger type with its options.
    pub fn add_trigger<O: DeserializeOwned + JsonSchema + 'static>(&mut self, kind: &'static str) {
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
                    verbatim: &[],
                    check,
                    connection: None,
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
                "enabled": {"type": "boolean", "default": true},
                "env": {"type": "array", "uniqueItems": true, "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}},
                "connections": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": false, "required": ["url"], "properties": {"url": {"type": "string"}}}},
                "steps": {"type": "array", "minItems": 1, "items": {"oneOf": steps}},
            }
        })
    }

    /// Allow flows to read only these environment variables (the
    /// operator's `SLUICE_FLOWS_ENV_ALLOW_LIST`): a flow listing another
    /// under `env` is refused when it loads.
    pub fn set_env_allow_list(&mut self, names: impl IntoIterator<Item = String>) {
        self.env_allow = Some(names.into_iter().collect());
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
        source: Arc<dyn PollSource>,
    ) {
        self.add_trigger_checked::<O>(kind, check);
        self.polls.insert(kind, source);
    }

    /// What reads the rows of trigger type `kind`, when a connector does.
    pub fn poll_source(&self, kind: &str) -> Option<&Arc<dyn PollSource>> {
        self.polls.get(kind)
    }

    /// Write an import's envelopes through `batches` (one connector does).
    pub fn set_batches(&mut self, batches: Arc<dyn Batches>) {
        self.batches = Some(batches);
    }

    /// The connector that writes an import's envelopes together, if one
    /// was registered.
    pub fn batches(&self) -> Option<&Arc<dyn Batches>> {
        self.batches.as_ref()
    }

    /// Register a connection type (`type: kind` under `connections`),
    /// checked by `check`; `uses` checks a step's options against the
    /// connection it names (see [`ConnectionSpec::uses`]).
    pub fn add_connection(
        &mut self,
        kind: &'static str,
        check: fn(&Value) -> Vec<OptionIssue>,
        uses: fn(&str, &Value, &Value) -> Vec<OptionIssue>,
    ) {
        self.connections
            .insert(kind, ConnectionSpec { check, uses });
    }

    /// Make HTTP calls for other connectors' steps through `calls`.
    pub fn set_calls(&mut self, calls: Arc<dyn Calls>) {
        self.calls = Some(calls);
    }

    /// The connector that makes HTTP calls for other connectors' steps.
    pub fn calls(&self) -> Option<&Arc<dyn Calls>> {
        self.calls.as_ref()
    }

    /// Ask `runs` whether a run's one transaction (`transaction: flow`)
    /// committed (one connector opens them).
    pub fn set_committed_runs(&mut self, runs: Arc<dyn CommittedRuns>) {
        self.committed_runs = Some(runs);
    }

    /// The connector that knows whether a run's one transaction committed.
    pub fn committed_runs(&self) -> Option<&Arc<dyn CommittedRuns>> {
        self.committed_runs.as_ref()
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

    fn env_allowed(&self, name: &str) -> bool {
        self.env_allow.as_ref().is_none_or(|a| a.contains(name))
    }

    fn connection(&self, kind: &str) -> Option<ConnectionSpec> {
        self.connections.get(kind).copied()
    }

    fn connection_kinds(&self) -> Vec<&'static str> {
        self.connections.keys().copied().collect()
    }
}
