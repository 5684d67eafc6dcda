//! Envelopes that span a database and an API: a SQLite table and
//! json-server's `/orders` (a REST API from the npm registry; `.ci/run`
//! installs it and sets `SLUICE_JSON_SERVER`). When a patch after the call
//! fails, the database's part rolls back and the call is undone by its
//! compensation; a compensation that fails stops the run at an incident
//! that names the call.

use serde_json::{Value, json};
use sluice_action::Blame;
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_store::{RunStatus, SqliteStore};
use std::sync::Arc;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_envelope_undoes_its_database_writes_and_its_api_calls() {
    let dir = std::env::temp_dir().join(format!("sluice-span-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some(server) = common::start_json_server(&dir, &json!({"orders": []})) else {
        return;
    };
    let port = server.port;
    let mut registry = sluice_sql::registry();
    sluice_http::register(&mut registry);
    let registry = Arc::new(registry);
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        registry.clone(),
    );
    let db = format!("sqlite://{}?mode=rwc", dir.join("app.db").display());
    let head = format!(
        "connections:\n  db: {{url: \"{db}\"}}\n  api: {{type: http, baseUrl: \"http://127.0.0.1:{port}\", allowPrivateHosts: [127.0.0.1]}}\n"
    );
    let run = async |text: String, input: Value| -> RunResult {
        let flow = sluice_model::load("span.yaml", &text, registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"));
        let req = RunRequest {
            input: Some(sluice_expr::data::into_val(input)),
            ..Default::default()
        };
        engine.run(&flow, req).await.unwrap()
    };
    let setup = format!(
        "id: setup\n{head}steps:\n  - {{key: mk_accounts, type: sql.query, options: {{connection: db, mode: statement, query: \"CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL)\"}}}}\n  - {{key: mk_notes, type: sql.query, options: {{connection: db, mode: statement, query: \"CREATE TABLE notes (id INTEGER PRIMARY KEY, account_id INT NOT NULL, body TEXT NOT NULL, order_ref INT)\"}}}}\n"
    );
    assert_eq!(run(setup, json!({})).await.status, RunStatus::Succeeded);
    let envelope = |undo_url: &str| {
        format!(
            r#"id: span
unmappedResults: replace
{head}steps:
  - key: span
    type: envelope
    options:
      connection: db
      patches:
        - {{op: create, collection: accounts, properties: {{name: "{{{{ .name }}}}"}}, setTokens: {{accountId: id}}}}
        - call: {{connection: api, method: POST, url: /orders, body: {{account: "{{{{ $tokens.accountId }}}}", total: "{{{{ .total }}}}"}}}}
          compensate: {{connection: api, method: DELETE, url: "{undo_url}"}}
          setTokens: {{orderId: body.id}}
        - {{op: create, collection: notes, properties: {{account_id: "{{{{ $tokens.accountId }}}}", body: "{{{{ .note }}}}", order_ref: "{{{{ $tokens.orderId }}}}"}}}}
"#
        )
    };
    let count = async |table: &str| -> i64 {
        let text = format!(
            "id: c\nunmappedResults: replace\n{head}steps:\n  - {{key: q, type: sql.query, options: {{connection: db, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {table}\"}}}}\n"
        );
        run(text, json!({})).await.output_json().unwrap()["n"]
            .as_i64()
            .unwrap()
    };
    let orders = || {
        common::http(port, "GET", "/orders", None)
            .and_then(|(_, v)| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let undo = "/orders/{{ $tokens.orderId }}";

    // All three patches: a row, an order at the API, a row naming both.
    let r = run(
        envelope(undo),
        json!({"name": "Acme", "total": 90, "note": "first"}),
    )
    .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    let out = r.output_json().unwrap();
    assert_eq!(out["tokens"]["orderId"], json!(1), "{out}");
    assert_eq!(out["results"][1]["status"], json!(201), "{out}");
    assert_eq!(
        (count("accounts").await, count("notes").await, orders()),
        (1, 1, 1)
    );

    // The third patch fails (a note with no body): the account rolls back
    // and the order is deleted by its compensation.
    let r = run(
        envelope(undo),
        json!({"name": "Bolt", "total": 20, "note": null}),
    )
    .await;
    let f = r.failure.unwrap();
    assert_eq!(
        (r.status, f.blame),
        (RunStatus::Incident, Blame::Data),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("patch 3 (create notes) failed")
            && f.message
                .contains("its database writes, and 1 call(s) undone by their compensation"),
        "{}",
        f.message
    );
    assert_eq!(
        (count("accounts").await, count("notes").await, orders()),
        (1, 1, 1)
    );

    // A compensation that fails: the run stops at an incident naming the
    // call that could not be undone (its order stays at the API).
    let r = run(
        envelope("/nowhere/{{ $tokens.orderId }}"),
        json!({"name": "Cog", "total": 5, "note": null}),
    )
    .await;
    let f = r.failure.unwrap();
    assert_eq!(
        (r.status, f.blame),
        (RunStatus::Incident, Blame::External),
        "{}",
        f.message
    );
    assert!(
        f.message.contains(
            "these calls could not be undone: patch 2 (call POST /orders): its compensation failed"
        ) && f.message.contains("answered 404"),
        "{}",
        f.message
    );
    assert_eq!(
        (count("accounts").await, count("notes").await, orders()),
        (1, 1, 2)
    );

    // Without a compensation, a call that wrote cannot be undone either.
    let text = envelope(undo).replace(
        &format!("          compensate: {{connection: api, method: DELETE, url: \"{undo}\"}}\n"),
        "",
    );
    let r = run(text, json!({"name": "Dot", "total": 1, "note": null})).await;
    let f = r.failure.unwrap();
    assert_eq!(r.status, RunStatus::Incident);
    assert!(
        f.message
            .contains("patch 2 (call POST /orders): it has no `compensate`"),
        "{}",
        f.message
    );
    assert_eq!((count("accounts").await, orders()), (1, 3));
}
