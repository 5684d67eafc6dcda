//! Poll triggers: what the server needs of the connector that reads the
//! rows a `poll` trigger watches (the SQL connector), so that the server
//! knows no connector.
//!
//! The server keeps each poll's snapshot in its store and hands it back to
//! [`PollSource::page`], which reads the next page of rows after it and
//! returns the snapshot after that page; the server records the page's runs
//! with the new snapshot in one transaction.

use crate::error::{ActionError, BoxFuture};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// One page of a poll.
#[derive(Clone, Debug, PartialEq)]
pub struct PolledPage {
    /// The rows, in the order their runs start.
    pub rows: Vec<Map<String, Value>>,
    /// Fields of each run's `$trigger` besides `type`, `polledAt` and `row`
    /// (such as the collection and the page's number).
    pub trigger: Map<String, Value>,
    /// The snapshot after this page, to be kept with its runs.
    pub snapshot: Value,
    /// Read the next page at once rather than after the interval.
    pub again: bool,
}

/// The connector that reads a poll trigger's rows.
pub trait PollSource: Send + Sync {
    /// The time between polls of a trigger with these (checked) options.
    fn interval(&self, options: &Value) -> Duration;

    /// Read the page after `snapshot` (`None`: the poll's first), through
    /// the flow's declared `connections`.
    fn page<'a>(
        &'a self,
        connections: &'a BTreeMap<String, Value>,
        options: &'a Value,
        snapshot: Option<Value>,
    ) -> BoxFuture<'a, Result<PolledPage, ActionError>>;
}
