//! Prefetch policies: which pages to fetch along with a demand fault.
//!
//! Pure: a policy sees the stream of demand faults and answers with pages to prefetch;
//! the runtime fetches them asynchronously (the faulting thread never waits for them),
//! stages them locally, and maps them on first use. It also filters the answer: pages
//! already resident, staged or in flight, and pages outside the range, are dropped, so a
//! policy need not track what is cached.
//!
//! Contract: `on_fault` is called for every fault that had to go to a memory node or
//! that hit a staged prefetched page (`hit_prefetched`), in the order the runtime served
//! them; it pushes at most `max` pages into `out`.

use crate::space::PageNum;

mod leap;
mod readahead;
mod stride;

pub use leap::Leap;
pub use readahead::Readahead;
pub use stride::Stride;

/// Decides what to prefetch.
pub trait PrefetchPolicy: Send {
    /// The policy's name as profiles spell it.
    fn name(&self) -> &'static str;
    /// A demand fault on `page`; push up to `max` pages to prefetch.
    fn on_fault(&mut self, page: PageNum, hit_prefetched: bool, max: usize, out: &mut Vec<PageNum>);
}

/// Prefetches nothing.
#[derive(Debug, Default, Clone)]
pub struct NoPrefetch;

impl PrefetchPolicy for NoPrefetch {
    fn name(&self) -> &'static str {
        "none"
    }
    fn on_fault(&mut self, _: PageNum, _: bool, _: usize, _: &mut Vec<PageNum>) {}
}

/// Where a run of prefetches along `delta` from `page` stands: the pages up to
/// `issued_until` were already asked for. Shared by the policies that follow a direction
/// so that each fault only tops the run up instead of re-asking for the same pages.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    delta: i64,
    issued_until: Option<u64>,
    /// Largest window the run was topped up to.
    depth_issued: u64,
}

impl Run {
    /// Forgets what was issued.
    pub(crate) fn reset(&mut self) {
        self.issued_until = None;
        self.depth_issued = 0;
    }

    /// Whether pages were issued since the last reset.
    pub(crate) fn active(&self) -> bool {
        self.issued_until.is_some()
    }

    /// How many steps of `delta` ahead of `page` are already issued (0 when the run
    /// belongs to another direction or is behind).
    pub(crate) fn ahead(&self, page: u64, delta: i64) -> u64 {
        let Some(until) = self.issued_until else {
            return 0;
        };
        if delta != self.delta || delta == 0 {
            return 0;
        }
        let dist = until as i128 - page as i128;
        let d = delta as i128;
        if dist % d != 0 || dist / d <= 0 {
            return 0;
        }
        (dist / d) as u64
    }

    /// Tops the run up to `depth` steps of `delta` past `page`, when fewer than half of
    /// them are issued (batching the requests, like Linux's asynchronous readahead
    /// marker); pushes at most `max` pages. Stops at the ends of the page-number range.
    /// A run further ahead than any window it was issued with is stale (a loop went back
    /// to its start) and restarts from `page`.
    pub(crate) fn top_up(
        &mut self,
        page: u64,
        delta: i64,
        depth: usize,
        max: usize,
        out: &mut Vec<PageNum>,
    ) {
        let mut ahead = self.ahead(page, delta);
        if ahead > self.depth_issued {
            // Further ahead than any window issued it: a run left over from an earlier
            // pass over the same pages (a loop restarted). Start again from here.
            ahead = 0;
        }
        if delta == 0 || ahead > depth as u64 / 2 {
            return;
        }
        for k in (ahead + 1..=depth as u64).take(max) {
            let next = page as i128 + k as i128 * delta as i128;
            let Ok(next) = u64::try_from(next) else { break };
            out.push(PageNum(next));
            self.delta = delta;
            self.issued_until = Some(next);
            self.depth_issued = self.depth_issued.max(depth as u64);
        }
    }
}

/// The signed distance from `from` to `to`, if it fits an `i64`.
pub(crate) fn delta(from: u64, to: u64) -> Option<i64> {
    i64::try_from(to as i128 - from as i128).ok()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Feeds faults `(page, hit_prefetched)` and returns what each one prefetched.
    pub(crate) fn feed(
        p: &mut dyn PrefetchPolicy,
        faults: &[(u64, bool)],
        max: usize,
    ) -> Vec<Vec<u64>> {
        faults
            .iter()
            .map(|&(page, hit)| {
                let mut out = Vec::new();
                p.on_fault(PageNum(page), hit, max, &mut out);
                assert!(out.len() <= max, "{} pushed more than max", p.name());
                out.into_iter().map(|q| q.0).collect()
            })
            .collect()
    }

    /// A fixed pseudo-random fault stream over a million pages.
    pub(crate) fn random_faults(n: usize) -> Vec<(u64, bool)> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1_000_000, false)
            })
            .collect()
    }

    /// Asserts that `p` stays silent on random faults.
    pub(crate) fn silent_on_random(p: &mut dyn PrefetchPolicy) {
        let got = feed(p, &random_faults(5000), 64);
        let noisy = got.iter().filter(|v| !v.is_empty()).count();
        assert_eq!(noisy, 0, "{} prefetched on {noisy} random faults", p.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn every_policy() -> Vec<Box<dyn PrefetchPolicy>> {
        vec![
            Box::new(NoPrefetch),
            Box::new(Readahead::new(2, 32)),
            Box::new(Stride::new(8)),
            Box::new(Leap::new(16, 2, 32)),
        ]
    }

    proptest! {
        #[test]
        fn policies_respect_max_and_never_repeat_or_refetch_the_fault(
            faults in proptest::collection::vec(
                (prop_oneof![0u64..64, (u64::MAX - 64)..=u64::MAX], any::<bool>()), 0..200),
            max in 0usize..12,
        ) {
            for mut p in every_policy() {
                for &(page, hit) in &faults {
                    let mut out = Vec::new();
                    p.on_fault(PageNum(page), hit, max, &mut out);
                    prop_assert!(out.len() <= max, "{}", p.name());
                    let distinct: HashSet<_> = out.iter().collect();
                    prop_assert_eq!(distinct.len(), out.len(), "{} repeated a page", p.name());
                    prop_assert!(!out.contains(&PageNum(page)), "{} prefetched the fault", p.name());
                }
            }
        }
    }
}
