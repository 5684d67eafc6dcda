//! Schedules: each flow with a `schedule` trigger has a task that sleeps
//! until its next fire, then claims that fire and records its run in one
//! store transaction (so that no fire runs twice, and no claimed fire is
//! without its run, across crashes, restarts and processes sharing the
//! store), and drives the run.
//!
//! Missed fires (times that passed while no server ran) follow the trigger's
//! `missed` option: `skip`, or `runOnce` for the latest one, at start-up. A
//! schedule that never fired before has missed nothing.

use crate::flows::Scheduled;
use crate::server::{Server, rfc3339};
use serde_json::json;
use sluice_action::triggers::MissedFires;
use sluice_engine::RunRequest;
use sluice_store::{Store, now_micros};
use std::time::Duration;

/// The longest single sleep: wall-clock changes are noticed within it.
const MAX_NAP: Duration = Duration::from_secs(30);

/// Run `s` until the task is aborted.
pub(crate) async fn run<S: Store>(server: Server<S>, s: Scheduled) {
    let store = server.engine().store().clone();
    let now = now_micros();
    if s.missed == MissedFires::RunOnce
        && let Ok(Some(last)) = store.last_fire(&s.flow.id).await
        && let Some(latest) = s.schedule.latest_until(now)
        && latest > last
    {
        fire(&server, &s, latest, true).await;
    }
    let mut after = now;
    while let Some(next) = s.schedule.next_after(after) {
        loop {
            let wait = next - now_micros();
            if wait <= 0 {
                break;
            }
            let nap = Duration::from_micros(wait as u64).min(MAX_NAP);
            tokio::time::sleep(nap).await;
        }
        fire(&server, &s, next, false).await;
        after = next;
    }
}

/// Claim the fire at `at` with its run and, if this process got it, drive
/// the run.
async fn fire<S: Store>(server: &Server<S>, s: &Scheduled, at: i64, missed: bool) {
    let engine = server.engine();
    let trigger = json!({
        "type": "schedule",
        "scheduledAt": rfc3339(at),
        "firedAt": rfc3339(now_micros()),
        "missed": missed,
    });
    let req = RunRequest {
        trigger: sluice_expr::data::into_val(trigger),
        input: None,
        accountability: crate::auth::Caller::default().accountability("schedule", json!({})),
        event: None,
    };
    let claimed = match engine.prepare(&s.flow, req).await {
        Ok((new, started)) => match engine.store().claim_fire(&s.flow.id, at, &new).await {
            Ok(true) => Ok(Some(started)),
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match claimed {
        Ok(Some(started)) => drop(server.drive(s.flow.clone(), started)),
        Ok(None) => {}
        Err(e) => sluice_action::warn!(
            "sluice: schedule of flow `{}`: cannot start the run of {}: {e}",
            s.flow.id,
            rfc3339(at)
        ),
    }
}
