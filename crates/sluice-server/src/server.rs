//! The server's state and the runs it drives: the engine, the flows it
//! serves, the runs under way (each on a task of its own, counted for a
//! graceful stop), recovery at start, and metrics.

use crate::error::ApiError;
use crate::flows::FlowSet;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use sluice_action::Registry;
use sluice_engine::{Engine, EngineError, RunRequest, RunResult};
use sluice_model::Flow;
use sluice_store::{RunStatus, RunUpdate, Store, StoreError};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// A run driven on a task of its own: its result, when it ends or is
/// suspended.
pub type RunTask = oneshot::Receiver<Result<RunResult, EngineError>>;

/// Who may call the API (`sluice serve --no-auth`, `--auth-health-metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// No token is asked for (`--no-auth`).
    pub off: bool,
    /// While the store holds no active token, API routes are open (a server
    /// on loopback, for one person's machine).
    pub open_without_tokens: bool,
    /// `/api/health` and `/metrics` need a viewer's token too.
    pub health_and_metrics: bool,
}

/// Runs under way at once that requests may start, unless told otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// Runs under way in this process, to wait for at shutdown.
#[derive(Default)]
pub(crate) struct Inflight {
    pub(crate) n: AtomicUsize,
    pub(crate) idle: Notify,
}

/// Counts one run under way while it lives.
struct InflightGuard(Arc<Inflight>);

impl InflightGuard {
    fn new(i: &Arc<Inflight>) -> Self {
        let n = i.n.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("sluice_runs_in_flight").set(n as f64);
        Self(i.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let n = self.0.n.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("sluice_runs_in_flight").set(n as f64);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The process's Prometheus recorder (one per process: metrics are global).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding
            // program's); then /metrics shows only what this one sees.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A server over a store.
pub struct Server<S: Store> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Server<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<S: Store> {
    /// How long the server waits for clients.
    pub(crate) timeouts: Timeouts,
    /// Where runs are driven: a runtime of their own when one is given, so
    /// that their work (an expression may compute for its whole time limit)
    /// never holds up the server's answers; else the server's.
    pub(crate) runs: Option<tokio::runtime::Handle>,
    pub(crate) engine: Engine<S>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) flows: RwLock<Arc<FlowSet>>,
    pub(crate) dir: PathBuf,
    pub(crate) inflight: Arc<Inflight>,
    /// The most runs under way at once that requests may start (webhooks,
    /// the API, events); past it they are refused with `503`.
    pub(crate) max_in_flight: usize,
    /// Who may call the API.
    pub(crate) auth: Auth,
    pub(crate) schedules: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) metrics: PrometheusHandle,
    /// Suspended runs whose wait a task of this process follows (to wake
    /// them when due), each once.
    pub(crate) followed: Mutex<HashSet<String>>,
    /// Runs this process holds but did not drive at the last scan.
    pub(crate) undriven: Mutex<HashSet<String>>,
    /// Runs this process starts, suspends and ends, as they do (the UI's
    /// live runs list, `/api/stream`).
    pub(crate) changes: tokio::sync::broadcast::Sender<RunChange>,
    /// Flow files are saved one at a time (`PUT /api/flows/{id}`).
    pub(crate) saving: tokio::sync::Mutex<()>,
}

/// A run started, suspended or ended by this process.
#[derive(Clone, Debug)]
pub(crate) struct RunChange {
    /// The run (`None` when a run failed before it had an id).
    pub run_id: Option<String>,
    /// Its flow.
    pub flow_id: String,
    /// Its status now (`error`: it stopped on an error of the store or the
    /// engine).
    pub status: &'static str,
}

/// What [`Server::recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Runs continued from their last committed step.
    pub resumed: usize,
    /// Suspended runs whose wait has a time (a sleep, a backoff, an event
    /// wait's timeout): each wakes then.
    pub waiting: usize,
    /// Runs that could not be continued (their flow is gone), now failed.
    pub failed: usize,
}

