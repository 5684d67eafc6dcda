//! `notify`: a notification to a person, delivered to the inbox of the UI
//! and `GET /api/notifications` (as Directus's "Send Notification"):
//!
//! ```yaml
//! - key: tell
//!   type: notify
//!   options:
//!     role: operator            # or user: ada (a token's name)
//!     subject: "Order {{ .orderId }} needs a look"
//!     message: "{{ .items | length }} lines, total {{ .total }}"
//! ```
//!
//! A role reaches every token of that role or above. The notification's id
//! is the step attempt's idempotency key: a step run again after a crash
//! sends it once. The step's result is `{id, user, role, subject}`.

pub use crate::action::{Inbox, Note};
use crate::{Action, ActionCx, ActionError, Outcome};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// `notify`.
pub struct Notify;

/// Options of `notify`: `user` or `role`, a subject and a message.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyOptions {
    /// A token's name: the notification is for that user.
    #[serde(default)]
    pub user: Option<String>,
    /// `viewer`, `operator` or `admin`: for every token of that role or above.
    #[serde(default)]
    pub role: Option<String>,
    /// The subject.
    pub subject: String,
    /// The message (a value that is not a string is written as JSON).
    #[serde(default)]
    pub message: serde_json::Value,
}

impl Action for Notify {
    const KIND: &'static str = "notify";
    type Options = NotifyOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: NotifyOptions,
    ) -> Result<Outcome, ActionError> {
        let role = match options.role.as_deref() {
            None => None,
            Some(r @ ("viewer" | "operator" | "admin")) => Some(r.to_owned()),
            Some(other) => {
                return Err(ActionError::data(format!(
                    "`role` is viewer, operator or admin, not `{other}`"
                )));
            }
        };
        let user = options.user.filter(|u| !u.trim().is_empty());
        if user.is_some() == role.is_some() {
            return Err(ActionError::flow(
                "a notification is for a `user` (a token's name) or a `role`, one of them",
            ));
        }
        if options.subject.trim().is_empty() {
            return Err(ActionError::data("the notification's `subject` is empty"));
        }
        let message = match options.message {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let id = if cx.idempotency_key.is_empty() {
            uuid_like(cx.run_id, cx.step_key)
        } else {
            cx.idempotency_key.to_owned()
        };
        let note = Note {
            id: id.clone(),
            user: user.clone(),
            role: role.clone(),
            subject: options.subject.clone(),
            message,
            run_id: cx.run_id.to_owned(),
            step_key: cx.step_key.to_owned(),
        };
        let Some(inbox) = cx.inbox else {
            return Err(ActionError::flow(
                "notifications need a store to keep them; this run has none",
            ));
        };
        inbox.send(note).await?;
        Ok(Outcome::value(json!({
            "id": id,
            "user": user,
            "role": role,
            "subject": options.subject,
        })))
    }
}

/// An id for a notification of a run that is not recorded (an import's
/// record): the run, the step and the time.
fn uuid_like(run: &str, step: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{run}/{step}/{now}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<Note>>);

    impl Inbox for Kept {
        fn send(&self, note: Note) -> crate::BoxFuture<'_, Result<bool, ActionError>> {
            Box::pin(async move {
                let mut kept = self.0.lock().map_err(|_| ActionError::flow("poisoned"))?;
                let new = !kept.iter().any(|n| n.id == note.id);
                if new {
                    kept.push(note);
                }
                Ok(new)
            })
        }
    }

    async fn notify(options: Value, inbox: Option<&Kept>) -> Result<Outcome, ActionError> {
        let inbox = inbox.map(|i| i as &dyn Inbox);
        crate::testing::run_step("notify", "tell", options, json!({}), BTreeMap::new(), inbox).await
    }

    #[tokio::test]
    async fn a_notification_goes_to_a_user_or_a_role_once_per_attempt() {
        let kept = Kept::default();
        let to_ops = json!({"role": "operator", "subject": "Look", "message": {"n": 1}});
        let out = notify(to_ops.clone(), Some(&kept)).await.expect("sent");
        assert_eq!(
            out.payload,
            Some(json!({"id": "r/tell/0/1", "user": null, "role": "operator", "subject": "Look"}))
        );
        notify(to_ops, Some(&kept)).await.expect("sent again");
        let notes = kept.0.lock().expect("kept").clone();
        assert_eq!(notes.len(), 1, "the same attempt sends once");
        assert_eq!(notes[0].message, r#"{"n":1}"#);
        for (bad, blame) in [
            (json!({"subject": "x"}), crate::Blame::Flow),
            (
                json!({"user": "ada", "role": "admin", "subject": "x"}),
                crate::Blame::Flow,
            ),
            (json!({"role": "boss", "subject": "x"}), crate::Blame::Data),
            (json!({"user": "ada", "subject": " "}), crate::Blame::Data),
        ] {
            let e = notify(bad.clone(), Some(&kept)).await.expect_err("refused");
            assert_eq!(e.blame, blame, "{bad}: {e}");
        }
        let e = notify(json!({"user": "ada", "subject": "x"}), None)
            .await
            .expect_err("no store");
        assert!(e.to_string().contains("store"), "{e}");
    }
}
