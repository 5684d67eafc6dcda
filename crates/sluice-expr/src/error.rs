//! Why an expression failed while running.

use std::time::Duration;

/// An expression that failed while running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The program raised an error.
    #[error("jq expression `{code}` failed: {message}")]
    Runtime {
        /// The program text.
        code: String,
        /// The error it raised.
        message: String,
    },
    /// The program ran out of time.
    #[error("jq expression `{code}` ran longer than its limit of {timeout:?}")]
    Timeout {
        /// The program text.
        code: String,
        /// The limit.
        timeout: Duration,
    },
    /// The program recursed too deeply.
    #[error("jq expression `{code}` recursed too deeply")]
    TooDeep {
        /// The program text.
        code: String,
    },
    /// The program produced too many outputs.
    #[error("jq expression `{code}` produced more than {max} outputs")]
    TooManyOutputs {
        /// The program text.
        code: String,
        /// The limit.
        max: usize,
    },
    /// A template's program produced more than one output.
    #[error(
        "jq expression `{code}` produced more than one value where one is expected (collect them with [ ... ])"
    )]
    MultipleOutputs {
        /// The program text.
        code: String,
    },
}
