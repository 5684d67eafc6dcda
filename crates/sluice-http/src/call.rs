//! A request as `http.request` describes it, made ready and sent: its URL
//! (relative to the connection's base URL, whose credentials go nowhere
//! else), headers (the connection's, the step's, the body's type, the
//! idempotency key), body (JSON, a form or text), the connection's
//! authentication; and its answer read as `{status, headers, body}`, or
//! its status blamed on who must act.

use crate::auth::credential;
use crate::client::Conn;
use crate::send::{Sent, send, shown};
use base64::Engine as _;
use reqwest::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_action::{ActionError, Blame};

/// How the body is sent.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BodyType {
    /// JSON (`application/json`).
    #[default]
    Json,
    /// A form (`application/x-www-form-urlencoded`) from an object.
    Form,
    /// Text (`text/plain`) from a string.
    Text,
}

/// How the answer's body is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ResponseType {
    /// By its content type: JSON parsed, text as a string, other bytes in
    /// base64 (with `bodyEncoding: base64`).
    #[default]
    Auto,
    /// JSON, whatever its content type says (it fails when it is not).
    Json,
    /// Text.
    Text,
}

/// Options of `http.request`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRequestOptions {
    /// A connection of `type: http`: `url` is relative to its `baseUrl`,
    /// and the request carries its headers and authentication.
    pub connection: Option<String>,
    /// The method (default `GET`).
    #[serde(default = "get")]
    pub method: String,
    /// The URL: absolute, or relative to the connection's `baseUrl`.
    pub url: String,
    /// Query parameters, URL-encoded (an array: the name repeated).
    #[serde(default)]
    pub query: Map<String, Value>,
    /// Headers (the connection's, then these).
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// The body.
    pub body: Option<Value>,
    /// How the body is sent: `json` (default), `form` or `text`.
    #[serde(default)]
    pub body_type: BodyType,
    /// How the answer's body is read: `auto` (default), `json` or `text`.
    #[serde(default)]
    pub response_type: ResponseType,
    /// The statuses that succeed (default: 200 to 299).
    #[serde(default)]
    pub accept_statuses: Vec<u16>,
    /// Time the request may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The largest answer read, in bytes.
    pub max_response_bytes: Option<u64>,
    /// Redirects followed.
    pub max_redirects: Option<u32>,
    /// Read a list over its pages (see [`crate::pages`]).
    pub pages: Option<crate::pages::Pages>,
}

fn get() -> String {
    "GET".into()
}

pub(crate) const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Whether a request with `method` writes (and so carries an
/// `Idempotency-Key`).
fn writes(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

/// Headers not sent to another origin than the request's.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// A request ready to send, to one URL or to each page of a list.
pub(crate) struct Call<'a> {
    conn: &'a Conn,
    method: String,
    headers: Vec<(String, reqwest::header::HeaderValue)>,
    body: Option<Vec<u8>>,
    limits: crate::send::Limits,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        conn: &'a Conn,
        o: &HttpRequestOptions,
        method: &str,
        key: &str,
    ) -> Result<Self, ActionError> {
        let (body, content_type) = encode_body(o.body.as_ref(), o.body_type)?;
        Ok(Self {
            conn,
            method: method.to_owned(),
            headers: headers(conn, &o.headers, content_type, method, key)?,
            body,
            limits: conn.limits(o.timeout_ms, o.max_response_bytes, o.max_redirects),
        })
    }

    /// The connection it goes through.
    pub(crate) fn conn(&self) -> &Conn {
        self.conn
    }

    /// Its method.
    pub(crate) fn method(&self) -> &str {
        &self.method
    }

    /// Send it to `url`, with the connection's authentication (an OAuth 2.0
    /// token the API refuses is fetched anew, once).
    pub(crate) async fn send(&self, url: &url::Url) -> Result<Sent, ActionError> {
        let conn = self.conn;
        let auth = conn.decl.as_ref().and_then(|d| d.auth.as_ref());
        let oauth = matches!(auth, Some(crate::connection::Auth::Oauth2 { .. }));
        let mut tries = 0;
        loop {
            tries += 1;
            let cred = credential(auth, &conn.tokens, &conn.client, &conn.allowed).await?;
            let make = |u: &url::Url, m: &Method, with_body: bool, same_origin: bool| {
                let mut req = conn.client.request(m.clone(), u.clone());
                for (name, value) in &self.headers {
                    if same_origin || !CREDENTIAL_HEADERS.contains(&name.as_str()) {
                        req = req.header(name.as_str(), value.clone());
                    }
                }
                if let (true, Some(c)) = (same_origin, &cred) {
                    req = c.apply(req);
                }
                if with_body && let Some(b) = &self.body {
                    req = req.body(b.clone());
                }
                req
            };
            let sent = send(url, &self.method, make, &self.limits, &conn.allowed).await?;
            if sent.status == 401 && oauth && tries == 1 {
                conn.tokens.forget().await;
                continue;
            }
            return Ok(sent);
        }
    }
}

