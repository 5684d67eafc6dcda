//! Imports: the envelopes of many records written together.
//!
//! `sluice run FLOW --records FILE` runs the flow once per record, a chunk of
//! records at a time, the chunk's records side by side. An `envelope` step of
//! a record does not write at once: it hands its patches to the chunk's
//! [`Batch`] and waits. The batch counts the chunk's runs that have not
//! ended ([`Batch::expect`], [`Batch::ended`]); when every one of them
//! waits, it tells the importer, which calls [`Batch::flush`] to write them
//! all (the
//! envelopes of the next chunk may wait beside them meanwhile: each
//! envelope is marked with its chunk, and a flush writes one chunk's):
//!
//! * patch by patch across the records (patch 1 of every record, then its
//!   children, then patch 2, ...), each record's patches templated with its
//!   own tokens; consecutive `create` patches of one collection with the
//!   same fields become one multi-row INSERT (on PostgreSQL, `INSERT ...
//!   SELECT unnest(...)` of one text array per field); other patches are
//!   written one by one, in record order;
//! * in groups of records, each under a savepoint: when anything fails, the
//!   batch rolls back to it and writes each half of the group again under a
//!   savepoint of its own (or, where PostgreSQL names the key or the row
//!   that failed, the records before the one with it, that one, and those
//!   after), down to the single record that fails. That record's envelope
//!   fails alone, with the database's own message; the others land whole,
//!   in record order, as if written one after another.
//!   A group is the whole chunk until a record is refused; then its size
//!   follows the share of records refused so far ([`group_size`]), since
//!   every good record of a failed group is written again; once more than
//!   a third were refused, records are written one at a time. A refused
//!   write's rollback goes with the next savepoint (or before the
//!   commit), not in a round trip of its own.
//!
//! A chunk's writes and the import's position (a row of `sluice_imports` in
//! the same database) commit in one transaction ([`Batch::commit_chunk`]), so
//! an interrupted import resumes after its last committed chunk and never
//! writes a record twice.
//!
//! A multi-row INSERT returns its rows in no promised order. They are matched
//! to the records by the primary key: the key given in the patch, or else a
//! generated integer key, which every supported database assigns in
//! increasing order within one statement. When neither holds, the rows are
//! written one by one.
//!
//! The writer does as little as it can, so that it keeps the database busy:
//! a record templates and parses its own patches when it hands them over
//! (only values reading `$tokens` are left for the writer), and PostgreSQL's
//! rows stay as they came until the record's own task makes them JSON (the
//! writer reads only keys and the fields tokens take).

mod insert;
mod lean;
mod pipe;
mod plan;
mod position;
mod prepare;
mod suspect;

use super::{Patch, WithTokens, templated};
use crate::backend::{Backend, Table};
use crate::change::{PatchOp, create_in, delete_in, write_in};
use crate::db::{Db, Fetched, Made, Pools, Stmt, Tx};
use crate::decode::Got;
use crate::sets::id_text;
use insert::*;
use lean::*;
use pipe::*;
use prepare::*;
use serde_json::{Map, Value};
use sluice_action::batch::{BatchWriter, Batches, InBatch, Position};
use sluice_action::{ActionError, Blame, BoxFuture, Outcome};
use sluice_expr::{Input, Limits, MapScope, Template, TemplateValue, Val};
use sluice_model::Flow;
use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use suspect::*;
use tokio::sync::{Notify, oneshot};

/// At most this many bound values in one statement (SQLite allows 32766).
const MAX_PARAMS: usize = 30_000;

/// How a refused group's savepoint is rolled back (then released); a
/// `carry` that starts with it still has a rollback to send.
const UNDO: &str = "ROLLBACK TO SAVEPOINT";

/// A chunk's transaction on PostgreSQL commits without waiting for the
/// disk. Its rows and the import's position commit together, so a
/// database crash that loses the last commits loses both: the import
/// resumes from the last position that reached the disk, as after a crash
/// of Sluice before those commits (the failure report and the records'
/// outputs are cut back to that position). The import's last commit, which
/// marks it finished, waits for the disk, and with it every commit before.
const ASYNC_CHUNKS: &str = "SET LOCAL synchronous_commit TO OFF; ";

