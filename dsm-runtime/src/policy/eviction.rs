//! Eviction policies: which resident page leaves the cache next.
//!
//! A policy is pure bookkeeping: the cache tells it what happens (insert, access, remove)
//! and asks it for candidates; the evictor does the I/O. The same code runs in the
//! runtime and in the offline cache simulator (`dsmrun tune`), so a ranking computed from
//! a trace predicts what the runtime will do.
//!
//! Contract:
//! - `on_insert` is called once when a page becomes resident, `on_remove` once when it
//!   leaves; between them the page is "tracked". Calls for untracked pages are ignored.
//! - `on_access` reports a use of a tracked page that the runtime observed (a fault on a
//!   resident page, or a staged page's first use).
//! - `on_sampled_hit` reports a use of a tracked page that access sampling parked: the
//!   page was idle long enough to reach the victim end of the policy's order, and was
//!   used again anyway. Unlike a fault right after an insert, that is reuse at a
//!   distance. By default it counts as an access.
//! - `select_victims` pushes up to `n` *tracked* pages, best victim first, without
//!   forgetting them: the evictor may skip a candidate it cannot lock, and calls
//!   `on_remove` only for pages it really evicted. A policy never proposes a page twice in
//!   one call.

use crate::space::PageNum;

mod clock;
mod fifo;
mod heat;
mod list;
mod two_q;

pub use clock::Clock;
pub use fifo::Fifo;
pub use heat::Heat;
pub use two_q::{TwoQ, A1IN_PCT_DEFAULT, A1OUT_PCT_DEFAULT};

/// Most entries a policy allocates room for up front. Beyond it, structures grow as pages
/// arrive: a default cache of half the machine's memory would otherwise cost every
/// process, even a short-lived shell, tens of MB at start-up.
pub(crate) const PREALLOC_PAGES_MAX: usize = 1 << 16;

/// Chooses victims among resident pages.
pub trait EvictionPolicy: Send {
    /// The policy's name as profiles spell it.
    fn name(&self) -> &'static str;
    /// `page` became resident (by demand fault, or by prefetch when `prefetched`).
    fn on_insert(&mut self, page: PageNum, prefetched: bool);
    /// `page`, resident, was used.
    fn on_access(&mut self, page: PageNum);
    /// `page`, parked by access sampling, was used again before it was evicted.
    fn on_sampled_hit(&mut self, page: PageNum) {
        self.on_access(page);
    }
    /// `page` left the cache.
    fn on_remove(&mut self, page: PageNum);
    /// Pushes up to `n` victim candidates, best first.
    fn select_victims(&mut self, n: usize, out: &mut Vec<PageNum>);
    /// Number of tracked pages.
    fn len(&self) -> usize;
    /// Whether no page is tracked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, bool),
        Access(u64),
        SampledHit(u64),
        Remove(u64),
        Select(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct pages, so that re-inserts, ghost hits and removals of
        // untracked pages all happen often.
        prop_oneof![
            (0u64..24, any::<bool>()).prop_map(|(p, f)| Op::Insert(p, f)),
            (0u64..24).prop_map(Op::Access),
            (0u64..24).prop_map(Op::SampledHit),
            (0u64..24).prop_map(Op::Remove),
            (0usize..12).prop_map(Op::Select),
        ]
    }

    fn every_policy(capacity: usize) -> Vec<Box<dyn EvictionPolicy>> {
        vec![
            Box::new(Fifo::with_capacity(capacity)),
            Box::new(Clock::with_capacity(capacity)),
            Box::new(Heat::with_capacity(capacity)),
            Box::new(TwoQ::with_capacity(capacity)),
            Box::new(TwoQ::new(capacity, 50, 200)),
        ]
    }

    proptest! {
        #[test]
        fn policies_only_propose_tracked_pages_once_and_count_right(
            capacity in 1usize..16,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            for mut policy in every_policy(capacity) {
                let mut tracked = HashSet::new();
                for op in &ops {
                    match *op {
                        Op::Insert(p, f) => {
                            policy.on_insert(PageNum(p), f);
                            tracked.insert(p);
                        }
                        Op::Access(p) => policy.on_access(PageNum(p)),
                        Op::SampledHit(p) => policy.on_sampled_hit(PageNum(p)),
                        Op::Remove(p) => {
                            policy.on_remove(PageNum(p));
                            tracked.remove(&p);
                        }
                        Op::Select(n) => {
                            // Something already in `out` must be left alone.
                            let mut out = vec![PageNum(u64::MAX)];
                            policy.select_victims(n, &mut out);
                            prop_assert_eq!(out[0], PageNum(u64::MAX));
                            let got = &out[1..];
                            let distinct: HashSet<_> = got.iter().collect();
                            prop_assert_eq!(distinct.len(), got.len(), "{} proposed a page twice", policy.name());
                            for v in got {
                                prop_assert!(tracked.contains(&v.0), "{} proposed untracked {}", policy.name(), v.0);
                            }
                            prop_assert_eq!(got.len(), n.min(tracked.len()), "{} proposed too few", policy.name());
                        }
                    }
                    prop_assert_eq!(policy.len(), tracked.len(), "{} miscounts", policy.name());
                }
            }
        }
    }
}
