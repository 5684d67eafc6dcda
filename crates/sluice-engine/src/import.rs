//! Imports: `sluice run FLOW --records FILE` runs the flow once per record
//! of a JSON-lines or CSV file, as a data import or migration would.
//!
//! * Records are read a chunk at a time and a chunk's records run side by
//!   side; their `envelope` steps are written together by one
//!   [`BatchWriter`] of the connector that registered one (the SQL
//!   connector: multi-row statements, a savepoint per failing group down
//!   to the failing record), so a bad record rolls back alone and good
//!   records land whole.
//! * Every envelope of the flow must write through one connection, and no
//!   other step may write: the chunk's writes and the import's position
//!   (table `sluice_imports` there) then commit in one transaction, and an
//!   interrupted import resumes after its last committed chunk without
//!   writing any record twice.
//! * A record that fails (it is not JSON, a step fails, its envelope is
//!   refused) is written to the failure report `FILE.failures.jsonl`, one
//!   JSON object per line: record, line, step, patch, error, blame, data.
//! * A record's run is not recorded step by step; the import is recorded as
//!   one run whose output is the summary.

use crate::cursor::{Cursor, Mode};
use crate::flow_object::FlowObject;
use crate::records_out::{OutLines, RecordsOut, line_of, lines_in};
use crate::{Engine, EngineError};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Map, Value, json};
use sluice_action::ActionError;
use sluice_action::batch::{BatchWriter, InBatch};
use sluice_expr::Val;
use sluice_expr::data::{str_val, to_json};
use sluice_model::Flow;
use sluice_store::{NewRun, RunStatus, RunUpdate, Store, StoreError, new_run_id, now_micros};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Notify;

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Records per chunk (one transaction).
    pub chunk: usize,
    /// Start from the first record even when an earlier import of the same
    /// file stopped, or finished.
    pub restart: bool,
    /// Where each record's output goes (see `records_out.rs`), if anywhere.
    pub output: Option<RecordsOut>,
    /// The runtime the records run on, when not the import's own: the
    /// writer then never waits for a worker thread busy with records
    /// while the database's answer is in (see the CLI's `import`).
    pub records_on: Option<tokio::runtime::Handle>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            chunk: 500,
            restart: false,
            output: None,
            records_on: None,
        }
    }
}

/// Why an import could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The flow cannot import (the flow author must act).
    #[error("{0}")]
    Flow(String),
    /// The records file cannot be read.
    #[error("{0}")]
    File(String),
    /// The import's state says it must not start (already done, file changed).
    #[error("{0}")]
    Refused(String),
    /// The database the import writes to failed; the import stopped after its
    /// last committed chunk and resumes from there.
    #[error("{0}; the import stopped after record {1} and resumes from there when run again")]
    Database(ActionError, u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bug in Sluice.
    #[error("bug: {0}")]
    Bug(String),
}

/// How an import ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportSummary {
    /// The import's run in the store.
    pub run_id: String,
    /// Records in the file.
    pub total: u64,
    /// Records skipped because an earlier, interrupted import landed them.
    pub skipped: u64,
    /// Records that succeeded in this import.
    pub succeeded: u64,
    /// Records that failed (see the failure report).
    pub failed: u64,
    /// The failure report.
    pub failures_file: PathBuf,
    /// Seconds spent.
    pub seconds: f64,
}

impl ImportSummary {
    /// The summary as JSON (the import run's output).
    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "skipped": self.skipped,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failuresFile": self.failures_file.display().to_string(),
            "seconds": self.seconds,
        })
    }
}

/// One record as read.
struct Raw {
    /// 1-based position among the records.
    number: u64,
    /// 1-based line where it starts.
    line: u64,
    data: RawData,
}

enum RawData {
    Json(String),
    Csv(csv::StringRecord),
    Bad(String),
}

/// A JSON-lines or CSV (with a header) reader of records.
enum Records {
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        line: u64,
        number: u64,
    },
    Csv {
        reader: csv::Reader<File>,
        headers: Vec<String>,
        /// The header's names, a list of keys every row's object shares.
        keys: sluice_expr::Obj,
        number: u64,
        /// The room for the next row: what the row before took, and an eighth more.
        last: usize,
    },
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

