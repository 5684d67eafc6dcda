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
mod error;
mod events;
mod flows;
mod hooks;
mod poll;
mod schedule;

pub use error::ApiError;
pub use flows::{FlowSet, Hook, LoadFailure, Polled, Scheduled};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use sluice_action::Registry;
use sluice_engine::{Engine, EngineError, RunRequest, RunResult};
use sluice_model::Flow;
use sluice_store::{RunFilter, RunStatus, RunUpdate, Store, StoreError};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// A run driven on a task of its own: its result, when it ends or is
/// suspended.
pub type RunTask = oneshot::Receiver<Result<RunResult, EngineError>>;

/// Runs under way in this process, to wait for at shutdown.
#[derive(Default)]
struct Inflight {
    n: AtomicUsize,
    idle: Notify,
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
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Server<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S: Store> {
    engine: Engine<S>,
    registry: Arc<Registry>,
    flows: RwLock<Arc<FlowSet>>,
    dir: PathBuf,
    inflight: Arc<Inflight>,
    schedules: Mutex<Vec<JoinHandle<()>>>,
    metrics: PrometheusHandle,
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
                engine,
                registry,
                flows: RwLock::new(flows),
                dir,
                inflight: Arc::default(),
                schedules: Mutex::new(Vec::new()),
                metrics: prometheus(),
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

    /// The HTTP routes: webhooks, the API and metrics.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Read the flows folder again and serve what it holds now. Runs under
    /// way keep the flow they started with; schedules restart. When a file
    /// is invalid nothing changes and every problem is returned.
    pub fn reload(&self) -> Result<usize, Vec<LoadFailure>> {
        let set = Arc::new(FlowSet::load(&self.inner.dir, &self.inner.registry)?);
        let n = set.flows.len();
        self.inner.engine.set_flows(set.clone());
        match self.inner.flows.write() {
            Ok(mut f) => *f = set,
            Err(p) => *p.into_inner() = set,
        }
        self.start_schedules();
        Ok(n)
    }

    /// Start (or restart) the schedules and polls of the flows now served.
    pub fn start_schedules(&self) {
        let set = self.flows();
        let mut handles = match self.inner.schedules.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        for h in handles.drain(..) {
            h.abort();
        }
        for s in &set.schedules {
            handles.push(tokio::spawn(schedule::run(self.clone(), s.clone())));
        }
        for p in &set.polls {
            handles.push(tokio::spawn(poll::run(self.clone(), p.clone())));
        }
    }

    /// Record a new run and drive it on a task of its own. Returns once the
    /// run is durable, with its id and the task that ends with its result.
    /// A caller that `waits` for the result and tells nobody of the run
    /// before it ends (a synchronous webhook) lets the run be recorded with
    /// its first write instead (see [`sluice_engine::Engine::begin`]).
    ///
    /// Recording and driving both happen on the task, so a caller that is
    /// dropped half-way (a client hanging up) cannot leave a recorded run
    /// that nobody drives.
    pub async fn launch(
        &self,
        flow: Arc<Flow>,
        req: RunRequest,
        waits: bool,
    ) -> Result<(String, RunTask), EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let engine = self.inner.engine.clone();
        let f = flow.clone();
        let task = self.track(flow, async move {
            let started = if waits {
                engine.begin(&f, req).await
            } else {
                engine.start(&f, req).await
            };
            let started = match started {
                Ok(s) => s,
                Err(e) => {
                    let message = e.to_string();
                    let _ = tx.send(Err(e));
                    return Err(EngineError::NotStarted(message));
                }
            };
            metrics::counter!("sluice_runs_started_total", "flow" => f.id.clone()).increment(1);
            let _ = tx.send(Ok(started.run_id().to_owned()));
            engine.finish(&f, started).await
        });
        match rx.await {
            Ok(Ok(id)) => Ok((id, task)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::NotStarted(
                "the run's task ended before it was recorded".to_owned(),
            )),
        }
    }

    /// Drive a run that is recorded (by [`Engine::prepare`] and a store
    /// write of the caller's) on a task of its own.
    pub fn drive(&self, flow: Arc<Flow>, started: sluice_engine::Started) -> RunTask {
        metrics::counter!("sluice_runs_started_total", "flow" => flow.id.clone()).increment(1);
        let engine = self.inner.engine.clone();
        let f = flow.clone();
        self.track(flow, async move { engine.finish(&f, started).await })
    }

