//! The program's heap over this process's slot of the global range (4 TiB by default).
//!
//! mimalloc v3 serves objects below [`LARGE_MIN_BYTES`] from the lower part of the slot.
//! It caps an arena at 16 GiB (less in practice: its page metadata, about 2 MiB per GiB,
//! must fit in 32 MiB, so 16 GiB is refused) and a process at 160 arenas, so the lower
//! part is handed to it one [`ARENA_BYTES`] arena at a time, as the heap grows: start-up
//! costs one arena whatever the slot's size. Larger blocks (and
//! large anonymous `mmap`s) come from the upper part, page-aligned extents of our own
//! (`large.rs`): any size up to the slot, grown in place by `realloc` when the space
//! after them is free, and discarded when freed, so their pages are zero when reused and
//! their node memory goes back to the pool.
//!
//! Address space is not memory: a large block is refused (`ENOMEM`) only when it exceeds
//! what the pool could still hold plus the local cache, a guess in the spirit of the
//! kernel's default overcommit. Pages claim node memory when first written home; a pool
//! that fills up then ends the job with a clear message (`space::pool`).

use crate::large::{Block, Extents};
use libc::c_void;
use libmimalloc_sys as mi;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks of at least this size are large: served from our extents, not by mimalloc.
pub const LARGE_MIN_BYTES: usize = 1 << 30;
/// Size of each mimalloc arena: the largest power of two mimalloc v3 accepts.
pub const ARENA_BYTES: usize = 8 << 30;
/// Most arenas (mimalloc v3 allows 160 per process).
const ARENAS_MAX: usize = 128;
/// mimalloc's smallest arena.
const ARENA_MIN_BYTES: usize = 32 << 20;
const PAGE: usize = dsm_runtime::space::PAGE_BYTES;

/// The lower part (mimalloc's): next arena's address and the end.
static SMALL_NEXT: Mutex<usize> = Mutex::new(0);
static SMALL_END: AtomicUsize = AtomicUsize::new(0);
/// Bumped each time an arena is added, so threads that failed together add one.
static ARENA_GENERATION: AtomicUsize = AtomicUsize::new(0);
/// The upper part (ours).
static LARGE: Mutex<Option<Extents>> = Mutex::new(None);
static LARGE_START: AtomicUsize = AtomicUsize::new(usize::MAX);
static LARGE_END: AtomicUsize = AtomicUsize::new(0);

/// Why the heap could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("mimalloc refused the global range {base:#x}+{len:#x} as an arena")]
pub struct ArenaRefused {
    base: usize,
    len: usize,
}

/// Splits `[base, base + len)` between mimalloc and the large extents and gives mimalloc
/// its first arena.
pub fn init(base: usize, len: usize) -> Result<(), ArenaRefused> {
    // A slot of one arena or less (nodes started with a small --span) is all mimalloc's:
    // a large block would not fit in it anyway.
    let small = if len <= ARENA_BYTES {
        len / ARENA_MIN_BYTES * ARENA_MIN_BYTES
    } else {
        (len / 2).min(ARENAS_MAX * ARENA_BYTES) / ARENA_MIN_BYTES * ARENA_MIN_BYTES
    };
    *SMALL_NEXT.lock().unwrap_or_else(|e| e.into_inner()) = base;
    SMALL_END.store(base + small, Ordering::Release);
    *LARGE.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Extents::new(base + small, len - small));
    LARGE_START.store(base + small, Ordering::Release);
    LARGE_END.store(base + len, Ordering::Release);
    match add_arena(ARENA_GENERATION.load(Ordering::Acquire)) {
        Some(true) => Ok(()),
        _ => Err(ArenaRefused { base, len: small }),
    }
}

/// Gives mimalloc the next arena unless another thread did since `seen` was read.
/// `Some(true)`: added (or another thread added one); `Some(false)` never happens;
/// `None`: the lower part is used up, or mimalloc refused.
fn add_arena(seen: usize) -> Option<bool> {
    let mut next = SMALL_NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if ARENA_GENERATION.load(Ordering::Acquire) != seen {
        return Some(true);
    }
    let len = ARENA_BYTES.min(SMALL_END.load(Ordering::Acquire).saturating_sub(*next));
    if len < ARENA_MIN_BYTES {
        return None;
    }
    let mut arena: mi::mi_arena_id_t = std::ptr::null_mut();
    // SAFETY: [next, next+len) is part of our reservation, readable and writable (faults
    // are served by the runtime), zero until written, never unmapped while the process
    // lives, and given to mimalloc once. Not pinned, so that mimalloc purges freed spans
    // (an `madvise` that becomes a discard); its "commit" is an `mprotect` we accept.
    let ok = unsafe {
        mi::mi_manage_os_memory_ex(
            *next as *mut c_void,
            len,
            true,  // committed
            false, // not pinned (large)
            true,  // zero
            -1,
            false,
            &mut arena,
        )
    };
    if !ok {
        return None;
    }
    *next += len;
    ARENA_GENERATION.fetch_add(1, Ordering::AcqRel);
    Some(true)
}

/// Runs a mimalloc allocation, adding arenas while it fails and the lower part has room.
fn small(alloc: impl Fn() -> *mut c_void) -> *mut c_void {
    loop {
        let seen = ARENA_GENERATION.load(Ordering::Acquire);
        let p = alloc();
        if !p.is_null() || add_arena(seen).is_none() {
            return p;
        }
    }
}

/// Whether `p` lies in the large part.
pub fn is_large(p: usize) -> bool {
    p >= LARGE_START.load(Ordering::Acquire) && p < LARGE_END.load(Ordering::Acquire)
}

