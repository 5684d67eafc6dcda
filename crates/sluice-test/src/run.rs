//! Running a test file's cases: the real flow on the real engine, with an
//! in-memory store and the steps that reach outside answered.

use crate::answer::{Answered, Answers, runs_as_written};
use crate::diff::diff;
use crate::file::{Case, TestFile};
use crate::report::{CaseReport, FileProblem, FileReport};
use serde_json::{Value, json};
use sluice_action::{DynAction, Registry};
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_expr::data::{into_val, to_json};
use sluice_model::{Flow, Transaction};
use sluice_store::{SqliteStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Runs test files.
pub struct Runner {
    registry: Arc<Registry>,
    store: Arc<SqliteStore>,
    limits: sluice_expr::Limits,
}

impl Runner {
    /// A runner of flows checked against `registry`, with expressions held
    /// to `limits`.
    pub async fn new(registry: Arc<Registry>, limits: sluice_expr::Limits) -> Result<Self, String> {
        let store = SqliteStore::open("sqlite::memory:")
            .await
            .map_err(|e| format!("cannot open the tests' store: {e}"))?;
        Ok(Self {
            registry,
            store: Arc::new(store),
            limits,
        })
    }

    /// Whether a step type is answered in tests.
    pub fn answered(&self, kind: &str) -> bool {
        crate::answer::answered(&self.registry, kind)
    }

    /// Run every case of the test file at `path`.
    pub async fn run_file(&self, path: &Path) -> FileReport {
        let name = path.display().to_string();
        let cases = match self.load(path, &name) {
            Err(problem) => Err(problem),
            Ok((file, flow)) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let mut out = Vec::new();
                for case in &file.cases {
                    out.push(self.run_case(&flow, case, dir).await);
                }
                Ok(out)
            }
        };
        FileReport { file: name, cases }
    }

    fn load(&self, path: &Path, name: &str) -> Result<(TestFile, Flow), FileProblem> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileProblem::Io(format!("cannot read test file `{name}`: {e}")))?;
        let file = TestFile::parse(name, &text).map_err(FileProblem::Invalid)?;
        let flow_path = path.parent().unwrap_or(Path::new(".")).join(&file.flow);
        let flow_name = flow_path.display().to_string();
        let flow_text = std::fs::read_to_string(&flow_path).map_err(|e| {
            FileProblem::Io(format!("{name}: cannot read its flow `{flow_name}`: {e}"))
        })?;
        let mut flow = sluice_model::load(&flow_name, &flow_text, self.registry.as_ref())
            .map_err(FileProblem::Invalid)?;
        file.against(&flow, &|kind| self.answered(kind))
            .map_err(FileProblem::Invalid)?;
        // Nothing outside is reached: there is no transaction to hold.
        flow.transaction = Transaction::Step;
        Ok((file, flow))
    }

    async fn run_case(&self, flow: &Flow, case: &Case, dir: &Path) -> CaseReport {
        let started = Instant::now();
        let answers = Answers::new(&case.answers);
        let registry = self.registry.with_actions_of(|kind, entry| {
            (!runs_as_written(kind, entry.pure)).then(|| {
                Arc::new(Answered {
                    kind,
                    answers: answers.clone(),
                }) as Arc<dyn DynAction>
            })
        });
        let engine = Engine::new(self.store.clone(), Arc::new(registry)).with_limits(self.limits);
        let mut failures = Vec::new();
        if let Some(records) = &case.records {
            self.run_records(&engine, flow, case, &dir.join(records), &mut failures)
                .await;
            failures.extend(answers.unanswered());
        } else {
            match engine.run(flow, request(flow, case)).await {
                Err(e) => failures.push(format!("the run did not run: {e}")),
                Ok(r) => {
                    let unanswered = answers.unanswered();
                    if unanswered.is_empty() {
                        self.check(flow, case, &r, &mut failures).await;
                    } else {
                        // What follows from a call with no answer is noise.
                        failures.extend(unanswered);
                    }
                }
            }
        }
        CaseReport {
            name: case.name.clone(),
            failures,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    async fn check(&self, flow: &Flow, case: &Case, r: &RunResult, failures: &mut Vec<String>) {
        let e = &case.expect;
        let status = r.status.as_str();
        let why = || match &r.failure {
            Some(f) => format!(": step `{}`: {}", f.step, f.message),
            None => String::new(),
        };
        match (&e.status, &e.error) {
            (Some(want), _) if want != status => {
                failures.push(format!("expected status {want}, got {status}{}", why()))
            }
            (None, None) if status != "succeeded" => {
                failures.push(format!("expected status succeeded, got {status}{}", why()))
            }
            (None, Some(_)) if !matches!(status, "failed" | "incident") => {
                failures.push(format!("expected the run to fail, it is {status}"))
            }
            _ => {}
        }
        if let Some(want) = &e.error {
            match &r.failure {
                None => failures.push("expected an error, there is none".into()),
                Some(f) => {
                    if let Some(step) = &want.step
                        && *step != f.step
                    {
                        failures.push(format!(
                            "expected step `{step}` to fail, `{}` did: {}",
                            f.step, f.message
                        ));
                    }
                    if let Some(m) = &want.message
                        && !f.message.contains(m.as_str())
                    {
                        failures.push(format!(
                            "expected the error to say `{m}`, it says: {}",
                            f.message
                        ));
                    }
                }
            }
        }
        let output = r.output_json().unwrap_or(Value::Null);
        if let Some(want) = &e.output {
            for d in diff(want, &output) {
                failures.push(format!("output {d}"));
            }
        }
        if let Some((prog, _)) = &e.output_is {
            let scope =
                sluice_expr::MapScope::from_json(json!({"trigger": trigger_of(flow, case)}));
            match prog.eval_json(&output, &scope, &self.limits) {
                Ok(Some(Value::Bool(true))) => {}
                Ok(v) => failures.push(format!(
                    "`outputIs: {}` is {} for the output {}",
                    prog.code(),
                    v.map_or("empty".to_owned(), |v| v.to_string()),
                    output
                )),
                Err(err) => failures.push(format!("`outputIs: {}` failed: {err}", prog.code())),
            }
        }
        if e.steps.is_empty() {
            return;
        }
        let detail = match self.store.get_run(&r.run_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return failures.push("the run was not recorded".into()),
            Err(err) => return failures.push(format!("the run's record cannot be read: {err}")),
        };
        for s in &e.steps {
            let Some(rec) = detail.steps.iter().rev().find(|x| x.step_key == s.key) else {
                failures.push(format!("step `{}` did not run", s.key));
                continue;
            };
            let mut same = |what: &str, want: &Option<Value>, got: Option<&Value>| {
                if let Some(want) = want {
                    for d in diff(want, got.unwrap_or(&Value::Null)) {
                        failures.push(format!("step `{}` {what} {d}", s.key));
                    }
                }
            };
            same(
                "result",
                &s.result,
                rec.result.as_ref().map(to_json).as_ref(),
            );
            same(
                "output",
                &s.output,
                rec.output.as_ref().map(to_json).as_ref(),
            );
            if let Some(want) = &s.error {
                match &rec.error {
                    Some(got) if got.contains(want.as_str()) => {}
                    Some(got) => failures.push(format!(
                        "step `{}`: expected its error to say `{want}`, it says: {got}",
                        s.key
                    )),
                    None => {
                        failures.push(format!("step `{}`: expected an error, it succeeded", s.key))
                    }
                }
            }
        }
    }
}

impl Runner {
    /// A case of records: one run per record, each record its `$trigger`
    /// and input (a row that is not a record counts as a failed run).
    async fn run_records(
        &self,
        engine: &Engine<SqliteStore>,
        flow: &Flow,
        case: &Case,
        path: &Path,
        failures: &mut Vec<String>,
    ) {
        let records = match sluice_engine::read_records(path) {
            Ok((_, r)) => r,
            Err(e) => return failures.push(format!("the records cannot be read: {e}")),
        };
        let (mut succeeded, mut failed, mut outputs) = (0u64, 0u64, Vec::new());
        for record in records {
            let Ok(v) = record else {
                failed += 1;
                continue;
            };
            let v = into_val(v);
            let req = RunRequest {
                trigger: v.clone(),
                input: Some(v),
                event: None,
                accountability: accountability(),
            };
            match engine.run(flow, req).await {
                Ok(r) if r.status.as_str() == "succeeded" => {
                    succeeded += 1;
                    outputs.push(r.output_json().unwrap_or(Value::Null));
                }
                Ok(_) => failed += 1,
                Err(e) => return failures.push(format!("a record's run did not run: {e}")),
            }
        }
        let e = &case.expect;
        if let Some((s, f)) = e.records
            && (s.is_some_and(|s| s != succeeded) || f.is_some_and(|f| f != failed))
        {
            failures.push(format!(
                "expected {} succeeded and {} failed, got {succeeded} and {failed}",
                s.map_or("any".into(), |n| n.to_string()),
                f.map_or("any".into(), |n| n.to_string())
            ));
        }
        if let Some(want) = &e.outputs {
            for d in diff(&Value::Array(want.clone()), &Value::Array(outputs)) {
                failures.push(format!("outputs {d}"));
            }
        }
    }
}

/// `$accountability` of a test's runs.
fn accountability() -> Value {
    json!({"user": null, "role": null, "admin": false, "ip": null, "userAgent": null, "trigger": "test"})
}

/// `$trigger` of a case: as given, or as the flow's trigger makes it.
fn trigger_of(flow: &Flow, case: &Case) -> Value {
    if let Some(t) = &case.trigger {
        return t.clone();
    }
    let body = case.input.clone().unwrap_or(Value::Null);
    match flow.trigger.kind.as_str() {
        "webhook" => {
            let o = &flow.trigger.options;
            json!({
                "method": o.get("method").and_then(Value::as_str).unwrap_or("POST"),
                "path": format!("/hooks/{}", o.get("path").and_then(Value::as_str).unwrap_or_default()),
                "query": {},
                "headers": {},
                "body": body,
            })
        }
        "manual" => json!({"type": "manual", "body": body}),
        _ => case.event.clone().unwrap_or(body),
    }
}

/// The run a case starts, as the server would start it.
fn request(flow: &Flow, case: &Case) -> RunRequest {
    let trigger = trigger_of(flow, case);
    let input = case
        .input
        .clone()
        .or_else(|| match flow.trigger.kind.as_str() {
            "webhook" | "manual" => trigger.get("body").filter(|b| !b.is_null()).cloned(),
            _ => None,
        });
    RunRequest {
        trigger: into_val(trigger),
        input: input.map(into_val),
        event: case.event.clone(),
        accountability: accountability(),
    }
}
