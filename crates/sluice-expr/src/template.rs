//! `{{ }}` templates in option values (SEMANTICS.md section 1).
//!
//! A string that is exactly one template becomes the expression's JSON value;
//! a template inside a longer string is interpolated (strings as they are,
//! other values as compact JSON). Inside the braces is a jq expression whose
//! `.` is the step's input and whose variables are the flow object's entries.
//!
//! The closing `}}` is found with jq's syntax in mind: braces of object
//! constructions and string literals inside the expression do not end it, so
//! `{{ {a: {b: 1}} }}` is one template.

use crate::jq::{CompileError, CompileIssue, Limits, Program};
use crate::val::{Obj, Val};
use crate::{Error, Input, Scope};
use serde_json::Value;
use std::borrow::Cow;
use std::ops::Range;

/// One piece of a templated string.
#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Expr(Program),
}

/// A string holding one or more templates.
#[derive(Clone, Debug)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that did not compile: the problems, with byte ranges relative
/// to the start of the templated string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template `{source_text}` is invalid: {}", .issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct TemplateError {
    /// The whole templated string.
    pub source_text: String,
    /// Every problem, in source order.
    pub issues: Vec<CompileIssue>,
}

/// Whether a string contains a template opening.
pub fn has_template(s: &str) -> bool {
    s.contains("{{")
}

impl Template {
    /// Parse and compile every template in `s`. Returns `Ok(None)` for a
    /// string without templates.
    pub fn compile(s: &str, vars: &[&str]) -> Result<Option<Self>, TemplateError> {
        if !has_template(s) {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut issues = Vec::new();
        let mut rest = 0usize;
        let mut text = String::new();
        while let Some(open) = s[rest..].find("{{").map(|i| i + rest) {
            let body_start = open + 2;
            let Some(close) = find_close(s, body_start) else {
                issues.push(CompileIssue {
                    span: open..s.len(),
                    message: "`{{` is not closed by `}}`".to_owned(),
                    undefined_var: None,
                });
                break;
            };
            text.push_str(&s[rest..open]);
            let code = &s[body_start..close];
            if code.trim().is_empty() {
                issues.push(CompileIssue {
                    span: open..close + 2,
                    message: "empty template: write a jq expression between the braces".to_owned(),
                    undefined_var: None,
                });
            } else {
                match Program::compile(code, vars) {
                    Ok(p) => {
                        if !text.is_empty() {
                            parts.push(Part::Text(std::mem::take(&mut text)));
                        }
                        parts.push(Part::Expr(p));
                    }
                    Err(CompileError { issues: inner, .. }) => {
                        issues.extend(inner.into_iter().map(|mut i| {
                            i.span = shift(i.span, body_start);
                            i
                        }))
                    }
                }
            }
            rest = close + 2;
        }
        if !issues.is_empty() {
            return Err(TemplateError {
                source_text: s.to_owned(),
                issues,
            });
        }
        text.push_str(&s[rest..]);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Some(Self {
            source: s.to_owned(),
            parts,
        }))
    }

    /// The one expression, when the string is exactly one template: its
    /// value is then kept as it is, not made text.
    fn whole(&self) -> Option<&Program> {
        match self.parts.as_slice() {
            [Part::Expr(p)] => Some(p),
            _ => None,
        }
    }

    /// The templated string as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled expressions, in order.
    pub fn programs(&self) -> impl Iterator<Item = &Program> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(p) => Some(p),
            Part::Text(_) => None,
        })
    }

    /// Whether one of its expressions mentions the variable `$name`.
    pub fn mentions(&self, name: &str) -> bool {
        self.programs().any(|p| p.vars().iter().any(|v| v == name))
    }

    /// Render with `input` as `.` and the flow object in `scope`.
    pub fn render(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Value, Error> {
        // A template of one expression gives its value: a direct program
        // reads JSON at hand (the input, or a variable the scope holds as
        // JSON) without making jq values of it.
        if let Some(p) = self.whole() {
            return Ok(p
                .single_json(input, scope, limits)?
                .map_or(Value::Null, Cow::into_owned));
        }
        self.render_val(input, scope, limits)
            .map(|v| crate::data::to_json(&v))
    }

    /// [`Template::render`] as a jq value: what the output shares with the
    /// input and the flow object stays shared.
    pub fn render_val(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Val, Error> {
        if let Some(p) = self.whole() {
            return Ok(p.single_val(input, scope, limits)?.unwrap_or(Val::Null));
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(p) => match p.single_val(input, scope, limits)? {
                    None => out.push_str("null"),
                    Some(v) => match crate::data::as_str(&v) {
                        Some(s) => out.push_str(s),
                        None => out.push_str(&crate::data::to_text(&v)),
                    },
                },
            }
        }
        Ok(Val::from(out))
    }

    /// Whether any of the template's programs can read the input `.`.
    pub fn reads_input(&self) -> bool {
        self.programs().any(Program::reads_input)
    }
}

