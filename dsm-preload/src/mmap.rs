//! Large anonymous `mmap`s: programs (Python's arenas, many allocators, big scratch
//! buffers) ask the kernel for memory directly, and that memory should be pooled too.
//!
//! A private, anonymous, read-write mapping of at least `DSM_MMAP_MIN_BYTES`, with no
//! address hint and no special flags, becomes a zeroed, page-aligned block of the global
//! heap; its `munmap` frees the block. Blocks are remembered in a fixed table (no
//! allocation, no lock); when it is full, mappings go to the kernel as usual. Everything
//! else, and every call from the runtime's threads or from inside the allocator, goes
//! straight to the kernel with a raw system call (our own `mmap` symbol shadows libc's,
//! also for this library).
//!
//! Within the global range, `mprotect` is applied (and the runtime told which pages become
//! unreadable), and `madvise` is accepted and ignored, except that `MADV_DONTNEED` and
//! `MADV_FREE` hand the pages to the runtime, which drops them from the cache without a
//! write-back (they read as zeros afterwards, as the kernel would have it):
//! the runtime must be the only one to unmap pages, since it must know which are
//! resident.

use crate::route::{global_heap_serves, overlaps, owns, state, READY};
use dsm_runtime::runtime::current_thread_is_internal;
use libc::{c_int, c_long, c_void, off_t, size_t};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

const PAGE: usize = dsm_runtime::space::PAGE_BYTES;
const SLOTS: usize = 16384;
const EMPTY: usize = 0;
const GONE: usize = 1;

static BASES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(EMPTY) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static MIN_BYTES: AtomicUsize = AtomicUsize::new(usize::MAX);
static MAX_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while this thread is inside our mmap: if mimalloc itself maps memory, it goes
    /// to the kernel.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Enables redirection of anonymous mappings of `min..=max` bytes.
pub fn configure(min: usize, max: usize) {
    MIN_BYTES.store(if min == 0 { usize::MAX } else { min }, Ordering::Relaxed);
    MAX_BYTES.store(max, Ordering::Relaxed);
}

fn slot_of(base: usize) -> usize {
    (base / PAGE).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 14)
}

/// The table slots to try for `base`, in probing order.
fn probe(base: usize) -> impl Iterator<Item = usize> {
    let start = slot_of(base);
    (0..SLOTS).map(move |i| (start + i) % SLOTS)
}

fn remember(base: usize, len: usize) -> bool {
    for s in probe(base) {
        let cur = BASES[s].load(Ordering::Acquire);
        if (cur == EMPTY || cur == GONE)
            && BASES[s]
                .compare_exchange(cur, base, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            LENS[s].store(len, Ordering::Release);
            return true;
        }
    }
    false
}

/// The table slot holding `base`, if it is remembered (probing stops at an empty slot).
fn find(base: usize) -> Option<usize> {
    for s in probe(base) {
        match BASES[s].load(Ordering::Acquire) {
            EMPTY => return None,
            b if b == base => return Some(s),
            _ => {}
        }
    }
    None
}

/// Forgets the block at `base`; returns its length if it was one of ours.
fn forget(base: usize) -> Option<usize> {
    let s = find(base)?;
    let len = LENS[s].load(Ordering::Acquire);
    BASES[s]
        .compare_exchange(base, GONE, Ordering::AcqRel, Ordering::Relaxed)
        .ok()
        .map(|_| len)
}

fn length_of(base: usize) -> Option<usize> {
    find(base).map(|s| LENS[s].load(Ordering::Acquire))
}

/// The block that contains `addr`, as `(base, len)`. A scan of the whole table: only a
/// partial `munmap` asks, which is rare.
fn containing_block(addr: usize) -> Option<(usize, usize)> {
    (0..SLOTS).find_map(|s| {
        let base = BASES[s].load(Ordering::Acquire);
        let len = LENS[s].load(Ordering::Acquire);
        (base != EMPTY && base != GONE && addr >= base && addr - base < len).then_some((base, len))
    })
}

