//! `mail.send`: one message to its recipients through a connection of
//! `type: smtp`, its every part templated.

use crate::connection::{Security, SmtpConnection};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_action::{Action, ActionCx, ActionError, Blame, Outcome};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::time::Duration;

/// `mail.send`.
pub struct MailSend;

/// One address or a list of them.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Addresses {
    /// One (`Name <address>` or an address).
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Default for Addresses {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl Addresses {
    fn list(&self) -> Vec<&str> {
        match self {
            Self::One(a) => vec![a.as_str()],
            Self::Many(l) => l.iter().map(String::as_str).collect(),
        }
    }
}

/// Options of `mail.send`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MailSendOptions {
    /// A connection of `type: smtp`.
    pub connection: String,
    /// The sender (default: the connection's `from`).
    pub from: Option<String>,
    /// The recipients.
    pub to: Addresses,
    /// Copies.
    #[serde(default)]
    pub cc: Addresses,
    /// Blind copies.
    #[serde(default)]
    pub bcc: Addresses,
    /// Where answers go.
    pub reply_to: Option<String>,
    /// The subject.
    pub subject: String,
    /// The body as text.
    pub text: Option<String>,
    /// The body as Markdown (sent as HTML, with the source as its text).
    pub markdown: Option<String>,
    /// The body as HTML (with `text`, if given, as its alternative).
    pub html: Option<String>,
}

impl Action for MailSend {
    const KIND: &'static str = "mail.send";
    const CONNECTION: Option<&'static str> = Some("smtp");
    type Options = MailSendOptions;

    fn check(options: &Value) -> Vec<OptionIssue> {
        let has = |k: &str| options.get(k).is_some_and(|v| !v.is_null());
        let issue = |key: &str, message: &str| OptionIssue {
            path: vec![PathSeg::Key(key.into())],
            message: message.into(),
            at_key: true,
            help: None,
        };
        let mut issues = Vec::new();
        if has("markdown") && has("html") {
            issues.push(issue("html", "give `markdown` or `html`, not both"));
        }
        if has("markdown") && has("text") {
            issues.push(issue(
                "text",
                "`markdown` is sent with its own source as the text: `text` cannot go with it",
            ));
        }
        if !has("text") && !has("markdown") && !has("html") && has("subject") {
            issues.push(issue(
                "subject",
                "the message has no body: give `text`, `markdown` or `html`",
            ));
        }
        if options
            .get("to")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            issues.push(issue("to", "`to` names no recipient"));
        }
        issues
    }

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        o: MailSendOptions,
    ) -> Result<Outcome, ActionError> {
        let declared = cx.connections.get(&o.connection).ok_or_else(|| {
            ActionError::flow(format!("no connection `{}` in the flow", o.connection))
        })?;
        let conn = SmtpConnection::of(declared, &o.connection)?;
        let message = message(&o, &conn)?;
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_owned();
        let to: Vec<String> = message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        let transport = transport(&conn)?;
        let answer = transport
            .send(message)
            .await
            .map_err(|e| refused(&conn, &e))?;
        let said: Vec<&str> = answer.message().collect();
        Ok(Outcome::value(json!({
            "messageId": message_id,
            "to": to,
            "response": format!("{} {}", answer.code(), said.join(" ")).trim().to_owned(),
        })))
    }
}

/// An address of field `field`.
fn mailbox(field: &str, text: &str) -> Result<Mailbox, ActionError> {
    text.trim().parse().map_err(|e| {
        ActionError::data(format!(
            "`{field}`: `{text}` is not an e-mail address ({e})"
        ))
    })
}

fn message(o: &MailSendOptions, conn: &SmtpConnection) -> Result<Message, ActionError> {
    let from = o.from.as_deref().or(conn.from.as_deref()).ok_or_else(|| {
        ActionError::flow("the message has no sender: give `from` on the step or on its connection")
    })?;
    let mut b = Message::builder()
        .from(mailbox("from", from)?)
        .subject(o.subject.clone())
        .message_id(None);
    let to = o.to.list();
    if to.is_empty() {
        return Err(ActionError::data("`to` names no recipient"));
    }
    for a in to {
        b = b.to(mailbox("to", a)?);
    }
    for a in o.cc.list() {
        b = b.cc(mailbox("cc", a)?);
    }
    for a in o.bcc.list() {
        b = b.bcc(mailbox("bcc", a)?);
    }
    if let Some(r) = &o.reply_to {
        b = b.reply_to(mailbox("replyTo", r)?);
    }
    let built = match (&o.text, &o.markdown, &o.html) {
        (_, Some(md), None) => {
            b.multipart(MultiPart::alternative_plain_html(md.clone(), markdown(md)))
        }
        (Some(text), None, Some(html)) => b.multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        )),
        (None, None, Some(html)) => b.singlepart(SinglePart::html(html.clone())),
        (Some(text), None, None) => b.singlepart(SinglePart::plain(text.clone())),
        (None, None, None) => {
            return Err(ActionError::flow(
                "the message has no body: give `text`, `markdown` or `html`",
            ));
        }
        (_, Some(_), Some(_)) => {
            return Err(ActionError::flow("give `markdown` or `html`, not both"));
        }
    };
    built.map_err(|e| ActionError::data(format!("the message cannot be made: {e}")))
}

