//! Imports written in batches: what the engine's import needs of the
//! connector whose envelopes it writes together (the SQL connector's bulk
//! writer), so that the engine knows no connector.
//!
//! The import runs a chunk of records side by side; a record's batched step
//! (an `envelope`) hands its writes to the chunk's [`BatchWriter`] through
//! [`InBatch`] and waits. When every run of the chunk still going waits, the
//! import calls [`BatchWriter::flush`]; it commits each chunk together with
//! the import's [`Position`] in the same database, so that an interrupted
//! import resumes after its last committed chunk.

use crate::error::{ActionError, BoxFuture};
use sluice_expr::Limits;
use sluice_model::Flow;
use std::any::Any;
use std::sync::Arc;
use tokio::sync::Notify;

/// The connector that writes an import's batched steps.
pub trait Batches: Send + Sync {
    /// Check that `flow` can be imported: every write goes through a batched
    /// step, all of them through one connection (its name is returned;
    /// `None` when the flow writes nothing). `Err`: why not, for the flow's
    /// author.
    fn plan(&self, flow: &Flow) -> Result<Option<String>, String>;

    /// Open a batch writing `flow`'s records through `connection`.
    fn open<'a>(
        &'a self,
        flow: &'a Flow,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn BatchWriter>, ActionError>>;

    /// Whether steps of type `kind` write through the batch (a failure of
    /// such a step can name the patch that failed).
    fn batched(&self, kind: &str) -> bool;
}

/// Where an import stands, as kept in the database it writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Records committed so far (the next record's index, from 0).
    pub next_record: u64,
    /// The records file's hash when the import started.
    pub file_hash: String,
    /// Whether the import went through the whole file.
    pub finished: bool,
}

/// The writes of an import's chunks, on the import's connection.
pub trait BatchWriter: Send + Sync {
    /// The writer as its connector's own type (its batched steps hand it
    /// their writes).
    fn as_any(&self) -> &dyn Any;

    /// Whether a chunk may be written while the chunk before it commits,
    /// with the same result as one after the other.
    fn overlaps(&self) -> bool;

    /// Chunk `chunk` has `runs` record runs (to be started): the
    /// [`Notify`] returned is told whenever every one of them that has not
    /// ended waits for its writes ([`BatchWriter::flush`]).
    fn expect(&self, chunk: u64, runs: usize) -> Result<Arc<Notify>, ActionError>;

    /// A run of chunk `chunk` ended.
    fn ended(&self, chunk: u64);

    /// Whether every run of chunk `chunk` that has not ended waits.
    fn all_wait(&self, chunk: u64) -> bool;

    /// Chunk `chunk` is over: forget it.
    fn forget(&self, chunk: u64);

    /// The patch that failed for record `record`, if one did (told once).
    fn failed_patch(&self, record: u64) -> Option<String>;

    /// Write the waiting writes of chunk `chunk`. `Ok(false)`: its first
    /// write failed while a chunk before it had not committed; they wait
    /// again, to be written once that chunk has committed.
    fn flush<'a>(
        &'a self,
        limits: &'a Limits,
        chunk: u64,
    ) -> BoxFuture<'a, Result<bool, ActionError>>;

    /// Import `key`'s position (its bookkeeping made first when missing).
    fn position<'a>(&'a self, key: &'a str)
    -> BoxFuture<'a, Result<Option<Position>, ActionError>>;

    /// Start import `key` from the first record, forgetting any earlier one.
    fn start<'a>(
        &'a self,
        key: &'a str,
        source: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<(), ActionError>>;

    /// Commit chunk `chunk`'s writes (if any) together with the import's new
    /// position.
    fn commit_chunk<'a>(
        &'a self,
        key: &'a str,
        chunk: Option<u64>,
        next_record: u64,
        finished: bool,
    ) -> BoxFuture<'a, Result<(), ActionError>>;
}

/// A step of one record running inside a batch.
#[derive(Clone, Copy)]
pub struct InBatch<'a> {
    /// The batch.
    pub batch: &'a dyn BatchWriter,
    /// The record's number in the import.
    pub record: u64,
    /// The record's chunk.
    pub chunk: u64,
    /// Whether anything reads what the step emits: when nothing does (the
    /// record's last step, its output not kept), a step may emit its results
    /// empty instead of making each written row JSON.
    pub results_read: bool,
}
