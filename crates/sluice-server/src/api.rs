//! The HTTP API: flows, runs, health, metrics and the OpenAPI document.
//! Every error answer is an [`ApiError`].

use crate::auth::Caller;
use crate::error::ApiError;
use crate::hooks::{hook, query_object, read_body};
use crate::params::{limit_param, param, time_param};
use crate::server::{Server, rfc3339};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use sluice_engine::RunRequest;
use sluice_expr::data::{Json as ValJson, into_val, to_json};
use sluice_expr::to_val;
use sluice_model::Flow;
use sluice_store::{AuditEntry, RunDetail, RunFilter, RunStatus, RunSummary, StepRecord, Store};

/// The OpenAPI document, kept beside this file; a test checks that it lists
/// every route of [`router`] and nothing else.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// The largest body the API takes (flow files and run inputs): 8 MiB.
const API_BODY_LIMIT: u64 = 8 << 20;

type Json = axum::Json<Value>;

/// Every route.
pub(crate) fn router<S: Store>(server: Server<S>) -> Router {
    Router::new()
        .route("/hooks/{*path}", any(hook::<S>))
        .route("/events", post(crate::events::intake::<S>))
        .route("/api/health", get(health::<S>))
        .route("/api/openapi.json", get(openapi))
        .route("/api/flows", get(list_flows::<S>))
        .route("/api/flows/check", post(check_flow::<S>))
        .route(
            "/api/flows/{id}",
            get(get_flow::<S>).put(crate::edit::save::<S>),
        )
        .route("/api/flows/{id}/runs", post(start_run::<S>))
        .route("/api/reload", post(reload::<S>))
        .route("/api/runs", get(list_runs::<S>))
        .route("/api/runs/{id}", get(get_run::<S>))
        .route("/api/runs/{id}/retry", post(retry::<S>))
        .route("/api/runs/{id}/resume", post(resume::<S>))
        .route("/api/runs/{id}/cancel", post(cancel::<S>))
        .route("/api/audit", get(audit_log::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/me", get(crate::ui::me))
        .route("/api/notifications", get(crate::ui::notifications::<S>))
        .route("/api/notifications/{id}/read", post(crate::ui::read::<S>))
        .route("/api/stream", get(crate::ui::stream::<S>))
        .route("/", get(crate::ui::index))
        .route("/ui/app.js", get(crate::ui::script))
        .route("/ui/app.css", get(crate::ui::style))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            guard::<S>,
        ))
        .layer(axum::middleware::map_response(crate::scrub::answer))
        .with_state(server)
}

