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
//!   SELECT FROM unnest` of one text array per field); other patches are
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
//!   every good record of a failed group is written again.
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

use super::{
    Backend, Db, Fetched, Got, Made, Patch, PatchOp, Stmt, Table, Tx, WithTokens, create_in,
    delete_in, id_text, templated, write_in,
};
use crate::{ActionError, Blame, BoxFuture, Outcome};
use serde_json::{Map, Value};
use sluice_expr::{Input, Limits, MapScope, Template, TemplateValue, Val};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};

/// At most this many bound values in one statement (SQLite allows 32766).
const MAX_PARAMS: usize = 30_000;

/// The writes of one chunk of an import, on the import's connection.
pub struct Batch {
    connection: String,
    db: Arc<Db>,
    /// The runs of each chunk and the envelopes waiting to be written.
    chunks: Mutex<BTreeMap<u64, ChunkRuns>>,
    /// Each chunk's open transaction: a chunk may write (on a connection
    /// of its own) while the chunk before it commits.
    txs: Mutex<BTreeMap<u64, Tx>>,
    /// The chunks whose transaction has begun and not ended.
    open: Mutex<BTreeSet<u64>>,
    /// The patch that failed, per record.
    failed_patches: Mutex<HashMap<u64, String>>,
    /// Records whose envelopes were written so far, and those refused
    /// among them: how large a group to write at once (see [`group_size`]).
    tried: AtomicU64,
    refused: AtomicU64,
}

/// A step of one record running inside a batch.
#[derive(Clone, Copy)]
pub struct InBatch<'a> {
    /// The batch.
    pub batch: &'a Batch,
    /// The record's number in the import.
    pub record: u64,
    /// The record's chunk.
    pub chunk: u64,
    /// Whether anything reads what the step emits: when nothing does (the
    /// record's last step, its output not kept), an envelope emits its
    /// results empty instead of making each stored row JSON.
    pub results_read: bool,
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
    /// Its patches, templated as far as they can be before any is written.
    patches: Vec<Pending>,
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

/// A patch of a waiting envelope. The record's own run templates its
/// patches when it hands its envelope over (so that this work is not the
/// writer's), except the templates that read `$tokens`: the patches before
/// may set tokens, so those are rendered just before their patch is
/// written. Nothing else a template reads changes inside an envelope.
enum Pending {
    Ready(Patch),
    /// Only values of `properties` or `criteria` read `$tokens`: the patch
    /// without them, and them, rendered into it just before it is written.
    Holes(Patch, Vec<Hole>),
    /// Templates reading `$tokens` are left (elsewhere than in values).
    Later(TemplateValue),
    /// Templating failed: the envelope fails at this patch, the patches
    /// before it written and rolled back, as if templated when written.
    Failed(ActionError),
}

/// A value of a patch's `properties` (or `criteria`) left to render.
struct Hole {
    criteria: bool,
    key: String,
    value: TemplateValue,
}

/// Whether patch template `t` has the usual shape, which [`build`] makes
/// into a [`Patch`] directly: `op` and `collection` written out, values of
/// `properties` and `criteria` templated (at the top only, those reading
/// `$tokens` too), `setTokens` and `parentKey` written out, children of
/// the same shape or written out. Any other shape is rendered as a value
/// and parsed, for the same result and the same messages.
fn usual(t: &TemplateValue, top: bool) -> bool {
    let TemplateValue::Object(fields) = t else {
        return false;
    };
    let has = |key: &str| fields.iter().any(|(k, _)| k == key);
    has("op")
        && has("collection")
        && fields.iter().all(|(k, v)| match (k.as_str(), v) {
            ("op", TemplateValue::Const(Value::String(op))) => PatchOp::of_word(op).is_some(),
            ("collection", TemplateValue::Const(Value::String(_))) => true,
            ("properties" | "criteria", TemplateValue::Const(Value::Object(_))) => true,
            ("properties" | "criteria", TemplateValue::Object(values)) => {
                values.iter().all(|(_, v)| match v {
                    TemplateValue::Const(_) => true,
                    TemplateValue::Template(t) => top || !reads_tokens(t),
                    _ => false,
                })
            }
            ("setTokens", TemplateValue::Const(Value::Object(m))) => {
                m.values().all(Value::is_string)
            }
            ("parentKey", TemplateValue::Const(v)) => v.is_string() || v.is_null(),
            ("children", TemplateValue::Const(Value::Array(_))) => true,
            ("children", TemplateValue::Array(items)) => items
                .iter()
                .all(|c| matches!(c, TemplateValue::Const(_)) || usual(c, false)),
            _ => false,
        })
}

