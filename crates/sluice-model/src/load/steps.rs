//! The steps of a flow file: each step's keys, type and options, its
//! filters, mappings, retry and event filter, and the graph of success and
//! failure paths.

use super::*;

impl Checker<'_> {
    pub(super) fn steps(&mut self, root: &Node) -> Option<Vec<Step>> {
        let Some(steps_node) = root.get("steps") else {
            self.err_help(
                root.span.start..root.span.start,
                "the flow has no `steps`",
                "missing `steps`",
                "add `steps:` with at least one step",
            );
            return None;
        };
        let Kind::Seq(items) = &steps_node.kind else {
            self.err(
                steps_node.span.clone(),
                format!("`steps` must be a list, found {}", steps_node.kind_name()),
                "expected a list",
            );
            return None;
        };
        if items.is_empty() {
            self.err(
                steps_node.span.clone(),
                "the flow has no steps",
                "empty list",
            );
            return None;
        }
        let before = self.diags.len();
        let mut raws = Vec::new();
        let mut first_by_key: HashMap<String, Span> = HashMap::new();
        for item in items {
            let Some(map) = item.as_map() else {
                self.err(
                    item.span.clone(),
                    format!(
                        "a step must be a mapping with `key` and `type`, found {}",
                        item.kind_name()
                    ),
                    "expected a mapping",
                );
                continue;
            };
            self.check_keys(map, STEP_KEYS, "a step");
            let key = match self.string(item, "key", "a step") {
                Some((k, n)) => {
                    if !is_identifier(&k) {
                        self.err_help(n.span.clone(), format!("step key `{k}` is not an identifier"), "invalid key", "keys are letters, digits and `_`, not starting with a digit, so that `$key` works in expressions");
                        None
                    } else if RESERVED_KEYS.contains(&k.as_str()) {
                        self.err(
                            n.span.clone(),
                            format!("step key `{k}` is reserved (the flow object has `${k}`)"),
                            "reserved",
                        );
                        None
                    } else if let Some(first) = first_by_key.get(&k) {
                        let (line, _) = self.source.line_col(first.start);
                        self.err(
                            n.span.clone(),
                            format!("duplicate step key `{k}` (first used on line {line})"),
                            "duplicate key",
                        );
                        None
                    } else {
                        first_by_key.insert(k.clone(), n.span.clone());
                        Some((k, n.span.clone()))
                    }
                }
                None => {
                    if item.get("key").is_none() {
                        self.err(item.span.clone(), "a step has no `key`", "missing `key`");
                    }
                    None
                }
            };
            let kind = match self.string(item, "type", "a step") {
                Some((t, n)) => {
                    if self.catalog.step(&t).is_none() {
                        let kinds = self.catalog.step_kinds();
                        let help = match closest(&t, &kinds) {
                            Some(c) => {
                                format!("did you mean `{c}`? Step types: {}", kinds.join(", "))
                            }
                            None => format!("step types: {}", kinds.join(", ")),
                        };
                        let who = key
                            .as_ref()
                            .map(|(k, _)| format!("step `{k}`: "))
                            .unwrap_or_default();
                        self.err_help(
                            n.span.clone(),
                            format!("{who}unknown step type `{t}`"),
                            "unknown type",
                            help,
                        );
                        None
                    } else {
                        Some((t, n.span.clone()))
                    }
                }
                None => {
                    if item.get("type").is_none() {
                        self.err(item.span.clone(), "a step has no `type`", "missing `type`");
                    }
                    None
                }
            };
            let options = item.get("options");
            if let Some(o) = options
                && !matches!(o.kind, Kind::Map(_) | Kind::Null)
            {
                self.err(
                    o.span.clone(),
                    format!("`options` must be a mapping, found {}", o.kind_name()),
                    "expected a mapping",
                );
            }
            raws.push(RawStep {
                node: item,
                key,
                kind,
                options,
                resolve: item.get("resolve"),
                reject: item.get("reject"),
            });
        }

        // The graph: where each step goes on success and on failure.
        let index: HashMap<&str, usize> = raws
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.key.as_ref().map(|(k, _)| (k.as_str(), i)))
            .collect();
        let n = raws.len();
        if n == 0 {
            // Every item was refused above, each with its problem.
            return None;
        }
        let mut success = vec![Next::End; n];
        let mut failure = vec![Next::End; n];
        for (i, r) in raws.iter().enumerate() {
            let who = r
                .key
                .as_ref()
                .map(|(k, _)| format!("step `{k}`"))
                .unwrap_or_else(|| format!("step {}", i + 1));
            success[i] = match r.resolve {
                None => {
                    if i + 1 < n {
                        Next::Step(i + 1)
                    } else {
                        Next::End
                    }
                }
                Some(node) => self.target(node, &index, &who, "resolve", i, true),
            };
            if let Some(node) = r.reject {
                failure[i] = self.target(node, &index, &who, "reject", i, false);
            }
        }

        // Reachability from the first step, and cycles.
        let edges = |i: usize| {
            [success[i], failure[i]]
                .into_iter()
                .filter_map(|n| match n {
                    Next::Step(j) => Some(j),
                    Next::End => None,
                })
        };
        let mut reachable = vec![false; n];
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut reachable[i], true) {
                stack.extend(edges(i));
            }
        }
        for (i, r) in raws.iter().enumerate() {
            if !reachable[i] {
                let (span, who) = r.place(i);
                self.err_help(span, format!("step {who} can never run: no path from the first step leads to it"), "unreachable", "point a `resolve` or `reject` at it, or remove it; a step with `resolve` does not fall through to the next one");
            }
        }
        // reach[a][b]: a path leads from step a to step b.
        let reach: Vec<Vec<bool>> = (0..n)
            .map(|start| {
                let mut seen = vec![false; n];
                let mut stack: Vec<usize> = edges(start).collect();
                while let Some(j) = stack.pop() {
                    if !std::mem::replace(&mut seen[j], true) {
                        stack.extend(edges(j));
                    }
                }
                seen
            })
            .collect();
        for (i, r) in raws.iter().enumerate() {
            if reach[i][i] && reachable[i] {
                let (span, who) = r.place(i);
                self.err_help(
                    span,
                    format!("step {who} is part of a cycle: a run could loop through it forever"),
                    "in a cycle",
                    "flows are acyclic; repeat work with a list and fan-out instead",
                );
            }
        }

        // Options, expressions and templates, now that upstream is known.
        let mut steps = Vec::new();
        for (i, r) in raws.iter().enumerate() {
            let mut vars: Vec<String> = BUILTIN_VARS.iter().map(|s| (*s).to_owned()).collect();
            for (j, other) in raws.iter().enumerate() {
                if reach[j][i]
                    && j != i
                    && let Some((k, _)) = &other.key
                {
                    vars.push(k.clone());
                }
            }
            let step_keys: Vec<&str> = index.keys().copied().collect();
            let step = self.step_body(r, i, vars, &step_keys, success[i], failure[i]);
            if let Some(s) = step {
                steps.push(s);
            }
        }
        (self.diags.len() == before && steps.len() == n).then_some(steps)
    }

    fn target(
        &mut self,
        node: &Node,
        index: &HashMap<&str, usize>,
        who: &str,
        field: &str,
        me: usize,
        allow_end: bool,
    ) -> Next {
        match &node.kind {
            Kind::Null if allow_end => Next::End,
            Kind::Str(t) => match index.get(t.as_str()) {
                Some(&j) if j == me => {
                    self.err(
                        node.span.clone(),
                        format!("{who}: `{field}` points at the step itself"),
                        "a step cannot follow itself",
                    );
                    Next::End
                }
                Some(&j) => Next::Step(j),
                None => {
                    let keys: Vec<&str> = index.keys().copied().collect();
                    let help = match closest(t, &keys) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("steps: {}", sorted(&keys).join(", ")),
                    };
                    self.err_help(
                        node.span.clone(),
                        format!("{who}: `{field}` names step `{t}`, which does not exist"),
                        "no such step",
                        help,
                    );
                    Next::End
                }
            },
            _ => {
                let expect = if allow_end {
                    "a step key, or null to end the run"
                } else {
                    "a step key"
                };
                self.err(
                    node.span.clone(),
                    format!(
                        "{who}: `{field}` must be {expect}, found {}",
                        node.kind_name()
                    ),
                    "expected a step key",
                );
                Next::End
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_body(
        &mut self,
        r: &RawStep<'_>,
        i: usize,
        vars: Vec<String>,
        step_keys: &[&str],
        on_success: Next,
        on_failure: Next,
    ) -> Option<Step> {
        let key = r
            .key
            .as_ref()
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| format!("#{}", i + 1));
        let who = format!("step `{key}`");
        let var_refs: Vec<&str> = vars.iter().map(String::as_str).collect();
        let mut ok = r.key.is_some() && r.kind.is_some();

        let options_json = r
            .options
            .map(Node::to_json)
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| Value::Object(Map::new()));
        let mut expressions = BTreeMap::new();
        let mut templated = options_json.clone();
        if let Some((kind, _)) = &r.kind
            && let Some(spec) = self.catalog.step(kind)
        {
            ok &= self.known_connection(
                &options_json,
                r.options.unwrap_or(r.node),
                &who,
                spec.connection,
            );
            let before = self.diags.len();
            self.connection_use(kind, &options_json, r.options.unwrap_or(r.node), &who);
            ok &= self.diags.len() == before;
            let before = self.diags.len();
            let anchor = r.options.unwrap_or(r.node);
            self.option_issues(
                anchor,
                (spec.check)(&options_json),
                &format!("{who} ({kind})"),
            );
            ok &= self.diags.len() == before;
            for name in spec.expressions {
                let Some(Value::String(code)) = options_json.get(*name) else {
                    continue;
                };
                if let Value::Object(o) = &mut templated {
                    o.remove(*name);
                }
                let node = r.options.and_then(|o| o.get(name));
                match self.program(code, node, &var_refs, step_keys, &who, name) {
                    Some(p) => {
                        expressions.insert((*name).to_owned(), p);
                    }
                    None => ok = false,
                }
            }
        }
        let mut deferred = BTreeMap::new();
        let mut verbatim = Map::new();
        if let Some((kind, _)) = &r.kind
            && let Some(spec) = self.catalog.step(kind)
        {
            for name in spec.verbatim {
                if let Some(v) = templated.as_object_mut().and_then(|o| o.remove(*name)) {
                    verbatim.insert((*name).to_owned(), v);
                }
            }
            for name in spec.deferred {
                let Some(raw) = templated.as_object_mut().and_then(|o| o.remove(*name)) else {
                    continue;
                };
                match TemplateValue::compile(&raw, &var_refs) {
                    Ok(t) => {
                        deferred.insert((*name).to_owned(), (raw, t));
                    }
                    Err(errors) => {
                        ok = false;
                        let at = [PathSeg::Key((*name).to_owned())];
                        self.template_issues(r.options, &at, errors, step_keys, &who);
                    }
                }
            }
        }
        let options = match TemplateValue::compile(&templated, &var_refs) {
            Ok(t) => t,
            Err(errors) => {
                ok = false;
                self.template_issues(r.options, &[], errors, step_keys, &who);
                TemplateValue::Const(Value::Null)
            }
        };

        // Data filters and mappings.
        let mut state_filter = StateDataFilter::default();
        if let Some(n) = r.node.get("stateDataFilter") {
            if let Some(map) = self.mapping(n, "stateDataFilter") {
                self.check_keys(map, &["input", "output"], "stateDataFilter");
                state_filter.input = self.jq_field(
                    n,
                    "input",
                    &var_refs,
                    step_keys,
                    &who,
                    "stateDataFilter.input",
                    &mut ok,
                );
                state_filter.output = self.jq_field(
                    n,
                    "output",
                    &var_refs,
                    step_keys,
                    &who,
                    "stateDataFilter.output",
                    &mut ok,
                );
            } else {
                ok = false;
            }
        }
        let mut action_filter = ActionDataFilter::default();
        if let Some(n) = r.node.get("actionDataFilter") {
            if let Some(map) = self.mapping(n, "actionDataFilter") {
                self.check_keys(
                    map,
                    &["fromStateData", "results", "toStateData", "useResults"],
                    "actionDataFilter",
                );
                action_filter.from_state_data = self.jq_field(
                    n,
                    "fromStateData",
                    &var_refs,
                    step_keys,
                    &who,
                    "actionDataFilter.fromStateData",
                    &mut ok,
                );
                action_filter.results = self.jq_field(
                    n,
                    "results",
                    &var_refs,
                    step_keys,
                    &who,
                    "actionDataFilter.results",
                    &mut ok,
                );
                match self.state_path(n, &who, "actionDataFilter") {
                    Ok(p) => action_filter.to_state_data = p,
                    Err(()) => ok = false,
                }
                match self.bool_field(n, "useResults", &who, "actionDataFilter") {
                    Ok(b) => action_filter.use_results = b.unwrap_or(true),
                    Err(()) => ok = false,
                }
            } else {
                ok = false;
            }
        }
        let event_filter = match r.node.get("eventDataFilter") {
            None => None,
            Some(n) => {
                let f = self.event_filter(n, &var_refs, step_keys, &who);
                if f.is_none() {
                    ok = false;
                }
                f
            }
        };
        let retry = match r.node.get("retry") {
            None => None,
            Some(n) => match serde_json::from_value::<Retry>(n.to_json()) {
                Ok(p) => match p.problem() {
                    None => Some(p),
                    Some(m) => {
                        ok = false;
                        self.err(
                            n.span.clone(),
                            format!("{who}: retry: {m}"),
                            "invalid retry",
                        );
                        None
                    }
                },
                Err(e) => {
                    ok = false;
                    self.err_help(
                        n.span.clone(),
                        format!("{who}: retry: {e}"),
                        "invalid retry",
                        "retry: {attempts, delayMs, factor, maxDelayMs, jitter, on: [external, data, flow]}".to_owned(),
                    );
                    None
                }
            },
        };
        let input_mappings = r
            .node
            .get("inputMappings")
            .and_then(|n| self.mappings(n, &who, "inputMappings", &mut ok));
        let output_mappings = r
            .node
            .get("outputMappings")
            .and_then(|n| self.mappings(n, &who, "outputMappings", &mut ok));

        if !ok {
            return None;
        }
        Some(Step {
            key,
            kind: r.kind.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(),
            options,
            expressions,
            deferred,
            verbatim,
            on_success,
            on_failure,
            has_failure_path: r.reject.is_some(),
            vars,
            state_filter,
            action_filter,
            input_mappings,
            output_mappings,
            event_filter,
            retry,
            span: r.node.span.clone(),
        })
    }

    /// Read an `eventDataFilter` mapping.
    pub(super) fn event_filter(
        &mut self,
        n: &Node,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
    ) -> Option<EventDataFilter> {
        let map = self.mapping(n, "eventDataFilter")?;
        self.check_keys(map, &["data", "toStateData", "useData"], "eventDataFilter");
        let before = self.diags.len();
        let mut ok = true;
        let mut f = EventDataFilter {
            data: self.jq_field(
                n,
                "data",
                vars,
                step_keys,
                who,
                "eventDataFilter.data",
                &mut ok,
            ),
            ..EventDataFilter::default()
        };
        f.to_state_data = self.state_path(n, who, "eventDataFilter").unwrap_or(None);
        f.use_data = self
            .bool_field(n, "useData", who, "eventDataFilter")
            .unwrap_or(None)
            .unwrap_or(true);
        (ok && self.diags.len() == before).then_some(f)
    }

    /// `toStateData` of a data filter: a jq path of names and indexes, kept
    /// as written and parsed. `Err` when it is reported as invalid.
    fn state_path(
        &mut self,
        filter: &Node,
        who: &str,
        what: &str,
    ) -> Result<Option<(String, MappingPath)>, ()> {
        let Some(t) = filter.get("toStateData") else {
            return Ok(None);
        };
        match t.as_str().map(|s| (s, jq_path_to_mapping(s))) {
            Some((s, Ok(p))) => Ok(Some((s.to_owned(), p))),
            _ => {
                self.err_help(
                    t.span.clone(),
                    format!("{who}: `{what}.toStateData` must be a jq path such as `.a.b`"),
                    "not a path",
                    "names (`.name` or `.[\"name\"]`) and indexes (`[0]`) only",
                );
                Err(())
            }
        }
    }

    /// A boolean field of a data filter. `Err` when it is reported as invalid.
    fn bool_field(
        &mut self,
        filter: &Node,
        field: &str,
        who: &str,
        what: &str,
    ) -> Result<Option<bool>, ()> {
        match filter.get(field).map(|n| (n, &n.kind)) {
            None => Ok(None),
            Some((_, Kind::Bool(b))) => Ok(Some(*b)),
            Some((n, _)) => {
                self.err(
                    n.span.clone(),
                    format!("{who}: `{what}.{field}` must be true or false"),
                    "expected a boolean",
                );
                Err(())
            }
        }
    }

    fn mapping<'n>(&mut self, n: &'n Node, what: &str) -> Option<&'n [(Key, Node)]> {
        let m = n.as_map();
        if m.is_none() {
            self.err(
                n.span.clone(),
                format!("`{what}` must be a mapping, found {}", n.kind_name()),
                "expected a mapping",
            );
        }
        m
    }

    #[allow(clippy::too_many_arguments)]
    fn jq_field(
        &mut self,
        parent: &Node,
        field: &str,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
        what: &str,
        ok: &mut bool,
    ) -> Option<Program> {
        let n = parent.get(field)?;
        let Some(code) = n.as_str() else {
            *ok = false;
            self.err(
                n.span.clone(),
                format!(
                    "{who}: `{what}` must be a jq expression (a string), found {}",
                    n.kind_name()
                ),
                "expected a string",
            );
            return None;
        };
        let p = self.program(code, Some(n), vars, step_keys, who, what);
        if p.is_none() {
            *ok = false;
        }
        p
    }

    fn mappings(&mut self, n: &Node, who: &str, what: &str, ok: &mut bool) -> Option<Vec<Mapping>> {
        let Kind::Seq(items) = &n.kind else {
            *ok = false;
            self.err(
                n.span.clone(),
                format!(
                    "{who}: `{what}` must be a list of {{source, target}}, found {}",
                    n.kind_name()
                ),
                "expected a list",
            );
            return None;
        };
        if items.is_empty() {
            *ok = false;
            self.err_help(
                n.span.clone(),
                format!("{who}: `{what}` is empty"),
                "no mappings",
                "give at least one {source, target} pair, or remove the key",
            );
            return None;
        }
        let mut out = Vec::new();
        for item in items {
            let Some(map) = item.as_map() else {
                *ok = false;
                self.err(
                    item.span.clone(),
                    format!("{who}: each of `{what}` must be a mapping with `source` and `target`"),
                    "expected a mapping",
                );
                continue;
            };
            self.check_keys(map, &["source", "target"], what);
            let path = |field: &str, this: &mut Self| -> Option<MappingPath> {
                let Some(p) = item.get(field) else {
                    this.err(
                        item.span.clone(),
                        format!("{who}: a mapping of `{what}` has no `{field}`"),
                        format!("missing `{field}`"),
                    );
                    return None;
                };
                let Some(text) = p.as_str() else {
                    this.err(
                        p.span.clone(),
                        format!("{who}: `{field}` must be a JSONPath string"),
                        "expected a string",
                    );
                    return None;
                };
                let parsed = if field == "target" {
                    MappingPath::parse_target(text)
                } else {
                    MappingPath::parse(text)
                };
                match parsed {
                    Ok(mp) => Some(mp),
                    Err(e) => {
                        let span = locate_in_scalar(
                            &this.source.text,
                            &p.span,
                            text,
                            &(e.offset..(e.offset + 1).min(text.len()).max(e.offset)),
                        );
                        this.err_help(
                            span,
                            format!(
                                "{who}: invalid {field} path `{text}` in `{what}`: {}",
                                e.message
                            ),
                            "here",
                            "mapping paths use `$`, `.name`, `['name']` and `[n]`, and a source `.*` or `[*]`",
                        );
                        None
                    }
                }
            };
            let source = path("source", self);
            let target = path("target", self);
            match (source, target) {
                (Some(source), Some(target)) => out.push(Mapping { source, target }),
                _ => *ok = false,
            }
        }
        Some(out)
    }

    fn program(
        &mut self,
        code: &str,
        node: Option<&Node>,
        vars: &[&str],
        step_keys: &[&str],
        who: &str,
        what: &str,
    ) -> Option<Program> {
        match Program::compile(code, vars) {
            Ok(p) => Some(p),
            Err(e) => {
                self.expr_issues(
                    node,
                    code,
                    &e.issues,
                    step_keys,
                    who,
                    &format!("`{what}`"),
                    "expression",
                );
                None
            }
        }
    }

    /// Report the templates of a step's options (under `at`) that did not
    /// compile, each at its place in `options`.
    fn template_issues(
        &mut self,
        options: Option<&Node>,
        at: &[PathSeg],
        errors: Vec<sluice_expr::template::LocatedTemplateError>,
        step_keys: &[&str],
        who: &str,
    ) {
        for e in errors {
            let mut path = at.to_vec();
            path.extend(e.path.iter().cloned());
            let node = options.and_then(|o| o.at(&path));
            self.expr_issues(
                node,
                &e.error.source_text,
                &e.error.issues,
                step_keys,
                who,
                &format!("option `{}`", display_path(&path)),
                "template",
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn expr_issues(
        &mut self,
        node: Option<&Node>,
        content: &str,
        issues: &[sluice_expr::CompileIssue],
        step_keys: &[&str],
        who: &str,
        what: &str,
        noun: &str,
    ) {
        for issue in issues {
            let span = match node {
                Some(n) => locate_in_scalar(&self.source.text, &n.span, content, &issue.span),
                None => 0..0,
            };
            let d = match &issue.undefined_var {
                Some(v) if step_keys.contains(&v.as_str()) => Diagnostic::new(span, format!("{who}: {what} refers to step `{v}`, which is not upstream of this step"), "not upstream")
                    .with_help(format!("a {noun} can read `$trigger`, `$last`, `$accountability` and the steps that can run before this one")),
                Some(v) => Diagnostic::new(span, format!("{who}: {what} uses unknown variable `${v}`"), "unknown variable")
                    .with_help("the flow object has `$trigger`, `$last`, `$accountability`, `$tokens` and one `$<key>` per upstream step"),
                None => Diagnostic::new(span, format!("{who}: {what} is not a valid jq {noun}: {}", issue.message), "here"),
            };
            self.diags.push(d);
        }
    }
}
