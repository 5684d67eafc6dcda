//! The [`Store`] trait and the records it keeps: runs, their step records,
//! waits, and the small values the engine and the server hand it.

use serde_json::Value;
use sluice_expr::Val;
use std::future::Future;

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Finished: the last step succeeded.
    Succeeded,
    /// Finished: a step failed with no failure path.
    Failed,
    /// Stopped at a step a person must fix; resumable.
    Incident,
    /// Stopped by a person (`cancel`) before it finished.
    Cancelled,
    /// Suspended at a step until a time or an event (see [`Wait`]).
    Waiting,
}

impl RunStatus {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Incident => "incident",
            Self::Cancelled => "cancelled",
            Self::Waiting => "waiting",
        }
    }

    /// Parse the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "incident" => Self::Incident,
            "cancelled" => Self::Cancelled,
            "waiting" => Self::Waiting,
            _ => return None,
        })
    }

    /// Every status.
    pub const ALL: [RunStatus; 6] = [
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Incident,
        Self::Cancelled,
        Self::Waiting,
    ];

    /// Whether the run is over (it will not move again by itself or by a resume).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A run as it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    /// Unique id (a UUID v7, so ids sort by time).
    pub id: String,
    /// The flow's id.
    pub flow_id: String,
    /// `$trigger` (shared with the run's flow object).
    pub trigger: Val,
    /// The run's input state data (shared with the run's state).
    pub input: Val,
    /// The step it runs first.
    pub next_step: Option<String>,
    /// Start, in microseconds since the Unix epoch.
    pub started_at: i64,
    /// The version of the flow file it runs (see [`Store::save_flow_version`]).
    pub flow_version: Option<String>,
    /// `$accountability`: who or what started it.
    pub accountability: Value,
    /// For the run of one item of a fan-out: the run that emitted it, and the
    /// item's index from 0.
    pub parent: Option<(String, i64)>,
}

/// One executed step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// The run.
    pub run_id: String,
    /// Position in the run log, from 0.
    pub seq: i64,
    /// The step's key.
    pub step_key: String,
    /// The step's type.
    pub kind: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Options after templating.
    pub options: Val,
    /// The step's input state data (shared with the run's state and the
    /// step before's output: a step's values are never copied to be
    /// recorded).
    pub input: Val,
    /// The action's result (`None`: no payload, or failed).
    pub result: Option<Val>,
    /// The state data the step handed on.
    pub output: Option<Val>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Who must act on the error (`flow`, `external`, `store`, `bug`).
    pub blame: Option<String>,
    /// Lines the step wrote to the run log.
    pub logs: Vec<String>,
    /// Start, in microseconds since the Unix epoch.
    pub started_at: i64,
    /// End, in microseconds since the Unix epoch.
    pub ended_at: i64,
}

/// The run's new position, written with a step record.
#[derive(Clone, Debug, PartialEq)]
pub struct RunUpdate {
    /// New status.
    pub status: RunStatus,
    /// Current state data.
    pub state: Val,
    /// The step to run next, if any.
    pub next_step: Option<String>,
    /// The run's output, once it succeeded.
    pub output: Option<Val>,
    /// The error that ended it.
    pub error: Option<String>,
    /// The step that failed.
    pub error_step: Option<String>,
    /// End, in microseconds since the Unix epoch, once finished.
    pub ended_at: Option<i64>,
}

impl RunUpdate {
    /// A run that ends now: succeeded when there is no `error`, failed
    /// otherwise (at `error_step`, if a step failed).
    pub fn ended(
        state: Val,
        output: Option<Val>,
        error: Option<String>,
        error_step: Option<String>,
    ) -> Self {
        Self {
            status: if error.is_some() {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            state,
            next_step: None,
            output,
            error,
            error_step,
            ended_at: Some(now_micros()),
        }
    }
}

/// What a suspended run waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// A `sleep` step: it wakes at `wake_at`.
    Sleep,
    /// The backoff between two attempts of a step with `retry`: the next
    /// attempt runs at `wake_at`.
    Retry,
    /// A `wait` step: an event that matches, or its timeout at `wake_at`.
    Event,
}

