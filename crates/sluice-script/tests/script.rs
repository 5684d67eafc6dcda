//! `script` in a flow, run by the engine as a user's flow would be: its
//! data (the state data with `$trigger` and `$last`), its result merged
//! like any step's, its `console` lines in the run's record, its code
//! never templated, and a script that throws or runs away failing its step
//! with the place and the reason.

use serde_json::{Value, json};
use sluice_action::Blame;
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_store::{RunStatus, SqliteStore, Store};
use std::sync::Arc;

async fn run(store: &Arc<SqliteStore>, text: &str, input: Value) -> RunResult {
    run_with(store, text, input, Value::Null).await
}

async fn run_with(store: &Arc<SqliteStore>, text: &str, input: Value, trigger: Value) -> RunResult {
    let registry = Arc::new(sluice_script::registry());
    let engine = Engine::new(store.clone(), registry.clone());
    let flow =
        sluice_model::load("s.yaml", text, registry.as_ref()).unwrap_or_else(|d| panic!("{d}"));
    let req = RunRequest {
        input: Some(sluice_expr::data::into_val(input)),
        trigger: sluice_expr::data::into_val(trigger),
        ..Default::default()
    };
    engine.run(&flow, req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_step_computes_from_its_data_and_logs() {
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let text = r#"id: s
steps:
  - key: price
    type: transform
    options: {value: {net: "{{ .net }}"}}
  - key: tax
    type: script
    options:
      code: |
        // `{{ .net }}` here is text of the script, never a template.
        module.exports = async function (data) {
          console.log('pricing', data.items.length, 'items for', data.$trigger.customer);
          const gross = Math.round(data.net * 1.19 * 100) / 100;
          return { gross, lines: data.items.map((i) => `${i.sku} x${i.qty}`), last: data.$last, note: '{{ .net }}' };
        };
"#;
    let input = json!({"net": 100, "items": [{"sku": "A", "qty": 2}]});
    let r = run_with(&store, text, input, json!({"customer": "C-1"})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    let out = r.output_json().unwrap();
    assert_eq!(out["gross"], json!(119));
    assert_eq!(out["lines"], json!(["A x2"]));
    assert_eq!(out["last"], json!({"net": 100}));
    assert_eq!(out["note"], "{{ .net }}");
    let steps = store.get_run(&r.run_id).await.unwrap().unwrap().steps;
    assert_eq!(steps[1].logs, vec!["pricing 1 items for C-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_throws_or_runs_away_fails_its_step() {
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let step = |code: &str, more: &str| {
        format!(
            "id: s\nsteps:\n  - key: go\n    type: script\n    options:\n      {more}code: |\n        {}\n",
            code.replace('\n', "\n        ")
        )
    };
    let r = run(
        &store,
        &step("module.exports = function (data) {\n  if (!data.id) {\n    throw new TypeError('no id');\n  }\n};", ""),
        json!({}),
    )
    .await;
    let f = r.failure.unwrap();
    assert_eq!((r.status, f.blame), (RunStatus::Incident, Blame::Data));
    assert!(
        f.message.contains("the script threw at line 3, column"),
        "{}",
        f.message
    );
    assert!(f.message.ends_with("TypeError: no id"), "{}", f.message);
    let r = run(
        &store,
        &step(
            "module.exports = () => { while (true) {} };",
            "timeoutMs: 200\n      ",
        ),
        json!({}),
    )
    .await;
    let f = r.failure.unwrap();
    assert!(
        f.message.contains("ran longer than its 200 ms"),
        "{}",
        f.message
    );
    let r = run(
        &store,
        &step(
            "module.exports = () => { const a = []; for (;;) a.push({ n: a.length }); };",
            "memoryMb: 8\n      ",
        ),
        json!({}),
    )
    .await;
    let f = r.failure.unwrap();
    assert!(
        f.message.contains("needed more than its 8 MiB"),
        "{}",
        f.message
    );
    // A syntax error is found when the flow loads, with its place.
    let registry = sluice_script::registry();
    let e = sluice_model::load(
        "s.yaml",
        &step(
            "module.exports = function (data) {\n  return data.;\n};",
            "",
        ),
        &registry,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the script does not parse: line 2, column"),
        "{e}"
    );
}