impl Records {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| ImportError::File(format!("cannot read {shown}: {e}")))?;
        if is_csv(path) {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let headers: Vec<String> = reader
                .headers()
                .map_err(|e| ImportError::File(format!("{shown}: cannot read the header: {e}")))?
                .iter()
                .map(str::to_owned)
                .collect();
            if headers.is_empty() || headers.iter().all(String::is_empty) {
                return Err(ImportError::File(format!(
                    "{shown}: the first line must name the columns"
                )));
            }
            let keys = headers.iter().map(|h| (h.as_str().into(), Val::Null));
            Ok(Self::Csv {
                reader,
                keys: keys.collect(),
                headers,
                number: 0,
                last: 0,
            })
        } else {
            Ok(Self::Jsonl {
                lines: BufReader::new(file).lines(),
                line: 0,
                number: 0,
            })
        }
    }

    fn next_raw(&mut self) -> Result<Option<Raw>, ImportError> {
        match self {
            Self::Jsonl {
                lines,
                line,
                number,
            } => loop {
                let Some(text) = lines.next() else {
                    return Ok(None);
                };
                *line += 1;
                let text = text.map_err(|e| ImportError::File(format!("line {line}: {e}")))?;
                if text.trim().is_empty() {
                    continue;
                }
                *number += 1;
                return Ok(Some(Raw {
                    number: *number,
                    line: *line,
                    data: RawData::Json(text),
                }));
            },
            Self::Csv {
                reader,
                headers,
                number,
                last,
                ..
            } => {
                // Each row in a record of its own (the failure report
                // reads it later), with the room the row before took and
                // an eighth more: mostly read without growing it.
                let mut rec = csv::StringRecord::with_capacity(*last, headers.len());
                let line = reader.position().line();
                match reader.read_record(&mut rec) {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        *number += 1;
                        let took = rec.as_byte_record().as_slice().len();
                        *last = took + took / 8;
                        let data = if rec.len() == headers.len() {
                            RawData::Csv(rec)
                        } else {
                            RawData::Bad(format!(
                                "the row has {} fields, the header {}",
                                rec.len(),
                                headers.len()
                            ))
                        };
                        Ok(Some(Raw {
                            number: *number,
                            line,
                            data,
                        }))
                    }
                    Err(e) => {
                        // A row the CSV reader cannot split: report it, go on.
                        *number += 1;
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            return Err(ImportError::File(format!("line {line}: {e}")));
                        }
                        Ok(Some(Raw {
                            number: *number,
                            line,
                            data: RawData::Bad(e.to_string()),
                        }))
                    }
                }
            }
        }
    }

    /// Pass over the first `n` records (those an earlier run of the import
    /// landed): how many there were.
    fn skip(&mut self, n: u64) -> Result<u64, ImportError> {
        let mut done = 0;
        while done < n && self.next_raw()?.is_some() {
            done += 1;
        }
        Ok(done)
    }

    /// The record as JSON: a JSON line as written; a CSV row as an object
    /// of the header's names (an empty field is null).
    fn value(&self, raw: &Raw) -> Result<Val, String> {
        match (&raw.data, self) {
            (RawData::Json(text), _) => sluice_expr::data::parse(text.as_bytes()).map_err(|e| {
                format!(
                    "the record is not JSON: {}",
                    e.to_string().split(" at line ").next().unwrap_or_default()
                )
            }),
            (RawData::Csv(rec), Self::Csv { headers, keys, .. }) => {
                let field = |v: &str| if v.is_empty() { Val::Null } else { str_val(v) };
                // A name given twice makes fewer keys than fields.
                let fields = || {
                    headers
                        .iter()
                        .map(String::as_str)
                        .zip(rec.iter().map(field))
                };
                let shared = keys.with_values(rec.iter().map(field).collect());
                Ok(shared.map_or_else(|| sluice_expr::data::obj_val(fields()), Val::obj))
            }
            (RawData::Bad(m), _) => Err(m.clone()),
            (RawData::Csv(_), Self::Jsonl { .. }) => Err("a CSV row in a JSON-lines file".into()),
        }
    }
}

