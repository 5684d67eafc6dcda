//! Flow tests: test files kept beside the flows (`order.test.yaml`), run
//! offline by `sluice test`, and written from recorded runs by `sluice runs
//! record`.
//!
//! A test file names a flow and holds cases ([`file`]): each gives the
//! run's input (or `$trigger`, or the CloudEvent), the answers of the
//! steps that reach outside (SQL, HTTP, mail, other flows, waits), and what
//! to expect. A case runs the real flow on the real engine with an
//! in-memory store; every step that is not pure is answered from the case
//! instead of being run ([`answer`]), so nothing outside is called, and a
//! call no answer covers fails the case naming the step and its options.
//! The pure steps (`transform`, `condition`, `log`, `throw`, `script`)
//! and `split` run as written. Results are compared as JSON, a difference
//! shown at its path ([`diff`]); reports are lines for people and JUnit
//! XML for CI ([`report`]). [`record`] turns a recorded run into a case.

pub mod answer;
pub mod diff;
pub mod file;
pub mod record;
pub mod report;
mod run;

pub use file::{Case, TestFile};
pub use report::{CaseReport, FileProblem, FileReport};
pub use run::Runner;

/// Whether a file name is a test file's (`NAME.test.yaml`, `.test.yml`,
/// `.test.json`): such files sit beside flows and are not flows.
pub fn is_test_file(name: &str) -> bool {
    sluice_model::is_test_file(name)
}
