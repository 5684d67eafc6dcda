//! Answers scrubbed of secrets: while the process knows a secret (see
//! `sluice_action::secrets`), every answer's body is read and every
//! secret's value in it replaced, inside JSON strings for a JSON body so
//! that it stays valid JSON.

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use sluice_action::secrets;
use std::borrow::Cow;

/// The answer, with every secret's value taken out of its body.
pub(crate) async fn answer(resp: Response) -> Response {
    if !secrets::any() {
        return resp;
    }
    // A stream of events (`/api/stream`) carries ids and statuses only,
    // and never ends: it is not read whole.
    if resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        // A body that failed half way: nothing of it is sent.
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let Cow::Owned(scrubbed) = secrets::scrub(text) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let out = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) if json => serde_json::to_vec(&secrets::scrub_value(&v)).unwrap_or_default(),
        _ => scrubbed.into_bytes(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}
