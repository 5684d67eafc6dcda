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
//!   `while`, `until`), `range`, and every step of every `reduce` and
//!   `foreach` (the program's and the library's) pass a checkpoint; the
//!   checkpoint fails the expression once its deadline has passed, once it
//!   holds more memory than its budget ([`Limits::memory`], counted by
//!   [`crate::meter`]), or once its recursion has used [`RECURSION_STACK`]
//!   of stack (or half of what there was);
//! * user-written recursive definitions are refused when the program is
//!   compiled (every loop a program can write therefore goes through a
//!   checkpoint);
//! * the operations that make much from little check the size of what they
//!   would make against what is left of the budget before making it: string
//!   repetition (`"x" * n`), `tojson` (and so `tostring` and string
//!   interpolation) of a value whose parts are shared, and every output
//!   copied out of jq; `fromjson` refuses text nested deeper than
//!   [`MAX_DEPTH`], and an output nested deeper is an error;
//! * every evaluation runs on a large stack of its own (see `stack`), so
//!   that freeing a deep value cannot overflow it;
//! * functions that reach outside the expression are not provided: `env`,
//!   `$ENV`, `input`, `inputs`, `halt`, `halt_error`, `debug`, `stderr`,
//!   `include` and `import`.

pub use crate::guard::MAX_DEPTH;
use crate::guard::{self, MUL, TEXT, TICK, TooBig};
pub use crate::stack::MIN_STACK;
use crate::val::Val;
use crate::value::{as_from_jq, from_val, mend_numbers};
use crate::{Error, Input, Scope, builtins, meter, stack};
use jaq_core::load::parse::{Def, Pattern, Term};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::path::Part;
use jaq_core::{Compiler, Ctx, DataT, Native, Vars, data::HasLut, native};
use jaq_json::Num;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default time an expression may run before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default memory one evaluation may hold beyond its input.
pub const DEFAULT_MEMORY: usize = 512 << 20;

/// The most stack a program's recursion may use.
pub const RECURSION_STACK: usize = 16 << 20;

/// An evaluation that passed this many checkpoints may have gone deep: the
/// stack pages it touched are handed back after it.
const HEAVY_TICKS: u32 = 1 << 16;

/// Limits applied to one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock time one evaluation may take.
    pub timeout: Duration,
    /// Most outputs one evaluation may produce.
    pub max_outputs: usize,
    /// Bytes of memory one evaluation may hold beyond its input (its
    /// outputs included, counted as they would be copied out of jq).
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_outputs: 100_000,
            memory: DEFAULT_MEMORY,
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
    /// The thread's live bytes when the evaluation started.
    memory_base: i64,
    memory: i64,
}

