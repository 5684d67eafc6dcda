//! Test files: read with their places, so that a mistake gets a line and
//! column as a flow file's does.
//!
//! ```yaml
//! flow: order.yaml            # the flow, relative to this file
//! cases:
//!   - name: a paid order is saved
//!     input: {orderId: 7, total: 12.5}       # or trigger: {...}, event: {...}
//!     answers:
//!       save: {result: {id: 7}}              # every call of step `save`
//!       notify:                              # calls in order (or by options)
//!         - {error: "connection refused"}    # blame: external unless said
//!         - {options: {to: ops@example.com}, result: {sent: true}}
//!     expect:
//!       status: succeeded                    # default: succeeded
//!       output: {orderId: 7, saved: true}    # exact JSON
//!       outputIs: ".total > 10"              # a jq predicate over the output
//!       steps: {save: {result: {id: 7}}}     # a step's result, output or error
//!       error: {step: notify, message: refused}   # for a run that failed
//! ```

use serde_json::Value;
use sluice_model::node::{Kind, Node, Span, parse};
use sluice_model::{Diagnostic, Diagnostics, Source};
use std::sync::Arc;

/// A test file, checked.
#[derive(Debug)]
pub struct TestFile {
    /// Its name and text.
    pub source: Arc<Source>,
    /// The flow file, as written (relative to the test file).
    pub flow: String,
    /// Where `flow` is written.
    pub flow_span: Span,
    /// The cases, in order.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub span: Span,
    /// The run's input (state data).
    pub input: Option<Value>,
    /// `$trigger`, when given as a whole.
    pub trigger: Option<Value>,
    /// The CloudEvent that starts the run (event triggers).
    pub event: Option<Value>,
    /// A file of records (CSV or JSON lines, relative to the test file):
    /// the flow runs once per record, as an import runs it.
    pub records: Option<String>,
    /// The answers, by step key.
    pub answers: Vec<StepAnswers>,
    /// What to expect.
    pub expect: Expect,
}

/// The answers of one step.
#[derive(Clone, Debug)]
pub struct StepAnswers {
    /// The step's key.
    pub key: String,
    /// Where the key is written.
    pub span: Span,
    /// The answers.
    pub answers: Vec<Answer>,
    /// One answer written as a mapping: it answers every call.
    pub every: bool,
}

/// One answer of a step.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Answers only a call whose options hold these (a JSON subset).
    pub options: Option<Value>,
    /// The step's result, or its error and who must act on it.
    pub outcome: Result<Value, (String, sluice_action::Blame)>,
}

/// What a case expects.
#[derive(Debug, Default)]
pub struct Expect {
    /// The run's status (default `succeeded`).
    pub status: Option<String>,
    /// The output, exactly.
    pub output: Option<Value>,
    /// A jq predicate the output must make true.
    pub output_is: Option<(sluice_expr::Program, Span)>,
    /// Steps' records.
    pub steps: Vec<StepExpect>,
    /// The failing step and a part of its error.
    pub error: Option<ErrorExpect>,
    /// For a case of records: how many runs succeeded and failed.
    pub records: Option<(Option<u64>, Option<u64>)>,
    /// For a case of records: the outputs of the runs that succeeded, in
    /// the records' order.
    pub outputs: Option<Vec<Value>>,
}

/// What one step's (last) record must hold.
#[derive(Debug)]
pub struct StepExpect {
    /// The step's key.
    pub key: String,
    /// Where the key is written.
    pub span: Span,
    /// Its result, exactly.
    pub result: Option<Value>,
    /// Its output, exactly.
    pub output: Option<Value>,
    /// A part of its error.
    pub error: Option<String>,
}

/// The failure a case expects.
#[derive(Debug, Default)]
pub struct ErrorExpect {
    /// The step that failed.
    pub step: Option<String>,
    /// A part of the error's message.
    pub message: Option<String>,
}

const CASE_KEYS: [&str; 7] = [
    "name", "input", "trigger", "event", "records", "answers", "expect",
];
const EXPECT_KEYS: [&str; 7] = [
    "status", "output", "outputIs", "steps", "error", "records", "outputs",
];
const STATUSES: [&str; 5] = ["succeeded", "failed", "incident", "waiting", "cancelled"];

