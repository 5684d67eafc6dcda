//! `mail.send` against a real SMTP server on loopback: aiosmtpd (from PyPI;
//! `.ci/run` installs it) storing what it receives in a maildir, read back
//! here. Without aiosmtpd the test says so and skips, except under CI.

use serde_json::{Value, json};
use sluice_action::Blame;
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_store::{RunStatus, SqliteStore};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// aiosmtpd, killed when dropped.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Start aiosmtpd, or `None` when it is not installed (a failure under CI).
fn smtp(dir: &Path) -> Option<Smtp> {
    smtp_with(dir, &[])
}

/// aiosmtpd with more arguments (its TLS).
fn smtp_with(dir: &Path, more: &[&str]) -> Option<Smtp> {
    let present = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "aiosmtpd is not installed (python3 -m pip install aiosmtpd)"
        );
        eprintln!("skipped: aiosmtpd is not installed (python3 -m pip install aiosmtpd)");
        return None;
    }
    let maildir = dir.join("maildir");
    let port = free_port();
    let child = Command::new("python3")
        .env("PYTHONPATH", dir)
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(more)
        .args(if more.contains(&"-c") {
            Vec::new()
        } else {
            vec!["-c", "aiosmtpd.handlers.Mailbox", maildir.to_str().unwrap()]
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "aiosmtpd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Smtp {
        child,
        port,
        maildir,
    })
}

