//! The standardized actions hold the same rules on SQL and on REST: every
//! case of `standard-actions.yaml` runs as `sql.ACTION` on a SQLite table
//! and as `rest.ACTION` on json-server (a REST API from the npm registry
//! that nobody here wrote; `.ci/run` installs it and sets
//! `SLUICE_JSON_SERVER`). Without json-server the REST half says so and
//! skips, except under CI.

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_engine::{Engine, RunRequest};
use sluice_store::{RunStatus, SqliteStore};
use std::path::Path;
use std::sync::Arc;

mod common;

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    rows: Option<Vec<Value>>,
    action: String,
    options: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    after: Option<Vec<Value>>,
}

fn default_rows() -> Vec<Value> {
    vec![
        json!({"id": 1, "email": "a@x", "name": "Ada", "country": "DE"}),
        json!({"id": 2, "email": "b@x", "name": "Bob", "country": "DE"}),
        json!({"id": 3, "email": "c@x", "name": "Cy", "country": "FR"}),
    ]
}

/// `expected` holds in `got`: every field of an object (an empty object
/// exactly), arrays element by element.
fn fits(got: &Value, expected: &Value) -> bool {
    match (got, expected) {
        (Value::Object(g), Value::Object(e)) if e.is_empty() => g.is_empty(),
        (Value::Object(g), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| fits(gv, v))),
        (Value::Array(g), Value::Array(e)) => {
            g.len() == e.len() && g.iter().zip(e).all(|(a, b)| fits(a, b))
        }
        _ => got == expected,
    }
}

enum Backend {
    Sql(String),
    /// json-server's port, and whether updates are sent as `PUT`.
    Rest(u16, bool),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sql(_) => "sql",
            Self::Rest(..) => "rest",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sql(_) => "sql",
            Self::Rest(_, false) => "rest (PATCH)",
            Self::Rest(_, true) => "rest (PUT)",
        }
    }

    fn connection(&self) -> String {
        match self {
            Self::Sql(url) => format!("{{url: \"{url}\"}}"),
            Self::Rest(port, put) => format!(
                "{{type: http, baseUrl: \"http://127.0.0.1:{port}\", allowPrivateHosts: [127.0.0.1], resources: {{customers: {{update: {}, paging: {{page: _page, size: _limit}}, filters: {{\"!=\": \"{{field}}_ne\"}}}}}}}}",
                if *put { "put" } else { "patch" }
            ),
        }
    }
}

struct Runner {
    engine: Engine<SqliteStore>,
    registry: Arc<sluice_action::Registry>,
}

impl Runner {
    async fn run(&self, text: &str) -> sluice_engine::RunResult {
        let flow = sluice_model::load("case.yaml", text, self.registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}\n{text}"));
        self.engine.run(&flow, RunRequest::default()).await.unwrap()
    }

