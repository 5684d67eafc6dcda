//! A direct evaluator for the simplest and most common jq programs: paths
//! (`.a.b[0]`, `$trigger.body.id`), literals, and object constructions of
//! those (`{orderId, sum: .totalPrice}`). jaq runs every program through its
//! general machinery, boxing an iterator per term; these programs need none
//! of it. Whenever the direct evaluation meets anything but the plain case
//! (indexing something that is neither an object, an array nor null), it
//! gives up and jaq runs the program, so results and error messages are
//! jaq's own. Tests compare the two on many programs and inputs.
//!
//! The same programs also run on JSON ([`Fast::eval_json`]), so that a
//! template such as `{{ .name }}` reads the step's input without its being
//! made a jq value at all.

use crate::val::{Obj, Val};
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::Term;
use jaq_core::path::{Opt, Part};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// A program the direct evaluator handles.
#[derive(Clone, Debug)]
pub(crate) enum Fast {
    /// A constant, as jq value and as JSON.
    Lit(Val, Value),
    /// A path from the input (`None`) or from a variable (its index).
    Path(Option<usize>, Vec<Seg>),
    /// An object of constant keys (each as jq value and as text).
    Obj(Vec<(Arc<str>, String, Fast)>),
}

/// One step of a path.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    Key(Arc<str>, String),
    Index(isize),
}

/// The direct form of `t`, if it has one; `vars` are the program's global
/// variables (without `$`).
pub(crate) fn compile(t: &Term<&str>, vars: &[String]) -> Option<Fast> {
    Some(match t {
        Term::Id => Fast::Path(None, Vec::new()),
        Term::Num(n) => {
            let i = n.parse::<isize>().ok()?;
            Fast::Lit(Val::from(i), Value::from(i as i64))
        }
        Term::Str(None, parts) => {
            let s = plain_str(parts)?;
            Fast::Lit(Val::from(s.as_str()), Value::String(s))
        }
        Term::Call(name, args) if args.is_empty() => match *name {
            "null" => Fast::Lit(Val::Null, Value::Null),
            "true" => Fast::Lit(Val::Bool(true), Value::Bool(true)),
            "false" => Fast::Lit(Val::Bool(false), Value::Bool(false)),
            _ => return None,
        },
        Term::Var(v) => Fast::Path(Some(var(v, vars)?), Vec::new()),
        Term::Path(head, path) => {
            let base = match &**head {
                Term::Id => None,
                Term::Var(v) => Some(var(v, vars)?),
                _ => return None,
            };
            let mut segs = Vec::with_capacity(path.0.len());
            for (part, opt) in &path.0 {
                if !matches!(opt, Opt::Essential) {
                    return None;
                }
                segs.push(match part {
                    Part::Index(Term::Str(None, parts)) => {
                        let key = plain_str(parts)?;
                        Seg::Key(key.as_str().into(), key)
                    }
                    Part::Index(Term::Num(n)) => Seg::Index(n.parse().ok()?),
                    Part::Index(Term::Neg(t)) => match &**t {
                        Term::Num(n) => Seg::Index(-n.parse::<isize>().ok()?),
                        _ => return None,
                    },
                    _ => return None,
                });
            }
            Fast::Path(base, segs)
        }
        Term::Obj(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let (key, value) = match (k, v) {
                    (Term::Str(None, parts), Some(v)) => (plain_str(parts)?, compile(v, vars)?),
                    (Term::Str(None, parts), None) => {
                        let name = plain_str(parts)?;
                        let key = Arc::from(name.as_str());
                        (name.clone(), Fast::Path(None, vec![Seg::Key(key, name)]))
                    }
                    (Term::Var(v), None) => {
                        let name = v.strip_prefix('$')?.to_owned();
                        (name, Fast::Path(Some(var(v, vars)?), Vec::new()))
                    }
                    _ => return None,
                };
                out.push((Arc::from(key.as_str()), key, value));
            }
            Fast::Obj(out)
        }
        _ => return None,
    })
}