impl WaitKind {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sleep => "sleep",
            Self::Retry => "retry",
            Self::Event => "event",
        }
    }

    /// Parse the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sleep" => Self::Sleep,
            "retry" => Self::Retry,
            "event" => Self::Event,
            _ => return None,
        })
    }
}

/// A run suspended at a step, durably: it is `waiting` in the store until
/// one caller claims its wait ([`Store::claim_wait`]) and continues it.
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    /// The run.
    pub run_id: String,
    /// Its flow.
    pub flow_id: String,
    /// The step it waits at (the run's next step).
    pub step_key: String,
    /// What it waits for.
    pub kind: WaitKind,
    /// When it wakes by itself (µs since the epoch): the end of a sleep or
    /// a backoff, or an event wait's timeout; `None`: no timeout.
    pub wake_at: Option<i64>,
    /// For an event wait: the CloudEvent `type` it needs (any when `None`).
    pub event_type: Option<String>,
    /// For an event wait: the CloudEvent `source` it needs (any when `None`).
    pub source: Option<String>,
    /// For an event wait: context attributes the event must carry with
    /// these values (an object; empty for none).
    pub correlation: Value,
    /// When it began waiting (µs since the epoch).
    pub since: i64,
}

impl Wait {
    /// A wait that ends at `wake_at` by itself (a sleep or a backoff).
    pub fn timer(
        run_id: &str,
        flow_id: &str,
        step_key: &str,
        kind: WaitKind,
        wake_at: i64,
        since: i64,
    ) -> Self {
        Self {
            run_id: run_id.to_owned(),
            flow_id: flow_id.to_owned(),
            step_key: step_key.to_owned(),
            kind,
            wake_at: Some(wake_at),
            event_type: None,
            source: None,
            correlation: Value::Object(serde_json::Map::new()),
            since,
        }
    }
}

/// A run in a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Id.
    pub id: String,
    /// Flow id.
    pub flow_id: String,
    /// Status.
    pub status: RunStatus,
    /// Start (µs since the epoch).
    pub started_at: i64,
    /// End (µs since the epoch).
    pub ended_at: Option<i64>,
    /// Steps recorded.
    pub steps: i64,
    /// The error that ended it.
    pub error: Option<String>,
    /// The step that failed.
    pub error_step: Option<String>,
}

impl RunFilter {
    /// The listing's query, with only the conditions the filter has (so
    /// that the database picks the index that serves them), its parameters
    /// numbered in the order [`RunFilter::bind`] binds them; `dollar`:
    /// PostgreSQL's `$n`, else SQLite's `?n`.
    pub(crate) fn query(&self, dollar: bool) -> String {
        let mut n = 0;
        let mut next = || {
            n += 1;
            if dollar {
                format!("${n}")
            } else {
                format!("?{n}")
            }
        };
        let mut conds = Vec::new();
        if self.flow_id.is_some() {
            conds.push(format!("flow_id = {}", next()));
        }
        if let Some(status) = self.status {
            conds.push(format!("status = {}", next()));
            // SQLite's index by status leaves succeeded runs out, and is
            // used only by a query that says so itself.
            if !dollar && status != RunStatus::Succeeded {
                conds.push("status <> 'succeeded'".to_owned());
            }
        }
        if self.started_after.is_some() {
            conds.push(format!("started_at >= {}", next()));
        }
        if self.started_before.is_some() {
            conds.push(format!("started_at < {}", next()));
        }
        if self.after.is_some() {
            let (at, id) = (next(), next());
            conds.push(format!(
                "(started_at < {at} OR (started_at = {at} AND id < {id}))"
            ));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        format!(
            "SELECT id, flow_id, status, started_at, ended_at, steps, error, error_step FROM runs{filter} ORDER BY started_at DESC, id DESC LIMIT {}",
            next()
        )
    }
}

/// A flow's runs since a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// The flow.
    pub flow_id: String,
    /// Its runs started since the time.
    pub runs: i64,
    /// Of those, the ones that failed or stopped at an incident.
    pub failures: i64,
}

