//! 2Q (Johnson and Shasha, VLDB 1994), full version: a page seen once waits in a small
//! FIFO (`A1in`); when it leaves, only its number is kept in a ghost FIFO (`A1out`); a
//! page that comes back while still remembered there has shown reuse at a distance
//! longer than `A1in` and joins the main LRU queue (`Am`). A scan streams through
//! `A1in` and `A1out` without touching `Am`, which is what makes 2Q scan resistant.
//!
//! Why 2Q here: it needs no per-access information to work. The runtime sees misses
//! for free and ghost hits are misses it remembers; accesses to resident pages are only
//! sampled. A sampled hit refreshes `Am`'s LRU order, and on an `A1in` page it is a
//! promotion: sampling parks only pages at the victim end, so a page of `A1in` it
//! catches has aged through the whole queue and was used again, which is the reuse at a
//! distance that a ghost hit proves, learnt without the eviction and the refetch. (Left
//! in `A1in`, such a page would be the next victim anyway, and the next sampling round
//! would park it again.) ARC and CLOCK-Pro lean on every hit to move pages between
//! lists.
//!
//! Prefetched pages enter `A1in` like any first use. A prefetched page that was a ghost
//! is promoted to `Am` on its first real use (`on_access`), not at insertion: being
//! prefetched is not a reuse.

use super::list::OrderedSet;
use crate::policy::eviction::EvictionPolicy;
use crate::policy::PageSet;
use crate::space::PageNum;

/// Default share of the cache for `A1in`, in percent (the paper's recommendation).
pub const A1IN_PCT_DEFAULT: u8 = 25;
/// Default size of the ghost queue `A1out`, in percent of the cache (the paper's 50%).
pub const A1OUT_PCT_DEFAULT: u16 = 50;

/// 2Q with `A1in`, ghost `A1out` and `Am`.
pub struct TwoQ {
    a1in: OrderedSet,
    a1out: OrderedSet,
    am: OrderedSet,
    /// Prefetched pages (in `a1in`) that were ghosts when they arrived.
    promote_on_use: PageSet,
    a1in_pages_max: usize,
    a1out_pages_max: usize,
}

impl TwoQ {
    /// A 2Q for a cache of `capacity` pages: `A1in` gets `a1in_pct` percent of it and the
    /// ghost queue remembers `a1out_pct` percent of it (each at least one page).
    pub fn new(capacity: usize, a1in_pct: u8, a1out_pct: u16) -> TwoQ {
        let share = |pct: usize| (capacity * pct / 100).max(1);
        let a1in_pages_max = share(a1in_pct as usize);
        let a1out_pages_max = share(a1out_pct as usize);
        TwoQ {
            a1in: OrderedSet::with_capacity(a1in_pages_max),
            a1out: OrderedSet::with_capacity(a1out_pages_max),
            am: OrderedSet::with_capacity(capacity),
            promote_on_use: PageSet::default(),
            a1in_pages_max,
            a1out_pages_max,
        }
    }

    /// With the paper's shares (25% and 50%).
    pub fn with_capacity(capacity: usize) -> TwoQ {
        TwoQ::new(capacity, A1IN_PCT_DEFAULT, A1OUT_PCT_DEFAULT)
    }

    fn remember_ghost(&mut self, page: PageNum) {
        self.a1out.push_back(page);
        while self.a1out.len() > self.a1out_pages_max {
            self.a1out.pop_front();
        }
    }
}

