//! Conversions between `serde_json::Value` and jaq's `Val`.

use crate::val::Val;
use jaq_json::Num;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

/// Convert a JSON value to a jq value.
pub fn to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(num_to_val(n)),
        Value::String(s) => Val::from(s.as_str()),
        Value::Array(a) => a.iter().map(to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), to_val(v)))
                .collect(),
        ),
    }
}

fn num_to_val(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::from_integral(i)
    } else if let Some(u) = n.as_u64() {
        Num::from_integral(u)
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Convert a jq value to a JSON value.
///
/// As jq prints them, NaN becomes `null` and infinities the largest finite
/// numbers.
pub fn from_val(v: &Val) -> Result<Value, String> {
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => num_from_val(n),
        // Copied as text (`to_string` would go through `Display`).
        Val::Str(s) => Value::String(s.as_str().to_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(from_val).collect::<Result<_, _>>()?),
        Val::Obj(o) => {
            let mut m = Map::with_capacity(o.len());
            for (k, v) in o.iter() {
                m.insert((**k).to_owned(), from_val(v)?);
            }
            Value::Object(m)
        }
    })
}

pub(crate) fn num_from_val(n: &Num) -> Value {
    let float = |f: f64| {
        if f.is_nan() {
            Value::Null
        } else if f.is_infinite() {
            Value::from(if f > 0.0 { f64::MAX } else { f64::MIN })
        } else if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
            Value::from(f as i64)
        } else {
            Value::from(f)
        }
    };
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => float(*f),
        Num::BigInt(b) => {
            let text = b.to_string();
            text.parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.parse::<u64>().map(Value::from))
                .unwrap_or_else(|_| float(text.parse::<f64>().unwrap_or(f64::NAN)))
        }
        Num::Dec(d) => {
            let text: &str = d;
            text.parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.parse::<u64>().map(Value::from))
                .unwrap_or_else(|_| float(text.parse::<f64>().unwrap_or(f64::NAN)))
        }
    }
}

/// `v` as jq gives it back, `from_val(&to_val(v))`, without the two
/// conversions: only numbers can change (jq has `2.0` as `2`), so `v` is
/// copied only when one of its numbers does.
pub fn as_from_jq(v: &Value) -> Cow<'_, Value> {
    fn changes(v: &Value) -> bool {
        match v {
            Value::Number(n) => round_trip(n).is_some(),
            Value::Array(a) => a.iter().any(changes),
            Value::Object(o) => o.values().any(changes),
            _ => false,
        }
    }
    if changes(v) {
        let mut owned = v.clone();
        mend_numbers(&mut owned);
        Cow::Owned(owned)
    } else {
        Cow::Borrowed(v)
    }
}

/// Make the numbers of `v` what jq makes of them (see [`as_from_jq`]).
pub(crate) fn mend_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(again) = round_trip(n) {
                *v = again;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mend_numbers),
        Value::Object(o) => o.values_mut().for_each(mend_numbers),
        _ => {}
    }
}

/// The number jq makes of `n`, when it is not `n`.
fn round_trip(n: &Number) -> Option<Value> {
    if n.is_i64() {
        // Integers that fit stay as they are (the common case, without converting).
        return None;
    }
    let again = num_from_val(&num_to_val(n));
    (again.as_number() != Some(n)).then_some(again)
}

/// The kind of a JSON value, as error messages name it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let v =
            json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}, "big": 18446744073709551615u64});
        assert_eq!(from_val(&to_val(&v)).unwrap(), v);
    }

    #[test]
    fn as_from_jq_is_the_round_trip() {
        for v in [
            json!({"a": [1, 2.0, 2.5, "x", null, true], "b": {"c": -3.0}}),
            json!(18446744073709551615u64),
            json!(1e300),
            json!(-0.0),
            json!(9007199254740992.0),
            json!("text"),
            json!([{"n": 7}]),
        ] {
            let expected = from_val(&to_val(&v)).unwrap();
            assert_eq!(*as_from_jq(&v), expected, "{v}");
            assert_eq!(
                matches!(as_from_jq(&v), Cow::Borrowed(_)),
                expected == v,
                "{v} copied only when it changes"
            );
        }
    }

    #[test]
    fn whole_floats_become_integers() {
        assert_eq!(num_from_val(&Num::Float(3.0)), json!(3));
        assert_eq!(num_from_val(&Num::Float(f64::NAN)), Value::Null);
    }
}
