//! A step type run once outside any engine, as attempt 1 of one step of
//! one run: for the tests and benchmarks of step types, in this crate and
//! in the connectors' (which would otherwise each build the whole
//! [`ActionCx`] by hand).

use crate::action::Inbox;
use crate::{ActionCx, ActionError, DynAction, Outcome};
use serde_json::Value;
use sluice_expr::{Limits, MapScope, Program};
use std::collections::BTreeMap;

/// What a step run once sees: its run, its key, its input, the flow's
/// connections and its compiled expression options, where notifications
/// go. Everything else is empty (no flow object, no hooks, no transaction)
/// and expressions have the default limits.
pub struct Once<'a> {
    /// The run's id (its idempotency key is `RUN/STEP/0/1`).
    pub run_id: &'a str,
    /// The step's key.
    pub step: &'a str,
    /// Its input.
    pub input: &'a Value,
    /// The flow's `connections`.
    pub connections: &'a BTreeMap<String, Value>,
    /// Its expression options, compiled.
    pub expressions: &'a BTreeMap<String, Program>,
    /// Where `notify` sends.
    pub inbox: Option<&'a dyn Inbox>,
}

impl Once<'_> {
    /// Run `action` with `options`.
    pub async fn run(
        &self,
        action: &dyn DynAction,
        options: &Value,
    ) -> Result<Outcome, ActionError> {
        let scope = MapScope::default();
        let limits = Limits::default();
        let deferred = BTreeMap::new();
        let program_input = sluice_expr::Input::json(self.input);
        let key = format!("{}/{}/0/1", self.run_id, self.step);
        let cx = ActionCx {
            run_id: self.run_id,
            step_key: self.step,
            program_input: &program_input,
            scope: &scope,
            expressions: self.expressions,
            limits: &limits,
            connections: self.connections,
            deferred: &deferred,
            batch: None,
            wake: None,
            attempt: 1,
            idempotency_key: &key,
            hooks: None,
            flow_tx: None,
            calls: None,
            inbox: self.inbox,
        };
        action.run_json(cx, options).await
    }
}

/// Run core step type `kind` once with `options` on `input`, as step
/// `step` of run `r`.
#[cfg(test)]
pub(crate) async fn run_step(
    kind: &str,
    step: &str,
    options: Value,
    input: Value,
    exprs: BTreeMap<String, Program>,
    inbox: Option<&dyn Inbox>,
) -> Result<Outcome, ActionError> {
    let reg = crate::Registry::core();
    let entry = reg
        .get(kind)
        .ok_or_else(|| ActionError::flow(format!("no step type `{kind}`")))?;
    let once = Once {
        run_id: "r",
        step,
        input: &input,
        connections: &BTreeMap::new(),
        expressions: &exprs,
        inbox,
    };
    once.run(entry.action.as_ref(), &options).await
}
