//! A step type: the [`Action`] trait, what a running step can see
//! ([`ActionCx`]), what it gives back ([`Outcome`]) and the work it asks of
//! the engine ([`Effect`]).

use crate::batch::InBatch;
use crate::error::{ActionError, Blame, BoxFuture};
use crate::hooks::DataHooks;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_expr::{Limits, Program, Scope, Val};
use std::collections::BTreeMap;
use std::future::Future;

/// What a step produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The result, or `None` when the step returns no payload.
    pub payload: Option<Value>,
    /// Lines for the run log.
    pub logs: Vec<String>,
    /// Tokens the step set, for the run's `$tokens`.
    pub tokens: Option<serde_json::Map<String, Value>>,
    /// Results emitted individually: the steps after this one run once per
    /// item, each in a run of its own.
    pub items: Option<Vec<Value>>,
    /// How many of the items' runs may be under way at once (0 or 1: one
    /// after another).
    pub concurrency: usize,
    /// Work the engine does for the step: suspending the run, or starting
    /// another flow (the step's result comes from it).
    pub effect: Option<Effect>,
}

/// Work a step asks of the engine, returned as data (in the manner of
/// Restate's state machine): the engine records the run's suspension or the
/// other flow's run durably before it does anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Suspend the run for `ms` milliseconds from now; the step is then run
    /// again with [`ActionCx::wake`] set.
    Sleep {
        /// How long.
        ms: u64,
    },
    /// Suspend the run until a CloudEvent that matches arrives (the step is
    /// run again with the event in [`ActionCx::wake`]) or the timeout passes
    /// (the step fails).
    WaitEvent {
        /// The event's `type` (any when `None`).
        event_type: Option<String>,
        /// The event's `source` (any when `None`).
        source: Option<String>,
        /// Context attributes the event must carry, with their values.
        correlation: serde_json::Map<String, Value>,
        /// How long until it times out, in milliseconds from now, if ever.
        timeout_ms: Option<u64>,
    },
    /// Start a run of another flow with `input`; the step's result is that
    /// run's output (when `wait`) or `{runId}`.
    StartFlow {
        /// The flow's id.
        flow: String,
        /// The run's input.
        input: Value,
        /// Whether the step waits for the run to end.
        wait: bool,
        /// Run the flow once per element of `input` (a list), thus.
        each: Option<Iteration>,
    },
}

/// How a `flow` step runs a flow over a list (Directus's iteration modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iteration {
    /// One after another.
    Serial,
    /// This many at once, each batch after the one before has ended.
    Batch(usize),
    /// At most this many at once.
    Parallel(usize),
}

/// The most items' runs a fan-out may have under way at once.
pub const MAX_CONCURRENCY: usize = 1000;

impl Outcome {
    /// Items emitted individually (the steps after run once per item, each in
    /// a run of its own), at most `concurrency` under way at once (default
    /// one after another; at most [`MAX_CONCURRENCY`]); the payload is their
    /// list.
    pub fn each(items: Vec<Value>, concurrency: Option<usize>) -> Self {
        Self {
            payload: Some(Value::Array(items.clone())),
            items: Some(items),
            concurrency: concurrency.unwrap_or(1).clamp(1, MAX_CONCURRENCY),
            ..Self::default()
        }
    }

    /// A result.
    pub fn value(v: Value) -> Self {
        Self {
            payload: Some(v),
            logs: Vec::new(),
            tokens: None,
            items: None,
            concurrency: 0,
            effect: None,
        }
    }

    /// Ask the engine for `effect`.
    pub fn effect(effect: Effect) -> Self {
        Self {
            effect: Some(effect),
            ..Self::default()
        }
    }

    /// No payload.
    pub fn none() -> Self {
        Self::default()
    }
}