fn var(v: &str, vars: &[String]) -> Option<usize> {
    let name = v.strip_prefix('$')?;
    vars.iter().position(|x| x == name)
}

/// Where index `i` (from the end when negative, as in jq) falls in an
/// array of `len` elements, if it does.
fn at(len: usize, i: isize) -> Option<usize> {
    usize::try_from(if i < 0 { len as isize + i } else { i }).ok()
}

fn plain_str(parts: &[StrPart<&str, Term<&str>>]) -> Option<String> {
    let mut s = String::new();
    for p in parts {
        match p {
            StrPart::Str(t) => s.push_str(t),
            StrPart::Char(c) => s.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(s)
}

impl Fast {
    /// Evaluate; `None` means "let jaq do it".
    pub(crate) fn eval(&self, input: &Val, vars: &[Val]) -> Option<Val> {
        self.eval_ref(input, vars).map(Cow::into_owned)
    }

    /// [`Fast::eval`], a path's value borrowed from where it is.
    pub(crate) fn eval_ref<'v>(&'v self, input: &'v Val, vars: &'v [Val]) -> Option<Cow<'v, Val>> {
        match self {
            Fast::Lit(v, _) => Some(Cow::Borrowed(v)),
            Fast::Path(base, segs) => {
                let mut cur: &Val = match base {
                    None => input,
                    Some(i) => vars.get(*i)?,
                };
                for seg in segs {
                    let next = match (cur, seg) {
                        (Val::Null, _) => None,
                        (Val::Obj(o), Seg::Key(k, _)) => o.get(k),
                        (Val::Arr(a), Seg::Index(i)) => at(a.len(), *i).and_then(|i| a.get(i)),
                        _ => return None,
                    };
                    match next {
                        Some(v) => cur = v,
                        None => return Some(Cow::Owned(Val::Null)),
                    }
                }
                Some(Cow::Borrowed(cur))
            }
            Fast::Obj(entries) => {
                let mut m = Obj::with_capacity(entries.len());
                for (k, _, f) in entries {
                    m.insert(k.clone(), f.eval_ref(input, vars)?.into_owned());
                }
                Some(Cow::Owned(Val::obj(m)))
            }
        }
    }

    /// Evaluate on JSON, with `var` giving the variables (by index) that
    /// are at hand as JSON; `None` means "evaluate on jq values" (the input
    /// or a variable is not at hand, or the plain case is not met). The
    /// result is as JSON holds it: see [`crate::value::as_from_jq`] for
    /// what jq would make of it.
    pub(crate) fn eval_json<'v>(
        &'v self,
        input: Option<&'v Value>,
        var: &dyn Fn(usize) -> Option<&'v Value>,
    ) -> Option<Cow<'v, Value>> {
        match self {
            Fast::Lit(_, v) => Some(Cow::Borrowed(v)),
            Fast::Path(base, segs) => {
                let mut cur: &Value = match base {
                    None => input?,
                    Some(i) => var(*i)?,
                };
                for seg in segs {
                    let next = match (cur, seg) {
                        (Value::Null, _) => None,
                        (Value::Object(o), Seg::Key(_, k)) => o.get(k.as_str()),
                        (Value::Array(a), Seg::Index(i)) => at(a.len(), *i).and_then(|i| a.get(i)),
                        _ => return None,
                    };
                    match next {
                        Some(v) => cur = v,
                        None => return Some(Cow::Owned(Value::Null)),
                    }
                }
                Some(Cow::Borrowed(cur))
            }
            Fast::Obj(entries) => {
                let mut m = serde_json::Map::with_capacity(entries.len());
                for (_, k, f) in entries {
                    m.insert(k.clone(), f.eval_json(input, var)?.into_owned());
                }
                Some(Cow::Owned(Value::Object(m)))
            }
        }
    }

    /// Whether the program reads its input (`.`), not only variables and constants.
    pub(crate) fn reads_input(&self) -> bool {
        match self {
            Fast::Lit(..) => false,
            Fast::Path(base, _) => base.is_none(),
            Fast::Obj(entries) => entries.iter().any(|(_, _, f)| f.reads_input()),
        }
    }
}