struct Reader {
    diags: Vec<Diagnostic>,
}

impl Reader {
    fn err(&mut self, span: &Span, message: impl Into<String>, label: &str) {
        self.diags
            .push(Diagnostic::new(span.clone(), message, label.to_owned()));
    }

    fn map<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n [(sluice_model::node::Key, Node)]> {
        let m = node.as_map();
        if m.is_none() {
            self.err(
                &node.span,
                format!("{what} must be a mapping, found {}", node.kind_name()),
                "expected a mapping",
            );
        }
        m
    }

    fn str(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone()),
            _ => {
                self.err(
                    &node.span,
                    format!("{what} must be a string, found {}", node.kind_name()),
                    "expected a string",
                );
                None
            }
        }
    }

    fn known_keys(&mut self, map: &[(sluice_model::node::Key, Node)], known: &[&str], what: &str) {
        for (k, _) in map {
            if !known.contains(&k.name.as_str()) {
                let mut d = Diagnostic::new(
                    k.span.clone(),
                    format!("{what} has no `{}`", k.name),
                    "unknown key",
                );
                d = d.with_help(format!("expected one of {}", known.join(", ")));
                self.diags.push(d);
            }
        }
    }

    fn case(&mut self, node: &Node, index: usize) -> Option<Case> {
        let map = self.map(node, &format!("case {}", index + 1))?;
        self.known_keys(map, &CASE_KEYS, "a case");
        let name = match node.get("name") {
            Some(n) => self.str(n, "a case's `name`")?,
            None => format!("case {}", index + 1),
        };
        let answers = match node.get("answers") {
            None => Vec::new(),
            Some(a) => self.answers(a, &name)?,
        };
        let expect = match node.get("expect") {
            None => Expect::default(),
            Some(e) => self.expect(e, &name)?,
        };
        let records = match node.get("records") {
            Some(r) => Some(self.str(r, "a case's `records`")?),
            None => None,
        };
        Some(Case {
            name,
            span: node.span.clone(),
            records,
            input: node.get("input").map(Node::to_json),
            trigger: node.get("trigger").map(Node::to_json),
            event: node.get("event").map(Node::to_json),
            answers,
            expect,
        })
    }

    fn answers(&mut self, node: &Node, case: &str) -> Option<Vec<StepAnswers>> {
        let map = self.map(node, &format!("case `{case}`: `answers`"))?;
        let mut out = Vec::new();
        for (key, value) in map {
            let (list, every) = match &value.kind {
                Kind::Seq(items) => (items.iter().collect::<Vec<_>>(), false),
                _ => (vec![value], true),
            };
            let mut answers = Vec::new();
            for a in list {
                answers.push(self.answer(a, &key.name)?);
            }
            out.push(StepAnswers {
                key: key.name.clone(),
                span: key.span.clone(),
                answers,
                every,
            });
        }
        Some(out)
    }

    fn answer(&mut self, node: &Node, key: &str) -> Option<Answer> {
        let what = format!("the answer of step `{key}`");
        let map = self.map(node, &what)?;
        self.known_keys(map, &["result", "error", "blame", "options"], &what);
        let outcome = match (node.get("result"), node.get("error")) {
            (Some(r), None) => Ok(r.to_json()),
            (None, Some(e)) => {
                let message = self.str(e, &format!("{what}: `error`"))?;
                let blame = match node.get("blame") {
                    None => sluice_action::Blame::External,
                    Some(b) => {
                        let word = self.str(b, "`blame`")?;
                        match word.as_str() {
                            "flow" => sluice_action::Blame::Flow,
                            "data" => sluice_action::Blame::Data,
                            "external" => sluice_action::Blame::External,
                            "store" => sluice_action::Blame::Store,
                            "bug" => sluice_action::Blame::Bug,
                            _ => {
                                self.err(
                                    &b.span,
                                    format!("`blame` is flow, data, external, store or bug, not `{word}`"),
                                    "unknown blame",
                                );
                                return None;
                            }
                        }
                    }
                };
                Err((message, blame))
            }
            _ => {
                self.err(
                    &node.span,
                    format!("{what} gives either `result` or `error`"),
                    "one of result or error",
                );
                return None;
            }
        };
        Some(Answer {
            options: node.get("options").map(Node::to_json),
            outcome,
        })
    }

    fn expect(&mut self, node: &Node, case: &str) -> Option<Expect> {
        let map = self.map(node, &format!("case `{case}`: `expect`"))?;
        self.known_keys(map, &EXPECT_KEYS, "`expect`");
        let mut e = Expect::default();
        if let Some(s) = node.get("status") {
            let status = self.str(s, "`status`")?;
            if !STATUSES.contains(&status.as_str()) {
                self.err(
                    &s.span,
                    format!("`status` is one of {}, not `{status}`", STATUSES.join(", ")),
                    "unknown status",
                );
                return None;
            }
            e.status = Some(status);
        }
        e.output = node.get("output").map(Node::to_json);
        if let Some(p) = node.get("outputIs") {
            let code = self.str(p, "`outputIs`")?;
            match sluice_expr::Program::compile(&code, &["trigger"]) {
                Ok(prog) => e.output_is = Some((prog, p.span.clone())),
                Err(err) => {
                    self.err(&p.span, format!("`outputIs` is not jq: {err}"), "here");
                    return None;
                }
            }
        }
        if let Some(steps) = node.get("steps") {
            let map = self.map(steps, "`expect.steps`")?;
            for (key, v) in map {
                let what = format!("`expect.steps.{}`", key.name);
                let m = self.map(v, &what)?;
                self.known_keys(m, &["result", "output", "error"], &what);
                let error = match v.get("error") {
                    Some(x) => Some(self.str(x, &format!("{what}: `error`"))?),
                    None => None,
                };
                e.steps.push(StepExpect {
                    key: key.name.clone(),
                    span: key.span.clone(),
                    result: v.get("result").map(Node::to_json),
                    output: v.get("output").map(Node::to_json),
                    error,
                });
            }
        }
        if let Some(r) = node.get("records") {
            let m = self.map(r, "`expect.records`")?;
            self.known_keys(m, &["succeeded", "failed"], "`expect.records`");
            let count = |n: Option<&Node>| n.and_then(|n| n.to_json().as_u64());
            e.records = Some((count(r.get("succeeded")), count(r.get("failed"))));
        }
        if let Some(o) = node.get("outputs") {
            match o.to_json() {
                Value::Array(list) => e.outputs = Some(list),
                _ => {
                    self.err(
                        &o.span,
                        "`expect.outputs` is a list of outputs",
                        "expected a list",
                    );
                    return None;
                }
            }
        }
        if let Some(err) = node.get("error") {
            let m = self.map(err, "`expect.error`")?;
            self.known_keys(m, &["step", "message"], "`expect.error`");
            let mut x = ErrorExpect::default();
            if let Some(s) = err.get("step") {
                x.step = Some(self.str(s, "`expect.error.step`")?);
            }
            if let Some(s) = err.get("message") {
                x.message = Some(self.str(s, "`expect.error.message`")?);
            }
            e.error = Some(x);
        }
        Some(e)
    }
}

