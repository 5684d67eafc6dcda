//! What a client sends, read as the server reads it, without a server: a
//! webhook's body by its content type and a CloudEvent in either mode,
//! checked against the spec and its `data_base64` decoded. The fuzz
//! targets (fuzz/) and tests call these; an answer is the JSON the run
//! would see, or the message of the `4xx` the client would get.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

fn header_map(headers: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(*name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// A webhook's body (`Content-Type` `content_type`) as `$trigger.body`.
pub fn webhook_body(content_type: &[u8], body: &[u8]) -> Result<Value, String> {
    crate::hooks::parse_body(&header_map(&[("content-type", content_type)]), body, false)
        .map(|v| sluice_expr::data::to_json(&v))
        .map_err(|e| e.message)
}

/// A CloudEvent sent to `/events` with these headers and body.
pub fn cloudevent(headers: &[(&str, &[u8])], body: &[u8]) -> Result<Value, String> {
    crate::events::read_event(&header_map(headers), body).map_err(|e| e.message)
}
