//! 40-step sequential flows on a SQLite store on disk (WAL):
//!
//! * `flow_40_steps_*`: `transform` steps. They are pure, so a run of them
//!   is recorded in one write at its end: the figure per step is the
//!   engine's work per pure step plus a fortieth of one commit.
//! * `flow_40_sql_steps_*`: `sql.upsert` steps into a SQLite database of
//!   their own. Each step commits its write, then its record and the run's
//!   new position, before the next starts: the figure per step is a durable
//!   step's whole cost. Goal: at most 0.2 ms per durable step.
//!
//! * `*_postgres`: the same with the store (and, for the SQL steps, the
//!   table written) on PostgreSQL (`SLUICE_BENCH_POSTGRES_URL`, or
//!   `SLUICE_TEST_POSTGRES_URL`; skipped when neither is set), each in a
//!   fresh database. Goal: at most 1 ms per durable step.
//!
//! Run: `cargo bench -p sluice-engine --bench steps`.

use divan::Bencher;
use serde_json::json;
use sluice_engine::{Engine, RunRequest};
use sluice_store::{AnyStore, RunStatus};
use std::sync::Arc;

const STEPS: usize = 40;

/// The allocator the `sluice` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

fn flow_text() -> String {
    let mut s = String::from("id: bench40\nsteps:\n");
    for i in 0..STEPS {
        s.push_str(&format!(
            "  - key: s{i}\n    type: transform\n    options:\n      value: {{count: \"{{{{ (.count // 0) + 1 }}}}\", last: \"s{i}\"}}\n"
        ));
    }
    s
}

/// 40 `sql.upsert` steps on one row of a table of database `db` (sqlx
/// opens it in WAL mode, synced at every commit).
fn sql_flow_text(db_url: &str) -> String {
    let mut s = format!("id: bench40sql\nconnections:\n  app: {{url: \"{db_url}\"}}\nsteps:\n");
    for i in 0..STEPS {
        s.push_str(&format!(
            "  - key: s{i}\n    type: sql.upsert\n    options: {{connection: app, collection: orders, criteria: {{id: \"{{{{ $trigger.body.orderId }}}}\"}}, properties: {{step: s{i}}}}}\n"
        ));
    }
    s
}

/// A fresh database on the PostgreSQL server of the benchmarks, or `None`.
fn fresh_postgres(rt: &tokio::runtime::Runtime, name: &str) -> Option<String> {
    let base = std::env::var("SLUICE_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("SLUICE_TEST_POSTGRES_URL"))
        .ok()?;
    let db = format!("sluice_bench_{name}_{}", std::process::id());
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&base).await.ok()?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .ok()?;
        }
        Some(())
    })?;
    Some(format!("{}/{db}", base.rsplit_once('/')?.0))
}

/// The store: a SQLite file in `dir` with `synchronous`, or PostgreSQL.
fn setup(
    store: &str,
) -> Option<(
    tokio::runtime::Runtime,
    Engine<AnyStore>,
    sluice_model::Flow,
    std::path::PathBuf,
)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{store}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = if store == "postgres" {
        let Some(url) = fresh_postgres(&rt, "store") else {
            eprintln!(
                "skipped: SLUICE_BENCH_POSTGRES_URL (or SLUICE_TEST_POSTGRES_URL) is not set"
            );
            return None;
        };
        url
    } else {
        format!(
            "sqlite://{}?synchronous={store}",
            dir.join("bench.db").display()
        )
    };
    let store = Arc::new(rt.block_on(AnyStore::open(&url)).unwrap());
    let registry = Arc::new(sluice_sql::registry());
    let flow = sluice_model::load("bench40.yaml", &flow_text(), registry.as_ref()).unwrap();
    Some((rt, Engine::new(store, registry), flow, dir))
}

/// Run `flow` with `req` once per sample, each run succeeding.
fn bench_flow(
    bencher: Bencher,
    rt: &tokio::runtime::Runtime,
    engine: &Engine<AnyStore>,
    flow: &sluice_model::Flow,
    req: RunRequest,
) {
    bencher
        .counter(divan::counter::ItemsCount::new(STEPS))
        .bench_local(|| {
            let r = rt.block_on(engine.run(flow, req.clone())).unwrap();
            assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
        });
}

fn bench_run(bencher: Bencher, store: &str) {
    let Some((rt, engine, flow, dir)) = setup(store) else {
        return;
    };
    let req = RunRequest {
        input: Some(sluice_expr::data::into_val(json!({"orderId": "A-1"}))),
        ..Default::default()
    };
    let r = rt.block_on(engine.run(&flow, req.clone())).unwrap();
    assert_eq!(r.output_json().unwrap()["count"], json!(STEPS));
    bench_flow(bencher, &rt, &engine, &flow, req);
    let _ = std::fs::remove_dir_all(dir);
}

fn bench_sql_run(bencher: Bencher, store: &str) {
    let Some((rt, engine, _, dir)) = setup(store) else {
        return;
    };
    let registry = sluice_sql::registry();
    let db = if store == "postgres" {
        let Some(url) = fresh_postgres(&rt, "app") else {
            return;
        };
        url
    } else {
        format!("sqlite://{}?mode=rwc", dir.join("app.db").display())
    };
    let create = format!(
        "id: create\nconnections:\n  app: {{url: \"{db}\"}}\nsteps:\n  - {{key: t, type: sql.query, options: {{connection: app, mode: statement, query: \"CREATE TABLE orders (id TEXT PRIMARY KEY, step TEXT)\"}}}}\n"
    );
    let create = sluice_model::load("create.yaml", &create, &registry).unwrap();
    rt.block_on(engine.run(&create, RunRequest::default()))
        .unwrap();
    let flow = sluice_model::load("bench40sql.yaml", &sql_flow_text(&db), &registry).unwrap();
    let req = RunRequest {
        trigger: sluice_expr::data::into_val(json!({"body": {"orderId": "A-1"}})),
        ..Default::default()
    };
    bench_flow(bencher, &rt, &engine, &flow, req);
    let _ = std::fs::remove_dir_all(dir);
}

/// Durable steps: each `sql.upsert` commits (the target database synced at
/// every commit, sqlx's default), then its record does.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn flow_40_sql_steps_sqlite_wal(bencher: Bencher) {
    bench_sql_run(bencher, "normal");
}

/// WAL with synchronous=NORMAL: survives a crash of the process (the default).
#[divan::bench(sample_count = 30, sample_size = 1)]
fn flow_40_steps_sqlite_wal(bencher: Bencher) {
    bench_run(bencher, "normal");
}

/// WAL with synchronous=FULL: every commit synced to disk.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn flow_40_steps_sqlite_wal_fsync(bencher: Bencher) {
    bench_run(bencher, "full");
}

/// Durable steps on PostgreSQL: each `sql.upsert` commits its row in a
/// PostgreSQL database, then its record commits in the PostgreSQL store.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn flow_40_sql_steps_postgres(bencher: Bencher) {
    bench_sql_run(bencher, "postgres");
}

/// Pure steps with the store on PostgreSQL: one write at the run's end.
#[divan::bench(sample_count = 30, sample_size = 1)]
fn flow_40_steps_postgres(bencher: Bencher) {
    bench_run(bencher, "postgres");
}
