//! Flow tests as a user meets them: a run against a real REST API
//! (json-server) and a real PostgreSQL recorded with `sluice runs record`,
//! then replayed by `sluice test` with both out of reach; and the examples'
//! own test files.

mod common;

use assert_cmd::Command;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn sluice(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::cargo_bin("sluice")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The id of the run `sluice run` reported (`run ID succeeded`).
fn run_id(stderr: &str) -> String {
    stderr
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in: {stderr}"))
        .to_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-flowtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_run_against_postgres_and_an_api_replays_offline_to_the_same_output() {
    let Ok(pg) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "SLUICE_TEST_POSTGRES_URL must be set under CI"
        );
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = temp("record");
    let Some(api) = common::start_json_server(
        &dir,
        &json!({"customers": [{"id": 7, "name": "Ada Lovelace", "tier": "gold"}]}),
    ) else {
        return;
    };
    let table = format!("flow_test_orders_{}", std::process::id());
    std::fs::write(
        dir.join("setup.yaml"),
        format!(
            "id: setup\ntrigger: {{type: manual}}\nconnections:\n  db: {{url: \"${{env:SLUICE_T_FLOWTEST_DB}}\"}}\nsteps:\n  - {{key: t, type: sql.query, options: {{connection: db, query: \"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC)\"}}}}\n"
        ),
    )
    .unwrap();
    let flow = format!(
        r#"id: enrich-order
trigger: {{type: manual}}
connections:
  crm: {{type: http, baseUrl: "http://127.0.0.1:{port}", allowPrivateHosts: ["127.0.0.1"]}}
  db: {{url: "${{env:SLUICE_T_FLOWTEST_DB}}"}}
steps:
  - key: customer
    type: http.request
    options: {{connection: crm, url: "/customers/{{{{ .customerId }}}}"}}
    actionDataFilter: {{toStateData: .customer}}
  - key: save
    type: sql.upsert
    options:
      connection: db
      collection: {table}
      criteria: {{id: "{{{{ .orderId }}}}"}}
      properties: {{customer: "{{{{ .customer.body.name }}}}", total: "{{{{ .total }}}}"}}
    actionDataFilter: {{toStateData: .saved}}
  - key: answer
    type: transform
    options:
      value: {{order: "{{{{ .orderId }}}}", customer: "{{{{ .customer.body.name }}}}", tier: "{{{{ .customer.body.tier }}}}", saved: "{{{{ .saved.id }}}}"}}
    actionDataFilter: {{toStateData: .answer}}
    stateDataFilter: {{output: .answer}}
"#,
        port = api.port
    );
    std::fs::write(dir.join("flow.yaml"), flow).unwrap();
    std::fs::write(
        dir.join("order.json"),
        json!({"orderId": "A-1", "customerId": 7, "total": 12.5}).to_string(),
    )
    .unwrap();
    // SAFETY: this test's own variable, set before any child starts.
    unsafe { std::env::set_var("SLUICE_T_FLOWTEST_DB", &pg) };
    let (ok, _, err) = sluice(&dir, &["run", "setup.yaml", "--store", "store.db"]);
    assert!(ok, "{err}");
    let (ok, out, err) = sluice(
        &dir,
        &[
            "run",
            "flow.yaml",
            "--input",
            "order.json",
            "--store",
            "store.db",
        ],
    );
    assert!(ok, "{err}");
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        output,
        json!({"order": "A-1", "customer": "Ada Lovelace", "tier": "gold", "saved": "A-1"})
    );
    let run = run_id(&err);
    let (ok, _, err) = sluice(
        &dir,
        &[
            "runs",
            "record",
            &run,
            "--flow",
            "flow.yaml",
            "--to",
            "flow.test.yaml",
            "--name",
            "a gold customer's order",
            "--store",
            "store.db",
        ],
    );
    assert!(ok, "{err}");
    let case = std::fs::read_to_string(dir.join("flow.test.yaml")).unwrap();
    assert!(
        case.contains("customer:") && case.contains("save:"),
        "{case}"
    );
    // Out of reach: the API stopped, the database's URL pointing nowhere.
    drop(api);
    unsafe { std::env::set_var("SLUICE_T_FLOWTEST_DB", "postgres://nobody@127.0.0.1:1/none") };
    let (ok, out, err) = sluice(&dir, &["test", "flow.test.yaml", "--junit", "junit.xml"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("ok   flow.test.yaml › a gold customer's order"),
        "{out}"
    );
    assert!(out.contains("1 case passed, 0 failed"), "{out}");
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"1\" failures=\"0\""), "{junit}");
    // The flow changed: an answered step is gone, and the case says so.
    let changed = std::fs::read_to_string(dir.join("flow.yaml"))
        .unwrap()
        .replace("key: save", "key: store");
    std::fs::write(dir.join("flow.yaml"), changed).unwrap();
    let (ok, out, err) = sluice(&dir, &["test", "flow.test.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("the case answers step `save`, which flow `enrich-order` does not have"),
        "{out}{err}"
    );
}

#[test]
fn the_examples_pass_their_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (ok, out, err) = sluice(&root, &["test", "examples"]);
    assert!(ok, "{out}{err}");
    let files = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().join("flow.test.yaml").is_file())
        })
        .count();
    assert!(files >= 6, "{files} examples have tests");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn a_recorded_run_whose_flow_version_is_gone_is_refused() {
    let dir = temp("gone");
    std::fs::write(
        dir.join("flow.yaml"),
        "id: hello\ntrigger: {type: manual}\nsteps:\n  - {key: a, type: transform, options: {value: {hi: 1}}}\n",
    )
    .unwrap();
    let (ok, _, err) = sluice(&dir, &["run", "flow.yaml", "--store", "store.db"]);
    assert!(ok, "{err}");
    let run = run_id(&err);
    // The store forgets the flow's versions.
    let (ok, out, err) = sluice(
        &dir,
        &[
            "runs",
            "record",
            &run,
            "--flow",
            "flow.yaml",
            "--store",
            "store.db",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("hi: 1"), "{out}");
    let db = sqlite_exec(&dir.join("store.db"), "DELETE FROM flow_versions");
    assert!(db, "cannot edit the store");
    let (ok, _, err) = sluice(
        &dir,
        &[
            "runs",
            "record",
            &run,
            "--flow",
            "flow.yaml",
            "--store",
            "store.db",
        ],
    );
    assert!(!ok);
    assert!(err.contains("is no longer in the store"), "{err}");
}

/// Run one statement on a SQLite file (with the sqlite3 shell when there
/// is one, else through a flow).
fn sqlite_exec(db: &Path, sql: &str) -> bool {
    let dir = db.parent().unwrap();
    std::fs::write(
        dir.join("edit.yaml"),
        format!(
            "id: edit\ntrigger: {{type: manual}}\nconnections:\n  s: {{url: \"sqlite:{}\"}}\nsteps:\n  - {{key: q, type: sql.query, options: {{connection: s, query: \"{sql}\"}}}}\n",
            db.display()
        ),
    )
    .unwrap();
    sluice(dir, &["run", "edit.yaml", "--store", "sqlite::memory:"]).0
}
