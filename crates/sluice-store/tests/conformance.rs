//! The store conformance suite: every backend must pass it unchanged.

use serde_json::{Value, json};
use sluice_expr::Val;
use sluice_store::{
    NewRun, RunFilter, RunStatus, RunUpdate, SqliteStore, StepRecord, Store, StoreError, Wait,
    WaitKind, new_run_id, now_micros,
};

/// A JSON value as runs hold it.
fn v(j: Value) -> Val {
    sluice_expr::to_val(&j)
}

/// A run's value as JSON, exactly as it was read.
fn j(v: &Val) -> Value {
    sluice_expr::data::to_json(v)
}

fn new_run(flow: &str) -> NewRun {
    NewRun {
        id: new_run_id(),
        flow_id: flow.into(),
        trigger: v(json!({"body": {"a": 1}})),
        input: v(json!({"a": 1})),
        next_step: Some("first".into()),
        started_at: now_micros(),
        flow_version: Some("v1".into()),
        accountability: json!({"user": "ada"}),
        parent: None,
    }
}

fn step(run: &str, seq: i64, ok: bool) -> StepRecord {
    StepRecord {
        run_id: run.into(),
        seq,
        step_key: format!("s{seq}"),
        kind: "transform".into(),
        ok,
        options: v(json!({"value": {"n": seq}})),
        input: v(json!({"a": 1})),
        result: ok.then(|| v(json!({"n": seq}))),
        output: ok.then(|| v(json!({"a": 1, "n": seq}))),
        error: (!ok).then(|| "boom".to_owned()),
        blame: (!ok).then(|| "flow".to_owned()),
        logs: vec!["hello".into()],
        started_at: now_micros(),
        ended_at: now_micros(),
    }
}

fn running(state: serde_json::Value, next: Option<&str>) -> RunUpdate {
    RunUpdate {
        status: RunStatus::Running,
        state: v(state),
        next_step: next.map(str::to_owned),
        output: None,
        error: None,
        error_step: None,
        ended_at: None,
    }
}

/// A value whose JSON text is about `n` times 100 bytes.
fn big_items(n: usize, tag: &str) -> serde_json::Value {
    serde_json::Value::Array(
        (0..n)
            .map(|i| json!({"sku": format!("{tag}-{i:07}"), "qty": i % 7, "note": "an item, \"quoted\" {and} [bracketed]", "f": 1.5}))
            .collect(),
    )
}

/// Large values (kept once per run, in parts) read back exactly as they
/// were written, through every way a run's values are written.
async fn large_values<S: Store>(store: &S) {
    let items = big_items(3000, "A");
    let mut run = new_run("large");
    run.trigger = v(json!({"body": {"orderId": "L-1", "items": items}}));
    run.input = v(json!({"orderId": "L-1", "items": items}));
    let first_out = json!({"orderId": "L-1", "items": items, "count": 3000});
    let mut s0 = step(&run.id, 0, true);
    s0.input = run.input.clone();
    s0.options = v(json!({"value": {"items": items, "count": 3000}}));
    s0.result = Some(v(json!({"items": items, "count": 3000})));
    s0.output = Some(v(first_out.clone()));
    let mut s1 = step(&run.id, 1, true);
    s1.input = v(first_out.clone());
    let second_out =
        json!({"orderId": "L-1", "items": items, "count": 3000, "more": big_items(2000, "B")});
    s1.result = Some(v(json!({"more": big_items(2000, "B")})));
    s1.output = Some(v(second_out.clone()));
    store
        .record_steps(
            Some(&run),
            &[s0.clone(), s1.clone()],
            &running(second_out.clone(), Some("wait")),
        )
        .await
        .unwrap();
    // Suspended with a new large state, then ended with a large output.
    let waiting = json!({"all": [second_out, big_items(1500, "C")]});
    let wait = wait_of(&run, WaitKind::Sleep, None);
    assert!(
        store
            .suspend(None, &v(waiting.clone()), &wait)
            .await
            .unwrap()
    );
    let got = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(j(&got.state), waiting);
    assert!(store.claim_wait(&run.id, None).await.unwrap().is_some());
    let end = RunUpdate {
        status: RunStatus::Incident,
        output: Some(v(json!({"out": big_items(1200, "D")}))),
        error: Some("stopped".into()),
        ..running(json!({"s": big_items(1100, "E")}), None)
    };
    store.update_run(&run.id, &end).await.unwrap();
    let resumed = json!({"fixed": big_items(1300, "F"), "items": items});
    store
        .resume_run(&run.id, &v(resumed.clone()))
        .await
        .unwrap();
    let got = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(j(&got.trigger), j(&run.trigger));
    assert_eq!(j(&got.input), j(&run.input));
    assert_eq!(j(&got.state), resumed);
    assert_eq!(got.output.as_ref().map(j), end.output.as_ref().map(j));
    assert_eq!(got.steps.len(), 2);
    for (got, want) in got.steps.iter().zip([&s0, &s1]) {
        assert_eq!(j(&got.options), j(&want.options));
        assert_eq!(j(&got.input), j(&want.input));
        assert_eq!(got.result.as_ref().map(j), want.result.as_ref().map(j));
        assert_eq!(got.output.as_ref().map(j), want.output.as_ref().map(j));
    }
    // A run started by a claim (a schedule's fire) keeps a large input too.
    let mut fired = new_run("large-fire");
    fired.input = v(json!({"items": big_items(2500, "G")}));
    assert!(store.claim_fire("large-fire", 1, &fired).await.unwrap());
    let got = store.get_run(&fired.id).await.unwrap().unwrap();
    assert_eq!(j(&got.input), j(&fired.input));
    assert_eq!(j(&got.state), j(&fired.input));
}