/// Every request passes here: an API route needs a token of its role
/// (see [`crate::auth`]).
async fn guard<S: Store>(
    State(s): State<Server<S>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = s.inner.auth;
    let mut caller = Caller::of(&req);
    if let Some(need) = crate::auth::needed(req.method(), req.uri().path(), auth.health_and_metrics)
    {
        match s.check_token(req.headers(), need).await {
            Ok(Some((name, role))) => {
                caller.user = Some(name);
                caller.role = Some(role);
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("nothing at {}", uri.path()))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn health<S: Store>(State(s): State<Server<S>>) -> Json {
    let store = s.engine().store();
    // Read from what the last renewal found: no store query per request.
    let leases = store.leases().map(|l| {
        json!({
            "leaseSecs": l.lease_micros as f64 / 1e6,
            "renewedAt": (l.renewed_at > 0).then(|| crate::server::rfc3339(l.renewed_at)),
            "held": l.held,
            "takenOver": l.taken_over,
            "processes": l.processes.iter().map(|p| json!({
                "id": p.id,
                "host": p.host,
                "pid": p.pid,
                "version": p.version,
                "startedAt": crate::server::rfc3339(p.started_at),
                "aliveUntil": crate::server::rfc3339(p.alive_until),
                "runsHeld": p.runs,
            })).collect::<Vec<_>>(),
        })
    });
    axum::Json(json!({
        "status": "ok",
        "flows": s.flows().flows.len(),
        "runsInFlight": s.in_flight(),
        "process": {
            "id": store.process_id(),
            "pid": std::process::id(),
            "sharedStore": store.shared(),
        },
        "leases": leases,
    }))
}

async fn metrics<S: Store>(State(s): State<Server<S>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics_text(),
    )
        .into_response()
}

fn flow_json(f: &Flow, file: Option<&std::path::Path>) -> Value {
    let mut trigger = f.trigger.options.clone();
    if let Value::Object(m) = &mut trigger {
        m.insert("type".into(), Value::String(f.trigger.kind.clone()));
    }
    let next = |n: sluice_model::Next| match n {
        sluice_model::Next::Step(i) => f.steps.get(i).map(|s| Value::String(s.key.clone())),
        sluice_model::Next::End => None,
    };
    let text = &f.source.text;
    let line = |at: usize| text.get(..at).map_or(0, |t| t.matches('\n').count()) + 1;
    json!({
        "id": f.id,
        "name": f.name,
        "description": f.description,
        "version": f.version,
        "enabled": f.enabled,
        "file": file.map(|p| p.display().to_string()),
        "trigger": trigger,
        "steps": f.steps.iter().map(|s| json!({
            "key": s.key,
            "type": s.kind,
            "next": next(s.on_success),
            "onFailure": if s.has_failure_path { next(s.on_failure) } else { None },
            "failurePath": s.has_failure_path,
            "line": line(s.span.start),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/flows`: every flow served, with its runs of the last day and
/// its last run.
async fn list_flows<S: Store>(State(s): State<Server<S>>) -> Result<Json, ApiError> {
    let set = s.flows();
    let store = s.engine().store();
    let day = sluice_store::now_micros() - 86_400_000_000;
    let stats = store.flow_stats(day).await?;
    let mut out = Vec::with_capacity(set.flows.len());
    for f in set.flows.values() {
        let mut v = flow_json(f, set.files.get(&f.id).map(|p| p.as_path()));
        let day = stats.iter().find(|st| st.flow_id == f.id);
        let last = store
            .list_runs(&RunFilter {
                flow_id: Some(f.id.clone()),
                limit: 1,
                ..RunFilter::default()
            })
            .await?;
        v["lastDay"] = json!({
            "runs": day.map_or(0, |d| d.runs),
            "failures": day.map_or(0, |d| d.failures),
        });
        v["lastRun"] = last.first().map_or(Value::Null, summary_json);
        out.push(v);
    }
    Ok(axum::Json(Value::Array(out)))
}

async fn get_flow<S: Store>(
    State(s): State<Server<S>>,
    Path(id): Path<String>,
) -> Result<Json, ApiError> {
    let set = s.flows();
    let f = set
        .flows
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no flow `{id}`")))?;
    let mut v = flow_json(f, set.files.get(&id).map(|p| p.as_path()));
    v["source"] = Value::String(without_passwords(&f.source.text));
    Ok(axum::Json(v))
}

/// A flow file's text with the password of every URL in it (`scheme://
/// user:PASSWORD@host`) shown as `***`, unless it is taken from the
/// environment (`${env:NAME}`): a flow file served by the API never hands
/// out a database's password.
fn without_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '/' | ','))
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@').map(|at| authority.split_at(at)) {
            Some((user, host)) if user.contains(':') && !user.contains("${") => {
                let name = user.split(':').next().unwrap_or_default();
                out.push_str(name);
                out.push_str(":***");
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `POST /api/flows/check`: the body is a flow file's text (YAML or JSON).
async fn check_flow<S: Store>(State(s): State<Server<S>>, body: Body) -> Result<Json, ApiError> {
    let text = crate::edit::flow_text(&s, body).await?;
    Ok(axum::Json(
        match sluice_model::load("request", &text, s.inner.registry.as_ref()) {
            Ok(f) => json!({"valid": true, "flow": f.id, "problems": []}),
            Err(d) => {
                let problems = crate::flows::LoadFailure::Invalid(d).to_json()["problems"].take();
                json!({"valid": false, "problems": problems})
            }
        },
    ))
}

async fn reload<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json, ApiError> {
    let done = s.reload();
    let details = match &done {
        Ok(n) => json!({"flows": n}),
        Err(failures) => json!({"refused": failures.len()}),
    };
    audit(&s, &caller, "flows.reload", None, details).await;
    match done {
        Ok(n) => Ok(axum::Json(json!({"flows": n}))),
        Err(failures) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flows",
            format!(
                "{} flow file(s) have problems; the flows served are unchanged",
                failures.len()
            ),
        )
        .with_details(json!({
            "files": failures.iter().map(crate::flows::LoadFailure::to_json).collect::<Vec<_>>()
        }))),
    }
}

/// Whether the query asks to wait for the run (`?wait=true`).
fn wants_wait(query: &Value) -> Result<bool, ApiError> {
    match param(query, "wait")? {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "`wait` is true or false, not `{other}`"
        ))),
    }
}

/// `POST /api/flows/{id}/runs`: start a run of a flow with a `manual`
/// trigger; the body is its input. Answers 202 with the run id, or with
/// `?wait=true` the run's end.
async fn start_run<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query = query_object(q.as_deref());
    let wait = wants_wait(&query)?;
    let flow = s
        .flows()
        .flows
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no flow `{id}`")))?;
    if !flow.enabled {
        return Err(ApiError::flow_disabled(&id));
    }
    if flow.trigger.kind != "manual" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_manual",
            format!(
                "flow `{id}` has a `{}` trigger; only flows with a `manual` trigger start from the API",
                flow.trigger.kind
            ),
        ));
    }
    let input = read_body(&headers, body, API_BODY_LIMIT, true, s.timeouts().body).await?;
    let form: sluice_action::manual::ManualTrigger =
        serde_json::from_value(flow.trigger.options.clone()).unwrap_or_default();
    let input = form.input(input).map_err(|problems| {
        ApiError::bad_request(format!(
            "the input does not fit flow `{id}`'s fields: {}",
            problems
                .iter()
                .map(|p| format!("{} {}", p.field, p.message).trim().to_owned())
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .with_details(json!({
            "fields": problems.iter().map(|p| json!({"field": p.field, "message": p.message})).collect::<Vec<_>>()
        }))
    })?;
    let req = RunRequest {
        trigger: into_val(json!({"type": "manual", "body": input})),
        input: (!input.is_null()).then(|| to_val(&input)),
        accountability: caller.accountability("manual", json!({})),
        event: None,
    };
    s.admit()?;
    let (run_id, task) = s.launch(flow, req, wait).await?;
    audit(&s, &caller, "run.start", Some(&run_id), json!({"flow": id})).await;
    finish(run_id, task, wait).await
}

/// Answer 202 with the run id, or wait for the run and answer its end.
async fn finish(
    run_id: String,
    task: crate::server::RunTask,
    wait: bool,
) -> Result<Response, ApiError> {
    if !wait {
        return Ok((StatusCode::ACCEPTED, axum::Json(json!({"runId": run_id}))).into_response());
    }
    let r = crate::server::joined(&run_id, task).await?;
    Ok(axum::Json(json!({
        "runId": r.run_id,
        "status": r.status.as_str(),
        "output": r.output.as_ref().map(ValJson),
        "error": r.failure.as_ref().map(|f| f.message.clone()),
        "step": r.failure.as_ref().map(|f| f.step.clone()),
    }))
    .into_response())
}

fn summary_json(r: &RunSummary) -> Value {
    json!({
        "id": r.id,
        "flowId": r.flow_id,
        "status": r.status.as_str(),
        "startedAt": rfc3339(r.started_at),
        "endedAt": r.ended_at.map(rfc3339),
        "steps": r.steps,
        "error": r.error,
        "errorStep": r.error_step,
    })
}

/// A listing's cursor: where the next page starts (`STARTED.ID` of the
/// last run of the page before; opaque to clients).
fn cursor(r: &RunSummary) -> String {
    format!("{}.{}", r.started_at, r.id)
}

fn after_param(q: &Value) -> Result<Option<(i64, String)>, ApiError> {
    let Some(text) = param(q, "after")? else {
        return Ok(None);
    };
    text.split_once('.')
        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`after` is the `Sluice-Next-After` header of an earlier answer, not `{text}`"
            ))
        })
}