/// Every record of a records file as an import reads it (its JSON, or why
/// it is not a record), and the number of records the import counts before
/// it starts (the two agree: a resumed import skips by that count).
pub fn read_records(path: &Path) -> Result<(u64, Vec<Result<Value, String>>), ImportError> {
    let (_, count) = scan(path, false)?;
    let mut records = Records::open(path)?;
    let mut out = Vec::new();
    while let Some(raw) = records.next_raw()? {
        out.push(records.value(&raw).map(|v| to_json(&v)));
    }
    Ok((count, out))
}

/// The file's hash (FNV-1a, 64 bits; only for an import that keeps its
/// position, `hashed`) and its number of records.
fn scan(path: &Path, hashed: bool) -> Result<(String, u64), ImportError> {
    let shown = path.display();
    let mut file =
        File::open(path).map_err(|e| ImportError::File(format!("cannot read {shown}: {e}")))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    if hashed {
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ImportError::File(format!("cannot read {shown}: {e}")))?;
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let count = match Records::open(path)? {
        // As `next_raw` counts them (a row it cannot split is a record too),
        // without making a record of each.
        Records::Csv { mut reader, .. } => {
            let mut row = csv::ByteRecord::new();
            let mut count = 0;
            loop {
                match reader.read_byte_record(&mut row) {
                    Ok(false) => break,
                    Ok(true) => count += 1,
                    Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                        return Err(ImportError::File(format!("{shown}: {e}")));
                    }
                    Err(_) => count += 1,
                }
            }
            count
        }
        Records::Jsonl { .. } => json_lines(path)?,
    };
    Ok((format!("{hash:016x}"), count))
}

/// The records of a JSON-lines file, as `next_raw` counts them (a line of
/// whitespace is none), without making a string of each line.
fn json_lines(path: &Path) -> Result<u64, ImportError> {
    let shown = path.display();
    let fail = |e: std::io::Error| ImportError::File(format!("cannot read {shown}: {e}"));
    count_lines(File::open(path).map_err(fail)?, 1 << 20).map_err(fail)
}

/// [`json_lines`] of what `read` gives, read `size` bytes at a time. A line
/// is looked at only until its first byte that is neither whitespace nor
/// past ASCII (almost always its first), then passed over to its end.
fn count_lines(mut read: impl Read, size: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; size.max(1)];
    // The line under way, when it is not plain ASCII whitespace so far
    // and holds no other ASCII: only then must it be decoded to tell.
    let mut odd: Vec<u8> = Vec::new();
    let (mut count, mut seen) = (0, false);
    let end_line = |seen: &mut bool, odd: &mut Vec<u8>| {
        let blank = !*seen && String::from_utf8_lossy(odd).trim().is_empty();
        *seen = false;
        odd.clear();
        u64::from(!blank)
    };
    loop {
        let n = read.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut rest = &buf[..n];
        loop {
            let end = memchr::memchr(b'\n', rest);
            let line = &rest[..end.unwrap_or(rest.len())];
            if !seen {
                for &b in line {
                    if !b.is_ascii() {
                        odd.push(b);
                    } else if !(b.is_ascii_whitespace() || b == 0x0b) {
                        // (`trim` takes the vertical tab for whitespace too.)
                        seen = true;
                        odd.clear();
                        break;
                    }
                }
            }
            let Some(end) = end else { break };
            count += end_line(&mut seen, &mut odd);
            rest = &rest[end + 1..];
        }
    }
    Ok(count + end_line(&mut seen, &mut odd))
}

/// A record that did not land.
fn failure_line(raw: &Raw, data: Option<&Value>, failure: Value) -> Value {
    let mut m = Map::new();
    m.insert("record".into(), raw.number.into());
    m.insert("line".into(), raw.line.into());
    if let Value::Object(f) = failure {
        m.extend(f);
    }
    m.insert("data".into(), data.cloned().unwrap_or(Value::Null));
    Value::Object(m)
}

/// Keep the failure report's lines of records before `next` (a resumed
/// import writes the others again).
fn trim_report(path: &Path, next: u64) -> Result<(), ImportError> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    let mut kept = String::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| ImportError::File(format!("{}: {e}", path.display())))?;
        let n = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("record").and_then(Value::as_u64));
        if n.is_some_and(|n| n <= next) {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    std::fs::write(path, kept).map_err(|e| ImportError::File(format!("{}: {e}", path.display())))
}

/// Records done so far and how they ended.
struct Tally {
    done: u64,
    succeeded: u64,
    failed: u64,
}

