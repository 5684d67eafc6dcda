//! The `manual` trigger: a flow a person starts (from the UI's form, `POST
//! /api/flows/ID/runs` or `sluice run`). It may declare the fields of its
//! input, as Directus's manual trigger does, and a text to confirm before a
//! run starts:
//!
//! ```yaml
//! trigger:
//!   type: manual
//!   confirm: "Send the invoice to this customer?"
//!   fields:
//!     - {name: customer, type: string, required: true, description: "the customer's id"}
//!     - {name: amount, type: number, default: 10}
//! ```
//!
//! With fields, a run's input is an object of those fields only: each is
//! checked against its type, a missing one takes its default, and a
//! required one without a default must be given. Without fields any input
//! is taken, as before.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;

/// Options of the `manual` trigger.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {
    /// The fields of a run's input (a form in the UI); none: any input.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// A question the UI asks before it starts a run.
    #[serde(default)]
    pub confirm: Option<String>,
}

/// One field of a manual flow's input.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Its key in the input.
    pub name: String,
    /// What it holds (`string` unless said).
    #[serde(default, rename = "type")]
    pub kind: FieldType,
    /// Whether a run needs it (a default counts as given).
    #[serde(default)]
    pub required: bool,
    /// Its value when not given.
    #[serde(default)]
    pub default: Option<Value>,
    /// What it is, shown beside it.
    #[serde(default)]
    pub description: Option<String>,
    /// Its label in the form (its name unless said).
    #[serde(default)]
    pub label: Option<String>,
}

/// What a field holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Text.
    #[default]
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// Any JSON value (an object or an array, for example).
    Json,
}

impl FieldType {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Json => "json",
        }
    }

    /// Whether `v` is one.
    fn holds(self, v: &Value) -> bool {
        match self {
            Self::String => v.is_string(),
            Self::Number => v.is_number(),
            Self::Integer => v.is_i64() || v.is_u64(),
            Self::Boolean => v.is_boolean(),
            Self::Json => true,
        }
    }
}

/// A field of an input that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ManualTrigger {
    /// The input a run starts with: `input` checked against the fields,
    /// defaults added; every problem found when it does not fit.
    pub fn input(&self, input: Value) -> Result<Value, Vec<FieldProblem>> {
        if self.fields.is_empty() {
            return Ok(input);
        }
        let mut given = match input {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(vec![FieldProblem {
                    field: String::new(),
                    message: format!(
                        "the input is an object of the flow's fields, not {}",
                        kind_of(&other)
                    ),
                }]);
            }
        };
        let mut problems = Vec::new();
        let mut out = Map::new();
        for f in &self.fields {
            match given.remove(&f.name).or_else(|| f.default.clone()) {
                Some(v) if f.kind.holds(&v) => {
                    out.insert(f.name.clone(), v);
                }
                Some(v) => problems.push(FieldProblem {
                    field: f.name.clone(),
                    message: format!("is a {}, not {}", f.kind.as_str(), kind_of(&v)),
                }),
                None if f.required => problems.push(FieldProblem {
                    field: f.name.clone(),
                    message: "is required".into(),
                }),
                None => {}
            }
        }
        for name in given.keys() {
            problems.push(FieldProblem {
                field: name.clone(),
                message: format!(
                    "is not a field of this flow (its fields: {})",
                    self.fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if problems.is_empty() {
            Ok(Value::Object(out))
        } else {
            Err(problems)
        }
    }
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The options' type, then each field's: names unique and defaults of
/// their type.
pub(crate) fn check_manual(options: &Value) -> Vec<OptionIssue> {
    let mut issues = crate::check::check_options::<ManualTrigger>(options);
    if !issues.is_empty() {
        return issues;
    }
    let Ok(t) = serde_json::from_value::<ManualTrigger>(options.clone()) else {
        return issues;
    };
    let at = |i: usize, key: &str| {
        vec![
            PathSeg::Key("fields".into()),
            PathSeg::Index(i),
            PathSeg::Key(key.into()),
        ]
    };
    for (i, f) in t.fields.iter().enumerate() {
        if f.name.is_empty() {
            issues.push(OptionIssue {
                path: at(i, "name"),
                message: "a field needs a name".into(),
                at_key: false,
                help: None,
            });
        } else if t.fields[..i].iter().any(|g| g.name == f.name) {
            issues.push(OptionIssue {
                path: at(i, "name"),
                message: format!("a second field `{}`", f.name),
                at_key: false,
                help: None,
            });
        }
        if let Some(d) = &f.default
            && !f.kind.holds(d)
        {
            issues.push(OptionIssue {
                path: at(i, "default"),
                message: format!("the default of `{}` is not a {}", f.name, f.kind.as_str()),
                at_key: false,
                help: None,
            });
        }
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(fields: Value) -> ManualTrigger {
        serde_json::from_value(json!({"fields": fields})).expect("fields")
    }

    #[test]
    fn an_input_is_checked_against_the_fields_and_takes_their_defaults() {
        let t = trigger(json!([
            {"name": "customer", "required": true},
            {"name": "amount", "type": "number", "default": 10},
            {"name": "copies", "type": "integer"},
            {"name": "urgent", "type": "boolean"},
            {"name": "extra", "type": "json"}
        ]));
        assert_eq!(
            t.input(json!({"customer": "c1", "extra": [1]})),
            Ok(json!({"customer": "c1", "amount": 10, "extra": [1]}))
        );
        let wrong = t
            .input(json!({"amount": "ten", "copies": 1.5, "urgent": "yes", "other": 1}))
            .unwrap_err();
        let fields: Vec<_> = wrong.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["customer", "amount", "copies", "urgent", "other"]);
        assert_eq!(wrong[0].message, "is required");
        assert_eq!(wrong[1].message, "is a number, not a string");
        assert!(t.input(json!([1])).is_err());
        // Without fields, anything goes.
        assert_eq!(trigger(json!([])).input(json!([1])), Ok(json!([1])));
    }

    #[test]
    fn fields_are_checked_when_the_flow_loads() {
        let issues = check_manual(&json!({"fields": [
            {"name": "a", "type": "number", "default": "x"},
            {"name": "a"},
            {"name": "b", "type": "date"}
        ]}));
        assert!(!issues.is_empty());
        let issues = check_manual(&json!({"fields": [
            {"name": "a", "type": "number", "default": "x"},
            {"name": "a"}
        ]}));
        let messages: Vec<_> = issues.iter().map(|i| i.message.as_str()).collect();
        assert_eq!(
            messages,
            ["the default of `a` is not a number", "a second field `a`"]
        );
        assert!(check_manual(&json!({"confirm": "Sure?", "fields": [{"name": "a"}]})).is_empty());
    }
}
