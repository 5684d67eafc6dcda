//! Reading records back from rows, the same for every database: a row is
//! read through [`Get`], which each store's row type implements.

use crate::values::{Hash, Loaded};
use crate::{
    ApiToken, AuditEntry, RunDetail, RunStatus, RunSummary, StepRecord, StoreError, Wait, WaitKind,
};
use serde_json::Value;
use sluice_expr::Val;
use sqlx::Row;

/// The columns a record is read from.
pub(crate) trait Get {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    /// A text column borrowed from the row (not copied).
    fn opt_str(&self, col: &str) -> Result<Option<&str>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

macro_rules! get_for {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, col: &str) -> Result<String, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_str(&self, col: &str) -> Result<Option<&str>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn flag(&self, col: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(col)?)
            }
        }
    };
}

get_for!(sqlx::sqlite::SqliteRow);
get_for!(sqlx::postgres::PgRow);

/// A stored JSON document.
pub(crate) fn parse_json(s: Option<String>, what: &str) -> Result<Option<Value>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))))
        .transpose()
}

fn doc(r: &impl Get, col: &str, what: &str) -> Result<Option<Value>, StoreError> {
    parse_json(r.opt_text(col)?, what)
}

/// A run's value: its JSON text, or the large value it names (read
/// straight into a jq value).
fn value(r: &impl Get, col: &str, what: &str, values: &Loaded) -> Result<Option<Val>, StoreError> {
    r.opt_text(col)?.map(|t| values.val(t, what)).transpose()
}

/// The columns of a run's row and of its steps' rows that hold its values.
const RUN_VALUES: [&str; 4] = ["trigger", "input", "state", "output"];
const STEP_VALUES: [&str; 4] = ["options", "input", "result", "output"];

/// The large values a run's row and its steps' rows name.
pub(crate) fn roots<R: Get>(run: &R, steps: &[R]) -> Result<Vec<Hash>, StoreError> {
    let mut texts = Vec::new();
    for col in RUN_VALUES {
        texts.push(run.opt_str(col)?);
    }
    for s in steps {
        for col in STEP_VALUES {
            texts.push(s.opt_str(col)?);
        }
    }
    Ok(crate::values::roots(texts))
}

/// A stored status.
pub(crate) fn status(s: &str) -> Result<RunStatus, StoreError> {
    RunStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown run status `{s}`")))
}

pub(crate) fn summary(row: &impl Get) -> Result<RunSummary, StoreError> {
    Ok(RunSummary {
        id: row.text("id")?,
        flow_id: row.text("flow_id")?,
        status: status(&row.text("status")?)?,
        started_at: row.int("started_at")?,
        ended_at: row.opt_int("ended_at")?,
        steps: row.int("steps")?,
        error: row.opt_text("error")?,
        error_step: row.opt_text("error_step")?,
    })
}

/// A page of notifications and the reader's count of unread ones, which
/// every row carries (`unseen`): no row means nothing to count (the reader
/// sees nothing, or nothing unread when only unread ones were asked for).
pub(crate) fn notification_page<R: Get>(
    rows: &[R],
) -> Result<(Vec<(crate::Notification, bool)>, u64), StoreError> {
    let list = rows.iter().map(notification).collect::<Result<_, _>>()?;
    let unseen = match rows.first() {
        Some(row) => row.int("unseen")?,
        None => 0,
    };
    Ok((list, u64::try_from(unseen).unwrap_or(0)))
}

/// A notification and whether its reader has read it (the columns of
/// `notifications`).
pub(crate) fn notification(row: &impl Get) -> Result<(crate::Notification, bool), StoreError> {
    Ok((
        crate::Notification {
            id: row.text("id")?,
            at: row.int("at")?,
            user: row.opt_text("recipient")?,
            role: row.opt_text("recipient_role")?,
            subject: row.text("subject")?,
            message: row.text("message")?,
            run_id: row.opt_text("run_id")?,
            step_key: row.opt_text("step_key")?,
        },
        row.int("seen")? != 0,
    ))
}

/// A flow's counts (the columns of `flow_stats`).
pub(crate) fn flow_stats(row: &impl Get) -> Result<crate::FlowStats, StoreError> {
    Ok(crate::FlowStats {
        flow_id: row.text("flow_id")?,
        runs: row.int("runs")?,
        failures: row.int("failures")?,
    })
}

