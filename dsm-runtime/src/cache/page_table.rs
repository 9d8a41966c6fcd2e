//! Per-page state for the global range, stored only for pages whose state differs from
//! "untouched" (resident, or holding data at home).
//!
//! A flat array indexed by page would cost a table page for every sparsely touched page
//! (4 KiB of metadata per 4 KiB of data in the worst case); sharded hash maps cost about
//! 20 bytes per tracked page whatever the range size or access pattern, so reserving
//! 4 TiB and touching 1 GiB of it anywhere costs a few MiB. Shards keep the locks
//! uncontended; each is sized at start for its share of the cache, so the fault path
//! only allocates when pages with data at home accumulate beyond that.

use crate::coherence::PageState;
use crate::space::PageNum;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// Fibonacci hashing of page numbers: neighbouring pages spread over buckets and shards.
#[derive(Default)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = HashMap<u64, PageState, BuildHasherDefault<PageHasher>>;

/// Pages per region: the range one page-table page maps (2 MiB on x86-64).
pub const REGION_PAGES: u64 = 512;
/// Set in a region's count while it is being unmapped whole.
const ZAPPING: u32 = 1 << 31;
/// Set in a region's count while its pages are mapped as one huge page (moved in whole,
/// see `fault::regions`), so that eviction takes it whole; cleared when the count drops
/// to zero.
const HUGE: u32 = 1 << 30;
/// The count proper.
const COUNT: u32 = HUGE - 1;

/// Per 2 MiB region of the range, how many of its pages are mapped or locked, in a lazily
/// backed array (4 bytes per 2 MiB: 8 MiB of address space for 4 TiB, a page of it per
/// 2 GiB in use). The kernel frees a page-table page only when its whole 2 MiB range is
/// unmapped at once, not as its pages are unmapped one by one; a region whose count drops
/// to zero holds nothing anybody could be installing, so it can be unmapped whole
/// ([`PageTable::try_zap`]), which keeps sparse access from piling up page tables.
#[derive(Debug)]
struct RegionCounts {
    base: *mut AtomicU32,
    len: usize,
}

// SAFETY: a private mapping used only through atomics.
unsafe impl Send for RegionCounts {}
// SAFETY: as above.
unsafe impl Sync for RegionCounts {}

impl RegionCounts {
    fn new(regions: usize) -> io::Result<RegionCounts> {
        let bytes = (regions.max(1) * 4).next_multiple_of(4096);
        // SAFETY: a fresh private anonymous mapping (the raw system call: a preloaded
        // `mmap` must not serve the runtime's own memory); the result is checked.
        let p = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                std::ptr::null_mut::<libc::c_void>(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        } as *mut libc::c_void;
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RegionCounts {
            base: p.cast(),
            len: regions,
        })
    }

    fn count(&self, page: PageNum) -> &AtomicU32 {
        let i = (page.0 / REGION_PAGES) as usize;
        assert!(i < self.len, "page {} outside the region counts", page.0);
        // SAFETY: `i` is in bounds of the mapping, which lives as long as `self`; zeroed
        // memory is a valid AtomicU32.
        unsafe { &*self.base.add(i) }
    }

    /// Counts one more page of `page`'s region as mapped or locked, unless the region is
    /// being unmapped whole.
    fn enter(&self, page: PageNum) -> bool {
        self.count(page)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & ZAPPING == 0).then_some(v + 1)
            })
            .is_ok()
    }

    fn leave(&self, page: PageNum) {
        let before = self
            .count(page)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let n = v.wrapping_sub(1);
                Some(if n & COUNT == 0 { n & !HUGE } else { n })
            })
            .unwrap_or_else(|v| v);
        debug_assert!(
            before & COUNT > 0,
            "region count of page {} underflows",
            page.0
        );
    }
}

impl Drop for RegionCounts {
    fn drop(&mut self) {
        let bytes = (self.len.max(1) * 4).next_multiple_of(4096);
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::syscall(libc::SYS_munmap, self.base, bytes) };
    }
}

/// Per-page state for `pages` pages.
#[derive(Debug)]
pub struct PageTable {
    shards: Box<[Mutex<Shard>]>,
    regions: RegionCounts,
    pages: u64,
}