    /// Drive `run` on a task of its own, counted as under way. When it is
    /// suspended until a time (a sleep, a backoff, an event wait's
    /// timeout), a task of its own wakes it then.
    fn track<F>(&self, flow: Arc<Flow>, run: F) -> RunTask
    where
        F: Future<Output = Result<RunResult, EngineError>> + Send + 'static,
    {
        let guard = InflightGuard::new(&self.inner.inflight);
        let (tx, rx) = oneshot::channel();
        let server = self.clone();
        tokio::spawn(async move {
            let r = run.await;
            let status = match &r {
                // Suspended, or moved on by another caller: not an end.
                Ok(r) if matches!(r.status, RunStatus::Waiting | RunStatus::Running) => None,
                Ok(r) => Some(r.status.as_str()),
                // Not recorded: the caller was told.
                Err(EngineError::NotStarted(_)) => Some("not_started"),
                Err(e) => {
                    eprintln!("sluice: a run of flow `{}` stopped: {e}", flow.id);
                    Some("error")
                }
            };
            if let Some(status) = status {
                metrics::counter!("sluice_runs_finished_total", "flow" => flow.id.clone(), "status" => status)
                    .increment(1);
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
        });
        rx
    }

    /// Wake a suspended run when its wait is due (unless an event or
    /// another process wakes it first).
    fn follow(&self, flow: Arc<Flow>, wait: sluice_store::Wait) {
        let engine = self.inner.engine.clone();
        let f = flow.clone();
        drop(self.track(flow, async move { engine.await_wait(&f, wait).await }));
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
    /// crash, `kill -9`), oldest first, each on a task of its own, from its
    /// last committed step. Call it once at start, before serving.
    pub async fn recover(&self) -> Result<Recovered, StoreError> {
        let store = self.inner.engine.store().clone();
        let mut running = store
            .list_runs(&RunFilter {
                status: Some(RunStatus::Running),
                ..Default::default()
            })
            .await?;
        running.reverse();
        let mut done = Recovered::default();
        // Suspended runs with a time wake then; event waits with no timeout
        // need nothing until their event comes.
        for w in store.list_waits(None).await? {
            if w.wake_at.is_none() {
                continue;
            }
            let Some(flow) = self.flow_of_run(&w.run_id).await? else {
                continue;
            };
            match flow {
                Ok(flow) => {
                    self.follow(flow, w);
                    done.waiting += 1;
                }
                Err(message) => {
                    eprintln!("sluice: run `{}` stays waiting: {message}", w.run_id);
                }
            }
        }
        for r in running {
            let Some(flow) = self.flow_of_run(&r.id).await? else {
                continue;
            };
            match flow {
                Ok(flow) => {
                    let engine = self.inner.engine.clone();
                    let id = r.id.clone();
                    let f = flow.clone();
                    drop(self.track(flow, async move { engine.recover(&f, &id).await }));
                    done.resumed += 1;
                }
                Err(message) => {
                    // Only here is the run's own record needed.
                    let Some(detail) = store.get_run(&r.id).await? else {
                        continue;
                    };
                    store
                        .update_run(
                            &r.id,
                            &RunUpdate::ended(
                                detail.state,
                                None,
                                Some(format!("cannot continue after a restart: {message}")),
                                detail.next_step,
                            ),
                        )
                        .await?;
                    done.failed += 1;
                }
            }
        }
        Ok(done)
    }

    /// Serve on `listener` until `shutdown` completes; then stop taking
    /// requests, stop the schedules, and wait up to `grace` for the runs
    /// under way (a run still going then is continued at the next start).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let app = self.router();
        let engine = self.inner.engine.clone();
        let shutdown = async move {
            shutdown.await;
            // Sleeping runs stop waiting (their waits stay in the store, for
            // the next start), so no request waits for them.
            engine.stop_waiting();
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Ok(mut h) = self.inner.schedules.lock() {
            for h in h.drain(..) {
                h.abort();
            }
        }
        let wait = async {
            loop {
                let idle = self.inner.inflight.idle.notified();
                if self.inner.inflight.n.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        Ok(())
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

/// Microseconds since the epoch as an RFC 3339 time (UTC).
pub(crate) fn rfc3339(micros: i64) -> Value {
    jiff::Timestamp::from_microsecond(micros)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}
