//! The SQL connector: connections to SQLite, PostgreSQL and MariaDB/MySQL
//! (through sqlx) and the standardized actions on them (SEMANTICS.md
//! section 6), envelopes, the bulk writer of imports, and the `poll`
//! trigger's source of rows.
//!
//! * A flow declares `connections: {NAME: {url: ...}}`; `${env:VAR}` in a URL
//!   is replaced by the environment variable, so credentials stay out of flow
//!   files, and URLs are shown with their password hidden.
//! * Pools are opened on first use and shared by every run: [`register`]
//!   gives every SQL step type one [`Pools`].
//! * Collections and fields are checked against the database's own schema and
//!   quoted; values are always bound parameters.
//! * Each write runs in one transaction, and asks the run's data hooks
//!   ([`sluice_action::hooks::DataHooks`]) before and after each change.
//!
//! The modules, by concern, each using only those before it: `backend`
//! (the three databases' dialects), `decode` (rows as JSON), `db`
//! (connections, pools, the schema cache, transactions), `change` (one
//! change of one object, with its data hooks), `actions` (the one-object
//! actions), `many` (`sql.lookupMany`), `sets` (link tables and option
//! sets), [`envelope`] (with `envelope::bulk`, an import's envelopes
//! written together) and [`poll`].

#[macro_use]
mod db;
mod actions;
mod backend;
mod change;
pub mod dataflow;
mod decode;
pub mod envelope;
mod many;
pub mod poll;
mod sets;
mod shared;

pub use actions::*;
pub use backend::Backend;
pub use change::{LinkSide, PatchOp, SqlLinkOptions, SqlWriteOptions};
pub use db::{Db, Pools, expand, redact};
pub use envelope::*;
pub use many::*;
pub use poll::{PollSnapshot, PollTrigger, Polled, check_poll, poll_page};
pub use sets::*;
pub use sluice_action::valid_ident;

use sluice_action::Registry;
use std::sync::Arc;

/// Add the SQL step types, the `poll` trigger and the import's bulk writer
/// to `registry`, sharing one set of pools.
pub fn register(registry: &mut Registry) {
    let pools = Arc::new(Pools::default());
    registry.add(SqlQuery(pools.clone()));
    registry.add(SqlCreate(pools.clone()));
    registry.add(SqlLookup(pools.clone()));
    registry.add(SqlUpdate(pools.clone()));
    registry.add(SqlUpsert(pools.clone()));
    registry.add(SqlDelete(pools.clone()));
    registry.add(SqlLookupMany(pools.clone()));
    registry.add(Envelope(pools.clone()));
    registry.add(dataflow::Dataflow(pools.clone()));
    registry.add(SqlLookupSet(pools.clone()));
    registry.add(SqlLink(pools.clone()));
    registry.add(SqlUnlink(pools.clone()));
    registry.add(SqlAssertOption(pools.clone()));
    registry.add_poll_trigger::<PollTrigger>(
        "poll",
        check_poll,
        Arc::new(poll::SqlPolls(pools.clone())),
    );
    registry.set_committed_runs(Arc::new(shared::SqlCommittedRuns(pools.clone())));
    registry.set_batches(Arc::new(envelope::bulk::SqlBatches(pools)));
}

/// The core step types and triggers with SQL's: what a program or test
/// that runs SQL flows and no other connector needs.
pub fn registry() -> Registry {
    let mut r = Registry::core();
    register(&mut r);
    r
}