/// Whether a mapping is a plain private anonymous read-write one of a poolable size.
fn plain_anonymous(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int) -> bool {
    let special = libc::MAP_FIXED
        | libc::MAP_FIXED_NOREPLACE
        | libc::MAP_HUGETLB
        | libc::MAP_STACK
        | libc::MAP_GROWSDOWN
        | libc::MAP_NORESERVE;
    addr.is_null()
        && fd == -1
        && flags & libc::MAP_ANONYMOUS != 0
        // The mapping type is a 4-bit field (MAP_SHARED_VALIDATE is 3), not a flag.
        && flags & 0xf == libc::MAP_PRIVATE
        && flags & special == 0
        && prot == libc::PROT_READ | libc::PROT_WRITE
        && len >= MIN_BYTES.load(Ordering::Relaxed)
        && len <= MAX_BYTES.load(Ordering::Relaxed)
}

fn redirectable(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int) -> bool {
    plain_anonymous(addr, len, prot, flags, fd)
        && state() == READY
        && global_heap_serves()
        && !INSIDE.with(Cell::get)
}

fn sys_mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: the raw system call with the caller's arguments, as libc's mmap would make it.
    unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void }
}

fn sys_munmap(addr: *mut c_void, len: size_t) -> c_int {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) as c_int }
}

/// Why a mapping could not come from the heap.
enum NotPooled {
    /// The pool cannot hold it: the caller gets ENOMEM, as the kernel would say.
    NoMemory,
    /// The block table is full: the kernel maps it, outside the pool.
    TableFull,
}

/// A zeroed heap block standing in for an anonymous mapping.
fn heap_mapping(len: usize) -> Result<*mut c_void, NotPooled> {
    let len = len
        .checked_next_multiple_of(PAGE)
        .ok_or(NotPooled::NoMemory)?;
    INSIDE.with(|c| c.set(true));
    let p = crate::heap::zeroed_pages(len);
    INSIDE.with(|c| c.set(false));
    if p.is_null() {
        return Err(NotPooled::NoMemory);
    }
    if !remember(p as usize, len) {
        crate::heap::free(p);
        return Err(NotPooled::TableFull);
    }
    Ok(p)
}

fn map_failed(errno: c_int) -> *mut c_void {
    // SAFETY: errno slot of this thread.
    unsafe { *libc::__errno_location() = errno };
    libc::MAP_FAILED
}

/// # Safety
/// C `mmap`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if redirectable(addr, len, prot, flags, fd) {
        match heap_mapping(len) {
            Ok(p) => return p,
            Err(NotPooled::NoMemory) => return map_failed(libc::ENOMEM),
            Err(NotPooled::TableFull) => {}
        }
    }
    sys_mmap(addr, len, prot, flags, fd, off)
}

/// # Safety
/// C `mmap64` (the same call on 64-bit Linux).
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// # Safety
/// C `munmap`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    if owns(addr as usize) && !current_thread_is_internal() {
        if let Some(block_len) = length_of(addr as usize) {
            if len >= block_len && forget(addr as usize).is_some() {
                crate::heap::free(addr);
                return 0;
            }
        }
        // A partial unmap of one of our blocks keeps the block (it is freed with its
        // head), but the program will not use those pages again: they leave the cache
        // without a write-back. Unmaps of heap memory we never handed out are ignored
        // rather than punching holes in the global range (or in other allocations).
        if let Some((base, block_len)) = containing_block(addr as usize) {
            let end = (addr as usize).saturating_add(len).min(base + block_len);
            if (addr as usize).is_multiple_of(PAGE) {
                crate::process::discard(addr as usize, end - addr as usize);
            }
        }
        return 0;
    }
    sys_munmap(addr, len)
}

/// # Safety
/// C `mremap`. Declared with its optional fifth argument: on x86-64 a variadic caller
/// passes it in the same register, and it is only read with `MREMAP_FIXED`.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    if !owns(old as usize) || current_thread_is_internal() {
        // SAFETY: the raw system call with the caller's arguments.
        return unsafe {
            libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void
        };
    }
    let Some(block_len) = length_of(old as usize) else {
        // SAFETY: errno slot of this thread.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return libc::MAP_FAILED;
    };
    if new_len <= block_len {
        return old;
    }
    if flags & libc::MREMAP_MAYMOVE == 0 || flags & libc::MREMAP_FIXED != 0 {
        // SAFETY: errno slot of this thread.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return libc::MAP_FAILED;
    }
    let Ok(new) = heap_mapping(new_len) else {
        return map_failed(libc::ENOMEM);
    };
    // SAFETY: both blocks are ours and distinct; `old` holds `block_len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(old.cast::<u8>(), new.cast::<u8>(), block_len) };
    // SAFETY: the old block, which nobody may use after a moving mremap.
    unsafe { munmap(old, block_len) };
    new
}

