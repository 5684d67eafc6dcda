//! A large stack for every evaluation, made once per thread.
//!
//! jaq builds and frees values recursively: a value nested a million levels
//! deep (a `reduce` that wraps its state in `[.]`, say) takes that many nested
//! calls to free, wherever it is freed inside the evaluation. A thread's own
//! stack (2 MiB for tokio's threads) cannot hold them, and running out of stack
//! aborts the process. So every evaluation runs on a stack of [`SIZE`] bytes of
//! address space, mapped once per thread and reused: only the pages a deep
//! evaluation touches take memory, and [`release`] hands them back after one.
//! The memory budget bounds how deep a value can get, and so how much of this
//! stack freeing it can need; recursion in the program itself is bounded far
//! below that (see `jq::Budget`).
//!
//! Where no such stack can be mapped, an evaluation runs on a segment that
//! `stacker` grows when less than [`MIN_STACK`] remains.

use std::cell::Cell;

/// Where no evaluation stack can be mapped, an evaluation starts with at
/// least this much stack (it moves to a fresh segment of [`GROWN_STACK`]
/// bytes when less remains).
pub const MIN_STACK: usize = 1 << 20;
/// The size of such a segment.
const GROWN_STACK: usize = 16 << 20;

/// Address space of one thread's evaluation stack.
pub const SIZE: usize = 1 << 30;
/// Pages below the stack that fault on access: an overflow is a crash, never
/// a write into other memory.
const GUARD: usize = 64 << 10;
/// What [`release`] leaves mapped and touched: the top of the stack, which
/// every evaluation uses.
const KEEP: usize = 1 << 20;

thread_local! {
    /// The mapped region's low address (0: not mapped yet; 1: mapping failed).
    static BASE: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread is running on its evaluation stack now.
    static ON: Cell<bool> = const { Cell::new(false) };
    static REGION: Region = const { Region };
}

/// Unmaps the thread's region when the thread ends.
struct Region;

impl Drop for Region {
    fn drop(&mut self) {
        let base = BASE.with(Cell::get);
        if base > 1 {
            // SAFETY: `base` is the start of a mapping of `SIZE` bytes made by
            // `map` on this thread, and nothing runs on it any more: the
            // thread is ending.
            unsafe { libc::munmap(base as *mut libc::c_void, SIZE) };
            BASE.with(|b| b.set(0));
        }
    }
}

/// Map the region (once per thread); `None` when that is not possible.
fn base() -> Option<usize> {
    match BASE.with(Cell::get) {
        0 => {}
        1 => return None,
        b => return Some(b),
    }
    // SAFETY: an anonymous private mapping with no address hint; the result
    // is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        BASE.with(|b| b.set(1));
        return None;
    }
    // SAFETY: the first `GUARD` bytes of the mapping just made.
    if unsafe { libc::mprotect(p, GUARD, libc::PROT_NONE) } != 0 {
        // SAFETY: the mapping just made, not yet used.
        unsafe { libc::munmap(p, SIZE) };
        BASE.with(|b| b.set(1));
        return None;
    }
    let base = p as usize;
    BASE.with(|b| b.set(base));
    // Register the destructor that unmaps it.
    REGION.with(|_| {});
    Some(base)
}

/// Run `f` on this thread's evaluation stack (directly when already on it).
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    if ON.with(Cell::get) {
        return f();
    }
    let Some(base) = base() else {
        return stacker::maybe_grow(MIN_STACK, GROWN_STACK, f);
    };
    ON.with(|on| on.set(true));
    let mut out = None;
    let mut f = Some(f);
    let body = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        }))
    };
    // SAFETY: the region is mapped, page-aligned and `SIZE - GUARD` bytes
    // above its guard are usable; the callback never unwinds (a panic is
    // caught inside and resumed below, on the thread's own stack).
    let caught = unsafe { psm::on_stack((base + GUARD) as *mut u8, SIZE - GUARD, body) };
    ON.with(|on| on.set(false));
    if let Err(panic) = caught {
        std::panic::resume_unwind(panic);
    }
    match out {
        Some(v) => v,
        None => unreachable!("the callback ran to its end"),
    }
}

/// Bytes of stack left to the caller: on the evaluation stack, down to its
/// guard; elsewhere, as `stacker` reckons it.
pub fn remaining() -> usize {
    let base = BASE.with(Cell::get);
    if ON.with(Cell::get) && base > 1 {
        (psm::stack_pointer() as usize).saturating_sub(base + GUARD)
    } else {
        stacker::remaining_stack().unwrap_or(MIN_STACK)
    }
}

/// Give back the pages of the evaluation stack below its top [`KEEP`] bytes
/// (after an evaluation that may have gone deep). Must not be called while
/// running on that stack.
pub fn release() {
    let base = BASE.with(Cell::get);
    if base > 1 && !ON.with(Cell::get) {
        // SAFETY: the part of this thread's mapping between its guard and
        // its top `KEEP` bytes; nothing is running on it (checked above), so
        // its contents are dead.
        unsafe {
            libc::madvise(
                (base + GUARD) as *mut libc::c_void,
                SIZE - GUARD - KEEP,
                libc::MADV_DONTNEED,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_its_own_stack_and_nests() {
        let outer = remaining();
        let (inside, nested) = run(|| (remaining(), run(remaining)));
        assert!(inside > SIZE / 2, "{inside} left on the evaluation stack");
        assert!(nested <= inside && nested > SIZE / 2);
        assert!(outer < SIZE / 2, "the test thread's own stack is smaller");
        release();
    }

    #[test]
    fn a_panic_inside_comes_out() {
        let r = std::panic::catch_unwind(|| run(|| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(run(|| 7), 7, "the stack is usable again");
    }

    #[test]
    fn a_deep_recursion_fits() {
        fn down(n: u32) -> u32 {
            let pad = std::hint::black_box([0u8; 256]);
            if n == 0 {
                pad[0] as u32
            } else {
                down(n - 1) + 1
            }
        }
        assert_eq!(run(|| down(500_000)), 500_000);
        release();
    }
}