/// What a running step can see.
pub struct ActionCx<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The step's key.
    pub step_key: &'a str,
    /// The data the action works on (the state data, after `fromStateData`
    /// and input mappings), as templates and filters read it, and as JSON
    /// (`program_input.to_json()`, made the first time it is asked for).
    pub program_input: &'a sluice_expr::Input<'a>,
    /// The flow object: `$trigger`, `$last`, `$<key>`.
    pub scope: &'a (dyn Scope + Sync),
    /// The step's expression options, compiled.
    pub expressions: &'a BTreeMap<String, Program>,
    /// Limits for expressions.
    pub limits: &'a Limits,
    /// The flow's `connections`, as declared (a connector opens what it
    /// names, and keeps it for the runs after).
    pub connections: &'a BTreeMap<String, Value>,
    /// The deferred options, compiled: the step renders them itself.
    pub deferred: &'a BTreeMap<String, (Value, sluice_expr::TemplateValue)>,
    /// Set when the run is one record of an import: envelopes are written
    /// by the import's batch.
    pub batch: Option<InBatch<'a>>,
    /// Set when the step runs again after its run was suspended by its
    /// [`Effect`]: `null` for a sleep that ended, the CloudEvent for a wait.
    pub wake: Option<&'a Value>,
    /// This attempt of the step, from 1 (see a step's `retry`).
    pub attempt: u32,
    /// The key of this attempt, the same for every run of it (after a
    /// restart too) and different for every other: run, step, item and
    /// attempt. An outside system that is handed it can recognise a request
    /// it already carried out. Empty for runs that are not recorded.
    pub idempotency_key: &'a str,
    /// The data hooks of the flows the run can reach (`event` triggers),
    /// which SQL actions ask before and after each change; `None` when the
    /// run has none.
    pub hooks: Option<&'a dyn DataHooks>,
    /// The run's one transaction, under `transaction: flow`: connectors
    /// write (and read) through it instead of committing each step.
    pub flow_tx: Option<&'a FlowTx>,
    /// The HTTP calls of another connector (an envelope's `call` patches),
    /// when one is registered.
    pub calls: Option<&'a dyn Calls>,
    /// Where `notify` steps send notifications (the run's store); `None`
    /// where nothing keeps them.
    pub inbox: Option<&'a dyn Inbox>,
}

/// A notification, as a `notify` step sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Its id (the step attempt's idempotency key).
    pub id: String,
    /// The token's user it is for.
    pub user: Option<String>,
    /// Or the role it is for.
    pub role: Option<String>,
    /// Its subject.
    pub subject: String,
    /// Its message.
    pub message: String,
    /// The run that sends it.
    pub run_id: String,
    /// The step that sends it.
    pub step_key: String,
}

/// Where notifications go (the run's store).
pub trait Inbox: Send + Sync {
    /// Keep `note`; `false` when it was kept before.
    fn send(&self, note: Note) -> BoxFuture<'_, Result<bool, ActionError>>;
}

/// HTTP calls made for a step of another connector: an envelope's `call`
/// patch and its compensation.
pub trait Calls: Send + Sync {
    /// Make `request` (the options of `http.request`, its `connection`
    /// among them) for `cx`'s flow, with idempotency key `key`; the answer,
    /// `{status, headers, body}`.
    fn call<'a>(
        &'a self,
        cx: &'a ActionCx<'a>,
        request: Value,
        key: String,
    ) -> BoxFuture<'a, Result<Value, ActionError>>;
}

/// A transaction a connector opened for a whole run (`transaction: flow`),
/// kept between its steps by the engine, which commits it when the run
/// succeeds and drops it (rolling it back) otherwise.
pub trait OpenTx: Send {
    /// Commit, recording in the same transaction that run `run_id` ended
    /// with `output` (so that a run that committed just before a crash is
    /// known as done when it starts again).
    fn commit(
        self: Box<Self>,
        run_id: String,
        output: Value,
    ) -> BoxFuture<'static, Result<(), ActionError>>;
    /// The connector's own type, to take it back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// What a connector that opens runs' one transactions knows of them
/// afterwards: whether one committed.
pub trait CommittedRuns: Send + Sync {
    /// The output that run `run_id` recorded in its one transaction on
    /// `connection` (of `connections`, a flow's) when that committed; `None`
    /// when it did not (rolled back, or never begun).
    fn committed<'a>(
        &'a self,
        connections: &'a BTreeMap<String, Value>,
        connection: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ActionError>>;
}

/// The slot of a run's one transaction: empty until a connector opens it.
#[derive(Default)]
pub struct FlowTx {
    open: std::sync::Mutex<Option<Box<dyn OpenTx>>>,
}

impl FlowTx {
    /// Take the open transaction, if any (a step uses it, then puts it back).
    pub fn take(&self) -> Option<Box<dyn OpenTx>> {
        self.open.lock().ok().and_then(|mut o| o.take())
    }

