//! Where a run is and what it runs with: how the driver enters a step, the
//! run's position, what it holds for the store, whether it is recorded,
//! and what a step runs with besides its data.

use crate::engine::Driving;
use serde_json::Value;
use sluice_action::batch::InBatch;
use sluice_store::{NewRun, StepRecord};

/// How `drive` enters the first step it runs.
#[derive(Clone, Debug, Default)]
pub(crate) enum Entry {
    /// Run it (again): attempt 1, or the attempt after the failed ones the
    /// run log holds.
    #[default]
    Fresh,
    /// Its run was suspended by it (since when) and woke: `null` after a
    /// sleep, or the event that ended a wait.
    Woken(Value, i64),
    /// It waited for an event that did not come in time (since when).
    TimedOut(i64),
    /// Run it again after the process that drove the run stopped while it
    /// was under way: the recovery is counted first (a step that stops the
    /// process at every start is not run for ever).
    Recovered,
}

/// Where a run is, for `drive`.
pub(crate) struct Cursor {
    pub(crate) run_id: String,
    /// The fan-out item it runs, from 0 (0 when not an item).
    pub(crate) item: i64,
    /// The attempt of the first step, from 1.
    pub(crate) attempt: u32,
    pub(crate) entry: Entry,
    /// The run's record, when the store does not have it yet.
    pub(crate) new: Option<Box<NewRun>>,
    /// The run's cancel flag, when taken before the run was recorded or
    /// read (otherwise the drive takes it).
    pub(crate) driving: Option<Driving>,
}

impl Cursor {
    pub(crate) fn new(run_id: String) -> Self {
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
/// write (see [`sluice_action::Action::PURE`]). They are written with the
/// run's next write, in its transaction.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) new: Option<Box<NewRun>>,
    pub(crate) steps: Vec<StepRecord>,
}

/// Whether a run is recorded in the store, and the import batch it writes
/// through, if it is one record of an import.
#[derive(Clone, Copy)]
pub(crate) struct Mode<'a> {
    pub(crate) recorded: bool,
    pub(crate) batch: Option<InBatch<'a>>,
    /// Whether the run's output is wanted (a record of an import that
    /// writes nothing out keeps none: its last state data is not made).
    pub(crate) output: bool,
}

impl Mode<'_> {
    pub(crate) const RECORDED: Mode<'static> = Mode {
        recorded: true,
        batch: None,
        output: true,
    };
}

/// What a step runs with besides its data.
pub(crate) struct StepCx<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) step_key: &'a str,
    pub(crate) attempt: u32,
    pub(crate) key: &'a str,
    pub(crate) wake: Option<&'a Value>,
    pub(crate) batch: Option<InBatch<'a>>,
    /// How deep in `flow` steps the run is.
    pub(crate) depth: u64,
    pub(crate) recorded: bool,
    /// Whether the run's output is wanted (see [`Mode`]).
    pub(crate) output: bool,
    /// The run's one transaction, under `transaction: flow`.
    pub(crate) flow_tx: Option<&'a sluice_action::FlowTx>,
}
