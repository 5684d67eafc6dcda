//! Serverless Workflow data filters (SEMANTICS.md section 2): a filter that
//! selects nothing keeps the data as it was; an event meets the state data
//! through an `eventDataFilter`.

use crate::flow_object::FlowObject;
use serde_json::Value;
use sluice_expr::{Limits, Program, merge};
use sluice_model::EventDataFilter;
use std::borrow::Cow;

pub(crate) fn eval(
    p: &Program,
    input: &Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Option<Value>, String> {
    p.eval_json(input, fo, limits).map_err(|e| e.to_string())
}

/// Merge an event into `target` through an `eventDataFilter` (SEMANTICS.md
/// section 2): `data` selects from the event's `data` (or the whole event
/// when `dataOnly` is false; selecting nothing keeps it whole), merged at
/// `toStateData` unless `useData` is false.
pub(crate) fn apply_event(
    f: &EventDataFilter,
    data_only: bool,
    event: &Value,
    mut target: Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Value, String> {
    if !f.use_data {
        return Ok(target);
    }
    let payload = if data_only {
        event.get("data").cloned().unwrap_or(Value::Null)
    } else {
        event.clone()
    };
    let selected = filter_or_keep_owned(f.data.as_ref(), payload, fo, limits)
        .map_err(|m| format!("eventDataFilter.data: {m}"))?;
    match &f.to_state_data {
        None => merge(&mut target, selected, ".").map_err(|e| format!("eventDataFilter: {e}"))?,
        Some((text, path)) => {
            let mut at = path.get(&target).cloned().unwrap_or(Value::Null);
            merge(&mut at, selected, text).map_err(|e| format!("eventDataFilter: {e}"))?;
            path.set(&mut target, at);
        }
    }
    Ok(target)
}

/// Apply a filter; one that selects nothing (no output, or `null`) leaves the data as it was.
pub(crate) fn filter_or_keep<'d>(
    p: Option<&Program>,
    data: &'d Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Cow<'d, Value>, String> {
    match p {
        None => Ok(Cow::Borrowed(data)),
        Some(p) => match eval(p, data, fo, limits)? {
            None | Some(Value::Null) => Ok(Cow::Borrowed(data)),
            Some(v) => Ok(Cow::Owned(v)),
        },
    }
}

/// [`filter_or_keep`] of a value the caller gives up.
pub(crate) fn filter_or_keep_owned(
    p: Option<&Program>,
    data: Value,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Value, String> {
    match filter_or_keep(p, &data, fo, limits)? {
        Cow::Owned(v) => Ok(v),
        Cow::Borrowed(_) => Ok(data),
    }
}
