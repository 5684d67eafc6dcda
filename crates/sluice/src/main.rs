//! The `sluice` command line: check flow files, run a flow, inspect runs.

mod prepare;
mod show;
mod testing;
mod tokens;

use clap::{Args, Parser, Subcommand};
use prepare::{enabled, prepare_run, read_input};
use serde_json::Value;
use sluice_action::Registry;
use sluice_engine::{Engine, RunRequest};
use sluice_model::{Diagnostics, Flow};
use sluice_store::{AnyStore, RunFilter, RunStatus, Store};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// jaq allocates per expression term; mimalloc makes that cheap. The meter
/// counts each thread's live bytes for the memory budget of expressions.
#[global_allocator]
static ALLOC: sluice_expr::meter::Metered<mimalloc::MiMalloc> =
    sluice_expr::meter::Metered(mimalloc::MiMalloc);

/// The store used when none is given: a SQLite file in the working directory.
const DEFAULT_STORE: &str = "sluice.db";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Runs declarative data flows, recording every step."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Time one jq expression may run, in milliseconds.
    #[arg(long, global = true, default_value_t = 2000)]
    expr_timeout_ms: u64,
    /// Memory one jq expression may hold beyond its input, in MiB.
    #[arg(long, global = true, default_value_t = 512)]
    expr_memory_mb: usize,
    /// A folder of secret files: `${secret:NAME}` reads the file NAME in
    /// it when the variable SLUICE_SECRET_NAME is not set.
    #[arg(long, global = true, env = "SLUICE_SECRETS_DIR")]
    secrets_dir: Option<std::path::PathBuf>,
}

/// The expression limits given on the command line.
static LIMITS: std::sync::OnceLock<sluice_expr::Limits> = std::sync::OnceLock::new();

/// An engine on `store` with the command line's expression limits.
fn new_engine<S: Store>(store: Arc<S>, registry: Arc<Registry>) -> Engine<S> {
    let limits = LIMITS.get().copied().unwrap_or_default();
    Engine::new(store, registry).with_limits(limits)
}