#[derive(Clone, Copy, Debug)]
enum Exceeded {
    Time,
    Stack,
    Memory,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        let remaining = stack::remaining();
        Self {
            timeout: limits.timeout,
            deadline: Cell::new(None),
            stack_floor: remaining - (remaining / 2).min(RECURSION_STACK),
            ticks: Cell::new(0),
            exceeded: Cell::new(None),
            memory_base: meter::live(),
            memory: i64::try_from(limits.memory).unwrap_or(i64::MAX),
        }
    }

    /// Bytes of the memory budget not yet used.
    fn memory_left(&self) -> u64 {
        let used = meter::live().saturating_sub(self.memory_base).max(0);
        u64::try_from(self.memory.saturating_sub(used)).unwrap_or(0)
    }

    /// Whether the deadline has passed (a built-in in the middle of its
    /// work asks; the next checkpoint then fails the evaluation).
    fn past_deadline(&self) -> bool {
        if self.exceeded.get().is_some() {
            return true;
        }
        let deadline = self.deadline.get().unwrap_or_else(|| {
            let d = Instant::now() + self.timeout;
            self.deadline.set(Some(d));
            d
        });
        let past = Instant::now() > deadline;
        if past {
            self.exceeded.set(Some(Exceeded::Time));
        }
        past
    }

    fn check(&self) -> Result<(), Exceeded> {
        if let Some(e) = self.exceeded.get() {
            return Err(e);
        }
        if stack::remaining() < self.stack_floor {
            self.exceeded.set(Some(Exceeded::Stack));
            return Err(Exceeded::Stack);
        }
        if meter::live().saturating_sub(self.memory_base) > self.memory {
            self.exceeded.set(Some(Exceeded::Memory));
            return Err(Exceeded::Memory);
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

/// `$l | __sluice_mul($r)`: `$l * $r`, refused when it would repeat a string
/// into more bytes than the budget has left.
fn mul() -> Fun {
    native::run((MUL, native::v(1), |mut cv| {
        let r = cv.0.pop_var();
        let l = cv.1;
        // How many times a string is repeated (jaq saturates big integers).
        let count = |n: &Val| match n {
            Val::Num(n @ Num::Int(_)) => n.as_isize().map(|i| i.max(0) as u64),
            Val::Num(n @ Num::BigInt(_)) => Some(if n.to_string().starts_with('-') {
                0
            } else {
                u64::MAX
            }),
            _ => None,
        };
        let repeat = match (&l, &r) {
            (Val::Str(s), n) | (n, Val::Str(s)) => {
                count(n).map(|c| (s.len() as u64).saturating_mul(c))
            }
            _ => None,
        };
        if let Some(bytes) = repeat {
            let left = cv.0.data().budget.memory_left();
            if bytes > left {
                let message = format!(
                    "repeating a string would make {bytes} bytes, more than the {left} left of the expression's memory budget"
                );
                return native::bome(Err(jaq_core::Error::str(message)));
            }
        }
        native::bome(l * r)
    }))
}

/// A value as JSON text, refused when the text would take more than the
/// budget has left (a value whose parts are shared can stand for far more
/// than it holds).
fn checked_json(v: &Val, budget: &Budget) -> Result<Val, jaq_core::Error<Val>> {
    let left = budget.memory_left();
    match guard::measure(v, usize::MAX, left) {
        Ok(_) => Ok(Val::from(v.to_string())),
        Err(_) => Err(jaq_core::Error::str(format!(
            "writing a value out as text would take more than the {left} bytes left of the expression's memory budget"
        ))),
    }
}

/// `tojson`, checked.
fn tojson() -> Fun {
    native::run(("tojson", native::v(0), |cv| {
        native::bome(checked_json(&cv.1, cv.0.data().budget))
    }))
}

/// A value interpolated into a string: a string as it is, anything else as
/// by `tojson`, checked.
fn text() -> Fun {
    native::run((TEXT, native::v(0), |cv| match cv.1 {
        s @ Val::Str(_) => native::bome(Ok(s)),
        v => native::bome(checked_json(&v, cv.0.data().budget)),
    }))
}

/// `fromjson`, refusing text that nests deeper than [`MAX_DEPTH`] before
/// parsing it (the parser recurses once per level).
fn fromjson() -> Fun {
    native::run(("fromjson", native::v(0), |cv| {
        let text = match &cv.1 {
            Val::Str(s) => s.clone(),
            other => {
                let e = jaq_core::Error::str(format!("cannot parse {other} as JSON: not a string"));
                return native::bome(Err(e));
            }
        };
        let depth = guard::json_depth(text.as_bytes());
        if depth > MAX_DEPTH {
            let e = jaq_core::Error::str(format!(
                "cannot parse a JSON text nested {depth} levels deep (at most {MAX_DEPTH})"
            ));
            return native::bome(Err(e));
        }
        // Every value up to the first error, and that error (the parser does
        // not move past an error: it would give it again and again).
        let mut vals = Vec::new();
        for r in crate::data::parse_many(text.as_bytes()) {
            match r {
                Ok(v) => vals.push(Ok(v)),
                Err(e) => {
                    let message = format!("cannot parse {} as JSON: {e}", cv.1);
                    vals.push(Err(jaq_core::Exn::from(jaq_core::Error::str(message))));
                    break;
                }
            }
        }
        Box::new(vals.into_iter())
    }))
}

/// The elements of an array (taken over when not shared).
fn elements(v: Val) -> Result<Vec<Val>, jaq_core::Error<Val>> {
    match v {
        Val::Arr(a) => Ok(Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())),
        other => Err(jaq_core::Error::typ(other, "array")),
    }
}

/// `NAME(f)` of an array ordered by the outputs of `f` for each element
/// (up to an error): `then` of the elements and their keys, told to stop
/// at the deadline.
fn by_keys<'a>(
    mut cv: jaq_core::Cv<'a, Guarded>,
    then: builtins::ByKeys,
) -> jaq_core::ValXs<'a, Val> {
    let budget = cv.0.data().budget;
    let (f, fc) = cv.0.pop_fun();
    let r = (|| {
        let xs = elements(cv.1)?;
        let keys = xs
            .iter()
            .map(|x| f.run((fc.clone(), x.clone())).collect())
            .collect::<Result<_, _>>()?;
        Ok(then(xs, keys, &|| budget.past_deadline()))
    })();
    jaq_core::box_iter::box_once(r)
}

