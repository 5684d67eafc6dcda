//! Webhooks: `GET` or `POST /hooks/PATH` starts a run of the flow whose
//! `webhook` trigger has that path and method.
//!
//! `$trigger` is `{method, path, query, headers, body}` (header names in
//! lower case; headers that carry credentials are left out so that they
//! never reach the run log: `authorization`, `cookie`,
//! `proxy-authorization`, and any whose name says key, token, secret,
//! password, signature or session). The run's input is the
//! body (`{}` when there is none). A JSON body (no content type, or a JSON
//! one) must parse; a form (`application/x-www-form-urlencoded`) is an
//! object like the query; a `text/*` body is a string; anything else is
//! refused.
//!
//! Asynchronous hooks answer `202 {"runId"}` once the run is recorded;
//! synchronous ones wait for the run and answer `$last` (or the trigger's
//! `response.body` expression over the run's output) with the trigger's
//! status and headers. A failed run answers `500 {"code": "run_failed"}`
//! with its id and failing step in `details`.

use crate::error::ApiError;
use crate::server::Server;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sluice_action::triggers::HookMethod;
use sluice_engine::{RunRequest, RunResult};
use sluice_expr::Val;
use sluice_expr::data::{into_val, obj_val, str_val, to_json};
use sluice_expr::{Limits, MapScope};
use sluice_store::{RunStatus, Store};

/// Headers never copied into `$trigger`.
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Words that make a header name one that carries a credential (`x-api-key`,
/// `x-auth-token`, `x-hub-signature-256`, `x-session-id`).
const SECRET_WORDS: [&str; 7] = [
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "session",
];

/// Whether header `name` (lower case) carries a credential.
fn secret_header(name: &str) -> bool {
    SECRET_HEADERS.contains(&name)
        || name
            .split(['-', '_'])
            .any(|w| SECRET_WORDS.iter().any(|s| w == *s || w.ends_with(s)))
}

/// The query string as an object; a repeated name keeps every value, in an array.
pub(crate) fn query_object(raw: Option<&str>) -> Value {
    object_of(
        form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned())),
    )
}

/// Names and values as an object; a repeated name keeps every value, in
/// an array.
fn object_of(pairs: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        let v = Value::String(v);
        match m.get_mut(&k) {
            None => {
                m.insert(k, v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(first) => {
                let f = first.take();
                *first = Value::Array(vec![f, v]);
            }
        }
    }
    Value::Object(m)
}

/// A form body (`application/x-www-form-urlencoded`) as an object, as
/// [`query_object`] makes one; a name or value that is not UTF-8 once its
/// percent-escapes are decoded is refused rather than changed.
fn form_object(bytes: &[u8]) -> Result<Value, ApiError> {
    let decode = |part: &[u8]| {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&c| if c == b'+' { b' ' } else { c })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ApiError::bad_request("the form body is not UTF-8"))
    };
    let mut pairs = Vec::new();
    for pair in bytes.split(|&c| c == b'&').filter(|p| !p.is_empty()) {
        let mut kv = pair.splitn(2, |&c| c == b'=');
        let k = decode(kv.next().unwrap_or_default())?;
        let v = decode(kv.next().unwrap_or_default())?;
        pairs.push((k, v));
    }
    Ok(object_of(pairs))
}

/// The headers as `$trigger.headers`: without those that carry a
/// credential, nor those the webhook's `dropHeaders` names.
fn headers_object(h: &HeaderMap, drop: &[String]) -> Value {
    let mut m = Map::new();
    for (name, value) in h {
        let n = name.as_str();
        if secret_header(n) || drop.iter().any(|d| d.eq_ignore_ascii_case(n)) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            m.insert(n.to_owned(), Value::String(v.to_owned()));
        }
    }
    Value::Object(m)
}

/// Read a body of at most `limit` bytes and make it JSON: see the module
/// doc (`json_only`: parse it as JSON whatever its content type says).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    json_only: bool,
    timeout: std::time::Duration,
) -> Result<Value, ApiError> {
    let bytes = read_chunks(headers, body, limit, timeout).await?;
    parse_body(headers, &bytes.into_bytes(), json_only).map(|v| to_json(&v))
}