impl<S: Store> Server<S> {
    /// A server running `flows` (loaded from `dir`, which [`Server::reload`]
    /// reads again) on `engine`.
    pub fn new(engine: Engine<S>, registry: Arc<Registry>, flows: FlowSet, dir: PathBuf) -> Self {
        let flows = Arc::new(flows);
        engine.set_flows(flows.clone());
        Self {
            inner: Arc::new(Inner {
                timeouts: Timeouts::default(),
                runs: None,
                engine,
                registry,
                flows: RwLock::new(flows),
                dir,
                inflight: Arc::default(),
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                auth: Auth::default(),
                schedules: Mutex::new(Vec::new()),
                metrics: prometheus(),
                followed: Mutex::default(),
                undriven: Mutex::default(),
                changes: tokio::sync::broadcast::channel(1024).0,
                saving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The flows now served.
    pub fn flows(&self) -> Arc<FlowSet> {
        self.inner
            .flows
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<S> {
        &self.inner.engine
    }

    /// Record a new run and drive it on a task of its own. Returns once the
    /// run is durable, with its id and the task that ends with its result.
    /// A caller that `waits` for the result and tells nobody of the run
    /// before it ends (a synchronous webhook) lets the run be recorded with
    /// its first write instead (see [`sluice_engine::Engine::begin`]).
    ///
    /// The run is recorded on a task of the server's runtime, which then
    /// hands it to the runs' (see [`Server::with_runs_on`]): the answer that
    /// a run was recorded does not wait for other runs' work; and a caller
    /// that is dropped half-way (a client hanging up) cannot leave a
    /// recorded run that nobody drives.
    pub async fn launch(
        &self,
        flow: Arc<Flow>,
        req: RunRequest,
        waits: bool,
    ) -> Result<(String, RunTask), EngineError> {
        let (tx, rx) = oneshot::channel();
        let (end_tx, end_rx) = oneshot::channel();
        let server = self.clone();
        tokio::spawn(async move {
            let engine = server.inner.engine.clone();
            let started = if waits {
                engine.begin(&flow, req).await
            } else {
                engine.start(&flow, req).await
            };
            let started = match started {
                Ok(s) => s,
                Err(e) => {
                    metrics::counter!("sluice_runs_finished_total", "flow" => flow.id.clone(), "status" => "not_started")
                        .increment(1);
                    let message = e.to_string();
                    let _ = tx.send(Err(e));
                    let _ = end_tx.send(Err(EngineError::NotStarted(message)));
                    return;
                }
            };
            metrics::counter!("sluice_runs_started_total", "flow" => flow.id.clone()).increment(1);
            server.announce(Some(started.run_id()), &flow.id, "running");
            let _ = tx.send(Ok(started.run_id().to_owned()));
            let f = flow.clone();
            let task = server.track(flow, async move { engine.finish(&f, started).await });
            if let Ok(r) = task.await {
                let _ = end_tx.send(r);
            }
        });
        match rx.await {
            Ok(Ok(id)) => Ok((id, end_rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::NotStarted(
                "the run's task ended before it was recorded".to_owned(),
            )),
        }
    }

    /// Keep `action` in the audit; an audit that cannot be written is said
    /// on standard error (the action itself is done).
    pub(crate) async fn audit(
        &self,
        caller: &crate::auth::Caller,
        action: &str,
        target: Option<&str>,
        details: Value,
    ) {
        let entry = caller.entry(action, target, details);
        if let Err(e) = self.inner.engine.store().audit(&entry).await {
            sluice_action::warn!("sluice: the audit of `{action}` was not written: {e}");
        }
    }

    /// Tell whoever follows this process's runs (`/api/stream`) that a run
    /// changed.
    pub(crate) fn announce(&self, run_id: Option<&str>, flow_id: &str, status: &'static str) {
        if self.inner.changes.receiver_count() > 0 {
            let _ = self.inner.changes.send(RunChange {
                run_id: run_id.map(str::to_owned),
                flow_id: flow_id.to_owned(),
                status,
            });
        }
    }

    /// Drive a run that is recorded (by [`Engine::prepare`] and a store
    /// write of the caller's) on a task of its own.
    pub fn drive(&self, flow: Arc<Flow>, started: sluice_engine::Started) -> RunTask {
        metrics::counter!("sluice_runs_started_total", "flow" => flow.id.clone()).increment(1);
        self.announce(Some(started.run_id()), &flow.id, "running");
        let engine = self.inner.engine.clone();
        let f = flow.clone();
        self.track(flow, async move { engine.finish(&f, started).await })
    }

    /// Drive `run` on a task of its own, counted as under way. When it is
    /// suspended until a time (a sleep, a backoff, an event wait's
    /// timeout), a task of its own wakes it then.
    pub(crate) fn track<F>(&self, flow: Arc<Flow>, run: F) -> RunTask
    where
        F: Future<Output = Result<RunResult, EngineError>> + Send + 'static,
    {
        let guard = InflightGuard::new(&self.inner.inflight);
        let (tx, rx) = oneshot::channel();
        let server = self.clone();
        let task = async move {
            let r = run.await;
            let status = match &r {
                // Suspended, or moved on by another caller: not an end.
                Ok(r) if matches!(r.status, RunStatus::Waiting | RunStatus::Running) => None,
                Ok(r) => Some(r.status.as_str()),
                Err(e) => {
                    sluice_action::warn!("sluice: a run of flow `{}` stopped: {e}", flow.id);
                    Some("error")
                }
            };
            if let Some(status) = status {
                metrics::counter!("sluice_runs_finished_total", "flow" => flow.id.clone(), "status" => status)
                    .increment(1);
            }
            match &r {
                Ok(r) => server.announce(Some(&r.run_id), &flow.id, r.status.as_str()),
                Err(_) => server.announce(None, &flow.id, "error"),
            }
            drop(guard);
            let timed = match &r {
                Ok(RunResult {
                    wait: Some(w),
                    status: RunStatus::Waiting,
                    ..
                }) if w.wake_at.is_some() => Some(w.clone()),
                _ => None,
            };
            let _ = tx.send(r);
            if let Some(w) = timed {
                server.follow(flow, w);
            }
        };
        match &self.inner.runs {
            Some(runs) => drop(runs.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        rx
    }

    /// Wake a suspended run when its wait is due (unless an event or
    /// another process wakes it first). A wait is followed by one task per
    /// process (other processes may follow it too: whichever claims it
    /// first continues the run).
    fn follow(&self, flow: Arc<Flow>, wait: sluice_store::Wait) {
        let id = wait.run_id.clone();
        if let Ok(mut f) = self.inner.followed.lock()
            && !f.insert(id.clone())
        {
            return;
        }
        let engine = self.inner.engine.clone();
        let f = flow.clone();
        let server = self.clone();
        drop(self.track(flow, async move {
            let r = engine.await_wait(&f, wait).await;
            if let Ok(mut f) = server.inner.followed.lock() {
                f.remove(&id);
            }
            r
        }));
    }

    /// Follow `wait` (see [`Server::follow`]) when its flow can be had:
    /// whether it is followed.
    async fn follow_wait(&self, wait: sluice_store::Wait) -> Result<bool, StoreError> {
        if wait.wake_at.is_none() || self.follows(&wait.run_id) {
            return Ok(false);
        }
        let Some(flow) = self.flow_of_run(&wait.run_id).await? else {
            return Ok(false);
        };
        match flow {
            Ok(flow) => {
                self.follow(flow, wait);
                Ok(true)
            }
            Err(message) => {
                sluice_action::warn!("sluice: run `{}` stays waiting: {message}", wait.run_id);
                Ok(false)
            }
        }
    }

    /// Whether a task of this process follows `run_id`'s wait.
    fn follows(&self, run_id: &str) -> bool {
        self.inner
            .followed
            .lock()
            .map(|f| f.contains(run_id))
            .unwrap_or(false)
    }

    /// The flow a recorded run ran: the one served now if it is the same
    /// version, else the version kept in the store.
    pub async fn flow_of(&self, flow_id: &str, version: Option<&str>) -> Result<Arc<Flow>, String> {
        let set = self.flows();
        if let Some(f) = set.flows.get(flow_id)
            && version.is_none_or(|v| v == f.version)
        {
            return Ok(f.clone());
        }
        let version = version.unwrap_or_default();
        match self
            .inner
            .engine
            .store()
            .flow_version(flow_id, version)
            .await
        {
            Ok(Some(text)) => {
                let name = format!("{flow_id} (version {version}, from the store)");
                sluice_model::load(&name, &text, self.inner.registry.as_ref())
                    .map(Arc::new)
                    .map_err(|d| {
                        format!(
                            "the stored version {version} of flow `{flow_id}` no longer loads: {}",
                            d.items
                                .iter()
                                .map(|i| i.message.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    })
            }
            Ok(None) => Err(format!(
                "flow `{flow_id}` (version {version}) is neither served nor kept in the store"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The flow a recorded run runs (see [`Server::flow_of`]), or why that
    /// flow cannot be had, without reading the run's log; `None` when
    /// there is no such run.
    pub(crate) async fn flow_of_run(
        &self,
        run_id: &str,
    ) -> Result<Option<Result<Arc<Flow>, String>>, StoreError> {
        let Some((flow_id, version)) = self.inner.engine.store().flow_of_run(run_id).await? else {
            return Ok(None);
        };
        Ok(Some(self.flow_of(&flow_id, version.as_deref()).await))
    }

    /// Continue every run left `running` by a process that stopped (a
    /// crash, `kill -9`) and that no live process holds, oldest first, each
    /// on a task of its own, from its last committed step (see
    /// [`Store::take_over`]); and follow every suspended run's wait that
    /// ends by itself. Call it once at start, before serving; on a shared
    /// store, [`Server::start_leases`] then goes on taking over the runs of
    /// processes that stop later.
    pub async fn recover(&self) -> Result<Recovered, StoreError> {
        let store = self.inner.engine.store().clone();
        let mut done = Recovered::default();
        // The runs left running first: a wait followed below may come due
        // while this goes on, and the run it wakes (running again, driven
        // by its follower) must not be found here and driven twice.
        for id in store.take_over(0).await? {
            match self.continue_taken(&id).await? {
                Some(true) => done.resumed += 1,
                Some(false) => done.failed += 1,
                None => {}
            }
        }
        // Suspended runs with a time wake then; event waits with no timeout
        // need nothing until their event comes.
        for w in store.list_waits(None).await? {
            if self.follow_wait(w).await? {
                done.waiting += 1;
            }
        }
        Ok(done)
    }

    /// Continue a running run this process took over, on a task of its
    /// own: `Some(true)` when it continues, `Some(false)` when its flow is
    /// gone (it is failed, saying so), `None` when there is no such run.
    async fn continue_taken(&self, id: &str) -> Result<Option<bool>, StoreError> {
        let store = self.inner.engine.store();
        let Some(flow) = self.flow_of_run(id).await? else {
            return Ok(None);
        };
        match flow {
            Ok(flow) => {
                let engine = self.inner.engine.clone();
                let id = id.to_owned();
                let f = flow.clone();
                drop(self.track(flow, async move { engine.recover(&f, &id).await }));
                Ok(Some(true))
            }
            Err(message) => {
                // Only here is the run's own record needed.
                let Some(detail) = store.get_run(id).await? else {
                    return Ok(None);
                };
                store
                    .update_run(
                        id,
                        &RunUpdate::ended(
                            detail.state,
                            None,
                            Some(format!("cannot continue after a restart: {message}")),
                            detail.next_step,
                        ),
                    )
                    .await?;
                Ok(Some(false))
            }
        }
    }

    /// On a store shared with other processes: every half lease, take over
    /// the runs of processes that stopped (their leases lapsed) and follow
    /// the waits that end within the next two intervals, whichever process
    /// suspended them; and act at once on what other processes announce (a
    /// run suspended, a run cancelled). Nothing on a store of one process.
    pub fn start_leases(&self) {
        let store = self.inner.engine.store();
        let Some(leases) = store.leases() else {
            return;
        };
        let every = std::time::Duration::from_micros(
            u64::try_from(leases.lease_micros / 2).unwrap_or(1_000_000),
        )
        .max(std::time::Duration::from_millis(100));
        let server = self.clone();
        let scan = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = server.scan(every).await {
                    sluice_action::warn!(
                        "sluice: the scan for runs to take over failed (tried again): {e}"
                    );
                }
            }
        });
        let mut tasks = vec![scan];
        if let Some(mut notices) = store.notices() {
            let server = self.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match notices.recv().await {
                        Ok(n) => server.notice(n).await,
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    }
                }
            }));
        }
        if let Ok(mut s) = self.inner.schedules.lock() {
            s.extend(tasks);
        }
    }

    /// One round of [`Server::start_leases`]'s scan.
    async fn scan(&self, every: std::time::Duration) -> Result<(), StoreError> {
        let store = self.inner.engine.store().clone();
        loop {
            let taken = store.take_over(100).await?;
            for id in &taken {
                metrics::counter!("sluice_runs_taken_over_total").increment(1);
                sluice_action::warn!("sluice: took over run `{id}` (its process stopped)");
                self.continue_taken(id).await?;
            }
            if taken.len() < 100 {
                break;
            }
        }
        // Runs this process holds but no longer drives (a write of theirs
        // failed while the database was away): continued once seen so at
        // two scans in a row (a run just recorded is driven a moment later).
        let held = store.held_runs().await?;
        let engine = &self.inner.engine;
        let now: HashSet<String> = held
            .into_iter()
            .filter(|id| !engine.drives_now(id))
            .collect();
        let before = self
            .inner
            .undriven
            .lock()
            .map(|mut u| std::mem::replace(&mut *u, now.clone()))
            .unwrap_or_default();
        for id in now.intersection(&before) {
            sluice_action::warn!(
                "sluice: continuing run `{id}` (its drive stopped on a store error)"
            );
            self.continue_taken(id).await?;
        }
        let horizon = i64::try_from(every.as_micros()).unwrap_or(i64::MAX / 4) * 2;
        for w in store
            .due_waits(sluice_store::now_micros().saturating_add(horizon))
            .await?
        {
            self.follow_wait(w).await?;
        }
        Ok(())
    }

    /// What another process announced.
    async fn notice(&self, n: sluice_store::Notice) {
        match n {
            sluice_store::Notice::Cancelled { run_id } => self.inner.engine.stop_driving(&run_id),
            sluice_store::Notice::Waiting { run_id, .. } => {
                if self.follows(&run_id) {
                    return;
                }
                let store = self.inner.engine.store();
                match store.wait_of(&run_id).await {
                    Ok(Some(w)) => {
                        if let Err(e) = self.follow_wait(w).await {
                            sluice_action::warn!("sluice: cannot follow run `{run_id}`: {e}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => sluice_action::warn!("sluice: cannot follow run `{run_id}`: {e}"),
                }
            }
        }
    }

    /// Drive runs on `runtime` (before serving): the server's own runtime
    /// then only takes requests and answers, however much work runs do.
    pub fn with_runs_on(mut self, runtime: tokio::runtime::Handle) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.runs = Some(runtime);
        }
        self
    }

    /// Ask API callers for tokens as `auth` says (before serving).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.auth = auth;
        }
        self
    }

    /// Whether `headers` carry a token of role `need` or more.
    pub(crate) async fn check_token(
        &self,
        headers: &axum::http::HeaderMap,
        need: crate::auth::Role,
    ) -> Result<Option<(String, crate::auth::Role)>, crate::error::ApiError> {
        use crate::auth::{Role, forbidden, hash, unauthorized};
        let auth = self.inner.auth;
        if auth.off {
            return Ok(None);
        }
        let store = self.inner.engine.store();
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = given else {
            if auth.open_without_tokens
                && !store.tokens().await?.iter().any(|t| t.revoked_at.is_none())
            {
                return Ok(None);
            }
            metrics::counter!("sluice_requests_refused_total", "reason" => "unauthorized")
                .increment(1);
            return Err(unauthorized(
                "this route needs a token: `Authorization: Bearer TOKEN` (made by `sluice tokens create NAME --role ROLE`)",
            ));
        };
        let refused = |why: &str| {
            metrics::counter!("sluice_requests_refused_total", "reason" => "unauthorized")
                .increment(1);
            Err(unauthorized(why.to_owned()))
        };
        match store.token_by_hash(&hash(token)).await? {
            None => refused("this token is not known"),
            Some(t) if t.revoked_at.is_some() => refused("this token was revoked"),
            Some(t)
                if t.expires_at
                    .is_some_and(|e| e <= sluice_store::now_micros()) =>
            {
                refused("this token expired; make a new one with `sluice tokens create`")
            }
            Some(t) => {
                let has = Role::parse(&t.role).unwrap_or(Role::Viewer);
                if has < need {
                    metrics::counter!("sluice_requests_refused_total", "reason" => "forbidden")
                        .increment(1);
                    return Err(forbidden(&t.name, has, need));
                }
                Ok(Some((t.name, has)))
            }
        }
    }

    /// Take at most `n` runs under way at once from requests (before
    /// serving).
    pub fn with_max_runs_in_flight(mut self, n: usize) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_in_flight = n.max(1);
        }
        self
    }

    /// Whether a request may start a run now: `503 overloaded` (with
    /// `Retry-After`) when as many runs as the server takes are under way.
    pub(crate) fn admit(&self) -> Result<(), crate::error::ApiError> {
        let n = self.inner.inflight.n.load(Ordering::SeqCst);
        if n >= self.inner.max_in_flight {
            metrics::counter!("sluice_requests_refused_total", "reason" => "overloaded")
                .increment(1);
            return Err(crate::error::ApiError::overloaded(n));
        }
        Ok(())
    }

    /// Use other timeouts for clients (before serving).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.timeouts = timeouts;
        }
        self
    }

    /// How long the server waits for clients.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// Runs under way in this process.
    pub fn in_flight(&self) -> usize {
        self.inner.inflight.n.load(Ordering::SeqCst)
    }

    /// The Prometheus text of the process's metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }
}

/// Wait for a run's task; a task that died (a bug: runs do not panic on
/// user input) is reported as lost, to be continued at the next start.
pub(crate) async fn joined(run_id: &str, task: RunTask) -> Result<RunResult, ApiError> {
    match task.await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "run_lost",
            format!("run `{run_id}` stopped unexpectedly; it continues at the next start"),
        )),
    }
}

