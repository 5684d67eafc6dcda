//! Input and output mappings (SEMANTICS.md section 4, Zeebe's JSONPath
//! mappings): ordered `{source, target}` pairs of mapping paths.
//!
//! * [`extract`] builds a new document from an empty object (input mappings);
//! * [`merge_into`] writes into an existing document (output mappings), each
//!   value replacing whatever was at its target.
//!
//! A source that matches nothing is an error naming its path, and so is a
//! result whose root is not an object (as in Zeebe: state data built by
//! mappings is a document of named values).

use crate::data::to_json;
use crate::path::MappingPath;
use crate::val::{Obj, Val};
use crate::value::to_val;
use serde_json::Value;

/// One `{source, target}` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Where to read.
    pub source: MappingPath,
    /// Where to write.
    pub target: MappingPath,
}

/// Mappings that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No mappings were given.
    #[error("mappings must be neither missing nor empty")]
    Empty,
    /// A source path matched nothing.
    #[error("no data found for source `{0}`")]
    NoData(String),
    /// The result is not an object.
    #[error("the mappings result in {0}, not an object")]
    NotAnObject(&'static str),
}

/// Build a new document from `source` through `mappings`.
pub fn extract_val(source: &Val, mappings: &[Mapping]) -> Result<Val, MappingError> {
    merge_into_val(source, Val::obj(Obj::default()), mappings)
}

/// Write `source`'s values into `target` through `mappings` (the values
/// shared, not copied).
pub fn merge_into_val(
    source: &Val,
    mut target: Val,
    mappings: &[Mapping],
) -> Result<Val, MappingError> {
    if mappings.is_empty() {
        return Err(MappingError::Empty);
    }
    for m in mappings {
        let v = m
            .source
            .get(source)
            .ok_or_else(|| MappingError::NoData(m.source.text().to_owned()))?;
        m.target.set(&mut target, v.clone());
    }
    if !matches!(target, Val::Obj(_)) {
        return Err(MappingError::NotAnObject(crate::data::kind(&target)));
    }
    Ok(target)
}

/// [`extract_val`] of `serde_json` values.
pub fn extract(source: &Value, mappings: &[Mapping]) -> Result<Value, MappingError> {
    extract_val(&to_val(source), mappings).map(|v| to_json(&v))
}

/// [`merge_into_val`] of `serde_json` values.
pub fn merge_into(
    source: &Value,
    target: Value,
    mappings: &[Mapping],
) -> Result<Value, MappingError> {
    merge_into_val(&to_val(source), to_val(&target), mappings).map(|v| to_json(&v))
}
