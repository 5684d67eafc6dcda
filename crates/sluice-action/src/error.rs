//! Why a step failed and who must act on it, and the boxed future that the
//! traits of this crate return.

use std::future::Future;
use std::pin::Pin;

/// Who has to act on an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The flow failed the step on purpose (`throw`, a false `condition`), or
    /// is wrong in a way only its author can fix.
    Flow,
    /// The data did not fit what the flow expects (an expression failed on
    /// it, a mapping found nothing, a merge met another kind, an option was
    /// invalid after templating): a person can fix the data, or the flow, and
    /// resume. With no failure path the run stops as an incident.
    Data,
    /// An outside system refused or failed.
    External,
    /// Sluice's own store.
    Store,
    /// A bug in Sluice.
    Bug,
}

impl Blame {
    /// Its word in run records and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Data => "data",
            Self::External => "external",
            Self::Store => "store",
            Self::Bug => "bug",
        }
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Who must act.
    pub blame: Blame,
    /// What happened.
    pub message: String,
    /// How long the outside system asked to be left alone before the
    /// next attempt (HTTP's `Retry-After`), in milliseconds: a `retry`
    /// waits at least this long.
    pub retry_after_ms: Option<u64>,
    /// The run stops at an incident whatever the step's failure path: a
    /// person must look (something the step did could not be undone).
    pub incident: bool,
}

impl ActionError {
    /// An error blamed on `blame`.
    pub fn new(blame: Blame, message: impl Into<String>) -> Self {
        Self {
            blame,
            message: message.into(),
            retry_after_ms: None,
            incident: false,
        }
    }

    /// An error the flow's author must fix.
    pub fn flow(message: impl Into<String>) -> Self {
        Self::new(Blame::Flow, message)
    }

    /// An error in the data: a person can fix it and resume.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(Blame::Data, message)
    }

    /// An error of an outside system.
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(Blame::External, message)
    }

    /// The same error, stopping the run at an incident.
    pub fn incident(mut self) -> Self {
        self.incident = true;
        self
    }

    /// The same error, the outside system having asked for `ms`
    /// milliseconds before the next attempt.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

impl From<sluice_expr::Error> for ActionError {
    fn from(e: sluice_expr::Error) -> Self {
        Self::data(e.to_string())
    }
}

/// A boxed future, as the registry hands them out.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