/// Markdown as HTML (CommonMark with tables and strikethrough).
fn markdown(md: &str) -> String {
    use pulldown_cmark::{Options, Parser, html};
    let mut out = String::new();
    html::push_html(
        &mut out,
        Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH),
    );
    out
}

fn transport(c: &SmtpConnection) -> Result<AsyncSmtpTransport<Tokio1Executor>, ActionError> {
    let tls = || {
        let mut b = TlsParameters::builder(c.host.clone());
        if let Some(path) = &c.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ActionError::flow(format!("`caFile` {path}: {e}")))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                ActionError::flow(format!("`caFile` {path} holds no certificate: {e}"))
            })?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|e| ActionError::flow(format!("TLS to `{}`: {e}", c.host)))
    };
    let mode = match c.security {
        Security::Starttls => Tls::Required(tls()?),
        Security::Tls => Tls::Wrapper(tls()?),
        Security::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.host.clone())
        .port(c.port())
        .tls(mode)
        .timeout(Some(Duration::from_millis(c.timeout_ms.unwrap_or(30_000))));
    if let (Some(u), Some(p)) = (&c.username, &c.password) {
        b = b.credentials(Credentials::new(u.clone(), p.clone()));
    }
    Ok(b.build())
}

/// The server's refusal, blamed on who must act.
fn refused(c: &SmtpConnection, e: &lettre::transport::smtp::Error) -> ActionError {
    let code = e.status().map(|s| s.to_string());
    let at = format!("the mail server {}:{}", c.host, c.port());
    let blame = match code.as_deref() {
        Some("530" | "534" | "535" | "538") => Blame::Flow,
        // The server does not do what the connection asks (STARTTLS).
        None if e.is_client() => Blame::Flow,
        Some(_) if e.is_permanent() => Blame::Data,
        _ => Blame::External,
    };
    let what = match blame {
        Blame::Flow if e.is_client() => {
            "does not do what the connection asks (`security: starttls` needs a server that offers STARTTLS; `tls` is TLS from the start)"
        }
        Blame::Flow => "refused the account (check the connection's username and password)",
        Blame::Data => "refused the message",
        _ if e.is_transient() => "refused the message for now",
        _ if e.is_tls() => "could not be reached over TLS",
        _ if e.is_timeout() => "did not answer in time",
        _ => "could not be reached",
    };
    ActionError::new(blame, format!("{at} {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: Value) -> MailSendOptions {
        serde_json::from_value(v).unwrap()
    }

    fn conn() -> SmtpConnection {
        SmtpConnection::of(
            &json!({"type": "smtp", "host": "h", "from": "Sluice <bot@example.com>"}),
            "m",
        )
        .unwrap()
    }

    #[test]
    fn messages_are_made_from_the_options() {
        let o = opts(
            json!({"connection": "m", "to": ["Ada <ada@example.com>", "bob@example.com"], "cc": "c@example.com",
            "subject": "Hi é", "markdown": "# Title\n\n*bold*"}),
        );
        let m = message(&o, &conn()).unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("From: Sluice <bot@example.com>"), "{text}");
        assert!(
            text.contains("To: Ada <ada@example.com>, bob@example.com"),
            "{text}"
        );
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("<h1>Title</h1>"), "{text}");
        assert_eq!(m.envelope().to().len(), 3);
        let e = message(
            &opts(json!({"connection": "m", "to": "not an address", "subject": "s", "text": "t"})),
            &conn(),
        )
        .unwrap_err();
        assert_eq!(e.blame, Blame::Data);
        assert!(
            e.message
                .starts_with("`to`: `not an address` is not an e-mail address"),
            "{e}"
        );
    }

    #[test]
    fn bodies_are_checked_when_the_flow_loads() {
        let issues =
            MailSend::check(&json!({"to": [], "subject": "s", "markdown": "m", "html": "h"}));
        let msgs: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
        assert!(
            msgs.contains(&"give `markdown` or `html`, not both"),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"`to` names no recipient"), "{msgs:?}");
        let issues = MailSend::check(&json!({"to": "a@b.c", "subject": "s"}));
        assert_eq!(
            issues[0].message,
            "the message has no body: give `text`, `markdown` or `html`"
        );
    }
}
