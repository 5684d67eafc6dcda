//! Durable execution in the engine: sleeps, retries and event waits suspend a
//! run in the store and wake it (after a restart too); `flow` steps start
//! other flows' runs exactly once per attempt.

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_action::{Action, ActionCx, ActionError, Blame, Outcome, Registry};
use sluice_engine::{Engine, RunRequest};
use sluice_expr::data::to_json;
use sluice_model::Flow;
use sluice_store::{RunStatus, SqliteStore, Store, WaitKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::Flows;

/// A step that fails as an outside system would until its `succeedAt`-th
/// attempt, noting the idempotency key of every attempt.
struct Flaky(Arc<Mutex<Vec<String>>>);

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct FlakyOptions {
    succeed_at: u32,
}

impl Action for Flaky {
    const KIND: &'static str = "flaky";
    type Options = FlakyOptions;

    async fn run<'a>(
        &'a self,
        cx: ActionCx<'a>,
        options: FlakyOptions,
    ) -> Result<Outcome, ActionError> {
        self.0.lock().unwrap().push(cx.idempotency_key.to_owned());
        if cx.attempt < options.succeed_at {
            return Err(ActionError::external(format!(
                "unavailable (attempt {})",
                cx.attempt
            )));
        }
        Ok(Outcome::value(json!({"attempt": cx.attempt})))
    }
}

/// A step that is not pure and looks at what the store holds of its run
/// when it runs.
struct Probe(Arc<SqliteStore>);

#[derive(Deserialize, schemars::JsonSchema)]
struct NoOptions {}

impl Action for Probe {
    const KIND: &'static str = "probe";
    type Options = NoOptions;

    async fn run<'a>(&'a self, cx: ActionCx<'a>, _: NoOptions) -> Result<Outcome, ActionError> {
        let seen = match self.0.get_run(cx.run_id).await {
            Ok(Some(d)) => json!({
                "status": d.summary.status.as_str(),
                "steps": d.steps.iter().map(|s| s.step_key.clone()).collect::<Vec<_>>(),
                "next": d.next_step,
                "state": to_json(&d.state),
            }),
            Ok(None) => json!("no run"),
            Err(e) => json!(e.to_string()),
        };
        Ok(Outcome::value(json!({ "seen": seen })))
    }
}

/// A step that says it began, then holds until released.
struct Gate {
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Action for Gate {
    const KIND: &'static str = "gate";
    type Options = NoOptions;

    async fn run<'a>(&'a self, _: ActionCx<'a>, _: NoOptions) -> Result<Outcome, ActionError> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok(Outcome::value(json!({"passed": true})))
    }
}

