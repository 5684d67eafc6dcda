//! The flow object of a run (SEMANTICS.md section 1): `$trigger`, `$last`,
//! `$accountability`, `$tokens`, `$env` and each executed step's result by
//! its key, held as the jq values programs read (shared with the run's
//! records, never copied).

use serde_json::{Map, Value};
use sluice_expr::data;
use sluice_expr::{Scope, Val};
use sluice_model::Flow;
use std::collections::HashMap;

/// The flow object of one run.
#[derive(Clone)]
pub(crate) struct FlowObject {
    /// `$trigger`.
    pub(crate) trigger: Val,
    /// How deep in `flow` steps the run is (`$trigger.depth`).
    pub(crate) depth: u64,
    pub(crate) last: Val,
    pub(crate) accountability: Val,
    pub(crate) entries: HashMap<String, Val>,
    /// The event that started the run, if an event did.
    pub(crate) event: Option<Val>,
    /// `$tokens`: tokens set by the envelopes that ran (an object).
    pub(crate) tokens: Val,
    /// `$env`: the environment variables the flow lists under `env` (those
    /// set), read when the run starts or continues; never recorded.
    pub(crate) env: Val,
}

impl FlowObject {
    /// The flow object before any step has run.
    pub(crate) fn new(trigger: Val, accountability: Val) -> Self {
        let depth = match data::field(&trigger, "depth") {
            Some(Val::Num(n)) => n.as_isize().and_then(|d| u64::try_from(d).ok()),
            _ => None,
        };
        Self {
            depth: depth.unwrap_or(0),
            last: Val::Null,
            accountability,
            entries: HashMap::new(),
            event: None,
            tokens: Val::obj(Default::default()),
            env: Val::obj(Default::default()),
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
        let mut tokens = match &self.tokens {
            Val::Obj(m) => (**m).clone(),
            _ => Default::default(),
        };
        tokens.extend(
            t.iter()
                .map(|(k, v)| (k.as_str().into(), sluice_expr::to_val(v))),
        );
        self.tokens = Val::obj(tokens);
    }
}

impl Scope for FlowObject {
    fn get(&self, name: &str) -> Option<Val> {
        match name {
            "trigger" => Some(self.trigger.clone()),
            "last" => Some(self.last.clone()),
            "accountability" => Some(self.accountability.clone()),
            "tokens" => Some(self.tokens.clone()),
            "env" => Some(self.env.clone()),
            key => self.entries.get(key).cloned(),
        }
    }
}

/// `$env` of a run of `flow`: each listed variable that is set (as text;
/// one that is not valid Unicode is left out like one not set).
pub(crate) fn env_of(flow: &Flow) -> Val {
    data::obj_val(
        flow.env
            .iter()
            .filter_map(|k| Some((k.as_str(), Val::from(std::env::var(k).ok()?)))),
    )
}
