//! The cache simulator: replays accesses through a profile's own eviction and prefetch
//! policy objects, with the runtime's rules for what a miss costs.
//!
//! Rules mirrored from the runtime:
//! - A miss on a page that was written back at least once (home-valid) is a remote fetch
//!   and stalls the program for the fetch latency; a miss on a page never written back
//!   is a zero-fill (a local fault, no network trip).
//! - A page evicted dirty is written home and becomes home-valid.
//! - The prefetch policy hears about remote misses and first uses of staged pages, as in
//!   the runtime; its pages are staged, first use costs a local fault, and a page used
//!   before its fetch could have completed also waits for the rest of it. Pages that are
//!   not home-valid are not prefetched (a demand zero-fill costs the same as a staged hit).
//! - Background reclaim: when free cache falls below the start mark, evict down to the
//!   stop mark, never evicting the page being served.
//! - Clean pages are mapped write-protected, so the first write to one costs a local
//!   fault, except pages that were dirty at their last eviction when the profile's
//!   `writable_if_dirty_before` is on: those come back writable (and so dirty).
//! - A sampled access (the runtime parked the page to learn whether it is still used)
//!   costs a local re-fault and is shown to the prefetch policy as a fault.
//!
//! Every event of a trace is an access by the program: a page the simulated cache does
//! not hold is a miss even if the recorded run had it (a sampled access, say).
//!
//! Page states and their transitions are the runtime's own ([`crate::coherence::state`]):
//! the simulator keeps a [`PageState`] per page, as the runtime's page table does, and
//! only adds the costs.

use crate::coherence::state::{
    after_evict, after_fault, on_evict, on_fault, writable_if_dirty_before, FaultAction,
};
use crate::coherence::PageState;
use crate::policy::{EvictionPolicy, PageMap, PrefetchPolicy, Profile};
use crate::space::PageNum;
use crate::trace::{EventKind, TraceEvent};

/// Costs the simulator charges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latencies {
    /// A demand fault served from a memory node.
    pub fetch_latency_ns: u64,
    /// A fault served locally (staged page, zero-fill).
    pub local_fault_ns: u64,
}

impl Default for Latencies {
    /// 35 us and 13 us: a fault over TCP on loopback and a userfaultfd round trip on
    /// the development machine (docs: where the numbers are).
    fn default() -> Self {
        Latencies {
            fetch_latency_ns: 35_000,
            local_fault_ns: 13_000,
        }
    }
}

/// What a replay counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimCounts {
    /// Accesses replayed.
    pub accesses: u64,
    /// Accesses to resident, already used pages: no fault at all.
    pub hits: u64,
    /// Sampled accesses to resident pages: a local re-fault each (the price of recency).
    pub sampled_hits: u64,
    /// First writes to clean resident pages: a local write-protect fault each.
    pub write_protect_faults: u64,
    /// Demand misses served from a memory node (the stalls prefetch tries to avoid).
    pub remote_fetches: u64,
    /// Demand misses on pages never written back: zero-filled locally.
    pub zero_fills: u64,
    /// Extra pages fetched with demand misses (fetch granularity above one page); they
    /// are staged and also counted in `prefetch_issued`.
    pub granularity_fetches: u64,
    /// Pages prefetched, including the extra pages of each fetch.
    pub prefetch_issued: u64,
    /// Prefetched pages used before eviction (each one a remote fetch avoided).
    pub prefetch_used: u64,
    /// Prefetched pages evicted unused.
    pub prefetch_wasted: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Dirty pages written home.
    pub writebacks: u64,
    /// Predicted time the program waits on faults, in ns.
    pub stall_ns: u64,
    /// Victims the policy proposed that were not resident (a policy bug; always 0).
    pub bogus_victims: u64,
}

/// Whether a page is in the cache (mapped, or staged: prefetched and not yet used).
fn cached(s: PageState) -> bool {
    s.resident() || s.staged().is_some()
}

/// A staged page's state. The simulator models no staging slots: every staged page
/// names slot 0.
fn staged(s: PageState) -> PageState {
    s.with_staged(0).with_prefetched(true).with_busy(false)
}

