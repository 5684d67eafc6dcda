//! Chunks written side by side: on PostgreSQL, when chunks overlap (see
//! `plan::overlaps`), the next chunk writes its first positions, on a
//! connection of its own, while the chunk before writes its last ones.
//!
//! The chunk before (the lead) must never wait for a row the next one (the
//! follower) wrote: the follower commits after it, so the lead would wait
//! forever. So:
//!
//! * the follower writes a position only once the lead has written, in its
//!   last group, every position that writes the same collection
//!   ([`Pipeline::gate`]); the lead never writes that collection again
//!   unless that group fails;
//! * when the lead's last group fails, the follower rolls back what it
//!   wrote beside it and hands its envelopes back before the lead writes
//!   again ([`Stage::stop`], [`Stage::alone`]); its statements run under a
//!   short lock timeout meanwhile, so that one waiting for a row of the
//!   lead cannot keep it from doing so;
//! * the follower answers none of its records before the lead writes no
//!   more ([`Stage::until_over`]);
//! * any failure of the follower while the lead is open hands its
//!   envelopes back, to be written again once the lead has committed (as
//!   every early failure is: a foreign key does not see the lead's rows
//!   before that).

use std::sync::Mutex;
use tokio::sync::Notify;

/// How long a follower's statement waits for a lock before it fails (and
/// its envelopes are handed back).
pub(super) const FOLLOWER_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '100ms'";

/// The transaction's own lock timeout again, once a follower's group is
/// written: sent before the chunk's next group, if it has one.
pub(super) const LOCK_TIMEOUT_BACK: &str = "SET LOCAL lock_timeout TO DEFAULT; ";

/// Where a chunk's writes are, as the chunk after it sees them.
#[derive(Default)]
pub(super) struct Stage {
    state: Mutex<StageState>,
    changed: Notify,
}

#[derive(Default)]
struct StageState {
    /// Its last group is being written and nothing in it has failed.
    running: bool,
    /// How many of that group's positions are written (in the order of
    /// [`Pipeline`]: the index of the last one written, plus one).
    done: usize,
    /// It writes no more.
    over: bool,
    /// The chunk after it has written beside that group.
    follower: bool,
}

/// The chunk before failed after the follower wrote beside it.
pub(super) struct Abort;

impl Stage {
    fn update(&self, f: impl FnOnce(&mut StageState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_waiters();
    }

    /// Wait until `ready` says yes (`Ok`) or no (`Err`).
    async fn until(
        &self,
        mut ready: impl FnMut(&mut StageState) -> Option<Result<(), Abort>>,
    ) -> Result<(), Abort> {
        loop {
            // Made before the state is read: a change after it wakes it.
            let changed = self.changed.notified();
            match self.state.lock() {
                Ok(mut s) => {
                    if let Some(r) = ready(&mut s) {
                        return r;
                    }
                }
                Err(_) => return Err(Abort),
            }
            changed.await;
        }
    }

    /// The chunk's last group begins.
    pub(super) fn begin(&self) {
        self.update(|s| {
            s.running = true;
            s.done = 0;
        });
    }

    /// Position `index` of the last group is written.
    pub(super) fn wrote(&self, index: usize) {
        self.update(|s| s.done = s.done.max(index + 1));
    }

    /// The chunk writes no more (or is gone).
    pub(super) fn over(&self) {
        self.update(|s| {
            s.over = true;
            s.running = false;
        });
    }

    /// Whether the chunk writes no more.
    pub(super) fn is_over(&self) -> bool {
        self.state.lock().map_or(true, |s| s.over)
    }

    /// The last group failed: the follower stops at its next step.
    pub(super) fn stop(&self) {
        self.update(|s| s.running = false);
    }

    /// Wait until no follower has rows beside the chunk's writes.
    pub(super) async fn alone(&self) {
        let _ = self
            .until(|s| (!s.follower || s.over).then_some(Ok(())))
            .await;
    }

    /// The follower rolled back what it wrote beside the chunk.
    pub(super) fn left(&self) {
        self.update(|s| s.follower = false);
    }

    /// As the follower: wait until a position whose collection the chunk
    /// writes for the last time at `gate` may be written (no gate: once it
    /// writes no more). `Err`: the chunk failed after the follower wrote.
    pub(super) async fn follow(&self, gate: Option<usize>) -> Result<(), Abort> {
        self.until(|s| {
            if s.over {
                Some(Ok(()))
            } else if s.running && gate.is_some_and(|g| s.done > g) {
                s.follower = true;
                Some(Ok(()))
            } else if s.follower && !s.running {
                Some(Err(Abort))
            } else {
                None
            }
        })
        .await
    }

    /// As the follower, before answering its records: wait until the
    /// chunk writes no more. `Err`: it failed after the follower wrote.
    pub(super) async fn until_over(&self) -> Result<(), Abort> {
        self.until(|s| {
            if s.over {
                Some(Ok(()))
            } else if !s.running {
                Some(Err(Abort))
            } else {
                None
            }
        })
        .await
    }
}

/// The positions an envelope writes, in the order a chunk writes them, and
/// for each the last position that writes the same collection.
pub(super) struct Pipeline {
    positions: Vec<Vec<usize>>,
    last: Vec<usize>,
}

impl Pipeline {
    pub(super) fn new(positions: Vec<(Vec<usize>, String)>) -> Self {
        let last = positions
            .iter()
            .enumerate()
            .map(|(i, (_, c))| {
                positions
                    .iter()
                    .rposition(|(_, other)| other == c)
                    .unwrap_or(i)
            })
            .collect();
        Self {
            positions: positions.into_iter().map(|(at, _)| at).collect(),
            last,
        }
    }

