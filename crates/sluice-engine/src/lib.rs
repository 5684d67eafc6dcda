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

mod cursor;
mod drive;
mod engine;
mod fanout;
mod filters;
mod flow_object;
mod hooks;
mod import;
mod records_out;
mod retry;
mod run;
mod runs;
mod step;
mod subflow;
mod window;

pub use engine::{Engine, FlowLookup};
pub use import::{
    ImportError, ImportOptions, ImportSummary, Progress, failures_path, read_records,
};
pub use records_out::RecordsOut;
pub use run::{
    EngineError, MAX_FLOW_DEPTH, MAX_RECOVERIES, RunRequest, RunResult, Started, StepFailure,
    merge_patch,
};
