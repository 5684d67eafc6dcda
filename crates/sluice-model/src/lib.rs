//! Flow files: parsing with source positions, validation into a [`Flow`], and
//! diagnostics that name the file, the line, the column and what was expected.
//!
//! [`load`] reads a YAML or JSON flow file and checks everything that can be
//! checked before a run: the keys of the flow and of every step, step types and
//! their options (through a [`Catalog`] supplied by the connector registry),
//! the success and failure paths, steps that can never run, cycles, jq
//! expressions and JSONPath mappings (pointing inside them), and templates that
//! read a step that is not upstream. Every problem is reported in one pass.
//!
//! This crate does no IO: callers hand it the file's text.

pub mod diag;
pub mod flow;
mod load;
pub mod node;

pub use diag::{Diagnostic, Diagnostics, Report, Source};
pub use flow::{
    ActionDataFilter, BUILTIN_VARS, Catalog, ConnectionSpec, EVENT_TRIGGERS, EventDataFilter, Flow,
    Mapping, Next, OptionIssue, Retry, RetryOn, SQL_CONNECTION, StateDataFilter, Step, StepSpec,
    Transaction, Trigger, UnmappedResults, is_identifier, version_of,
};
pub use load::{calls_an_api, closest, jq_path_to_mapping, load};

/// Whether a file name is a flow test's (`NAME.test.yaml`, `.test.yml` or
/// `.test.json`, see `sluice test`): it sits beside flows and is not one.
pub fn is_test_file(name: &str) -> bool {
    [".test.yaml", ".test.yml", ".test.json"]
        .iter()
        .any(|end| name.ends_with(end))
}
