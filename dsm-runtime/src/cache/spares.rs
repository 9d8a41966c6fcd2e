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
        let base = super::map_anonymous(len)?; // unmapped in `drop`
                                               // Spare pages move a few 4 KiB pages at a time: each move would split a huge page.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::Run;
    use crate::fault::uffd::{Installed, UffdError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Moves pages with a copy (and zeroes what it moved from), stopping after `limit`
    /// pages per call, as the kernel stops at a page it cannot move.
    struct Mover {
        limit: AtomicUsize,
    }

    impl Effects for Mover {
        unsafe fn install(
            &self,
            _: usize,
            _: *const u8,
            _: usize,
            _: bool,
            _: bool,
        ) -> Result<Installed, UffdError> {
            unreachable!()
        }
        fn write_protect(&self, _: usize, _: usize, _: bool, _: bool) -> Result<(), UffdError> {
            unreachable!()
        }
        fn wake(&self, _: usize, _: usize) -> Result<(), UffdError> {
            unreachable!()
        }
        unsafe fn read_page(&self, _: usize, _: &mut [u8]) {
            unreachable!()
        }
        fn unmap(&self, _: &[Run]) {
            unreachable!()
        }
        fn is_mapped(&self, _: usize) -> bool {
            unreachable!()
        }
        unsafe fn move_pages(&self, dst: usize, src: usize, len: usize) -> usize {
            let len = len.min(self.limit.load(Ordering::Relaxed) * PAGE_BYTES);
            // SAFETY: the tests pass pages of their own mappings.
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len);
                std::ptr::write_bytes(src as *mut u8, 0, len);
            }
            len
        }
    }

    fn page_of(addr: usize, i: usize) -> u8 {
        // SAFETY: pages of the test's own mappings.
        unsafe { ((addr + i * PAGE_BYTES) as *const u8).read() }
    }

    /// Victims taken as far as the room and the mover go; pages given back in stack order
    /// with the caller's bytes; a move that stops short leaves the stack contiguous (the
    /// spare pages that did not move are dropped, not counted).
    #[test]
    fn the_stack_stays_exact_when_moves_stop_short() {
        let spares = Spares::new(8).unwrap();
        let range = Spares::new(16).unwrap(); // any private anonymous mapping will do
        let (base, _) = range.range();
        for i in 0..16 {
            // SAFETY: inside `range`.
            unsafe { ((base + i * PAGE_BYTES) as *mut u8).write(i as u8 + 1) };
        }
        let fx = Mover {
            limit: AtomicUsize::new(usize::MAX),
        };
        assert_eq!(spares.take(&fx, base, 6), (6, 6));
        assert_eq!(page_of(base, 0), 0, "moved out of the range");
        fx.limit.store(1, Ordering::Relaxed);
        assert_eq!(
            spares.take(&fx, base + 6 * PAGE_BYTES, 4),
            (2, 1),
            "room for 2"
        );
        assert_eq!(spares.held(), 7);
        fx.limit.store(usize::MAX, Ordering::Relaxed);
        let bytes = vec![0xAB; 3 * PAGE_BYTES];
        assert_eq!(spares.give(&fx, base, &bytes), (3, 3));
        assert!((0..3).all(|i| page_of(base, i) == 0xAB));
        assert_eq!(spares.held(), 4);
        fx.limit.store(2, Ordering::Relaxed);
        let bytes = vec![0xCD; 3 * PAGE_BYTES];
        assert_eq!(spares.give(&fx, base + 8 * PAGE_BYTES, &bytes), (3, 2));
        assert_eq!((page_of(base, 8), page_of(base, 9)), (0xCD, 0xCD));
        assert_eq!(
            page_of(base, 10),
            11,
            "the page after a short move is untouched"
        );
        assert_eq!(
            spares.held(),
            1,
            "the spare page that did not move is dropped"
        );
        assert_eq!(spares.give(&fx, base, &bytes), (0, 0), "too few held");
        spares.release_memory();
        assert_eq!(spares.held(), 0);
    }
}
