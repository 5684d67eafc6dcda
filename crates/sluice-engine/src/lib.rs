//! The run state machine: it takes a checked [`Flow`] and a trigger's data and
//! moves the state data from step to step, recording every step durably.
//!
//! One step, in order (SEMANTICS.md sections 2 to 4):
//!
//! 1. the step's input is the state data; `stateDataFilter.input` filters it
//!    (a filter that selects nothing leaves it unfiltered);
//! 2. the action's input is built by `inputMappings` (from an empty document),
//!    or else selected by `actionDataFilter.fromStateData`, or else is the
//!    step's input; templates in the options see it as `.`;
//! 3. the action runs;
//! 4. its result meets the state data: through `outputMappings` and the
//!    mapping table when the step has mappings, otherwise as the flow's
//!    `unmappedResults` says (merged at `toStateData` after `results`, by
//!    default, or replacing it);
//! 5. `stateDataFilter.output` filters what is handed on.
//!
//! The step's record and the run's new position are committed in one store
//! transaction before the next step starts. The flow object (`$trigger`,
//! `$last`, `$<key>`) holds each executed step's result; a failed step's entry
//! is its error, `{"error": message}`, so a failure path can read it.

use serde_json::{Map, Value, json};
use sluice_connect::hooks::{Change, ChangeOp, DataHooks, EventTrigger, When};
use sluice_connect::{ActionCx, ActionError, Blame, Effect, Outcome, Registry};
use sluice_expr::{Limits, Program, Scope, Val, merge, to_val};
use sluice_model::{EVENT_TRIGGERS, EventDataFilter, Flow, Next, RetryOn, Step, UnmappedResults};
use sluice_store::{
    NewRun, RunStatus, RunUpdate, StepRecord, Store, StoreError, Wait, WaitKind, new_run_id,
    now_micros,
};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

mod import;
pub use import::{ImportError, ImportOptions, ImportSummary, Progress, failures_path};

/// What starts a run.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// `$trigger`: what started the run.
    pub trigger: Value,
    /// The input state data (`None`: the default `{}`).
    pub input: Option<Value>,
    /// `$accountability`: who or what started the run.
    pub accountability: Value,
    /// The CloudEvent that started the run, for an event trigger.
    pub event: Option<Value>,
}

/// The step that ended a run unsuccessfully.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFailure {
    /// Its key.
    pub step: String,
    /// Its error.
    pub message: String,
    /// Who must act.
    pub blame: Blame,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// The run's id in the store.
    pub run_id: String,
    /// Its final status.
    pub status: RunStatus,
    /// Its output (the state data after the last step), when it succeeded.
    pub output: Option<Value>,
    /// The failure that ended it, otherwise.
    pub failure: Option<StepFailure>,
    /// `$last`: the result of the last step that ran (its error, if it
    /// failed), for a run recorded in the store (`null` for the unrecorded
    /// runs of an import's records and of `flow` steps, whose callers do
    /// not read it: converting it back to JSON is a good part of a record's
    /// run).
    pub last: Value,
    /// For a run that is `waiting`: what it waits for.
    pub wait: Option<Wait>,
}

impl RunResult {
    /// `recorded`: whether the run is recorded (see [`RunResult::last`]).
    fn ended(run_id: String, status: RunStatus, fo: &FlowObject, recorded: bool) -> Self {
        Self {
            run_id,
            status,
            output: None,
            failure: None,
            last: if recorded {
                fo.last.json().clone()
            } else {
                Value::Null
            },
            wait: None,
        }
    }
}

/// Whether anything can read what `step` emits, in a run whose output is
/// not kept (a record of an import): a step after it, or the step's own
/// filters and mappings of its result (which may fail on it).
fn results_read(step: &Step) -> bool {
    !matches!(step.on_success, Next::End)
        || step.state_filter.output.is_some()
        || step.action_filter.results.is_some()
        || step.action_filter.to_state_data.is_some()
        || step.output_mappings.is_some()
}

/// The flows a run can reach: those `flow` steps start, by id, and those
/// whose `event` trigger hooks the changes SQL steps make (the server's
/// loaded flows).
pub trait FlowLookup: Send + Sync {
    /// The flow with this id, if there is one.
    fn flow(&self, id: &str) -> Option<Arc<Flow>>;
    /// Every flow (the engine picks those with an `event` trigger).
    fn all(&self) -> Vec<Arc<Flow>>;
}

/// The flows runs reach, as [`Engine::set_flows`] last set them.
#[derive(Clone, Default)]
struct Reach {
    lookup: Option<Arc<dyn FlowLookup>>,
    /// The flows with an `event` trigger, with its options.
    hooks: Arc<Vec<(EventTrigger, Arc<Flow>)>>,
}

/// How a run that a step started ended (or that it started, when the step
/// does not wait).
struct ChildEnd {
    run_id: String,
    status: RunStatus,
    output: Option<Value>,
    failure: Option<StepFailure>,
}

impl ChildEnd {
    fn started(run_id: String) -> Self {
        Self {
            run_id,
            status: RunStatus::Running,
            output: None,
            failure: None,
        }
    }

    fn of(r: RunResult) -> Self {
        Self {
            run_id: r.run_id,
            status: r.status,
            output: r.output,
            failure: r.failure,
        }
    }
}

/// How deep `flow` steps may nest runs (a flow that starts itself stops here).
pub const MAX_FLOW_DEPTH: u64 = 32;

/// A run not yet driven: recorded in the store (see [`Engine::start`]), or
/// to be recorded with its first write (see [`Engine::begin`]).
pub struct Started {
    run_id: String,
    fo: FlowObject,
    input: Value,
    /// The run's record, when it is not in the store yet.
    new: Option<Box<NewRun>>,
    /// Taken before the run is recorded, so that a cancel that finds the
    /// run in the store finds its flag too, even before its drive starts.
    driving: Driving,
}

impl Started {
    /// The run's id in the store.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }
}

