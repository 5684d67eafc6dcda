//! `http.request`: one HTTP request, its every part templated, answered as
//! `{status, headers, body}` with the body read by its content type. The
//! status decides who is to blame when it is not one the step accepts:
//! 429 and 5xx the outside system (a `retry` waits, at least as long as
//! `Retry-After` asks), other 4xx the data. Writes carry an
//! `Idempotency-Key` made of the run, the step, the item and the attempt.

use crate::call::{Call, HttpRequestOptions, METHODS, answer, target};
use crate::client::{Clients, Conn};
use serde_json::Value;
use sluice_action::{Action, ActionCx, ActionError, Outcome};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::sync::Arc;

/// `http.request`.
pub struct HttpRequest(pub(crate) Arc<Clients>);

impl Action for HttpRequest {
    const KIND: &'static str = "http.request";
    const CONNECTION: Option<&'static str> = Some("http");
    type Options = HttpRequestOptions;

    fn check(options: &Value) -> Vec<OptionIssue> {
        let mut issues = Vec::new();
        let mut at = |key: &str, message: String, help: Option<String>| {
            issues.push(OptionIssue {
                path: vec![PathSeg::Key(key.into())],
                message,
                at_key: false,
                help,
            });
        };
        let fixed = |key: &str| {
            options
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !sluice_expr::template::has_template(s))
        };
        if let Some(m) = fixed("method")
            && !METHODS.contains(&m.to_ascii_uppercase().as_str())
        {
            at(
                "method",
                format!("`{m}` is not an HTTP method"),
                Some(format!("methods: {}", METHODS.join(", "))),
            );
        }
        let absolute = |u: &str| u.contains("://");
        if let Some(u) = fixed("url") {
            if absolute(u) {
                if let Err(e) = crate::connection::web_url(u) {
                    at("url", e, None);
                }
            } else if options.get("connection").is_none() {
                at(
                    "url",
                    format!("`{u}` is relative, and the step has no `connection` to be relative to"),
                    Some("give an absolute http:// or https:// URL, or a `connection` of `type: http` with a `baseUrl`".into()),
                );
            }
        }
        if let Some(Value::Array(list)) = options.get("acceptStatuses") {
            for s in list {
                if !s.as_u64().is_some_and(|n| (100..=599).contains(&n)) {
                    at(
                        "acceptStatuses",
                        format!("{s} is not an HTTP status (100 to 599)"),
                        None,
                    );
                }
            }
        }
        if options.get("bodyType").and_then(Value::as_str) == Some("text")
            && options.get("body").is_some_and(|b| !b.is_string())
        {
            at("body", "`bodyType: text` sends a string".into(), None);
        }
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: HttpRequestOptions,
    ) -> Result<Outcome, ActionError> {
        let conn = self.0.get(cx.connections, o.connection.as_deref())?;
        let (url, call) = prepare(&conn, &o, cx.idempotency_key)?;
        match &o.pages {
            None => {
                let sent = call.send(&url).await?;
                answer(call.method(), &url, sent, &o).map(|r| Outcome::value(r.into()))
            }
            Some(p) => crate::listing::read(&call, p, url, &o).await,
        }
    }
}

/// The request `o` describes, through `conn`, with idempotency key `key`:
/// its URL and the call ready to send.
fn prepare<'c>(
    conn: &'c Conn,
    o: &HttpRequestOptions,
    key: &str,
) -> Result<(url::Url, Call<'c>), ActionError> {
    let method = o.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(ActionError::data(format!(
            "`{}` is not an HTTP method",
            o.method
        )));
    }
    let url = target(conn, &o.url, &o.query)?;
    Ok((url, Call::new(conn, o, &method, key)?))
}

/// HTTP calls for other connectors' steps (an envelope's `call` patches).
pub(crate) struct HttpCalls(pub(crate) Arc<Clients>);

impl sluice_action::Calls for HttpCalls {
    fn call<'a>(
        &'a self,
        cx: &'a ActionCx<'a>,
        request: Value,
        key: String,
    ) -> sluice_action::BoxFuture<'a, Result<Value, ActionError>> {
        Box::pin(async move {
            let o: HttpRequestOptions = serde_json::from_value(request)
                .map_err(|e| ActionError::data(format!("the call: {e}")))?;
            if o.pages.is_some() {
                return Err(ActionError::flow(
                    "a call of an envelope reads one answer: `pages` is for `http.request`",
                ));
            }
            let conn = self.0.get(cx.connections, o.connection.as_deref())?;
            let (url, call) = prepare(&conn, &o, &key)?;
            let sent = call.send(&url).await?;
            Ok(Value::Object(answer(call.method(), &url, sent, &o)?))
        })
    }
}
