//! The standard library a program is compiled with: jaq's definitions
//! (less those that reach outside the expression), guarded so that their
//! loops pass the checkpoint, parsed once per process and only when a
//! program calls something that is not a native filter; a program is
//! compiled with only the definitions it reaches.

use super::{check_recursion, funs, walk};
use crate::guard;
use jaq_core::load;
use jaq_core::load::parse::{Def, Term};
use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

const REMOVED_DEFS: &[&str] = &["stderr", "debug", "halt", "halt_error", "input", "inputs"];

/// Definitions over the natives of [`crate::Val`], as jq defines them
/// (after the rest of the library, which they call).
const JSON_DEFS: &str = r#"
def tonumber: if isnumber then . else fromjson | if isnumber then . else error("cannot parse as number") end end;
def toboolean: if isboolean then . else fromjson | if isboolean then . else error("cannot parse as boolean") end end;
def transpose: [range([.[] | length] | max) as $i | [.[][$i]]];
def in(xs): . as $x | xs | has($x);
def inside(xs): . as $x | xs | contains($x);
def index($i): indices($i)[0];
def rindex($i): indices($i)[-1];
def @json: tojson;
"#;

/// `range/3` as a definition over `while`, so that it passes the checkpoint.
const GUARDED_DEFS: &str = r#"
def range($from; $upto; $by):
  if $by > 0 then $from | while(. < $upto; . + $by)
  elif $by < 0 then $from | while(. > $upto; . + $by)
  else $from | while(. != $upto; . + $by) end;
"#;

pub(super) struct Std {
    pub(super) defs: Vec<Def<&'static str>>,
}

impl Std {
    /// The definitions `main` reaches, directly or through others, in
    /// their order.
    pub(super) fn reached(&self, main: &Def<&str>) -> Vec<Def<&'static str>> {
        let mut wanted = BTreeSet::new();
        calls(&main.body, &mut wanted);
        // Later definitions may call earlier ones only: one pass from the
        // end takes in every definition a wanted one calls.
        let mut keep = vec![false; self.defs.len()];
        for (i, d) in self.defs.iter().enumerate().rev() {
            if wanted.contains(d.name) {
                keep[i] = true;
                calls(&d.body, &mut wanted);
            }
        }
        self.defs
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(d, _)| d.clone())
            .collect()
    }
}

/// Every name `t` may call: filters, string formats, `..` (`recurse`).
pub(super) fn calls<'s>(t: &Term<&'s str>, out: &mut BTreeSet<&'s str>) {
    walk(t, &mut Vec::new(), &mut |t, _| match t {
        Term::Call(name, _) => {
            out.insert(name);
        }
        Term::Str(Some(format), _) => {
            out.insert(format);
        }
        Term::Recurse => {
            out.insert("recurse");
        }
        _ => {}
    });
}

/// Every definition of the library, in their order.
pub(super) fn whole() -> Vec<Def<&'static str>> {
    std_lib().defs.clone()
}

/// The definitions `main` reaches, in their order: none, without the
/// library being parsed, when it calls nothing but native filters (no
/// definition of the library has a native's name and arity; a test says
/// so).
pub(super) fn reached(main: &Def<&str>) -> Vec<Def<&'static str>> {
    if natives_only(main) {
        return Vec::new();
    }
    std_lib().reached(main)
}

/// The natives by name and arity.
pub(super) fn natives() -> &'static HashSet<(&'static str, usize)> {
    static NATIVES: OnceLock<HashSet<(&'static str, usize)>> = OnceLock::new();
    NATIVES.get_or_init(|| funs().map(|(name, args, _)| (name, args.len())).collect())
}

/// Whether every call of `main` is a native's (no format, no `..`).
fn natives_only(main: &Def<&str>) -> bool {
    let natives = natives();
    let mut only = true;
    walk(&main.body, &mut Vec::new(), &mut |t, _| match t {
        Term::Call(name, args) => only &= natives.contains(&(*name, args.len())),
        Term::Str(Some(_), _) | Term::Recurse => only = false,
        _ => {}
    });
    only
}

pub(super) fn std_lib() -> &'static Std {
    static STD: OnceLock<Std> = OnceLock::new();
    STD.get_or_init(|| {
        let guarded: Vec<Def<&'static str>> =
            load::parse(GUARDED_DEFS, |p| p.defs()).unwrap_or_default();
        let core = jaq_core::defs()
            .chain(jaq_std::defs())
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
        defs.extend(load::parse(JSON_DEFS, |p| p.defs()).unwrap_or_default());
        let defs = defs.into_iter().map(guard_def).collect();
        Std { defs }
    })
}

/// Guard a definition of the standard library: definitions that call
/// themselves, and the local helpers (`def rec: ...`) that the looping
/// definitions are built on, pass the checkpoint on every call; folds and
/// multiplications are guarded as in programs.
fn guard_def(mut d: Def<&'static str>) -> Def<&'static str> {
    let mut calls_itself = Vec::new();
    check_recursion("", &d.body, &mut vec![d.name], &mut calls_itself);
    let body = guard::guard_term(std::mem::take(&mut d.body));
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
    if tick { guard::ticked(body) } else { body }
}
