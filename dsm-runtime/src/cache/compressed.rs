//! The compressed tier: pages leaving the mapped cache kept on this machine as lz4 copies.
//!
//! Eviction compresses each victim the policy lets in ([`Compressed::wants`]); a page
//! that shrinks to at most `keep_max` bytes stays here instead of going home (a dirty one
//! stays dirty: its state says so, see [`crate::coherence::state`]), one that does not
//! goes home as before. A fault on a kept page decompresses it locally: no network.
//!
//! The tier counts in the cache budget at its compressed size: it holds
//! `ceil(bytes / PAGE_BYTES)` pages of budget. A victim hands its page of budget to the
//! tier, which gives back what its copy does not need; a copy leaving gives back what the
//! tier no longer needs. When the copies exceed `max_bytes` (the share of the cache the
//! profile allows), the oldest leave first: [`Compressed::oldest`] picks them for the
//! evictor, which writes the dirty ones home (a demotion) before dropping them.
//!
//! An entry belongs to whoever holds the lock of its page, like a staging slot: it is
//! inserted, read and removed only under that lock. The map and the order are behind one
//! mutex, held for map operations only; compression runs outside it.

use super::CacheBudget;
use crate::coherence::state::EvictAction;
use crate::coherence::PageState;
use crate::space::{PageNum, PAGE_BYTES};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Largest lz4 output for a page (incompressible input grows a little).
pub const PACKED_MAX: usize = lz4_flex::block::get_maximum_output_size(PAGE_BYTES);

/// The compressed copies, their order of arrival and the budget they hold.
pub struct Compressed {
    inner: Mutex<Inner>,
    /// Most compressed bytes kept before the oldest are demoted.
    max_bytes: usize,
    /// A page is kept only if it compresses to at most this many bytes.
    keep_max: usize,
}

#[derive(Default)]
struct Inner {
    /// Page number to (generation, lz4 block).
    entries: HashMap<u64, (u64, Box<[u8]>)>,
    /// Pages in order of arrival, with the generation they arrived with; an entry whose
    /// generation differs (the page left and came back) is stale and skipped.
    order: VecDeque<(u64, u64)>,
    next_gen: u64,
    /// Sum of the entries' lengths.
    bytes: usize,
    /// Pages of cache budget held for `bytes`.
    held: usize,
}

impl Inner {
    /// Gives back the budget the copies no longer need.
    fn release_surplus(&mut self, budget: &CacheBudget) {
        let need = self.bytes.div_ceil(PAGE_BYTES);
        while self.held > need {
            self.held -= 1;
            budget.give_back();
        }
    }
}

/// Compresses a page into `out` (at least [`PACKED_MAX`] bytes); returns the length.
pub fn pack(page: &[u8], out: &mut [u8]) -> usize {
    lz4_flex::block::compress_into(page, out).expect("PACKED_MAX bounds lz4's output")
}

