//! A connection of `type: http`: an API's base URL, the headers and the
//! authentication every request to it carries, its limits, and the hosts it
//! may reach on internal addresses. Its values may take `${env:NAME}`
//! (secrets stay out of flow files); it is never part of a run's record.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_action::{ActionError, check_options, expand};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::collections::BTreeMap;

/// The request timeout when neither the step nor its connection gives one.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The largest response body read when neither gives a limit (10 MiB).
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 << 20;
/// Redirects followed when neither gives a number.
pub(crate) const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// A connection of `type: http`, as written in the flow.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConnection {
    /// `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The API's base URL: a step's `url` is relative to it.
    pub base_url: String,
    /// Headers every request carries.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How requests authenticate.
    pub auth: Option<Auth>,
    /// Time a request may take, in milliseconds (default 30,000).
    pub timeout_ms: Option<u64>,
    /// The largest response body read, in bytes (default 10 MiB).
    pub max_response_bytes: Option<u64>,
    /// Redirects followed (default 5; 0: none).
    pub max_redirects: Option<u32>,
    /// Hosts this connection may reach although they resolve to the
    /// machine itself or a private network (`localhost`, `127.0.0.1`,
    /// `api.internal`).
    #[serde(default)]
    pub allow_private_hosts: Vec<String>,
    /// The API's collections, by the name `rest.*` steps give as
    /// `collection`.
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
}

/// A collection of a REST API: where its objects are and how it is asked.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource {
    /// Its path under the base URL (default `/` and its name); an object
    /// is at `PATH/ID`.
    pub path: Option<String>,
    /// The field that identifies an object (default `id`).
    #[serde(default = "default_id")]
    pub id_field: String,
    /// How an update is sent: `patch` (default; the fields written) or
    /// `put` (the whole object).
    #[serde(default)]
    pub update: UpdateVerb,
    /// The query parameter of each condition, `{field}` standing for the
    /// field's name (default: `=` as `{field}`, as `?email=a@example.com`).
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// Where a list answer's items are, a JSONPath (default `$`).
    #[serde(default = "default_items")]
    pub items: String,
    /// How pages are asked for, when the API pages its lists.
    pub paging: Option<Paging>,
}

/// How an update is sent.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UpdateVerb {
    /// `PATCH` with the fields written.
    #[default]
    Patch,
    /// `PUT` with the whole object.
    Put,
}

/// Page parameters of a resource's lists.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Paging {
    /// The page number's parameter (such as `_page`).
    pub page: String,
    /// The page size's parameter (such as `_limit`).
    pub size: String,
    /// The first page's number (default 1).
    #[serde(default = "one")]
    pub start: u64,
}

fn default_id() -> String {
    "id".into()
}

fn default_items() -> String {
    "$".into()
}

fn one() -> u64 {
    1
}

/// How a connection's requests authenticate.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Auth {
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token.
    Bearer {
        /// The token.
        token: String,
    },
    /// A key in a header of the API's choosing.
    ApiKey {
        /// The header's name (such as `x-api-key`).
        header: String,
        /// The key.
        value: String,
    },
    /// OAuth 2.0 client credentials: a token fetched from `tokenUrl`, kept
    /// until shortly before it expires.
    #[serde(rename_all = "camelCase")]
    Oauth2 {
        /// The authorization server's token endpoint.
        token_url: String,
        /// The client's id.
        client_id: String,
        /// The client's secret.
        client_secret: String,
        /// The scope asked for.
        scope: Option<String>,
        /// The audience asked for (some servers want one).
        audience: Option<String>,
    },
}

