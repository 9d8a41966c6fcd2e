//! Writing a quiesced process's mapped dirty pages home in large batches, then either
//! dropping every mapped page (a suspend) or keeping them all, clean (a checkpoint).
//!
//! The ordinary eviction path costs, per page, a write-protect call (with its TLB
//! flush), a copy into a buffer and the unmapping; a suspend of a 1 GiB cache spent
//! seconds that way. Here a batch of pages (address-ordered, since the table's pages are
//! sorted) is locked at once and write-protected with one call per run of adjacent
//! mapped pages; the dirty ones are then written home straight from their mapped
//! addresses (no copy) and the batch is unmapped with one call per run.
//!
//! Why no write is lost: the program's threads may be running (a suspend does not stop
//! them), but a page is written home only once write-protected, and the protection is
//! in place when the call returns (the kernel flushes the TLB before it returns). A
//! thread that writes it afterwards takes a write-protect fault, which waits behind the
//! closed gate ([`super::Gate`]) until the resume; by then the page is unmapped and its
//! retried access fetches what was written home (a suspend), or the page is clean and
//! write-protected, so the write marks it dirty anew (a checkpoint). The page's lock is
//! held from before the protection until its next state is published.

use crate::cache::{zap_empty_regions, UnmapBatch};
use crate::coherence::state::{after_evict, after_write_home, EvictAction};
use crate::coherence::{Access, PageState};
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::{Session, WriteOp};
use std::sync::atomic::Ordering;

/// Pages locked, written home and unmapped per batch (16 MiB).
pub(super) const BATCH_PAGES: usize = 4096;

/// What becomes of the mapped pages once the dirty ones are home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Unmapped and dropped: the memory goes back to the host (a suspend).
    Drop,
    /// Kept mapped, clean and write-protected (a checkpoint: the program goes on with
    /// its cache).
    Keep,
}

/// Where a dirty page's bytes are read from for its write home.
#[derive(Clone, Copy)]
enum Source {
    /// In place, at its mapped address.
    Mapped(usize),
    /// Copied into `Flusher::copies` at this page index (the simulator, or a page the
    /// program made unreadable).
    Copy(usize),
}

/// One batch's buffers.
pub(super) struct Flusher {
    locked: Vec<(PageNum, PageState)>,
    /// Per locked page: written home (so its home now holds it).
    homed: Vec<bool>,
    dirty: Vec<(PageNum, Source)>,
    copies: Vec<u8>,
    unmap: UnmapBatch,
}

impl Flusher {
    pub(super) fn new() -> Flusher {
        Flusher {
            locked: Vec::with_capacity(BATCH_PAGES),
            homed: Vec::with_capacity(BATCH_PAGES),
            dirty: Vec::with_capacity(BATCH_PAGES),
            copies: Vec::new(),
            unmap: UnmapBatch::new(),
        }
    }

