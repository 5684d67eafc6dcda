//! What keeps one evaluation inside its budget, short of the evaluator:
//! the rewriting of a program before it is compiled, and the measure of a
//! value before it is copied or written out.
//!
//! * [`guard_program`] makes every `reduce` and `foreach` step pass the
//!   checkpoint (so that the deadline and the memory budget hold inside a
//!   fold, not only in the library's loops), and turns `l * r` and `l *= r`
//!   into a call that checks a string repetition's size before making it:
//!   `"x" * 1e12` is an error, not a request for a terabyte; a value
//!   interpolated into a string is written out through a checked `tojson`.
//! * [`measure`] walks a value as the tree it stands for (jq values share
//!   their parts, so `[., .]` applied forty times is small in memory and a
//!   trillion leaves when written out) and stops as soon as it is deeper or
//!   larger than allowed.
//! * [`json_depth`] finds how deeply a JSON text nests, without parsing it.

use crate::val::Val;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Def, Pattern, Term};
use jaq_core::ops::Math;
use jaq_core::path::Part;

/// Name of the checkpoint filter: `true`, or an error once the evaluation is
/// over its deadline, its memory budget or its stack.
pub const TICK: &str = "__sluice_checkpoint";
/// Name of the checked multiplication: `$l | __sluice_mul($r)` is `$l * $r`.
pub const MUL: &str = "__sluice_mul";
/// Name of the checked conversion to text of string interpolation: strings
/// unchanged, anything else as by `tojson`.
pub const TEXT: &str = "__sluice_text";
/// Name under which a rewritten program is compiled.
pub const MAIN: &str = "__sluice_main";

const LEFT: &str = "$__sluice_l";
const RIGHT: &str = "$__sluice_r";

/// Deepest nesting of arrays and objects a value may have: what a JSON body
/// may have, so that every value Sluice makes can be read back.
pub const MAX_DEPTH: usize = 127;

/// `if __sluice_checkpoint then t else . end`.
pub fn ticked(t: Term<&str>) -> Term<&str> {
    Term::IfThenElse(vec![(Term::Call(TICK, Vec::new()), t)], None)
}

/// The program as a definition named [`MAIN`], rewritten as the module
/// overview says.
pub fn guard_program(term: Term<&str>) -> Def<&str> {
    Def {
        name: MAIN,
        args: Vec::new(),
        body: guard_term(term),
    }
}

/// A term with its folds ticked and its multiplications checked.
pub fn guard_term<'s>(t: Term<&'s str>) -> Term<&'s str> {
    let guard = |t: Term<&'s str>| guard_term(t);
    let b = |t: Box<Term<&'s str>>| Box::new(guard(*t));
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_) => t,
        Term::Str(fmt, parts) => {
            // Without a format, an interpolated value is written out as by
            // `tojson`: through the checked conversion.
            let plain = fmt.is_none();
            let text = |t| {
                let call = Box::new(Term::Call(TEXT, Vec::new()));
                Term::BinOp(Box::new(t), BinaryOp::Pipe(None), call)
            };
            let parts = parts.into_iter().map(|p| match p {
                StrPart::Term(t) if plain => StrPart::Term(text(guard(t))),
                StrPart::Term(t) => StrPart::Term(guard(t)),
                other => other,
            });
            Term::Str(fmt, parts.collect())
        }
        Term::Arr(a) => Term::Arr(a.map(b)),
        Term::Obj(kvs) => Term::Obj(
            kvs.into_iter()
                .map(|(k, v)| (guard(k), v.map(guard)))
                .collect(),
        ),
        Term::Neg(a) => Term::Neg(b(a)),
        Term::Label(l, a) => Term::Label(l, b(a)),
        Term::BinOp(l, BinaryOp::Math(Math::Mul), r) => {
            // `l * r`: l as $l | r as $r | $l | __sluice_mul($r), which keeps
            // the order of outputs of `l * r` (each of l, then each of r).
            let call = Term::BinOp(
                Box::new(Term::Var(LEFT)),
                BinaryOp::Pipe(None),
                Box::new(Term::Call(MUL, vec![Term::Var(RIGHT)])),
            );
            let inner = Term::BinOp(
                b(r),
                BinaryOp::Pipe(Some(Pattern::Var(RIGHT))),
                Box::new(call),
            );
            Term::BinOp(
                b(l),
                BinaryOp::Pipe(Some(Pattern::Var(LEFT))),
                Box::new(inner),
            )
        }
        Term::BinOp(l, BinaryOp::UpdateMath(Math::Mul), r) => {
            // `l *= r` is `r as $r | l |= . * $r`.
            let update = Term::BinOp(
                b(l),
                BinaryOp::Update,
                Box::new(Term::Call(MUL, vec![Term::Var(RIGHT)])),
            );
            Term::BinOp(
                b(r),
                BinaryOp::Pipe(Some(Pattern::Var(RIGHT))),
                Box::new(update),
            )
        }
        Term::BinOp(l, op, r) => Term::BinOp(b(l), guard_op(op), b(r)),
        Term::Fold(kind, xs, pat, args) => {
            // The update (the second argument) passes the checkpoint.
            let args = args
                .into_iter()
                .enumerate()
                .map(|(i, a)| if i == 1 { ticked(guard(a)) } else { guard(a) })
                .collect();
            Term::Fold(kind, b(xs), guard_pattern(pat), args)
        }
        Term::TryCatch(a, c) => Term::TryCatch(b(a), c.map(b)),
        Term::IfThenElse(branches, els) => Term::IfThenElse(
            branches
                .into_iter()
                .map(|(c, t)| (guard(c), guard(t)))
                .collect(),
            els.map(b),
        ),
        Term::Def(defs, rest) => Term::Def(
            defs.into_iter()
                .map(|d| Def {
                    name: d.name,
                    args: d.args,
                    body: guard(d.body),
                })
                .collect(),
            b(rest),
        ),
        Term::Call(name, args) => Term::Call(name, args.into_iter().map(guard).collect()),
        Term::Path(head, mut path) => {
            for (part, _) in &mut path.0 {
                let p = std::mem::replace(part, Part::Range(None, None));
                *part = match p {
                    Part::Index(i) => Part::Index(guard(i)),
                    Part::Range(a, z) => Part::Range(a.map(guard), z.map(guard)),
                };
            }
            Term::Path(b(head), path)
        }
    }
}

