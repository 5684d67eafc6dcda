//! `sluice serve` as a user meets it: the real binary on a loopback port,
//! driven over HTTP. Webhooks, manual runs, the runs API, reload, schedules
//! across restarts and processes, and a `kill -9` in the middle of a load
//! after which every accepted run completes exactly once.

mod common;

use common::serve::{Reply, Serve, assert_error, try_call};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    dir
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join("flows").join(file), text).unwrap();
}

/// `sluice serve` with `more` where it must not start: its exit code and
/// what it said.
fn serve_refused(dir: &Path, listen: &str, more: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(dir)
        .args(["serve", "--flows", "flows", "--listen", listen])
        .args(more)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ORDER: &str = r#"
id: order
trigger: {type: webhook, path: order}
unmappedResults: replace
steps:
  - key: map
    type: transform
    options:
      value: {orderId: "{{ .orderId }}", sum: "{{ .totalPrice }}"}
"#;

#[test]
fn webhooks_answer_and_record_their_runs() {
    let dir = temp("hooks");
    write(&dir, "order.yaml", ORDER);
    write(
        &dir,
        "later.yaml",
        r#"
id: later
trigger: {type: webhook, path: orders/later, async: true, maxBodyBytes: 200}
steps:
  - key: nap
    type: sleep
    options: {ms: 50}
  - key: done
    type: transform
    options: {value: {seen: "{{ .orderId }}"}}
"#,
    );
    write(
        &dir,
        "lookup.yaml",
        r#"
id: lookup
trigger:
  type: webhook
  path: lookup
  method: GET
  response: {body: '{id: $trigger.query.id, tags: $trigger.query.tag}', status: 203, headers: {x-flow: lookup}}
steps:
  - key: ok
    type: log
    options: {message: "looked up {{ $trigger.query.id }}"}
"#,
    );
    write(
        &dir,
        "refuse.yaml",
        r#"
id: refuse
trigger: {type: webhook, path: refuse}
steps:
  - key: refuse_it
    type: throw
    options: {message: "order {{ .orderId }} refused"}
"#,
    );
    let s = Serve::start(&dir);

    // Synchronous: the answer is $last, and the run is recorded.
    let r = s.call(
        "POST",
        "/hooks/order",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer secret"),
            ("x-api-key", "k-secret"),
            ("x-hub-signature-256", "sha256=abc"),
            ("x-shop", "berlin"),
        ],
        r#"{"orderId":"ORD-1","totalPrice":129.95}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"orderId": "ORD-1", "sum": 129.95}));
    let run = r.header("x-sluice-run").unwrap().to_owned();
    let rec = s.get(&format!("/api/runs/{run}")).body;
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["flowId"], "order");
    assert_eq!(rec["trigger"]["method"], "POST");
    assert_eq!(rec["trigger"]["path"], "/hooks/order");
    assert_eq!(rec["trigger"]["body"]["orderId"], "ORD-1");
    assert_eq!(rec["trigger"]["headers"]["x-shop"], "berlin");
    for secret in ["authorization", "x-api-key", "x-hub-signature-256"] {
        assert!(rec["trigger"]["headers"].get(secret).is_none(), "{secret}");
    }
    assert!(!rec.to_string().contains("k-secret"));
    assert_eq!(rec["stepLog"].as_array().unwrap().len(), 1);
    assert_eq!(rec["stepLog"][0]["key"], "map");

    // A form body is an object, like a query.
    let r = s.call(
        "POST",
        "/hooks/order",
        &[("content-type", "application/x-www-form-urlencoded")],
        "orderId=F-2&totalPrice=3",
    );
    assert_eq!(r.body, json!({"orderId": "F-2", "sum": "3"}));
    // One whose escapes are not UTF-8 is refused, not changed.
    let r = s.call(
        "POST",
        "/hooks/order",
        &[("content-type", "application/x-www-form-urlencoded")],
        "orderId=F-%FF&totalPrice=3",
    );
    assert_error(&r, 400, "bad_request");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not UTF-8")
    );

    // Bad input: a clear error, in the one shape, and no run.
    let before = s.get("/api/runs?flow=order").body.as_array().unwrap().len();
    let r = s.call(
        "POST",
        "/hooks/order",
        &[("content-type", "application/json")],
        "{\"orderId\": ",
    );
    assert_error(&r, 400, "bad_request");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_error(
        &s.call(
            "POST",
            "/hooks/order",
            &[("content-type", "image/png")],
            "x",
        ),
        415,
        "unsupported_media_type",
    );
    let big = json!({"orderId": "x".repeat(300)});
    let r = s.post("/hooks/orders/later", big);
    assert_error(&r, 413, "body_too_large");
    assert_eq!(r.body["details"]["limitBytes"], 200);
    assert_eq!(
        s.get("/api/runs?flow=order").body.as_array().unwrap().len(),
        before
    );
    assert_error(&s.post("/hooks/nowhere", json!({})), 404, "not_found");
    assert_error(&s.get("/hooks/order"), 405, "method_not_allowed");

    // Asynchronous: 202 with the id of a recorded run, which then ends.
    let r = s.post("/hooks/orders/later", json!({"orderId": "L-1"}));
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.body["runId"].as_str().unwrap().to_owned();
    let rec = s.ended(&id);
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["output"]["seen"], "L-1");

    // GET with a query, a chosen answer, status and headers.
    let r = s.get("/hooks/lookup?id=7&tag=a&tag=b");
    assert_eq!(r.status, 203, "{r:?}");
    assert_eq!(r.body, json!({"id": "7", "tags": ["a", "b"]}));
    assert_eq!(r.header("x-flow"), Some("lookup"));

    // A run that fails answers 500 with its id and step.
    let r = s.post("/hooks/refuse", json!({"orderId": "R-9"}));
    assert_error(&r, 500, "run_failed");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("order R-9 refused")
    );
    assert_eq!(r.body["details"]["step"], "refuse_it");
    let failed = s.get(&format!(
        "/api/runs/{}",
        r.body["details"]["runId"].as_str().unwrap()
    ));
    assert_eq!(failed.body["status"], "failed");

    // Metrics count the runs per flow.
    let m = s.get("/metrics").body;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("sluice_runs_started_total{flow=\"order\"} 2"),
        "{m}"
    );
    assert!(m.contains("sluice_step_duration_seconds_bucket{flow=\"later\",step=\"nap\""));
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn the_api_starts_lists_cancels_retries_resumes_and_reloads() {
    let dir = temp("api");
    write(&dir, "order.yaml", ORDER);
    write(
        &dir,
        "greet.yaml",
        r#"
id: greet
steps:
  - key: hello
    type: transform
    options: {value: {greeting: "hello {{ .name }}"}}
"#,
    );
    write(
        &dir,
        "slow.yaml",
        r#"
id: slow
trigger: {type: manual}
steps:
  - key: nap
    type: sleep
    options: {ms: 1500}
  - key: after
    type: log
    options: {message: "woke up"}
"#,
    );
    let s = Serve::start(&dir);
    assert_eq!(s.get("/api/health").body["flows"], 3);

    // Manual runs: waited for, or 202.
    let r = s.post("/api/flows/greet/runs?wait=true", json!({"name": "ada"}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["output"]["greeting"], "hello ada");
    assert_error(&s.post("/api/flows/nope/runs", json!({})), 404, "not_found");
    assert_error(
        &s.post("/api/flows/order/runs", json!({})),
        409,
        "not_manual",
    );
    for q in ["wait=maybe", "wait=", "wait=true&wait=false"] {
        assert_error(
            &s.post(&format!("/api/flows/greet/runs?{q}"), json!({})),
            400,
            "bad_request",
        );
    }
    assert_error(&s.get("/api/runs?limit=1&limit=2"), 400, "bad_request");

    // An incident (a template over data that does not fit), resumed with a patch.
    let r = s.post(
        "/api/flows/greet/runs?wait=true",
        json!(["not", "an object"]),
    );
    assert_eq!(r.body["status"], "incident", "{r:?}");
    let inc = r.body["runId"].as_str().unwrap().to_owned();
    let r = s.post(
        &format!("/api/runs/{inc}/resume?wait=true"),
        json!({"name": "bo"}),
    );
    assert_eq!(r.body["status"], "succeeded", "{r:?}");
    assert_eq!(r.body["output"]["greeting"], "hello bo");
    assert_error(
        &s.post(&format!("/api/runs/{inc}/resume"), json!({})),
        409,
        "conflict",
    );

    // Retry: a new run with the same input.
    let r = s.post(&format!("/api/runs/{inc}/retry?wait=true"), Value::Null);
    assert_eq!(r.body["status"], "incident", "the same bad input: {r:?}");
    let again = s.get(&format!("/api/runs/{}", r.body["runId"].as_str().unwrap()));
    assert_eq!(again.body["accountability"]["retryOf"], inc.as_str());

    // Cancel a sleeping run: it stops before its next step.
    let r = s.post("/api/flows/slow/runs", Value::Null);
    assert_eq!(r.status, 202);
    let slow = r.body["runId"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/health").body["runsInFlight"], 1);
    let r = s.post(&format!("/api/runs/{slow}/cancel"), Value::Null);
    assert_eq!(r.status, 200, "{r:?}");
    // The run's drive wakes from its sleep, sees the cancel and ends.
    let t = Instant::now();
    while s.get("/api/health").body["runsInFlight"] != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the cancelled run is still driven"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rec = s.get(&format!("/api/runs/{slow}")).body;
    assert_eq!(rec["status"], "cancelled");
    let keys: Vec<&str> = rec["stepLog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(!keys.contains(&"after"), "{rec}");
    assert_error(
        &s.post(&format!("/api/runs/{slow}/cancel"), Value::Null),
        409,
        "conflict",
    );
    assert_error(
        &s.post("/api/runs/nope/cancel", Value::Null),
        404,
        "not_found",
    );

    // Listing with filters.
    let all = s.get("/api/runs?flow=greet").body;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let inc_only = s.get("/api/runs?flow=greet&status=incident").body;
    assert_eq!(inc_only.as_array().unwrap().len(), 1);
    let newest = all[0]["startedAt"].as_str().unwrap();
    let since = s.get(&format!("/api/runs?since={newest}")).body;
    assert!(
        since
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["startedAt"].as_str() >= Some(newest))
    );
    assert_error(&s.get("/api/runs?status=sleeping"), 400, "bad_request");
    assert_error(&s.get("/api/runs?since=yesterday"), 400, "bad_request");
    assert_error(&s.get("/api/runs/nope"), 404, "not_found");

    // Flows: list, one, check.
    let flows = s.get("/api/flows").body;
    assert_eq!(flows.as_array().unwrap().len(), 3);
    let one = s.get("/api/flows/order").body;
    assert_eq!(one["trigger"]["type"], "webhook");
    assert!(one["source"].as_str().unwrap().contains("id: order"));
    let c = s.call(
        "POST",
        "/api/flows/check",
        &[],
        "id: x\nsteps:\n  - key: a\n    type: nope\n",
    );
    assert_eq!(c.body["valid"], false);
    assert_eq!(c.body["problems"][0]["line"], 4, "{c:?}");

    // Reload: a bad file changes nothing; a good one is served.
    write(
        &dir,
        "bad.yaml",
        "id: bad\ntrigger: {type: schedule, cron: '0 0 30 2 *'}\nsteps: []\n",
    );
    let r = s.post("/api/reload", Value::Null);
    assert_error(&r, 422, "invalid_flows");
    assert!(
        r.body["details"].to_string().contains("never fires"),
        "{r:?}"
    );
    assert_eq!(s.get("/api/health").body["flows"], 3);
    std::fs::remove_file(dir.join("flows/bad.yaml")).unwrap();
    write(
        &dir,
        "pong.yaml",
        "id: pong\ntrigger: {type: webhook, path: ping}\nsteps:\n  - {key: p, type: transform, options: {value: pong}}\n",
    );
    let r = s.post("/api/reload", Value::Null);
    assert_eq!(r.body["flows"], 4, "{r:?}");
    assert_eq!(s.post("/hooks/ping", Value::Null).body, "pong");
    // SIGHUP reloads too.
    std::fs::remove_file(dir.join("flows/pong.yaml")).unwrap();
    s.signal("-HUP");
    let t = Instant::now();
    while s.get("/api/health").body["flows"] != 3 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Every path of the OpenAPI document is served.
    let doc = s.get("/api/openapi.json").body;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path == "/api/stream" {
            // A stream that does not end; the UI's browser test reads it.
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let p = path.replace("{path}", "order").replace("{id}", "nope");
            let r = s.call(&method.to_uppercase(), &p, &[], "");
            let fell = r.body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("nothing at"));
            assert!(!fell, "{method} {path} is in the document but not served");
        }
    }
    assert_error(&s.get("/api/nothing"), 404, "not_found");
    assert_eq!(s.stop(), Some(0));
}

