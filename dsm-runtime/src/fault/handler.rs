//! A fault-handler thread: drains every pending event, decides each against the page
//! state, fetches all remote pages of the round in one batch, installs, wakes.
//!
//! The branching lives in [`FaultHandler::plan`]; the steps are small functions. Buffers
//! are allocated when the thread starts; serving a fault allocates nothing.

use super::uffd::{is_transient, Fault, FaultKind, Installed, UffdMsg};
use crate::cache::{recycle, Evictor};
use crate::coherence::state::{self, after_fault, on_fault, FaultAction};
use crate::coherence::{Access, PageState};
use crate::config::{HandlerWait, ZERO_FILL_AHEAD_PAGES_MAX};
use crate::effects::Effects;
use crate::fault::{prefetcher, regions};
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::trace::EventKind;
use crate::transport::{ReadOp, Session};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Source of zero-filled pages: one for a fault, and the ones zero-filled ahead of it.
static ZEROS: [u8; PAGE_BYTES * (1 + ZERO_FILL_AHEAD_PAGES_MAX)] =
    [0; PAGE_BYTES * (1 + ZERO_FILL_AHEAD_PAGES_MAX)];

/// How long a handler with deferred faults sleeps before looking at them again.
const DEFERRED_RECHECK_NS: i64 = 20_000;
/// Bound on retries of an install the kernel answers with EAGAIN.
const INSTALL_RETRIES: usize = 1000;
/// Bound on direct-reclaim rounds for one page of budget before declaring the cache
/// wedged (each round evicted pages that other threads took first).
const RECLAIM_ATTEMPTS: usize = 10_000;

/// Missing faults by one thread on one page whose state says it is mapped, in a row,
/// after which the handler looks whether the page is really there.
const SUSPECT_AFTER_FAULTS: u32 = 3;
/// Threads tracked at once by [`Repeats`].
const REPEATS_TRACKED: usize = 8;

/// A missing fault on a page whose state says it is mapped is normally a race: the
/// thread faulted before another fault's install, and waking it is enough. If the page
/// was dropped behind the runtime's back (an munmap or madvise outside it; there is no
/// EVENT_REMOVE registration), waking it makes it fault again, forever. This counts, per
/// thread, such faults in a row (any other fault of the thread restarts the count); at
/// [`SUSPECT_AFTER_FAULTS`] the handler asks the kernel whether the page is mapped
/// ([`Effects::is_mapped`]). A fixed table: no allocation on the fault path.
#[derive(Default)]
struct Repeats {
    /// `(tid, page, faults in a row)`; a count of 0 marks a free slot.
    slots: [(u32, u64, u32); REPEATS_TRACKED],
    next: usize,
}

impl Repeats {
    /// Notes a fault by `tid` on `page`, `suspect` if it was a missing fault on a page
    /// whose state says mapped; true when it is the [`SUSPECT_AFTER_FAULTS`]th such fault
    /// of that thread in a row on that page (the count then restarts).
    fn suspect(&mut self, tid: u32, page: PageNum, suspect: bool) -> bool {
        let found = self.slots.iter().position(|s| s.2 > 0 && s.0 == tid);
        if !suspect {
            if let Some(i) = found {
                self.slots[i].2 = 0;
            }
            return false;
        }
        let i = found.unwrap_or_else(|| {
            let i = self.next;
            self.next = (self.next + 1) % REPEATS_TRACKED;
            i
        });
        let s = &mut self.slots[i];
        if s.2 == 0 || s.0 != tid || s.1 != page.0 {
            *s = (tid, page.0, 1);
            return false;
        }
        s.2 += 1;
        if s.2 >= SUSPECT_AFTER_FAULTS {
            s.2 = 0;
            return true;
        }
        false
    }
}

/// A page to fetch this round.
struct Fetch {
    fault: Fault,
    page: PageNum,
    state: PageState,
    writable: bool,
}

