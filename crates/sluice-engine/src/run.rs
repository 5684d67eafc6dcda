//! What a run is to the engine's callers: the request that starts it, how
//! it ended, a run started and not yet driven, and the engine's errors.

use crate::engine::Driving;
use crate::flow_object::FlowObject;
use serde_json::{Map, Value};
use sluice_action::Blame;
use sluice_expr::Val;
use sluice_store::{NewRun, RunStatus, StoreError, Wait};

/// What starts a run.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// `$trigger`: what started the run (see [`sluice_expr::data`] for
    /// reading JSON straight into one, or converting it).
    pub trigger: Val,
    /// The input state data (`None`: the default `{}`).
    pub input: Option<Val>,
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
    /// Its output (the state data after the last step), when it succeeded
    /// (shared with the run's records: see [`sluice_expr::data::Json`] for
    /// its JSON text).
    pub output: Option<Val>,
    /// The failure that ended it, otherwise.
    pub failure: Option<StepFailure>,
    /// `$last`: the result of the last step that ran (its error, if it
    /// failed), for a run recorded in the store (`null` for the unrecorded
    /// runs of an import's records and of `flow` steps, whose callers do
    /// not read it).
    pub last: Val,
    /// For a run that is `waiting`: what it waits for.
    pub wait: Option<Wait>,
}

impl RunResult {
    /// `recorded`: whether the run is recorded (see [`RunResult::last`]).
    pub(crate) fn ended(
        run_id: String,
        status: RunStatus,
        fo: &FlowObject,
        recorded: bool,
    ) -> Self {
        Self {
            run_id,
            status,
            output: None,
            failure: None,
            last: if recorded { fo.last.clone() } else { Val::Null },
            wait: None,
        }
    }
}

impl RunResult {
    /// The output as a `serde_json` value (a copy).
    pub fn output_json(&self) -> Option<Value> {
        self.output.as_ref().map(sluice_expr::data::to_json)
    }
}

/// How many times in a row a run is continued after the process stopped
/// with no step recorded in between before it is failed instead (see
/// [`crate::Engine::recover`]).
pub const MAX_RECOVERIES: u32 = 3;

/// How deep `flow` steps may nest runs (a flow that starts itself stops here).
pub const MAX_FLOW_DEPTH: u64 = 32;

/// A run not yet driven: recorded in the store (see [`Engine::start`]), or
/// to be recorded with its first write (see [`Engine::begin`]).
pub struct Started {
    pub(crate) run_id: String,
    pub(crate) fo: FlowObject,
    pub(crate) input: Val,
    /// The run's record, when it is not in the store yet.
    pub(crate) new: Option<Box<NewRun>>,
    /// Taken before the run is recorded, so that a cancel that finds the
    /// run in the store finds its flag too, even before its drive starts.
    pub(crate) driving: Driving,
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
    /// Whether the run's one transaction (`transaction: flow`) committed
    /// could not be found out (its database did not answer); the run is
    /// left as it was, to be continued when it does.
    #[error("run `{run}`: could not find out whether its transaction committed: {message}")]
    Commit {
        /// The run.
        run: String,
        /// What the database said.
        message: String,
    },
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
