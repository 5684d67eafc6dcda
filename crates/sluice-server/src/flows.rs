//! The flows a server runs: every flow file of a folder, checked, with the
//! webhooks, schedules and polls their triggers declare.

use serde_json::Value;
use sluice_action::Registry;
use sluice_action::poll::PollSource;
use sluice_action::triggers::{HookMethod, MissedFires, Schedule, ScheduleTrigger, WebhookTrigger};
use sluice_expr::{Program, TemplateValue};
use sluice_model::{Diagnostics, Flow};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a flow file was not loaded.
#[derive(Debug)]
pub enum LoadFailure {
    /// The file or folder could not be read.
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file has problems, each with its line and column.
    Invalid(Diagnostics),
    /// The file is valid alone but clashes with another (same id, same webhook).
    Conflict {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl LoadFailure {
    /// One line per problem, as data, for the API.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Io { path, message } | Self::Conflict { path, message } => {
                serde_json::json!({"file": path.display().to_string(), "message": message})
            }
            Self::Invalid(d) => {
                let problems: Vec<Value> = d
                    .items
                    .iter()
                    .map(|i| {
                        let (line, column) = d.file.line_col(i.span.start);
                        serde_json::json!({"line": line, "column": column, "message": i.message, "help": i.help})
                    })
                    .collect();
                serde_json::json!({"file": d.file.name, "problems": problems})
            }
        }
    }
}

/// A flow's webhook.
#[derive(Debug)]
pub struct Hook {
    /// The flow.
    pub flow: Arc<Flow>,
    /// Its options.
    pub options: WebhookTrigger,
    /// The answer's body expression, compiled (`None`: `$last`).
    pub body: Option<Program>,
}

/// A flow's schedule.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// The flow.
    pub flow: Arc<Flow>,
    /// When it fires.
    pub schedule: Schedule,
    /// What it does about fires missed while no server ran.
    pub missed: MissedFires,
}

/// A flow's poll.
#[derive(Clone)]
pub struct Polled {
    /// The flow.
    pub flow: Arc<Flow>,
    /// The connector that reads its rows.
    pub source: Arc<dyn PollSource>,
}

impl std::fmt::Debug for Polled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polled")
            .field("flow", &self.flow.id)
            .finish()
    }
}

/// Every flow of a folder, by id, and what their triggers listen to.
#[derive(Debug, Default)]
pub struct FlowSet {
    /// Flows by id.
    pub flows: BTreeMap<String, Arc<Flow>>,
    /// The file of each flow.
    pub files: BTreeMap<String, PathBuf>,
    /// Webhooks by method and path (without `/hooks/`).
    pub hooks: HashMap<(HookMethod, String), Arc<Hook>>,
    /// Schedules.
    pub schedules: Vec<Scheduled>,
    /// Polls.
    pub polls: Vec<Polled>,
}

impl sluice_engine::FlowLookup for FlowSet {
    fn flow(&self, id: &str) -> Option<Arc<Flow>> {
        self.flows.get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<Flow>> {
        self.flows.values().cloned().collect()
    }
}

/// Whether a path is a flow file: `.yaml`, `.yml` or `.json`, not hidden
/// and not a flow test (`NAME.test.yaml`).
fn is_flow_file(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || sluice_model::is_test_file(n));
    !hidden
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// The flow files under `dir` (sub-folders too), sorted.
fn flow_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadFailure> {
    let io = |e: std::io::Error| LoadFailure::Io {
        path: dir.to_owned(),
        message: format!("cannot read the flows folder: {e}"),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if p.is_dir() && !hidden {
            flow_files(&p, out)?;
        } else if is_flow_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

impl FlowSet {
    /// Load and check every flow file under `dir`. Every problem of every
    /// file is reported; one bad file refuses the whole set.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self, Vec<LoadFailure>> {
        let mut files = Vec::new();
        flow_files(dir, &mut files).map_err(|e| vec![e])?;
        let mut set = Self::default();
        let mut failures = Vec::new();
        for path in files {
            match std::fs::read_to_string(&path) {
                Err(e) => failures.push(LoadFailure::Io {
                    path: path.clone(),
                    message: format!("cannot read the flow file: {e}"),
                }),
                Ok(text) => {
                    match sluice_model::load(&path.display().to_string(), &text, registry).and_then(
                        |mut flow| {
                            sluice_action::secrets::resolve(&mut flow)?;
                            Ok(flow)
                        },
                    ) {
                        Err(d) => failures.push(LoadFailure::Invalid(d)),
                        Ok(flow) => {
                            if let Err(message) = set.add(Arc::new(flow), &path, registry) {
                                failures.push(LoadFailure::Conflict { path, message });
                            }
                        }
                    }
                }
            }
        }
        if failures.is_empty() {
            failures.extend(set.unknown_subflows());
        }
        if failures.is_empty() {
            Ok(set)
        } else {
            Err(failures)
        }
    }

    /// `flow` steps whose flow (when written as a constant) is not in the
    /// set, or does not have a `flow` trigger.
    fn unknown_subflows(&self) -> Vec<LoadFailure> {
        let mut out = Vec::new();
        for (id, flow) in &self.flows {
            for step in flow.steps.iter().filter(|s| s.kind == "flow") {
                let target = match &step.options {
                    TemplateValue::Const(v) => v.get("flow").and_then(Value::as_str),
                    TemplateValue::Object(fields) => {
                        fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
                            ("flow", TemplateValue::Const(Value::String(s))) => Some(s.as_str()),
                            _ => None,
                        })
                    }
                    _ => None,
                };
                let Some(target) = target else { continue };
                let problem = match self.flows.get(target) {
                    None => format!("there is no flow `{target}` in the folder"),
                    Some(t) if t.trigger.kind != "flow" => format!(
                        "flow `{target}` has a `{}` trigger; a flow step starts only flows whose trigger is `flow`",
                        t.trigger.kind
                    ),
                    Some(_) => continue,
                };
                out.push(LoadFailure::Conflict {
                    path: self.files.get(id).cloned().unwrap_or_default(),
                    message: format!("flow `{id}`, step `{}`: {problem}", step.key),
                });
            }
        }
        out
    }

