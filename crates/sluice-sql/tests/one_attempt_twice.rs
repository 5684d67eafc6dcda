//! One attempt of a write step run by two processes at once (the one whose
//! lease on the run lapsed while it worked, and the one that took the run
//! over): the row is written once and both get the same result, on every
//! database that `SLUICE_TEST_POSTGRES_URL` and `SLUICE_TEST_MYSQL_URL`
//! name (and SQLite).

use serde_json::{Value, json};
use sluice_action::testing::Once;
use sluice_action::{Outcome, Registry};
use std::collections::BTreeMap;

/// `kind` with `options` as attempt 1 of step `s` of run `run`.
async fn attempt(
    reg: &Registry,
    url: &str,
    run: &str,
    kind: &str,
    options: Value,
) -> Result<Outcome, sluice_action::ActionError> {
    let once = Once {
        run_id: run,
        step: "s",
        input: &json!({}),
        connections: &BTreeMap::from([("db".to_owned(), json!({"url": url}))]),
        expressions: &BTreeMap::new(),
        inbox: None,
    };
    let action = &reg.get(kind).expect("registered").action;
    once.run(action.as_ref(), &options).await
}

async fn statement(reg: &Registry, url: &str, sql: &str) {
    attempt(
        reg,
        url,
        "",
        "sql.query",
        json!({"connection": "db", "mode": "statement", "query": sql}),
    )
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attempt_run_twice_at_once_writes_once() {
    let mut reg = Registry::core();
    sluice_sql::register(&mut reg);
    let dir = std::env::temp_dir().join(format!("sluice-twice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dbs = vec![format!("sqlite://{}?mode=rwc", dir.join("t.db").display())];
    for var in ["SLUICE_TEST_POSTGRES_URL", "SLUICE_TEST_MYSQL_URL"] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => dbs.push(url),
            _ => assert!(std::env::var("CI").is_err(), "{var} must be set under CI"),
        }
    }
    // Run ids must never repeat across test runs: the completions a write
    // leaves in a database outlive the test (as they outlive a run), and a
    // process id comes round again on the next run on this machine.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let t = format!("twice_{}", std::process::id());
    for url in &dbs {
        let ddl = if url.starts_with("mysql") {
            format!(
                "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, ref VARCHAR(40) NOT NULL UNIQUE, n INT)"
            )
        } else if url.starts_with("postgres") {
            format!("CREATE TABLE {t} (id SERIAL PRIMARY KEY, ref TEXT NOT NULL UNIQUE, n INT)")
        } else {
            format!("CREATE TABLE {t} (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, n INT)")
        };
        statement(&reg, url, &format!("DROP TABLE IF EXISTS {t}")).await;
        statement(&reg, url, &ddl).await;
        for round in 0..10 {
            let run = format!("twice-{}-{stamp}-{round}", std::process::id());
            let (kind, options) = if round % 2 == 0 {
                (
                    "sql.create",
                    json!({"connection": "db", "collection": t, "properties": {"ref": format!("R{round}"), "n": round}}),
                )
            } else {
                (
                    "sql.upsert",
                    json!({"connection": "db", "collection": t, "criteria": {"ref": format!("R{round}")}, "properties": {"ref": format!("R{round}"), "n": round}}),
                )
            };
            let (a, b) = tokio::join!(
                attempt(&reg, url, &run, kind, options.clone()),
                attempt(&reg, url, &run, kind, options.clone())
            );
            let (a, b) = (
                a.unwrap_or_else(|e| panic!("{url} {kind}: {e:?}")),
                b.unwrap_or_else(|e| panic!("{url} {kind}: {e:?}")),
            );
            assert_eq!(a.payload, b.payload, "{url} {kind}");
        }
        let counted = attempt(
            &reg,
            url,
            "",
            "sql.query",
            json!({"connection": "db", "mode": "expectSingle", "query": format!("SELECT COUNT(*) AS n, COUNT(DISTINCT ref) AS refs FROM {t}")}),
        )
        .await
        .unwrap();
        let n = counted.payload.unwrap_or(Value::Null);
        let as_n = |v: &Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        assert_eq!(
            (as_n(&n["n"]), as_n(&n["refs"])),
            (Some(10), Some(10)),
            "{url}: {n}"
        );
        statement(&reg, url, &format!("DROP TABLE IF EXISTS {t}")).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