/// One handler thread's state.
pub struct FaultHandler {
    session: Box<dyn Session>,
    evictor: Evictor,
    msgs: Vec<UffdMsg>,
    /// Faults on pages someone else holds; served in a later round.
    deferred: Vec<Fault>,
    /// Faults to serve this round.
    round: Vec<Fault>,
    fetches: Vec<Fetch>,
    fetch_buf: Vec<u8>,
    read_ops: Vec<ReadOp<'static>>,
    /// Pages the prefetch policy asked for, handed to the prefetcher.
    prefetch_out: Vec<PageNum>,
    /// Neighbours of this round's fetches within their fetch-granularity block, fetched in
    /// the same batch and staged.
    block: Vec<prefetcher::Staged>,
    block_pages: Vec<PageNum>,
    /// Missing faults on mapped pages, per thread (see [`Repeats`]).
    repeats: Repeats,
    /// Mapped-ahead pages passed over on the way to a probe (see `map_ahead`).
    passed_over: Vec<PageNum>,
    /// Moves this thread to the CPU of the thread that faults (see `follow`).
    follow: super::follow::Follow,
    /// One page, decompressed from the compressed tier.
    unpacked: Vec<u8>,
    /// What this handler does about the helper handler (see `helper`).
    helper_role: HelperRole,
}

/// A handler's part in running the helper handler (see `helper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HelperRole {
    /// No helper in this process.
    None,
    /// The main handler: opens the helper's gate while several threads fault.
    Opens,
    /// The helper itself: serves faults only while its gate is open.
    Is,
}

impl FaultHandler {
    /// A handler that talks to the nodes through `session`.
    pub fn new<E: Effects>(core: &Core<E>, session: Box<dyn Session>) -> FaultHandler {
        let batch = core.config.fault_batch_max;
        FaultHandler {
            session,
            evictor: Evictor::new(core.config.writeback_batch_pages),
            msgs: vec![UffdMsg::default(); batch],
            deferred: Vec::with_capacity(batch * 4),
            round: Vec::with_capacity(batch * 5),
            fetches: Vec::with_capacity(batch * 5),
            fetch_buf: vec![0u8; batch * 5 * PAGE_BYTES],
            read_ops: Vec::with_capacity(batch * 5),
            prefetch_out: Vec::with_capacity(core.config.prefetch_max_pages),
            block: Vec::with_capacity(batch * 5 * core.config.fetch_granularity_pages),
            block_pages: Vec::with_capacity(core.config.fetch_granularity_pages),
            repeats: Repeats::default(),
            passed_over: Vec::with_capacity(2 * core.config.prefetch_probe_every),
            follow: super::follow::Follow::new(
                core.config.handler_follows_faults && core.config.handler_cpu.is_none(),
                core.config.handler_threads,
            ),
            unpacked: vec![0u8; PAGE_BYTES],
            helper_role: HelperRole::None,
        }
    }

    /// Makes this the main handler of a process with a helper handler (if `helper`).
    pub fn opening_helper(mut self, helper: bool) -> FaultHandler {
        if helper {
            self.helper_role = HelperRole::Opens;
        }
        self
    }

    /// The helper handler: it serves faults only while the main handler sees several
    /// threads faulting, and never moves anything (the main handler does that).
    pub fn helper<E: Effects>(core: &Core<E>, session: Box<dyn Session>) -> FaultHandler {
        let mut h = FaultHandler::new(core, session);
        h.follow = super::follow::Follow::new(false, core.config.handler_threads);
        h.helper_role = HelperRole::Is;
        h
    }