/// One profile's simulated cache.
pub struct Simulator {
    eviction: Box<dyn EvictionPolicy>,
    prefetch: Box<dyn PrefetchPolicy>,
    prefetch_max_pages: usize,
    granularity_pages: u64,
    batch_pages: usize,
    writable_if_dirty_before: bool,
    capacity_pages: usize,
    reclaim_start_free_pages: usize,
    reclaim_stop_free_pages: usize,
    latencies: Latencies,
    /// Every page whose state is not untouched (as the runtime's page table holds them).
    states: PageMap<PageState>,
    /// When each staged page's fetch completes.
    ready_ns: PageMap<u64>,
    /// Pages cached (mapped or staged).
    cached_pages: usize,
    counts: SimCounts,
    victims: Vec<PageNum>,
    prefetched: Vec<PageNum>,
}

impl Simulator {
    /// A cold cache of `capacity_pages` run by `profile`'s policies.
    pub fn new(profile: &Profile, capacity_pages: usize, latencies: Latencies) -> Simulator {
        let capacity_pages = capacity_pages.max(1);
        let pct = |p: u8| capacity_pages * p as usize / 100;
        Simulator {
            eviction: profile.eviction(capacity_pages),
            prefetch: profile.prefetch(),
            prefetch_max_pages: profile.prefetch_max_pages(),
            granularity_pages: profile.fetch_granularity_pages.max(1) as u64,
            batch_pages: profile.writeback_batch_pages.max(1),
            writable_if_dirty_before: profile.fetch_writable_if_dirty_before,
            capacity_pages,
            reclaim_start_free_pages: pct(profile.reclaim_start_free_pct),
            reclaim_stop_free_pages: pct(profile.reclaim_stop_free_pct).max(1),
            latencies,
            states: PageMap::with_capacity_and_hasher(capacity_pages, Default::default()),
            ready_ns: PageMap::default(),
            cached_pages: 0,
            counts: SimCounts::default(),
            victims: Vec::new(),
            prefetched: Vec::new(),
        }
    }

    /// What was counted so far.
    pub fn counts(&self) -> &SimCounts {
        &self.counts
    }

    fn state(&self, page: PageNum) -> PageState {
        self.states
            .get(&page)
            .copied()
            .unwrap_or(PageState::UNTOUCHED)
    }

    fn set_state(&mut self, page: PageNum, s: PageState) {
        if s == PageState::UNTOUCHED {
            self.states.remove(&page);
        } else {
            self.states.insert(page, s);
        }
    }

    /// Replays one event.
    pub fn access(&mut self, e: &TraceEvent) {
        let page = e.page;
        let s = self.state(page);
        if e.kind == EventKind::Discard {
            // Dropped without a write-back; its next touch is a zero-fill.
            if cached(s) {
                self.eviction.on_remove(page);
                self.ready_ns.remove(&page);
                self.cached_pages -= 1;
            }
            self.set_state(page, PageState::UNTOUCHED);
            return;
        }
        self.counts.accesses += 1;
        let write = e.kind.is_write();
        if s.staged().is_some() {
            let action = writable_if_dirty_before(
                self.writable_if_dirty_before,
                s,
                on_fault(s, write, false),
            );
            self.set_state(page, after_fault(s, action));
            let ready = self.ready_ns.remove(&page).unwrap_or(0);
            let wait = ready.saturating_sub(e.time_ns);
            self.counts.prefetch_used += 1;
            self.counts.stall_ns += self.latencies.local_fault_ns + wait;
            self.eviction.on_access(page);
            self.run_prefetch(page, true, e.time_ns);
        } else if s.resident() {
            // Clean pages are mapped write-protected: the first write traps (Upgrade).
            let action = on_fault(s, write, false);
            self.set_state(page, after_fault(s, action));
            if e.kind == EventKind::Sampled {
                // The runtime parked the page to watch it: its next use re-faults
                // locally and, like any served fault, is shown to the prefetcher.
                self.eviction.on_sampled_hit(page);
                self.counts.sampled_hits += 1;
                self.counts.stall_ns += self.latencies.local_fault_ns;
                self.run_prefetch(page, false, e.time_ns);
            } else if action == FaultAction::Upgrade {
                self.eviction.on_access(page);
                self.counts.write_protect_faults += 1;
                self.counts.stall_ns += self.latencies.local_fault_ns;
            } else {
                self.eviction.on_access(page);
                self.counts.hits += 1;
            }
        } else {
            self.miss(page, s, write, e.time_ns);
        }
    }