/// A run with everything recorded about it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunDetail {
    /// The summary.
    pub summary: RunSummary,
    /// `$trigger`.
    pub trigger: Val,
    /// The input state data.
    pub input: Val,
    /// The current state data.
    pub state: Val,
    /// The output, once succeeded.
    pub output: Option<Val>,
    /// The step it runs next.
    pub next_step: Option<String>,
    /// The version of the flow file it ran with.
    pub flow_version: Option<String>,
    /// `$accountability`.
    pub accountability: Value,
    /// For the run of one item of a fan-out: the run that emitted it, and the index.
    pub parent: Option<(String, i64)>,
    /// The run log, in order.
    pub steps: Vec<StepRecord>,
    /// What woke it from its last wait, while no step was recorded since
    /// (see [`Store::claim_wait`]).
    pub woken: Option<Woken>,
}

/// What woke a suspended run: the wait claimed, and the event that ended an
/// event wait (`None`: its time came).
#[derive(Clone, Debug, PartialEq)]
pub struct Woken {
    /// The wait's kind.
    pub kind: WaitKind,
    /// When it began waiting (µs since the epoch).
    pub since: i64,
    /// The event that ended it.
    pub event: Option<Value>,
}

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only this flow.
    pub flow_id: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only runs started at or after this time (µs since the epoch).
    pub started_after: Option<i64>,
    /// Only runs started before this time (µs since the epoch).
    pub started_before: Option<i64>,
    /// Only runs listed after this one (its start and id): the next page of
    /// a listing whose last run this was.
    pub after: Option<(i64, String)>,
    /// At most this many, newest first (0: no limit).
    pub limit: u32,
}

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened.
    #[error("cannot open the store `{url}`: {message}")]
    Open {
        /// The URL or path (without credentials).
        url: String,
        /// Why.
        message: String,
    },
    /// A query failed.
    #[error("store error: {0}")]
    Database(sqlx::Error),
    /// A statement of the SQLite store's writer failed.
    #[error("store error: {0}")]
    Sqlite(rusqlite::Error),
    /// The store's disk (or the size it may grow to, SQLite's
    /// `max_page_count`) is full: the write was rolled back, and what was
    /// committed before is kept.
    #[error(
        "the store is full ({0}): nothing more is recorded until space is freed; what was recorded before is kept"
    )]
    Full(String),
    /// No connection to the store could be had (for a batch of writes,
    /// which share one connection).
    #[error("the store cannot be reached: {0}")]
    Unreachable(String),
    /// A stored document did not parse (the store was changed by hand).
    #[error("store holds an unreadable record: {0}")]
    Corrupt(String),
    /// The store's writer stopped (its runtime is shutting down).
    #[error("the store is closed")]
    Stopped,
    /// A run that does not exist.
    #[error("no run `{0}`")]
    NoSuchRun(String),
    /// An API token of that name exists already.
    #[error("a token named `{0}` exists already (revoked ones keep their name)")]
    TokenExists(String),
    /// A run record that already exists.
    #[error("run `{0}` already exists")]
    Conflict(String),
    /// A run that is not stopped at an incident cannot be resumed.
    #[error("run `{run}` is {status}, not stopped at an incident; only an incident can be resumed")]
    NotResumable {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
    /// A run that already ended cannot be cancelled.
    #[error(
        "run `{run}` already {status}; only a running or waiting run, or one at an incident, can be cancelled"
    )]
    NotCancellable {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
    /// The run is driven by another process now: this one's lease on it
    /// lapsed and was taken over (see [`Store::take_over`]). Its record
    /// is left as the new owner writes it.
    #[error(
        "run `{run}` is driven by process `{owner}` now: this process's lease on it lapsed and was taken over"
    )]
    LeaseLost {
        /// The run.
        run: String,
        /// The process that holds it now.
        owner: String,
    },
    /// Only a running run is continued after a stop.
    #[error("run `{run}` is {status}, not running")]
    NotRunning {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
}

impl From<sqlx::Error> for StoreError {
    /// A full disk is told apart (SQLite's `SQLITE_FULL`, which it also
    /// gives when a write fails for want of space; PostgreSQL's SQLSTATE
    /// `53100`): the operator must act, not the flow's author.
    fn from(e: sqlx::Error) -> Self {
        let full = e
            .as_database_error()
            .filter(|d| d.code().is_some_and(|c| c == "13" || c == "53100"))
            .map(|d| d.message().to_owned());
        match full {
            Some(message) => Self::Full(message),
            None => Self::Database(e),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// As for sqlx's errors, a full disk is told apart.
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, message)
                if f.code == rusqlite::ErrorCode::DiskFull =>
            {
                Self::Full(message.unwrap_or_else(|| f.to_string()))
            }
            e => Self::Sqlite(e),
        }
    }
}