/// A JSON answer of a value runs hold, written as its text without being
/// made a `serde_json` value first.
pub(crate) struct JsonVal(pub(crate) sluice_expr::Val);

impl axum::response::IntoResponse for JsonVal {
    fn into_response(self) -> axum::response::Response {
        let text = serde_json::to_vec(&sluice_expr::data::Json(&self.0)).unwrap_or_default();
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response()
    }
}

/// How long the server waits for a client (`sluice serve --header-timeout-secs`,
/// `--body-timeout-secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For a request's line and headers, from when the connection is
    /// ready for it (opened, or the answer before it sent): past it the
    /// connection is closed. An idle kept-alive connection is closed so.
    pub header: std::time::Duration,
    /// For a request's whole body, once its headers are read: past it the
    /// answer is `408 request_timeout`.
    pub body: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: std::time::Duration::from_secs(10),
            body: std::time::Duration::from_secs(60),
        }
    }
}

/// The body's bytes: at most `limit` (else `too_large`), within `timeout`
/// (else `408`).
pub(crate) async fn body_bytes(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
    too_large: impl FnOnce() -> ApiError,
) -> Result<axum::body::Bytes, ApiError> {
    body_chunks(body, limit, timeout, too_large)
        .await
        .map(Chunks::into_bytes)
}