/// The request's URL: `url` on its own or after the connection's base,
/// with `query` added.
pub(crate) fn target(
    conn: &Conn,
    url: &str,
    query: &Map<String, Value>,
) -> Result<url::Url, ActionError> {
    let absolute = url.contains("://");
    let mut u = match (&conn.base, absolute) {
        (_, true) => {
            let u = crate::connection::web_url(url).map_err(ActionError::data)?;
            if let Some(base) = &conn.base {
                let inside = u.origin() == base.origin() && u.path().starts_with(base.path());
                if !inside {
                    return Err(ActionError::flow(format!(
                        "`{}` is outside the connection's `baseUrl` {}: the connection's credentials go only to its API",
                        shown(&u),
                        shown(base)
                    )));
                }
            }
            u
        }
        (Some(base), false) => {
            let joined = format!(
                "{}/{}",
                base.as_str().trim_end_matches('/'),
                url.trim_start_matches('/')
            );
            crate::connection::web_url(&joined).map_err(ActionError::data)?
        }
        (None, false) => {
            return Err(ActionError::flow(format!(
                "`{url}` is relative, and the step has no `connection` to be relative to"
            )));
        }
    };
    if !query.is_empty() {
        let pairs = text_pairs(query, "query parameter")?;
        u.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(u)
}

/// The body's bytes and content type.
fn encode_body(
    body: Option<&Value>,
    kind: BodyType,
) -> Result<(Option<Vec<u8>>, Option<&'static str>), ActionError> {
    let Some(b) = body else {
        return Ok((None, None));
    };
    Ok(match kind {
        BodyType::Json => (
            Some(serde_json::to_vec(b).map_err(|e| ActionError::data(e.to_string()))?),
            Some("application/json"),
        ),
        BodyType::Text => match b {
            Value::String(s) => (
                Some(s.clone().into_bytes()),
                Some("text/plain; charset=utf-8"),
            ),
            other => {
                return Err(ActionError::data(format!(
                    "`bodyType: text` sends a string, and the body is {}",
                    kind_name(other)
                )));
            }
        },
        BodyType::Form => {
            let Value::Object(fields) = b else {
                return Err(ActionError::data(format!(
                    "`bodyType: form` sends an object's fields, and the body is {}",
                    kind_name(b)
                )));
            };
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(text_pairs(fields, "form field")?);
            (
                Some(form.finish().into_bytes()),
                Some("application/x-www-form-urlencoded"),
            )
        }
    })
}

/// The name-value pairs of a query or a form: an array repeats its name,
/// `null` is left out, numbers and booleans are written as text; an object
/// or a nested array cannot be (`what` names the pair in the message).
fn text_pairs(
    fields: &Map<String, Value>,
    what: &str,
) -> Result<Vec<(String, String)>, ActionError> {
    let mut out = Vec::new();
    for (k, v) in fields {
        let values = match v {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for v in values {
            match v {
                Value::Null => {}
                Value::String(s) => out.push((k.clone(), s.clone())),
                Value::Object(_) | Value::Array(_) => {
                    return Err(ActionError::data(format!(
                        "{what} `{k}` is {}: it holds text",
                        kind_name(v)
                    )));
                }
                other => out.push((k.clone(), other.to_string())),
            }
        }
    }
    Ok(out)
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request's headers (names in lower case): the connection's, the
/// step's, the body's type and the idempotency key unless given.
fn headers(
    conn: &Conn,
    step: &Map<String, Value>,
    content_type: Option<&str>,
    method: &str,
    key: &str,
) -> Result<Vec<(String, reqwest::header::HeaderValue)>, ActionError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| {
        let name = name.to_ascii_lowercase();
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    };
    if let Some(d) = &conn.decl {
        for (k, v) in &d.headers {
            set(k, v.clone());
        }
    }
    if let Some(ct) = content_type {
        set("content-type", ct.to_owned());
    }
    if writes(method) && !key.is_empty() {
        set("idempotency-key", key.to_owned());
    }
    for (k, v) in step {
        match v {
            Value::Null => {}
            Value::String(s) => set(k, s.clone()),
            other => set(k, other.to_string()),
        }
    }
    out.into_iter()
        .map(|(name, value)| {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ActionError::data(format!("`{name}` is not a header name")))?;
            let mut v = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| ActionError::data(format!("header `{name}` has a value a header cannot carry (a line break or a control character)")))?;
            if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                v.set_sensitive(true);
            }
            Ok((name, v))
        })
        .collect()
}

