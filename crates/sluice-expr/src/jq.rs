//! jq programs: compiled once through jaq, run many times under a budget.
//!
//! A [`Program`] is compiled with a fixed list of global variable names
//! (without the `$`). Running it takes the values of those variables from a
//! [`Scope`], so the same compiled program serves every run of a flow.
//!
//! # Safety limits
//!
//! jaq has no fuel and no cancellation, so Sluice bounds an expression itself:
//!
//! * the standard library's recursive definitions (`repeat`, `recurse`,
//!   `while`, `until`) and `range` are rewritten so that every iteration passes
//!   a checkpoint; the checkpoint fails the expression once its deadline has
//!   passed, or once the evaluation has used half of the stack it started
//!   with (at least [`MIN_STACK`]);
//! * user-written recursive definitions are refused when the program is
//!   compiled (every loop a program can write therefore goes through a
//!   checkpoint);
//! * functions that reach outside the expression are not provided: `env`,
//!   `$ENV`, `input`, `inputs`, `halt`, `halt_error`, `debug`, `stderr`,
//!   `include` and `import`.

use crate::value::{as_from_jq, from_val, mend_numbers};
use crate::{Error, Input, Scope};
use jaq_core::load::parse::{Def, Pattern, Term};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::path::Part;
use jaq_core::{Compiler, Ctx, DataT, Native, Vars, data::HasLut, native};
use jaq_json::Val;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::Cell;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// An evaluation starts with at least this much stack (it moves to a fresh
/// stack segment when less remains), and may use at most half of what it
/// started with: the other half is left for unwinding and for dropping the
/// deep values a deep recursion may have built.
pub const MIN_STACK: usize = 1 << 20;
const GROWN_STACK: usize = 16 << 20;

/// Default time an expression may run before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Name of the checkpoint filter injected into recursive definitions.
const TICK: &str = "__sluice_checkpoint";

/// Limits applied to one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock time one evaluation may take.
    pub timeout: Duration,
    /// Most outputs one evaluation may produce.
    pub max_outputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_outputs: 100_000,
        }
    }
}

/// The data kind of Sluice's jq filters: jaq-json values plus a [`Budget`].
pub struct Guarded;

/// Global data seen by native filters during one evaluation.
#[derive(Clone)]
pub struct GuardedData<'a> {
    lut: &'a jaq_core::Lut<Guarded>,
    budget: &'a Budget,
}

impl DataT for Guarded {
    type V<'a> = Val;
    type Data<'a> = GuardedData<'a>;
}

impl<'a> HasLut<'a, Guarded> for GuardedData<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Guarded> {
        self.lut
    }
}

/// What an evaluation may still spend.
struct Budget {
    timeout: Duration,
    /// Set at the first checkpoint: simple expressions never read the clock.
    deadline: Cell<Option<Instant>>,
    stack_floor: usize,
    ticks: Cell<u32>,
    exceeded: Cell<Option<Exceeded>>,
}

#[derive(Clone, Copy, Debug)]
enum Exceeded {
    Time,
    Stack,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        Self {
            timeout: limits.timeout,
            deadline: Cell::new(None),
            stack_floor: stacker::remaining_stack().unwrap_or(MIN_STACK) / 2,
            ticks: Cell::new(0),
            exceeded: Cell::new(None),
        }
    }

    fn check(&self) -> Result<(), Exceeded> {
        if let Some(e) = self.exceeded.get() {
            return Err(e);
        }
        if stacker::remaining_stack().is_some_and(|r| r < self.stack_floor) {
            self.exceeded.set(Some(Exceeded::Stack));
            return Err(Exceeded::Stack);
        }
        let t = self.ticks.get().wrapping_add(1);
        self.ticks.set(t);
        let deadline = match self.deadline.get() {
            Some(d) => d,
            None => {
                let d = Instant::now() + self.timeout;
                self.deadline.set(Some(d));
                d
            }
        };
        if t.is_multiple_of(256) && Instant::now() > deadline {
            self.exceeded.set(Some(Exceeded::Time));
            return Err(Exceeded::Time);
        }
        Ok(())
    }
}

