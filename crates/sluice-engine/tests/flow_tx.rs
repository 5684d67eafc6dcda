//! `transaction: flow` on real databases (SQLite always; PostgreSQL and
//! MariaDB when their URLs are set, as `.ci/run` sets them): every write of
//! a run is one transaction, committed when the run succeeds, rolled back
//! when it fails at any later step; a failure path goes on without the
//! failed step's writes; reads see the run's earlier writes; a run whose
//! transaction committed just before the process stopped is found done when
//! it is recovered, and a run resumed after an incident starts again from
//! its first step.

use serde_json::{Value, json};
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_model::Flow;
use sluice_store::{RunStatus, RunUpdate, SqliteStore, Store};
use std::sync::Arc;

mod common;

fn ddl(backend: &str, table: &str) -> String {
    match backend {
        "sqlite" => format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE)"
        ),
        "postgres" => {
            format!("CREATE TABLE {table} (id SERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE)")
        }
        _ => format!(
            "CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(200) NOT NULL UNIQUE)"
        ),
    }
}

/// A run rewound by the process's stop: running, at step `more`.
fn at_more(state: Value) -> RunUpdate {
    RunUpdate {
        status: RunStatus::Running,
        state: sluice_expr::data::into_val(state),
        next_step: Some("more".into()),
        output: None,
        error: None,
        error_step: None,
        ended_at: None,
    }
}

