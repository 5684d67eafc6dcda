//! A direct evaluator for the simplest and most common jq programs: paths
//! (`.a.b[0]`, `$trigger.body.id`), literals, and object constructions of
//! those (`{orderId, sum: .totalPrice}`). jaq runs every program through its
//! general machinery, boxing an iterator per term; these programs need none
//! of it. Whenever the direct evaluation meets anything but the plain case
//! (indexing something that is neither an object, an array nor null), it
//! gives up and jaq runs the program, so results and error messages are
//! jaq's own. Tests compare the two on many programs and inputs.

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::Term;
use jaq_core::path::{Opt, Part};
use jaq_json::Val;

/// A program the direct evaluator handles.
#[derive(Clone, Debug)]
pub(crate) enum Fast {
    /// A constant.
    Lit(Val),
    /// A path from the input (`None`) or from a variable (its index).
    Path(Option<usize>, Vec<Seg>),
    /// An object of constant keys.
    Obj(Vec<(Val, Fast)>),
}

/// One step of a path.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    Key(Val),
    Index(isize),
}

/// The direct form of `t`, if it has one; `vars` are the program's global
/// variables (without `$`).
pub(crate) fn compile(t: &Term<&str>, vars: &[String]) -> Option<Fast> {
    Some(match t {
        Term::Id => Fast::Path(None, Vec::new()),
        Term::Num(n) => Fast::Lit(int(n)?),
        Term::Str(None, parts) => Fast::Lit(Val::utf8_str(plain_str(parts)?.into_bytes())),
        Term::Call(name, args) if args.is_empty() => Fast::Lit(match *name {
            "null" => Val::Null,
            "true" => Val::Bool(true),
            "false" => Val::Bool(false),
            _ => return None,
        }),
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
                        Seg::Key(Val::utf8_str(plain_str(parts)?.into_bytes()))
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
                        let key = Val::utf8_str(name.clone().into_bytes());
                        (name, Fast::Path(None, vec![Seg::Key(key)]))
                    }
                    (Term::Var(v), None) => {
                        let name = v.strip_prefix('$')?.to_owned();
                        (name, Fast::Path(Some(var(v, vars)?), Vec::new()))
                    }
                    _ => return None,
                };
                out.push((Val::utf8_str(key.into_bytes()), value));
            }
            Fast::Obj(out)
        }
        _ => return None,
    })
}

fn int(n: &str) -> Option<Val> {
    n.parse::<isize>().ok().map(Val::from)
}

fn var(v: &str, vars: &[String]) -> Option<usize> {
    let name = v.strip_prefix('$')?;
    vars.iter().position(|x| x == name)
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
        match self {
            Fast::Lit(v) => Some(v.clone()),
            Fast::Path(base, segs) => {
                let mut cur: &Val = match base {
                    None => input,
                    Some(i) => vars.get(*i)?,
                };
                for seg in segs {
                    let next = match (cur, seg) {
                        (Val::Null, _) => None,
                        (Val::Obj(o), Seg::Key(k)) => o.get(k),
                        (Val::Arr(a), Seg::Index(i)) => {
                            let i = if *i < 0 { a.len() as isize + i } else { *i };
                            usize::try_from(i).ok().and_then(|i| a.get(i))
                        }
                        _ => return None,
                    };
                    match next {
                        Some(v) => cur = v,
                        None => return Some(Val::Null),
                    }
                }
                Some(cur.clone())
            }
            Fast::Obj(entries) => {
                let mut m =
                    jaq_json::Map::with_capacity_and_hasher(entries.len(), Default::default());
                for (k, f) in entries {
                    m.insert(k.clone(), f.eval(input, vars)?);
                }
                Some(Val::obj(m))
            }
        }
    }
}