type Fun = native::Fun<Guarded>;

fn checkpoint() -> Fun {
    native::run((TICK, native::v(0), |cv| {
        let r = match cv.0.data().budget.check() {
            Ok(()) => Ok(Val::Bool(true)),
            Err(_) => Err(jaq_core::Error::str("expression budget exceeded")),
        };
        native::bome(r)
    }))
}

/// Natives that reach outside the expression, or that the guarded `range` replaces.
const REMOVED_FUNS: &[&str] = &[
    "env",
    "halt",
    "input",
    "inputs",
    "input_filename",
    "stderr_empty",
    "debug_empty",
    "range",
];
const REMOVED_DEFS: &[&str] = &["stderr", "debug", "halt", "halt_error", "input", "inputs"];

/// `range/3` as a definition over `while`, so that it passes the checkpoint.
const GUARDED_DEFS: &str = r#"
def range($from; $upto; $by):
  if $by > 0 then $from | while(. < $upto; . + $by)
  elif $by < 0 then $from | while(. > $upto; . + $by)
  else $from | while(. != $upto; . + $by) end;
"#;

struct Std {
    defs: Vec<Def<&'static str>>,
}

fn funs() -> impl Iterator<Item = Fun> {
    jaq_core::funs::<Guarded>()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !REMOVED_FUNS.contains(name))
        .chain([checkpoint()])
}

fn std_lib() -> &'static Std {
    static STD: OnceLock<Std> = OnceLock::new();
    STD.get_or_init(|| {
        let guarded: Vec<Def<&'static str>> =
            load::parse(GUARDED_DEFS, |p| p.defs()).unwrap_or_default();
        let core = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .filter(|d| !REMOVED_DEFS.contains(&d.name));
        // The guarded `range/3` is built on `while`, and the core `range/1`
        // and `range/2` on `range/3`: hold every `range` back until `while`
        // has been defined.
        let mut defs: Vec<Def<&'static str>> = Vec::new();
        let mut held: Vec<Def<&'static str>> = guarded;
        let mut released = false;
        for d in core {
            if !released && d.name == "range" {
                held.push(d);
                continue;
            }
            let is_while = d.name == "while";
            defs.push(d);
            if is_while && !released {
                defs.append(&mut held);
                released = true;
            }
        }
        defs.append(&mut held);
        let defs = defs.into_iter().map(guard_def).collect();
        Std { defs }
    })
}

/// Guard a definition of the standard library: definitions that call
/// themselves, and the local helpers (`def rec: ...`) that the looping
/// definitions are built on, pass the checkpoint on every call.
fn guard_def(mut d: Def<&'static str>) -> Def<&'static str> {
    let mut calls_itself = Vec::new();
    check_recursion("", &d.body, &mut vec![d.name], &mut calls_itself);
    let body = std::mem::take(&mut d.body);
    d.body = guard_body(body, !calls_itself.is_empty());
    d
}

fn guard_body(body: Term<&'static str>, tick: bool) -> Term<&'static str> {
    let body = match body {
        Term::Def(inner, rest) => Term::Def(
            inner
                .into_iter()
                .map(|mut d| {
                    let b = std::mem::take(&mut d.body);
                    d.body = guard_body(b, true);
                    d
                })
                .collect(),
            rest,
        ),
        other => other,
    };
    if tick {
        Term::IfThenElse(vec![(Term::Call(TICK, Vec::new()), body)], None)
    } else {
        body
    }
}

/// A compiled jq program.
#[derive(Clone)]
pub struct Program {
    inner: Arc<Compiled>,
}

struct Compiled {
    code: String,
    vars: Vec<String>,
    filter: jaq_core::Filter<Guarded>,
    identity: bool,
    /// The direct form, for the simplest programs.
    fast: Option<crate::fast::Fast>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("code", &self.inner.code)
            .field("vars", &self.inner.vars)
            .finish()
    }
}

/// One problem found while compiling, with its byte range in the program text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileIssue {
    /// Byte range inside the program text.
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// For an undefined variable: its name without `$`.
    pub undefined_var: Option<String>,
}

