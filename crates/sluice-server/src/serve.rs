//! Serving: the HTTP routes, the tasks of the schedules and polls of the
//! flows served (started again when the flows are read again), and the
//! graceful stop.

use crate::api;
use crate::flows::{FlowSet, LoadFailure};
use crate::server::Server;
use crate::{poll, schedule};
use sluice_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl<S: Store> Server<S> {
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
}
