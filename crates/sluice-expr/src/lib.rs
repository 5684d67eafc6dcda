//! Sluice's expression language: pure functions over JSON values, no IO.
//!
//! * [`jq`]: jq programs through jaq, compiled once and run many times with the
//!   flow object bound as variables (`$trigger`, `$last`, `$<key>`), under a
//!   deadline, a memory budget and a stack guard so that no expression can
//!   hang or crash a run ([`meter`] counts the memory);
//! * [`template`]: the `{{ }}` templates of option values;
//! * [`path`]: JSONPath reading (RFC 9535) and the mapping subset with its writer;
//! * [`merge()`]: merging a result into the state data;
//! * [`data`]: JSON data as runs hold it, shared jq values read from and
//!   written as JSON text exactly;
//! * [`Val`]: that value, compact in memory (objects as their entries,
//!   keys shared), with jq's semantics for jaq.
//!
//! Nothing here reads the environment, files or the network, and no input
//! makes it panic.

mod builtins;
pub mod data;
mod error;
mod fast;
mod guard;
pub mod jq;
pub mod mapping;
pub mod merge;
pub mod meter;
pub mod path;
mod scope;
mod stack;
pub mod template;
mod val;
pub mod value;

pub use error::Error;
pub use jq::{CompileError, CompileIssue, Limits, Program};
pub use mapping::{Mapping, MappingError};
pub use merge::{MergeError, merge, merge_val};
pub use path::{MappingPath, PathError, Query};
pub use scope::{Input, MapScope, Scope};
pub use template::{PathSeg, Template, TemplateError, TemplateValue, map_strings};
pub use val::{Obj, Val};
pub use value::{as_from_jq, from_val, to_val};

/// Tests count memory as the `sluice` binary does.
#[cfg(test)]
#[global_allocator]
static ALLOC: meter::Metered<std::alloc::System> = meter::Metered(std::alloc::System);
