//! Sluice's expression language: pure functions over JSON values, no IO.
//!
//! * [`jq`]: jq programs through jaq, compiled once and run many times with the
//!   flow object bound as variables (`$trigger`, `$last`, `$<key>`), under a
//!   deadline and a stack guard so that no expression can hang or crash a run;
//! * [`template`]: the `{{ }}` templates of option values;
//! * [`path`]: JSONPath reading (RFC 9535) and the mapping subset with its writer;
//! * [`merge()`]: merging a result into the state data.
//!
//! Nothing here reads the environment, files or the network, and no input
//! makes it panic.

mod fast;
pub mod jq;
pub mod mapping;
pub mod merge;
pub mod path;
pub mod template;
pub mod value;

pub use jaq_json::Val;
pub use jq::{CompileError, CompileIssue, Limits, Program};
pub use mapping::{Mapping, MappingError};
pub use merge::{MergeError, merge};
pub use path::{MappingPath, PathError, Query};
pub use template::{PathSeg, Template, TemplateError, TemplateValue};
pub use value::{as_from_jq, from_val, to_val};

use std::collections::BTreeMap;
use std::time::Duration;

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
/// `.name` of a template `{{ .name }}`, reads the JSON).
pub struct Input<'a> {
    json: Option<&'a serde_json::Value>,
    val: std::sync::OnceLock<Val>,
}

impl<'a> Input<'a> {
    /// An input that is JSON.
    pub fn json(json: &'a serde_json::Value) -> Self {
        Self {
            json: Some(json),
            val: std::sync::OnceLock::new(),
        }
    }

    /// An input that is a jq value.
    pub fn val(val: Val) -> Self {
        Self {
            json: None,
            val: std::sync::OnceLock::from(val),
        }
    }

    /// The input as JSON, if it is JSON.
    pub fn as_json(&self) -> Option<&'a serde_json::Value> {
        self.json
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

/// An expression that failed while running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The program raised an error.
    #[error("jq expression `{code}` failed: {message}")]
    Runtime {
        /// The program text.
        code: String,
        /// The error it raised.
        message: String,
    },
    /// The program ran out of time.
    #[error("jq expression `{code}` ran longer than its limit of {timeout:?}")]
    Timeout {
        /// The program text.
        code: String,
        /// The limit.
        timeout: Duration,
    },
    /// The program recursed too deeply.
    #[error("jq expression `{code}` recursed too deeply")]
    TooDeep {
        /// The program text.
        code: String,
    },
    /// The program produced too many outputs.
    #[error("jq expression `{code}` produced more than {max} outputs")]
    TooManyOutputs {
        /// The program text.
        code: String,
        /// The limit.
        max: usize,
    },
    /// A template's program produced more than one output.
    #[error(
        "jq expression `{code}` produced more than one value where one is expected (collect them with [ ... ])"
    )]
    MultipleOutputs {
        /// The program text.
        code: String,
    },
}
