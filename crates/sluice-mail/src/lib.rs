//! The mail connector: connections of `type: smtp` and the `mail.send`
//! step, through lettre on rustls (ring, the Mozilla roots). A message goes
//! to its recipients with a text, Markdown or HTML body (Markdown is sent
//! as HTML with its source as the text alternative); the SMTP server's
//! refusals are blamed on who must act: a refused address on the data,
//! refused credentials on the flow, a busy or unreachable server on the
//! outside system.

mod connection;
mod send;

pub use connection::{Security, SmtpConnection};
pub use send::{MailSend, MailSendOptions};

use sluice_action::Registry;

/// Add the mail step types and connection type to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(MailSend);
    registry.add_connection("smtp", connection::check, |_, _, _| Vec::new());
}

/// The core step types and triggers with mail's: what a program or test
/// that sends mail and uses no other connector needs.
pub fn registry() -> Registry {
    let mut r = Registry::core();
    register(&mut r);
    r
}
