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

use crate::value::kind;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

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
pub fn merge(target: &mut Value, incoming: Value, path: &str) -> Result<(), MergeError> {
    fits(target, &incoming, path)?;
    merge_below(target, Cow::Owned(incoming));
    Ok(())
}

/// [`merge`] of a value the caller keeps: only what `target` gains is
/// copied (a result merged into state data that holds it already copies
/// nothing).
pub fn merge_ref(target: &mut Value, incoming: &Value, path: &str) -> Result<(), MergeError> {
    fits(target, incoming, path)?;
    merge_below(target, Cow::Borrowed(incoming));
    Ok(())
}

/// Whether [`merge`] of `incoming` into `target` succeeds: its error, if
/// not (only the kinds at the target decide).
pub fn fits(target: &Value, incoming: &Value, path: &str) -> Result<(), MergeError> {
    match (target, incoming) {
        (Value::Object(_), Value::Object(_))
        | (Value::Array(_), Value::Array(_))
        | (Value::Null, _) => Ok(()),
        (_, Value::Object(_) | Value::Array(_)) => Err(MergeError {
            path: path.to_owned(),
            target: kind(target),
            incoming: kind(incoming),
        }),
        _ => Ok(()),
    }
}

/// The entries of an object, owned or borrowed.
fn entries<'a>(
    m: Cow<'a, Map<String, Value>>,
) -> Box<dyn Iterator<Item = (Cow<'a, str>, Cow<'a, Value>)> + 'a> {
    match m {
        Cow::Owned(m) => Box::new(m.into_iter().map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))),
        Cow::Borrowed(m) => Box::new(
            m.iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v))),
        ),
    }
}

/// The elements of an array, owned or borrowed.
fn elements<'a>(a: Cow<'a, [Value]>) -> Box<dyn Iterator<Item = Cow<'a, Value>> + 'a> {
    match a {
        Cow::Owned(a) => Box::new(a.into_iter().map(Cow::Owned)),
        Cow::Borrowed(a) => Box::new(a.iter().map(Cow::Borrowed)),
    }
}

fn merge_below(target: &mut Value, incoming: Cow<'_, Value>) {
    match (target, incoming) {
        (Value::Object(t), Cow::Owned(Value::Object(i))) => merge_objects(t, Cow::Owned(i)),
        (Value::Object(t), Cow::Borrowed(Value::Object(i))) => merge_objects(t, Cow::Borrowed(i)),
        (Value::Array(t), Cow::Owned(Value::Array(i))) => unique_concat(t, Cow::Owned(i)),
        (Value::Array(t), Cow::Borrowed(Value::Array(i))) => {
            unique_concat(t, Cow::Borrowed(i.as_slice()))
        }
        (t, i) => *t = i.into_owned(),
    }
}

/// Every key of both; a key in both merges its two values.
fn merge_objects(target: &mut Map<String, Value>, incoming: Cow<'_, Map<String, Value>>) {
    for (k, v) in entries(incoming) {
        match target.get_mut(k.as_ref()) {
            Some(existing) => merge_below(existing, v),
            None => {
                target.insert(k.into_owned(), v.into_owned());
            }
        }
    }
}

/// Append each element of `incoming` that `target` (with the elements
/// appended before it) does not hold, in order.
fn unique_concat(target: &mut Vec<Value>, incoming: Cow<'_, [Value]>) {
    if incoming.is_empty() {
        return;
    }
    // Element indices of `target` by hash.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(target.len() + incoming.len());
    for (at, v) in target.iter().enumerate() {
        seen.entry(hash_of(v)).or_default().push(at);
    }
    for v in elements(incoming) {
        let h = hash_of(&v);
        let same = seen.entry(h).or_default();
        if !same.iter().any(|&at| json_eq(&target[at], &v)) {
            same.push(target.len());
            target.push(v.into_owned());
        }
    }
}

/// JSON equality: numbers by value (`1` is `1.0`, `0.0` is `-0.0`), arrays
/// element by element, objects by their entries in any order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}

/// A number's value as an integer, when it is one (`3`, `3.0`).
fn integer(n: &Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    // Within this range an integral float converts exactly.
    (f.fract() == 0.0 && f.abs() < 1e37).then_some(f as i128)
}

fn same_number(x: &Number, y: &Number) -> bool {
    match (integer(x), integer(y)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => x.as_f64() == y.as_f64(),
        _ => false,
    }
}

/// A hash of `v` that agrees with [`json_eq`].
fn hash_of(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    hash_into(v, &mut h);
    h.finish()
}

fn hash_into(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, *b).hash(h),
        Value::Number(n) => {
            2u8.hash(h);
            hash_number(n, h);
        }
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            for x in a {
                hash_into(x, h);
            }
        }
        Value::Object(m) => {
            // Equal objects may list their keys in another order: the
            // entries' hashes are added up.
            let mut sum = 0u64;
            for (k, x) in m {
                let mut e = DefaultHasher::new();
                k.hash(&mut e);
                hash_into(x, &mut e);
                sum = sum.wrapping_add(e.finish());
            }
            (5u8, m.len(), sum).hash(h);
        }
    }
}

/// Equal numbers (see [`same_number`]) hash alike: integers by their value,
/// other floats by their bits.
fn hash_number(n: &Number, h: &mut DefaultHasher) {
    match integer(n) {
        Some(i) => (0u8, i).hash(h),
        None => (1u8, n.as_f64().map(f64::to_bits)).hash(h),
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
        assert_eq!(hash_of(&values[16]), hash_of(&values[17]));
        for (a, b) in [
            (json!(0.0), json!(-0.0)),
            (json!(1), json!(1.0)),
            (json!([{"a": 2}]), json!([{"a": 2.0}])),
        ] {
            assert!(json_eq(&a, &b), "{a} {b}");
            assert_eq!(hash_of(&a), hash_of(&b), "{a} {b}");
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
