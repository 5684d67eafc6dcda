//! Every example in examples/ runs with `sluice run` and prints what its
//! `example.json` expects.

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

#[test]
fn every_example_produces_its_expected_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("example.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "examples found: {dirs:?}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("example.json")).unwrap())
                .unwrap();
        let mut cmd = Command::cargo_bin("sluice").unwrap();
        cmd.current_dir(&root)
            .arg("run")
            .arg(dir.join("flow.yaml"))
            .args(["--store", "sqlite::memory:"]);
        for (key, flag) in [("input", "--input"), ("event", "--event")] {
            if let Some(f) = spec[key].as_str() {
                cmd.arg(flag).arg(dir.join(f));
            }
        }
        let out = cmd.output().unwrap();
        let got: Result<Value, _> = serde_json::from_slice(&out.stdout);
        if !out.status.success() || got.as_ref().ok() != Some(&spec["expected"]) {
            failures.push(format!(
                "{}: exit {:?}, stdout {:?}, stderr {}",
                dir.display(),
                out.status.code(),
                got,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    println!(
        "examples: {} passed, {} failed",
        dirs.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
