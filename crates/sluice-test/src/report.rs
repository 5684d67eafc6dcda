//! What a test run says: a line per case and the reasons of each failure
//! for people, JUnit XML for CI systems.

use sluice_model::Diagnostics;
use std::fmt::Write as _;

/// Why a test file's cases could not run.
#[derive(Debug)]
pub enum FileProblem {
    /// The file or its flow cannot be read.
    Io(String),
    /// The test file or its flow has mistakes, with their places.
    Invalid(Diagnostics),
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(m) => f.write_str(m),
            Self::Invalid(d) => write!(f, "{d}"),
        }
    }
}

/// One test file's outcome.
#[derive(Debug)]
pub struct FileReport {
    /// The file, as given.
    pub file: String,
    /// Each case's outcome, or why none ran.
    pub cases: Result<Vec<CaseReport>, FileProblem>,
}

/// One case's outcome.
#[derive(Debug)]
pub struct CaseReport {
    /// Its name.
    pub name: String,
    /// What did not hold (empty: it passed).
    pub failures: Vec<String>,
    /// How long it took.
    pub seconds: f64,
}

impl CaseReport {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Counts over many files: passed, failed, and files that could not run.
pub fn counts(files: &[FileReport]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for f in files {
        match &f.cases {
            Ok(cases) => {
                for case in cases {
                    if case.passed() {
                        c.0 += 1;
                    } else {
                        c.1 += 1;
                    }
                }
            }
            Err(_) => c.2 += 1,
        }
    }
    c
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}

/// The reports as JUnit XML: a test suite per file, a test case per case
/// (a file that could not run is one failed case named after it).
pub fn junit(files: &[FileReport]) -> String {
    let (passed, failed, broken) = counts(files);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"sluice test\" tests=\"{}\" failures=\"{}\">",
        passed + failed + broken,
        failed + broken
    );
    for f in files {
        match &f.cases {
            Ok(cases) => {
                let fails = cases.iter().filter(|c| !c.passed()).count();
                let time: f64 = cases.iter().map(|c| c.seconds).sum();
                let _ = writeln!(
                    out,
                    "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" time=\"{time:.6}\">",
                    xml(&f.file),
                    cases.len()
                );
                for c in cases {
                    let _ = write!(
                        out,
                        "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.6}\"",
                        xml(&c.name),
                        xml(&f.file),
                        c.seconds
                    );
                    if c.passed() {
                        out.push_str("/>\n");
                    } else {
                        let _ = writeln!(
                            out,
                            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                            xml(&c.failures[0]),
                            xml(&c.failures.join("\n"))
                        );
                    }
                }
                out.push_str("  </testsuite>\n");
            }
            Err(problem) => {
                let _ = writeln!(
                    out,
                    "  <testsuite name=\"{0}\" tests=\"1\" failures=\"1\">\n    <testcase name=\"{0}\" classname=\"{0}\">\n      <failure message=\"the test file cannot run\">{1}</failure>\n    </testcase>\n  </testsuite>",
                    xml(&f.file),
                    xml(&problem.to_string())
                );
            }
        }
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_names_each_case_and_its_failure() {
        let files = vec![FileReport {
            file: "a.test.yaml".into(),
            cases: Ok(vec![
                CaseReport {
                    name: "ok <1>".into(),
                    failures: vec![],
                    seconds: 0.001,
                },
                CaseReport {
                    name: "bad".into(),
                    failures: vec!["output $.a: expected 1, got 2".into()],
                    seconds: 0.002,
                },
            ]),
        }];
        let x = junit(&files);
        assert!(
            x.contains("<testsuites name=\"sluice test\" tests=\"2\" failures=\"1\">"),
            "{x}"
        );
        assert!(x.contains("<testcase name=\"ok &lt;1&gt;\""), "{x}");
        assert!(
            x.contains("<failure message=\"output $.a: expected 1, got 2\">"),
            "{x}"
        );
        assert_eq!(counts(&files), (1, 1, 0));
    }
}