    async fn sql(&self, b: &Backend, steps: &str) -> Option<Value> {
        let text = format!(
            "id: s\nunmappedResults: replace\nconnections:\n  app: {}\nsteps:\n{steps}",
            b.connection()
        );
        let r = self.run(&text).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}\n{text}", r.failure);
        r.output_json()
    }

    async fn reset(&self, b: &Backend, rows: &[Value]) {
        match b {
            Backend::Sql(_) => {
                let mut steps = String::from(
                    "  - {key: d0, type: sql.query, options: {connection: app, mode: statement, query: \"DROP TABLE IF EXISTS customers\"}}\n  - {key: d1, type: sql.query, options: {connection: app, mode: statement, query: \"CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, name TEXT, country TEXT)\"}}\n",
                );
                for (i, r) in rows.iter().enumerate() {
                    steps.push_str(&format!(
                        "  - {{key: r{i}, type: sql.create, options: {{connection: app, collection: customers, properties: {r}}}}}\n"
                    ));
                }
                self.sql(b, &steps).await;
            }
            Backend::Rest(port, _) => {
                let (_, all) = common::http(*port, "GET", "/customers", None).unwrap();
                for o in all.as_array().into_iter().flatten() {
                    common::http(*port, "DELETE", &format!("/customers/{}", o["id"]), None)
                        .unwrap();
                }
                for r in rows {
                    let (status, _) = common::http(*port, "POST", "/customers", Some(r)).unwrap();
                    assert_eq!(status, 201);
                }
            }
        }
    }

    async fn rows(&self, b: &Backend) -> Vec<Value> {
        match b {
            Backend::Sql(_) => {
                let out = self
                    .sql(
                        b,
                        "  - {key: q, type: sql.query, options: {connection: app, query: \"SELECT * FROM customers ORDER BY id\"}}\n",
                    )
                    .await
                    .unwrap_or_default();
                // SQL has null where REST has nothing.
                out["results"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut r| {
                        if let Value::Object(m) = &mut r {
                            m.retain(|_, v| !v.is_null());
                        }
                        r
                    })
                    .collect()
            }
            Backend::Rest(port, _) => {
                let (_, all) = common::http(*port, "GET", "/customers?_sort=id", None).unwrap();
                all.as_array().cloned().unwrap_or_default()
            }
        }
    }

    /// Run `case` on `b`: what went wrong, if anything.
    async fn case(&self, b: &Backend, case: &Case) -> Option<String> {
        self.reset(b, case.rows.as_deref().unwrap_or(&default_rows()))
            .await;
        let mut options = case.options.clone();
        options["connection"] = json!("app");
        options["collection"] = json!("customers");
        let text = format!(
            "id: c\nunmappedResults: replace\nconnections:\n  app: {}\nsteps:\n  - {{key: act, type: {}.{}, options: {options}}}\n",
            b.connection(),
            b.kind(),
            case.action
        );
        let r = self.run(&text).await;
        let mut wrong = Vec::new();
        match (&case.error, &r.failure) {
            (Some(want), Some(f)) if f.message.contains(want.as_str()) => {}
            (Some(want), _) => wrong.push(format!(
                "wanted the error {want:?}, got {:?} {:?}",
                r.failure, r.output
            )),
            (None, Some(f)) => wrong.push(format!("failed: {}", f.message)),
            (None, None) => {}
        }
        if let Some(want) = &case.result {
            let got = r.output_json().unwrap_or(Value::Null);
            if !fits(&got, want) {
                wrong.push(format!("result {got} does not fit {want}"));
            }
        }
        if let Some(want) = &case.after {
            let got = Value::Array(self.rows(b).await);
            if !fits(&got, &Value::Array(want.clone())) {
                wrong.push(format!("afterwards {got} does not fit {want:?}"));
            }
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standardized_actions_keep_one_set_of_rules_on_sql_and_rest() {
    let dir = std::env::temp_dir().join(format!("sluice-standard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standard-actions.yaml");
    let cases: Vec<Case> =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut registry = sluice_sql::registry();
    sluice_http::register(&mut registry);
    let registry = Arc::new(registry);
    let runner = Runner {
        engine: Engine::new(
            Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap()),
            registry.clone(),
        ),
        registry,
    };
    let server = common::start_json_server(&dir, &json!({"customers": []}));
    let mut backends = vec![Backend::Sql(format!(
        "sqlite://{}?mode=rwc",
        dir.join("std.db").display()
    ))];
    if let Some(s) = &server {
        backends.push(Backend::Rest(s.port, false));
        backends.push(Backend::Rest(s.port, true));
    }
    let mut failures = Vec::new();
    for b in &backends {
        for case in &cases {
            if let Some(why) = runner.case(b, case).await {
                failures.push(format!("{} ({}): {why}", case.name, b.name()));
            }
        }
    }
    let names: Vec<&str> = backends.iter().map(Backend::name).collect();
    println!(
        "standardized actions: {} cases on {}: {} passed, {} failed",
        cases.len(),
        names.join(", "),
        cases.len() * backends.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