#[derive(Subcommand)]
enum Command {
    /// Check flow files and report every problem with its line and column.
    Check {
        /// Flow files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run one flow to completion and print its output as JSON.
    Run {
        /// The flow file.
        flow: String,
        /// The input: a JSON file, or `-` for standard input (default `{}`).
        #[arg(long, short)]
        input: Option<String>,
        /// Start the run from a CloudEvent (a JSON file in the structured
        /// mode, or `-`), as the flow's `cloudevent` trigger would.
        #[arg(long, short)]
        event: Option<String>,
        /// Import: run the flow once per record of this file (JSON lines, or
        /// CSV with a header when it ends in `.csv`); failures go to
        /// FILE.failures.jsonl and an interrupted import resumes where it stopped.
        #[arg(long, conflicts_with_all = ["input", "event"])]
        records: Option<String>,
        /// Records written per transaction in an import.
        #[arg(long, default_value_t = 500, requires = "records")]
        chunk: usize,
        /// Import from the first record even if an earlier import of the file
        /// stopped or finished.
        #[arg(long, requires = "records")]
        restart: bool,
        /// Import: write each record's output to this file (`-`: standard
        /// output) as JSON lines, in record order (failed records are in the
        /// failure report, not here).
        #[arg(long, short, requires = "records")]
        output: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Serve the flows of a folder: their triggers (webhooks, schedules,
    /// manual runs), the HTTP API and metrics. Runs left unfinished by a
    /// crash continue from their last step at start. SIGHUP reloads the
    /// flows; SIGTERM or Ctrl-C stops gracefully.
    Serve {
        /// The folder of flow files (YAML or JSON; sub-folders too).
        #[arg(long)]
        flows: String,
        /// The address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// How long to wait for runs under way at shutdown, in seconds.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
        /// How long a client may take to send a request's line and headers
        /// (on a new connection, or the next request on a kept-alive one),
        /// in seconds; past it the connection is closed.
        #[arg(long, default_value_t = 10)]
        header_timeout_secs: u64,
        /// How long a client may take to send a request's body once its
        /// headers are in, in seconds; past it the answer is 408.
        #[arg(long, default_value_t = 60)]
        body_timeout_secs: u64,
        /// The most runs under way at once that webhooks, the API and
        /// events may start; past it they answer 503 with Retry-After.
        #[arg(long, default_value_t = sluice_server::DEFAULT_MAX_IN_FLIGHT)]
        max_runs_in_flight: usize,
        /// Ask no token of API callers. Without it the API needs tokens
        /// (`sluice tokens create`); on loopback it is open while the
        /// store holds none, and elsewhere the server does not start
        /// without one.
        #[arg(long)]
        no_auth: bool,
        /// `/api/health` and `/metrics` need a viewer's token too.
        #[arg(long)]
        auth_health_metrics: bool,
        /// On a PostgreSQL store shared by several processes: how long this
        /// process's leases on its runs hold unrenewed, in seconds (renewed
        /// every quarter of it). The runs of a process that dies are taken
        /// over by the others once it lapsed.
        #[arg(long, default_value_t = 10.0)]
        lease_secs: f64,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print the JSON Schema of flow files (for editors).
    Schema,
    /// List and show recorded runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Make, list and revoke the API's tokens.
    /// Run flow tests (NAME.test.yaml files, or the folders holding them;
    /// default: this folder) offline: the steps that reach outside are
    /// answered by each case. Exit 0 when every case passes.
    Test {
        /// Test files or folders.
        paths: Vec<String>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long)]
        junit: Option<String>,
    },
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
}

#[derive(Args, Clone)]
struct StoreArg {
    /// Where runs are recorded: a SQLite file path or URL, `sqlite::memory:`,
    /// or a PostgreSQL URL (`postgres://USER@HOST/DB`, shared by processes).
    #[arg(long, default_value = DEFAULT_STORE, global = true)]
    store: String,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only runs with this status (running, succeeded, failed, incident).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one run: a table of its steps, then each step's options, input and output.
    Show {
        /// The run id (or a unique prefix of it).
        run: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Continue a run stopped at an incident, from the step where it stopped.
    Resume {
        /// The run id (or a unique prefix of it).
        run: String,
        /// A JSON Merge Patch (RFC 7396) for the run's state data; a patch
        /// that is not an object replaces the state data.
        #[arg(long)]
        input_patch: Option<String>,
        /// Resume with this (fixed) flow file instead of the version the run started with.
        #[arg(long)]
        flow: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Write a recorded run as a test case: its input, the answers of the
    /// steps that reached outside, and its end as what to expect (printed,
    /// or added to a test file with --to).
    Record {
        /// The run id (or a unique prefix of it).
        run: String,
        /// The run's flow file.
        #[arg(long)]
        flow: String,
        /// Add the case to this test file (NAME.test.yaml; made when missing).
        #[arg(long)]
        to: Option<String>,
        /// The case's name (default: `run ID`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// Exit codes.
const FAILED: u8 = 1;
const INVALID: u8 = 2;

/// Every step type and trigger this binary runs: the core ones and each
/// connector's. The one place that lists the connectors.
fn registry() -> Registry {
    let mut r = Registry::core();
    sluice_sql::register(&mut r);
    sluice_http::register(&mut r);
    sluice_mail::register(&mut r);
    sluice_script::register(&mut r);
    // The operator's cap on the environment variables flows may read.
    if let Ok(list) = std::env::var("SLUICE_FLOWS_ENV_ALLOW_LIST") {
        r.set_env_allow_list(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    r
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.secrets_dir {
        sluice_action::secrets::set_dir(dir.clone());
    }
    sluice_store::set_scrub(sluice_store::Scrub {
        text: sluice_action::secrets::scrub,
        value: sluice_action::secrets::scrub_value,
    });
    let _ = LIMITS.set(sluice_expr::Limits {
        timeout: std::time::Duration::from_millis(cli.expr_timeout_ms),
        memory: cli.expr_memory_mb.saturating_mul(1 << 20),
        ..sluice_expr::Limits::default()
    });
    // The server uses every core. An import's writer has a thread of its
    // own, and its records a runtime of their own (below), whose tasks
    // leave a core to the writer and its database when envelopes are
    // written: the database's answer then never waits for a thread busy
    // with records, and the writer sends the next statement at once.
    // Other one-shot commands need one thread.
    let serving = matches!(cli.command, Command::Serve { .. });
    let importing = matches!(
        cli.command,
        Command::Run {
            records: Some(_),
            ..
        }
    );
    let runtime = if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else if importing {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    // The server drives runs on a runtime of their own, so that their work
    // never holds up its answers; an import its records' runs.
    let runs = if serving || importing {
        match tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-run")
            .enable_all()
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(FAILED);
            }
        }
    } else {
        None
    };
    let runs_handle = runs.as_ref().map(|r| r.handle().clone());
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Check { files } => check(&files),
            Command::Serve {
                flows,
                listen,
                grace_secs,
                header_timeout_secs,
                body_timeout_secs,
                max_runs_in_flight,
                no_auth,
                auth_health_metrics,
                lease_secs,
                store,
            } => {
                let timeouts = sluice_server::Timeouts {
                    header: std::time::Duration::from_secs(header_timeout_secs.max(1)),
                    body: std::time::Duration::from_secs(body_timeout_secs.max(1)),
                };
                let auth = sluice_server::Auth {
                    off: no_auth,
                    open_without_tokens: false,
                    health_and_metrics: auth_health_metrics,
                };
                serve(
                    &flows,
                    &listen,
                    grace_secs,
                    (timeouts, max_runs_in_flight, auth),
                    runs_handle,
                    &store.store,
                    lease_secs,
                )
                .await
            }
            Command::Schema => {
                let schema = registry().flow_schema();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| schema.to_string())
                );
                0
            }
            Command::Run {
                flow,
                records: Some(records),
                chunk,
                restart,
                output,
                store,
                ..
            } => {
                let output = output.map(|o| match o.as_str() {
                    "-" => sluice_engine::RecordsOut::Stdout,
                    _ => sluice_engine::RecordsOut::File(o.into()),
                });
                let options = sluice_engine::ImportOptions {
                    chunk,
                    restart,
                    output,
                    records_on: runs_handle,
                };
                // On a worker thread, where the database's answers wake the
                // writer without a hop to this thread: a round trip costs
                // less (they are many where records are refused).
                tokio::spawn(async move { import(&flow, &records, options, &store.store).await })
                    .await
                    .unwrap_or(FAILED)
            }
            Command::Run {
                flow,
                input,
                event,
                store,
                ..
            } => run(&flow, input.as_deref(), event.as_deref(), &store.store).await,
            Command::Runs { command } => match command {
                RunsCommand::List {
                    flow,
                    status,
                    limit,
                    store,
                } => show::list(&store.store, flow, status, limit).await,
                RunsCommand::Show { run, store } => show_run(&store.store, &run).await,
                RunsCommand::Record {
                    run,
                    flow,
                    to,
                    name,
                    store,
                } => {
                    testing::record(&store.store, &run, &flow, to.as_deref(), name.as_deref()).await
                }
                RunsCommand::Resume {
                    run,
                    input_patch,
                    flow,
                    store,
                } => resume(&store.store, &run, input_patch.as_deref(), flow.as_deref()).await,
            },
            Command::Tokens { command } => tokens::tokens(command).await,
            Command::Test { paths, junit } => testing::test(&paths, junit.as_deref()).await,
        }
    });
    ExitCode::from(code)
}

/// Who may call the API of a server listening on `listen`: tokens are
/// asked for unless `--no-auth`; on loopback the API is open while the
/// store holds no token; elsewhere the server does not start without one.
async fn api_auth(
    auth: sluice_server::Auth,
    listen: &str,
    store: &AnyStore,
) -> Option<sluice_server::Auth> {
    if auth.off {
        return Some(auth);
    }
    let addr = listen;
    let loopback = match tokio::net::lookup_host(listen).await {
        Ok(addrs) => {
            let ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
            !ips.is_empty() && ips.iter().all(std::net::IpAddr::is_loopback)
        }
        Err(_) => false,
    };
    let active = match store.tokens().await {
        Ok(t) => t.iter().filter(|t| t.revoked_at.is_none()).count(),
        Err(e) => {
            eprintln!("error: cannot read the API tokens: {e}");
            return None;
        }
    };
    if active == 0 && !loopback {
        eprintln!(
            "error: not serving: {addr} is reachable from other machines and the store holds no API token; make one (`sluice tokens create NAME --role admin`) or start with --no-auth"
        );
        return None;
    }
    if active == 0 {
        eprintln!(
            "sluice: the API is open to this machine while there is no token (`sluice tokens create NAME --role admin`)"
        );
    }
    Some(sluice_server::Auth {
        open_without_tokens: loopback,
        ..auth
    })
}

/// `sluice serve`.
async fn serve(
    dir: &str,
    listen: &str,
    grace_secs: u64,
    (timeouts, max_in_flight, auth): (sluice_server::Timeouts, usize, sluice_server::Auth),
    runs: Option<tokio::runtime::Handle>,
    store_url: &str,
    lease_secs: f64,
) -> u8 {
    let registry = Arc::new(registry());
    let set = match sluice_server::FlowSet::load(std::path::Path::new(dir), &registry) {
        Ok(s) => s,
        Err(failures) => {
            print_load_failures(&failures);
            eprintln!(
                "error: not serving: {} flow file(s) have problems",
                failures.len()
            );
            return INVALID;
        }
    };
    // A SQLite store's writer (a task that commits the runs' records)
    // lives on the runtime that drives the runs: a run's write and its
    // answer then stay on one thread rather than crossing to the server's
    // threads and back (two thread switches fewer per write). A PostgreSQL
    // store's tasks (its lease's heartbeat among them) stay on the
    // server's runtime, which steps never hold up.
    let opened = match runs
        .as_ref()
        .filter(|_| !AnyStore::names_postgres(store_url))
    {
        Some(runs) => joined(open_store_on(runs, store_url)).await,
        None => open_store(store_url).await,
    };
    let store = match opened {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    // Processes sharing a PostgreSQL store lease the runs they drive.
    if let AnyStore::Postgres(pg) = store.as_ref() {
        if !(lease_secs.is_finite() && (0.5..=3600.0).contains(&lease_secs)) {
            eprintln!("error: --lease-secs must be between 0.5 and 3600 (got {lease_secs})");
            return INVALID;
        }
        if let Err(e) = pg
            .set_lease(std::time::Duration::from_secs_f64(lease_secs))
            .await
        {
            eprintln!("error: {e}");
            return FAILED;
        }
    }
    // Decided before listening: a server that may not start never opens
    // its port.
    let Some(auth) = api_auth(auth, listen, &store).await else {
        return INVALID;
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return INVALID;
        }
    };
    let store_handle = store.clone();
    let engine = new_engine(store, registry.clone());
    let n = set.flows.len();
    let mut server = sluice_server::Server::new(engine, registry, set, dir.into())
        .with_timeouts(timeouts)
        .with_max_runs_in_flight(max_in_flight)
        .with_auth(auth);
    if let Some(runs) = runs {
        server = server.with_runs_on(runs);
    }
    match server.recover().await {
        Ok(r) if r.resumed + r.failed + r.waiting > 0 => eprintln!(
            "sluice: continuing {} run(s) left unfinished{}{}",
            r.resumed,
            if r.waiting > 0 {
                format!("; {} suspended run(s) wake when due", r.waiting)
            } else {
                String::new()
            },
            if r.failed > 0 {
                format!("; {} could not continue and failed", r.failed)
            } else {
                String::new()
            }
        ),
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: cannot read unfinished runs: {e}");
            return FAILED;
        }
    }
    server.start_schedules();
    server.start_leases();
    if let AnyStore::Postgres(pg) = store_handle.as_ref() {
        eprintln!(
            "sluice: process {} shares its PostgreSQL store (leases of {lease_secs} s)",
            pg.process_id()
        );
    }
    let local = listener.local_addr();
    let addr = local
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| listen.to_owned());
    eprintln!("sluice: serving {n} flow(s) from {dir} on http://{addr}");
    if let Ok(mut a) = local {
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        eprintln!("sluice: the UI is at http://{a}/ (open it in a browser)");
    }
    let reloader = server.clone();
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => match reloader.reload() {
                    Ok(n) => eprintln!("sluice: reloaded {n} flow(s)"),
                    Err(f) => {
                        print_load_failures(&f);
                        eprintln!("sluice: reload refused; still serving the flows loaded before");
                    }
                },
            }
        }
        eprintln!("sluice: stopping: no new requests; waiting for runs under way");
    };
    match server
        .serve(
            listener,
            shutdown,
            std::time::Duration::from_secs(grace_secs),
        )
        .await
    {
        Ok(()) => {
            // What it still holds goes to the other processes at once.
            if let AnyStore::Postgres(pg) = store_handle.as_ref()
                && let Err(e) = pg.retire().await
            {
                eprintln!("sluice: could not hand over its leases (they lapse by themselves): {e}");
            }
            if let Err(e) = store_handle.settle().await {
                eprintln!(
                    "sluice: could not copy the store's WAL into its database file (the next process reads it): {e}"
                );
            }
            eprintln!("sluice: stopped");
            0
        }
        Err(e) => {
            eprintln!("error: the server failed: {e}");
            FAILED
        }
    }
}