impl PageTable {
    /// A table of untouched pages, with room for `expected` tracked pages before growing.
    pub fn new(pages: u64, expected: usize) -> io::Result<PageTable> {
        // Room for up to 256 Ki pages up front; beyond that the shards grow as pages are
        // touched, so a huge configured cache costs nothing at start-up.
        let per_shard = expected.min(1 << 18).div_ceil(SHARDS).max(16);
        Ok(PageTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard::with_capacity_and_hasher(
                        per_shard,
                        Default::default(),
                    ))
                })
                .collect(),
            regions: RegionCounts::new(pages.div_ceil(REGION_PAGES) as usize)?,
            pages,
        })
    }

    fn shard(&self, page: PageNum) -> MutexGuard<'_, Shard> {
        assert!(page.0 < self.pages, "page {} outside the table", page.0);
        let i = (page.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current state (may change right after unless the caller holds the lock).
    pub fn get(&self, page: PageNum) -> PageState {
        self.shard(page)
            .get(&page.0)
            .copied()
            .unwrap_or(PageState::UNTOUCHED)
    }

    /// Takes the page's lock if it is free (and its 2 MiB region is not being unmapped
    /// whole); returns the state it had.
    pub fn try_lock(&self, page: PageNum) -> Option<PageState> {
        let mut shard = self.shard(page);
        let entry = shard.entry(page.0).or_insert(PageState::UNTOUCHED);
        if entry.busy() {
            return None;
        }
        let s = *entry;
        // A page not mapped now counts in its region from here, since whoever locks it may
        // map it; a mapped one counts already.
        if !s.resident() && !self.regions.enter(page) {
            if s == PageState::UNTOUCHED {
                shard.remove(&page.0);
            }
            return None;
        }
        *shard.get_mut(&page.0).expect("just inserted") = s.with_busy(true);
        Some(s)
    }

    /// Stores `next` (which must not be busy) and so releases the lock.
    pub fn unlock(&self, page: PageNum, next: PageState) {
        debug_assert!(!next.busy());
        let mut shard = self.shard(page);
        let prev = if next == PageState::UNTOUCHED {
            shard.remove(&page.0)
        } else {
            shard.insert(page.0, next)
        };
        assert!(
            prev.is_some_and(PageState::busy),
            "page {} unlocked without its lock",
            page.0
        );
        if !next.resident() {
            self.regions.leave(page);
        }
    }

    /// If no page of `page`'s 2 MiB region is mapped or locked, marks the region as being
    /// unmapped whole (pages in it cannot be locked meanwhile) and returns its first page
    /// and length in pages; the caller unmaps it, then calls [`Self::end_zap`].
    pub fn try_zap(&self, page: PageNum) -> Option<(PageNum, u64)> {
        let first = page.0 / REGION_PAGES * REGION_PAGES;
        if first + REGION_PAGES > self.pages {
            return None; // a partial region at the end: the kernel would keep its table
        }
        let count = self.regions.count(page);
        count
            .compare_exchange(0, ZAPPING, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| (PageNum(first), REGION_PAGES))
    }

    /// Notes that `page`'s region is mapped as one huge page (all its pages locked or
    /// mapped by the caller).
    pub fn mark_huge(&self, page: PageNum) {
        self.regions.count(page).fetch_or(HUGE, Ordering::AcqRel);
    }

    /// Notes that `page`'s region is no longer mapped whole (a page of it left alone).
    pub fn clear_huge(&self, page: PageNum) {
        self.regions.count(page).fetch_and(!HUGE, Ordering::AcqRel);
    }

    /// Whether `page`'s region was moved in as one huge page and has lost no page since.
    pub fn is_huge(&self, page: PageNum) -> bool {
        self.regions.count(page).load(Ordering::Acquire) & HUGE != 0
    }

    /// How many pages of `page`'s region are mapped or locked (a moment ago).
    pub fn in_use_in_region(&self, page: PageNum) -> u64 {
        u64::from(self.regions.count(page).load(Ordering::Acquire) & COUNT)
    }

    /// Ends an unmapping begun by [`Self::try_zap`].
    pub fn end_zap(&self, page: PageNum) {
        let prev = self.regions.count(page).swap(0, Ordering::AcqRel);
        debug_assert_eq!(prev, ZAPPING, "end_zap without try_zap");
    }

    /// Clears the recency bit if set and the page is free; returns whether it was set.
    pub fn test_and_clear_referenced(&self, page: PageNum) -> bool {
        let mut shard = self.shard(page);
        let Some(s) = shard.get_mut(&page.0) else {
            return false;
        };
        let was = s.referenced();
        if was && !s.busy() {
            *s = s.with_referenced(false);
        }
        was
    }

    /// Appends to `out` every page whose state says it has data at home, one shard at a
    /// time (what a restarted process's new runtime adopts, `Runtime::adopt_pages_at_home`).
    pub fn pages_at_home(&self, out: &mut Vec<PageNum>) {
        self.pages_where(out, |s| s.home_valid());
    }

    /// Appends to `out` every page whose state says it has data at home, or whose lock is
    /// held (a write-back may be storing it for the first time), one shard at a time (for
    /// re-protection after a node's death, `redundancy::reprotect`).
    pub fn pages_at_home_or_busy(&self, out: &mut Vec<PageNum>) {
        self.pages_where(out, |s| s.home_valid() || s.busy());
    }

    /// Appends to `out` every page cached here (mapped, staged or compressed), one shard
    /// at a time (what a suspend or a checkpoint writes home, `suspend::release`).
    pub fn pages_cached(&self, out: &mut Vec<PageNum>) {
        self.pages_where(out, |s| {
            s.resident() || s.staged().is_some() || s.compressed()
        });
    }

    /// Appends to `out` every page whose state satisfies `keep`, one shard at a time.
    fn pages_where(&self, out: &mut Vec<PageNum>, keep: impl Fn(&PageState) -> bool) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .iter()
                    .filter(|(_, s)| keep(s))
                    .map(|(&p, _)| PageNum(p)),
            );
        }
    }

    /// Notes that `page`, untouched here, has data at home (a restarted process's pages,
    /// written home by the runtime it had before).
    pub fn mark_home_valid(&self, page: PageNum) {
        let mut shard = self.shard(page);
        let s = shard.entry(page.0).or_insert(PageState::UNTOUCHED);
        *s = s.with_home_valid(true);
    }

    /// Number of pages with tracked state.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coherence::Access;

    #[test]
    fn the_lock_excludes_and_unlock_publishes() {
        let t = PageTable::new(1 << 20, 64).unwrap();
        let p = PageNum(12345);
        let s = t.try_lock(p).unwrap();
        assert_eq!(s, PageState::UNTOUCHED);
        assert!(t.try_lock(p).is_none());
        t.unlock(p, s.with_access(Access::Shared).with_referenced(true));
        assert!(t.test_and_clear_referenced(p));
        assert!(!t.test_and_clear_referenced(p));
        assert_eq!(t.get(p).access(), Access::Shared);
    }

    #[test]
    fn a_region_is_zapped_only_when_nothing_in_it_is_mapped_or_locked() {
        let t = PageTable::new(4 * REGION_PAGES, 64).unwrap();
        let p = PageNum(REGION_PAGES + 7);
        let s = t.try_lock(p).unwrap();
        assert!(
            t.try_zap(p).is_none(),
            "a locked page may be being installed"
        );
        t.unlock(p, s.with_access(Access::Exclusive));
        assert!(t.try_zap(p).is_none(), "a mapped page");
        let s = t.try_lock(p).unwrap();
        let evicted = crate::coherence::state::after_evict(
            s.with_access(Access::Exclusive),
            crate::coherence::state::EvictAction::WriteBack,
        );
        t.unlock(p, evicted);
        assert_eq!(t.try_zap(p), Some((PageNum(REGION_PAGES), REGION_PAGES)));
        assert!(
            t.try_lock(PageNum(REGION_PAGES)).is_none(),
            "zapping excludes lockers"
        );
        assert!(
            t.try_lock(PageNum(0)).is_some(),
            "other regions are unaffected"
        );
        t.end_zap(p);
        let s = t.try_lock(p).unwrap();
        assert!(s.home_valid(), "zapping changes no state");
        t.unlock(p, s);
    }

    #[test]
    fn a_table_for_four_tebibytes_is_cheap() {
        let t = PageTable::new((4u64 << 40) / 4096, 1024).unwrap();
        for i in (0..(1u64 << 30)).step_by(1 << 12) {
            let s = t.try_lock(PageNum(i)).unwrap();
            t.unlock(PageNum(i), s);
        }
        assert_eq!(t.tracked(), 0, "untouched pages leave no entry behind");
    }
}