/// A run from its row (the columns of `SELECT_RUN`) and its steps' rows.
pub(crate) fn detail(
    row: &impl Get,
    steps: Vec<StepRecord>,
    values: &Loaded,
) -> Result<RunDetail, StoreError> {
    Ok(RunDetail {
        summary: summary(row)?,
        trigger: value(row, "trigger", "run trigger", values)?.unwrap_or_default(),
        input: value(row, "input", "run input", values)?.unwrap_or_default(),
        state: value(row, "state", "run state", values)?.unwrap_or_default(),
        output: value(row, "output", "run output", values)?,
        next_step: row.opt_text("next_step")?,
        flow_version: row.opt_text("flow_version")?,
        accountability: doc(row, "accountability", "run accountability")?.unwrap_or(Value::Null),
        parent: row.opt_text("parent_run")?.zip(row.opt_int("item")?),
        woken: woken(row)?,
        steps,
    })
}

/// What woke the run, while no step was recorded since.
fn woken(row: &impl Get) -> Result<Option<crate::Woken>, StoreError> {
    if row.opt_int("woken_at_steps")? != Some(row.int("steps")?) {
        return Ok(None);
    }
    let Some(mut w) = doc(row, "woken", "what woke the run")? else {
        return Ok(None);
    };
    let kind = w["kind"].as_str().and_then(WaitKind::parse);
    match (kind, w["since"].as_i64()) {
        (Some(kind), Some(since)) => Ok(Some(crate::Woken {
            kind,
            since,
            event: w.get_mut("event").map(Value::take).filter(|e| !e.is_null()),
        })),
        _ => Err(StoreError::Corrupt(format!("what woke a run: {w}"))),
    }
}

/// The text kept of what woke a run from `wait`.
pub(crate) fn woken_text(wait: &Wait, event: Option<&Value>) -> String {
    crate::scrub::json(&serde_json::json!({
        "kind": wait.kind.as_str(),
        "since": wait.since,
        "event": event,
    }))
}

/// A run from its row, its steps' rows and the large values they name.
pub(crate) fn run_detail<R: Get>(
    run: &R,
    steps: &[R],
    values: &Loaded,
) -> Result<RunDetail, StoreError> {
    let steps = steps
        .iter()
        .map(|r| step(r, values))
        .collect::<Result<Vec<_>, StoreError>>()?;
    detail(run, steps, values)
}

pub(crate) fn step(r: &impl Get, values: &Loaded) -> Result<StepRecord, StoreError> {
    Ok(StepRecord {
        run_id: r.text("run_id")?,
        seq: r.int("seq")?,
        step_key: r.text("step_key")?,
        kind: r.text("kind")?,
        ok: r.flag("ok")?,
        options: value(r, "options", "step options", values)?.unwrap_or_default(),
        input: value(r, "input", "step input", values)?.unwrap_or_default(),
        result: value(r, "result", "step result", values)?,
        output: value(r, "output", "step output", values)?,
        error: r.opt_text("error")?,
        blame: r.opt_text("blame")?,
        logs: doc(r, "logs", "step logs")?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        started_at: r.int("started_at")?,
        ended_at: r.int("ended_at")?,
    })
}

pub(crate) fn wait(row: &impl Get) -> Result<Wait, StoreError> {
    let kind = row.text("kind")?;
    Ok(Wait {
        run_id: row.text("run_id")?,
        flow_id: row.text("flow_id")?,
        step_key: row.text("step_key")?,
        kind: WaitKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown wait kind `{kind}`")))?,
        wake_at: row.opt_int("wake_at")?,
        event_type: row.opt_text("event_type")?,
        source: row.opt_text("event_source")?,
        correlation: doc(row, "correlation", "wait correlation")?.unwrap_or(Value::Null),
        since: row.int("since")?,
    })
}

/// A process sharing the store, with the count of runs it holds (`runs`).
pub(crate) fn process(r: &impl Get) -> Result<crate::Process, StoreError> {
    Ok(crate::Process {
        id: r.text("id")?,
        host: r.text("host")?,
        pid: r.int("pid")?,
        version: r.text("version")?,
        started_at: r.int("started_at")?,
        alive_until: r.int("alive_until")?,
        runs: r.int("runs")?,
    })
}

pub(crate) fn token(r: &impl Get) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        name: r.text("name")?,
        role: r.text("role")?,
        hash: r.text("hash")?,
        created_at: r.int("created_at")?,
        revoked_at: r.opt_int("revoked_at")?,
        expires_at: r.opt_int("expires_at")?,
    })
}

pub(crate) fn audit(r: &impl Get) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at: r.int("at")?,
        user: r.opt_text("user")?,
        role: r.opt_text("role")?,
        ip: r.opt_text("ip")?,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        details: doc(r, "details", "audit details")?.unwrap_or(Value::Null),
    })
}

/// A stored answer or snapshot (never absent).
pub(crate) fn required(text: String, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}