/// A body's chunks, at most `limit` bytes.
pub(crate) async fn read_chunks(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<crate::server::Chunks, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
        .with_details(json!({"limitBytes": limit}))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    crate::server::body_chunks(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
        timeout,
        too_large,
    )
    .await
}

/// A body made JSON by its content type (see the module doc).
pub(crate) fn parse_body(
    headers: &HeaderMap,
    bytes: &[u8],
    json_only: bool,
) -> Result<Val, ApiError> {
    if bytes.is_empty() {
        return Ok(Val::Null);
    }
    let mime = mime(headers, json_only);
    if is_json(&mime) {
        sluice_expr::data::parse(bytes).map_err(not_json)
    } else if mime == "application/x-www-form-urlencoded" {
        form_object(bytes).map(into_val)
    } else if mime.starts_with("text/") {
        String::from_utf8(bytes.to_vec())
            .map(Val::from)
            .map_err(|_| ApiError::bad_request("the text body is not UTF-8"))
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a webhook takes JSON or text bodies, not `{mime}`"),
        ))
    }
}

/// The body's media type, lower case (JSON when it says none, or when
/// `json_only`).
fn mime(headers: &HeaderMap, json_only: bool) -> String {
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !json_only)
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    ctype
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn is_json(mime: &str) -> bool {
    mime == "application/json" || mime.ends_with("+json")
}

fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "the body is not valid JSON: {} at line {}, column {}",
        e.to_string().split(" at line ").next().unwrap_or_default(),
        e.line(),
        e.column()
    ))
    .with_details(json!({"line": e.line(), "column": e.column()}))
}

/// A webhook's body made JSON as [`parse_body`] does: JSON that came in
/// several chunks is read from them as they are, each freed once read,
/// instead of being copied into one buffer first.
fn parse_chunks(headers: &HeaderMap, chunks: crate::server::Chunks) -> Result<Val, ApiError> {
    if chunks.whole() || chunks.len() == 0 || !is_json(&mime(headers, false)) {
        return parse_body(headers, &chunks.into_bytes(), false);
    }
    sluice_expr::data::parse_reader(chunks).map_err(not_json)
}

/// `/hooks/{*path}`.
pub(crate) async fn hook<S: Store>(
    State(server): State<Server<S>>,
    axum::Extension(mut caller): axum::Extension<crate::auth::Caller>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = path.trim_matches('/').to_owned();
    let set = server.flows();
    let m = match method {
        Method::POST => Some(HookMethod::Post),
        Method::GET => Some(HookMethod::Get),
        _ => None,
    };
    let hook = m.and_then(|m| set.hooks.get(&(m, path.clone())));
    let Some(hook) = hook.cloned() else {
        let other = [HookMethod::Post, HookMethod::Get]
            .into_iter()
            .find(|m| set.hooks.contains_key(&(*m, path.clone())));
        return Err(match other {
            Some(m) => ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("/hooks/{path} takes {}, not {method}", m.as_str()),
            ),
            None => ApiError::not_found(format!("no webhook at /hooks/{path}")),
        });
    };
    drop(set);
    if !hook.flow.enabled {
        return Err(ApiError::flow_disabled(&hook.flow.id));
    }
    let bytes = read_chunks(
        &headers,
        body,
        hook.options.max_body_bytes,
        server.timeouts().body,
    )
    .await?;
    let mut query = query_object(query.as_deref());
    let mut how = json!({"path": format!("/hooks/{path}")});
    let body = match &hook.options.auth {
        Some(auth) => {
            // The signature is over the bytes as they came, in one piece.
            let bytes = bytes.into_bytes();
            caller.user = crate::hook_auth::check(auth, &headers, &mut query, &bytes)?;
            how["auth"] = json!(auth.kind());
            parse_body(&headers, &bytes, false)?
        }
        None => parse_chunks(&headers, bytes)?,
    };
    let input = match &body {
        Val::Null => None,
        b => Some(b.clone()),
    };
    let trigger = obj_val([
        ("method", str_val(method.as_str())),
        ("path", str_val(&format!("/hooks/{path}"))),
        ("query", into_val(query)),
        (
            "headers",
            into_val(headers_object(&headers, &hook.options.drop_headers)),
        ),
        ("body", body),
    ]);
    // Only an answer expression reads `$trigger` after the run.
    let kept = hook.body.as_ref().map(|_| trigger.clone());
    let req = RunRequest {
        trigger,
        input,
        accountability: caller.accountability("webhook", how),
        event: None,
    };
    server.admit()?;
    let (run_id, task) = server
        .launch(hook.flow.clone(), req, !hook.options.is_async)
        .await?;
    if hook.options.is_async {
        return Ok((StatusCode::ACCEPTED, axum::Json(json!({"runId": run_id}))).into_response());
    }
    let result = crate::server::joined(&run_id, task).await?;
    answer(&hook, kept.as_ref(), result)
}