/// # Safety
/// C `mprotect`. Honoured inside the global range too: the kernel enforces it (a JIT's
/// read-execute code runs, a write to it or any access to a guard page is a `SIGSEGV`),
/// and the runtime is told which pages become unreadable, so that it copies them out
/// another way when it evicts them (`cache/protect.rs`).
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    let tracked = overlaps(addr as usize, len) && !current_thread_is_internal();
    let readable = prot & libc::PROT_READ != 0;
    // Unreadable from before the kernel makes it so, readable only once it is.
    if tracked && !readable {
        crate::process::protect(addr as usize, len, false);
    }
    // SAFETY: the raw system call with the caller's arguments.
    let rc = unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot as c_long) as c_int };
    if tracked && readable && rc == 0 {
        crate::process::protect(addr as usize, len, true);
    }
    rc
}

/// # Safety
/// C `madvise`.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    // Calls from the runtime's own threads (none in the runtime itself, which unmaps with
    // the raw system call) go to the kernel.
    if overlaps(addr as usize, len) && !current_thread_is_internal() {
        let gives_up = advice == libc::MADV_DONTNEED || advice == libc::MADV_FREE;
        if gives_up && len > 0 && owns(addr as usize) && owns(addr as usize + len - 1) {
            if !(addr as usize).is_multiple_of(PAGE) {
                // SAFETY: errno slot of this thread.
                unsafe { *libc::__errno_location() = libc::EINVAL };
                return -1;
            }
            // The pages leave the cache without a write-back and read as zeros next
            // time (MADV_FREE may read either way; zeros are one of them). This is how
            // the allocator returns freed spans.
            if !crate::process::discard(addr as usize, len) {
                // No runtime serves the range (a forked child): zero it by hand.
                // SAFETY: the caller gives up the contents of this range of its own
                // memory, which then reads as zeros.
                unsafe { std::ptr::write_bytes(addr.cast::<u8>(), 0, len) };
            }
        }
        return 0;
    }
    // SAFETY: the raw system call with the caller's arguments.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice as c_long) as c_int }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_table_remembers_and_forgets_exact_bases() {
        let bases: Vec<usize> = (1..200).map(|i| 0x7000_0000_0000 + i * 3 * PAGE).collect();
        for (i, b) in bases.iter().enumerate() {
            assert!(remember(*b, (i + 1) * PAGE));
        }
        for (i, b) in bases.iter().enumerate() {
            assert_eq!(length_of(*b), Some((i + 1) * PAGE));
            assert_eq!(
                length_of(b + PAGE),
                None,
                "interior addresses are not blocks"
            );
        }
        for (i, b) in bases.iter().enumerate().step_by(2) {
            assert_eq!(forget(*b), Some((i + 1) * PAGE));
            assert_eq!(forget(*b), None);
        }
        // Forgotten entries leave tombstones that lookups skip and inserts reuse.
        for (i, b) in bases.iter().enumerate().skip(1).step_by(2) {
            assert_eq!(length_of(*b), Some((i + 1) * PAGE));
        }
        assert!(remember(bases[0], PAGE));
        assert_eq!(forget(bases[0]), Some(PAGE));
    }

    #[test]
    fn only_plain_private_anonymous_read_write_maps_are_pooled() {
        configure(1 << 20, 1 << 30);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let null = std::ptr::null_mut();
        // Not started: nothing is pooled, whatever the mapping.
        assert!(!redirectable(null, 4 << 20, rw, anon, -1));
        assert!(plain_anonymous(null, 4 << 20, rw, anon, -1));
        assert!(!plain_anonymous(null, 4 << 10, rw, anon, -1), "too small");
        assert!(!plain_anonymous(null, 2 << 30, rw, anon, -1), "too large");
        assert!(
            !plain_anonymous(0x1000 as *mut c_void, 4 << 20, rw, anon, -1),
            "hinted"
        );
        // Shared, fixed, file-backed, read-only or stack mappings never are.
        for (prot, flags, fd) in [
            (rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
            (rw, libc::MAP_SHARED_VALIDATE | libc::MAP_ANONYMOUS, -1),
            (rw, anon | libc::MAP_FIXED, -1),
            (rw, anon | libc::MAP_STACK, -1),
            (libc::PROT_READ, anon, -1),
            (rw, libc::MAP_PRIVATE, 3),
        ] {
            assert!(!plain_anonymous(null, 4 << 20, prot, flags, fd));
        }
    }
}
