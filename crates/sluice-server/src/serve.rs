//! Serving: the HTTP routes, the tasks of the schedules and polls of the
//! flows served (started again when the flows are read again), and the
//! graceful stop.

use crate::api;
use crate::flows::{FlowSet, LoadFailure};
use crate::server::Server;
use crate::server::Timeouts;
use crate::{poll, schedule};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
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
    /// requests (those under way are answered), stop the schedules, and
    /// wait up to `grace` for the runs under way (a run still going then is
    /// continued at the next start). Clients are held to the server's
    /// [`Timeouts`](crate::Timeouts).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let app = self.router();
        let timeouts = self.inner.timeouts;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        // Each request knows the address it came from.
                        let app = app.clone();
                        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                            tower::ServiceExt::oneshot(app.clone(), req)
                        });
                        connections.spawn(connection(stream, service, timeouts, stopping.clone()));
                    }
                    // Out of file descriptors and the like: try again soon.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Sleeping runs stop waiting (their waits stay in the store, for the
        // next start), so no request waits for them.
        self.inner.engine.stop_waiting();
        stop.send_replace(true);
        while connections.join_next().await.is_some() {}
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

/// The most a request's line and headers may weigh; past it, and past 100
/// headers (hyper's bound), the answer is `431` and the connection closes.
pub(crate) const MAX_HEADER_BYTES: usize = 64 << 10;

/// Serve one connection until it closes: each request's line and headers
/// must arrive within `timeouts.header` of the connection being ready for
/// them (so an idle kept-alive connection closes then too); once
/// `stopping` is set the request under way is answered and the connection
/// closed.
async fn connection<F>(
    stream: tokio::net::TcpStream,
    service: F,
    timeouts: Timeouts,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    F: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    F::Future: Send + 'static,
{
    let io = TokioIo::new(stream);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopping.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
