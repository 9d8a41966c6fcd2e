//! Eviction: choose victims (CLOCK over the resident set), write dirty ones home, unmap.
//!
//! Ordering that makes "no lost write" hold: a dirty victim is write-protected *before*
//! its bytes are copied, so a thread that writes during eviction blocks in a
//! write-protect fault; the page's lock is held until the page is unmapped and its state
//! says Invalid, so that thread's retried access faults as missing and fetches the copy
//! that was just written home.
//!
//! With the compressed tier on, each victim is first compressed: one that packs small
//! enough stays on this machine ([`super::compressed`]) instead of going home, dirty or
//! not; and when the tier outgrows its share, its oldest copies are demoted here, the
//! dirty ones written home like any dirty victim.

use super::compressed::{pack, PACKED_MAX};
use super::page_table::REGION_PAGES;
use super::{recycle, UnmapBatch};
use crate::coherence::state::{after_compress, after_evict, on_evict, when_zero, EvictAction};
use crate::coherence::{Access, PageState};
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::{Session, WriteOp};
use std::sync::atomic::Ordering;

struct Victim {
    page: PageNum,
    state: PageState,
    action: EvictAction,
    /// Kept in the compressed tier: `(offset, length)` of its copy in `Evictor::packed`.
    packed: Option<(usize, usize)>,
    /// Already write-protected (while being compressed).
    frozen: bool,
    /// Tried and not kept: marked so that it is not tried again.
    rejected: bool,
}

impl Victim {
    fn new(page: PageNum, state: PageState) -> Victim {
        Victim {
            page,
            state,
            action: on_evict(state),
            packed: None,
            frozen: false,
            rejected: false,
        }
    }
}

/// A thread's eviction machinery, with buffers allocated once.
pub struct Evictor {
    batch_max: usize,
    candidates: Vec<PageNum>,
    victims: Vec<Victim>,
    buf: Vec<u8>,
    ops: Vec<WriteOp<'static>>,
    unmap: UnmapBatch,
    /// Pages parked by a sampling round, with their next states, until they are unmapped.
    parked: Vec<(PageNum, PageState)>,
    /// How many of `parked` were dirty.
    parked_dirty: u64,
    /// One page, copied out to be compressed.
    page: Vec<u8>,
    /// The compressed copies of this batch's kept victims, end to end.
    packed: Vec<u8>,
    /// Copies picked for demotion from the compressed tier, locked.
    demoted: Vec<(PageNum, PageState)>,
}

impl Evictor {
    /// Evicts at most `batch_max` pages per call.
    pub fn new(batch_max: usize) -> Evictor {
        Evictor {
            batch_max,
            candidates: Vec::with_capacity(2 * batch_max),
            victims: Vec::with_capacity(batch_max),
            buf: vec![0u8; batch_max * PAGE_BYTES],
            ops: Vec::with_capacity(batch_max),
            unmap: UnmapBatch::new(),
            parked: Vec::new(),
            parked_dirty: 0,
            page: vec![0u8; PAGE_BYTES],
            packed: vec![0u8; batch_max * PAGE_BYTES + PACKED_MAX],
            demoted: Vec::new(),
        }
    }

