//! The run driver: steps one after another from a position until the run
//! ends, stops at an incident or is suspended; each step's record and the
//! run's new position committed in one store transaction (pure steps'
//! records held and committed with the next write), retries with backoff,
//! sleeps and event waits suspended durably.

use crate::cursor::{Cursor, Entry, Held, Mode, StepCx};
use crate::engine::Engine;
use crate::flow_object::FlowObject;
use crate::retry::{after_ms, retry_delay};
use crate::run::{EngineError, MAX_RECOVERIES, RunResult, StepFailure};
use crate::step::{Done, Failed, Suspend};
use serde_json::Value;
use sluice_action::{ActionError, Blame};
use sluice_expr::Val;
use sluice_expr::data::{obj_val, str_val, to_json};
use sluice_model::{Flow, Next, Step, Transaction};
use sluice_store::{
    RunStatus, RunUpdate, StepRecord, Store, StoreError, Wait, WaitKind, now_micros,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A run as `drive` moves it from step to step.
pub(crate) struct Going<'a> {
    flow: &'a Flow,
    run_id: String,
    /// The fan-out item it runs, from 0.
    item: i64,
    /// The attempt of the step it is at, from 1.
    attempt: u32,
    /// How the step it is at is entered.
    entry: Entry,
    held: Held,
    fo: FlowObject,
    state: Val,
    /// The number of the next step record.
    seq: i64,
    mode: Mode<'a>,
    /// The run's one transaction under `transaction: flow` (dropped, and so
    /// rolled back, when the run ends other than succeeded).
    flow_tx: Option<sluice_action::FlowTx>,
}

impl Going<'_> {
    /// The run's position before `step`, for the records it holds.
    fn before(&self, step: &Step) -> RunUpdate {
        RunUpdate {
            status: RunStatus::Running,
            state: self.state.clone(),
            next_step: Some(step.key.clone()),
            output: None,
            error: None,
            error_step: None,
            ended_at: None,
        }
    }

    /// The run's end with `status`, as the caller is told it.
    fn ended(&mut self, status: RunStatus) -> RunResult {
        RunResult::ended(self.take_id(), status, &self.fo, self.mode.recorded)
    }

    /// End the run with `r`.
    fn finish(&mut self, r: RunResult) -> After {
        After::End(Box::new(r))
    }

    /// The run's id, taken: the run is over here.
    fn take_id(&mut self) -> String {
        std::mem::take(&mut self.run_id)
    }
}

/// Where a run goes after a step.
enum After {
    /// To this step (none: the run succeeded or stopped, already recorded).
    At(Option<usize>),
    /// To the same step again (woken, or its next attempt).
    Again,
    /// The run is over here (or suspended, or taken by another caller).
    End(Box<RunResult>),
    /// The run succeeded: its output is its state data.
    Succeeded,
}

