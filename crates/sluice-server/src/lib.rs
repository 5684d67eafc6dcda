//! `sluice serve`: the server that runs flows on their own.
//!
//! It loads every flow file of a folder ([`FlowSet`]), starts their triggers
//! (webhooks at `/hooks/PATH`, schedules, polls of SQL tables, CloudEvents
//! at `/events`, manual runs through the API; `flow` steps start flows with a
//! `flow` trigger, and the engine runs `event` flows as data hooks of SQL
//! steps), and
//! serves the HTTP API (`/api/...`, its OpenAPI document at
//! `/api/openapi.json`) and Prometheus metrics (`/metrics`).
//!
//! Durability: a run is recorded in the store before anything answers for it
//! (an asynchronous webhook's `202` carries the id of a run already
//! committed), and every step is committed before the next one starts. Runs
//! are driven on tasks of their own, so a client that hangs up does not stop
//! its run. When the process dies (`kill -9`), [`Server::recover`] at the
//! next start continues every run left `running` from its last committed
//! step, and wakes every suspended run (a sleep, a retry's backoff, an event
//! wait's timeout) when it is due. A schedule's fire is claimed in the store
//! before it runs, so it never fires twice for the same time, across
//! restarts; a wait is claimed before its run continues, so an event or a
//! timer wakes a run once; a poll's page records its runs with the
//! snapshot's advance, so a row's change starts one run.
//!
//! Every error answer has one shape: `{"code", "message", "details"}`
//! ([`ApiError`]).

mod api;
pub mod auth;
mod edit;
mod error;
mod events;
mod flows;
mod hook_auth;
mod hooks;
mod params;
pub mod parse;
mod poll;
mod schedule;
mod scrub;
mod search;
mod serve;
mod server;
mod ui;

pub use error::ApiError;
pub use flows::{FlowSet, Hook, LoadFailure, Polled, Scheduled};
pub use server::{Auth, DEFAULT_MAX_IN_FLIGHT, Recovered, RunTask, Server, Timeouts};