/// `sluice check`'s view of an http connection.
pub(crate) fn check(v: &Value) -> Vec<OptionIssue> {
    let mut issues = check_options::<HttpConnection>(v);
    let at = |key: &str, message: String| OptionIssue {
        path: vec![PathSeg::Key(key.into())],
        message,
        at_key: false,
        help: None,
    };
    if let Some(u) = v.get("baseUrl").and_then(Value::as_str)
        && !u.contains("${env:")
        && let Err(e) = web_url(u)
    {
        issues.push(at("baseUrl", e));
    }
    if let Some(a) = v.get("auth")
        && let Some(u) = a.get("tokenUrl").and_then(Value::as_str)
        && !u.contains("${env:")
        && let Err(e) = web_url(u)
    {
        issues.push(OptionIssue {
            path: vec![PathSeg::Key("auth".into()), PathSeg::Key("tokenUrl".into())],
            ..at("auth", e)
        });
    }
    issues
}

/// `sluice check`'s view of a step's use of an http connection: a `rest.*`
/// step's `collection` is one of the connection's `resources`.
pub(crate) fn uses(kind: &str, options: &Value, connection: &Value) -> Vec<OptionIssue> {
    let Some(c) = options.get("collection").and_then(Value::as_str) else {
        return Vec::new();
    };
    if !kind.starts_with("rest.") || sluice_expr::template::has_template(c) {
        return Vec::new();
    }
    let names: Vec<&str> = connection
        .get("resources")
        .and_then(Value::as_object)
        .map(|r| r.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if names.contains(&c) {
        return Vec::new();
    }
    vec![OptionIssue {
        path: vec![PathSeg::Key("collection".into())],
        message: format!("the connection has no resource `{c}`"),
        at_key: false,
        help: Some(if names.is_empty() {
            "describe the API's collections under the connection's `resources`".into()
        } else {
            format!("resources: {}", names.join(", "))
        }),
    }]
}

/// An `http:` or `https:` URL.
pub(crate) fn web_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(format!("`{text}` has no host")),
        s => Err(format!("`{text}`: the scheme `{s}` is not http or https")),
    }
}

impl HttpConnection {
    /// The connection `name` of a flow, with `${env:…}` replaced.
    pub(crate) fn of(declared: &Value, name: &str) -> Result<Self, ActionError> {
        let expanded = expand_values(declared)
            .map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))?;
        serde_json::from_value(expanded)
            .map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))
    }
}

/// Every string with `${env:NAME}` replaced.
fn expand_values(v: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(expand(s)?),
        Value::Array(a) => Value::Array(a.iter().map(expand_values).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), expand_values(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_connection_is_checked_whole() {
        let ok = json!({"type": "http", "baseUrl": "https://api.example.com/v1",
            "auth": {"type": "oauth2", "tokenUrl": "https://id.example.com/token", "clientId": "a", "clientSecret": "${env:S}"}});
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        let bad = json!({"type": "http", "baseUrl": "ftp://x", "auth": {"type": "apiKey", "header": "x"}, "tmeout": 1});
        let msgs: Vec<String> = check(&bad).into_iter().map(|i| i.message).collect();
        assert!(
            msgs.iter().any(|m| m.contains("unknown option `tmeout`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("missing field `value`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("scheme `ftp` is not http")),
            "{msgs:?}"
        );
    }

    #[test]
    fn env_is_expanded_at_use() {
        // SAFETY: the variable is this test's own.
        unsafe { std::env::set_var("SLUICE_HTTP_T_TOKEN", "s3cret") };
        let c = HttpConnection::of(
            &json!({"type": "http", "baseUrl": "https://a.example", "auth": {"type": "bearer", "token": "${env:SLUICE_HTTP_T_TOKEN}"}}),
            "api",
        )
        .unwrap();
        assert!(matches!(c.auth, Some(Auth::Bearer { token }) if token == "s3cret"));
        let e = HttpConnection::of(
            &json!({"type": "http", "baseUrl": "${env:SLUICE_HTTP_T_UNSET}"}),
            "api",
        )
        .unwrap_err();
        assert!(
            e.message.contains("`SLUICE_HTTP_T_UNSET` is not set"),
            "{e}"
        );
    }
}