    fn miss(&mut self, page: PageNum, s: PageState, write: bool, now_ns: u64) {
        let action =
            writable_if_dirty_before(self.writable_if_dirty_before, s, on_fault(s, write, false));
        let remote = matches!(action, FaultAction::Fetch { .. });
        if remote {
            self.counts.remote_fetches += 1;
            self.counts.stall_ns += self.latencies.fetch_latency_ns;
        } else {
            self.counts.zero_fills += 1;
            self.counts.stall_ns += self.latencies.local_fault_ns;
        }
        self.install(page, after_fault(s, action), None, page);
        if remote {
            self.fetch_block(page, now_ns);
            self.run_prefetch(page, false, now_ns);
        }
    }

    /// The rest of the aligned block a remote fetch brings in with the faulting page:
    /// the neighbours that have data at home (the others would be zeros, which a later
    /// fault fills as cheaply). As in the runtime, they come in the same batch and are
    /// staged like prefetches: counted as issued, and their first use is a staged hit.
    fn fetch_block(&mut self, page: PageNum, now_ns: u64) {
        let g = self.granularity_pages;
        if g == 1 {
            return;
        }
        let first = page.0 & !(g - 1);
        for q in (first..first.saturating_add(g)).map(PageNum) {
            let sq = self.state(q);
            if q != page
                && !cached(sq)
                && sq.home_valid()
                && self.install(q, staged(sq), Some(now_ns), page)
            {
                self.counts.granularity_fetches += 1;
                self.counts.prefetch_issued += 1;
            }
        }
    }

    fn run_prefetch(&mut self, page: PageNum, hit: bool, now_ns: u64) {
        if self.prefetch_max_pages == 0 {
            return;
        }
        let mut out = std::mem::take(&mut self.prefetched);
        out.clear();
        self.prefetch
            .on_fault(page, hit, self.prefetch_max_pages, &mut out);
        for &q in &out {
            let sq = self.state(q);
            if cached(sq) || !sq.home_valid() {
                continue;
            }
            let ready = now_ns.saturating_add(self.latencies.fetch_latency_ns);
            if self.install(q, staged(sq), Some(ready), page) {
                self.counts.prefetch_issued += 1;
            }
        }
        self.prefetched = out;
    }

    /// Makes room (sparing `protect`, the page being served) and caches `page` in state
    /// `next` (staged, usable from `ready_ns`, if given); returns false if no room could
    /// be made (a tiny cache holding only `protect`), in which case the runtime would not
    /// fetch the extra page either.
    fn install(
        &mut self,
        page: PageNum,
        next: PageState,
        ready_ns: Option<u64>,
        protect: PageNum,
    ) -> bool {
        self.reclaim(protect);
        if self.free_pages() == 0 {
            return false;
        }
        self.set_state(page, next);
        if let Some(t) = ready_ns {
            self.ready_ns.insert(page, t);
        }
        self.cached_pages += 1;
        self.eviction.on_insert(page, ready_ns.is_some());
        true
    }

    fn free_pages(&self) -> usize {
        self.capacity_pages.saturating_sub(self.cached_pages)
    }

    fn reclaim(&mut self, protect: PageNum) {
        let free = self.free_pages();
        if free > 0 && free >= self.reclaim_start_free_pages {
            return;
        }
        let target = self.reclaim_stop_free_pages.min(self.capacity_pages);
        // Victims are chosen a write-back batch at a time, as the runtime's evictor does.
        // Each round evicts at least one page or gives up: bounded by the cache size.
        for _ in 0..=self.capacity_pages {
            let need = target
                .saturating_sub(self.free_pages())
                .min(self.batch_pages);
            if need == 0 {
                return;
            }
            let mut victims = std::mem::take(&mut self.victims);
            victims.clear();
            self.eviction.select_victims(need + 1, &mut victims);
            let mut evicted = 0;
            for &v in victims.iter().filter(|&&v| v != protect).take(need) {
                evicted += usize::from(self.evict(v));
            }
            self.victims = victims;
            if evicted == 0 {
                return;
            }
        }
    }

    fn evict(&mut self, page: PageNum) -> bool {
        let s = self.state(page);
        if !cached(s) {
            self.counts.bogus_victims += 1;
            return false;
        }
        self.eviction.on_remove(page);
        self.counts.evictions += 1;
        let action = on_evict(s);
        if action.writes_back() {
            self.counts.writebacks += 1;
        }
        if s.staged().is_some() {
            self.counts.prefetch_wasted += 1;
            self.ready_ns.remove(&page);
        }
        self.set_state(page, after_evict(s, action));
        self.cached_pages -= 1;
        true
    }

