//! Checking options against their typed struct: unknown options (from its
//! JSON Schema) with the closest known name, then types and required
//! options (through serde), a templated value passed over; and the rule for
//! collection and field names.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Check options against `T`: unknown options (from its JSON Schema), then
/// types and required options (through serde). A value that is a template
/// cannot be checked before it runs and is passed over.
pub fn check_options<T: DeserializeOwned + JsonSchema + 'static>(
    options: &Value,
) -> Vec<OptionIssue> {
    let mut issues = Vec::new();
    let props = option_names::<T>();
    let mut known = options.clone();
    if let Value::Object(map) = &mut known {
        let unknown: Vec<String> = map.keys().filter(|k| !props.contains(k)).cloned().collect();
        for k in unknown {
            let refs: Vec<&str> = props.iter().map(String::as_str).collect();
            let help = match sluice_model::closest(&k, &refs) {
                Some(c) => format!("did you mean `{c}`? Options: {}", refs.join(", ")),
                None if refs.is_empty() => "this type takes no options".to_owned(),
                None => format!("options: {}", refs.join(", ")),
            };
            issues.push(OptionIssue {
                path: vec![PathSeg::Key(k.clone())],
                message: format!("unknown option `{k}`"),
                at_key: true,
                help: Some(help),
            });
            map.remove(&k);
        }
    } else if !options.is_null() {
        issues.push(OptionIssue {
            path: vec![],
            message: "options must be a mapping".into(),
            at_key: false,
            help: None,
        });
        return issues;
    }
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(&known) {
        let path: Vec<PathSeg> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                _ => None,
            })
            .collect();
        let templated = value_at(&known, &path)
            .and_then(Value::as_str)
            .is_some_and(sluice_expr::template::has_template);
        if !templated {
            issues.push(OptionIssue {
                path,
                message: e.inner().to_string(),
                at_key: false,
                help: None,
            });
        }
    }
    issues
}

/// The names of `T`'s options, from its JSON Schema, made once per type in
/// a process (a schema costs as much as reading a small flow, and a folder
/// of flows checks the options of the same types again and again).
fn option_names<T: JsonSchema + 'static>() -> Arc<[String]> {
    static NAMES: LazyLock<Mutex<HashMap<TypeId, Arc<[String]>>>> = LazyLock::new(Mutex::default);
    let id = TypeId::of::<T>();
    if let Some(names) = NAMES.lock().ok().and_then(|m| m.get(&id).cloned()) {
        return names;
    }
    let schema = schemars::schema_for!(T);
    let names: Arc<[String]> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    if let Ok(mut m) = NAMES.lock() {
        m.insert(id, names.clone());
    }
    names
}

fn value_at<'v>(v: &'v Value, path: &[PathSeg]) -> Option<&'v Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            PathSeg::Key(k) => cur.get(k)?,
            PathSeg::Index(i) => cur.get(i)?,
        };
    }
    Some(cur)
}

/// The JSON Schema of an options struct, as a value.
pub(crate) fn options_schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// Let every option of `schema` also be a templated string, as flow files may
/// write any value as a template.
pub(crate) fn templatable(mut schema: Value) -> Value {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut() {
            let original = std::mem::take(p);
            *p = serde_json::json!({"anyOf": [original, {"type": "string", "pattern": "\\{\\{"}]});
        }
    }
    schema
}

/// Whether `s` is a plain name for a collection or field: a letter or `_`,
/// then letters, digits or `_`, at most 63 characters (so that it can be
/// quoted into SQL, or a path, without question).
pub fn valid_ident(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 63
        && matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}
