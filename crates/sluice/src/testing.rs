//! `sluice test` (run flow tests offline) and `sluice runs record` (write a
//! recorded run as a test case); see the `sluice-test` crate.

use crate::{FAILED, INVALID, find_run, open_store, print_diagnostics, registry};
use sluice_store::Store;
use sluice_test::report::{FileProblem, counts, junit};
use sluice_test::{FileReport, Runner, is_test_file};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every test file under `paths` (files as given, folders searched),
/// sorted.
fn test_files(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            let entries = std::fs::read_dir(&p)
                .map_err(|e| format!("cannot read folder `{}`: {e}", p.display()))?;
            for e in entries.map_while(Result::ok) {
                let path = e.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if path.is_dir() && !hidden {
                    todo.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_test_file)
                {
                    out.push(path);
                }
            }
        } else if p.exists() {
            out.push(p);
        } else {
            return Err(format!("no file or folder `{}`", p.display()));
        }
    }
    out.sort();
    Ok(out)
}

/// `sluice test [PATH...] [--junit FILE]`.
pub(crate) async fn test(paths: &[String], junit_file: Option<&str>) -> u8 {
    let paths = if paths.is_empty() {
        vec![".".to_owned()]
    } else {
        paths.to_vec()
    };
    let files = match test_files(&paths) {
        Ok(f) => f,
        Err(m) => {
            eprintln!("error: {m}");
            return INVALID;
        }
    };
    if files.is_empty() {
        eprintln!(
            "error: no test files (NAME.test.yaml) under {}",
            paths.join(", ")
        );
        return INVALID;
    }
    let limits = crate::LIMITS.get().copied().unwrap_or_default();
    let runner = match Runner::new(Arc::new(registry()), limits).await {
        Ok(r) => r,
        Err(m) => {
            eprintln!("error: {m}");
            return FAILED;
        }
    };
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for f in &files {
        let report = runner.run_file(f).await;
        print_file(&report);
        reports.push(report);
    }
    let (passed, failed, broken) = counts(&reports);
    let mut summary = format!(
        "{} case{} passed, {failed} failed",
        passed,
        if passed == 1 { "" } else { "s" }
    );
    if broken > 0 {
        summary.push_str(&format!(
            ", {broken} file{} could not run",
            if broken == 1 { "" } else { "s" }
        ));
    }
    println!(
        "{summary} ({} files, {:.0} ms)",
        files.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(path) = junit_file
        && let Err(e) = std::fs::write(path, junit(&reports))
    {
        eprintln!("error: cannot write {path}: {e}");
        return FAILED;
    }
    if failed == 0 && broken == 0 {
        0
    } else {
        FAILED
    }
}

fn print_file(report: &FileReport) {
    match &report.cases {
        Err(FileProblem::Io(m)) => println!("FAIL {}: {m}", report.file),
        Err(FileProblem::Invalid(d)) => {
            println!("FAIL {}: cannot run", report.file);
            print_diagnostics(d);
        }
        Ok(cases) => {
            for c in cases {
                let ms = c.seconds * 1000.0;
                if c.passed() {
                    println!("ok   {} › {} ({ms:.1} ms)", report.file, c.name);
                } else {
                    println!("FAIL {} › {} ({ms:.1} ms)", report.file, c.name);
                    for f in &c.failures {
                        println!("       {f}");
                    }
                }
            }
        }
    }
}

/// `sluice runs record RUN --flow FILE [--to TEST_FILE] [--name NAME]`.
pub(crate) async fn record(
    store_url: &str,
    id: &str,
    flow_path: &str,
    to: Option<&str>,
    name: Option<&str>,
) -> u8 {
    let store = match open_store(store_url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let run = match find_run(&store, id).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let registry = registry();
    // The case is written for the file, not run: no secret is read.
    let flow = match crate::reported(crate::read_flow(flow_path, &registry)) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if flow.id != run.summary.flow_id {
        eprintln!(
            "error: run `{}` is a run of flow `{}`, and `{flow_path}` is flow `{}`",
            run.summary.id, run.summary.flow_id, flow.id
        );
        return INVALID;
    }
    // The case replays the run: the version it ran must still be known.
    let Some(version) = &run.flow_version else {
        eprintln!(
            "error: run `{}` has no flow version recorded; it cannot be replayed",
            run.summary.id
        );
        return INVALID;
    };
    match store.flow_version(&flow.id, version).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!(
                "error: the version {version} of flow `{}` that run `{}` ran is no longer in the store; a case recorded from it could not be trusted",
                flow.id, run.summary.id
            );
            return INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return FAILED;
        }
    }
    if &flow.version != version {
        eprintln!(
            "warning: `{flow_path}` changed since run `{}` (version {version}, now {}); the case is written for the file as it is now",
            run.summary.id, flow.version
        );
    }
    let name = name.map_or_else(|| format!("run {}", run.summary.id), str::to_owned);
    let case = sluice_test::record::case_of(&run, &registry, &flow.trigger.kind, &name);
    let case = sluice_action::secrets::scrub_value(&case);
    match to {
        None => match sluice_test::record::file_text(&relative_flow(None, flow_path), vec![case]) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(m) => {
                eprintln!("error: {m}");
                FAILED
            }
        },
        Some(to) => append(to, flow_path, case, &name),
    }
}

/// The flow's path as a test file at `to` names it.
fn relative_flow(to: Option<&str>, flow_path: &str) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let dir = match to {
        Some(t) => abs(Path::new(t))
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default(),
        None => abs(Path::new(".")),
    };
    sluice_test::record::relative(&dir, &abs(Path::new(flow_path)))
        .display()
        .to_string()
}

/// Add `case` to the test file `to` (made when missing).
fn append(to: &str, flow_path: &str, case: serde_json::Value, name: &str) -> u8 {
    let flow = relative_flow(Some(to), flow_path);
    let mut cases = Vec::new();
    if let Ok(text) = std::fs::read_to_string(to) {
        match sluice_model::node::parse(&text).map(|n| n.to_json()) {
            Ok(doc) => {
                if doc.get("flow").and_then(|f| f.as_str()) != Some(flow.as_str()) {
                    eprintln!(
                        "error: `{to}` tests `{}`, not `{flow}`",
                        doc.get("flow").and_then(|f| f.as_str()).unwrap_or("?")
                    );
                    return INVALID;
                }
                cases = doc
                    .get("cases")
                    .and_then(|c| c.as_array())
                    .cloned()
                    .unwrap_or_default();
            }
            Err(e) => {
                eprintln!("error: `{to}` is not a test file: {}", e.message);
                return INVALID;
            }
        }
    }
    cases.push(case);
    let n = cases.len();
    match sluice_test::record::file_text(&flow, cases)
        .and_then(|text| std::fs::write(to, text).map_err(|e| format!("cannot write {to}: {e}")))
    {
        Ok(()) => {
            eprintln!(
                "case `{name}` written to {to} ({n} case{})",
                if n == 1 { "" } else { "s" }
            );
            0
        }
        Err(m) => {
            eprintln!("error: {m}");
            FAILED
        }
    }
}
