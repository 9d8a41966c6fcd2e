//! Discarding pages the program gave up (`madvise(MADV_DONTNEED)` or `MADV_FREE`, which
//! is how the allocator returns freed spans): they leave the cache at once, with no
//! write-back, and their home copy is forgotten, so the next touch is a local zero-fill
//! rather than a fetch. Without this, freed memory would stay dirty in the cache, be
//! written home when evicted, and be fetched back when the allocator reuses it.
//!
//! Runs on the program's thread that made the call, counted as internal (see
//! [`crate::runtime::as_internal`]) and with its batch on the stack. Pages are locked in
//! small batches with `try_lock`; a page someone else holds (mid-fault or mid-eviction)
//! is waited for alone, after the batch in hand is finished, so we never wait while
//! holding locks that a fault handler might need to make room.

use crate::coherence::PageState;
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::PageNum;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pages locked at once.
const BATCH: usize = 64;

/// Pages locked and not yet dropped, on the stack.
struct Batch {
    pages: [(PageNum, PageState); BATCH],
    len: usize,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            pages: [(PageNum(0), PageState::UNTOUCHED); BATCH],
            len: 0,
        }
    }
}

impl Batch {
    fn push(&mut self, page: PageNum, state: PageState) {
        self.pages[self.len] = (page, state);
        self.len += 1;
    }
}

impl<E: Effects> Core<E> {
    /// Drops pages `first..first + count` of this process's range (resident, staged or
    /// compressed)
    /// and marks them untouched. Returns how many were cached, or
    /// [`RuntimeError::PageStuck`] if a page stayed locked past the bound of
    /// [`Core::lock_waiting`] (pages before it are discarded, none is left locked).
    pub(crate) fn discard(&self, first: PageNum, count: u64) -> Result<u64, RuntimeError> {
        let end = (first.0 + count).min(self.layout.pages);
        let mut batch = Batch::default();
        let mut dropped = 0;
        for p in first.0..end {
            let page = PageNum(p);
            if self.table.get(page) == PageState::UNTOUCHED {
                continue; // never touched, or already discarded: nothing to do
            }
            let state = match self.table.try_lock(page) {
                Some(s) => s,
                None => {
                    dropped += self.discard_locked(&mut batch);
                    self.lock_waiting(page)?
                }
            };
            batch.push(page, state);
            if batch.len == BATCH {
                dropped += self.discard_locked(&mut batch);
            }
        }
        Ok(dropped + self.discard_locked(&mut batch))
    }

    /// Waits for another thread's hold on `page` to end, then locks it. A hold lasts at
    /// most one fetch or write-back, each bounded by the node timeout (a node that does
    /// not answer fails the operation); twice that and the holder is stuck.
    fn lock_waiting(&self, page: PageNum) -> Result<PageState, RuntimeError> {
        let limit = Duration::from_millis(self.config.node_timeout_ms.saturating_mul(2));
        let start = Instant::now();
        loop {
            if let Some(s) = self.table.try_lock(page) {
                return Ok(s);
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Err(RuntimeError::PageStuck {
                    page: page.0,
                    waited_ms: waited.as_millis() as u64,
                });
            }
            std::thread::yield_now();
        }
    }

    /// Unmaps the batch's resident pages (one `madvise` per run of neighbours), frees
    /// their cache budget, staging slots and compressed copies, and unlocks them as
    /// untouched.
    fn discard_locked(&self, batch: &mut Batch) -> u64 {
        let pages = &batch.pages[..batch.len];
        let mut i = 0;
        while i < pages.len() {
            if !pages[i].1.resident() {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < pages.len() && pages[j].1.resident() && pages[j].0 .0 == pages[j - 1].0 .0 + 1
            {
                j += 1;
            }
            super::unmap_pages(self, pages[i].0, j - i);
            i = j;
        }
        let mut dropped = 0;
        let mut policy = self.eviction();
        for &(page, state) in pages {
            if state.resident() || state.staged().is_some() {
                policy.on_remove(page);
            }
        }
        drop(policy);
        for &(page, state) in pages {
            if let Some(slot) = state.staged() {
                self.staging.release(slot);
                if state.prefetched() {
                    self.stats.prefetch_unused.fetch_add(1, Ordering::Relaxed);
                }
            }
            if state.resident() || state.staged().is_some() {
                self.budget.give_back();
                dropped += 1;
            }
            if state.compressed() {
                let tier = self
                    .compressed
                    .as_ref()
                    .expect("a compressed page has a tier");
                tier.remove(page, &self.budget);
                dropped += 1;
            }
            if let (Some(pool), true) = (&self.pool, state.home_valid()) {
                // Its home copy is forgotten: the node memory is free for other pages.
                for h in self.placement.homes(page).as_slice() {
                    pool.forget(h.node, 1);
                }
            }
            self.table.unlock(page, PageState::UNTOUCHED);
            if let Some(trace) = &self.trace {
                trace.record(crate::trace::EventKind::Discard, page);
            }
        }
        super::zap_empty_regions(self, pages.iter().map(|&(page, _)| page));
        batch.len = 0;
        self.stats
            .discarded_pages
            .fetch_add(dropped, Ordering::Relaxed);
        self.stats
            .resident_pages
            .store(self.budget.used() as u64, Ordering::Relaxed);
        dropped
    }
}