/// A record's run that ended: its index in the chunk, the record, how the run ended.
/// With the run's output line, when outputs are written and it succeeded.
type Ended = (
    usize,
    Val,
    Result<crate::RunResult, EngineError>,
    Option<Vec<u8>>,
);

/// A chunk of records (one transaction).
struct Chunk {
    /// The chunk's number in this import, from 0.
    id: u64,
    /// Its records (at least one).
    raws: Vec<Raw>,
    /// Each record as JSON (taken by its run while it runs), or why it is not.
    values: Vec<Result<Val, String>>,
    results: Vec<Option<crate::RunResult>>,
    /// The output lines of the records that succeeded (with `--output`).
    lines: Vec<Option<Vec<u8>>>,
}

/// Read the next chunk of records.
fn fill(records: &mut Records, size: usize, id: u64) -> Result<Option<Chunk>, ImportError> {
    let mut raws = Vec::with_capacity(size);
    while raws.len() < size {
        match records.next_raw()? {
            Some(r) => raws.push(r),
            None => break,
        }
    }
    if raws.is_empty() {
        return Ok(None);
    }
    let values = raws.iter().map(|r| records.value(r)).collect();
    Ok(Some(Chunk {
        id,
        results: vec![None; raws.len()],
        lines: vec![None; raws.len()],
        raws,
        values,
    }))
}

/// Read the records in chunks on a thread of their own, a chunk or two
/// ahead of the import; it stops when the receiver is dropped.
fn read_chunks(
    mut records: Records,
    size: usize,
) -> tokio::sync::mpsc::Receiver<Result<Chunk, ImportError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        let mut id = 0;
        loop {
            let (next, more) = match fill(&mut records, size, id) {
                Ok(None) => return,
                Ok(Some(c)) => (Ok(c), true),
                Err(e) => (Err(e), false),
            };
            if tx.blocking_send(next).is_err() || !more {
                return;
            }
            id += 1;
        }
    });
    rx
}

impl Chunk {
    /// Records before this chunk: committed once it is written.
    fn before(&self) -> u64 {
        self.raws.first().map_or(0, |r| r.number - 1)
    }

    fn ended(&mut self, (k, v, r, line): Ended) -> Result<(), ImportError> {
        self.values[k] = Ok(v);
        self.results[k] = Some(r?);
        self.lines[k] = line;
        Ok(())
    }
}

/// A task's handle that aborts the task when dropped (when the import
/// stops without waiting for it).
struct Abort<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Abort<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Abort<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn stopped(e: tokio::task::JoinError) -> ImportError {
    ImportError::Bug(format!("the run of a record stopped: {e}"))
}

/// Wait until `n` (if any) is told.
async fn told(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// A chunk whose records run.
struct Running {
    chunk: Chunk,
    /// Told whenever every run of the chunk still going waits for its
    /// envelope (when the flow has envelopes).
    all_wait: Option<Arc<Notify>>,
    /// The tasks running the records, a share each.
    runs: FuturesUnordered<Abort<Vec<Ended>>>,
}

/// Where a finished chunk goes: the tally, the failure report, the
/// import's position and progress.
struct Out<'a> {
    tally: &'a mut Tally,
    report: &'a mut BufWriter<File>,
    report_path: &'a Path,
    /// Where the records' outputs go, if anywhere.
    lines: Option<&'a mut OutLines>,
    key: &'a str,
    progress: Progress<'a>,
    total: u64,
}

/// What the records' runs share. A chunk's records run in as many tasks as
/// their runtime has worker threads, a share each, up to their envelopes and,
/// once those are written, to their end; the writer only writes. (A task per
/// record costs more: the writer would wake hundreds of tasks per write.)
struct Runs<S: Store> {
    /// The runtime the records run on (and what they made is dropped on),
    /// and whether it is not the import's own.
    on: tokio::runtime::Handle,
    own_runtime: bool,
    engine: Engine<S>,
    flow: Flow,
    batch: Option<Arc<dyn BatchWriter>>,
    accountability: Val,
    /// `$env`, read once for the import.
    env: Val,
    /// Whether the records' outputs are written out.
    output: bool,
}

