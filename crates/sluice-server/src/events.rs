//! CloudEvents intake: `POST /events`, in the CloudEvents HTTP binding.
//!
//! - Structured mode: `Content-Type: application/cloudevents+json`, the body
//!   is the whole event.
//! - Binary mode: any other content type; the context attributes are the
//!   `ce-*` headers (percent-decoded), the body is the event's `data`
//!   (JSON for a JSON content type, a string for text and XML, otherwise
//!   `data_base64`), and the content type is its `datacontenttype`.
//!
//! One event starts a run of every flow whose `cloudevent` trigger it
//! matches (by `eventType` and `source`), and wakes every run waiting at a
//! `wait` step that it matches (type, source and correlation attributes).
//! The answer is `202 {id, started: [{flow, runId}], resumed: [{flow,
//! runId}], refused}`; an event that matches nothing is refused with `422
//! no_match` so that its sender knows nobody took it.
//!
//! An event is named by its `source` and `id`: one taken before (a sender's
//! retry) is answered `200` with the first answer and `duplicate: true`, and
//! starts no run again; the event and the runs it starts are recorded in one
//! store transaction, so this holds across crashes and processes sharing the
//! store.

use crate::error::ApiError;
use crate::server::Server;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sluice_action::core_ops::{
    CloudEventTrigger, check_cloudevent, decode_cloudevent_data, event_matches, mime_of,
};
use sluice_engine::{EngineError, RunRequest};
use sluice_model::Flow;
use sluice_store::{Store, Wait, now_micros};
use std::sync::Arc;

/// The largest event taken.
const EVENT_LIMIT: usize = 1 << 20;

/// `POST /events`.
pub(crate) async fn intake<S: Store>(
    State(server): State<Server<S>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = crate::server::body_bytes(body, EVENT_LIMIT, server.timeouts().body, || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("an event is at most {EVENT_LIMIT} bytes"),
        )
    })
    .await?;
    let event = read_event(&headers, &bytes)?;
    // Taken on a task of its own: a sender that hangs up half-way cannot
    // leave recorded runs or claimed waits that nobody drives.
    tokio::spawn(take(server, event, caller))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "event_lost",
                "the event's task stopped unexpectedly; send the event again",
            )
        })?
}

/// The event of a request, checked against the spec, its `data_base64`
/// decoded.
pub(crate) fn read_event(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let mut event = parse(headers, bytes)?;
    check_cloudevent(&event).map_err(ApiError::bad_request)?;
    decode_cloudevent_data(&mut event).map_err(ApiError::bad_request)?;
    Ok(event)
}