    /// Add one flow, refusing a second flow with its id or its webhook.
    fn add(&mut self, flow: Arc<Flow>, path: &Path, registry: &Registry) -> Result<(), String> {
        if let Some(other) = self.files.get(&flow.id) {
            return Err(format!(
                "flow id `{}` is already the id of {}",
                flow.id,
                other.display()
            ));
        }
        let options = &flow.trigger.options;
        match flow.trigger.kind.as_str() {
            "webhook" => {
                let options: WebhookTrigger = serde_json::from_value(options.clone())
                    .map_err(|e| format!("webhook trigger: {e}"))?;
                if let Some(s) = options.response.status
                    && !(100..=599).contains(&s)
                {
                    return Err(format!(
                        "webhook trigger, response.status: {s} is not an HTTP status"
                    ));
                }
                for (k, v) in &options.response.headers {
                    if axum::http::HeaderName::try_from(k.as_str()).is_err()
                        || axum::http::HeaderValue::from_str(v).is_err()
                    {
                        return Err(format!(
                            "webhook trigger, response.headers: `{k}: {v}` is not a valid HTTP header"
                        ));
                    }
                }
                let body = match &options.response.body {
                    None => None,
                    Some(code) => Some(
                        Program::compile(code, &["trigger", "last"])
                            .map_err(|e| format!("webhook trigger, response.body: {e}"))?,
                    ),
                };
                if let Some(auth) = &options.auth {
                    crate::hook_auth::read_secrets(auth)?;
                }
                let key = (options.method, options.path.clone());
                if let Some(other) = self.hooks.get(&key) {
                    return Err(format!(
                        "webhook {} /hooks/{} is already the trigger of flow `{}`",
                        key.0.as_str(),
                        key.1,
                        other.flow.id
                    ));
                }
                self.hooks.insert(
                    key,
                    Arc::new(Hook {
                        flow: flow.clone(),
                        options,
                        body,
                    }),
                );
            }
            "schedule" => {
                let options: ScheduleTrigger = serde_json::from_value(options.clone())
                    .map_err(|e| format!("schedule trigger: {e}"))?;
                let schedule = options.schedule()?;
                // A disabled flow is checked like any other, and not fired.
                if flow.enabled {
                    self.schedules.push(Scheduled {
                        flow: flow.clone(),
                        schedule,
                        missed: options.missed,
                    });
                }
            }
            kind => {
                if let Some(source) = registry.poll_source(kind)
                    && flow.enabled
                {
                    self.polls.push(Polled {
                        flow: flow.clone(),
                        source: source.clone(),
                    });
                }
            }
        }
        self.files.insert(flow.id.clone(), path.to_owned());
        self.flows.insert(flow.id.clone(), flow);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_steps_must_name_a_flow_of_the_folder_with_a_flow_trigger() {
        let dir = std::env::temp_dir().join(format!("sluice-flowset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = sluice_sql::registry();
        let write = |f: &str, t: &str| std::fs::write(dir.join(f), t).unwrap();
        write(
            "a.yaml",
            "id: a\nsteps:\n  - {key: go, type: flow, options: {flow: b, input: \"{{ . }}\"}}\n  - {key: dyn, type: flow, options: {flow: \"{{ .name }}\"}}\n",
        );
        write(
            "b.yaml",
            "id: b\ntrigger: {type: flow}\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        );
        assert!(FlowSet::load(&dir, &registry).is_ok());
        write(
            "b.yaml",
            "id: b\nsteps:\n  - {key: s, type: log, options: {message: x}}\n",
        );
        let err = FlowSet::load(&dir, &registry).unwrap_err();
        assert!(
            err[0].to_json()["message"]
                .as_str()
                .unwrap()
                .contains("flow `a`, step `go`: flow `b` has a `manual` trigger"),
            "{:?}",
            err[0].to_json()
        );
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        let err = FlowSet::load(&dir, &registry).unwrap_err();
        assert!(
            err[0].to_json()["message"]
                .as_str()
                .unwrap()
                .contains("there is no flow `b`")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