    /// Evicts up to `want` pages (capped at the batch size); returns how many.
    pub fn evict<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
        want: usize,
    ) -> Result<usize, RuntimeError> {
        let want = want.min(self.batch_max);
        self.select(core, want);
        if self.victims.is_empty() {
            // Nothing mapped or staged can leave: make room from the compressed tier.
            self.select_demotions(core, usize::MAX, want);
            if self.victims.is_empty() {
                return Ok(0);
            }
        }
        core.mark_pages_leaving();
        self.compress(core)?;
        self.write_back(core, session)?;
        self.unmap(core);
        let n = self.victims.len();
        self.victims.clear();
        Ok(n + self.demote_excess(core, session)?)
    }

    /// Evicts those of `pages` that are cached and not locked (without trying the
    /// compressed tier: they leave this machine, the dirty ones written home); returns
    /// how many. For a checkpoint, which writes home the dirty copies that are not
    /// mapped (staged or compressed) this way.
    pub fn evict_pages<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
        pages: &[PageNum],
    ) -> Result<usize, RuntimeError> {
        self.victims.clear();
        for &page in pages.iter().take(self.batch_max) {
            let Some(state) = core.table.try_lock(page) else {
                continue;
            };
            if !state.resident() && state.staged().is_none() && !state.compressed() {
                core.table.unlock(page, state);
                continue;
            }
            self.victims.push(Victim::new(page, state));
        }
        if self.victims.is_empty() {
            return Ok(0);
        }
        core.mark_pages_leaving();
        self.write_back(core, session)?;
        self.unmap(core);
        let n = self.victims.len();
        self.victims.clear();
        Ok(n)
    }

    /// Demotes the compressed tier's oldest copies while it holds more than its share
    /// (the dirty ones written home); returns how many left.
    fn demote_excess<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
    ) -> Result<usize, RuntimeError> {
        let excess = core.compressed.as_ref().map_or(0, |t| t.excess());
        if excess == 0 {
            return Ok(0);
        }
        self.select_demotions(core, excess, self.batch_max);
        if self.victims.is_empty() {
            return Ok(0);
        }
        self.write_back(core, session)?;
        self.unmap(core);
        let n = self.victims.len();
        self.victims.clear();
        Ok(n)
    }

    /// Locks the compressed tier's oldest copies, up to `max` of them or `bytes` of
    /// compressed data, as victims.
    fn select_demotions<E: Effects>(&mut self, core: &Core<E>, bytes: usize, max: usize) {
        let Some(tier) = &core.compressed else {
            return;
        };
        tier.oldest(bytes, max, |p| core.table.try_lock(p), &mut self.demoted);
        for (page, state) in self.demoted.drain(..) {
            self.victims.push(Victim::new(page, state));
        }
    }

    /// Compresses each victim the tier wants; those that pack small enough are marked
    /// kept (their copies wait in `packed` until they are unmapped), the rest go home.
    fn compress<E: Effects>(&mut self, core: &Core<E>) -> Result<(), RuntimeError> {
        let Some(tier) = &core.compressed else {
            return Ok(());
        };
        let start = std::time::Instant::now();
        let (mut off, mut rejected, mut skipped) = (0, 0, 0);
        for v in &mut self.victims {
            if !tier.wants(v.state, v.action) {
                continue;
            }
            if v.state.incompressible() {
                // It did not compress last time: a page's kind of data rarely changes,
                // and trying costs as much as a fetch.
                skipped += 1;
                continue;
            }
            let page = &mut self.page[..];
            match v.action {
                EvictAction::WriteBack | EvictAction::Drop => {
                    let addr = core.layout.addr_of(v.page);
                    if v.action == EvictAction::WriteBack {
                        // Freeze it first, as for a write-back: writers now wait.
                        core.write_protect(addr, PAGE_BYTES, true, true)?;
                        v.frozen = true;
                    }
                    // SAFETY: a mapped page we hold locked, write-protected (a clean page
                    // is mapped write-protected): nobody changes it during the copy.
                    unsafe { core.read_page(addr, page) };
                }
                EvictAction::WriteBackStaged | EvictAction::DropStaged => {
                    let slot = v.state.staged().expect("a staged victim has a slot");
                    // SAFETY: we hold the page's lock, which owns its staging slot.
                    page.copy_from_slice(unsafe { core.staging.slot_mut(slot) });
                }
                EvictAction::DropCompressed | EvictAction::WriteBackCompressed => continue,
            }
            if !v.state.home_valid() && page.iter().all(|&b| b == 0) {
                continue; // dropped for free: a zero-fill recreates it
            }
            let n = pack(page, &mut self.packed[off..off + PACKED_MAX]);
            if tier.keeps(n) {
                v.packed = Some((off, n));
                off += n;
            } else {
                v.rejected = true;
                rejected += 1;
            }
        }
        let st = &core.stats;
        st.compress_rejected.fetch_add(rejected, Ordering::Relaxed);
        st.compress_skipped.fetch_add(skipped, Ordering::Relaxed);
        st.compress_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Access sampling: parks up to `n` of the pages the policy would evict next in the
    /// staging tier (copy out, unmap). A page used again soon traps into a cheap local
    /// install that reports the use to the policy, which then keeps it; one not used is
    /// evicted later: at no cost if it was clean, with a write-back from its slot if it
    /// was dirty. Dirty pages are parked too (write-protected before the copy, so no
    /// write slips in between): on a program that writes what it uses, most victims are
    /// dirty, and skipping them would leave the policy blind to most of its choices.
    /// Returns the pages parked.
    pub fn sample<E: Effects>(&mut self, core: &Core<E>, n: usize) -> Result<usize, RuntimeError> {
        let start = std::time::Instant::now();
        self.candidates.clear();
        core.eviction().select_victims(n, &mut self.candidates);
        self.parked.clear();
        if !self.candidates.is_empty() {
            core.mark_pages_leaving();
        }
        for &page in &self.candidates {
            let Some(state) = core.table.try_lock(page) else {
                continue;
            };
            let dirty = match state.access() {
                Access::Shared => false,
                Access::Exclusive => true,
                Access::Invalid => {
                    core.table.unlock(page, state);
                    continue;
                }
            };
            let Some(slot) = core.staging.alloc() else {
                core.table.unlock(page, state);
                break;
            };
            let addr = core.layout.addr_of(page);
            if dirty {
                // Freeze it: from here a writer waits in a write-protect fault, which
                // finds the page locked and retries once it is parked.
                if let Err(e) = core.write_protect(addr, PAGE_BYTES, true, true) {
                    core.staging.release(slot);
                    core.table.unlock(page, state);
                    // The pages parked so far are copied and locked: finish them first.
                    self.finish_parking(core, start);
                    return Err(e);
                }
            }
            // SAFETY: we popped `slot`, so we own it; the page is mapped write-protected
            // and locked by us, so its bytes are stable while we copy them.
            unsafe { core.read_page(addr, core.staging.slot_mut(slot)) };
            self.unmap.push(core, page, 1);
            let invalid = state.with_access(Access::Invalid);
            let staged = if dirty {
                invalid.with_staged_dirty(slot)
            } else {
                invalid.with_staged(slot)
            };
            let next = staged
                .with_prefetched(false)
                .with_referenced(false)
                .with_busy(false);
            self.parked.push((page, next));
            self.parked_dirty += u64::from(dirty);
        }
        Ok(self.finish_parking(core, start))
    }

    /// Unmaps the pages parked by a sampling round in one call, then publishes their
    /// states (until then each stays locked); returns how many.
    fn finish_parking<E: Effects>(&mut self, core: &Core<E>, start: std::time::Instant) -> usize {
        self.unmap.flush(&core.fx);
        let parked = self.parked.len();
        for &(page, next) in &self.parked {
            core.table.unlock(page, next);
        }
        self.parked.clear();
        let st = &core.stats;
        st.sampled_pages.fetch_add(parked as u64, Ordering::Relaxed);
        st.sampled_dirty_pages
            .fetch_add(std::mem::take(&mut self.parked_dirty), Ordering::Relaxed);
        st.sampling_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        parked
    }

    /// Asks the eviction policy for candidates and locks those nobody else holds.
    /// Candidates the policy still tracks but that are no longer cached (state changed
    /// behind its back) are forgotten.
    fn select<E: Effects>(&mut self, core: &Core<E>, want: usize) {
        self.victims.clear();
        self.candidates.clear();
        core.eviction()
            .select_victims(2 * want, &mut self.candidates);
        for &page in &self.candidates {
            if self.victims.len() >= want {
                break;
            }
            if core.table.is_huge(page) {
                match take_region(core, page, &mut self.victims) {
                    Region::Taken | Region::Kept => continue,
                    Region::Split => {}
                }
            }
            let Some(state) = core.table.try_lock(page) else {
                continue;
            };
            if !state.resident() && state.staged().is_none() {
                core.table.unlock(page, state);
                core.eviction().on_remove(page);
                continue;
            }
            self.victims.push(Victim::new(page, state));
        }
    }

    fn write_back<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
    ) -> Result<(), RuntimeError> {
        let mut dirty = 0;
        let mut zero = 0;
        for v in &mut self.victims {
            if v.packed.is_some() {
                continue; // stays on this machine, compressed
            }
            let dst = &mut self.buf[dirty * PAGE_BYTES..(dirty + 1) * PAGE_BYTES];
            match v.action {
                EvictAction::WriteBack => {
                    let addr = core.layout.addr_of(v.page);
                    // Freeze the page first: from here writers wait in a write-protect fault.
                    if !v.frozen {
                        core.write_protect(addr, PAGE_BYTES, true, true)?;
                    }
                    // SAFETY: a mapped, write-protected page of the global range that we
                    // hold locked: nobody can change it during the copy.
                    unsafe { core.read_page(addr, dst) };
                }
                EvictAction::WriteBackStaged => {
                    let slot = v.state.staged().expect("staged dirty has a slot");
                    // SAFETY: we hold the page's lock, which owns its staging slot.
                    dst.copy_from_slice(unsafe { core.staging.slot_mut(slot) });
                }
                EvictAction::WriteBackCompressed => {
                    let tier = core.compressed.as_ref().expect("a compressed victim");
                    tier.read(v.page, dst);
                }
                EvictAction::Drop | EvictAction::DropStaged | EvictAction::DropCompressed => {
                    continue
                }
            }
            if !v.state.home_valid() && dst.iter().all(|&b| b == 0) {
                v.action = when_zero(v.state, v.action);
                zero += 1;
                continue;
            }
            dirty += 1;
        }
        core.stats.evictions_zero.fetch_add(zero, Ordering::Relaxed);
        if dirty == 0 {
            return Ok(());
        }
        let mut ops: Vec<WriteOp<'_>> = recycle(std::mem::take(&mut self.ops));
        let mut chunks = self.buf.chunks_exact(PAGE_BYTES);
        for v in self
            .victims
            .iter()
            .filter(|v| v.action.writes_back() && v.packed.is_none())
        {
            let home = core.placement.home(v.page);
            if let (Some(pool), false) = (&core.pool, v.state.home_valid()) {
                // Its first trip home: the page takes memory on its homes from now on.
                for h in core.placement.homes(v.page).as_slice() {
                    pool.reserve(session, h.node, 1)?;
                }
            }
            ops.push(WriteOp {
                node: home.node,
                offset: home.offset,
                data: chunks.next().expect("one buffer per dirty victim"),
            });
        }
        let res = session.write_batch(&ops);
        for op in &ops {
            core.stats.node_traffic.write(op.node.0, op.data.len());
        }
        self.ops = recycle(ops);
        res.map_err(RuntimeError::Transport)?;
        let st = &core.stats;
        st.remote_write_pages
            .fetch_add(dirty as u64, Ordering::Relaxed);
        st.remote_write_bytes
            .fetch_add((dirty * PAGE_BYTES) as u64, Ordering::Relaxed);
        st.remote_write_batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unmap<E: Effects>(&mut self, core: &Core<E>) {
        // Unmap every mapped victim in one batch (adjacent pages merged into runs); staged
        // pages have nothing mapped.
        self.victims
            .sort_unstable_by_key(|v| (!v.action.unmaps(), v.page));
        let mapped = self
            .victims
            .iter()
            .take_while(|v| v.action.unmaps())
            .count();
        let mut i = 0;
        while i < mapped {
            let mut j = i + 1;
            while j < mapped && self.victims[j].page.0 == self.victims[j - 1].page.0 + 1 {
                j += 1;
            }
            let first = self.victims[i].page;
            // A whole region leaves with one drop: moving its pages out one by one to
            // recycle them would split its huge page.
            let kept = match j - i >= REGION_PAGES as usize {
                true => recycle_regions(core, first, j - i, &mut self.unmap),
                false => recycle_run(core, first, j - i),
            };
            if kept < j - i {
                self.unmap
                    .push(core, PageNum(first.0 + kept as u64), j - i - kept);
            }
            i = j;
        }
        self.unmap.flush(&core.fx);
        let st = &core.stats;
        let mut policy = core.eviction();
        for v in &self.victims {
            policy.on_remove(v.page);
        }
        drop(policy);
        for v in &self.victims {
            if let Some(slot) = v.state.staged() {
                core.staging.release(slot);
                st.prefetch_unused
                    .fetch_add(u64::from(v.state.prefetched()), Ordering::Relaxed);
            } else if v.state.prefetched() {
                st.prefetch_ahead_evicted.fetch_add(1, Ordering::Relaxed);
            }
            if v.action.demotes() {
                self.finish_demotion(core, v);
                continue;
            }
            st.evictions.fetch_add(1, Ordering::Relaxed);
            if !v.action.writes_back() {
                st.evictions_clean.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((off, len)) = v.packed {
                // Its page of budget goes to the tier, which keeps what the copy needs.
                let tier = core.compressed.as_ref().expect("kept by the tier");
                tier.insert(v.page, &self.packed[off..off + len], &core.budget);
                core.table.unlock(v.page, after_compress(v.state, v.action));
                st.compressed_in_pages.fetch_add(1, Ordering::Relaxed);
                st.compressed_in_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                st.compressed_in_dirty
                    .fetch_add(u64::from(v.action.writes_back()), Ordering::Relaxed);
                continue;
            }
            let mut next = after_evict(v.state, v.action);
            if v.rejected {
                next = next.with_incompressible(true);
            }
            core.table.unlock(v.page, next);
            core.budget.give_back();
        }
        super::zap_empty_regions(core, self.victims.iter().map(|v| v.page));
        st.resident_pages
            .store(core.budget.used() as u64, Ordering::Relaxed);
    }

    /// A copy demoted from the compressed tier (written home already if dirty): dropped,
    /// with the budget it no longer needs.
    fn finish_demotion<E: Effects>(&self, core: &Core<E>, v: &Victim) {
        let tier = core.compressed.as_ref().expect("a compressed victim");
        tier.remove(v.page, &core.budget);
        core.table.unlock(v.page, after_evict(v.state, v.action));
        let counter = if v.action.writes_back() {
            &core.stats.compressed_demoted_dirty
        } else {
            &core.stats.compressed_demoted_clean
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What eviction did with a candidate in a region moved in as one huge page.
enum Region {
    /// Every page of the region taken as a victim.
    Taken,
    /// None: the program has just entered the region (the candidate is not evicted).
    Kept,
    /// None: the region is no longer whole, the candidate goes alone.
    Split,
}

/// Takes every page of `page`'s region, moved in as one huge page, as victims, so
/// that it leaves with one 2 MiB drop instead of splitting the huge page: if each is
/// mapped, clean and free, and the compressed tier is off (its buffers hold a batch).
/// Keeps the region the program has just entered (a policy may well rank its pages, not
/// yet read, coldest of all). Otherwise notes the region as no longer whole and takes
/// nothing.
fn take_region<E: Effects>(core: &Core<E>, page: PageNum, victims: &mut Vec<Victim>) -> Region {
    let first = page.0 / REGION_PAGES * REGION_PAGES;
    if core.staging.regions().is_some_and(|r| r.is_newest(first)) {
        return Region::Kept;
    }
    let start = victims.len();
    for p in (first..first + REGION_PAGES).map(PageNum) {
        let taken = match core.table.try_lock(p) {
            Some(s) if s.resident() && on_evict(s) == EvictAction::Drop => Some(s),
            Some(s) => {
                core.table.unlock(p, s);
                None
            }
            None => None,
        };
        match taken {
            Some(s) if core.compressed.is_none() => victims.push(Victim::new(p, s)),
            other => {
                if let Some(s) = other {
                    core.table.unlock(p, s);
                }
                for v in victims.drain(start..) {
                    core.table.unlock(v.page, v.state);
                }
                core.table.clear_huge(page);
                return Region::Split;
            }
        }
    }
    core.stats
        .regions_evicted_whole
        .fetch_add(1, Ordering::Relaxed);
    Region::Taken
}

/// The `n` victims from `first` cover whole regions mapped as one huge page each (and
/// maybe pages around them): moves each such region out into a free region run, whole,
/// to be filled by the next region fetched, and queues what did not move (and the pages
/// around) on `unmap`. Returns `n`: the caller queues nothing.
fn recycle_regions<E: Effects>(
    core: &Core<E>,
    first: PageNum,
    n: usize,
    unmap: &mut UnmapBatch,
) -> usize {
    let regions = REGION_PAGES as usize;
    let mut p = first.0;
    let end = first.0 + n as u64;
    while p < end {
        let whole = p % REGION_PAGES == 0 && p + REGION_PAGES <= end;
        let moved = whole
            && core
                .staging
                .regions()
                .is_some_and(|r| r.take_back(&core.fx, core.layout.addr_of(PageNum(p))));
        let len = if whole { regions } else { 1 };
        if moved {
            core.stats.regions_recycled.fetch_add(1, Ordering::Relaxed);
        } else {
            unmap.push(core, PageNum(p), len);
        }
        p += len as u64;
    }
    n
}

/// Moves as many of the `n` victims from `first` (written home if dirty, locked) as the
/// spare pages have room for out of the range, to be recycled for prefetched pages
/// instead of freed; returns how many, from the first (the rest are the caller's to drop).
fn recycle_run<E: Effects>(core: &Core<E>, first: PageNum, n: usize) -> usize {
    let Some(spares) = &core.spares else {
        return 0;
    };
    let (tried, moved) = spares.take(&core.fx, core.layout.addr_of(first), n);
    let st = &core.stats;
    st.recycled_out.fetch_add(moved as u64, Ordering::Relaxed);
    st.recycle_refused
        .fetch_add((tried - moved) as u64, Ordering::Relaxed);
    moved
}