    /// Put the transaction (back) in the slot.
    pub fn put(&self, tx: Box<dyn OpenTx>) {
        if let Ok(mut o) = self.open.lock() {
            *o = Some(tx);
        }
    }

    /// Commit the transaction, if one was opened (a run that wrote nothing
    /// has none).
    pub async fn commit(&self, run_id: String, output: Value) -> Result<(), ActionError> {
        match self.take() {
            Some(tx) => tx.commit(run_id, output).await,
            None => Ok(()),
        }
    }
}

impl ActionCx<'_> {
    /// A compiled expression option.
    pub fn expression(&self, name: &str) -> Result<&Program, ActionError> {
        self.expressions.get(name).ok_or_else(|| ActionError {
            blame: Blame::Bug,
            message: format!(
                "step `{}` has no compiled expression `{name}`",
                self.step_key
            ),
            retry_after_ms: None,
            incident: false,
        })
    }
}

/// A step type.
pub trait Action: Send + Sync + 'static {
    /// The name flows use in `type:`.
    const KIND: &'static str;
    /// Options that are jq expressions rather than templated values.
    const EXPRESSIONS: &'static [&'static str] = &[];
    /// Options whose templates the step renders itself (see
    /// [`ActionCx::deferred`]). They are required, and they reach the step
    /// only through [`ActionCx::deferred`], not in its typed options (whose
    /// fields for them are `#[serde(default)]`).
    const DEFERRED: &'static [&'static str] = &[];
    /// Options taken as written, never templated (a script's code: `{{`
    /// may be part of it, and data must never become code).
    const VERBATIM: &'static [&'static str] = &[];
    /// The step touches nothing outside the run: no outside system, no other
    /// run, no clock to wait for; what it did is seen only through the run's
    /// record. The engine may then commit its record with the next write (a
    /// stretch of such steps is recorded in one; see docs/data-flow.md).
    const PURE: bool = false;
    /// The type of connection its `connection` option names (`sluice
    /// check` refuses another), if it takes one.
    const CONNECTION: Option<&'static str> = None;
    /// The typed options.
    type Options: DeserializeOwned + JsonSchema + Send;
    /// Checks of the options as written in the flow file beyond what their
    /// type says (`sluice check` reports them with their place).
    fn check(_options: &Value) -> Vec<sluice_model::OptionIssue> {
        Vec::new()
    }
    /// The step's result when it is a part of its templated options, as
    /// they are: shared, not copied (a `transform`'s `value`); `None`: the
    /// step runs.
    fn result_of(_options: &Val) -> Option<Val> {
        None
    }
    /// Run once with templated options.
    fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: Self::Options,
    ) -> impl Future<Output = Result<Outcome, ActionError>> + Send + 'a;
}

/// A step type with its types erased.
pub trait DynAction: Send + Sync {
    /// Deserialize the options (as the step's record shows them) and run.
    fn run_json<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: &'a Value,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>>;
    /// See [`Action::result_of`].
    fn result_of(&self, options: &Val) -> Option<Val>;
}

impl<A: Action> DynAction for A {
    fn run_json<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: &'a Value,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            // The quick way first; the path of a mistake is tracked only
            // when there is one (tracking costs on every node of a large
            // value).
            if let Ok(options) = <A::Options as serde::Deserialize>::deserialize(options) {
                return self.run(cx, options).await;
            }
            let options: A::Options = serde_path_to_error::deserialize(options).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(" at `{path}`")
                };
                ActionError::data(format!(
                    "options after templating are invalid{at}: {}",
                    e.inner()
                ))
            })?;
            self.run(cx, options).await
        })
    }

    fn result_of(&self, options: &Val) -> Option<Val> {
        A::result_of(options)
    }
}