    /// Serves faults until the runtime stops.
    pub fn run(&mut self, core: &Core) -> Result<(), RuntimeError> {
        while !core.stopping() {
            if self.helper_role == HelperRole::Is
                && self.deferred.is_empty()
                && !core.helper_gate.is_open()
            {
                core.helper_gate.wait_open(|| core.stopping());
                continue;
            }
            if !self.wait(core) {
                if self.deferred.is_empty() {
                    // Woken by the idle timeout: nothing faulted for a while.
                    self.follow.idle();
                    if self.helper_role == HelperRole::Opens {
                        core.helper_gate.set(false);
                    }
                }
                continue;
            }
            // Closed while the process is suspended: its faults wait for the resume.
            let Some(_pass) = core.gate.enter(|| core.stopping()) else {
                continue;
            };
            let n = if self.deferred.len() + self.msgs.len() <= self.round.capacity() {
                core.fx
                    .read_events(&mut self.msgs)
                    .map_err(RuntimeError::Uffd)?
            } else {
                0
            };
            self.round.clear();
            self.round.append(&mut self.deferred);
            self.round
                .extend(self.msgs[..n].iter().filter_map(UffdMsg::decode));
            let several_threads = self.follow.note(&self.round);
            match (self.helper_role, several_threads) {
                (HelperRole::Opens, Some(several)) => core.helper_gate.set(several),
                (HelperRole::Is, _) if !self.round.is_empty() => {
                    core.stats.helper_rounds.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            if !self.round.is_empty() {
                self.serve_round(core)?;
            }
        }
        // A runtime inside a longer-lived program (a library user, a test) must not leave
        // the program's thread pinned behind it.
        self.follow.idle();
        Ok(())
    }

    /// Serves `faults` as one round (with any deferred from earlier rounds): how the
    /// simulator delivers the faults of its program.
    pub(crate) fn serve<E: Effects>(
        &mut self,
        core: &Core<E>,
        faults: &[Fault],
    ) -> Result<(), RuntimeError> {
        self.round.clear();
        self.round.append(&mut self.deferred);
        self.round.extend_from_slice(faults);
        if self.round.is_empty() {
            return Ok(());
        }
        self.serve_round(core)
    }

    /// Waits for events (or a deferred-fault recheck); false if nothing may be ready.
    fn wait(&self, core: &Core) -> bool {
        if core.config.handler_wait == HandlerWait::Spin && self.deferred.is_empty() {
            // Yield rather than burn the slice: on a shared vCPU the faulting thread (or the
            // reclaimer) needs it, and yield costs far less than a futex wake-up.
            std::thread::yield_now();
            return true;
        }
        let mut fds = [
            libc::pollfd {
                fd: core.fx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: core.stop_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: DEFERRED_RECHECK_NS,
        };
        let idle = libc::timespec {
            tv_sec: 0,
            tv_nsec: super::follow::IDLE_UNPIN_MS as libc::c_long * 1_000_000,
        };
        let timeout = if !self.deferred.is_empty() {
            &ts as *const libc::timespec
        } else if self.follow.pinned() {
            &idle as *const libc::timespec
        } else {
            std::ptr::null()
        };
        // SAFETY: `fds`, `ts` and `idle` live on our stack for the duration of the call.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timeout, std::ptr::null()) };
        rc > 0 || !self.deferred.is_empty()
    }

    fn serve_round<E: Effects>(&mut self, core: &Core<E>) -> Result<(), RuntimeError> {
        let start = Instant::now();
        self.fetches.clear();
        let mut round = std::mem::take(&mut self.round);
        for fault in round.drain(..) {
            self.plan(core, fault, start)?;
        }
        self.round = round;
        if !self.fetches.is_empty() {
            self.fetch_and_install(core, start)?;
        }
        core.kick_reclaim_if_low();
        Ok(())
    }

    /// Decides one fault and performs every action that needs no network trip.
    fn plan<E: Effects>(
        &mut self,
        core: &Core<E>,
        fault: Fault,
        start: Instant,
    ) -> Result<(), RuntimeError> {
        let Some(page) = core.layout.page_of(fault.addr) else {
            // Not ours (cannot happen for a registered range); let the thread retry.
            return core
                .fx
                .wake(fault.addr & !(PAGE_BYTES - 1), PAGE_BYTES)
                .map_err(RuntimeError::Uffd);
        };
        let Some(state) = core.table.try_lock(page) else {
            core.stats.faults_deferred.fetch_add(1, Ordering::Relaxed);
            self.deferred.push(fault);
            return Ok(());
        };
        let wp = fault.kind == FaultKind::WriteProtect;
        let write = fault.kind != FaultKind::MissingRead;
        let mut action = writable_if_dirty_before(core, state, on_fault(state, write, wp));
        let mut state = state;
        let suspect = action == FaultAction::Wake && !wp && state.resident();
        if self.repeats.suspect(fault.tid, page, suspect)
            && !core.fx.is_mapped(core.layout.addr_of(page))
        {
            (state, action) = self.dropped_behind_our_back(core, page, state, write)?;
        }
        count_fault(core, fault.kind, action);
        self.passed_over.clear();
        if matches!(action, FaultAction::InstallStaged { .. }) && state.prefetched() {
            // A probe: the stream went through the pages mapped ahead before it.
            super::map_ahead::passed_over(core, page, &mut self.passed_over);
        }
        if let Some(trace) = &core.trace {
            // The trace shows what the prefetch policy is told: the passed-over pages as
            // uses, then the probe (so the tuner's replay follows the same stream).
            for &p in &self.passed_over {
                trace.record(EventKind::StagedHit, p);
            }
            trace.record(trace_kind(fault.kind, action, state), page);
        }
        let addr = core.layout.addr_of(page);
        match action {
            FaultAction::Wake => {
                core.table.unlock(page, after_fault(state, action));
                core.fx.wake(addr, PAGE_BYTES).map_err(RuntimeError::Uffd)?;
                core.eviction().on_access(page);
            }
            FaultAction::Upgrade => {
                // Mode 1: this process owns every page, so the upgrade is granted locally.
                core.write_protect(addr, PAGE_BYTES, false, false)?;
                if state.prefetched() {
                    // A page mapped ahead of use, now written: a known use.
                    core.stats
                        .prefetch_ahead_written
                        .fetch_add(1, Ordering::Relaxed);
                }
                let next = after_fault(state, action).with_prefetched(false);
                core.table.unlock(page, next);
                core.eviction().on_access(page);
            }
            FaultAction::InstallStaged { writable } => {
                self.install_staged(core, page, state, writable)?
            }
            FaultAction::InstallCompressed { writable } => {
                self.take_budget(core, start)?;
                self.install_compressed(core, page, state, writable)?
            }
            FaultAction::ZeroFill { writable } => {
                self.take_budget(core, start)?;
                if self.install(core, page, state, ZEROS.as_ptr(), writable)? {
                    core.stats.zero_fills.fetch_add(1, Ordering::Relaxed);
                    core.eviction().on_insert(page, false);
                    if writable {
                        self.zero_fill_ahead(core, page)?;
                    }
                } else {
                    core.budget.give_back();
                }
            }
            FaultAction::Fetch { writable } => {
                let whole = match core.staging.regions() {
                    Some(_) => {
                        let session = self.session.as_mut();
                        regions::fetch_on_demand(core, session, &mut self.evictor, page, state)?
                    }
                    None => None,
                };
                match whole {
                    // Its whole region moved in, the page with it.
                    Some(true) => {}
                    // Another thread is claiming the region: fault again once it has.
                    Some(false) => {
                        self.deferred.push(fault);
                        return Ok(());
                    }
                    None => return self.fetch_later(core, fault, page, state, writable, start),
                }
            }
        }
        core.stats
            .fault_service
            .record(start.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Takes budget for a page and adds it to this round's batch of fetches.
    fn fetch_later<E: Effects>(
        &mut self,
        core: &Core<E>,
        fault: Fault,
        page: PageNum,
        state: PageState,
        writable: bool,
        start: Instant,
    ) -> Result<(), RuntimeError> {
        self.take_budget(core, start)?;
        self.fetches.push(Fetch {
            fault,
            page,
            state,
            writable,
        });
        Ok(())
    }

    /// A page whose state says mapped keeps faulting as missing: it was dropped behind
    /// our back. A clean page is what its home (or, never written home, zeros) holds:
    /// forget the mapping and serve the fault as for an invalid page. A dirty page held
    /// the only up-to-date copy: its data is lost, which must end the process with a
    /// message, never a zero page in its place.
    fn dropped_behind_our_back<E: Effects>(
        &mut self,
        core: &Core<E>,
        page: PageNum,
        state: PageState,
        write: bool,
    ) -> Result<(PageState, FaultAction), RuntimeError> {
        if state.access() == Access::Exclusive {
            core.table.unlock(page, state);
            return Err(RuntimeError::PageLost {
                page: page.0,
                addr: core.layout.addr_of(page),
            });
        }
        core.stats.pages_remapped.fetch_add(1, Ordering::Relaxed);
        core.eviction().on_remove(page);
        core.budget.give_back();
        let invalid = state.with_access(Access::Invalid).with_referenced(false);
        let action = writable_if_dirty_before(core, invalid, on_fault(invalid, write, false));
        Ok((invalid, action))
    }

    /// Fresh memory is first written in address order (the allocator carves objects from
    /// the start of a span), and every first touch would cost a round trip of its own. So
    /// a write's zero-fill also zero-fills the untouched pages that follow it, writable,
    /// in one `UFFDIO_COPY` without waking anyone: as many as
    /// `zero_fill_ahead_pages`, stopping at the first page with a state or without free
    /// cache (this never reclaims for a page nobody asked for yet).
    fn zero_fill_ahead<E: Effects>(
        &mut self,
        core: &Core<E>,
        page: PageNum,
    ) -> Result<(), RuntimeError> {
        let max = core.config.zero_fill_ahead_pages as u64;
        let first = page.0 + 1;
        let mut n = 0;
        while n < max && first + n < core.layout.pages {
            let p = PageNum(first + n);
            if core.table.get(p) != PageState::UNTOUCHED {
                break;
            }
            match core.table.try_lock(p) {
                Some(PageState::UNTOUCHED) if core.budget.try_take() => n += 1,
                Some(s) => {
                    core.table.unlock(p, s);
                    break;
                }
                None => break,
            }
        }
        if n == 0 {
            return Ok(());
        }
        if let Some(trace) = &core.trace {
            // To the simulator these are the write faults they spare: same cache effect.
            for p in first..first + n {
                trace.record(EventKind::FaultWrite, PageNum(p));
            }
        }
        let addr = core.layout.addr_of(PageNum(first));
        let len = n as usize * PAGE_BYTES;
        // SAFETY: `ZEROS` holds at least `len` bytes.
        let whole = unsafe { core.fx.install(addr, ZEROS.as_ptr(), len, false, true) };
        if matches!(whole, Ok(Installed::Done)) {
            let installed = after_fault(
                PageState::UNTOUCHED,
                FaultAction::ZeroFill { writable: true },
            );
            let mut policy = core.eviction();
            for p in first..first + n {
                core.table.unlock(PageNum(p), installed);
                policy.on_insert(PageNum(p), false);
            }
            drop(policy);
            core.stats.zero_fills_ahead.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        // Some page was there after all, or the kernel refused the run: settle each
        // page alone, as a fault would have.
        for p in first..first + n {
            if self.install(core, PageNum(p), PageState::UNTOUCHED, ZEROS.as_ptr(), true)? {
                core.stats.zero_fills_ahead.fetch_add(1, Ordering::Relaxed);
                core.eviction().on_insert(PageNum(p), false);
            } else {
                core.budget.give_back();
            }
        }
        Ok(())
    }

    /// One page of cache budget, reclaiming on this thread if the cache is full.
    ///
    /// Bounded both ways: evicting makes progress but others may take the freed budget
    /// first (at most [`RECLAIM_ATTEMPTS`] rounds), or nothing can be evicted because
    /// every cached page is locked mid-operation. Then this round's own pending fetches,
    /// which hold budget but become evictable only once installed, are completed first;
    /// other threads' holds end within a node timeout (the fetch or write-back that holds
    /// them succeeds or fails), so after twice that the cache is declared wedged.
    fn take_budget<E: Effects>(
        &mut self,
        core: &Core<E>,
        start: Instant,
    ) -> Result<(), RuntimeError> {
        let wedged_after = Duration::from_millis(core.config.node_timeout_ms.saturating_mul(2));
        let mut stalled_since: Option<Instant> = None;
        let mut attempts = 0;
        loop {
            if core.budget.try_take() {
                let n = core.budget.used() as u64;
                core.stats.resident_pages.store(n, Ordering::Relaxed);
                core.stats
                    .resident_pages_peak
                    .fetch_max(n, Ordering::Relaxed);
                return Ok(());
            }
            let stalled_for = stalled_since.map_or(Duration::ZERO, |t| t.elapsed());
            if attempts >= RECLAIM_ATTEMPTS || stalled_for >= wedged_after {
                return Err(RuntimeError::CacheWedged {
                    capacity_pages: core.budget.capacity(),
                });
            }
            core.stats.direct_reclaims.fetch_add(1, Ordering::Relaxed);
            let want = core.config.writeback_batch_pages;
            if self.evictor.evict(core, self.session.as_mut(), want)? > 0 {
                attempts += 1;
                stalled_since = None;
            } else if !self.fetches.is_empty() {
                // The budget is held by this round's own fetches: install them now.
                self.fetch_and_install(core, start)?;
            } else {
                // Every cached page is locked by someone mid-operation; let them finish.
                stalled_since.get_or_insert_with(Instant::now);
                std::thread::yield_now();
            }
        }
    }

    /// Maps a page's staged local copy: a prefetched page's first use, or a sampled
    /// page's next use. No network; the budget was taken when it was staged.
    fn install_staged<E: Effects>(
        &mut self,
        core: &Core<E>,
        page: PageNum,
        state: PageState,
        writable: bool,
    ) -> Result<(), RuntimeError> {
        let slot = state.staged().expect("planned as staged");
        if core.staging.regions().is_some_and(|r| r.contains(slot))
            && super::regions::serve(core, page, state)?
        {
            // Its whole region moved in, the page with it.
            self.consult_prefetch(core, page, true);
            return Ok(());
        }
        // SAFETY: we hold the page's lock, which owns its staging slot.
        let src = unsafe { core.staging.slot_mut(slot) }.as_ptr();
        // Once used, a prefetched page is no longer a prefetch waiting for its use (the
        // flag then marks only pages mapped ahead and not known used).
        let used = state.with_prefetched(false);
        if !self.install(core, page, used, src, writable)? {
            return Ok(()); // still staged; the thread faults again
        }
        core.staging.release(slot);
        let st = &core.stats;
        st.staged_hits.fetch_add(1, Ordering::Relaxed);
        if state.prefetched() {
            st.prefetch_used.fetch_add(1, Ordering::Relaxed);
            core.eviction().on_access(page);
        } else {
            st.sampled_hits.fetch_add(1, Ordering::Relaxed);
            core.eviction().on_sampled_hit(page);
        }
        self.consult_prefetch(core, page, state.prefetched());
        Ok(())
    }

    /// Decompresses and maps a page's copy from the compressed tier: no network. The
    /// copy is dropped only once installed (a refused install leaves the page as it was).
    fn install_compressed<E: Effects>(
        &mut self,
        core: &Core<E>,
        page: PageNum,
        state: PageState,
        writable: bool,
    ) -> Result<(), RuntimeError> {
        let tier = core.compressed.as_ref().expect("planned as compressed");
        let t = Instant::now();
        tier.read(page, &mut self.unpacked);
        let st = &core.stats;
        st.compress_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let src = self.unpacked.as_ptr();
        let drop_copy = || tier.remove(page, &core.budget);
        if !self.install_then(core, page, state, src, writable, drop_copy)? {
            core.budget.give_back(); // still compressed; the thread faults again
            return Ok(());
        }
        st.compressed_hits.fetch_add(1, Ordering::Relaxed);
        core.eviction().on_insert(page, false);
        self.consult_prefetch(core, page, false);
        Ok(())
    }

    /// Tells the prefetch policy about a fault and queues what it asks for.
    fn consult_prefetch<E: Effects>(
        &mut self,
        core: &Core<E>,
        page: PageNum,
        hit_prefetched: bool,
    ) {
        let max = core.config.prefetch_max_pages;
        if max == 0 {
            return;
        }
        self.prefetch_out.clear();
        let mut policy = core.prefetch_policy();
        if hit_prefetched {
            // The stream went through the pages mapped ahead since the last probe; the
            // policy follows it as though they had faulted (their requests are dropped:
            // the probe's answer covers them, from further on).
            // (`plan` found them.)
            for &p in &self.passed_over {
                policy.on_fault(p, true, max, &mut self.prefetch_out);
            }
        }
        policy.on_fault(page, hit_prefetched, max, &mut self.prefetch_out);
        drop(policy);
        self.passed_over.clear();
        if !self.prefetch_out.is_empty() {
            core.prefetcher
                .enqueue(&self.prefetch_out, core.layout.pages, &core.stats);
        }
    }

    /// Claims the other pages of each fetched page's aligned block of
    /// `fetch_granularity_pages`, to be fetched in the same batch and staged.
    fn claim_blocks<E: Effects>(&mut self, core: &Core<E>) {
        let g = core.config.fetch_granularity_pages as u64;
        if g <= 1 {
            return;
        }
        for f in &self.fetches {
            let first = f.page.0 & !(g - 1);
            self.block_pages.clear();
            self.block_pages.extend(
                (first..(first + g).min(core.layout.pages))
                    .filter(|&p| p != f.page.0)
                    .map(PageNum),
            );
            prefetcher::claim(core, &self.block_pages, &mut self.block);
        }
    }

    fn fetch_and_install<E: Effects>(
        &mut self,
        core: &Core<E>,
        start: Instant,
    ) -> Result<(), RuntimeError> {
        self.claim_blocks(core);
        let mut ops: Vec<ReadOp<'_>> = recycle(std::mem::take(&mut self.read_ops));
        for b in &self.block {
            let home = core.placement.home(b.page);
            ops.push(ReadOp {
                node: home.node,
                offset: home.offset,
                // SAFETY: the slot was claimed for a page this thread holds locked.
                buf: unsafe { core.staging.slot_mut(b.slot) },
            });
        }
        for (f, buf) in self
            .fetches
            .iter()
            .zip(self.fetch_buf.chunks_exact_mut(PAGE_BYTES))
        {
            let home = core.placement.home(f.page);
            ops.push(ReadOp {
                node: home.node,
                offset: home.offset,
                buf,
            });
        }
        let res = self.session.read_batch(&mut ops);
        prefetcher::count_node_reads(core, &ops);
        self.read_ops = recycle(ops);
        res.map_err(RuntimeError::Transport)?;
        if !self.block.is_empty() {
            prefetcher::count_fetch(core, self.block.len());
            prefetcher::publish(core, &mut self.block)?;
        }
        let st = &core.stats;
        let n = self.fetches.len() as u64;
        st.remote_read_pages.fetch_add(n, Ordering::Relaxed);
        st.remote_read_bytes
            .fetch_add(n * PAGE_BYTES as u64, Ordering::Relaxed);
        st.remote_read_batches.fetch_add(1, Ordering::Relaxed);
        let fetches = std::mem::take(&mut self.fetches);
        for (f, buf) in fetches.iter().zip(self.fetch_buf.chunks_exact(PAGE_BYTES)) {
            debug_assert_eq!(core.layout.page_of(f.fault.addr), Some(f.page));
            if self.install(core, f.page, f.state, buf.as_ptr(), f.writable)? {
                core.eviction().on_insert(f.page, false);
            } else {
                core.budget.give_back();
            }
            st.fault_service.record(start.elapsed().as_nanos() as u64);
        }
        for f in &fetches {
            self.consult_prefetch(core, f.page, false);
        }
        self.fetches = fetches;
        self.fetches.clear();
        Ok(())
    }

    /// Maps a copy of `src` at `page` (write-protected unless `writable`), publishes the
    /// new state and wakes waiters. Returns false if the kernel kept refusing: the page is
    /// unlocked unchanged and the faulting thread simply faults again.
    fn install<E: Effects>(
        &self,
        core: &Core<E>,
        page: PageNum,
        state: PageState,
        src: *const u8,
        writable: bool,
    ) -> Result<bool, RuntimeError> {
        self.install_then(core, page, state, src, writable, || {})
    }

    /// [`FaultHandler::install`], calling `on_mapped` once the page is mapped and before
    /// it is unlocked (to drop a local copy that only the lock holder may touch).
    fn install_then<E: Effects>(
        &self,
        core: &Core<E>,
        page: PageNum,
        state: PageState,
        src: *const u8,
        writable: bool,
        on_mapped: impl FnOnce(),
    ) -> Result<bool, RuntimeError> {
        let addr = core.layout.addr_of(page);
        for _ in 0..INSTALL_RETRIES {
            // SAFETY: `src` points at a full page (a fetch buffer or the zero page).
            match unsafe { core.fx.install(addr, src, PAGE_BYTES, !writable, false) } {
                Ok(Installed::Done) => {
                    on_mapped();
                    let action = if writable {
                        FaultAction::Fetch { writable: true }
                    } else {
                        FaultAction::Fetch { writable: false }
                    };
                    core.table.unlock(page, after_fault(state, action));
                    return Ok(true);
                }
                Ok(Installed::AlreadyPresent) => {
                    // Mapped behind our back; keep it and treat it as dirty so that whatever
                    // it holds is written home rather than dropped.
                    on_mapped();
                    let action = FaultAction::Fetch { writable: true };
                    core.table.unlock(page, after_fault(state, action));
                    core.fx.wake(addr, PAGE_BYTES).map_err(RuntimeError::Uffd)?;
                    return Ok(true);
                }
                Err(e) if is_transient(&e) => std::thread::yield_now(),
                Err(e) => return Err(RuntimeError::Uffd(e)),
            }
        }
        core.table.unlock(page, state);
        core.fx.wake(addr, PAGE_BYTES).map_err(RuntimeError::Uffd)?;
        Ok(false)
    }
}

/// [`state::writable_if_dirty_before`] with the runtime's setting.
fn writable_if_dirty_before<E: Effects>(
    core: &Core<E>,
    state: PageState,
    action: FaultAction,
) -> FaultAction {
    state::writable_if_dirty_before(core.config.fetch_writable_if_dirty_before, state, action)
}

/// How a fault appears in a recorded trace: staged pages' uses are told apart from
/// demand faults, because the simulator must know the page was present.
fn trace_kind(kind: FaultKind, action: FaultAction, state: PageState) -> EventKind {
    match (action, kind) {
        (FaultAction::InstallStaged { .. }, _) if state.prefetched() => EventKind::StagedHit,
        (FaultAction::InstallStaged { .. }, _) => EventKind::Sampled,
        (_, FaultKind::MissingRead) => EventKind::FaultRead,
        (_, FaultKind::MissingWrite) => EventKind::FaultWrite,
        (_, FaultKind::WriteProtect) => EventKind::FaultWriteProtect,
    }
}

fn count_fault<E: Effects>(core: &Core<E>, kind: FaultKind, action: FaultAction) {
    let st = &core.stats;
    let counter = match (kind, action) {
        (_, FaultAction::Wake) => &st.faults_spurious,
        (FaultKind::MissingRead, _) => &st.faults_read,
        (FaultKind::MissingWrite, _) => &st.faults_write,
        (FaultKind::WriteProtect, _) => &st.faults_write_protect,
    };
    if matches!(action, FaultAction::Fetch { .. }) {
        st.faults_network_wait.fetch_add(1, Ordering::Relaxed);
    }
    counter.fetch_add(1, Ordering::Relaxed);
}