/// The answer of a synchronous webhook.
fn answer(
    hook: &crate::flows::Hook,
    trigger: Option<&Val>,
    r: RunResult,
) -> Result<Response, ApiError> {
    let run_header = HeaderValue::from_str(&r.run_id).ok();
    if r.status == RunStatus::Waiting {
        // Suspended for an event: the answer cannot wait for it.
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"runId": r.run_id, "status": "waiting"})),
        )
            .into_response());
    }
    if r.status != RunStatus::Succeeded {
        let failure = r.failure.as_ref();
        // The request's data did not fit: the caller's to fix (422).
        let data = failure.is_some_and(|f| f.blame == sluice_action::Blame::Data);
        let (code, status) = match r.status {
            RunStatus::Incident if data => ("run_incident", StatusCode::UNPROCESSABLE_ENTITY),
            RunStatus::Incident => ("run_incident", StatusCode::INTERNAL_SERVER_ERROR),
            RunStatus::Cancelled => ("run_cancelled", StatusCode::CONFLICT),
            _ if data => ("run_failed", StatusCode::UNPROCESSABLE_ENTITY),
            _ => ("run_failed", StatusCode::INTERNAL_SERVER_ERROR),
        };
        return Err(ApiError::new(
            status,
            code,
            failure
                .map(|f| f.message.clone())
                .unwrap_or_else(|| format!("the run ended {}", r.status.as_str())),
        )
        .with_details(json!({
            "runId": r.run_id,
            "status": r.status.as_str(),
            "step": failure.map(|f| f.step.clone()),
        })));
    }
    let body = match &hook.body {
        None => r.last,
        Some(p) => {
            let mut scope = MapScope::default();
            scope
                .0
                .insert("trigger".into(), trigger.cloned().unwrap_or_default());
            scope.0.insert("last".into(), r.last);
            let output = r.output.unwrap_or_default();
            p.eval_val(&output, &scope, &Limits::default())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "response_failed",
                        format!("the webhook's response.body failed: {e}"),
                    )
                    .with_details(json!({"runId": r.run_id}))
                })?
                .unwrap_or_default()
        }
    };
    let status = hook
        .options
        .response
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = (status, crate::server::JsonVal(body)).into_response();
    let h = resp.headers_mut();
    for (k, v) in &hook.options.response.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    if let Some(v) = run_header {
        h.insert("x-sluice-run", v);
    }
    Ok(resp)
}

#[cfg(test)]
mod secret_tests {
    use super::secret_header;

    #[test]
    fn headers_that_carry_credentials_are_known_by_name() {
        for n in [
            "authorization",
            "cookie",
            "x-api-key",
            "apikey",
            "x-auth-token",
            "x-hub-signature-256",
            "x-session-id",
            "x-client-secret",
            "stripe-signature",
        ] {
            assert!(secret_header(n), "{n}");
        }
        for n in [
            "content-type",
            "user-agent",
            "x-request-id",
            "accept",
            "x-forwarded-for",
            "x-keyword",
        ] {
            assert!(!secret_header(n), "{n}");
        }
    }
}
