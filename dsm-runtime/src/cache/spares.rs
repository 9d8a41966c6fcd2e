//! Spare pages: evicted pages recycled for the next prefetched pages.
//!
//! Without them every page a scan passes costs the kernel a page allocation, a zeroing
//! and a copy (`UFFDIO_COPY`, when the prefetcher maps it) and a free (`MADV_DONTNEED`,
//! when the reclaimer evicts it): 3-3.5 us a page in runs of 64 on the development VM,
//! more than reading its bytes from a node. With them, eviction moves a victim's page
//! (already written home if it was dirty) out of the global range into this runtime-owned
//! mapping with `UFFDIO_MOVE`, and the prefetcher writes the next page's bytes into it
//! and moves it into the range at that page: no allocation, no zeroing, no free, one
//! copy as before (1.5-1.9 us a page, `benches/kernel/uffd_move_runs.c`).
//!
//! The mapping is registered with the runtime's userfaultfd like the global range (the
//! kernel wants a move's destination registered, and the same page protection on both
//! sides), and is used as a stack: pages `[0, held)` hold a page each, the rest nothing.
//! Nothing ever touches a page above `held`, so the registration never reports a fault
//! here. Any page the kernel will not move (shared after a fork, pinned, swapped out in
//! between, a page already at the destination) leaves the caller to its usual path: the
//! victim is dropped with `MADV_DONTNEED`, the prefetched page copied with `UFFDIO_COPY`.
//!
//! Memory: at most `recycle_pages` pages beyond the cache's budget (pages waiting here
//! between an eviction and the next prefetch).

use crate::effects::Effects;
use crate::space::PAGE_BYTES;
use std::io;
use std::sync::Mutex;

/// The spare pages' mapping and how many of its pages hold a page.
pub struct Spares {
    base: usize,
    pages: usize,
    held: Mutex<usize>,
}

impl Spares {
    /// A mapping of `pages` pages, none held yet. Register it with the userfaultfd
    /// (write-protect mode, as the global range) before use.
    pub fn new(pages: usize) -> io::Result<Spares> {
        let len = pages * PAGE_BYTES;
        // SAFETY: a fresh private anonymous mapping, unmapped in `drop`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Huge pages would be split by every move (the kernel moves 4 KiB pages only).
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
        Ok(Spares {
            base: base as usize,
            pages,
            held: Mutex::new(0),
        })
    }

    /// The mapping: first byte and length.
    pub fn range(&self) -> (usize, usize) {
        (self.base, self.pages * PAGE_BYTES)
    }

    /// Pages held now.
    pub fn held(&self) -> usize {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees every spare page (a suspend gives the process's memory back).
    pub(crate) fn release_memory(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if *held > 0 {
            drop_pages(self.base, *held * PAGE_BYTES);
        }
        *held = 0;
    }

    /// Moves up to `n` pages of the global range from `addr` (locked by the caller,
    /// written home if dirty) here, as far as there is room; returns how many it tried
    /// and how many moved, from the first. The rest are the caller's to drop.
    pub(crate) fn take<E: Effects>(&self, fx: &E, addr: usize, n: usize) -> (usize, usize) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let room = n.min(self.pages - *held);
        if room == 0 {
            return (0, 0);
        }
        let to = self.base + *held * PAGE_BYTES;
        // SAFETY: the caller holds the victims' locks and is done with their bytes;
        // nothing is mapped above `held`.
        let moved = unsafe { fx.move_pages(to, addr, room * PAGE_BYTES) } / PAGE_BYTES;
        *held += moved;
        (room, moved)
    }

    /// Writes `bytes` (whole pages) into as many held pages and moves them into the
    /// global range at `dst` (pages locked by the caller, not mapped), writable and
    /// without waking anyone; returns how many it tried (0 when fewer than that are
    /// held) and how many were mapped, from the first (fewer than tried when the kernel
    /// stopped: the caller maps the rest its usual way).
    pub(crate) fn give<E: Effects>(&self, fx: &E, dst: usize, bytes: &[u8]) -> (usize, usize) {
        let n = bytes.len() / PAGE_BYTES;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 || *held < n {
            return (0, 0);
        }
        let from = self.base + (*held - n) * PAGE_BYTES;
        // SAFETY: pages below `held` are present in our mapping and nobody else uses
        // them (we hold the lock); `bytes` is n pages.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), from as *mut u8, n * PAGE_BYTES) };
        // SAFETY: these spare pages are ours; the caller holds the destination's locks.
        let moved = unsafe { fx.move_pages(dst, from, n * PAGE_BYTES) } / PAGE_BYTES;
        if moved < n {
            // The pages left behind would leave a hole in the stack: drop them.
            drop_pages(from + moved * PAGE_BYTES, (n - moved) * PAGE_BYTES);
        }
        *held -= n;
        (n, moved)
    }
}

/// `MADV_DONTNEED` as a raw system call (a `madvise` symbol call would reach the
/// preload's interposer).
fn drop_pages(addr: usize, len: usize) {
    // SAFETY: pages of the spare mapping, owned by the caller under the lock.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_DONTNEED) };
}

impl Drop for Spares {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.pages * PAGE_BYTES) };
    }
}
