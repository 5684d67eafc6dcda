//! JSON data as runs hold it: jq values ([`Val`]), whose arrays and
//! objects are shared, not copied, however many steps, filters, variables
//! and records refer to them.
//!
//! A run's data is read once (JSON text straight into a [`Val`], or a
//! `serde_json::Value` converted once), handed from step to step and
//! recorded by reference; programs run on it without conversion. Its
//! numbers and strings are kept as JSON has them: [`to_json`] and [`Json`]
//! (its text) give back exactly the JSON it was read from. What jq programs
//! produce is made what jq gives back ([`normalize`]: `2.0` is `2`, NaN is
//! `null`), as [`crate::from_val`] does for `serde_json` values.

use crate::val::{Obj, Shapes, Val};
use crate::value::{num_from_val, to_val};
use jaq_json::Num;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::sync::Arc;

/// Read JSON text as serde_json reads it (integers as integers, other
/// numbers as floats; of a key given twice, the last value at the first
/// place).
pub fn parse(text: &[u8]) -> Result<Val, serde_json::Error> {
    // Keys are kept once only in a text long enough to repeat them much.
    one(
        serde_json::Deserializer::from_slice(text),
        text.len() >= 1 << 16,
    )
}

/// Read one JSON value from `r` as [`parse`] reads it from text, without
/// holding the text (a large input's text would add its size to the
/// tree's while the tree is made).
pub fn parse_reader(r: impl std::io::Read) -> Result<Val, serde_json::Error> {
    let r = std::io::BufReader::with_capacity(1 << 16, r);
    one(serde_json::Deserializer::from_reader(r), true)
}

/// The one JSON value `de` reads, its keys kept when `keep`.
fn one<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    keep: bool,
) -> Result<Val, serde_json::Error> {
    let keys = std::cell::RefCell::new(Keys::new(keep));
    let v = serde::de::DeserializeSeed::deserialize(Read(&keys), &mut de)?;
    de.end()?;
    Ok(v)
}

/// Read the JSON values of `text`, one after another (`fromjson`): each
/// value up to the first error, and that error.
pub fn parse_many(text: &[u8]) -> Vec<Result<Val, serde_json::Error>> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let keys = std::cell::RefCell::new(Keys::new(false));
    let mut out = Vec::new();
    loop {
        if de.end().is_ok() {
            return out;
        }
        let r = serde::de::DeserializeSeed::deserialize(Read(&keys), &mut de);
        let failed = r.is_err();
        out.push(r);
        if failed {
            return out;
        }
    }
}

/// Object keys met while reading, kept once (the objects of a list share
/// their keys' text instead of each holding its own copy), and the lists of
/// keys of objects (the objects of a list share one); `None`: none kept.
struct Keys {
    kept: Option<Kept>,
    /// The keys of the objects being read, outermost first (an object in a
    /// value puts its own above them and takes them off again).
    stack: Vec<Arc<str>>,
}

#[derive(Default)]
struct Kept {
    names: std::collections::HashMap<Box<str>, Arc<str>>,
    shapes: Shapes,
}

impl Keys {
    fn new(keep: bool) -> Self {
        Self {
            kept: keep.then(Default::default),
            stack: Vec::new(),
        }
    }

    /// The object of the keys put on the stack since `start` and their
    /// `values`: its list of keys the one met before, when kept.
    fn object(&mut self, start: usize, values: Vec<Val>) -> Obj {
        match &mut self.kept {
            Some(kept) => {
                let out = kept.shapes.object(&self.stack[start..], values);
                self.stack.truncate(start);
                out
            }
            None => self.stack.drain(start..).zip(values).collect(),
        }
    }

    /// How many distinct keys it keeps (objects keyed by ids would
    /// otherwise fill it with keys met once).
    const MOST: usize = 4096;

    fn get(&mut self, k: &str) -> Arc<str> {
        let Some(kept) = &mut self.kept else {
            return k.into();
        };
        if let Some(v) = kept.names.get(k) {
            return v.clone();
        }
        let v: Arc<str> = k.into();
        if kept.names.len() < Self::MOST {
            kept.names.insert(k.into(), v.clone());
        }
        v
    }
}

/// Reads one JSON value into a [`Val`].
struct Read<'k>(&'k std::cell::RefCell<Keys>);