/// The step's result, or its failure when the status is not accepted.
pub(crate) fn answer(
    method: &str,
    url: &url::Url,
    sent: Sent,
    o: &HttpRequestOptions,
) -> Result<Map<String, Value>, ActionError> {
    let accepted = if o.accept_statuses.is_empty() {
        (200..300).contains(&sent.status)
    } else {
        o.accept_statuses.contains(&sent.status)
    };
    if !accepted {
        return Err(refused(method, url, &sent));
    }
    let mut headers = Map::new();
    for name in sent.headers.keys() {
        let values: Vec<String> = sent
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let content_type = sent
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut result = Map::new();
    result.insert("status".into(), json!(sent.status));
    result.insert("headers".into(), Value::Object(headers));
    let body = read_body(&sent.body, &content_type, o.response_type)
        .map_err(|why| ActionError::external(format!("{method} {}: {why}", shown(url))))?;
    result.insert("body".into(), body.0);
    if let Some(enc) = body.1 {
        result.insert("bodyEncoding".into(), Value::String(enc.into()));
    }
    Ok(result)
}

/// The body as JSON, and its encoding when it is not text.
fn read_body(
    bytes: &[u8],
    content_type: &str,
    how: ResponseType,
) -> Result<(Value, Option<&'static str>), String> {
    let json_type = content_type.starts_with("application/json")
        || content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().ends_with("+json"));
    let parse = |what: &str| {
        serde_json::from_slice(bytes)
            .map(|v| (v, None))
            .map_err(|e| format!("the answer is not JSON ({what}): {e}"))
    };
    match how {
        ResponseType::Json => parse("`responseType: json`"),
        ResponseType::Text => Ok((
            Value::String(String::from_utf8_lossy(bytes).into_owned()),
            None,
        )),
        ResponseType::Auto if bytes.is_empty() => Ok((Value::Null, None)),
        ResponseType::Auto if json_type => parse("its content type says JSON"),
        ResponseType::Auto => match std::str::from_utf8(bytes) {
            Ok(text) => Ok((Value::String(text.to_owned()), None)),
            Err(_) => Ok((
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
                Some("base64"),
            )),
        },
    }
}

/// A status the step does not accept, blamed by what it says.
fn refused(method: &str, url: &url::Url, sent: &Sent) -> ActionError {
    let reason = reqwest::StatusCode::from_u16(sent.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let text = String::from_utf8_lossy(&sent.body);
    let mut snippet: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if snippet.chars().count() > 300 {
        snippet = snippet.chars().take(300).collect::<String>() + "…";
    }
    let mut message = format!("{method} {} answered {} {reason}", shown(url), sent.status);
    if !snippet.is_empty() {
        message.push_str(&format!(": {snippet}"));
    }
    let blame = if sent.status == 429 || sent.status >= 500 || sent.status < 400 {
        Blame::External
    } else {
        Blame::Data
    };
    let mut e = ActionError::new(blame, message);
    if let Some(ms) = retry_after(&sent.headers) {
        e = e.retry_after(ms);
    }
    e
}

/// `Retry-After` in milliseconds from now: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    let left = when
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(left.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_by_their_type() {
        assert_eq!(
            read_body(
                br#"{"a":1}"#,
                "application/json; charset=utf-8",
                ResponseType::Auto
            )
            .unwrap()
            .0,
            json!({"a": 1})
        );
        assert_eq!(
            read_body(br#"[1]"#, "application/problem+json", ResponseType::Auto)
                .unwrap()
                .0,
            json!([1])
        );
        assert_eq!(
            read_body(b"hi", "text/plain", ResponseType::Auto)
                .unwrap()
                .0,
            json!("hi")
        );
        assert_eq!(
            read_body(b"", "application/json", ResponseType::Auto)
                .unwrap()
                .0,
            Value::Null
        );
        let (v, enc) = read_body(
            &[0xff, 0x00],
            "application/octet-stream",
            ResponseType::Auto,
        )
        .unwrap();
        assert_eq!((v, enc), (json!("/wA="), Some("base64")));
        let e = read_body(b"<html>", "text/html", ResponseType::Json).unwrap_err();
        assert!(
            e.starts_with("the answer is not JSON (`responseType: json`)"),
            "{e}"
        );
        let e = read_body(b"oops", "application/json", ResponseType::Auto).unwrap_err();
        assert!(e.contains("its content type says JSON"), "{e}");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(7000));
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let ms = retry_after(&h).unwrap();
        assert!((28_000..=30_000).contains(&ms), "{ms}");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn forms_and_text_bodies() {
        let (b, ct) = encode_body(
            Some(&json!({"a": "x y", "n": 2, "l": [1, 2], "z": null})),
            BodyType::Form,
        )
        .unwrap();
        assert_eq!(String::from_utf8(b.unwrap()).unwrap(), "a=x+y&n=2&l=1&l=2");
        assert_eq!(ct, Some("application/x-www-form-urlencoded"));
        let e = encode_body(Some(&json!({"a": {"b": 1}})), BodyType::Form).unwrap_err();
        assert!(
            e.message
                .contains("form field `a` is an object: it holds text"),
            "{e}"
        );
        let e = encode_body(Some(&json!(1)), BodyType::Text).unwrap_err();
        assert_eq!(e.blame, Blame::Data);
    }
}