fn guard_op(op: BinaryOp<&str>) -> BinaryOp<&str> {
    match op {
        BinaryOp::Pipe(Some(p)) => BinaryOp::Pipe(Some(guard_pattern(p))),
        other => other,
    }
}

fn guard_pattern(p: Pattern<&str>) -> Pattern<&str> {
    match p {
        Pattern::Var(_) => p,
        Pattern::Arr(ps) => Pattern::Arr(ps.into_iter().map(guard_pattern).collect()),
        Pattern::Obj(kvs) => Pattern::Obj(
            kvs.into_iter()
                .map(|(k, p)| (guard_term(k), guard_pattern(p)))
                .collect(),
        ),
    }
}

/// Why [`measure`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooBig {
    /// Arrays and objects nest deeper than allowed.
    Deep,
    /// Written out, the value would take more bytes than allowed.
    Large,
}

/// Bytes a value takes at least once copied out of jq, beyond its strings.
const NODE_BYTES: u64 = 32;

/// Walk `v` as a tree: fail as soon as it nests deeper than `max_depth` or
/// counts more than `max_bytes` (every node [`NODE_BYTES`], plus the bytes of
/// every string and key, each time it occurs). Stops early, so it costs at
/// most what it allows.
pub fn measure(v: &Val, max_depth: usize, max_bytes: u64) -> Result<u64, TooBig> {
    let mut bytes = 0u64;
    let mut add = |n: u64| {
        bytes = bytes.saturating_add(n);
        if bytes > max_bytes {
            Err(TooBig::Large)
        } else {
            Ok(())
        }
    };
    // Each entry: the children still to visit of a container at that depth.
    enum Rest<'a> {
        Arr(std::slice::Iter<'a, Val>),
        Obj(crate::val::obj::Iter<'a>),
    }
    let leaf = |v: &Val| match v {
        Val::Str(s) => NODE_BYTES + s.len() as u64,
        _ => NODE_BYTES,
    };
    let mut stack: Vec<Rest<'_>> = Vec::new();
    fn container(v: &Val) -> Option<Rest<'_>> {
        match v {
            Val::Arr(a) => Some(Rest::Arr(a.iter())),
            Val::Obj(o) => Some(Rest::Obj(o.iter())),
            _ => None,
        }
    }
    add(leaf(v))?;
    if let Some(r) = container(v) {
        stack.push(r);
    }
    while !stack.is_empty() {
        if stack.len() > max_depth {
            return Err(TooBig::Deep);
        }
        let Some(top) = stack.last_mut() else { break };
        let next = match top {
            Rest::Arr(it) => it.next(),
            Rest::Obj(it) => match it.next() {
                Some((k, v)) => {
                    add(NODE_BYTES + k.len() as u64)?;
                    Some(v)
                }
                None => None,
            },
        };
        match next {
            Some(child) => {
                add(leaf(child))?;
                if let Some(r) = container(child) {
                    stack.push(r);
                }
            }
            None => {
                stack.pop();
            }
        }
    }
    Ok(bytes)
}

/// How deeply a JSON text nests arrays and objects (brackets inside strings
/// do not count). Invalid text is measured all the same: the parser that
/// follows rejects it.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_str, mut escaped) = (false, false);
    for &c in text {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::to_val;
    use serde_json::json;

    #[test]
    fn measures_a_value_as_the_tree_it_stands_for() {
        let v = to_val(&json!({"ab": [1, "xyz"]}));
        // The object, its key, the array and its two items.
        assert_eq!(measure(&v, 10, u64::MAX), Ok(5 * NODE_BYTES + 2 + 3));
        assert_eq!(measure(&v, 2, u64::MAX).map(|_| ()), Ok(()));
        assert_eq!(measure(&v, 1, u64::MAX), Err(TooBig::Deep));
        assert_eq!(measure(&v, 10, 100), Err(TooBig::Large));
        assert_eq!(measure(&Val::Null, 0, 100), Ok(NODE_BYTES));
    }

    #[test]
    fn finds_the_depth_of_json_text() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"[{"a": [1]}, []]"#), 3);
        assert_eq!(json_depth(br#"["[[[\"[", "\\"]"#), 1);
        assert_eq!(json_depth(b"]]][["), 2);
    }
}