impl TestFile {
    /// Read a test file; every mistake is reported with its place.
    pub fn parse(name: &str, text: &str) -> Result<Self, Diagnostics> {
        let source = Arc::new(Source {
            name: name.to_owned(),
            text: text.to_owned(),
        });
        let mut r = Reader { diags: Vec::new() };
        let parsed = match parse(text) {
            Ok(root) => r.file(&root, &source),
            Err(e) => {
                let span = if e.span.is_empty() && e.span.start < text.len() {
                    e.span.start..e.span.start + 1
                } else {
                    e.span
                };
                r.err(
                    &span,
                    format!("not valid YAML or JSON: {}", e.message),
                    "here",
                );
                None
            }
        };
        match parsed {
            Some(f) if r.diags.is_empty() => Ok(f),
            _ => {
                if r.diags.is_empty() {
                    r.err(&(0..0), "the test file cannot be read", "here");
                }
                r.diags.sort_by_key(|d| d.span.start);
                Err(Diagnostics {
                    file: source,
                    items: r.diags,
                })
            }
        }
    }

    /// Problems of the file against its flow: answers and expectations
    /// naming steps the flow does not have (it changed since the case was
    /// written), answers of steps that run as written.
    pub fn against(
        &self,
        flow: &sluice_model::Flow,
        answered: &dyn Fn(&str) -> bool,
    ) -> Result<(), Diagnostics> {
        let mut items = Vec::new();
        let known: Vec<&str> = flow.steps.iter().map(|s| s.key.as_str()).collect();
        let mut check = |key: &str, span: &Span, what: &str| {
            match flow.steps.iter().find(|s| s.key == key) {
                None => items.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("{what} step `{key}`, which flow `{}` does not have (did the flow change?)", flow.id),
                        "no such step",
                    )
                    .with_help(format!("the flow's steps: {}", known.join(", "))),
                ),
                Some(s) if what == "the case answers" && !answered(&s.kind) => items.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("step `{key}` ({}) runs as written in a test and takes no answer", s.kind),
                        "not answered",
                    )
                    .with_help("only steps that reach outside (SQL, HTTP, mail, other flows, waits, sleeps) are answered"),
                ),
                Some(_) => {}
            }
        };
        for case in &self.cases {
            for a in &case.answers {
                check(&a.key, &a.span, "the case answers");
            }
            for s in &case.expect.steps {
                check(&s.key, &s.span, "the case expects");
            }
        }
        if items.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics {
                file: self.source.clone(),
                items,
            })
        }
    }
}

