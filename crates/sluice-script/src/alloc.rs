//! The memory of a script's runtime: Rust's allocator, with a limit that
//! remembers being reached. QuickJS's own limit cannot say so: out of
//! memory, it cannot even make the error it would throw.

use rquickjs::allocator::{Allocator, RustAllocator};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations up to `limit` bytes in all; `hit` is set when one is refused.
pub(crate) struct Limited {
    used: usize,
    limit: usize,
    hit: Arc<AtomicBool>,
}

impl Limited {
    pub(crate) fn new(limit: usize, hit: Arc<AtomicBool>) -> Self {
        Self {
            used: 0,
            limit,
            hit,
        }
    }

    fn room(&self, more: usize) -> bool {
        let ok = self.used.checked_add(more).is_some_and(|n| n <= self.limit);
        if !ok {
            self.hit.store(true, Ordering::Relaxed);
        }
        ok
    }
}

// SAFETY: every call goes to `RustAllocator`, which keeps the trait's
// promises; this only counts the sizes it reports and refuses (a null
// pointer, which QuickJS expects on failure) past the limit.
unsafe impl Allocator for Limited {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.room(size) {
            return std::ptr::null_mut();
        }
        let p = RustAllocator.alloc(size);
        if !p.is_null() {
            // SAFETY: `p` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(p) };
        }
        p
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            return std::ptr::null_mut();
        };
        if !self.room(total) {
            return std::ptr::null_mut();
        }
        let p = RustAllocator.calloc(count, size);
        if !p.is_null() {
            // SAFETY: `p` was just allocated by `RustAllocator`.
            self.used += unsafe { RustAllocator::usable_size(p) };
        }
        p
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: the caller hands back a pointer this allocator made.
        unsafe {
            self.used = self.used.saturating_sub(RustAllocator::usable_size(ptr));
            RustAllocator.dealloc(ptr);
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        // SAFETY: the caller hands over a pointer this allocator made.
        let old = unsafe { RustAllocator::usable_size(ptr) };
        if new_size > old && !self.room(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above; on success the old pointer is no longer used.
        let p = unsafe { RustAllocator.realloc(ptr, new_size) };
        if !p.is_null() {
            // SAFETY: `p` was just allocated by `RustAllocator`.
            let now = unsafe { RustAllocator::usable_size(p) };
            self.used = self.used.saturating_sub(old) + now;
        }
        p
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: the caller hands over a pointer this allocator made.
        unsafe { RustAllocator::usable_size(ptr) }
    }
}
