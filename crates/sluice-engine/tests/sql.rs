//! The SQL actions on real databases: SQLite always; PostgreSQL and MariaDB
//! when `SLUICE_TEST_POSTGRES_URL` / `SLUICE_TEST_MYSQL_URL` are set (as
//! `.ci/run` sets them). A URL that is set must be reachable: the test fails
//! rather than skips. Under CI both must be set.

use serde_json::{Value, json};
use sluice_action::Registry;
use sluice_engine::{Engine, RunRequest};
use sluice_store::{RunStatus, SqliteStore};
use std::sync::Arc;

mod common;

struct Backend {
    name: &'static str,
    url: String,
    ddl: &'static str,
}

fn backends() -> Vec<Backend> {
    common::databases("sql-test")
        .into_iter()
        .map(|(name, url)| Backend {
            name,
            url,
            ddl: match name {
                "sqlite" => "CREATE TABLE TBL (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, name TEXT, score REAL, active BOOLEAN, created TEXT DEFAULT CURRENT_TIMESTAMP)",
                "postgres" => "CREATE TABLE TBL (id SERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE, name VARCHAR(100), score NUMERIC(6,2), active BOOLEAN, created TIMESTAMPTZ DEFAULT now())",
                _ => "CREATE TABLE TBL (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(200) NOT NULL UNIQUE, name VARCHAR(100), score DECIMAL(6,2), active BOOLEAN, created DATETIME DEFAULT CURRENT_TIMESTAMP)",
            },
        })
        .collect()
}

async fn run(
    engine: &Engine<SqliteStore>,
    registry: &Registry,
    flow: &str,
    input: Value,
) -> (RunStatus, Option<Value>, String) {
    let r = run_result(engine, registry, flow, input).await;
    (
        r.status,
        r.output_json(),
        r.failure.map(|f| f.message).unwrap_or_default(),
    )
}

