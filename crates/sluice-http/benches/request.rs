//! `http.request` against a local server, next to reqwest alone in the
//! same run (goal: the step costs at most 1.5 times what reqwest alone
//! does), and a 1,000-call fan-out of runs with at most 16 at once.
//!
//! The server (axum) runs on a thread of its own in this process: both
//! sides of each figure include its work, so the ratio is the client's.
//! Run: `cargo bench -p sluice-http --bench request`.

use divan::Bencher;
use serde_json::{Value, json};
use sluice_action::testing::Once;
use sluice_engine::{Engine, RunRequest};
use sluice_store::{RunStatus, SqliteStore};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The allocator the `sluice` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// An order as an API would answer with it.
fn order() -> Value {
    json!({"id": 7, "customer": {"id": "C-1", "name": "Ada Lovelace", "email": "ada@example.com"},
        "items": [{"sku": "A-1", "qty": 2, "price": 9.5}, {"sku": "B-2", "qty": 1, "price": 120.0}],
        "total": 139.0, "currency": "EUR", "status": "paid"})
}

/// The server's port (started once).
fn server() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap().port()).unwrap();
                let body = order();
                let app = axum::Router::new().route(
                    "/orders/{id}",
                    axum::routing::get(move || {
                        let b = body.clone();
                        async move { axum::Json(b) }
                    }),
                );
                axum::serve(l, app).await.unwrap();
            });
        });
        rx.recv().unwrap()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[divan::bench]
fn reqwest_alone(b: Bencher) {
    let port = server();
    let rt = runtime();
    // The same TLS set-up the step's clients have (none is used on
    // plain HTTP, but a client needs one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/orders/7?expand=items");
    b.bench_local(|| {
        rt.block_on(async {
            let r = client.get(&url).send().await.unwrap();
            let bytes = r.bytes().await.unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    });
}

#[divan::bench]
fn http_request_step(b: Bencher) {
    let port = server();
    let rt = runtime();
    let registry = sluice_http::registry();
    let action = registry.get("http.request").unwrap().action.clone();
    let connections: BTreeMap<String, Value> = [(
        "api".to_owned(),
        json!({"type": "http", "baseUrl": format!("http://127.0.0.1:{port}"), "allowPrivateHosts": ["127.0.0.1"]}),
    )]
    .into();
    let options = json!({"connection": "api", "url": "/orders/7", "query": {"expand": "items"}});
    let input = json!({"id": 7});
    let once = Once {
        run_id: "r",
        step: "s",
        input: &input,
        connections: &connections,
        expressions: &BTreeMap::new(),
        inbox: None,
    };
    b.bench_local(|| rt.block_on(async { once.run(action.as_ref(), &options).await.unwrap() }));
}

/// 1,000 runs of one `http.request` each, fanned out by `split` with at
/// most 16 under way, each recorded in a SQLite store on disk.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn fan_out_1000_calls_16_at_once(b: Bencher) {
    let port = server();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-fanout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry = Arc::new(sluice_http::registry());
    let store = rt.block_on(async {
        SqliteStore::open(&format!("sqlite://{}", dir.join("store.db").display()))
            .await
            .unwrap()
    });
    let engine = Engine::new(Arc::new(store), registry.clone());
    let text = format!(
        "id: fan\nconnections:\n  api: {{type: http, baseUrl: \"http://127.0.0.1:{port}\", allowPrivateHosts: [127.0.0.1]}}\nsteps:\n  - {{key: each, type: split, options: {{items: \"{{{{ [range(1000) | {{n: .}}] }}}}\", concurrency: 16}}}}\n  - {{key: get, type: http.request, options: {{connection: api, url: \"/orders/{{{{ .n }}}}\"}}}}\n"
    );
    let flow = sluice_model::load("fan.yaml", &text, registry.as_ref()).unwrap();
    b.bench_local(|| {
        rt.block_on(async {
            let r = engine.run(&flow, RunRequest::default()).await.unwrap();
            assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
        })
    });
}
