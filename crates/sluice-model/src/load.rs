//! Reading a flow file into a checked [`Flow`]: every problem reported
//! with its place (unknown keys with the closest known one, types, step
//! graph, options through the [`Catalog`], expressions and templates
//! compiled), none of it stopping at the first.

mod connections;
mod steps;

use crate::diag::{Diagnostic, Diagnostics, Source, locate_in_scalar};
use crate::flow::{
    ActionDataFilter, BUILTIN_VARS, Catalog, EVENT_TRIGGERS, EventDataFilter, Flow, Mapping, Next,
    OptionIssue, Retry, StateDataFilter, Step, Transaction, Trigger, UnmappedResults,
    is_identifier, version_of,
};
use crate::node::{self, Key, Kind, Node, Span};
use serde_json::{Map, Value};
use sluice_expr::{MappingPath, PathSeg, Program, TemplateValue};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const FLOW_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "trigger",
    "steps",
    "connections",
    "unmappedResults",
    "enabled",
    "env",
    "transaction",
];
const STEP_KEYS: &[&str] = &[
    "key",
    "type",
    "name",
    "description",
    "options",
    "resolve",
    "reject",
    "stateDataFilter",
    "actionDataFilter",
    "inputMappings",
    "outputMappings",
    "eventDataFilter",
    "retry",
];
const RESERVED_KEYS: &[&str] = &[
    "trigger",
    "last",
    "accountability",
    "tokens",
    "env",
    "ENV",
    "__loc__",
];

/// Whether `s` can name an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(s: &str) -> bool {
    is_identifier(s)
}

/// Parse and check a flow file; `name` is how diagnostics name the file.
pub fn load(name: &str, text: &str, catalog: &dyn Catalog) -> Result<Flow, Diagnostics> {
    let source = Arc::new(Source {
        name: name.to_owned(),
        text: text.to_owned(),
    });
    let mut cx = Checker {
        source: source.clone(),
        diags: Vec::new(),
        catalog,
        connection_names: Vec::new(),
        connection_types: HashMap::new(),
        connection_values: HashMap::new(),
    };
    let flow = match node::parse(text) {
        Ok(root) => cx.flow(&root, name),
        Err(e) => {
            let span = if e.span.is_empty() && e.span.start < text.len() {
                e.span.start..e.span.start + 1
            } else {
                e.span
            };
            cx.diags.push(
                Diagnostic::new(
                    span,
                    format!("not valid YAML or JSON: {}", e.message),
                    "here",
                )
                .with_help(
                    "a flow file is a YAML or JSON mapping with `id`, `trigger` and `steps`",
                ),
            );
            None
        }
    };
    let mut diags = cx.diags;
    match flow {
        Some(flow) if diags.is_empty() => Ok(flow),
        _ => {
            diags.sort_by_key(|d| d.span.start);
            diags.dedup();
            Err(Diagnostics {
                file: source,
                items: diags,
            })
        }
    }
}

struct Checker<'c> {
    source: Arc<Source>,
    diags: Vec<Diagnostic>,
    catalog: &'c dyn Catalog,
    /// The names under `connections`, for steps' `connection` options.
    connection_names: Vec<String>,
    /// Each connection's type (`sql` when it has no `type`).
    connection_types: HashMap<String, String>,
    /// Each connection, as written.
    connection_values: HashMap<String, Value>,
}

impl RawStep<'_> {
    /// Where to point at the step, and how to name it, in messages.
    fn place(&self, i: usize) -> (Span, String) {
        match &self.key {
            Some((k, span)) => (span.clone(), format!("`{k}`")),
            None => (self.node.span.clone(), format!("number {}", i + 1)),
        }
    }
}

/// A step as read, before the graph is known.
struct RawStep<'n> {
    node: &'n Node,
    key: Option<(String, Span)>,
    kind: Option<(String, Span)>,
    options: Option<&'n Node>,
    resolve: Option<&'n Node>,
    reject: Option<&'n Node>,
}

