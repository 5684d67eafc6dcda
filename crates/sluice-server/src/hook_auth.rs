//! A webhook's caller proving who it is (its trigger's `auth`): an HMAC of
//! the body, possibly with a recent time of signing, a bearer token, HTTP
//! Basic, or a token in the query. Secrets are `${secret:NAME}` (or
//! `${env:NAME}`), checked when the flow loads;
//! every comparison takes the same time whatever it finds; a failure
//! answers `401` and starts nothing.

use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use sluice_action::triggers::{HookAuth, SignatureEncoding};
use subtle::ConstantTimeEq;

fn refused(why: &str) -> ApiError {
    metrics::counter!("sluice_requests_refused_total", "reason" => "webhook_auth").increment(1);
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned())
}

/// A secret's value (`${secret:NAME}` or `${env:NAME}`), scrubbed from
/// all Sluice writes from then on.
pub(crate) fn secret(written: &str) -> Result<String, ApiError> {
    unset(sluice_action::secrets::expand_credential(written))
}

/// A value that is not a secret (HTTP Basic's user name).
fn plain(written: &str) -> Result<String, ApiError> {
    unset(sluice_action::secrets::expand(written))
}

fn unset(value: Result<String, String>) -> Result<String, ApiError> {
    value.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "webhook_secret_unset",
            format!("the webhook's secret cannot be read: {e}"),
        )
    })
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Read the secrets of a webhook's `auth` when its flow loads: one that is
/// not set refuses the flow, naming it.
pub(crate) fn read_secrets(auth: &HookAuth) -> Result<(), String> {
    let written: &[&String] = match auth {
        HookAuth::Hmac { secret, .. } => &[secret],
        HookAuth::Bearer { token } | HookAuth::Query { token, .. } => &[token],
        HookAuth::Basic { username, password } => {
            sluice_action::secrets::expand(username)
                .map_err(|e| format!("webhook trigger, auth: {e}"))?;
            &[password]
        }
    };
    for w in written {
        sluice_action::secrets::expand_credential(w)
            .map_err(|e| format!("webhook trigger, auth: {e}"))?;
    }
    Ok(())
}

/// Check the caller of a webhook with `auth`; the token of a query is taken
/// out of `query`. The caller's identity when the credentials carry one
/// (HTTP Basic's user name).
pub(crate) fn check(
    auth: &HookAuth,
    headers: &HeaderMap,
    query: &mut Value,
    body: &[u8],
) -> Result<Option<String>, ApiError> {
    match auth {
        HookAuth::Hmac {
            secret: s,
            header: name,
            prefix,
            encoding,
            timestamp_header,
            tolerance_secs,
        } => {
            let key = secret(s)?;
            let given = header(headers, name)
                .ok_or_else(|| refused(&format!("the request has no `{name}` signature")))?;
            let given = given.strip_prefix(prefix.as_str()).unwrap_or(given);
            let digest = match encoding {
                SignatureEncoding::Hex => decode_hex(given),
                SignatureEncoding::Base64 => {
                    base64::engine::general_purpose::STANDARD.decode(given).ok()
                }
            }
            .ok_or_else(|| refused(&format!("the `{name}` signature is not {encoding:?}")))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
                .map_err(|_| refused("the webhook's secret cannot key an HMAC"))?;
            if let Some(th) = timestamp_header {
                let ts = header(headers, th)
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| {
                        refused(&format!("the request has no `{th}` time of signing"))
                    })?;
                let now = sluice_store::now_micros() / 1_000_000;
                if now.abs_diff(ts) > *tolerance_secs {
                    return Err(refused(&format!(
                        "the request was signed {}s from now, more than the {tolerance_secs}s allowed (a replay?)",
                        now - ts
                    )));
                }
                mac.update(ts.to_string().as_bytes());
                mac.update(b".");
            }
            mac.update(body);
            mac.verify_slice(&digest)
                .map(|()| None)
                .map_err(|_| refused(&format!("the `{name}` signature does not match the body")))
        }
        HookAuth::Bearer { token } => {
            let want = secret(token)?;
            let given = header(headers, "authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .ok_or_else(|| refused("the request has no bearer token"))?;
            if same(given.as_bytes(), want.as_bytes()) {
                Ok(None)
            } else {
                Err(refused("the bearer token is not the webhook's"))
            }
        }
        HookAuth::Basic { username, password } => {
            let user = plain(username)?;
            let want = format!("{user}:{}", secret(password)?);
            let given = header(headers, "authorization")
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .ok_or_else(|| refused("the request has no basic credentials"))?;
            if same(&given, want.as_bytes()) {
                Ok(Some(user))
            } else {
                Err(refused("the basic credentials are not the webhook's"))
            }
        }
        HookAuth::Query { param, token } => {
            let want = secret(token)?;
            let given = query
                .as_object_mut()
                .and_then(|q| q.remove(param))
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or_else(|| refused(&format!("the request has no `{param}` token")))?;
            if same(given.as_bytes(), want.as_bytes()) {
                Ok(None)
            } else {
                Err(refused(&format!(
                    "the `{param}` token is not the webhook's"
                )))
            }
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