struct Setup {
    store: Arc<SqliteStore>,
    registry: Arc<Registry>,
    keys: Arc<Mutex<Vec<String>>>,
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Setup {
    async fn new() -> Self {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        let mut r = sluice_sql::registry();
        r.add(Flaky(keys.clone()));
        r.add(Probe(store.clone()));
        let (entered, release) = (Arc::default(), Arc::default());
        r.add(Gate {
            entered: Arc::clone(&entered),
            release: Arc::clone(&release),
        });
        Self {
            store,
            registry: Arc::new(r),
            keys,
            entered,
            release,
        }
    }

    fn engine(&self) -> Engine<SqliteStore> {
        Engine::new(self.store.clone(), self.registry.clone())
    }

    fn flow(&self, yaml: &str) -> Flow {
        match sluice_model::load("t.yaml", yaml, self.registry.as_ref()) {
            Ok(f) => f,
            Err(d) => panic!("{d:?}"),
        }
    }
}

fn input(v: Value) -> RunRequest {
    RunRequest {
        input: Some(sluice_expr::data::into_val(v)),
        ..RunRequest::default()
    }
}

/// Pure steps (transform, condition, log, throw) are recorded with the
/// run's next write; a run `run` begins is recorded with its first write;
/// and every step that is not pure runs only once the store holds the run
/// and every step before it.
#[tokio::test]
async fn pure_steps_are_recorded_with_the_next_write_before_any_other_step() {
    let s = Setup::new().await;
    let flow = s.flow(
        "id: p\nsteps:\n  - {key: a, type: transform, options: {value: {a: 1}}}\n  - {key: b, type: condition, options: {filter: '.a == 1'}}\n  - {key: look, type: probe, options: {}}\n  - {key: c, type: log, options: {message: hi}}\n  - {key: d, type: transform, options: {value: {d: 4}}}\n",
    );
    let r = s
        .engine()
        .run(&flow, input(json!({"in": 0})))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    let out = r.output_json().unwrap();
    assert_eq!(
        out["seen"],
        json!({"status": "running", "steps": ["a", "b"], "next": "look", "state": {"in": 0, "a": 1}})
    );
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    let keys: Vec<_> = d.steps.iter().map(|s| s.step_key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "look", "c", "d"]);
    assert_eq!(d.summary.steps, 5);
    assert_eq!(d.steps[3].logs, ["hi"]);
    assert_eq!(
        d.output.as_ref().map(sluice_expr::data::to_json),
        Some(out.clone())
    );
    assert_eq!(to_json(&d.state), out);
    assert_eq!(to_json(&d.input), json!({"in": 0}));
    let seqs: Vec<_> = d.steps.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);

    // A first step that is not pure sees its run recorded, with no step.
    let flow = s.flow("id: q\nsteps:\n  - {key: look, type: probe, options: {}}\n");
    let r = s.engine().run(&flow, input(json!({"x": 1}))).await.unwrap();
    assert_eq!(
        r.output_json().unwrap()["seen"],
        json!({"status": "running", "steps": [], "next": "look", "state": {"x": 1}})
    );

    // Pure steps that fail: every record is kept, with the failure path.
    let flow = s.flow(
        "id: t\nsteps:\n  - {key: a, type: transform, options: {value: {a: 1}}}\n  - key: b\n    type: throw\n    options: {message: nope}\n    reject: c\n  - {key: c, type: transform, options: {value: {c: 3}}}\n  - {key: e, type: throw, options: {message: 'stop {{ .c }}'}}\n",
    );
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    assert_ne!(r.status, RunStatus::Succeeded);
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    let keys: Vec<_> = d
        .steps
        .iter()
        .map(|s| (s.step_key.as_str(), s.ok))
        .collect();
    assert_eq!(keys, [("a", true), ("b", false), ("c", true), ("e", false)]);
    assert_eq!(d.summary.status, r.status);
    assert_eq!(d.summary.error_step.as_deref(), Some("e"));
    assert!(d.summary.error.unwrap().contains("stop 3"));

    // A run `start` recorded first: its pure steps are recorded at its end.
    let flow = s.flow("id: u\nsteps:\n  - {key: a, type: transform, options: {value: {a: 1}}}\n  - {key: b, type: transform, options: {value: {b: 2}}}\n");
    let e = s.engine();
    let started = e.start(&flow, input(json!({}))).await.unwrap();
    let id = started.run_id().to_owned();
    let d = s.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!((d.summary.status, d.steps.len()), (RunStatus::Running, 0));
    let r = e.finish(&flow, started).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(s.store.get_run(&id).await.unwrap().unwrap().steps.len(), 2);
}

/// A run cancelled while one of its steps is under way finishes that step
/// and stops before the next; the cancel of a run this engine does not
/// drive only marks the store.
#[tokio::test]
async fn a_cancel_stops_a_run_before_its_next_step() {
    let s = Setup::new().await;
    let flow = s.flow(
        "id: c\nsteps:\n  - {key: hold, type: gate, options: {}}\n  - {key: after, type: transform, options: {value: {after: 1}}}\n",
    );
    let engine = s.engine();
    let run = tokio::spawn({
        let (engine, flow) = (engine.clone(), flow.clone());
        async move { engine.run(&flow, input(json!({}))).await }
    });
    s.entered.notified().await;
    let id = s
        .store
        .list_runs(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap()
        .id;
    engine.cancel(&id).await.unwrap();
    s.release.notify_one();
    let r = run.await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.failure.unwrap().message, "cancelled before step `after`");
    let d = s.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Cancelled);
    let keys: Vec<_> = d.steps.iter().map(|s| s.step_key.as_str()).collect();
    assert_eq!(keys, ["hold"]);

    // A later run of the same engine is not stopped by that cancel.
    s.release.notify_one();
    let r = engine.run(&flow, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_cancel_between_a_runs_record_and_its_drive_stops_it_before_its_first_step() {
    let s = Setup::new().await;
    let flow =
        s.flow("id: c\nsteps:\n  - {key: first, type: transform, options: {value: {a: 1}}}\n");
    let engine = s.engine();
    let started = engine.start(&flow, input(json!({}))).await.unwrap();
    let id = started.run_id().to_owned();
    engine.cancel(&id).await.unwrap();
    let r = engine.finish(&flow, started).await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(r.failure.unwrap().message, "cancelled before step `first`");
    let d = s.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Cancelled);
    assert!(d.steps.is_empty(), "{:?}", d.steps);
}