/// The writes of one chunk of an import, on the import's connection.
pub struct Batch {
    connection: String,
    /// Whether a chunk is written while the chunk before it commits (on
    /// PostgreSQL, when that gives the same result: see `plan::overlaps`).
    overlaps: bool,
    db: Arc<Db>,
    /// The runs of each chunk and the envelopes waiting to be written.
    chunks: Mutex<BTreeMap<u64, ChunkRuns>>,
    /// The layouts of the lean patches handed over so far, by shape.
    layouts: Mutex<Layouts>,
    /// Each chunk's open transaction, and what to send first when it goes
    /// on (see `write_group`'s `carry`): a chunk may write (on a
    /// connection of its own) while the chunk before it writes and commits.
    txs: Mutex<BTreeMap<u64, (Tx, String)>>,
    /// Where each chunk's writes are, for the chunk after it (when chunks
    /// overlap), and the positions the envelopes write (when they are
    /// written out: see [`pipe`]).
    stages: Mutex<BTreeMap<u64, Arc<Stage>>>,
    pipeline: Option<Pipeline>,
    /// The chunks whose transaction has begun and not ended.
    open: Mutex<BTreeSet<u64>>,
    /// The patch that failed, per record.
    failed_patches: Mutex<HashMap<u64, String>>,
    /// Records whose envelopes were written so far, and those refused
    /// among them: how large a group to write at once (see [`group_size`]).
    tried: AtomicU64,
    refused: AtomicU64,
}

/// The runs of one chunk.
struct ChunkRuns {
    /// Runs that have not ended (those not started yet included).
    left: usize,
    /// Their envelopes waiting to be written.
    waiting: Vec<Waiting>,
    /// Told whenever every run left waits for its envelope.
    all_wait: Arc<Notify>,
}

impl ChunkRuns {
    fn all_wait(&self) -> bool {
        self.left > 0 && self.waiting.len() == self.left
    }

    fn tell(&self) {
        if self.all_wait() {
            self.all_wait.notify_one();
        }
    }
}

/// An envelope waiting to be written.
struct Waiting {
    record: u64,
    /// Its patches, templated as far as they can be before any is written,
    /// and what made each.
    patches: Vec<Pending>,
    shapes: Vec<Shape>,
    /// What the templates left for the write read: the step's input (when
    /// one of them can read it: else null) and the flow-object variables
    /// they mention.
    input: Input<'static>,
    scope: MapScope,
    global: Map<String, Value>,
    /// Whether its record reads the envelope's results (see
    /// [`InBatch::results_read`]).
    results_read: bool,
    /// Taken when answered.
    reply: Option<oneshot::Sender<Result<Written, ActionError>>>,
}

/// What failed in a group: the error as the record's envelope reports it,
/// and the patch: as the report names it, and its position (`[1, 0]`: the
/// first child of patch 2).
struct Fail {
    error: ActionError,
    patch: String,
    at: Vec<usize>,
}

fn fail(which: String, at: &[usize], e: ActionError) -> Fail {
    Fail {
        error: super::envelope_failure(&which, e),
        patch: which,
        at: at.to_vec(),
    }
}

/// The label of the patches at position `at`: `[1]` is `patch 2`, `[0, 0]`
/// (the first child of patch 1) `patch 1.1`.
fn label(at: &[usize]) -> String {
    let mut s = String::from("patch ");
    for (n, i) in at.iter().enumerate() {
        if n > 0 {
            s.push('.');
        }
        s.push_str(&(i + 1).to_string());
    }
    s
}

/// One patch of one record, at one position of the envelopes (named by
/// the position's label, such as `patch 1.2`).
struct Item<'p> {
    job: usize,
    patch: PatchRef<'p>,
    parent: Option<Value>,
    shape: Shape,
}

/// What one record's envelope has written so far.
struct Work {
    /// The tokens (an object), and as jq value once a template needed it
    /// (until a token is set).
    tokens: Value,
    tokens_val: std::sync::OnceLock<Val>,
    results: Vec<Tree>,
}

/// A written envelope, as the writer answers its record.
struct Written {
    /// The tokens it set.
    tokens: Map<String, Value>,
    results: Vec<Tree>,
    /// What the record handed over, back to its own task to be dropped
    /// there, where it was made, rather than by the writer.
    handed: Option<Waiting>,
}

/// A patch's result as the writer leaves it: its row, made JSON by the
/// record's own task (see [`Got`]), with its children's.
struct Tree {
    row: Got,
    table: Arc<Table>,
    children: Vec<Tree>,
}

impl Tree {
    fn into_value(self) -> Result<Value, ActionError> {
        let mut m = self.row.into_map(&self.table.cols)?;
        if !self.children.is_empty() {
            let children = self
                .children
                .into_iter()
                .map(Tree::into_value)
                .collect::<Result<Vec<_>, _>>()?;
            m.insert("children".into(), Value::Array(children));
        }
        Ok(Value::Object(m))
    }
}

impl Work {
    /// The scope the templates left to the writer read.
    fn scope<'a>(&'a self, inner: &'a MapScope) -> WithTokens<'a> {
        WithTokens {
            inner,
            tokens: &self.tokens,
            tokens_val: &self.tokens_val,
        }
    }

    fn set_token(&mut self, name: &str, v: Value) {
        if let Value::Object(m) = &mut self.tokens {
            m.insert(name.to_owned(), v);
        }
        self.tokens_val = std::sync::OnceLock::new();
    }
}

