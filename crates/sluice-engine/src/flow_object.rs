//! The flow object of a run (SEMANTICS.md section 1): `$trigger`, `$last`,
//! `$accountability`, `$tokens` and each executed step's result by its key,
//! kept as JSON and made jq values only when a program reads them.

use serde_json::{Map, Value};
use sluice_expr::{Scope, Val, to_val};
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
            trigger,
        }
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
            key => self.entries.get(key).map(Lazy::val),
        }
    }

    fn get_json(&self, name: &str) -> Option<&Value> {
        match name {
            "trigger" => Some(&self.trigger),
            "last" => Some(self.last.json()),
            "accountability" => Some(self.accountability.json()),
            "tokens" => Some(self.tokens.json()),
            key => self.entries.get(key).map(Lazy::json),
        }
    }
}

/// `$last` or a step's result in the flow object: JSON, converted for jq
/// the first time a program reads it (most are never read: converting
/// every step's result was a good part of an import's work per record).
#[derive(Clone)]
pub(crate) struct Lazy(Arc<(Value, std::sync::OnceLock<Val>)>);

impl Lazy {
    pub(crate) fn new(v: Value) -> Self {
        Self(Arc::new((v, std::sync::OnceLock::new())))
    }

    pub(crate) fn json(&self) -> &Value {
        &self.0.0
    }

    pub(crate) fn val(&self) -> Val {
        self.0.1.get_or_init(|| to_val(&self.0.0)).clone()
    }
}
