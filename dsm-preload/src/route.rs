//! Who serves an allocation: the global heap (mimalloc over this process's slot of the
//! global range) or libc.
//!
//! libc serves everything until the runtime is up (the dynamic loader, libc's own start-up,
//! and the runtime's start-up, which must not fault on the range it is setting up), every
//! allocation made on the runtime's own threads (a fault handler that faulted on the global
//! heap would wait for itself), and everything if the process is not part of a job. A
//! pointer is freed by whoever owns its address, whichever thread frees it.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Not started: libc serves.
pub const UNINIT: u8 = 0;
/// The runtime is starting on the main thread: libc serves.
pub const STARTING: u8 = 1;
/// The global heap serves the program's threads.
pub const READY: u8 = 2;
/// Not in a job, or the runtime could not start: libc serves, forever.
pub const OFF: u8 = 3;
/// A child forked without exec: it has no runtime threads, but the range (now ordinary
/// memory, see `process::fork`) still holds its heap, so the global heap keeps serving.
pub const FORKED: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static RANGE_START: AtomicUsize = AtomicUsize::new(0);
static RANGE_END: AtomicUsize = AtomicUsize::new(0);

pub fn state() -> u8 {
    STATE.load(Ordering::Acquire)
}

pub fn set_state(s: u8) {
    STATE.store(s, Ordering::Release);
}

/// Publishes this process's slot; must precede `set_state(READY)`.
pub fn set_range(start: usize, end: usize) {
    RANGE_START.store(start, Ordering::Relaxed);
    RANGE_END.store(end, Ordering::Release);
}

/// Whether new allocations on this thread come from the global heap.
#[inline]
pub fn global_heap_serves() -> bool {
    let s = state();
    (s == READY || s == FORKED) && !dsm_runtime::runtime::current_thread_is_internal()
}

/// Whether `p` lies in this process's slot of the global range (and so belongs to mimalloc).
#[inline]
pub fn owns(p: usize) -> bool {
    let end = RANGE_END.load(Ordering::Acquire);
    p >= RANGE_START.load(Ordering::Relaxed) && p < end
}

/// Whether `[p, p+len)` overlaps this process's slot.
pub fn overlaps(p: usize, len: usize) -> bool {
    let end = RANGE_END.load(Ordering::Acquire);
    let start = RANGE_START.load(Ordering::Relaxed);
    end > start && p < end && p.saturating_add(len) > start
}
