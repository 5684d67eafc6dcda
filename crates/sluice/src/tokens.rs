//! `sluice tokens`: the API's tokens. A token is printed once, when it is
//! made; the store keeps its hash, its name and its role.

use crate::{INVALID, StoreArg, open_store};
use clap::Subcommand;
use sluice_server::auth::{Role, new_token};
use sluice_store::{ApiToken, Store, StoreError, now_micros};

#[derive(Subcommand)]
pub(crate) enum TokensCommand {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// Who uses it (unique).
        name: String,
        /// `viewer` (reads flows and runs), `operator` (also starts,
        /// retries, resumes and cancels runs) or `admin` (also reloads).
        #[arg(long)]
        role: String,
        /// How long it is valid: a number and `d`, `h`, `m` or `s`
        /// (`90d`); without it, until it is revoked.
        #[arg(long, value_parser = lifetime)]
        expires_in: Option<i64>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the tokens: name, role, made, expiry, revoked.
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Revoke a token: it is refused from now on.
    Revoke {
        /// Its name.
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// A lifetime such as `90d`, `12h`, `30m` or `45s`, in microseconds.
fn lifetime(text: &str) -> Result<i64, String> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let secs: i64 = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "`{text}` is not a lifetime: a number and d, h, m or s (90d)"
            ));
        }
    };
    n.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(secs)?.checked_mul(1_000_000))
        .ok_or_else(|| format!("`{text}` is not a lifetime: a number and d, h, m or s (90d)"))
}

fn time(us: i64) -> String {
    crate::show::timestamp(us)
}

/// Keep a token's making or revoking in the audit, as done by the user of
/// the command line.
async fn audit(store: &sluice_store::AnyStore, action: &str, name: &str, role: &str) {
    let entry = sluice_store::AuditEntry {
        at: now_micros(),
        user: std::env::var("USER").ok(),
        role: None,
        ip: None,
        action: action.to_owned(),
        target: Some(name.to_owned()),
        details: if role.is_empty() {
            serde_json::json!({"via": "cli"})
        } else {
            serde_json::json!({"via": "cli", "role": role})
        },
    };
    if let Err(e) = store.audit(&entry).await {
        eprintln!("warning: the audit of `{action}` was not written: {e}");
    }
}

pub(crate) async fn tokens(command: TokensCommand) -> u8 {
    match command {
        TokensCommand::Create {
            name,
            role,
            expires_in,
            store,
        } => {
            let Some(role) = Role::parse(&role) else {
                eprintln!("error: unknown role `{role}` (expected viewer, operator or admin)");
                return INVALID;
            };
            let store = match open_store(&store.store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            let (token, hash) = match new_token() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return crate::FAILED;
                }
            };
            let t = ApiToken {
                name: name.clone(),
                role: role.as_str().to_owned(),
                hash,
                created_at: now_micros(),
                revoked_at: None,
                expires_at: expires_in.map(|d| now_micros().saturating_add(d)),
            };
            match store.create_token(&t).await {
                Ok(()) => {
                    audit(&store, "token.create", &name, role.as_str()).await;
                    println!("{token}");
                    eprintln!(
                        "token `{name}` ({}) made: it is shown this once; give it as `Authorization: Bearer TOKEN`",
                        role.as_str()
                    );
                    0
                }
                Err(e @ StoreError::TokenExists(_)) => {
                    eprintln!("error: {e}");
                    INVALID
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    crate::FAILED
                }
            }
        }
        TokensCommand::List { store } => {
            let store = match open_store(&store.store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.tokens().await {
                Ok(all) => {
                    for t in all {
                        let revoked = t
                            .revoked_at
                            .map_or(String::new(), |r| format!("  revoked {}", time(r)));
                        let expires = match t.expires_at {
                            Some(e) if e <= now_micros() => format!("  expired {}", time(e)),
                            Some(e) => format!("  expires {}", time(e)),
                            None => String::new(),
                        };
                        println!(
                            "{:<20} {:<9} made {}{expires}{revoked}",
                            t.name,
                            t.role,
                            time(t.created_at)
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    crate::FAILED
                }
            }
        }
        TokensCommand::Revoke { name, store } => {
            let store = match open_store(&store.store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.revoke_token(&name).await {
                Ok(true) => {
                    audit(&store, "token.revoke", &name, "").await;
                    eprintln!("token `{name}` revoked");
                    0
                }
                Ok(false) => {
                    eprintln!("error: no active token `{name}`");
                    INVALID
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    crate::FAILED
                }
            }
        }
    }
}