/// Reads one object key.
struct Key<'k>(&'k std::cell::RefCell<Keys>);

impl<'de> serde::de::DeserializeSeed<'de> for Read<'_> {
    type Value = Val;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = Arc<str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Arc<str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = Arc<str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, s: &str) -> Result<Arc<str>, E> {
        Ok(self.0.borrow_mut().get(s))
    }
}

impl<'de> serde::de::Visitor<'de> for Read<'_> {
    type Value = Val;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Val, E> {
        Ok(Val::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(i)))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Val, E> {
        Ok(Val::Num(Num::from_integral(u)))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Val, E> {
        Ok(Val::Num(Num::Float(f)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Val, E> {
        Ok(str_val(s))
    }
    fn visit_string<E>(self, s: String) -> Result<Val, E> {
        Ok(Val::from(s))
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Read(self.0))? {
            out.push(v);
        }
        Ok(Val::arr(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let start = self.0.borrow().stack.len();
        let mut values = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(k) = map.next_key_seed(Key(self.0))? {
            let v = map.next_value_seed(Read(self.0))?;
            self.0.borrow_mut().stack.push(k);
            values.push(v);
        }
        Ok(Val::obj(self.0.borrow_mut().object(start, values)))
    }
}

/// A string value.
pub fn str_val(s: &str) -> Val {
    Val::from(s)
}

/// An object of `entries`.
pub fn obj_val<'k>(entries: impl IntoIterator<Item = (&'k str, Val)>) -> Val {
    Val::obj(
        entries
            .into_iter()
            .map(|(k, v)| (Arc::from(k), v))
            .collect(),
    )
}

/// The value of key `key` of an object.
pub fn field<'v>(v: &'v Val, key: &str) -> Option<&'v Val> {
    match v {
        Val::Obj(o) => o.get(key),
        _ => None,
    }
}

/// Set key `key` of an object to `v` (its entries copied first if they
/// are shared); any other kind is left as it is.
pub fn insert(obj: &mut Val, key: &str, v: Val) {
    if let Val::Obj(m) = obj {
        Arc::make_mut(m).insert(key.into(), v);
    }
}

