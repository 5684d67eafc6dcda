//! Data hooks of one step: the `event`-triggered flows its changes start,
//! which connectors ask through [`sluice_action::hooks::DataHooks`].

use crate::cursor::StepCx;
use crate::engine::Engine;
use crate::flow_object::FlowObject;
use crate::subflow::ChildEnd;
use serde_json::{Map, Value};
use sluice_action::hooks::{Change, ChangeOp, DataHooks, EventTrigger, When};
use sluice_action::{ActionError, Blame, BoxFuture};
use sluice_model::Flow;
use sluice_store::{RunStatus, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The data hooks of one step: the `event`-triggered flows its SQL changes
/// start. A hook's run is a child of the step, like a `flow` step's; its id
/// is made from the step's attempt and the change's place among the step's
/// changes, so a step run again after a restart finds its hooks' runs.
pub(crate) struct StepHooks<'a, S: Store> {
    pub(crate) engine: &'a Engine<S>,
    pub(crate) hooks: Arc<Vec<(EventTrigger, Arc<Flow>)>>,
    pub(crate) parent: &'a Flow,
    pub(crate) fo: &'a FlowObject,
    pub(crate) scx: &'a StepCx<'a>,
    /// Changes asked about so far.
    pub(crate) seq: AtomicU32,
}

impl<S: Store> StepHooks<'_, S> {
    pub(crate) fn heard<'h>(
        &'h self,
        when: When,
        c: &'h Change,
    ) -> impl Iterator<Item = &'h (EventTrigger, Arc<Flow>)> + 'h {
        self.hooks
            .iter()
            .filter(move |(t, _)| t.listens(when, c.op, &c.connection, &c.collection))
    }

    pub(crate) fn child_id(&self, when: When, n: u32, flow: &Flow) -> String {
        let s = self.scx;
        format!(
            "{}-{}-{}-{}{n}-{}",
            s.run_id,
            s.step_key,
            s.attempt,
            when.as_str(),
            flow.id
        )
    }
}

/// The error of a change a before-hook's run refused.
pub(crate) fn refused(flow: &Flow, end: ChildEnd) -> ActionError {
    let (blame, message) = match end.failure {
        // The hook could not do its work: worth retrying.
        Some(f) if matches!(f.blame, Blame::External | Blame::Store) => {
            (Blame::External, f.message)
        }
        Some(f) => (Blame::Data, f.message),
        None => (Blame::Data, String::new()),
    };
    let run = if end.run_id.is_empty() {
        String::new()
    } else {
        format!("run {}, ", end.run_id)
    };
    ActionError {
        blame,
        message: format!(
            "the change was refused by before-hook flow `{}` ({run}{}): {message}",
            flow.id,
            end.status.as_str()
        ),
        retry_after_ms: None,
        incident: false,
    }
}

impl<S: Store> DataHooks for StepHooks<'_, S> {
    fn listens(&self, when: When, op: ChangeOp, connection: &str, collection: &str) -> bool {
        self.hooks
            .iter()
            .any(|(t, _)| t.listens(when, op, connection, collection))
    }

    fn before<'b>(
        &'b self,
        change: Change,
    ) -> BoxFuture<'b, Result<Map<String, Value>, ActionError>> {
        Box::pin(async move {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut payload = change.payload.clone();
            for (t, flow) in self.heard(When::Before, &change) {
                // Each hook sees the fields the hooks before it let through.
                let mut c = change.clone();
                c.payload = payload.clone();
                let run = self.engine.child_run(
                    self.parent,
                    self.fo,
                    self.scx,
                    flow.clone(),
                    c.trigger(When::Before),
                    Value::Object(payload.clone()),
                    self.child_id(When::Before, n, flow),
                    true,
                );
                // The run goes on, on its own, when the change stops waiting.
                let end = tokio::time::timeout(Duration::from_millis(t.timeout_ms), run)
                    .await
                    .map_err(|_| {
                        ActionError::external(format!(
                            "the change was refused: before-hook flow `{}` did not end within {} ms",
                            flow.id, t.timeout_ms
                        ))
                    })??;
                if end.status != RunStatus::Succeeded {
                    return Err(refused(flow, end));
                }
                if t.replace_payload {
                    payload = match end.output {
                        Some(Value::Object(m)) => m,
                        other => {
                            return Err(ActionError::data(format!(
                                "before-hook flow `{}` replaces the payload, but its output is {} rather than an object of fields",
                                flow.id,
                                other.map_or("nothing", |v| sluice_expr::value::kind(&v))
                            )));
                        }
                    };
                }
            }
            Ok(payload)
        })
    }

    fn after<'b>(&'b self, changes: Vec<Change>) -> BoxFuture<'b, Vec<String>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            for c in &changes {
                let n = self.seq.fetch_add(1, Ordering::Relaxed);
                let input = c
                    .row
                    .clone()
                    .or_else(|| c.previous.clone())
                    .unwrap_or_default();
                for (_, flow) in self.heard(When::After, c) {
                    let started = self
                        .engine
                        .child_run(
                            self.parent,
                            self.fo,
                            self.scx,
                            flow.clone(),
                            c.trigger(When::After),
                            Value::Object(input.clone()),
                            self.child_id(When::After, n, flow),
                            false,
                        )
                        .await;
                    if let Err(e) = started {
                        problems.push(format!(
                            "after-hook flow `{}` of the {} in `{}` did not start: {e}",
                            flow.id,
                            c.op.as_str(),
                            c.collection
                        ));
                    }
                }
            }
            problems
        })
    }
}