/// A schedule's fire: its `scheduledAt`, and whether it was missed.
type Fire = (String, bool);

/// The `scheduledAt` of every run of `flow`, oldest first.
fn fires(s: &Serve, flow: &str) -> Vec<Fire> {
    let runs = s.get(&format!("/api/runs?flow={flow}&limit=0")).body;
    let mut v: Vec<(String, bool)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let d = s
                .get(&format!("/api/runs/{}", r["id"].as_str().unwrap()))
                .body;
            (
                d["trigger"]["scheduledAt"].as_str().unwrap().to_owned(),
                d["trigger"]["missed"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn schedules_fire_once_per_time_across_processes_and_restarts() {
    let dir = temp("schedule");
    write(
        &dir,
        "tick.yaml",
        r#"
id: tick
trigger: {type: schedule, cron: "* * * * * *", missed: runOnce}
steps:
  - key: log
    type: log
    options: {message: "tick at {{ $trigger.scheduledAt }}"}
"#,
    );
    // A disabled flow's schedule never fires.
    write(
        &dir,
        "tock.yaml",
        "id: tock\nenabled: false\ntrigger: {type: schedule, cron: \"* * * * * *\"}\nsteps:\n  - {key: log, type: log, options: {message: tock}}\n",
    );
    // Two servers on one store: each second fires once.
    let a = Serve::start(&dir);
    let b = Serve::start(&dir);
    let wait_for = |s: &Serve, what: &str, done: &dyn Fn(&[Fire]) -> bool| {
        let t = Instant::now();
        loop {
            let all = fires(s, "tick");
            if done(&all) {
                return all;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{what}: {all:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&a, "three fires", &|all| all.len() >= 3);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    // No server runs for two seconds and more: fires are missed.
    std::thread::sleep(Duration::from_millis(2500));
    // Restarted after missing two fires or more: one run for the latest.
    let c = Serve::start(&dir);
    wait_for(&c, "the missed fire", &|all| all.iter().any(|(_, m)| *m));
    let all = fires(&c, "tick");
    let times: Vec<&String> = all.iter().map(|(t, _)| t).collect();
    let mut unique = times.clone();
    unique.dedup();
    assert_eq!(times, unique, "a time fired twice: {all:?}");
    assert!(all.len() >= 4, "{all:?}");
    let missed: Vec<_> = all.iter().filter(|(_, m)| *m).collect();
    assert_eq!(missed.len(), 1, "{all:?}");
    assert_eq!(fires(&c, "tock"), []);
    // A fire may be under way right now: wait for it to end.
    let t = Instant::now();
    while !c
        .get("/api/runs?flow=tick&status=running")
        .body
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a tick run does not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let runs = c.get("/api/runs?flow=tick&limit=0").body;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "succeeded"),
        "{runs}"
    );
}

#[test]
fn kill_9_during_a_load_then_restart_every_run_completes_once() {
    let dir = temp("kill");
    write(
        &dir,
        "work.yaml",
        r#"
id: work
trigger: {type: webhook, path: work, async: true}
steps:
  - key: take
    type: transform
    options: {value: {n: "{{ .n }}"}}
  - key: nap
    type: sleep
    options: {ms: 300}
  - key: done
    type: transform
    options: {value: {n: "{{ .n }}", done: true}}
"#,
    );
    let s = Serve::start(&dir);
    let port = s.port;
    // Four clients post until the server dies under them.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let body = json!({"n": c * 100_000 + i}).to_string();
                    match try_call(port, "POST", "/hooks/work", &[], &body) {
                        Ok(r) if r.status == 202 => accepted
                            .lock()
                            .unwrap()
                            .push(r.body["runId"].as_str().unwrap().to_owned()),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    while accepted.lock().unwrap().len() < 150 {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", s.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    s.signal("-KILL");
    for c in clients {
        c.join().unwrap();
    }
    drop(s);
    let accepted = accepted.lock().unwrap().clone();

    let s = Serve::start(&dir);
    assert!(s.log().contains("continuing"), "{}", s.log());
    let t = Instant::now();
    // Runs that were asleep at the kill wake when their sleep is due.
    let unfinished = |status: &str| {
        !s.get(&format!("/api/runs?status={status}&limit=1"))
            .body
            .as_array()
            .unwrap()
            .is_empty()
    };
    while unfinished("running") || unfinished("waiting") {
        assert!(t.elapsed() < Duration::from_secs(60), "runs still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = s.get("/api/runs?flow=work&limit=0").body;
    let runs = runs.as_array().unwrap();
    // Every accepted run is in the store; a run recorded just before the
    // kill whose 202 never left is there too, and completes like the rest.
    assert!(runs.len() >= accepted.len());
    for id in &accepted {
        assert!(
            runs.iter().any(|r| &r["id"] == id),
            "accepted run {id} is lost"
        );
    }
    for r in runs {
        let d = s
            .get(&format!("/api/runs/{}", r["id"].as_str().unwrap()))
            .body;
        assert_eq!(d["status"], "succeeded", "{d}");
        let keys: Vec<&str> = d["stepLog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["take", "nap", "done"],
            "each step recorded once: {d}"
        );
        assert_eq!(d["output"]["n"], d["trigger"]["body"]["n"]);
    }
    eprintln!(
        "serve kill test: {} accepted before SIGKILL, {} runs recorded, all succeeded once after restart",
        accepted.len(),
        runs.len()
    );
    assert_eq!(s.stop(), Some(0));
}

/// Wait until the run is at `status`; its record.
fn reach(s: &Serve, run: &str, status: &str) -> Value {
    let t = Instant::now();
    loop {
        let r = s.get(&format!("/api/runs/{run}"));
        if r.body["status"] == status {
            return r.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "run {run} is not {status}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn structured(s: &Serve, event: Value) -> Reply {
    s.call(
        "POST",
        "/events",
        &[("content-type", "application/cloudevents+json")],
        &event.to_string(),
    )
}

#[test]
fn events_waits_and_flow_steps() {
    let dir = temp("events");
    write(
        &dir,
        "signup.yaml",
        r#"
id: signup
trigger: {type: cloudevent, eventType: user.created, eventDataFilter: {data: .user, toStateData: .who}}
steps:
  - {key: hello, type: transform, options: {value: {greeting: "hello {{ .who.name }}"}}}
"#,
    );
    write(
        &dir,
        "order.yaml",
        r#"
id: order
trigger: {type: webhook, path: order}
steps:
  - key: paid
    type: wait
    options:
      eventType: order.paid
      source: /payments
      correlation: {orderid: "{{ .id }}"}
    eventDataFilter: {data: .amount, toStateData: .paid}
  - {key: ship, type: transform, options: {value: {shipped: true}}}
"#,
    );
    write(
        &dir,
        "late.yaml",
        r#"
id: late
trigger: {type: webhook, path: late}
unmappedResults: replace
steps:
  - {key: w, type: wait, options: {eventType: never, timeoutMs: 300}, reject: gave_up}
  - {key: got, type: transform, options: {value: got it}, resolve: null}
  - {key: gave_up, type: transform, options: {value: "gave up: {{ $w.error }}"}}
"#,
    );
    write(
        &dir,
        "parent.yaml",
        r#"
id: parent
trigger: {type: manual}
steps:
  - {key: total, type: flow, options: {flow: sum, input: {items: "{{ .items }}"}}, actionDataFilter: {toStateData: .sum}}
  - {key: later, type: flow, options: {flow: sum, input: {items: [1]}, wait: false}, actionDataFilter: {toStateData: .queued}}
"#,
    );
    write(
        &dir,
        "sum.yaml",
        r#"
id: sum
trigger: {type: flow}
unmappedResults: replace
steps:
  - {key: add, type: transform, options: {value: {total: "{{ .items | add }}", by: "{{ $trigger.flow }}"}}}
"#,
    );
    let s = Serve::start(&dir);

    // An event starts the flows whose trigger it matches.
    let r = structured(
        &s,
        json!({"specversion": "1.0", "id": "e-1", "source": "/accounts", "type": "user.created", "data": {"user": {"name": "Ada"}}}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["started"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["resumed"], json!([]));
    let run = r.body["started"][0]["runId"].as_str().unwrap().to_owned();
    let rec = s.ended(&run);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["output"]["greeting"], "hello Ada");
    assert_eq!(rec["trigger"]["id"], "e-1");
    // Sent again (its sender did not hear the answer): the first answer,
    // and no second run.
    let again = structured(
        &s,
        json!({"specversion": "1.0", "id": "e-1", "source": "/accounts", "type": "user.created", "data": {"user": {"name": "Ada"}}}),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["started"], r.body["started"]);
    let signups = s.get("/api/runs?flow=signup").body;
    assert_eq!(signups.as_array().unwrap().len(), 1, "{signups}");

    // Bad events: not JSON, missing attributes, no CloudEvent at all,
    // nothing that takes it.
    let bad = s.call(
        "POST",
        "/events",
        &[("content-type", "application/cloudevents+json")],
        "{",
    );
    assert_error(&bad, 400, "bad_request");
    assert_error(
        &structured(&s, json!({"specversion": "1.0", "id": "x", "type": "t"})),
        400,
        "bad_request",
    );
    assert_error(
        &s.post("/events", json!({"a": 1})),
        415,
        "unsupported_media_type",
    );
    let none = structured(
        &s,
        json!({"specversion": "1.0", "id": "e-2", "source": "/x", "type": "nobody.cares"}),
    );
    assert_error(&none, 422, "no_match");

    // A run waits for its event (the webhook answers 202: it is suspended).
    let r = s.post("/hooks/order", json!({"id": "o-1"}));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["status"], "waiting");
    let order = r.body["runId"].as_str().unwrap().to_owned();
    reach(&s, &order, "waiting");
    let paid = |orderid: &str, source: &str| {
        s.call(
            "POST",
            "/events",
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", &format!("pay-{orderid}")),
                ("ce-source", source),
                ("ce-type", "order.paid"),
                ("ce-orderid", orderid),
            ],
            r#"{"amount": 42}"#,
        )
    };
    // Another order's event, or the right order from another source, wakes nothing.
    assert_error(&paid("o-2", "/payments"), 422, "no_match");
    assert_error(&paid("o-1", "/elsewhere"), 422, "no_match");
    let r = paid("o-1", "/payments");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        r.body["resumed"],
        json!([{"flow": "order", "runId": order}])
    );
    let rec = reach(&s, &order, "succeeded");
    assert_eq!(
        rec["output"],
        json!({"id": "o-1", "paid": 42, "shipped": true})
    );
    assert_eq!(rec["stepLog"][0]["result"]["data"], json!({"amount": 42}));
    // The same event again (a sender's retry) is a duplicate: it wakes
    // nobody again.
    let r = paid("o-1", "/payments");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["duplicate"], true);
    assert_eq!(r.body["resumed"], json!([]));

    // A wait that times out takes its failure path.
    let r = s.post("/hooks/late", json!({}));
    assert_eq!(r.status, 202);
    let late = r.body["runId"].as_str().unwrap().to_owned();
    let rec = reach(&s, &late, "succeeded");
    assert_eq!(
        rec["output"],
        "gave up: no event that matches arrived within the timeout of step `w`"
    );

    // A flow step runs another flow and waits for its output, or not.
    let r = s.post(
        "/api/flows/parent/runs?wait=true",
        json!({"items": [1, 2, 3]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "succeeded", "{r:?}");
    let parent = r.body["runId"].as_str().unwrap().to_owned();
    assert_eq!(r.body["output"]["sum"], json!({"total": 6, "by": "parent"}));
    let queued = r.body["output"]["queued"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(queued, format!("{parent}-later-1"));
    let rec = s.ended(&queued);
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["output"]["total"], 1);
    let sums = s.get("/api/runs?flow=sum").body;
    assert_eq!(sums.as_array().unwrap().len(), 2);
    // A flow whose trigger is `flow` does not start from the API.
    assert_error(&s.post("/api/flows/sum/runs", json!({})), 409, "not_manual");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn suspended_runs_survive_kill_9_and_wake_on_time() {
    let dir = temp("suspended");
    write(
        &dir,
        "nap.yaml",
        r#"
id: nap
trigger: {type: webhook, path: nap, async: true}
steps:
  - {key: nap, type: sleep, options: {ms: 1500}}
  - {key: done, type: transform, options: {value: {done: true}}}
"#,
    );
    write(
        &dir,
        "order.yaml",
        r#"
id: order
trigger: {type: webhook, path: order, async: true}
steps:
  - {key: paid, type: wait, options: {eventType: order.paid, correlation: {orderid: "{{ .id }}"}}}
  - {key: ship, type: transform, options: {value: {shipped: true}}}
"#,
    );
    let s = Serve::start(&dir);
    let nap = s.post("/hooks/nap", json!({})).body["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = s.post("/hooks/order", json!({"id": "o-9"})).body["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    reach(&s, &nap, "waiting");
    reach(&s, &order, "waiting");
    s.signal("-KILL");
    drop(s);

    let s = Serve::start(&dir);
    assert!(
        s.log().contains("1 suspended run(s) wake when due"),
        "{}",
        s.log()
    );
    let rec = reach(&s, &nap, "succeeded");
    let step = &rec["stepLog"][0];
    assert_eq!(step["key"], "nap");
    assert!(
        step["durationMs"].as_f64().unwrap() >= 1500.0,
        "the sleep lasted its whole time across the restart: {step}"
    );
    assert_eq!(rec["stepLog"].as_array().unwrap().len(), 2);
    // The run waiting for its event still does, and takes it now.
    assert_eq!(
        s.get(&format!("/api/runs/{order}")).body["status"],
        "waiting"
    );
    let r = structured(
        &s,
        json!({"specversion": "1.0", "id": "p-9", "source": "/pay", "type": "order.paid", "orderid": "o-9"}),
    );
    assert_eq!(r.body["resumed"][0]["runId"], json!(order), "{r:?}");
    let rec = reach(&s, &order, "succeeded");
    assert_eq!(rec["output"]["shipped"], true);
    assert_eq!(s.stop(), Some(0));
}

/// `$trigger.row.ref` of every run of `flow` (a poll's), sorted, once each
/// has ended; and whether all succeeded.
fn polled_refs(s: &Serve, flow: &str) -> (Vec<String>, bool) {
    let runs = s.get(&format!("/api/runs?flow={flow}&limit=0")).body;
    let mut ok = true;
    let mut refs: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let d = s.ended(r["id"].as_str().unwrap());
            ok &= d["status"] == "succeeded";
            d["trigger"]["row"]["ref"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    refs.sort();
    (refs, ok)
}

/// Wait until `flow` has `n` runs; their refs.
fn wait_runs(s: &Serve, flow: &str, n: usize) -> Vec<String> {
    let t = Instant::now();
    loop {
        let (refs, ok) = polled_refs(s, flow);
        if refs.len() >= n {
            assert!(ok, "a run of `{flow}` failed: {refs:?}\n{}", s.log());
            return refs;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "`{flow}` has {refs:?}, not {n} runs\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn data_hooks_and_polls_on_the_real_server() {
    let dir = temp("hooks");
    let db = dir.join("app.db");
    let conn = format!(
        "connections:\n  app: {{url: \"sqlite://{}?mode=rwc\"}}\n",
        db.display()
    );
    write(
        &dir,
        "setup.yaml",
        &format!(
            "id: setup\ntrigger: {{type: manual}}\n{conn}steps:\n  - {{key: o, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT UNIQUE, total INT, at TEXT)\"}}}}\n  - {{key: a, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE audit (id INTEGER PRIMARY KEY, ref TEXT)\"}}}}\n"
        ),
    );
    write(
        &dir,
        "order.yaml",
        &format!(
            "id: order\ntrigger: {{type: webhook, path: order}}\nunmappedResults: replace\n{conn}steps:\n  - {{key: c, type: sql.create, options: {{connection: app, collection: orders, properties: {{ref: \"{{{{ .ref }}}}\", total: \"{{{{ .total }}}}\", at: \"{{{{ .at }}}}\"}}}}}}\n"
        ),
    );
    write(
        &dir,
        "check.yaml",
        "id: check\ntrigger: {type: event, when: before, on: [create], collections: [orders]}\nsteps:\n  - {key: ok, type: condition, options: {filter: \".total >= 0\"}, resolve: null, reject: refuse}\n  - {key: refuse, type: throw, options: {message: \"a negative total\"}}\n",
    );
    write(
        &dir,
        "audit.yaml",
        &format!(
            "id: audit\ntrigger: {{type: event, on: [create], collections: [orders]}}\n{conn}steps:\n  - {{key: a, type: sql.create, options: {{connection: app, collection: audit, properties: {{ref: \"{{{{ $trigger.row.ref }}}}\"}}}}}}\n"
        ),
    );
    write(
        &dir,
        "watch.yaml",
        &format!(
            "id: watch\ntrigger: {{type: poll, connection: app, collection: orders, timestampField: at, intervalMs: 100, pageSize: 2}}\n{conn}steps:\n  - {{key: seen, type: log, options: {{message: \"order {{{{ .ref }}}} at {{{{ $trigger.polledAt }}}}\"}}}}\n"
        ),
    );
    let s = Serve::start(&dir);
    let r = s.post("/api/flows/setup/runs", json!({}));
    assert_eq!(
        s.ended(r.body["runId"].as_str().unwrap())["status"],
        "succeeded"
    );
    let order = |s: &Serve, r: &str, total: i64, sec: u32| {
        s.post(
            "/hooks/order",
            json!({"ref": r, "total": total, "at": format!("2026-01-01T00:00:{sec:02}Z")}),
        )
    };
    for (r, total, sec) in [("A", 1, 1), ("C", 3, 3), ("D", 4, 4)] {
        let reply = order(&s, r, total, sec);
        assert_eq!(reply.status, 200, "{reply:?}\n{}", s.log());
        assert_eq!(reply.body["ref"], r);
    }
    // The before-hook refuses: the webhook's run fails, nothing is written.
    let refused = order(&s, "B", -1, 2);
    assert!(refused.status == 422, "{refused:?}");
    let run = refused.body["details"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = s.ended(&run);
    assert!(
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused by before-hook flow `check`")
                && e.contains("a negative total")),
        "{d}"
    );
    // After-hooks audit each created order; the poll starts one run per
    // row, one page of two per interval.
    assert_eq!(wait_runs(&s, "audit", 3).len(), 3);
    assert_eq!(wait_runs(&s, "watch", 3), ["A", "C", "D"]);
    // kill -9 and a restart: the snapshot holds, no row runs twice.
    s.signal("-KILL");
    drop(s);
    let s = Serve::start(&dir);
    let reply = order(&s, "E", 5, 5);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(wait_runs(&s, "watch", 4), ["A", "C", "D", "E"]);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(polled_refs(&s, "watch").0, ["A", "C", "D", "E"]);
    assert_eq!(wait_runs(&s, "audit", 4).len(), 4);
    assert_eq!(s.stop(), Some(0));
}

/// The server's process, run until it stops by itself: whether it ended
/// abnormally (a signal, such as the abort of a stack overflow) within
/// `limit`.
fn crashes_within(dir: &Path, limit: Duration) -> bool {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(dir)
        .args(["serve", "--flows", "flows", "--listen", "127.0.0.1:0"])
        .args(["--store", "store.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return !status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn a_run_that_crashes_the_server_at_every_start_is_failed_after_three() {
    // A step that aborts the process (no expression does any more: a test
    // hook of debug builds stands for a bug); the run was under way, so each
    // start continues it and aborts again, until it has been under way at
    // three stops: the next start fails it instead, and the server stays up.
    let dir = temp("crashloop");
    write(
        &dir,
        "boom.yaml",
        r#"
id: boom
trigger: {type: webhook, path: boom, async: true}
steps:
  - {key: deep, type: transform, options: {value: "{{ . }}"}}
"#,
    );
    // SAFETY: set before any server starts; the servers inherit it. No
    // other test of this binary reads it.
    unsafe { std::env::set_var("SLUICE_TEST_ABORT_IN_STEP", "deep") };
    let mut s = Serve::start(&dir);
    // The answer may not come: the process can stop first.
    let _ = try_call(
        s.port,
        "POST",
        "/hooks/boom",
        &[("content-type", "application/json")],
        "{}",
    );
    let t = Instant::now();
    while s.child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s);
    for start in ["second", "third"] {
        assert!(
            crashes_within(&dir, Duration::from_secs(60)),
            "the {start} start continues the run and stops"
        );
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("SLUICE_TEST_ABORT_IN_STEP") };
    let s = Serve::start(&dir);
    let runs = s.get("/api/runs?flow=boom").body;
    let run = runs[0]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    let d = s.ended(&run);
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped 3 times"), "{error}");
    assert_eq!(s.get("/api/health").status, 200);
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn hostile_expressions_and_payloads_fail_their_run_and_the_server_stays_up() {
    // Each of these aborted the process (a stack overflow while freeing a
    // deep value, or an allocation the machine cannot give), hung it
    // (writing out a value whose parts are shared), or took gigabytes.
    let dir = temp("hostile");
    let flows = [
        ("recurse", "{{ last(recurse([.])) | 0 }}"),
        ("fold", "{{ reduce range(1000000) as $i (null; [.]) }}"),
        ("parse", "{{ .text | fromjson }}"),
        ("repeat", "{{ \"x\" * .n }}"),
        (
            "shared",
            "{{ reduce range(.n) as $i ([1]; [., .]) | tojson | length }}",
        ),
        (
            "add",
            "{{ (\"x\" * 30000000) as $s | [$s,$s,$s,$s,$s,$s,$s,$s,$s,$s] | add | length }}",
        ),
    ];
    for (name, expr) in flows {
        write(
            &dir,
            &format!("{name}.yaml"),
            &format!(
                "id: {name}\ntrigger: {{type: webhook, path: {name}}}\nsteps:\n  - {{key: t, type: transform, options: {{value: '{expr}'}}}}\n"
            ),
        );
    }
    let s = Serve::start_with(
        &dir,
        &["--expr-timeout-ms", "20000", "--expr-memory-mb", "128"],
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        // Whichever limit it meets first (the build decides).
        (
            "recurse",
            json!({}),
            "recursed too deeply|memory budget|ran longer",
        ),
        ("fold", json!({}), "nested more than 127 levels"),
        ("parse", json!({"text": deep}), "nested 100000 levels deep"),
        (
            "repeat",
            json!({"n": 1_000_000_000_000u64}),
            "memory budget",
        ),
        ("shared", json!({"n": 40}), "memory budget"),
        ("add", json!({}), "memory budget of 128 MiB"),
    ];
    for (name, body, says) in cases {
        let r = s.post(&format!("/hooks/{name}"), body);
        assert!(r.status == 422, "{name}: {r:?}");
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(
            says.split('|').any(|says| message.contains(says)),
            "{name}: {message}"
        );
        assert_eq!(s.get("/api/health").status, 200, "{name}");
    }
    // A body nested past serde's 128 levels: a clear 400 that starts
    // nothing, counted in the metrics.
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let r = s.call(
        "POST",
        "/hooks/repeat",
        &[("content-type", "application/json")],
        &nested,
    );
    assert_error(&r, 400, "bad_request");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{r:?}"
    );
    let m = s.get("/metrics");
    let text = m.body.as_str().unwrap_or_default();
    assert!(
        text.contains("sluice_error_answers_total{code=\"bad_request\"} 1"),
        "{text}"
    );
    // What fits still runs.
    let r = s.post("/hooks/repeat", json!({"n": 3}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!("xxx"), "{r:?}");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn slow_clients_are_timed_out() {
    let dir = temp("slow");
    write(
        &dir,
        "order.yaml",
        "id: order\ntrigger: {type: webhook, path: order}\nsteps:\n  - {key: t, type: transform, options: {value: {ok: true}}}\n",
    );
    let s = Serve::start_with(
        &dir,
        &["--header-timeout-secs", "1", "--body-timeout-secs", "1"],
    );
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    };
    // What the server sends until it closes the connection (a read that
    // times out instead fails the test: the server kept it open).
    let answer = |mut c: TcpStream| {
        let mut got = Vec::new();
        match c.read_to_end(&mut got) {
            Ok(_) => String::from_utf8_lossy(&got).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                String::from_utf8_lossy(&got).into_owned()
            }
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    };
    // A client that sends nothing, or its headers a byte at a time.
    assert_eq!(answer(connect()), "");
    let mut c = connect();
    c.write_all(b"POST /hooks/order HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(answer(c), "");
    // A body that does not arrive: 408.
    let mut c = connect();
    c.write_all(b"POST /hooks/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"a\"")
        .unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    assert!(a.contains("request_timeout"), "{a}");
    // A kept-alive connection left idle after its answer is closed.
    let mut c = connect();
    c.write_all(b"POST /hooks/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // Headers past 64 KiB, or past 100 of them: 431, and closed.
    let mut c = connect();
    let big = format!(
        "GET /api/health HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 << 10)
    );
    c.write_all(big.as_bytes()).unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 431"), "{a}");
    let mut c = connect();
    let mut many = String::from("GET /api/health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    c.write_all(many.as_bytes()).unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 431"), "{a}");
    // The server still answers others.
    assert_eq!(s.get("/api/health").status, 200);
    assert_eq!(s.stop(), Some(0));
}

/// The target databases of the exactly-once test: SQLite always,
/// PostgreSQL and MariaDB when their URLs are set (as `.ci/run` sets them).
fn target_databases(dir: &Path) -> Vec<(&'static str, String)> {
    let mut dbs = vec![(
        "sqlite",
        format!("sqlite://{}?mode=rwc", dir.join("target.db").display()),
    )];
    for (name, var) in [
        ("postgres", "SLUICE_TEST_POSTGRES_URL"),
        ("mariadb", "SLUICE_TEST_MYSQL_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => dbs.push((name, url)),
            _ => assert!(std::env::var("CI").is_err(), "{var} must be set under CI"),
        }
    }
    dbs
}

#[test]
fn sql_writes_are_exactly_once_across_kill_9() {
    // Asynchronous webhooks whose runs write through sql.create, sql.update
    // and an envelope into SQLite, PostgreSQL and MariaDB, each request a
    // unique ref (a second write of a row would break a unique key); the
    // server killed with SIGKILL 20 times at varying instants under load,
    // then started again: every run succeeds and every row is there once.
    let dir = temp("exactly-once");
    let t = format!("xo_t_{}", std::process::id());
    let a = format!("xo_a_{}", std::process::id());
    let dbs = target_databases(&dir);
    // SQLite takes one writer at a time: under this load (and the other
    // tests'), a write may wait out its lock's timeout; a retry waits it out.
    let retry = "{attempts: 6, delayMs: 200}";
    for (name, url) in &dbs {
        let (t_ddl, a_ddl) = match *name {
            "sqlite" => (
                format!(
                    "CREATE TABLE {t} (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, n INT)"
                ),
                format!("CREATE TABLE {a} (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE)"),
            ),
            "postgres" => (
                format!(
                    "CREATE TABLE {t} (id SERIAL PRIMARY KEY, ref TEXT NOT NULL UNIQUE, n INT)"
                ),
                format!("CREATE TABLE {a} (id SERIAL PRIMARY KEY, ref TEXT NOT NULL UNIQUE)"),
            ),
            _ => (
                format!(
                    "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, ref VARCHAR(40) NOT NULL UNIQUE, n INT)"
                ),
                format!(
                    "CREATE TABLE {a} (id INT AUTO_INCREMENT PRIMARY KEY, ref VARCHAR(40) NOT NULL UNIQUE)"
                ),
            ),
        };
        let setup = dir.join(format!("setup-{name}.yaml"));
        std::fs::write(
            &setup,
            format!(
                "id: setup\nconnections:\n  db: {{url: \"{url}\"}}\nsteps:\n  - {{key: d1, type: sql.query, options: {{connection: db, mode: statement, query: \"DROP TABLE IF EXISTS {t}\"}}}}\n  - {{key: d2, type: sql.query, options: {{connection: db, mode: statement, query: \"DROP TABLE IF EXISTS {a}\"}}}}\n  - {{key: c1, type: sql.query, options: {{connection: db, mode: statement, query: \"{t_ddl}\"}}}}\n  - {{key: c2, type: sql.query, options: {{connection: db, mode: statement, query: \"{a_ddl}\"}}}}\n"
            ),
        )
        .unwrap();
        let o = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
            .args(["run", setup.to_str().unwrap(), "--store", "sqlite::memory:"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        write(
            &dir,
            &format!("w-{name}.yaml"),
            &format!(
                "id: w_{name}\ntrigger: {{type: webhook, path: w/{name}, async: true}}\nconnections:\n  db: {{url: \"{url}\"}}\nsteps:\n  - {{key: add, type: sql.create, options: {{connection: db, collection: {t}, properties: {{ref: \"{{{{ .ref }}}}\", n: 0}}}}, retry: {retry}}}\n  - {{key: bump, type: sql.update, options: {{connection: db, collection: {t}, criteria: {{ref: \"{{{{ .ref }}}}\"}}, properties: {{n: 1}}}}, retry: {retry}}}\n  - {{key: note, type: envelope, options: {{connection: db, patches: [{{op: create, collection: {a}, properties: {{ref: \"{{{{ .ref }}}}\"}}}}]}}, retry: {retry}}}\n"
            ),
        );
    }
    let names: Vec<&'static str> = dbs.iter().map(|(n, _)| *n).collect();
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for kill in 0..20u64 {
        let s = Serve::start(&dir);
        let port = s.port;
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (accepted, next, names) = (accepted.clone(), next.clone(), names.clone());
                std::thread::spawn(move || {
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let db = names[(n as usize + c) % names.len()];
                        let body = json!({"ref": format!("R-{n}")}).to_string();
                        match try_call(port, "POST", &format!("/hooks/w/{db}"), &[], &body) {
                            Ok(r) if r.status == 202 => accepted
                                .lock()
                                .unwrap()
                                .push(r.body["runId"].as_str().unwrap_or_default().to_owned()),
                            _ => return,
                        }
                        // A load the databases keep up with (SQLite writes
                        // one transaction at a time): what is tested is the
                        // crash, not an overload.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        // Varying instants, 0.3 to 1.2 s into the load.
        std::thread::sleep(Duration::from_millis(300 + (kill * 397) % 900));
        s.signal("-KILL");
        for c in clients {
            c.join().unwrap();
        }
    }
    let s = Serve::start(&dir);
    let t0 = Instant::now();
    let unfinished = |status: &str| {
        !s.get(&format!("/api/runs?status={status}&limit=1"))
            .body
            .as_array()
            .unwrap()
            .is_empty()
    };
    while unfinished("running") || unfinished("waiting") {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "runs still running\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let accepted = accepted.lock().unwrap().clone();
    let mut runs_of = Recorded::default();
    for name in &names {
        let runs = s.get(&format!("/api/runs?flow=w_{name}&limit=0")).body;
        for r in runs.as_array().unwrap() {
            assert_eq!(r["status"], "succeeded", "{name}: {r}");
            runs_of
                .0
                .push((name.to_string(), r["id"].as_str().unwrap().to_owned()));
        }
    }
    for id in &accepted {
        assert!(
            runs_of.0.iter().any(|(_, r)| r == id),
            "accepted run {id} is lost"
        );
    }
    // Every run's rows, once: as many rows as runs, each bumped.
    for (name, url) in &dbs {
        let runs = runs_of.0.iter().filter(|(n, _)| n == name).count();
        let count = dir.join(format!("count-{name}.yaml"));
        std::fs::write(
            &count,
            format!(
                "id: count\nunmappedResults: replace\nconnections:\n  db: {{url: \"{url}\"}}\nsteps:\n  - {{key: rows, type: sql.query, options: {{connection: db, mode: expectSingle, query: \"SELECT (SELECT COUNT(*) FROM {t}) AS t, (SELECT COUNT(*) FROM {t} WHERE n = 1) AS bumped, (SELECT COUNT(*) FROM {a}) AS a\"}}}}\n"
            ),
        )
        .unwrap();
        let o = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
            .args(["run", count.to_str().unwrap(), "--store", "sqlite::memory:"])
            .output()
            .unwrap();
        let got: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let as_n = |v: &Value| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        for col in ["t", "bumped", "a"] {
            assert_eq!(
                as_n(&got[col]),
                Some(runs as u64),
                "{name}: {col} rows against {runs} runs: {got}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    eprintln!(
        "exactly-once kill test: 20 SIGKILLs, {} accepted, {} runs recorded ({}), all succeeded, every row once",
        accepted.len(),
        runs_of.0.len(),
        names.join(", ")
    );
    assert_eq!(s.stop(), Some(0));
}

/// (database, run id) of the exactly-once test's runs.
#[derive(Default)]
struct Recorded(Vec<(String, String)>);

#[test]
fn a_disabled_flow_is_listed_and_checked_but_no_trigger_starts_it() {
    let dir = temp("disabled");
    for (file, text) in [
        (
            "hook.yaml",
            "id: hook\nenabled: false\ntrigger: {type: webhook, path: paused}\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        ),
        (
            "by-hand.yaml",
            "id: by-hand\nenabled: false\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        ),
        (
            "on-event.yaml",
            "id: on-event\nenabled: false\ntrigger: {type: cloudevent, eventType: thing.done}\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        ),
        (
            "sub.yaml",
            "id: sub\nenabled: false\ntrigger: {type: flow}\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        ),
        (
            "caller.yaml",
            "id: caller\nsteps:\n  - {key: go, type: flow, options: {flow: sub}}\n",
        ),
    ] {
        write(&dir, file, text);
    }
    let s = Serve::start(&dir);
    let flows = s.get("/api/flows").body;
    let enabled: Vec<(&str, bool)> = flows
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["enabled"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        enabled,
        [
            ("by-hand", false),
            ("caller", true),
            ("hook", false),
            ("on-event", false),
            ("sub", false)
        ]
    );
    let r = s.post("/hooks/paused", json!({}));
    assert_error(&r, 409, "flow_disabled");
    assert_eq!(r.body["details"]["flow"], "hook");
    let r = s.post("/api/flows/by-hand/runs", json!({}));
    assert_error(&r, 409, "flow_disabled");
    let r = structured(
        &s,
        json!({"specversion": "1.0", "id": "e1", "source": "test", "type": "thing.done", "data": {}}),
    );
    assert_error(&r, 422, "no_match");
    assert_eq!(r.body["details"]["refused"][0]["flow"], "on-event");
    // A flow step to a disabled flow fails its run, naming the flow.
    let r = s.post("/api/flows/caller/runs?wait=true", json!({}));
    assert_eq!(r.body["status"], "failed", "{r:?}");
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|m| m.contains("flow `sub` is disabled")),
        "{r:?}"
    );
    // No run of a disabled flow was recorded.
    let runs = s.get("/api/runs?limit=0").body;
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["flowId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["caller"], "{runs}");
}

#[test]
fn the_dataflow_example_writes_a_callers_document_all_or_none() {
    let dir = temp("dataflow");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dataflow-api");
    for f in ["setup.yaml", "flow.yaml"] {
        std::fs::copy(example.join(f), dir.join("flows").join(f)).unwrap();
    }
    let sluice = |args: &[&str]| {
        let o = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
            .current_dir(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    sluice(&["run", "flows/setup.yaml", "--store", "sqlite::memory:"]);
    std::fs::write(
        dir.join("count.yaml"),
        "id: count\nunmappedResults: replace\nconnections: {crm: {url: \"sqlite:crm.db\"}}\nsteps:\n  - {key: q, type: sql.query, options: {connection: crm, mode: expectSingle, query: \"SELECT (SELECT COUNT(*) FROM accounts) AS a, (SELECT COUNT(*) FROM contacts) AS c, (SELECT COUNT(*) FROM notes) AS n, (SELECT COUNT(*) FROM requests) AS r\"}}\n",
    )
    .unwrap();
    let counts = || sluice(&["run", "count.yaml", "--store", "sqlite::memory:"]);
    let s = Serve::start(&dir);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(example.join("document.json")).unwrap())
            .unwrap();
    let r = s.post("/hooks/crm/dataflow", doc.clone());
    assert_eq!(r.status, 200, "{r:?}");
    let (account, contact) = (r.body["account"].as_i64(), r.body["contact"].as_i64());
    assert!(account.is_some() && contact.is_some(), "{r:?}");
    assert_eq!(counts(), json!({"a": 1, "c": 1, "n": 1, "r": 1}));
    // Sent again: the account is upserted, the contact's email is taken:
    // the whole document is rolled back with the request's record (the
    // flow is one transaction), and the caller is told why.
    let r = s.post("/hooks/crm/dataflow", doc);
    assert_error(&r, 422, "run_incident");
    let m = r.body["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("envelope 1, patch 1.1 (create contacts) failed")
            && m.contains("the document was rolled back"),
        "{m}"
    );
    assert_eq!(counts(), json!({"a": 1, "c": 1, "n": 1, "r": 1}));
    // What the flow does not allow is refused before anything is written.
    let r = s.post(
        "/hooks/crm/dataflow",
        json!({"envelopes": [
            {"patches": [{"op": "create", "collection": "notes", "properties": {"account_id": account, "body": "x"}}]},
            {"patches": [{"op": "delete", "collection": "accounts", "criteria": {"id": account}}]}
        ]}),
    );
    assert_error(&r, 422, "run_incident");
    let m = r.body["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("envelope 2, patch 1 (delete accounts): `delete` is not allowed on `accounts`"),
        "{m}"
    );
    assert_eq!(counts(), json!({"a": 1, "c": 1, "n": 1, "r": 1}));
}

/// Run the flow `text` with `sluice run` in `dir` (a store of its own in
/// memory); its output.
fn run_flow(dir: &Path, file: &str, text: &str) -> Value {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let o = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(dir)
        .args(["run", path.to_str().unwrap(), "--store", "sqlite::memory:"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

#[test]
fn a_run_in_one_transaction_killed_mid_way_leaves_nothing_then_runs_whole() {
    // `transaction: flow` on SQLite, PostgreSQL and MariaDB: a run has
    // written its first row and is in a long step when the server is
    // killed with SIGKILL. The database drops the open transaction (no row
    // is there), and after a restart the run starts again from its first
    // step and commits both rows once.
    let dir = temp("flow-tx-kill");
    let pid = std::process::id();
    let (t, a) = (format!("ftk_t_{pid}"), format!("ftk_a_{pid}"));
    let dbs = target_databases(&dir);
    for (name, url) in &dbs {
        let head = format!("connections:\n  db: {{url: \"{url}\"}}\nsteps:\n");
        let text_col = if *name == "mariadb" {
            "VARCHAR(40)"
        } else {
            "TEXT"
        };
        let steps: String = [
            format!("DROP TABLE IF EXISTS {t}"),
            format!("DROP TABLE IF EXISTS {a}"),
            format!("CREATE TABLE {t} (ref {text_col} NOT NULL UNIQUE)"),
            format!("CREATE TABLE {a} (ref {text_col} NOT NULL UNIQUE)"),
        ]
        .iter()
        .enumerate()
        .map(|(i, q)| format!("  - {{key: s{i}, type: sql.query, options: {{connection: db, mode: statement, query: \"{q}\"}}}}\n"))
        .collect();
        run_flow(&dir, "setup.yaml", &format!("id: setup\n{head}{steps}"));
        // The middle step counts for a few seconds (a debug build).
        write(
            &dir,
            &format!("tx-{name}.yaml"),
            &format!(
                "id: tx_{name}\ntransaction: flow\ntrigger: {{type: webhook, path: tx/{name}, async: true}}\n{head}  - {{key: add, type: sql.create, options: {{connection: db, collection: {t}, properties: {{ref: \"{{{{ .ref }}}}\"}}}}, actionDataFilter: {{useResults: false}}}}\n  - {{key: think, type: transform, options: {{value: {{sum: \"{{{{ reduce range(0; 400000) as $i (0; . + $i) }}}}\"}}}}}}\n  - {{key: note, type: envelope, options: {{connection: db, patches: [{{op: create, collection: {a}, properties: {{ref: \"{{{{ .ref }}}}\"}}}}]}}}}\n"
            ),
        );
    }
    let count = |name: &str, url: &str| {
        let q = format!(
            "id: count\nunmappedResults: replace\nconnections:\n  db: {{url: \"{url}\"}}\nsteps:\n  - {{key: q, type: sql.query, options: {{connection: db, mode: expectSingle, query: \"SELECT (SELECT COUNT(*) FROM {t}) AS t, (SELECT COUNT(*) FROM {a}) AS a\"}}}}\n"
        );
        let got = run_flow(&dir, &format!("count-{name}.yaml"), &q);
        let n = |v: &Value| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        (n(&got["t"]), n(&got["a"]))
    };
    // One database at a time: the counting holds a worker thread.
    let timeout = ["--expr-timeout-ms", "60000"];
    for (name, url) in &dbs {
        let s = Serve::start_with(&dir, &timeout);
        let r = s.post(&format!("/hooks/tx/{name}"), json!({"ref": "R-1"}));
        assert_eq!(r.status, 202, "{name}: {r:?}");
        let id = r.body["runId"].as_str().unwrap().to_owned();
        // The run has written its row (its first step is recorded) and is
        // counting: the kill comes now.
        let t0 = Instant::now();
        loop {
            let rec = s.get(&format!("/api/runs/{id}")).body;
            assert_eq!(rec["status"], "running", "{name}: {rec}");
            if rec["stepLog"].as_array().is_some_and(|l| !l.is_empty()) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{name}: {rec}");
            std::thread::sleep(Duration::from_millis(10));
        }
        s.signal("-KILL");
        drop(s);
        assert_eq!(
            count(name, url),
            (Some(0), Some(0)),
            "{name} after the kill"
        );
        let s = Serve::start_with(&dir, &timeout);
        let rec = s.ended(&id);
        assert_eq!(rec["status"], "succeeded", "{name}: {rec}");
        let keys: Vec<&str> = rec["stepLog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["add", "add", "think", "note"], "{name}: {rec}");
        assert_eq!(
            count(name, url),
            (Some(1), Some(1)),
            "{name} after the restart"
        );
        assert_eq!(s.stop(), Some(0));
    }
    eprintln!(
        "transaction: flow kill test: {} runs killed mid-way, nothing written, each whole once after the restart",
        dbs.len()
    );
}

#[test]
fn requests_past_the_runs_in_flight_limit_are_refused_with_retry_after() {
    let dir = temp("overload");
    write(
        &dir,
        "busy.yaml",
        "id: busy\ntrigger: {type: webhook, path: busy, async: true}\nsteps:\n  - {key: think, type: transform, options: {value: {sum: \"{{ reduce range(0; 300000) as $i (0; . + $i) }}\"}}}\n",
    );
    write(
        &dir,
        "idle.yaml",
        "id: idle\nsteps:\n  - {key: log, type: log, options: {message: hi}}\n",
    );
    let s = Serve::start_with(
        &dir,
        &["--max-runs-in-flight", "1", "--expr-timeout-ms", "60000"],
    );
    let first = s.post("/hooks/busy", json!({}));
    assert_eq!(first.status, 202, "{first:?}");
    let t0 = Instant::now();
    while s.get("/api/health").body["runsInFlight"] != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the run never got under way"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // One under way, as many as the server takes: the next is refused.
    let second = s.post("/hooks/busy", json!({}));
    assert_error(&second, 503, "overloaded");
    assert_eq!(second.header("retry-after"), Some("1"));
    let api = s.post("/api/flows/idle/runs", json!({}));
    assert_error(&api, 503, "overloaded");
    // Once it is done, requests start runs again.
    let run = first.body["runId"].as_str().unwrap().to_owned();
    assert_eq!(s.ended(&run)["status"], "succeeded");
    let t0 = Instant::now();
    while s.get("/api/health").body["runsInFlight"] != 0 {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.post("/hooks/busy", json!({})).status, 202);
}

/// `sluice tokens ARGS` in `dir` (its store.db): status and standard output.
fn tokens(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(dir)
        .arg("tokens")
        .args(args)
        .args(["--store", "store.db"])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn api_tokens_have_roles_and_the_server_is_closed_by_default_off_loopback() {
    let dir = temp("tokens");
    write(
        &dir,
        "hello.yaml",
        "id: hello\nsteps:\n  - {key: log, type: log, options: {message: hi}}\n",
    );
    // Reachable from other machines with no token: it does not start (and
    // never opens its port).
    let (code, err) = serve_refused(&dir, "0.0.0.0:0", &["--store", "store.db"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("the store holds no API token"), "{err}");
    let mut made = Vec::new();
    for (name, role) in [("ann", "viewer"), ("olga", "operator"), ("adam", "admin")] {
        let (ok, token, err) = tokens(&dir, &["create", name, "--role", role]);
        assert!(ok && token.starts_with("slc_"), "{err}");
        made.push(token);
    }
    let (viewer, operator, admin) = (&made[0], &made[1], &made[2]);
    let (ok, _, err) = tokens(&dir, &["create", "ann", "--role", "admin"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = tokens(&dir, &["create", "bob", "--role", "root"]);
    assert!(!ok && err.contains("unknown role `root`"), "{err}");
    // The store keeps no token, only hashes.
    let db = std::fs::read(dir.join("store.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(viewer.as_str()));

    let s = Serve::start(&dir);
    let with = |token: &str| format!("Bearer {token}");
    let call = |method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(with);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        s.call(method, path, &headers, "{}")
    };
    assert_error(&call("GET", "/api/runs", None), 401, "unauthorized");
    assert_error(
        &call("GET", "/api/runs", Some("slc_nothing")),
        401,
        "unauthorized",
    );
    assert_eq!(call("GET", "/api/runs", Some(viewer)).status, 200);
    assert_eq!(call("GET", "/api/flows/hello", Some(viewer)).status, 200);
    assert_error(
        &call("POST", "/api/flows/hello/runs", Some(viewer)),
        403,
        "forbidden",
    );
    let bearer = with(operator);
    let started = s.call(
        "POST",
        "/api/flows/hello/runs?wait=true",
        &[("authorization", &bearer), ("user-agent", "ops-console/2")],
        "",
    );
    assert_eq!(started.status, 200, "{started:?}");
    assert_error(
        &call("POST", "/api/reload", Some(operator)),
        403,
        "forbidden",
    );
    assert_eq!(call("POST", "/api/reload", Some(admin)).status, 200);
    // Who started a run is its `$accountability`; who acted on it is kept.
    let first = started.body["runId"].as_str().unwrap().to_owned();
    let rec = call("GET", &format!("/api/runs/{first}"), Some(viewer)).body;
    assert_eq!(
        rec["accountability"],
        json!({"user": "olga", "role": "operator", "admin": false, "ip": "127.0.0.1", "userAgent": "ops-console/2", "trigger": "manual"}),
        "{rec}"
    );
    let again = call(
        "POST",
        &format!("/api/runs/{first}/retry?wait=true"),
        Some(operator),
    );
    assert_eq!(again.status, 200, "{again:?}");
    let second = again.body["runId"].as_str().unwrap().to_owned();
    let rec2 = call("GET", &format!("/api/runs/{second}"), Some(viewer)).body;
    assert_eq!(rec2["accountability"]["trigger"], "retry", "{rec2}");
    assert_eq!(rec2["accountability"]["retryOf"], first.as_str(), "{rec2}");
    assert_eq!(rec2["accountability"]["user"], "olga", "{rec2}");
    let rec = call("GET", &format!("/api/runs/{first}"), Some(viewer)).body;
    let acts: Vec<(Value, Value)> = rec["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].clone(), a["user"].clone()))
        .collect();
    assert_eq!(
        acts,
        [
            (json!("run.start"), json!("olga")),
            (json!("run.retry"), json!("olga"))
        ],
        "{rec}"
    );
    // The audit, for admins alone.
    assert_error(&call("GET", "/api/audit", Some(operator)), 403, "forbidden");
    let audit = call("GET", "/api/audit", Some(admin));
    assert_eq!(audit.status, 200, "{audit:?}");
    let actions: Vec<&str> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "run.retry",
            "flows.reload",
            "run.start",
            "token.create",
            "token.create",
            "token.create"
        ],
        "{}",
        audit.body
    );
    assert_eq!(audit.body[1]["user"], "adam");
    assert_eq!(audit.body[1]["role"], "admin");
    assert_eq!(audit.body[5]["target"], "ann");
    let one = call(
        "GET",
        &format!("/api/audit?target={second}&limit=5"),
        Some(admin),
    );
    assert_eq!(one.body.as_array().map(Vec::len), Some(0), "{one:?}");
    assert_error(
        &call("GET", "/api/audit?limit=x", Some(admin)),
        400,
        "bad_request",
    );
    // Open: health, the document, webhooks and events are not API routes
    // a token guards.
    assert_eq!(call("GET", "/api/health", None).status, 200);
    assert_eq!(call("GET", "/api/openapi.json", None).status, 200);
    // An expired token is refused.
    let (ok, brief, err) = tokens(
        &dir,
        &["create", "brief", "--role", "viewer", "--expires-in", "1s"],
    );
    assert!(ok, "{err}");
    assert_eq!(call("GET", "/api/runs", Some(&brief)).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let r = call("GET", "/api/runs", Some(&brief));
    assert_error(&r, 401, "unauthorized");
    assert!(
        r.body["message"].as_str().unwrap().contains("expired"),
        "{r:?}"
    );
    let (ok, _, err) = tokens(
        &dir,
        &["create", "odd", "--role", "viewer", "--expires-in", "5x"],
    );
    assert!(!ok && err.contains("not a lifetime"), "{err}");
    // Revoked, a token is refused at once.
    let (ok, _, err) = tokens(&dir, &["revoke", "ann"]);
    assert!(ok, "{err}");
    assert_error(&call("GET", "/api/runs", Some(viewer)), 401, "unauthorized");
    let (ok, list, _) = tokens(&dir, &["list"]);
    assert!(
        ok && list.contains("ann") && list.contains("revoked") && list.contains("expired"),
        "{list}"
    );
    assert_eq!(s.stop(), Some(0));

    // `--auth-health-metrics` closes health and metrics too.
    let s = Serve::start_with(&dir, &["--auth-health-metrics"]);
    assert_error(&s.get("/api/health"), 401, "unauthorized");
    assert_error(&s.get("/metrics"), 401, "unauthorized");
    assert_eq!(
        s.call(
            "GET",
            "/api/health",
            &[("authorization", &with(operator))],
            ""
        )
        .status,
        200
    );
    assert_eq!(s.stop(), Some(0));
}

/// HMAC-SHA256 of `data` with `key`, in hex (by openssl, a second opinion).
fn hmac_hex(key: &str, data: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn webhooks_check_who_calls_them() {
    let dir = temp("hook-auth");
    // SAFETY: this test's own variables, set before the server starts.
    unsafe {
        std::env::set_var("SLUICE_T_HOOK_SECRET", "whsec-1");
        std::env::set_var("SLUICE_T_HOOK_TOKEN", "tok-2");
        std::env::set_var("SLUICE_T_HOOK_USER", "shop");
        std::env::set_var("SLUICE_T_HOOK_PASS", "pw-3");
    }
    let hook = |name: &str, auth: &str| {
        write(
            &dir,
            &format!("{name}.yaml"),
            &format!(
                "id: {name}\ntrigger: {{type: webhook, path: {name}, async: true, auth: {auth}}}\nsteps:\n  - {{key: log, type: log, options: {{message: ok}}}}\n"
            ),
        )
    };
    hook(
        "signed",
        "{type: hmac, secret: \"${env:SLUICE_T_HOOK_SECRET}\", header: x-hub-signature-256, prefix: \"sha256=\"}",
    );
    hook(
        "stamped",
        "{type: hmac, secret: \"${env:SLUICE_T_HOOK_SECRET}\", header: x-signature, timestampHeader: x-timestamp, toleranceSecs: 60}",
    );
    hook(
        "bearer",
        "{type: bearer, token: \"${env:SLUICE_T_HOOK_TOKEN}\"}",
    );
    hook(
        "basic",
        "{type: basic, username: \"${env:SLUICE_T_HOOK_USER}\", password: \"${env:SLUICE_T_HOOK_PASS}\"}",
    );
    hook(
        "query",
        "{type: query, param: key, token: \"${env:SLUICE_T_HOOK_TOKEN}\"}",
    );
    let s = Serve::start(&dir);
    let body = r#"{"order":1}"#;
    let post = |path: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        s.call("POST", path, &h, body)
    };
    // HMAC of the body, GitHub's way.
    let sig = format!("sha256={}", hmac_hex("whsec-1", body));
    assert_eq!(
        post("/hooks/signed", &[("x-hub-signature-256", &sig)]).status,
        202
    );
    let bad = format!("sha256={}", hmac_hex("other", body));
    assert_error(
        &post("/hooks/signed", &[("x-hub-signature-256", &bad)]),
        401,
        "unauthorized",
    );
    assert_error(&post("/hooks/signed", &[]), 401, "unauthorized");
    // With a time of signing: recent passes, old (a replay) does not.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (ts, ok) in [(now, true), (now - 3600, false)] {
        let ts = ts.to_string();
        let sig = hmac_hex("whsec-1", &format!("{ts}.{body}"));
        let r = post(
            "/hooks/stamped",
            &[("x-signature", &sig), ("x-timestamp", &ts)],
        );
        assert_eq!(r.status, if ok { 202 } else { 401 }, "{r:?}");
    }
    // Bearer, Basic, a token in the query.
    assert_eq!(
        post("/hooks/bearer", &[("authorization", "Bearer tok-2")]).status,
        202
    );
    assert_error(
        &post("/hooks/bearer", &[("authorization", "Bearer tok-x")]),
        401,
        "unauthorized",
    );
    assert_eq!(
        post("/hooks/basic", &[("authorization", "Basic c2hvcDpwdy0z")]).status,
        202
    );
    assert_error(
        &post(
            "/hooks/basic",
            &[("authorization", "Basic c2hvcDp3cm9uZw==")],
        ),
        401,
        "unauthorized",
    );
    let r = post("/hooks/query?key=tok-2&x=1", &[]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_error(&post("/hooks/query?key=nope", &[]), 401, "unauthorized");
    // The query's token is not recorded.
    let run = r.body["runId"].as_str().unwrap().to_owned();
    let rec = s.ended(&run);
    assert_eq!(rec["trigger"]["query"], json!({"x": "1"}), "{rec}");
    assert_eq!(rec["accountability"]["auth"], "query", "{rec}");
    assert_eq!(rec["accountability"]["user"], Value::Null, "{rec}");
    // HTTP Basic names who called.
    let r = post("/hooks/basic", &[("authorization", "Basic c2hvcDpwdy0z")]);
    let rec = s.ended(r.body["runId"].as_str().unwrap());
    assert_eq!(rec["accountability"]["user"], "shop", "{rec}");
    assert_eq!(rec["accountability"]["trigger"], "webhook", "{rec}");
    assert!(!rec.to_string().contains("tok-2"));
    // A refused call starts nothing: six runs in all.
    let runs = s.get("/api/runs?limit=0").body;
    assert_eq!(runs.as_array().unwrap().len(), 6, "{runs}");
    assert_eq!(s.stop(), Some(0));
}

/// Every file under `dir` (the store and its journal) holding `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().map_while(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_planted_secret_never_reaches_a_record_a_log_or_an_answer() {
    const PLANT: &str = "pl4nted-S3cret-9f8e7d";
    const HOOK_TOKEN: &str = "hook-T0ken-from-a-file";
    let dir = temp("secrets");
    let secrets = std::env::temp_dir().join(format!("sluice-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("hook-token"), format!("{HOOK_TOKEN}\n")).unwrap();
    // SAFETY: this test's own variable, set before the server starts.
    unsafe { std::env::set_var("SLUICE_SECRET_PLANT", PLANT) };
    write(
        &dir,
        "leaky.yaml",
        "id: leaky\ntrigger: {type: webhook, path: leaky}\nunmappedResults: replace\nsteps:\n  - {key: build, type: transform, options: {value: {header: \"Bearer ${secret:PLANT}\", x: \"{{ .x }}\"}}}\n  - {key: say, type: log, options: {message: \"calling with ${secret:PLANT} for {{ .x }}\"}}\n  - {key: measure, type: transform, options: {value: {header: \"{{ .header }}\", length: \"{{ .header | length }}\", asWritten: \"{{ \\\"${secret:PLANT}\\\" }}\"}}}\n",
    );
    write(
        &dir,
        "failing.yaml",
        "id: failing\ntrigger: {type: webhook, path: failing, async: true}\nsteps:\n  - {key: boom, type: throw, options: {message: \"denied for key ${secret:PLANT}\"}}\n",
    );
    write(
        &dir,
        "guarded.yaml",
        "id: guarded\ntrigger: {type: webhook, path: guarded, dropHeaders: [X-Customer-Ref], auth: {type: bearer, token: \"${secret:hook-token}\"}}\nsteps:\n  - {key: echo, type: transform, options: {value: {echo: \"{{ .echo }}\"}}}\n",
    );
    let secrets_arg = secrets.display().to_string();
    let s = Serve::start_with(&dir, &["--secrets-dir", &secrets_arg]);
    let mut answers = Vec::new();
    // A run that succeeds, its options and output built with the secret.
    let r = s.post("/hooks/leaky", json!({"x": PLANT}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["header"], "Bearer ${secret:PLANT}", "{r:?}");
    // The step saw the value itself (7 + its length), never the text
    // `${secret:PLANT}` (and inside `{{ }}` it is not replaced).
    assert_eq!(r.body["length"], json!(7 + PLANT.len()), "{r:?}");
    assert_eq!(r.body["asWritten"], "${secret:PLANT}", "{r:?}");
    answers.push(format!("{r:?}"));
    // One that fails with the secret in its error.
    let r = s.post("/hooks/failing", json!({}));
    assert_eq!(r.status, 202, "{r:?}");
    let failed = s.ended(r.body["runId"].as_str().unwrap());
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed
            .to_string()
            .contains("denied for key ${secret:PLANT}"),
        "{failed}"
    );
    // A webhook whose token is a file in the secrets folder; the caller
    // even sends the token in its body.
    let bearer = format!("Bearer {HOOK_TOKEN}");
    let body = json!({"echo": HOOK_TOKEN}).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", bearer.as_str()),
        ("x-api-key", HOOK_TOKEN),
        ("x-customer-ref", "c-42"),
        ("x-request-id", "r-1"),
    ];
    let r = s.call("POST", "/hooks/guarded", &headers, &body);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["echo"], "${secret:hook-token}", "{r:?}");
    answers.push(format!("{r:?}"));
    // Headers that carry a credential, and those the webhook names, are
    // not recorded.
    let runs = s.get("/api/runs?flow=guarded").body;
    let rec = s
        .get(&format!("/api/runs/{}", runs[0]["id"].as_str().unwrap()))
        .body;
    let headers = &rec["trigger"]["headers"];
    assert_eq!(headers["x-request-id"], "r-1", "{rec}");
    for gone in ["authorization", "x-api-key", "x-customer-ref"] {
        assert!(headers.get(gone).is_none(), "{gone}: {rec}");
    }
    let r = s.call(
        "POST",
        "/hooks/guarded",
        &[("authorization", "Bearer x")],
        "{}",
    );
    assert_error(&r, 401, "unauthorized");
    answers.push(format!("{r:?}"));
    // Every answer of the API.
    let runs = s.get("/api/runs?limit=0");
    answers.push(format!("{runs:?}"));
    for run in runs.body.as_array().unwrap() {
        answers.push(format!(
            "{:?}",
            s.get(&format!("/api/runs/{}", run["id"].as_str().unwrap()))
        ));
    }
    for path in [
        "/api/flows",
        "/api/flows/leaky",
        "/api/flows/failing",
        "/api/flows/guarded",
        "/metrics",
        "/api/health",
    ] {
        answers.push(format!("{:?}", s.get(path)));
    }
    let log = s.log();
    assert_eq!(s.stop(), Some(0));
    for secret in [PLANT, HOOK_TOKEN] {
        for a in &answers {
            assert!(!a.contains(secret), "an answer holds a secret: {a}");
        }
        assert!(
            !log.contains(secret),
            "the server's output holds a secret: {log}"
        );
        assert_eq!(files_holding(&dir, secret), Vec::<PathBuf>::new());
    }
    // A flow naming a secret set nowhere is refused at load, naming it.
    write(
        &dir,
        "unset.yaml",
        "id: unset\ntrigger: {type: manual}\nsteps:\n  - {key: a, type: log, options: {message: \"${secret:NOT_SET_T}\"}}\n",
    );
    let (code, err) = serve_refused(
        &dir,
        "127.0.0.1:0",
        &["--store", "store.db", "--secrets-dir", &secrets_arg],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("secret `NOT_SET_T` is not set") && err.contains("SLUICE_SECRET_NOT_SET_T"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&secrets);
}

/// A fresh database on the PostgreSQL server of `SLUICE_TEST_POSTGRES_URL`,
/// dropped when this is; `None` when the variable is not set (a failure
/// under CI).
struct FreshPg {
    url: String,
    db: String,
    rt: tokio::runtime::Runtime,
    pool: sqlx::PgPool,
    admin: sqlx::PgPool,
}

impl FreshPg {
    fn new(name: &str) -> Option<Self> {
        let Ok(base) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").is_err(),
                "SLUICE_TEST_POSTGRES_URL must be set under CI"
            );
            return None;
        };
        let db = format!("sluice_{name}_{}", std::process::id());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
        let (admin, pool) = rt.block_on(async {
            let admin = sqlx::PgPool::connect(&base).await.unwrap();
            for sql in [
                format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                format!("CREATE DATABASE {db}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            (admin, pool)
        });
        Some(Self {
            url,
            db,
            rt,
            pool,
            admin,
        })
    }

    /// One number a query returns.
    fn count(&self, sql: &str) -> i64 {
        self.rt.block_on(async {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&self.pool)
                .await
                .unwrap()
        })
    }

    /// The texts a query returns, a row each.
    fn texts(&self, sql: &str) -> Vec<String> {
        self.rt.block_on(async {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&self.pool)
                .await
                .unwrap()
        })
    }

    /// Close the database to every connection and end its sessions
    /// (`true`), or open it again.
    fn away(&self, away: bool) {
        let db = &self.db;
        self.rt.block_on(async {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS {}",
                !away
            )))
            .execute(&self.admin)
            .await
            .unwrap();
            if away {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
                )))
                .execute(&self.admin)
                .await
                .unwrap();
            }
        });
    }

    fn execute(&self, sql: &str) {
        self.rt.block_on(async {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&self.pool)
                .await
                .unwrap();
        });
    }
}

impl Drop for FreshPg {
    fn drop(&mut self) {
        self.rt.block_on(async {
            self.pool.close().await;
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db
            )))
            .execute(&self.admin)
            .await;
        });
    }
}

#[test]
fn servers_on_one_postgres_store_share_its_runs_and_take_over_a_killed_ones() {
    let Some(pg) = FreshPg::new("serve") else {
        return;
    };
    let url = pg.url.clone();
    let dir = temp("pg-store");
    write(&dir, "order.yaml", ORDER);
    write(
        &dir,
        "slow.yaml",
        &format!(
            r#"
id: slow
trigger: {{type: webhook, path: slow, async: true}}
connections: {{db: {{url: "{url}"}}}}
steps:
  - {{key: one, type: transform, options: {{value: {{one: 1}}}}}}
  - {{key: think, type: sql.query, options: {{connection: db, mode: expectSingle, query: "SELECT pg_sleep(1.5) IS NULL AS slept"}}}}
  - {{key: two, type: transform, options: {{value: {{two: 2}}}}}}
"#
        ),
    );
    let lease = ["--store", url.as_str(), "--lease-secs", "1"];
    let a = Serve::start_with(&dir, &lease);
    let b = Serve::start_with(&dir, &lease);
    let r = a.post("/hooks/order", json!({"orderId": "A-1", "totalPrice": 3}));
    assert_eq!(r.status, 200, "{r:?}");
    // Each answers for every run, whichever process drove it.
    let runs = b.get("/api/runs").body;
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    // Both say who they are and what they hold.
    let health = b.get("/api/health").body;
    assert_eq!(health["process"]["sharedStore"], true, "{health}");
    let me = health["process"]["id"].as_str().unwrap().to_owned();
    assert_eq!(health["leases"]["leaseSecs"], 1.0, "{health}");
    let ids: Vec<&str> = health["leases"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(ids.contains(&me.as_str()) && ids.len() >= 2, "{health}");
    // A run under way on A when A is killed: B continues it.
    let started = a.post("/hooks/slow", json!({}));
    assert_eq!(started.status, 202, "{started:?}");
    let run = started.body["runId"].as_str().unwrap().to_owned();
    let t = Instant::now();
    while pg.count(&format!(
        "SELECT COUNT(*) FROM run_steps WHERE run_id = '{run}'"
    )) == 0
    {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", a.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    a.signal("-KILL");
    let rec = b.ended(&run);
    assert_eq!(rec["status"], "succeeded", "{rec}\n{}", b.log());
    let keys: Vec<&str> = rec["stepLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert_eq!(keys, ["one", "think", "two"], "{rec}");
    assert!(
        b.log().contains(&format!("took over run `{run}`")),
        "{}",
        b.log()
    );
    assert_eq!(b.get("/api/health").body["leases"]["takenOver"], 1);
    drop(a);
    assert_eq!(b.stop(), Some(0));
    // The runs are in PostgreSQL: the command line reads them there.
    let out = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .args(["runs", "list", "--store", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("order") && text.contains("succeeded"),
        "{text}"
    );
}

/// What a chaos client was told: a run id per accepted request, by flow
/// and ref.
#[derive(Default)]
struct Accepted {
    runs: Vec<(String, String, String)>,
    /// Requests answered 503 (the store away).
    unavailable: usize,
}

/// A request to the first of `ports` (from `start`) that takes the
/// connection: its answer, or `None` when none did or the connection broke
/// once the request was sent (a client without an idempotency key cannot
/// know whether it was taken, and does not send it again).
fn to_any(
    ports: &Mutex<Vec<u16>>,
    start: usize,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Reply> {
    let live = ports.lock().unwrap().clone();
    for i in 0..live.len() {
        let port = live[(start + i) % live.len()];
        match try_call(port, method, path, headers, body) {
            Ok(r) => return Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn three_processes_on_one_postgres_store_lose_and_repeat_nothing_under_kill_9() {
    // Three `sluice serve` on one PostgreSQL store (leases of 1 s), webhook
    // load spread over them (async runs that write through sql.upsert and
    // sql.create with a unique ref each, some sleeping, some in a long step,
    // some waiting for an event sent to any process, and synchronous ones);
    // one process killed
    // with SIGKILL every 2-3.5 s and started again, for SLUICE_CHAOS_SECS
    // (20 s here; bench/chaos/run.sh runs it longer). Afterwards every
    // accepted run succeeded, each step is recorded once, each ref's rows
    // are there once, and no run is left running or waiting.
    let secs: u64 = std::env::var("SLUICE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    shared_store_under(Disrupt::Kill, secs);
}

#[test]
fn runs_pause_while_the_postgres_store_is_away_and_continue_once_it_is_back() {
    // The same load on three processes, with the store's database closed
    // to every connection (and its sessions ended) for 3 s of every 6:
    // requests meanwhile are answered 503 (or wait for it); once it is back
    // every accepted run continues and succeeds, once. (The flows' tables
    // are in the same database: their steps retry, as a flow writing to a
    // database that may go away would.)
    shared_store_under(Disrupt::Outage, 14);
}

/// What happens to the processes of [`shared_store_under`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disrupt {
    /// One is killed with SIGKILL every 2-3.5 s, and started again.
    Kill,
    /// The database refuses every connection for 3 s, every 6 s.
    Outage,
}

/// Three `sluice serve` on one fresh PostgreSQL store under webhook load
/// for `secs` while `disrupt` happens, then the checks that nothing was lost
/// or done twice.
fn shared_store_under(disrupt: Disrupt, secs: u64) {
    let name = match disrupt {
        Disrupt::Kill => "chaos",
        Disrupt::Outage => "outage",
    };
    let Some(pg) = FreshPg::new(name) else {
        return;
    };
    let url = pg.url.clone();
    pg.execute("CREATE TABLE chaos_orders (id SERIAL PRIMARY KEY, ref TEXT NOT NULL UNIQUE, n INT NOT NULL)");
    pg.execute("CREATE TABLE chaos_notes (id SERIAL PRIMARY KEY, ref TEXT NOT NULL UNIQUE)");
    let dir = temp(name);
    let order = r#"{key: order, type: sql.upsert, options: {connection: db, collection: chaos_orders, criteria: {ref: "{{ .ref }}"}, properties: {ref: "{{ .ref }}", n: 1}}, retry: {attempts: 10, delayMs: 300}}"#;
    let note = r#"{key: note, type: sql.create, options: {connection: db, collection: chaos_notes, properties: {ref: "{{ .ref }}"}}, retry: {attempts: 10, delayMs: 300}}"#;
    let flows = [
        ("plain", "async: true", vec![order, note]),
        ("sync", "async: false", vec![order, note]),
        (
            "sleepy",
            "async: true",
            vec![note, "{key: nap, type: sleep, options: {ms: 700}}", order],
        ),
        (
            "busy",
            "async: true",
            vec![
                note,
                r#"{key: work, type: sql.query, options: {connection: db, mode: expectSingle, query: "SELECT pg_sleep(0.4) IS NULL AS done"}, retry: {attempts: 10, delayMs: 300}}"#,
                order,
            ],
        ),
        (
            "waiter",
            "async: true",
            vec![
                note,
                r#"{key: paid, type: wait, options: {eventType: chaos.paid, correlation: {ref: "{{ .ref }}"}, timeoutMs: 120000}}"#,
                order,
            ],
        ),
    ];
    for (id, mode, steps) in &flows {
        let steps: String = steps.iter().map(|s| format!("  - {s}\n")).collect();
        write(
            &dir,
            &format!("{id}.yaml"),
            &format!(
                "id: {id}\ntrigger: {{type: webhook, path: chaos/{id}, {mode}}}\nconnections: {{db: {{url: \"{url}\"}}}}\nsteps:\n{steps}"
            ),
        );
    }
    // Three servers with 8 store connections each (and 8 to the flows'
    // database) stay well under PostgreSQL's 100 connections while other
    // tests use the same server.
    let store = format!("{url}?pool_size=8");
    let args = ["--store", store.as_str(), "--lease-secs", "1"];
    let mut servers: Vec<Serve> = (0..3).map(|_| Serve::start_with(&dir, &args)).collect();
    let ports = Arc::new(Mutex::new(
        servers.iter().map(|s| s.port).collect::<Vec<u16>>(),
    ));
    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let kinds = ["plain", "sync", "sleepy", "busy", "waiter"];
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (ports, accepted, stop, next) =
                (ports.clone(), accepted.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let kind = kinds[n as usize % kinds.len()];
                    let rf = format!("R-{n}");
                    let body = json!({"ref": rf}).to_string();
                    let path = format!("/hooks/chaos/{kind}");
                    if let Some(r) = to_any(&ports, c + n as usize, "POST", &path, &[], &body) {
                        if r.status == 503 {
                            accepted.lock().unwrap().unavailable += 1;
                        }
                        let id = match r.status {
                            202 => r.body["runId"].as_str().map(str::to_owned),
                            200 => r.header("x-sluice-run").map(str::to_owned),
                            _ => None,
                        };
                        if let Some(id) = id {
                            accepted
                                .lock()
                                .unwrap()
                                .runs
                                .push((kind.to_owned(), rf, id));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        })
        .collect();
    // The events the waiting runs wait for, each sent to any process once
    // its run waits (again, with a new id, until a process takes it).
    // The events the waiting runs wait for (every run that waits, its 202
    // heard or not), each sent to any process once the run waits: again,
    // with a new id, while it still waits (a process killed meanwhile).
    let payer = {
        let (ports, stop, url) = (ports.clone(), stop.clone(), url.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let pool = rt.block_on(sqlx::PgPool::connect(&url)).unwrap();
            // `None` while the database is away.
            let texts = |sql: &'static str| {
                rt.block_on(sqlx::query_scalar::<_, String>(sql).fetch_all(&pool))
                    .ok()
            };
            let (mut woken, mut attempt) = (0usize, 0u64);
            let t = Instant::now();
            loop {
                let waiting = texts("SELECT correlation FROM waits WHERE kind = 'event'");
                let going = texts(
                    "SELECT id FROM runs WHERE flow_id = 'waiter' AND status IN ('running', 'waiting')",
                );
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    && going.as_ref().is_some_and(Vec::is_empty)
                {
                    return woken;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(secs + 120),
                    "events not taken"
                );
                for correlation in waiting.unwrap_or_default() {
                    let rf = serde_json::from_str::<Value>(&correlation).unwrap()["ref"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    attempt += 1;
                    let ce_id = format!("pay-{rf}-{attempt}");
                    let headers = [
                        ("content-type", "application/json"),
                        ("ce-specversion", "1.0"),
                        ("ce-id", ce_id.as_str()),
                        ("ce-source", "/chaos"),
                        ("ce-type", "chaos.paid"),
                        ("ce-ref", rf.as_str()),
                    ];
                    if let Some(r) =
                        to_any(&ports, attempt as usize, "POST", "/events", &headers, "{}")
                        && r.status == 202
                        && r.body["resumed"].as_array().is_some_and(|a| !a.is_empty())
                    {
                        woken += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let t0 = Instant::now();
    let mut dead: Vec<Serve> = Vec::new();
    let mut kills = 0usize;
    while t0.elapsed() < Duration::from_secs(secs) {
        if disrupt == Disrupt::Outage {
            std::thread::sleep(Duration::from_secs(3));
            pg.away(true);
            std::thread::sleep(Duration::from_secs(3));
            pg.away(false);
            kills += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2_000 + (kills as u64 * 577) % 1_500));
        let slot = kills % 3;
        servers[slot].signal("-KILL");
        let fresh = Serve::start_with(&dir, &args);
        ports.lock().unwrap()[slot] = fresh.port;
        dead.push(std::mem::replace(&mut servers[slot], fresh));
        kills += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let events = payer.join().unwrap();
    // Every run ends (the killed processes' last runs are taken over).
    let t = Instant::now();
    while pg.count("SELECT COUNT(*) FROM runs WHERE status IN ('running', 'waiting')") > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "runs left unfinished: {}",
            servers[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let unavailable = accepted.lock().unwrap().unavailable;
    let accepted = std::mem::take(&mut accepted.lock().unwrap().runs);
    let runs = pg.count("SELECT COUNT(*) FROM runs");
    let failed = pg.texts(
        "SELECT concat_ws(' | ', id, flow_id, status, error_step, error, lease_owner) FROM runs WHERE status <> 'succeeded'",
    );
    let bad = failed.len();
    let lost = accepted
        .iter()
        .filter(|(_, _, id)| {
            pg.count(&format!(
                "SELECT COUNT(*) FROM runs WHERE id = '{id}' AND status = 'succeeded'"
            )) != 1
        })
        .count();
    let repeated = pg.count(
        "SELECT COUNT(*) FROM (SELECT run_id, step_key FROM run_steps WHERE ok GROUP BY run_id, step_key HAVING COUNT(*) > 1) d",
    );
    let missing_rows = accepted
        .iter()
        .filter(|(_, rf, _)| {
            pg.count(&format!(
                "SELECT (SELECT COUNT(*) FROM chaos_orders WHERE ref = '{rf}' AND n = 1) + (SELECT COUNT(*) FROM chaos_notes WHERE ref = '{rf}')"
            )) != 2
        })
        .count();
    let orders = pg.count("SELECT COUNT(*) FROM chaos_orders");
    let notes = pg.count("SELECT COUNT(*) FROM chaos_notes");
    let logs: String = dead.iter().chain(servers.iter()).map(Serve::log).collect();
    let taken = logs.matches("took over run").count()
        + logs
            .lines()
            .filter_map(|l| l.strip_prefix("sluice: continuing "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum::<usize>();
    eprintln!(
        "{name}: {secs} s, {kills} {}s, {} runs accepted ({events} woken by events), {runs} recorded, {taken} taken over, {unavailable} answered 503; lost {lost}, not succeeded {bad}, steps repeated {repeated}, refs missing rows {missing_rows}; rows: {orders} orders, {notes} notes",
        if disrupt == Disrupt::Kill {
            "SIGKILL"
        } else {
            "outage"
        },
        accepted.len()
    );
    assert!(kills >= 3 && !accepted.is_empty());
    assert_eq!(
        (lost, bad, repeated, missing_rows),
        (0, 0, 0, 0),
        "{failed:#?}\n{logs}"
    );
    // Every recorded run wrote its ref once (runs whose answer a kill cut
    // off included).
    assert_eq!((orders, notes), (runs, runs));
    for s in servers {
        assert_eq!(s.stop(), Some(0));
    }
}

/// `/api/stream` tells a reader each run's start and end, and ends when
/// the server stops: a reader that stays does not hold a stopping server.
#[test]
fn the_run_stream_tells_runs_as_they_go_and_ends_with_the_server() {
    let dir = temp("stream");
    write(
        &dir,
        "ping.yaml",
        "id: ping\ntrigger: {type: webhook, path: ping}\nsteps:\n  - {key: p, type: transform, options: {value: pong}}\n",
    );
    let s = Serve::start(&dir);
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/stream HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    while reader.read_line(&mut head).unwrap() > 2 && !head.ends_with("\r\n\r\n") {}
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let run = s.post("/hooks/ping", Value::Null);
    assert_eq!(run.body, "pong");
    // Its start and its end, in order (chunked: sizes between the events).
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 2 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if let Some(data) = line.trim().strip_prefix("data:") {
            let v: Value = serde_json::from_str(data.trim()).unwrap();
            if v["flowId"] == "ping" {
                seen.push(v["status"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(seen, ["running", "succeeded"]);
    let mut s = s;
    s.signal("-TERM");
    let t = Instant::now();
    let code = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the stopping server waits for its stream reader"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    // The stream ended with it.
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
}

/// A server that stops leaves its store file's WAL at most 512 KB (it is
/// emptied into the database file past that; its connections do not
/// checkpoint as they close), and every run reads back afterwards.
#[test]
fn a_stopped_server_leaves_a_small_wal_and_every_run() {
    let dir = temp("wal-stop");
    write(
        &dir,
        "keep.yaml",
        "id: keep\ntrigger: {type: webhook, path: keep}\nsteps:\n  - {key: k, type: transform, options: {value: {n: \"{{ .text | length }}\"}}}\n",
    );
    let s = Serve::start(&dir);
    let wal = || std::fs::metadata(dir.join("store.db-wal")).map_or(0, |m| m.len());
    for i in 0..10 {
        let r = s.post("/hooks/keep", json!({"text": noise(i + 1, 60_000)}));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert!(
        wal() > 512 * 1024,
        "the runs grew the WAL to {} bytes",
        wal()
    );
    assert_eq!(s.stop(), Some(0));
    assert!(wal() <= 512 * 1024, "the WAL was left at {} bytes", wal());
    let out = Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .current_dir(&dir)
        .args(["runs", "list", "--store", "store.db", "--flow", "keep"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.matches("succeeded").count(), 10, "{listed}");
}

/// `n` letters no compressor shortens much (a xorshift of `seed`).
fn noise(seed: u64, n: usize) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'A' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn a_full_store_answers_507_and_its_runs_pause_until_space_is_freed() {
    // The store may not grow past 400 pages (SQLite's `max_page_count`,
    // which fails writes as a full disk does).
    let dir = temp("full");
    write(
        &dir,
        "fill.yaml",
        "id: fill\ntrigger: {type: webhook, path: fill}\nsteps:\n  - {key: a, type: transform, options: {value: {pad: \"{{ .pad }}\"}}}\n",
    );
    write(
        &dir,
        "slow.yaml",
        "id: slow\ntrigger: {type: webhook, path: slow, async: true}\nsteps:\n  - {key: a, type: transform, options: {value: {n: 1}}}\n  - {key: nap, type: sleep, options: {ms: 1500}}\n  - {key: b, type: transform, options: {value: {low: \"{{ $trigger.body.pad | ascii_downcase }}\"}}}\n",
    );
    let s = Serve::start_with(&dir, &["--store", "sqlite://store.db?max_page_count=400"]);
    let pad = noise(7, 150_000);
    let started = s.post("/hooks/slow", json!({ "pad": pad }));
    assert_eq!(started.status, 202, "{started:?}");
    let id = started.body["runId"].as_str().unwrap().to_owned();
    // Fill the store while the run sleeps: the first answers are runs,
    // then the store is full.
    let mut landed = 0;
    let full = (1..40)
        .map(|k| s.post("/hooks/fill", json!({ "pad": noise(k, 150_000) })))
        .find(|r| {
            landed += u32::from(r.status == 200);
            r.status != 200
        })
        .expect("the store never filled");
    assert_error(&full, 507, "store_full");
    assert!(landed > 0, "no run landed before the store was full");
    // The run's next write (its end) does not fit: it pauses.
    let t = Instant::now();
    while !s.log().contains(&format!("run `{id}` pauses")) {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.get(&format!("/api/runs/{id}")).body["status"], "running");
    // Space is freed (the filling runs deleted by hand): the run goes on
    // from where it paused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("store.db"))
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        for table in ["run_values", "run_steps"] {
            let sql = format!(
                "DELETE FROM {table} WHERE run_id IN (SELECT id FROM runs WHERE flow_id = 'fill')"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
        }
        sqlx::query("DELETE FROM runs WHERE flow_id = 'fill'")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let run = reach(&s, &id, "succeeded");
    let keys: Vec<&str> = run["stepLog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a", "nap", "b"], "{run}");
    assert_eq!(run["output"]["low"], json!(pad.to_ascii_lowercase()));
    assert!(
        s.log().contains(&format!("run `{id}` continues")),
        "{}",
        s.log()
    );
}

/// A body that arrives in several pieces is read from them as they came
/// (not copied into one buffer first): its JSON is the same, and a fault
/// in it is told with its line and column.
#[test]
fn a_large_body_that_comes_in_pieces_is_read_whole() {
    let dir = temp("pieces");
    write(
        &dir,
        "big.yaml",
        "id: big\ntrigger: {type: webhook, path: big, maxBodyBytes: 4194304}\nsteps:\n  - {key: t, type: transform, options: {value: {n: '{{ .items | length }}', qty: '{{ [.items[].qty] | add }}', last: '{{ .items[-1].sku }}'}}}\n",
    );
    let s = Serve::start(&dir);
    let send = |body: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "POST /hooks/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        // Four pieces, apart in time: the server gets them as several chunks.
        for part in body.as_bytes().chunks(body.len().div_ceil(4)) {
            c.write_all(part).unwrap();
            c.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        got
    };
    let items: Vec<Value> = (0..20_000)
        .map(|i| json!({"sku": format!("SKU-{i:06}"), "qty": i % 3, "note": "an item"}))
        .collect();
    let body = json!({"orderId": "P-1", "items": items}).to_string();
    let got = send(&body);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(300)]
    );
    let answer: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        answer,
        json!({"n": 20_000, "qty": 19_999, "last": "SKU-019999"})
    );
    // Cut short inside its last piece: 400, where it broke off.
    let got = send(&body[..body.len() - 3]);
    assert!(
        got.starts_with("HTTP/1.1 400"),
        "{}",
        &got[..got.len().min(300)]
    );
    assert!(got.contains("\"line\":1"), "{got}");
    assert_eq!(s.stop(), Some(0));
}
