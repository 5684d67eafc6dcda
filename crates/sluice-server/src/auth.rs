//! Who may call the API: bearer tokens with a role. A token is 32 random
//! bytes, printed once when it is made (`sluice tokens create`); the store
//! keeps its SHA-256. `viewer` reads flows and runs; `operator` also starts,
//! retries, resumes and cancels runs; `admin` also saves and reloads the flows.
//! Webhooks, `/events`, `/api/health`, `/api/openapi.json` and `/metrics`
//! are not API routes a token guards (health and metrics can be, with
//! `--auth-health-metrics`).
//!
//! Every request carries its [`Caller`]: the token that let it in, the
//! address it came from and its user agent; runs it starts record it as
//! `$accountability`, and what it does to runs and flows goes to the audit.

use crate::error::ApiError;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_store::AuditEntry;

/// What a token may do, each role all that the one before may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads flows and runs.
    Viewer,
    /// Also starts, retries, resumes and cancels runs.
    Operator,
    /// Also saves and reloads the flows.
    Admin,
}

impl Role {
    /// The role of its name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// A new token and its hash (what the store keeps).
pub fn new_token() -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    let token = format!(
        "slc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&token);
    Ok((token, hash))
}

/// The SHA-256 of a token, in hex.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The role a request to `path` with `method` needs; `None`: no token.
pub(crate) fn needed(method: &Method, path: &str, health_and_metrics: bool) -> Option<Role> {
    match path {
        "/api/health" | "/metrics" => health_and_metrics.then_some(Role::Viewer),
        "/api/openapi.json" => None,
        "/api/reload" | "/api/audit" => Some(Role::Admin),
        // Anyone reads their own notifications.
        p if p.starts_with("/api/notifications/") => Some(Role::Viewer),
        // Saving a flow file.
        p if p.starts_with("/api/flows/") && *method == Method::PUT => Some(Role::Admin),
        p if p.starts_with("/api/") => {
            let changes =
                *method != Method::GET && *method != Method::HEAD && p != "/api/flows/check";
            Some(if changes {
                Role::Operator
            } else {
                Role::Viewer
            })
        }
        _ => None,
    }
}

/// Who makes a request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Caller {
    /// The name of the token that let the request in.
    pub user: Option<String>,
    /// Its role.
    pub role: Option<Role>,
    /// The address the request came from.
    pub ip: Option<String>,
    /// Its `User-Agent`.
    pub user_agent: Option<String>,
}

impl Caller {
    /// The caller of a request (before its token is checked).
    pub(crate) fn of(req: &axum::extract::Request) -> Self {
        Self {
            user: None,
            role: None,
            ip: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: req
                .headers()
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(512).collect()),
        }
    }

    /// `$accountability` of a run it starts by `trigger`, in Directus's
    /// shape, with `more` added.
    pub(crate) fn accountability(&self, trigger: &str, more: Value) -> Value {
        let mut a = json!({
            "user": self.user,
            "role": self.role.map(Role::as_str),
            "admin": self.role == Some(Role::Admin),
            "ip": self.ip,
            "userAgent": self.user_agent,
            "trigger": trigger,
        });
        if let (Value::Object(a), Value::Object(more)) = (&mut a, more) {
            a.extend(more);
        }
        a
    }

    /// The audit's entry of `action` on `target`.
    pub(crate) fn entry(&self, action: &str, target: Option<&str>, details: Value) -> AuditEntry {
        AuditEntry {
            at: sluice_store::now_micros(),
            user: self.user.clone(),
            role: self.role.map(|r| r.as_str().to_owned()),
            ip: self.ip.clone(),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            details,
        }
    }
}

/// `401`: no token, or one that is not (or no longer) valid.
pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// `403`: a token whose role is not enough.
pub(crate) fn forbidden(name: &str, has: Role, needs: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "token `{name}` is a {}; this route needs an {} or more",
            has.as_str(),
            needs.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_roles_of_what_they_do() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needed(&get, "/api/runs", false), Some(Role::Viewer));
        assert_eq!(needed(&post, "/api/flows/check", false), Some(Role::Viewer));
        assert_eq!(
            needed(&post, "/api/runs/x/cancel", false),
            Some(Role::Operator)
        );
        assert_eq!(
            needed(&post, "/api/flows/x/runs", false),
            Some(Role::Operator)
        );
        assert_eq!(needed(&post, "/api/reload", false), Some(Role::Admin));
        assert_eq!(needed(&get, "/api/audit", false), Some(Role::Admin));
        assert_eq!(needed(&get, "/api/health", false), None);
        assert_eq!(needed(&get, "/api/health", true), Some(Role::Viewer));
        assert_eq!(needed(&get, "/api/openapi.json", true), None);
        assert_eq!(needed(&post, "/hooks/x", true), None);
        assert_eq!(needed(&post, "/events", true), None);
    }

    #[test]
    fn tokens_are_random_and_kept_as_hashes() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("slc_") && a.len() > 40, "{a}");
        assert_eq!(ha, hash(&a));
        assert_eq!(ha.len(), 64);
        assert!(!ha.contains(&a));
    }
}