fn print_load_failures(failures: &[sluice_server::LoadFailure]) {
    for f in failures {
        match f {
            sluice_server::LoadFailure::Invalid(d) => print_diagnostics(d),
            sluice_server::LoadFailure::Io { path, message }
            | sluice_server::LoadFailure::Conflict { path, message } => {
                eprintln!("error: {}: {message}", path.display())
            }
        }
    }
}

/// Read and check one flow file, without reading its secrets (what
/// `sluice check` does).
fn read_flow(path: &str, registry: &Registry) -> Result<Flow, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::Io(format!("cannot read flow file `{path}`: {e}")))?;
    sluice_model::load(path, &text, registry).map_err(LoadError::Invalid)
}

/// Read and check one flow file, and put in its secrets (a secret that is
/// not set refuses it).
fn load_flow(path: &str, registry: &Registry) -> Result<Flow, LoadError> {
    let mut flow = read_flow(path, registry)?;
    sluice_action::secrets::resolve(&mut flow).map_err(LoadError::Invalid)?;
    Ok(flow)
}

enum LoadError {
    Io(String),
    Invalid(Diagnostics),
}

/// Print why a flow did not load; the exit code then is INVALID.
fn reported(r: Result<Flow, LoadError>) -> Result<Flow, u8> {
    r.map_err(|e| {
        match e {
            LoadError::Io(m) => eprintln!("error: {m}"),
            LoadError::Invalid(d) => print_diagnostics(&d),
        }
        INVALID
    })
}