impl Batch {
    /// A batch writing `flow`'s records through connection `connection`.
    pub async fn open(pools: &Pools, flow: &Flow, connection: &str) -> Result<Self, ActionError> {
        let db = pools.db(&flow.connections, connection).await?;
        let overlaps = db.backend == Backend::Postgres && plan::overlaps(flow);
        Ok(Self {
            overlaps,
            pipeline: overlaps
                .then(|| plan::positions(flow))
                .flatten()
                .map(Pipeline::new),
            stages: Mutex::new(BTreeMap::new()),
            connection: connection.to_owned(),
            db,
            chunks: Mutex::new(BTreeMap::new()),
            layouts: Mutex::new(Vec::new()),
            txs: Mutex::new(BTreeMap::new()),
            open: Mutex::new(BTreeSet::new()),
            failed_patches: Mutex::new(HashMap::new()),
            tried: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The connection's name.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Chunk `chunk`'s open transaction and what to send first on it,
    /// taken out (none yet: `None`).
    fn take_tx(&self, chunk: u64) -> Result<Option<(Tx, String)>, ActionError> {
        Ok(locked(&self.txs)?.remove(&chunk))
    }

    /// Chunk `chunk` writes no more: the chunk after it no longer waits for it.
    fn end_stage(&self, chunk: u64) {
        if let Some(s) = self.stages.lock().ok().and_then(|mut m| m.remove(&chunk)) {
            s.over();
        }
    }

    fn chunks(&self) -> Result<MutexGuard<'_, BTreeMap<u64, ChunkRuns>>, ActionError> {
        locked(&self.chunks)
    }

    /// Chunk `chunk` has `runs` record runs (to be started): the
    /// [`Notify`] returned is told whenever every one of them that has not
    /// ended waits for its envelope to be written ([`Batch::flush`]).
    pub fn expect(&self, chunk: u64, runs: usize) -> Result<Arc<Notify>, ActionError> {
        let all_wait = Arc::new(Notify::new());
        if self.overlaps {
            locked(&self.stages)?.insert(chunk, Arc::new(Stage::default()));
        }
        self.chunks()?.insert(
            chunk,
            ChunkRuns {
                left: runs,
                waiting: Vec::new(),
                all_wait: all_wait.clone(),
            },
        );
        Ok(all_wait)
    }

    /// A run of chunk `chunk` ended.
    pub fn ended(&self, chunk: u64) {
        if let Ok(mut m) = self.chunks()
            && let Some(c) = m.get_mut(&chunk)
        {
            c.left = c.left.saturating_sub(1);
            c.tell();
        }
    }

    /// Whether every run of chunk `chunk` that has not ended waits for its envelope.
    pub fn all_wait(&self, chunk: u64) -> bool {
        self.chunks()
            .is_ok_and(|m| m.get(&chunk).is_some_and(ChunkRuns::all_wait))
    }

    /// Chunk `chunk` is over: forget it.
    pub fn forget(&self, chunk: u64) {
        if let Ok(mut m) = self.chunks() {
            m.remove(&chunk);
        }
        self.end_stage(chunk);
    }

    /// The patch that failed for record `record`, if one did (told once).
    pub fn failed_patch(&self, record: u64) -> Option<String> {
        self.failed_patches
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&record))
    }

    /// Whether patches made from template `item` are lean (see
    /// [`Layout`]), its layout made the first time it is asked.
    fn has_layout(&self, item: &TemplateValue) -> bool {
        let Ok(mut layouts) = self.layouts.lock() else {
            return false;
        };
        let shape = Shape::of(item);
        if let Some((_, l)) = layouts.iter().find(|(s, _)| s.alike(shape)) {
            return l.is_some();
        }
        let l = Layout::of(item, true).map(Arc::new);
        let lean = l.is_some();
        layouts.push((shape, l));
        lean
    }

