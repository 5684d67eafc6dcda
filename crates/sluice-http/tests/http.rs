//! `http.request` against real HTTP servers on loopback (port 0): an
//! axum server written here for what only a test server does on purpose
//! (statuses, slow and large answers, redirects, an OAuth 2.0 token
//! endpoint), and a second one on another origin. Flows run through the
//! engine as a user's would, recorded in a store.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use sluice_action::Blame;
use sluice_engine::{Engine, RunRequest, RunResult};
use sluice_store::{RunStatus, SqliteStore, Store};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Api {
    /// Tokens issued, and the one that is valid now.
    issued: AtomicU64,
    valid: Mutex<String>,
    /// Where `/cross` redirects to.
    other: Mutex<String>,
}

async fn echo(
    method: Method,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    axum::Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    let s = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
    let mut r = (s, format!("status {code} on purpose")).into_response();
    if code == 429 || code == 503 {
        r.headers_mut().insert(
            "retry-after",
            "1".parse().unwrap_or_else(|_| unreachable!()),
        );
    }
    r
}

async fn redirect(Path(n): Path<u32>) -> Response {
    if n == 0 {
        return axum::Json(json!({"arrived": true})).into_response();
    }
    (
        StatusCode::FOUND,
        [("location", format!("/redirect/{}", n - 1))],
    )
        .into_response()
}

async fn cross(State(api): State<Arc<Api>>) -> Response {
    let to = api.other.lock().unwrap().clone();
    (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response()
}

async fn token(State(api): State<Arc<Api>>, headers: HeaderMap, body: String) -> Response {
    // client `app`, secret `s3cret-value`, as HTTP Basic.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if basic != "Basic YXBwOnMzY3JldC12YWx1ZQ==" || !body.contains("grant_type=client_credentials")
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let n = api.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let t = format!("tok-{n}");
    *api.valid.lock().unwrap() = t.clone();
    axum::Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

async fn protected(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let want = format!("Bearer {}", api.valid.lock().unwrap());
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(got) if got == want => axum::Json(json!({"ok": true})).into_response(),
        _ => (StatusCode::UNAUTHORIZED, "bad token").into_response(),
    }
}

async fn rotate(State(api): State<Arc<Api>>) -> &'static str {
    *api.valid.lock().unwrap() = "nobody-has-this".into();
    "rotated"
}

/// Six items, two a page, three ways.
fn page_of(n: u64) -> Vec<u64> {
    if (1..=3).contains(&n) {
        vec![n * 2 - 1, n * 2]
    } else {
        Vec::new()
    }
}

async fn by_link(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let n: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let mut r = axum::Json(page_of(n)).into_response();
    if n < 3 {
        let link = format!(
            "</list/link?page={}>; rel=\"next\", </list/link?page=1>; rel=\"first\"",
            n + 1
        );
        r.headers_mut()
            .insert("link", link.parse().unwrap_or_else(|_| unreachable!()));
    }
    r
}

async fn by_cursor(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let n: u64 = q
        .get("after")
        .and_then(|c| c.strip_prefix('c'))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let next = (n < 3).then(|| format!("c{}", n + 1));
    axum::Json(json!({"data": page_of(n), "meta": {"next": next}})).into_response()
}

async fn by_number(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let n: u64 = q.get("p").and_then(|p| p.parse().ok()).unwrap_or(1);
    axum::Json(json!({"rows": page_of(n).iter().map(|i| json!({"id": i})).collect::<Vec<_>>()}))
        .into_response()
}

async fn serve(router: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    port
}

