//! The engine itself: its store, its registry of step types, its limits,
//! the flows its runs reach, and the runs it drives (with their cancel
//! flags). Its methods live with their concern: [`crate::runs`] (a run's
//! life), [`crate::drive`] (from step to step), [`crate::step`] (one step),
//! and the others.

use sluice_action::Registry;
use sluice_action::hooks::EventTrigger;
use sluice_expr::Limits;
use sluice_model::Flow;
use sluice_store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

/// The flows a run can reach: those `flow` steps start, by id, and those
/// whose `event` trigger hooks the changes SQL steps make (the server's
/// loaded flows).
pub trait FlowLookup: Send + Sync {
    /// The flow with this id, if there is one.
    fn flow(&self, id: &str) -> Option<Arc<Flow>>;
    /// Every flow (the engine picks those with an `event` trigger).
    fn all(&self) -> Vec<Arc<Flow>>;
}

/// The flows runs reach, as [`Engine::set_flows`] last set them.
#[derive(Clone, Default)]
pub(crate) struct Reach {
    pub(crate) lookup: Option<Arc<dyn FlowLookup>>,
    /// The flows with an `event` trigger, with its options.
    pub(crate) hooks: Arc<Vec<(EventTrigger, Arc<Flow>)>>,
}

/// Runs flows and records them in a store.
pub struct Engine<S: Store> {
    pub(crate) store: Arc<S>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) limits: Limits,
    /// Flow versions already kept in the store by this engine.
    pub(crate) saved_versions: Arc<Mutex<HashSet<String>>>,
    /// Runs this engine is driving, each with a flag that a cancel sets:
    /// they stop before their next step.
    pub(crate) driving: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    /// The flows `flow` steps start and data hooks run.
    pub(crate) flows: Arc<RwLock<Reach>>,
    /// Set when the process stops: runs sleeping here stop waiting (their
    /// waits stay in the store, for the next start).
    pub(crate) stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            registry: self.registry.clone(),
            limits: self.limits,
            saved_versions: self.saved_versions.clone(),
            driving: self.driving.clone(),
            flows: self.flows.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

/// A run an engine drives: removed from the engine's map when dropped
/// (unless the run is driven again meanwhile).
pub(crate) struct Driving {
    pub(crate) map: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    pub(crate) run_id: String,
    /// Set by a cancel.
    pub(crate) flag: Arc<AtomicBool>,
}

impl Drop for Driving {
    fn drop(&mut self) {
        if let Ok(mut d) = self.map.lock()
            && d.get(&self.run_id)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flag))
        {
            d.remove(&self.run_id);
        }
    }
}

impl<S: Store> Engine<S> {
    /// An engine over `store` with the step types of `registry`.
    pub fn new(store: Arc<S>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            limits: Limits::default(),
            saved_versions: Arc::default(),
            driving: Arc::default(),
            flows: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The flows that `flow` steps start and whose `event` triggers hook
    /// the changes of SQL steps (the server sets it at each load). A
    /// disabled flow's data hooks are not listened to.
    pub fn set_flows(&self, flows: Arc<dyn FlowLookup>) {
        let mut hooks: Vec<(EventTrigger, Arc<Flow>)> = flows
            .all()
            .into_iter()
            .filter(|f| f.trigger.kind == "event" && f.enabled)
            .filter_map(|f| {
                // Options the model checked when the flow loaded.
                serde_json::from_value::<EventTrigger>(f.trigger.options.clone())
                    .ok()
                    .map(|t| (t, f))
            })
            .collect();
        // Before-hooks run one after the other, in the order of their ids.
        hooks.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        if let Ok(mut f) = self.flows.write() {
            *f = Reach {
                lookup: Some(flows),
                hooks: Arc::new(hooks),
            };
        }
    }

    /// Told when the process stops ([`Engine::stop_waiting`]): what lasts
    /// as long as the process (a stream of events) ends then.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// The process is stopping: runs sleeping here stop waiting and return
    /// `waiting` (their waits stay in the store; a restart wakes them).
    pub fn stop_waiting(&self) {
        self.stopping.send_replace(true);
    }

    /// Use other expression limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}
