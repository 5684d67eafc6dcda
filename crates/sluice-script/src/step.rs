//! `script`: the step. Its `code` is taken as written (never templated:
//! data never becomes code) and checked for syntax when the flow loads;
//! each call runs on a blocking thread, its data the step's input with the
//! flow object's `$trigger`, `$last`, `$accountability` and `$env`.

use crate::js::{self, Failure, Limits};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_action::{Action, ActionCx, ActionError, Blame, Outcome};
use sluice_expr::PathSeg;
use sluice_model::OptionIssue;
use std::time::Duration;

/// `script`: its scripts compiled once, by their code.
#[derive(Default)]
pub struct Script {
    compiled: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>>,
}

/// Compiled scripts kept at most (the flows a process has loaded hold far
/// fewer; past this the cache starts again).
const MAX_COMPILED: usize = 1024;

impl Script {
    /// `code`'s bytecode, if it was compiled before.
    fn compiled(&self, code: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        self.compiled.lock().ok().and_then(|m| m.get(code).cloned())
    }

    /// Keep `code`'s bytecode for the calls after.
    fn keep(&self, code: String, bytes: std::sync::Arc<Vec<u8>>) {
        if let Ok(mut m) = self.compiled.lock() {
            if m.len() >= MAX_COMPILED {
                m.clear();
            }
            m.insert(code, bytes);
        }
    }
}

/// The time a call may take when the step gives none (Directus's default).
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The memory a call may use when the step gives none (Directus's default).
const DEFAULT_MEMORY_MB: u64 = 32;

/// Options of `script`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptOptions {
    /// JavaScript: `module.exports = async function (data) { ... }`.
    pub code: String,
    /// Time a call may take, in milliseconds (default 10,000).
    pub timeout_ms: Option<u64>,
    /// Memory a call may use, in MiB (default 32).
    pub memory_mb: Option<u64>,
}

impl Action for Script {
    const KIND: &'static str = "script";
    const VERBATIM: &'static [&'static str] = &["code"];
    // It reaches nothing outside the run: its record may go with the next.
    const PURE: bool = true;
    type Options = ScriptOptions;

    fn check(options: &Value) -> Vec<OptionIssue> {
        let Some(code) = options.get("code").and_then(Value::as_str) else {
            return Vec::new();
        };
        match js::compile(code) {
            Ok(_) => Vec::new(),
            Err(Failure::Syntax(p)) => vec![OptionIssue {
                path: vec![PathSeg::Key("code".into())],
                message: format!("the script does not parse: {p}"),
                at_key: false,
                help: None,
            }],
            Err(_) => Vec::new(),
        }
    }

    async fn run<'a>(&'a self, cx: ActionCx<'a>, o: ScriptOptions) -> Result<Outcome, ActionError> {
        let mut data = cx.program_input.to_json().clone();
        if let Value::Object(m) = &mut data {
            // The run's data as it is (numbers as written), not as jq
            // would give it back.
            for var in ["trigger", "last", "accountability", "env"] {
                if let Some(v) = cx.scope.get(var) {
                    m.insert(format!("${var}"), sluice_expr::data::to_json(&v));
                }
            }
        }
        let text = serde_json::to_string(&data).map_err(|e| ActionError::data(e.to_string()))?;
        let limits = Limits {
            time: Duration::from_millis(o.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            memory: usize::try_from(
                o.memory_mb
                    .unwrap_or(DEFAULT_MEMORY_MB)
                    .saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_millis() as f64);
        // Compiled (on its first call) and run on a thread of its own: both
        // are QuickJS's work, not the runtime's.
        let known = self.compiled(&o.code);
        let code = o.code;
        let (called, fresh) = tokio::task::spawn_blocking(move || {
            let (bytes, fresh) = match known {
                Some(b) => (b, None),
                None => match js::compile(&code) {
                    Ok(b) => {
                        let b = std::sync::Arc::new(b);
                        (b.clone(), Some((code, b)))
                    }
                    Err(f) => return (Err(f), None),
                },
            };
            (js::call(&bytes, &text, now, limits), fresh)
        })
        .await
        .map_err(|e| ActionError::new(Blame::Bug, format!("the script's thread failed: {e}")))?;
        if let Some((code, bytes)) = fresh {
            self.keep(code, bytes);
        }
        match called {
            Ok(c) => {
                let mut out = Outcome::value(c.value);
                out.logs = c.logs;
                Ok(out)
            }
            Err(f) => Err(failure(f, &limits)),
        }
    }
}

fn failure(f: Failure, limits: &Limits) -> ActionError {
    match f {
        Failure::Syntax(p) => ActionError::flow(format!("the script does not parse: {p}")),
        Failure::Thrown(p) => ActionError::data(format!("the script threw at {p}")),
        Failure::Timeout => ActionError::data(format!(
            "the script ran longer than its {} ms (`timeoutMs`) and was stopped",
            limits.time.as_millis()
        )),
        Failure::Memory => ActionError::data(format!(
            "the script needed more than its {} MiB (`memoryMb`) and was stopped",
            limits.memory >> 20
        )),
        Failure::Shape(m) => ActionError::flow(m),
    }
}
