//! The command line as a user meets it: real files, a real store, exit codes.

use assert_cmd::Command;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sluice() -> Command {
    let mut c = Command::cargo_bin("sluice").unwrap();
    c.current_dir(root());
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let o = cmd.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn check_reports_every_mistake_with_line_and_column() {
    let o = run(sluice().args(["check", "tests/fixtures/three-mistakes.yaml"]));
    assert_eq!(o.code, 2, "{}", o.stderr);
    for place in [
        "three-mistakes.yaml:6:25: step `check`: `filter` is not a valid jq expression",
        "three-mistakes.yaml:8:11: step `shape`: unknown step type `transfrom`",
        "three-mistakes.yaml:14:26: step `say`: option `message` refers to step `later`, which is not upstream",
        "three-mistakes.yaml:15:14: step `say`: `resolve` names step `nowhere`",
        "did you mean `transform`?",
    ] {
        assert!(
            o.stderr.contains(place),
            "missing {place:?} in:\n{}",
            o.stderr
        );
    }
}

#[test]
fn check_accepts_the_examples() {
    let o = run(sluice().args([
        "check",
        "examples/orders/flow.yaml",
        "examples/enrich/flow.yaml",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("ok"));
}

#[test]
fn check_reports_malformed_yaml_with_its_place() {
    let dir = temp("malformed");
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "id: x\nsteps:\n  - key: a\n    type: [log\n").unwrap();
    let o = run(sluice().args(["check", f.to_str().unwrap()]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("bad.yaml:") && o.stderr.contains("not valid YAML or JSON"),
        "{}",
        o.stderr
    );
    let o = run(sluice().args(["check", dir.join("missing.yaml").to_str().unwrap()]));
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("cannot read flow file"), "{}", o.stderr);
}

#[test]
fn run_prints_the_output_and_runs_show_shows_every_step() {
    let dir = temp("orders");
    let store = dir.join("runs.db");
    let store = store.to_str().unwrap();
    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--input",
        "examples/orders/order.json",
        "--store",
        store,
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        out,
        json!({"orderId": "A-1001", "sum": 42.5, "currency": "EUR", "lines": 2})
    );
    let run_id = o.stderr.split_whitespace().nth(1).unwrap().to_owned();

    let o = run(sluice().args(["runs", "show", &run_id, "--store", store]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    for text in [
        "succeeded",
        "validate  condition  ok",
        "summary   transform  ok",
        "\"filter\":\".items | length > 0\"",
        "order A-1001: 42.5 EUR for Ada Lovelace",
        "result   {\"orderId\":\"A-1001\",\"sum\":42.5,\"currency\":\"EUR\",\"lines\":2}",
    ] {
        assert!(
            o.stdout.contains(text),
            "missing {text:?} in:\n{}",
            o.stdout
        );
    }
    // The options recorded are those after templating.
    assert!(
        o.stdout.contains("\"value\":{\"orderId\":\"A-1001\""),
        "{}",
        o.stdout
    );

    // A failing run: exit 1, the step and the error on stderr; both runs kept.
    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--input",
        "examples/orders/empty-order.json",
        "--store",
        store,
    ]));
    assert_eq!(o.code, 1);
    assert!(o.stdout.is_empty());
    assert!(
        o.stderr
            .contains("step `empty_order` (throw) failed: order A-1002 has no items"),
        "{}",
        o.stderr
    );
    let o = run(sluice().args(["runs", "list", "--store", store]));
    assert_eq!(o.stdout.lines().count(), 3, "{}", o.stdout);
    let o = run(sluice().args(["runs", "list", "--status", "failed", "--store", store]));
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.stdout);
    let o = run(sluice().args(["runs", "list", "--status", "nope", "--store", store]));
    assert_eq!(o.code, 2);
}