/// `GET /api/runs?flow=&status=&since=&until=&limit=&after=` and a search
/// by data: `search=` (a jq predicate) or `field=&value=` (see
/// [`crate::search`]). When more runs may follow, the header
/// `Sluice-Next-After` is the `after` of the next page.
async fn list_runs<S: Store>(
    State(s): State<Server<S>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_object(q.as_deref());
    let status = match param(&q, "status")? {
        None => None,
        Some(w) => Some(RunStatus::parse(w).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{w}` (one of {})",
                RunStatus::ALL.map(RunStatus::as_str).join(", ")
            ))
        })?),
    };
    let limit = limit_param(&q)?;
    let filter = RunFilter {
        flow_id: param(&q, "flow")?.map(str::to_owned),
        status,
        started_after: time_param(&q, "since")?,
        started_before: time_param(&q, "until")?,
        after: after_param(&q)?,
        limit,
    };
    let search = crate::search::Search::of(
        param(&q, "search")?,
        param(&q, "field")?,
        param(&q, "value")?,
    )?;
    let store = s.engine().store();
    let (runs, next, read) = match search {
        None => {
            let runs = store.list_runs(&filter).await?;
            let next = (limit != 0 && runs.len() == limit as usize)
                .then(|| runs.last().map(cursor))
                .flatten();
            (runs, next, None)
        }
        Some(search) => {
            let found = crate::search::find(store.as_ref(), filter, search).await?;
            (
                found.runs,
                found.read_to.as_ref().map(cursor),
                Some(found.read),
            )
        }
    };
    let mut resp =
        axum::Json(Value::Array(runs.iter().map(summary_json).collect())).into_response();
    let headers = resp.headers_mut();
    if let Some(v) = next.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        headers.insert("sluice-next-after", v);
    }
    if let Some(n) = read {
        headers.insert("sluice-runs-read", header::HeaderValue::from(n));
    }
    Ok(resp)
}

fn step_json(r: &StepRecord) -> Value {
    json!({
        "seq": r.seq,
        "key": r.step_key,
        "type": r.kind,
        "ok": r.ok,
        "options": ValJson(&r.options),
        "input": ValJson(&r.input),
        "result": r.result.as_ref().map(ValJson),
        "output": r.output.as_ref().map(ValJson),
        "error": r.error,
        "blame": r.blame,
        "logs": r.logs,
        "startedAt": rfc3339(r.started_at),
        "durationMs": (r.ended_at - r.started_at) as f64 / 1000.0,
    })
}

fn detail_json(d: &RunDetail) -> Value {
    let mut v = summary_json(&d.summary);
    v["trigger"] = to_json(&d.trigger);
    v["input"] = to_json(&d.input);
    v["state"] = to_json(&d.state);
    v["output"] = d.output.as_ref().map(to_json).unwrap_or(Value::Null);
    v["nextStep"] = json!(d.next_step);
    v["flowVersion"] = json!(d.flow_version);
    v["accountability"] = d.accountability.clone();
    v["parent"] = match &d.parent {
        Some((run, item)) => json!({"runId": run, "item": item}),
        None => Value::Null,
    };
    v["stepLog"] = Value::Array(d.steps.iter().map(step_json).collect());
    v
}

async fn load_run<S: Store>(s: &Server<S>, id: &str) -> Result<RunDetail, ApiError> {
    s.engine()
        .store()
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))
}

async fn get_run<S: Store>(
    State(s): State<Server<S>>,
    Path(id): Path<String>,
) -> Result<Json, ApiError> {
    let d = load_run(&s, &id).await?;
    let mut v = detail_json(&d);
    v["wait"] = match d.summary.status {
        RunStatus::Waiting => s
            .engine()
            .store()
            .wait_of(&id)
            .await?
            .map_or(Value::Null, |w| {
                json!({
                    "step": w.step_key,
                    "kind": w.kind.as_str(),
                    "since": rfc3339(w.since),
                    "wakeAt": w.wake_at.map(rfc3339),
                    "eventType": w.event_type,
                    "source": w.source,
                    "correlation": w.correlation,
                })
            }),
        _ => Value::Null,
    };
    let actions = s.engine().store().audit_log(Some(&id), 1000).await?;
    v["actions"] = actions.iter().rev().map(audit_json).collect();
    Ok(axum::Json(v))
}

/// `GET /api/audit`: what people did, newest first (admins only).
async fn audit_log<S: Store>(
    State(s): State<Server<S>>,
    RawQuery(q): RawQuery,
) -> Result<Json, ApiError> {
    let q = query_object(q.as_deref());
    let limit = limit_param(&q)?;
    let target = param(&q, "target")?;
    let entries = s.engine().store().audit_log(target, limit).await?;
    Ok(axum::Json(entries.iter().map(audit_json).collect()))
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "at": rfc3339(e.at),
        "user": e.user,
        "role": e.role,
        "ip": e.ip,
        "action": e.action,
        "target": e.target,
        "details": e.details,
    })
}

/// Keep `action` in the audit; an audit that cannot be written is said on
/// standard error (the action itself is done).
async fn audit<S: Store>(
    s: &Server<S>,
    caller: &Caller,
    action: &str,
    target: Option<&str>,
    details: Value,
) {
    s.audit(caller, action, target, details).await;
}

/// `POST /api/runs/{id}/retry`: a new run of the same flow with the same
/// trigger and input (the flow as served now, or the run's own version if
/// the flow is no longer served).
async fn retry<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let query = query_object(q.as_deref());
    let wait = wants_wait(&query)?;
    let d = load_run(&s, &id).await?;
    if matches!(d.summary.status, RunStatus::Running | RunStatus::Waiting) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "run `{id}` is still {}; cancel it first or wait for its end",
                d.summary.status.as_str()
            ),
        ));
    }
    let recorded = match param(&query, "flow")? {
        None | Some("current") => false,
        Some("recorded") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`flow` is `current` (the flow as served now, the default) or `recorded` (as the run ran it), not `{other}`"
            )));
        }
    };
    let current = (!recorded)
        .then(|| s.flows().flows.get(&d.summary.flow_id).cloned())
        .flatten();
    let flow = match current {
        Some(f) => f,
        None => s
            .flow_of(&d.summary.flow_id, d.flow_version.as_deref())
            .await
            .map_err(|m| ApiError::new(StatusCode::CONFLICT, "flow_gone", m))?,
    };
    let req = RunRequest {
        trigger: d.trigger.clone(),
        input: Some(d.input.clone()),
        accountability: caller.accountability("retry", json!({"retryOf": id})),
        event: sluice_model::EVENT_TRIGGERS
            .contains(&flow.trigger.kind.as_str())
            .then(|| to_json(&d.trigger)),
    };
    s.admit()?;
    let version = flow.version.clone();
    let (run_id, task) = s.launch(flow, req, wait).await?;
    audit(
        &s,
        &caller,
        "run.retry",
        Some(&id),
        json!({"runId": run_id, "flowVersion": version}),
    )
    .await;
    finish(run_id, task, wait).await
}

/// `POST /api/runs/{id}/resume`: continue a run stopped at an incident; the
/// body, if any, is a JSON Merge Patch for its state data.
async fn resume<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let wait = wants_wait(&query_object(q.as_deref()))?;
    let patch = read_body(&headers, body, API_BODY_LIMIT, true, s.timeouts().body).await?;
    let d = load_run(&s, &id).await?;
    if d.summary.status != RunStatus::Incident {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "run `{id}` is {}, not stopped at an incident; only an incident can be resumed",
                d.summary.status.as_str()
            ),
        ));
    }
    let flow = s
        .flow_of(&d.summary.flow_id, d.flow_version.as_deref())
        .await
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "flow_gone", m))?;
    let details = json!({"patched": !patch.is_null()});
    audit(&s, &caller, "run.resume", Some(&id), details).await;
    let engine = s.engine().clone();
    let f = flow.clone();
    let run = id.clone();
    let task = s.track(flow, async move {
        let patch = (!patch.is_null()).then_some(patch);
        engine.resume(&f, &run, patch.as_ref()).await
    });
    finish(id, task, wait).await
}

async fn cancel<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json, ApiError> {
    s.engine().cancel(&id).await?;
    audit(&s, &caller, "run.cancel", Some(&id), json!({})).await;
    Ok(axum::Json(json!({"runId": id, "status": "cancelled"})))
}

#[cfg(test)]
mod tests {
    use super::without_passwords;

    #[test]
    fn passwords_in_urls_are_not_served() {
        let text = "connections:\n  a: {url: \"postgres://app:s3cret@db:5432/x\"}\n  b: {url: \"postgres://app:${env:PW}@db/x\"}\n  c: {url: \"https://api.example.com/v1\"}\n";
        let got = without_passwords(text);
        assert!(got.contains("postgres://app:***@db:5432/x"), "{got}");
        assert!(!got.contains("s3cret"), "{got}");
        assert!(got.contains("postgres://app:${env:PW}@db/x"), "{got}");
        assert!(got.contains("https://api.example.com/v1"), "{got}");
    }
}