/// The test API and another origin that echoes; their ports.
async fn servers() -> (u16, u16, Arc<Api>) {
    let api = Arc::new(Api::default());
    let other = serve(Router::new().route("/{*p}", any(echo))).await;
    *api.other.lock().unwrap() = format!("http://127.0.0.1:{other}/landed");
    let router = Router::new()
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/text", get(|| async { "hello" }))
        .route(
            "/bytes",
            get(|| async {
                (
                    [("content-type", "application/octet-stream")],
                    vec![0xffu8, 0],
                )
            }),
        )
        .route(
            "/badjson",
            get(|| async { ([("content-type", "application/json")], "{oops") }),
        )
        .route("/status/{code}", any(status))
        .route("/redirect/{n}", get(redirect))
        .route("/cross", any(cross))
        .route("/big", get(|| async { "x".repeat(2 << 20) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/list/link", get(by_link))
        .route("/list/cursor", get(by_cursor))
        .route("/list/page", get(by_number))
        .route(
            "/list/circle",
            get(|Query(q): Query<BTreeMap<String, String>>| async move {
                let next = if q.get("p").map(String::as_str) == Some("b") {
                    "a"
                } else {
                    "b"
                };
                (
                    [("link", format!("</list/circle?p={next}>; rel=\"next\""))],
                    axum::Json(json!([])),
                )
            }),
        )
        .route(
            "/people",
            get(|| async { axum::Json(json!([{"id": 1, "name": "A"}, {"id": 2, "name": "B"}])) }),
        )
        .route("/token", post(token))
        .route("/protected", get(protected))
        .route("/rotate", post(rotate))
        .with_state(api.clone());
    (serve(router).await, other, api)
}

struct Env {
    engine: Engine<SqliteStore>,
    store: Arc<SqliteStore>,
    registry: Arc<sluice_action::Registry>,
    port: u16,
}

impl Env {
    async fn new(port: u16) -> Self {
        let registry = Arc::new(sluice_http::registry());
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        Self {
            engine: Engine::new(store.clone(), registry.clone()),
            store,
            registry,
            port,
        }
    }

    /// Run a flow whose `connections:` and `steps:` follow `head`; `PORT`
    /// in the text is the test API's port.
    async fn run(&self, text: &str, input: Value) -> RunResult {
        let text = text.replace("PORT", &self.port.to_string());
        let flow = sluice_model::load("t.yaml", &text, self.registry.as_ref())
            .unwrap_or_else(|d| panic!("{d}"));
        let req = RunRequest {
            input: Some(sluice_expr::data::into_val(input)),
            ..Default::default()
        };
        self.engine.run(&flow, req).await.unwrap()
    }

    async fn ok(&self, text: &str, input: Value) -> Value {
        let r = self.run(text, input).await;
        assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
        r.output_json().unwrap()
    }

    async fn fails(&self, text: &str, input: Value) -> (Blame, String) {
        let r = self.run(text, input).await;
        assert_ne!(r.status, RunStatus::Succeeded, "{:?}", r.output_json());
        let f = r.failure.unwrap();
        (f.blame, f.message)
    }
}

const API: &str = "connections:\n  api: {type: http, baseUrl: \"http://127.0.0.1:PORT\", headers: {x-client: sluice}, allowPrivateHosts: [127.0.0.1]}\n";

fn one_step(options: &str) -> String {
    format!(
        "id: t\nunmappedResults: replace\n{API}steps:\n  - {{key: call, type: http.request, options: {options}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_sent_as_written_and_answers_read_by_their_type() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    // A GET: the query URL-encoded, the connection's and the step's
    // headers, no idempotency key.
    let out = env
        .ok(
            &one_step("{connection: api, url: \"/echo/{{ .id }}\", query: {q: \"{{ .q }}\", tag: [a, b], none: null}, headers: {x-step: \"{{ .id }}\"}}"),
            json!({"id": 7, "q": "a&b=c d/é"}),
        )
        .await;
    assert_eq!(out["status"], 200);
    assert_eq!(out["headers"]["content-type"], "application/json");
    let b = &out["body"];
    assert_eq!(b["method"], "GET");
    assert_eq!(b["path"], "/echo/7");
    assert_eq!(
        b["query"],
        json!([["q", "a&b=c d/é"], ["tag", "a"], ["tag", "b"]])
    );
    assert_eq!(b["headers"]["x-client"], "sluice");
    assert_eq!(b["headers"]["x-step"], "7");
    assert!(b["headers"].get("idempotency-key").is_none(), "{b}");

    // A POST of JSON carries the run's idempotency key.
    let r = env
        .run(
            &one_step(
                "{connection: api, method: post, url: /echo, body: {name: \"{{ .name }}\", n: 1}}",
            ),
            json!({"name": "Ada"}),
        )
        .await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    let out = r.output_json().unwrap();
    let b = &out["body"];
    assert_eq!(b["method"], "POST");
    assert_eq!(b["headers"]["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(b["body"].as_str().unwrap()).unwrap(),
        json!({"name": "Ada", "n": 1})
    );
    assert_eq!(
        b["headers"]["idempotency-key"],
        format!("{}/call/0/1", r.run_id)
    );
    // A form, and text.
    let out = env
        .ok(
            &one_step("{connection: api, method: PUT, url: /echo, bodyType: form, body: {a: \"x y\", n: 2}, headers: {idempotency-key: mine}}"),
            json!({}),
        )
        .await;
    assert_eq!(out["body"]["body"], "a=x+y&n=2");
    assert_eq!(
        out["body"]["headers"]["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(out["body"]["headers"]["idempotency-key"], "mine");
    let out = env
        .ok(
            &one_step(
                "{connection: api, method: POST, url: /echo, bodyType: text, body: \"{{ .t }}\"}",
            ),
            json!({"t": "plain words"}),
        )
        .await;
    assert_eq!(out["body"]["body"], "plain words");
    // Answers: text, bytes in base64, JSON forced.
    let out = env
        .ok(&one_step("{connection: api, url: /text}"), json!({}))
        .await;
    assert_eq!(out["body"], "hello");
    let out = env
        .ok(&one_step("{connection: api, url: /bytes}"), json!({}))
        .await;
    assert_eq!(
        (&out["body"], &out["bodyEncoding"]),
        (&json!("/wA="), &json!("base64"))
    );
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /text, responseType: json}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(
        m.contains("/text: the answer is not JSON (`responseType: json`)"),
        "{m}"
    );
    let (blame, m) = env
        .fails(&one_step("{connection: api, url: /badjson}"), json!({}))
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("its content type says JSON"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_blame_who_must_act_and_retries_wait_as_asked() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    let (blame, m) = env
        .fails(&one_step("{connection: api, url: /status/404}"), json!({}))
        .await;
    assert_eq!(blame, Blame::Data);
    assert!(
        m.contains(&format!(
            "GET http://127.0.0.1:{port}/status/404 answered 404 Not Found: status 404 on purpose"
        )),
        "{m}"
    );
    let (blame, _) = env
        .fails(&one_step("{connection: api, url: /status/503}"), json!({}))
        .await;
    assert_eq!(blame, Blame::External);
    // A status the step accepts is an answer like any other.
    let out = env
        .ok(
            &one_step("{connection: api, url: /status/404, acceptStatuses: [200, 404]}"),
            json!({}),
        )
        .await;
    assert_eq!(out["status"], 404);
    // 429 with Retry-After: 1: the retry waits a second, not 10 ms.
    let text = format!(
        "id: t\n{API}steps:\n  - {{key: call, type: http.request, options: {{connection: api, url: /status/429}}, retry: {{attempts: 2, delayMs: 10}}}}\n"
    );
    let r = env.run(&text, json!({})).await;
    assert_eq!(r.failure.as_ref().map(|f| f.blame), Some(Blame::External));
    let steps = env.store.get_run(&r.run_id).await.unwrap().unwrap().steps;
    assert_eq!(steps.len(), 2, "{steps:?}");
    let waited = steps[1].started_at - steps[0].ended_at;
    assert!(waited >= 950_000, "the retry came after {waited} µs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_size_and_redirects_are_limited() {
    let (port, other, _) = servers().await;
    let env = Env::new(port).await;
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /slow, timeoutMs: 300}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.ends_with("/slow: no answer within 300 ms"), "{m}");
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /big, maxResponseBytes: 1000000}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("larger than 1000000 bytes"), "{m}");
    let out = env
        .ok(
            &one_step("{connection: api, url: /redirect/2, maxRedirects: 2}"),
            json!({}),
        )
        .await;
    assert_eq!(out["body"], json!({"arrived": true}));
    let (_, m) = env
        .fails(
            &one_step("{connection: api, url: /redirect/3, maxRedirects: 2}"),
            json!({}),
        )
        .await;
    assert!(m.ends_with("more than 2 redirects"), "{m}");
    // With none followed, the redirect is the answer.
    let out = env
        .ok(
            &one_step(
                "{connection: api, url: /redirect/1, maxRedirects: 0, acceptStatuses: [302]}",
            ),
            json!({}),
        )
        .await;
    assert_eq!(out["headers"]["location"], "/redirect/0");
    // To another origin: the connection's credentials and the step's
    // Authorization stay behind, other headers go; a 307 keeps the body.
    let text = format!(
        "id: t\nunmappedResults: replace\nconnections:\n  api: {{type: http, baseUrl: \"http://127.0.0.1:{port}\", auth: {{type: bearer, token: secret-token}}, allowPrivateHosts: [127.0.0.1]}}\nsteps:\n  - {{key: call, type: http.request, options: {{connection: api, method: POST, url: /cross, body: {{a: 1}}, headers: {{authorization: Basic eDp5, x-keep: kept}}}}}}\n"
    );
    let out = env.ok(&text, json!({})).await;
    let b = &out["body"];
    assert_eq!(b["path"], "/landed");
    assert_eq!(b["method"], "POST");
    assert_eq!(b["body"], "{\"a\":1}");
    assert!(b["headers"].get("authorization").is_none(), "{b}");
    assert_eq!(b["headers"]["x-keep"], "kept");
    assert_ne!(other, port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machine_and_private_networks_are_refused_unless_allowed_by_name() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    // No connection: nothing internal is reachable.
    let text = "id: t\nsteps:\n  - {key: call, type: http.request, options: {url: \"http://127.0.0.1:PORT/echo\"}}\n";
    let (blame, m) = env.fails(text, json!({})).await;
    assert_eq!(blame, Blame::Flow);
    assert!(
        m.contains("`127.0.0.1` is a loopback address") && m.contains("`allowPrivateHosts`"),
        "{m}"
    );
    // A name is checked after it is resolved.
    let text = "id: t\nsteps:\n  - {key: call, type: http.request, options: {url: \"http://localhost:PORT/echo\"}}\n";
    let (blame, m) = env.fails(text, json!({})).await;
    assert_eq!(blame, Blame::Flow);
    assert!(m.contains("`localhost` resolves to"), "{m}");
    // Allowed by name, it is reached; a redirect from it to an address it
    // does not name is refused.
    let named = "connections:\n  api: {type: http, baseUrl: \"http://localhost:PORT\", allowPrivateHosts: [localhost]}\n";
    let text = format!(
        "id: t\nunmappedResults: replace\n{named}steps:\n  - {{key: call, type: http.request, options: {{connection: api, url: /echo}}}}\n"
    );
    assert_eq!(env.ok(&text, json!({})).await["status"], 200);
    let text = format!(
        "id: t\n{named}steps:\n  - {{key: call, type: http.request, options: {{connection: api, url: /cross}}}}\n"
    );
    let (blame, m) = env.fails(&text, json!({})).await;
    assert_eq!(blame, Blame::Flow);
    assert!(m.contains("`127.0.0.1` is a loopback address"), "{m}");
    // A connection's credentials go only to its own base URL.
    let text = format!(
        "id: t\n{API}steps:\n  - {{key: call, type: http.request, options: {{connection: api, url: \"http://localhost:{port}/echo\"}}}}\n"
    );
    let (blame, m) = env.fails(&text, json!({})).await;
    assert_eq!(blame, Blame::Flow);
    assert!(m.contains("is outside the connection's `baseUrl`"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_fetched_kept_and_fetched_again_when_refused() {
    let (port, _, api) = servers().await;
    let env = Env::new(port).await;
    // SAFETY: the variable is this test's own.
    unsafe { std::env::set_var("SLUICE_HTTP_TEST_SECRET", "s3cret-value") };
    let conn = |secret: &str| {
        format!(
            "connections:\n  api: {{type: http, baseUrl: \"http://127.0.0.1:PORT\", allowPrivateHosts: [127.0.0.1], auth: {{type: oauth2, tokenUrl: \"http://127.0.0.1:PORT/token\", clientId: app, clientSecret: \"{secret}\", scope: read}}}}\n"
        )
    };
    let flow = format!(
        "id: t\nunmappedResults: replace\n{}steps:\n  - {{key: a, type: http.request, options: {{connection: api, url: /protected}}}}\n  - {{key: b, type: http.request, options: {{connection: api, url: /protected}}}}\n",
        conn("${env:SLUICE_HTTP_TEST_SECRET}")
    );
    let out = env.ok(&flow, json!({})).await;
    assert_eq!(out["body"], json!({"ok": true}));
    assert_eq!(api.issued.load(Ordering::SeqCst), 1, "one token for both");
    // The API stops taking the token: it is fetched again, once.
    env.ok(
        &format!("id: r\n{API}steps:\n  - {{key: r, type: http.request, options: {{connection: api, method: POST, url: /rotate}}}}\n"),
        json!({}),
    )
    .await;
    let r = env.run(&flow, json!({})).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.failure);
    assert_eq!(api.issued.load(Ordering::SeqCst), 2);
    // A wrong secret: the author must act; the secret is nowhere.
    let bad = format!(
        "id: t\n{}steps:\n  - {{key: a, type: http.request, options: {{connection: api, url: /protected}}}}\n",
        conn("wrong-secret-value")
    );
    let r = env.run(&bad, json!({})).await;
    let f = r.failure.clone().unwrap();
    assert_eq!(f.blame, Blame::Flow);
    assert!(
        f.message
            .contains("answered 401 (invalid_client) to client `app`"),
        "{}",
        f.message
    );
    let record = env.store.get_run(&r.run_id).await.unwrap().unwrap();
    let text = format!("{:?}{}", record.steps, f.message);
    assert!(
        !text.contains("wrong-secret-value") && !text.contains("s3cret"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_with_the_right_blame() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    // A URL made from data that does not parse.
    let (blame, m) = env
        .fails(
            "id: t\nsteps:\n  - {key: call, type: http.request, options: {url: \"{{ .u }}\"}}\n",
            json!({"u": "http://exa mple.com/"}),
        )
        .await;
    assert_eq!(blame, Blame::Data);
    assert!(m.contains("is not a URL"), "{m}");
    // A body that is not of the declared type.
    let (blame, m) = env
        .fails(
            &one_step(
                "{connection: api, method: POST, url: /echo, bodyType: form, body: \"{{ .b }}\"}",
            ),
            json!({"b": [1, 2]}),
        )
        .await;
    assert_eq!(blame, Blame::Data);
    assert!(
        m.contains("`bodyType: form` sends an object's fields"),
        "{m}"
    );
    // TLS to a server that speaks plain HTTP.
    let text = format!(
        "id: t\nconnections:\n  tls: {{type: http, baseUrl: \"https://127.0.0.1:{port}\", allowPrivateHosts: [127.0.0.1]}}\nsteps:\n  - {{key: call, type: http.request, options: {{connection: tls, url: /echo}}}}\n"
    );
    let (blame, m) = env.fails(&text, json!({})).await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("could not connect"), "{m}");
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = format!(
        "id: t\nconnections:\n  gone: {{type: http, baseUrl: \"http://127.0.0.1:{closed}\", allowPrivateHosts: [127.0.0.1]}}\nsteps:\n  - {{key: call, type: http.request, options: {{connection: gone, url: /x?token=abc}}}}\n"
    );
    let (blame, m) = env.fails(&text, json!({})).await;
    assert_eq!(blame, Blame::External);
    assert!(
        m.contains("could not connect") && !m.contains("token=abc"),
        "{m}"
    );
    // A header value a header cannot carry.
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /echo, headers: {x-a: \"{{ .v }}\"}}"),
            json!({"v": "a\nb"}),
        )
        .await;
    assert_eq!(blame, Blame::Data);
    assert!(m.contains("header `x-a`"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_read_over_their_pages() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    let all = json!([1, 2, 3, 4, 5, 6]);
    for pages in [
        "{next: link}",
        "{items: $.data, next: {cursor: $.meta.next, param: after}}",
        "{items: \"$.rows[*].id\", next: {page: p}}",
    ] {
        let url = if pages.contains("cursor") {
            "/list/cursor"
        } else if pages.contains("page:") {
            "/list/page"
        } else {
            "/list/link"
        };
        let out = env
            .ok(
                &one_step(&format!("{{connection: api, url: {url}, pages: {pages}}}")),
                json!({}),
            )
            .await;
        assert_eq!(out["results"], all, "{pages}");
        // Too many: the rule of the standardized lookup-many.
        let (blame, m) = env
            .fails(
                &one_step(&format!(
                    "{{connection: api, url: {url}, pages: {}, maxResultSize: 5}}}}",
                    &pages[..pages.len() - 1]
                )),
                json!({}),
            )
            .await;
        assert_eq!(blame, Blame::Data, "{pages}");
        assert!(m.contains("too many results: 5 or more"), "{pages}: {m}");
    }
    // One page at a time, each telling how to ask for the next.
    let out = env
        .ok(
            &one_step("{connection: api, url: /list/link, pages: {next: link, mode: fetchPage}}"),
            json!({}),
        )
        .await;
    assert_eq!(out["results"], json!([1, 2]));
    let next = out["next"].as_str().unwrap().to_owned();
    assert_eq!(next, format!("http://127.0.0.1:{port}/list/link?page=2"));
    let out = env
        .ok(
            &one_step("{connection: api, url: /list/link, pages: {next: link, mode: fetchPage, from: \"{{ .next }}\"}}"),
            json!({"next": next}),
        )
        .await;
    assert_eq!(out["results"], json!([3, 4]));
    let out = env
        .ok(
            &one_step("{connection: api, url: /list/cursor, pages: {items: $.data, next: {cursor: $.meta.next, param: after}, mode: fetchPage, from: c3}}"),
            json!({}),
        )
        .await;
    assert_eq!(
        (&out["results"], &out["next"]),
        (&json!([5, 6]), &Value::Null)
    );
    let out = env
        .ok(
            &one_step("{connection: api, url: /list/page, pages: {items: \"$.rows[*]\", next: {page: p}, mode: fetchPage, from: 2}}"),
            json!({}),
        )
        .await;
    assert_eq!(
        (&out["results"], &out["next"]),
        (&json!([{"id": 3}, {"id": 4}]), &json!(3))
    );
    // Pages that lead back to one read before.
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /list/circle, pages: {next: link}}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("the pages go round in a circle"), "{m}");
    // A list that is not where the step looks.
    let (blame, m) = env
        .fails(
            &one_step("{connection: api, url: /list/cursor, pages: {items: $.rows, next: link}}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("has no list at `$.rows`"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_actions_refuse_what_the_api_cannot_answer_as_asked() {
    let (port, _, _) = servers().await;
    let env = Env::new(port).await;
    let conn = "connections:\n  api: {type: http, baseUrl: \"http://127.0.0.1:PORT\", allowPrivateHosts: [127.0.0.1], resources: {people: {}, numbers: {path: /list/link}}}\n";
    let step = |s: &str| format!("id: t\n{conn}steps:\n  - {{key: s, {s}}}\n");
    // An API that ignores the search parameter: its answer is not taken
    // for matches.
    let (blame, m) = env
        .fails(&step("type: rest.lookup, options: {connection: api, collection: people, criteria: {name: A}}"), json!({}))
        .await;
    assert_eq!(blame, Blame::Flow);
    assert!(
        m.contains("the API does not filter by `name` as asked"),
        "{m}"
    );
    let (blame, m) = env
        .fails(&step("type: rest.lookupMany, options: {connection: api, collection: people, terms: [{field: id, condition: \">=\", value: 1}]}"), json!({}))
        .await;
    assert_eq!(blame, Blame::Flow);
    assert!(
        m.contains("resource `people` has no filter for `>=`"),
        "{m}"
    );
    // A collection the connection does not describe: refused when the
    // flow loads.
    let text = step(
        "type: rest.lookup, options: {connection: api, collection: nobody, criteria: {id: 1}}",
    )
    .replace("PORT", &port.to_string());
    let e = sluice_model::load("t.yaml", &text, env.registry.as_ref())
        .unwrap_err()
        .to_string();
    assert!(e.contains("the connection has no resource `nobody`"), "{e}");
    let (blame, m) = env
        .fails(
            &step("type: rest.lookupMany, options: {connection: api, collection: numbers}"),
            json!({}),
        )
        .await;
    assert_eq!(blame, Blame::External);
    assert!(m.contains("answered with 1 where an object belongs"), "{m}");
    let (blame, m) = env
        .fails(&step("type: rest.lookup, options: {connection: api, collection: people, criteria: {name: {a: 1}}}"), json!({}))
        .await;
    assert_eq!(blame, Blame::Data);
    assert!(
        m.contains("a REST API is asked for text, numbers and booleans only"),
        "{m}"
    );
}