#[test]
fn trigger_is_the_input_as_given_and_stdin_works() {
    let dir = temp("stdin");
    let flow = dir.join("echo.yaml");
    std::fs::write(&flow, "id: echo\nunmappedResults: replace\nsteps:\n  - key: t\n    type: transform\n    options:\n      value: {trigger: '{{ $trigger }}', state: '{{ . }}'}\n").unwrap();
    let o = run(sluice()
        .args([
            "run",
            flow.to_str().unwrap(),
            "--input",
            "-",
            "--store",
            "sqlite::memory:",
        ])
        .write_stdin("[1, 2]"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(out, json!({"trigger": [1, 2], "state": [1, 2]}));
    let o = run(sluice().args(["run", flow.to_str().unwrap(), "--store", "sqlite::memory:"]));
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(out, json!({"trigger": null, "state": {}}));
}

#[test]
fn an_incident_of_a_run_kept_in_memory_says_it_cannot_be_resumed() {
    let dir = temp("memory-incident");
    let flow = dir.join("sum.yaml");
    std::fs::write(
        &flow,
        "id: sum\nsteps:\n  - {key: t, type: transform, options: {value: \"{{ .a + 1 }}\"}}\n",
    )
    .unwrap();
    let input = dir.join("in.json");
    std::fs::write(&input, r#"{"a": "x"}"#).unwrap();
    let args = |store: &str| {
        let mut c = sluice();
        c.args([
            "run",
            flow.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            store,
        ]);
        run(&mut c)
    };
    let o = args("sqlite::memory:");
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("not kept"), "{}", o.stderr);
    assert!(!o.stderr.contains("runs resume"), "{}", o.stderr);
    let o = args(dir.join("runs.db").to_str().unwrap());
    assert!(o.stderr.contains("sluice runs resume"), "{}", o.stderr);
}

#[test]
fn bad_input_and_bad_store_get_clear_errors_and_lose_nothing() {
    let dir = temp("bad-input");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"a\": 1,\n \"b\": }").unwrap();
    let store = dir.join("runs.db");
    let store = store.to_str().unwrap();
    let ok = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--input",
        "examples/orders/order.json",
        "--store",
        store,
    ]));
    assert_eq!(ok.code, 0);
    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--input",
        bad.to_str().unwrap(),
        "--store",
        store,
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr
            .contains("bad.json:2:7: the input is not valid JSON"),
        "{}",
        o.stderr
    );
    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--input",
        "no/such.json",
        "--store",
        store,
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("cannot read input file `no/such.json`"),
        "{}",
        o.stderr
    );
    let o = run(sluice().args(["runs", "list", "--store", store]));
    assert_eq!(
        o.stdout.lines().count(),
        2,
        "the earlier run is still there:\n{}",
        o.stdout
    );

    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--store",
        "/no/such/dir/runs.db",
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains(
            "cannot open the store `/no/such/dir/runs.db`: the folder `/no/such/dir` does not exist"
        ),
        "{}",
        o.stderr
    );
    let o = run(sluice().args(["runs", "show", "0000-nope", "--store", store]));
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no run"));
}

#[test]
fn invalid_flow_exits_2_and_runs_nothing() {
    let dir = temp("invalid");
    let store = dir.join("runs.db");
    let run_on_store =
        |flow: &str| run(sluice().args(["run", flow, "--store", store.to_str().unwrap()]));
    let o = run_on_store("tests/fixtures/three-mistakes.yaml");
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("5 problems"), "{}", o.stderr);
    assert!(
        !store.exists(),
        "no store is created for a flow that cannot run"
    );
    // A store file that is there is opened while the flow loads: its
    // error is told only for a flow that loads, after the flow's own.
    std::fs::write(&store, "not a database").unwrap();
    let o = run_on_store("tests/fixtures/three-mistakes.yaml");
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("5 problems"), "{}", o.stderr);
    assert!(!o.stderr.contains("not a database"), "{}", o.stderr);
    let flow = dir.join("ok.yaml");
    std::fs::write(
        &flow,
        "id: ok\nsteps:\n  - {key: a, type: transform, options: {value: {a: 1}}}\n",
    )
    .unwrap();
    let o = run_on_store(flow.to_str().unwrap());
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("cannot open the store"), "{}", o.stderr);
}

