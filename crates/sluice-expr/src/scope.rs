//! Where an expression finds its input and its variables: [`Input`] (JSON
//! made a jq value only when a program needs one) and [`Scope`].

use crate::val::Val;
use crate::value::to_val;
use std::collections::BTreeMap;

/// Where an expression finds the values of its variables (names without `$`).
pub trait Scope {
    /// The value of variable `name`, or `None` when it has none (it is then `null`).
    fn get(&self, name: &str) -> Option<Val>;

    /// The value of variable `name` as JSON, when the scope holds it as
    /// JSON (the direct evaluator then reads it without converting it);
    /// `None` sends the program to [`Scope::get`].
    fn get_json(&self, _name: &str) -> Option<&serde_json::Value> {
        None
    }
}

/// A program's input, `.`: JSON made a jq value only the first time a
/// program that needs one runs on it (a direct program, such as the
/// `.name` of a template `{{ .name }}`, reads the JSON), or a jq value made
/// JSON only the first time something asks for it as JSON.
pub struct Input<'a> {
    json: Option<&'a serde_json::Value>,
    /// The jq value made JSON, once something asked for it.
    made_json: std::sync::OnceLock<serde_json::Value>,
    val: std::sync::OnceLock<Val>,
}

impl<'a> Input<'a> {
    /// An input that is JSON.
    pub fn json(json: &'a serde_json::Value) -> Self {
        Self {
            json: Some(json),
            made_json: std::sync::OnceLock::new(),
            val: std::sync::OnceLock::new(),
        }
    }

    /// An input that is a jq value.
    pub fn val(val: Val) -> Self {
        Self {
            json: None,
            made_json: std::sync::OnceLock::new(),
            val: std::sync::OnceLock::from(val),
        }
    }

    /// The input as JSON, if it is at hand as JSON (nothing is converted).
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        self.json.or_else(|| self.made_json.get())
    }

    /// The input as JSON, converted the first time it is asked for.
    pub fn to_json(&self) -> &serde_json::Value {
        match self.json {
            Some(j) => j,
            None => self
                .made_json
                .get_or_init(|| self.val.get().map(crate::data::to_json).unwrap_or_default()),
        }
    }

    /// The input as jq value, converted the first time it is asked for.
    pub fn as_val(&self) -> &Val {
        self.val
            .get_or_init(|| self.json.map(to_val).unwrap_or(Val::Null))
    }
}

/// A scope of named values, for tests and simple callers.
#[derive(Clone, Debug, Default)]
pub struct MapScope(pub BTreeMap<String, Val>);

impl MapScope {
    /// Build from a JSON object: each key becomes a variable.
    pub fn from_json(v: serde_json::Value) -> Self {
        let mut m = BTreeMap::new();
        if let serde_json::Value::Object(o) = v {
            for (k, v) in o {
                m.insert(k, to_val(&v));
            }
        }
        Self(m)
    }

    /// The variable names.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Scope for MapScope {
    fn get(&self, name: &str) -> Option<Val> {
        self.0.get(name).cloned()
    }
}