#[tokio::test]
async fn a_sleep_suspends_the_run_and_wakes_it() {
    let s = Setup::new().await;
    let flow = s.flow("id: nap\nsteps:\n  - {key: nap, type: sleep, options: {ms: 120}}\n  - {key: after, type: transform, options: {value: {done: true}}}\n");
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    let keys: Vec<_> = d.steps.iter().map(|s| s.step_key.as_str()).collect();
    assert_eq!(keys, ["nap", "after"], "the sleep is one record");
    let nap = &d.steps[0];
    assert!(nap.ended_at - nap.started_at >= 120_000, "{nap:?}");
    assert!(s.store.list_waits(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_sleeping_run_stays_suspended_across_a_stop_and_wakes_on_time() {
    let s = Setup::new().await;
    let flow = s.flow("id: nap\nsteps:\n  - {key: nap, type: sleep, options: {ms: 400}}\n  - {key: after, type: transform, options: {value: {done: true}}}\n");
    let first = s.engine();
    let started = first.start(&flow, input(json!({"a": 1}))).await.unwrap();
    let id = started.run_id().to_owned();
    let driving = {
        let (e, f) = (first.clone(), flow.clone());
        tokio::spawn(async move { e.finish(&f, started).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The process stops: the run is left waiting, its wait in the store.
    first.stop_waiting();
    let r = driving.await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Waiting);
    let waits = s.store.list_waits(None).await.unwrap();
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].kind, WaitKind::Sleep);
    let due = waits[0].wake_at.unwrap();
    // A new process recovers it: it sleeps only what was left.
    let second = s.engine();
    let before = sluice_store::now_micros();
    let r = second.recover(&flow, &id).await.unwrap();
    let after = sluice_store::now_micros();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.output_json(), Some(json!({"a": 1, "done": true})));
    assert!(after >= due, "it woke on time");
    assert!(
        after - before < 390_000,
        "it slept only the rest of its time"
    );
    let d = s.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 2);
}

#[tokio::test]
async fn retry_attempts_again_with_a_new_key_each_time() {
    let s = Setup::new().await;
    let flow = s.flow("id: r\nsteps:\n  - key: call\n    type: flaky\n    options: {succeedAt: 3}\n    retry: {attempts: 3, delayMs: 20, factor: 2}\n");
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(r.output_json(), Some(json!({"attempt": 3})));
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    let oks: Vec<_> = d.steps.iter().map(|s| s.ok).collect();
    assert_eq!(oks, [false, false, true], "every attempt is recorded");
    assert_eq!(d.steps[0].error.as_deref(), Some("unavailable (attempt 1)"));
    // At least the backoffs (20 ms, then 40 ms, at least half with jitter).
    assert!(d.steps[1].started_at - d.steps[0].ended_at >= 10_000);
    assert!(d.steps[2].started_at - d.steps[1].ended_at >= 20_000);
    let keys = s.keys.lock().unwrap().clone();
    let id = &r.run_id;
    assert_eq!(
        keys,
        [
            format!("{id}/call/0/1"),
            format!("{id}/call/0/2"),
            format!("{id}/call/0/3")
        ]
    );
}

#[tokio::test]
async fn retry_gives_up_after_its_attempts_and_only_on_the_failures_it_names() {
    let s = Setup::new().await;
    let flow = s.flow("id: r\nsteps:\n  - {key: call, type: flaky, options: {succeedAt: 9}, retry: {attempts: 2, delayMs: 1}}\n");
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(
        r.failure.unwrap().message,
        "step `call` (flaky) failed: unavailable (attempt 2)"
    );
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 2);

    // A `throw` is the flow's own failure: not retried unless named.
    let flow = s.flow("id: t\nsteps:\n  - {key: stop, type: throw, options: {message: stop}, retry: {attempts: 5, delayMs: 1}}\n");
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 1);
    let flow = s.flow("id: t\nsteps:\n  - {key: stop, type: throw, options: {message: stop}, retry: {attempts: 3, delayMs: 1, on: [flow]}}\n");
    let r = s.engine().run(&flow, input(json!({}))).await.unwrap();
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 3);
}

