//! The staging tier: local page copies that are not mapped in the global range.
//!
//! Prefetched pages wait here until their first use, and resident pages are parked here
//! by access sampling so that their next use traps. Either way the fault that follows is
//! served by a local `UFFDIO_COPY` instead of a network round trip, and it tells the
//! runtime the page was used (prefetch accuracy, recency for eviction). Staged pages
//! count against the cache budget like mapped ones.
//!
//! A slot belongs to whoever holds the lock of the page it stages, so slot contents are
//! only touched under that page's lock; the free list is the only shared structure.

use super::region_runs::{RegionRuns, RUN_PAGES};
use crate::coherence::state::MAX_STAGING_SLOTS;
use crate::space::PAGE_BYTES;
use std::io;
use std::sync::Mutex;

/// A fixed pool of page-sized buffers in one lazily backed mapping: slots never used cost
/// no memory.
pub struct Staging {
    base: *mut u8,
    slots: usize,
    free: Mutex<Vec<u32>>,
    /// Runs for whole regions (`huge_regions`), slots numbered after the pool's.
    regions: Option<RegionRuns>,
}

// SAFETY: the mapping is owned by this value and freed only on drop.
unsafe impl Send for Staging {}
// SAFETY: a slot's bytes are accessed only by the holder of the lock of the page staged
// in it (or, before staging, by the thread that popped it from the free list), so no two
// threads touch one slot at once; the free list is behind a mutex.
unsafe impl Sync for Staging {}

impl Staging {
    /// A pool of `slots` pages, all free, and `region_runs` runs for whole regions.
    pub fn new(slots: usize, region_runs: usize) -> io::Result<Staging> {
        let most = MAX_STAGING_SLOTS as usize - region_runs * RUN_PAGES;
        let slots = slots.clamp(1, most);
        let p = super::map_anonymous(slots * PAGE_BYTES)?; // unmapped in `drop`
        let regions = match region_runs {
            0 => None,
            n => Some(RegionRuns::new(n, slots as u32)?),
        };
        Ok(Staging {
            base: p.cast(),
            slots,
            free: Mutex::new((0..slots as u32).rev().collect()),
            regions,
        })
    }

    /// Number of slots of the pool (not counting the region runs').
    pub fn capacity(&self) -> usize {
        self.slots
    }

    /// The runs for whole regions, when `huge_regions` is on.
    pub fn regions(&self) -> Option<&RegionRuns> {
        self.regions.as_ref()
    }

    /// The region runs, if `slot` is one of theirs.
    fn run_slot(&self, slot: u32) -> Option<&RegionRuns> {
        self.regions.as_ref().filter(|r| r.contains(slot))
    }

    /// Takes a free slot.
    pub fn alloc(&self) -> Option<u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Gives the memory of the pool back to the host when every slot is free (a
    /// suspended process's cache is empty); slots read as zeros afterwards, which no one
    /// relies on: a slot is always filled before use. Returns whether it did.
    pub fn release_memory(&self) -> bool {
        if self.regions.as_ref().is_some_and(|r| !r.release_memory()) {
            return false;
        }
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() != self.slots {
            return false;
        }
        // SAFETY: our own private anonymous mapping, no slot of which is in use (we hold
        // the free list, and every slot is on it); MADV_DONTNEED only drops its pages.
        // The raw call: in a program with the preload, `madvise` is the runtime's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_madvise,
                self.base,
                self.slots * PAGE_BYTES,
                libc::MADV_DONTNEED,
            )
        };
        rc == 0
    }

    /// Returns a slot to the pool.
    pub fn release(&self, slot: u32) {
        if let Some(runs) = self.run_slot(slot) {
            return runs.release(slot);
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(!free.contains(&slot), "staging slot {slot} released twice");
        free.push(slot);
    }

    /// The slot's bytes, for reading into or copying from.
    ///
    /// # Safety
    /// The caller owns `slot` (popped it from the pool, or holds the lock of the page
    /// staged in it), and no other reference to the slot is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_mut(&self, slot: u32) -> &mut [u8] {
        if let Some(runs) = self.run_slot(slot) {
            // SAFETY: the caller owns the slot.
            return unsafe { runs.slot_mut(slot) };
        }
        assert!(
            (slot as usize) < self.slots,
            "staging slot {slot} out of range"
        );
        // SAFETY: the slot lies inside our mapping; exclusive ownership of it is the
        // caller's obligation.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(slot as usize * PAGE_BYTES), PAGE_BYTES)
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        let rc = unsafe { libc::munmap(self.base.cast(), self.slots * PAGE_BYTES) };
        debug_assert_eq!(rc, 0, "munmap of the staging pool failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_once_and_recycled() {
        let s = Staging::new(2, 0).unwrap();
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        assert_ne!(a, b);
        assert!(s.alloc().is_none());
        // SAFETY: we own slot `a`.
        unsafe { s.slot_mut(a) }.fill(7);
        s.release(a);
        assert_eq!(s.alloc(), Some(a));
    }
}