impl Checker<'_> {
    fn err(&mut self, span: Span, message: impl Into<String>, label: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, message, label));
    }

    fn err_help(
        &mut self,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::new(span, message, label).with_help(help));
    }

    /// Report repeated and unknown keys of a mapping.
    fn check_keys(&mut self, map: &[(Key, Node)], allowed: &[&str], what: &str) {
        let mut seen: HashMap<&str, &Key> = HashMap::new();
        for (k, _) in map {
            if let Some(first) = seen.get(k.name.as_str()) {
                let (line, _) = self.source.line_col(first.span.start);
                self.err(
                    k.span.clone(),
                    format!(
                        "duplicate key `{}` in {what} (first given on line {line})",
                        k.name
                    ),
                    "repeated here",
                );
            } else {
                seen.insert(&k.name, k);
            }
            if !allowed.contains(&k.name.as_str()) {
                let hint = closest(&k.name, allowed)
                    .map(|c| format!("did you mean `{c}`? Allowed: {}", allowed.join(", ")))
                    .unwrap_or_else(|| format!("allowed keys: {}", allowed.join(", ")));
                self.err_help(
                    k.span.clone(),
                    format!("unknown key `{}` in {what}", k.name),
                    "not allowed here",
                    hint,
                );
            }
        }
    }

    fn string<'n>(
        &mut self,
        parent: &'n Node,
        key: &str,
        what: &str,
    ) -> Option<(String, &'n Node)> {
        let n = parent.get(key)?;
        match &n.kind {
            Kind::Str(s) => Some((s.clone(), n)),
            _ => {
                self.err(
                    n.span.clone(),
                    format!(
                        "`{key}` of {what} must be a string, found {}",
                        n.kind_name()
                    ),
                    "expected a string",
                );
                None
            }
        }
    }

    fn flow(&mut self, root: &Node, file_name: &str) -> Option<Flow> {
        let Some(map) = root.as_map() else {
            self.err_help(
                root.span.clone(),
                format!("a flow file must be a mapping, found {}", root.kind_name()),
                "expected a mapping",
                "start with `id:`, `trigger:` and `steps:`",
            );
            return None;
        };
        self.check_keys(map, FLOW_KEYS, "the flow");

        let id = match self.string(root, "id", "the flow") {
            Some((id, n)) => {
                if id.is_empty()
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    self.err(
                        n.span.clone(),
                        format!("flow id `{id}` must be letters, digits, `_`, `-` or `.`"),
                        "invalid id",
                    );
                }
                id
            }
            None => std::path::Path::new(file_name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("flow")
                .split('.')
                .next()
                .unwrap_or("flow")
                .to_owned(),
        };
        let name = self.string(root, "name", "the flow").map(|(s, _)| s);
        let description = self.string(root, "description", "the flow").map(|(s, _)| s);
        let unmapped_results = match root.get("unmappedResults") {
            None => UnmappedResults::Merge,
            Some(n) => match n.as_str() {
                Some("merge") => UnmappedResults::Merge,
                Some("replace") => UnmappedResults::Replace,
                _ => {
                    self.err(
                        n.span.clone(),
                        "`unmappedResults` must be `merge` or `replace`",
                        "expected merge or replace",
                    );
                    UnmappedResults::Merge
                }
            },
        };
        let connections = self.connections(root.get("connections"));
        let enabled = match root.get("enabled") {
            None => true,
            Some(n) => match n.kind {
                Kind::Bool(b) => b,
                _ => {
                    self.err(
                        n.span.clone(),
                        "`enabled` must be true or false",
                        "expected a boolean",
                    );
                    true
                }
            },
        };
        let env = self.env_list(root.get("env"));
        let transaction = match root.get("transaction") {
            None => Transaction::Step,
            Some(n) => match n.as_str() {
                Some("step") => Transaction::Step,
                Some("flow") => Transaction::Flow,
                _ => {
                    self.err_help(
                        n.span.clone(),
                        "`transaction` must be `step` or `flow`",
                        "expected step or flow",
                        "`flow`: every write of a run in one database transaction, committed when the run succeeds",
                    );
                    Transaction::Step
                }
            },
        };
        // After the connections: a trigger may name one.
        let trigger = self.trigger(root.get("trigger"));
        let steps = self.steps(root);
        if let (Some(trigger), Some(steps)) = (&trigger, &steps) {
            self.env_reads(trigger, steps, &env);
            if transaction == Transaction::Flow {
                self.one_transaction(steps);
            }
        }
        Some(Flow {
            id,
            name,
            description,
            trigger: trigger?,
            steps: steps?,
            connections,
            unmapped_results,
            enabled,
            env,
            transaction,
            source: self.source.clone(),
            version: version_of(&self.source.text),
        })
    }

    /// `env`: the names of the environment variables the flow reads.
    fn env_list(&mut self, node: Option<&Node>) -> Vec<String> {
        let Some(node) = node else {
            return Vec::new();
        };
        let Some(items) = node.as_seq() else {
            self.err_help(
                node.span.clone(),
                format!("`env` must be a list of names, found {}", node.kind_name()),
                "expected a list",
                "for example `env: [API_BASE, REGION]`",
            );
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for n in items {
            match n.as_str() {
                Some(name) if !is_env_name(name) => self.err(
                    n.span.clone(),
                    format!("`{name}` is not an environment variable name"),
                    "letters, digits and `_`, not starting with a digit",
                ),
                Some(name) if !self.catalog.env_allowed(name) => self.err_help(
                    n.span.clone(),
                    format!("environment variable `{name}` is not in the server's allow-list"),
                    "not allowed",
                    "the process's SLUICE_FLOWS_ENV_ALLOW_LIST names the variables flows may read",
                ),
                Some(name) if out.iter().any(|o| o == name) => self.err(
                    n.span.clone(),
                    format!("`{name}` is listed twice under `env`"),
                    "repeated",
                ),
                Some(name) => out.push(name.to_owned()),
                None => self.err(
                    n.span.clone(),
                    format!("an `env` entry must be a name, found {}", n.kind_name()),
                    "expected a string",
                ),
            }
        }
        out
    }

    /// Refuse `$env.NAME` in an expression when NAME is not under `env`.
    fn env_reads(&mut self, trigger: &Trigger, steps: &[Step], env: &[String]) {
        let mut found = Vec::new();
        if let Some(p) = &trigger.event_filter.data {
            found.push(("the trigger".to_owned(), 0..self.source.text.len(), p));
        }
        // A step's text runs to the next step's start.
        let mut starts: Vec<usize> = steps.iter().map(|s| s.span.start).collect();
        starts.sort_unstable();
        for s in steps {
            let end = starts
                .iter()
                .find(|&&b| b > s.span.start)
                .copied()
                .unwrap_or(self.source.text.len());
            for (what, p) in s.programs() {
                found.push((format!("step `{}`, {what}", s.key), s.span.start..end, p));
            }
        }
        for (who, within, p) in found {
            for (name, _) in p.fields_read("env") {
                if env.contains(&name) {
                    continue;
                }
                let listed = if env.is_empty() {
                    "the flow lists none".to_owned()
                } else {
                    format!("the flow lists {}", env.join(", "))
                };
                // Point at the first place the variable is named in the step.
                let text = self.source.text.get(within.clone()).unwrap_or_default();
                let span = [format!("$env.{name}"), format!("\"{name}\""), name.clone()]
                    .iter()
                    .find_map(|w| text.find(w.as_str()).map(|i| i..i + w.len()))
                    .map_or(within.clone(), |r| {
                        within.start + r.start..within.start + r.end
                    });
                self.err_help(
                    span,
                    format!("{who}: `$env.{name}` is not under the flow's `env` ({listed})"),
                    "reads an environment variable not listed",
                    format!("add `{name}` to `env:` at the top of the flow; only listed variables are visible"),
                );
            }
        }
    }

    /// Under `transaction: flow`, refuse what the one transaction cannot
    /// hold: a step that suspends the run or starts other runs, a retry's
    /// backoff, writes through more than one connection.
    fn one_transaction(&mut self, steps: &[Step]) {
        let help = "under `transaction: flow` a run holds one open database transaction from its first write to its end";
        let mut first: Option<(&str, &str)> = None;
        for s in steps {
            let why = match s.kind.as_str() {
                "sleep" | "wait" => {
                    Some("it suspends the run, and an open transaction cannot wait".to_owned())
                }
                "flow" => Some(
                    "the run it starts commits on its own, outside this run's transaction"
                        .to_owned(),
                ),
                "split" => Some(
                    "its items run in runs of their own, outside this run's transaction".to_owned(),
                ),
                _ if [
                    s.const_option("mode"),
                    s.const_option("pages").and_then(|p| p.get("mode")),
                ]
                .contains(&Some(&Value::String("emitIndividually".into()))) =>
                {
                    Some(
                        "its rows run in runs of their own, outside this run's transaction"
                            .to_owned(),
                    )
                }
                "envelope"
                    if s
                        .deferred
                        .get("patches")
                        .is_some_and(|(raw, _)| calls_an_api(raw)) =>
                {
                    Some("its calls are undone when the envelope fails, not when the run's transaction rolls back later".to_owned())
                }
                _ if s.retry.is_some() => Some(
                    "a retry's backoff suspends the run, and an open transaction cannot wait"
                        .to_owned(),
                ),
                _ => None,
            };
            let why = why.or_else(|| {
                // A step through an API (an http connection, or none).
                let http = s.kind.starts_with("http.")
                    || s.const_option("connection")
                        .and_then(Value::as_str)
                        .and_then(|c| self.connection_types.get(c))
                        .is_some_and(|t| t != crate::flow::SQL_CONNECTION);
                let reads = match (s.kind.as_str(), s.const_option("method")) {
                    ("rest.lookup" | "rest.lookupMany", _) | ("http.request", None) => true,
                    ("http.request", Some(Value::String(m))) => {
                        ["GET", "HEAD"].contains(&m.to_ascii_uppercase().as_str())
                    }
                    _ => false,
                };
                if http && !reads {
                    let what = if s.kind.starts_with("http.") || s.kind.starts_with("rest.") {
                        "an HTTP request that may write"
                    } else {
                        "what it does in another system"
                    };
                    return Some(format!("{what} is not undone when the run's transaction rolls back"));
                }
                if http || !s.has_option("connection") {
                    return None;
                }
                let Some(Value::String(c)) = s.const_option("connection") else {
                    return Some("its `connection` is a template: the one transaction needs one known connection".to_owned());
                };
                match first {
                    None => {
                        first = Some((c.as_str(), s.key.as_str()));
                        None
                    }
                    Some((f, _)) if f == c => None,
                    Some((f, k)) => Some(format!(
                        "it uses connection `{c}` and step `{k}` uses `{f}`: one transaction is on one connection (there is no compensation across two)"
                    )),
                }
            });
            if let Some(why) = why {
                self.err_help(
                    s.span.clone(),
                    format!(
                        "step `{}` ({}) cannot be in the flow's one transaction: {why}",
                        s.key, s.kind
                    ),
                    "under transaction: flow",
                    help,
                );
            }
        }
    }

    fn trigger(&mut self, node: Option<&Node>) -> Option<Trigger> {
        let Some(node) = node else {
            return Some(Trigger {
                kind: "manual".into(),
                options: Value::Object(Map::new()),
                event_filter: EventDataFilter::default(),
                data_only: true,
            });
        };
        let Some(map) = node.as_map() else {
            self.err(
                node.span.clone(),
                format!(
                    "`trigger` must be a mapping with a `type`, found {}",
                    node.kind_name()
                ),
                "expected a mapping",
            );
            return None;
        };
        let Some((kind, kind_node)) = self.string(node, "type", "the trigger") else {
            if node.get("type").is_none() {
                self.err_help(
                    node.span.clone(),
                    "the trigger has no `type`",
                    "missing `type`",
                    format!("trigger types: {}", self.catalog.trigger_kinds().join(", ")),
                );
            }
            return None;
        };
        let mut options = Map::new();
        let is_event = EVENT_TRIGGERS.contains(&kind.as_str());
        let mut event_filter = EventDataFilter::default();
        let mut data_only = true;
        let mut ok = true;
        for (k, v) in map {
            match k.name.as_str() {
                "type" => {}
                "eventDataFilter" | "dataOnly" if !is_event => {
                    ok = false;
                    self.err_help(
                        k.span.clone(),
                        format!("a `{kind}` trigger has no `{}`", k.name),
                        "not for this trigger",
                        format!(
                            "only event triggers ({}) carry an event",
                            EVENT_TRIGGERS.join(", ")
                        ),
                    );
                }
                "eventDataFilter" => {
                    let vars: Vec<&str> = BUILTIN_VARS.to_vec();
                    match self.event_filter(v, &vars, &[], "the trigger") {
                        Some(f) => event_filter = f,
                        None => ok = false,
                    }
                }
                "dataOnly" => match v.kind {
                    Kind::Bool(b) => data_only = b,
                    _ => {
                        ok = false;
                        self.err(
                            v.span.clone(),
                            "`dataOnly` must be true or false",
                            "expected a boolean",
                        );
                    }
                },
                _ => {
                    options.insert(k.name.clone(), v.to_json());
                }
            }
        }
        let options = Value::Object(options);
        match self.catalog.trigger(&kind) {
            None => {
                let kinds = self.catalog.trigger_kinds();
                self.err_help(
                    kind_node.span.clone(),
                    format!("unknown trigger type `{kind}`"),
                    "unknown type",
                    format!("trigger types: {}", kinds.join(", ")),
                );
                None
            }
            Some(spec) => {
                // A poll reads through one of the flow's connections (an
                // event trigger's `connection` names the writing flow's).
                if kind == "poll" {
                    ok &= self.known_connection(
                        &options,
                        node,
                        &format!("trigger `{kind}`"),
                        Some(crate::flow::SQL_CONNECTION),
                    );
                }
                // Trigger options sit beside `type`: check them as a mapping.
                let before = self.diags.len();
                self.option_issues(node, (spec.check)(&options), &format!("trigger `{kind}`"));
                (ok && self.diags.len() == before).then_some(Trigger {
                    kind,
                    options,
                    event_filter,
                    data_only,
                })
            }
        }
    }

    fn option_issues(&mut self, options_node: &Node, issues: Vec<OptionIssue>, what: &str) {
        for issue in issues {
            let span = if issue.at_key {
                options_node.key_at(&issue.path).map(|k| k.span.clone())
            } else {
                None
            }
            .or_else(|| options_node.at(&issue.path).map(|n| n.span.clone()))
            .unwrap_or_else(|| options_node.span.clone());
            let mut d = Diagnostic::new(
                span,
                format!("{what}: {}", issue.message),
                if issue.at_key {
                    "unknown option"
                } else {
                    "invalid value"
                },
            );
            if let Some(h) = issue.help {
                d = d.with_help(h);
            }
            self.diags.push(d);
        }
    }
}