#[test]
fn an_incident_is_found_patched_and_resumed_without_rerunning_steps() {
    let dir = temp("incident");
    let store = dir.join("runs.db");
    let store = store.to_str().unwrap();
    let flow = dir.join("invoice.yaml");
    std::fs::write(
        &flow,
        "id: invoice\nsteps:\n  - key: stamp\n    type: transform\n    options: {value: {stamped: true}}\n  - key: total\n    type: transform\n    options: {value: {total: '{{ .amount + 1 }}', seen: '{{ $stamp.stamped }}'}}\n",
    )
    .unwrap();
    let input = dir.join("in.json");
    std::fs::write(&input, r#"{"amount": "12"}"#).unwrap();
    let o = run(sluice().args([
        "run",
        flow.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        store,
    ]));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("stopped at an incident"), "{}", o.stderr);
    let run_id = o
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let o = run(sluice().args(["runs", "list", "--status", "incident", "--store", store]));
    assert!(o.stdout.contains(&run_id), "{}", o.stdout);

    let patch = dir.join("patch.json");
    std::fs::write(&patch, r#"{"amount": 12}"#).unwrap();
    let o = run(sluice().args([
        "runs",
        "resume",
        &run_id[..13],
        "--input-patch",
        patch.to_str().unwrap(),
        "--store",
        store,
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        out,
        json!({"amount": 12, "stamped": true, "total": 13, "seen": true})
    );

    // The run log: stamp once, the failed attempt, then the resumed attempt.
    let o = run(sluice().args(["runs", "show", &run_id, "--store", store]));
    let table: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.contains("transform") && l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(table.len(), 3, "{}", o.stdout);
    assert!(
        table[0].contains("stamp")
            && table[1].contains("total")
            && table[1].contains("failed")
            && table[2].contains("ok")
    );
    assert!(o.stdout.contains("status    succeeded"), "{}", o.stdout);

    // A run that is not at an incident cannot be resumed.
    let o = run(sluice().args(["runs", "resume", &run_id, "--store", store]));
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("not stopped at an incident"),
        "{}",
        o.stderr
    );
}

#[test]
fn events_are_checked_before_a_run() {
    let ev = "examples/greeting/customer-arrives.json";
    // The right event: the greeting of the Serverless Workflow example.
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--input",
        "examples/greeting/greetings.json",
        "--event",
        ev,
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The same event with its data in `data_base64` is decoded as the server
    // decodes it; base64 that is not the JSON it claims is refused.
    let dir = temp("events");
    let b64 = dir.join("b64.json");
    // {"customer": {"name": "Ana"}}
    std::fs::write(&b64, r#"{"specversion": "1.0", "id": "2", "source": "customer-arrival-event-source", "type": "customer-arrival-type", "datacontenttype": "application/json", "data_base64": "eyJjdXN0b21lciI6IHsibmFtZSI6ICJBbmEifX0="}"#).unwrap();
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--input",
        "examples/greeting/greetings.json",
        "--event",
        b64.to_str().unwrap(),
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(out, json!({"finalCustomerGreeting": "Hola Ana!"}));
    std::fs::write(&b64, r#"{"specversion": "1.0", "id": "2", "source": "customer-arrival-event-source", "type": "customer-arrival-type", "datacontenttype": "application/json", "data_base64": "AP8="}"#).unwrap();
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--event",
        b64.to_str().unwrap(),
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("not the JSON"), "{}", o.stderr);
    // A flow that consumes an event, run without one.
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("consumes the event that starts the run"),
        "{}",
        o.stderr
    );
    // An event for a flow with a manual trigger.
    let o = run(sluice().args([
        "run",
        "examples/orders/flow.yaml",
        "--event",
        ev,
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("--event needs an event trigger"),
        "{}",
        o.stderr
    );
    // An event of another type, and something that is not a CloudEvent.
    let other = dir.join("other.json");
    std::fs::write(&other, r#"{"specversion": "1.0", "id": "1", "source": "customer-arrival-event-source", "type": "customer-left"}"#).unwrap();
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--event",
        other.to_str().unwrap(),
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("the event's type `customer-left` is not the trigger's eventType `customer-arrival-type`"), "{}", o.stderr);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"id": "1", "type": "x"}"#).unwrap();
    let o = run(sluice().args([
        "run",
        "examples/greeting/flow.yaml",
        "--event",
        bad.to_str().unwrap(),
        "--store",
        "sqlite::memory:",
    ]));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("the CloudEvent has no `specversion`"),
        "{}",
        o.stderr
    );
}

#[test]
fn the_flow_file_schema_names_every_step_type_and_its_options() {
    let o = run(sluice().arg("schema"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let schema: Value = serde_json::from_str(&o.stdout).unwrap();
    let steps = schema["properties"]["steps"]["items"]["oneOf"]
        .as_array()
        .unwrap();
    let kind = |k: &str| {
        steps
            .iter()
            .find(|s| s["properties"]["type"]["const"] == k)
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    for k in [
        "transform",
        "condition",
        "log",
        "sleep",
        "throw",
        "split",
        "wait",
        "flow",
        "sql.query",
        "sql.create",
        "sql.lookup",
        "sql.lookupMany",
        "sql.lookupSet",
        "sql.update",
        "sql.upsert",
        "sql.delete",
        "sql.link",
        "sql.unlink",
        "sql.assertOption",
        "envelope",
    ] {
        kind(k);
    }
    assert_eq!(
        kind("transform")["properties"]["retry"]["required"],
        json!(["attempts"])
    );
    // Options come from the step's own types; templates are allowed for any value.
    let ms = &kind("sleep")["properties"]["options"]["properties"]["ms"];
    assert_eq!(ms["anyOf"][1]["type"], json!("string"), "{ms}");
    assert!(
        kind("sleep")["properties"]["options"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("ms"))
    );
    let triggers = schema["properties"]["trigger"]["oneOf"].as_array().unwrap();
    let ce = triggers
        .iter()
        .find(|t| t["properties"]["type"]["const"] == "cloudevent")
        .unwrap();
    assert!(
        ce["properties"]["eventType"].is_object()
            && ce["properties"]["eventDataFilter"].is_object(),
        "{ce}"
    );
}

#[test]
fn run_starts_the_flows_of_the_folder_for_flow_steps() {
    let dir = temp("subflow");
    std::fs::write(
        dir.join("main.yaml"),
        "id: main\nsteps:\n  - {key: nap, type: sleep, options: {ms: 50}}\n  - {key: sum, type: flow, options: {flow: sum, input: {items: \"{{ .items }}\"}}, actionDataFilter: {toStateData: .sum}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sum.yaml"),
        "id: sum\ntrigger: {type: flow}\nunmappedResults: replace\nsteps:\n  - {key: add, type: transform, options: {value: \"{{ .items | add }}\"}}\n",
    )
    .unwrap();
    // An input file beside the flows is passed over.
    std::fs::write(dir.join("in.json"), r#"{"items": [1, 2, 3]}"#).unwrap();
    let store = dir.join("s.db");
    let o = run(sluice()
        .arg("run")
        .arg(dir.join("main.yaml"))
        .arg("--input")
        .arg(dir.join("in.json"))
        .arg("--store")
        .arg(&store));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(out, json!({"items": [1, 2, 3], "sum": 6}));
    // A flow step naming a flow the folder does not have fails the run.
    std::fs::write(
        dir.join("lost.yaml"),
        "id: lost\nsteps:\n  - {key: go, type: flow, options: {flow: nowhere}}\n",
    )
    .unwrap();
    let o = run(sluice()
        .arg("run")
        .arg(dir.join("lost.yaml"))
        .arg("--store")
        .arg(&store));
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("there is no flow `nowhere` to start"),
        "{}",
        o.stderr
    );
}

#[test]
fn a_disabled_flow_is_checked_but_not_run_nor_started_by_a_flow_step() {
    let dir = temp("disabled");
    std::fs::write(
        dir.join("main.yaml"),
        "id: main\nsteps:\n  - {key: go, type: flow, options: {flow: sub}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sub.yaml"),
        "id: sub\nenabled: false\ntrigger: {type: flow}\nsteps:\n  - {key: s, type: log, options: {message: ran}}\n",
    )
    .unwrap();
    let o = run(sluice().arg("check").arg(dir.join("sub.yaml")));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("1 steps, disabled)"), "{}", o.stderr);
    let store = dir.join("s.db");
    let o = run(sluice()
        .arg("run")
        .arg(dir.join("sub.yaml"))
        .arg("--store")
        .arg(&store));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("flow `sub` is disabled (`enabled: false`"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty());
    let o = run(sluice()
        .arg("run")
        .arg(dir.join("main.yaml"))
        .arg("--store")
        .arg(&store));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("flow `sub` is disabled"), "{}", o.stderr);
}

#[test]
fn env_shows_only_the_listed_variables_and_the_operator_caps_the_list() {
    let dir = temp("env");
    let flow = dir.join("env.yaml");
    std::fs::write(
        &flow,
        "id: env\nenv: [SLUICE_T_REGION, SLUICE_T_UNSET]\nunmappedResults: replace\nsteps:\n  - {key: t, type: transform, options: {value: {region: \"{{ $env.SLUICE_T_REGION }}\", all: \"{{ $env }}\"}}}\n",
    )
    .unwrap();
    let o = run(sluice()
        .arg("run")
        .arg(&flow)
        .env("SLUICE_T_REGION", "eu-west")
        .env("SLUICE_T_SECRET", "hidden"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).unwrap();
    // Listed and set: visible; listed and unset: absent; not listed: absent.
    assert_eq!(
        out,
        json!({"region": "eu-west", "all": {"SLUICE_T_REGION": "eu-west"}})
    );
    // The operator's allow-list refuses a flow listing another variable.
    let o = run(sluice()
        .arg("check")
        .arg(&flow)
        .env("SLUICE_FLOWS_ENV_ALLOW_LIST", "SLUICE_T_REGION, OTHER"));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("environment variable `SLUICE_T_UNSET` is not in the server's allow-list"),
        "{}",
        o.stderr
    );
    let o = run(sluice().arg("check").arg(&flow).env(
        "SLUICE_FLOWS_ENV_ALLOW_LIST",
        "SLUICE_T_REGION,SLUICE_T_UNSET",
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn an_import_refuses_a_flow_in_one_transaction() {
    let dir = temp("import-tx");
    let flow = dir.join("tx.yaml");
    std::fs::write(
        &flow,
        "id: tx\ntransaction: flow\nconnections: {db: {url: \"sqlite:t.db?mode=rwc\"}}\nsteps:\n  - {key: e, type: envelope, options: {connection: db, patches: [{op: create, collection: t, properties: {x: \"{{ .x }}\"}}]}}\n",
    )
    .unwrap();
    let records = dir.join("r.csv");
    std::fs::write(&records, "x\n1\n2\n").unwrap();
    let o = run(sluice()
        .current_dir(&dir)
        .arg("run")
        .arg(&flow)
        .arg("--records")
        .arg(&records)
        .arg("--store")
        .arg(dir.join("s.db")));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("the flow runs in one transaction (`transaction: flow`)"),
        "{}",
        o.stderr
    );
}

#[test]
fn an_import_refuses_an_envelope_that_calls_an_api() {
    let dir = temp("import-call");
    let flow = dir.join("call.yaml");
    std::fs::write(
        &flow,
        "id: call\nconnections:\n  db: {url: \"sqlite:t.db?mode=rwc\"}\n  api: {type: http, baseUrl: \"https://api.example.com\"}\nsteps:\n  - {key: e, type: envelope, options: {connection: db, patches: [{call: {connection: api, method: POST, url: /x}, compensate: {connection: api, method: DELETE, url: /x}}]}}\n",
    )
    .unwrap();
    let records = dir.join("r.csv");
    std::fs::write(&records, "x\n1\n").unwrap();
    let o = run(sluice()
        .current_dir(&dir)
        .arg("run")
        .arg(&flow)
        .arg("--records")
        .arg(&records)
        .arg("--store")
        .arg(dir.join("s.db")));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("envelope `e` calls an API"),
        "{}",
        o.stderr
    );
}
