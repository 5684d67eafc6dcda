//! Envelopes that span a database and an API: a patch may be an HTTP call
//! (`{call, compensate, setTokens}`), made through the HTTP connector
//! ([`sluice_action::Calls`]) in its place among the patches, its tokens
//! taken from its answer. When a later patch fails (or the commit), the
//! database's part rolls back and the compensations of the calls made run
//! in reverse order; a call that could not be undone stops the run at an
//! incident that names it.

use super::Written;
use serde_json::Value;
use sluice_action::{ActionCx, ActionError, Blame};

/// Whether a patch (as rendered) is a call.
pub(crate) fn is_call(v: &Value) -> bool {
    v.get("call").is_some()
}

/// A call patch as written (for `sluice check`; a step renders it first).
#[derive(Clone, Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallPatch {
    /// The request: `http.request`'s options, its `connection` among them.
    pub call: Value,
    /// The request that undoes it, made when a later patch fails (it may
    /// read the tokens the call set).
    pub compensate: Option<Value>,
    /// Tokens from the answer: token name -> a path such as `body.id`.
    #[serde(default)]
    pub set_tokens: std::collections::BTreeMap<String, String>,
}

/// How to undo a call that was made.
pub(crate) struct Undo {
    /// The patch, as messages name it.
    label: String,
    how: Undoing,
    key: String,
}

/// What undoes a call.
enum Undoing {
    /// Nothing needs to: the call only read.
    Nothing,
    /// Its compensating request.
    By(Value),
    /// Nothing can: it wrote, and has no `compensate`.
    Missing,
}

/// What the call of a patch says it does, for messages.
fn label(i: usize, v: &Value) -> String {
    let call = &v["call"];
    let method = call
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let url = call.get("url").and_then(Value::as_str).unwrap_or("?");
    format!("patch {} (call {method} {url})", i + 1)
}

/// Whether a request only reads (its undoing is nothing).
fn reads(request: &Value) -> bool {
    let m = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    m == "GET" || m == "HEAD"
}

/// Make patch `i`'s call (`v`, rendered); its answer, with its tokens set
/// in `written`.
pub(crate) async fn make(
    cx: &ActionCx<'_>,
    i: usize,
    v: &Value,
    written: &mut Written,
) -> Result<Value, (String, ActionError)> {
    let which = label(i, v);
    let fail = |e: ActionError| (which.clone(), e);
    let m = v.as_object().cloned().unwrap_or_default();
    if let Some(k) = m
        .keys()
        .find(|k| !["call", "compensate", "setTokens"].contains(&k.as_str()))
    {
        return Err(fail(ActionError::flow(format!(
            "a call patch has `call`, `compensate` and `setTokens`, not `{k}`"
        ))));
    }
    let calls = cx.calls.ok_or_else(|| {
        fail(ActionError::flow(
            "this patch calls an API, and no HTTP connector is registered",
        ))
    })?;
    let key = format!("{}/patch-{}", cx.idempotency_key, i + 1);
    let answer = calls
        .call(cx, m["call"].clone(), key)
        .await
        .map_err(&fail)?;
    if let Some(Value::Object(tokens)) = m.get("setTokens") {
        for (token, path) in tokens {
            let path = path.as_str().unwrap_or_default();
            let found = path
                .split('.')
                .try_fold(&answer, |v, seg| match v {
                    Value::Object(o) => o.get(seg),
                    Value::Array(a) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
                    _ => None,
                })
                .cloned()
                .ok_or_else(|| {
                    fail(ActionError::external(format!(
                        "setTokens: the answer has no `{path}` for token `{token}`"
                    )))
                })?;
            written.tokens.insert(token.clone(), found);
        }
    }
    Ok(answer)
}

/// How to undo patch `i`'s call, from the patch rendered again after it
/// (so that `compensate` reads the tokens the call set).
pub(crate) fn undo_of(cx: &ActionCx<'_>, i: usize, first: &Value, again: &Value) -> Undo {
    let how = match again.get("compensate").filter(|c| !c.is_null()) {
        Some(c) => Undoing::By(c.clone()),
        None if reads(&first["call"]) => Undoing::Nothing,
        None => Undoing::Missing,
    };
    Undo {
        label: label(i, first),
        how,
        key: format!("{}/patch-{}/undo", cx.idempotency_key, i + 1),
    }
}

/// The envelope failed at `which` with `e`, its database part rolled back:
/// undo the calls made, last first; the step's error.
pub(crate) async fn undone(
    cx: &ActionCx<'_>,
    made: Vec<Undo>,
    which: &str,
    e: ActionError,
) -> ActionError {
    if made.is_empty() {
        return super::envelope_failure(which, e);
    }
    let mut not = Vec::new();
    let mut undone = 0;
    for u in made.into_iter().rev() {
        match (u.how, cx.calls) {
            (Undoing::Nothing, _) => {}
            (Undoing::By(r), Some(calls)) => match calls.call(cx, r, u.key).await {
                Ok(_) => undone += 1,
                Err(ce) => not.push(format!(
                    "{}: its compensation failed: {}",
                    u.label, ce.message
                )),
            },
            (Undoing::By(_), None) => not.push(format!("{}: no HTTP connector", u.label)),
            (Undoing::Missing, _) => not.push(format!("{}: it has no `compensate`", u.label)),
        }
    }
    if !not.is_empty() {
        return ActionError::new(
            Blame::External,
            format!(
                "{which} failed: {}; the envelope's database writes were rolled back, and these calls could not be undone: {}",
                e.message,
                not.join("; ")
            ),
        )
        .incident();
    }
    ActionError::new(
        e.blame,
        format!(
            "{which} failed: {}; the envelope was rolled back: its database writes, and {undone} call(s) undone by their compensation",
            e.message
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_are_found_and_named() {
        let v = json!({"call": {"connection": "api", "method": "post", "url": "/orders"}});
        assert!(is_call(&v));
        assert_eq!(label(1, &v), "patch 2 (call POST /orders)");
        assert!(sluice_model::calls_an_api(
            &json!([{"op": "create", "collection": "t"}, v])
        ));
        assert!(!sluice_model::calls_an_api(
            &json!([{"op": "create", "collection": "t", "children": []}])
        ));
        assert!(reads(&json!({"url": "/x"})));
        assert!(!reads(&json!({"method": "DELETE"})));
    }
}