/// Sorts and searches that stop at the deadline (see [`crate::builtins`]).
fn sorts() -> [Fun; 4] {
    let one_filter = || [jaq_core::Bind::Fun(())].into();
    [
        native::run(("sort", native::v(0), |cv| {
            let budget = cv.0.data().budget;
            native::bome(elements(cv.1).map(|mut a| {
                builtins::sort(&mut a, &|| budget.past_deadline());
                Val::Arr(a.into())
            }))
        })),
        native::run(("sort_by", one_filter(), |cv| by_keys(cv, builtins::sort_by))),
        native::run(("group_by", one_filter(), |cv| {
            by_keys(cv, builtins::group_by)
        })),
        native::run(("indices", native::v(1), |cv| {
            native::unary(cv, |x, y| match builtins::indices(&x, &y) {
                Some(at) => Ok(at.into_iter().map(|i| Val::from(i as isize)).collect()),
                None => Err(jaq_core::Error::index(x, y)),
            })
        })),
    ]
}

/// The natives of JSON values that jaq's core and standard library leave
/// to the value type.
fn json_funs() -> [Fun; 4] {
    [
        native::run(("length", native::v(0), |cv| native::bome(cv.1.length()))),
        native::run(("contains", native::v(1), |cv| {
            native::unary(cv, |x, y| Ok(Val::Bool(x.contains(&y))))
        })),
        native::run(("has", native::v(1), |cv| {
            native::unary(cv, |x, k| x.has(&k))
        })),
        native::run(("bsearch", native::v(1), |cv| {
            native::unary(cv, |a, x| a.bsearch(&x))
        })),
    ]
}

