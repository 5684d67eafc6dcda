//! The `poll` trigger's reads on real databases (SQLite always; PostgreSQL
//! and MariaDB when their URLs are set, as `.ci/run` sets them): the
//! snapshot rules of SEMANTICS.md section 6, page by page.

use serde_json::{Value, json};
use sluice_action::Registry;
use sluice_engine::{Engine, RunRequest};
use sluice_sql::{PollSnapshot, PollTrigger, Pools, poll_page};
use sluice_store::{RunStatus, SqliteStore};
use std::collections::BTreeMap;
use std::sync::Arc;

mod common;

/// Run SQL statements through a flow of `sql.query` steps.
async fn exec(engine: &Engine<SqliteStore>, registry: &Registry, url: &str, statements: &[String]) {
    let mut yaml = format!("id: sql\nconnections:\n  app: {{url: \"{url}\"}}\nsteps:\n");
    for (i, s) in statements.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{key: s{i}, type: sql.query, options: {{connection: app, mode: statement, query: \"{s}\"}}}}\n"
        ));
    }
    let flow = sluice_model::load("t.yaml", &yaml, registry).unwrap_or_else(|d| panic!("{d}"));
    let r = engine.run(&flow, RunRequest::default()).await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
}

/// Poll until a round ends: the names read, page by page.
/// The flow's declared connections and the pools they open.
struct Connections<'a> {
    declared: &'a BTreeMap<String, Value>,
    pools: &'a Pools,
}