async fn suite<S: Store>(store: &S) {
    // A run with two steps, then success.
    let run = new_run("orders");
    store.create_run(&run).await.unwrap();
    assert!(matches!(
        store.create_run(&run).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .record_step(
            &step(&run.id, 0, true),
            &running(json!({"a": 1, "n": 0}), Some("s1")),
        )
        .await
        .unwrap();
    let done = RunUpdate {
        status: RunStatus::Succeeded,
        output: Some(v(json!({"a": 1, "n": 1}))),
        ended_at: Some(now_micros()),
        ..running(json!({"a": 1, "n": 1}), None)
    };
    store
        .record_step(&step(&run.id, 1, true), &done)
        .await
        .unwrap();
    let d = store.get_run(&run.id).await.unwrap().expect("run exists");
    assert_eq!(
        store.flow_of_run(&run.id).await.unwrap(),
        Some((run.flow_id.clone(), run.flow_version.clone()))
    );
    assert_eq!(store.flow_of_run("no-such-run").await.unwrap(), None);
    assert_eq!(d.summary.status, RunStatus::Succeeded);
    assert_eq!(d.summary.steps, 2);
    assert_eq!(d.output.as_ref().map(j), Some(json!({"a": 1, "n": 1})));
    assert_eq!(j(&d.trigger), j(&run.trigger));
    assert_eq!(d.steps.len(), 2);
    assert_eq!(
        d.steps[1],
        step(&run.id, 1, true).clone_with_times(&d.steps[1])
    );
    assert_eq!(d.next_step, None);

    // The step record and the run's new state commit together: a duplicate
    // step position fails, and the run is left as it was.
    let err = store
        .record_step(
            &step(&run.id, 1, true),
            &running(json!({"changed": true}), Some("x")),
        )
        .await;
    assert!(err.is_err());
    let again = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(j(&again.state), json!({"a": 1, "n": 1}));
    assert_eq!(again.summary.status, RunStatus::Succeeded);

    // A step for a run that does not exist leaves nothing behind.
    assert!(
        store
            .record_step(&step("missing", 0, true), &running(json!({}), None))
            .await
            .is_err()
    );
    assert!(store.get_run("missing").await.unwrap().is_none());

    // A failed run, on another flow.
    let failed = new_run("billing");
    store.create_run(&failed).await.unwrap();
    let fail = RunUpdate {
        status: RunStatus::Failed,
        error: Some("boom".into()),
        error_step: Some("s0".into()),
        ended_at: Some(now_micros()),
        ..running(json!({"a": 1}), None)
    };
    store
        .record_step(&step(&failed.id, 0, false), &fail)
        .await
        .unwrap();

    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, failed.id, "newest first");
    let only = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].error_step.as_deref(), Some("s0"));
    let by_flow = store
        .list_runs(&RunFilter {
            flow_id: Some("orders".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_flow.len(), 1);
    let limited = store
        .list_runs(&RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    // The next page starts after the last run of the one before.
    let next = store
        .list_runs(&RunFilter {
            limit: 1,
            after: Some((limited[0].started_at, limited[0].id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&all[1].id],
        "the second page"
    );
    let past = store
        .list_runs(&RunFilter {
            after: Some((all[1].started_at, all[1].id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(past.is_empty(), "nothing after the last run: {past:?}");
    // Counts per flow since a time: the failed run counts as a failure.
    let stats = store.flow_stats(0).await.unwrap();
    let of = |id: &str| stats.iter().find(|s| s.flow_id == id).cloned();
    assert_eq!(
        of("billing").map(|s| (s.runs, s.failures)),
        Some((1, 1)),
        "{stats:?}"
    );
    assert_eq!(of("orders").map(|s| (s.runs, s.failures)), Some((1, 0)));
    assert!(
        store
            .flow_stats(now_micros() + 60_000_000)
            .await
            .unwrap()
            .is_empty()
    );

    // update_run without a step.
    store
        .update_run(
            &failed.id,
            &RunUpdate {
                status: RunStatus::Incident,
                ..fail.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_run(&failed.id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .status,
        RunStatus::Incident
    );
    assert!(matches!(
        store.update_run("missing", &fail).await,
        Err(StoreError::NoSuchRun(_))
    ));

    // Resuming: only an incident, only once.
    store
        .resume_run(&failed.id, &v(json!({"fixed": true})))
        .await
        .unwrap();
    let resumed = store.get_run(&failed.id).await.unwrap().unwrap();
    assert_eq!(resumed.summary.status, RunStatus::Running);
    assert_eq!(j(&resumed.state), json!({"fixed": true}));
    assert_eq!(resumed.summary.error, None);
    assert_eq!(resumed.flow_version.as_deref(), Some("v1"));
    assert_eq!(resumed.accountability, json!({"user": "ada"}));
    assert_eq!(resumed.parent, None);

    // A run of one item of a fan-out points at its parent.
    let child = NewRun {
        parent: Some((failed.id.clone(), 2)),
        ..new_run("billing")
    };
    store.create_run(&child).await.unwrap();
    assert_eq!(
        store.get_run(&child.id).await.unwrap().unwrap().parent,
        Some((failed.id.clone(), 2))
    );
    assert!(matches!(
        store.resume_run(&failed.id, &v(json!({}))).await,
        Err(StoreError::NotResumable {
            status: "running",
            ..
        })
    ));
    assert!(matches!(
        store.resume_run("missing", &v(json!({}))).await,
        Err(StoreError::NoSuchRun(_))
    ));

    // Flow versions.
    let v = "0123456789abcdef";
    store.save_flow_version("x", v, "id: x\n").await.unwrap();
    store.save_flow_version("x", v, "id: x\n").await.unwrap();
    assert_eq!(
        store.flow_version("x", v).await.unwrap().as_deref(),
        Some("id: x\n")
    );
    assert_eq!(store.flow_version("x", "nope").await.unwrap(), None);

    // Recoveries: counted in a row while no step is recorded in between.
    let crashed = new_run("orders");
    store.create_run(&crashed).await.unwrap();
    assert_eq!(store.count_recovery(&crashed.id).await.unwrap(), 1);
    assert_eq!(store.count_recovery(&crashed.id).await.unwrap(), 2);
    store
        .record_step(&step(&crashed.id, 0, true), &running(json!({}), Some("s1")))
        .await
        .unwrap();
    assert_eq!(store.count_recovery(&crashed.id).await.unwrap(), 1);
    assert_eq!(store.count_recovery(&crashed.id).await.unwrap(), 2);
    assert_eq!(store.count_recovery(&crashed.id).await.unwrap(), 3);
    assert!(matches!(
        store.count_recovery("missing").await,
        Err(StoreError::NoSuchRun(_))
    ));

    // Cancelling: a running run stops and later records do not move it.
    store.cancel_run(&failed.id).await.unwrap();
    let cancelled = store.get_run(&failed.id).await.unwrap().unwrap();
    assert_eq!(cancelled.summary.status, RunStatus::Cancelled);
    assert!(cancelled.summary.ended_at.is_some());
    store
        .update_run(&failed.id, &running(json!({}), Some("b")))
        .await
        .unwrap();
    let seq = cancelled.summary.steps;
    store
        .record_step(&step(&failed.id, seq, true), &running(json!({}), Some("b")))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_run(&failed.id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .status,
        RunStatus::Cancelled
    );
    assert!(matches!(
        store.cancel_run(&failed.id).await,
        Err(StoreError::NotCancellable {
            status: "cancelled",
            ..
        })
    ));
    assert!(matches!(
        store.cancel_run("missing").await,
        Err(StoreError::NoSuchRun(_))
    ));
    assert!(matches!(
        store.count_recovery(&failed.id).await,
        Err(StoreError::NotRunning {
            status: "cancelled",
            ..
        })
    ));

    // Listing by start time.
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    let newest = all.first().unwrap().started_at;
    let after = store
        .list_runs(&RunFilter {
            started_after: Some(newest),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!after.is_empty() && after.iter().all(|r| r.started_at >= newest));
    let before = store
        .list_runs(&RunFilter {
            started_before: Some(newest),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(before.iter().all(|r| r.started_at < newest));
    assert_eq!(before.len() + after.len(), all.len());

    // A schedule's fire is claimed once, with the run it starts; a loser
    // records nothing.
    assert_eq!(store.last_fire("nightly").await.unwrap(), None);
    let (first, twice) = (new_run("nightly"), new_run("nightly"));
    assert!(store.claim_fire("nightly", 1_000, &first).await.unwrap());
    assert!(store.get_run(&first.id).await.unwrap().is_some());
    assert!(!store.claim_fire("nightly", 1_000, &twice).await.unwrap());
    assert!(store.get_run(&twice.id).await.unwrap().is_none());
    // A run that exists undoes the claim.
    assert!(matches!(
        store.claim_fire("nightly", 2_000, &first).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.last_fire("nightly").await.unwrap(), Some(1_000));
    assert!(store.claim_fire("nightly", 2_000, &twice).await.unwrap());
    assert!(
        store
            .claim_fire("other", 1_000, &new_run("other"))
            .await
            .unwrap()
    );
    assert_eq!(store.last_fire("nightly").await.unwrap(), Some(2_000));

    waits(store).await;
    polls(store).await;
    events(store).await;
}

/// Events: accepted once by source and id, with the runs they start; a
/// retry records nothing; forgotten after a week.
async fn events<S: Store>(store: &S) {
    assert_eq!(store.seen_event("/shop", "1").await.unwrap(), None);
    let (a, b) = (new_run("orders"), new_run("orders"));
    let answer = json!({"started": [{"flow": "orders", "runId": a.id}]});
    let at = 1_000_000_000_000;
    assert!(
        store
            .accept_event("/shop", "1", at, &answer, std::slice::from_ref(&a))
            .await
            .unwrap()
    );
    assert!(store.get_run(&a.id).await.unwrap().is_some());
    let seen = store.seen_event("/shop", "1").await.unwrap().unwrap();
    assert_eq!((seen.received_at, seen.answer), (at, answer.clone()));
    // The same event again: nothing recorded.
    assert!(
        !store
            .accept_event("/shop", "1", at + 5, &json!({}), std::slice::from_ref(&b))
            .await
            .unwrap()
    );
    assert!(store.get_run(&b.id).await.unwrap().is_none());
    // The same id from another source is another event.
    assert!(
        store
            .accept_event("/billing", "1", at, &json!({}), &[])
            .await
            .unwrap()
    );
    // A run that exists undoes the acceptance.
    assert!(matches!(
        store
            .accept_event("/shop", "2", at, &json!({}), std::slice::from_ref(&a))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.seen_event("/shop", "2").await.unwrap(), None);
    // A week later, the event is forgotten as another arrives.
    let later = at + sluice_store::EVENTS_KEPT_MICROS + 1;
    assert!(
        store
            .accept_event("/shop", "3", later, &json!({}), &[])
            .await
            .unwrap()
    );
    assert_eq!(store.seen_event("/shop", "1").await.unwrap(), None);
    assert!(store.seen_event("/shop", "3").await.unwrap().is_some());
}

/// Steps recorded together, and runs recorded with their first steps; many
/// runs' writes at once (the SQLite store writes them in one transaction),
/// each with its own answer when some of them fail.
async fn batches<S: Store + Clone>(store: &S) {
    // A run recorded only once its steps are done: run, steps and end in one.
    let run = new_run("pure");
    let done = RunUpdate {
        status: RunStatus::Succeeded,
        output: Some(v(json!({"a": 1, "n": 2}))),
        ended_at: Some(now_micros()),
        ..running(json!({"a": 1, "n": 2}), None)
    };
    let steps: Vec<StepRecord> = (0..3).map(|i| step(&run.id, i, true)).collect();
    store.record_steps(Some(&run), &steps, &done).await.unwrap();
    let d = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Succeeded);
    assert_eq!(d.summary.steps, 3);
    assert_eq!(d.steps.len(), 3);
    assert_eq!(j(&d.input), j(&run.input));
    assert_eq!(d.output.as_ref().map(j), Some(json!({"a": 1, "n": 2})));
    assert_eq!(j(&d.state), json!({"a": 1, "n": 2}));
    assert!(d.summary.ended_at.is_some());
    // The same run again: refused whole, its steps not added.
    let again = store
        .record_steps(Some(&run), &[step(&run.id, 3, true)], &done)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        store.get_run(&run.id).await.unwrap().unwrap().steps.len(),
        3
    );

    // Many at once: good runs, a run that does not exist, a cancelled run,
    // a step position taken, and new runs with their steps.
    let mut good = Vec::new();
    for _ in 0..40 {
        let r = new_run("many");
        store.create_run(&r).await.unwrap();
        good.push(r);
    }
    let cancelled = new_run("many");
    store.create_run(&cancelled).await.unwrap();
    store.cancel_run(&cancelled.id).await.unwrap();
    let taken = new_run("many");
    store
        .record_steps(
            Some(&taken),
            &[step(&taken.id, 0, true)],
            &running(json!({"t": 0}), Some("s1")),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (i, r) in good.iter().enumerate() {
        let (s, id) = (store.clone(), r.id.clone());
        let end = RunUpdate {
            status: RunStatus::Succeeded,
            output: Some(v(json!({"i": i}))),
            ended_at: Some(now_micros()),
            ..running(json!({"i": i}), None)
        };
        tasks.push((
            "good",
            tokio::spawn(async move {
                s.record_steps(None, &[step(&id, 0, true), step(&id, 1, true)], &end)
                    .await
            }),
        ));
        let (s, fresh) = (store.clone(), new_run("fresh"));
        tasks.push((
            "fresh",
            tokio::spawn(async move {
                let steps = [step(&fresh.id, 0, true)];
                s.record_steps(Some(&fresh), &steps, &running(json!({"f": i}), Some("s1")))
                    .await
            }),
        ));
        if i == 10 {
            let s = store.clone();
            tasks.push((
                "missing",
                tokio::spawn(async move {
                    s.record_steps(None, &[step("missing", 0, true)], &running(json!({}), None))
                        .await
                }),
            ));
            let (s, id) = (store.clone(), cancelled.id.clone());
            tasks.push((
                "cancelled",
                tokio::spawn(async move {
                    s.record_steps(None, &[step(&id, 0, true)], &running(json!({}), Some("b")))
                        .await
                }),
            ));
            let (s, id) = (store.clone(), taken.id.clone());
            tasks.push((
                "taken",
                tokio::spawn(async move {
                    s.record_steps(None, &[step(&id, 0, true)], &running(json!({"t": 1}), None))
                        .await
                }),
            ));
        }
    }
    for (what, t) in tasks {
        let r = t.await.unwrap();
        match what {
            "missing" => assert!(matches!(r, Err(StoreError::NoSuchRun(_))), "{r:?}"),
            "taken" => assert!(r.is_err(), "a step position taken must fail"),
            _ => r.unwrap(),
        }
    }
    for (i, r) in good.iter().enumerate() {
        let d = store.get_run(&r.id).await.unwrap().unwrap();
        assert_eq!(d.summary.status, RunStatus::Succeeded);
        assert_eq!((d.summary.steps, d.steps.len()), (2, 2));
        assert_eq!(d.output.as_ref().map(j), Some(json!({"i": i})));
    }
    let c = store.get_run(&cancelled.id).await.unwrap().unwrap();
    assert_eq!(c.summary.status, RunStatus::Cancelled);
    let t = store.get_run(&taken.id).await.unwrap().unwrap();
    assert_eq!((j(&t.state), t.steps.len()), (json!({"t": 0}), 1));
    let fresh = store
        .list_runs(&RunFilter {
            flow_id: Some("fresh".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fresh.len(), 40);
    assert!(
        fresh
            .iter()
            .all(|r| r.status == RunStatus::Running && r.steps == 1)
    );

    // Many at once, all good (one transaction, statements of many rows).
    let tasks: Vec<_> = fresh
        .iter()
        .map(|r| {
            let (s, id) = (store.clone(), r.id.clone());
            tokio::spawn(async move {
                let end = RunUpdate {
                    status: RunStatus::Failed,
                    error: Some(format!("{id} failed")),
                    error_step: Some("s1".into()),
                    ended_at: Some(now_micros()),
                    ..running(json!({"id": id}), None)
                };
                s.record_steps(None, &[step(&id, 1, false)], &end).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for r in &fresh {
        let d = store.get_run(&r.id).await.unwrap().unwrap();
        assert_eq!(d.summary.status, RunStatus::Failed);
        assert_eq!(d.summary.error, Some(format!("{} failed", r.id)));
        assert_eq!(j(&d.state), json!({"id": r.id}));
        assert_eq!(d.summary.steps, 2);
        assert_eq!(d.steps[1].error.as_deref(), Some("boom"));
    }
}

/// Poll snapshots: advanced from the number read, with the runs a page
/// starts, once; a loser records nothing; a run that exists undoes the
/// advance.
async fn polls<S: Store>(store: &S) {
    assert_eq!(store.poll_snapshot("poller").await.unwrap(), (0, None));
    let (a, b) = (new_run("poller"), new_run("poller"));
    let first = json!({"previousLastModified": "2026-01-01", "page": 0});
    assert!(
        store
            .advance_poll("poller", 0, &first, &[a.clone(), b.clone()])
            .await
            .unwrap()
    );
    assert_eq!(
        store.poll_snapshot("poller").await.unwrap(),
        (1, Some(first.clone()))
    );
    assert!(store.get_run(&a.id).await.unwrap().is_some());
    assert!(store.get_run(&b.id).await.unwrap().is_some());
    // Another process read the same snapshot: it loses, and starts nothing.
    let late = new_run("poller");
    assert!(
        !store
            .advance_poll("poller", 0, &json!({"x": 1}), std::slice::from_ref(&late))
            .await
            .unwrap()
    );
    assert!(store.get_run(&late.id).await.unwrap().is_none());
    // A page whose run exists already: nothing moves.
    let second = json!({"previousLastModified": "2026-01-02", "page": 0});
    assert!(matches!(
        store
            .advance_poll("poller", 1, &second, &[late.clone(), a.clone()])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.poll_snapshot("poller").await.unwrap().0, 1);
    assert!(store.get_run(&late.id).await.unwrap().is_none());
    assert!(store.advance_poll("poller", 1, &second, &[]).await.unwrap());
    assert_eq!(
        store.poll_snapshot("poller").await.unwrap(),
        (2, Some(second))
    );
}

fn wait_of(run: &NewRun, kind: WaitKind, event_type: Option<&str>) -> Wait {
    Wait {
        run_id: run.id.clone(),
        flow_id: run.flow_id.clone(),
        step_key: "first".into(),
        kind,
        wake_at: Some(now_micros() + 1_000_000),
        event_type: event_type.map(str::to_owned),
        source: Some("/shop".into()),
        correlation: json!({"orderid": "o-1"}),
        since: now_micros(),
    }
}

/// Suspended runs: one claim wins, a failed attempt is recorded with the
/// suspension, event waits are found by type, a cancelled run loses its wait.
async fn waits<S: Store>(store: &S) {
    let sleeper = new_run("waits");
    store.create_run(&sleeper).await.unwrap();
    let w = wait_of(&sleeper, WaitKind::Sleep, None);
    assert!(store.suspend(None, &v(json!({"s": 1})), &w).await.unwrap());
    let d = store.get_run(&sleeper.id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Waiting);
    assert_eq!(j(&d.state), json!({"s": 1}));
    assert_eq!(d.next_step.as_deref(), Some("first"));
    assert_eq!(d.summary.steps, 0);
    assert!(store.list_waits(None).await.unwrap().contains(&w));
    assert_eq!(store.wait_of(&sleeper.id).await.unwrap(), Some(w.clone()));
    // Due within two seconds, not yet now.
    assert!(
        store
            .due_waits(now_micros() + 2_000_000)
            .await
            .unwrap()
            .contains(&w)
    );
    assert!(!store.due_waits(now_micros()).await.unwrap().contains(&w));
    // Exactly one claim takes it, and the run runs again.
    assert_eq!(
        store.claim_wait(&sleeper.id, None).await.unwrap(),
        Some(w.clone())
    );
    assert_eq!(store.claim_wait(&sleeper.id, None).await.unwrap(), None);
    let d = store.get_run(&sleeper.id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Running);
    assert!(!store.list_waits(None).await.unwrap().contains(&w));

    // A failed attempt recorded with its backoff.
    let retried = new_run("waits");
    store.create_run(&retried).await.unwrap();
    let mut attempt = step(&retried.id, 0, false);
    attempt.step_key = "first".into();
    let w = wait_of(&retried, WaitKind::Retry, None);
    assert!(
        store
            .suspend(Some(&attempt), &v(json!({"a": 1})), &w)
            .await
            .unwrap()
    );
    let d = store.get_run(&retried.id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Waiting);
    assert_eq!(d.steps, vec![attempt.clone()]);
    assert_eq!(d.summary.steps, 1);

    // Event waits by type (a wait for any type matches every type).
    let waiter = new_run("waits");
    store.create_run(&waiter).await.unwrap();
    let ev = wait_of(&waiter, WaitKind::Event, Some("order.paid"));
    assert!(store.suspend(None, &v(json!({})), &ev).await.unwrap());
    let any = new_run("waits");
    store.create_run(&any).await.unwrap();
    let ev_any = Wait {
        wake_at: None,
        ..wait_of(&any, WaitKind::Event, None)
    };
    assert!(store.suspend(None, &v(json!({})), &ev_any).await.unwrap());
    let paid = store.list_waits(Some("order.paid")).await.unwrap();
    assert!(paid.contains(&ev) && paid.contains(&ev_any) && paid.len() == 2);
    let other = store.list_waits(Some("order.shipped")).await.unwrap();
    assert_eq!(other, vec![ev_any.clone()]);
    // A wait with no time is never due by itself.
    assert!(
        !store
            .due_waits(i64::MAX)
            .await
            .unwrap()
            .iter()
            .any(|w| w.run_id == any.id)
    );
    assert_eq!(store.wait_of(&any.id).await.unwrap(), Some(ev_any.clone()));
    assert_eq!(store.wait_of(&sleeper.id).await.unwrap(), None);

    // Cancelling a waiting run drops its wait; nothing can claim it then.
    store.cancel_run(&waiter.id).await.unwrap();
    assert_eq!(store.claim_wait(&waiter.id, None).await.unwrap(), None);
    assert!(!store.list_waits(None).await.unwrap().contains(&ev));
    // A cancelled run is not suspended.
    assert!(!store.suspend(None, &v(json!({})), &ev).await.unwrap());
    assert_eq!(store.claim_wait(&waiter.id, None).await.unwrap(), None);
    let d = store.get_run(&waiter.id).await.unwrap().unwrap();
    assert_eq!(d.summary.status, RunStatus::Cancelled);
    // A wait of an unknown run is refused.
    let ghost = wait_of(&new_run("waits"), WaitKind::Sleep, None);
    assert!(!store.suspend(None, &v(json!({})), &ghost).await.unwrap());
}

trait CloneWithTimes {
    fn clone_with_times(&self, other: &StepRecord) -> StepRecord;
}

impl CloneWithTimes for StepRecord {
    fn clone_with_times(&self, other: &StepRecord) -> StepRecord {
        StepRecord {
            started_at: other.started_at,
            ended_at: other.ended_at,
            ..self.clone()
        }
    }
}

/// API tokens: kept by hash, listed by name, revoked once, names unique.
async fn tokens<S: Store>(store: &S) {
    let t = |name: &str, role: &str, hash: &str| sluice_store::ApiToken {
        name: name.into(),
        role: role.into(),
        hash: hash.into(),
        created_at: 1,
        revoked_at: None,
        expires_at: (name == "ada").then_some(99),
    };
    store
        .create_token(&t("ops", "operator", "h1"))
        .await
        .unwrap();
    store.create_token(&t("ada", "viewer", "h2")).await.unwrap();
    assert!(matches!(
        store.create_token(&t("ops", "admin", "h3")).await,
        Err(StoreError::TokenExists(n)) if n == "ops"
    ));
    let names: Vec<String> = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ada", "ops"]);
    let found = store.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.role.as_str(), found.revoked_at),
        ("ops", "operator", None)
    );
    assert_eq!(
        store.token_by_hash("h2").await.unwrap().unwrap().expires_at,
        Some(99)
    );
    assert_eq!(store.token_by_hash("nope").await.unwrap(), None);
    assert!(store.revoke_token("ops").await.unwrap());
    assert!(!store.revoke_token("ops").await.unwrap(), "revoked once");
    assert!(!store.revoke_token("nobody").await.unwrap());
    assert!(
        store
            .token_by_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
}

/// The audit: entries kept as given, newest first, by target.
async fn audit<S: Store>(store: &S) {
    let e = |at: i64, action: &str, target: Option<&str>| sluice_store::AuditEntry {
        at,
        user: Some("ops".into()),
        role: Some("operator".into()),
        ip: Some("127.0.0.1".into()),
        action: action.into(),
        target: target.map(str::to_owned),
        details: serde_json::json!({"n": at}),
    };
    store.audit(&e(1, "run.cancel", Some("r1"))).await.unwrap();
    store.audit(&e(2, "flows.reload", None)).await.unwrap();
    store.audit(&e(3, "run.resume", Some("r1"))).await.unwrap();
    let all = store.audit_log(None, 10).await.unwrap();
    assert_eq!(
        all,
        vec![
            e(3, "run.resume", Some("r1")),
            e(2, "flows.reload", None),
            e(1, "run.cancel", Some("r1"))
        ]
    );
    let r1: Vec<i64> = store
        .audit_log(Some("r1"), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(r1, [3, 1]);
    assert_eq!(store.audit_log(None, 1).await.unwrap().len(), 1);
    assert!(store.audit_log(Some("r2"), 10).await.unwrap().is_empty());
}

async fn notifications<S: Store>(store: &S) {
    use sluice_store::{Notification, Reader};
    let n = |id: &str, at: i64, user: Option<&str>, role: Option<&str>| Notification {
        id: id.into(),
        at,
        user: user.map(str::to_owned),
        role: role.map(str::to_owned),
        subject: format!("subject {id}"),
        message: format!("message {id}"),
        run_id: Some("r1".into()),
        step_key: Some("tell".into()),
    };
    assert!(store.notify(&n("a", 1, Some("ada"), None)).await.unwrap());
    assert!(
        store
            .notify(&n("b", 2, None, Some("operator")))
            .await
            .unwrap()
    );
    assert!(store.notify(&n("c", 3, None, Some("admin"))).await.unwrap());
    // The same attempt again sends nothing more.
    assert!(!store.notify(&n("a", 9, Some("ada"), None)).await.unwrap());
    let ids = |v: Vec<(Notification, bool)>| {
        v.into_iter()
            .map(|(n, read)| format!("{}{}", n.id, if read { "*" } else { "" }))
            .collect::<Vec<_>>()
    };
    // The notifications a reader sees (all, or only unread) and its count
    // of unread ones.
    let list = |reader: Reader<'static>, limit: u32, unread: bool| async move {
        let (shown, count) = store.notifications(reader, limit, unread).await.unwrap();
        (ids(shown), count)
    };
    let ada = Reader {
        name: "ada",
        roles: Some(&["viewer", "operator"]),
    };
    assert_eq!(list(ada, 10, false).await.0, ["b", "a"]);
    let vic = Reader {
        name: "vic",
        roles: Some(&["viewer"]),
    };
    assert_eq!(list(vic, 10, false).await, (Vec::<String>::new(), 0));
    let anyone = Reader {
        name: "",
        roles: None,
    };
    assert_eq!(list(anyone, 10, false).await.0, ["c", "b", "a"]);
    assert!(store.mark_read("b", "ada").await.unwrap());
    assert!(
        store.mark_read("b", "ada").await.unwrap(),
        "read twice is read"
    );
    assert!(!store.mark_read("nope", "ada").await.unwrap());
    assert_eq!(list(ada, 10, false).await.0, ["b*", "a"]);
    // Read by one reader, unread for another.
    let bob = Reader {
        name: "bob",
        roles: Some(&["viewer", "operator", "admin"]),
    };
    assert_eq!(list(bob, 10, false).await.0, ["c", "b"]);
    assert_eq!(list(bob, 1, false).await.0.len(), 1);
    let (first, _) = &store.notifications(ada, 10, false).await.unwrap().0[1];
    assert_eq!(*first, n("a", 1, Some("ada"), None));
    // Counts and the unread filter cover every notification, not only the
    // newest `limit` ones.
    assert_eq!(list(ada, 1, false).await, (vec!["b*".to_owned()], 1));
    assert_eq!(list(ada, 1, true).await, (vec!["a".to_owned()], 1));
    assert_eq!(list(bob, 1, true).await, (vec!["c".to_owned()], 2));
    assert!(store.mark_read("a", "ada").await.unwrap());
    assert_eq!(list(ada, 10, true).await, (Vec::<String>::new(), 0));
    assert_eq!(list(anyone, 10, true).await.1, 3);
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-store-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.db")
}

#[tokio::test]
async fn sqlite_memory_passes_the_suite() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    suite(&store).await;
    batches(&store).await;
    tokens(&store).await;
    audit(&store).await;
    notifications(&store).await;
    large_values(&store).await;
}

#[tokio::test]
async fn sqlite_file_passes_the_suite_and_keeps_runs_across_reopen() {
    let path = temp_db("file");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::open(&url).await.unwrap();
    suite(&store).await;
    drop(store);
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        store.list_runs(&RunFilter::default()).await.unwrap().len(),
        14
    );
    batches(&store).await;
    // The writer leaves foreign keys unchecked (group.rs): its own checks
    // left no step record of a run that is not there (`missing`).
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let broken = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(broken.is_empty(), "{} rows without their run", broken.len());
    db.close().await;
    drop(store);
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        store.list_runs(&RunFilter::default()).await.unwrap().len(),
        14 + 1 + 40 + 2 + 40
    );
    assert_eq!(store.poll_snapshot("poller").await.unwrap().0, 2);
    // So do taken events.
    assert!(store.seen_event("/shop", "3").await.unwrap().is_some());
    // Waits survive the reopen too.
    assert_eq!(store.list_waits(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn unopenable_stores_say_why() {
    let err = SqliteStore::open("/nonexistent-dir/x/store.db")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let dir = std::env::temp_dir();
    let err = SqliteStore::open(dir.to_str().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("folder"), "{err}");
    let path = temp_db("garbage");
    std::fs::write(&path, b"this is not a database, and it must stay as it is").unwrap();
    let err = SqliteStore::open(path.to_str().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("cannot open the store"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database, and it must stay as it is"
    );
    // A PostgreSQL server nobody listens for: the reason, the host, and no
    // password.
    let err = sluice_store::PgStore::open("postgres://ada:s3cret@127.0.0.1:1/runs")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("postgres://ada:***@127.0.0.1:1/runs")
            && err.contains("refused")
            && !err.contains("s3cret"),
        "{err}"
    );
}

/// A store that may not grow (SQLite's `max_page_count`, which fails writes
/// as a full disk does) refuses the write that does not fit with
/// [`StoreError::Full`], whatever its path (a new run, a step record, a
/// batch of several runs' writes), and keeps every run it held; once space
/// is freed, the same write goes in.
#[tokio::test]
async fn a_full_sqlite_store_refuses_writes_and_keeps_what_it_had() {
    let path = temp_db("full");
    let url = format!("sqlite://{}?max_page_count=120", path.display());
    let store = SqliteStore::open(&url).await.unwrap();
    // Values no compressor shortens: a few fit, then the store is full.
    let noise = |seed: u64| {
        let mut x = seed | 1;
        let text: String = (0..60_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        json!({ "pad": text })
    };
    let mut kept = Vec::new();
    let refused = loop {
        let mut run = new_run("full");
        run.input = v(noise(kept.len() as u64 + 1));
        match store.create_run(&run).await {
            Ok(()) => kept.push(run),
            Err(e) => break e,
        }
        assert!(kept.len() < 100, "the store never filled");
    };
    assert!(matches!(refused, StoreError::Full(_)), "{refused}");
    assert!(refused.to_string().contains("full"), "{refused}");
    assert!(!kept.is_empty());
    // A step record that does not fit, alone and in a batch of several
    // runs' writes at once.
    let first = &kept[0];
    let mut big = step(&first.id, 0, true);
    big.output = Some(v(noise(999)));
    let record_big = |store: SqliteStore| {
        let big = big.clone();
        async move {
            store
                .record_steps(None, &[big], &running(json!({}), Some("next")))
                .await
        }
    };
    let e = record_big(store.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Full(_)), "{e}");
    let mut at_once = tokio::task::JoinSet::new();
    for (k, run) in kept.iter().enumerate() {
        let mut s = step(&run.id, 0, true);
        s.output = Some(v(noise(500 + k as u64)));
        let store = store.clone();
        at_once.spawn(async move {
            store
                .record_steps(None, &[s], &running(json!({}), Some("next")))
                .await
        });
    }
    while let Some(r) = at_once.join_next().await {
        let r = r.unwrap();
        assert!(matches!(r, Err(StoreError::Full(_))), "{r:?}");
    }
    // Nothing it held is lost, nor changed by the refused writes.
    for run in &kept {
        let got = store.get_run(&run.id).await.unwrap().unwrap();
        assert_eq!(j(&got.input), j(&run.input));
        assert!(got.steps.is_empty());
        assert_eq!(got.next_step.as_deref(), Some("first"));
    }
    // Space freed (the store opened again without the limit): the write
    // that was refused goes in.
    drop(store);
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    record_big(store.clone()).await.unwrap();
    let got = store.get_run(&first.id).await.unwrap().unwrap();
    assert_eq!(got.steps.len(), 1);
    assert_eq!(got.steps[0].output.as_ref().map(j), Some(noise(999)));
    let err = SqliteStore::open(&format!("sqlite://{}?max_page_count=none", path.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_page_count"), "{err}");
}

/// A store file whose tables a later version of Sluice made is not opened
/// (nor changed): the error says so, and which version the file is at.
#[tokio::test]
async fn a_sqlite_store_of_a_later_version_is_refused() {
    let path = temp_db("later");
    let url = path.to_str().unwrap().to_owned();
    drop(SqliteStore::open(&url).await.unwrap());
    {
        use sqlx::ConnectOptions;
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'later', 1, x'00', 0)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let err = SqliteStore::open(&url).await.unwrap_err().to_string();
    assert!(
        err.contains("later version of Sluice") && err.contains("migration 99"),
        "{err}"
    );
}

/// The SQLite store checkpoints its WAL while it writes, and the WAL starts
/// again from its beginning: writes never make it grow without end. Each of
/// these 2,000 runs is its own commit of several pages (about 30 KB of WAL
/// each), so a WAL that never restarts would pass 60 MB.
#[tokio::test]
async fn sqlite_file_wal_stays_bounded_while_runs_are_written() {
    let path = temp_db("wal");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let mut wal_max = 0;
    for i in 0..2000 {
        let run = new_run("wal");
        let done = RunUpdate {
            status: RunStatus::Succeeded,
            output: Some(v(json!({"i": i}))),
            ended_at: Some(now_micros()),
            ..running(json!({"i": i}), None)
        };
        store
            .record_steps(Some(&run), &[step(&run.id, 0, true)], &done)
            .await
            .unwrap();
        if i % 100 == 0 {
            // Let the checkpoint on another connection run.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let wal = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
        wal_max = wal_max.max(wal);
    }
    assert!(
        wal_max < 30 * 1024 * 1024,
        "the WAL grew to {wal_max} bytes: it is not checkpointed and restarted"
    );
    let runs = store
        .list_runs(&RunFilter {
            flow_id: Some("wal".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 2000);
}

/// A store file closed with a small WAL leaves it for the next process
/// (no checkpoint, no sync); one grown past 512 KB is copied into the
/// database and emptied. Either way every run reads back after a reopen.
#[tokio::test]
async fn sqlite_file_closes_leaving_a_small_wal_and_emptying_a_large_one() {
    let path = temp_db("close");
    let wal = || std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    let done = |i: usize| RunUpdate {
        status: RunStatus::Succeeded,
        output: Some(v(json!({"i": i}))),
        ended_at: Some(now_micros()),
        ..running(json!({"i": i}), None)
    };
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    for i in 1..=20 {
        let mut run = new_run("close");
        run.input = v(json!({"items": big_items(300, &format!("C{i}"))}));
        store
            .record_steps(Some(&run), &[step(&run.id, 0, true)], &done(i))
            .await
            .unwrap();
    }
    assert!(
        wal() > 512 * 1024,
        "the runs grew the WAL to {} bytes",
        wal()
    );
    store.close().await;
    assert_eq!(
        wal(),
        0,
        "a WAL past 512 KB is emptied when the store closes"
    );
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let run = new_run("close");
    store
        .record_steps(Some(&run), &[step(&run.id, 0, true)], &done(0))
        .await
        .unwrap();
    store.close().await;
    let left = wal();
    assert!(
        left > 0 && left <= 512 * 1024,
        "one run's commit is left in the WAL ({left} bytes)"
    );
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 21);
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded));
    store.close().await;
}

/// A run's record costs about its distinct data: a 1 MB value handed on
/// by 8 steps (each adding a field) and kept as the run's state grows
/// the store file by less than the value's own size.
#[tokio::test]
async fn sqlite_file_keeps_a_large_value_once_per_run() {
    let path = temp_db("large");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let size = |p: &std::path::Path| {
        ["db", "db-wal"]
            .iter()
            .map(|e| std::fs::metadata(p.with_extension(e)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let before = size(&path);
    let mut run = new_run("large");
    let mut state = json!({"items": big_items(15_000, "A")});
    let text = serde_json::to_string(&state).unwrap().len() as u64;
    assert!(text > 1_000_000, "{text}");
    run.input = v(state.clone());
    store.create_run(&run).await.unwrap();
    for seq in 0..8 {
        let mut s = step(&run.id, seq, true);
        s.input = v(state.clone());
        state[format!("f{seq}")] = json!(seq);
        s.options = v(json!({"value": {"items": state["items"]}}));
        s.result = Some(v(json!({"items": state["items"]})));
        s.output = Some(v(state.clone()));
        store
            .record_steps(None, &[s], &running(state.clone(), Some("next")))
            .await
            .unwrap();
    }
    let grown = size(&path) - before;
    assert!(
        grown < text,
        "the store grew by {grown} bytes for a value of {text}"
    );
    let got = store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(j(&got.state), state);
    assert_eq!(got.steps.len(), 8);
    assert_eq!(got.steps[7].output.as_ref().map(j), Some(state.clone()));
}

/// A fresh database on the PostgreSQL server of `SLUICE_TEST_POSTGRES_URL`
/// (dropped by the caller), or `None` when the variable is not set (a
/// failure under CI).
async fn fresh_postgres(name: &str) -> Option<(String, String, sqlx::PgPool)> {
    let Ok(base) = std::env::var("SLUICE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "SLUICE_TEST_POSTGRES_URL must be set under CI"
        );
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return None;
    };
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let db = format!("sluice_store_{name}_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let (head, _) = base.rsplit_once('/').unwrap();
    Some((format!("{head}/{db}"), db, admin))
}

#[tokio::test]
async fn postgres_passes_the_suite() {
    let Some((url, db, admin)) = fresh_postgres("suite").await else {
        return;
    };
    let store = sluice_store::PgStore::open(&url).await.unwrap();
    suite(&store).await;
    batches(&store).await;
    tokens(&store).await;
    audit(&store).await;
    notifications(&store).await;
    large_values(&store).await;
    // Opened again (as another process would), it finds its tables made.
    let again = sluice_store::PgStore::open(&url).await.unwrap();
    assert_eq!(
        again.list_runs(&RunFilter::default()).await.unwrap().len(),
        store.list_runs(&RunFilter::default()).await.unwrap().len()
    );
    // Closed, each ends its writer, heartbeat and listener and gives back
    // their connections (a task left holding one would hold this up).
    for s in [store, again] {
        tokio::time::timeout(std::time::Duration::from_secs(60), s.close())
            .await
            .expect("the store closes");
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

/// Every run `store` can take over, a few at a time.
async fn take_all<S: Store>(store: &S) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let got = store.take_over(7).await.unwrap();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// Processes sharing a PostgreSQL store: a run is held by the process that
/// created it; it is taken over only once its owner is not alive, by one
/// taker; the old owner's writes to it are refused from then on; polls have
/// one owner; suspensions and cancels are announced to every process.
#[tokio::test]
async fn postgres_processes_lease_their_runs() {
    use sluice_store::{Notice, PgStore};
    use std::time::Duration;
    let Some((url, db, admin)) = fresh_postgres("leases").await else {
        return;
    };
    let a = PgStore::open(&url).await.unwrap();
    let b = PgStore::open(&url).await.unwrap();
    let c = PgStore::open(&url).await.unwrap();
    assert!(a.shared() && a.process_id() != b.process_id());
    let mut heard = b.notices().unwrap();

    // A's run: nobody else takes it while A lives.
    let r = new_run("leased");
    a.create_run(&r).await.unwrap();
    assert!(b.take_over(0).await.unwrap().is_empty());
    a.record_step(&step(&r.id, 0, true), &running(json!({"n": 0}), Some("s1")))
        .await
        .unwrap();
    // Leases are renewed with the count of runs held.
    a.set_lease(Duration::from_secs(10)).await.unwrap();
    let l = a.leases().unwrap();
    assert_eq!((l.held, l.lease_micros), (1, 10_000_000));
    assert!(l.processes.iter().any(|p| p.id == b.process_id()));

    // A stops: B takes the run over, and A's writes are refused.
    a.retire().await.unwrap();
    assert_eq!(b.take_over(0).await.unwrap(), vec![r.id.clone()]);
    assert!(c.take_over(0).await.unwrap().is_empty());
    let lost = a
        .record_step(&step(&r.id, 1, true), &running(json!({"n": 1}), Some("s2")))
        .await
        .unwrap_err();
    assert!(
        matches!(&lost, StoreError::LeaseLost { owner, .. } if owner == b.process_id()),
        "{lost:?}"
    );
    assert!(matches!(
        a.update_run(&r.id, &running(json!({}), None)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        a.count_recovery(&r.id).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let w = Wait::timer(
        &r.id,
        "leased",
        "s1",
        WaitKind::Sleep,
        now_micros(),
        now_micros(),
    );
    assert!(matches!(
        a.suspend(None, &v(json!({})), &w).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Nothing of A's refused writes is in the record; B goes on.
    let d = b.get_run(&r.id).await.unwrap().unwrap();
    assert_eq!((d.summary.steps, j(&d.state)), (1, json!({"n": 0})));
    assert_eq!(b.count_recovery(&r.id).await.unwrap(), 1);
    b.record_step(&step(&r.id, 1, true), &running(json!({"n": 1}), Some("s2")))
        .await
        .unwrap();

    // B suspends it until now: every process hears of it; whoever claims
    // the wait holds the run.
    assert!(b.suspend(None, &v(json!({"n": 1})), &w).await.unwrap());
    let n = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n,
        Notice::Waiting {
            run_id: r.id.clone(),
            wake_at: w.wake_at.unwrap()
        }
    );
    assert!(c.claim_wait(&r.id, None).await.unwrap().is_some());
    assert!(matches!(
        b.record_step(&step(&r.id, 2, true), &running(json!({}), None))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    c.record_step(&step(&r.id, 2, true), &running(json!({"n": 2}), Some("s3")))
        .await
        .unwrap();
    c.cancel_run(&r.id).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n,
        Notice::Cancelled {
            run_id: r.id.clone()
        }
    );

    // Many runs of a process that stopped: two takers at once share them,
    // each run to one.
    let d = PgStore::open(&url).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..60 {
        let r = new_run("leased");
        d.create_run(&r).await.unwrap();
        ids.push(r.id);
    }
    d.retire().await.unwrap();
    let (x, y) = tokio::join!(take_all(&b), take_all(&c));
    let mut both: Vec<String> = x.iter().chain(y.iter()).cloned().collect();
    both.sort();
    ids.sort();
    assert_eq!(both, ids, "each run taken once");

    // A process that just dies (its store dropped, no retire): its runs
    // wait for its lease to lapse.
    let e = PgStore::open(&url).await.unwrap();
    e.set_lease(Duration::from_millis(600)).await.unwrap();
    let late = new_run("leased");
    e.create_run(&late).await.unwrap();
    assert!(e.own_poll("polled").await.unwrap());
    assert!(!b.own_poll("polled").await.unwrap());
    drop(e);
    assert!(b.take_over(0).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(b.take_over(0).await.unwrap(), vec![late.id.clone()]);
    // Its poll goes to the next that asks, and stays there.
    assert!(b.own_poll("polled").await.unwrap());
    assert!(!c.own_poll("polled").await.unwrap());
    assert!(b.own_poll("polled").await.unwrap());
    assert_eq!(b.leases().unwrap().taken_over, 1 + x.len() as u64 + 1);
    let pool_for_cleanup = sqlx::PgPool::connect(&url).await.unwrap();

    // A process gone for a day holding no run is forgotten at the next
    // open; one that holds a run is kept.
    let gone = |id: &'static str| {
        let pool = pool_for_cleanup.clone();
        async move {
            sqlx::query("INSERT INTO processes (id, host, pid, version, started_at, alive_until) VALUES ($1, 'h', 1, 'v', 0, 1)")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    gone("long-gone").await;
    gone("gone-holding").await;
    let held = new_run("leased");
    b.create_run(&held).await.unwrap();
    sqlx::query("UPDATE runs SET lease_owner = 'gone-holding' WHERE id = $1")
        .bind(&held.id)
        .execute(&pool_for_cleanup)
        .await
        .unwrap();
    drop(PgStore::open(&url).await.unwrap());
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM processes WHERE id LIKE '%gone%' ORDER BY id")
            .fetch_all(&pool_for_cleanup)
            .await
            .unwrap();
    assert_eq!(left, ["gone-holding"]);
    assert_eq!(b.take_over(0).await.unwrap(), vec![held.id.clone()]);

    // Versions: tables a later version made are not opened; tables this
    // version would change are not changed while a process of another
    // version is alive.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let exec = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    exec("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'later', true, '\\x00', 0)").await;
    let err = PgStore::open(&url).await.unwrap_err().to_string();
    assert!(err.contains("later version of Sluice"), "{err}");
    exec("DELETE FROM _sqlx_migrations WHERE version >= 3").await;
    exec("INSERT INTO processes (id, host, pid, version, started_at, alive_until) VALUES ('old-one', 'h', 1, '0.0.1-old', 0, 9223372036854775807)").await;
    let err = PgStore::open(&url).await.unwrap_err().to_string();
    assert!(
        err.contains("processes of Sluice 0.0.1-old use this store"),
        "{err}"
    );

    drop((a, b, c, d, pool, pool_for_cleanup));
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

/// SQLite is one process's store: it hands every running run over once,
/// at the first call, and has no leases to show.
#[tokio::test]
async fn sqlite_hands_its_running_runs_over_once() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    let r = new_run("once");
    store.create_run(&r).await.unwrap();
    assert!(!store.shared() && store.leases().is_none() && store.notices().is_none());
    assert_eq!(store.take_over(0).await.unwrap(), vec![r.id.clone()]);
    assert!(store.take_over(0).await.unwrap().is_empty());
    assert!(store.own_poll("any").await.unwrap());
}