/// The engine could not keep its record.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed; the run's record stops at its last committed step.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run resumed with another flow than the one it ran.
    #[error("run `{run}` belongs to flow `{expected}`, not `{given}`")]
    WrongFlow {
        /// The run.
        run: String,
        /// Its flow.
        expected: String,
        /// The flow given.
        given: String,
    },
    /// The event that started the run does not fit the trigger's
    /// eventDataFilter; no run was recorded.
    #[error("the event does not fit the trigger: {0}")]
    Event(String),
    /// The step a run stopped at is not in the flow given.
    #[error("run `{run}` stopped at step `{step}`, which the flow given does not have")]
    NoSuchStep {
        /// The run.
        run: String,
        /// The step.
        step: String,
    },
    /// The run could not be recorded, so it did not start.
    #[error("the run did not start: {0}")]
    NotStarted(String),
    /// Only a running run can be recovered.
    #[error("run `{run}` is {status}, not running; there is nothing to recover")]
    NotRunning {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
}

/// Apply a JSON Merge Patch (RFC 7396) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Runs flows and records them in a store.
pub struct Engine<S: Store> {
    store: Arc<S>,
    registry: Arc<Registry>,
    limits: Limits,
    /// Flow versions already kept in the store by this engine.
    saved_versions: Arc<Mutex<HashSet<String>>>,
    /// Database pools of the flows' connections, shared by every run.
    pools: Arc<sluice_connect::sql::Pools>,
    /// Runs this engine is driving, each with a flag that a cancel sets:
    /// they stop before their next step.
    driving: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    /// The flows `flow` steps start and data hooks run.
    flows: Arc<RwLock<Reach>>,
    /// Set when the process stops: runs sleeping here stop waiting (their
    /// waits stay in the store, for the next start).
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            registry: self.registry.clone(),
            limits: self.limits,
            saved_versions: self.saved_versions.clone(),
            pools: self.pools.clone(),
            driving: self.driving.clone(),
            flows: self.flows.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

/// A run an engine drives: removed from the engine's map when dropped
/// (unless the run is driven again meanwhile).
struct Driving {
    map: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    run_id: String,
    /// Set by a cancel.
    flag: Arc<AtomicBool>,
}

impl Drop for Driving {
    fn drop(&mut self) {
        if let Ok(mut d) = self.map.lock()
            && d.get(&self.run_id)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flag))
        {
            d.remove(&self.run_id);
        }
    }
}

/// How `drive` enters the first step it runs.
#[derive(Clone, Debug, Default)]
enum Entry {
    /// Run it (again): attempt 1, or the attempt after the failed ones the
    /// run log holds.
    #[default]
    Fresh,
    /// Its run was suspended by it (since when) and woke: `null` after a
    /// sleep, or the event that ended a wait.
    Woken(Value, i64),
    /// It waited for an event that did not come in time (since when).
    TimedOut(i64),
}

/// Where a run is, for `drive`.
struct Cursor {
    run_id: String,
    /// The fan-out item it runs, from 0 (0 when not an item).
    item: i64,
    /// The attempt of the first step, from 1.
    attempt: u32,
    entry: Entry,
    /// The run's record, when the store does not have it yet.
    new: Option<Box<NewRun>>,
    /// The run's cancel flag, when taken before the run was recorded or
    /// read (otherwise the drive takes it).
    driving: Option<Driving>,
}

impl Cursor {
    fn new(run_id: String) -> Self {
        Self {
            run_id,
            item: 0,
            attempt: 1,
            entry: Entry::Fresh,
            new: None,
            driving: None,
        }
    }
}

/// What a run has done that the store does not have yet: the run itself
/// (see [`Engine::begin`]) and the records of the pure steps since its last
/// write (see [`sluice_connect::Action::PURE`]). They are written with the
/// run's next write, in its transaction.
#[derive(Default)]
struct Held {
    new: Option<Box<NewRun>>,
    steps: Vec<StepRecord>,
}

/// What a step runs with besides its data.
struct StepCx<'a> {
    run_id: &'a str,
    step_key: &'a str,
    attempt: u32,
    key: &'a str,
    wake: Option<&'a Value>,
    batch: Option<sluice_connect::sql::bulk::InBatch<'a>>,
    /// How deep in `flow` steps the run is.
    depth: u64,
    recorded: bool,
}

/// Whether a run is recorded in the store, and the import batch it writes
/// through, if it is one record of an import.
#[derive(Clone, Copy)]
struct Mode<'a> {
    recorded: bool,
    batch: Option<sluice_connect::sql::bulk::InBatch<'a>>,
}

impl Mode<'_> {
    const RECORDED: Mode<'static> = Mode {
        recorded: true,
        batch: None,
    };
}

/// The flow object of one run.
#[derive(Clone)]
struct FlowObject {
    /// `$trigger`, and its jq value once a program reads it.
    trigger: Arc<Value>,
    trigger_val: std::sync::OnceLock<Val>,
    /// How deep in `flow` steps the run is (`$trigger.depth`).
    depth: u64,
    last: Lazy,
    accountability: Lazy,
    entries: HashMap<String, Lazy>,
    /// The event that started the run, if an event did.
    event: Option<Value>,
    /// `$tokens`: tokens set by the envelopes that ran (an object).
    tokens: Lazy,
}

