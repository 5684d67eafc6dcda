//! Retries: how long a step waits before its next attempt (its `retry`:
//! attempts, backoff, jitter, which failures), and times from now.

use sluice_action::{ActionError, Blame};
use sluice_model::{RetryOn, Step};
use sluice_store::now_micros;

/// How long to wait before attempting `step` again after its `attempt`-th
/// attempt failed with `error`, if its `retry` says to.
pub(crate) fn retry_delay(
    step: &Step,
    error: &ActionError,
    incident: bool,
    attempt: u32,
) -> Option<u64> {
    let retry = step.retry.as_ref()?;
    let kind = match error.blame {
        Blame::External => RetryOn::External,
        Blame::Data => RetryOn::Data,
        Blame::Flow => RetryOn::Flow,
        Blame::Store | Blame::Bug => return None,
    };
    if incident || attempt >= retry.attempts || !retry.on.contains(&kind) {
        return None;
    }
    // At least as long as the outside system asked (`Retry-After`), up to
    // a day.
    let asked = error.retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS);
    Some(retry.delay_after(attempt, random_unit()).max(asked))
}

/// The longest `Retry-After` a retry waits.
const MAX_RETRY_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// The time (µs since the epoch) `ms` milliseconds from now.
pub(crate) fn after_ms(ms: u64) -> i64 {
    let us = i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000);
    now_micros().saturating_add(us)
}

/// A number in [0, 1) that differs from call to call (for retry jitter).
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_micros());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