/// The durable record of runs.
pub trait Store: Send + Sync + 'static {
    /// Record a new run.
    fn create_run(&self, run: &NewRun) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Record a step and the run's new position, in one transaction.
    fn record_step(
        &self,
        step: &StepRecord,
        run: &RunUpdate,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_steps(None, std::slice::from_ref(step), run)
    }
    /// Record steps of one run (in order) and its new position, in one
    /// transaction; with `new`, the run itself too, in the same transaction
    /// (a run the engine records only with its first write, see
    /// docs/data-flow.md). The run is `new`'s or the steps'; with neither
    /// there is no run to move, and nothing is written.
    fn record_steps(
        &self,
        new: Option<&NewRun>,
        steps: &[StepRecord],
        run: &RunUpdate,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Update a run without a step (for example when it ends with no step).
    fn update_run(
        &self,
        run_id: &str,
        run: &RunUpdate,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// List runs, newest first.
    fn list_runs(
        &self,
        filter: &RunFilter,
    ) -> impl Future<Output = Result<Vec<RunSummary>, StoreError>> + Send;
    /// Each flow's runs started at or after `since` (µs since the epoch),
    /// for the flows that have any.
    fn flow_stats(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<Vec<FlowStats>, StoreError>> + Send;
    /// One run with its run log.
    fn get_run(
        &self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<RunDetail>, StoreError>> + Send;
    /// The flow a run runs and the version of its file, without its run
    /// log (what waking a run needs first); `None` when there is no such run.
    fn flow_of_run(
        &self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<(String, Option<String>)>, StoreError>> + Send;
    /// Keep a flow file's text under its version (idempotent).
    fn save_flow_version(
        &self,
        flow_id: &str,
        version: &str,
        source: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A flow file's text by version.
    fn flow_version(
        &self,
        flow_id: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Move a run stopped at an incident back to running with `state` as its
    /// state data. Fails with [`StoreError::NotResumable`] unless the run is
    /// at an incident (so two resumes cannot both succeed).
    fn resume_run(
        &self,
        run_id: &str,
        state: &Val,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Note that running run `run_id` is continued after the process that
    /// drove it stopped: how many times in a row that happened with no step
    /// recorded in between (from 1). Fails with [`StoreError::NotRunning`]
    /// when the run is not running.
    fn count_recovery(&self, run_id: &str) -> impl Future<Output = Result<u32, StoreError>> + Send;
    /// Keep an API token (its hash); fails with
    /// [`StoreError::TokenExists`] when one has its name.
    fn create_token(&self, token: &ApiToken)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every API token, revoked ones too, by name.
    fn tokens(&self) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send;
    /// The API token with this hash, if any (revoked or not).
    fn token_by_hash(
        &self,
        hash: &str,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send;
    /// Revoke the token named `name`: whether one was active.
    fn revoke_token(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Add an entry to the audit of people's actions.
    fn audit(&self, entry: &AuditEntry) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The audit, newest first: at most `limit` entries, only those on
    /// `target` when given.
    fn audit_log(
        &self,
        target: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;
    /// Keep a notification; `false` when one with its id was kept before
    /// (a step attempt run again sends nothing twice).
    fn notify(&self, n: &Notification) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The notifications `reader` sees (only those it has not read, when
    /// `unread`), newest first, each with whether the reader has read it:
    /// at most `limit`; and how many of all it sees it has not read.
    fn notifications(
        &self,
        reader: Reader<'_>,
        limit: u32,
        unread: bool,
    ) -> impl Future<Output = Result<(Vec<(Notification, bool)>, u64), StoreError>> + Send;
    /// Mark notification `id` read by `reader`; `false` when there is no
    /// such notification.
    fn mark_read(
        &self,
        id: &str,
        reader: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Stop a running or waiting run, or one at an incident: its status
    /// becomes `cancelled`, its wait is dropped, and later step records no
    /// longer move it. Fails with
    /// [`StoreError::NotCancellable`] when it already ended.
    fn cancel_run(&self, run_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Suspend a running run at `wait.step_key` with `state` as its state
    /// data, recording `step` first if given (a failed attempt before a
    /// retry's backoff), all in one transaction. Returns false, and records
    /// no wait, when the run is no longer running (it was cancelled).
    fn suspend(
        &self,
        step: Option<&StepRecord>,
        state: &Val,
        wait: &Wait,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Take a suspended run's wait and move the run back to running, in one
    /// transaction: `Some` for exactly one caller, across processes sharing
    /// the store; `None` when it was claimed already, or the run is not
    /// waiting (cancelled). What woke it (the wait, and `event` when an
    /// event ended it) is kept with the run until its next step is recorded
    /// ([`RunDetail::woken`]): a process that stops in between loses
    /// neither the event nor the time waited.
    fn claim_wait(
        &self,
        run_id: &str,
        event: Option<&Value>,
    ) -> impl Future<Output = Result<Option<Wait>, StoreError>> + Send;
    /// The waits of suspended runs: all of them, or with `event_type`, the
    /// event waits that an event of that type may end (their type is that
    /// one, or any).
    fn list_waits(
        &self,
        event_type: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Wait>, StoreError>> + Send;
    /// Claim the fire of a schedule at `at` (µs since the epoch) for `flow_id`
    /// and record `run`, the run it starts, in one transaction: true for
    /// exactly one caller per flow and time, across restarts and processes
    /// sharing the store; false (and nothing recorded) when the fire was
    /// claimed already.
    fn claim_fire(
        &self,
        flow_id: &str,
        at: i64,
        run: &NewRun,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The latest claimed fire of a flow's schedule, if any.
    fn last_fire(
        &self,
        flow_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// The event named by `source` and `id`, if one was accepted (within
    /// the last [`EVENTS_KEPT_MICROS`]).
    fn seen_event(
        &self,
        source: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<SeenEvent>, StoreError>> + Send;
    /// Accept the event named by `source` and `id`, received at
    /// `received_at`, with the answer given to its sender and the runs it
    /// starts, in one transaction: true for exactly one caller per event,
    /// across restarts and processes sharing the store; false (and nothing
    /// recorded) when it was accepted already. Events accepted more than
    /// [`EVENTS_KEPT_MICROS`] before are forgotten.
    fn accept_event(
        &self,
        source: &str,
        id: &str,
        received_at: i64,
        answer: &Value,
        runs: &[NewRun],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A flow's poll snapshot and its sequence number (0 before the first
    /// poll advanced it).
    fn poll_snapshot(
        &self,
        flow_id: &str,
    ) -> impl Future<Output = Result<(i64, Option<Value>), StoreError>> + Send;
    /// Advance a flow's poll snapshot from sequence number `seq` (as
    /// [`Store::poll_snapshot`] read it) to `seq + 1` with `snapshot`, and
    /// record `runs`, in one transaction: true for exactly one caller per
    /// flow and number, across restarts and processes sharing the store;
    /// false (and nothing recorded) when another advanced it first.
    fn advance_poll(
        &self,
        flow_id: &str,
        seq: i64,
        snapshot: &Value,
        runs: &[NewRun],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// This process's id in the store: the owner of the runs it creates,
    /// claims or takes over.
    fn process_id(&self) -> &str;
    /// Whether other processes may share the store (and its runs): then
    /// runs are leased (see [`Store::take_over`]).
    fn shared(&self) -> bool {
        false
    }
    /// Take at most `limit` running runs that no live process drives (their
    /// owner stopped and its lease lapsed), oldest first: they are this
    /// process's from now on, to continue from their last committed step.
    /// Of processes calling at once, each run goes to one. A store that is
    /// not shared is one process's: it hands over every running run at its
    /// first call, and none after.
    fn take_over(&self, limit: u32)
    -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The running runs this process holds (on a shared store; none on
    /// another): those it no longer drives (a write failed while the
    /// database was away) are its to continue.
    fn held_runs(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        async { Ok(Vec::new()) }
    }
    /// This process's leases as last renewed; `None` when the store is not
    /// shared.
    fn leases(&self) -> Option<Leases> {
        None
    }
    /// Whether this process is the one that polls `flow_id`'s source now
    /// (taking it when its owner stopped); always, when not shared.
    fn own_poll(&self, flow_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = flow_id;
        async { Ok(true) }
    }
    /// A suspended run's wait, if it is waiting.
    fn wait_of(
        &self,
        run_id: &str,
    ) -> impl Future<Output = Result<Option<Wait>, StoreError>> + Send;
    /// The waits that end by themselves before `before` (µs since the
    /// epoch), soonest first.
    fn due_waits(&self, before: i64) -> impl Future<Output = Result<Vec<Wait>, StoreError>> + Send;
    /// What other processes sharing the store tell this one (see
    /// [`Notice`]); `None` when the store is not shared.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }
}

/// A process among those that share a store, as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its id (a UUID v7, new at every start).
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Its operating-system process id.
    pub pid: i64,
    /// The version of Sluice it runs.
    pub version: String,
    /// When it opened the store (µs since the epoch).
    pub started_at: i64,
    /// Until when its leases hold unless it renews them (µs since the
    /// epoch, by the database's clock).
    pub alive_until: i64,
    /// The running runs it holds.
    pub runs: i64,
}

/// This process's leases on runs, as last renewed
/// ([`Store::leases`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Leases {
    /// This process.
    pub process: String,
    /// How long a lease holds unrenewed (µs).
    pub lease_micros: i64,
    /// When they were last renewed (µs since the epoch, this process's
    /// clock; 0 before the first renewal).
    pub renewed_at: i64,
    /// The running runs this process holds.
    pub held: i64,
    /// Runs this process took over from processes that stopped, since it
    /// started.
    pub taken_over: u64,
    /// The processes alive, this one among them.
    pub processes: Vec<Process>,
}

/// What one process of those sharing a store tells the others, at once
/// (PostgreSQL's LISTEN/NOTIFY): none of it is needed for correctness,
/// which the periodic scans of [`Store::take_over`] and
/// [`Store::due_waits`] give; it only saves their interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A run was suspended until `wake_at` (µs since the epoch): whichever
    /// process claims its wait first then continues it.
    Waiting {
        /// The run.
        run_id: String,
        /// When it wakes.
        wake_at: i64,
    },
    /// A run was cancelled: the process that drives it stops it.
    Cancelled {
        /// The run.
        run_id: String,
    },
}

/// How long an accepted event is remembered, so that a sender's retry of it
/// starts nothing again: a week, in µs.
pub const EVENTS_KEPT_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// An event accepted before ([`Store::seen_event`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SeenEvent {
    /// When it was received (µs since the epoch).
    pub received_at: i64,
    /// The answer its sender was given.
    pub answer: Value,
}

/// An API token as the store keeps it: its SHA-256, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Its name (who uses it).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The SHA-256 of the token, in hex.
    pub hash: String,
    /// When it was made (µs since the epoch).
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// When it stops being valid, if ever (µs since the epoch).
    pub expires_at: Option<i64>,
}

/// One action of a person, as the audit keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// When (µs since the epoch).
    pub at: i64,
    /// Who: a token's name, or the user of the command line.
    pub user: Option<String>,
    /// Their role (`viewer`, `operator`, `admin`; none without a token).
    pub role: Option<String>,
    /// The address the request came from.
    pub ip: Option<String>,
    /// What: `run.cancel`, `run.resume`, `run.retry`, `run.start`,
    /// `flows.reload`, `token.create`, `token.revoke`.
    pub action: String,
    /// On what: a run's id, a flow's, a token's name.
    pub target: Option<String>,
    /// More, as data (`{}` when nothing).
    pub details: Value,
}

/// A notification sent by a `notify` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// Its id: the idempotency key of the step attempt that sent it.
    pub id: String,
    /// When it was sent (µs since the epoch).
    pub at: i64,
    /// The token's user it is for.
    pub user: Option<String>,
    /// Or the role it is for (every token of that role or above).
    pub role: Option<String>,
    /// Its subject.
    pub subject: String,
    /// Its message.
    pub message: String,
    /// The run that sent it.
    pub run_id: Option<String>,
    /// The step that sent it.
    pub step_key: Option<String>,
}

/// Whose notifications to read.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    /// The reader (whose reads are kept); `""` for anyone on a server
    /// without tokens.
    pub name: &'a str,
    /// The roles whose notifications the reader sees; `None`: every
    /// notification (a server without tokens).
    pub roles: Option<&'a [&'a str]>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A new time-ordered run id.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