fn print_diagnostics(d: &Diagnostics) {
    let theme = if std::io::stderr().is_terminal() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme);
    let mut out = String::new();
    for report in d.reports() {
        let _ = handler.render_report(&mut out, &report);
        out.push('\n');
    }
    eprint!("{out}");
    let n = d.items.len();
    eprintln!(
        "{}: {n} problem{}",
        d.file.name,
        if n == 1 { "" } else { "s" }
    );
}

fn check(files: &[String]) -> u8 {
    let registry = registry();
    let mut worst = 0;
    for path in files {
        // A check reads no secret: the flow's secrets are set where it runs.
        match read_flow(path, &registry) {
            Ok(flow) => {
                for w in written_credentials(&flow) {
                    eprintln!("warning: {w}");
                }
                eprintln!(
                    "{path}: ok (flow `{}`, {} steps{})",
                    flow.id,
                    flow.steps.len(),
                    if flow.enabled { "" } else { ", disabled" }
                )
            }
            Err(LoadError::Io(m)) => {
                eprintln!("error: {m}");
                worst = INVALID;
            }
            Err(LoadError::Invalid(d)) => {
                print_diagnostics(&d);
                worst = INVALID;
            }
        }
    }
    worst
}

/// Credentials written in a flow's connections (a password in a URL, a
/// `password`, `token` or `clientSecret`): each `file:line:column: what`.
fn written_credentials(flow: &Flow) -> Vec<String> {
    const KEYS: [&str; 5] = ["password", "token", "clientSecret", "apiKey", "secret"];
    let mut found = Vec::new();
    for (name, conn) in &flow.connections {
        let mut values: Vec<(String, &str)> = Vec::new();
        let mut walk = vec![conn];
        while let Some(v) = walk.pop() {
            let Some(o) = v.as_object() else { continue };
            for (k, v) in o {
                match v.as_str() {
                    Some(s) if s.contains("${") => {}
                    Some(s) if KEYS.contains(&k.as_str()) && !s.is_empty() => {
                        values.push((format!("`{k}`"), s));
                    }
                    Some(s) if k == "url" || k == "baseUrl" => {
                        if let Some((_, rest)) = s.split_once("://")
                            && let Some((userinfo, _)) = rest.split_once('@')
                            && let Some((_, pw)) = userinfo.split_once(':')
                            && !pw.is_empty()
                        {
                            values.push((format!("the password in `{k}`"), pw));
                        }
                    }
                    _ => walk.push(v),
                }
            }
        }
        for (what, value) in values {
            let at = flow.source.text.find(value).unwrap_or(0);
            let (line, col) = flow.source.line_col(at);
            found.push(format!(
                "{}:{line}:{col}: connection `{name}`: {what} is written in the flow file, which is kept in the store and in git (write `${{secret:NAME}}` and set SLUICE_SECRET_NAME where sluice runs)",
                flow.source.name
            ));
        }
    }
    found
}