impl Reader {
    fn file(&mut self, root: &Node, source: &Arc<Source>) -> Option<TestFile> {
        let map = self.map(root, "a test file")?;
        self.known_keys(map, &["flow", "cases"], "a test file");
        let Some(flow_node) = root.get("flow") else {
            self.err(&(0..0), "the test file names no `flow`", "missing `flow`");
            return None;
        };
        let flow = self.str(flow_node, "`flow`")?;
        let Some(cases) = root.get("cases") else {
            self.err(&(0..0), "the test file has no `cases`", "missing `cases`");
            return None;
        };
        let Some(items) = cases.as_seq() else {
            self.err(
                &cases.span,
                format!("`cases` must be a list, found {}", cases.kind_name()),
                "expected a list",
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, c) in items.iter().enumerate() {
            if let Some(case) = self.case(c, i) {
                out.push(case);
            }
        }
        Some(TestFile {
            source: source.clone(),
            flow,
            flow_span: flow_node.span.clone(),
            cases: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_into_cases() {
        let f = TestFile::parse(
            "t.test.yaml",
            "flow: f.yaml\ncases:\n  - name: one\n    input: {a: 1}\n    answers:\n      save: {result: {id: 7}}\n      mail: [{error: down}, {options: {to: x}, result: true}]\n    expect: {status: succeeded, output: {a: 1}, outputIs: '.a == 1', steps: {save: {result: {id: 7}}}}\n",
        )
        .unwrap();
        assert_eq!(f.flow, "f.yaml");
        let c = &f.cases[0];
        assert_eq!(c.name, "one");
        assert!(c.answers[0].every);
        assert_eq!(c.answers[1].answers.len(), 2);
        assert!(c.answers[1].answers[0].outcome.is_err());
        assert_eq!(c.expect.steps[0].key, "save");
    }

    #[test]
    fn mistakes_have_their_place() {
        let e = TestFile::parse(
            "t.test.yaml",
            "flow: f.yaml\ncases:\n  - name: one\n    answer: {}\n    expect: {status: done}\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("t.test.yaml:4:5: a case has no `answer`"),
            "{text}"
        );
        assert!(
            text.contains("t.test.yaml:5:22: `status` is one of"),
            "{text}"
        );
        let e = TestFile::parse("t.test.yaml", "flow: [\n").unwrap_err();
        assert!(e.to_string().contains("not valid YAML"), "{e}");
    }
}
