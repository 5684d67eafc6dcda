//! The web UI: one page and its script and style, compiled into the binary
//! and served at `/` (no build step, nothing fetched from elsewhere), and
//! the two routes only it needs: `/api/me` (who the token is, so that the
//! UI offers only what its role may do) and `/api/stream` (server-sent
//! events as this process's runs start, suspend and end).
//!
//! The page holds no data: everything it shows it reads from the API with
//! the token the person signed in with, so the API's roles guard the UI.

use crate::auth::Caller;
use crate::server::{RunChange, Server};
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_store::Store;
use std::convert::Infallible;
use std::time::Duration;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// What the UI's files may do: nothing but load from this server.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn file(kind: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        text,
    )
        .into_response()
}

/// `GET /`: the page.
pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/app.js`.
pub(crate) async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/app.css`.
pub(crate) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}

/// `GET /api/me`: the token's name and role; without tokens (`--no-auth`,
/// or a store that has none yet) every caller may do everything.
pub(crate) async fn me(Extension(caller): Extension<Caller>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "user": caller.user,
        "role": caller.role.map_or("admin", |r| r.as_str()),
        "signedIn": caller.role.is_some(),
    }))
}

/// `GET /api/stream`: one `run` event (`{"runId", "flowId", "status"}`)
/// each time a run this process drives starts, suspends or ends; a
/// `lagged` event when the reader fell behind and missed some (read the
/// list again). Runs other processes drive on a shared store are not
/// announced here.
pub(crate) async fn stream<S: Store>(State(s): State<Server<S>>) -> Response {
    let rx = s.inner.changes.subscribe();
    // The stream ends when the server stops (else a stopping server would
    // wait for its readers, which never leave).
    let stop = s.engine().stopping();
    let events = futures_util::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        if *stop.borrow() {
            return None;
        }
        let got = tokio::select! {
            got = rx.recv() => got,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let event = match got {
            Ok(c) => change_event(&c),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), (rx, stop)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn change_event(c: &RunChange) -> Event {
    Event::default()
        .event("run")
        .data(json!({"runId": c.run_id, "flowId": c.flow_id, "status": c.status}).to_string())
}

/// The reader a caller is: a token's user sees what is sent to them and
/// to their role or those below it; on a server without tokens everyone
/// sees every notification.
fn reader_of(caller: &Caller) -> (String, Option<Vec<&'static str>>) {
    use crate::auth::Role;
    let roles = caller.role.map(|r| {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .filter(|x| *x <= r)
            .map(Role::as_str)
            .collect()
    });
    (caller.user.clone().unwrap_or_default(), roles)
}

/// `GET /api/notifications?unread=&limit=`: the caller's notifications,
/// newest first.
pub(crate) async fn notifications<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let q = crate::hooks::query_object(q.as_deref());
    let limit = crate::params::limit_param(&q)?.clamp(1, 1000);
    let unread = match crate::params::param(&q, "unread")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(crate::error::ApiError::bad_request(format!(
                "`unread` is true or false, not `{other}`"
            )));
        }
    };
    let (name, roles) = reader_of(&caller);
    let reader = sluice_store::Reader {
        name: &name,
        roles: roles.as_deref(),
    };
    let (shown, unread_count) = s
        .engine()
        .store()
        .notifications(reader, limit, unread)
        .await?;
    let items: Vec<_> = shown
        .into_iter()
        .map(|(n, read)| {
            json!({
                "id": n.id,
                "at": crate::server::rfc3339(n.at),
                "user": n.user,
                "role": n.role,
                "subject": n.subject,
                "message": n.message,
                "runId": n.run_id,
                "step": n.step_key,
                "read": read,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({"unread": unread_count, "notifications": items}),
    ))
}

/// `POST /api/notifications/{id}/read`: the caller has read it.
pub(crate) async fn read<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, crate::error::ApiError> {
    let (name, _) = reader_of(&caller);
    if !s.engine().store().mark_read(&id, &name).await? {
        return Err(crate::error::ApiError::not_found(format!(
            "no notification `{id}`"
        )));
    }
    Ok(axum::Json(json!({"id": id, "read": true})))
}
