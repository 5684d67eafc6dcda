//! A recorded run made a case: its input (or `$trigger`, or event), the
//! answer every step that reached outside got, in order, and its end as
//! the expectation (the output of a run that succeeded; the failing step
//! and its error otherwise).

use crate::answer::answered;
use serde_json::{Map, Value, json};
use sluice_action::Registry;
use sluice_expr::data::to_json;
use sluice_store::{RunDetail, RunStatus};

/// The case a recorded run makes, named `name`, for a flow whose trigger
/// is of `trigger_kind`.
pub fn case_of(run: &RunDetail, registry: &Registry, trigger_kind: &str, name: &str) -> Value {
    let (trigger, input) = (to_json(&run.trigger), to_json(&run.input));
    let mut case = Map::new();
    case.insert("name".into(), Value::String(name.to_owned()));
    let manual = json!({"type": "manual", "body": input});
    if sluice_model::EVENT_TRIGGERS.contains(&trigger_kind) {
        case.insert("event".into(), trigger);
    } else if !(trigger.is_null() || trigger_kind == "manual" && trigger == manual) {
        // As the run had it (a webhook's headers and query, a run started
        // from the command line).
        case.insert("trigger".into(), trigger);
    }
    if !input.is_null() {
        case.insert("input".into(), input);
    }
    let mut answers: Map<String, Value> = Map::new();
    for step in &run.steps {
        if !answered(registry, &step.kind) {
            continue;
        }
        let answer = if step.ok {
            json!({"result": step.result.as_ref().map(to_json)})
        } else {
            let mut a = json!({"error": step.error.clone().unwrap_or_default()});
            if let Some(b) = &step.blame
                && b != "external"
            {
                a["blame"] = Value::String(b.clone());
            }
            a
        };
        match answers
            .entry(step.step_key.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(answer),
            other => *other = Value::Array(vec![answer]),
        }
    }
    if !answers.is_empty() {
        case.insert("answers".into(), Value::Object(answers));
    }
    let status = run.summary.status;
    let mut expect = Map::new();
    expect.insert("status".into(), Value::String(status.as_str().to_owned()));
    match status {
        RunStatus::Succeeded => {
            expect.insert(
                "output".into(),
                run.output.as_ref().map(to_json).unwrap_or(Value::Null),
            );
        }
        RunStatus::Failed | RunStatus::Incident => {
            let mut e = Map::new();
            if let Some(s) = &run.summary.error_step {
                e.insert("step".into(), Value::String(s.clone()));
            }
            if let Some(m) = &run.summary.error {
                e.insert("message".into(), Value::String(m.clone()));
            }
            expect.insert("error".into(), Value::Object(e));
        }
        _ => {}
    }
    case.insert("expect".into(), Value::Object(expect));
    Value::Object(case)
}

/// A test file's text holding `cases` for the flow at `flow` (relative to
/// the test file).
pub fn file_text(flow: &str, cases: Vec<Value>) -> Result<String, String> {
    let doc = json!({"flow": flow, "cases": cases});
    let mut text =
        serde_saphyr::to_string(&doc).map_err(|e| format!("cannot write the test file: {e}"))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A path from the folder `from` to the file `to`, both absolute.
pub fn relative(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = std::path::PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to_parts[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn relative_paths_climb_and_descend() {
        assert_eq!(
            relative(Path::new("/a/b"), Path::new("/a/b/f.yaml")),
            Path::new("f.yaml")
        );
        assert_eq!(
            relative(Path::new("/a/b/tests"), Path::new("/a/b/flows/f.yaml")),
            Path::new("../flows/f.yaml")
        );
    }
}
