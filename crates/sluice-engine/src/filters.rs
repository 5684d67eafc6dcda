//! Serverless Workflow data filters (SEMANTICS.md section 2): a filter that
//! selects nothing keeps the data as it was; an event meets the state data
//! through an `eventDataFilter`.

use crate::flow_object::FlowObject;
use sluice_expr::{Limits, Program, Val, merge_val};
use sluice_model::EventDataFilter;
use std::borrow::Cow;

pub(crate) fn eval(
    p: &Program,
    input: &Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Option<Val>, String> {
    p.eval_val(input, fo, limits).map_err(|e| e.to_string())
}

/// Merge an event into `target` through an `eventDataFilter` (SEMANTICS.md
/// section 2): `data` selects from the event's `data` (or the whole event
/// when `dataOnly` is false; selecting nothing keeps it whole), merged at
/// `toStateData` unless `useData` is false.
pub(crate) fn apply_event(
    f: &EventDataFilter,
    data_only: bool,
    event: &Val,
    mut target: Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Val, String> {
    if !f.use_data {
        return Ok(target);
    }
    let payload = if data_only {
        sluice_expr::data::field(event, "data")
            .cloned()
            .unwrap_or(Val::Null)
    } else {
        event.clone()
    };
    let selected = filter_or_keep_owned(f.data.as_ref(), payload, fo, limits)
        .map_err(|m| format!("eventDataFilter.data: {m}"))?;
    match &f.to_state_data {
        None => {
            merge_val(&mut target, &selected, ".").map_err(|e| format!("eventDataFilter: {e}"))?
        }
        Some((text, path)) => {
            let mut at = path.get(&target).cloned().unwrap_or(Val::Null);
            merge_val(&mut at, &selected, text).map_err(|e| format!("eventDataFilter: {e}"))?;
            path.set(&mut target, at);
        }
    }
    Ok(target)
}

/// Apply a filter; one that selects nothing (no output, or `null`) leaves the data as it was.
pub(crate) fn filter_or_keep<'d>(
    p: Option<&Program>,
    data: &'d Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Cow<'d, Val>, String> {
    match p {
        None => Ok(Cow::Borrowed(data)),
        Some(p) => match eval(p, data, fo, limits)? {
            None | Some(Val::Null) => Ok(Cow::Borrowed(data)),
            Some(v) => Ok(Cow::Owned(v)),
        },
    }
}

/// [`filter_or_keep`] of a value the caller gives up.
pub(crate) fn filter_or_keep_owned(
    p: Option<&Program>,
    data: Val,
    fo: &FlowObject,
    limits: &Limits,
) -> Result<Val, String> {
    match filter_or_keep(p, &data, fo, limits)? {
        Cow::Owned(v) => Ok(v),
        Cow::Borrowed(_) => Ok(data),
    }
}