    /// Hand an envelope to the batch and wait until it is written.
    pub(crate) async fn submit(
        &self,
        cx: &sluice_action::ActionCx<'_>,
        at: InBatch<'_>,
        connection: &str,
        patches: Vec<Patch>,
    ) -> Result<Outcome, ActionError> {
        if connection != self.connection {
            return Err(ActionError::flow(format!(
                "in an import every envelope writes through the import's connection `{}`; this one names `{connection}`",
                self.connection
            )));
        }
        let global = super::global_tokens(cx.scope);
        let mut scope = MapScope::default();
        // Whether a template left for the writer reads the input.
        let mut reads_input = false;
        let mut shapes = Vec::new();
        let patches = match cx.deferred.get("patches").map(|(_, t)| t) {
            None => patches.into_iter().map(Pending::Ready).collect(),
            Some(t) => {
                let count = t.array_len().unwrap_or(0);
                let mut out = Vec::with_capacity(count);
                shapes.reserve(count);
                for i in 0..count {
                    let item = match t {
                        TemplateValue::Array(items) => items.get(i),
                        _ => None,
                    };
                    if let Some(item) = item
                        && self.has_layout(item)
                    {
                        shapes.push(Shape::of(item));
                        out.push(match Lean::build(item, cx, &mut scope, &mut reads_input) {
                            Ok(b) => Pending::Lean(b),
                            Err(e) => Pending::Failed(e),
                        });
                        continue;
                    }
                    if let Some(item) = item.filter(|p| usual(p, true)) {
                        shapes.push(Shape::of(item));
                        let mut holes = Vec::new();
                        out.push(match build(i, item, cx, &mut holes) {
                            Err(e) => Pending::Failed(e),
                            Ok(p) if holes.is_empty() => Pending::Ready(p),
                            Ok(p) => {
                                let templates = holes.iter().flat_map(|h| h.value.templates());
                                reads_input |= collect_vars(&mut scope, cx.scope, templates);
                                Pending::Holes(p, holes)
                            }
                        });
                        continue;
                    }
                    shapes.push(Shape::NONE);
                    let rendered = t.render_item_partial(
                        i,
                        cx.program_input,
                        cx.scope,
                        cx.limits,
                        &reads_tokens,
                    );
                    out.push(match rendered {
                        Err(e) => Pending::Failed(e.into()),
                        Ok(None) => ready(i, Value::Null),
                        Ok(Some(TemplateValue::Const(v))) => ready(i, v),
                        Ok(Some(later)) => {
                            reads_input |= collect_vars(&mut scope, cx.scope, later.templates());
                            Pending::Later(later)
                        }
                    });
                }
                out
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = Waiting {
            record: at.record,
            patches,
            shapes,
            input: Input::val(if reads_input {
                cx.program_input.as_val().clone()
            } else {
                Val::Null
            }),
            scope,
            global,
            results_read: at.results_read,
            reply: Some(reply),
        };
        {
            let mut m = self.chunks()?;
            let c = m.get_mut(&at.chunk).ok_or_else(|| ActionError {
                blame: Blame::Bug,
                message: format!("chunk {} of the import is not expected", at.chunk),
                retry_after_ms: None,
                incident: false,
            })?;
            c.waiting.push(job);
            c.tell();
        }
        let written = answer.await.map_err(|_| ActionError {
            blame: Blame::External,
            message: "the import stopped before this record's envelope was written".into(),
            retry_after_ms: None,
            incident: false,
        })??;
        if !at.results_read {
            // Nothing reads the step's result nor the tokens it set (it
            // ends the run of a record whose output is not kept): neither
            // is made. An empty object stands for the result, which the
            // engine still checks can merge into the state data (that
            // check reads only its kind).
            return Ok(Outcome {
                payload: Some(Value::Object(Map::new())),
                ..Outcome::default()
            });
        }
        let results = written
            .results
            .into_iter()
            .map(Tree::into_value)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::envelope_payload(written.tokens, results))
    }

    /// Write every waiting envelope of chunk `chunk` (see the module's
    /// description). `Err` means the connection itself failed: the chunk
    /// cannot be committed. `Ok(false)`: a group's write failed while a
    /// chunk before had not committed; that group's envelopes and those
    /// after it wait again, to be written once the chunks before have
    /// committed (the groups before it stay written, uncommitted).
    pub async fn flush(&self, limits: &Limits, chunk: u64) -> Result<bool, ActionError> {
        let mut jobs: Vec<Waiting> = self
            .chunks()?
            .get_mut(&chunk)
            .map(|c| std::mem::take(&mut c.waiting))
            .unwrap_or_default();
        if jobs.is_empty() {
            return Ok(true);
        }
        jobs.sort_by_key(|w| w.record);
        let (mut tx, mut carry) = match self.take_tx(chunk)? {
            Some(held) => held,
            None => {
                let tx = self.db.begin().await?;
                locked(&self.open)?.insert(chunk);
                // On PostgreSQL a chunk's commit does not wait for its
                // WAL to reach the disk (see `ASYNC_CHUNKS`).
                let first = match self.db.backend {
                    Backend::Postgres => ASYNC_CHUNKS.to_owned(),
                    _ => String::new(),
                };
                (tx, first)
            }
        };
        // The chunk's own stage, and the stage of the chunk before (each
        // group follows it while it writes).
        let (own, before) = {
            let stages = locked(&self.stages)?;
            let before = stages.range(..chunk).next_back().map(|(_, s)| s.clone());
            (stages.get(&chunk).cloned(), before)
        };
        let size = group_size(
            jobs.len(),
            self.tried.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.db.backend,
        );
        let mut jobs = jobs.into_iter();
        // A savepoint released is released with the next one's start, or
        // not at all: the commit ends it, and a later flush of the chunk
        // starts its savepoints inside it (rolling back to its own): one
        // round trip fewer per group.
        loop {
            let group: Vec<Waiting> = jobs.by_ref().take(size).collect();
            if group.is_empty() {
                break;
            }
            // The next chunk may write beside this one's last group.
            let lead = own
                .as_deref()
                .filter(|_| jobs.len() == 0 && self.pipeline.is_some());
            let n = group.len() as u64;
            // While a chunk before has not committed, a write may fail
            // because of that alone: a foreign key does not see that
            // chunk's rows yet (a unique key waits for its commit). A
            // failure then is not looked into: the group (and the rest of
            // the chunk) is written again after that commit, with the
            // result it would have had after it.
            let early = locked(&self.open)?.range(..chunk).next().is_some();
            let follow = before.as_deref().filter(|s| !s.is_over());
            let pipe = Pipe {
                back: early || follow.is_some(),
                lead,
                follow,
                plan: self.pipeline.as_ref(),
            };
            if let Some(l) = lead {
                l.begin();
            }
            match self
                .write_group(&mut tx, group, limits, pipe, &mut carry)
                .await
            {
                Ok(None) => {
                    self.tried.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Some(again)) => {
                    if let Some(c) = self.chunks()?.get_mut(&chunk) {
                        c.waiting.extend(again);
                        c.waiting.extend(jobs);
                    }
                    locked(&self.txs)?.insert(chunk, (tx, carry));
                    return Ok(false);
                }
                Err(e) => {
                    // A connection that failed is dropped with its transaction.
                    locked(&self.open)?.remove(&chunk);
                    return Err(e);
                }
            }
        }
        locked(&self.txs)?.insert(chunk, (tx, carry));
        if let Some(s) = own {
            s.over();
        }
        Ok(true)
    }

    /// Write a group of envelopes under a savepoint; on failure, its parts
    /// again (see below), or (`pipe.back`) hand them back unwritten.
    /// `carry`: statements to send with the savepoint's (the release of
    /// the one before, or its rollback), and then this one's release or
    /// rollback. `pipe`: how the group is written beside the chunks before
    /// and after it (see [`pipe`]).
    ///
    /// The parts of a failed group wait in a queue, in record order, and
    /// are written one after another, each under a savepoint of its own
    /// (the failed group's is gone by then): however many records fail,
    /// the writer goes no deeper.
    async fn write_group(
        &self,
        tx: &mut Tx,
        jobs: Vec<Waiting>,
        limits: &Limits,
        pipe: Pipe<'_>,
        carry: &mut String,
    ) -> Result<Option<Vec<Waiting>>, ActionError> {
        let sp = "sluice_sp0";
        let mut todo = std::collections::VecDeque::from([(jobs, pipe)]);
        while let Some((mut jobs, pipe)) = todo.pop_front() {
            carry.push_str("SAVEPOINT ");
            carry.push_str(sp);
            if pipe.follow.is_some() {
                carry.push_str("; ");
                carry.push_str(FOLLOWER_LOCK_TIMEOUT);
            }
            tx.raw(carry).await?;
            carry.clear();
            let written = match self.write_all(tx, &mut jobs, limits, pipe).await {
                // A follower answers once the chunk before writes no more.
                Ok(outcomes) => match pipe.follow {
                    Some(f) => f.until_over().await.map(|()| outcomes).map_err(aborted),
                    None => Ok(outcomes),
                },
                Err(f) => Err(f),
            };
            let f = match written {
                Ok(outcomes) => {
                    *carry = format!("RELEASE SAVEPOINT {sp}; ");
                    if pipe.follow.is_some() {
                        carry.push_str(LOCK_TIMEOUT_BACK);
                    }
                    for (mut w, mut o) in jobs.into_iter().zip(outcomes) {
                        if let Some(r) = w.reply.take() {
                            o.handed = Some(w);
                            let _ = r.send(Ok(o));
                        }
                    }
                    continue;
                }
                Err(f) => f,
            };
            if let Some(l) = pipe.lead {
                l.stop();
            }
            let undo = format!("{UNDO} {sp}; RELEASE SAVEPOINT {sp}");
            if pipe.lead.is_some() || pipe.follow.is_some() {
                // The chunk beside waits for the rollback: it is made now.
                // A connection that cannot roll back to the savepoint is gone.
                tx.raw(&undo).await?;
            } else {
                // Sent with the next savepoint (one round trip fewer per
                // refused write), or before the chunk's commit (see
                // `commit_chunk`).
                *carry = undo + "; ";
            }
            if let Some(f) = pipe.follow {
                f.left();
            }
            // Nothing is written again before the chunk after
            // has rolled back what it wrote beside this one.
            if let Some(l) = pipe.lead {
                l.alone().await;
            }
            if pipe.back {
                // (Only the group itself is written back-to-front like
                // this: its parts are written alone, so none is queued.)
                return Ok(Some(jobs));
            }
            if jobs.len() == 1 {
                self.refused.fetch_add(1, Ordering::Relaxed);
                for w in jobs {
                    if let Ok(mut m) = self.failed_patches.lock() {
                        m.insert(w.record, f.patch.clone());
                    }
                    if let Some(r) = w.reply {
                        let _ = r.send(Err(f.error.clone()));
                    }
                }
                continue;
            }
            // Around the record the database named, when it named
            // one; else in halves. Either way in record order, so a
            // wrong guess costs groups, not results.
            let mut left = jobs;
            let layouts = locked(&self.layouts)?.clone();
            let parts = match suspect(&f, &left, &layouts) {
                Some(k) => {
                    let mut rest = left.split_off(k);
                    let after = rest.split_off(1);
                    [left, rest, after]
                }
                None => {
                    let right = left.split_off(left.len() / 2);
                    [left, right, Vec::new()]
                }
            };
            for part in parts.into_iter().rev().filter(|p| !p.is_empty()) {
                todo.push_front((part, Pipe::default()));
            }
        }
        Ok(None)
    }

    /// Write the envelopes patch position by patch position.
    async fn write_all(
        &self,
        tx: &mut Tx,
        jobs: &mut [Waiting],
        limits: &Limits,
        pipe: Pipe<'_>,
    ) -> Result<Vec<Written>, Fail> {
        // The layouts of the lean patches (all made before their records
        // handed them over).
        let layouts = locked(&self.layouts)
            .map_err(|e| fail(label(&[0]), &[0], e))?
            .clone();
        let mut works: Vec<Work> = jobs
            .iter()
            .map(|w| Work {
                tokens: Value::Object(w.global.clone()),
                tokens_val: std::sync::OnceLock::new(),
                results: Vec::with_capacity(w.patches.len()),
            })
            .collect();
        let most = jobs.iter().map(|w| w.patches.len()).max().unwrap_or(0);
        let rows_read = jobs.iter().any(|w| w.results_read);
        for i in 0..most {
            let at = [i];
            let failed = |e: ActionError| Fail {
                error: e,
                patch: label(&at),
                at: at.to_vec(),
            };
            for (j, w) in jobs.iter_mut().enumerate() {
                let Waiting {
                    patches,
                    shapes,
                    input,
                    scope,
                    ..
                } = w;
                if let Some(Pending::Lean(b)) = patches.get_mut(i) {
                    let shape = shapes.get(i).copied().unwrap_or(Shape::NONE);
                    let scope = works[j].scope(scope);
                    for (at, t) in layout_of(&layouts, shape).map_or(&[][..], |l| &l.holes) {
                        let v = t
                            .render(input, &scope, limits)
                            .map_err(|e| failed(e.into()))?;
                        if let Some(slot) = b.values.get_mut(*at) {
                            *slot = v;
                        }
                    }
                    continue;
                }
                let Some(Pending::Holes(p, holes)) = patches.get_mut(i) else {
                    continue;
                };
                let scope = works[j].scope(scope);
                for h in holes.iter() {
                    let v = h
                        .value
                        .render(input, &scope, limits)
                        .map_err(|e| failed(e.into()))?;
                    let into = if h.criteria {
                        &mut p.criteria
                    } else {
                        &mut p.properties
                    };
                    match into.get_mut(&h.key) {
                        Some(slot) => *slot = v,
                        None => {
                            into.insert(h.key.clone(), v);
                        }
                    }
                }
            }
            // The patches at position `i` that are rendered only now, then
            // every patch there with the record it belongs to.
            let mut rendered: Vec<Option<Patch>> = Vec::new();
            for (j, w) in jobs.iter().enumerate() {
                match w.patches.get(i) {
                    Some(Pending::Later(t)) => {
                        if rendered.is_empty() {
                            rendered.resize_with(jobs.len(), || None);
                        }
                        let scope = works[j].scope(&w.scope);
                        let v = t
                            .render(&w.input, &scope, limits)
                            .map_err(|e| failed(e.into()))?;
                        rendered[j] = Some(templated(i, v).map_err(failed)?);
                    }
                    Some(Pending::Failed(e)) => return Err(failed(e.clone())),
                    _ => {}
                }
            }
            let mut items: Vec<Item<'_>> = Vec::with_capacity(jobs.len());
            for (job, w) in jobs.iter().enumerate() {
                let shape = w.shapes.get(i).copied().unwrap_or(Shape::NONE);
                let (patch, shape) = match w.patches.get(i) {
                    Some(Pending::Ready(p) | Pending::Holes(p, _)) => (PatchRef::Full(p), shape),
                    Some(Pending::Lean(b)) => match layout_of(&layouts, shape) {
                        Some(l) => (PatchRef::Lean(b, l), shape),
                        None => return Err(failed(no_layout())),
                    },
                    Some(_) => match rendered.get(job) {
                        Some(Some(p)) => (PatchRef::Full(p), Shape::NONE),
                        _ => continue,
                    },
                    None => continue,
                };
                items.push(Item {
                    job,
                    patch,
                    parent: None,
                    shape,
                });
            }
            let rows = self
                .write_items(tx, &items, &at, &mut works, rows_read, pipe)
                .await?;
            for (it, row) in items.iter().zip(rows) {
                works[it.job].results.push(row);
            }
        }
        Ok(jobs
            .iter()
            .zip(works)
            .map(|(w, work)| Written {
                // Read only with the results (see `submit`).
                tokens: match work.tokens {
                    Value::Object(m) if w.results_read => super::set_tokens(&w.global, m),
                    _ => Map::new(),
                },
                results: work.results,
                handed: None,
            })
            .collect())
    }

    /// Write the patches at one position, `at` (and then their children's
    /// positions); `rows_read`: whether a record reads the rows written.
    fn write_items<'a>(
        &'a self,
        tx: &'a mut Tx,
        items: &'a [Item<'a>],
        at: &'a [usize],
        works: &'a mut [Work],
        rows_read: bool,
        pipe: Pipe<'a>,
    ) -> BoxFuture<'a, Result<Vec<Tree>, Fail>> {
        Box::pin(async move {
            let db = &*self.db;
            let label = label(at);
            pipe.before(at).await.map_err(aborted)?;
            let which = |it: &Item| {
                format!(
                    "{} ({} {})",
                    label,
                    it.patch.op().word(),
                    it.patch.collection()
                )
            };
            let mut prepared: Vec<(Fields<'_>, Arc<Table>)> = Vec::with_capacity(items.len());
            for it in items {
                let p = it.patch;
                let parent = match (p.parent_key(), &it.parent) {
                    (Some(k), Some(id)) => Some((k, id)),
                    (Some(_), None) => {
                        return Err(fail(
                            which(it),
                            at,
                            ActionError::flow("`parentKey` is only for child patches"),
                        ));
                    }
                    (None, _) => None,
                };
                let props = Fields::new(p.properties(), parent);
                // Patches at one position mostly have the same fields as
                // the one before: checked once for all of them.
                let before = prepared.len().checked_sub(1);
                let same = before.and_then(|b| prepared.get(b).zip(items.get(b)));
                let t = match same {
                    Some(((_, t), b)) if b.shape.alike(it.shape) => t.clone(),
                    Some(((before, t), b))
                        if b.patch.collection() == p.collection()
                            && before.keys().eq(props.keys())
                            && b.patch.criteria().keys().eq(p.criteria().keys()) =>
                    {
                        t.clone()
                    }
                    _ => db
                        .check_fields(p.collection(), props.keys().chain(p.criteria().keys()))
                        .await
                        .map_err(|e| fail(which(it), at, e))?,
                };
                prepared.push((props, t));
            }
            let mut rows: Vec<Got> = Vec::with_capacity(items.len());
            let mut k = 0;
            while k < items.len() {
                let it = &items[k];
                let p = it.patch;
                let (props, t) = &prepared[k];
                if p.op() == PatchOp::Create {
                    let mut e = k + 1;
                    let mut uniform = true;
                    while e < items.len() {
                        let alike = items[e].shape.alike(it.shape);
                        let same = alike
                            || (items[e].patch.op() == PatchOp::Create
                                && items[e].patch.collection() == p.collection()
                                && prepared[e].0.keys().eq(props.keys()));
                        if !same {
                            break;
                        }
                        uniform &= alike;
                        e += 1;
                    }
                    let all: Vec<Fields<'_>> = prepared[k..e].iter().map(|(f, _)| *f).collect();
                    let only = (!rows_read)
                        .then(|| writer_reads(t, items[k..e].iter().map(|it| it.patch)));
                    let made = create_many(tx, db, p.collection(), t, &all, uniform, only.as_ref())
                        .await
                        .map_err(|err| fail(which(it), at, err))?;
                    rows.extend(made);
                    k = e;
                    continue;
                }
                let c = p.collection();
                let props = props.to_map();
                let criteria = p.criteria().to_map();
                let row = match p.op() {
                    PatchOp::Update => write_in(tx, db, c, t, &criteria, &props, false).await,
                    PatchOp::Upsert => write_in(tx, db, c, t, &criteria, &props, true).await,
                    PatchOp::Delete => delete_in(tx, db, c, t, &criteria).await,
                    PatchOp::Create => create_in(tx, db, c, t, &props).await,
                }
                .map_err(|err| fail(which(it), at, err))?;
                rows.push(Got::Map(row));
                k += 1;
            }
            pipe.after(at);
            for ((it, row), (_, t)) in items.iter().zip(&rows).zip(&prepared) {
                for (token, field) in it.patch.set_tokens() {
                    let v = row
                        .field(field, &t.cols)
                        .map_err(|e| fail(which(it), at, e))?;
                    let v = v.ok_or_else(|| {
                        fail(
                            which(it),
                            at,
                            ActionError::flow(format!(
                                "setTokens: the response has no field `{field}` for token `{token}`"
                            )),
                        )
                    })?;
                    works[it.job].set_token(token, v);
                }
            }
            let most = items
                .iter()
                .map(|it| it.patch.children())
                .max()
                .unwrap_or(0);
            let mut children: Vec<Vec<Tree>> = items.iter().map(|_| Vec::new()).collect();
            for c in 0..most {
                let sub_at = [at, &[c]].concat();
                let mut owners = Vec::with_capacity(items.len());
                let mut sub = Vec::with_capacity(items.len());
                for (x, it) in items.iter().enumerate() {
                    if let Some(child) = it.patch.child(c) {
                        owners.push(x);
                        sub.push(Item {
                            job: it.job,
                            patch: child,
                            shape: it.shape.child(c),
                            parent: Some(
                                rows[x]
                                    .new_id(&prepared[x].1)
                                    .map_err(|e| fail(which(it), at, e))?,
                            ),
                        });
                    }
                }
                let outs = self
                    .write_items(tx, &sub, &sub_at, works, rows_read, pipe)
                    .await?;
                for (x, o) in owners.into_iter().zip(outs) {
                    children[x].push(o);
                }
            }
            Ok(rows
                .into_iter()
                .zip(children)
                .zip(prepared)
                .map(|((row, children), (_, table))| Tree {
                    row,
                    table,
                    children,
                })
                .collect())
        })
    }
}

