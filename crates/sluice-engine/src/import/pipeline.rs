//! An import's chunks in a pipeline, when they overlap (on PostgreSQL; see
//! the batch's `overlaps`), each on a connection of its own:
//!
//! * chunk k's first write goes on, following chunk k-1's writes position
//!   by position (the batch keeps the two apart: see its `pipe` module);
//! * chunk k-1, once its own first write has ended, runs its records to
//!   their end and commits (its *finish*);
//! * chunk k+1's records run up to their envelopes.
//!
//! Chunks commit in file order, and a first write that was handed back (it
//! failed while a chunk before had not committed) is made again once the
//! chunk before has committed.

use super::{Chunk, ImportError, Out, Running, Runs};
use sluice_store::Store;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

impl<S: Store> Runs<S> {
    /// Write, finish and commit every chunk from `current` on, in the
    /// pipeline above.
    pub(super) async fn pipelined(
        self: &Arc<Self>,
        mut current: Option<Running>,
        mut chunks: tokio::sync::mpsc::Receiver<Result<Chunk, ImportError>>,
        mut out: Out<'_>,
    ) -> Result<(), ImportError> {
        // The first write of the chunk before, going on.
        let mut writing = None;
        while let Some(running) = current.take() {
            let mut next = Beside::new(self.first_write(running));
            let read = self.start_next(&mut chunks);
            current = {
                let mut g: Vec<&mut (dyn Going + Send)> = vec![&mut next];
                if let Some(w) = writing.as_mut() {
                    g.push(w);
                }
                beside(&mut g, read).await
            }?;
            if let Some(before) = writing.take() {
                beside(&mut [&mut next], self.finish_first(before, &mut out)).await?;
            }
            writing = Some(next);
        }
        match writing {
            Some(last) => self.finish_first(last, &mut out).await,
            None => Ok(()),
        }
    }

    /// Finish a chunk after its first write (the chunk before it has
    /// committed): if that write was handed back, it is made again first.
    async fn finish_first(
        &self,
        first: Beside<impl Future<Output = (Running, Result<bool, ImportError>)>>,
        out: &mut Out<'_>,
    ) -> Result<(), ImportError> {
        let (running, written) = first.end().await;
        if !written? {
            self.flush(&running.chunk).await?;
        }
        self.finish(running, out).await
    }

    /// A chunk's first write (see `write`), the chunk handed back with it.
    async fn first_write(&self, mut r: Running) -> (Running, Result<bool, ImportError>) {
        let written = self.write(&mut r, true).await;
        (r, written)
    }
}

/// A future polled whenever other work is awaited through [`beside`],
/// until it is awaited itself ([`Beside::end`]).
struct Beside<F: Future> {
    state: State<F>,
}

enum State<F: Future> {
    Going(Pin<Box<F>>),
    Done(F::Output),
}

/// What [`beside`] polls.
trait Going {
    /// Poll the future if it has not ended.
    fn go(&mut self, cx: &mut Context<'_>);
}

impl<F: Future> Beside<F> {
    fn new(f: F) -> Self {
        Self {
            state: State::Going(Box::pin(f)),
        }
    }

    /// This future's output.
    async fn end(self) -> F::Output {
        match self.state {
            State::Going(f) => f.await,
            State::Done(out) => out,
        }
    }
}

impl<F: Future> Going for Beside<F> {
    fn go(&mut self, cx: &mut Context<'_>) {
        if let State::Going(f) = &mut self.state
            && let Poll::Ready(out) = f.as_mut().poll(cx)
        {
            self.state = State::Done(out);
        }
    }
}

/// Run `work` to its end, the `going` futures going on meanwhile.
async fn beside<T>(going: &mut [&mut (dyn Going + Send)], work: impl Future<Output = T>) -> T {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(t) = work.as_mut().poll(cx) {
            return Poll::Ready(t);
        }
        for g in going.iter_mut() {
            g.go(cx);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::{Beside, beside};

    #[tokio::test]
    async fn the_futures_go_on_while_other_work_is_awaited() {
        let (to_work, from_first) = tokio::sync::oneshot::channel::<u32>();
        let (to_second, from_work) = tokio::sync::oneshot::channel::<u32>();
        // The work needs the first future to go on, the second needs the
        // work: `beside` ends only if both are polled meanwhile.
        let mut first = Beside::new(async move {
            let _ = to_work.send(1);
            10
        });
        let mut second = Beside::new(async move { from_work.await.unwrap_or(0) + 1 });
        let got = beside(&mut [&mut first, &mut second], async move {
            let n = from_first.await.unwrap_or(0);
            let _ = to_second.send(41);
            n
        })
        .await;
        assert_eq!(got, 1);
        assert_eq!(first.end().await, 10);
        assert_eq!(second.end().await, 42);
    }
}
