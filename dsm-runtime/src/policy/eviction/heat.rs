//! Region heat: the oldest pages leave first, except those in address regions that were
//! used recently.
//!
//! The runtime sees no accessed bits, only faults (and the uses of staged pages), so
//! CLOCK's reference bit is almost never set and it evicts in insertion order. But use
//! comes in address-sized chunks: on velvetg, keeping the hottest 1 MiB chunks would
//! catch 86.7% of the faults that keeping the hottest single pages catches 89.5% of
//! (docs/performance.md, "DAMON as the missing accessed bit"). A fault on one page of a
//! region is therefore evidence that its neighbours are in use too. Each region of
//! [`REGION_PAGES`] pages keeps a count of the uses seen in it, halved every epoch (a
//! quarter of the cache's worth of uses); victims are the coldest among the next
//! candidates along a FIFO ring, oldest first among equals.

use crate::policy::eviction::{EvictionPolicy, PREALLOC_PAGES_MAX};
use crate::policy::PageMap;
use crate::space::PageNum;

/// Pages per region: 64 pages, 256 KiB.
pub const REGION_PAGES: u64 = 64;
/// Candidates looked at per victim wanted (at least [`CANDIDATES_MIN`] per call): more
/// finds colder victims, at the cost of a longer walk.
const CANDIDATES_PER_VICTIM: usize = 4;
const CANDIDATES_MIN: usize = 64;

/// Uses seen in one region: a count halved once per epoch since `epoch`.
#[derive(Clone, Copy)]
struct Warmth {
    count: u32,
    epoch: u32,
}

impl Warmth {
    fn now(self, epoch: u32) -> u32 {
        self.count >> (epoch - self.epoch).min(31)
    }
}

/// Region-heat eviction over a FIFO ring of tracked pages. No `Default`: an epoch of zero
/// uses would end an epoch (and sweep every region) on each use.
pub struct Heat {
    ring: Vec<Option<PageNum>>,
    index: PageMap<usize>,
    free: Vec<usize>,
    hand: usize,
    regions: PageMap<Warmth>,
    epoch: u32,
    /// Uses per epoch, and those seen in this one.
    epoch_uses: u64,
    uses: u64,
    /// Pages met by the hand in one call: (warmth, order met, page).
    candidates: Vec<(u32, usize, PageNum)>,
}

impl Heat {
    /// A policy sized for `capacity` pages (it grows if more are inserted).
    pub fn with_capacity(capacity: usize) -> Heat {
        let pre = capacity.min(PREALLOC_PAGES_MAX);
        Heat {
            ring: Vec::with_capacity(pre),
            index: PageMap::with_capacity_and_hasher(pre, Default::default()),
            free: Vec::with_capacity(pre),
            hand: 0,
            regions: PageMap::default(),
            epoch: 0,
            epoch_uses: (capacity as u64 / 4).max(64),
            uses: 0,
            candidates: Vec::new(),
        }
    }

    fn region(page: PageNum) -> PageNum {
        PageNum(page.0 / REGION_PAGES)
    }

    /// A use of `page`: its region warms; every epoch's worth of uses, all cool by half
    /// (and regions that went cold are forgotten, so the map holds recent regions only).
    fn warm(&mut self, page: PageNum) {
        let epoch = self.epoch;
        let w = self
            .regions
            .entry(Self::region(page))
            .or_insert(Warmth { count: 0, epoch });
        *w = Warmth {
            count: w.now(epoch).saturating_add(1),
            epoch,
        };
        self.uses += 1;
        if self.uses >= self.epoch_uses {
            self.uses = 0;
            self.epoch += 1;
            let epoch = self.epoch;
            self.regions.retain(|_, w| w.now(epoch) > 0);
        }
    }

    fn warmth(&self, page: PageNum) -> u32 {
        self.regions
            .get(&Self::region(page))
            .map_or(0, |w| w.now(self.epoch))
    }
}