/// The chunk before failed after this group wrote beside it: the group is
/// handed back (never reported).
fn aborted(_: Abort) -> Fail {
    fail(
        label(&[0]),
        &[0],
        ActionError {
            blame: Blame::External,
            message: "the chunk before this one is written again".into(),
            retry_after_ms: None,
            incident: false,
        },
    )
}

/// A lean patch whose layout the batch does not have.
fn no_layout() -> ActionError {
    ActionError {
        blame: Blame::Bug,
        message: "a patch of the import has no layout".into(),
        retry_after_ms: None,
        incident: false,
    }
}

/// One of the batch's locks (a poisoned one: a writer panicked).
fn locked<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, ActionError> {
    m.lock()
        .map_err(|_| ActionError::external("the import's batch is poisoned"))
}

fn now_text() -> String {
    crate::decode::rfc3339(time::OffsetDateTime::now_utc())
}

/// The SQL connector as the writer of an import's envelopes.
pub(crate) struct SqlBatches(pub(crate) Arc<Pools>);

impl Batches for SqlBatches {
    fn plan(&self, flow: &Flow) -> Result<Option<String>, String> {
        plan::connection(flow)
    }

    fn open<'a>(
        &'a self,
        flow: &'a Flow,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn BatchWriter>, ActionError>> {
        Box::pin(async move {
            let b: Arc<dyn BatchWriter> = Arc::new(Batch::open(&self.0, flow, connection).await?);
            Ok(b)
        })
    }

    fn batched(&self, kind: &str) -> bool {
        kind == "envelope"
    }
}

