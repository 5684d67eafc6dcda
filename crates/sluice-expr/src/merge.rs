//! Merging a result into the state data (SEMANTICS.md section 3).
//!
//! * object into object: every key of both; a key present in both merges its
//!   two values by these same rules;
//! * array into array: the existing elements, then each incoming element not
//!   already present (JSON equality, at every depth: numbers by value, so
//!   `1` and `1.0` are the same, as in jq; object keys in any order);
//! * an incoming number, string, boolean or null overwrites;
//! * at the merge target itself, an incoming object or array must meet a
//!   target of the same kind, or a missing (`null`) target, which it simply
//!   becomes; any other pairing (an array into an object, an object into an
//!   array or into a scalar) is an error naming the target path. Below the
//!   target, the incoming value wins a kind mismatch.
//!
//! Arrays merge in time proportional to their size: each element is hashed
//! once (by a hash that agrees with JSON equality), and only elements of the
//! same hash are compared.

use crate::data::{kind, same, to_json};
use crate::val::{Obj, Val};
use crate::value::to_val;
use jaq_json::Num;
use serde_json::Value;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// A merge of incompatible kinds at the target element.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot merge {incoming} into {target} at `{path}`: the target and the merged value must both be objects or both be arrays"
)]
pub struct MergeError {
    /// The target path, as written by the caller (such as `.a.b` or `$`).
    pub path: String,
    /// Kind of the existing value.
    pub target: &'static str,
    /// Kind of the incoming value.
    pub incoming: &'static str,
}

/// Merge `incoming` into `target`; `path` names the target in errors.
/// Only what `target` gains is copied, and of the arrays and objects it
/// gains, only the references: a result merged into state data that holds
/// it already copies nothing.
pub fn merge_val(target: &mut Val, incoming: &Val, path: &str) -> Result<(), MergeError> {
    fits_val(target, incoming, path)?;
    merge_below(target, incoming);
    Ok(())
}

/// Whether [`merge_val`] of `incoming` into `target` succeeds: its error,
/// if not (only the kinds at the target decide).
pub fn fits_val(target: &Val, incoming: &Val, path: &str) -> Result<(), MergeError> {
    match (target, incoming) {
        (Val::Obj(_), Val::Obj(_)) | (Val::Arr(_), Val::Arr(_)) | (Val::Null, _) => Ok(()),
        (_, Val::Obj(_) | Val::Arr(_)) => Err(MergeError {
            path: path.to_owned(),
            target: kind(target),
            incoming: kind(incoming),
        }),
        _ => Ok(()),
    }
}

/// [`merge_val`] of `serde_json` values.
pub fn merge(target: &mut Value, incoming: Value, path: &str) -> Result<(), MergeError> {
    let mut t = to_val(target);
    merge_val(&mut t, &to_val(&incoming), path)?;
    *target = to_json(&t);
    Ok(())
}

/// [`fits_val`] of `serde_json` values.
pub fn fits(target: &Value, incoming: &Value, path: &str) -> Result<(), MergeError> {
    fits_val(&to_val(target), &to_val(incoming), path)
}

fn merge_below(target: &mut Val, incoming: &Val) {
    if same(target, incoming) {
        // A value merged into itself is itself.
        return;
    }
    match (target, incoming) {
        (Val::Obj(t), Val::Obj(i)) => merge_objects(t, i),
        (Val::Arr(t), Val::Arr(i)) => unique_concat(t, i),
        (t, i) => *t = i.clone(),
    }
}

