//! A connection's authentication applied to a request; OAuth 2.0 client
//! credentials' tokens fetched, kept, and fetched again shortly before they
//! expire (or after the API refused one). No secret appears in an error.

use crate::connection::Auth;
use crate::send::{Limits, Sent, send};
use serde_json::Value;
use sluice_action::ActionError;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A token and when to stop using it.
struct Token {
    value: String,
    until: Instant,
}

/// The OAuth 2.0 token of one connection.
#[derive(Default)]
pub(crate) struct Tokens(Mutex<Option<Token>>);

impl Tokens {
    /// Forget the token (the API refused it).
    pub(crate) async fn forget(&self) {
        *self.0.lock().await = None;
    }
}

/// A connection's authentication, ready to add to requests.
pub(crate) enum Credential {
    Basic(String, String),
    Bearer(String),
    Header(String, reqwest::header::HeaderValue),
}

impl Credential {
    /// Add it to `req`.
    pub(crate) fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::Basic(u, p) => req.basic_auth(u, Some(p)),
            Self::Bearer(t) => req.bearer_auth(t),
            Self::Header(name, v) => req.header(name.as_str(), v.clone()),
        }
    }
}

/// The connection's authentication for the next request (an OAuth 2.0
/// token fetched first when there is none or it is about to expire).
pub(crate) async fn credential(
    auth: Option<&Auth>,
    tokens: &Tokens,
    client: &reqwest::Client,
    allowed: &crate::guard::Allowed,
) -> Result<Option<Credential>, ActionError> {
    Ok(match auth {
        None => None,
        Some(Auth::Basic { username, password }) => {
            Some(Credential::Basic(username.clone(), password.clone()))
        }
        Some(Auth::Bearer { token }) => Some(Credential::Bearer(token.clone())),
        Some(Auth::ApiKey { header, value }) => {
            let mut v = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                ActionError::flow(format!(
                    "the API key for header `{header}` is not a valid header value"
                ))
            })?;
            v.set_sensitive(true);
            Some(Credential::Header(header.clone(), v))
        }
        Some(a @ Auth::Oauth2 { .. }) => {
            Some(Credential::Bearer(token(a, tokens, client, allowed).await?))
        }
    })
}

/// The connection's current token, fetched when there is none or it is
/// about to expire.
async fn token(
    auth: &Auth,
    tokens: &Tokens,
    client: &reqwest::Client,
    allowed: &crate::guard::Allowed,
) -> Result<String, ActionError> {
    let Auth::Oauth2 {
        token_url,
        client_id,
        client_secret,
        scope,
        audience,
    } = auth
    else {
        return Err(ActionError::new(
            sluice_action::Blame::Bug,
            "a token asked of an authentication that has none",
        ));
    };
    let mut held = tokens.0.lock().await;
    if let Some(t) = held.as_ref()
        && Instant::now() < t.until
    {
        return Ok(t.value.clone());
    }
    let url = crate::connection::web_url(token_url)
        .map_err(|e| ActionError::flow(format!("the OAuth 2.0 `tokenUrl`: {e}")))?;
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(s) = scope {
            form.append_pair("scope", s);
        }
        if let Some(a) = audience {
            form.append_pair("audience", a);
        }
        form.finish()
    };
    let make = |u: &url::Url, _: &reqwest::Method, _: bool, _: bool| {
        client
            .post(u.clone())
            .basic_auth(client_id, Some(client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body.clone())
    };
    let limits = Limits {
        timeout: Duration::from_secs(30),
        max_bytes: 1 << 20,
        max_redirects: 0,
    };
    let Sent {
        status, body: got, ..
    } = send(&url, "POST", make, &limits, allowed)
        .await
        .map_err(|e| {
            ActionError::new(
                e.blame,
                format!("fetching an OAuth 2.0 token: {}", e.message),
            )
        })?;
    let parsed: Option<Value> = serde_json::from_slice(&got).ok();
    if !(200..300).contains(&status) {
        // The server's own error code, never the request's credentials.
        let code = parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no error code");
        let message = format!(
            "the token endpoint {} answered {status} ({code}) to client `{client_id}`",
            crate::send::shown(&url)
        );
        return Err(if status == 400 || status == 401 {
            ActionError::flow(format!(
                "{message}: check the connection's client id, secret and scope"
            ))
        } else {
            ActionError::external(message)
        });
    }
    let access = parsed
        .as_ref()
        .and_then(|v| v.get("access_token"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ActionError::external(format!(
                "the token endpoint {} answered without an `access_token`",
                crate::send::shown(&url)
            ))
        })?
        .to_owned();
    let lifetime = parsed
        .as_ref()
        .and_then(|v| v.get("expires_in"))
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(3600);
    // Fetched again a minute (or a tenth of its life) before it expires.
    let margin = (lifetime / 10).min(60);
    *held = Some(Token {
        value: access.clone(),
        until: Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin)),
    });
    Ok(access)
}