    /// Handles the mapped pages among `pages` (address-ordered) that nobody holds
    /// locked: write-protects them, writes the dirty ones home, and drops or keeps them.
    /// Returns how many it handled.
    pub(super) fn batch<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
        pages: &[PageNum],
        release: Release,
    ) -> Result<u64, RuntimeError> {
        self.lock(core, pages);
        if self.locked.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.protect(core) {
            self.give_up(core);
            return Err(e);
        }
        if let Err(e) = self.write_home(core, session) {
            // Protected but not home: they stay dirty (and writable again).
            self.give_up(core);
            return Err(e);
        }
        let pages = self.locked.len() as u64;
        match release {
            Release::Keep => self.keep(core),
            Release::Drop => self.drop_all(core),
        }
        Ok(pages)
    }

    /// Locks the mapped pages of `pages` that nobody holds.
    fn lock<E: Effects>(&mut self, core: &Core<E>, pages: &[PageNum]) {
        self.locked.clear();
        for &page in pages {
            let Some(state) = core.table.try_lock(page) else {
                continue;
            };
            if state.resident() {
                self.locked.push((page, state));
            } else {
                core.table.unlock(page, state);
            }
        }
    }

    /// The runs of adjacent locked pages, as (index of the first, length).
    fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            if i >= self.locked.len() {
                return None;
            }
            let start = i;
            i += 1;
            while i < self.locked.len() && self.locked[i].0 .0 == self.locked[i - 1].0 .0 + 1 {
                i += 1;
            }
            Some((start, i - start))
        })
    }

    /// Write-protects every run that holds a dirty page, one call per run (clean pages
    /// are protected already; protecting them again changes nothing).
    fn protect<E: Effects>(&self, core: &Core<E>) -> Result<(), RuntimeError> {
        for (first, n) in self.runs() {
            let run = &self.locked[first..first + n];
            if run.iter().all(|(_, s)| s.access() != Access::Exclusive) {
                continue;
            }
            let addr = core.layout.addr_of(run[0].0);
            core.write_protect(addr, n * PAGE_BYTES, true, true)?;
        }
        Ok(())
    }

    /// Writes the dirty locked pages home in one batch; returns how many. A page never
    /// homed that holds only zeros stays off the wire (a zero-fill recreates it).
    fn write_home<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
    ) -> Result<u64, RuntimeError> {
        self.homed.clear();
        self.homed.resize(self.locked.len(), false);
        self.dirty.clear();
        let mut copies = 0;
        let in_place = core.fx.reads_in_place();
        for (i, &(page, state)) in self.locked.iter().enumerate() {
            if state.access() != Access::Exclusive {
                continue;
            }
            let addr = core.layout.addr_of(page);
            let source = if in_place && !core.protected.unreadable(addr) {
                Source::Mapped(addr)
            } else {
                self.copies.resize((copies + 1) * PAGE_BYTES, 0);
                let dst = &mut self.copies[copies * PAGE_BYTES..(copies + 1) * PAGE_BYTES];
                // SAFETY: a mapped page we hold locked and have write-protected: nobody
                // changes it during the copy.
                unsafe { core.read_page(addr, dst) };
                copies += 1;
                Source::Copy(copies - 1)
            };
            if !state.home_valid() && self.bytes(source).iter().all(|&b| b == 0) {
                core.stats.evictions_zero.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.homed[i] = true;
            self.dirty.push((page, source));
        }
        if self.dirty.is_empty() {
            return Ok(0);
        }
        self.send(core, session)?;
        Ok(self.dirty.len() as u64)
    }

    /// The bytes of a dirty page.
    fn bytes(&self, source: Source) -> &[u8] {
        match source {
            // SAFETY: a mapped, readable page of the global range that the caller holds
            // locked and write-protected: it stays mapped and unchanged while borrowed
            // (the borrow ends before the page is unlocked or unmapped).
            Source::Mapped(addr) => unsafe {
                std::slice::from_raw_parts(addr as *const u8, PAGE_BYTES)
            },
            Source::Copy(i) => &self.copies[i * PAGE_BYTES..(i + 1) * PAGE_BYTES],
        }
    }

    /// Sends the dirty pages home in one batch of writes.
    fn send<E: Effects>(
        &self,
        core: &Core<E>,
        session: &mut dyn Session,
    ) -> Result<(), RuntimeError> {
        let mut ops: Vec<WriteOp<'_>> = Vec::with_capacity(self.dirty.len());
        for &(page, source) in &self.dirty {
            let state = core.table.get(page);
            if let (Some(pool), false) = (&core.pool, state.home_valid()) {
                // Its first trip home: the page takes memory on its homes from now on.
                for h in core.placement.homes(page).as_slice() {
                    pool.reserve(session, h.node, 1)?;
                }
            }
            let home = core.placement.home(page);
            ops.push(WriteOp {
                node: home.node,
                offset: home.offset,
                data: self.bytes(source),
            });
        }
        // In the order of the nodes' regions: a run of pages that continue one another
        // in a region goes in one system call (`transport::shm`).
        ops.sort_unstable_by_key(|op| (op.node.0, op.offset));
        let res = session.write_batch(&ops);
        for op in &ops {
            core.stats.node_traffic.write(op.node.0, op.data.len());
        }
        res.map_err(RuntimeError::Transport)?;
        let st = &core.stats;
        let n = ops.len() as u64;
        st.remote_write_pages.fetch_add(n, Ordering::Relaxed);
        st.remote_write_bytes
            .fetch_add(n * PAGE_BYTES as u64, Ordering::Relaxed);
        st.remote_write_batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the kept pages: clean and write-protected.
    fn keep<E: Effects>(&mut self, core: &Core<E>) {
        for (&(page, state), &homed) in self.locked.iter().zip(&self.homed) {
            let next = if state.access() == Access::Exclusive {
                after_write_home(state, homed)
            } else {
                state.with_busy(false)
            };
            core.table.unlock(page, next);
        }
        self.locked.clear();
    }

    /// Unmaps the batch (one range per run) and publishes the pages as evicted.
    fn drop_all<E: Effects>(&mut self, core: &Core<E>) {
        core.mark_pages_leaving();
        let runs: Vec<(usize, usize)> = self.runs().collect();
        for (first, n) in runs {
            self.unmap.push(core, self.locked[first].0, n);
        }
        self.unmap.flush(&core.fx);
        let st = &core.stats;
        let mut policy = core.eviction();
        for &(page, _) in &self.locked {
            policy.on_remove(page);
        }
        drop(policy);
        for (&(page, state), &homed) in self.locked.iter().zip(&self.homed) {
            let action = if homed {
                EvictAction::WriteBack
            } else {
                EvictAction::Drop
            };
            st.evictions.fetch_add(1, Ordering::Relaxed);
            if !homed {
                st.evictions_clean.fetch_add(1, Ordering::Relaxed);
            }
            if state.prefetched() {
                st.prefetch_ahead_evicted.fetch_add(1, Ordering::Relaxed);
            }
            core.table.unlock(page, after_evict(state, action));
            core.budget.give_back();
        }
        zap_empty_regions(core, self.locked.iter().map(|&(p, _)| p));
        st.resident_pages
            .store(core.budget.used() as u64, Ordering::Relaxed);
        self.locked.clear();
    }

    /// After a failure: every locked page goes back to the state it had, the dirty
    /// ones writable again (a write-protected page whose state says writable would make
    /// its writer fault for ever: the handler only wakes it).
    fn give_up<E: Effects>(&mut self, core: &Core<E>) {
        for &(page, state) in &self.locked {
            if state.access() == Access::Exclusive {
                let addr = core.layout.addr_of(page);
                let _ = core.write_protect(addr, PAGE_BYTES, false, true);
            }
            core.table.unlock(page, state.with_busy(false));
        }
        self.locked.clear();
    }
}