    #[cfg(test)]
    fn check_invariants(&self, written: &std::collections::HashSet<PageNum>) {
        assert!(self.cached_pages <= self.capacity_pages);
        assert_eq!(self.eviction.len(), self.cached_pages);
        assert_eq!(
            self.states.values().filter(|&&s| cached(s)).count(),
            self.cached_pages
        );
        assert_eq!(self.counts.bogus_victims, 0);
        for p in written {
            let s = self.state(*p);
            let dirty_here = s.access() == crate::coherence::Access::Exclusive;
            assert!(dirty_here || s.home_valid(), "written page {} lost", p.0);
        }
    }

    /// Marks `page` as having data at home (a test's starting point).
    #[cfg(test)]
    fn put_home(&mut self, page: u64) {
        let s = self.state(PageNum(page)).with_home_valid(true);
        self.set_state(PageNum(page), s);
    }
}

/// Synthetic traces for tests: `(kind, page)` accesses one microsecond apart.
#[cfg(test)]
pub(crate) fn events(accesses: &[(EventKind, u64)]) -> Vec<TraceEvent> {
    accesses
        .iter()
        .enumerate()
        .map(|(i, &(kind, page))| TraceEvent {
            time_ns: i as u64 * 1000,
            page: PageNum(page),
            kind,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn profile(text: &str) -> Profile {
        Profile::parse(text, "t", "test").unwrap()
    }

    fn replay(p: &Profile, capacity: usize, ev: &[TraceEvent]) -> SimCounts {
        let mut s = Simulator::new(p, capacity, Latencies::default());
        for e in ev {
            s.access(e);
        }
        s.counts().clone()
    }

    #[test]
    fn hand_worked_costs() {
        // Cache of 2 pages, reclaim only when full (start 0%), to one free page.
        let p = profile(
            "[prefetch]\npolicy = \"none\"\n[eviction]\npolicy = \"fifo\"\n\
             [cache]\nreclaim_start_free_pct = 0\nreclaim_stop_free_pct = 1\n",
        );
        use EventKind::*;
        let ev = events(&[
            (FaultWrite, 1), // zero-fill, mapped writable
            (FaultRead, 2),  // zero-fill, mapped write-protected
            (Sampled, 1),    // parked and used again: a local re-fault
            (FaultRead, 1),  // a plain hit
            (FaultWrite, 2), // first write to a clean page: a write-protect fault
            (FaultRead, 3),  // zero-fill; evicts 1 (dirty: written home)
            (FaultRead, 1),  // remote fetch; evicts 2 (dirty: written home)
            (FaultRead, 2),  // remote fetch; evicts 3 (clean: dropped)
        ]);
        let c = replay(&p, 2, &ev);
        assert_eq!(c.zero_fills, 3);
        assert_eq!(c.remote_fetches, 2);
        assert_eq!((c.hits, c.sampled_hits, c.write_protect_faults), (1, 1, 1));
        assert_eq!(c.writebacks, 2);
        assert_eq!(c.evictions, 3);
        assert_eq!(c.stall_ns, 5 * 13_000 + 2 * 35_000);
    }

    #[test]
    fn pages_dirty_at_eviction_come_back_writable_when_the_profile_says_so() {
        use EventKind::*;
        let ev = events(&[
            (FaultWrite, 1), // zero-fill, dirty
            (FaultRead, 2),  // evicts 1 dirty: written home
            (FaultRead, 1),  // remote fetch of a page dirty at its last eviction
            (FaultWrite, 1), // with the rule: already writable; without: a WP fault
            (FaultRead, 2),
        ]);
        let base = "[prefetch]\npolicy = \"none\"\n[eviction]\npolicy = \"fifo\"\n\
                    [cache]\nreclaim_start_free_pct = 0\nreclaim_stop_free_pct = 1\n";
        let with = |on: bool| format!("{base}[fetch]\nwritable_if_dirty_before = {on}\n");
        let on = replay(&profile(&with(true)), 1, &ev);
        let off = replay(&profile(&with(false)), 1, &ev);
        assert_eq!(off, replay(&profile(base), 1, &ev), "off by default");
        assert_eq!((on.remote_fetches, off.remote_fetches), (1, 1));
        assert_eq!(on.write_protect_faults, 0);
        assert_eq!(off.write_protect_faults, 1);
        // Either way page 1 is written home again when page 2 comes back.
        assert_eq!((on.writebacks, off.writebacks), (2, 2));
    }

    #[test]
    fn staged_pages_cost_a_local_fault_plus_any_wait() {
        let p = profile("[prefetch]\npolicy = \"stride\"\nmax_pages = 2\n");
        let mut s = Simulator::new(&p, 64, Latencies::default());
        for q in [0, 10, 20, 30, 40] {
            s.put_home(q);
        }
        let at = |t, q| TraceEvent {
            time_ns: t,
            page: PageNum(q),
            kind: EventKind::FaultRead,
        };
        s.access(&at(0, 0));
        s.access(&at(100_000, 10));
        s.access(&at(200_000, 20)); // stride 10 confirmed: prefetch 30, 40, ready at 235 us
        assert_eq!(s.counts().prefetch_issued, 2);
        s.access(&at(230_000, 30)); // 5 us early
        s.access(&at(300_000, 40));
        let c = s.counts();
        assert_eq!(c.prefetch_used, 2);
        assert_eq!(c.remote_fetches, 3);
        assert_eq!(c.stall_ns, 3 * 35_000 + (13_000 + 5_000) + 13_000);
    }

    #[test]
    fn granularity_brings_the_home_valid_part_of_the_aligned_block() {
        let p = profile("[prefetch]\npolicy = \"none\"\n[fetch]\ngranularity_pages = 4\n");
        let mut s = Simulator::new(&p, 64, Latencies::default());
        for q in [4, 6, 7] {
            s.put_home(q);
        }
        use EventKind::FaultRead;
        for e in events(&[
            (FaultRead, 6),
            (FaultRead, 4),
            (FaultRead, 5),
            (FaultRead, 9),
        ]) {
            s.access(&e);
        }
        let c = s.counts();
        assert_eq!(c.remote_fetches, 1, "6 brought 4 and 7, staged");
        assert_eq!((c.granularity_fetches, c.prefetch_issued), (2, 2));
        assert_eq!((c.hits, c.prefetch_used), (0, 1));
        assert_eq!(c.zero_fills, 2, "5 and 9 were never written: not fetched");
    }

    #[test]
    fn a_discarded_page_leaves_the_cache_and_comes_back_as_zeros() {
        let p = profile("[prefetch]\npolicy = \"none\"\n");
        let mut s = Simulator::new(&p, 64, Latencies::default());
        s.put_home(3);
        use EventKind::{Discard, FaultRead};
        for e in events(&[(FaultRead, 3), (Discard, 3), (FaultRead, 3), (Discard, 8)]) {
            s.access(&e);
        }
        let c = s.counts();
        assert_eq!(c.remote_fetches, 1, "the first read fetches");
        assert_eq!(
            c.zero_fills, 1,
            "after the discard there is nothing to fetch"
        );
        assert_eq!(c.accesses, 2, "discards are not accesses");
        assert_eq!(c.evictions, 0, "a discard is not an eviction");
    }

    fn arb_events() -> impl Strategy<Value = Vec<TraceEvent>> {
        proptest::collection::vec((0usize..5, 0u64..48), 0..400).prop_map(|v| {
            let acc: Vec<_> = v.into_iter().map(|(k, p)| (EventKind::ALL[k], p)).collect();
            events(&acc)
        })
    }

    proptest! {
        #[test]
        fn no_policy_evicts_twice_or_loses_a_dirty_page(
            ev in arb_events(),
            capacity in 1usize..20,
            which in 0usize..12,
        ) {
            let evictions = ["fifo", "clock", "2q"];
            let prefetches = ["none", "readahead", "stride", "leap"];
            let text = format!(
                "[eviction]\npolicy = \"{}\"\n[prefetch]\npolicy = \"{}\"\n[fetch]\ngranularity_pages = {}\n",
                evictions[which % 3],
                prefetches[which / 3],
                1 << (which % 3),
            );
            let p = profile(&text);
            let mut s = Simulator::new(&p, capacity, Latencies::default());
            let mut written = std::collections::HashSet::new();
            for e in &ev {
                s.access(e);
                if e.kind.is_write() {
                    written.insert(e.page);
                }
                s.check_invariants(&written);
            }
        }
    }
}