async fn round(
    connections: &Connections<'_>,
    t: &PollTrigger,
    snap: &mut PollSnapshot,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    loop {
        let rows = poll_page(connections.pools, connections.declared, t, snap)
            .await
            .unwrap_or_else(|e| panic!("{}", e.message));
        pages.push(
            rows.iter()
                .map(|r| r.row["name"].as_str().unwrap_or_default().to_owned())
                .collect(),
        );
        let ats: Vec<(Value, Value)> = rows.into_iter().map(|r| r.at).collect();
        if !snap.advance(&ats, t.page_size) {
            return pages;
        }
        // The snapshot is kept as JSON in the store between polls.
        *snap = serde_json::from_value(serde_json::to_value(&*snap).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_read_new_and_updated_rows_by_the_snapshot_rules() {
    let registry = Arc::new(sluice_sql::registry());
    let engine = Engine::new(
        Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
        registry.clone(),
    );
    for (name, url) in common::databases("poll-test") {
        let table = format!("items_{}", std::process::id());
        let ddl = match name {
            "sqlite" => {
                format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, updated TEXT)")
            }
            "postgres" => {
                format!("CREATE TABLE {table} (id INT PRIMARY KEY, name TEXT, updated TIMESTAMPTZ)")
            }
            _ => format!(
                "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20), updated DATETIME)"
            ),
        };
        let ts = |s: u32| match name {
            "mariadb" => format!("2026-01-01 00:00:{s:02}"),
            _ => format!("2026-01-01T00:00:{s:02}Z"),
        };
        let insert = |id: u32, n: &str, s: u32| {
            format!(
                "INSERT INTO {table} (id, name, updated) VALUES ({id}, '{n}', '{}')",
                ts(s)
            )
        };
        exec(
            &engine,
            &registry,
            &url,
            &[
                format!("DROP TABLE IF EXISTS {table}"),
                ddl,
                insert(1, "a", 1),
                insert(2, "b", 2),
                insert(3, "c", 2),
                insert(4, "d", 3),
                insert(5, "e", 5),
                format!("INSERT INTO {table} (id, name, updated) VALUES (9, 'never', NULL)"),
            ],
        )
        .await;
        let declared: BTreeMap<String, Value> = [("app".to_owned(), json!({"url": url}))].into();
        let pools = Pools::default();
        let connections = Connections {
            declared: &declared,
            pools: &pools,
        };
        let t: PollTrigger = serde_json::from_value(json!({
            "connection": "app",
            "collection": table,
            "timestampField": "updated",
            "startTime": ts(2),
            "pageSize": 2,
        }))
        .unwrap();
        // The first round: `>= startTime`, in pages of two ordered by time
        // and key; a full last page needs one more (empty) read.
        let mut snap = PollSnapshot::start(&t);
        assert_eq!(
            round(&connections, &t, &mut snap).await,
            vec![vec!["b", "c"], vec!["d", "e"], vec![]],
            "{name}"
        );
        assert!(snap.found, "{name}");
        // Nothing new: nothing read.
        assert_eq!(
            round(&connections, &t, &mut snap).await,
            vec![Vec::<String>::new()],
            "{name}"
        );
        // Later rounds read `> previousLastModified`: a row written at the
        // very time of the last one read is not read again (the rule's
        // edge); later ones are, an update too.
        exec(
            &engine,
            &registry,
            &url,
            &[
                insert(6, "f", 5),
                insert(7, "g", 6),
                format!("UPDATE {table} SET updated = '{}' WHERE id = 1", ts(7)),
            ],
        )
        .await;
        assert_eq!(
            round(&connections, &t, &mut snap).await,
            vec![vec!["g", "a"], vec![]],
            "{name}"
        );
        // Rows of one time are paged by key without loss: the page after a
        // full one starts after its last row's time and key.
        exec(
            &engine,
            &registry,
            &url,
            &[insert(10, "h", 8), insert(11, "i", 8), insert(12, "j", 8)],
        )
        .await;
        assert_eq!(
            round(&connections, &t, &mut snap).await,
            vec![vec!["h", "i"], vec!["j"]],
            "{name}"
        );
        // endTime bounds every round; startTime from the beginning when absent.
        let bounded: PollTrigger = serde_json::from_value(json!({
            "connection": "app",
            "collection": table,
            "timestampField": "updated",
            "endTime": ts(3),
            "pageSize": 10,
        }))
        .unwrap();
        let mut snap = PollSnapshot::start(&bounded);
        assert_eq!(
            round(&connections, &bounded, &mut snap).await,
            vec![vec!["b", "c", "d"]],
            "{name}"
        );
        // A column that is not there is refused by name.
        let wrong: PollTrigger = serde_json::from_value(json!({
            "connection": "app", "collection": table, "timestampField": "modified"
        }))
        .unwrap();
        let err = poll_page(
            connections.pools,
            connections.declared,
            &wrong,
            &PollSnapshot::start(&wrong),
        )
        .await
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
        assert!(err.contains("has no field `modified`"), "{name}: {err}");

        // A query instead of a table (a join): the same rules on its result
        // columns, its parameters typed as the database describes them.
        let tags = format!("tags_{}", std::process::id());
        exec(
            &engine,
            &registry,
            &url,
            &[
                format!("DROP TABLE IF EXISTS {tags}"),
                format!("CREATE TABLE {tags} (item_id INT NOT NULL, tag VARCHAR(20) NOT NULL)"),
                format!(
                    "INSERT INTO {tags} (item_id, tag) VALUES (2, 'x'), (4, 'x'), (7, 'x'), (9, 'x'), (11, 'x'), (12, 'y')"
                ),
            ],
        )
        .await;
        let query = format!(
            "SELECT i.id AS item_id, i.name AS name, i.updated AS changed, t.tag AS tag FROM {table} i JOIN {tags} t ON t.item_id = i.id WHERE t.tag = 'x';"
        );
        let joined: PollTrigger = serde_json::from_value(json!({
            "connection": "app",
            "query": query,
            "timestampField": "changed",
            "keyField": "item_id",
            "startTime": ts(3),
            "pageSize": 2,
        }))
        .unwrap();
        let mut snap = PollSnapshot::start(&joined);
        assert_eq!(
            round(&connections, &joined, &mut snap).await,
            vec![vec!["d", "g"], vec!["i"]],
            "{name}"
        );
        exec(
            &engine,
            &registry,
            &url,
            &[
                format!("UPDATE {tags} SET tag = 'x' WHERE item_id = 12"),
                format!("UPDATE {table} SET updated = '{}' WHERE id = 12", ts(9)),
            ],
        )
        .await;
        assert_eq!(
            round(&connections, &joined, &mut snap).await,
            vec![vec!["j"]],
            "{name}"
        );
        let mut keyless = joined.clone();
        keyless.key_field = Some("id".into());
        let err = poll_page(
            connections.pools,
            connections.declared,
            &keyless,
            &PollSnapshot::start(&keyless),
        )
        .await
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
        assert!(
            err.contains("the poll's query has no column `id`"),
            "{name}: {err}"
        );
        exec(&engine, &registry, &url, &[format!("DROP TABLE {tags}")]).await;
    }
}