fn extents() -> std::sync::MutexGuard<'static, Option<Extents>> {
    LARGE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a large block of `len` bytes may be handed out: at most what the pool could
/// still hold plus the local cache.
fn admissible(len: usize) -> bool {
    match crate::process::pool_free_bytes() {
        Some((pool, cache)) => (len as u64) <= pool.saturating_add(cache),
        None => true,
    }
}

/// A zeroed large block of at least `size` bytes at a multiple of `align`, or NULL.
pub fn large_alloc(size: usize, align: usize) -> *mut c_void {
    let Some(len) = size.max(1).checked_next_multiple_of(PAGE) else {
        return std::ptr::null_mut();
    };
    if !admissible(len) {
        return std::ptr::null_mut();
    }
    let block = extents()
        .as_mut()
        .and_then(|e| e.alloc(len, align.max(PAGE)));
    block.map_or(std::ptr::null_mut(), |b| b.start as *mut c_void)
}

/// Gives up the pages of `b`: they leave the cache and the pool, and read as zeros.
fn give_up(b: Block) {
    if !crate::process::discard(b.start, b.len) {
        // No runtime serves the range (a forked child, where it is ordinary memory).
        // SAFETY: the block is ours and nobody may use it any more.
        unsafe { libc::syscall(libc::SYS_madvise, b.start, b.len, libc::MADV_DONTNEED) };
    }
}

/// Frees the large block at `p` (ignored if no block starts there).
fn large_free(p: usize) {
    let freed = extents().as_mut().and_then(|e| e.block(p));
    if let Some(b) = freed {
        // Discard before the range can be handed out again, so it is zero by then.
        give_up(b);
        extents().as_mut().map(|e| e.free(p));
    }
}

/// Resizes the large block at `p` to `size` bytes: in place when it shrinks or the space
/// after it is free, else by moving it. NULL (the block untouched) when that fails.
fn large_realloc(p: usize, size: usize) -> *mut c_void {
    let Some(new_len) = size.max(1).checked_next_multiple_of(PAGE) else {
        return std::ptr::null_mut();
    };
    let Some(b) = extents().as_ref().and_then(|e| e.block(p)) else {
        return std::ptr::null_mut();
    };
    if new_len <= b.len {
        if let Some(tail) = extents().as_mut().and_then(|e| e.shrink(p, new_len)) {
            give_up(tail);
        }
        return p as *mut c_void;
    }
    if admissible(new_len - b.len)
        && extents()
            .as_mut()
            .is_some_and(|e| e.grow_in_place(p, new_len))
    {
        return p as *mut c_void;
    }
    let q = large_alloc(new_len, PAGE);
    if !q.is_null() {
        // SAFETY: distinct blocks; `p` holds `b.len` bytes and `q` more.
        unsafe { std::ptr::copy_nonoverlapping(p as *const u8, q.cast::<u8>(), b.len) };
        large_free(p);
    }
    q
}

/// `malloc`.
pub fn malloc(size: usize) -> *mut c_void {
    if size >= LARGE_MIN_BYTES {
        return large_alloc(size, PAGE);
    }
    // SAFETY: mimalloc's malloc has no preconditions.
    small(|| unsafe { mi::mi_malloc(size) })
}

/// `calloc`: large blocks are zero already.
pub fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) if total >= LARGE_MIN_BYTES => large_alloc(total, PAGE),
        // SAFETY: mimalloc's calloc checks the product for overflow.
        _ => small(|| unsafe { mi::mi_calloc(n, size) }),
    }
}

/// An allocation aligned to `align` (a power of two).
pub fn aligned(size: usize, align: usize) -> *mut c_void {
    if size >= LARGE_MIN_BYTES {
        return large_alloc(size, align);
    }
    // SAFETY: `align` is a power of two (checked by every caller).
    small(|| unsafe { mi::mi_malloc_aligned(size, align) })
}

/// A zeroed, page-aligned block for an anonymous `mmap` of `len` bytes.
pub fn zeroed_pages(len: usize) -> *mut c_void {
    if len >= LARGE_MIN_BYTES {
        return large_alloc(len, PAGE);
    }
    // SAFETY: PAGE is a power of two; mimalloc zeroes only what is not known to be zero.
    small(|| unsafe { mi::mi_zalloc_aligned(len, PAGE) })
}

/// `free` of a block of this heap.
pub fn free(p: *mut c_void) {
    if is_large(p as usize) {
        large_free(p as usize);
    } else {
        // SAFETY: a mimalloc block (the caller checked it lies in our slot).
        unsafe { mi::mi_free(p) }
    }
}

/// `realloc` of a block of this heap (not NULL).
pub fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if is_large(p as usize) {
        return large_realloc(p as usize, size);
    }
    if size < LARGE_MIN_BYTES {
        // SAFETY: a mimalloc block; on failure mimalloc leaves it as it was.
        return small(|| unsafe { mi::mi_realloc(p, size) });
    }
    let q = large_alloc(size, PAGE);
    if !q.is_null() {
        // SAFETY: a mimalloc block of that usable size, and a distinct larger block.
        unsafe {
            let old = mi::mi_usable_size(p);
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old);
            mi::mi_free(p);
        }
    }
    q
}

/// `malloc_usable_size` of a block of this heap.
pub fn usable_size(p: *mut c_void) -> usize {
    if is_large(p as usize) {
        let b = extents().as_ref().and_then(|e| e.block(p as usize));
        return b.map_or(0, |b| b.len);
    }
    // SAFETY: a mimalloc block.
    unsafe { mi::mi_usable_size(p) }
}