/// Start the runs an event starts and wake the runs waiting for it.
async fn take<S: Store>(
    server: Server<S>,
    event: Value,
    caller: crate::auth::Caller,
) -> Result<Response, ApiError> {
    let id = event["id"].as_str().unwrap_or_default();
    let source = event["source"].as_str().unwrap_or_default();
    let event_type = event["type"].as_str().unwrap_or_default();
    let engine = server.engine();
    let store = engine.store();
    let mut refused = Vec::new();

    // A retry of an event accepted before starts nothing again; it wakes
    // only runs that were waiting when the event was first taken (a crash
    // may have come between taking it and waking them).
    if let Some(seen) = store.seen_event(source, id).await? {
        let waiting = waiting_for(&server, &event, Some(seen.received_at), &mut Vec::new()).await?;
        return Ok(duplicate(
            seen.answer,
            wake(&server, &event, waiting).await?,
        ));
    }

    // Flows that this event starts (none when the server takes no more).
    server.admit()?;
    let received_at = now_micros();
    let mut news = Vec::new();
    let mut runs = Vec::new();
    let mut started = Vec::new();
    let set = server.flows();
    for flow in set.flows.values() {
        if flow.trigger.kind != "cloudevent"
            || CloudEventTrigger::mismatch(&flow.trigger.options, &event).is_some()
        {
            continue;
        }
        if !flow.enabled {
            refused.push(
                json!({"flow": flow.id, "message": "the flow is disabled (`enabled: false`)"}),
            );
            continue;
        }
        let req = RunRequest {
            trigger: sluice_expr::to_val(&event),
            input: None,
            accountability: caller
                .accountability("cloudevent", json!({"source": source, "id": id})),
            event: Some(event.clone()),
        };
        match engine.prepare(flow, req).await {
            Ok((new, s)) => {
                started.push(json!({"flow": flow.id, "runId": new.id}));
                news.push(new);
                runs.push((flow.clone(), s));
            }
            Err(EngineError::Event(m)) => refused.push(json!({"flow": flow.id, "message": m})),
            Err(e) => return Err(e.into()),
        }
    }
    drop(set);
    let waiting = waiting_for(&server, &event, None, &mut refused).await?;
    if started.is_empty() && waiting.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_match",
            format!(
                "no flow's trigger and no waiting run takes an event of type `{event_type}` from `{source}`"
            ),
        )
        .with_details(json!({"id": id, "type": event_type, "source": source, "refused": refused})));
    }

    // Taken: the event and the runs it starts are recorded together, once.
    let answer = json!({"id": id, "started": started, "refused": refused});
    if !store
        .accept_event(source, id, received_at, &answer, &news)
        .await?
    {
        // Another delivery of the same event was taken first, just now.
        let seen = store.seen_event(source, id).await?;
        return Ok(duplicate(
            seen.map(|s| s.answer).unwrap_or(answer),
            Vec::new(),
        ));
    }
    for (flow, s) in runs {
        drop(server.drive(flow, s));
    }
    let mut answer = answer;
    answer["resumed"] = Value::Array(wake(&server, &event, waiting).await?);
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// The answer to a retry of an event taken before: `200` with what the
/// first delivery started, marked as a duplicate, and the runs it woke now.
fn duplicate(mut answer: Value, resumed: Vec<Value>) -> Response {
    answer["duplicate"] = Value::Bool(true);
    answer["resumed"] = Value::Array(resumed);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

/// Runs waiting for `event` (that began waiting before `before`, if given),
/// with the flow each runs; runs whose flow cannot be had go to `refused`.
async fn waiting_for<S: Store>(
    server: &Server<S>,
    event: &Value,
    before: Option<i64>,
    refused: &mut Vec<Value>,
) -> Result<Vec<(Wait, Arc<Flow>)>, ApiError> {
    let store = server.engine().store();
    let mut waiting = Vec::new();
    for w in store.list_waits(event["type"].as_str()).await? {
        if before.is_some_and(|t| w.since >= t)
            || !event_matches(
                event,
                w.event_type.as_deref(),
                w.source.as_deref(),
                &w.correlation,
            )
        {
            continue;
        }
        match server.flow_of_run(&w.run_id).await? {
            None => {}
            Some(Ok(flow)) => waiting.push((w, flow)),
            Some(Err(m)) => {
                refused.push(json!({"flow": w.flow_id, "runId": w.run_id, "message": m}))
            }
        }
    }
    Ok(waiting)
}

/// Wake the `waiting` runs with `event`: each is claimed once (across
/// processes too); the ones this call claimed, as `{flow, runId}`.
async fn wake<S: Store>(
    server: &Server<S>,
    event: &Value,
    waiting: Vec<(Wait, Arc<Flow>)>,
) -> Result<Vec<Value>, ApiError> {
    let store = server.engine().store();
    let mut resumed = Vec::new();
    for (w, flow) in waiting {
        let Some(claimed) = store.claim_wait(&w.run_id, Some(event)).await? else {
            continue;
        };
        resumed.push(json!({"flow": w.flow_id, "runId": w.run_id}));
        let engine = server.engine().clone();
        let ev = event.clone();
        let f = flow.clone();
        drop(server.track(flow, async move {
            engine.continue_wait(&f, claimed, Some(ev)).await
        }));
    }
    Ok(resumed)
}

/// The event of a request, in structured or binary mode.
fn parse(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mime = mime_of(&ctype);
    let bad_json = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "the event is not valid JSON: {} at line {}, column {}",
            e.to_string().split(" at line ").next().unwrap_or_default(),
            e.line(),
            e.column()
        ))
    };
    if mime == "application/cloudevents+json" {
        return serde_json::from_slice(bytes).map_err(bad_json);
    }
    if mime == "application/cloudevents-batch+json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "batches of events are not taken; send each event on its own",
        ));
    }
    // Binary mode.
    let mut event = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .ok()
            .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
            .ok_or_else(|| ApiError::bad_request(format!("the header `{name}` is not UTF-8")))?;
        event.insert(attr.to_owned(), Value::String(text.into_owned()));
    }
    if !event.contains_key("specversion") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "an event is sent as `application/cloudevents+json` (structured mode) or with `ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers (binary mode)",
        ));
    }
    if !bytes.is_empty() {
        if !mime.is_empty() {
            event.insert("datacontenttype".into(), Value::String(ctype.clone()));
        }
        if mime.is_empty() || mime == "application/json" || mime.ends_with("+json") {
            event.insert(
                "data".into(),
                serde_json::from_slice(bytes).map_err(bad_json)?,
            );
        } else if mime.starts_with("text/") || mime == "application/xml" || mime.ends_with("+xml") {
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::bad_request("the event's text data is not UTF-8"))?;
            event.insert("data".into(), Value::String(text));
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            event.insert("data_base64".into(), Value::String(b64));
        }
    }
    Ok(Value::Object(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn structured_mode_is_the_whole_event() {
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let e = parse(
            &h,
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(e["data"], json!({"a": 1}));
        assert!(
            parse(&h, b"{")
                .unwrap_err()
                .message
                .contains("not valid JSON")
        );
    }

    #[test]
    fn binary_mode_takes_attributes_from_headers() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/shop"),
            ("ce-type", "order.paid"),
            ("ce-orderid", "o%201"),
        ];
        let mut h = headers(&base);
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let e = parse(&h, br#"{"amount":3}"#).unwrap();
        assert_eq!(
            e,
            json!({"specversion": "1.0", "id": "42", "source": "/shop", "type": "order.paid", "orderid": "o 1", "datacontenttype": "application/json", "data": {"amount": 3}})
        );
        check_cloudevent(&e).unwrap();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(parse(&h, b"hi").unwrap()["data"], json!("hi"));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        assert_eq!(parse(&h, &[0, 255]).unwrap()["data_base64"], json!("AP8="));
        let none = headers(&[("content-type", "application/json")]);
        assert_eq!(
            parse(&none, b"{}").unwrap_err().code,
            "unsupported_media_type"
        );
    }
}
