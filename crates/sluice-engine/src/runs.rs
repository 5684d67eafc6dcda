//! A run's life outside its steps: starting it (recorded now, or with its
//! first write), recovering it after a crash, waking it from a wait,
//! resuming it from an incident, cancelling it, and rebuilding its flow
//! object from the run log.

use crate::cursor::{Cursor, Entry, Mode};
use crate::engine::{Driving, Engine};
use crate::filters::apply_event;
use crate::flow_object::FlowObject;
use crate::run::{EngineError, RunRequest, RunResult, Started, StepFailure, merge_patch};
use serde_json::Value;
use sluice_action::Blame;
use sluice_expr::data::{obj_val, str_val, to_json};
use sluice_expr::{Val, to_val};
use sluice_model::{EVENT_TRIGGERS, Flow, Transaction};
use sluice_store::{
    NewRun, RunStatus, RunUpdate, Store, StoreError, Wait, WaitKind, new_run_id, now_micros,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

impl<S: Store> Engine<S> {
    /// Run `flow` to completion. `source` is the flow file's text, kept in
    /// the store under its version so that the run can be resumed with it.
    pub async fn run(&self, flow: &Flow, req: RunRequest) -> Result<RunResult, EngineError> {
        let started = self.begin(flow, req).await?;
        self.finish(flow, started).await
    }

    /// A new run of `flow`, recorded with its first write rather than now:
    /// before its first step that is not pure, or with the records of its
    /// steps when all of them are. For a caller that answers only once the
    /// run ends (a synchronous webhook, `sluice run`): until then nobody has
    /// been told the run exists, and nothing outside has seen it, so a
    /// crash before that write loses nothing that was accepted.
    pub async fn begin(&self, flow: &Flow, req: RunRequest) -> Result<Started, EngineError> {
        let (new, mut started) = self.prepare_as(flow, req, new_run_id()).await?;
        started.new = Some(Box::new(new));
        Ok(started)
    }

    /// Record a new run of `flow` in the store, without running a step yet:
    /// once this returns, the run is durable (a restart recovers it, see
    /// [`Engine::recover`]) and [`Engine::finish`] drives it.
    pub async fn start(&self, flow: &Flow, req: RunRequest) -> Result<Started, EngineError> {
        self.start_as(flow, req, new_run_id()).await
    }

    /// [`Engine::start`] with the run's id given.
    pub(crate) async fn start_as(
        &self,
        flow: &Flow,
        req: RunRequest,
        run_id: String,
    ) -> Result<Started, EngineError> {
        let (new, started) = self.prepare_as(flow, req, run_id).await?;
        self.store.create_run(&new).await?;
        Ok(started)
    }

    /// A new run of `flow`, ready for the store to record (with other
    /// writes, such as a poll's snapshot, in one transaction) and then for
    /// [`Engine::finish`] to drive. Nothing is recorded but the flow's
    /// version.
    pub async fn prepare(
        &self,
        flow: &Flow,
        req: RunRequest,
    ) -> Result<(NewRun, Started), EngineError> {
        self.prepare_as(flow, req, new_run_id()).await
    }

    pub(crate) async fn prepare_as(
        &self,
        flow: &Flow,
        req: RunRequest,
        run_id: String,
    ) -> Result<(NewRun, Started), EngineError> {
        let mut input = req.input.unwrap_or_else(|| Val::obj(Default::default()));
        let event = req
            .event
            .filter(|_| EVENT_TRIGGERS.contains(&flow.trigger.kind.as_str()))
            .map(sluice_expr::data::into_val);
        let trigger = req.trigger;
        let mut fo = FlowObject::new(trigger.clone(), to_val(&req.accountability)).with_env(flow);
        if let Some(ev) = &event {
            // The trigger's eventDataFilter: the event meets the run's input
            // as an event state merges a consumed event.
            input = apply_event(
                &flow.trigger.event_filter,
                flow.trigger.data_only,
                ev,
                input,
                &fo,
                &self.limits,
            )
            .map_err(EngineError::Event)?;
        }
        self.save_version(flow).await?;
        let new = NewRun {
            id: run_id.clone(),
            flow_id: flow.id.clone(),
            trigger,
            input: input.clone(),
            next_step: flow.steps.first().map(|s| s.key.clone()),
            started_at: now_micros(),
            flow_version: Some(flow.version.clone()),
            accountability: req.accountability,
            parent: None,
        };
        fo.event = event;
        Ok((
            new,
            Started {
                driving: self.drives(&run_id),
                run_id,
                fo,
                input,
                new: None,
            },
        ))
    }

    /// Drive a run recorded by [`Engine::start`] to its end.
    pub async fn finish(&self, flow: &Flow, started: Started) -> Result<RunResult, EngineError> {
        let Started {
            run_id,
            fo,
            input,
            new,
            driving,
        } = started;
        let cursor = Cursor {
            new,
            driving: Some(driving),
            ..Cursor::new(run_id)
        };
        self.drive(flow, cursor, fo, input, 0, 0, Mode::RECORDED)
            .await
    }

    /// Cancel a run: the store marks it cancelled, and if this engine is
    /// driving it, it stops before its next step (a step under way finishes).
    pub async fn cancel(&self, run_id: &str) -> Result<(), EngineError> {
        self.store.cancel_run(run_id).await?;
        self.stop_driving(run_id);
        Ok(())
    }

    /// Whether this engine drives `run_id` now.
    pub fn drives_now(&self, run_id: &str) -> bool {
        self.driving
            .lock()
            .map(|d| d.contains_key(run_id))
            .unwrap_or(false)
    }

    /// Stop driving `run_id` before its next step, if this engine drives
    /// it (it was cancelled by another process sharing the store).
    pub fn stop_driving(&self, run_id: &str) {
        if let Ok(d) = self.driving.lock()
            && let Some(flag) = d.get(run_id)
        {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Note that this engine drives `run_id` until the guard is dropped, so
    /// that a cancel reaches it.
    pub(crate) fn drives(&self, run_id: &str) -> Driving {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut d) = self.driving.lock() {
            d.insert(run_id.to_owned(), flag.clone());
        }
        Driving {
            map: self.driving.clone(),
            run_id: run_id.to_owned(),
            flag,
        }
    }

    /// Continue a run that was running when the process stopped (a crash,
    /// `kill -9`), from the step it was at: steps whose record was committed
    /// are not run again; the step that was under way runs again (with the
    /// same attempt, so the same idempotency key). A run that is `waiting`
    /// waits until its wait is due (a sleep's end, a backoff's end, an event
    /// wait's timeout) and continues then, unless an event or another
    /// process wakes it first.
    ///
    /// A run that had fanned out (its items' runs are recovered on their
    /// own) cannot gather its items' outputs again: it ends failed, saying so.
    /// So does the run of an import (`sluice run --records`) whose process
    /// stopped: the import itself resumes when it is run again.
    /// A run whose step was begun again after [`MAX_RECOVERIES`] stops in a
    /// row, with no step recorded in between, ends failed instead of running
    /// it once more: the step may be what stops the process, which would
    /// otherwise stop at every start.
    pub async fn recover(&self, flow: &Flow, run_id: &str) -> Result<RunResult, EngineError> {
        let (mut detail, driving) = self.load_run(flow, run_id).await?;
        if detail.summary.status == RunStatus::Waiting {
            let wait = self.store.wait_of(run_id).await?;
            return match wait {
                Some(w) => self.await_wait(flow, w).await,
                // Claimed between the two reads: another caller drives it.
                None => {
                    self.moved_on(run_id.to_owned(), &FlowObject::new(Val::Null, Val::Null))
                        .await
                }
            };
        }
        if detail.summary.status != RunStatus::Running {
            return Err(EngineError::NotRunning {
                run: run_id.to_owned(),
                status: detail.summary.status.as_str(),
            });
        }
        if detail.next_step.is_none() {
            let message = if detail.accountability["source"] == "import" {
                "the process of this import stopped before its end; run the import again: one that writes through envelopes resumes after the last chunk it committed, one that writes nothing starts again from the first record"
            } else {
                "the process stopped while this run's items ran; each item's run was recovered on its own (see the runs with this run as parent)"
            }
            .to_owned();
            let last = detail.steps.last().map(|s| s.step_key.clone());
            self.store
                .update_run(
                    run_id,
                    &RunUpdate::ended(
                        detail.state.clone(),
                        None,
                        Some(message.clone()),
                        last.clone(),
                    ),
                )
                .await?;
            return Ok(RunResult {
                last: Val::Null,
                run_id: run_id.to_owned(),
                status: RunStatus::Failed,
                output: None,
                failure: Some(StepFailure {
                    step: last.unwrap_or_default(),
                    message,
                    blame: Blame::Store,
                }),
                wait: None,
            });
        }
        // Woken from a wait before it stopped: from that wake (the event
        // that ended it, or its time), not waiting again.
        let entry = match detail.woken.take() {
            Some(w) => Self::woken_entry(w.kind, w.since, w.event),
            None => Entry::Recovered,
        };
        self.continue_at(flow, detail, entry, None, driving).await
    }

    /// A suspended run: wait until `wait` is due, claim it and continue the
    /// run. Returns the run as `waiting` at once when the wait has no time
    /// (an event wait with no timeout), or when the process is stopping.
    pub async fn await_wait(&self, flow: &Flow, wait: Wait) -> Result<RunResult, EngineError> {
        let none = FlowObject::new(Val::Null, Val::Null);
        if wait.wake_at.is_none() {
            return Ok(RunResult {
                wait: Some(wait.clone()),
                ..RunResult::ended(wait.run_id, RunStatus::Waiting, &none, true)
            });
        }
        match self.sleep_then_claim(&wait).await? {
            Some(w) => self.continue_wait(flow, w, None).await,
            None => self.moved_on(wait.run_id, &none).await,
        }
    }

    /// Continue a run whose wait the caller claimed ([`Store::claim_wait`]):
    /// with the `event` that ended an event wait, or, with none, after its
    /// time passed (a sleep or backoff ended; an event wait timed out, which
    /// fails the step).
    pub async fn continue_wait(
        &self,
        flow: &Flow,
        wait: Wait,
        event: Option<Value>,
    ) -> Result<RunResult, EngineError> {
        let (detail, driving) = self.load_run(flow, &wait.run_id).await?;
        let entry = Self::woken_entry(wait.kind, wait.since, event);
        self.continue_at(flow, detail, entry, None, driving).await
    }

    /// How a run continues after a wait of `kind` begun at `since` ended
    /// (by `event`, or by its time).
    fn woken_entry(kind: WaitKind, since: i64, event: Option<Value>) -> Entry {
        match (kind, event) {
            (WaitKind::Sleep, _) => Entry::Woken(Value::Null, since),
            (WaitKind::Retry, _) => Entry::Fresh,
            (WaitKind::Event, Some(ev)) => Entry::Woken(ev, since),
            (WaitKind::Event, None) => Entry::TimedOut(since),
        }
    }

    /// Drive a run from the step the store has it at (with `state`, if given,
    /// instead of its stored state data); `driving`: its cancel flag, from
    /// [`Engine::load_run`].
    pub(crate) async fn continue_at(
        &self,
        flow: &Flow,
        detail: sluice_store::RunDetail,
        entry: Entry,
        state: Option<Val>,
        driving: Driving,
    ) -> Result<RunResult, EngineError> {
        let run_id = detail.summary.id.clone();
        if flow.transaction == Transaction::Flow {
            return self.restart(flow, detail, entry, state, driving).await;
        }
        let at = detail.next_step.clone().unwrap_or_default();
        let index = flow
            .step_index(&at)
            .ok_or_else(|| EngineError::NoSuchStep {
                run: run_id.clone(),
                step: at.clone(),
            })?;
        let incident = state.is_some();
        let fo = self.rebuild(flow, &detail, incident);
        // Failed attempts of this step at the end of the log came before.
        let failed = detail
            .steps
            .iter()
            .rev()
            .take_while(|r| r.step_key == at && !r.ok)
            .count();
        let cursor = Cursor {
            run_id,
            item: detail.parent.as_ref().map_or(0, |p| p.1),
            attempt: u32::try_from(failed).unwrap_or(u32::MAX - 1) + 1,
            entry,
            new: None,
            driving: Some(driving),
        };
        let n = detail.steps.len() as i64;
        let state = state.unwrap_or(detail.state);
        self.drive(flow, cursor, fo, state, index, n, Mode::RECORDED)
            .await
    }

    /// Drive a run of a `transaction: flow` flow again from its first step,
    /// with its input (or `input`, a resume's patched input): its writes
    /// went with its transaction, rolled back when it failed or when the
    /// process stopped. Its run log keeps the earlier steps' records.
    async fn restart(
        &self,
        flow: &Flow,
        detail: sluice_store::RunDetail,
        entry: Entry,
        input: Option<Val>,
        driving: Driving,
    ) -> Result<RunResult, EngineError> {
        let fo = first_flow_object(flow, &detail);
        let cursor = Cursor {
            run_id: detail.summary.id.clone(),
            item: detail.parent.as_ref().map_or(0, |p| p.1),
            attempt: 1,
            entry,
            new: None,
            driving: Some(driving),
        };
        // The run's transaction may have committed just before the process
        // stopped, before the store heard that the run succeeded.
        if let (Some(conn), Some(runs)) = (
            flow.transaction_connection(),
            self.registry.committed_runs(),
        ) {
            let done = runs
                .committed(&flow.connections, conn, &cursor.run_id)
                .await
                .map_err(|e| EngineError::Commit {
                    run: cursor.run_id.clone(),
                    message: e.message,
                })?;
            if let Some(output) = done {
                let output = sluice_expr::data::into_val(output);
                let end = RunUpdate::ended(output.clone(), Some(output.clone()), None, None);
                self.store.update_run(&cursor.run_id, &end).await?;
                let mut r = RunResult::ended(cursor.run_id, RunStatus::Succeeded, &fo, true);
                r.output = Some(output);
                return Ok(r);
            }
        }
        let n = detail.steps.len() as i64;
        let input = input.unwrap_or(detail.input);
        self.drive(flow, cursor, fo, input, 0, n, Mode::RECORDED)
            .await
    }

    /// A run of `flow`, from the store.
    /// With its cancel flag, taken before the run is read so that a cancel
    /// that comes before its drive starts still reaches it.
    pub(crate) async fn load_run(
        &self,
        flow: &Flow,
        run_id: &str,
    ) -> Result<(sluice_store::RunDetail, Driving), EngineError> {
        let driving = self.drives(run_id);
        let detail = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchRun(run_id.to_owned()))?;
        if detail.summary.flow_id != flow.id {
            return Err(EngineError::WrongFlow {
                run: run_id.to_owned(),
                expected: detail.summary.flow_id.clone(),
                given: flow.id.clone(),
            });
        }
        Ok((detail, driving))
    }

    /// The flow object of a run, rebuilt from its run log. A failed record
    /// that is followed by another attempt of the same step, or that is the
    /// last record of a run stopped at an incident, is an attempt that did
    /// not take effect: it is left out.
    pub(crate) fn rebuild(
        &self,
        flow: &Flow,
        detail: &sluice_store::RunDetail,
        incident: bool,
    ) -> FlowObject {
        let mut fo = first_flow_object(flow, detail);
        let n = detail.steps.len();
        for (i, r) in detail.steps.iter().enumerate() {
            let retried = !r.ok
                && ((incident && i + 1 == n)
                    || detail
                        .steps
                        .get(i + 1)
                        .is_some_and(|next| next.step_key == r.step_key));
            if retried {
                continue;
            }
            let v = if r.ok {
                r.result.clone().unwrap_or_default()
            } else {
                let error = r.error.as_deref().map_or(Val::Null, str_val);
                obj_val([("error", error)])
            };
            fo.entries.insert(r.step_key.clone(), v.clone());
            fo.last = v;
            if r.ok
                && r.kind == "envelope"
                && let Some(Value::Object(t)) = r
                    .result
                    .as_ref()
                    .and_then(|res| sluice_expr::data::field(res, "tokens"))
                    .map(to_json)
            {
                fo.add_tokens(&t);
            }
        }
        fo
    }

    /// Keep the flow's text in the store under its version (once per engine).
    pub(crate) async fn save_version(&self, flow: &Flow) -> Result<(), StoreError> {
        let known = self
            .saved_versions
            .lock()
            .map(|v| v.contains(&flow.version))
            .unwrap_or(false);
        if !known {
            self.store
                .save_flow_version(&flow.id, &flow.version, &flow.source.text)
                .await?;
            if let Ok(mut v) = self.saved_versions.lock() {
                v.insert(flow.version.clone());
            }
        }
        Ok(())
    }

    /// Continue a run stopped at an incident, from the step where it stopped,
    /// with its state data replaced by `patch` applied to it (a JSON Merge
    /// Patch, RFC 7396; a patch that is not an object replaces the state data
    /// whole). Steps that completed are not run again: their results are read
    /// back from the run log.
    pub async fn resume(
        &self,
        flow: &Flow,
        run_id: &str,
        patch: Option<&Value>,
    ) -> Result<RunResult, EngineError> {
        let (detail, driving) = self.load_run(flow, run_id).await?;
        if detail.summary.status != RunStatus::Incident {
            return Err(StoreError::NotResumable {
                run: run_id.to_owned(),
                status: detail.summary.status.as_str(),
            }
            .into());
        }
        let at = detail.next_step.clone().unwrap_or_default();
        if flow.step_index(&at).is_none() {
            return Err(EngineError::NoSuchStep {
                run: run_id.to_owned(),
                step: at,
            });
        }
        // A run in one transaction starts again from its first step: the
        // patch is to its input.
        let mut state = to_json(if flow.transaction == Transaction::Flow {
            &detail.input
        } else {
            &detail.state
        });
        if let Some(p) = patch {
            merge_patch(&mut state, p);
        }
        let state = sluice_expr::data::into_val(state);
        self.store.resume_run(run_id, &state).await?;
        self.continue_at(flow, detail, Entry::Fresh, Some(state), driving)
            .await
    }
}

/// A recorded run's flow object as it was before its first step: its
/// trigger, accountability, environment and (for an event trigger) event.
fn first_flow_object(flow: &Flow, detail: &sluice_store::RunDetail) -> FlowObject {
    let mut fo =
        FlowObject::new(detail.trigger.clone(), to_val(&detail.accountability)).with_env(flow);
    fo.event = EVENT_TRIGGERS
        .contains(&flow.trigger.kind.as_str())
        .then(|| detail.trigger.clone());
    fo
}
