//! Data-driven engine tests: each file in `tests/cases/` is a YAML document
//! with a list of cases, each a flow, an input and the expected end of the run
//! (`output`, or `status` with `failedStep` and `error` text).

use serde::Deserialize;
use serde_json::Value;
use sluice_engine::{Engine, RunRequest};
use sluice_store::{RunStatus, SqliteStore, Store};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    flow: Value,
    #[serde(default)]
    input: Option<Value>,
    /// A CloudEvent that starts the run.
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "failedStep")]
    failed_step: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// Expected run log: the keys of the steps that ran, in order.
    #[serde(default)]
    ran: Option<Vec<String>>,
}

#[tokio::test]
async fn engine_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    let mut failures = Vec::new();
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let cases: Vec<Case> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in cases {
            count += 1;
            let flow_text = serde_json::to_string(&case.flow).unwrap();
            let flow = match sluice_model::load(&case.name, &flow_text, registry.as_ref()) {
                Ok(f) => f,
                Err(d) => {
                    failures.push(format!("{}: flow invalid: {d}", case.name));
                    continue;
                }
            };
            let req = RunRequest {
                trigger: sluice_expr::data::into_val(
                    case.event
                        .clone()
                        .or_else(|| case.input.clone())
                        .unwrap_or(Value::Null),
                ),
                input: case.input.clone().map(sluice_expr::data::into_val),
                event: case.event.clone(),
                ..Default::default()
            };
            let result = match engine.run(&flow, req).await {
                Ok(r) => r,
                Err(e) => {
                    if case.status.as_deref() == Some("refused")
                        && case
                            .error
                            .as_ref()
                            .is_some_and(|t| e.to_string().contains(t.as_str()))
                    {
                        continue;
                    }
                    failures.push(format!("{}: engine error {e}", case.name));
                    continue;
                }
            };
            let want_status = case.status.as_deref().unwrap_or("succeeded");
            if result.status.as_str() != want_status {
                failures.push(format!(
                    "{}: status {} (failure {:?}), want {want_status}",
                    case.name,
                    result.status.as_str(),
                    result.failure
                ));
                continue;
            }
            if let Some(out) = &case.output
                && result.output_json().as_ref() != Some(out)
            {
                failures.push(format!(
                    "{}: output {:?}, want {out}",
                    case.name, result.output
                ));
            }
            if let Some(step) = &case.failed_step
                && result.failure.as_ref().map(|f| &f.step) != Some(step)
            {
                failures.push(format!(
                    "{}: failed step {:?}, want {step}",
                    case.name, result.failure
                ));
            }
            if let Some(text) = &case.error
                && !result
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.message.contains(text.as_str()))
            {
                failures.push(format!(
                    "{}: error {:?} does not contain {text:?}",
                    case.name, result.failure
                ));
            }
            let detail = store.get_run(&result.run_id).await.unwrap().unwrap();
            if result.status != RunStatus::Running && detail.summary.status != result.status {
                failures.push(format!(
                    "{}: stored status {:?}",
                    case.name, detail.summary.status
                ));
            }
            if let Some(ran) = &case.ran {
                let got: Vec<&str> = detail.steps.iter().map(|s| s.step_key.as_str()).collect();
                if &got != ran {
                    failures.push(format!("{}: ran {got:?}, want {ran:?}", case.name));
                }
            }
        }
    }
    println!(
        "engine cases: {} passed, {} failed",
        count - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(count > 10);
}