async fn run_result(
    engine: &Engine<SqliteStore>,
    registry: &Registry,
    flow: &str,
    input: Value,
) -> sluice_engine::RunResult {
    let flow = sluice_model::load("test.yaml", flow, registry).unwrap_or_else(|d| panic!("{d}"));
    engine
        .run(
            &flow,
            RunRequest {
                input: Some(sluice_expr::data::into_val(input)),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_actions_on_every_database() {
    let registry = Arc::new(sluice_sql::registry());
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        registry.clone(),
    );
    let mut summary = Vec::new();
    for b in backends() {
        let table = format!("customers_{}", std::process::id());
        let head = format!(
            "id: t\nunmappedResults: replace\nconnections:\n  app: {{url: \"{}\"}}\nsteps:\n",
            b.url
        );
        // Fresh table.
        let setup = format!(
            "{head}  - {{key: drop, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE IF EXISTS {table}\"}}}}\n  - {{key: create, type: sql.query, options: {{connection: app, mode: statement, query: \"{}\"}}}}\n",
            b.ddl.replace("TBL", &table)
        );
        let (st, _, err) = run(&engine, &registry, &setup, json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: setup: {err}", b.name);

        // sql.create emits the stored row, defaults and all; values are bound.
        let create = format!(
            "{head}  - key: c\n    type: sql.create\n    options:\n      connection: app\n      collection: {table}\n      properties: {{email: \"{{{{ .email }}}}\", name: \"{{{{ .name }}}}\", score: \"{{{{ .score }}}}\", active: true}}\n"
        );
        for (email, name, score) in [
            ("ada@example.com", "Ada", 4.5),
            ("bob@example.com", "Bob", 3.25),
            ("ann@example.com", "Ada", 1.0),
        ] {
            let (st, out, err) = run(
                &engine,
                &registry,
                &create,
                json!({"email": email, "name": name, "score": score}),
            )
            .await;
            assert_eq!(st, RunStatus::Succeeded, "{}: create: {err}", b.name);
            let row = out.unwrap();
            assert_eq!(row["email"], json!(email), "{}: {row}", b.name);
            assert!(
                row["id"].as_i64().is_some_and(|i| i > 0),
                "{}: {row}",
                b.name
            );
            assert_eq!(row["score"].as_f64(), Some(score), "{}: {row}", b.name);
            assert!(
                !row["created"].is_null(),
                "{}: default filled in: {row}",
                b.name
            );
        }
        // A value that breaks a constraint: the database's own message,
        // blamed on the data (an incident: fixed and resumed, not retried).
        let (st, _, err) = run(
            &engine,
            &registry,
            &create,
            json!({"email": "ada@example.com", "name": "Dup", "score": 0}),
        )
        .await;
        assert_eq!(st, RunStatus::Incident, "{}: {err}", b.name);
        assert!(
            err.to_lowercase().contains("unique") || err.to_lowercase().contains("duplicate"),
            "{}: {err}",
            b.name
        );
        // Which key: PostgreSQL says it in a detail, MariaDB in its message.
        if b.name != "sqlite" {
            assert!(err.contains("ada@example.com"), "{}: {err}", b.name);
        }
        // The database refuses the data itself: an incident blamed on the
        // data, with the database's own message.
        let mut refusals = vec![(
            "not null",
            json!({"email": null, "name": "Nobody", "score": 0}),
            match b.name {
                "sqlite" => "NOT NULL constraint failed",
                "postgres" => "null value in column \"email\"",
                _ => "Column 'email' cannot be null",
            },
        )];
        if b.name != "sqlite" {
            // Values their columns cannot take (SQLite takes any).
            refusals.push((
                "a bad number",
                json!({"email": "bad@example.com", "name": "Bad", "score": "lots"}),
                match b.name {
                    "postgres" => "invalid input syntax for type numeric: \"lots\"",
                    _ => "Incorrect decimal value: 'lots'",
                },
            ));
            refusals.push((
                "too long",
                json!({"email": "long@example.com", "name": "x".repeat(101), "score": 0}),
                match b.name {
                    "postgres" => "value too long for type character varying(100)",
                    _ => "Data too long for column 'name'",
                },
            ));
        }
        for (what, input, says) in refusals {
            let r = run_result(&engine, &registry, &create, input).await;
            let f = r
                .failure
                .unwrap_or_else(|| panic!("{}: {what}: no failure", b.name));
            assert_eq!(
                r.status,
                RunStatus::Incident,
                "{}: {what}: {}",
                b.name,
                f.message
            );
            assert_eq!(f.blame, sluice_action::Blame::Data, "{}: {what}", b.name);
            assert!(
                f.message.contains(says),
                "{}: {what}: {}",
                b.name,
                f.message
            );
        }

        // sql.lookup: one, none, several, omitted criteria.
        let lookup = |criteria: &str, extra: &str| {
            format!(
                "{head}  - {{key: l, type: sql.lookup, options: {{connection: app, collection: {table}, criteria: {criteria}{extra}}}}}\n"
            )
        };
        let (st, out, err) = run(
            &engine,
            &registry,
            &lookup("{email: \"{{ .email }}\"}", ""),
            json!({"email": "bob@example.com"}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        assert_eq!(out.unwrap()["name"], json!("Bob"));
        let (st, _, err) = run(&engine, &registry, &lookup("{name: Ada}", ""), json!({})).await;
        assert_eq!(st, RunStatus::Incident, "{}", b.name);
        assert!(
            err.contains("more than one matching object"),
            "{}: {err}",
            b.name
        );
        let (st, _, err) = run(&engine, &registry, &lookup("{name: Nobody}", ""), json!({})).await;
        assert!(
            st == RunStatus::Incident && err.contains("not found"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &lookup("{name: Nobody}", ", allowZeroResults: true"),
            json!({}),
        )
        .await;
        assert_eq!(out, Some(json!({})), "{}", b.name);
        let (st, _, err) = run(&engine, &registry, &lookup("{name: null}", ""), json!({})).await;
        assert!(
            st == RunStatus::Incident && err.contains("criteria are missing"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &lookup("{}", ", allowCriteriaToBeOmitted: true"),
            json!({}),
        )
        .await;
        assert_eq!(out, Some(json!({})), "{}", b.name);

        // Identifiers are checked against the schema: injection and unknown fields refused.
        let (st, _, err) = run(
            &engine,
            &registry,
            &lookup("{\"name; DROP TABLE x\": 1}", ""),
            json!({}),
        )
        .await;
        assert!(
            st == RunStatus::Incident && err.contains("has no field"),
            "{}: {err}",
            b.name
        );
        let bad_table = lookup("{name: Ada}", "").replace(
            &format!("collection: {table}"),
            "collection: \"x; DROP TABLE y\"",
        );
        let (st, _, err) = run(&engine, &registry, &bad_table, json!({})).await;
        assert!(
            st != RunStatus::Succeeded && err.contains("not a valid collection name"),
            "{}: {err}",
            b.name
        );
        let missing = lookup("{name: Ada}", "")
            .replace(&format!("collection: {table}"), "collection: no_such_table");
        let (_, _, err) = run(&engine, &registry, &missing, json!({})).await;
        assert!(err.contains("does not exist"), "{}: {err}", b.name);

        // sql.query with named parameters, fetchAll and expectSingle.
        let q = format!("SELECT email, score FROM {table} WHERE name = :name ORDER BY email");
        let query = format!(
            "{head}  - {{key: q, type: sql.query, options: {{connection: app, query: \"{q}\", params: {{name: \"{{{{ .who }}}}\"}}}}}}\n"
        );
        let (st, out, err) = run(&engine, &registry, &query, json!({"who": "Ada"})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let results = out.unwrap()["results"].clone();
        assert_eq!(
            results.as_array().map(Vec::len),
            Some(2),
            "{}: {results}",
            b.name
        );
        assert_eq!(results[0]["email"], json!("ada@example.com"));
        let single = query.replace("params:", "mode: expectSingle, params:");
        let (st, _, err) = run(&engine, &registry, &single, json!({"who": "Ada"})).await;
        assert!(
            st == RunStatus::Incident && err.contains("more than one matching object"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(&engine, &registry, &single, json!({"who": "Bob"})).await;
        assert_eq!(out.unwrap()["email"], json!("bob@example.com"));

        // A parameter named in a comment or a quoted string is not one.
        let mut commented = vec![
            ("SELECT :v AS a -- :w", json!(1)),
            ("SELECT /* :w */ :v AS a", json!(1)),
            ("SELECT ':w' AS a", json!(":w")),
        ];
        match b.name {
            "postgres" => commented.push(("SELECT $$ :w $$ AS a", json!(" :w "))),
            "mariadb" => commented.push(("SELECT :v AS a # :w", json!(1))),
            _ => {}
        }
        for (q, want) in commented {
            let flow = format!(
                "{head}  - {{key: q, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"{q}\", params: {{v: 1}}}}}}\n"
            );
            let (st, out, err) = run(&engine, &registry, &flow, json!({})).await;
            assert_eq!(st, RunStatus::Succeeded, "{}: {q}: {err}", b.name);
            let got = out.unwrap()["a"].clone();
            assert!(
                got == want || got.as_str() == Some(&want.to_string()),
                "{}: {q}: {got}",
                b.name
            );
        }
        let stmt = format!(
            "{head}  - {{key: u, type: sql.query, options: {{connection: app, mode: statement, query: \"UPDATE {table} SET active = :a WHERE name = :n\", params: {{a: false, n: Ada}}}}}}\n"
        );
        let (_, out, err) = run(&engine, &registry, &stmt, json!({})).await;
        assert_eq!(out, Some(json!({"rowsAffected": 2})), "{}: {err}", b.name);

        // sql.lookupMany: terms joined by and/or, fetchAll with its limit, fetchPage.
        let many = |opts: &str| {
            format!(
                "{head}  - {{key: m, type: sql.lookupMany, options: {{connection: app, collection: {table}{opts}}}}}\n"
            )
        };
        let emails = |out: Option<Value>| -> Vec<String> {
            out.map(|o| o["results"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default()
                .iter()
                .map(|r| r["email"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let (st, out, err) = run(
            &engine,
            &registry,
            &many(
                ", terms: [{field: score, condition: \">=\", value: 3}], orderBy: [{field: email}]",
            ),
            json!({}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        assert_eq!(
            emails(out),
            vec!["ada@example.com", "bob@example.com"],
            "{}",
            b.name
        );
        let (_, out, _) = run(&engine, &registry, &many(", terms: [{field: email, condition: like, value: \"a%\"}, {field: name, value: Bob}], join: or, orderBy: [{field: email, order: desc}]"), json!({})).await;
        assert_eq!(
            emails(out),
            vec!["bob@example.com", "ann@example.com", "ada@example.com"],
            "{}",
            b.name
        );
        // OIH's own names: fieldName, fieldValue, criteriaLink per term
        // (left to right: (Bob OR ann) AND score < 2), order pairs.
        let (st, out, err) = run(&engine, &registry, &many(", terms: [{fieldName: name, fieldValue: Bob}, {fieldName: email, fieldValue: ann@example.com, criteriaLink: or}, {fieldName: score, condition: \"<\", fieldValue: 2, criteriaLink: and}], order: [[email, DESC]]"), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        assert_eq!(emails(out), vec!["ann@example.com"], "{}", b.name);
        let (_, out, _) = run(&engine, &registry, &many(", terms: [{fieldName: name, fieldValue: Bob}, {fieldName: email, fieldValue: ann@example.com, criteriaLink: or}], order: [[email, DESC]]"), json!({})).await;
        assert_eq!(
            emails(out),
            vec!["bob@example.com", "ann@example.com"],
            "{}",
            b.name
        );
        // sql.query's fetchAll has the same limit.
        let query_all = format!(
            "{head}  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT email FROM {table}\", maxResultSize: 3}}}}\n"
        );
        let (st, _, err) = run(&engine, &registry, &query_all, json!({})).await;
        assert!(
            st == RunStatus::Incident
                && err.contains(
                    "too many results: the query returned 3 rows or more (maxResultSize is 3)"
                ),
            "{}: {err}",
            b.name
        );
        // So has its emitIndividually, and expectSingle stops at a second row.
        let query_each = format!(
            "{head}  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT email FROM {table}\", mode: emitIndividually, maxResultSize: 3}}}}\n"
        );
        let (st, _, err) = run(&engine, &registry, &query_each, json!({})).await;
        assert!(
            st == RunStatus::Incident && err.contains("too many results"),
            "{}: {err}",
            b.name
        );
        let query_one = format!(
            "{head}  - {{key: q, type: sql.query, options: {{connection: app, query: \"SELECT email FROM {table}\", mode: expectSingle}}}}\n"
        );
        let (st, _, err) = run(&engine, &registry, &query_one, json!({})).await;
        assert!(
            st == RunStatus::Incident && err.contains("more than one matching object"),
            "{}: {err}",
            b.name
        );
        if b.name == "sqlite" {
            // A query of a hundred million rows fails at the bound, having
            // read no more rows than that (reading them all would take
            // minutes and gigabytes).
            let endless = format!(
                "{head}  - {{key: q, type: sql.query, options: {{connection: app, query: \"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100000000) SELECT x FROM n\", maxResultSize: 10}}}}\n"
            );
            for mode in ["", ", mode: emitIndividually", ", mode: expectSingle"] {
                let flow =
                    endless.replace("maxResultSize: 10", &format!("maxResultSize: 10{mode}"));
                let (st, _, err) = run(&engine, &registry, &flow, json!({})).await;
                assert!(
                    st == RunStatus::Incident
                        && (err.contains("10 rows or more") || err.contains("more than one")),
                    "{mode}: {err}"
                );
            }
        }
        let (st, _, err) = run(&engine, &registry, &many(", maxResultSize: 3"), json!({})).await;
        assert!(
            st == RunStatus::Incident && err.contains("too many results"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &many(", mode: fetchPage, pageSize: 2, pageNumber: 1, orderBy: [{field: email}]"),
            json!({}),
        )
        .await;
        assert_eq!(emails(out), vec!["bob@example.com"], "{}", b.name);

        // emitIndividually: the steps after run once per row.
        let each = format!(
            "{head}  - {{key: m, type: sql.lookupMany, options: {{connection: app, collection: {table}, mode: emitIndividually, orderBy: [{{field: email}}]}}}}\n  - {{key: e, type: transform, options: {{value: \"{{{{ .email }}}}\"}}}}\n"
        );
        let (st, out, err) = run(&engine, &registry, &each, json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        assert_eq!(
            out,
            Some(json!([
                "ada@example.com",
                "ann@example.com",
                "bob@example.com"
            ])),
            "{}",
            b.name
        );

        // sql.lookupSet: ids give a dictionary, criteria a list; each must match once.
        let set = |opts: &str| {
            format!(
                "{head}  - {{key: s, type: sql.lookupSet, options: {{connection: app, collection: {table}{opts}}}}}\n"
            )
        };
        let (st, out, err) = run(&engine, &registry, &set(", ids: [1, 2]"), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let out = out.unwrap();
        assert_eq!(
            (&out["1"]["email"], &out["2"]["email"]),
            (&json!("ada@example.com"), &json!("bob@example.com")),
            "{}: {out}",
            b.name
        );
        let (st, _, err) = run(&engine, &registry, &set(", ids: [1, 999]"), json!({})).await;
        assert!(
            st == RunStatus::Incident
                && err.contains("id `999`")
                && err.contains("matched 0 objects"),
            "{}: {err}",
            b.name
        );
        let (_, out, err) = run(
            &engine,
            &registry,
            &set(", criteria: [{email: bob@example.com}, {name: Ada, score: 1}]"),
            json!({}),
        )
        .await;
        let out = out.unwrap_or_else(|| panic!("{}: {err}", b.name));
        assert_eq!(out[1]["key"], json!({"name": "Ada", "score": 1}));
        assert_eq!(
            out[1]["value"]["email"],
            json!("ann@example.com"),
            "{}: {out}",
            b.name
        );
        let (_, _, err) = run(
            &engine,
            &registry,
            &set(", criteria: [{name: Ada}]"),
            json!({}),
        )
        .await;
        assert!(
            err.contains("matched more than one object"),
            "{}: {err}",
            b.name
        );

        // sql.assertOption, sql.link, sql.unlink on a many-to-many relation.
        let (tags, links) = (
            format!("tags_{}", std::process::id()),
            format!("ctags_{}", std::process::id()),
        );
        let id = match b.name {
            "sqlite" => "INTEGER PRIMARY KEY AUTOINCREMENT",
            "postgres" => "SERIAL PRIMARY KEY",
            _ => "INT AUTO_INCREMENT PRIMARY KEY",
        };
        let ddl = [
            format!("DROP TABLE IF EXISTS {links}"),
            format!("DROP TABLE IF EXISTS {tags}"),
            format!(
                "CREATE TABLE {tags} (id {id}, code VARCHAR(20) NOT NULL UNIQUE, label VARCHAR(50))"
            ),
            format!(
                "CREATE TABLE {links} (customer_id INT NOT NULL, tag_id INT NOT NULL, weight INT, PRIMARY KEY (customer_id, tag_id))"
            ),
        ];
        let setup: String = ddl.iter().enumerate().map(|(i, q)| format!("  - {{key: t{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n")).collect();
        let (st, _, err) = run(&engine, &registry, &format!("{head}{setup}"), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let assert_opt = |label: &str| {
            format!(
                "{head}  - {{key: o, type: sql.assertOption, options: {{connection: app, collection: {tags}, field: code, value: vip, properties: {{label: {label}}}}}}}\n"
            )
        };
        // OIH's output: a dictionary of the field to its option.
        let (_, first, err) = run(&engine, &registry, &assert_opt("VIP"), json!({})).await;
        let first = first.unwrap_or_else(|| panic!("{}: {err}", b.name))["code"].clone();
        assert_eq!(first["code"], "vip", "{}: {first}", b.name);
        let (_, second, _) =
            run(&engine, &registry, &assert_opt("Very important"), json!({})).await;
        let second = second.unwrap()["code"].clone();
        assert_eq!(
            (&second["id"], &second["label"]),
            (&first["id"], &json!("Very important")),
            "{}: asserted once, updated",
            b.name
        );
        // Two runs asserting one new option at once: both succeed, one row.
        for k in 0..5 {
            let flow = assert_opt("Twice").replace("value: vip", &format!("value: new{k}"));
            let (a, b2) = tokio::join!(
                run(&engine, &registry, &flow, json!({})),
                run(&engine, &registry, &flow, json!({}))
            );
            assert_eq!(
                (a.0, b2.0),
                (RunStatus::Succeeded, RunStatus::Succeeded),
                "{}: {} / {}",
                b.name,
                a.2,
                b2.2
            );
            let q = format!(
                "{head}  - {{key: c, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {tags} WHERE code = :c\", params: {{c: new{k}}}}}}}\n"
            );
            let (_, out, err) = run(&engine, &registry, &q, json!({})).await;
            assert_eq!(
                out.and_then(|o| o["n"].as_i64()),
                Some(1),
                "{}: {err}",
                b.name
            );
        }
        // Upsert by id: no id creates; part of a composite id is refused.
        let upsert = format!(
            "{head}  - {{key: u, type: sql.upsert, options: {{connection: app, collection: {tags}, criteria: {{id: \"{{{{ .id }}}}\"}}, properties: {{code: \"{{{{ .code }}}}\"}}}}}}\n"
        );
        let (st, out, err) = run(&engine, &registry, &upsert, json!({"code": "fresh"})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let fresh = out.unwrap();
        assert!(
            fresh["id"].as_i64().is_some_and(|i| i > 0),
            "{}: {fresh}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &upsert,
            json!({"id": fresh["id"], "code": "renamed"}),
        )
        .await;
        assert_eq!(
            (&out.as_ref().unwrap()["id"], &out.as_ref().unwrap()["code"]),
            (&fresh["id"], &json!("renamed")),
            "{}",
            b.name
        );
        let partial = format!(
            "{head}  - {{key: u, type: sql.upsert, options: {{connection: app, collection: {links}, criteria: {{customer_id: 1}}, properties: {{weight: 3}}}}}}\n"
        );
        let (st, _, err) = run(&engine, &registry, &partial, json!({})).await;
        assert_ne!(st, RunStatus::Succeeded, "{}", b.name);
        assert!(
            err.contains("the criteria give `customer_id` of the id of")
                && err.contains("but not `tag_id`"),
            "{}: {err}",
            b.name
        );
        let link = |kind: &str, weight: i64| {
            format!(
                "{head}  - {{key: l, type: {kind}, options: {{connection: app, linkCollection: {links}, from: {{collection: {table}, criteria: {{email: ada@example.com}}, field: customer_id}}, to: {{collection: {tags}, criteria: {{code: vip}}, field: tag_id}}, data: {{weight: {weight}}}}}}}\n"
            )
        };
        let (st, out, err) = run(&engine, &registry, &link("sql.link", 1), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: link: {err}", b.name);
        assert_eq!(out.unwrap()["weight"], json!(1));
        let (_, out, _) = run(&engine, &registry, &link("sql.link", 2), json!({})).await;
        assert_eq!(
            out.unwrap()["weight"],
            json!(2),
            "{}: linking again updates the link's data",
            b.name
        );
        let unlink = link("sql.unlink", 0).replace(", data: {weight: 0}", "");
        let (_, out, err) = run(&engine, &registry, &unlink, json!({})).await;
        assert_eq!(
            out.as_ref().map(|o| o["tag_id"].clone()),
            Some(first["id"].clone()),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(&engine, &registry, &unlink, json!({})).await;
        assert_eq!(
            out,
            Some(json!({})),
            "{}: unlinking twice finds nothing",
            b.name
        );
        let _ = run(&engine, &registry, &format!("{head}  - {{key: d1, type: sql.query, options: {{connection: app, mode: statement, query: \"{}\"}}}}\n  - {{key: d2, type: sql.query, options: {{connection: app, mode: statement, query: \"{}\"}}}}\n", ddl[0], ddl[1]), json!({})).await;

        // sql.update: partial, one object only; sql.upsert creates or updates; sql.delete.
        let write = |kind: &str, criteria: &str, props: &str| {
            format!(
                "{head}  - {{key: w, type: {kind}, options: {{connection: app, collection: {table}, criteria: {criteria}{props}}}}}\n"
            )
        };
        let (st, out, err) = run(
            &engine,
            &registry,
            &write(
                "sql.update",
                "{email: bob@example.com}",
                ", properties: {score: 9.5}",
            ),
            json!({}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{}: update: {err}", b.name);
        let row = out.unwrap();
        assert_eq!(
            (row["score"].as_f64(), &row["name"]),
            (Some(9.5), &json!("Bob")),
            "{}: partial update keeps other fields: {row}",
            b.name
        );
        let (st, _, err) = run(
            &engine,
            &registry,
            &write(
                "sql.update",
                "{email: nobody@example.com}",
                ", properties: {score: 1}",
            ),
            json!({}),
        )
        .await;
        assert!(
            st == RunStatus::Incident && err.contains("not found"),
            "{}: {err}",
            b.name
        );
        let (st, _, err) = run(
            &engine,
            &registry,
            &write("sql.update", "{name: Ada}", ", properties: {score: 0}"),
            json!({}),
        )
        .await;
        assert!(
            st == RunStatus::Incident && err.contains("more than one matching object"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &lookup("{email: ada@example.com}", ""),
            json!({}),
        )
        .await;
        assert_eq!(
            out.unwrap()["score"].as_f64(),
            Some(4.5),
            "{}: several matches write nothing",
            b.name
        );
        // The key itself may change.
        let (_, out, err) = run(
            &engine,
            &registry,
            &write(
                "sql.update",
                "{email: bob@example.com}",
                ", properties: {email: robert@example.com}",
            ),
            json!({}),
        )
        .await;
        assert_eq!(
            out.as_ref().map(|r| r["email"].clone()),
            Some(json!("robert@example.com")),
            "{}: {err}",
            b.name
        );
        let (st, out, err) = run(
            &engine,
            &registry,
            &write(
                "sql.upsert",
                "{email: cy@example.com}",
                ", properties: {name: Cy}",
            ),
            json!({}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{}: upsert create: {err}", b.name);
        let created = out.unwrap();
        assert_eq!(
            (&created["email"], &created["name"]),
            (&json!("cy@example.com"), &json!("Cy")),
            "{}",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &write(
                "sql.upsert",
                "{email: cy@example.com}",
                ", properties: {name: Cyrus}",
            ),
            json!({}),
        )
        .await;
        let updated = out.unwrap();
        assert_eq!(
            (&updated["id"], &updated["name"]),
            (&created["id"], &json!("Cyrus")),
            "{}: upsert updates the same row",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &write("sql.delete", "{email: cy@example.com}", ""),
            json!({}),
        )
        .await;
        assert_eq!(
            out,
            Some(json!({"id": created["id"]})),
            "{}: delete emits the key",
            b.name
        );
        let (_, out, _) = run(
            &engine,
            &registry,
            &write("sql.delete", "{email: cy@example.com}", ""),
            json!({}),
        )
        .await;
        assert_eq!(
            out,
            Some(json!({})),
            "{}: nothing to delete emits {{}}",
            b.name
        );
        let (st, _, err) = run(
            &engine,
            &registry,
            &write("sql.delete", "{name: Ada}", ""),
            json!({}),
        )
        .await;
        assert!(
            st == RunStatus::Incident && err.contains("more than one matching object"),
            "{}: {err}",
            b.name
        );

        let (_, _, _) = run(&engine, &registry, &format!("{head}  - {{key: d, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE {table}\"}}}}\n"), json!({})).await;
        summary.push(b.name);
    }
    println!(
        "sql actions: {} passed, 0 failed ({})",
        summary.len(),
        summary.join(", ")
    );
}

#[tokio::test]
async fn a_connection_that_refuses_names_it_without_its_password() {
    let registry = sluice_sql::registry();
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        Arc::new(sluice_sql::registry()),
    );
    // SAFETY of the test: a variable only this test reads.
    unsafe { std::env::set_var("SLUICE_TEST_SECRET_PW", "hunter2") };
    let flow = "id: t\nconnections:\n  crm: {url: \"postgres://app:${env:SLUICE_TEST_SECRET_PW}@127.0.0.1:1/crm\"}\nsteps:\n  - {key: q, type: sql.query, options: {connection: crm, query: \"SELECT 1\"}}\n";
    let (st, _, err) = run(&engine, &registry, flow, json!({})).await;
    assert_eq!(st, RunStatus::Failed);
    assert!(
        err.contains("connection `crm` (postgres://app:***@127.0.0.1:1/crm) refused"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_all_or_none_on_every_database() {
    let registry = Arc::new(sluice_sql::registry());
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        registry.clone(),
    );
    let mut done = Vec::new();
    for b in backends() {
        let pid = std::process::id();
        let (acc, con, ord) = (
            format!("acc_{pid}"),
            format!("con_{pid}"),
            format!("ord_{pid}"),
        );
        let (id, num) = match b.name {
            "sqlite" => ("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL"),
            "postgres" => ("SERIAL PRIMARY KEY", "NUMERIC(10,2)"),
            _ => ("INT AUTO_INCREMENT PRIMARY KEY", "DECIMAL(10,2)"),
        };
        let head = format!(
            "id: t\nunmappedResults: replace\nconnections:\n  app: {{url: \"{}\"}}\nsteps:\n",
            b.url
        );
        let ddl = [
            format!("DROP TABLE IF EXISTS {ord}"),
            format!("DROP TABLE IF EXISTS {con}"),
            format!("DROP TABLE IF EXISTS {acc}"),
            format!("CREATE TABLE {acc} (id {id}, name VARCHAR(100) NOT NULL UNIQUE)"),
            format!("CREATE TABLE {con} (id {id}, account_id INT NOT NULL, email VARCHAR(200))"),
            format!(
                "CREATE TABLE {ord} (id {id}, account_id INT NOT NULL, total {num}, ref VARCHAR(20) NOT NULL UNIQUE)"
            ),
        ];
        let setup: String = ddl
            .iter()
            .enumerate()
            .map(|(i, q)| format!("  - {{key: s{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n"))
            .collect();
        let (st, _, err) = run(&engine, &registry, &format!("{head}{setup}"), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: setup: {err}", b.name);

        let flow = format!(
            "{head}  - key: import
    type: envelope
    options:
      connection: app
      patches:
        - op: create
          collection: {acc}
          properties: {{name: \"{{{{ .name }}}}\"}}
          setTokens: {{accountId: id}}
          children:
            - {{op: create, collection: {con}, parentKey: account_id, properties: {{email: \"{{{{ .email }}}}\"}}}}
        - op: create
          collection: {ord}
          properties: {{account_id: \"{{{{ $tokens.accountId }}}}\", total: \"{{{{ .total }}}}\", ref: \"{{{{ .ref }}}}\"}}
  - key: after
    type: transform
    options: {{value: {{account: \"{{{{ $tokens.accountId }}}}\", order: \"{{{{ $import.results[1].ref }}}}\"}}}}
"
        );
        let (st, out, err) = run(
            &engine,
            &registry,
            &flow,
            json!({"name": "Ada", "email": "ada@example.com", "total": 12.5, "ref": "R1"}),
        )
        .await;
        assert_eq!(st, RunStatus::Succeeded, "{}: envelope: {err}", b.name);
        let out = out.unwrap();
        assert!(
            out["account"].as_i64().is_some_and(|i| i > 0),
            "{}: tokens reach later steps: {out}",
            b.name
        );
        assert_eq!(out["order"], json!("R1"));

        // The second patch fails (its ref is taken): the first patch and its
        // child are rolled back; a constraint is the data's (an incident).
        let (st, _, err) = run(
            &engine,
            &registry,
            &flow,
            json!({"name": "Zed", "email": "zed@example.com", "total": 1, "ref": "R1"}),
        )
        .await;
        assert_eq!(st, RunStatus::Incident, "{}", b.name);
        assert!(
            err.contains(&format!("patch 2 (create {ord}) failed")) && err.contains("rolled back"),
            "{}: {err}",
            b.name
        );
        let count = |table: &str| {
            format!(
                "{head}  - {{key: c, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {table}\"}}}}\n"
            )
        };
        for (table, want) in [(&acc, 1), (&con, 1), (&ord, 1)] {
            let (_, out, err) = run(&engine, &registry, &count(table), json!({})).await;
            assert_eq!(
                out.as_ref().and_then(|o| o["n"].as_i64()),
                Some(want),
                "{}: {table} keeps only the first import: {err}",
                b.name
            );
        }
        // A failing child names its place.
        let bad_child = flow.replace("properties: {email:", "properties: {nope: 1, email:");
        let (_, _, err) = run(
            &engine,
            &registry,
            &bad_child,
            json!({"name": "Kay", "email": "k@example.com", "total": 1, "ref": "R9"}),
        )
        .await;
        assert!(
            err.contains(&format!("patch 1.1 (create {con}) failed"))
                && err.contains("no field `nope`"),
            "{}: {err}",
            b.name
        );
        let (_, out, _) = run(&engine, &registry, &count(&acc), json!({})).await;
        assert_eq!(
            out.and_then(|o| o["n"].as_i64()),
            Some(1),
            "{}: the parent of a failed child is rolled back",
            b.name
        );

        let drop: String = ddl[..3]
            .iter()
            .enumerate()
            .map(|(i, q)| format!("  - {{key: d{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n"))
            .collect();
        let _ = run(&engine, &registry, &format!("{head}{drop}"), json!({})).await;
        done.push(b.name);
    }
    println!(
        "sql envelopes: {} passed, 0 failed ({})",
        done.len(),
        done.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataflow_documents_are_checked_whole_then_written_all_or_none_on_every_database() {
    let registry = Arc::new(sluice_sql::registry());
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        registry.clone(),
    );
    let mut done = Vec::new();
    for b in backends() {
        let pid = std::process::id();
        let (acc, con) = (format!("dfa_{pid}"), format!("dfc_{pid}"));
        let id = match b.name {
            "sqlite" => "INTEGER PRIMARY KEY AUTOINCREMENT",
            "postgres" => "SERIAL PRIMARY KEY",
            _ => "INT AUTO_INCREMENT PRIMARY KEY",
        };
        let head = format!(
            "id: t\nunmappedResults: replace\nconnections:\n  app: {{url: \"{}\"}}\nsteps:\n",
            b.url
        );
        let ddl = [
            format!("DROP TABLE IF EXISTS {con}"),
            format!("DROP TABLE IF EXISTS {acc}"),
            format!("CREATE TABLE {acc} (id {id}, name VARCHAR(100) NOT NULL UNIQUE)"),
            format!("CREATE TABLE {con} (id {id}, account_id INT NOT NULL, email VARCHAR(200))"),
        ];
        let setup: String = ddl
            .iter()
            .enumerate()
            .map(|(i, q)| format!("  - {{key: s{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n"))
            .collect();
        let (st, _, err) = run(&engine, &registry, &format!("{head}{setup}"), json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: setup: {err}", b.name);
        let flow = format!(
            "{head}  - {{key: d, type: dataflow, options: {{connection: app, document: \"{{{{ . }}}}\", allow: {{{acc}: [create, upsert], {con}: [create]}}}}}}\n"
        );
        let counts = async || {
            let mut out = Vec::new();
            for t in [&acc, &con] {
                let q = format!(
                    "{head}  - {{key: c, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {t}\"}}}}\n"
                );
                let (_, o, err) = run(&engine, &registry, &q, json!({})).await;
                out.push(
                    o.and_then(|o| o["n"].as_i64())
                        .unwrap_or_else(|| panic!("{err}")),
                );
            }
            out
        };
        // Two envelopes; the second reads the token the first set, and a
        // value that looks like a template is written as text.
        let doc = json!({"envelopes": [
            {"patches": [{"op": "create", "collection": acc, "properties": {"name": "Ada"},
                          "setTokens": {"accountId": "id"},
                          "children": [{"op": "create", "collection": con, "parentKey": "account_id",
                                        "properties": {"email": "ada@example.com"}}]}]},
            {"patches": [{"op": "create", "collection": con,
                          "properties": {"account_id": {"$token": "accountId"}, "email": "{{ $env }}"}}]}
        ]});
        let (st, out, err) = run(&engine, &registry, &flow, doc).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let out = out.unwrap();
        let account = out["tokens"]["accountId"].as_i64().unwrap_or(0);
        assert!(account > 0, "{}: {out}", b.name);
        assert_eq!(
            out["envelopes"][1]["results"][0]["account_id"].as_i64(),
            Some(account),
            "{}: {out}",
            b.name
        );
        assert_eq!(
            out["envelopes"][1]["results"][0]["email"], "{{ $env }}",
            "{}: {out}",
            b.name
        );
        assert_eq!(counts().await, [1, 2], "{}", b.name);

        // Refused before any write, naming the patch: a field that is not a
        // column, an operation not allowed, a token used before it is set.
        for (patch, want) in [
            (
                json!({"op": "create", "collection": con, "properties": {"nope": 1}}),
                format!(
                    "envelope 2, patch 1 (create {con}): collection `{con}` has no field `nope`"
                ),
            ),
            (
                json!({"op": "upsert", "collection": con, "criteria": {"id": 1}}),
                format!("envelope 2, patch 1 (upsert {con}): `upsert` is not allowed on `{con}`"),
            ),
            (
                json!({"op": "create", "collection": con, "properties": {"account_id": {"$token": "later"}}}),
                "field `account_id` uses token `later` before any patch sets it".to_owned(),
            ),
        ] {
            let doc = json!({"envelopes": [
                {"patches": [{"op": "create", "collection": acc, "properties": {"name": "Bob"}}]},
                {"patches": [patch]}
            ]});
            let (st, _, err) = run(&engine, &registry, &flow, doc).await;
            assert_ne!(st, RunStatus::Succeeded, "{}", b.name);
            assert!(
                err.contains(&want) && err.contains("nothing was written"),
                "{}: {err}",
                b.name
            );
            assert_eq!(counts().await, [1, 2], "{}", b.name);
        }
        // A write that fails in the second envelope rolls back the first.
        let doc = json!({"envelopes": [
            {"patches": [{"op": "create", "collection": acc, "properties": {"name": "Cy"}}]},
            {"patches": [{"op": "create", "collection": acc, "properties": {"name": "Ada"}}]}
        ]});
        let (st, _, err) = run(&engine, &registry, &flow, doc).await;
        assert_eq!(st, RunStatus::Incident, "{}: {err}", b.name);
        assert!(
            err.contains(&format!("envelope 2, patch 1 (create {acc}) failed"))
                && err.contains("the document was rolled back"),
            "{}: {err}",
            b.name
        );
        assert_eq!(
            counts().await,
            [1, 2],
            "{}: the first envelope is rolled back too",
            b.name
        );

        let drop: String = ddl[..2]
            .iter()
            .enumerate()
            .map(|(i, q)| format!("  - {{key: d{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{q}\"}}}}\n"))
            .collect();
        let _ = run(&engine, &registry, &format!("{head}{drop}"), json!({})).await;
        done.push(b.name);
    }
    println!(
        "sql dataflow documents: {} passed, 0 failed ({})",
        done.len(),
        done.join(", ")
    );
}

/// A write step (and an envelope) that committed in the target database
/// before the process stopped, its record not yet in the store, runs again
/// at recovery with the same idempotency key: it takes the result it
/// recorded in the target (`sluice_completions`) instead of writing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_steps_run_again_after_a_crash_write_once() {
    use sluice_store::{RunUpdate, Store};
    let registry = Arc::new(sluice_sql::registry());
    let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
    let engine = Engine::new(store.clone(), registry.clone());
    for b in backends() {
        let table = format!("once_{}", std::process::id());
        let head = format!(
            "id: once\nconnections:\n  app: {{url: \"{}\"}}\nsteps:\n",
            b.url
        );
        let setup = format!(
            "{head}  - {{key: drop, type: sql.query, options: {{connection: app, mode: statement, query: \"DROP TABLE IF EXISTS {table}\"}}}}\n  - {{key: create, type: sql.query, options: {{connection: app, mode: statement, query: \"{}\"}}}}\n",
            b.ddl.replace("TBL", &table)
        );
        let (st, _, err) = run(&engine, &registry, &setup, json!({})).await;
        assert_eq!(st, RunStatus::Succeeded, "{}: {err}", b.name);
        let text = format!(
            "{head}  - {{key: one, type: sql.create, options: {{connection: app, collection: {table}, properties: {{email: \"{{{{ .a }}}}\", name: first}}}}}}\n  - {{key: two, type: envelope, options: {{connection: app, patches: [{{op: create, collection: {table}, properties: {{email: \"{{{{ .b }}}}\", name: second}}, setTokens: {{second: id}}}}]}}}}\n"
        );
        let flow = sluice_model::load("once.yaml", &text, registry.as_ref()).unwrap();
        let input = json!({"a": "a@x", "b": "b@x"});
        let started = engine
            .start(
                &flow,
                RunRequest {
                    input: Some(sluice_expr::data::into_val(input.clone())),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let id = started.run_id().to_owned();
        let first = engine.finish(&flow, started).await.unwrap();
        assert_eq!(
            first.status,
            RunStatus::Succeeded,
            "{}: {:?}",
            b.name,
            first.failure
        );
        // The process stops after both steps committed in the target, before
        // the store recorded them: the run is back at its first step.
        store
            .update_run(
                &id,
                &RunUpdate {
                    status: RunStatus::Running,
                    state: sluice_expr::data::into_val(input.clone()),
                    next_step: Some("one".into()),
                    output: None,
                    error: None,
                    error_step: None,
                    ended_at: None,
                },
            )
            .await
            .unwrap();
        let again = engine.recover(&flow, &id).await.unwrap();
        assert_eq!(
            again.status,
            RunStatus::Succeeded,
            "{}: {:?}",
            b.name,
            again.failure
        );
        assert_eq!(again.output_json(), first.output_json(), "{}", b.name);
        // Once more, at the envelope, whose first attempt run again after
        // the crash failed before writing (a lock): the second attempt
        // finds what the first committed.
        let seq = store.get_run(&id).await.unwrap().unwrap().steps.len() as i64;
        let now = sluice_store::now_micros();
        let failed = sluice_store::StepRecord {
            run_id: id.clone(),
            seq,
            step_key: "two".into(),
            kind: "envelope".into(),
            ok: false,
            options: sluice_expr::Val::Null,
            input: sluice_expr::data::into_val(input.clone()),
            result: None,
            output: None,
            error: Some("database is locked".into()),
            blame: Some("external".into()),
            logs: Vec::new(),
            started_at: now,
            ended_at: now,
        };
        let at_two = RunUpdate {
            status: RunStatus::Running,
            state: sluice_expr::data::into_val(input.clone()),
            next_step: Some("two".into()),
            output: None,
            error: None,
            error_step: None,
            ended_at: None,
        };
        store.record_step(&failed, &at_two).await.unwrap();
        let third = engine.recover(&flow, &id).await.unwrap();
        assert_eq!(
            third.status,
            RunStatus::Succeeded,
            "{}: {:?}",
            b.name,
            third.failure
        );
        let count = format!(
            "{head}  - {{key: rows, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"SELECT COUNT(*) AS n FROM {table}\"}}}}\n"
        );
        let (_, out, err) = run(&engine, &registry, &count, json!({})).await;
        let n = out.as_ref().map(|o| o["n"].clone()).unwrap_or_default();
        assert!(
            n == json!(2) || n == json!("2"),
            "{}: {n} rows: {err}",
            b.name
        );
    }
}
