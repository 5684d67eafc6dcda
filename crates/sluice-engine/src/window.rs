//! Running many item runs with a bound on how many are under way at once:
//! the `flow` step's iteration modes and fan-out's `concurrency`.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::future::Future;

/// How the items of a list are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// At most this many at once: a new item starts as soon as one ends.
    Window(usize),
    /// This many at once, and the next batch only when the whole batch has
    /// ended.
    Batch(usize),
}

/// Run `run(i)` for each `i` in `0..n` at `pace`; once an output makes
/// `stop` true, no further item starts (those under way end). The outputs,
/// by index, of the items that ran.
pub(crate) async fn run_paced<T, F>(
    n: usize,
    pace: Pace,
    mut run: impl FnMut(usize) -> F,
    stop: impl Fn(&T) -> bool,
) -> Vec<(usize, T)>
where
    F: Future<Output = T>,
{
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    let mut going = FuturesUnordered::new();
    let mut stopped = false;
    loop {
        let fill = match pace {
            Pace::Window(w) => w.max(1).saturating_sub(going.len()),
            Pace::Batch(b) if going.is_empty() => b.max(1),
            Pace::Batch(_) => 0,
        };
        for _ in 0..fill {
            if stopped || next >= n {
                break;
            }
            let i = next;
            let fut = run(i);
            going.push(async move { (i, fut.await) });
            next += 1;
        }
        match going.next().await {
            Some((i, v)) => {
                stopped |= stop(&v);
                out.push((i, v));
            }
            None => break,
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Run 10 items that each take `1 + i % 3` ticks; the most under way at
    /// once, and the indexes that ran.
    async fn trace(pace: Pace, fail_at: Option<usize>) -> (usize, Vec<usize>) {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let out = run_paced(
            10,
            pace,
            |i| {
                let (now, most) = (now.clone(), most.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    for _ in 0..=(i % 3) {
                        tokio::task::yield_now().await;
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                    Some(i) != fail_at
                }
            },
            |ok| !ok,
        )
        .await;
        let ran = out.iter().map(|(i, _)| *i).collect();
        (most.load(Ordering::SeqCst), ran)
    }

    #[tokio::test]
    async fn the_pace_bounds_the_runs_under_way() {
        let all: Vec<usize> = (0..10).collect();
        assert_eq!(trace(Pace::Window(1), None).await, (1, all.clone()));
        assert_eq!(trace(Pace::Window(3), None).await, (3, all.clone()));
        assert_eq!(trace(Pace::Window(50), None).await, (10, all.clone()));
        assert_eq!(trace(Pace::Batch(4), None).await, (4, all));
    }

    #[tokio::test]
    async fn a_failure_starts_no_further_item() {
        // One at a time: nothing after the failed item.
        assert_eq!(trace(Pace::Window(1), Some(3)).await.1, [0, 1, 2, 3]);
        // Batches: the failed item's batch ends, no later batch starts.
        assert_eq!(
            trace(Pace::Batch(4), Some(5)).await.1,
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        // A window: those under way end; none starts after the failure.
        let ran = trace(Pace::Window(3), Some(2)).await.1;
        assert!(ran.starts_with(&[0, 1, 2]) && ran.len() < 10, "{ran:?}");
    }
}