fn shift(r: Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// Find the `}}` that closes a template whose body starts at `from`,
/// skipping jq string literals and balanced brackets.
fn find_close(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_string(b, i + 1)?;
                continue;
            }
            b'#' => {
                // a jq comment runs to the end of the line
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'{' | b'[' | b'(' => depth += 1,
            b'}' if depth == 0 => {
                if b.get(i + 1) == Some(&b'}') {
                    return Some(i);
                }
                return None;
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Skip a jq string whose opening quote is just before `i`; return the index
/// after its closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'(') => {
                i = skip_interpolation(b, i + 2)?;
            }
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_interpolation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_string(b, i + 1)?;
                continue;
            }
            b'(' => depth += 1,
            b')' if depth == 0 => return Some(i + 1),
            b')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// An option value with its templates compiled: the shape of the JSON value,
/// with templated strings at the leaves.
#[derive(Clone, Debug)]
pub enum TemplateValue {
    /// A subtree without any template.
    Const(Value),
    /// A templated string.
    Template(std::sync::Arc<Template>),
    /// An array with at least one templated element.
    Array(Vec<TemplateValue>),
    /// An object with at least one templated value (keys are never templated).
    Object(Vec<(String, TemplateValue)>),
}

/// Apply `f` to every string value in `v` (not to object keys).
pub fn map_strings(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| map_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| map_strings(x, f)),
        _ => {}
    }
}

/// Where in an option value a template failed to compile.
#[derive(Clone, Debug)]
pub struct LocatedTemplateError {
    /// Path of keys and indexes from the option value's root.
    pub path: Vec<PathSeg>,
    /// The error.
    pub error: TemplateError,
}