/// A count as a number, whichever way the database gives it.
fn n(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

struct Db {
    engine: Engine<SqliteStore>,
    registry: Arc<sluice_action::Registry>,
    head: String,
    table: String,
}

impl Db {
    fn load(&self, text: &str) -> Flow {
        sluice_model::load("test.yaml", text, self.registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"))
    }

    async fn run(&self, flow: &Flow, input: Value) -> RunResult {
        let req = RunRequest {
            input: Some(sluice_expr::data::into_val(input)),
            ..Default::default()
        };
        self.engine.run(flow, req).await.unwrap()
    }

    /// Statements in a flow of their own (not in one transaction).
    async fn statements(&self, sql: &[String]) {
        let steps: String = sql
            .iter()
            .enumerate()
            .map(|(i, q)| format!("  - {{key: s{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n"))
            .collect();
        let flow = self.load(&format!("id: setup\n{}{steps}", self.head));
        let r = self.run(&flow, json!({})).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    }

    /// The table's emails, in order.
    async fn emails(&self) -> Vec<String> {
        let flow = self.load(&format!(
            "id: rows\nunmappedResults: replace\n{}  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT email FROM {} ORDER BY email\"}}}}\n",
            self.head, self.table
        ));
        let r = self.run(&flow, json!({})).await;
        let rows = r.output_json().unwrap_or_else(|| panic!("{:?}", r.failure));
        rows["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["email"].as_str().map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_in_one_transaction_commits_all_or_none_on_every_database() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let mut done = Vec::new();
    for (name, url) in common::databases("flow-tx") {
        let table = format!("ftx_{}", std::process::id());
        let db = Db {
            engine: Engine::new(store.clone(), registry.clone()),
            registry: registry.clone(),
            head: format!("connections:\n  app: {{url: \"{url}\"}}\nsteps:\n"),
            table: table.clone(),
        };
        db.statements(&[format!("DROP TABLE IF EXISTS {table}"), ddl(name, &table)])
            .await;
        // A create, a read of the table (which sees the create), an
        // envelope's create; `reject` on the envelope in the second flow.
        let steps = |reject: &str| {
            format!(
                "  - {{key: add, type: sql.create, options: {{connection: app, collection: {table}, properties: {{email: \"{{{{ .a }}}}\"}}}}, outputMappings: [{{source: \"$.email\", target: \"$.added\"}}]}}\n  - {{key: seen, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {table} WHERE email = :a\", params: {{a: \"{{{{ .a }}}}\"}}}}, outputMappings: [{{source: \"$.n\", target: \"$.seen\"}}]}}\n  - {{key: more, type: envelope, options: {{connection: app, patches: [{{op: create, collection: {table}, properties: {{email: \"{{{{ .b }}}}\"}}}}]}}{reject}, outputMappings: [{{source: \"$.results[0].email\", target: \"$.more\"}}]}}\n  - {{key: finish, type: transform, options: {{value: {{done: true}}}}}}\n"
            )
        };
        let plain = db.load(&format!(
            "id: tx\ntransaction: flow\n{}{}",
            db.head,
            steps("")
        ));
        let rejecting = db.load(&format!(
            "id: tx_reject\ntransaction: flow\n{}{}",
            db.head,
            steps(", reject: finish")
        ));

        // The envelope fails (a duplicate in the run itself): the first
        // step's row goes with it.
        let r = db.run(&plain, json!({"a": "x1@t", "b": "x1@t"})).await;
        assert_ne!(r.status, RunStatus::Succeeded, "{name}");
        let failed_run = r.run_id.clone();
        assert!(
            db.emails().await.is_empty(),
            "{name}: {:?}",
            db.emails().await
        );

        // Both writes commit when the run succeeds; the read in between saw
        // the first (through the run's transaction).
        let r = db.run(&plain, json!({"a": "x1@t", "b": "x2@t"})).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{name}: {:?}", r.failure);
        let out = r.output_json().unwrap();
        assert_eq!(n(&out["seen"]), Some(1), "{name}: {out}");
        assert_eq!(db.emails().await, ["x1@t", "x2@t"], "{name}");
        let committed = r;

        // A failure path goes on: the failed step's writes are rolled back
        // (to its savepoint), the rest commits.
        let r = db.run(&rejecting, json!({"a": "x3@t", "b": "x1@t"})).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{name}: {:?}", r.failure);
        assert!(
            r.output_json().as_ref().unwrap().get("more").is_none(),
            "{name}"
        );
        assert_eq!(db.emails().await, ["x1@t", "x2@t", "x3@t"], "{name}");

        // The process stopped after the run's transaction committed, before
        // the store heard: recovered, the run is found done (run again, its
        // creates would break the unique key).
        store
            .update_run(
                &committed.run_id,
                &at_more(json!({"a": "x1@t", "b": "x2@t"})),
            )
            .await
            .unwrap();
        let again = db.engine.recover(&plain, &committed.run_id).await.unwrap();
        assert_eq!(
            again.status,
            RunStatus::Succeeded,
            "{name}: {:?}",
            again.failure
        );
        assert_eq!(again.output_json(), committed.output_json(), "{name}");
        assert_eq!(db.emails().await, ["x1@t", "x2@t", "x3@t"], "{name}");

        // A run stopped mid-way (its transaction dropped with the process)
        // is recovered from its first step, with its input.
        store
            .update_run(
                &failed_run,
                &at_more(json!({"a": "x1@t", "b": "x1@t", "added": "x1@t"})),
            )
            .await
            .unwrap();
        let input = store.get_run(&failed_run).await.unwrap().unwrap().input;
        assert_eq!(
            sluice_expr::data::to_json(&input),
            json!({"a": "x1@t", "b": "x1@t"}),
            "{name}"
        );
        let again = db.engine.recover(&plain, &failed_run).await.unwrap();
        // From the first step: its create of x1 meets the committed x1.
        assert_ne!(again.status, RunStatus::Succeeded, "{name}");
        let detail = store.get_run(&failed_run).await.unwrap().unwrap();
        let last = detail.steps.last().unwrap();
        assert_eq!(last.step_key, "add", "{name}: {last:?}");
        assert_eq!(db.emails().await, ["x1@t", "x2@t", "x3@t"], "{name}");

        // A run at an incident resumed with a patch: the patch is to its
        // input, and it runs from its first step.
        // (A duplicate blames the data: the run stops at an incident.)
        assert_eq!(detail.summary.status, RunStatus::Incident, "{name}");
        let r = db
            .engine
            .resume(
                &plain,
                &failed_run,
                Some(&json!({"a": "x4@t", "b": "x5@t"})),
            )
            .await
            .unwrap();
        assert_eq!(r.status, RunStatus::Succeeded, "{name}: {:?}", r.failure);
        assert_eq!(r.output_json().as_ref().unwrap()["more"], "x5@t", "{name}");
        assert_eq!(
            db.emails().await,
            ["x1@t", "x2@t", "x3@t", "x4@t", "x5@t"],
            "{name}"
        );
        db.statements(&[format!("DROP TABLE IF EXISTS {table}")])
            .await;
        done.push(name);
    }
    println!(
        "transaction: flow: {} passed, 0 failed ({})",
        done.len(),
        done.join(", ")
    );
}
