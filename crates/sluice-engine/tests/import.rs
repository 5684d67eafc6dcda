//! Imports (`sluice run --records`) on real databases: bad records among good
//! ones, over several chunks, on SQLite, PostgreSQL and MariaDB (see
//! `common/mod.rs` for which run).

use serde_json::{Value, json};
use sluice_action::Registry;
use sluice_engine::{Engine, ImportError, ImportOptions, RunRequest};
use sluice_store::{RunStatus, SqliteStore};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

mod common;

async fn run_flow(engine: &Engine<SqliteStore>, registry: &Registry, flow: &str) -> Value {
    let flow = sluice_model::load("q.yaml", flow, registry).unwrap_or_else(|d| panic!("{d}"));
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    r.output_json().unwrap()
}

/// An engine on an in-memory store with the SQL connector's actions.
async fn engine() -> (Engine<SqliteStore>, Arc<Registry>) {
    let registry = Arc::new(sluice_sql::registry());
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    (Engine::new(Arc::new(store), registry.clone()), registry)
}

/// An integer primary key the database generates, on database `name`
/// (as `common::databases` names them).
fn generated_key(name: &str) -> &'static str {
    match name {
        "sqlite" => "INTEGER PRIMARY KEY",
        "postgres" => "SERIAL PRIMARY KEY",
        _ => "INT AUTO_INCREMENT PRIMARY KEY",
    }
}

/// Run statements `sql` (key, statement) on the database at `url`.
async fn statements(
    engine: &Engine<SqliteStore>,
    registry: &Registry,
    url: &str,
    sql: &[(&str, String)],
) {
    let mut flow = format!("id: setup\nconnections:\n  app: {{url: \"{url}\"}}\nsteps:\n");
    for (k, sql) in sql {
        flow.push_str(&format!(
            "  - {{key: {k}, type: sql.query, options: {{connection: app, mode: statement, query: \"{sql}\"}}}}\n"
        ));
    }
    run_flow(engine, registry, &flow).await;
}

/// The number `sql` counts (as `n`) in the database at `url`.
async fn count(
    engine: &Engine<SqliteStore>,
    registry: &Registry,
    url: &str,
    sql: &str,
) -> Option<u64> {
    let flow = format!(
        "id: count\nconnections:\n  app: {{url: \"{url}\"}}\nsteps:\n  - {{key: q, type: sql.query, options: {{connection: app, mode: expectSingle, query: \"{sql}\"}}}}\n"
    );
    let out = run_flow(engine, registry, &flow).await;
    out["q"]["n"].as_u64().or_else(|| out["n"].as_u64())
}

/// Table `t` made again, with a generated key and one unique text column `k`.
async fn keyed_table(
    engine: &Engine<SqliteStore>,
    registry: &Registry,
    name: &str,
    url: &str,
    t: &str,
) {
    let key = generated_key(name);
    statements(
        engine,
        registry,
        url,
        &[
            ("d1", format!("DROP TABLE IF EXISTS {t}")),
            (
                "c1",
                format!("CREATE TABLE {t} (id {key}, k VARCHAR(20) NOT NULL UNIQUE)"),
            ),
        ],
    )
    .await;
}

/// The head of an import flow `id` whose first step, `write`, is an
/// envelope through the database at `url`: its patches follow.
fn envelope_flow(id: &str, url: &str) -> String {
    format!(
        "id: {id}\nconnections:\n  app: {{url: \"{url}\"}}\nsteps:\n  - key: write\n    type: envelope\n    options:\n      connection: app\n      patches:\n"
    )
}

/// Why record `i` (from 1) is bad, if it is: `(reason, failing patch)`.
fn bad(i: u64) -> Option<(&'static str, &'static str)> {
    // 1401 starts a chunk (of 700) and repeats the last record of the
    // chunk before, which may not have committed yet when it is written.
    if i.is_multiple_of(251) || i == 1401 {
        Some(("duplicate", "patch 1 (create cust"))
    } else if i.is_multiple_of(313) {
        Some(("negative", "patch 2 (create ord"))
    } else if i.is_multiple_of(401) {
        Some(("no name", "patch 1 (create cust"))
    } else if i.is_multiple_of(577) {
        Some(("not a number", "patch 2"))
    } else if i == 1000 {
        Some(("not json", ""))
    } else {
        None
    }
}

/// The record that refers to a customer of the chunk before its own.
const REFERS: u64 = 702;

