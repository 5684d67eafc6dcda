//! Step types and triggers: the [`Action`] trait, the one [`Registry`], the
//! core operations that need no outside system, and the traits through which
//! the engine and the server reach what only some connectors have.
//!
//! A step type is a typed options struct (its JSON Schema names the options
//! the model accepts) and an async `run`. The registry erases the types so the
//! engine can run any step by name, and implements the model's
//! [`Catalog`] so that `sluice check` validates options from the same structs
//! the steps run with.
//!
//! A connector is a crate of its own (`sluice-sql`) that depends on this one
//! and on no other connector: its step types are structs that keep what the
//! connector shares between runs (pools, caches), added to a [`Registry`] by
//! one `register` function. What the engine and the server need of a
//! connector beyond its steps is a trait here: [`batch::Batches`] (an
//! import's envelopes written together), [`poll::PollSource`] (the rows a
//! `poll` trigger reads), [`hooks::DataHooks`] (the flows a change starts,
//! which the engine implements and connectors ask).

mod action;
pub mod batch;
mod check;
pub mod core_ops;
mod error;
pub mod hooks;
pub mod manual;
pub mod notify;
pub mod poll;
mod registry;
pub mod secrets;
pub mod testing;
pub mod triggers;

pub use action::{
    Action, ActionCx, Calls, CommittedRuns, DynAction, Effect, FlowTx, Iteration, OpenTx, Outcome,
};
pub use check::{check_options, valid_ident};
pub use error::{ActionError, Blame, BoxFuture};
pub use registry::{Entry, Registry, TriggerEntry};
pub use secrets::expand;

/// Print a line on standard error, as `eprintln!` does, with every
/// secret's value taken out (see [`secrets`]).
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => {
        $crate::secrets::warn(format_args!($($t)*))
    };
}