/// A string's text (`None` for any other kind, or text that is not UTF-8).
pub fn as_str(v: &Val) -> Option<&str> {
    match v {
        Val::Str(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The kind of a value, as error messages name it.
pub fn kind(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::Str(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// Whether `a` and `b` are one array or object in memory (and so equal).
pub fn same(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Arr(x), Val::Arr(y)) => Arc::ptr_eq(x, y),
        (Val::Obj(x), Val::Obj(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// The address of an array or object, which names it while it lives.
pub fn address(v: &Val) -> Option<usize> {
    match v {
        Val::Arr(a) => Some(Arc::as_ptr(a) as *const u8 as usize),
        Val::Obj(o) => Some(Arc::as_ptr(o) as *const u8 as usize),
        _ => None,
    }
}

/// The JSON a value was read from: the inverse of [`to_val`]. (Of what
/// JSON cannot hold, which only a program makes and [`normalize`] mends: a
/// number that is not finite is `null`.)
pub fn to_json(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Val::Num(n) => num_from_val(n),
        // Copied as text (`to_string` would go through `Display`).
        Val::Str(s) => Value::String(s.as_str().to_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(to_json).collect()),
        Val::Obj(o) => Value::Object(
            o.iter()
                .map(|(k, v)| ((**k).to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

/// A `serde_json` value made a jq value.
pub fn into_val(v: Value) -> Val {
    match v {
        Value::String(s) => Val::from(s),
        Value::Array(a) => a.into_iter().map(into_val).collect(),
        Value::Object(o) => Val::obj(
            o.into_iter()
                .map(|(k, v)| (Arc::from(k), into_val(v)))
                .collect(),
        ),
        other => to_val(&other),
    }
}

/// A value's JSON text, compact, as `serde_json` writes the JSON of
/// [`to_json`] (without making it).
pub struct Json<'a>(pub &'a Val);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Num(Num::Int(i)) => s.serialize_i64(*i as i64),
            Val::Num(Num::Float(f)) => s.serialize_f64(*f),
            Val::Num(n) => num_from_val(n).serialize(s),
            Val::Str(t) => s.serialize_str(t),
            Val::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a.iter() {
                    seq.serialize_element(&Json(x))?;
                }
                seq.end()
            }
            Val::Obj(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    map.serialize_entry(&**k, &Json(v))?;
                }
                map.end()
            }
        }
    }
}

/// A value's compact JSON text.
pub fn to_text(v: &Val) -> String {
    serde_json::to_string(&Json(v)).unwrap_or_default()
}

/// What jq gives back of a value a program made: whole floats (below
/// 2^53) are integers, NaN is `null`, infinities are the largest finite
/// numbers. The parts that need none of it are kept as they are (shared).
pub fn normalize(v: Val) -> Result<Val, String> {
    if !big(&v) {
        return Ok(mended(&v).unwrap_or(v));
    }
    // A large array or object is often given back again (each step's
    // `{{ .items }}` of one run): its mended value is found, not made again
    // (which would also make it a new value to the records).
    if let Some(out) = MENDED.find(&v) {
        return Ok(out);
    }
    let out = mended(&v).unwrap_or_else(|| v.clone());
    MENDED.keep(&v, &out);
    Ok(out)
}

/// Whether `v` is an array or object with many elements.
fn big(v: &Val) -> bool {
    match v {
        Val::Arr(a) => a.len() >= 1024,
        Val::Obj(o) => o.len() >= 1024,
        _ => false,
    }
}

/// An array or object held weakly: it names its value while that lives.
#[derive(Clone)]
enum Weakly {
    Arr(std::sync::Weak<Vec<Val>>),
    Obj(std::sync::Weak<Obj>),
}

impl Weakly {
    fn of(v: &Val) -> Option<Self> {
        match v {
            Val::Arr(a) => Some(Self::Arr(Arc::downgrade(a))),
            Val::Obj(o) => Some(Self::Obj(Arc::downgrade(o))),
            _ => None,
        }
    }

    /// Whether it is `v` (a weak reference keeps its address from being
    /// reused, so the same address is the same value).
    fn is(&self, v: &Val) -> bool {
        match (self, v) {
            (Self::Arr(w), Val::Arr(a)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)),
            (Self::Obj(w), Val::Obj(o)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(o)),
            _ => false,
        }
    }

    fn get(&self) -> Option<Val> {
        match self {
            Self::Arr(w) => w.upgrade().map(Val::Arr),
            Self::Obj(w) => w.upgrade().map(Val::Obj),
        }
    }

    fn alive(&self) -> bool {
        match self {
            Self::Arr(w) => w.strong_count() > 0,
            Self::Obj(w) => w.strong_count() > 0,
        }
    }
}

/// Large values normalized lately, with what they became (held weakly:
/// nothing is kept alive by it).
struct Mended(std::sync::Mutex<Vec<(Weakly, Weakly)>>);

static MENDED: Mended = Mended(std::sync::Mutex::new(Vec::new()));

impl Mended {
    /// How many it keeps.
    const MOST: usize = 32;

    fn find(&self, v: &Val) -> Option<Val> {
        let list = self.0.lock().ok()?;
        list.iter()
            .find(|(i, _)| i.is(v))
            .and_then(|(_, o)| o.get())
    }

    fn keep(&self, v: &Val, out: &Val) {
        let (Some(i), Some(o)) = (Weakly::of(v), Weakly::of(out)) else {
            return;
        };
        if let Ok(mut list) = self.0.lock() {
            list.retain(|(i, o)| i.alive() && o.alive());
            if list.len() >= Self::MOST {
                list.remove(0);
            }
            list.push((i, o));
        }
    }
}

/// The mended value, when anything in `v` needs mending.
fn mended(v: &Val) -> Option<Val> {
    match v {
        Val::Null | Val::Bool(_) | Val::Num(Num::Int(_)) | Val::Str(_) => None,
        Val::Num(n) => mended_num(n),
        Val::Arr(a) => {
            let mut out: Option<Vec<Val>> = None;
            for (i, x) in a.iter().enumerate() {
                match (mended(x), &mut out) {
                    (Some(m), None) => {
                        let mut o = Vec::with_capacity(a.len());
                        o.extend_from_slice(&a[..i]);
                        o.push(m);
                        out = Some(o);
                    }
                    (Some(m), Some(o)) => o.push(m),
                    (None, Some(o)) => o.push(x.clone()),
                    (None, None) => {}
                }
            }
            out.map(Val::arr)
        }
        Val::Obj(o) => {
            let mut out: Option<Obj> = None;
            for (i, (k, x)) in o.iter().enumerate() {
                let value = mended(x);
                if out.is_none() && value.is_some() {
                    out = Some(
                        o.iter()
                            .take(i)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    );
                }
                if let Some(m) = &mut out {
                    m.insert(k.clone(), value.unwrap_or_else(|| x.clone()));
                }
            }
            out.map(Val::obj)
        }
    }
}

/// The number jq gives back of `n`, when it is not `n`.
fn mended_num(n: &Num) -> Option<Val> {
    let again = to_val(&num_from_val(n));
    let unchanged = match (n, &again) {
        (Num::Float(a), Val::Num(Num::Float(b))) => a.to_bits() == b.to_bits(),
        (Num::BigInt(a), Val::Num(Num::BigInt(b))) => a == b,
        _ => false,
    };
    (!unchanged).then_some(again)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_val;
    use serde_json::json;

    fn samples() -> Vec<Value> {
        vec![
            json!(null),
            json!({"a": [1, 2.5, 2.0, -0.0, "x", null, true], "b": {"c": -3}}),
            json!(18446744073709551615u64),
            json!(-9223372036854775808i64),
            json!(1e300),
            json!("é\u{1}\n\"\\"),
            json!({"z": 1, "a": 2, "m": {"k": [[], {}]}}),
            json!([0.1, 1.5e-7, 123456789.0]),
        ]
    }

    #[test]
    fn json_reads_back_exactly_and_writes_as_serde_json_does() {
        for v in samples() {
            let text = serde_json::to_string(&v).expect("text");
            let val = parse(text.as_bytes()).expect("parses");
            assert_eq!(to_json(&val), v, "{text}");
            assert_eq!(to_text(&val), text);
            assert_eq!(to_json(&to_val(&v)), v);
            assert_eq!(to_json(&into_val(v.clone())), v);
        }
        // a key given twice: the last value, at the first place
        let val = parse(br#"{"a": 1, "b": 2, "a": 3}"#).expect("parses");
        assert_eq!(to_text(&val), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn normalize_is_what_jq_gives_back() {
        for v in samples() {
            let expected = from_val(&to_val(&v)).expect("converts");
            let got = normalize(to_val(&v)).expect("normalizes");
            assert_eq!(to_json(&got), expected, "{v}");
        }
        let nan = Val::Num(Num::Float(f64::NAN));
        assert_eq!(to_json(&normalize(nan).expect("ok")), Value::Null);
    }

    #[test]
    fn a_large_value_normalized_again_is_what_it_became_before() {
        let items: Vec<Value> = (0..2000).map(|i| json!({"n": i, "x": 1.0})).collect();
        let v = to_val(&Value::Array(items));
        let once = normalize(v.clone()).expect("ok");
        let again = normalize(v.clone()).expect("ok");
        assert!(!same(&v, &once), "its whole floats are mended");
        assert!(same(&once, &again), "found, not made again");
        assert_eq!(to_json(&once)[5], json!({"n": 5, "x": 1}));
        // once nothing holds what it became, it is made again
        drop((once, again));
        let third = normalize(v.clone()).expect("ok");
        assert_eq!(to_json(&third)[0], json!({"n": 0, "x": 1}));
        // a large value that needs nothing is itself
        let clean = to_val(&Value::Array((0..2000).map(|i| json!(i)).collect()));
        assert!(same(&clean, &normalize(clean.clone()).expect("ok")));
    }

    #[test]
    fn normalize_keeps_what_needs_nothing() {
        let v = to_val(&json!({"items": [{"a": 1}, {"b": "x"}], "n": 2.5}));
        let n = normalize(v.clone()).expect("ok");
        assert!(same(&v, &n));
        let v = to_val(&json!({"items": [{"a": 1}, {"b": 2.0}], "keep": [1]}));
        let n = normalize(v.clone()).expect("ok");
        assert!(!same(&v, &n));
        // the part that needed nothing is shared
        assert!(same(
            field(&v, "keep").expect("keep"),
            field(&n, "keep").expect("keep")
        ));
        assert_eq!(
            to_json(&n),
            json!({"items": [{"a": 1}, {"b": 2}], "keep": [1]})
        );
    }
}