/// Natives that reach outside the expression, that the guarded `range`
/// replaces, or that are replaced by checked ones.
const REMOVED_FUNS: &[&str] = &[
    "sort",
    "sort_by",
    "group_by",
    "indices",
    "tojson",
    "fromjson",
    "env",
    "halt",
    "input",
    "inputs",
    "input_filename",
    "stderr_empty",
    "debug_empty",
    "range",
];
fn funs() -> impl Iterator<Item = Fun> {
    jaq_core::funs::<Guarded>()
        .chain(jaq_std::funs())
        .filter(|(name, _, _)| !REMOVED_FUNS.contains(name))
        .chain(json_funs())
        .chain([checkpoint(), mul(), tojson(), text(), fromjson()])
        .chain(sorts())
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

impl Compiled {
    /// The values of its variables in `scope` (null when not there), in order.
    fn var_values<'a>(&'a self, scope: &'a dyn Scope) -> impl Iterator<Item = Val> + 'a {
        self.vars.iter().map(|n| scope.get(n).unwrap_or(Val::Null))
    }
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
        let vars: Vec<String> = vars
            .iter()
            .filter(|v| mentions(code, v))
            .map(|v| (*v).to_owned())
            .collect();
        if let Some(inner) = compiled::get(code, &vars) {
            return Ok(Self { inner });
        }
        let inner = Arc::new(Self::compile_new(code, vars)?);
        compiled::put(&inner);
        Ok(Self { inner })
    }

    /// [`Program::compile`] of a program not compiled before (`vars`: those
    /// its text mentions).
    fn compile_new(code: &str, vars: Vec<String>) -> Result<Compiled, CompileError> {
        let fail = |issues: Vec<CompileIssue>| CompileError {
            code: code.to_owned(),
            issues,
        };
        let mut fast = None;
        // The program is compiled as a guarded definition in the prelude,
        // called by a main module of one word; a program that does not parse
        // is handed to jaq as it is, for its errors.
        let mut main = None;
        if let Some(term) = load::parse(code, |p| p.term()) {
            // Refuse user recursion before handing the program to jaq.
            let mut issues = Vec::new();
            // The program is the body of a definition of its own: naming
            // that definition would make it call itself.
            check_recursion(code, &term, &mut vec![guard::MAIN], &mut issues);
            if !issues.is_empty() {
                return Err(fail(issues));
            }
            fast = crate::fast::compile(&term, &vars);
            main = Some(guard::guard_program(term));
        }
        let names: Vec<String> = vars.iter().map(|v| format!("${v}")).collect();
        // Only the definitions of the standard library the program reaches
        // are compiled with it (compiling all of them is most of the time a
        // program takes to compile); should that miss one, all of them.
        let shaken = main.as_ref().and_then(|m| {
            let defs = prelude::reached(m);
            // Only the natives the program and those definitions call
            // are handed to the compiler: each one handed costs
            // boxes, and a program calls a few of hundreds.
            let called = called_by(m, &defs);
            compile_with(code, Some(defs), main.clone(), &names, Some(&called)).ok()
        });
        let filter = match shaken {
            Some(f) => f,
            None => compile_with(code, None, main, &names, None).map_err(fail)?,
        };
        Ok(Compiled {
            code: code.to_owned(),
            vars,
            filter,
            identity: code.trim() == ".",
            fast,
        })
    }
}

/// Every name `main` and `defs` call.
fn called_by<'s>(main: &Def<&'s str>, defs: &[Def<&'static str>]) -> BTreeSet<&'s str> {
    let mut called = BTreeSet::new();
    prelude::calls(&main.body, &mut called);
    for d in defs {
        prelude::calls(&d.body, &mut called);
    }
    called
}

/// Compile `main` (or, when it did not parse, `code` itself) after
/// `prelude` (default: the whole standard library), with the natives
/// `called` (default: all of them; one called and not given fails the
/// compilation, as no definition has a native's name and arity).
fn compile_with<'s>(
    code: &'s str,
    prelude: Option<Vec<Def<&'static str>>>,
    main: Option<Def<&'s str>>,
    names: &[String],
    called: Option<&BTreeSet<&str>>,
) -> Result<jaq_core::Filter<Guarded>, Vec<CompileIssue>> {
    let arena = Arena::default();
    let text = if main.is_some() { guard::MAIN } else { code };
    let prelude = prelude.unwrap_or_else(prelude::whole);
    let loader = Loader::new(prelude.into_iter().chain(main));
    let modules = loader
        .load(
            &arena,
            File {
                code: text,
                path: (),
            },
        )
        .map_err(|errs| load_issues(code, errs))?;
    {
        {
            Compiler::default()
                .with_funs(funs().filter(|(name, _, _)| called.is_none_or(|c| c.contains(name))))
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
                                undefined_var: is_var
                                    .then(|| name.trim_start_matches('$').to_owned()),
                            });
                        }
                    }
                    issues
                })
        }
    }
}

