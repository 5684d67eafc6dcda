//! Saving a flow file from the API (`PUT /api/flows/{id}`, admins; the UI's
//! editor): the text is checked as `sluice check` checks it, written into
//! the flows folder in place of the flow's file (a new flow gets
//! `ID.yaml`), and the folder is loaded again. A flow with problems is
//! refused with its diagnostics and nothing is written; a save the folder
//! then refuses (an id taken by another file, a webhook path used twice)
//! puts the file back as it was. `?new=true` saves only a flow not served
//! yet (a new flow never overwrites another's file), `?version=V` only over
//! the version the editor read (a save made meanwhile is never lost). Files
//! stay the source of truth: the flows served are always those of the
//! folder.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::Server;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use sluice_store::Store;
use std::path::PathBuf;

/// The largest flow file checked or saved: 8 MiB.
const MOST_BYTES: usize = 8 << 20;

/// `PUT /api/flows/{id}`: the body is the flow file's text.
pub(crate) async fn save<S: Store>(
    State(s): State<Server<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let q = crate::hooks::query_object(q.as_deref());
    // `new=true`: only a flow that is not served yet; `version=V`: only
    // over the version the editor started from (else another's save is lost).
    let only_new = match crate::params::param(&q, "new")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`new` is true or false, not `{other}`"
            )));
        }
    };
    let over = crate::params::param(&q, "version")?.map(str::to_owned);
    let text = flow_text(&s, body).await?;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || id.starts_with('.')
    {
        return Err(ApiError::bad_request(format!(
            "`{id}` cannot be a flow's id here: letters, digits, `-`, `_` and `.` (not first)"
        )));
    }
    let _one_at_a_time = s.inner.saving.lock().await;
    let set = s.flows();
    let existing = set.files.get(&id).cloned();
    let served = set.flows.get(&id).map(|f| f.version.clone());
    if only_new && served.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_exists",
            format!("a flow `{id}` is served already; edit it, or give the new flow another id"),
        ));
    }
    if let Some(v) = over
        && served.as_deref() != Some(v.as_str())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_changed",
            format!(
                "flow `{id}` changed since version {v} was read (it is now {}); read it again and redo the change",
                served.as_deref().unwrap_or("gone")
            ),
        ));
    }
    let path = existing
        .clone()
        .unwrap_or_else(|| new_file(&s.inner.dir, &id));
    let name = path.display().to_string();
    let flow = sluice_model::load(&name, &text, s.inner.registry.as_ref()).map_err(|d| {
        let problems = crate::flows::LoadFailure::Invalid(d).to_json()["problems"].take();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flow",
            "the flow has problems; the file is unchanged",
        )
        .with_details(json!({"problems": problems}))
    })?;
    if flow.id != id {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flow",
            format!(
                "the file's id is `{}`, not `{id}`: a flow is saved under its own id; the file is unchanged",
                flow.id
            ),
        )
        .with_details(json!({"problems": [{"line": 1, "column": 1, "message": format!("the id `{}` is not `{id}`", flow.id), "help": null}]})));
    }
    let before = match &existing {
        Some(p) => Some(std::fs::read(p).map_err(|e| io(&name, &e))?),
        None => None,
    };
    write(&path, text.as_bytes()).map_err(|e| io(&name, &e))?;
    let reloaded = s.reload();
    let failures = match reloaded {
        Ok(_) => None,
        Err(failures) => {
            // Put the folder back as it was.
            let undone = match &before {
                Some(old) => write(&path, old),
                None => std::fs::remove_file(&path),
            };
            if let Err(e) = undone {
                sluice_action::warn!(
                    "sluice: the refused save of `{name}` could not be undone: {e}"
                );
            }
            Some(failures)
        }
    };
    let details =
        json!({"file": name, "created": existing.is_none(), "refused": failures.is_some()});
    s.audit(&caller, "flow.save", Some(&id), details).await;
    if let Some(failures) = failures {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_flows",
            "the flows folder refuses the flow with it; the file is unchanged",
        )
        .with_details(json!({
            "files": failures.iter().map(crate::flows::LoadFailure::to_json).collect::<Vec<_>>()
        })));
    }
    Ok(axum::Json(json!({
        "id": id,
        "file": name,
        "version": flow.version,
        "created": existing.is_none(),
    })))
}

/// A flow file's text sent in a request's body (to check or to save).
pub(crate) async fn flow_text<S: Store>(s: &Server<S>, body: Body) -> Result<String, ApiError> {
    let bytes = crate::server::body_bytes(body, MOST_BYTES, s.timeouts().body, || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a flow file is at most {MOST_BYTES} bytes"),
        )
    })
    .await?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("the flow file is not UTF-8 text"))
}

/// Where a new flow's file goes.
fn new_file(dir: &std::path::Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.yaml"))
}

/// Write a file whole: into a hidden file beside it, then renamed over it,
/// so that a reload (or a crash) never reads half of it.
fn write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("flow");
    let temp = path.with_file_name(format!(".{file}.saving"));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

fn io(name: &str, e: &std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "flow_not_written",
        format!("cannot write the flow file `{name}`: {e}"),
    )
}