/// The messages in the maildir, as text.
fn received(maildir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(maildir.join(sub)) {
            for e in entries.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    out
}

async fn run(text: &str, input: Value) -> RunResult {
    let registry = Arc::new(sluice_mail::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store, registry.clone());
    let flow =
        sluice_model::load("m.yaml", text, registry.as_ref()).unwrap_or_else(|d| panic!("{d}"));
    let req = RunRequest {
        input: Some(sluice_expr::data::into_val(input)),
        ..Default::default()
    };
    engine.run(&flow, req).await.unwrap()
}

fn flow(port: u16, security: &str, options: &str) -> String {
    format!(
        "id: m\nunmappedResults: replace\nconnections:\n  mail: {{type: smtp, host: 127.0.0.1, port: {port}, security: {security}, from: \"Sluice <bot@example.com>\"}}\nsteps:\n  - {{key: send, type: mail.send, options: {options}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arrives_with_its_headers_and_body() {
    let dir = std::env::temp_dir().join(format!("sluice-smtp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some(server) = smtp(&dir) else { return };
    let text = flow(
        server.port,
        "none",
        "{connection: mail, to: [\"{{ .name }} <{{ .email }}>\", ops@example.com], cc: audit@example.com, bcc: [hidden@example.com], replyTo: help@example.com, subject: \"Order {{ .order }} shipped\", markdown: \"# Hello {{ .name }}\\n\\nYour order **{{ .order }}** is on its way.\"}",
    );
    let r = run(
        &text,
        json!({"name": "Ada Lovelace", "email": "ada@example.com", "order": "SO-7"}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    let out = r.output_json().unwrap();
    assert_eq!(
        out["to"],
        json!([
            "ada@example.com",
            "ops@example.com",
            "audit@example.com",
            "hidden@example.com"
        ])
    );
    assert!(
        out["response"].as_str().unwrap().starts_with("250"),
        "{out}"
    );
    let got = received(&server.maildir);
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    for want in [
        "From: Sluice <bot@example.com>",
        "To: \"Ada Lovelace\" <ada@example.com>, ops@example.com",
        "Cc: audit@example.com",
        "Reply-To: help@example.com",
        "Subject: Order SO-7 shipped",
        "Content-Type: multipart/alternative",
        "# Hello Ada Lovelace",
        "<h1>Hello Ada Lovelace</h1>",
        "<strong>SO-7</strong>",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    // Bcc goes in the envelope (aiosmtpd writes it as X-RcptTo), never in
    // a header.
    assert!(!m.contains("Bcc:"), "Bcc shown:\n{m}");
    assert!(
        m.contains(
            "X-RcptTo: ada@example.com, ops@example.com, audit@example.com, hidden@example.com"
        ),
        "{m}"
    );
    let id = out["messageId"].as_str().unwrap();
    assert!(!id.is_empty() && m.contains(id), "{id} not in\n{m}");

    // STARTTLS demanded of a server that offers none: nothing is sent.
    let text = flow(
        server.port,
        "starttls",
        "{connection: mail, to: a@example.com, subject: s, text: t}",
    );
    let r = run(&text, json!({})).await;
    let f = r.failure.unwrap();
    assert_eq!(f.blame, Blame::Flow, "{}", f.message);
    let says = format!(
        "the mail server 127.0.0.1:{} does not do what the connection asks",
        server.port
    );
    assert!(
        f.message.contains(&says) && f.message.contains("STARTTLS is not supported"),
        "{}",
        f.message
    );
    assert_eq!(received(&server.maildir).len(), 1);
    // An address from the data that is not one.
    let text = flow(
        server.port,
        "none",
        "{connection: mail, to: \"{{ .to }}\", subject: s, text: t}",
    );
    let r = run(&text, json!({"to": "nobody at all"})).await;
    let f = r.failure.unwrap();
    assert_eq!(
        (f.blame, r.status),
        (Blame::Data, RunStatus::Incident),
        "{}",
        f.message
    );
    assert!(
        f.message
            .contains("`nobody at all` is not an e-mail address"),
        "{}",
        f.message
    );
    // No server there.
    let text = flow(
        free_port(),
        "none",
        "{connection: mail, to: a@example.com, subject: s, text: t}",
    );
    let f = run(&text, json!({})).await.failure.unwrap();
    assert_eq!(f.blame, Blame::External);
    assert!(f.message.contains("could not be reached"), "{}", f.message);
}

/// A certificate authority and a certificate it signed for 127.0.0.1, made
/// with openssl in `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !openssl(&["version"]) {
        assert!(std::env::var("CI").is_err(), "openssl is needed under CI");
        eprintln!("skipped: openssl is not installed");
        return None;
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice Test CA",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.csr",
            "-subj",
            "/CN=127.0.0.1",
        ][..],
        &[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ][..],
    ] {
        assert!(openssl(args), "openssl {args:?}");
    }
    Some((
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_tls_deliver_to_a_server_the_connection_trusts() {
    let dir = std::env::temp_dir().join(format!("sluice-smtp-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some((ca, cert, key)) = certificates(&dir) else {
        return;
    };
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let starttls_dir = dir.join("starttls");
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&starttls_dir).unwrap();
    std::fs::create_dir_all(&tls_dir).unwrap();
    let Some(starttls) = smtp_with(&starttls_dir, &["--tlscert", cert, "--tlskey", key]) else {
        return;
    };
    let Some(tls) = smtp_with(&tls_dir, &["--smtpscert", cert, "--smtpskey", key]) else {
        return;
    };
    let send = |port: u16, security: &str, ca: Option<&Path>| {
        let ca = ca.map_or(String::new(), |p| format!(", caFile: \"{}\"", p.display()));
        format!(
            "id: m\nconnections:\n  mail: {{type: smtp, host: 127.0.0.1, port: {port}, security: {security}, from: bot@example.com{ca}}}\nsteps:\n  - {{key: send, type: mail.send, options: {{connection: mail, to: a@example.com, subject: over {security}, text: t}}}}\n"
        )
    };
    for (server, security) in [(&starttls, "starttls"), (&tls, "tls")] {
        let r = run(&send(server.port, security, Some(&ca)), json!({})).await;
        assert_eq!(
            r.status,
            RunStatus::Succeeded,
            "{security}: {:?}",
            r.failure
        );
        let got = received(&server.maildir);
        assert_eq!(got.len(), 1, "{security}");
        assert!(
            got[0].contains(&format!("Subject: over {security}")),
            "{}",
            got[0]
        );
        // Without the authority, the server's certificate is not trusted.
        let r = run(&send(server.port, security, None), json!({})).await;
        let f = r.failure.unwrap();
        assert_eq!(f.blame, Blame::External, "{security}: {}", f.message);
        assert!(
            f.message.contains("could not be reached over TLS")
                || f.message.contains("certificate"),
            "{security}: {}",
            f.message
        );
        assert_eq!(received(&server.maildir).len(), 1, "{security}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_the_server_refuses_is_the_datas_fault() {
    let dir = std::env::temp_dir().join(format!("sluice-smtp-refuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A handler that knows no `nobody@`, and takes every other message.
    std::fs::write(
        dir.join("refusing.py"),
        "class Refusing:\n    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):\n        if address.startswith('nobody@'):\n            return '550 5.1.1 no such user'\n        envelope.rcpt_tos.append(address)\n        return '250 OK'\n\n    async def handle_DATA(self, server, session, envelope):\n        return '250 OK'\n",
    )
    .unwrap();
    let Some(server) = smtp_with(&dir, &["-c", "refusing.Refusing"]) else {
        return;
    };
    let text = flow(
        server.port,
        "none",
        "{connection: mail, to: \"{{ .to }}\", subject: s, text: t}",
    );
    let r = run(&text, json!({"to": "ada@example.com"})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    let r = run(&text, json!({"to": "nobody@example.com"})).await;
    let f = r.failure.unwrap();
    assert_eq!(
        (r.status, f.blame),
        (RunStatus::Incident, Blame::Data),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("refused the message") && f.message.contains("no such user"),
        "{}",
        f.message
    );
}