/// Patch `i` of its record, from a template of the usual shape (see
/// [`usual`]): its templates rendered, but for those reading `$tokens`,
/// left as `holes` (a child has none).
fn build(
    i: usize,
    t: &TemplateValue,
    cx: &crate::ActionCx<'_>,
    holes: &mut Vec<Hole>,
) -> Result<Patch, ActionError> {
    let TemplateValue::Object(fields) = t else {
        return Err(unmatched());
    };
    let mut patch = Patch {
        op: PatchOp::Create,
        collection: String::new(),
        properties: Map::new(),
        criteria: Map::new(),
        set_tokens: BTreeMap::new(),
        parent_key: None,
        children: Vec::new(),
    };
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("op", TemplateValue::Const(Value::String(op))) => {
                patch.op = PatchOp::of_word(op).ok_or_else(unmatched)?;
            }
            ("collection", TemplateValue::Const(Value::String(c))) => patch.collection = c.clone(),
            ("properties" | "criteria", v) => {
                let criteria = k == "criteria";
                let into = if criteria {
                    &mut patch.criteria
                } else {
                    &mut patch.properties
                };
                match v {
                    TemplateValue::Const(Value::Object(m)) => into.clone_from(m),
                    TemplateValue::Object(values) => {
                        if into.is_empty() {
                            *into = Map::with_capacity(values.len());
                        }
                        for (key, v) in values {
                            let value = match v {
                                TemplateValue::Template(t) if reads_tokens(t) => {
                                    holes.push(Hole {
                                        criteria,
                                        key: key.clone(),
                                        value: v.clone(),
                                    });
                                    // Where the rendered value goes, in its place.
                                    Value::Null
                                }
                                TemplateValue::Template(t) => {
                                    t.render(cx.program_input, cx.scope, cx.limits)?
                                }
                                TemplateValue::Const(c) => c.clone(),
                                _ => return Err(unmatched()),
                            };
                            into.insert(key.clone(), value);
                        }
                    }
                    _ => return Err(unmatched()),
                }
            }
            ("setTokens", TemplateValue::Const(Value::Object(m))) => {
                patch.set_tokens = m
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|f| (k.clone(), f.to_owned())))
                    .collect();
            }
            ("parentKey", TemplateValue::Const(v)) => {
                patch.parent_key = v.as_str().map(str::to_owned)
            }
            ("children", TemplateValue::Const(Value::Array(a))) => {
                for c in a {
                    patch.children.push(templated(i, c.clone())?);
                }
            }
            ("children", TemplateValue::Array(items)) => {
                for c in items {
                    patch.children.push(match c {
                        TemplateValue::Const(c) => templated(i, c.clone())?,
                        c => build(i, c, cx, holes)?,
                    });
                }
            }
            _ => return Err(unmatched()),
        }
    }
    Ok(patch)
}

/// Keep in `scope` the flow-object variables `templates` read (but
/// `$tokens`, which the writer gives); whether one of them can read the input.
fn collect_vars<'t>(
    scope: &mut MapScope,
    from: &dyn sluice_expr::Scope,
    templates: impl IntoIterator<Item = &'t Template>,
) -> bool {
    let mut reads_input = false;
    for t in templates {
        reads_input |= t.reads_input();
        for n in t.programs().flat_map(|p| p.vars()) {
            if n != "tokens"
                && !scope.0.contains_key(n)
                && let Some(v) = from.get(n)
            {
                scope.0.insert(n.clone(), v);
            }
        }
    }
    reads_input
}

/// A patch templated before any is written.
fn ready(i: usize, v: Value) -> Pending {
    match templated(i, v) {
        Ok(p) => Pending::Ready(p),
        Err(e) => Pending::Failed(e),
    }
}