fn record(i: u64) -> String {
    let id = match bad(i) {
        // the same external id as the record before
        Some(("duplicate", _)) => format!("C-{}", i - 1),
        _ => format!("C-{i}"),
    };
    let name = match bad(i) {
        Some(("no name", _)) => Value::Null,
        _ => json!(format!("Customer {i}")),
    };
    let total = match bad(i) {
        Some(("negative", _)) => json!("-1"),
        Some(("not a number", _)) => json!("n/a"),
        _ => json!(format!("{}.25", i % 100)),
    };
    match bad(i) {
        Some(("not json", _)) => format!("{{\"id\": \"C-{i}\", "),
        _ => {
            let mut r = json!({"id": id, "name": name, "contact": format!("contact of C-{i}"), "total": total});
            // 702 refers, through a foreign key, to the customer of the
            // last record of the chunk before (chunks of 700), which may
            // not have committed when it is written.
            if i == REFERS {
                r["referrer"] = json!(format!("C-{}", REFERS - 2));
            }
            r.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_lands_good_records_once_and_reports_bad_ones() {
    let (engine, registry) = engine().await;
    let n: u64 = 2600;
    let dir = std::env::temp_dir().join(format!("sluice-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("customers.jsonl");
    let mut w = std::fs::File::create(&file).unwrap();
    for i in 1..=n {
        writeln!(w, "{}", record(i)).unwrap();
        if i == 10 {
            writeln!(w).unwrap(); // a blank line is not a record
        }
    }
    drop(w);
    let expected_bad: BTreeMap<u64, &str> = (1..=n)
        .filter_map(|i| bad(i).map(|(_, p)| (i, p)))
        .collect();
    let good = n - expected_bad.len() as u64;
    let mut summary = Vec::new();
    for (name, url) in common::databases("import-test") {
        let p = std::process::id();
        let (cust, contact, ord) = (
            format!("cust_{p}"),
            format!("contact_{p}"),
            format!("ord_{p}"),
        );
        let key = generated_key(name);
        let num = match name {
            "sqlite" => "NUMERIC",
            "postgres" => "NUMERIC(10,2)",
            _ => "DECIMAL(10,2)",
        };
        statements(
            &engine,
            &registry,
            &url,
            &[
            ("d1", format!("DROP TABLE IF EXISTS {ord}")),
            ("d2", format!("DROP TABLE IF EXISTS {contact}")),
            ("d3", format!("DROP TABLE IF EXISTS {cust}")),
            ("d4", "DROP TABLE IF EXISTS sluice_imports".to_owned()),
            (
                "c1",
                format!(
                    "CREATE TABLE {cust} (id {key}, external_id VARCHAR(40) NOT NULL UNIQUE, name VARCHAR(100) NOT NULL, referrer VARCHAR(40) REFERENCES {cust} (external_id))"
                ),
            ),
            (
                "c2",
                format!(
                    "CREATE TABLE {contact} (id {key}, customer_id INT NOT NULL, name VARCHAR(100) NOT NULL)"
                ),
            ),
            (
                "c3",
                format!(
                    "CREATE TABLE {ord} (id {key}, customer_id INT NOT NULL, number VARCHAR(40) NOT NULL UNIQUE, total {num} NOT NULL CHECK (total >= 0), currency CHAR(3) NOT NULL DEFAULT 'EUR')"
                ),
            ),
            ],
        )
        .await;

        // PostgreSQL writes a chunk while the one before commits when the
        // patches only create; elsewhere, and with updates, one after the
        // other. Both on PostgreSQL would double the test; updates (with
        // `$tokens` in their criteria) are written on the other two.
        let creates_only = name == "postgres";
        let updates = if creates_only {
            String::new()
        } else {
            format!(
                r#"        # Written through the templated patch as a whole (its collection
        # is a template), its criteria rendered with the tokens just before.
        - op: update
          collection: "{{{{ \"{cust}\" }}}}"
          criteria: {{id: "{{{{ $tokens.customer }}}}"}}
          properties: {{name: "{{{{ .name }}}} (2)"}}
        # Parsed when handed over, its criteria rendered into it before.
        - op: update
          collection: {cust}
          criteria: {{id: "{{{{ $tokens.customer }}}}"}}
          properties: {{name: "{{{{ .name }}}} (3)"}}
"#
            )
        };
        let updated = if creates_only {
            ""
        } else {
            r#" and $write.results[2].id == $tokens.customer and $write.results[3].name == "\($trigger.name) (3)""#
        };
        let last_of_first = REFERS - 2;
        let flow_text = envelope_flow("import-test", &url)
            + &format!(
                r#"        - op: create
          collection: {cust}
          properties: {{external_id: "{{{{ .id }}}}", name: "{{{{ .name }}}}", referrer: "{{{{ .referrer }}}}"}}
          setTokens: {{customer: id}}
          children:
            - op: create
              collection: {contact}
              parentKey: customer_id
              properties: {{name: "{{{{ .contact }}}}"}}
        - op: create
          collection: {ord}
          properties:
            customer_id: "{{{{ $tokens.customer }}}}"
            number: "O-{{{{ .id }}}}"
            total: "{{{{ .total | tonumber }}}}"
{updates}  # The last record of the first chunk ends late, so that its chunk
  # commits after the next chunk's first write (when they overlap).
  - key: nap
    type: sleep
    options:
      ms: '{{{{ if $trigger.id == "C-{last_of_first}" then 300 else 0 end }}}}'
  - key: after
    type: transform
    options:
      value:
        customer: "{{{{ $tokens.customer }}}}"
        # The envelope's result: each patch's stored row, children inside.
        check: '{{{{ if $write.results[0].children[0].customer_id == $tokens.customer and $write.results[0].external_id == ($trigger.id | tostring) and $write.results[1].currency == "EUR" and ($write.results[1].total | type) == "number" and $write.tokens == {{customer: $tokens.customer}}{updated} then true else error("results: \($write)") end }}}}'
"#
            );
        let flow = sluice_model::load("import.yaml", &flow_text, registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"));
        let options = ImportOptions {
            chunk: 700,
            ..ImportOptions::default()
        };
        let mut last = (0, 0);
        let s = engine
            .import(&flow, &file, &options, &mut |d, t| last = (d, t))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(last, (n, n), "{name}: progress");
        assert_eq!(
            (s.total, s.succeeded, s.failed, s.skipped),
            (n, good, expected_bad.len() as u64, 0),
            "{name}: {s:?}"
        );

        // Every good record landed once, whole, with its children on it.
        let cat = |a: &str, b: &str| match name {
            "mariadb" => format!("CONCAT({a}, {b})"),
            _ => format!("{a} || {b}"),
        };
        let checks = [
            format!("SELECT COUNT(*) AS n FROM {cust}"),
            format!(
                "SELECT COUNT(*) AS n FROM {contact} c JOIN {cust} k ON c.customer_id = k.id WHERE c.name = {}",
                cat("'contact of '", "k.external_id")
            ),
            format!(
                "SELECT COUNT(*) AS n FROM {ord} o JOIN {cust} k ON o.customer_id = k.id WHERE o.number = {}",
                cat("'O-'", "k.external_id")
            ),
            if creates_only {
                format!("SELECT COUNT(*) AS n FROM {cust} WHERE name NOT LIKE '% (3)'")
            } else {
                format!("SELECT COUNT(*) AS n FROM {cust} WHERE name LIKE '% (3)'")
            },
            format!("SELECT COUNT(*) AS n FROM {contact}"),
            format!("SELECT COUNT(*) AS n FROM {ord}"),
        ];
        for sql in checks {
            let got = count(&engine, &registry, &url, &sql).await;
            assert_eq!(got, Some(good), "{name}: {sql}");
        }

        // Every bad record is reported once, with its step and patch.
        let report = std::fs::read_to_string(&s.failures_file).unwrap();
        let mut seen = BTreeMap::new();
        for line in report.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let r = v["record"].as_u64().unwrap();
            assert!(seen.insert(r, v.clone()).is_none(), "{name}: twice: {line}");
        }
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            expected_bad.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (r, patch) in &expected_bad {
            let v = &seen[r];
            if patch.is_empty() {
                assert!(v["step"].is_null(), "{name}: {v}");
                assert!(
                    v["error"].as_str().unwrap().contains("not JSON"),
                    "{name}: {v}"
                );
                // the line as written, to be fixed
                assert!(
                    v["data"].as_str().unwrap().starts_with("{\"id\""),
                    "{name}: {v}"
                );
            } else {
                assert_eq!(v["step"], json!("write"), "{name}: {v}");
                assert!(
                    v["patch"].as_str().unwrap_or_default().starts_with(patch),
                    "{name}: record {r}: {v}"
                );
                // Refused by a constraint or a type: the data's to fix.
                assert_eq!(v["blame"], json!("data"), "{name}: record {r}: {v}");
                assert!(!v["data"].is_null(), "{name}: {v}");
            }
        }
        // The record after the blank line is numbered as a record, on its line.
        if let Some(v) = seen.get(&1000) {
            assert_eq!(v["line"], json!(1001), "{name}: {v}");
        }

        // The same file again: refused, nothing written twice.
        let again = engine
            .import(&flow, &file, &options, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(again, ImportError::Refused(_)), "{name}: {again}");
        last_envelope(&engine, &registry, name, &url).await;
        summary.push(format!(
            "{name}: {good} landed, {} reported",
            expected_bad.len()
        ));
    }
    println!("import: {}", summary.join("; "));
}

/// A record's last step is an envelope whose result nothing reads: the
/// state data it would make is not made, but a record whose state data the
/// result cannot merge into still fails there. Its envelope was written and
/// stays, as in a run of the flow alone (the envelope commits, then the
/// step fails); the report tells it from a refused envelope by its patch.
/// The rows written return only what the writer reads, which includes a
/// field a token takes.
async fn last_envelope(engine: &Engine<SqliteStore>, registry: &Registry, name: &str, url: &str) {
    let p = std::process::id();
    let (t, t2) = (format!("t_{p}"), format!("t2_{p}"));
    let key = generated_key(name);
    let head = format!("id: setup\nconnections:\n  app: {{url: \"{url}\"}}\nsteps:\n");
    statements(
        engine,
        registry,
        url,
        &[
            ("d1", format!("DROP TABLE IF EXISTS {t2}")),
            ("d2", format!("DROP TABLE IF EXISTS {t}")),
            (
                "c1",
                format!("CREATE TABLE {t} (id {key}, v VARCHAR(100) NOT NULL, other VARCHAR(10))"),
            ),
            (
                "c2",
                format!("CREATE TABLE {t2} (id {key}, w VARCHAR(100) NOT NULL)"),
            ),
        ],
    )
    .await;
    let dir = std::env::temp_dir().join(format!("sluice-import-merge-{p}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.jsonl"));
    std::fs::write(&file, "{\"n\": 1}\n[2]\n\"three\"\n{\"n\": 4}\nnull\n").unwrap();
    let flow_text = envelope_flow("merge-test", url)
        + &format!(
            r#"        - {{op: create, collection: {t}, properties: {{v: "{{{{ tojson }}}}"}}, setTokens: {{v: v}}}}
        - {{op: create, collection: {t2}, properties: {{w: "{{{{ $tokens.v }}}}"}}}}
"#
        );
    let flow = sluice_model::load("m.yaml", &flow_text, registry).unwrap_or_else(|d| panic!("{d}"));
    let options = ImportOptions {
        chunk: 2,
        ..ImportOptions::default()
    };
    let s = engine
        .import(&flow, &file, &options, &mut |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // Null (record 5) takes an object merged over it; an array or a
    // string does not.
    assert_eq!((s.total, s.succeeded, s.failed), (5, 3, 2), "{name}: {s:?}");
    let report = std::fs::read_to_string(&s.failures_file).unwrap();
    let lines: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{name}: {report}");
    for (v, (record, kind)) in lines.iter().zip([(2, "array"), (3, "string")]) {
        assert_eq!(v["record"], json!(record), "{name}: {v}");
        assert_eq!(v["step"], json!("write"), "{name}: {v}");
        assert_eq!(v["patch"], Value::Null, "{name}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("cannot merge object into {kind}")),
            "{name}: {v}"
        );
    }
    let out = run_flow(
        engine,
        registry,
        &format!(
            "{head}  - {{key: q, type: sql.query, options: {{connection: app, mode: fetchAll, query: \"SELECT t.v, t2.w FROM {t} t JOIN {t2} t2 ON t2.id = t.id ORDER BY t.id\"}}}}\n"
        )
        .replace("id: setup", "id: read"),
    )
    .await;
    let row = |v: &str| json!({"v": v, "w": v});
    assert_eq!(
        out["results"],
        json!([
            row("{\"n\":1}"),
            row("[2]"),
            row("\"three\""),
            row("{\"n\":4}"),
            row("null")
        ]),
        "{name}: {out}"
    );
}

/// On PostgreSQL chunks are written side by side: the next chunk writes
/// its first patch while the chunk before writes its second. Here the
/// second patch's statements are slow (a trigger sleeps) and refuse a
/// record in the last group of chunks 2, 4 and 5 (groups shrink once
/// records are refused), so the chunk before writes again while the next
/// one has written beside it: that one must roll back first (and write
/// again after the commit), or the two would wait for each other's rows.
/// Record 201 repeats the key of record 200, the last of the chunk before,
/// whose row is not committed when it is written: its insert waits for
/// that chunk, which is refused meanwhile. Record 301 repeats the key of
/// record 205, in the first group of the chunk before, whose last group is
/// refused (record 299) while 301's insert waits for that row: the chunk
/// before waits for 301's chunk to roll back, which waits for the row, until
/// the lock timeout ends the wait (without it the import would never end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_refused_late_first_rolls_back_the_chunk_written_beside_it() {
    let Some((_, url)) = common::databases("import-side")
        .into_iter()
        .find(|(name, _)| *name == "postgres")
    else {
        return;
    };
    let (engine, registry) = engine().await;
    let p = std::process::id();
    let (a, b, slow) = (
        format!("side_a_{p}"),
        format!("side_b_{p}"),
        format!("side_slow_{p}"),
    );
    statements(
        &engine,
        &registry,
        &url,
        &[
        ("d1", format!("DROP TABLE IF EXISTS {b}")),
        ("d2", format!("DROP TABLE IF EXISTS {a}")),
        ("d3", "DROP TABLE IF EXISTS sluice_imports".to_owned()),
        (
            "c1",
            format!("CREATE TABLE {a} (id SERIAL PRIMARY KEY, k TEXT NOT NULL UNIQUE)"),
        ),
        (
            "c2",
            format!(
                "CREATE TABLE {b} (id SERIAL PRIMARY KEY, a_id INT NOT NULL REFERENCES {a} (id), k TEXT NOT NULL, v INT NOT NULL CHECK (v >= 0))"
            ),
        ),
        (
            "c3",
            format!(
                "CREATE OR REPLACE FUNCTION {slow}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$"
            ),
        ),
        (
            "c4",
            format!(
                "CREATE TRIGGER {slow} BEFORE INSERT ON {b} FOR EACH STATEMENT EXECUTE FUNCTION {slow}()"
            ),
        ),
        ],
    )
    .await;
    let n: u64 = 600;
    let negative = [150, 299, 400, 499];
    let dir = std::env::temp_dir().join(format!("sluice-import-side-{p}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("records.jsonl");
    let mut text = String::new();
    for i in 1..=n {
        let k = match i {
            201 => 200,
            301 => 205,
            _ => i,
        };
        let v = if negative.contains(&i) { -1 } else { 1 };
        text.push_str(&format!("{{\"k\": \"K-{k}\", \"v\": {v}}}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let flow_text = envelope_flow("side-test", &url)
        + &format!(
            r#"        - {{op: create, collection: {a}, properties: {{k: "{{{{ .k }}}}"}}, setTokens: {{a: id}}}}
        - {{op: create, collection: {b}, properties: {{a_id: "{{{{ $tokens.a }}}}", k: "{{{{ .k }}}}", v: "{{{{ .v }}}}"}}}}
"#
        );
    let flow = sluice_model::load("side.yaml", &flow_text, registry.as_ref())
        .unwrap_or_else(|d| panic!("{d}"));
    let options = ImportOptions {
        chunk: 100,
        ..ImportOptions::default()
    };
    let mut progress = |_, _| {};
    let import = engine.import(&flow, &file, &options, &mut progress);
    let s = tokio::time::timeout(std::time::Duration::from_secs(120), import)
        .await
        .unwrap_or_else(|_| panic!("two chunks waited for each other"))
        .unwrap_or_else(|e| panic!("{e}"));
    let bad = [150, 201, 299, 301, 400, 499];
    let good = n - bad.len() as u64;
    assert_eq!((s.succeeded, s.failed), (good, bad.len() as u64), "{s:?}");
    let report = std::fs::read_to_string(&s.failures_file).unwrap();
    let reported: Vec<(u64, String)> = report
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["record"].as_u64().unwrap(),
                v["patch"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = bad
        .iter()
        .map(|&r| {
            (
                r,
                if r == 201 || r == 301 {
                    format!("patch 1 (create {a})")
                } else {
                    format!("patch 2 (create {b})")
                },
            )
        })
        .collect();
    assert_eq!(reported, want, "{report}");
    // Every good record once, its second row on its first (the keys the
    // first rows were given, read back as one array, each matched to its
    // own record).
    for sql in [
        format!("SELECT COUNT(*) AS n FROM {a}"),
        format!("SELECT COUNT(*) AS n FROM {b} JOIN {a} ON {a}.id = {b}.a_id AND {a}.k = {b}.k"),
        format!("SELECT COUNT(DISTINCT k) AS n FROM {a}"),
    ] {
        let got = count(&engine, &registry, &url, &sql).await;
        assert_eq!(got, Some(good), "{sql}");
    }
}

/// A file imported again with `--restart` into the rows it wrote: every
/// record is refused (its key is there already), every one reported with
/// its patch, on every database. A chunk whose records all fail is split
/// group after group without the writer going any deeper (it once
/// recursed per record, and overflowed its stack on a chunk of 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_imported_again_is_refused_record_by_record() {
    let (engine, registry) = engine().await;
    let n: u64 = 1200;
    let p = std::process::id();
    let dir = std::env::temp_dir().join(format!("sluice-import-again-{p}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, url) in common::databases("import-again") {
        let t = format!("again_{p}");
        keyed_table(&engine, &registry, name, &url, &t).await;
        let file = dir.join(format!("{name}.jsonl"));
        let lines: String = (1..=n).map(|i| format!("{{\"k\": \"K-{i}\"}}\n")).collect();
        std::fs::write(&file, lines).unwrap();
        let flow_text = envelope_flow("again-test", &url)
            + &format!(
                "        - {{op: create, collection: {t}, properties: {{k: \"{{{{ .k }}}}\"}}}}\n"
            );
        let flow = sluice_model::load("again.yaml", &flow_text, registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"));
        let mut options = ImportOptions {
            chunk: 600,
            ..ImportOptions::default()
        };
        let first = engine
            .import(&flow, &file, &options, &mut |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((first.succeeded, first.failed), (n, 0), "{name}: {first:?}");
        options.restart = true;
        let again = engine
            .import(&flow, &file, &options, &mut |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((again.succeeded, again.failed), (0, n), "{name}: {again:?}");
        let report = std::fs::read_to_string(&again.failures_file).unwrap();
        let records: Vec<u64> = report
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(
                    v["patch"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("patch 1"),
                    "{name}: {v}"
                );
                v["record"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(records, (1..=n).collect::<Vec<_>>(), "{name}");
        let sql = format!("SELECT COUNT(*) AS n FROM {t}");
        assert_eq!(
            count(&engine, &registry, &url, &sql).await,
            Some(n),
            "{name}"
        );
    }
}

/// A chunk whose last record is refused at its second patch, after its
/// first was written: that record's first row is rolled back before the
/// chunk commits (the writer sends a refused write's rollback with the
/// next statement, and before the commit when there is none), on every
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_ending_with_a_refused_record_commits_none_of_its_rows() {
    let (engine, registry) = engine().await;
    let p = std::process::id();
    let dir = std::env::temp_dir().join(format!("sluice-import-last-{p}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, url) in common::databases("import-last") {
        let t = format!("last_{p}");
        keyed_table(&engine, &registry, name, &url, &t).await;
        // Records 2 and 4 end their chunks (of two) and take, in their
        // second patch, the key their chunk's first record wrote.
        let file = dir.join(format!("{name}.jsonl"));
        std::fs::write(
            &file,
            "{\"k\": \"A-1\", \"k2\": \"B-1\"}\n{\"k\": \"A-2\", \"k2\": \"A-1\"}\n\
             {\"k\": \"A-3\", \"k2\": \"B-3\"}\n{\"k\": \"A-4\", \"k2\": \"A-3\"}\n",
        )
        .unwrap();
        let flow_text = envelope_flow("last-test", &url)
            + &format!(
                "        - {{op: create, collection: {t}, properties: {{k: \"{{{{ .k }}}}\"}}}}\n\
                 \x20       - {{op: create, collection: {t}, properties: {{k: \"{{{{ .k2 }}}}\"}}}}\n"
            );
        let flow = sluice_model::load("last.yaml", &flow_text, registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"));
        let options = ImportOptions {
            chunk: 2,
            ..ImportOptions::default()
        };
        let done = engine
            .import(&flow, &file, &options, &mut |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((done.succeeded, done.failed), (2, 2), "{name}: {done:?}");
        let sql = format!("SELECT COUNT(*) AS n FROM {t}");
        assert_eq!(
            count(&engine, &registry, &url, &sql).await,
            Some(4),
            "{name}"
        );
        let sql = format!("SELECT COUNT(*) AS n FROM {t} WHERE k IN ('A-2', 'A-4')");
        assert_eq!(
            count(&engine, &registry, &url, &sql).await,
            Some(0),
            "{name}: a refused record's first row was committed"
        );
    }
}
