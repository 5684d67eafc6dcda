//! Data-driven checks of flow files: each case in `tests/check-cases.yaml` is
//! a flow file's text and the diagnostics expected, as `line:column: text`.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    text: String,
    /// Each expected problem: `LINE:COL: part of the message`.
    expect: Vec<String>,
}

#[test]
fn check_cases() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check-cases.yaml");
    let cases: Vec<Case> =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut registry = sluice_sql::registry();
    sluice_http::register(&mut registry);
    sluice_mail::register(&mut registry);
    sluice_script::register(&mut registry);
    let mut failures = Vec::new();
    for case in &cases {
        let got: Vec<String> = match sluice_model::load(&case.name, &case.text, &registry) {
            Ok(_) => Vec::new(),
            Err(d) => d
                .items
                .iter()
                .map(|i| {
                    let (l, c) = d.file.line_col(i.span.start);
                    format!("{l}:{c}: {}", i.message)
                })
                .collect(),
        };
        let missing: Vec<&String> = case
            .expect
            .iter()
            .filter(|e| {
                let (place, text) = e.split_once(": ").unwrap_or((e, ""));
                !got.iter()
                    .any(|g| g.starts_with(&format!("{place}: ")) && g.contains(text))
            })
            .collect();
        if !missing.is_empty() || got.len() != case.expect.len() {
            failures.push(format!(
                "{}:\n  want {:#?}\n  got {:#?}",
                case.name, case.expect, got
            ));
        }
    }
    println!(
        "check cases: {} passed, {} failed",
        cases.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
