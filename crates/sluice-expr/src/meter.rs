//! Live heap bytes per thread, for the memory budget of an evaluation.
//!
//! [`Metered`] wraps the process's global allocator and keeps, per thread,
//! the bytes allocated minus the bytes freed. An evaluation reads [`live`]
//! when it starts and at each checkpoint: the difference is what it holds
//! now. Memory freed on another thread than the one that allocated it skews
//! both threads' counts, which only matters for values handed between
//! threads during an evaluation (none are).
//!
//! The `sluice` binary installs it. Where it is not installed the count stays
//! at zero and no evaluation ever exceeds its memory budget.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn add(n: i64) {
    // A constant-initialised cell without a destructor: always accessible,
    // even while the thread ends.
    let _ = LIVE.try_with(|c| c.set(c.get().wrapping_add(n)));
}

/// The bytes this thread has allocated and not yet freed, since it started.
pub fn live() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

/// A global allocator that counts each thread's live bytes.
pub struct Metered<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the
// count is kept on the side and never affects what is returned.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Metered<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { self.0.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_thread_holds() {
        let before = live();
        let v = vec![0u8; 10 << 20];
        let held = live() - before;
        assert!(held >= 10 << 20, "{held}");
        drop(v);
        assert!(live() - before < 1 << 20);
    }
}