/// Every key of both; a key in both merges its two values.
fn merge_objects(target: &mut Arc<Obj>, incoming: &Obj) {
    let t = Arc::make_mut(target);
    for (k, v) in incoming.iter() {
        match t.get_mut(k) {
            Some(existing) => merge_below(existing, v),
            None => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Append each element of `incoming` that `target` (with the elements
/// appended before it) does not hold, in order.
fn unique_concat(target: &mut Arc<Vec<Val>>, incoming: &[Val]) {
    if incoming.is_empty() {
        return;
    }
    // The common case of a result that holds the target's elements again
    // (shared, or equal) in their order: nothing to append, nothing hashed.
    if incoming.len() <= target.len()
        && incoming
            .iter()
            .zip(target.iter())
            .all(|(i, t)| val_eq(i, t))
    {
        return;
    }
    // Element indices of `target` (then of what is appended) by hash.
    let len = target.len();
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(len + incoming.len());
    for (at, v) in target.iter().enumerate() {
        seen.entry(hash_of(v)).or_default().push(at);
    }
    let mut added: Vec<Val> = Vec::new();
    for v in incoming {
        let same = seen.entry(hash_of(v)).or_default();
        let held = same.iter().any(|&at| {
            let x = if at < len {
                &target[at]
            } else {
                &added[at - len]
            };
            val_eq(x, v)
        });
        if !held {
            same.push(len + added.len());
            added.push(v.clone());
        }
    }
    if !added.is_empty() {
        Arc::make_mut(target).extend(added);
    }
}

/// JSON equality: numbers by value (`1` is `1.0`, `0.0` is `-0.0`), arrays
/// element by element, objects by their entries in any order.
pub fn val_eq(a: &Val, b: &Val) -> bool {
    if same(a, b) {
        return true;
    }
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => same_number(x, y),
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Arr(x), Val::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| val_eq(p, q))
        }
        (Val::Obj(x), Val::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| val_eq(p, q)))
        }
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        _ => false,
    }
}

/// [`val_eq`] of `serde_json` values.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    val_eq(&to_val(a), &to_val(b))
}

/// A number's value as an integer, when it is one (`3`, `3.0`), else as
/// a float.
fn number(n: &Num) -> Result<i128, f64> {
    let float = |f: f64| {
        // Within this range an integral float converts exactly.
        if f.fract() == 0.0 && f.abs() < 1e37 {
            Ok(f as i128)
        } else {
            Err(f)
        }
    };
    match n {
        Num::Int(i) => Ok(*i as i128),
        Num::Float(f) => float(*f),
        Num::BigInt(b) => b
            .to_string()
            .parse::<i128>()
            .or_else(|_| float(b.to_string().parse().unwrap_or(f64::NAN))),
        Num::Dec(d) => d
            .parse::<i128>()
            .or_else(|_| float(d.parse().unwrap_or(f64::NAN))),
    }
}

