//! One request sent as the limits say: every hop's address checked,
//! redirects followed up to a number (credentials kept only on the same
//! origin; 301, 302 and 303 turn a request with a body into a `GET`), the
//! whole exchange within a time, the body read up to a size. Failures are
//! worded without the URL's query or any header, and blamed: the network
//! and timeouts on the outside system, a refused address on the flow.

use crate::guard::{Allowed, refusal};
use reqwest::Method;
use reqwest::header::HeaderMap;
use sluice_action::ActionError;
use std::time::Duration;

/// What one request may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: u64,
    pub(crate) max_redirects: u32,
}

/// An answer.
pub(crate) struct Sent {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// A URL as messages show it: no user, password or query.
pub(crate) fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let had_query = u.query().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if had_query {
        format!("{u}?…")
    } else {
        u.to_string()
    }
}

/// Send a request to `url` made by `make(url, method, with_body,
/// same_origin)`, following redirects; the answer.
pub(crate) async fn send(
    url: &url::Url,
    method: &str,
    make: impl Fn(&url::Url, &Method, bool, bool) -> reqwest::RequestBuilder,
    limits: &Limits,
    allowed: &Allowed,
) -> Result<Sent, ActionError> {
    let what = format!("{method} {}", shown(url));
    let exchange = exchange(url, method, make, limits, allowed);
    match tokio::time::timeout(limits.timeout, exchange).await {
        Ok(r) => r.map_err(|e| ActionError::new(e.blame, format!("{what}: {}", e.message))),
        Err(_) => Err(ActionError::external(format!(
            "{what}: no answer within {} ms",
            limits.timeout.as_millis()
        ))),
    }
}

async fn exchange(
    first: &url::Url,
    method: &str,
    make: impl Fn(&url::Url, &Method, bool, bool) -> reqwest::RequestBuilder,
    limits: &Limits,
    allowed: &Allowed,
) -> Result<Sent, ActionError> {
    let mut method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ActionError::flow(format!("`{method}` is not an HTTP method")))?;
    let mut url = first.clone();
    let mut with_body = true;
    let mut hops = 0;
    loop {
        allowed
            .check_literal(&url)
            .map_err(|r| ActionError::flow(r.to_string()))?;
        let same_origin = url.origin() == first.origin();
        let resp = make(&url, &method, with_body, same_origin)
            .send()
            .await
            .map_err(failed)?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        if let (true, Some(to)) = (matches!(status, 301 | 302 | 303 | 307 | 308), location) {
            if hops >= limits.max_redirects {
                if limits.max_redirects == 0 {
                    // Not following: the answer is the redirect itself.
                    return read(resp, limits).await;
                }
                return Err(ActionError::external(format!(
                    "more than {} redirects",
                    limits.max_redirects
                )));
            }
            hops += 1;
            let next = url
                .join(&to)
                .map_err(|e| ActionError::external(format!("a redirect to `{to}`: {e}")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(ActionError::external(format!(
                    "a redirect to a `{}:` URL",
                    next.scheme()
                )));
            }
            if status == 303 || (matches!(status, 301 | 302) && method == Method::POST) {
                if method != Method::HEAD {
                    method = Method::GET;
                }
                with_body = false;
            }
            url = next;
            continue;
        }
        return read(resp, limits).await;
    }
}

/// The answer's body, up to the limit.
async fn read(mut resp: reqwest::Response, limits: &Limits) -> Result<Sent, ActionError> {
    let over = || {
        ActionError::external(format!(
            "the answer is larger than {} bytes (`maxResponseBytes`)",
            limits.max_bytes
        ))
    };
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(over());
    }
    let status = resp.status().as_u16();
    let headers = std::mem::take(resp.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if (body.len() + chunk.len()) as u64 > limits.max_bytes {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Sent {
        status,
        headers,
        body,
    })
}

/// A failure to send or to read, worded from its causes (reqwest's own
/// words carry the whole URL).
fn failed(e: reqwest::Error) -> ActionError {
    if let Some(r) = refusal(&e) {
        return ActionError::flow(r.to_string());
    }
    let mut causes = Vec::new();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !causes.iter().any(|k: &String| k.contains(&text)) {
            causes.push(text);
        }
        cur = c.source();
    }
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the answer's body broke off"
    } else {
        "the request failed"
    };
    let message = if causes.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", causes.join(": "))
    };
    ActionError::external(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_lose_credentials_and_queries() {
        let u = url::Url::parse("https://me:pw@api.example.com:8443/v1/x?token=abc#f").unwrap();
        assert_eq!(shown(&u), "https://api.example.com:8443/v1/x?…");
        let u = url::Url::parse("http://a.example/b").unwrap();
        assert_eq!(shown(&u), "http://a.example/b");
    }
}
