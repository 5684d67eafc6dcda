//! The flow object of a run (SEMANTICS.md section 1): `$trigger`, `$last`,
//! `$accountability`, `$tokens`, `$env` and each executed step's result by its key,
//! kept as JSON and made jq values only when a program reads them.

use serde_json::{Map, Value};
use sluice_expr::{Scope, Val, to_val};
use sluice_model::Flow;
use std::collections::HashMap;
use std::sync::Arc;

/// The flow object of one run.
#[derive(Clone)]
pub(crate) struct FlowObject {
    /// `$trigger`, and its jq value once a program reads it.
    pub(crate) trigger: Arc<Value>,
    pub(crate) trigger_val: std::sync::OnceLock<Val>,
    /// How deep in `flow` steps the run is (`$trigger.depth`).
    pub(crate) depth: u64,
    pub(crate) last: Lazy,
    pub(crate) accountability: Lazy,
    pub(crate) entries: HashMap<String, Lazy>,
    /// The event that started the run, if an event did.
    pub(crate) event: Option<Value>,
    /// `$tokens`: tokens set by the envelopes that ran (an object).
    pub(crate) tokens: Lazy,
    /// `$env`: the environment variables the flow lists under `env` (those
    /// set), read when the run starts or continues; never recorded.
    pub(crate) env: Lazy,
}

impl FlowObject {
    /// The flow object before any step has run.
    pub(crate) fn new(trigger: Arc<Value>, accountability: Lazy) -> Self {
        Self {
            trigger_val: std::sync::OnceLock::new(),
            depth: trigger.get("depth").and_then(Value::as_u64).unwrap_or(0),
            last: Lazy::new(Value::Null),
            accountability,
            entries: HashMap::new(),
            event: None,
            tokens: Lazy::new(Value::Object(Map::new())),
            env: Lazy::new(Value::Object(Map::new())),
            trigger,
        }
    }

    /// The flow object with `$env` read for `flow`.
    pub(crate) fn with_env(mut self, flow: &Flow) -> Self {
        if !flow.env.is_empty() {
            self.env = env_of(flow);
        }
        self
    }

    pub(crate) fn add_tokens(&mut self, t: &Map<String, Value>) {
        let mut tokens = match self.tokens.json() {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        tokens.extend(t.clone());
        self.tokens = Lazy::new(Value::Object(tokens));
    }
}

impl Scope for FlowObject {
    fn get(&self, name: &str) -> Option<Val> {
        match name {
            "trigger" => Some(
                self.trigger_val
                    .get_or_init(|| to_val(&self.trigger))
                    .clone(),
            ),
            "last" => Some(self.last.val()),
            "accountability" => Some(self.accountability.val()),
            "tokens" => Some(self.tokens.val()),
            "env" => Some(self.env.val()),
            key => self.entries.get(key).map(Lazy::val),
        }
    }

    fn get_json(&self, name: &str) -> Option<&Value> {
        match name {
            "trigger" => Some(&self.trigger),
            "last" => Some(self.last.json()),
            "accountability" => Some(self.accountability.json()),
            "tokens" => Some(self.tokens.json()),
            "env" => Some(self.env.json()),
            key => self.entries.get(key).map(Lazy::json),
        }
    }
}

/// `$env` of a run of `flow`: each listed variable that is set (as text;
/// one that is not valid Unicode is left out like one not set).
pub(crate) fn env_of(flow: &Flow) -> Lazy {
    let vars = flow
        .env
        .iter()
        .filter_map(|k| Some((k.clone(), Value::String(std::env::var(k).ok()?))))
        .collect();
    Lazy::new(Value::Object(vars))
}

/// `$last` or a step's result in the flow object: JSON, converted for jq
/// the first time a program reads it (most are never read: converting
/// every step's result was a good part of an import's work per record).
/// A step's result is shared with its record, not copied.
#[derive(Clone)]
pub(crate) struct Lazy(Arc<(Held, std::sync::OnceLock<Val>)>);

/// The JSON of a [`Lazy`]: its own, or shared.
enum Held {
    Own(Value),
    Shared(Arc<Value>),
}

impl Lazy {
    pub(crate) fn new(v: Value) -> Self {
        Self(Arc::new((Held::Own(v), std::sync::OnceLock::new())))
    }

    pub(crate) fn shared(v: Arc<Value>) -> Self {
        Self(Arc::new((Held::Shared(v), std::sync::OnceLock::new())))
    }

    pub(crate) fn json(&self) -> &Value {
        match &self.0.0 {
            Held::Own(v) => v,
            Held::Shared(v) => v,
        }
    }

    pub(crate) fn val(&self) -> Val {
        self.0.1.get_or_init(|| to_val(self.json())).clone()
    }
}
