//! Fan-out: a step that emits its results individually runs the steps
//! after it once per item, each item in a run of its own.

use crate::cursor::{Cursor, Mode};
use crate::engine::Engine;
use crate::flow_object::FlowObject;
use crate::run::{EngineError, RunResult, StepFailure};
use crate::window::{Pace, run_paced};
use sluice_action::{Blame, BoxFuture};
use sluice_expr::Val;
use sluice_model::{Flow, Step};
use sluice_store::{NewRun, RunStatus, RunUpdate, StepRecord, Store, new_run_id, now_micros};

impl<S: Store> Engine<S> {
    /// A step emitted its results individually: the steps after it run once
    /// per item, each item in a run of its own (linked to this one), so that
    /// each has its own state data and run log and can fail, or stop at an
    /// incident and be resumed, without hiding the others. This run then ends:
    /// succeeded with the list of the items' outputs when every item
    /// succeeded, failed otherwise, naming each failed item and its run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fan_out<'a>(
        &'a self,
        flow: &'a Flow,
        run_id: String,
        record: StepRecord,
        fo: &'a FlowObject,
        step: &'a Step,
        items: (Vec<(Val, Val)>, usize),
        next: Option<usize>,
        mode: Mode<'a>,
    ) -> BoxFuture<'a, Result<RunResult, EngineError>> {
        let rec = mode.recorded;
        // Boxed with its `Send` stated: the items' runs drive the flow again.
        Box::pin(async move {
            let running = RunUpdate {
                status: RunStatus::Running,
                state: record.input.clone(),
                next_step: None,
                output: None,
                error: None,
                error_step: None,
                ended_at: None,
            };
            if rec {
                self.store.record_step(&record, &running).await?;
            }
            let (items, concurrency) = items;
            let count = items.len();
            let Some(start) = next else {
                // Nothing after the step: the items are the outputs.
                let outputs = items.into_iter().map(|(_, state)| state).collect();
                return self
                    .fanned_in(run_id, record, step, count, outputs, Vec::new(), rec)
                    .await;
            };
            // The item runs are made in order, then driven `concurrency` at
            // a time.
            let mut runs = Vec::with_capacity(count);
            for (k, (item, state)) in items.into_iter().enumerate() {
                let child_id = if rec { new_run_id() } else { String::new() };
                if rec {
                    self.store
                        .create_run(&NewRun {
                            id: child_id.clone(),
                            flow_id: flow.id.clone(),
                            trigger: fo.trigger.clone(),
                            input: state.clone(),
                            next_step: Some(flow.steps[start].key.clone()),
                            started_at: now_micros(),
                            flow_version: Some(flow.version.clone()),
                            accountability: sluice_expr::data::to_json(&fo.accountability),
                            parent: Some((run_id.clone(), k as i64)),
                        })
                        .await?;
                }
                // Driven from now on (a cancel reaches it, and no scan for
                // runs nobody drives takes it while it waits for its turn).
                let driving = rec.then(|| self.drives(&child_id));
                runs.push(Some((child_id, item, state, driving)));
            }
            let ended = run_paced(
                count,
                Pace::Window(concurrency),
                |k| {
                    let (child_id, item, state, driving) = runs[k].take().unwrap_or_default();
                    let mut child = fo.clone();
                    child.entries.insert(step.key.clone(), item.clone());
                    child.last = item;
                    self.drive(
                        flow,
                        Cursor {
                            item: k as i64,
                            driving,
                            ..Cursor::new(child_id)
                        },
                        child,
                        state,
                        start,
                        0,
                        mode,
                    )
                },
                // Every item runs, whatever the others do.
                |_| false,
            )
            .await;
            let mut outputs = Vec::with_capacity(count);
            let mut failures = Vec::new();
            for (k, r) in ended {
                let r = r?;
                match r.status {
                    RunStatus::Succeeded => outputs.push(r.output.unwrap_or(Val::Null)),
                    other => failures.push(format!(
                        "item {} (run {}) {}: {}",
                        k + 1,
                        r.run_id,
                        other.as_str(),
                        r.failure.map(|f| f.message).unwrap_or_default()
                    )),
                }
            }
            self.fanned_in(run_id, record, step, count, outputs, failures, rec)
                .await
        })
    }

    /// The end of a fanned-out run: succeeded with the items' outputs, or
    /// failed naming the items that did not succeed.
    #[allow(clippy::too_many_arguments)]
    async fn fanned_in(
        &self,
        run_id: String,
        record: StepRecord,
        step: &Step,
        count: usize,
        outputs: Vec<Val>,
        failures: Vec<String>,
        rec: bool,
    ) -> Result<RunResult, EngineError> {
        {
            let ok = failures.is_empty();
            let message = (!ok).then(|| {
                format!(
                    "{} of {count} items did not succeed: {}",
                    failures.len(),
                    failures.join("; ")
                )
            });
            let output = Val::Arr(outputs.into());
            if rec {
                self.store
                    .update_run(
                        &run_id,
                        &RunUpdate::ended(
                            record.input.clone(),
                            ok.then(|| output.clone()),
                            message.clone(),
                            (!ok).then(|| step.key.clone()),
                        ),
                    )
                    .await?;
            }
            Ok(RunResult {
                wait: None,
                last: if ok { output.clone() } else { Val::Null },
                run_id,
                status: if ok {
                    RunStatus::Succeeded
                } else {
                    RunStatus::Failed
                },
                output: ok.then_some(output),
                failure: message.map(|m| StepFailure {
                    step: step.key.clone(),
                    message: m,
                    blame: Blame::Data,
                }),
            })
        }
    }
}