impl Program {
    /// The same program without its direct form (tests compare the two).
    #[cfg(test)]
    fn without_fast(&self) -> Self {
        let c = &*self.inner;
        Self::compile_new(&c.code, c.vars.clone())
            .map(|mut inner| {
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

    /// Whether both are one compiled program.
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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

    /// The fields of the global `$var` the program reads by a constant
    /// name (`$var.NAME`, `$var["NAME"]`), with their places in its text.
    pub fn fields_read(&self, var: &str) -> Vec<(String, Range<usize>)> {
        if self.inner.vars.iter().any(|v| v == var) {
            fields_read(&self.inner.code, var)
        } else {
            Vec::new()
        }
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
        input: &'s Input<'_>,
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
            // The same on jq values, read where they are (neither the
            // input cloned nor jq's machinery started).
            let vars: Vec<Val> = c.var_values(scope).collect();
            if let Some(v) = fast.eval_ref(input.as_val(), &vars) {
                return from_val(&v)
                    .map(|v| Some(Cow::Owned(v)))
                    .map_err(|e| self.runtime(e));
            }
        }
        self.single(input.as_val().clone(), scope, limits)?
            .map(|v| from_val(&v).map(Cow::Owned).map_err(|e| self.runtime(e)))
            .transpose()
    }

    /// The single output as jq gives it back ([`crate::data::normalize`]):
    /// no output is `None`, more than one is an error. What the output
    /// shares with the input and the variables stays shared.
    pub fn single_val(
        &self,
        input: &Input<'_>,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Val>, Error> {
        self.single(input.as_val().clone(), scope, limits)?
            .map(|v| crate::data::normalize(v).map_err(|e| self.runtime(e)))
            .transpose()
    }

    /// [`Program::single_val`] on `input`.
    pub fn eval_val(
        &self,
        input: &Val,
        scope: &dyn Scope,
        limits: &Limits,
    ) -> Result<Option<Val>, Error> {
        self.single_val(&Input::val(input.clone()), scope, limits)
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
        mut each: impl FnMut(Val) -> bool,
    ) -> Result<(), Error> {
        // A direct program needs neither jq's machinery nor its stack: it
        // nests no deeper than its text, which was parsed on this stack.
        let c = &*self.inner;
        if let Some(fast) = &c.fast {
            let values: Vec<Val> = c.var_values(scope).collect();
            if let Some(v) = fast.eval(&input, &values) {
                each(v);
                return Ok(());
            }
        }
        let (result, heavy) = stack::run(|| self.run_guarded(input, scope, limits, each));
        if heavy {
            stack::release();
        }
        result
    }

    /// The evaluation, and whether it passed so many checkpoints that it may
    /// have gone deep.
    fn run_guarded(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
        each: impl FnMut(Val) -> bool,
    ) -> (Result<(), Error>, bool) {
        let budget = Budget::new(limits);
        let result = self.evaluate(input, scope, limits, &budget, each);
        (result, budget.ticks.get() >= HEAVY_TICKS)
    }

    fn evaluate(
        &self,
        input: Val,
        scope: &dyn Scope,
        limits: &Limits,
        budget: &Budget,
        mut each: impl FnMut(Val) -> bool,
    ) -> Result<(), Error> {
        let c = &*self.inner;
        let vars = Vars::new(c.var_values(scope));
        let data = GuardedData {
            lut: &c.filter.lut,
            budget,
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
            Exceeded::Memory => Error::TooMuchMemory {
                code: c.code.clone(),
                limit: limits.memory,
                detail: String::new(),
            },
        };
        for item in c.filter.id.run((ctx, input)) {
            if let Some(e) = budget.exceeded.get() {
                return Err(limit_error(e));
            }
            match item {
                Ok(v) => {
                    // Copied out of jq, the output must fit what is left of
                    // the budget, and nest no deeper than a JSON body.
                    match guard::measure(&v, MAX_DEPTH, budget.memory_left()) {
                        Ok(_) => {}
                        Err(TooBig::Deep) => {
                            return Err(Error::TooDeepValue {
                                code: c.code.clone(),
                                max: MAX_DEPTH,
                            });
                        }
                        Err(TooBig::Large) => {
                            return Err(Error::TooMuchMemory {
                                code: c.code.clone(),
                                limit: limits.memory,
                                detail: "for its output".to_owned(),
                            });
                        }
                    }
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
        Val::Str(ref s) => s.to_string(),
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
    walk(t, open, &mut |t, open| {
        if let Term::Call(name, _) = t
            && open.contains(name)
        {
            let message = if *name == guard::MAIN {
                format!(
                    "`{name}` is the name Sluice gives the expression itself, which cannot call itself"
                )
            } else {
                format!(
                    "`{name}` calls itself: recursive definitions are not allowed in Sluice expressions (use recurse, while, until or reduce)"
                )
            };
            out.push(CompileIssue {
                span: span_in(code, name),
                message,
                undefined_var: None,
            });
        }
    });
}

/// Visit every term of `t`, parents first, with the names of the
/// definitions it is inside.
fn walk<'s>(
    t: &Term<&'s str>,
    open: &mut Vec<&'s str>,
    f: &mut dyn FnMut(&Term<&'s str>, &[&'s str]),
) {
    f(t, open);
    let mut go = |t: &Term<&'s str>, open: &mut Vec<&'s str>| walk(t, open, f);
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_) => {}
        Term::Str(_, parts) => {
            for p in parts {
                if let load::lex::StrPart::Term(t) = p {
                    go(t, open);
                }
            }
        }
        Term::Arr(a) => {
            if let Some(a) = a {
                go(a, open);
            }
        }
        Term::Obj(kvs) => {
            for (k, v) in kvs {
                go(k, open);
                if let Some(v) = v {
                    go(v, open);
                }
            }
        }
        Term::Neg(a) | Term::Label(_, a) => go(a, open),
        Term::BinOp(l, _, r) => {
            go(l, open);
            go(r, open);
        }
        Term::Fold(_, xs, pat, args) => {
            go(xs, open);
            let mut keys = Vec::new();
            walk_pattern(pat, &mut |k| keys.push(k.clone()));
            for k in &keys {
                go(k, open);
            }
            for a in args {
                go(a, open);
            }
        }
        Term::TryCatch(a, b) => {
            go(a, open);
            if let Some(b) = b {
                go(b, open);
            }
        }
        Term::IfThenElse(branches, els) => {
            for (c, b) in branches {
                go(c, open);
                go(b, open);
            }
            if let Some(e) = els {
                go(e, open);
            }
        }
        Term::Def(defs, rest) => {
            for d in defs {
                open.push(d.name);
                go(&d.body, open);
                open.pop();
            }
            go(rest, open);
        }
        Term::Call(_, args) => {
            for a in args {
                go(a, open);
            }
        }
        Term::Path(head, path) => {
            go(head, open);
            for (part, _) in &path.0 {
                match part {
                    Part::Index(i) => go(i, open),
                    Part::Range(a, b) => {
                        if let Some(a) = a {
                            go(a, open);
                        }
                        if let Some(b) = b {
                            go(b, open);
                        }
                    }
                }
            }
        }
    }
}

/// The fields of `$var` that `code` reads by a constant name (`$var.NAME`,
/// `$var["NAME"]`), each with its place in `code`.
pub fn fields_read(code: &str, var: &str) -> Vec<(String, Range<usize>)> {
    let mut out = Vec::new();
    let name = format!("${var}");
    if let Some(term) = load::parse(code, |p| p.term()) {
        walk(&term, &mut Vec::new(), &mut |t, _| {
            if let Term::Path(head, path) = t
                && matches!(&**head, Term::Var(v) if *v == name)
                && let Some((Part::Index(Term::Str(None, parts)), _)) = path.0.first()
                && let [load::lex::StrPart::Str(field)] = parts.as_slice()
            {
                out.push(((*field).to_owned(), span_in(code, field)));
            }
        });
    }
    out
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

mod compiled;
mod prelude;

#[cfg(test)]
mod tests;
