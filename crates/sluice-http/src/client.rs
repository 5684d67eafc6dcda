//! HTTP clients, one per connection (its hosts allowed on internal
//! addresses are part of its resolver) and one for requests without a
//! connection: TLS through rustls on ring with the Mozilla roots, no proxy
//! from the environment, no redirect followed by the client itself
//! ([`crate::send`] follows them, checking each hop).

use crate::auth::Tokens;
use crate::connection::{
    DEFAULT_MAX_REDIRECTS, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_MS, HttpConnection,
};
use crate::guard::{Allowed, GuardedResolver};
use crate::send::Limits;
use serde_json::Value;
use sluice_action::ActionError;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A client and what requests through it carry.
pub(crate) struct Conn {
    pub(crate) client: reqwest::Client,
    pub(crate) allowed: Allowed,
    /// The connection, for requests through one.
    pub(crate) decl: Option<HttpConnection>,
    /// Its base URL, parsed.
    pub(crate) base: Option<url::Url>,
    /// Its OAuth 2.0 token.
    pub(crate) tokens: Tokens,
}

impl Conn {
    /// The limits of a request, the step's own where it gives them.
    pub(crate) fn limits(
        &self,
        timeout_ms: Option<u64>,
        max_bytes: Option<u64>,
        max_redirects: Option<u32>,
    ) -> Limits {
        let d = self.decl.as_ref();
        Limits {
            timeout: Duration::from_millis(
                timeout_ms
                    .or(d.and_then(|c| c.timeout_ms))
                    .unwrap_or(DEFAULT_TIMEOUT_MS),
            ),
            max_bytes: max_bytes
                .or(d.and_then(|c| c.max_response_bytes))
                .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            max_redirects: max_redirects
                .or(d.and_then(|c| c.max_redirects))
                .unwrap_or(DEFAULT_MAX_REDIRECTS),
        }
    }
}

/// The clients of a process, by connection.
#[derive(Default)]
pub(crate) struct Clients {
    by_key: Mutex<HashMap<String, Arc<Conn>>>,
}

impl Clients {
    /// The client for connection `name` of a flow's `declared`
    /// connections, or for requests without one.
    pub(crate) fn get(
        &self,
        declared: &BTreeMap<String, Value>,
        name: Option<&str>,
    ) -> Result<Arc<Conn>, ActionError> {
        let decl =
            match name {
                None => None,
                Some(n) => Some(declared.get(n).ok_or_else(|| {
                    ActionError::flow(format!("no connection `{n}` in the flow"))
                })?),
            };
        let key = match (name, decl) {
            (Some(n), Some(d)) => format!("{n}\n{d}"),
            _ => String::new(),
        };
        let mut map = self
            .by_key
            .lock()
            .map_err(|_| ActionError::external("the HTTP clients are poisoned"))?;
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let conn = match (name, decl) {
            (Some(n), Some(d)) => {
                let c = HttpConnection::of(d, n)?;
                let base = crate::connection::web_url(&c.base_url)
                    .map_err(|e| ActionError::flow(format!("connection `{n}`: {e}")))?;
                let allowed = Allowed(Arc::new(c.allow_private_hosts.iter().cloned().collect()));
                Conn {
                    client: build(&allowed)?,
                    allowed,
                    decl: Some(c),
                    base: Some(base),
                    tokens: Tokens::default(),
                }
            }
            _ => {
                let allowed = Allowed::default();
                Conn {
                    client: build(&allowed)?,
                    allowed,
                    decl: None,
                    base: None,
                    tokens: Tokens::default(),
                }
            }
        };
        let conn = Arc::new(conn);
        map.insert(key, conn.clone());
        Ok(conn)
    }
}

/// rustls on ring with the Mozilla roots (built once).
fn tls() -> Result<rustls::ClientConfig, ActionError> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(config)
        })
        .clone()
        .map_err(|e| {
            ActionError::new(
                sluice_action::Blame::Bug,
                format!("TLS could not be set up: {e}"),
            )
        })
}

fn build(allowed: &Allowed) -> Result<reqwest::Client, ActionError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls()?)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(allowed.clone())))
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            ActionError::new(
                sluice_action::Blame::Bug,
                format!("the HTTP client could not be built: {e}"),
            )
        })
}
