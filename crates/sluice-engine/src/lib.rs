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

use serde_json::{Map, Value};
use sluice_action::hooks::EventTrigger;
use sluice_action::{Blame, Registry};
use sluice_expr::Limits;
use sluice_model::Flow;
use sluice_store::{NewRun, RunStatus, Store, StoreError, Wait};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

mod drive;
mod fanout;
mod filters;
mod flow_object;
mod hooks;
mod import;
mod runs;
mod step;
mod subflow;

use drive::*;
use filters::*;
use flow_object::*;
use hooks::*;
use step::*;
use subflow::*;

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

impl<S: Store> Engine<S> {
    /// An engine over `store` with the step types of `registry`.
    pub fn new(store: Arc<S>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            limits: Limits::default(),
            saved_versions: Arc::default(),
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
}
