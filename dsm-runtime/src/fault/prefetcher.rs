//! The prefetcher: fetches the pages the prefetch policy asked for, on its own thread and
//! connection, so a faulting thread never waits for them. Fetched pages are mapped ahead
//! of use, write-protected, except a sample of probes that stay staged: a probe's first
//! use is a local install, which is how the runtime learns how many prefetches were used
//! (see `map_ahead`).

use super::{map_ahead, regions};
use crate::cache::{recycle, Evictor};
use crate::coherence::Access;
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::stats::Stats;
use crate::transport::{ReadOp, Session};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Requests from the fault handlers, bounded: when it is full, new requests are dropped
/// (a prefetch is a hint; the demand fault will fetch the page anyway).
pub struct PrefetchQueue {
    queue: Mutex<VecDeque<PageNum>>,
    ready: Condvar,
    capacity: usize,
}

impl PrefetchQueue {
    /// A queue of at most `capacity` pending pages.
    pub fn new(capacity: usize) -> PrefetchQueue {
        PrefetchQueue {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Queues `pages` (those inside a range of `range_pages`); drops what does not fit.
    pub fn enqueue(&self, pages: &[PageNum], range_pages: u64, stats: &Stats) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for &p in pages.iter().filter(|p| p.0 < range_pages) {
            if q.len() < self.capacity {
                q.push_back(p);
            } else {
                stats.prefetch_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(q);
        self.ready.notify_one();
    }

    /// Waits up to `timeout` for requests and moves up to `max` of them into `out`.
    pub(crate) fn take(&self, out: &mut Vec<PageNum>, max: usize, timeout: Duration) {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        while out.len() < max {
            let Some(p) = q.pop_front() else { break };
            out.push(p);
        }
    }

    /// Wakes the prefetcher (for shutdown).
    pub fn wake(&self) {
        self.ready.notify_all();
    }
}

/// A page claimed for staging: locked, with budget and a staging slot.
pub(crate) struct Staged {
    pub(crate) page: PageNum,
    pub(crate) slot: u32,
    pub(crate) state: crate::coherence::PageState,
    /// Mapped ahead (or otherwise settled) and unlocked: no longer to publish.
    pub(crate) done: bool,
}

impl Staged {
    /// The page's state once published as a staged prefetch in its slot, unlocked.
    pub(crate) fn staged_state(&self) -> crate::coherence::PageState {
        self.state
            .with_staged(self.slot)
            .with_prefetched(true)
            .with_busy(false)
    }
}

/// The prefetcher's buffers, allocated once.
pub(crate) struct Prefetcher {
    batch: usize,
    requested: Vec<PageNum>,
    staged: Vec<Staged>,
    ops: Vec<ReadOp<'static>>,
    /// The bytes of a batch's pages to map ahead, one after the other in page order, so
    /// that each run of them is installed with one call.
    ahead_buf: Vec<u8>,
    /// With `huge_regions`: the pages of a region being fetched whole, its reads, and
    /// eviction to make room for a whole region at once.
    region: Option<(Vec<Staged>, Vec<ReadOp<'static>>, Evictor)>,
}

impl Prefetcher {
    /// Buffers for batches of up to `prefetch_max_pages` (1 to 256) pages, and for whole
    /// regions when the staging has runs for them.
    pub(crate) fn new<E: Effects>(core: &Core<E>) -> Prefetcher {
        let batch = core.config.prefetch_max_pages.clamp(1, 256);
        let region = core.staging.regions().map(|_| {
            let pages = crate::cache::region_runs::RUN_PAGES;
            (
                Vec::with_capacity(pages),
                Vec::with_capacity(pages),
                Evictor::new(core.config.writeback_batch_pages),
            )
        });
        Prefetcher {
            batch,
            requested: Vec::with_capacity(batch),
            staged: Vec::with_capacity(batch),
            ops: Vec::with_capacity(batch),
            ahead_buf: vec![0u8; batch * PAGE_BYTES],
            region,
        }
    }

    /// Takes one batch of requests (waiting up to `wait` for some), fetches the pages
    /// worth fetching and stages them. Returns how many were staged.
    pub(crate) fn serve_batch<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
        wait: Duration,
    ) -> Result<usize, RuntimeError> {
        self.requested.clear();
        core.prefetcher.take(&mut self.requested, self.batch, wait);
        if self.requested.is_empty() {
            return Ok(0);
        }
        let mut whole = 0;
        if let Some((staged, ops, evictor)) = &mut self.region {
            whole = regions::fetch_ahead(core, session, evictor, &self.requested, staged, ops)?;
        }
        claim(core, &self.requested, &mut self.staged);
        if self.staged.is_empty() {
            return Ok(whole);
        }
        self.staged.sort_unstable_by_key(|s| s.page.0);
        let every = core.config.prefetch_probe_every;
        let last = map_ahead::last_page(&self.staged);
        let mut ahead = self.ahead_buf.chunks_exact_mut(PAGE_BYTES);
        let mut ops: Vec<ReadOp<'_>> = recycle(std::mem::take(&mut self.ops));
        for s in &self.staged {
            let home = core.placement.home(s.page);
            let buf = match map_ahead::stays_staged(s.page, last, every) {
                // SAFETY: the slot was just taken from the pool by this thread and the
                // page it will stage is locked by us; nobody else touches it.
                true => unsafe { core.staging.slot_mut(s.slot) },
                false => ahead
                    .next()
                    .expect("a page of ahead_buf per page of the batch"),
            };
            ops.push(ReadOp {
                node: home.node,
                offset: home.offset,
                buf,
            });
        }
        let res = session.read_batch(&mut ops);
        count_node_reads(core, &ops);
        self.ops = recycle(ops);
        res.map_err(RuntimeError::Transport)?;
        let n = self.staged.len();
        count_fetch(core, n);
        if every > 1 {
            map_ahead::install_runs(core, &mut self.staged, &self.ahead_buf)?;
        }
        stage(core, &mut self.staged);
        Ok(whole + n)
    }
}

/// Runs the prefetcher until the runtime stops.
pub fn run(core: &Core, mut session: Box<dyn Session>) -> Result<(), RuntimeError> {
    let mut prefetcher = Prefetcher::new(core);
    while !core.stopping() {
        let Some(_pass) = core.gate.enter(|| core.stopping()) else {
            continue;
        };
        prefetcher.serve_batch(core, session.as_mut(), Duration::from_millis(50))?;
    }
    Ok(())
}

/// Counts `n` pages fetched for staging.
pub(crate) fn count_fetch<E: Effects>(core: &Core<E>, n: usize) {
    let st = &core.stats;
    let n = n as u64;
    st.remote_read_pages.fetch_add(n, Ordering::Relaxed);
    st.remote_read_bytes
        .fetch_add(n * PAGE_BYTES as u64, Ordering::Relaxed);
    st.remote_read_batches.fetch_add(1, Ordering::Relaxed);
    st.prefetch_issued.fetch_add(n, Ordering::Relaxed);
}

/// Counts the bytes of a read batch per node (the per-node plots of `dsmrun report`).
pub(crate) fn count_node_reads<E: Effects>(core: &Core<E>, ops: &[ReadOp<'_>]) {
    for op in ops {
        core.stats.node_traffic.read(op.node.0, op.buf.len());
    }
}

/// Publishes fetched pages and unlocks them: most mapped ahead of use, the probes (or,
/// with mapping ahead off, all) as staged prefetches.
pub(crate) fn publish<E: Effects>(
    core: &Core<E>,
    staged: &mut Vec<Staged>,
) -> Result<(), RuntimeError> {
    map_ahead::install(core, staged)?;
    stage(core, staged);
    Ok(())
}

/// Publishes fetched pages as staged prefetches and unlocks them.
fn stage<E: Effects>(core: &Core<E>, staged: &mut Vec<Staged>) {
    for s in staged.drain(..) {
        core.table.unlock(s.page, s.staged_state());
        core.eviction().on_insert(s.page, true);
    }
}

/// Whether a page's bytes are to be fetched from home: not cached, and held there (a
/// compressed copy may be newer than home).
pub(crate) fn worth_fetching(state: crate::coherence::PageState) -> bool {
    state.access() == Access::Invalid
        && state.home_valid()
        && state.staged().is_none()
        && !state.compressed()
}

/// Locks each requested page that is worth fetching (not cached, data at home), and
/// gives it budget and a staging slot. Pages that are busy, cached, never written, or
/// that find the cache full are skipped.
pub(crate) fn claim<E: Effects>(core: &Core<E>, requested: &[PageNum], staged: &mut Vec<Staged>) {
    for &page in requested {
        let Some(state) = core.table.try_lock(page) else {
            continue;
        };
        if !worth_fetching(state) {
            core.table.unlock(page, state);
            continue;
        }
        if !core.budget.try_take() {
            core.table.unlock(page, state);
            core.stats.prefetch_dropped.fetch_add(1, Ordering::Relaxed);
            core.kick_reclaim_if_low();
            continue;
        }
        let Some(slot) = core.staging.alloc() else {
            core.budget.give_back();
            core.table.unlock(page, state);
            core.stats.prefetch_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        staged.push(Staged {
            page,
            slot,
            state,
            done: false,
        });
    }
}
