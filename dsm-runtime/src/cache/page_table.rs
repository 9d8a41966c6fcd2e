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

/// Per-page state for `pages` pages.
#[derive(Debug)]
pub struct PageTable {
    shards: Box<[Mutex<Shard>]>,
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

    /// Takes the page's lock if it is free; returns the state it had.
    pub fn try_lock(&self, page: PageNum) -> Option<PageState> {
        let mut shard = self.shard(page);
        let entry = shard.entry(page.0).or_insert(PageState::UNTOUCHED);
        if entry.busy() {
            return None;
        }
        let s = *entry;
        *entry = s.with_busy(true);
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
    fn a_table_for_four_tebibytes_is_cheap() {
        let t = PageTable::new((4u64 << 40) / 4096, 1024).unwrap();
        for i in (0..(1u64 << 30)).step_by(1 << 12) {
            let s = t.try_lock(PageNum(i)).unwrap();
            t.unlock(PageNum(i), s);
        }
        assert_eq!(t.tracked(), 0, "untouched pages leave no entry behind");
    }
}