/// A body's chunks as they came, at most `limit` bytes in all.
pub(crate) async fn body_chunks(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
    too_large: impl FnOnce() -> ApiError,
) -> Result<Chunks, ApiError> {
    match tokio::time::timeout(timeout, collect(body, limit)).await {
        Err(_) => Err(ApiError::body_timeout(timeout)),
        Ok(None) => Err(too_large()),
        Ok(Some(b)) => Ok(b),
    }
}

/// A body's chunks, as the connection gave them: not copied into one
/// buffer unless a reader needs the bytes together (a large JSON body is
/// parsed from them, each chunk freed once read).
#[derive(Default)]
pub(crate) struct Chunks {
    chunks: std::collections::VecDeque<axum::body::Bytes>,
    len: usize,
}

impl Chunks {
    /// How many bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether they are in one piece already.
    pub(crate) fn whole(&self) -> bool {
        self.chunks.len() <= 1
    }

    /// The bytes in one piece (copied together when they came in several).
    pub(crate) fn into_bytes(mut self) -> axum::body::Bytes {
        if self.whole() {
            return self.chunks.pop_front().unwrap_or_default();
        }
        let mut buf = Vec::with_capacity(self.len);
        for c in &self.chunks {
            buf.extend_from_slice(c);
        }
        buf.into()
    }
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.chunks.front_mut() {
            if front.is_empty() {
                self.chunks.pop_front();
                continue;
            }
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front[..n]);
            *front = front.slice(n..);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return Ok(n);
        }
        Ok(0)
    }
}

/// A body's chunks, at most `limit` bytes (`None`: more, or the body
/// broke off).
async fn collect(body: axum::body::Body, limit: usize) -> Option<Chunks> {
    use futures_util::StreamExt;
    let mut out = Chunks::default();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.ok()?;
        if out.len + chunk.len() > limit {
            return None;
        }
        out.len += chunk.len();
        out.chunks.push_back(chunk);
    }
    Some(out)
}

/// Microseconds since the epoch as an RFC 3339 time (UTC).
pub(crate) fn rfc3339(micros: i64) -> Value {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}
