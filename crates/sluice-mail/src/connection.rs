//! A connection of `type: smtp`: the server, how the connection is
//! secured, the account and the default sender. Its values may take
//! `${env:NAME}`; it is never part of a run's record.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_action::{ActionError, check_options, expand};
use sluice_model::OptionIssue;

/// How the connection to the server is secured.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Security {
    /// A plain connection upgraded with STARTTLS, which must succeed
    /// (default; port 587).
    #[default]
    Starttls,
    /// TLS from the start (port 465).
    Tls,
    /// No encryption (port 25): for a relay on the same machine or network.
    None,
}

/// A connection of `type: smtp`, as written in the flow.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SmtpConnection {
    /// `smtp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The server's host name.
    pub host: String,
    /// Its port (default: 587 with STARTTLS, 465 with TLS, 25 without).
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Security,
    /// The account's user name, when the server asks for one.
    pub username: Option<String>,
    /// The account's password.
    pub password: Option<String>,
    /// The sender when a step gives none (`Name <address>` or an address).
    pub from: Option<String>,
    /// Time a message may take to send, in milliseconds (default 30,000).
    pub timeout_ms: Option<u64>,
    /// A PEM file of certificates to trust besides the Mozilla roots (the
    /// certificate authority of a mail server inside a company).
    pub ca_file: Option<String>,
}

/// `sluice check`'s view of an smtp connection.
pub(crate) fn check(v: &Value) -> Vec<OptionIssue> {
    let mut issues = check_options::<SmtpConnection>(v);
    let has = |k: &str| v.get(k).is_some();
    if has("username") != has("password") {
        issues.push(OptionIssue {
            path: vec![sluice_expr::PathSeg::Key(
                if has("username") {
                    "username"
                } else {
                    "password"
                }
                .into(),
            )],
            message: "`username` and `password` go together".into(),
            at_key: true,
            help: None,
        });
    }
    issues
}

impl SmtpConnection {
    /// Connection `name` of a flow's `declared` connections, with
    /// `${env:…}` replaced.
    pub(crate) fn of(declared: &Value, name: &str) -> Result<Self, ActionError> {
        let mut v = declared.clone();
        if let Value::Object(m) = &mut v {
            for value in m.values_mut() {
                if let Value::String(s) = value {
                    *s = expand(s)
                        .map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))?;
                }
            }
        }
        serde_json::from_value(v)
            .map_err(|e| ActionError::flow(format!("connection `{name}`: {e}")))
    }

    /// The port, given or the security's usual one.
    pub(crate) fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_connection_is_checked() {
        assert!(check(&json!({"type": "smtp", "host": "mail.example.com", "username": "u", "password": "${env:P}"})).is_empty());
        let msgs: Vec<String> =
            check(&json!({"type": "smtp", "host": "h", "security": "ssl", "username": "u"}))
                .into_iter()
                .map(|i| i.message)
                .collect();
        assert!(
            msgs.iter().any(|m| m.contains("unknown variant `ssl`")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("go together")), "{msgs:?}");
    }

    #[test]
    fn ports_follow_security() {
        let c = |s: &str| {
            SmtpConnection::of(&json!({"type": "smtp", "host": "h", "security": s}), "m")
                .unwrap()
                .port()
        };
        assert_eq!((c("starttls"), c("tls"), c("none")), (587, 465, 25));
    }
}