#[tokio::test]
async fn a_retry_backoff_survives_a_stop() {
    let s = Setup::new().await;
    let flow = s.flow("id: r\nsteps:\n  - {key: call, type: flaky, options: {succeedAt: 2}, retry: {attempts: 2, delayMs: 300, jitter: false}}\n");
    let first = s.engine();
    let started = first.start(&flow, input(json!({}))).await.unwrap();
    let id = started.run_id().to_owned();
    let driving = {
        let (e, f) = (first.clone(), flow.clone());
        tokio::spawn(async move { e.finish(&f, started).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.stop_waiting();
    assert_eq!(driving.await.unwrap().unwrap().status, RunStatus::Waiting);
    let waits = s.store.list_waits(None).await.unwrap();
    assert_eq!(waits[0].kind, WaitKind::Retry);
    let r = s.engine().recover(&flow, &id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(
        s.keys.lock().unwrap().clone(),
        [format!("{id}/call/0/1"), format!("{id}/call/0/2")],
        "the attempt after the restart is the second"
    );
}

#[tokio::test]
async fn a_step_rerun_after_a_crash_keeps_its_attempts_key() {
    // A run whose first step was under way when the process died: nothing
    // of it is recorded, so it runs again as the same (first) attempt, with
    // the key the lost attempt had.
    let s = Setup::new().await;
    let flow = s.flow("id: r\nsteps:\n  - {key: call, type: flaky, options: {succeedAt: 1}}\n");
    let engine = s.engine();
    let started = engine.start(&flow, input(json!({}))).await.unwrap();
    let id = started.run_id().to_owned();
    drop(started);
    let r = engine.recover(&flow, &id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(s.keys.lock().unwrap().clone(), [format!("{id}/call/0/1")]);
}

#[tokio::test]
async fn a_run_recovered_three_times_with_no_step_between_is_failed() {
    // The run's pure step was under way when the process died, twice
    // already (each recovery counted, no step recorded since): the third
    // recovery fails the run instead of running the step again.
    let s = Setup::new().await;
    let flow =
        s.flow("id: r\nsteps:\n  - {key: t, type: transform, options: {value: {ran: true}}}\n");
    let engine = s.engine();
    let started = engine.start(&flow, input(json!({}))).await.unwrap();
    let id = started.run_id().to_owned();
    drop(started);
    for n in 1..sluice_engine::MAX_RECOVERIES {
        assert_eq!(s.store.count_recovery(&id).await.unwrap(), n);
    }
    let r = engine.recover(&flow, &id).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    let f = r.failure.unwrap();
    assert!(
        f.message.contains("when the server stopped 3 times"),
        "{}",
        f.message
    );
    assert_eq!((f.step.as_str(), f.blame), ("t", Blame::Bug));
    let d = s.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Failed);
    assert!(d.steps.is_empty(), "the step did not run");
    // A recovery after progress (or a first one) runs the step.
    let again = engine.start(&flow, input(json!({}))).await.unwrap();
    let id = again.run_id().to_owned();
    drop(again);
    assert_eq!(
        engine.recover(&flow, &id).await.unwrap().status,
        RunStatus::Succeeded
    );
}

const WAITER: &str = r#"id: pay
steps:
  - key: paid
    type: wait
    options:
      eventType: order.paid
      correlation: {orderid: "{{ .id }}"}
    eventDataFilter: {data: .amount, toStateData: .paid}
  - {key: thanks, type: transform, options: {value: {note: "paid {{ $paid.data.amount }}"}}}
"#;

#[tokio::test]
async fn a_wait_suspends_until_its_event_and_merges_it() {
    let s = Setup::new().await;
    let flow = s.flow(WAITER);
    let engine = s.engine();
    let r = engine
        .run(&flow, input(json!({"id": "o-7"})))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Waiting);
    let wait = r.wait.clone().unwrap();
    assert_eq!(wait.kind, WaitKind::Event);
    assert_eq!(wait.correlation, json!({"orderid": "o-7"}));
    assert_eq!(wait.wake_at, None);
    let found = s.store.list_waits(Some("order.paid")).await.unwrap();
    assert_eq!(found, vec![wait.clone()]);
    let event = json!({"specversion": "1.0", "id": "e1", "source": "/pay", "type": "order.paid", "orderid": "o-7", "data": {"amount": 12}});
    assert!(sluice_action::core_ops::event_matches(
        &event,
        wait.event_type.as_deref(),
        wait.source.as_deref(),
        &wait.correlation
    ));
    let other = json!({"type": "order.paid", "orderid": "o-8"});
    assert!(!sluice_action::core_ops::event_matches(
        &other,
        wait.event_type.as_deref(),
        None,
        &wait.correlation
    ));
    let claimed = s
        .store
        .claim_wait(&r.run_id, Some(&event))
        .await
        .unwrap()
        .unwrap();
    let done = engine
        .continue_wait(&flow, claimed, Some(event.clone()))
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        done.output_json(),
        Some(json!({"id": "o-7", "paid": 12, "note": "paid 12"}))
    );
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.steps[0].result.as_ref().map(to_json), Some(event));
}

#[tokio::test]
async fn an_event_claimed_before_the_process_stopped_is_not_lost() {
    // The event's claim is committed, then the process stops before the
    // wait step is recorded: at the restart the run continues with that
    // event (it does not wait again for one that was already taken).
    let s = Setup::new().await;
    let flow = s.flow(WAITER);
    let engine = s.engine();
    let r = engine
        .run(&flow, input(json!({"id": "o-9"})))
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Waiting);
    let event = json!({"specversion": "1.0", "id": "e9", "source": "/pay", "type": "order.paid", "orderid": "o-9", "data": {"amount": 5}});
    let claimed = s.store.claim_wait(&r.run_id, Some(&event)).await.unwrap();
    assert!(claimed.is_some());
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Running);
    assert_eq!(
        d.woken.as_ref().and_then(|w| w.event.clone()),
        Some(event.clone())
    );
    let done = s.engine().recover(&flow, &r.run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.output_json(),
        Some(json!({"id": "o-9", "paid": 5, "note": "paid 5"}))
    );
    // Once a step is recorded, the wake is spent.
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(d.woken, None);
    assert_eq!(d.steps[0].result.as_ref().map(to_json), Some(event));
}

