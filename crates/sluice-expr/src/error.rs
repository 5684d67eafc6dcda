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
    /// The program held more memory than its budget, or would have made a
    /// value larger than what is left of it.
    #[error(
        "jq expression `{code}` needed more than its memory budget of {} MiB{}",
        limit / (1 << 20),
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )]
    TooMuchMemory {
        /// The program text.
        code: String,
        /// The budget in bytes.
        limit: usize,
        /// What needed it, when known.
        detail: String,
    },
    /// The program made a value nested deeper than any value may be.
    #[error(
        "jq expression `{code}` made a value nested more than {max} levels deep (arrays and objects may nest {max} levels, as in a JSON body)"
    )]
    TooDeepValue {
        /// The program text.
        code: String,
        /// The deepest nesting allowed.
        max: usize,
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