/// A program that did not compile, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("jq expression `{code}` does not compile: {}", .issues.iter().map(|i| i.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct CompileError {
    /// The program text.
    pub code: String,
    /// Every problem, in source order.
    pub issues: Vec<CompileIssue>,
}

/// Whether `code` mentions the variable `$name` (anywhere, even in a
/// string: a variable kept for nothing costs a lookup, one left out would
/// fail to compile).
fn mentions(code: &str, name: &str) -> bool {
    let b = code.as_bytes();
    code.match_indices('$').any(|(i, _)| {
        let rest = &code[i + 1..];
        rest.starts_with(name)
            && b.get(i + 1 + name.len())
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
    })
}

impl Program {
    /// Compile `code` with the given global variables (names without `$`).
    /// The program keeps only those its text mentions, so that a run looks
    /// up (and its caller builds) no value the program cannot read.
    pub fn compile(code: &str, vars: &[&str]) -> Result<Self, CompileError> {
        let fail = |issues: Vec<CompileIssue>| CompileError {
            code: code.to_owned(),
            issues,
        };
        let vars: Vec<&str> = vars.iter().copied().filter(|v| mentions(code, v)).collect();
        // Refuse user recursion before handing the program to jaq.
        let owned_vars: Vec<String> = vars.iter().map(|v| (*v).to_owned()).collect();
        let mut fast = None;
        if let Some(term) = load::parse(code, |p| p.term()) {
            let mut issues = Vec::new();
            check_recursion(code, &term, &mut Vec::new(), &mut issues);
            if !issues.is_empty() {
                return Err(fail(issues));
            }
            fast = crate::fast::compile(&term, &owned_vars);
        }
        let std = std_lib();
        let arena = Arena::default();
        let loader = Loader::new(std.defs.iter().cloned());
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| fail(load_issues(code, errs)))?;
        let names: Vec<String> = vars.iter().map(|v| format!("${v}")).collect();
        let filter = Compiler::default()
            .with_funs(funs())
            .with_global_vars(names.iter().map(String::as_str))
            .compile(modules)
            .map_err(|errs| {
                let mut issues = Vec::new();
                for (_file, list) in errs {
                    for (name, undefined) in list {
                        let is_var = matches!(undefined, jaq_core::compile::Undefined::Var);
                        issues.push(CompileIssue {
                            span: span_in(code, name),
                            message: format!("undefined {} `{name}`", undefined.as_str()),
                            undefined_var: is_var.then(|| name.trim_start_matches('$').to_owned()),
                        });
                    }
                }
                fail(issues)
            })?;
        Ok(Self {
            inner: Arc::new(Compiled {
                code: code.to_owned(),
                vars: owned_vars,
                filter,
                identity: code.trim() == ".",
                fast,
            }),
        })
    }

    /// The same program without its direct form (tests compare the two).
    #[cfg(test)]
    fn without_fast(&self) -> Self {
        let c = &*self.inner;
        Self::compile(
            &c.code,
            &c.vars.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .map(|p| {
            let mut inner = Arc::try_unwrap(p.inner).unwrap_or_else(|_| unreachable!("fresh"));
            inner.fast = None;
            Self {
                inner: Arc::new(inner),
            }
        })
        .unwrap_or_else(|_| unreachable!("compiled before"))
    }

    /// Whether the program runs on the direct evaluator.
    pub fn is_direct(&self) -> bool {
        self.inner.fast.is_some()
    }

    /// The program text.
    pub fn code(&self) -> &str {
        &self.inner.code
    }

    /// The global variables the program reads (without `$`): those it was
    /// compiled with that its text mentions.
    pub fn vars(&self) -> &[String] {
        &self.inner.vars
    }

    /// Run on `input` and collect every output.
    pub fn run(&self, input: Val, scope: &dyn Scope, limits: &Limits) -> Result<Vec<Val>, Error> {
        let mut out = Vec::new();
        self.run_with(input, scope, limits, |v| {
            out.push(v);
            true
        })?;
        Ok(out)
    }

    /// Run on `input` and return the first output, or `None` when there is none.
    pub fn first(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Val>, Error> {
        let mut first = None;
        self.run_with(input, scope, limits, |v| {
            first = Some(v);
            false
        })?;
        Ok(first)
    }

    /// Run on `input` and return its one output: no output is `None`, more
    /// than one is an error.
    pub fn single(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Val>, Error> {
        if self.inner.identity {
            return Ok(Some(input));
        }
        let mut first = None;
        let mut more = false;
        self.run_with(input, scope, limits, |v| {
            if first.is_none() {
                first = Some(v);
                true
            } else {
                more = true;
                false
            }
        })?;
        if more {
            return Err(Error::MultipleOutputs {
                code: self.inner.code.clone(),
            });
        }
        Ok(first)
    }

    /// Convenience for serde_json values: the single output as JSON.
    pub fn eval_json(
        &self,
        input: &Value,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Value>, Error> {
        Ok(self
            .single_json(&Input::json(input), scope, limits)?
            .map(Cow::into_owned))
    }

    /// The single output as JSON: no output is `None`, more than one is an
    /// error. A direct program reads a JSON input, and the variables the
    /// scope holds as JSON, without converting them (the output borrows
    /// from them where it can); any other program runs on jq values.
    pub fn single_json<'s>(
        &'s self,
        input: &'s Input<'s>,
        scope: &'s dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Cow<'s, Value>>, Error> {
        let c = &*self.inner;
        if let Some(fast) = &c.fast {
            let var = |i: usize| c.vars.get(i).and_then(|n| scope.get_json(n));
            match fast.eval_json(input.as_json(), &var) {
                Some(Cow::Borrowed(v)) => return Ok(Some(as_from_jq(v))),
                Some(Cow::Owned(mut v)) => {
                    mend_numbers(&mut v);
                    return Ok(Some(Cow::Owned(v)));
                }
                None => {}
            }
        }
        self.single(input.as_val().clone(), scope, limits)?
            .map(|v| from_val(&v).map(Cow::Owned).map_err(|e| self.runtime(e)))
            .transpose()
    }

    /// Whether the program can read its input `.` (a direct program that
    /// reads only variables and constants cannot).
    pub fn reads_input(&self) -> bool {
        self.inner
            .fast
            .as_ref()
            .is_none_or(crate::fast::Fast::reads_input)
    }

    fn runtime(&self, message: String) -> Error {
        Error::Runtime {
            code: self.inner.code.clone(),
            message,
        }
    }

    /// Run, handing each output to `each` until it returns `false`.
    pub fn run_with(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
        each: impl FnMut(Val) -> bool,
    ) -> Result<(), Error> {
        stacker::maybe_grow(MIN_STACK, GROWN_STACK, || {
            self.run_guarded(input, scope, limits, each)
        })
    }

    fn run_guarded(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
        mut each: impl FnMut(Val) -> bool,
    ) -> Result<(), Error> {
        let c = &*self.inner;
        if let Some(fast) = &c.fast {
            let values: Vec<Val> = c
                .vars
                .iter()
                .map(|n| scope.get(n).unwrap_or(Val::Null))
                .collect();
            if let Some(v) = fast.eval(&input, &values) {
                each(v);
                return Ok(());
            }
        }
        let budget = Budget::new(limits);
        let vars = Vars::new(c.vars.iter().map(|n| scope.get(n).unwrap_or(Val::Null)));
        let data = GuardedData {
            lut: &c.filter.lut,
            budget: &budget,
        };
        let ctx = Ctx::<Guarded>::new(data, vars);
        let mut count = 0usize;
        let limit_error = |e: Exceeded| match e {
            Exceeded::Time => Error::Timeout {
                code: c.code.clone(),
                timeout: limits.timeout,
            },
            Exceeded::Stack => Error::TooDeep {
                code: c.code.clone(),
            },
        };
        for item in c.filter.id.run((ctx, input)) {
            if let Some(e) = budget.exceeded.get() {
                return Err(limit_error(e));
            }
            match item {
                Ok(v) => {
                    count += 1;
                    if count > limits.max_outputs {
                        return Err(Error::TooManyOutputs {
                            code: c.code.clone(),
                            max: limits.max_outputs,
                        });
                    }
                    if !each(v) {
                        break;
                    }
                }
                Err(exn) => {
                    let message = match exn.get_err() {
                        Ok(err) => err_text(&err),
                        Err(_) => "the program tried to halt".to_owned(),
                    };
                    return Err(self.runtime(message));
                }
            }
        }
        if let Some(e) = budget.exceeded.get() {
            return Err(limit_error(e));
        }
        Ok(())
    }
}

fn err_text(err: &jaq_core::Error<Val>) -> String {
    // A string error (`error("...")`) reads best without its quotes.
    let val = err.clone().into_val();
    match val {
        Val::TStr(ref s) | Val::BStr(ref s) => String::from_utf8_lossy(s).into_owned(),
        other => other.to_string(),
    }
}

fn span_in(code: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize;
    let base = code.as_ptr() as usize;
    if start >= base && start + part.len() <= base + code.len() {
        load::span(code, part)
    } else {
        0..code.len()
    }
}

fn load_issues(code: &str, errs: load::Errors<&str, ()>) -> Vec<CompileIssue> {
    let mut issues = Vec::new();
    for (_file, err) in errs {
        match err {
            load::Error::Io(list) => {
                for (path, msg) in list {
                    issues.push(CompileIssue {
                        span: span_in(code, path),
                        message: format!("cannot load module {path}: {msg}"),
                        undefined_var: None,
                    });
                }
            }
            load::Error::Lex(list) => {
                for (expect, found) in list {
                    issues.push(CompileIssue {
                        span: span_in(code, found),
                        message: format!("expected {}", expect.as_str()),
                        undefined_var: None,
                    });
                }
            }
            load::Error::Parse(list) => {
                for (expect, found) in list {
                    let message = if found.is_empty() {
                        format!(
                            "expected {}, found the end of the expression",
                            expect.as_str()
                        )
                    } else {
                        format!("expected {}, found `{found}`", expect.as_str())
                    };
                    issues.push(CompileIssue {
                        span: span_in(code, found),
                        message,
                        undefined_var: None,
                    });
                }
            }
        }
    }
    if issues.is_empty() {
        issues.push(CompileIssue {
            span: 0..code.len(),
            message: "the expression does not parse".to_owned(),
            undefined_var: None,
        });
    }
    issues
}

/// Report every definition whose body calls itself. jq has no forward
/// references, so a cycle always shows up as a definition naming itself.
fn check_recursion<'s>(
    code: &'s str,
    t: &Term<&'s str>,
    open: &mut Vec<&'s str>,
    out: &mut Vec<CompileIssue>,
) {
    macro_rules! walk {
        ($t:expr, $open:expr) => {
            check_recursion(code, $t, $open, out)
        };
    }
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_) => {}
        Term::Str(_, parts) => {
            for p in parts {
                if let load::lex::StrPart::Term(t) = p {
                    walk!(t, open);
                }
            }
        }
        Term::Arr(a) => {
            if let Some(a) = a {
                walk!(a, open);
            }
        }
        Term::Obj(kvs) => {
            for (k, v) in kvs {
                walk!(k, open);
                if let Some(v) = v {
                    walk!(v, open);
                }
            }
        }
        Term::Neg(a) | Term::Label(_, a) => walk!(a, open),
        Term::BinOp(l, _, r) => {
            walk!(l, open);
            walk!(r, open);
        }
        Term::Fold(_, xs, pat, args) => {
            walk!(xs, open);
            walk_pattern(pat, &mut |t| check_recursion(code, t, open, out));
            for a in args {
                walk!(a, open);
            }
        }
        Term::TryCatch(a, b) => {
            walk!(a, open);
            if let Some(b) = b {
                walk!(b, open);
            }
        }
        Term::IfThenElse(branches, els) => {
            for (c, b) in branches {
                walk!(c, open);
                walk!(b, open);
            }
            if let Some(e) = els {
                walk!(e, open);
            }
        }
        Term::Def(defs, rest) => {
            for d in defs {
                open.push(d.name);
                walk!(&d.body, open);
                open.pop();
            }
            walk!(rest, open);
        }
        Term::Call(name, args) => {
            if open.contains(name) {
                out.push(CompileIssue {
                    span: span_in(code, name),
                    message: format!(
                        "`{name}` calls itself: recursive definitions are not allowed in Sluice expressions (use recurse, while, until or reduce)"
                    ),
                    undefined_var: None,
                });
            }
            for a in args {
                walk!(a, open);
            }
        }
        Term::Path(head, path) => {
            walk!(head, open);
            for (part, _) in &path.0 {
                match part {
                    Part::Index(i) => walk!(i, open),
                    Part::Range(a, b) => {
                        if let Some(a) = a {
                            walk!(a, open);
                        }
                        if let Some(b) = b {
                            walk!(b, open);
                        }
                    }
                }
            }
        }
    }
}