impl<S: Store> Runs<S> {
    /// The run of record `record` (chunk `chunk_id`, index `k` there), with
    /// `$accountability` and `$env` of its task (see `start`).
    async fn run(
        &self,
        (accountability, env): &(Val, Val),
        (k, record, chunk_id): (usize, u64, u64),
        v: Val,
    ) -> Ended {
        let in_batch = self.batch.as_deref().map(|b| InBatch {
            batch: b,
            record,
            chunk: chunk_id,
            results_read: true,
        });
        // The record is the run's `$trigger` and its first state data, one
        // value for both until a step makes new state data.
        let state = v.clone();
        let mut fo = FlowObject::new(v.clone(), accountability.clone());
        fo.env = env.clone();
        let mode = Mode {
            recorded: false,
            batch: in_batch,
            output: self.output,
        };
        // Boxed, in a statement of its own: the run's future stays small
        // (a temporary of the awaiting statement would keep its room in
        // it), so that starting a chunk's runs does not copy the large
        // future of a run's steps, several times each.
        let steps = Box::pin(self.engine.drive(
            &self.flow,
            Cursor::new(String::new()),
            fo,
            state,
            0,
            0,
            mode,
        ));
        let r = steps.await;
        if let Some(b) = &self.batch {
            b.ended(chunk_id);
        }
        let line = match &r {
            Ok(res) if self.output && res.status == RunStatus::Succeeded => {
                Some(line_of(res.output.as_ref().unwrap_or(&Val::Null)))
            }
            _ => None,
        };
        (k, v, r, line)
    }

    /// How many tasks a chunk's records run in: one per worker thread of
    /// their runtime, but for one left to the writer and its database when
    /// the records have a runtime of their own and their envelopes are written.
    fn tasks(&self) -> usize {
        let workers = self.on.metrics().num_workers().max(1);
        let writer = usize::from(self.own_runtime && self.batch.is_some());
        workers.saturating_sub(writer).max(1)
    }

    /// Start the runs of the chunk's records (a record that is not JSON has none).
    fn start(self: &Arc<Self>, mut chunk: Chunk) -> Result<Running, ImportError> {
        let mut runs = Vec::with_capacity(chunk.values.len());
        for (k, v) in chunk.values.iter_mut().enumerate() {
            if let Ok(v) = v {
                runs.push((k, chunk.raws[k].number, std::mem::take(v)));
            }
        }
        let all_wait = match &self.batch {
            Some(b) => Some(
                b.expect(chunk.id, runs.len())
                    .map_err(|e| ImportError::Database(e, chunk.before()))?,
            ),
            None => None,
        };
        let tasks = self.tasks();
        let share = runs.len().div_ceil(tasks).max(1);
        let runs_of = FuturesUnordered::new();
        let mut runs = runs.into_iter();
        loop {
            let group: Vec<_> = runs.by_ref().take(share).collect();
            if group.is_empty() {
                break;
            }
            let (shared, id) = (self.clone(), chunk.id);
            runs_of.push(Abort(self.on.spawn(async move {
                // Values every record reads, the task's own: the records'
                // runs, on two threads at once, would otherwise count the
                // same references back and forth between their caches.
                let own = (
                    sluice_expr::to_val(&to_json(&shared.accountability)),
                    sluice_expr::to_val(&to_json(&shared.env)),
                );
                let (shared, own) = (&shared, &own);
                let mut going: FuturesUnordered<_> = group
                    .into_iter()
                    .map(|(k, record, v)| shared.run(own, (k, record, id), v))
                    .collect();
                let mut ended = Vec::with_capacity(going.len());
                while let Some(e) = going.next().await {
                    ended.push(e);
                }
                ended
            })));
        }
        Ok(Running {
            chunk,
            all_wait,
            runs: runs_of,
        })
    }

    /// Start the runs of the next chunk read, if there is one.
    async fn start_next(
        self: &Arc<Self>,
        chunks: &mut tokio::sync::mpsc::Receiver<Result<Chunk, ImportError>>,
    ) -> Result<Option<Running>, ImportError> {
        chunks
            .recv()
            .await
            .transpose()?
            .map(|c| self.start(c))
            .transpose()
    }