impl FlowObject {
    /// The flow object before any step has run.
    fn new(trigger: Arc<Value>, accountability: Lazy) -> Self {
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

    fn add_tokens(&mut self, t: &Map<String, Value>) {
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
struct Lazy(Arc<(Value, std::sync::OnceLock<Val>)>);

impl Lazy {
    fn new(v: Value) -> Self {
        Self(Arc::new((v, std::sync::OnceLock::new())))
    }

    fn json(&self) -> &Value {
        &self.0.0
    }

    fn val(&self) -> Val {
        self.0.1.get_or_init(|| to_val(&self.0.0)).clone()
    }
}

/// How a step suspends its run (from its [`Effect`]).
enum Suspend {
    Sleep {
        until: i64,
    },
    Event {
        event_type: Option<String>,
        source: Option<String>,
        correlation: Map<String, Value>,
        timeout_at: Option<i64>,
    },
}

/// A step that ran.
struct Done {
    /// Set when the step suspends the run rather than ending.
    suspend: Option<Suspend>,
    options: Value,
    result: Option<Value>,
    state: Value,
    logs: Vec<String>,
    tokens: Option<Map<String, Value>>,
    /// For a step that emits its results individually: each item, with the
    /// state data it starts its own run with.
    items: Option<Vec<(Value, Value)>>,
}

/// A step that failed.
struct Failed {
    options: Value,
    error: ActionError,
    logs: Vec<String>,
    /// The run must stop here for a person (SEMANTICS.md section 4).
    incident: bool,
}

impl Failed {
    /// The data did not fit: resumable once fixed.
    fn data(options: &Value, message: String) -> Self {
        Self {
            options: options.clone(),
            error: ActionError::data(message),
            logs: Vec::new(),
            incident: false,
        }
    }
}

impl<S: Store> Engine<S> {
    /// An engine over `store` with the step types of `registry`.
    pub fn new(store: Arc<S>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            limits: Limits::default(),
            saved_versions: Arc::default(),
            pools: Arc::default(),
            driving: Arc::default(),
            flows: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The flows that `flow` steps start and whose `event` triggers hook
    /// the changes of SQL steps (the server sets it at each load).
    pub fn set_flows(&self, flows: Arc<dyn FlowLookup>) {
        let mut hooks: Vec<(EventTrigger, Arc<Flow>)> = flows
            .all()
            .into_iter()
            .filter(|f| f.trigger.kind == "event")
            .filter_map(|f| {
                // Options the model checked when the flow loaded.
                serde_json::from_value::<EventTrigger>(f.trigger.options.clone())
                    .ok()
                    .map(|t| (t, f))
            })
            .collect();
        // Before-hooks run one after the other, in the order of their ids.
        hooks.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        if let Ok(mut f) = self.flows.write() {
            *f = Reach {
                lookup: Some(flows),
                hooks: Arc::new(hooks),
            };
        }
    }

    /// The process is stopping: runs sleeping here stop waiting and return
    /// `waiting` (their waits stay in the store; a restart wakes them).
    pub fn stop_waiting(&self) {
        self.stopping.send_replace(true);
    }

    /// Use other expression limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The database pools of the flows' connections (a `poll` trigger
    /// reads through them too).
    pub fn pools(&self) -> &sluice_connect::sql::Pools {
        &self.pools
    }

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
    async fn start_as(
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

    async fn prepare_as(
        &self,
        flow: &Flow,
        req: RunRequest,
        run_id: String,
    ) -> Result<(NewRun, Started), EngineError> {
        let mut input = req.input.unwrap_or_else(|| Value::Object(Map::new()));
        let event = req
            .event
            .filter(|_| EVENT_TRIGGERS.contains(&flow.trigger.kind.as_str()));
        let trigger = Arc::new(req.trigger);
        let mut fo = FlowObject::new(trigger.clone(), Lazy::new(req.accountability.clone()));
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
        self.drive(flow, cursor, fo, Arc::new(input), 0, 0, Mode::RECORDED)
            .await
    }

    /// Cancel a run: the store marks it cancelled, and if this engine is
    /// driving it, it stops before its next step (a step under way finishes).
    pub async fn cancel(&self, run_id: &str) -> Result<(), EngineError> {
        self.store.cancel_run(run_id).await?;
        if let Ok(d) = self.driving.lock()
            && let Some(flag) = d.get(run_id)
        {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Note that this engine drives `run_id` until the guard is dropped, so
    /// that a cancel reaches it.
    fn drives(&self, run_id: &str) -> Driving {
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
    pub async fn recover(&self, flow: &Flow, run_id: &str) -> Result<RunResult, EngineError> {
        let (detail, driving) = self.load_run(flow, run_id).await?;
        if detail.summary.status == RunStatus::Waiting {
            let wait = self
                .store
                .list_waits(None)
                .await?
                .into_iter()
                .find(|w| w.run_id == run_id);
            return match wait {
                Some(w) => self.await_wait(flow, w).await,
                // Claimed between the two reads: another caller drives it.
                None => {
                    self.moved_on(
                        run_id.to_owned(),
                        &FlowObject::new(Arc::default(), Lazy::new(Value::Null)),
                    )
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
            let message = "the process stopped while this run's items ran; each item's run was recovered on its own (see the runs with this run as parent)".to_owned();
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
                last: Value::Null,
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
        self.continue_at(flow, detail, Entry::Fresh, None, driving)
            .await
    }

    /// A suspended run: wait until `wait` is due, claim it and continue the
    /// run. Returns the run as `waiting` at once when the wait has no time
    /// (an event wait with no timeout), or when the process is stopping.
    pub async fn await_wait(&self, flow: &Flow, wait: Wait) -> Result<RunResult, EngineError> {
        let none = FlowObject::new(Arc::default(), Lazy::new(Value::Null));
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
        let entry = match (wait.kind, event) {
            (WaitKind::Sleep, _) => Entry::Woken(Value::Null, wait.since),
            (WaitKind::Retry, _) => Entry::Fresh,
            (WaitKind::Event, Some(ev)) => Entry::Woken(ev, wait.since),
            (WaitKind::Event, None) => Entry::TimedOut(wait.since),
        };
        self.continue_at(flow, detail, entry, None, driving).await
    }

    /// Drive a run from the step the store has it at (with `state`, if given,
    /// instead of its stored state data); `driving`: its cancel flag, from
    /// [`Engine::load_run`].
    async fn continue_at(
        &self,
        flow: &Flow,
        detail: sluice_store::RunDetail,
        entry: Entry,
        state: Option<Value>,
        driving: Driving,
    ) -> Result<RunResult, EngineError> {
        let run_id = detail.summary.id.clone();
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
        self.drive(flow, cursor, fo, Arc::new(state), index, n, Mode::RECORDED)
            .await
    }

    /// A run of `flow`, from the store.
    /// With its cancel flag, taken before the run is read so that a cancel
    /// that comes before its drive starts still reaches it.
    async fn load_run(
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
    fn rebuild(&self, flow: &Flow, detail: &sluice_store::RunDetail, incident: bool) -> FlowObject {
        let mut fo = FlowObject::new(
            Arc::new(detail.trigger.clone()),
            Lazy::new(detail.accountability.clone()),
        );
        fo.event = EVENT_TRIGGERS
            .contains(&flow.trigger.kind.as_str())
            .then(|| detail.trigger.clone());
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
            let v = Lazy::new(if r.ok {
                r.result.clone().unwrap_or(Value::Null)
            } else {
                json!({"error": r.error})
            });
            fo.entries.insert(r.step_key.clone(), v.clone());
            fo.last = v;
            if r.ok
                && let Some(Value::Object(t)) = r
                    .result
                    .as_ref()
                    .and_then(|res| res.get("tokens"))
                    .filter(|_| r.kind == "envelope")
            {
                fo.add_tokens(t);
            }
        }
        fo
    }

    /// Keep the flow's text in the store under its version (once per engine).
    async fn save_version(&self, flow: &Flow) -> Result<(), StoreError> {
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
        let mut state = detail.state.clone();
        if let Some(p) = patch {
            merge_patch(&mut state, p);
        }
        self.store.resume_run(run_id, &state).await?;
        self.continue_at(flow, detail, Entry::Fresh, Some(state), driving)
            .await
    }

    /// Run steps from `start` until the run ends, stops or is suspended.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        flow: &Flow,
        cursor: Cursor,
        mut fo: FlowObject,
        mut state: Arc<Value>,
        start: usize,
        mut seq: i64,
        mode: Mode<'_>,
    ) -> Result<RunResult, EngineError> {
        let rec = mode.recorded;
        let Cursor {
            run_id,
            item,
            mut attempt,
            mut entry,
            new,
            driving,
        } = cursor;
        let mut held = Held {
            new,
            steps: Vec::new(),
        };
        let driving = rec.then(|| driving.unwrap_or_else(|| self.drives(&run_id)));
        let depth = fo.depth;
        let mut pos = if start < flow.steps.len() {
            Some(start)
        } else {
            None
        };
        while let Some(i) = pos {
            let step = &flow.steps[i];
            // The run's position before this step, for the records it holds.
            let here = || RunUpdate {
                status: RunStatus::Running,
                state: Value::clone(&state),
                next_step: Some(step.key.clone()),
                output: None,
                error: None,
                error_step: None,
                ended_at: None,
            };
            if driving
                .as_ref()
                .is_some_and(|d| d.flag.load(Ordering::Relaxed))
            {
                // The steps it ran are recorded; the store keeps it cancelled.
                self.write_held(&mut held, None, &here()).await?;
                let mut r = RunResult::ended(run_id, RunStatus::Cancelled, &fo, rec);
                r.failure = Some(StepFailure {
                    step: step.key.clone(),
                    message: format!("cancelled before step `{}`", step.key),
                    blame: Blame::Flow,
                });
                return Ok(r);
            }
            // A step that is not pure runs only once the store has what
            // came before it.
            let pure = self.pure(step);
            if rec && !pure {
                self.write_held(&mut held, None, &here()).await?;
            }
            let key = if rec {
                format!("{run_id}/{}/{item}/{attempt}", step.key)
            } else {
                String::new()
            };
            let started_at = match &entry {
                Entry::TimedOut(since) | Entry::Woken(_, since) => *since,
                Entry::Fresh => now_micros(),
            };
            let outcome = match std::mem::take(&mut entry) {
                Entry::TimedOut(_) => Err(Failed {
                    options: Value::Null,
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
                        run_id: &run_id,
                        step_key: &step.key,
                        attempt,
                        key: &key,
                        wake,
                        batch: mode.batch,
                        depth,
                        recorded: rec,
                    };
                    self.step(flow, step, &state, &fo, scx).await
                }
            };
            let ended_at = now_micros();
            if rec {
                metrics::histogram!("sluice_step_duration_seconds", "flow" => flow.id.clone(), "step" => step.key.clone())
                    .record((ended_at - started_at) as f64 / 1e6);
            }
            let mut record = StepRecord {
                run_id: run_id.clone(),
                seq,
                step_key: step.key.clone(),
                kind: step.kind.clone(),
                ok: outcome.is_ok(),
                options: Value::Null,
                input: if rec {
                    Value::clone(&state)
                } else {
                    Value::Null
                },
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
                }) => {
                    // The step suspends the run: durably when recorded.
                    let (wait, timer) = match suspend {
                        Suspend::Sleep { until } => (
                            Wait::timer(
                                &run_id,
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
                    if !rec {
                        if !timer {
                            // A wait for an event needs a recorded run to wake.
                            return Ok(RunResult {
                                failure: Some(StepFailure {
                                    step: step.key.clone(),
                                    message: format!(
                                        "step `{}` (wait) waits for an event, which only a recorded run under `sluice serve` can receive",
                                        step.key
                                    ),
                                    blame: Blame::Flow,
                                }),
                                ..RunResult::ended(run_id, RunStatus::Failed, &fo, rec)
                            });
                        }
                        self.sleep_until(wait.wake_at.unwrap_or(0)).await;
                        entry = Entry::Woken(Value::Null, started_at);
                        continue;
                    }
                    if !self.store.suspend(None, &state, &wait).await? {
                        return self.moved_on(run_id, &fo).await;
                    }
                    if !timer {
                        return Ok(RunResult {
                            wait: Some(wait),
                            ..RunResult::ended(run_id, RunStatus::Waiting, &fo, rec)
                        });
                    }
                    match self.sleep_then_claim(&wait).await? {
                        Some(_) => entry = Entry::Woken(Value::Null, started_at),
                        None => return self.moved_on(run_id, &fo).await,
                    }
                }
                Ok(mut done) => {
                    seq += 1;
                    attempt = 1;
                    // An unrecorded run keeps no step record: the result
                    // moves to the flow object.
                    let result = Lazy::new(match &done.result {
                        Some(r) if rec => r.clone(),
                        _ => done.result.take().unwrap_or(Value::Null),
                    });
                    fo.entries.insert(step.key.clone(), result.clone());
                    if let Some(t) = &done.tokens {
                        fo.add_tokens(t);
                    }
                    fo.last = result;
                    state = Arc::new(done.state);
                    pos = match step.on_success {
                        Next::Step(j) => Some(j),
                        Next::End => None,
                    };
                    record.options = done.options;
                    record.result = done.result;
                    record.logs = done.logs;
                    if let Some(items) = done.items {
                        return self
                            .fan_out(flow, run_id, record, &fo, step, items, pos, mode)
                            .await;
                    }
                    let finished = pos.is_none();
                    if rec {
                        record.output = Some(Value::clone(&state));
                        let update = RunUpdate {
                            status: if finished {
                                RunStatus::Succeeded
                            } else {
                                RunStatus::Running
                            },
                            state: Value::clone(&state),
                            next_step: pos.map(|j| flow.steps[j].key.clone()),
                            output: finished.then(|| Value::clone(&state)),
                            error: None,
                            error_step: None,
                            ended_at: finished.then(now_micros),
                        };
                        if pure && !finished {
                            held.steps.push(record);
                        } else {
                            self.write_held(&mut held, Some(record), &update).await?;
                        }
                    }
                    if finished {
                        return Ok(RunResult {
                            output: Some(Arc::unwrap_or_clone(state)),
                            ..RunResult::ended(run_id, RunStatus::Succeeded, &fo, rec)
                        });
                    }
                }
                Err(failed) => {
                    seq += 1;
                    record.options = failed.options;
                    record.error = Some(failed.error.message.clone());
                    record.blame = Some(blame_word(failed.error.blame).to_owned());
                    record.logs = failed.logs;
                    // `retry`: attempt it again after a backoff, durably.
                    if let Some(ms) = retry_delay(step, &failed.error, failed.incident, attempt) {
                        let wake_at = after_ms(ms);
                        if rec {
                            let wait = Wait::timer(
                                &run_id,
                                &flow.id,
                                &step.key,
                                WaitKind::Retry,
                                wake_at,
                                ended_at,
                            );
                            if !self.store.suspend(Some(&record), &state, &wait).await? {
                                return self.moved_on(run_id, &fo).await;
                            }
                            if self.sleep_then_claim(&wait).await?.is_none() {
                                return self.moved_on(run_id, &fo).await;
                            }
                        } else {
                            self.sleep_until(wake_at).await;
                        }
                        attempt += 1;
                        continue;
                    }
                    attempt = 1;
                    let message = format!(
                        "step `{}` ({}) failed: {}",
                        step.key, step.kind, failed.error.message
                    );
                    let err_val = Lazy::new(json!({"error": failed.error.message}));
                    fo.entries.insert(step.key.clone(), err_val.clone());
                    fo.last = err_val;
                    // A data problem with no failure path stops the run for a person.
                    let incident = failed.incident
                        || (step.on_failure == Next::End && failed.error.blame == Blame::Data);
                    let (next, status) = if incident {
                        (None, RunStatus::Incident)
                    } else {
                        match step.on_failure {
                            Next::Step(j) => (Some(j), RunStatus::Running),
                            Next::End => (None, RunStatus::Failed),
                        }
                    };
                    pos = next;
                    let stopped = pos.is_none();
                    if rec {
                        let update = RunUpdate {
                            status,
                            state: Value::clone(&state),
                            next_step: if incident {
                                Some(step.key.clone())
                            } else {
                                pos.map(|j| flow.steps[j].key.clone())
                            },
                            output: None,
                            error: stopped.then(|| message.clone()),
                            error_step: stopped.then(|| step.key.clone()),
                            ended_at: (stopped && !incident).then(now_micros),
                        };
                        if pure && !stopped {
                            held.steps.push(record);
                        } else {
                            self.write_held(&mut held, Some(record), &update).await?;
                        }
                    }
                    if stopped {
                        return Ok(RunResult {
                            failure: Some(StepFailure {
                                step: step.key.clone(),
                                message,
                                blame: failed.error.blame,
                            }),
                            ..RunResult::ended(run_id, status, &fo, rec)
                        });
                    }
                }
            }
        }
        // A flow always has a step; a run that had none ends as it began.
        if rec {
            let end =
                RunUpdate::ended(Value::clone(&state), Some(Value::clone(&state)), None, None);
            if !self.write_held(&mut held, None, &end).await? {
                self.store.update_run(&run_id, &end).await?;
            }
        }
        Ok(RunResult {
            output: Some(Arc::unwrap_or_clone(state)),
            ..RunResult::ended(run_id, RunStatus::Succeeded, &fo, rec)
        })
    }

    /// Whether `step` is pure (see [`sluice_connect::Action::PURE`]); a step
    /// that retries is not, since each attempt's failure is recorded
    /// before its backoff.
    fn pure(&self, step: &Step) -> bool {
        step.retry.is_none() && self.registry.get(&step.kind).is_some_and(|e| e.pure)
    }

    /// Write what the run holds (see [`Held`]), then `record` (if any), and
    /// the run's new position `at`, in one transaction: whether anything
    /// was written (with nothing held and no record, nothing is).
    async fn write_held(
        &self,
        held: &mut Held,
        record: Option<StepRecord>,
        at: &RunUpdate,
    ) -> Result<bool, StoreError> {
        held.steps.extend(record);
        if held.new.is_none() && held.steps.is_empty() {
            return Ok(false);
        }
        let new = held.new.take();
        let r = self
            .store
            .record_steps(new.as_deref(), &held.steps, at)
            .await;
        held.steps.clear();
        r.map(|()| true)
    }

    /// A run that another caller moved while this one waited (it was
    /// cancelled, or another process woke it): where the store has it.
    async fn moved_on(&self, run_id: String, fo: &FlowObject) -> Result<RunResult, EngineError> {
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
    async fn sleep_until(&self, at: i64) -> bool {
        let mut stopping = self.stopping.subscribe();
        let ms = u64::try_from((at - now_micros()).max(0) / 1_000).unwrap_or(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    /// Sleep until `wait` is due, then claim it: `None` when the process is
    /// stopping (the wait stays for the next start) or another caller took
    /// it.
    async fn sleep_then_claim(&self, wait: &Wait) -> Result<Option<Wait>, EngineError> {
        if !self.sleep_until(wait.wake_at.unwrap_or(0)).await {
            return Ok(None);
        }
        Ok(self.store.claim_wait(&wait.run_id).await?)
    }

    /// A step emitted its results individually: the steps after it run once
    /// per item, each item in a run of its own (linked to this one), so that
    /// each has its own state data and run log and can fail, or stop at an
    /// incident and be resumed, without hiding the others. This run then ends:
    /// succeeded with the list of the items' outputs when every item
    /// succeeded, failed otherwise, naming each failed item and its run.
    #[allow(clippy::too_many_arguments)]
    fn fan_out<'a>(
        &'a self,
        flow: &'a Flow,
        run_id: String,
        record: StepRecord,
        fo: &'a FlowObject,
        step: &'a Step,
        items: Vec<(Value, Value)>,
        next: Option<usize>,
        mode: Mode<'a>,
    ) -> sluice_connect::BoxFuture<'a, Result<RunResult, EngineError>> {
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
            let count = items.len();
            let mut outputs = Vec::with_capacity(count);
            let mut failures = Vec::new();
            for (k, (item, state)) in items.into_iter().enumerate() {
                let Some(start) = next else {
                    outputs.push(state);
                    continue;
                };
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
                            accountability: fo.accountability.json().clone(),
                            parent: Some((run_id.clone(), k as i64)),
                        })
                        .await?;
                }
                let mut child = fo.clone();
                let v = Lazy::new(item.clone());
                child.entries.insert(step.key.clone(), v.clone());
                child.last = v;
                let r = self
                    .drive(
                        flow,
                        Cursor {
                            item: k as i64,
                            ..Cursor::new(child_id)
                        },
                        child,
                        Arc::new(state),
                        start,
                        0,
                        mode,
                    )
                    .await?;
                match r.status {
                    RunStatus::Succeeded => outputs.push(r.output.unwrap_or(Value::Null)),
                    other => failures.push(format!(
                        "item {} (run {}) {}: {}",
                        k + 1,
                        r.run_id,
                        other.as_str(),
                        r.failure.map(|f| f.message).unwrap_or_default()
                    )),
                }
            }
            let ok = failures.is_empty();
            let message = (!ok).then(|| {
                format!(
                    "{} of {count} items did not succeed: {}",
                    failures.len(),
                    failures.join("; ")
                )
            });
            let output = Value::Array(outputs);
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
                last: if ok { output.clone() } else { Value::Null },
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
        })
    }

    /// Carry out a `flow` step: start a run of `flow_id` (a flow whose
    /// trigger is `flow`) and, with `wait`, drive it to its end here; its
    /// output is the step's result. The run's id is made from the step's
    /// idempotency key, so a step that runs again after a restart finds the
    /// run it started rather than starting a second one.
    fn subflow<'a>(
        &'a self,
        parent: &'a Flow,
        fo: &'a FlowObject,
        scx: &'a StepCx<'a>,
        flow_id: &'a str,
        input: Value,
        wait: bool,
    ) -> sluice_connect::BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let lookup = self.flows.read().ok().and_then(|f| f.lookup.clone());
            let target = lookup.and_then(|l| l.flow(flow_id)).ok_or_else(|| {
                ActionError::flow(format!("there is no flow `{flow_id}` to start"))
            })?;
            if target.trigger.kind != "flow" {
                return Err(ActionError::flow(format!(
                    "flow `{flow_id}` has a `{}` trigger; a flow step starts only flows whose trigger is `flow`",
                    target.trigger.kind
                )));
            }
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

    /// Start a run of `target` for a step (a `flow` step, or a data hook of
    /// a change the step makes) and, with `wait`, drive it to its end here.
    /// Its `$trigger` is `trigger` with the step that started it and how
    /// deep such runs nest (`flow`, `run`, `step`, `depth`). A recorded
    /// run's id is `id` (made from the step's attempt), so that a step that
    /// runs again after a restart finds the run it started rather than
    /// starting a second one; a step of a run that is not recorded (an
    /// import's record) runs the other flow unrecorded too.
    #[allow(clippy::too_many_arguments)]
    fn child_run<'a>(
        &'a self,
        parent: &'a Flow,
        fo: &'a FlowObject,
        scx: &'a StepCx<'a>,
        target: Arc<Flow>,
        mut trigger: Value,
        input: Value,
        id: String,
        wait: bool,
    ) -> sluice_connect::BoxFuture<'a, Result<ChildEnd, ActionError>> {
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
            let accountability = fo.accountability.json().clone();
            let panicked = |e: tokio::task::JoinError| ActionError {
                blame: Blame::Bug,
                message: format!("the run of flow `{flow_id}` panicked: {e}"),
            };
            let store_err = |e: EngineError| ActionError {
                blame: Blame::Store,
                message: e.to_string(),
            };
            if !scx.recorded {
                let child = FlowObject::new(Arc::new(trigger), fo.accountability.clone());
                let mode = Mode {
                    recorded: false,
                    batch: None,
                };
                let engine = self.clone();
                // Each run on a task of its own, so nesting does not deepen the stack.
                let task = tokio::spawn(async move {
                    engine
                        .drive(
                            &target,
                            Cursor::new(String::new()),
                            child,
                            Arc::new(input),
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
                trigger,
                input: Some(input),
                accountability,
                event: None,
            };
            match self.start_as(&target, req, id.clone()).await {
                Ok(started) if !wait => {
                    let engine = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = engine.finish(&target, started).await {
                            eprintln!("sluice: a run of flow `{}` stopped: {e}", target.id);
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
            let mut pause = Duration::from_millis(20);
            loop {
                let d = self
                    .store
                    .get_run(&id)
                    .await
                    .map_err(|e| store_err(e.into()))?
                    .ok_or_else(|| store_err(StoreError::NoSuchRun(id.clone()).into()))?;
                let status = d.summary.status;
                if status.is_final() || status == RunStatus::Incident {
                    return Ok(ChildEnd {
                        run_id: id,
                        status,
                        output: d.output,
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
        })
    }

    /// Run one step on `state`; never touches the store.
    // `Failed` carries the recorded options and logs; it is built once per failure.
    #[allow(clippy::result_large_err)]
    async fn step(
        &self,
        flow: &Flow,
        step: &Step,
        state: &Value,
        fo: &FlowObject,
        scx: StepCx<'_>,
    ) -> Result<Done, Failed> {
        let none = Value::Null;
        let limits = &self.limits;
        // 1. stateDataFilter.input
        let mut data = filter_or_keep(step.state_filter.input.as_ref(), state, fo, limits)
            .map_err(|m| Failed::data(&none, format!("stateDataFilter.input: {m}")))?;
        // 1b. a step that consumes the run's event merges it here (a `wait`
        // step's filter is for the event it waits for)
        if let Some(ef) = step.event_filter.as_ref().filter(|_| step.kind != WAIT) {
            let Some(ev) = &fo.event else {
                return Err(Failed::data(
                    &none,
                    "the step has an eventDataFilter, but the run was not started by an event"
                        .to_owned(),
                ));
            };
            data = Cow::Owned(
                apply_event(
                    ef,
                    flow.trigger.data_only,
                    ev,
                    data.into_owned(),
                    fo,
                    limits,
                )
                .map_err(|m| Failed::data(&none, m))?,
            );
        }
        // 2. the action's input
        let action_input = if let Some(maps) = &step.input_mappings {
            Cow::Owned(
                sluice_expr::mapping::extract(&data, maps)
                    .map_err(|e| Failed::data(&none, format!("inputMappings: {e}")))?,
            )
        } else {
            filter_or_keep(
                step.action_filter.from_state_data.as_ref(),
                &data,
                fo,
                limits,
            )
            .map_err(|m| Failed::data(&none, format!("actionDataFilter.fromStateData: {m}")))?
        };
        // Whether anything reads what the step emits, in a run whose output
        // is not kept (see `results_read`).
        let result_read = results_read(step);
        // templates
        let program_input = sluice_expr::Input::json(&action_input);
        let mut options = step
            .options
            .render(&program_input, fo, limits)
            .map_err(|e| Failed::data(&none, e.to_string()))?;
        // 3. the action
        let entry = self.registry.get(&step.kind).ok_or_else(|| Failed {
            options: options.clone(),
            error: ActionError {
                blame: Blame::Bug,
                message: format!("step type `{}` is not registered", step.kind),
            },
            logs: Vec::new(),
            incident: false,
        })?;
        if let Value::Object(m) = &mut options {
            for (k, p) in &step.expressions {
                m.insert(k.clone(), Value::String(p.code().to_owned()));
            }
        }
        // Deferred options reach the step through `cx.deferred` only: the
        // step runs on the options its record shows.
        let recorded_options = options;
        let connections = sluice_connect::sql::Connections {
            declared: &flow.connections,
            pools: &self.pools,
        };
        let hooks = self
            .flows
            .read()
            .ok()
            .map(|f| f.hooks.clone())
            .filter(|h| !h.is_empty())
            .map(|hooks| StepHooks {
                engine: self,
                hooks,
                parent: flow,
                fo,
                scx: &scx,
                seq: AtomicU32::new(0),
            });
        let cx = ActionCx {
            run_id: scx.run_id,
            step_key: &step.key,
            input: &action_input,
            program_input: &program_input,
            scope: fo,
            expressions: &step.expressions,
            limits,
            connections: &connections,
            deferred: &step.deferred,
            batch: scx.batch.map(|b| sluice_connect::sql::bulk::InBatch {
                results_read: result_read,
                ..b
            }),
            wake: scx.wake,
            attempt: scx.attempt,
            idempotency_key: scx.key,
            hooks: hooks.as_ref().map(|h| h as &dyn DataHooks),
        };
        let Outcome {
            mut payload,
            logs,
            tokens,
            items,
            effect,
        } = match entry.action.run_json(cx, &recorded_options).await {
            Ok(o) => o,
            Err(error) => {
                return Err(Failed {
                    options: recorded_options,
                    error,
                    logs: Vec::new(),
                    incident: false,
                });
            }
        };
        let suspend = match effect {
            None => None,
            Some(Effect::Sleep { ms }) => Some(Suspend::Sleep {
                until: after_ms(ms),
            }),
            Some(Effect::WaitEvent {
                event_type,
                source,
                correlation,
                timeout_ms,
            }) => Some(Suspend::Event {
                event_type,
                source,
                correlation,
                timeout_at: timeout_ms.map(after_ms),
            }),
            Some(Effect::StartFlow {
                flow: flow_id,
                input,
                wait,
            }) => {
                let started = self
                    .subflow(flow, fo, &scx, &flow_id, input, wait)
                    .await
                    .map_err(|error| Failed {
                        options: recorded_options.clone(),
                        error,
                        logs: logs.clone(),
                        incident: false,
                    })?;
                payload = Some(started);
                None
            }
        };
        if suspend.is_some() {
            return Ok(Done {
                suspend,
                options: recorded_options,
                result: None,
                state: state.clone(),
                logs,
                tokens: None,
                items: None,
            });
        }
        let fail = |message: String, incident: bool| Failed {
            options: recorded_options.clone(),
            error: ActionError::data(message),
            logs: logs.clone(),
            incident,
        };
        // A record of an import keeps no output: the state data its last
        // step makes (a step without filters or mappings of its result)
        // has no reader, so it is not made, only checked.
        let state_read = scx.batch.is_none() || result_read || step.kind == WAIT;
        // 4. the result meets the state data; 5. stateDataFilter.output
        let settle = |payload: &Option<Value>| -> Result<Value, Failed> {
            let mapped = step.input_mappings.is_some() || step.output_mappings.is_some();
            if !state_read {
                // Without filters or mappings of the result, only the
                // merge can fail.
                if let (false, UnmappedResults::Merge, true, Some(p)) = (
                    mapped,
                    flow.unmapped_results,
                    step.action_filter.use_results,
                    payload,
                ) {
                    sluice_expr::merge::fits(&data, p, ".")
                        .map_err(|e| fail(e.to_string(), false))?;
                }
                return Ok(Value::Null);
            }
            let new_state = if let (WAIT, Some(event)) = (step.kind.as_str(), payload) {
                // The event a `wait` step received meets the state data
                // through its eventDataFilter (its `data`, merged at the top
                // by default).
                let f = step.event_filter.clone().unwrap_or_default();
                apply_event(&f, true, event, data.as_ref().clone(), fo, limits)
                    .map_err(|m| fail(m, false))?
            } else if mapped {
                match (&step.output_mappings, payload) {
                    (Some(outs), Some(p)) => {
                        sluice_expr::mapping::merge_into(p, data.as_ref().clone(), outs)
                            .map_err(|e| fail(format!("outputMappings: {e}"), false))?
                    }
                    (Some(_), None) => {
                        return Err(fail(
                            "incident: the step has output mappings but its action returned no payload"
                                .to_owned(),
                            true,
                        ));
                    }
                    (None, Some(p)) => p.clone(),
                    (None, None) => data.as_ref().clone(),
                }
            } else {
                match (flow.unmapped_results, payload) {
                    (_, None) => data.as_ref().clone(),
                    (UnmappedResults::Replace, Some(p)) => p.clone(),
                    (UnmappedResults::Merge, Some(_)) if !step.action_filter.use_results => {
                        data.as_ref().clone()
                    }
                    (UnmappedResults::Merge, Some(p)) => {
                        // A `results` filter that selects nothing (no output, or
                        // null) leaves nothing to merge, like the state filters.
                        let result = match &step.action_filter.results {
                            None => Some(p.clone()),
                            Some(prog) => eval(prog, p, fo, limits)
                                .map_err(|m| fail(format!("actionDataFilter.results: {m}"), false))?
                                .filter(|v| !v.is_null()),
                        };
                        let mut doc = data.as_ref().clone();
                        match (result, &step.action_filter.to_state_data) {
                            (None, _) => {}
                            (Some(result), None) => merge(&mut doc, result, ".")
                                .map_err(|e| fail(e.to_string(), false))?,
                            (Some(result), Some((text, path))) => {
                                let mut target = path.get(&doc).cloned().unwrap_or(Value::Null);
                                merge(&mut target, result, text)
                                    .map_err(|e| fail(e.to_string(), false))?;
                                path.set(&mut doc, target);
                            }
                        }
                        doc
                    }
                }
            };
            // 5. stateDataFilter.output
            filter_or_keep_owned(step.state_filter.output.as_ref(), new_state, fo, limits)
                .map_err(|m| fail(format!("stateDataFilter.output: {m}"), false))
        };
        let items = match items {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(|item| {
                        let state = settle(&Some(item.clone()))?;
                        Ok((item, state))
                    })
                    .collect::<Result<Vec<_>, Failed>>()?,
            ),
        };
        let out = if items.is_some() {
            data.into_owned()
        } else {
            settle(&payload)?
        };
        Ok(Done {
            suspend: None,
            options: recorded_options,
            result: payload,
            state: out,
            logs,
            tokens,
            items,
        })
    }
}

/// A `flow` step's result from the run it started: its output, or why not.
fn child_result(
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
        }),
    }
}

/// The step type that waits for an event.
const WAIT: &str = "wait";

/// How long to wait before attempting `step` again after its `attempt`-th
/// attempt failed with `error`, if its `retry` says to.
fn retry_delay(step: &Step, error: &ActionError, incident: bool, attempt: u32) -> Option<u64> {
    let retry = step.retry.as_ref()?;
    let kind = match error.blame {
        Blame::External => RetryOn::External,
        Blame::Data => RetryOn::Data,
        Blame::Flow => RetryOn::Flow,
        Blame::Store | Blame::Bug => return None,
    };
    if incident || attempt >= retry.attempts || !retry.on.contains(&kind) {
        return None;
    }
    Some(retry.delay_after(attempt, random_unit()))
}

/// The time (µs since the epoch) `ms` milliseconds from now.
fn after_ms(ms: u64) -> i64 {
    let us = i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000);
    now_micros().saturating_add(us)
}

/// A number in [0, 1) that differs from call to call (for retry jitter).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_micros());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn blame_word(b: Blame) -> &'static str {
    match b {
        Blame::Flow => "flow",
        Blame::Data => "data",
        Blame::External => "external",
        Blame::Store => "store",
        Blame::Bug => "bug",
    }
}

fn eval(
    p: &Program,
    input: &Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Option<Value>, String> {
    p.eval_json(input, fo, limits).map_err(|e| e.to_string())
}

/// Merge an event into `target` through an `eventDataFilter` (SEMANTICS.md
/// section 2): `data` selects from the event's `data` (or the whole event
/// when `dataOnly` is false; selecting nothing keeps it whole), merged at
/// `toStateData` unless `useData` is false.
fn apply_event(
    f: &EventDataFilter,
    data_only: bool,
    event: &Value,
    mut target: Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Value, String> {
    if !f.use_data {
        return Ok(target);
    }
    let payload = if data_only {
        event.get("data").cloned().unwrap_or(Value::Null)
    } else {
        event.clone()
    };
    let selected = filter_or_keep_owned(f.data.as_ref(), payload, fo, limits)
        .map_err(|m| format!("eventDataFilter.data: {m}"))?;
    match &f.to_state_data {
        None => merge(&mut target, selected, ".").map_err(|e| format!("eventDataFilter: {e}"))?,
        Some((text, path)) => {
            let mut at = path.get(&target).cloned().unwrap_or(Value::Null);
            merge(&mut at, selected, text).map_err(|e| format!("eventDataFilter: {e}"))?;
            path.set(&mut target, at);
        }
    }
    Ok(target)
}

/// Apply a filter; one that selects nothing (no output, or `null`) leaves the data as it was.
fn filter_or_keep<'d>(
    p: Option<&Program>,
    data: &'d Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Cow<'d, Value>, String> {
    match p {
        None => Ok(Cow::Borrowed(data)),
        Some(p) => match eval(p, data, fo, limits)? {
            None | Some(Value::Null) => Ok(Cow::Borrowed(data)),
            Some(v) => Ok(Cow::Owned(v)),
        },
    }
}

/// [`filter_or_keep`] of a value the caller gives up.
fn filter_or_keep_owned(
    p: Option<&Program>,
    data: Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Value, String> {
    match filter_or_keep(p, &data, fo, limits)? {
        Cow::Owned(v) => Ok(v),
        Cow::Borrowed(_) => Ok(data),
    }
}

/// The data hooks of one step: the `event`-triggered flows its SQL changes
/// start. A hook's run is a child of the step, like a `flow` step's; its id
/// is made from the step's attempt and the change's place among the step's
/// changes, so a step run again after a restart finds its hooks' runs.
struct StepHooks<'a, S: Store> {
    engine: &'a Engine<S>,
    hooks: Arc<Vec<(EventTrigger, Arc<Flow>)>>,
    parent: &'a Flow,
    fo: &'a FlowObject,
    scx: &'a StepCx<'a>,
    /// Changes asked about so far.
    seq: AtomicU32,
}

impl<S: Store> StepHooks<'_, S> {
    fn heard<'h>(
        &'h self,
        when: When,
        c: &'h Change,
    ) -> impl Iterator<Item = &'h (EventTrigger, Arc<Flow>)> + 'h {
        self.hooks
            .iter()
            .filter(move |(t, _)| t.listens(when, c.op, &c.connection, &c.collection))
    }

    fn child_id(&self, when: When, n: u32, flow: &Flow) -> String {
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
fn refused(flow: &Flow, end: ChildEnd) -> ActionError {
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
    ) -> sluice_connect::BoxFuture<'b, Result<Map<String, Value>, ActionError>> {
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

    fn after<'b>(&'b self, changes: Vec<Change>) -> sluice_connect::BoxFuture<'b, Vec<String>> {
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