#[tokio::test]
async fn a_wait_that_times_out_takes_the_failure_path() {
    let s = Setup::new().await;
    let flow = s.flow("id: t\nsteps:\n  - {key: w, type: wait, options: {eventType: x, timeoutMs: 150}, reject: late}\n  - {key: ok, type: transform, options: {value: on time}, resolve: null}\n  - {key: late, type: transform, options: {value: \"late: {{ $w.error }}\"}}\nunmappedResults: replace\n");
    let engine = s.engine();
    let r = engine.run(&flow, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Waiting);
    // The server (or a restart) waits for the timeout.
    let r = engine.recover(&flow, &r.run_id).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(
        r.output_json(),
        Some(json!(
            "late: no event that matches arrived within the timeout of step `w`"
        ))
    );
    let d = s.store.get_run(&r.run_id).await.unwrap().unwrap();
    assert!(d.steps[0].ended_at - d.steps[0].started_at >= 150_000);
}

#[tokio::test]
async fn a_flow_step_runs_another_flow_once_per_attempt() {
    let s = Setup::new().await;
    let child = s.flow("id: double\ntrigger: {type: flow}\nunmappedResults: replace\nsteps:\n  - {key: d, type: transform, options: {value: {n: \"{{ .n * 2 }}\", from: \"{{ $trigger.flow }}\"}}}\n");
    let hook = s.flow("id: hook\ntrigger: {type: webhook, path: h}\nsteps:\n  - {key: d, type: log, options: {message: x}}\n");
    let mut flows = HashMap::new();
    flows.insert("double".to_owned(), Arc::new(child));
    flows.insert("hook".to_owned(), Arc::new(hook));
    let engine = s.engine();
    engine.set_flows(Arc::new(Flows(flows)));

    let parent = s.flow("id: parent\nsteps:\n  - {key: call, type: flow, options: {flow: double, input: {n: \"{{ .n }}\"}}, actionDataFilter: {toStateData: .doubled}}\n");
    let r = engine.run(&parent, input(json!({"n": 21}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.output_json(),
        Some(json!({"n": 21, "doubled": {"n": 42, "from": "parent"}}))
    );
    let child_id = format!("{}-call-1", r.run_id);
    let c = s.store.get_run(&child_id).await.unwrap().unwrap();
    assert_eq!(c.summary.flow_id, "double");
    assert_eq!(to_json(&c.trigger)["run"], json!(r.run_id));
    assert_eq!(to_json(&c.trigger)["depth"], json!(1));

    // Run again after a "crash" at that step: the run it started is found.
    let again = s.engine();
    let flows2 = Flows(
        [(
            "double".to_owned(),
            Arc::new(s.flow("id: double\ntrigger: {type: flow}\nsteps:\n  - {key: d, type: throw, options: {message: must not run}}\n")),
        )]
        .into(),
    );
    again.set_flows(Arc::new(flows2));
    let started = again.start(&parent, input(json!({"n": 1}))).await.unwrap();
    let pid = started.run_id().to_owned();
    let existing = sluice_store::NewRun {
        id: format!("{pid}-call-1"),
        flow_id: "double".into(),
        trigger: sluice_expr::data::into_val(json!({})),
        input: sluice_expr::data::into_val(json!({})),
        next_step: None,
        started_at: sluice_store::now_micros(),
        flow_version: None,
        accountability: json!(null),
        parent: None,
    };
    s.store.create_run(&existing).await.unwrap();
    s.store
        .update_run(
            &existing.id,
            &sluice_store::RunUpdate::ended(
                sluice_expr::data::into_val(json!({})),
                Some(sluice_expr::data::into_val(json!({"n": 2}))),
                None,
                None,
            ),
        )
        .await
        .unwrap();
    let r = again.finish(&parent, started).await.unwrap();
    assert_eq!(r.output_json(), Some(json!({"n": 1, "doubled": {"n": 2}})));

    // Not waiting: the step goes on with the run's id.
    let nowait = s.flow("id: p2\nunmappedResults: replace\nsteps:\n  - {key: go, type: flow, options: {flow: double, wait: false}}\n");
    let r = engine.run(&nowait, input(json!({"n": 5}))).await.unwrap();
    let child_id = format!("{}-go-1", r.run_id);
    assert_eq!(r.output_json(), Some(json!({"runId": child_id})));
    let mut status = RunStatus::Running;
    for _ in 0..100 {
        status = s
            .store
            .get_run(&child_id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .status;
        if status.is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, RunStatus::Succeeded);

    // Unknown flows, flows with another trigger, and endless nesting fail.
    for (target, expected) in [
        ("nope", "there is no flow `nope` to start"),
        ("hook", "flow `hook` has a `webhook` trigger"),
    ] {
        let f = s.flow(&format!(
            "id: p3\nsteps:\n  - {{key: go, type: flow, options: {{flow: {target}}}}}\n"
        ));
        let r = engine.run(&f, input(json!({}))).await.unwrap();
        assert_eq!(r.status, RunStatus::Failed);
        assert!(r.failure.unwrap().message.contains(expected));
    }
    let selfish = Arc::new(s.flow("id: again\ntrigger: {type: flow}\nsteps:\n  - {key: go, type: flow, options: {flow: again}}\n"));
    engine.set_flows(Arc::new(Flows(
        [("again".to_owned(), selfish.clone())].into(),
    )));
    let r = engine.run(&selfish, input(json!({}))).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert!(
        r.failure.unwrap().message.contains("32 deep"),
        "nesting stops"
    );
}

#[tokio::test]
async fn a_run_without_a_next_step_is_failed_at_recovery_saying_why() {
    // Left running with no step to continue from: a run that had fanned
    // out (its items' runs go on by themselves), or the run of an import
    // whose process stopped (the import resumes when run again).
    let s = Setup::new().await;
    let flow =
        s.flow("id: left\nsteps:\n  - {key: a, type: transform, options: {value: {a: 1}}}\n");
    for (source, says) in [
        ("import", "run the import again"),
        ("webhook", "each item's run was recovered on its own"),
    ] {
        let id = format!("left-{source}-{}", std::process::id());
        s.store
            .create_run(&sluice_store::NewRun {
                id: id.clone(),
                flow_id: "left".into(),
                trigger: sluice_expr::data::into_val(json!({})),
                input: sluice_expr::data::into_val(json!({})),
                next_step: None,
                started_at: sluice_store::now_micros(),
                flow_version: None,
                accountability: json!({ "source": source }),
                parent: None,
            })
            .await
            .unwrap();
        let r = s.engine().recover(&flow, &id).await.unwrap();
        assert_eq!(r.status, RunStatus::Failed);
        let message = r.failure.unwrap().message;
        assert!(message.contains(says), "{source}: {message}");
        let d = s.store.get_run(&id).await.unwrap().unwrap();
        assert_eq!(d.summary.status, RunStatus::Failed);
        assert_eq!(d.summary.error.as_deref(), Some(message.as_str()));
    }
}