    /// Write the chunk's envelopes whenever every run still going waits
    /// for one, until every run has ended, or (`once`) until its first write.
    /// `false`: that first write is to be made again once the chunk before
    /// has committed (see the batch's `flush`).
    async fn write(&self, r: &mut Running, once: bool) -> Result<bool, ImportError> {
        let id = r.chunk.id;
        let mut notified = std::pin::pin!(told(r.all_wait.as_deref()));
        loop {
            tokio::select! {
                biased;
                group = r.runs.next() => match group {
                    Some(group) => {
                        for ended in group.map_err(stopped)? {
                            r.chunk.ended(ended)?;
                        }
                    }
                    None => return Ok(true),
                },
                () = &mut notified => {
                    notified.set(told(r.all_wait.as_deref()));
                    // A wake-up may be stale: the runs may have gone on since.
                    if self.batch.as_ref().is_some_and(|b| b.all_wait(id)) {
                        let written = self.flush(&r.chunk).await?;
                        if once || !written {
                            return Ok(written);
                        }
                    }
                }
            }
        }
    }

    /// Write the chunk's waiting envelopes (see the batch's `flush`).
    async fn flush(&self, chunk: &Chunk) -> Result<bool, ImportError> {
        match &self.batch {
            Some(b) => b
                .flush(&self.engine.limits, chunk.id)
                .await
                .map_err(|e| ImportError::Database(e, chunk.before())),
            None => Ok(true),
        }
    }

    /// Write what is left of the chunk, run its records to their end,
    /// report its failures and commit it with the import's position.
    async fn finish(&self, mut r: Running, out: &mut Out<'_>) -> Result<(), ImportError> {
        // The chunk before has committed: nothing is handed back.
        self.write(&mut r, false).await?;
        let chunk = r.chunk;
        if let Some(b) = &self.batch {
            b.forget(chunk.id);
        }
        self.report(&chunk, out.tally, out.report, out.report_path)?;
        if let Some(lines) = out.lines.as_deref_mut() {
            write_outputs(&chunk, lines, self.batch.is_some())?;
        }
        if let Some(b) = &self.batch {
            b.commit_chunk(out.key, Some(chunk.id), out.tally.done, false)
                .await
                .map_err(|e| ImportError::Database(e, chunk.before()))?;
        }
        // The records and their runs' results are dropped beside the
        // writer, where the records ran.
        self.on.spawn(async move { drop(chunk) });
        (out.progress)(out.tally.done, out.total);
        Ok(())
    }

    /// Write the failure report's lines of the chunk's failed records, on
    /// disk before the position that would skip them on a resume.
    fn report(
        &self,
        chunk: &Chunk,
        tally: &mut Tally,
        report: &mut BufWriter<File>,
        report_path: &Path,
    ) -> Result<(), ImportError> {
        let flow = &self.flow;
        let mut wrote = false;
        for (k, raw) in chunk.raws.iter().enumerate() {
            let line = match (&chunk.values[k], &chunk.results[k]) {
                (Err(m), _) => Some(failure_line(
                    raw,
                    match &raw.data {
                        // The line as written, to be fixed.
                        RawData::Json(text) => Some(Value::String(text.clone())),
                        _ => None,
                    }
                    .as_ref(),
                    json!({"step": null, "patch": null, "error": m, "blame": "data"}),
                )),
                (Ok(_), Some(r)) if r.status == RunStatus::Succeeded => None,
                (Ok(v), r) => {
                    let f = r.as_ref().and_then(|r| r.failure.clone());
                    let step = f.as_ref().map(|f| f.step.clone());
                    let patch = step
                        .as_deref()
                        .and_then(|s| flow.step_index(s))
                        .filter(|i| {
                            self.engine
                                .registry
                                .batches()
                                .is_some_and(|b| b.batched(&flow.steps[*i].kind))
                        })
                        .and_then(|_| self.batch.as_ref().and_then(|b| b.failed_patch(raw.number)));
                    Some(failure_line(
                        raw,
                        Some(&to_json(v)),
                        json!({
                            "step": step,
                            "patch": patch,
                            "error": f.as_ref().map(|f| f.message.clone()).unwrap_or_else(|| "the record's run did not end".into()),
                            "blame": f.map(|f| f.blame.as_str()).unwrap_or("bug"),
                        }),
                    ))
                }
            };
            match line {
                None => tally.succeeded += 1,
                Some(l) => {
                    tally.failed += 1;
                    wrote = true;
                    writeln!(report, "{l}").map_err(|e| {
                        ImportError::File(format!("{}: {e}", report_path.display()))
                    })?;
                }
            }
        }
        if wrote {
            report
                .flush()
                .and_then(|()| report.get_ref().sync_data())
                .map_err(|e| ImportError::File(format!("{}: {e}", report_path.display())))?;
        }
        tally.done += chunk.raws.len() as u64;
        Ok(())
    }
}

