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