    /// The index of position `at` (`[0, 1]`: the second child of the first patch).
    pub(super) fn index(&self, at: &[usize]) -> Option<usize> {
        self.positions.iter().position(|p| p == at)
    }

    /// The index of the last position the chunk before must have written
    /// before the next one writes position `at`.
    pub(super) fn gate(&self, at: &[usize]) -> Option<usize> {
        self.index(at).and_then(|i| self.last.get(i).copied())
    }
}

/// How a group of envelopes is written beside other chunks.
#[derive(Clone, Copy, Default)]
pub(super) struct Pipe<'a> {
    /// On failure, hand the envelopes back rather than look into it.
    pub back: bool,
    /// The chunk's own stage, when this is its last group and the next
    /// chunk may write beside it.
    pub lead: Option<&'a Stage>,
    /// The stage of the chunk before, when this group writes beside it.
    pub follow: Option<&'a Stage>,
    pub plan: Option<&'a Pipeline>,
}

impl Pipe<'_> {
    /// Before writing position `at`: wait for the chunk before, if any.
    pub(super) async fn before(&self, at: &[usize]) -> Result<(), Abort> {
        match self.follow {
            Some(f) => f.follow(self.plan.and_then(|p| p.gate(at))).await,
            None => Ok(()),
        }
    }

    /// Position `at` is written.
    pub(super) fn after(&self, at: &[usize]) {
        if let (Some(l), Some(i)) = (self.lead, self.plan.and_then(|p| p.index(at))) {
            l.wrote(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_waits_for_the_last_one_writing_its_collection() {
        let p = Pipeline::new(vec![
            (vec![0], "a".into()),
            (vec![0, 0], "b".into()),
            (vec![1], "a".into()),
            (vec![2], "c".into()),
        ]);
        assert_eq!(p.gate(&[0]), Some(2));
        assert_eq!(p.gate(&[0, 0]), Some(1));
        assert_eq!(p.gate(&[2]), Some(3));
        assert_eq!(p.gate(&[5]), None);
    }

    #[tokio::test]
    async fn a_follower_goes_on_behind_the_lead_and_stops_when_it_fails() {
        let s = Stage::default();
        s.begin();
        s.wrote(0);
        assert!(s.follow(Some(0)).await.is_ok());
        // Position 1 of the lead is not written yet: the follower waits.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), s.follow(Some(1)));
        assert!(waiting.await.is_err());
        // The lead fails: the follower, which wrote beside it, gives up.
        s.stop();
        assert!(s.follow(Some(1)).await.is_err());
        assert!(s.until_over().await.is_err());
        s.left();
        s.alone().await;
        // Written again alone, then over: the follower writes freely.
        s.over();
        assert!(s.follow(Some(1)).await.is_ok());
        assert!(s.until_over().await.is_ok());
    }
}