/// Write the outputs of a chunk's records that succeeded, in order, on
/// disk (`durable`) before the chunk commits.
fn write_outputs(chunk: &Chunk, lines: &mut OutLines, durable: bool) -> Result<(), ImportError> {
    for line in chunk.lines.iter().flatten() {
        lines.write(line).map_err(ImportError::File)?;
    }
    lines.flush(durable).map_err(ImportError::File)
}

/// The failure report beside `records`.
pub fn failures_path(records: &Path) -> PathBuf {
    let mut name = records.as_os_str().to_owned();
    name.push(".failures.jsonl");
    PathBuf::from(name)
}

/// What an import reports as it goes: records done (skipped ones included) of the total.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// An import's batch, the place in the file it starts from, and its
/// bookkeeping: what [`Engine::import`] settles before the first record.
struct Setup {
    batch: Option<Arc<dyn BatchWriter>>,
    /// The import's key in the database it writes to.
    key: String,
    /// The records file as the import's run names it.
    source: String,
    /// Records in the file.
    total: u64,
    /// The first record to run (those before landed in an earlier import).
    start: u64,
}

impl<S: Store> Engine<S> {
    /// Import the records of `path` (see the module's description).
    pub async fn import(
        &self,
        flow: &Flow,
        path: &Path,
        options: &ImportOptions,
        progress: Progress<'_>,
    ) -> Result<ImportSummary, ImportError> {
        let began = Instant::now();
        let setup = self.set_up_import(flow, path, options).await?;
        let report_path = failures_path(path);
        if setup.start == 0 {
            let _ = std::fs::remove_file(&report_path);
        } else {
            trim_report(&report_path, setup.start)?;
        }
        // The outputs of the records landed before: one line each, but for
        // those in the failure report.
        let mut lines = match &options.output {
            Some(to) => Some(
                OutLines::open(to, setup.start.saturating_sub(lines_in(&report_path)))
                    .map_err(ImportError::File)?,
            ),
            None => None,
        };
        let mut report = BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&report_path)
                .map_err(|e| ImportError::File(format!("{}: {e}", report_path.display())))?,
        );
        self.save_version(flow).await?;
        let run_id = new_run_id();
        let accountability = json!({"source": "import"});
        let trigger =
            sluice_expr::to_val(&json!({"records": setup.source, "from": setup.start + 1}));
        self.store
            .create_run(&NewRun {
                id: run_id.clone(),
                flow_id: flow.id.clone(),
                trigger,
                input: Val::Null,
                next_step: None,
                started_at: now_micros(),
                flow_version: Some(flow.version.clone()),
                accountability: accountability.clone(),
                parent: None,
            })
            .await?;
        let mut records = Records::open(path)?;
        let done = records.skip(setup.start)?;
        progress(done, setup.total);
        let mut tally = Tally {
            done,
            succeeded: 0,
            failed: 0,
        };
        let runs = Arc::new(Runs {
            on: options
                .records_on
                .clone()
                .unwrap_or_else(tokio::runtime::Handle::current),
            own_runtime: options.records_on.is_some(),
            engine: self.clone(),
            flow: flow.clone(),
            batch: setup.batch.clone(),
            accountability: sluice_expr::to_val(&accountability),
            env: crate::flow_object::env_of(flow),
            output: lines.is_some(),
        });
        let out = Out {
            tally: &mut tally,
            report: &mut report,
            report_path: &report_path,
            lines: lines.as_mut(),
            key: &setup.key,
            progress,
            total: setup.total,
        };
        runs.all_chunks(read_chunks(records, options.chunk.max(1)), out)
            .await?;
        let Tally {
            done,
            succeeded,
            failed,
        } = tally;
        if let Some(b) = &setup.batch {
            b.commit_chunk(&setup.key, None, done, true)
                .await
                .map_err(|e| ImportError::Database(e, done))?;
        }
        let summary = ImportSummary {
            run_id: run_id.clone(),
            total: done,
            skipped: setup.start.min(done),
            succeeded,
            failed,
            failures_file: report_path,
            seconds: began.elapsed().as_secs_f64(),
        };
        let ok = failed == 0;
        let error = (!ok).then(|| {
            format!(
                "{failed} records failed; see {}",
                summary.failures_file.display()
            )
        });
        self.store
            .update_run(
                &run_id,
                &RunUpdate::ended(
                    Val::Null,
                    Some(sluice_expr::data::into_val(summary.to_json())),
                    error,
                    None,
                ),
            )
            .await?;
        Ok(summary)
    }

    /// Check that `flow` can import `path`, open its batch and find where
    /// the import starts: after an earlier import of the same file that
    /// stopped, unless told to restart.
    async fn set_up_import(
        &self,
        flow: &Flow,
        path: &Path,
        options: &ImportOptions,
    ) -> Result<Setup, ImportError> {
        if let Some(step) = flow.steps.iter().find(|s| s.event_filter.is_some()) {
            return Err(ImportError::Flow(format!(
                "step `{}` consumes the event that starts a run; records are not events",
                step.key
            )));
        }
        if flow.transaction == sluice_model::Transaction::Flow {
            return Err(ImportError::Flow(
                "the flow runs in one transaction (`transaction: flow`), and an import writes its records in batches of many runs each; import with a flow whose envelopes commit on their own".into(),
            ));
        }
        let batches = self.registry.batches();
        let connection = match batches {
            Some(b) => b.plan(flow).map_err(ImportError::Flow)?,
            None => None,
        };
        let (hash, total) = scan(path, connection.is_some())?;
        let source = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_owned())
            .display()
            .to_string();
        let key = format!(
            "{}:{}",
            flow.id,
            &sluice_model::version_of(&source)
                .chars()
                .take(16)
                .collect::<String>()
        );
        let batch = match (batches, &connection) {
            (Some(b), Some(c)) => Some(
                b.open(flow, c)
                    .await
                    .map_err(|e| ImportError::Database(e, 0))?,
            ),
            _ => None,
        };
        let mut start = 0;
        if let Some(b) = &batch {
            let at = b
                .position(&key)
                .await
                .map_err(|e| ImportError::Database(e, 0))?;
            match at {
                Some(p) if !options.restart && p.finished => {
                    return Err(ImportError::Refused(format!(
                        "{} was imported by flow `{}` already (all {} records); give --restart to import it again",
                        path.display(),
                        flow.id,
                        p.next_record
                    )));
                }
                Some(p) if !options.restart && p.file_hash != hash => {
                    return Err(ImportError::Refused(format!(
                        "{} changed since its import stopped after record {}; give --restart to import it from the first record",
                        path.display(),
                        p.next_record
                    )));
                }
                Some(p) if !options.restart => start = p.next_record,
                _ => b
                    .start(&key, &source, &hash)
                    .await
                    .map_err(|e| ImportError::Database(e, 0))?,
            }
        }
        Ok(Setup {
            batch,
            key,
            source,
            total,
            start,
        })
    }
}

impl<S: Store> Runs<S> {
    /// Run, write and commit every chunk, in file order.
    ///
    /// Two chunks are in flight: while one is written to the database
    /// (and its records, once written, run to their end), the next one's
    /// records run up to their envelopes. Records run in tasks of their
    /// own, on the runtime's worker threads when it has several; this
    /// task only writes. A chunk is committed before the next one writes,
    /// unless they overlap: when the batch says that gives the same result
    /// (on PostgreSQL), chunks are written in a pipeline (see `pipeline.rs`).
    async fn all_chunks(
        self: &Arc<Self>,
        mut chunks: tokio::sync::mpsc::Receiver<Result<Chunk, ImportError>>,
        mut out: Out<'_>,
    ) -> Result<(), ImportError> {
        let mut current = self.start_next(&mut chunks).await?;
        if !self.batch.as_ref().is_some_and(|b| b.overlaps()) {
            while let Some(running) = current.take() {
                current = self.start_next(&mut chunks).await?;
                self.finish(running, &mut out).await?;
            }
            return Ok(());
        }
        self.pipelined(current, chunks, out).await
    }
}

mod pipeline;
#[cfg(test)]
mod tests;