impl EvictionPolicy for Heat {
    fn name(&self) -> &'static str {
        "heat"
    }

    fn on_insert(&mut self, page: PageNum, prefetched: bool) {
        if self.index.contains_key(&page) {
            return;
        }
        // A demand fault is a use; a prefetch is only a guess.
        if !prefetched {
            self.warm(page);
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.ring[i] = Some(page);
                i
            }
            None => {
                self.ring.push(Some(page));
                self.ring.len() - 1
            }
        };
        self.index.insert(page, i);
    }

    fn on_access(&mut self, page: PageNum) {
        if self.index.contains_key(&page) {
            self.warm(page);
        }
    }

    fn on_remove(&mut self, page: PageNum) {
        if let Some(i) = self.index.remove(&page) {
            self.ring[i] = None;
            self.free.push(i);
        }
    }

    fn select_victims(&mut self, n: usize, out: &mut Vec<PageNum>) {
        let want = n.min(self.index.len());
        if want == 0 {
            return;
        }
        let look_at = (want * CANDIDATES_PER_VICTIM).max(CANDIDATES_MIN);
        let len = self.ring.len();
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        // Each slot at most once per call, so no page is proposed twice; the hand stays
        // past the pages passed over, which come round again once it has gone by the
        // rest (cooler by then).
        for met in 0..len {
            if candidates.len() >= look_at {
                break;
            }
            let slot = self.hand;
            self.hand = (self.hand + 1) % len;
            if let Some(page) = self.ring[slot] {
                candidates.push((self.warmth(page), met, page));
            }
        }
        // Coldest first; among equals, in the order the hand met them (oldest first).
        candidates.sort_unstable_by_key(|&(warmth, met, _)| (warmth, met));
        out.extend(candidates.iter().take(want).map(|&(_, _, page)| page));
        self.candidates = candidates;
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_a_region_in_use_outlive_older_ones_of_a_cold_region() {
        let mut h = Heat::with_capacity(1024);
        // Region 0 filled first (oldest), then region 1, whose pages keep faulting.
        for p in 0..8 {
            h.on_insert(PageNum(p), false);
        }
        for p in 0..8 {
            h.on_insert(PageNum(REGION_PAGES + p), false);
        }
        for _ in 0..4 {
            h.on_access(PageNum(REGION_PAGES));
        }
        // A prefetched page of a third region was never used: colder than both.
        h.on_insert(PageNum(5 * REGION_PAGES), true);
        let mut out = Vec::new();
        h.select_victims(9, &mut out);
        assert_eq!(out[0], PageNum(5 * REGION_PAGES));
        assert!(out[1..].iter().all(|p| p.0 < REGION_PAGES), "{out:?}");
    }

    #[test]
    fn warmth_halves_every_epoch_and_cold_regions_are_forgotten() {
        let mut h = Heat::with_capacity(0);
        assert_eq!(h.epoch_uses, 64);
        for _ in 0..8 {
            h.warm(PageNum(0));
        }
        assert_eq!(h.warmth(PageNum(0)), 8);
        // 56 uses elsewhere end the epoch: region 0 now counts half.
        for i in 0..56 {
            h.warm(PageNum(REGION_PAGES * (10 + i)));
        }
        assert_eq!(h.epoch, 1);
        assert_eq!(h.warmth(PageNum(0)), 4);
        // Those single uses halved to nothing: forgotten.
        assert_eq!(h.regions.len(), 1);
    }

    #[test]
    fn among_equals_the_oldest_leaves_first() {
        let mut h = Heat::with_capacity(16);
        for p in [7, 3, 9] {
            h.on_insert(PageNum(p * REGION_PAGES), true);
        }
        let mut out = Vec::new();
        h.select_victims(2, &mut out);
        assert_eq!(out, [PageNum(7 * REGION_PAGES), PageNum(3 * REGION_PAGES)]);
    }
}
