//! Data hooks (`event` triggers) on real databases: SQLite always;
//! PostgreSQL and MariaDB when their URLs are set (as `.ci/run` sets them).
//! A before-hook refuses or rewrites a change of a single SQL step and of an
//! envelope's patch (rolling the envelope back); after-hooks start once the
//! change is committed, with the change in `$trigger`, and a refused
//! envelope starts none.

use serde_json::{Value, json};
use sluice_action::Registry;
use sluice_engine::{Engine, RunRequest};
use sluice_model::Flow;
use sluice_store::{RunStatus, SqliteStore, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::Flows;

fn load(registry: &Registry, yaml: &str) -> Flow {
    sluice_model::load("t.yaml", yaml, registry).unwrap_or_else(|d| panic!("{d}\n{yaml}"))
}

async fn run(
    engine: &Engine<SqliteStore>,
    flow: &Flow,
    input: Value,
) -> (RunStatus, Value, String) {
    let r = engine
        .run(
            flow,
            RunRequest {
                input: Some(sluice_expr::data::into_val(input)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (
        r.status,
        r.output_json().unwrap_or(Value::Null),
        format!(
            "{} {}",
            r.run_id,
            r.failure.map(|f| f.message).unwrap_or_default()
        ),
    )
}

/// The rows of a query, once `done` holds for them (after-hooks run on
/// their own), or whatever they are after ten seconds.
async fn rows_when(
    engine: &Engine<SqliteStore>,
    flow: &Flow,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut rows = Vec::new();
    for _ in 0..200 {
        let (st, out, err) = run(engine, flow, json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{err}");
        rows = out["results"].as_array().cloned().unwrap_or_default();
        if done(&rows) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_and_after_hooks_on_every_database() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    for (name, url) in common::databases("hooks-test") {
        let engine = Engine::new(store.clone(), registry.clone());
        let pid = std::process::id();
        let (orders, audit) = (format!("orders_{pid}"), format!("audit_{pid}"));
        let conn = format!("connections:\n  app: {{url: \"{url}\"}}\n");
        let ddl = |cols: &str| match name {
            "sqlite" => format!("id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}"),
            "postgres" => format!("id SERIAL PRIMARY KEY, {cols}"),
            _ => format!("id INT AUTO_INCREMENT PRIMARY KEY, {cols}"),
        };
        let setup = load(
            &registry,
            &format!(
                "id: setup\n{conn}steps:\n  - {{key: d1, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE IF EXISTS {orders}\"}}}}\n  - {{key: d2, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE IF EXISTS {audit}\"}}}}\n  - {{key: c1, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE {orders} ({})\"}}}}\n  - {{key: c2, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE {audit} ({})\"}}}}\n",
                ddl("ref VARCHAR(20) NOT NULL UNIQUE, total INT, status VARCHAR(20)"),
                ddl("what VARCHAR(40), ref VARCHAR(20), parent VARCHAR(40)"),
            ),
        );
        let (st, _, err) = run(&engine, &setup, json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{name}: setup: {err}");

        // The hooks: a check that refuses negative totals; a note, in the
        // same database, of creates through the connection named `app` (the
        // single steps': their before-hooks run before their transaction;
        // an envelope's run inside its transaction, so on SQLite they must
        // not write to its database); a rewrite of the status; an audit of
        // every committed change.
        let check = load(
            &registry,
            &format!(
                "id: check\ntrigger: {{type: event, when: before, on: [create, update], collections: [{orders}]}}\nsteps:\n  - {{key: positive, type: condition, options: {{filter: \"(.total // 0) >= 0\"}}, resolve: null, reject: bad}}\n  - {{key: bad, type: throw, options: {{message: \"total must not be negative\"}}}}\n"
            ),
        );
        let note = load(
            &registry,
            &format!(
                "id: note\ntrigger: {{type: event, when: before, on: [create], collections: [{orders}], connection: app}}\n{conn}steps:\n  - {{key: note, type: sql.create, options: {{connection: app, collection: {audit}, properties: {{what: \"checked {{{{ $trigger.event }}}}\", ref: \"{{{{ .ref }}}}\"}}}}}}\n"
            ),
        );
        let shout = load(
            &registry,
            &format!(
                "id: shout\ntrigger: {{type: event, when: before, on: [create], collections: [{orders}], replacePayload: true}}\nsteps:\n  - {{key: up, type: transform, options: {{value: {{status: \"{{{{ .status | ascii_upcase }}}}\"}}}}}}\n"
            ),
        );
        let audit_flow = load(
            &registry,
            &format!(
                "id: audit\ntrigger: {{type: event, collections: [{orders}]}}\n{conn}steps:\n  - {{key: a, type: sql.create, options: {{connection: app, collection: {audit}, properties: {{what: \"{{{{ $trigger.when }}}} {{{{ $trigger.event }}}}\", ref: \"{{{{ ($trigger.row // $trigger.previous).ref }}}}\", parent: \"{{{{ $trigger.flow }}}}\"}}}}}}\n"
            ),
        );
        let flows: HashMap<String, Arc<Flow>> = [check, note, shout, audit_flow]
            .into_iter()
            .map(|f| (f.id.clone(), Arc::new(f)))
            .collect();
        engine.set_flows(Arc::new(Flows(flows)));
        let audits = load(
            &registry,
            &format!(
                "id: audits\nunmappedResults: replace\n{conn}steps:\n  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT what, ref, parent FROM {audit} ORDER BY id\"}}}}\n"
            ),
        );
        let has = |rows: &[Value], what: &str, r: &str| {
            rows.iter()
                .any(|x| x["what"] == json!(what) && x["ref"] == json!(r))
        };

        // A single create: checked (the check writes to the same database
        // first), rewritten, committed, then audited.
        let create = load(
            &registry,
            &format!(
                "id: shop\nunmappedResults: replace\n{conn}steps:\n  - {{key: c, type: sql.create, options: {{connection: app, collection: {orders}, properties: {{ref: \"{{{{ .ref }}}}\", total: \"{{{{ .total }}}}\", status: new}}}}}}\n"
            ),
        );
        let (st, out, err) = run(&engine, &create, json!({"ref": "A1", "total": 10})).await;
        assert_eq!(st, RunStatus::Succeeded, "{name}: {err}");
        assert_eq!(out["status"], json!("NEW"), "{name}: rewritten: {out}");
        let run_id = err.split(' ').next().unwrap().to_owned();
        let rows = rows_when(&engine, &audits, |r| has(r, "after create", "A1")).await;
        assert!(has(&rows, "checked create", "A1"), "{name}: {rows:?}");
        assert!(has(&rows, "after create", "A1"), "{name}: {rows:?}");
        assert!(
            rows.iter().any(|x| x["parent"] == json!("shop")),
            "{name}: $trigger.flow: {rows:?}"
        );
        // The hooks' runs are recorded, with ids made from the step's attempt.
        let hook_run = store
            .get_run(&format!("{run_id}-c-1-after1-audit"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the audit run"));
        assert_eq!(
            sluice_expr::data::to_json(&hook_run.trigger)["event"],
            json!("create")
        );
        assert_eq!(
            sluice_expr::data::to_json(&hook_run.trigger)["row"]["ref"],
            json!("A1")
        );
        assert_eq!(
            sluice_expr::data::to_json(&hook_run.trigger)["run"],
            json!(run_id)
        );
        assert!(
            store
                .get_run(&format!("{run_id}-c-1-before0-check"))
                .await
                .unwrap()
                .is_some()
        );

        // A refused create: nothing written, no after-hook.
        let (st, _, err) = run(&engine, &create, json!({"ref": "A2", "total": -5})).await;
        assert_ne!(st, RunStatus::Succeeded, "{name}");
        assert!(
            err.contains("refused by before-hook flow `check`")
                && err.contains("total must not be negative"),
            "{name}: {err}"
        );

        // An upsert of an existing row is an update: checked and audited as one.
        let upsert = load(
            &registry,
            &format!(
                "id: shop\nunmappedResults: replace\n{conn}steps:\n  - {{key: u, type: sql.upsert, options: {{connection: app, collection: {orders}, criteria: {{ref: \"{{{{ .ref }}}}\"}}, properties: {{total: \"{{{{ .total }}}}\"}}}}}}\n"
            ),
        );
        let (st, out, err) = run(&engine, &upsert, json!({"ref": "A1", "total": 20})).await;
        assert_eq!(st, RunStatus::Succeeded, "{name}: {err}");
        assert_eq!(out["total"], json!(20));
        assert_eq!(
            out["status"],
            json!("NEW"),
            "{name}: shout hooks creates only"
        );
        let (st, _, err) = run(&engine, &upsert, json!({"ref": "A1", "total": -1})).await;
        assert_ne!(st, RunStatus::Succeeded, "{name}");
        assert!(err.contains("refused"), "{name}: {err}");

        // An envelope whose second patch is refused: the first is rolled
        // back and no after-hook runs for it.
        let envelope = load(
            &registry,
            &format!(
                "id: shop\nunmappedResults: replace\n{}steps:\n  - key: e\n    type: envelope\n    options:\n      connection: env\n      patches:\n        - {{op: create, collection: {orders}, properties: {{ref: \"{{{{ .new }}}}\", total: 1, status: fresh}}}}\n        - {{op: update, collection: {orders}, criteria: {{ref: A1}}, properties: {{total: \"{{{{ .total }}}}\"}}}}\n        - {{op: delete, collection: {orders}, criteria: {{ref: \"{{{{ .gone }}}}\"}}}}\n",
                conn.replace("app:", "env:")
            ),
        );
        let (st, _, err) = run(
            &engine,
            &envelope,
            json!({"new": "B1", "total": -3, "gone": "none"}),
        )
        .await;
        assert_ne!(st, RunStatus::Succeeded, "{name}");
        assert!(
            err.contains("patch 2") && err.contains("refused") && err.contains("rolled back"),
            "{name}: {err}"
        );
        let (st, out, err) = run(
            &engine,
            &envelope,
            json!({"new": "B2", "total": 30, "gone": "B2"}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{name}: {err}");
        assert_eq!(out["results"][0]["status"], json!("FRESH"), "{name}: {out}");
        // Five changes committed in all; their audits run on their own.
        let rows = rows_when(&engine, &audits, |r| {
            r.iter()
                .filter(|x| x["what"].as_str().is_some_and(|w| w.starts_with("after")))
                .count()
                >= 5
        })
        .await;
        for (what, r) in [
            ("after update", "A1"),
            ("after create", "B2"),
            ("after delete", "B2"),
        ] {
            assert!(has(&rows, what, r), "{name}: {what} {r}: {rows:?}");
        }
        assert!(
            !rows
                .iter()
                .any(|x| x["ref"] == json!("B1") && x["what"] != json!("checked create")),
            "{name}: the refused envelope's create was not audited: {rows:?}"
        );
        assert!(
            !rows
                .iter()
                .any(|x| x["ref"] == json!("A2") && x["what"] != json!("checked create")),
            "{name}: {rows:?}"
        );
        let count = |what: &str| rows.iter().filter(|x| x["what"] == json!(what)).count();
        // A1 created, A1 updated, B2 created, A1 updated (envelope), B2 deleted.
        assert_eq!(
            (
                count("after create"),
                count("after update"),
                count("after delete")
            ),
            (2, 2, 1),
            "{name}: {rows:?}"
        );
    }
}

#[tokio::test]
async fn a_hook_that_writes_what_it_hooks_stops_at_the_nesting_limit() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    let dir = std::env::temp_dir().join(format!("sluice-hook-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("loop.db").display());
    let conn = format!("connections:\n  app: {{url: \"{url}\"}}\n");
    let setup = load(
        &registry,
        &format!(
            "id: setup\n{conn}steps:\n  - {{key: d, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE IF EXISTS t\"}}}}\n  - {{key: c, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE t (id INTEGER PRIMARY KEY, n INT)\"}}}}\n"
        ),
    );
    assert_eq!(
        run(&engine, &setup, json!({})).await.0,
        RunStatus::Succeeded
    );
    // Before every create, create another: without the limit, no end.
    let echo = load(
        &registry,
        &format!(
            "id: echo\ntrigger: {{type: event, when: before, on: [create], collections: [t]}}\n{conn}steps:\n  - {{key: again, type: sql.create, options: {{connection: app, collection: t, properties: {{n: \"{{{{ .n + 1 }}}}\"}}}}}}\n"
        ),
    );
    let flows: HashMap<String, Arc<Flow>> = [("echo".to_owned(), Arc::new(echo))].into();
    engine.set_flows(Arc::new(Flows(flows)));
    let create = load(
        &registry,
        &format!(
            "id: go\n{conn}steps:\n  - {{key: c, type: sql.create, options: {{connection: app, collection: t, properties: {{n: 0}}}}}}\n"
        ),
    );
    let (st, _, err) = run(&engine, &create, json!({})).await;
    assert_ne!(st, RunStatus::Succeeded);
    assert!(err.contains("nest runs 32 deep"), "{err}");
}

/// `sql.link` and `sql.unlink` are changes of the link table: a
/// before-hook may refuse or rewrite a link's data, and after-hooks hear
/// the link created, updated and deleted.
#[tokio::test]
async fn links_are_changes_of_the_link_table() {
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    let dir = std::env::temp_dir().join(format!("sluice-hook-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("links.db").display());
    let conn = format!("connections:\n  app: {{url: \"{url}\"}}\n");
    let mut setup = format!("id: setup\n{conn}steps:\n");
    for (k, sql) in [
        ("d1", "DROP TABLE IF EXISTS members"),
        ("d2", "DROP TABLE IF EXISTS people"),
        ("d3", "DROP TABLE IF EXISTS teams"),
        ("d4", "DROP TABLE IF EXISTS audit"),
        (
            "c1",
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
        ),
        (
            "c2",
            "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
        ),
        (
            "c3",
            "CREATE TABLE members (person_id INT NOT NULL, team_id INT NOT NULL, role TEXT, PRIMARY KEY (person_id, team_id))",
        ),
        (
            "c4",
            "CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT, role TEXT)",
        ),
        ("i1", "INSERT INTO people (name) VALUES ('ada')"),
        ("i2", "INSERT INTO teams (name) VALUES ('core')"),
    ] {
        setup.push_str(&format!(
            "  - {{key: {k}, type: sql.query, options: {{connection: app, mode: statement, query: \"{sql}\"}}}}\n"
        ));
    }
    let (st, _, err) = run(&engine, &load(&registry, &setup), json!({})).await;
    assert_eq!(st, RunStatus::Succeeded, "setup: {err}");
    let guard = load(
        &registry,
        "id: guard\ntrigger: {type: event, when: before, on: [create, update], collections: [members], replacePayload: true}\nsteps:\n  - {key: ok, type: condition, options: {filter: '.role != \"owner\"'}, resolve: low, reject: refuse}\n  - {key: low, type: transform, options: {value: {role: \"{{ .role | ascii_downcase }}\"}}, resolve: null}\n  - {key: refuse, type: throw, options: {message: nobody owns a team}}\n",
    );
    let log = load(
        &registry,
        &format!(
            "id: log\ntrigger: {{type: event, collections: [members]}}\n{conn}steps:\n  - {{key: a, type: sql.create, options: {{connection: app, collection: audit, properties: {{what: \"{{{{ $trigger.event }}}}\", role: \"{{{{ ($trigger.row // $trigger.previous).role }}}}\"}}}}}}\n"
        ),
    );
    let flows: HashMap<String, Arc<Flow>> = [guard, log]
        .into_iter()
        .map(|f| (f.id.clone(), Arc::new(f)))
        .collect();
    engine.set_flows(Arc::new(Flows(flows)));
    let link = |kind: &str| {
        load(
            &registry,
            &format!(
                "id: l\nunmappedResults: replace\n{conn}steps:\n  - {{key: l, type: {kind}, options: {{connection: app, linkCollection: members, from: {{collection: people, criteria: {{name: ada}}, field: person_id}}, to: {{collection: teams, criteria: {{name: core}}, field: team_id}}{}}}}}\n",
                if kind == "sql.link" {
                    ", data: {role: \"{{ .role }}\"}"
                } else {
                    ""
                }
            ),
        )
    };
    let (linked, unlinked) = (link("sql.link"), link("sql.unlink"));

    let (st, out, err) = run(&engine, &linked, json!({"role": "Member"})).await;
    assert_eq!(st, RunStatus::Succeeded, "{err}");
    assert_eq!(out["role"], json!("member"), "rewritten by the hook: {out}");
    let (st, _, err) = run(&engine, &linked, json!({"role": "owner"})).await;
    assert_ne!(st, RunStatus::Succeeded);
    assert!(
        err.contains("refused by before-hook flow `guard`") && err.contains("nobody owns a team"),
        "{err}"
    );
    let (st, out, err) = run(&engine, &linked, json!({"role": "Lead"})).await;
    assert_eq!(st, RunStatus::Succeeded, "{err}");
    assert_eq!(out["role"], json!("lead"));
    let (st, _, err) = run(&engine, &unlinked, json!({})).await;
    assert_eq!(st, RunStatus::Succeeded, "{err}");

    let audits = load(
        &registry,
        &format!(
            "id: audits\nunmappedResults: replace\n{conn}steps:\n  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT what, role FROM audit ORDER BY id\"}}}}\n"
        ),
    );
    let rows = rows_when(&engine, &audits, |r| r.len() >= 3).await;
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["what"].as_str().unwrap_or_default().to_owned(),
                r["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("create".to_owned(), "member".to_owned()),
            ("delete".to_owned(), "lead".to_owned()),
            ("update".to_owned(), "lead".to_owned()),
        ],
        "{rows:?}"
    );
}
