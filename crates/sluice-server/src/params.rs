//! The API's query parameters: each given once at most (a name given twice
//! is `400`), a `limit`, a time.

use crate::error::ApiError;
use serde_json::Value;

/// Query parameter `name` of the API, given once at most.
pub(crate) fn param<'q>(q: &'q Value, name: &str) -> Result<Option<&'q str>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "the query parameter `{name}` is given more than once"
        ))),
    }
}

/// The query's `limit`: a whole number, 100 when not given.
pub(crate) fn limit_param(q: &Value) -> Result<u32, ApiError> {
    match param(q, "limit")? {
        None => Ok(100),
        Some(l) => l
            .parse::<u32>()
            .map_err(|_| ApiError::bad_request(format!("`limit` is a whole number, not `{l}`"))),
    }
}

/// A time in a query: RFC 3339, or microseconds since the epoch.
pub(crate) fn time_param(q: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = param(q, name)? else {
        return Ok(None);
    };
    if let Ok(n) = text.parse::<i64>() {
        return Ok(Some(n));
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| Some(t.as_microsecond()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` is an RFC 3339 time (such as 2026-11-23T10:00:00Z) or microseconds since the epoch, not `{text}`"
            ))
        })
}
