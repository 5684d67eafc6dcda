//! `sluice serve` started from a test: the real binary on a loopback port
//! (port 0, the port read from what it prints), plain HTTP/1.1 requests to
//! it, and the one shape of its error answers.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sluice serve`, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<String>>,
}

impl Serve {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Start with more arguments of `sluice serve`.
    pub fn start_with(dir: &Path, more: &[&str]) -> Self {
        let store: &[&str] = if more.contains(&"--store") {
            &[]
        } else {
            &["--store", "store.db"]
        };
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
            .current_dir(dir)
            .args(["serve", "--flows", "flows", "--listen", "127.0.0.1:0"])
            .args(store)
            .args(["--grace-secs", "10"])
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut port = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(addr) = line.split("http://127.0.0.1:").nth(1) {
                port = addr.trim().parse().unwrap();
                break;
            }
        }
        assert!(
            port > 0,
            "the server did not start:\n{}",
            log.lock().unwrap()
        );
        let l = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, port, log }
    }

    /// One request; the answer's status, headers (lower-case names) and JSON body.
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        try_call(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.call(
            "POST",
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, &[], "")
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the run ends; its record.
    pub fn ended(&self, run: &str) -> Value {
        let t = Instant::now();
        loop {
            let r = self.get(&format!("/api/runs/{run}"));
            if r.body["status"] != "running" && r.body["status"] != "waiting" {
                return r.body;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "run {run} did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// SIGTERM, then wait for the exit; the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        self.child.wait().unwrap().code()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn try_call(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body_text = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let body = if body_text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body_text).unwrap_or(Value::String(body_text))
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Every error answer has the one shape.
pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.body["code"], code, "{r:?}");
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    assert!(r.body["details"].is_object(), "{r:?}");
}