/// Turn a jq path such as `.a.b`, `.["x"]` or `.list[0]` into a mapping path.
pub fn jq_path_to_mapping(text: &str) -> Result<MappingPath, sluice_expr::PathError> {
    let t = text.trim();
    let Some(body) = t.strip_prefix('.') else {
        return Err(sluice_expr::PathError {
            text: text.to_owned(),
            offset: 0,
            message: "a jq path starts with `.`".to_owned(),
        });
    };
    let body = body
        .strip_prefix('[')
        .map(|b| format!("[{b}"))
        .unwrap_or_else(|| {
            if body.is_empty() {
                String::new()
            } else {
                format!(".{body}")
            }
        });
    let body = body
        .replace(".[", "[")
        .replace("[\"", "['")
        .replace("\"]", "']");
    MappingPath::parse_target(&format!("${body}"))
}

fn display_path(path: &[PathSeg]) -> String {
    let mut s = String::new();
    for (i, p) in path.iter().enumerate() {
        match p {
            PathSeg::Key(k) if i == 0 => s.push_str(k),
            PathSeg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            PathSeg::Index(n) => s.push_str(&format!("[{n}]")),
        }
    }
    s
}

fn sorted<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// The allowed word closest to `word`, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Whether an envelope's patches (as written) call an API: a patch (or a
/// child) with `call`.
pub fn calls_an_api(patches: &Value) -> bool {
    match patches {
        Value::Array(a) => a.iter().any(calls_an_api),
        Value::Object(m) => m.contains_key("call") || m.get("children").is_some_and(calls_an_api),
        _ => false,
    }
}