/// One step of a path into a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl TemplateValue {
    /// Compile every template in `v`; report every failure with its path.
    pub fn compile(v: &Value, vars: &[&str]) -> Result<Self, Vec<LocatedTemplateError>> {
        let mut errors = Vec::new();
        let mut path = Vec::new();
        let t = compile_at(v, vars, &mut path, &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    /// Apply `f` to every string written literally: constant strings and
    /// the text around templates, never the code inside `{{ }}` and never
    /// what a template renders (how `${secret:NAME}` is replaced in a
    /// step's options at load, where data can never name a secret).
    pub fn map_text(&mut self, f: &mut dyn FnMut(&mut String)) {
        match self {
            Self::Const(v) => map_strings(v, f),
            Self::Template(t) => {
                for part in &mut std::sync::Arc::make_mut(t).parts {
                    if let Part::Text(s) = part {
                        f(s);
                    }
                }
            }
            Self::Array(a) => a.iter_mut().for_each(|x| x.map_text(f)),
            Self::Object(o) => o.iter_mut().for_each(|(_, x)| x.map_text(f)),
        }
    }

    /// Whether the value holds no template at all.
    pub fn is_const(&self) -> bool {
        matches!(self, Self::Const(_))
    }

    /// Every template, depth first.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            Self::Const(_) => {}
            Self::Template(t) => out.push(t),
            Self::Array(a) => a.iter().for_each(|x| x.collect(out)),
            Self::Object(o) => o.iter().for_each(|(_, x)| x.collect(out)),
        }
    }

    /// Render every template.
    pub fn render(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Value, Error> {
        match self {
            Self::Const(v) => Ok(v.clone()),
            Self::Template(t) => t.render(input, scope, limits),
            _ => self
                .render_val(input, scope, limits)
                .map(|v| crate::data::to_json(&v)),
        }
    }

    /// [`TemplateValue::render`] as a jq value: what the templates' outputs
    /// share with the input and the flow object stays shared.
    pub fn render_val(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Val, Error> {
        Ok(match self {
            Self::Const(v) => crate::value::to_val(v),
            Self::Template(t) => t.render_val(input, scope, limits)?,
            Self::Array(a) => Val::Arr(std::sync::Arc::new(
                a.iter()
                    .map(|x| x.render_val(input, scope, limits))
                    .collect::<Result<_, _>>()?,
            )),
            Self::Object(o) => {
                let mut m = Obj::with_capacity(o.len());
                for (k, x) in o {
                    m.insert(k.as_str().into(), x.render_val(input, scope, limits)?);
                }
                Val::obj(m)
            }
        })
    }

    /// Render every template except those `later` picks, which stay as
    /// they are: what is left is rendered later with [`Self::render`] (for
    /// example once variables the kept templates read are known). A subtree
    /// whose templates were all rendered becomes a constant.
    pub fn render_partial(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
        later: &dyn Fn(&Template) -> bool,
    ) -> Result<Self, Error> {
        Ok(match self {
            Self::Const(v) => Self::Const(v.clone()),
            Self::Template(t) if later(t) => Self::Template(t.clone()),
            Self::Template(t) => Self::Const(t.render(input, scope, limits)?),
            Self::Array(a) => {
                let items = a
                    .iter()
                    .map(|x| x.render_partial(input, scope, limits, later))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(Self::is_const) {
                    Self::Const(Value::Array(
                        items.into_iter().filter_map(Self::into_const).collect(),
                    ))
                } else {
                    Self::Array(items)
                }
            }
            Self::Object(o) => {
                let mut entries = Vec::with_capacity(o.len());
                for (k, x) in o {
                    entries.push((k.clone(), x.render_partial(input, scope, limits, later)?));
                }
                if entries.iter().all(|(_, x)| x.is_const()) {
                    Self::Const(Value::Object(
                        entries
                            .into_iter()
                            .filter_map(|(k, x)| Some((k, x.into_const()?)))
                            .collect(),
                    ))
                } else {
                    Self::Object(entries)
                }
            }
        })
    }

    fn into_const(self) -> Option<Value> {
        match self {
            Self::Const(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` of an array value, its templates rendered as
    /// [`Self::render_partial`] does (`None` past its end, or when the value
    /// is not an array).
    pub fn render_item_partial(
        &self,
        i: usize,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
        later: &dyn Fn(&Template) -> bool,
    ) -> Result<Option<Self>, Error> {
        match self {
            Self::Const(Value::Array(a)) => Ok(a.get(i).cloned().map(Self::Const)),
            Self::Array(items) => items
                .get(i)
                .map(|t| t.render_partial(input, scope, limits, later))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// How many elements an array value has (`None` when it is not an array).
    pub fn array_len(&self) -> Option<usize> {
        match self {
            Self::Const(Value::Array(a)) => Some(a.len()),
            Self::Array(items) => Some(items.len()),
            _ => None,
        }
    }

    /// Render element `i` of an array value (`None` past its end, or when
    /// the value is not an array).
    pub fn render_item(
        &self,
        i: usize,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Value>, Error> {
        match self {
            Self::Const(Value::Array(a)) => Ok(a.get(i).cloned()),
            Self::Array(items) => items
                .get(i)
                .map(|t| t.render(input, scope, limits))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// Render with a JSON input.
    pub fn render_json(
        &self,
        input: &Value,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Value, Error> {
        match self {
            Self::Const(v) => Ok(v.clone()),
            _ => self.render(&Input::json(input), scope, limits),
        }
    }
}

fn compile_at(
    v: &Value,
    vars: &[&str],
    path: &mut Vec<PathSeg>,
    errors: &mut Vec<LocatedTemplateError>,
) -> TemplateValue {
    match v {
        Value::String(s) => match Template::compile(s, vars) {
            Ok(Some(t)) => TemplateValue::Template(std::sync::Arc::new(t)),
            Ok(None) => TemplateValue::Const(v.clone()),
            Err(error) => {
                errors.push(LocatedTemplateError {
                    path: path.clone(),
                    error,
                });
                TemplateValue::Const(v.clone())
            }
        },
        Value::Array(a) => {
            let items: Vec<TemplateValue> = a
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    path.push(PathSeg::Index(i));
                    let t = compile_at(x, vars, path, errors);
                    path.pop();
                    t
                })
                .collect();
            if items.iter().all(TemplateValue::is_const) {
                TemplateValue::Const(v.clone())
            } else {
                TemplateValue::Array(items)
            }
        }
        Value::Object(o) => {
            let items: Vec<(String, TemplateValue)> = o
                .iter()
                .map(|(k, x)| {
                    path.push(PathSeg::Key(k.clone()));
                    let t = compile_at(x, vars, path, errors);
                    path.pop();
                    (k.clone(), t)
                })
                .collect();
            if items.iter().all(|(_, t)| t.is_const()) {
                TemplateValue::Const(v.clone())
            } else {
                TemplateValue::Object(items)
            }
        }
        _ => TemplateValue::Const(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapScope;
    use serde_json::json;

    fn render(s: &str, input: Value, scope: &MapScope) -> Value {
        let vars = scope.names();
        let t = TemplateValue::compile(&json!(s), &vars).unwrap();
        t.render_json(&input, scope, &Limits::default()).unwrap()
    }

    /// Variables held as JSON, as a run's flow object holds some.
    struct JsonScope(serde_json::Map<String, Value>);

    impl Scope for JsonScope {
        fn get(&self, name: &str) -> Option<Val> {
            self.0.get(name).map(crate::value::to_val)
        }

        fn get_json(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
    }

    #[test]
    fn a_template_of_one_expression_renders_the_same_from_json() {
        let vars = json!({"tokens": {"customer": 7, "big": 12345678901234567890u64, "f": 1.5,
            "list": [1, "a", null], "deep": {"x": {"y": "z"}}}, "n": null});
        let scope = JsonScope(vars.as_object().unwrap().clone());
        let input = json!({"name": "Ada", "n": 2.0, "items": [{"qty": 3}], "none": null});
        let limits = Limits::default();
        for text in [
            "{{ $tokens.customer }}",
            "{{ $tokens.big }}",
            "{{ $tokens.f }}",
            "{{ $tokens.list }}",
            "{{ $tokens.deep.x }}",
            "{{ $tokens.missing }}",
            "{{ $tokens.customer.x }}",
            "{{ $n }}",
            "{{ .name }}",
            "{{ .n }}",
            "{{ .items[0].qty }}",
            "{{ .none.x }}",
            "{{ {a: .name, b: $tokens.customer} }}",
            "{{ .items | length }}",
            "id {{ $tokens.customer }}",
        ] {
            let t = Template::compile(text, &["tokens", "n"]).unwrap().unwrap();
            for input in [
                Input::json(&input),
                Input::val(crate::value::to_val(&input)),
            ] {
                let direct = t.render(&input, &scope, &limits).map_err(|e| e.to_string());
                let through_jq = t
                    .render_val(&input, &scope, &limits)
                    .map(|v| crate::data::to_json(&v))
                    .map_err(|e| e.to_string());
                assert_eq!(direct, through_jq, "{text}");
            }
        }
    }

    #[test]
    fn map_text_reaches_written_text_only() {
        let v = json!({"a": "K=${k} {{ \"${k}\" + .x }}", "b": ["${k}", 1], "c": "{{ .x }}"});
        let mut t = TemplateValue::compile(&v, &[]).unwrap();
        t.map_text(&mut |s: &mut String| *s = s.replace("${k}", "42"));
        let got = t
            .render_json(&json!({"x": "!"}), &MapScope::default(), &Limits::default())
            .unwrap();
        assert_eq!(got, json!({"a": "K=42 ${k}!", "b": ["42", 1], "c": "!"}));
    }

    #[test]
    fn a_partial_render_leaves_the_picked_templates_for_later() {
        let early = MapScope::from_json(json!({"tokens": {}, "last": 1}));
        let late = MapScope::from_json(json!({"tokens": {"id": 7}, "last": 1}));
        let vars = early.names();
        let t = TemplateValue::compile(
            &json!([
                {"op": "create", "properties": {"a": "{{ .a }}", "n": "{{ $last + 1 }}"}},
                {"properties": {"id": "{{ $tokens.id }}", "b": "x{{ .a }}"}, "k": [1, "{{ $tokens.id }}"]},
                "fixed"
            ]),
            &vars,
        )
        .unwrap();
        let input_json = json!({"a": "A"});
        let input = Input::json(&input_json);
        let limits = Limits::default();
        let tokens = |t: &Template| t.mentions("tokens");
        // Without a template reading `$tokens`, the item is rendered whole.
        let first = t
            .render_item_partial(0, &input, &early, &limits, &tokens)
            .unwrap()
            .unwrap();
        assert!(
            matches!(&first, TemplateValue::Const(v) if *v == json!({"op": "create", "properties": {"a": "A", "n": 2}}))
        );
        // The `$tokens` templates stay; the rest is rendered once.
        let second = t
            .render_item_partial(1, &input, &early, &limits, &tokens)
            .unwrap()
            .unwrap();
        assert_eq!(second.templates().len(), 2);
        assert_eq!(
            second
                .render(&Input::json(&json!({"a": "changed"})), &late, &limits)
                .unwrap(),
            json!({"properties": {"id": 7, "b": "xA"}, "k": [1, 7]})
        );
        assert!(matches!(
            t.render_item_partial(2, &input, &early, &limits, &tokens).unwrap(),
            Some(TemplateValue::Const(v)) if v == json!("fixed")
        ));
        assert!(
            t.render_item_partial(3, &input, &early, &limits, &tokens)
                .unwrap()
                .is_none()
        );
        // An error is the template's own.
        let bad = TemplateValue::compile(&json!(["{{ error(\"no\") }}"]), &vars).unwrap();
        assert!(
            bad.render_item_partial(0, &input, &early, &limits, &tokens)
                .is_err()
        );
    }

    #[test]
    fn raw_template_keeps_the_value() {
        let scope = MapScope::from_json(json!({"last": {"a": [1, 2]}}));
        assert_eq!(render("{{ $last.a }}", json!({}), &scope), json!([1, 2]));
        assert_eq!(render("{{ .n }}", json!({"n": 4}), &scope), json!(4));
    }

    #[test]
    fn interpolation_uses_compact_json_for_non_strings() {
        let scope = MapScope::from_json(json!({"last": {"a": [1, 2], "s": "x"}}));
        assert_eq!(
            render(
                "a={{ $last.a }} s={{ $last.s }} n={{ .missing }}",
                json!({}),
                &scope
            ),
            json!("a=[1,2] s=x n=null")
        );
    }

    #[test]
    fn braces_inside_the_expression_do_not_close_it() {
        let scope = MapScope::default();
        assert_eq!(
            render("{{ {a: {b: 1}} }}", json!({}), &scope),
            json!({"a": {"b": 1}})
        );
        assert_eq!(render("{{ \"}}\" }}", json!({}), &scope), json!("}}"));
        assert_eq!(
            render("{{ \"\\(1 + 1)}}\" }}", json!({}), &scope),
            json!("2}}")
        );
    }

    #[test]
    fn unknown_variable_is_reported_with_its_position() {
        let err = Template::compile("x {{ $nope.id }}", &["trigger"]).unwrap_err();
        assert_eq!(err.issues.len(), 1);
        assert_eq!(err.issues[0].undefined_var.as_deref(), Some("nope"));
        assert_eq!(&"x {{ $nope.id }}"[err.issues[0].span.clone()], "$nope");
    }

    #[test]
    fn unclosed_template_is_an_error() {
        assert!(Template::compile("{{ .a ", &[]).is_err());
        assert!(Template::compile("{{ }}", &[]).is_err());
    }

    #[test]
    fn several_outputs_are_an_error() {
        let t = Template::compile("{{ .[] }}", &[]).unwrap().unwrap();
        let err = t
            .render(
                &Input::val(crate::to_val(&json!([1, 2]))),
                &MapScope::default(),
                &Limits::default(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::MultipleOutputs { .. }));
    }
}