fn walk_pattern<'s>(p: &Pattern<&'s str>, f: &mut dyn FnMut(&Term<&'s str>)) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => ps.iter().for_each(|p| walk_pattern(p, f)),
        Pattern::Obj(kvs) => {
            for (k, p) in kvs {
                f(k);
                walk_pattern(p, f);
            }
        }
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Program>();
    let _ = Native::<Guarded>::new;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapScope;
    use serde_json::json;

    fn eval(code: &str, input: Value) -> Result<Option<Value>, Error> {
        let scope = MapScope::from_json(json!({"trigger": {"t": 1}, "last": [1, 2], "k": "v"}));
        let p = Program::compile(code, &scope.names()).expect("compiles");
        p.eval_json(&input, &scope, &Limits::default())
    }

    #[test]
    fn maps_an_order() {
        let out = eval(
            "{orderId, sum: .totalPrice}",
            json!({"orderId": "A1", "totalPrice": 12.5, "x": 1}),
        );
        assert_eq!(out.unwrap(), Some(json!({"orderId": "A1", "sum": 12.5})));
    }

    #[test]
    fn variables_are_bound_by_name() {
        assert_eq!(
            eval("[$trigger.t, $last[1], $k]", json!(null)).unwrap(),
            Some(json!([1, 2, "v"]))
        );
    }

    #[test]
    fn a_program_keeps_only_the_variables_it_mentions() {
        let all = ["trigger", "last", "k"];
        let vars = |code: &str| {
            Program::compile(code, &all)
                .expect("compiles")
                .vars()
                .to_vec()
        };
        assert_eq!(vars(".a"), Vec::<String>::new());
        assert_eq!(vars("[$last, $k]"), ["last", "k"]);
        // In a string too, and through interpolation.
        assert_eq!(vars(r#""\($trigger.t)""#), ["trigger"]);
        // `$lastly` is another variable: undefined, still refused.
        let err = Program::compile("$lastly", &all).unwrap_err();
        assert!(err.issues[0].message.contains("$lastly"), "{err:?}");
    }

    #[test]
    fn std_library_works() {
        assert_eq!(
            eval("[range(3)]", json!(null)).unwrap(),
            Some(json!([0, 1, 2]))
        );
        assert_eq!(
            eval("[range(5; 0; -2)]", json!(null)).unwrap(),
            Some(json!([5, 3, 1]))
        );
        assert_eq!(
            eval("[limit(3; repeat(1))]", json!(null)).unwrap(),
            Some(json!([1, 1, 1]))
        );
        assert_eq!(
            eval("[.[] | select(. > 1)] | map(. * 2)", json!([1, 2, 3])).unwrap(),
            Some(json!([4, 6]))
        );
        assert_eq!(
            eval("[paths]", json!({"a": [1]})).unwrap(),
            Some(json!([["a"], ["a", 0]]))
        );
        assert_eq!(
            eval(
                "walk(if type == \"number\" then . + 1 else . end)",
                json!({"a": [1]})
            )
            .unwrap(),
            Some(json!({"a": [2]}))
        );
        assert_eq!(
            eval("[recurse(if . < 3 then . + 1 else empty end)]", json!(0)).unwrap(),
            Some(json!([0, 1, 2, 3]))
        );
        assert_eq!(
            eval("until(. > 100; . * 2)", json!(1)).unwrap(),
            Some(json!(128))
        );
        assert_eq!(
            eval("\"a-b\" | test(\"a.b\")", json!(null)).unwrap(),
            Some(json!(true))
        );
    }

    #[test]
    fn runtime_errors_name_the_expression() {
        let err = eval(".a + 1", json!({"a": "x"})).unwrap_err();
        assert!(
            matches!(err, Error::Runtime { ref code, .. } if code == ".a + 1"),
            "{err}"
        );
        let err = eval("error(\"boom\")", json!(null)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "jq expression `error(\"boom\")` failed: boom"
        );
    }

    #[test]
    fn runaway_loops_stop_at_the_deadline() {
        let scope = MapScope::default();
        let limits = Limits {
            timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        for code in [
            "last(range(1e12))",
            "[repeat(1)] | length",
            "until(false; .)",
            "last(recurse(. + 1))",
            "reduce range(1e12) as $x (0; . + $x)",
            "try last(range(1e12)) catch 0",
        ] {
            let p = Program::compile(code, &[]).unwrap();
            let err = p.first(Val::from(0isize), &scope, &limits).unwrap_err();
            assert!(
                matches!(err, Error::Timeout { .. } | Error::TooDeep { .. }),
                "{code}: {err}"
            );
        }
    }

    #[test]
    fn user_recursion_is_refused_at_compile_time() {
        for code in [
            "def f: 1 + f; f",
            "def f: def g: f; g; f",
            "def a(x): x | a(x); a(.)",
        ] {
            let err = Program::compile(code, &[]).unwrap_err();
            assert!(
                err.issues[0].message.contains("calls itself"),
                "{code}: {err}"
            );
        }
        assert!(Program::compile("def inc: . + 1; inc | inc", &[]).is_ok());
    }

    #[test]
    fn the_outside_world_is_not_reachable() {
        for code in [
            "env",
            "$ENV",
            "input",
            "inputs",
            "halt",
            "debug",
            "stderr",
            "include \"x\"; .",
            "import \"x\" as x; .",
        ] {
            assert!(Program::compile(code, &[]).is_err(), "{code} compiled");
        }
    }

    #[test]
    fn compile_errors_point_inside_the_expression() {
        let err = Program::compile(".a | $nope", &["trigger"]).unwrap_err();
        assert_eq!(err.issues[0].span, 5..10);
        assert_eq!(err.issues[0].undefined_var.as_deref(), Some("nope"));
        let err = Program::compile("{a: }", &[]).unwrap_err();
        assert!(!err.issues.is_empty());
        let err = Program::compile("nosuchfn(1)", &[]).unwrap_err();
        assert_eq!(err.issues[0].span, 0..8);
    }

    #[test]
    fn direct_evaluation_agrees_with_jaq() {
        let programs = [
            ".",
            ".a",
            ".a.b",
            ".[0]",
            ".[-1]",
            ".[5]",
            ".a[1].c",
            ".[\"a b\"]",
            "$k",
            "$trigger.t",
            "$last[0]",
            "$last[-3]",
            "{orderId, sum: .totalPrice}",
            "{a: .a.b, b: 1, c: null, d: true, e: \"s\\n\", $k}",
            "{}",
            "1",
            "\"x\"",
            "null",
            "false",
        ];
        let inputs = [
            json!(null),
            json!({"a": {"b": 1, "c": [1]}, "orderId": "x", "totalPrice": 2.5}),
            json!([1, 2, 3]),
            json!("str"),
            json!(3),
            json!({"a": [1, {"c": 2}]}),
            json!({"a b": 1}),
            json!({"a": "text"}),
            json!({"a": null}),
            json!({"a": {"b": 2.0}, "totalPrice": 3.0, "orderId": [1.5, 4.0]}),
            json!({"a": {"b": 18446744073709551615u64}}),
        ];
        let vars = json!({"trigger": {"t": 1.0}, "last": [1, 2.0], "k": "v"});
        let scope = MapScope::from_json(vars.clone());
        // The same variables, also at hand as JSON.
        let json_scope = JsonScope(vars);
        let limits = Limits::default();
        for code in programs {
            let p = Program::compile(code, &scope.names()).unwrap();
            assert!(p.is_direct(), "{code} should run directly");
            let slow = p.without_fast();
            for input in &inputs {
                let a = p.run(crate::to_val(input), &scope, &limits);
                let b = slow.run(crate::to_val(input), &scope, &limits);
                assert_eq!(a, b, "{code} on {input}");
                // On JSON, the direct evaluator gives what jaq gives, as JSON.
                let on_json = Input::json(input);
                let c = p.single_json(&on_json, &json_scope, &limits);
                let d = slow.single_json(&on_json, &scope, &limits);
                assert_eq!(c, d, "{code} on JSON {input}");
                // An input that is a jq value: programs that do not read
                // it still read their variables as JSON.
                let on_val = Input::val(crate::to_val(input));
                let e = p.single_json(&on_val, &json_scope, &limits);
                assert_eq!(e, d, "{code} on {input} as jq value");
            }
        }
        for code in [
            ".a?",
            ".[]",
            "{(.a): 1}",
            ".a + 1",
            "{a: .b?}",
            "1.5",
            "\"\\(.a)\"",
        ] {
            assert!(
                !Program::compile(code, &scope.names()).unwrap().is_direct(),
                "{code} should go to jaq"
            );
        }
    }

    /// A scope that holds its variables as JSON.
    struct JsonScope(Value);

    impl Scope for JsonScope {
        fn get(&self, name: &str) -> Option<Val> {
            self.0.get(name).map(crate::to_val)
        }
        fn get_json(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
    }

    #[test]
    fn what_a_program_reads() {
        let reads = |code: &str| Program::compile(code, &["k"]).unwrap().reads_input();
        assert!(reads(".a"));
        assert!(reads("."));
        assert!(reads("{x: $k, y: .a}"));
        assert!(reads("$k + 1"), "a program jaq runs may read anything");
        assert!(!reads("$k.a"));
        assert!(!reads("{x: $k, y: 1}"));
        assert!(!reads("\"s\""));
    }

    #[test]
    fn single_rejects_several_outputs() {
        let p = Program::compile(".[]", &[]).unwrap();
        assert!(matches!(
            p.single(
                crate::to_val(&json!([1, 2])),
                &MapScope::default(),
                &Limits::default()
            ),
            Err(Error::MultipleOutputs { .. })
        ));
        assert_eq!(
            p.single(
                crate::to_val(&json!([])),
                &MapScope::default(),
                &Limits::default()
            )
            .unwrap(),
            None
        );
    }
}