impl Compressed {
    /// A tier of at most `max_bytes`, keeping pages that shrink to `keep_max` bytes.
    pub fn new(max_bytes: usize, keep_max: usize) -> Compressed {
        Compressed {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            keep_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a victim about to leave by `action` should be tried: anything on its way
    /// out except a prefetched page never used (no sign it will be wanted) and what is
    /// already compressed.
    pub fn wants(&self, state: PageState, action: EvictAction) -> bool {
        let unused_prefetch = action == EvictAction::DropStaged && state.prefetched();
        !(action.demotes() || unused_prefetch)
    }

    /// Whether a page that packed to `len` bytes is worth keeping.
    pub fn keeps(&self, len: usize) -> bool {
        len <= self.keep_max
    }

    /// Keeps `packed` for `page`, taking over one page of `budget` from the victim and
    /// giving back what the copy does not need. The caller holds the page's lock.
    pub fn insert(&self, page: PageNum, packed: &[u8], budget: &CacheBudget) {
        let mut inner = self.lock();
        let gen = inner.next_gen;
        inner.next_gen += 1;
        let old = inner.entries.insert(page.0, (gen, packed.into()));
        debug_assert!(old.is_none(), "page {} compressed twice", page.0);
        inner.order.push_back((page.0, gen));
        inner.bytes += packed.len();
        inner.held += 1;
        inner.release_surplus(budget);
        if inner.order.len() > 2 * inner.entries.len() + 1024 {
            // Pages that left and came back leave stale marks; sweep them now and then.
            let Inner { order, entries, .. } = &mut *inner;
            order.retain(|(p, g)| entries.get(p).is_some_and(|e| e.0 == *g));
        }
    }

    /// Decompresses `page`'s copy into `dst` (one page), leaving it in place. The caller
    /// holds the page's lock and its state says compressed.
    pub fn read(&self, page: PageNum, dst: &mut [u8]) {
        let inner = self.lock();
        let (_, packed) = inner
            .entries
            .get(&page.0)
            .expect("a compressed page has an entry");
        let n = lz4_flex::block::decompress_into(packed, dst)
            .expect("a block this tier compressed decompresses");
        assert_eq!(n, PAGE_BYTES, "a compressed page decompresses to one page");
    }

    /// Drops `page`'s copy and gives back the budget no longer needed. The caller holds
    /// the page's lock.
    pub fn remove(&self, page: PageNum, budget: &CacheBudget) {
        let mut inner = self.lock();
        let (_, packed) = inner
            .entries
            .remove(&page.0)
            .expect("a compressed page has an entry");
        inner.bytes -= packed.len();
        inner.release_surplus(budget);
    }

    /// Bytes over the tier's share of the cache (0 when within it).
    pub fn excess(&self) -> usize {
        self.lock().bytes.saturating_sub(self.max_bytes)
    }

    /// Locks up to `max` of the oldest pages with a copy (through `try_lock`, which
    /// answers their state or `None` if someone holds the page) and appends them to
    /// `out`, stopping once their copies add up to `bytes`. A page someone holds is
    /// skipped and moves to the back.
    pub fn oldest(
        &self,
        bytes: usize,
        max: usize,
        mut try_lock: impl FnMut(PageNum) -> Option<PageState>,
        out: &mut Vec<(PageNum, PageState)>,
    ) {
        let mut inner = self.lock();
        let (mut freed, mut skipped, mut taken) = (0, 0, 0);
        while freed < bytes && taken < max && skipped < inner.order.len() {
            let Some((p, gen)) = inner.order.pop_front() else {
                break;
            };
            let Some(len) = inner
                .entries
                .get(&p)
                .filter(|e| e.0 == gen)
                .map(|e| e.1.len())
            else {
                continue; // stale
            };
            match try_lock(PageNum(p)) {
                Some(state) => {
                    debug_assert!(state.compressed(), "page {p} has a copy: {state:?}");
                    out.push((PageNum(p), state));
                    freed += len;
                    taken += 1;
                }
                None => {
                    inner.order.push_back((p, gen));
                    skipped += 1;
                }
            }
        }
    }

    /// (pages, bytes, budget pages held) now.
    pub fn usage(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes, inner.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(byte: u8) -> Vec<u8> {
        let mut p = vec![byte; PAGE_BYTES];
        p[..8].copy_from_slice(&u64::from(byte).to_le_bytes());
        p
    }

    #[test]
    fn copies_hold_budget_at_their_compressed_size() {
        let budget = CacheBudget::new(8);
        let tier = Compressed::new(PAGE_BYTES, PAGE_BYTES / 2);
        let mut out = vec![0; PACKED_MAX];
        for i in 0..4u8 {
            assert!(budget.try_take(), "the victim's page");
            let n = pack(&page_of(i), &mut out);
            assert!(tier.keeps(n), "a page of one byte value packs small ({n})");
            tier.insert(PageNum(u64::from(i)), &out[..n], &budget);
        }
        // Four tiny copies fit in one page of budget.
        assert_eq!(budget.used(), 1);
        assert_eq!(tier.usage().2, 1);
        let mut back = vec![0; PAGE_BYTES];
        tier.read(PageNum(2), &mut back);
        assert_eq!(back, page_of(2));
        for i in 0..4 {
            tier.remove(PageNum(i), &budget);
        }
        assert_eq!((budget.used(), tier.usage()), (0, (0, 0, 0)));
    }

    #[test]
    fn random_bytes_are_not_kept() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let page: Vec<u8> = (0..PAGE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let tier = Compressed::new(PAGE_BYTES, PAGE_BYTES / 2);
        let mut out = vec![0; PACKED_MAX];
        assert!(!tier.keeps(pack(&page, &mut out)));
    }

    #[test]
    fn the_oldest_leave_first_and_held_pages_are_skipped() {
        let budget = CacheBudget::new(8);
        let tier = Compressed::new(0, PAGE_BYTES);
        let mut out = vec![0; PACKED_MAX];
        for i in 0..3u8 {
            assert!(budget.try_take());
            let n = pack(&page_of(i), &mut out);
            tier.insert(PageNum(u64::from(i)), &out[..n], &budget);
        }
        let compressed = PageState::UNTOUCHED.with_compressed(false);
        let mut picked = Vec::new();
        // Page 0 is held by someone: it is skipped, and 1 and 2 are taken.
        tier.oldest(
            usize::MAX,
            2,
            |p| (p.0 != 0).then_some(compressed),
            &mut picked,
        );
        assert_eq!(
            picked.iter().map(|e| e.0 .0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(tier.excess() > 0);
    }
}
