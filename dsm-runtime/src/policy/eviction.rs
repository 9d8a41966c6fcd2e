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
//!   resident page, a staged page's first use, or a sampled reference).
//! - `select_victims` pushes up to `n` *tracked* pages, best victim first, without
//!   forgetting them: the evictor may skip a candidate it cannot lock, and calls
//!   `on_remove` only for pages it really evicted. A policy never proposes a page twice in
//!   one call.

use crate::space::PageNum;

mod clock;

pub use clock::Clock;

/// Chooses victims among resident pages.
pub trait EvictionPolicy: Send {
    /// The policy's name as profiles spell it.
    fn name(&self) -> &'static str;
    /// `page` became resident (by demand fault, or by prefetch when `prefetched`).
    fn on_insert(&mut self, page: PageNum, prefetched: bool);
    /// `page`, resident, was used.
    fn on_access(&mut self, page: PageNum);
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