async fn open_store(url: &str) -> Result<AnyStore, u8> {
    opened(AnyStore::open(url).await)
}

/// Open store `url` on a task of `runtime`'s (see [`joined`]).
fn open_store_on(
    runtime: &tokio::runtime::Handle,
    url: &str,
) -> tokio::task::JoinHandle<Result<AnyStore, sluice_store::StoreError>> {
    let url = url.to_owned();
    runtime.spawn(async move { AnyStore::open(&url).await })
}

/// The store [`open_store_on`] opened, or its error printed.
async fn joined(
    task: tokio::task::JoinHandle<Result<AnyStore, sluice_store::StoreError>>,
) -> Result<AnyStore, u8> {
    match task.await {
        Ok(r) => opened(r),
        Err(e) => {
            eprintln!("error: opening the store stopped: {e}");
            Err(FAILED)
        }
    }
}

/// A store opened, or its error printed.
fn opened(r: Result<AnyStore, sluice_store::StoreError>) -> Result<AnyStore, u8> {
    r.map_err(|e| {
        eprintln!("error: {e}");
        INVALID
    })
}

async fn run(path: &str, input: Option<&str>, event: Option<&str>, store_url: &str) -> u8 {
    if input == Some("-") && event == Some("-") {
        eprintln!("error: --input and --event cannot both read standard input");
        return INVALID;
    }
    // A store in memory, or one whose file is there, is opened while the
    // flow loads: nothing is made for a flow that does not load but what
    // an earlier run made already, and the store's error, if any, is told
    // only after the flow's. The store's task, run once, hands the opening
    // to its connection's own thread; the flow loads on this one (a thread
    // of its own for it cost more than it saved: its start, its heap).
    let early = (store_url.contains(":memory:") || std::path::Path::new(store_url).is_file())
        .then(|| open_store_on(&tokio::runtime::Handle::current(), store_url));
    if early.is_some() {
        tokio::task::yield_now().await;
    }
    let (registry, flow, input, event) = match prepare_run(path, input, event) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = match early {
        Some(task) => joined(task).await,
        None => open_store(store_url).await,
    };
    let store = match store {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let engine = new_engine(store.clone(), registry.clone());
    // `flow` steps start the flows of the flow file's folder, and the
    // changes SQL steps make start its `event`-triggered flows.
    let reaches = |k: &str| {
        matches!(
            k,
            "flow" | "envelope" | "sql.create" | "sql.update" | "sql.upsert" | "sql.delete"
        )
    };
    if flow.steps.iter().any(|s| reaches(&s.kind)) {
        let dir = std::path::Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        engine.set_flows(Arc::new(FolderFlows {
            dir: dir.to_owned(),
            registry: registry.clone(),
        }));
    }
    // A run started from the command line: `$trigger` is the input as given.
    let req = RunRequest {
        trigger: event
            .as_ref()
            .map(sluice_expr::to_val)
            .or_else(|| input.clone())
            .unwrap_or_default(),
        input,
        event,
        accountability: serde_json::json!({
            "user": std::env::var("USER").ok(),
            "role": null,
            "admin": false,
            "ip": null,
            "userAgent": null,
            "trigger": "cli",
        }),
    };
    let code = report(
        engine.run(&flow, req).await,
        !store_url.contains(":memory:"),
    );
    drop(engine);
    // Closed here, once its last write is committed, rather than when the
    // runtime is dropped: the end of its writer (which checkpoints a grown
    // WAL) and of its connections is then awaited, not raced by the
    // process's end.
    match Arc::try_unwrap(store) {
        Ok(store) => {
            store.close().await;
            end_now(code)
        }
        // Still held (by a flow that the run started and that goes on):
        // the runtime's end drops it.
        Err(_) => code,
    }
}

/// End the process with `code` at once, its output flushed: once a run is
/// recorded and its store closed, nothing is left to tear down, and the
/// allocator's return of its pages to the system at exit (page by page)
/// would cost about a tenth of a one-step run.
fn end_now(code: u8) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` has no precondition; it ends the process without
    // running exit handlers (the allocator's) or destructors (none is left
    // with work to do: the store is closed, the output flushed).
    unsafe { libc::_exit(i32::from(code)) }
}

/// The flows of a folder, for `flow` steps and data hooks under `sluice
/// run`: the flow files in it (not its sub-folders) that load (other files,
/// such as inputs, are passed over).
struct FolderFlows {
    dir: std::path::PathBuf,
    registry: Arc<Registry>,
}

impl sluice_engine::FlowLookup for FolderFlows {
    fn flow(&self, id: &str) -> Option<Arc<sluice_model::Flow>> {
        self.all().into_iter().find(|f| f.id == id)
    }

    fn all(&self) -> Vec<Arc<sluice_model::Flow>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(&p).ok()?;
                sluice_model::load(&p.display().to_string(), &text, self.registry.as_ref())
                    .ok()
                    .map(Arc::new)
            })
            .collect()
    }
}

