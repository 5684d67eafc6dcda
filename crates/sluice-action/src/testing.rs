//! What the unit tests of this crate share: a step type run once, as
//! attempt 1 of step `STEP` of run `r`, outside any engine.

use crate::action::Inbox;
use crate::{ActionCx, ActionError, Outcome, Registry};
use serde_json::Value;
use sluice_expr::{Limits, MapScope, Program};
use std::collections::BTreeMap;

/// Run core step type `kind` once with `options` on `input`.
pub(crate) async fn run_step(
    kind: &str,
    step: &str,
    options: Value,
    input: Value,
    exprs: BTreeMap<String, Program>,
    inbox: Option<&dyn Inbox>,
) -> Result<Outcome, ActionError> {
    let reg = Registry::core();
    let scope = MapScope::default();
    let limits = Limits::default();
    let connections = BTreeMap::new();
    let program_input = sluice_expr::Input::json(&input);
    let key = format!("r/{step}/0/1");
    let cx = ActionCx {
        run_id: "r",
        step_key: step,
        program_input: &program_input,
        scope: &scope,
        expressions: &exprs,
        limits: &limits,
        connections: &connections,
        deferred: &BTreeMap::new(),
        batch: None,
        wake: None,
        attempt: 1,
        idempotency_key: &key,
        hooks: None,
        flow_tx: None,
        calls: None,
        inbox,
    };
    reg.get(kind)
        .ok_or_else(|| ActionError::flow(format!("no step type `{kind}`")))?
        .action
        .run_json(cx, &options)
        .await
}