/// Whether a template must wait for the tokens of the envelope's earlier patches.
fn reads_tokens(t: &Template) -> bool {
    t.mentions("tokens")
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

/// A patch's properties, with its parent's key when it is a child.
type Props<'p> = Cow<'p, Map<String, Value>>;

/// One patch of one record, at one position of the envelopes (named by
/// the position's label, such as `patch 1.2`).
struct Item<'p> {
    job: usize,
    patch: &'p Patch,
    parent: Option<Value>,
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

impl Batch {
    /// A batch writing through connection `connection`.
    pub async fn open(
        connections: &super::Connections<'_>,
        connection: &str,
    ) -> Result<Self, ActionError> {
        let db = connections.db(connection).await?;
        Ok(Self {
            connection: connection.to_owned(),
            db,
            chunks: Mutex::new(BTreeMap::new()),
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

    /// Whether it writes to PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.db.backend == Backend::Postgres
    }

    /// Chunk `chunk`'s open transaction, taken out (none yet: `None`).
    fn take_tx(&self, chunk: u64) -> Result<Option<Tx>, ActionError> {
        Ok(locked(&self.txs)?.remove(&chunk))
    }

    fn chunks(&self) -> Result<MutexGuard<'_, BTreeMap<u64, ChunkRuns>>, ActionError> {
        locked(&self.chunks)
    }

    /// Chunk `chunk` has `runs` record runs (to be started): the
    /// [`Notify`] returned is told whenever every one of them that has not
    /// ended waits for its envelope to be written ([`Batch::flush`]).
    pub fn expect(&self, chunk: u64, runs: usize) -> Result<Arc<Notify>, ActionError> {
        let all_wait = Arc::new(Notify::new());
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
    }

    /// The patch that failed for record `record`, if one did (told once).
    pub fn failed_patch(&self, record: u64) -> Option<String> {
        self.failed_patches
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&record))
    }

    /// Hand an envelope to the batch and wait until it is written.
    pub(super) async fn submit(
        &self,
        cx: &crate::ActionCx<'_>,
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
        let patches = match cx.deferred.get("patches").map(|(_, t)| t) {
            None => patches.into_iter().map(Pending::Ready).collect(),
            Some(t) => {
                let count = super::patch_count(Some(t), &patches);
                let mut out = Vec::with_capacity(count);
                for i in 0..count {
                    if let TemplateValue::Array(items) = t
                        && let Some(item) = items.get(i).filter(|p| usual(p, true))
                    {
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
            })?;
            c.waiting.push(job);
            c.tell();
        }
        let written = answer.await.map_err(|_| ActionError {
            blame: Blame::External,
            message: "the import stopped before this record's envelope was written".into(),
        })??;
        let results = if at.results_read {
            written
                .results
                .into_iter()
                .map(Tree::into_value)
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
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
        let mut tx = match self.take_tx(chunk)? {
            Some(tx) => tx,
            None => {
                let tx = self.db.begin().await?;
                locked(&self.open)?.insert(chunk);
                tx
            }
        };
        let size = group_size(
            jobs.len(),
            self.tried.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        );
        let mut jobs = jobs.into_iter();
        // A savepoint released is released with the next one's start, or
        // not at all: the commit ends it, and a later flush of the chunk
        // starts its savepoints inside it (rolling back to its own): one
        // round trip fewer per group.
        let mut carry = String::new();
        loop {
            let group: Vec<Waiting> = jobs.by_ref().take(size).collect();
            if group.is_empty() {
                break;
            }
            let n = group.len() as u64;
            // While a chunk before has not committed, a write may fail
            // because of that alone: a foreign key does not see that
            // chunk's rows yet (a unique key waits for its commit). A
            // failure then is not looked into: the group (and the rest of
            // the chunk) is written again after that commit, with the
            // result it would have had after it.
            let early = locked(&self.open)?.range(..chunk).next().is_some();
            match self
                .write_group(&mut tx, group, limits, 0, early, &mut carry)
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
                    locked(&self.txs)?.insert(chunk, tx);
                    return Ok(false);
                }
                Err(e) => {
                    // A connection that failed is dropped with its transaction.
                    locked(&self.open)?.remove(&chunk);
                    return Err(e);
                }
            }
        }
        locked(&self.txs)?.insert(chunk, tx);
        Ok(true)
    }

    /// Write a group of envelopes under a savepoint; on failure, each half
    /// again, or (`back`) hand them back unwritten. `carry`: statements to
    /// send with the savepoint's (the release of the one before), and
    /// then this one's release.
    fn write_group<'a>(
        &'a self,
        tx: &'a mut Tx,
        jobs: Vec<Waiting>,
        limits: &'a Limits,
        depth: usize,
        back: bool,
        carry: &'a mut String,
    ) -> BoxFuture<'a, Result<Option<Vec<Waiting>>, ActionError>> {
        Box::pin(async move {
            let sp = format!("sluice_sp{depth}");
            carry.push_str("SAVEPOINT ");
            carry.push_str(&sp);
            tx.raw(carry).await?;
            carry.clear();
            let mut jobs = jobs;
            match self.write_all(tx, &mut jobs, limits).await {
                Ok(outcomes) => {
                    *carry = format!("RELEASE SAVEPOINT {sp}; ");
                    for (w, o) in jobs.iter_mut().zip(outcomes) {
                        if let Some(r) = w.reply.take() {
                            let _ = r.send(Ok(o));
                        }
                    }
                    // What the records handed over is dropped by a task of
                    // its own (where they were made, mostly), not by the writer.
                    tokio::spawn(async move { drop(jobs) });
                }
                Err(f) => {
                    // A connection that cannot roll back to the savepoint is gone.
                    tx.raw(&format!(
                        "ROLLBACK TO SAVEPOINT {sp}; RELEASE SAVEPOINT {sp}"
                    ))
                    .await?;
                    if back {
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
                    } else {
                        // Around the record the database named, when it
                        // named one; else in halves. Either way in record
                        // order, so a wrong guess costs groups, not results.
                        let mut left = jobs;
                        let parts = match suspect(&f, &left) {
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
                        for part in parts {
                            if !part.is_empty() {
                                self.write_group(tx, part, limits, depth + 1, false, carry)
                                    .await?;
                            }
                        }
                    }
                }
            }
            Ok(None)
        })
    }

    /// Write the envelopes patch position by patch position.
    async fn write_all(
        &self,
        tx: &mut Tx,
        jobs: &mut [Waiting],
        limits: &Limits,
    ) -> Result<Vec<Written>, Fail> {
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
                    input,
                    scope,
                    ..
                } = w;
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
            // The patches at position `i`, rendered (or as written), then
            // the records they belong to.
            let mut patches: Vec<Cow<'_, Patch>> = Vec::with_capacity(jobs.len());
            let mut owners = Vec::with_capacity(jobs.len());
            for (j, w) in jobs.iter().enumerate() {
                let Some(pending) = w.patches.get(i) else {
                    continue;
                };
                let patch = match pending {
                    Pending::Ready(p) | Pending::Holes(p, _) => Cow::Borrowed(p),
                    Pending::Later(t) => {
                        let scope = works[j].scope(&w.scope);
                        let v = t
                            .render(&w.input, &scope, limits)
                            .map_err(|e| failed(e.into()))?;
                        Cow::Owned(templated(i, v).map_err(failed)?)
                    }
                    Pending::Failed(e) => return Err(failed(e.clone())),
                };
                patches.push(patch);
                owners.push(j);
            }
            let items: Vec<Item<'_>> = patches
                .iter()
                .zip(owners)
                .map(|(patch, job)| Item {
                    job,
                    patch,
                    parent: None,
                })
                .collect();
            let rows = self
                .write_items(tx, &items, &at, &mut works, rows_read)
                .await?;
            for (it, row) in items.iter().zip(rows) {
                works[it.job].results.push(row);
            }
        }
        Ok(jobs
            .iter()
            .zip(works)
            .map(|(w, work)| Written {
                tokens: match work.tokens {
                    Value::Object(m) => super::set_tokens(&w.global, m),
                    _ => Map::new(),
                },
                results: work.results,
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
    ) -> BoxFuture<'a, Result<Vec<Tree>, Fail>> {
        Box::pin(async move {
            let db = &*self.db;
            let label = label(at);
            let which =
                |it: &Item| format!("{} ({} {})", label, it.patch.op.word(), it.patch.collection);
            let mut prepared: Vec<(Props<'_>, Arc<Table>)> = Vec::with_capacity(items.len());
            for it in items {
                let p = it.patch;
                let mut props = Cow::Borrowed(&p.properties);
                if let Some(k) = &p.parent_key {
                    let id = it.parent.clone().ok_or_else(|| {
                        fail(
                            which(it),
                            at,
                            ActionError::flow("`parentKey` is only for child patches"),
                        )
                    })?;
                    props.to_mut().insert(k.clone(), id);
                }
                // Patches at one position mostly have the same fields as
                // the one before: checked once for all of them.
                let before = prepared.len().checked_sub(1);
                let same = before.and_then(|b| prepared.get(b).zip(items.get(b)));
                let t = match same {
                    Some(((before, t), b))
                        if b.patch.collection == p.collection
                            && before.keys().eq(props.keys())
                            && b.patch.criteria.keys().eq(p.criteria.keys()) =>
                    {
                        t.clone()
                    }
                    _ => db
                        .check_fields(&p.collection, props.keys().chain(p.criteria.keys()))
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
                if p.op == PatchOp::Create {
                    let mut e = k + 1;
                    while e < items.len()
                        && items[e].patch.op == PatchOp::Create
                        && items[e].patch.collection == p.collection
                        && prepared[e].0.keys().eq(props.keys())
                    {
                        e += 1;
                    }
                    let all: Vec<&Map<String, Value>> =
                        prepared[k..e].iter().map(|(m, _)| &**m).collect();
                    let only = (!rows_read)
                        .then(|| writer_reads(t, items[k..e].iter().map(|it| it.patch)));
                    let made = create_many(tx, db, &p.collection, t, &all, only.as_ref())
                        .await
                        .map_err(|err| fail(which(it), at, err))?;
                    rows.extend(made);
                    k = e;
                    continue;
                }
                let c = &p.collection;
                let row = match p.op {
                    PatchOp::Update => write_in(tx, db, c, t, &p.criteria, props, false).await,
                    PatchOp::Upsert => write_in(tx, db, c, t, &p.criteria, props, true).await,
                    PatchOp::Delete => delete_in(tx, db, c, t, &p.criteria).await,
                    PatchOp::Create => create_in(tx, db, c, t, props).await,
                }
                .map_err(|err| fail(which(it), at, err))?;
                rows.push(Got::Map(row));
                k += 1;
            }
            for ((it, row), (_, t)) in items.iter().zip(&rows).zip(&prepared) {
                for (token, field) in &it.patch.set_tokens {
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
                .map(|it| it.patch.children.len())
                .max()
                .unwrap_or(0);
            let mut children: Vec<Vec<Tree>> = items.iter().map(|_| Vec::new()).collect();
            for c in 0..most {
                let sub_at = [at, &[c]].concat();
                let mut owners = Vec::new();
                let mut sub = Vec::new();
                for (x, it) in items.iter().enumerate() {
                    if let Some(child) = it.patch.children.get(c) {
                        owners.push(x);
                        sub.push(Item {
                            job: it.job,
                            patch: child,
                            parent: Some(
                                rows[x]
                                    .new_id(&prepared[x].1)
                                    .map_err(|e| fail(which(it), at, e))?,
                            ),
                        });
                    }
                }
                let outs = self
                    .write_items(tx, &sub, &sub_at, works, rows_read)
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

    /// Create the bookkeeping table when missing and read import `key`'s position.
    pub async fn position(&self, key: &str) -> Result<Option<Position>, ActionError> {
        let db = &self.db;
        db.run(
            &Stmt {
                sql: "CREATE TABLE IF NOT EXISTS sluice_imports (\
                      import_key VARCHAR(255) NOT NULL PRIMARY KEY, \
                      source TEXT NOT NULL, \
                      file_hash VARCHAR(64) NOT NULL, \
                      next_record BIGINT NOT NULL, \
                      finished BIGINT NOT NULL, \
                      updated_at VARCHAR(40) NOT NULL)"
                    .into(),
                params: Vec::new(),
            },
            false,
        )
        .await?;
        let p = |n| db.backend.placeholder(n);
        let rows = db
            .rows(&Stmt {
                sql: format!(
                    "SELECT file_hash, next_record, finished FROM sluice_imports WHERE import_key = {}",
                    p(1)
                ),
                params: vec![Value::from(key)],
            })
            .await?;
        Ok(rows.into_iter().next().map(|r| Position {
            file_hash: r
                .get("file_hash")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            next_record: r.get("next_record").and_then(Value::as_u64).unwrap_or(0),
            finished: r.get("finished").and_then(Value::as_i64).unwrap_or(0) != 0,
        }))
    }

    /// Start import `key` from the first record (forgetting any earlier one).
    pub async fn start(&self, key: &str, source: &str, hash: &str) -> Result<(), ActionError> {
        let db = &self.db;
        let p = |n| db.backend.placeholder(n);
        let mut tx = db.begin().await?;
        tx.run(
            &Stmt {
                sql: format!("DELETE FROM sluice_imports WHERE import_key = {}", p(1)),
                params: vec![Value::from(key)],
            },
            false,
        )
        .await?;
        tx.run(
            &Stmt {
                sql: format!(
                    "INSERT INTO sluice_imports (import_key, source, file_hash, next_record, finished, updated_at) \
                     VALUES ({}, {}, {}, 0, 0, {})",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ),
                params: vec![
                    Value::from(key),
                    Value::from(source),
                    Value::from(hash),
                    Value::from(now_text()),
                ],
            },
            false,
        )
        .await?;
        tx.commit().await
    }

    /// Commit chunk `chunk`'s writes (if any) together with the import's new
    /// position.
    pub async fn commit_chunk(
        &self,
        key: &str,
        chunk: Option<u64>,
        next_record: u64,
        finished: bool,
    ) -> Result<(), ActionError> {
        let tx = match chunk {
            Some(c) => self.take_tx(c)?,
            None => None,
        };
        let ended = self.end_chunk(tx, key, next_record, finished).await;
        if let Some(c) = chunk {
            locked(&self.open)?.remove(&c);
        }
        ended?;
        // The patch failures of records committed now are told (those of a
        // chunk written meanwhile stay).
        if let Ok(mut m) = self.failed_patches.lock() {
            m.retain(|record, _| *record > next_record);
        }
        Ok(())
    }

    /// Record the import's position in `tx` (a new transaction: `None`) and commit.
    async fn end_chunk(
        &self,
        tx: Option<Tx>,
        key: &str,
        next_record: u64,
        finished: bool,
    ) -> Result<(), ActionError> {
        let mut tx = match tx {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        let p = |n| self.db.backend.placeholder(n);
        tx.run(
            &Stmt {
                sql: format!(
                    "UPDATE sluice_imports SET next_record = {}, finished = {}, updated_at = {} WHERE import_key = {}",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ),
                params: vec![
                    Value::from(next_record),
                    Value::from(i64::from(finished)),
                    Value::from(now_text()),
                    Value::from(key),
                ],
            },
            false,
        )
        .await?;
        tx.commit().await
    }
}

/// One of the batch's locks (a poisoned one: a writer panicked).
fn locked<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, ActionError> {
    m.lock()
        .map_err(|_| ActionError::external("the import's batch is poisoned"))
}

fn now_text() -> String {
    super::rfc3339(time::OffsetDateTime::now_utc())
}

/// Whether the database generates values for an integer key of this type.
fn integer_key(b: Backend, ty: Option<&String>) -> bool {
    let Some(ty) = ty else { return false };
    match b {
        // Only `INTEGER PRIMARY KEY` is the rowid.
        Backend::Sqlite => ty == "integer",
        Backend::Postgres => matches!(ty.as_str(), "int2" | "int4" | "int8"),
        Backend::MySql => matches!(
            ty.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        ),
    }
}

fn unmatched() -> ActionError {
    ActionError {
        blame: Blame::Bug,
        message: "the rows a multi-row insert returned do not match its records".into(),
    }
}

/// The envelope of `jobs` that the failure `f` most likely came from, by
/// what PostgreSQL's detail names in the failed patch: a key's value (`Key
/// (external_id)=(C-9) already exists.`: the second record that has it, as
/// the first landed and the second found it taken, else the only one), or
/// the row (`Failing row contains (7, C-9, -1.00).`: the first record all
/// of whose values are in it). None when it names neither, or no patch
/// has it as written (a value templated from `$tokens`, a parent's key).
fn suspect(f: &Fail, jobs: &[Waiting]) -> Option<usize> {
    let named = named(&f.error.message)?;
    let (first, children) = f.at.split_first()?;
    let mut having = jobs.iter().enumerate().filter(|(_, w)| {
        // Values rendered only when written (`$tokens`) are not known here.
        let (mut p, holes) = match w.patches.get(*first) {
            Some(Pending::Ready(p)) => (p, &[][..]),
            Some(Pending::Holes(p, holes)) => (p, &holes[..]),
            _ => return false,
        };
        // (A child has none.)
        let holes = if children.is_empty() { holes } else { &[] };
        let known = |k: &String| !holes.iter().any(|h| !h.criteria && h.key == *k);
        for c in children {
            match p.children.get(*c) {
                Some(child) => p = child,
                None => return false,
            }
        }
        match &named {
            Named::Key(field, value) => p
                .properties
                .get(*field)
                .is_some_and(|v| !v.is_null() && id_text(v) == *value),
            Named::Row(cells) => {
                let mut values = p.properties.iter().filter(|(k, _)| known(k)).peekable();
                values.peek().is_some()
                    && values.all(|(_, v)| {
                        let text = if v.is_null() {
                            "null".into()
                        } else {
                            id_text(v)
                        };
                        cells.contains(&text.as_str())
                    })
            }
        }
    });
    let once = having.next()?.0;
    if matches!(named, Named::Row(_)) {
        return Some(once);
    }
    Some(having.next().map_or(once, |(k, _)| k))
}

/// What a PostgreSQL detail names.
#[derive(Debug, PartialEq)]
enum Named<'m> {
    /// One column's value: `Key (COLUMN)=(VALUE) ...`.
    Key(&'m str, &'m str),
    /// A row's values as PostgreSQL writes them: `Failing row contains
    /// (A, B, ...).` (a value with `, ` in it is split too, and so is not
    /// found: no suspect then).
    Row(Vec<&'m str>),
}

fn named(message: &str) -> Option<Named<'_>> {
    const ROW: &str = "(Failing row contains (";
    if let Some(at) = message.rfind(ROW) {
        let rest = &message[at + ROW.len()..];
        let cells = &rest[..rest.rfind(").)")?];
        return Some(Named::Row(cells.split(", ").collect()));
    }
    named_key(message).map(|(k, v)| Named::Key(k, v))
}

/// The column and value of a PostgreSQL detail naming one key: `Key
/// (COLUMN)=(VALUE) ...`.
fn named_key(message: &str) -> Option<(&str, &str)> {
    let rest = &message[message.rfind("(Key (")? + "(Key (".len()..];
    let (field, rest) = rest.split_once(")=(")?;
    let end = [") already exists.", ") is not present in table"]
        .iter()
        .filter_map(|t| rest.find(t))
        .min()?;
    let value = &rest[..end];
    (super::valid_ident(field)).then_some((field, value))
}

/// How many of `n` waiting envelopes to write as one group (one savepoint,
/// one statement per patch position), when `refused` of the `tried`
/// envelopes before were refused. A group with a bad record is written
/// again in halves down to that record, so every good record of it is
/// written about three times; a group costs a few round trips of its own.
/// With a share `p` of bad records, groups of about `sqrt(c / p)` balance
/// the two (`c`: a group's own cost, in records' writes, over three): all
/// `n` at once until a record is refused, some tens of records when one in
/// a hundred is.
fn group_size(n: usize, tried: u64, refused: u64) -> usize {
    /// A group's own cost (its savepoint, its statements' round trips), in
    /// records' writes, over the three writes of a good record in a
    /// group that failed.
    const C: f64 = 3.0;
    if refused == 0 || tried == 0 {
        return n.max(1);
    }
    let p = refused as f64 / tried as f64;
    ((C / p).sqrt().round() as usize).clamp(8, n.max(8))
}

/// Create objects that have the same fields, as few statements as possible;
/// the stored rows, in the order given.
async fn create_many(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    props: &[&Map<String, Value>],
    only: Option<&BTreeSet<&str>>,
) -> Result<Vec<Got>, ActionError> {
    let Some(first) = props.first() else {
        return Ok(Vec::new());
    };
    let pk = match t.pk.as_slice() {
        [pk] => Some(pk),
        _ => None,
    };
    let given = pk.is_some_and(|k| first.contains_key(k));
    let matchable = match pk {
        Some(k) if given => props.iter().all(|p| p.get(k).is_some_and(|v| !v.is_null())),
        Some(k) => integer_key(db.backend, t.cols.get(k)),
        None => false,
    };
    if props.len() == 1 || first.is_empty() || !matchable {
        let mut out = Vec::with_capacity(props.len());
        for p in props {
            out.push(Got::Map(create_in(tx, db, name, t, p).await?));
        }
        return Ok(out);
    }
    let Some(pk) = pk else {
        return Err(unmatched());
    };
    let keys: Vec<&String> = first.keys().collect();
    // What the insert returns (`RETURNING`): nothing when nothing is read.
    let returning = match only {
        None => Some(db.select_list(&t.cols)),
        Some(only) if only.is_empty() => None,
        Some(only) => {
            Some(db.select_list(t.cols.iter().filter(|(c, _)| only.contains(c.as_str()))))
        }
    };
    if db.backend == Backend::Postgres
        && let Some(rows) =
            create_many_pg(tx, db, name, t, props, &keys, returning.as_deref()).await
    {
        return match rows? {
            Made::Rows(rows) => match_rows(props, pk, given, rows, t),
            Made::Count(n) => unread(n, props),
        };
    }
    let cols: Vec<String> = keys.iter().map(|k| db.backend.quote(k)).collect();
    let per = (MAX_PARAMS / keys.len()).max(1);
    let types: Vec<Option<&String>> = keys.iter().map(|k| t.cols.get(*k)).collect();
    let mut out = Vec::with_capacity(props.len());
    for chunk in props.chunks(per) {
        let mut params = Vec::with_capacity(chunk.len() * keys.len());
        let mut tuples = String::with_capacity(chunk.len() * keys.len() * 32);
        let mut values = Vec::with_capacity(keys.len());
        for (r, p) in chunk.iter().enumerate() {
            tuples.push_str(if r == 0 { "(" } else { ", (" });
            values_of(p, &keys, &mut values);
            for (i, (v, ty)) in values.iter().zip(&types).enumerate() {
                let ty = *ty;
                params.push(db.param_value(v.unwrap_or(&Value::Null), ty));
                if i > 0 {
                    tuples.push_str(", ");
                }
                db.push_param(&mut tuples, params.len(), ty);
            }
            tuples.push(')');
        }
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {tuples}",
            db.backend.quote(name),
            cols.join(", "),
        );
        let Some(returning) = &returning else {
            let made = match tx.run(&Stmt { sql, params }, false).await? {
                Fetched::Affected(n) => n,
                Fetched::Rows(r) => r.len() as u64,
            };
            out.extend(unread(made, chunk)?);
            continue;
        };
        sql.push_str(" RETURNING ");
        sql.push_str(returning);
        let rows = tx.rows(&Stmt { sql, params }, t).await?;
        let rows = rows.into_iter().map(Got::Map).collect();
        out.extend(match_rows(chunk, pk, given, rows, t)?);
    }
    Ok(out)
}

/// The columns of `t` the writer reads of the rows it writes for
/// `patches`, when no record reads them (a multi-row insert returns only
/// those): the fields the patches' tokens take, and the key and `id` when
/// it needs the rows at all (for tokens, or for children, which take their
/// parent's key). Empty when it needs none.
fn writer_reads<'a>(t: &'a Table, patches: impl Iterator<Item = &'a Patch>) -> BTreeSet<&'a str> {
    let mut read = BTreeSet::new();
    let mut needed = false;
    for p in patches {
        needed |= !p.set_tokens.is_empty() || !p.children.is_empty();
        read.extend(p.set_tokens.values().map(String::as_str));
    }
    if needed {
        read.extend(t.pk.iter().map(String::as_str));
        read.insert("id");
    }
    read
}

/// The rows of a multi-row insert that returns none: as many as it made
/// (nothing of them is read).
fn unread(made: u64, props: &[&Map<String, Value>]) -> Result<Vec<Got>, ActionError> {
    if made != props.len() as u64 {
        return Err(unmatched());
    }
    Ok(props.iter().map(|_| Got::Map(Map::new())).collect())
}

/// The values of `p` for `keys`, in their order, into `out`: without
/// looking each up when `p` has exactly those keys in that order, as the
/// patches of one multi-row statement have.
fn values_of<'a>(p: &'a Map<String, Value>, keys: &[&String], out: &mut Vec<Option<&'a Value>>) {
    out.clear();
    if p.len() == keys.len() && p.keys().zip(keys).all(|(a, b)| a == *b) {
        out.extend(p.values().map(Some));
    } else {
        out.extend(keys.iter().map(|k| p.get(*k)));
    }
}

/// The rows a multi-row insert of `props` returned, in the order of `props`:
/// matched by the key given (`given`), or else by the generated integer
/// key, assigned in increasing order.
fn match_rows(
    props: &[&Map<String, Value>],
    pk: &str,
    given: bool,
    rows: Vec<Got>,
    t: &Table,
) -> Result<Vec<Got>, ActionError> {
    if rows.len() != props.len() {
        return Err(unmatched());
    }
    if given {
        let mut by: HashMap<String, Got> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id = id_text(&r.field(pk, &t.cols)?.unwrap_or(Value::Null));
            by.insert(id, r);
        }
        props
            .iter()
            .map(|p| {
                let id = id_text(p.get(pk).unwrap_or(&Value::Null));
                by.remove(&id).ok_or_else(unmatched)
            })
            .collect()
    } else {
        let ids = rows
            .iter()
            .map(|r| {
                r.field(pk, &t.cols)?
                    .and_then(|v| v.as_i64())
                    .ok_or_else(unmatched)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_sorted() {
            // As they mostly come: in the order they were inserted.
            return Ok(rows);
        }
        let mut keyed: Vec<(i64, Got)> = ids.into_iter().zip(rows).collect();
        keyed.sort_by_key(|(id, _)| *id);
        Ok(keyed.into_iter().map(|(_, r)| r).collect())
    }
}

/// PostgreSQL: create objects that have the same fields in one statement,
/// `INSERT ... SELECT ... FROM unnest(...)` of one text array per field,
/// each cast to its column's type as [`Db::param`] does. Its text is the
/// same for any number of rows, so it is prepared once per connection.
/// `None` when a column's type is not known.
async fn create_many_pg(
    tx: &mut Tx,
    db: &Db,
    name: &str,
    t: &Table,
    props: &[&Map<String, Value>],
    keys: &[&String],
    returning: Option<&str>,
) -> Option<Result<Made, ActionError>> {
    let types = keys
        .iter()
        .map(|k| t.cols.get(*k).filter(|ty| !ty.is_empty()))
        .collect::<Option<Vec<_>>>()?;
    // Every value, row by row, and those that are not text as PostgreSQL
    // reads them from text.
    let mut all: Vec<Option<&Value>> = Vec::with_capacity(props.len() * keys.len());
    let mut texts = Vec::new();
    let mut values = Vec::with_capacity(keys.len());
    for p in props {
        values_of(p, keys, &mut values);
        for v in &values {
            if let Some(v) = v
                && !matches!(v, Value::Null | Value::String(_))
            {
                texts.push(v.to_string());
            }
        }
        all.extend_from_slice(&values);
    }
    let mut texts = texts.iter();
    let mut arrays: Vec<Vec<Option<&str>>> = keys
        .iter()
        .map(|_| Vec::with_capacity(props.len()))
        .collect();
    for row in all.chunks(keys.len().max(1)) {
        for (v, a) in row.iter().zip(&mut arrays) {
            a.push(match v {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => texts.next().map(String::as_str),
            });
        }
    }
    let mut sql = String::with_capacity(128 + keys.len() * 48);
    sql.push_str("INSERT INTO ");
    sql.push_str(&db.backend.quote(name));
    sql.push_str(" (");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&db.backend.quote(k));
    }
    sql.push_str(") SELECT ");
    for (i, ty) in types.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        // As `Db::push_param` does.
        if super::pg_cast_from_text(ty) {
            sql.push_str(&format!("CAST(c{i} AS "));
            super::push_pg_cast_type(&mut sql, ty);
            sql.push(')');
        } else {
            sql.push_str(&format!("c{i}"));
        }
    }
    sql.push_str(" FROM unnest(");
    for i in 0..keys.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}::text[]", i + 1));
    }
    sql.push_str(") AS u(");
    for i in 0..keys.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("c{i}"));
    }
    sql.push(')');
    if let Some(returning) = returning {
        sql.push_str(" RETURNING ");
        sql.push_str(returning);
    }
    tx.pg_rows_of_arrays(sql, &arrays, t, returning.is_some())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(v: Value) -> Patch {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_failure_names_its_key_and_patch() {
        let dup = "step failed: patch 1 (create customers) failed: postgres://u@h/db: error returned from database: duplicate key value violates unique constraint \"c_key\" (Key (external_id)=(C-9) already exists.)";
        assert_eq!(named_key(dup), Some(("external_id", "C-9")));
        let fk = "... (Key (customer_id)=(12) is not present in table \"customers\".)";
        assert_eq!(named_key(fk), Some(("customer_id", "12")));
        // A value with parentheses in it: up to the first ending.
        let odd = "x (Key (name)=(a) b (c)) already exists.)";
        assert_eq!(named_key(odd), Some(("name", "a) b (c)")));
        // Two columns, or no detail: nothing named.
        assert_eq!(named_key("(Key (a, b)=(1, 2) already exists.)"), None);
        assert_eq!(named_key("UNIQUE constraint failed: t.email"), None);
        let check = "... violates check constraint \"orders_total_check\" (Failing row contains (7, 3, SO-5, -1.00, EUR).)";
        assert_eq!(
            named(check),
            Some(Named::Row(vec!["7", "3", "SO-5", "-1.00", "EUR"]))
        );
        assert_eq!(named(dup), Some(Named::Key("external_id", "C-9")));
        assert_eq!(label(&[1]), "patch 2");
        assert_eq!(label(&[0, 0]), "patch 1.1");
        assert_eq!(label(&[9, 1, 0]), "patch 10.2.1");
    }

    #[test]
    fn the_suspect_is_the_record_with_the_named_key() {
        let job = |record: u64, id: &str| Waiting {
            record,
            patches: vec![
                Pending::Ready(patch(json!({
                    "op": "create", "collection": "customers",
                    "properties": {"external_id": id},
                    "children": [{"op": "create", "collection": "contacts", "properties": {"phone": id}}]
                }))),
                // Its customer's id comes from `$tokens`: unknown until written.
                Pending::Holes(
                    patch(json!({
                        "op": "create", "collection": "orders",
                        "properties": {"customer_id": null, "number": format!("SO-{record}")}
                    })),
                    vec![Hole {
                        criteria: false,
                        key: "customer_id".into(),
                        value: TemplateValue::Const(Value::Null),
                    }],
                ),
            ],
            input: Input::json(&Value::Null),
            scope: MapScope(BTreeMap::new()),
            global: Map::new(),
            results_read: false,
            reply: None,
        };
        let jobs = vec![job(1, "C-1"), job(2, "C-2"), job(3, "C-3"), job(4, "C-2")];
        let named = |at: &[usize], detail: String| Fail {
            error: ActionError::data(format!("... ({detail})")),
            patch: label(at),
            at: at.to_vec(),
        };
        let failed = |at: &[usize], key: &str| named(at, format!("Key {key} already exists."));
        // Taken before the group: the only record with it.
        let f = failed(&[0], "(external_id)=(C-3)");
        assert_eq!(suspect(&f, &jobs), Some(2));
        // Twice in the group: the second found it taken.
        let f = failed(&[0], "(external_id)=(C-2)");
        assert_eq!(suspect(&f, &jobs), Some(3));
        // A child's field.
        let f = failed(&[0, 0], "(phone)=(C-1)");
        assert_eq!(suspect(&f, &jobs), Some(0));
        // A row: the first record whose values are all in it.
        let row = |at: &[usize], cells: &str| named(at, format!("Failing row contains ({cells})."));
        assert_eq!(suspect(&row(&[0], "9, C-2, x"), &jobs), Some(1));
        assert_eq!(suspect(&row(&[0], "9, C-7, x"), &jobs), None);
        let f = row(&[1], "5, 12, SO-3");
        assert_eq!(suspect(&f, &jobs), Some(2), "the hole is not compared");
        // No record has it, no such patch, no key named: halves instead.
        let f = failed(&[0], "(external_id)=(C-9)");
        assert_eq!(suspect(&f, &jobs), None);
        let f = failed(&[1], "(external_id)=(C-1)");
        assert_eq!(suspect(&f, &jobs), None);
        let f = failed(&[2], "(external_id)=(C-1)");
        assert_eq!(suspect(&f, &jobs), None);
        let f = Fail {
            error: ActionError::data("CHECK constraint failed"),
            patch: label(&[0]),
            at: vec![0],
        };
        assert_eq!(suspect(&f, &jobs), None);
    }

    #[test]
    fn groups_shrink_as_records_are_refused() {
        // None refused yet: the whole chunk at once.
        assert_eq!(group_size(500, 0, 0), 500);
        assert_eq!(group_size(500, 10_000, 0), 500);
        // One in a hundred: groups of some tens; one in ten thousand: hundreds.
        assert_eq!(group_size(500, 10_000, 100), 17);
        assert_eq!(group_size(500, 100_000, 10), 173);
        // Never fewer than eight, never more than the chunk.
        assert_eq!(group_size(500, 100, 50), 8);
        assert_eq!(group_size(100, 1_000_000, 1), 100);
        assert_eq!(group_size(0, 0, 0), 1);
    }

    #[test]
    fn an_insert_returns_only_what_the_writer_reads() {
        let t = Table {
            cols: [("id", "integer"), ("name", "text"), ("code", "text")]
                .into_iter()
                .map(|(c, ty)| (c.to_owned(), ty.to_owned()))
                .collect(),
            pk: vec!["id".to_owned()],
        };
        let plain = patch(json!({"op": "create", "collection": "t", "properties": {"name": "a"}}));
        let tokens = patch(
            json!({"op": "create", "collection": "t", "properties": {}, "setTokens": {"c": "code"}}),
        );
        let parent = patch(json!({"op": "create", "collection": "t", "properties": {},
            "children": [{"op": "create", "collection": "u", "parentKey": "t_id", "properties": {}}]}));
        // Nothing is read: the insert returns no rows.
        assert!(writer_reads(&t, [&plain, &plain].into_iter()).is_empty());
        // A token's field, and the key to match the rows.
        let read: Vec<&str> = writer_reads(&t, [&plain, &tokens].into_iter())
            .into_iter()
            .collect();
        assert_eq!(read, ["code", "id"]);
        // Children take their parent's key.
        let read: Vec<&str> = writer_reads(&t, [&parent].into_iter())
            .into_iter()
            .collect();
        assert_eq!(read, ["id"]);
    }

    #[test]
    fn an_insert_that_returns_no_rows_must_have_made_them_all() {
        let a = Map::new();
        let props = [&a, &a];
        assert_eq!(unread(2, &props).map(|r| r.len()).ok(), Some(2));
        assert!(unread(1, &props).is_err());
    }
}
