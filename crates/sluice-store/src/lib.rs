//! Durable records of runs: the [`Store`] trait and its implementations on
//! SQLite (the embedded default) and PostgreSQL ([`PgStore`], for processes
//! that share one database).
//!
//! A run is a row with its status, its current state data and the step it
//! will run next; every executed step is a row of the run log with its options
//! after templating, its input, its result or error, and its timing. A step's
//! record and the run's new state are written in one transaction
//! ([`Store::record_step`]), so that a crash leaves either both or neither.
//!
//! Every value and message written passes through the [`Scrub`] the
//! process installs ([`set_scrub`]), which takes secrets' values out.
//! Large values are kept once per run, compressed, and shared by every
//! record that holds them (`values.rs`); they read back as they were.
//!
//! The trait is small on purpose (in the manner of Restate's storage traits):
//! both implementations pass one conformance suite (`tests/conformance.rs`);
//! [`AnyStore`] is the one a URL names.

mod any;
mod group;
mod pg_group;
mod pg_url;
mod postgres;
mod rows;
mod scrub;
mod sqlite;
mod store;
mod values;

pub use any::AnyStore;
pub use postgres::{DEFAULT_LEASE, PgStore};
pub use scrub::{Scrub, set_scrub};

pub use sqlite::SqliteStore;
pub use store::{
    ApiToken, AuditEntry, EVENTS_KEPT_MICROS, FlowStats, Leases, NewRun, Notice, Notification,
    Process, Reader, RunDetail, RunFilter, RunStatus, RunSummary, RunUpdate, SeenEvent, StepRecord,
    Store, StoreError, Wait, WaitKind, Woken, new_run_id, now_micros,
};
