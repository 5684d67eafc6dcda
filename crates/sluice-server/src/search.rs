//! Runs found by their data (`GET /api/runs?search=` or `?field=&value=`):
//! the runs the listing's filters select, newest first, read one by one
//! and kept when their data matches, until a page is full or the search's
//! budget (runs read, time) is spent. The answer says where the next
//! search continues.
//!
//! A run's data, as a search sees it: `{id, flowId, status, trigger, input,
//! state, output, error, errorStep}`. A jq predicate (`search`) keeps a
//! run when its first output is neither `false` nor `null`; it runs with
//! the limits of a flow's expressions and a shorter deadline, on a thread
//! of its own so that no search holds up the server's other answers.

use crate::error::ApiError;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sluice_expr::data::Json;
use sluice_expr::{Limits, MapScope, Program};
use sluice_store::{RunDetail, RunFilter, RunSummary, Store};
use std::time::{Duration, Instant};

/// The most runs one search reads.
const MOST_READ: usize = 5_000;
/// The longest one search reads for.
const MOST_TIME: Duration = Duration::from_secs(2);
/// Runs read from the store at a time.
const BATCH: u32 = 200;

/// What a search looks for.
pub(crate) enum Search {
    /// A jq predicate over a run's data.
    Jq(Program),
    /// The value at a path of a run's data (`trigger.body.email`), equal to
    /// this text or to this JSON.
    Field { path: Vec<String>, value: String },
}

impl Search {
    /// The search a listing's query asks for, if any.
    pub(crate) fn of(
        search: Option<&str>,
        field: Option<&str>,
        value: Option<&str>,
    ) -> Result<Option<Self>, ApiError> {
        match (search, field, value) {
            (None, None, None) => Ok(None),
            (Some(code), None, None) => {
                let program = Program::compile(code, &[]).map_err(|e| {
                    let at = e.issues.first().map(|i| i.span.clone()).unwrap_or(0..0);
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "bad_search",
                        format!("the search does not compile: {e}"),
                    )
                    .with_details(json!({"start": at.start, "end": at.end}))
                })?;
                Ok(Some(Self::Jq(program)))
            }
            (None, Some(field), Some(value)) if !field.is_empty() => Ok(Some(Self::Field {
                path: field.split('.').map(str::to_owned).collect(),
                value: value.to_owned(),
            })),
            (None, Some(_), Some(_)) => Err(ApiError::bad_request("`field` is empty")),
            (None, _, _) => Err(ApiError::bad_request(
                "`field` and `value` go together: a run matches when the value at the field's path (such as `trigger.body.email`) is the value",
            )),
            (Some(_), _, _) => Err(ApiError::bad_request(
                "give either `search` (a jq predicate) or `field` and `value`, not both",
            )),
        }
    }

    /// Whether a run's data matches.
    fn matches(&self, data: &Value) -> Result<bool, ApiError> {
        match self {
            Self::Field { path, value } => {
                let mut at = data;
                for seg in path {
                    at = match at {
                        Value::Object(m) => m.get(seg.as_str()),
                        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    }
                    .unwrap_or(&Value::Null);
                }
                Ok(match at {
                    Value::String(s) => s == value,
                    Value::Null => false,
                    other => serde_json::from_str::<Value>(value).is_ok_and(|v| &v == other),
                })
            }
            Self::Jq(program) => {
                let limits = Limits {
                    timeout: Duration::from_secs(1),
                    ..Limits::default()
                };
                let out = program
                    .first(sluice_expr::to_val(data), &MapScope::default(), &limits)
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "bad_search",
                            format!("the search failed on run `{}`: {e}", data["id"]),
                        )
                    })?;
                Ok(out.is_some_and(|v| {
                    sluice_expr::from_val(&v)
                        .is_ok_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
                }))
            }
        }
    }
}

/// A run's data, as a search sees it.
fn data(d: RunDetail) -> Value {
    json!({
        "id": d.summary.id,
        "flowId": d.summary.flow_id,
        "status": d.summary.status.as_str(),
        "trigger": Json(&d.trigger),
        "input": Json(&d.input),
        "state": Json(&d.state),
        "output": d.output.as_ref().map(Json),
        "error": d.summary.error,
        "errorStep": d.summary.error_step,
    })
}

/// What a search found.
pub(crate) struct Found {
    /// The matching runs, newest first.
    pub runs: Vec<RunSummary>,
    /// The last run read, when the search stopped before the end of the
    /// listing: the next search starts after it.
    pub read_to: Option<RunSummary>,
    /// How many runs it read.
    pub read: usize,
}

/// Up to `filter.limit` runs that `filter` selects and `search` matches.
pub(crate) async fn find<S: Store>(
    store: &S,
    mut filter: RunFilter,
    search: Search,
) -> Result<Found, ApiError> {
    let want = if filter.limit == 0 {
        usize::MAX
    } else {
        filter.limit as usize
    };
    filter.limit = BATCH;
    let search = std::sync::Arc::new(search);
    let began = Instant::now();
    let mut found = Found {
        runs: Vec::new(),
        read_to: None,
        read: 0,
    };
    loop {
        let page = store.list_runs(&filter).await?;
        let Some(last) = page.last() else {
            return Ok(found);
        };
        filter.after = Some((last.started_at, last.id.clone()));
        let full = page.len() == BATCH as usize;
        for summary in page {
            let Some(detail) = store.get_run(&summary.id).await? else {
                continue;
            };
            let s = search.clone();
            let hit = tokio::task::spawn_blocking(move || s.matches(&data(detail)))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("the search stopped: {e}"),
                    )
                })??;
            found.read += 1;
            let done = found.read >= MOST_READ || began.elapsed() >= MOST_TIME;
            if hit {
                found.runs.push(summary.clone());
            }
            if found.runs.len() >= want || done {
                found.read_to = Some(summary);
                return Ok(found);
            }
        }
        if !full {
            return Ok(found);
        }
    }
}