impl BatchWriter for Batch {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn overlaps(&self) -> bool {
        self.overlaps
    }

    fn expect(&self, chunk: u64, runs: usize) -> Result<Arc<Notify>, ActionError> {
        Batch::expect(self, chunk, runs)
    }

    fn ended(&self, chunk: u64) {
        Batch::ended(self, chunk);
    }

    fn all_wait(&self, chunk: u64) -> bool {
        Batch::all_wait(self, chunk)
    }

    fn forget(&self, chunk: u64) {
        Batch::forget(self, chunk);
    }

    fn failed_patch(&self, record: u64) -> Option<String> {
        Batch::failed_patch(self, record)
    }

    fn flush<'a>(
        &'a self,
        limits: &'a Limits,
        chunk: u64,
    ) -> BoxFuture<'a, Result<bool, ActionError>> {
        Box::pin(Batch::flush(self, limits, chunk))
    }

    fn position<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Position>, ActionError>> {
        Box::pin(Batch::position(self, key))
    }

    fn start<'a>(
        &'a self,
        key: &'a str,
        source: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(Batch::start(self, key, source, hash))
    }

    fn commit_chunk<'a>(
        &'a self,
        key: &'a str,
        chunk: Option<u64>,
        next_record: u64,
        finished: bool,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(Batch::commit_chunk(self, key, chunk, next_record, finished))
    }
}

#[cfg(test)]
mod tests;
