//! Fan-out runs are linked to the run that emitted them, and each keeps its
//! own run log.

use serde_json::json;
use sluice_engine::{Engine, RunRequest};
use sluice_store::{RunFilter, RunStatus, SqliteStore, Store};
use std::sync::Arc;

#[tokio::test]
async fn each_item_is_a_linked_run_with_its_own_log() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    let flow = "id: fan\nunmappedResults: replace\nsteps:\n  - {key: each, type: split, options: {items: [1, 2, 3]}}\n  - {key: check, type: condition, options: {filter: \". != 2\"}}\n  - {key: done, type: transform, options: {value: \"{{ . }}\"}}\n";
    let flow = sluice_model::load("fan.yaml", flow, registry.as_ref()).unwrap();
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 4, "the parent and one run per item");
    let mut children = Vec::new();
    for s in &runs {
        let d = store.get_run(&s.id).await.unwrap().unwrap();
        if let Some((parent, item)) = d.parent {
            assert_eq!(parent, r.run_id);
            children.push((
                item,
                d.summary.status,
                d.steps
                    .iter()
                    .map(|s| s.step_key.clone())
                    .collect::<Vec<_>>(),
            ));
        }
    }
    children.sort_by_key(|c| c.0);
    assert_eq!(
        children[0],
        (
            0,
            RunStatus::Succeeded,
            vec!["check".to_owned(), "done".to_owned()]
        )
    );
    assert_eq!(
        children[1],
        (1, RunStatus::Failed, vec!["check".to_owned()])
    );
    assert_eq!(children[2].1, RunStatus::Succeeded);
    let parent = store.get_run(&r.run_id).await.unwrap().unwrap();
    assert_eq!(
        parent.steps.len(),
        1,
        "the parent's log holds the step that fanned out"
    );
    assert_eq!(
        parent.steps[0]
            .result
            .as_ref()
            .map(sluice_expr::data::to_json)
            .as_ref(),
        Some(&json!([1, 2, 3]))
    );
    assert!(
        parent
            .summary
            .error
            .unwrap()
            .contains(&format!("item 2 (run {})", children_id(&runs, &r.run_id)))
    );
}

fn children_id(runs: &[sluice_store::RunSummary], parent: &str) -> String {
    // The failed item's run: the one failed run that is not the parent.
    runs.iter()
        .find(|r| r.id != parent && r.status == RunStatus::Failed)
        .map(|r| r.id.clone())
        .unwrap_or_default()
}

/// The flows of a test, for `flow` steps.
struct Flows(Vec<Arc<sluice_model::Flow>>);

impl sluice_engine::FlowLookup for Flows {
    fn flow(&self, id: &str) -> Option<Arc<sluice_model::Flow>> {
        self.0.iter().find(|f| f.id == id).cloned()
    }
    fn all(&self) -> Vec<Arc<sluice_model::Flow>> {
        self.0.clone()
    }
}

/// The `(start, end)` of step `key` in each run, in the runs' order.
async fn spans(store: &SqliteStore, runs: &[String], key: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for id in runs {
        let d = store
            .get_run(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no run {id}"));
        let s = d.steps.iter().find(|s| s.step_key == key).unwrap();
        out.push((s.started_at, s.ended_at));
    }
    out
}

/// The most spans that overlap at one instant.
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(a, _)| spans.iter().filter(|(s, e)| s <= a && a < e).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_flow_steps_run_items_at_their_pace() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    let load = |t: &str| Arc::new(sluice_model::load("t.yaml", t, registry.as_ref()).unwrap());
    let sub = load(
        "id: sub\ntrigger: {type: flow}\nunmappedResults: replace\nsteps:\n  - {key: nap, type: sleep, options: {ms: 300}}\n  - {key: ok, type: condition, options: {filter: \". != 99\"}}\n  - {key: out, type: transform, options: {value: \"{{ . * 10 }}\"}}\n",
    );
    let caller = |options: &str| {
        load(&format!(
            "id: caller\nunmappedResults: replace\nsteps:\n  - {{key: each, type: flow, options: {{flow: sub, {options}}}}}\n"
        ))
    };
    engine.set_flows(Arc::new(Flows(vec![sub.clone()])));
    let ids = |run: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{run}-each-1-{i}")).collect()
    };

    // parallel, at most 2 at once; the outputs in the elements' order.
    let flow = caller("input: [1, 2, 3, 4, 5], iterationMode: parallel, concurrency: 2");
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(
        r.output_json(),
        Some(json!([10, 20, 30, 40, 50])),
        "{:?}",
        r.failure
    );
    let s = spans(&store, &ids(&r.run_id, 5), "nap").await;
    assert_eq!(most_at_once(&s), 2, "{s:?}");

    // batch of 2: a batch starts when the one before has ended.
    let flow = caller("input: [1, 2, 3, 4, 5], iterationMode: batch, batchSize: 2");
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(r.output_json(), Some(json!([10, 20, 30, 40, 50])));
    let s = spans(&store, &ids(&r.run_id, 5), "nap").await;
    for b in 1..3 {
        let before = s[(b - 1) * 2..b * 2].iter().map(|x| x.1).max().unwrap();
        assert!(
            s[b * 2..(b * 2 + 2).min(5)].iter().all(|x| x.0 >= before),
            "{s:?}"
        );
    }
    assert!(most_at_once(&s) <= 2, "{s:?}");

    // serial: one after another; an element that fails fails the step and
    // starts no later one.
    let flow = caller("input: [1, 99, 3], iterationMode: serial");
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_ne!(r.status, RunStatus::Succeeded);
    let message = r.failure.unwrap().message;
    assert!(
        message.contains("element 2 of 3: the run of flow `sub` failed"),
        "{message}"
    );
    assert!(
        store
            .get_run(&format!("{}-each-1-2", r.run_id))
            .await
            .unwrap()
            .is_none()
    );

    // Not a list: refused, naming what it is.
    let flow = caller("input: {a: 1}, iterationMode: serial");
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert!(
        r.failure
            .unwrap()
            .message
            .contains("once per element of a list; the input is object")
    );

    // Fan-out: split with concurrency 3 over 6 items.
    let flow = load(
        "id: fan\nunmappedResults: replace\nsteps:\n  - {key: each, type: split, options: {items: [1, 2, 3, 4, 5, 6], concurrency: 3}}\n  - {key: nap, type: sleep, options: {ms: 300}}\n  - {key: out, type: transform, options: {value: \"{{ . }}\"}}\n",
    );
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(
        r.output_json(),
        Some(json!([1, 2, 3, 4, 5, 6])),
        "{:?}",
        r.failure
    );
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    let mut children = Vec::new();
    for s in &runs {
        let d = store.get_run(&s.id).await.unwrap().unwrap();
        if d.parent.as_ref().is_some_and(|(p, _)| *p == r.run_id) {
            children.push(s.id.clone());
        }
    }
    assert_eq!(children.len(), 6);
    let s = spans(&store, &children, "nap").await;
    assert_eq!(most_at_once(&s), 3, "{s:?}");
}
