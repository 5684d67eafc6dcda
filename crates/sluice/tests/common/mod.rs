//! What the tests of this crate share: json-server, a REST API from the
//! npm registry (`.ci/run` installs it and sets `SLUICE_JSON_SERVER`),
//! started on a free port, and a plain HTTP/1.1 request to it; and
//! `sluice serve` itself ([`serve`]).
#![allow(dead_code)] // each test binary uses some of these

pub mod serve;

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// json-server, killed when dropped.
pub struct JsonServer {
    child: Child,
    pub port: u16,
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn json_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_JSON_SERVER") {
        return Some(PathBuf::from(p));
    }
    let found = Command::new("json-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("json-server"))
}

/// json-server on a free port serving `db` (written to `dir`), or `None`
/// when it is not installed (a failure under CI).
pub fn start_json_server(dir: &Path, db: &Value) -> Option<JsonServer> {
    let Some(bin) = json_server_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "json-server is needed under CI: set SLUICE_JSON_SERVER (.ci/run installs it)"
        );
        eprintln!(
            "skipped the REST half: json-server is not installed (npm install json-server@0.17.4)"
        );
        return None;
    };
    let db_text = db.to_string();
    let db = dir.join("db.json");
    std::fs::write(&db, db_text).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .arg(&db)
        .args([
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let t = Instant::now();
    while http(port, "GET", "/customers", None).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "json-server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(JsonServer { child, port })
}

/// One request to json-server: status and JSON body.
pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            r = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}