fn same_number(x: &Num, y: &Num) -> bool {
    match (number(x), number(y)) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

/// A hash of `v` that agrees with [`val_eq`].
fn hash_of(v: &Val) -> u64 {
    let mut h = DefaultHasher::new();
    hash_into(v, &mut h);
    h.finish()
}

fn hash_into(v: &Val, h: &mut DefaultHasher) {
    match v {
        Val::Null => 0u8.hash(h),
        Val::Bool(b) => (1u8, *b).hash(h),
        Val::Num(n) => {
            2u8.hash(h);
            // Equal numbers hash alike: integers by their value, other
            // floats by their bits.
            match number(n) {
                Ok(i) => (0u8, i).hash(h),
                Err(f) => (1u8, f.to_bits()).hash(h),
            }
        }
        Val::Str(s) => (3u8, &s[..]).hash(h),
        Val::Arr(a) => {
            (4u8, a.len()).hash(h);
            for x in a.iter() {
                hash_into(x, h);
            }
        }
        Val::Obj(m) => {
            // Equal objects may list their keys in another order: the
            // entries' hashes are added up.
            let mut sum = 0u64;
            for (k, x) in m.iter() {
                let mut e = DefaultHasher::new();
                (3u8, &k[..]).hash(&mut e);
                hash_into(x, &mut e);
                sum = sum.wrapping_add(e.finish());
            }
            (5u8, m.len(), sum).hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(mut t: Value, i: Value) -> Value {
        merge(&mut t, i, "$").unwrap();
        t
    }

    #[test]
    fn objects_merge_recursively() {
        assert_eq!(
            merged(
                json!({"customer": {"name": "John", "address": "1234 street", "zip": "12345"}}),
                json!({"customer": {"name": "John", "zip": "54321"}})
            ),
            json!({"customer": {"name": "John", "address": "1234 street", "zip": "54321"}})
        );
    }

    #[test]
    fn arrays_keep_unique_elements_existing_first() {
        assert_eq!(
            merged(json!([1, 2]), json!([2, 3, 1, 4])),
            json!([1, 2, 3, 4])
        );
        assert_eq!(
            merged(json!({"a": [1]}), json!({"a": [1, 2]})),
            json!({"a": [1, 2]})
        );
    }

    /// The hashed merge keeps exactly what the rule (append each element
    /// not already present) keeps, on values that are equal in tricky ways.
    #[test]
    fn hashed_unique_concatenation_agrees_with_the_rule() {
        let values = vec![
            json!(null),
            json!(0),
            json!(0.0),
            json!(-0.0),
            json!(1),
            json!(1.0),
            json!(-1),
            json!(u64::MAX),
            json!(1.5),
            json!("1"),
            json!(true),
            json!(false),
            json!([]),
            json!([1, 2]),
            json!([2, 1]),
            json!({}),
            json!({"a": 1, "b": [1, {"c": null}]}),
            json!({"b": [1, {"c": null}], "a": 1}),
            json!({"a": 1, "b": [1, {"c": 0}]}),
            json!({"a": 1}),
            json!({"b": 1}),
        ];
        let naive = |t: &[Value], i: &[Value]| {
            let mut out = t.to_vec();
            for v in i {
                if !out.iter().any(|o| json_eq(o, v)) {
                    out.push(v.clone());
                }
            }
            out
        };
        // Every split of a rotating sequence with repeats.
        let seq: Vec<Value> = (0..60)
            .map(|k| values[(k * 7) % values.len()].clone())
            .collect();
        for cut in 0..seq.len() {
            let (t, i) = seq.split_at(cut);
            let mut got = Value::Array(t.to_vec());
            merge(&mut got, Value::Array(i.to_vec()), "$").unwrap();
            assert_eq!(got, Value::Array(naive(t, i)), "cut {cut}");
        }
        // Keys in another order are the same object; numbers by value.
        assert_eq!(hash_of(&to_val(&values[16])), hash_of(&to_val(&values[17])));
        for (a, b) in [
            (json!(0.0), json!(-0.0)),
            (json!(1), json!(1.0)),
            (json!([{"a": 2}]), json!([{"a": 2.0}])),
        ] {
            assert!(json_eq(&a, &b), "{a} {b}");
            assert_eq!(hash_of(&to_val(&a)), hash_of(&to_val(&b)), "{a} {b}");
        }
        assert!(!json_eq(&json!(1), &json!(1.5)));
        assert!(!json_eq(&json!(u64::MAX), &json!(-1)));
        assert_eq!(
            merged(json!([1, 2.5]), json!([1.0, 2.5, 3])),
            json!([1, 2.5, 3])
        );
    }

    /// Two arrays of 200,000 distinct objects, half of them shared: every
    /// element is compared with its few of the same hash only, so this ends
    /// at once where comparing each with each would take minutes (nextest
    /// ends it after a minute: .config/nextest.toml).
    #[test]
    fn large_arrays_merge_in_linear_time() {
        let item = |i: usize| json!({"sku": format!("SKU-{i}"), "qty": i % 7});
        let mut target = Value::Array((0..200_000).map(item).collect());
        let incoming = Value::Array((100_000..300_000).map(item).collect());
        merge(&mut target, incoming, "$").unwrap();
        let all = target.as_array().unwrap();
        assert_eq!(all.len(), 300_000);
        assert_eq!(all[299_999], item(299_999));
    }

    #[test]
    fn scalars_overwrite() {
        assert_eq!(
            merged(json!({"age": 20}), json!({"age": 30})),
            json!({"age": 30})
        );
        assert_eq!(
            merged(json!({"a": {"b": 1}}), json!({"a": 5})),
            json!({"a": 5})
        );
        assert_eq!(
            merged(json!({"a": 5}), json!({"a": {"b": 1}})),
            json!({"a": {"b": 1}})
        );
        assert_eq!(merged(json!({"a": 1}), json!(null)), json!(null));
        assert_eq!(merged(json!(null), json!({"a": 1})), json!({"a": 1}));
    }

    #[test]
    fn mismatched_kinds_at_the_target_fail() {
        let err = merge(&mut json!({"a": 1}), json!([1]), ".list").unwrap_err();
        assert_eq!(err.path, ".list");
        assert_eq!((err.target, err.incoming), ("object", "array"));
        assert!(merge(&mut json!([1]), json!({"a": 1}), "$").is_err());
        assert!(merge(&mut json!("s"), json!({"a": 1}), "$").is_err());
    }
}