impl EvictionPolicy for TwoQ {
    fn name(&self) -> &'static str {
        "2q"
    }

    fn on_insert(&mut self, page: PageNum, prefetched: bool) {
        if self.a1in.contains(page) || self.am.contains(page) {
            return;
        }
        let ghost = self.a1out.remove(page);
        if ghost && !prefetched {
            self.am.push_back(page);
        } else {
            self.a1in.push_back(page);
            if ghost {
                self.promote_on_use.insert(page);
            }
        }
    }

    fn on_access(&mut self, page: PageNum) {
        if self.am.move_to_back(page) {
            return;
        }
        // Otherwise only a ghost-prefetched page moves: uses inside A1in are the
        // correlated references 2Q deliberately ignores.
        if self.promote_on_use.remove(&page) && self.a1in.remove(page) {
            self.am.push_back(page);
        }
    }

    fn on_sampled_hit(&mut self, page: PageNum) {
        if self.am.move_to_back(page) {
            return;
        }
        if self.a1in.remove(page) {
            self.promote_on_use.remove(&page);
            self.am.push_back(page);
        }
    }

    fn on_remove(&mut self, page: PageNum) {
        self.promote_on_use.remove(&page);
        if self.a1in.remove(page) {
            self.remember_ghost(page);
        } else {
            self.am.remove(page);
        }
    }

    fn select_victims(&mut self, n: usize, out: &mut Vec<PageNum>) {
        // The order in which back-to-back evictions would go: A1in's overflow first,
        // then Am from its LRU end, then what is left of A1in. The three runs are
        // disjoint, so nothing is proposed twice.
        let overflow = self.a1in.len().saturating_sub(self.a1in_pages_max);
        let order = self
            .a1in
            .iter()
            .take(overflow)
            .chain(self.am.iter())
            .chain(self.a1in.iter().skip(overflow));
        out.extend(order.take(n));
    }

    fn len(&self) -> usize {
        self.a1in.len() + self.am.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(v: &[u64]) -> Vec<PageNum> {
        v.iter().map(|&p| PageNum(p)).collect()
    }

    fn victims(q: &mut TwoQ, n: usize) -> Vec<PageNum> {
        let mut out = Vec::new();
        q.select_victims(n, &mut out);
        out
    }

    /// Evicts the best victim, as the cache would.
    fn evict_one(q: &mut TwoQ) -> PageNum {
        let v = victims(q, 1)[0];
        q.on_remove(v);
        v
    }

    #[test]
    fn first_uses_queue_in_a1in_and_ghost_hits_join_am() {
        // Capacity 8: A1in holds 2 (25%), the ghost queue remembers 4 (50%).
        let mut q = TwoQ::with_capacity(8);
        for p in 1..=4 {
            q.on_insert(PageNum(p), false);
        }
        // A1in = [1 2 3 4] is over its share by 2: those go first, oldest first.
        assert_eq!(victims(&mut q, 3), pages(&[1, 2, 3]));
        assert_eq!(evict_one(&mut q), PageNum(1));
        assert_eq!(evict_one(&mut q), PageNum(2));
        // 1 comes back while remembered: a reuse, so it enters Am.
        q.on_insert(PageNum(1), false);
        assert_eq!(q.len(), 3);
        // A1in = [3 4] is within its share; Am = [1] is the next victim, then A1in.
        assert_eq!(victims(&mut q, 3), pages(&[1, 3, 4]));
    }

    #[test]
    fn a_scan_does_not_flush_am() {
        let mut q = TwoQ::with_capacity(8);
        // Build a hot Am of {100, 101}: first use, eviction, reuse.
        for p in [100, 101] {
            q.on_insert(PageNum(p), false);
        }
        for _ in 0..2 {
            let v = victims(&mut q, 1)[0];
            q.on_remove(v);
        }
        for p in [100, 101] {
            q.on_insert(PageNum(p), false);
        }
        // A long scan with the cache kept at 8 pages.
        for p in 0..50 {
            q.on_insert(PageNum(p), false);
            while q.len() > 8 {
                let v = evict_one(&mut q);
                assert!(v.0 < 100, "scan page {} pushed out hot page {}", p, v.0);
            }
        }
        assert!(q.am.contains(PageNum(100)) && q.am.contains(PageNum(101)));
    }

    #[test]
    fn sampled_accesses_refresh_am_order_only() {
        let mut q = TwoQ::with_capacity(4); // A1in 1, ghosts 2
        for p in [1, 2] {
            q.on_insert(PageNum(p), false);
        }
        evict_one(&mut q);
        evict_one(&mut q);
        for p in [1, 2] {
            q.on_insert(PageNum(p), false); // both ghosts: Am = [1 2]
        }
        q.on_access(PageNum(1)); // Am = [2 1]
        q.on_insert(PageNum(3), false); // A1in = [3]
        q.on_access(PageNum(3)); // ignored: correlated reference
        assert_eq!(victims(&mut q, 3), pages(&[2, 1, 3]));
    }

    #[test]
    fn a_sampled_hit_promotes_from_a1in() {
        let mut q = TwoQ::with_capacity(8); // A1in 2
        for p in 1..=3 {
            q.on_insert(PageNum(p), false);
        }
        // A1in = [1 2 3], 1 is over the share: sampling parks it, and it is used again.
        assert_eq!(victims(&mut q, 1), pages(&[1]));
        q.on_sampled_hit(PageNum(1));
        assert!(q.am.contains(PageNum(1)) && !q.a1in.contains(PageNum(1)));
        assert_eq!(q.len(), 3);
        // No longer the next victim: A1in = [2 3] is within its share, so Am goes first,
        // and a later sampled hit only refreshes its order.
        q.on_insert(PageNum(4), false); // A1in = [2 3 4]
        assert_eq!(victims(&mut q, 4), pages(&[2, 1, 3, 4]));
        q.on_sampled_hit(PageNum(1));
        assert_eq!(victims(&mut q, 4), pages(&[2, 1, 3, 4]));
    }

    #[test]
    fn a_prefetched_ghost_is_promoted_on_first_use() {
        let mut q = TwoQ::with_capacity(4);
        q.on_insert(PageNum(1), false);
        q.on_remove(PageNum(1)); // ghost
        q.on_insert(PageNum(1), true);
        assert!(q.a1in.contains(PageNum(1)), "prefetch is not a reuse");
        q.on_access(PageNum(1));
        assert!(q.am.contains(PageNum(1)));
        assert_eq!(q.len(), 1);
    }
}
