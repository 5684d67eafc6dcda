//! Merging a result into the state data (SEMANTICS.md section 3).
//!
//! * object into object: every key of both; a key present in both merges its
//!   two values by these same rules;
//! * array into array: the existing elements, then each incoming element not
//!   already present (JSON equality), at every depth;
//! * an incoming number, string, boolean or null overwrites;
//! * at the merge target itself, an incoming object or array must meet a
//!   target of the same kind, or a missing (`null`) target, which it simply
//!   becomes; any other pairing (an array into an object, an object into an
//!   array or into a scalar) is an error naming the target path. Below the
//!   target, the incoming value wins a kind mismatch.

use crate::value::kind;
use serde_json::Value;

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
    merge_below(target, incoming);
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

fn merge_below(target: &mut Value, incoming: Value) {
    match (target, incoming) {
        (Value::Object(t), Value::Object(i)) => {
            for (k, v) in i {
                match t.get_mut(&k) {
                    Some(existing) => merge_below(existing, v),
                    None => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(i)) => {
            for v in i {
                if !t.contains(&v) {
                    t.push(v);
                }
            }
        }
        (t, i) => *t = i,
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