/// `sluice run FLOW --records FILE`.
async fn import(
    path: &str,
    records: &str,
    options: sluice_engine::ImportOptions,
    store_url: &str,
) -> u8 {
    let registry = Arc::new(registry());
    let flow = match reported(load_flow(path, &registry)) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if let Err(code) = enabled(&flow, path) {
        return code;
    }
    let store = match open_store(store_url).await {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let engine = new_engine(store, registry);
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let result = engine
        .import(
            &flow,
            std::path::Path::new(records),
            &options,
            &mut progress,
        )
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(s) => {
            let summary = serde_json::to_string_pretty(&s.to_json()).unwrap_or_default();
            // Standard output may carry the records' outputs: the summary
            // then goes to standard error.
            if options.output == Some(sluice_engine::RecordsOut::Stdout) {
                eprintln!("{summary}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "{summary}");
            }
            let rate = (s.total - s.skipped) as f64 / s.seconds.max(1e-9);
            let skipped = if s.skipped > 0 {
                format!(", {} skipped (landed by an earlier import)", s.skipped)
            } else {
                String::new()
            };
            eprintln!(
                "imported {records}: {} records, {} succeeded, {} failed{skipped}, in {:.2} s ({:.0} records/s); run {}",
                s.total, s.succeeded, s.failed, s.seconds, rate, s.run_id
            );
            if s.failed > 0 {
                eprintln!("failures: {}", s.failures_file.display());
                FAILED
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                sluice_engine::ImportError::Flow(_)
                | sluice_engine::ImportError::File(_)
                | sluice_engine::ImportError::Refused(_) => INVALID,
                _ => FAILED,
            }
        }
    }
}

/// Print how a run ended and choose the exit code.
/// Print how a run ended; `kept`: whether the store keeps it after this
/// process (not `sqlite::memory:`), so that it can be resumed or shown.
fn report(result: Result<sluice_engine::RunResult, sluice_engine::EngineError>, kept: bool) -> u8 {
    match result {
        Err(e) => {
            sluice_action::warn!("error: {e}");
            FAILED
        }
        Ok(result) => match result.status {
            RunStatus::Succeeded => {
                show::print_output(&result.output.unwrap_or_default());
                eprintln!("run {} succeeded", result.run_id);
                0
            }
            status => {
                if let Some(f) = result.failure {
                    sluice_action::warn!("error: {}", f.message);
                    eprintln!("  step: {}", f.step);
                }
                if !kept {
                    eprintln!(
                        "run {} {}; its record is not kept (the store is in memory): give `--store FILE` to resume or inspect such a run",
                        result.run_id,
                        status.as_str()
                    );
                } else if status == RunStatus::Waiting {
                    eprintln!(
                        "run {id} is waiting for an event; `sluice serve` on this store wakes it when one arrives at POST /events",
                        id = result.run_id
                    );
                } else if status == RunStatus::Incident {
                    eprintln!(
                        "run {id} stopped at an incident; fix the data (or the flow) and `sluice runs resume {id} [--input-patch FILE] [--flow FILE]`",
                        id = result.run_id
                    );
                } else {
                    eprintln!(
                        "run {} {}; see `sluice runs show {}`",
                        result.run_id,
                        status.as_str(),
                        result.run_id
                    );
                }
                FAILED
            }
        },
    }
}

async fn resume(store_url: &str, id: &str, patch: Option<&str>, flow_file: Option<&str>) -> u8 {
    let patch: Option<Value> = match read_input(patch, |r| {
        serde_json::from_reader(std::io::BufReader::new(r))
    }) {
        Ok(p) => p,
        Err(m) => {
            eprintln!("error: {m}");
            return INVALID;
        }
    };
    let store = match open_store(store_url).await {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let detail = match find_run(&store, id).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let registry = Arc::new(registry());
    let flow = match flow_file {
        Some(path) => load_flow(path, &registry),
        None => {
            let version = detail.flow_version.clone().unwrap_or_default();
            match store.flow_version(&detail.summary.flow_id, &version).await {
                Ok(Some(text)) => {
                    let name = format!(
                        "{} (version {version}, from the store)",
                        detail.summary.flow_id
                    );
                    sluice_model::load(&name, &text, registry.as_ref()).map_err(LoadError::Invalid)
                }
                Ok(None) => Err(LoadError::Io(format!(
                    "the store does not have the flow run `{}` started with; give it with --flow FILE",
                    detail.summary.id
                ))),
                Err(e) => Err(LoadError::Io(e.to_string())),
            }
        }
    };
    let flow = match reported(flow) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let engine = new_engine(store, registry);
    report(
        engine
            .resume(&flow, &detail.summary.id, patch.as_ref())
            .await,
        true,
    )
}

/// A run by id or unique prefix; prints the error and returns the exit code otherwise.
async fn find_run(store: &AnyStore, id: &str) -> Result<sluice_store::RunDetail, u8> {
    match store.get_run(id).await {
        Ok(Some(d)) => return Ok(d),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Err(FAILED);
        }
    }
    if id.len() >= 4
        && let Ok(all) = store.list_runs(&RunFilter::default()).await
    {
        let matches: Vec<_> = all.iter().filter(|r| r.id.starts_with(id)).collect();
        if matches.len() > 1 {
            eprintln!(
                "error: `{id}` matches {} runs; give more of the id",
                matches.len()
            );
            return Err(INVALID);
        }
        if let Some(r) = matches.first()
            && let Ok(Some(d)) = store.get_run(&r.id).await
        {
            return Ok(d);
        }
    }
    eprintln!("error: no run `{id}` in the store");
    Err(INVALID)
}

async fn show_run(store_url: &str, id: &str) -> u8 {
    let store = match open_store(store_url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match find_run(&store, id).await {
        Ok(d) => {
            print!("{}", show::run_detail(&d));
            0
        }
        Err(code) => code,
    }
}
