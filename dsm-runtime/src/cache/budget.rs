//! The cache budget: how many pages may be local at once (mapped or staged).
//!
//! Which pages they are is the eviction policy's business; the budget only counts, so
//! taking and giving back a page is one atomic operation.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A counting budget of local pages.
#[derive(Debug)]
pub struct CacheBudget {
    capacity: usize,
    used: AtomicUsize,
}

impl CacheBudget {
    /// A budget of `capacity` pages, all free.
    pub fn new(capacity: usize) -> CacheBudget {
        CacheBudget {
            capacity,
            used: AtomicUsize::new(0),
        }
    }

    /// Capacity in pages.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Pages free.
    pub fn free(&self) -> usize {
        self.capacity - self.used()
    }

    /// Takes one page of budget; false when the cache is full.
    pub fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.capacity).then_some(u + 1)
            })
            .is_ok()
    }

    /// Gives one page back.
    pub fn give_back(&self) {
        let prev = self.used.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "cache budget given back more than taken");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_capacity() {
        let b = CacheBudget::new(2);
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take());
        b.give_back();
        assert_eq!(b.free(), 1);
        assert!(b.try_take());
    }
}
