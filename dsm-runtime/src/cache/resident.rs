//! The resident set: which pages occupy the local cache, in a fixed array of slots sized
//! by the cache budget at start-up, so inserting never allocates.

use crate::space::PageNum;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

const EMPTY: u64 = u64::MAX;

/// Slot index in the resident set.
pub type Slot = u32;

/// Fixed-capacity set of resident pages.
#[derive(Debug)]
pub struct ResidentSet {
    slots: Box<[AtomicU64]>,
    free: Mutex<Vec<Slot>>,
    free_count: AtomicUsize,
    hand: AtomicUsize,
}

impl ResidentSet {
    /// A set of `capacity` slots, all free.
    pub fn new(capacity: usize) -> ResidentSet {
        ResidentSet {
            slots: (0..capacity).map(|_| AtomicU64::new(EMPTY)).collect(),
            free: Mutex::new((0..capacity as Slot).rev().collect()),
            free_count: AtomicUsize::new(capacity),
            hand: AtomicUsize::new(0),
        }
    }

    /// Capacity in pages.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Free slots now.
    pub fn free(&self) -> usize {
        self.free_count.load(Ordering::Acquire)
    }

    /// Pages resident now.
    pub fn len(&self) -> usize {
        self.capacity() - self.free()
    }

    /// Whether no page is resident.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a free slot for `page`; `None` when the cache is full.
    pub fn insert(&self, page: PageNum) -> Option<Slot> {
        let slot = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        self.free_count.fetch_sub(1, Ordering::AcqRel);
        let prev = self.slots[slot as usize].swap(page.0, Ordering::AcqRel);
        debug_assert_eq!(prev, EMPTY, "slot {slot} handed out twice");
        Some(slot)
    }

    /// Frees `slot`, which must hold `page`.
    pub fn remove(&self, slot: Slot, page: PageNum) {
        let prev = self.slots[slot as usize].swap(EMPTY, Ordering::AcqRel);
        assert_eq!(prev, page.0, "slot {slot} did not hold page {}", page.0);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(free.len() < self.slots.len());
        free.push(slot);
        self.free_count.fetch_add(1, Ordering::AcqRel);
    }

    /// The page in `slot`, if any.
    pub fn get(&self, slot: Slot) -> Option<PageNum> {
        let v = self.slots[slot as usize].load(Ordering::Acquire);
        (v != EMPTY).then_some(PageNum(v))
    }

    /// Advances the shared clock hand; returns the slot it pointed at.
    pub fn tick(&self) -> Slot {
        (self.hand.fetch_add(1, Ordering::Relaxed) % self.slots.len()) as Slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_to_capacity_and_recycles_slots() {
        let r = ResidentSet::new(3);
        let a = r.insert(PageNum(10)).unwrap();
        let _b = r.insert(PageNum(11)).unwrap();
        let _c = r.insert(PageNum(12)).unwrap();
        assert!(r.insert(PageNum(13)).is_none());
        assert_eq!(r.len(), 3);
        r.remove(a, PageNum(10));
        assert_eq!(r.get(a), None);
        let d = r.insert(PageNum(13)).unwrap();
        assert_eq!(d, a);
        assert_eq!(r.get(d), Some(PageNum(13)));
    }
}
