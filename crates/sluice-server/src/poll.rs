//! Polls: each flow with a `poll` trigger has a task that reads, through
//! the connector that registered the trigger (the SQL connector's
//! [`PollSource`](sluice_action::poll::PollSource)), the rows changed since
//! the snapshot kept in the store, one page at a time (SEMANTICS.md
//! section 6), and starts a run per row.
//!
//! A page's runs are recorded with the snapshot's advance in one store
//! transaction, from the snapshot's number as it was read: a page starts its
//! runs once, across restarts and processes sharing the store (the process
//! that advances first wins; the other records nothing). A poll that fails
//! (the database refuses) leaves the snapshot as it was and tries again at
//! the next interval.

use crate::flows::Polled;
use crate::server::{Server, rfc3339};
use serde_json::{Value, json};
use sluice_engine::RunRequest;
use sluice_store::{Store, now_micros};

/// Poll `p` until the task is aborted.
pub(crate) async fn run<S: Store>(server: Server<S>, p: Polled) {
    let interval = p.source.interval(&p.flow.trigger.options);
    loop {
        // One process polls a source at a time (processes sharing the
        // store): the others check again at the next interval, and take
        // the poll over once its owner stopped.
        match server.engine().store().own_poll(&p.flow.id).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => {
                sluice_action::warn!("sluice: poll of flow `{}`: {e}", p.flow.id);
                tokio::time::sleep(interval).await;
                continue;
            }
        }
        match poll_once(&server, &p).await {
            // More pages of this round, read at once.
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => sluice_action::warn!("sluice: poll of flow `{}`: {e}", p.flow.id),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Read one page and start its runs: whether to read the next page at once.
async fn poll_once<S: Store>(server: &Server<S>, p: &Polled) -> Result<bool, String> {
    let engine = server.engine();
    let store = engine.store();
    let id = &p.flow.id;
    let (seq, stored) = store.poll_snapshot(id).await.map_err(|e| e.to_string())?;
    let page = p
        .source
        .page(&p.flow.connections, &p.flow.trigger.options, stored)
        .await
        .map_err(|e| e.message)?;
    let polled_at = rfc3339(now_micros());
    let mut news = Vec::with_capacity(page.rows.len());
    let mut started = Vec::with_capacity(page.rows.len());
    for row in page.rows {
        let row = Value::Object(row);
        let mut trigger = serde_json::Map::new();
        trigger.insert("type".into(), json!("poll"));
        trigger.extend(page.trigger.clone());
        trigger.insert("polledAt".into(), json!(polled_at));
        trigger.insert("row".into(), row.clone());
        let req = RunRequest {
            trigger: sluice_expr::data::into_val(Value::Object(trigger)),
            input: Some(sluice_expr::data::into_val(row)),
            accountability: crate::auth::Caller::default().accountability("poll", json!({})),
            event: None,
        };
        let (new, s) = engine
            .prepare(&p.flow, req)
            .await
            .map_err(|e| e.to_string())?;
        news.push(new);
        started.push(s);
    }
    let advanced = store
        .advance_poll(id, seq, &page.snapshot, &news)
        .await
        .map_err(|e| e.to_string())?;
    if !advanced {
        // Another process read the same page and recorded its runs.
        return Ok(false);
    }
    for s in started {
        drop(server.drive(p.flow.clone(), s));
    }
    Ok(page.again)
}
