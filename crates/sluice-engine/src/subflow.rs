//! Runs that a step starts: a `flow` step's run of another flow, and the
//! runs of data hooks; recorded runs get ids made from the step's attempt,
//! so that a step run again after a restart finds the run it started.

use crate::cursor::{Cursor, Mode, StepCx};
use crate::engine::Engine;
use crate::flow_object::FlowObject;
use crate::run::{EngineError, MAX_FLOW_DEPTH, RunRequest, RunResult, StepFailure};
use crate::window::{Pace, run_paced};
use serde_json::{Value, json};
use sluice_action::{ActionError, Blame, BoxFuture, Iteration};
use sluice_expr::data::{into_val, to_json};
use sluice_model::Flow;
use sluice_store::{RunStatus, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// How a run that a step started ended (or that it started, when the step
/// does not wait).
pub(crate) struct ChildEnd {
    pub(crate) run_id: String,
    pub(crate) status: RunStatus,
    pub(crate) output: Option<Value>,
    pub(crate) failure: Option<StepFailure>,
}

impl ChildEnd {
    pub(crate) fn started(run_id: String) -> Self {
        Self {
            run_id,
            status: RunStatus::Running,
            output: None,
            failure: None,
        }
    }

    pub(crate) fn of(r: RunResult) -> Self {
        Self {
            run_id: r.run_id,
            status: r.status,
            output: r.output.as_ref().map(to_json),
            failure: r.failure,
        }
    }
}

/// A `flow` step's result from the run it started: its output, or why not.
pub(crate) fn child_result(
    flow_id: &str,
    status: RunStatus,
    output: Option<Value>,
    error: Option<String>,
) -> Result<Value, ActionError> {
    match status {
        RunStatus::Succeeded => Ok(output.unwrap_or(Value::Null)),
        other => Err(ActionError {
            // A run stopped at an incident needs a person, as this one does.
            blame: if other == RunStatus::Incident {
                Blame::Data
            } else {
                Blame::External
            },
            message: format!(
                "the run of flow `{flow_id}` {}: {}",
                other.as_str(),
                error.unwrap_or_default()
            ),
            retry_after_ms: None,
            incident: false,
        }),
    }
}

impl<S: Store> Engine<S> {
    /// Carry out a `flow` step: start a run of `flow_id` (a flow whose
    /// trigger is `flow`) and, with `wait`, drive it to its end here; its
    /// output is the step's result. The run's id is made from the step's
    /// idempotency key, so a step that runs again after a restart finds the
    /// run it started rather than starting a second one.
    pub(crate) fn subflow<'a>(
        &'a self,
        parent: &'a Flow,
        fo: &'a FlowObject,
        scx: &'a StepCx<'a>,
        flow_id: &'a str,
        input: Value,
        wait: bool,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let target = self.flow_target(flow_id)?;
            let trigger = json!({ "body": input });
            let id = format!("{}-{}-{}", scx.run_id, scx.step_key, scx.attempt);
            let end = self
                .child_run(parent, fo, scx, target, trigger, input, id, wait)
                .await?;
            if !wait {
                return Ok(json!({ "runId": end.run_id }));
            }
            child_result(
                flow_id,
                end.status,
                end.output,
                end.failure.map(|f| f.message),
            )
        })
    }

    /// Carry out a `flow` step with an `iterationMode`: a run of `flow_id`
    /// per element of `input`, at the mode's pace, each waited for. The
    /// result is their outputs in the elements' order; the first element
    /// (in order) whose run did not succeed fails the step, and no element
    /// starts after a failure. An element's run id is the step's with the
    /// element's index, so a step that runs again after a restart finds
    /// the runs it started.
    pub(crate) fn subflows<'a>(
        &'a self,
        parent: &'a Flow,
        fo: &'a FlowObject,
        scx: &'a StepCx<'a>,
        flow_id: &'a str,
        input: Value,
        each: Iteration,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let Value::Array(items) = input else {
                return Err(ActionError::data(format!(
                    "`iterationMode` runs flow `{flow_id}` once per element of a list; the input is {}",
                    sluice_expr::value::kind(&input)
                )));
            };
            let target = self.flow_target(flow_id)?;
            let pace = match each {
                Iteration::Serial => Pace::Window(1),
                Iteration::Batch(n) => Pace::Batch(n),
                Iteration::Parallel(n) => Pace::Window(n),
            };
            let n = items.len();
            let ended = run_paced(
                n,
                pace,
                |i| {
                    let input = items[i].clone();
                    let trigger = json!({ "body": input, "index": i });
                    let id = format!("{}-{}-{}-{i}", scx.run_id, scx.step_key, scx.attempt);
                    let target = target.clone();
                    async move {
                        let end = self
                            .child_run(parent, fo, scx, target, trigger, input, id, true)
                            .await?;
                        child_result(
                            flow_id,
                            end.status,
                            end.output,
                            end.failure.map(|f| f.message),
                        )
                    }
                },
                Result::is_err,
            )
            .await;
            let mut out = Vec::with_capacity(n);
            for (i, r) in ended {
                match r {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        return Err(ActionError {
                            blame: e.blame,
                            message: format!("element {} of {n}: {}", i + 1, e.message),
                            retry_after_ms: None,
                            incident: false,
                        });
                    }
                }
            }
            Ok(Value::Array(out))
        })
    }

    /// The flow a `flow` step names, if a step may start it.
    fn flow_target(&self, flow_id: &str) -> Result<Arc<Flow>, ActionError> {
        let lookup = self.flows.read().ok().and_then(|f| f.lookup.clone());
        let target = lookup
            .and_then(|l| l.flow(flow_id))
            .ok_or_else(|| ActionError::flow(format!("there is no flow `{flow_id}` to start")))?;
        if target.trigger.kind != "flow" {
            return Err(ActionError::flow(format!(
                "flow `{flow_id}` has a `{}` trigger; a flow step starts only flows whose trigger is `flow`",
                target.trigger.kind
            )));
        }
        if !target.enabled {
            return Err(ActionError::flow(format!(
                "flow `{flow_id}` is disabled (`enabled: false` in its file); no run of it is started"
            )));
        }
        Ok(target)
    }

    /// Start a run of `target` for a step (a `flow` step, or a data hook of
    /// a change the step makes) and, with `wait`, drive it to its end here.
    /// Its `$trigger` is `trigger` with the step that started it and how
    /// deep such runs nest (`flow`, `run`, `step`, `depth`). A recorded
    /// run's id is `id` (made from the step's attempt), so that a step that
    /// runs again after a restart finds the run it started rather than
    /// starting a second one; a step of a run that is not recorded (an
    /// import's record) runs the other flow unrecorded too.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn child_run<'a>(
        &'a self,
        parent: &'a Flow,
        fo: &'a FlowObject,
        scx: &'a StepCx<'a>,
        target: Arc<Flow>,
        mut trigger: Value,
        input: Value,
        id: String,
        wait: bool,
    ) -> BoxFuture<'a, Result<ChildEnd, ActionError>> {
        Box::pin(async move {
            let flow_id = target.id.clone();
            if scx.depth >= MAX_FLOW_DEPTH {
                return Err(ActionError::flow(format!(
                    "flow steps and data hooks nest runs {MAX_FLOW_DEPTH} deep here; a flow that starts itself without end is stopped"
                )));
            }
            if let Value::Object(t) = &mut trigger {
                t.insert("flow".into(), json!(parent.id));
                t.insert("run".into(), json!(scx.run_id));
                t.insert("step".into(), json!(scx.step_key));
                t.insert("depth".into(), json!(scx.depth + 1));
            }
            let accountability = to_json(&fo.accountability);
            let panicked = |e: tokio::task::JoinError| ActionError {
                blame: Blame::Bug,
                message: format!("the run of flow `{flow_id}` panicked: {e}"),
                retry_after_ms: None,
                incident: false,
            };
            let store_err = |e: EngineError| ActionError {
                blame: Blame::Store,
                message: e.to_string(),
                retry_after_ms: None,
                incident: false,
            };
            if !scx.recorded {
                let child =
                    FlowObject::new(into_val(trigger), fo.accountability.clone()).with_env(&target);
                let mode = Mode {
                    recorded: false,
                    batch: None,
                    output: true,
                };
                let engine = self.clone();
                // Each run on a task of its own, so nesting does not deepen the stack.
                let task = tokio::spawn(async move {
                    engine
                        .drive(
                            &target,
                            Cursor::new(String::new()),
                            child,
                            into_val(input),
                            0,
                            0,
                            mode,
                        )
                        .await
                });
                if !wait {
                    return Ok(ChildEnd::started(String::new()));
                }
                let r = task.await.map_err(panicked)?.map_err(store_err)?;
                return Ok(ChildEnd::of(r));
            }
            let req = RunRequest {
                trigger: into_val(trigger),
                input: Some(into_val(input)),
                accountability,
                event: None,
            };
            match self.start_as(&target, req, id.clone()).await {
                Ok(started) if !wait => {
                    let engine = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = engine.finish(&target, started).await {
                            sluice_action::warn!(
                                "sluice: a run of flow `{}` stopped: {e}",
                                target.id
                            );
                        }
                    });
                    return Ok(ChildEnd::started(id));
                }
                Ok(started) => {
                    let engine = self.clone();
                    let r = tokio::spawn(async move { engine.finish(&target, started).await })
                        .await
                        .map_err(panicked)?
                        .map_err(store_err)?;
                    if r.status != RunStatus::Waiting {
                        return Ok(ChildEnd::of(r));
                    }
                }
                // The step ran before (the process stopped): that run is
                // the step's.
                Err(EngineError::Store(StoreError::Conflict(_))) if !wait => {
                    return Ok(ChildEnd::started(id));
                }
                Err(EngineError::Store(StoreError::Conflict(_))) => {}
                Err(e) => return Err(store_err(e)),
            }
            // The run is suspended, or driven elsewhere: wait for its end.
            self.ended_run(id).await.map_err(store_err)
        })
    }

    /// Wait for run `id`, driven elsewhere or suspended, to end (or stop
    /// at an incident).
    async fn ended_run(&self, id: String) -> Result<ChildEnd, EngineError> {
        let mut pause = Duration::from_millis(20);
        loop {
            let d = self
                .store
                .get_run(&id)
                .await?
                .ok_or_else(|| StoreError::NoSuchRun(id.clone()))?;
            let status = d.summary.status;
            if status.is_final() || status == RunStatus::Incident {
                return Ok(ChildEnd {
                    run_id: id,
                    status,
                    output: d.output.as_ref().map(to_json),
                    failure: d.summary.error.map(|message| StepFailure {
                        step: d.summary.error_step.unwrap_or_default(),
                        message,
                        blame: Blame::External,
                    }),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}
