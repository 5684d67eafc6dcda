//! Who may call the API: bearer tokens with a role. A token is 32 random
//! bytes, printed once when it is made (`sluice tokens create`); the store
//! keeps its SHA-256. `viewer` reads flows and runs; `operator` also starts,
//! retries, resumes and cancels runs; `admin` also reloads the flows.
//! Webhooks, `/events`, `/api/health`, `/api/openapi.json` and `/metrics`
//! are not API routes a token guards (health and metrics can be, with
//! `--auth-health-metrics`).

use crate::error::ApiError;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// What a token may do, each role all that the one before may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads flows and runs.
    Viewer,
    /// Also starts, retries, resumes and cancels runs.
    Operator,
    /// Also reloads the flows.
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
        "/api/reload" => Some(Role::Admin),
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
