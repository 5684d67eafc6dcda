//! `sluice run --records` as a user meets it: the billing migration example,
//! and an import killed with SIGKILL halfway and run again, which lands
//! every good record exactly once.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `sluice ARGS` in `dir`, with its own store there.
fn sluice(dir: &Path, args: &[&str]) -> Command {
    sluice_with_store(dir, args, &dir.join("store.db").display().to_string())
}

fn sluice_with_store(dir: &Path, args: &[&str], store: &str) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("sluice"));
    c.current_dir(dir).args(args).args(["--store", store]);
    c
}

fn example(file: &str) -> String {
    root()
        .join("examples/migrate-billing")
        .join(file)
        .display()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Row counts of billing.db in `dir`, and the import's position.
fn counts(dir: &Path) -> Value {
    let flow = dir.join("count.yaml");
    std::fs::write(
        &flow,
        "id: count\nunmappedResults: replace\nconnections:\n  billing: {url: \"sqlite:billing.db\"}\nsteps:\n  - key: q\n    type: sql.query\n    options:\n      connection: billing\n      mode: expectSingle\n      query: >-\n        SELECT (SELECT count(*) FROM customers) AS customers,\n        (SELECT count(*) FROM contacts) AS contacts, (SELECT count(*) FROM orders) AS orders,\n        (SELECT coalesce(max(next_record), 0) FROM sluice_imports) AS position\n",
    )
    .unwrap();
    let o = sluice_with_store(dir, &["run", flow.to_str().unwrap()], "sqlite::memory:")
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn report(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn billing_example_lands_good_rows_and_reports_bad_ones() {
    let dir = temp("example");
    let o = sluice(&dir, &["run", &example("setup.yaml")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let csv = dir.join("customers.csv");
    std::fs::copy(example("customers.csv"), &csv).unwrap();
    let flow = example("flow.yaml");
    let import = || sluice(&dir, &["run", &flow, "--records", csv.to_str().unwrap()]);
    let o = import().output().unwrap();
    // Some records failed, as the example means them to.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["succeeded"], 5, "{}", text(&o));
    assert_eq!(summary["failed"], 5, "{}", text(&o));
    let c = counts(&dir);
    assert_eq!(
        (
            &c["customers"],
            &c["contacts"],
            &c["orders"],
            &c["position"]
        ),
        (&5.into(), &5.into(), &5.into(), &10.into()),
        "{c}"
    );
    let failures = report(&dir.join("customers.csv.failures.jsonl"));
    let got: Vec<(u64, String)> = failures
        .iter()
        .map(|f| {
            (
                f["record"].as_u64().unwrap(),
                f["patch"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (4, "patch 1 (create customers)".to_owned()),
            (5, "patch 2 (create orders)".to_owned()),
            (7, "patch 1 (create customers)".to_owned()),
            (8, "patch 2 (create orders)".to_owned()),
            (9, "patch 2".to_owned()),
        ],
        "{failures:#?}"
    );
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("UNIQUE constraint failed: customers.external_id"),
        "{failures:#?}"
    );
    assert_eq!(failures[0]["line"], 5);
    assert_eq!(failures[0]["data"]["customer_id"], "C-1002");

    // Running it again would write every record twice: refused.
    let o = import().output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--restart"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_import_killed_halfway_resumes_and_lands_every_record_once() {
    let dir = temp("kill");
    let o = sluice(&dir, &["run", &example("setup.yaml")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let n = 12_000u64;
    let bad_every = 997;
    let csv = dir.join("big.csv");
    let mut body = String::from(
        "customer_id,name,email,plan,contact_name,contact_email,contact_phone,order_number,order_total,currency\n",
    );
    for i in 1..=n {
        // Every 997th record repeats the customer id before it: refused.
        let id = if i % bad_every == 0 { i - 1 } else { i };
        body.push_str(&format!(
            "C-{id},Customer {i},c{i}@example.com,pro,Contact {i},,,SO-{i},{}.50,EUR\n",
            i % 100
        ));
    }
    std::fs::write(&csv, body).unwrap();
    let out = dir.join("out.jsonl");
    let import = || {
        sluice(
            &dir,
            &[
                "run",
                &example("flow.yaml"),
                "--records",
                csv.to_str().unwrap(),
                "--chunk",
                "200",
                "--output",
                out.to_str().unwrap(),
            ],
        )
    };

    // Start the import and kill it (SIGKILL) once some chunks committed.
    let mut child = import().spawn().unwrap();
    let began = Instant::now();
    let position = loop {
        let p = counts(&dir)["position"].as_u64().unwrap_or(0);
        if p > 0 {
            child.kill().unwrap();
            break p;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the import never committed a chunk"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.wait().unwrap();
    let at_kill = counts(&dir);
    let stopped = at_kill["position"].as_u64().unwrap();
    assert!(
        stopped >= position && stopped < n,
        "the import was not stopped halfway: {at_kill}"
    );

    // Run it again: it skips what landed and writes the rest.
    let o = import().output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["skipped"], stopped, "{}", text(&o));
    let bad: Vec<u64> = (1..=n).filter(|i| i % bad_every == 0).collect();
    let good = n - bad.len() as u64;
    let c = counts(&dir);
    assert_eq!(
        (
            &c["customers"],
            &c["contacts"],
            &c["orders"],
            &c["position"]
        ),
        (&good.into(), &good.into(), &good.into(), &n.into()),
        "{c}"
    );
    // Every bad record reported exactly once, and no good one (a record
    // written twice would be refused by the unique customer id and show here).
    let failures = report(&dir.join("big.csv.failures.jsonl"));
    let reported: Vec<u64> = failures
        .iter()
        .map(|f| f["record"].as_u64().unwrap())
        .collect();
    assert_eq!(reported, bad, "{failures:#?}");
    // Each good record's output once, in record order: the lines of the
    // records landed before the kill are kept, the others written again.
    let lines = std::fs::read_to_string(&out).unwrap();
    let outputs: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    let ids: Vec<String> = outputs
        .iter()
        .map(|o| o["customer_id"].to_string())
        .map(|id| id.trim_matches('"').to_owned())
        .collect();
    // An output holds what its envelope wrote, as a run's would: the
    // customer with its contact, then the order, on that customer.
    for o in &outputs {
        let [customer, order] = o["results"].as_array().unwrap().as_slice() else {
            panic!("two patches' results: {o}");
        };
        assert_eq!(customer["external_id"], o["customer_id"], "{o}");
        assert_eq!(
            customer["children"][0]["customer_id"], customer["id"],
            "{o}"
        );
        assert_eq!(order["customer_id"], customer["id"], "{o}");
        assert_eq!(o["tokens"]["customer"], customer["id"], "{o}");
    }
    let want: Vec<String> = (1..=n)
        .filter(|i| i % bad_every != 0)
        .map(|i| format!("C-{i}"))
        .collect();
    assert_eq!(ids, want);
    println!(
        "import killed after record {stopped} of {n}; resumed: {good} landed once, {} reported",
        bad.len()
    );
}

/// A flow that writes nothing is a transformation of a file of records:
/// `--output` writes each record's output in record order, to a file or to
/// standard output (the summary then goes to standard error); a record
/// that fails is in the failure report, not in the output.
#[test]
fn records_out_in_record_order_with_failures_reported() {
    let dir = temp("out");
    std::fs::write(
        dir.join("sums.yaml"),
        "id: sums\nunmappedResults: replace\nsteps:\n  - key: sum\n    type: transform\n    options:\n      value: {orderId: \"{{ .orderId }}\", sum: \"{{ (.price + 0) * .qty }}\"}\n",
    )
    .unwrap();
    let mut records = String::new();
    for i in 0..2500 {
        // Record 1000 is not JSON; record 2000 has a price the step cannot multiply.
        match i {
            999 => records.push_str("{not json\n"),
            1999 => records.push_str("{\"orderId\": \"O-1999\", \"price\": \"ten\", \"qty\": 2}\n"),
            _ => records.push_str(&format!(
                "{{\"orderId\": \"O-{i}\", \"price\": {}, \"qty\": {}}}\n",
                i % 50,
                i % 3 + 1
            )),
        }
    }
    std::fs::write(dir.join("orders.jsonl"), records).unwrap();
    let want: Vec<String> = (0..2500)
        .filter(|i| *i != 999 && *i != 1999)
        .map(|i| {
            format!(
                "{{\"orderId\":\"O-{i}\",\"sum\":{}}}",
                (i % 50) * (i % 3 + 1)
            )
        })
        .collect();
    let o = sluice(
        &dir,
        &[
            "run",
            "sums.yaml",
            "--records",
            "orders.jsonl",
            "--chunk",
            "100",
            "--output",
            "out.jsonl",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&summary["succeeded"], &summary["failed"]),
        (&2498.into(), &2.into())
    );
    let out = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    let failed: Vec<u64> = report(&dir.join("orders.jsonl.failures.jsonl"))
        .iter()
        .map(|f| f["record"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [1000, 2000]);
    // To standard output.
    let o = sluice(
        &dir,
        &[
            "run",
            "sums.yaml",
            "--records",
            "orders.jsonl",
            "--output",
            "-",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .collect::<Vec<_>>(),
        want
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"succeeded\": 2498"),
        "{}",
        text(&o)
    );
}
