//! Where two JSON values differ: each difference at its path
//! (`$.items[2].qty: expected 3, got 4`), numbers compared as numbers.

use serde_json::Value;

/// At most this many differences are listed.
const MOST: usize = 10;

/// The differences between `expected` and `actual`, each as a line.
pub fn diff(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(expected, actual, "$", &mut out);
    if out.len() > MOST {
        let more = out.len() - MOST;
        out.truncate(MOST);
        out.push(format!("… and {more} more"));
    }
    out
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn key_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_owned()))
    }
}

fn walk(e: &Value, a: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() > MOST {
        return;
    }
    match (e, a) {
        (Value::Object(eo), Value::Object(ao)) => {
            for (k, ev) in eo {
                match ao.get(k) {
                    Some(av) => walk(ev, av, &key_path(path, k), out),
                    None => out.push(format!(
                        "{}: expected {}, missing",
                        key_path(path, k),
                        short(ev)
                    )),
                }
            }
            for (k, av) in ao {
                if !eo.contains_key(k) {
                    out.push(format!(
                        "{}: not expected, got {}",
                        key_path(path, k),
                        short(av)
                    ));
                }
            }
        }
        (Value::Array(ea), Value::Array(aa)) => {
            for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                walk(ev, av, &format!("{path}[{i}]"), out);
            }
            if ea.len() != aa.len() {
                out.push(format!(
                    "{path}: expected {} items, got {}",
                    ea.len(),
                    aa.len()
                ));
            }
        }
        _ if sluice_expr::merge::json_eq(e, a) => {}
        _ => out.push(format!("{path}: expected {}, got {}", short(e), short(a))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_named_by_path() {
        let e = json!({"a": 1, "items": [{"qty": 3}], "gone": true, "odd key": 1});
        let a = json!({"a": 1.0, "items": [{"qty": 4}, {"qty": 5}], "new": "x", "odd key": 2});
        assert_eq!(
            diff(&e, &a),
            vec![
                "$.items[0].qty: expected 3, got 4",
                "$.items: expected 1 items, got 2",
                "$.gone: expected true, missing",
                "$[\"odd key\"]: expected 1, got 2",
                "$.new: not expected, got \"x\"",
            ]
        );
        assert!(diff(&json!([1, 2]), &json!([1, 2])).is_empty());
        assert_eq!(
            diff(&json!("a"), &json!(1)),
            vec!["$: expected \"a\", got 1"]
        );
    }
}
