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
    assert_eq!(parent.steps[0].result, Some(json!([1, 2, 3])));
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