impl<S: Store> Engine<S> {
    /// Run steps from `start` until the run ends, stops or is suspended.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn drive(
        &self,
        flow: &Flow,
        cursor: Cursor,
        fo: FlowObject,
        state: Val,
        start: usize,
        seq: i64,
        mode: Mode<'_>,
    ) -> Result<RunResult, EngineError> {
        let Cursor {
            run_id,
            item,
            attempt,
            entry,
            new,
            driving,
        } = cursor;
        let driving = mode
            .recorded
            .then(|| driving.unwrap_or_else(|| self.drives(&run_id)));
        let mut g = Going {
            flow,
            run_id,
            item,
            attempt,
            entry,
            held: Held {
                new,
                steps: Vec::new(),
            },
            fo,
            state,
            seq,
            mode,
            flow_tx: (flow.transaction == Transaction::Flow).then(sluice_action::FlowTx::default),
        };
        let mut pos = (start < flow.steps.len()).then_some(start);
        while let Some(i) = pos {
            let step = &flow.steps[i];
            if driving
                .as_ref()
                .is_some_and(|d| d.flag.load(Ordering::Relaxed))
            {
                // The steps it ran are recorded; the store keeps it cancelled.
                let at = g.before(step);
                self.write_held(&g.run_id, &mut g.held, None, &at).await?;
                let mut r = g.ended(RunStatus::Cancelled);
                r.failure = Some(StepFailure {
                    step: step.key.clone(),
                    message: format!("cancelled before step `{}`", step.key),
                    blame: Blame::Flow,
                });
                return Ok(r);
            }
            match self.one_step(&mut g, step).await? {
                After::At(next) => pos = next,
                After::Again => {}
                After::End(r) => return Ok(*r),
                After::Succeeded => {
                    let mut r = g.ended(RunStatus::Succeeded);
                    r.output = Some(g.state);
                    return Ok(r);
                }
            }
        }
        // A flow always has a step; a run that had none ends as it began.
        if g.mode.recorded {
            let end = RunUpdate::ended(g.state.clone(), Some(g.state.clone()), None, None);
            if !self.write_held(&g.run_id, &mut g.held, None, &end).await? {
                self.store.update_run(&g.run_id, &end).await?;
            }
        }
        let mut r = g.ended(RunStatus::Succeeded);
        r.output = Some(g.state);
        Ok(r)
    }

    /// Run `step` of the run `g` and record what it did: where the run goes
    /// next.
    async fn one_step(&self, g: &mut Going<'_>, step: &Step) -> Result<After, EngineError> {
        let rec = g.mode.recorded;
        // A step that is not pure runs only once the store has what
        // came before it.
        let pure = self.pure(step);
        if rec && !pure {
            let at = g.before(step);
            self.write_held(&g.run_id, &mut g.held, None, &at).await?;
        }
        // A pure step does only the engine's own work (templates, filters),
        // which could stop the process only through a bug (in Sluice or a
        // library it uses): begun again at three stops in a row, it is not
        // begun a fourth time. A step that waits on another
        // system is not counted: a server stopped while it waited (for a
        // lock, say) did not stop because of it.
        if matches!(g.entry, Entry::Recovered) && rec && pure {
            let count = self.store.count_recovery(&g.run_id).await?;
            if count >= MAX_RECOVERIES {
                let message = format!(
                    "the run was under way at step `{}` when the server stopped {count} times, with no step recorded in between; it is not continued again, in case that step is what stops the server (run it again once the cause is fixed)",
                    step.key
                );
                let end = RunUpdate::ended(
                    g.state.clone(),
                    None,
                    Some(message.clone()),
                    Some(step.key.clone()),
                );
                self.store.update_run(&g.run_id, &end).await?;
                let mut r = g.ended(RunStatus::Failed);
                r.failure = Some(StepFailure {
                    step: step.key.clone(),
                    message,
                    blame: Blame::Bug,
                });
                return Ok(g.finish(r));
            }
        }
        // The test of the guard above needs a step that stops the process.
        #[cfg(debug_assertions)]
        if rec && pure && std::env::var("SLUICE_TEST_ABORT_IN_STEP").is_ok_and(|k| k == step.key) {
            std::process::abort();
        }
        let key = if rec {
            format!("{}/{}/{}/{}", g.run_id, step.key, g.item, g.attempt)
        } else {
            String::new()
        };
        let started_at = match &g.entry {
            Entry::TimedOut(since) | Entry::Woken(_, since) => *since,
            Entry::Fresh | Entry::Recovered => now_micros(),
        };
        let outcome = match std::mem::take(&mut g.entry) {
            Entry::TimedOut(_) => Err(Failed {
                options: Val::Null,
                error: ActionError::external(format!(
                    "no event that matches arrived within the timeout of step `{}`",
                    step.key
                )),
                logs: Vec::new(),
                incident: false,
            }),
            e => {
                let wake = match &e {
                    Entry::Woken(v, _) => Some(v),
                    _ => None,
                };
                let scx = StepCx {
                    run_id: &g.run_id,
                    step_key: &step.key,
                    attempt: g.attempt,
                    key: &key,
                    wake,
                    batch: g.mode.batch,
                    depth: g.fo.depth,
                    recorded: rec,
                    output: g.mode.output,
                    flow_tx: g.flow_tx.as_ref(),
                };
                self.step(g.flow, step, &g.state, &g.fo, scx).await
            }
        };
        let ended_at = now_micros();
        if rec {
            metrics::histogram!("sluice_step_duration_seconds", "flow" => g.flow.id.clone(), "step" => step.key.clone())
                .record((ended_at - started_at) as f64 / 1e6);
        }
        // An unrecorded run's record is never written: its names are not
        // copied (a record of an import runs this once per step).
        let name = |s: &String| if rec { s.clone() } else { String::new() };
        let record = StepRecord {
            run_id: name(&g.run_id),
            seq: g.seq,
            step_key: name(&step.key),
            kind: name(&step.kind),
            ok: outcome.is_ok(),
            options: Val::Null,
            input: if rec { g.state.clone() } else { Val::Null },
            result: None,
            output: None,
            error: None,
            blame: None,
            logs: Vec::new(),
            started_at,
            ended_at,
        };
        match outcome {
            Ok(Done {
                suspend: Some(suspend),
                ..
            }) => self.suspended(g, step, suspend, started_at).await,
            Ok(done) => self.succeeded(g, step, done, record, pure).await,
            Err(failed) => self.failed(g, step, failed, record, pure).await,
        }
    }

    /// A step suspends its run (durably when the run is recorded): a sleep
    /// that ends here is the step run again, woken.
    async fn suspended(
        &self,
        g: &mut Going<'_>,
        step: &Step,
        suspend: Suspend,
        started_at: i64,
    ) -> Result<After, EngineError> {
        let (flow, run_id) = (g.flow, &g.run_id);
        let (wait, timer) = match suspend {
            Suspend::Sleep { until } => (
                Wait::timer(
                    run_id,
                    &flow.id,
                    &step.key,
                    WaitKind::Sleep,
                    until,
                    started_at,
                ),
                true,
            ),
            Suspend::Event {
                event_type,
                source,
                correlation,
                timeout_at,
            } => (
                Wait {
                    run_id: run_id.clone(),
                    flow_id: flow.id.clone(),
                    step_key: step.key.clone(),
                    kind: WaitKind::Event,
                    wake_at: timeout_at,
                    event_type,
                    source,
                    correlation: Value::Object(correlation),
                    since: started_at,
                },
                false,
            ),
        };
        if !g.mode.recorded {
            if !timer {
                // A wait for an event needs a recorded run to wake.
                let mut r = g.ended(RunStatus::Failed);
                r.failure = Some(StepFailure {
                    step: step.key.clone(),
                    message: format!(
                        "step `{}` (wait) waits for an event, which only a recorded run under `sluice serve` can receive",
                        step.key
                    ),
                    blame: Blame::Flow,
                });
                return Ok(g.finish(r));
            }
            self.sleep_until(wait.wake_at.unwrap_or(0)).await;
            g.entry = Entry::Woken(Value::Null, started_at);
            return Ok(After::Again);
        }
        if !self
            .written(&g.run_id, || self.store.suspend(None, &g.state, &wait))
            .await?
        {
            let r = self.moved_on(g.take_id(), &g.fo).await?;
            return Ok(g.finish(r));
        }
        if !timer {
            let mut r = g.ended(RunStatus::Waiting);
            r.wait = Some(wait);
            return Ok(g.finish(r));
        }
        match self.sleep_then_claim(&wait).await? {
            Some(_) => {
                g.entry = Entry::Woken(Value::Null, started_at);
                Ok(After::Again)
            }
            None => {
                let r = self.moved_on(g.take_id(), &g.fo).await?;
                Ok(g.finish(r))
            }
        }
    }

    /// A step succeeded: its result joins the flow object, its record is
    /// written (or held, when it is pure and the run goes on), and the run
    /// moves to its success path (or fans out over its items).
    async fn succeeded(
        &self,
        g: &mut Going<'_>,
        step: &Step,
        mut done: Done,
        mut record: StepRecord,
        pure: bool,
    ) -> Result<After, EngineError> {
        let rec = g.mode.recorded;
        g.seq += 1;
        g.attempt = 1;
        // The result is shared by the flow object and the step's record.
        let payload = done.result.take();
        let result = payload.clone().unwrap_or_default();
        g.fo.entries.insert(step.key.clone(), result.clone());
        if let Some(t) = &done.tokens {
            g.fo.add_tokens(t);
        }
        g.fo.last = result;
        g.state = done.state;
        let pos = match step.on_success {
            Next::Step(j) => Some(j),
            Next::End => None,
        };
        // The run's one transaction commits before the store says the run
        // succeeded (with the run's end recorded in it: a crash in between
        // is found out when the run starts again).
        if pos.is_none()
            && done.items.is_none()
            && let Some(tx) = &g.flow_tx
            && let Err(e) = tx.commit(g.run_id.clone(), to_json(&g.state)).await
        {
            let failed = Failed {
                options: done.options,
                error: ActionError {
                    blame: e.blame,
                    message: format!("the run's transaction did not commit: {}", e.message),
                    retry_after_ms: None,
                    incident: false,
                },
                logs: done.logs,
                incident: false,
            };
            return Box::pin(self.failed(g, step, failed, record, pure)).await;
        }
        record.options = done.options;
        record.result = payload;
        record.logs = done.logs;
        if let Some(items) = done.items {
            let r = self
                .fan_out(
                    g.flow,
                    g.take_id(),
                    record,
                    &g.fo,
                    step,
                    (items, done.concurrency),
                    pos,
                    g.mode,
                )
                .await?;
            return Ok(g.finish(r));
        }
        let finished = pos.is_none();
        if rec {
            let state = &g.state;
            record.output = Some(state.clone());
            let update = RunUpdate {
                status: if finished {
                    RunStatus::Succeeded
                } else {
                    RunStatus::Running
                },
                state: state.clone(),
                next_step: pos.map(|j| g.flow.steps[j].key.clone()),
                output: finished.then(|| state.clone()),
                error: None,
                error_step: None,
                ended_at: finished.then(now_micros),
            };
            if pure && !finished {
                g.held.steps.push(record);
            } else {
                self.write_held(&g.run_id, &mut g.held, Some(record), &update)
                    .await?;
            }
        }
        if !finished {
            return Ok(After::At(pos));
        }
        Ok(After::Succeeded)
    }

    /// A step failed: attempted again after a backoff when its `retry`
    /// says so, or else its error joins the flow object and the run moves
    /// to its failure path, stops at an incident, or fails.
    async fn failed(
        &self,
        g: &mut Going<'_>,
        step: &Step,
        failed: Failed,
        mut record: StepRecord,
        pure: bool,
    ) -> Result<After, EngineError> {
        let rec = g.mode.recorded;
        g.seq += 1;
        record.options = failed.options;
        record.error = Some(failed.error.message.clone());
        record.blame = Some(failed.error.blame.as_str().to_owned());
        record.logs = failed.logs;
        // `retry`: attempt it again after a backoff, durably.
        if let Some(ms) = retry_delay(step, &failed.error, failed.incident, g.attempt) {
            let wake_at = after_ms(ms);
            if rec {
                let wait = Wait::timer(
                    &g.run_id,
                    &g.flow.id,
                    &step.key,
                    WaitKind::Retry,
                    wake_at,
                    record.ended_at,
                );
                if !self
                    .written(&g.run_id, || {
                        self.store.suspend(Some(&record), &g.state, &wait)
                    })
                    .await?
                    || self.sleep_then_claim(&wait).await?.is_none()
                {
                    let r = self.moved_on(g.take_id(), &g.fo).await?;
                    return Ok(g.finish(r));
                }
            } else {
                self.sleep_until(wake_at).await;
            }
            g.attempt += 1;
            return Ok(After::Again);
        }
        g.attempt = 1;
        let message = format!(
            "step `{}` ({}) failed: {}",
            step.key, step.kind, failed.error.message
        );
        let err_val = obj_val([("error", str_val(&failed.error.message))]);
        g.fo.entries.insert(step.key.clone(), err_val.clone());
        g.fo.last = err_val;
        // A data problem with no failure path stops the run for a person.
        let incident =
            failed.incident || (step.on_failure == Next::End && failed.error.blame == Blame::Data);
        let (pos, status) = match step.on_failure {
            _ if incident => (None, RunStatus::Incident),
            Next::Step(j) => (Some(j), RunStatus::Running),
            Next::End => (None, RunStatus::Failed),
        };
        let stopped = pos.is_none();
        if rec {
            let update = RunUpdate {
                status,
                state: g.state.clone(),
                next_step: if incident {
                    Some(step.key.clone())
                } else {
                    pos.map(|j| g.flow.steps[j].key.clone())
                },
                output: None,
                error: stopped.then(|| message.clone()),
                error_step: stopped.then(|| step.key.clone()),
                ended_at: (stopped && !incident).then(now_micros),
            };
            if pure && !stopped {
                g.held.steps.push(record);
            } else {
                self.write_held(&g.run_id, &mut g.held, Some(record), &update)
                    .await?;
            }
        }
        if !stopped {
            return Ok(After::At(pos));
        }
        let mut r = g.ended(status);
        r.failure = Some(StepFailure {
            step: step.key.clone(),
            message,
            blame: failed.error.blame,
        });
        Ok(g.finish(r))
    }

    /// Whether `step` is pure (see [`sluice_action::Action::PURE`]); a step
    /// that retries is not, since each attempt's failure is recorded
    /// before its backoff.
    pub(crate) fn pure(&self, step: &Step) -> bool {
        step.retry.is_none() && self.registry.get(&step.kind).is_some_and(|e| e.pure)
    }

    /// Write what the run holds (see [`Held`]), then `record` (if any), and
    /// the run's new position `at`, in one transaction: whether anything
    /// was written (with nothing held and no record, nothing is).
    pub(crate) async fn write_held(
        &self,
        run_id: &str,
        held: &mut Held,
        record: Option<StepRecord>,
        at: &RunUpdate,
    ) -> Result<bool, StoreError> {
        held.steps.extend(record);
        if held.new.is_none() && held.steps.is_empty() {
            return Ok(false);
        }
        let new = held.new.take();
        let r = if new.is_some() {
            // Not recorded yet: nobody was told the run exists, so a full
            // store fails it at once (a synchronous caller is answered).
            self.store
                .record_steps(new.as_deref(), &held.steps, at)
                .await
        } else {
            self.written(run_id, || self.store.record_steps(None, &held.steps, at))
                .await
        };
        held.steps.clear();
        r.map(|()| true)
    }

    /// Make a write of recorded run `run_id`, pausing the run while the
    /// store is full (a full disk, or SQLite's `max_page_count` reached):
    /// the write is tried again after 0.5 s, then at doubling intervals of
    /// up to 10 s, until the store takes it, so that the run continues
    /// once space is freed, from where it was, with no step run again.
    /// Other errors, and a full store when the process stops, are
    /// returned (the run stays at its last committed step).
    pub(crate) async fn written<T, F, W>(&self, run_id: &str, mut write: W) -> Result<T, StoreError>
    where
        W: FnMut() -> F,
        F: Future<Output = Result<T, StoreError>>,
    {
        let mut pause = Duration::from_millis(500);
        let mut paused = false;
        loop {
            match write().await {
                Err(e @ StoreError::Full(_)) => {
                    if !paused {
                        sluice_action::warn!(
                            "sluice: run `{run_id}` pauses: {e}; it continues once the store takes writes again"
                        );
                        paused = true;
                    }
                    if !self.sleep_for(pause).await {
                        return Err(e);
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                r => {
                    if paused && r.is_ok() {
                        sluice_action::warn!(
                            "sluice: run `{run_id}` continues: the store takes writes again"
                        );
                    }
                    return r;
                }
            }
        }
    }

    /// A run that another caller moved while this one waited (it was
    /// cancelled, or another process woke it): where the store has it.
    pub(crate) async fn moved_on(
        &self,
        run_id: String,
        fo: &FlowObject,
    ) -> Result<RunResult, EngineError> {
        let status = self
            .store
            .get_run(&run_id)
            .await?
            .map(|d| d.summary.status)
            .ok_or_else(|| StoreError::NoSuchRun(run_id.clone()))?;
        Ok(RunResult::ended(run_id, status, fo, true))
    }

    /// Sleep until `at` (µs since the epoch); false when the process is
    /// stopping first.
    pub(crate) async fn sleep_until(&self, at: i64) -> bool {
        let ms = u64::try_from((at - now_micros()).max(0) / 1_000).unwrap_or(0);
        self.sleep_for(Duration::from_millis(ms)).await
    }

    /// Sleep for `d`; false when the process is stopping first.
    async fn sleep_for(&self, d: Duration) -> bool {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    /// Sleep until `wait` is due, then claim it: `None` when the process is
    /// stopping (the wait stays for the next start) or another caller took
    /// it.
    pub(crate) async fn sleep_then_claim(&self, wait: &Wait) -> Result<Option<Wait>, EngineError> {
        if !self.sleep_until(wait.wake_at.unwrap_or(0)).await {
            return Ok(None);
        }
        Ok(self.store.claim_wait(&wait.run_id, None).await?)
    }
}
