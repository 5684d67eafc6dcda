//! Polls: each flow with a `poll` trigger has a task that reads the rows of
//! its collection changed since the snapshot kept in the store, one page at a
//! time (SEMANTICS.md section 6), and starts a run per row.
//!
//! A page's runs are recorded with the snapshot's advance in one store
//! transaction, from the snapshot's number as it was read: a page starts its
//! runs once, across restarts and processes sharing the store (the process
//! that advances first wins; the other records nothing). A poll that fails
//! (the database refuses) leaves the snapshot as it was and tries again at
//! the next interval.

use crate::{Polled, Server, rfc3339};
use serde_json::{Value, json};
use sluice_connect::sql::{Connections, poll_page};
use sluice_connect::triggers::PollSnapshot;
use sluice_engine::RunRequest;
use sluice_store::{Store, now_micros};
use std::time::Duration;

/// Poll `p` until the task is aborted.
pub(crate) async fn run<S: Store>(server: Server<S>, p: Polled) {
    let interval = Duration::from_millis(p.options.interval_ms);
    loop {
        match poll_once(&server, &p).await {
            // More pages of this round, read at once.
            Ok(true) if !p.options.single_page_per_interval => continue,
            Ok(_) => {}
            Err(e) => eprintln!("sluice: poll of flow `{}`: {e}", p.flow.id),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Read one page and start its runs: whether the round has more pages.
async fn poll_once<S: Store>(server: &Server<S>, p: &Polled) -> Result<bool, String> {
    let engine = server.engine();
    let store = engine.store();
    let id = &p.flow.id;
    let (seq, stored) = store.poll_snapshot(id).await.map_err(|e| e.to_string())?;
    let mut snap = match stored {
        Some(v) => serde_json::from_value::<PollSnapshot>(v)
            .map_err(|e| format!("the stored snapshot is unreadable: {e}"))?,
        None => PollSnapshot::start(&p.options),
    };
    let page = snap.page;
    let connections = Connections {
        declared: &p.flow.connections,
        pools: engine.pools(),
    };
    let rows = poll_page(&connections, &p.options, &snap)
        .await
        .map_err(|e| e.message)?;
    let ats: Vec<(Value, Value)> = rows.iter().map(|r| r.at.clone()).collect();
    let more = snap.advance(&ats, p.options.page_size);
    let polled_at = rfc3339(now_micros());
    let mut news = Vec::with_capacity(rows.len());
    let mut started = Vec::with_capacity(rows.len());
    for r in rows {
        let row = Value::Object(r.row);
        let req = RunRequest {
            trigger: json!({
                "type": "poll",
                "collection": p.options.collection,
                "page": page,
                "polledAt": polled_at,
                "row": row,
            }),
            input: Some(row),
            accountability: json!({"trigger": "poll"}),
            event: None,
        };
        let (new, s) = engine
            .prepare(&p.flow, req)
            .await
            .map_err(|e| e.to_string())?;
        news.push(new);
        started.push(s);
    }
    let snapshot = serde_json::to_value(&snap).map_err(|e| e.to_string())?;
    let advanced = store
        .advance_poll(id, seq, &snapshot, &news)
        .await
        .map_err(|e| e.to_string())?;
    if !advanced {
        // Another process read the same page and recorded its runs.
        return Ok(false);
    }
    for s in started {
        drop(server.drive(p.flow.clone(), s));
    }
    Ok(more)
}
