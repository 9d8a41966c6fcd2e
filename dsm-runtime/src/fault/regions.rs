//! Streams in whole 2 MiB regions (`[fetch] huge_regions`).
//!
//! A scan mapped ahead 4 KiB at a time costs the kernel an install and a drop per page
//! (`UFFDIO_COPY` and `MADV_DONTNEED`, about 1 us a page on the development VM, more
//! than reading the bytes from a node). So when the readahead reaches the first page of
//! a region none of whose pages is cached, right after a stream came through the region
//! before it ([`after_stream`]), the prefetcher fetches the whole region into a
//! staging run backed by one transparent huge page ([`crate::cache::region_runs`]), and
//! the first fault in the region moves that huge page into the range with one
//! `UFFDIO_MOVE`, write-protected as a whole: 512 pages for one fault and a few
//! microseconds (`benches/kernel/uffd_move_thp.c`). That fault is also the region's
//! probe: it says the prefetch was used (accuracy counts a region as one probe), and it
//! asks for the regions after it, so the stream keeps ahead of the program although none
//! of its other pages faults. Eviction takes such a region whole (one 2 MiB drop, see
//! `cache::evict`).
//!
//! A moved page arrives writable; the region is write-protected right after the move,
//! before anyone is woken. A program thread that was not waiting on the region could
//! still write it in between, untracked, so the region moves whole only while the program
//! runs one thread (the one whose fault is being served, asleep); otherwise, and whenever
//! a page of the region is busy or gone, the faulting page is installed alone from its
//! slot like any staged page.

use super::prefetcher::{count_fetch, count_node_reads, worth_fetching, Staged};
use crate::cache::page_table::REGION_PAGES;
use crate::cache::recycle;
use crate::cache::region_runs::{RegionRuns, RUN_PAGES};
use crate::cache::Evictor;
use crate::coherence::state::{after_fault, FaultAction};
use crate::coherence::PageState;
use crate::effects::Effects;
use crate::fault::uffd::Installed;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::{ReadOp, Session};
use std::sync::atomic::Ordering;

/// Regions fetched ahead of the one the program has just entered.
const AHEAD: u64 = 2;
const REGION_BYTES: usize = RUN_PAGES * PAGE_BYTES;
/// Attempts to lock a page of a region that another thread holds for a moment.
const BUSY_RETRIES: usize = 64;
/// How long a staged region may wait for its first use before its run is taken back.
const STALE: std::time::Duration = std::time::Duration::from_millis(200);
/// Eviction rounds the prefetcher runs to make room for a region before giving up.
const ROOM_ATTEMPTS: usize = 16;

/// Whether `page` is the first page of a whole region that could be fetched whole.
pub(crate) fn starts_region<E: Effects>(core: &Core<E>, page: PageNum) -> bool {
    core.staging.regions().is_some()
        && page.0 % REGION_PAGES == 0
        && page.0 + REGION_PAGES <= core.layout.pages
}

/// Whether a stream has come through the region before the one at `first` (moved in
/// whole, staged whole, or at least half of it in use), and has not passed `first`
/// already: only such a stream is worth a whole region. A short run of pages that
/// happens to reach a region's first page (readahead starts after a few faults in a
/// row) would otherwise have 2 MiB fetched for the few pages it reads: a program reading
/// runs of 16 or 64 pages at random fetched 1.24x and 1.45x the pages.
fn after_stream<E: Effects>(core: &Core<E>, first: PageNum) -> bool {
    let Some(runs) = core.staging.regions() else {
        return false;
    };
    let Some(prev) = first.0.checked_sub(REGION_PAGES).map(PageNum) else {
        return false;
    };
    let came_through = core.table.is_huge(prev)
        || runs.holds(prev.0)
        || core.table.in_use_in_region(prev) >= REGION_PAGES / 2;
    came_through && !runs.is_passed(first.0)
}

/// The prefetcher's part: fetches each region that a page of `requested` starts into a
/// run, whole, and stages its pages. Returns how many pages it staged.
pub(crate) fn fetch_ahead<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    evictor: &mut Evictor,
    requested: &[PageNum],
    staged: &mut Vec<Staged>,
    ops_store: &mut Vec<ReadOp<'static>>,
) -> Result<usize, RuntimeError> {
    let mut n = 0;
    let wanted = |p: &&PageNum| starts_region(core, **p) && after_stream(core, **p);
    for &first in requested.iter().filter(wanted) {
        if !make_room(core, session, evictor)? {
            core.stats.prefetch_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if claim(core, first, None, staged) != Claim::Taken {
            continue;
        }
        fetch(core, session, staged, ops_store)?;
        core.stats.regions_staged.fetch_add(1, Ordering::Relaxed);
        core.stats.prefetch_probes.fetch_add(1, Ordering::Relaxed);
        stage(core, staged);
        n += RUN_PAGES;
    }
    Ok(n)
}

/// The fault handler's part when a stream runs ahead of the prefetcher: a fault on
/// `page` (locked, `state` not cached) in a region with nothing cached, right after a
/// region moved in whole, fetches the region whole here and moves it in, rather than
/// fetching the page alone (which would leave the rest of the region to 4 KiB paths).
/// `Some(true)`: served; `Some(false)`: the region is being claimed by another thread,
/// let the fault wait (the page is unlocked); `None`: not a case for a region (the page
/// is still locked, for the caller's usual path).
pub(crate) fn fetch_on_demand<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    evictor: &mut Evictor,
    page: PageNum,
    state: PageState,
) -> Result<Option<bool>, RuntimeError> {
    let first = PageNum(page.0 / REGION_PAGES * REGION_PAGES);
    let follows_stream = first.0 >= REGION_PAGES
        && starts_region(core, first)
        && core.table.is_huge(PageNum(first.0 - REGION_PAGES));
    if !follows_stream || !make_room(core, session, evictor)? {
        return Ok(None);
    }
    let mut staged = Vec::with_capacity(RUN_PAGES);
    match claim(core, first, Some((page, state)), &mut staged) {
        Claim::Taken => {}
        Claim::Busy => {
            core.table.unlock(page, state);
            return Ok(Some(false));
        }
        Claim::No => return Ok(None),
    }
    fetch(core, session, &staged, &mut Vec::with_capacity(RUN_PAGES))?;
    core.stats.regions_staged.fetch_add(1, Ordering::Relaxed);
    core.stats.prefetch_probes.fetch_add(1, Ordering::Relaxed);
    let index = (page.0 - first.0) as usize;
    let mine = staged.remove(index);
    stage(core, &mut staged);
    let mine_state = mine.staged_state();
    if serve(core, page, mine_state)? {
        return Ok(Some(true));
    }
    // Still staged: publish it as such, and let the thread fault again.
    core.table.unlock(page, mine_state);
    Ok(Some(false))
}

/// Publishes a region's fetched pages as staged prefetches and unlocks them. They are
/// not shown to the eviction policy until they are mapped (a region about to be used
/// would otherwise be the coldest thing cached); a region never used is dropped whole
/// when its run is wanted ([`drop_oldest`]).
fn stage<E: Effects>(core: &Core<E>, staged: &mut Vec<Staged>) {
    for s in staged.drain(..) {
        core.table.unlock(s.page, s.staged_state());
    }
}

/// Drops a staged region the stream has passed, or else the region staged longest ago if
/// it waited longer than [`STALE`] (its pages never used, or the rest of a region that
/// moved in part), so that its run and budget serve the stream's next region. A younger
/// one is about to be used: the new region waits instead.
fn drop_oldest<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    evictor: &mut Evictor,
) -> Result<(), RuntimeError> {
    let Some(runs) = core.staging.regions() else {
        return Ok(());
    };
    let Some(first) = runs.stale(STALE, AHEAD * REGION_PAGES) else {
        return Ok(());
    };
    let pages: Vec<PageNum> = (first..first + REGION_PAGES).map(PageNum).collect();
    for chunk in pages.chunks(core.config.writeback_batch_pages.max(1)) {
        evictor.evict_pages(core, session, chunk)?;
    }
    Ok(())
}

/// Evicts until a whole region fits in the free cache; false if eviction found nothing
/// to take (every cached page busy) before that.
fn make_room<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    evictor: &mut Evictor,
) -> Result<bool, RuntimeError> {
    if core.staging.regions().is_some_and(|r| !r.has_free()) {
        drop_oldest(core, session, evictor)?;
    }
    for _ in 0..ROOM_ATTEMPTS {
        if core.budget.free() >= RUN_PAGES {
            return Ok(true);
        }
        let want = RUN_PAGES - core.budget.free();
        if evictor.evict(core, session, want)? == 0 {
            return Ok(false);
        }
    }
    Ok(core.budget.free() >= RUN_PAGES)
}

/// How a claim of a whole region went.
#[derive(PartialEq, Eq)]
pub(crate) enum Claim {
    /// Every page locked, with budget and its slot of a run.
    Taken,
    /// Some page is locked by someone else (perhaps claiming it too): try again soon.
    Busy,
    /// Some page is cached, or no run is free: the region is not for fetching whole.
    No,
}

/// Locks every page of the region at `first` (but `held`, which the caller holds) and
/// gives each budget and its slot of a free run, if every one fits a region; else takes
/// nothing.
fn claim<E: Effects>(
    core: &Core<E>,
    first: PageNum,
    held: Option<(PageNum, PageState)>,
    staged: &mut Vec<Staged>,
) -> Claim {
    let Some(runs) = core.staging.regions() else {
        return Claim::No;
    };
    let Some(run) = runs.alloc(first.0) else {
        return Claim::No;
    };
    staged.clear();
    for i in 0..RUN_PAGES {
        let page = PageNum(first.0 + i as u64);
        let is_held = held.is_some_and(|(p, _)| p == page);
        let (taken, busy) = match held {
            Some((p, s)) if p == page => (Some(s), false),
            _ => (core.table.try_lock(page), true),
        };
        let fits = taken.is_some_and(fits_region) && core.budget.try_take();
        let Some(state) = taken.filter(|_| fits) else {
            // Not this one: give back what this claim took (the held page stays locked).
            if let Some(s) = taken.filter(|_| !is_held) {
                core.table.unlock(page, s);
            }
            for s in staged.drain(..) {
                core.budget.give_back();
                if held.is_none_or(|(p, _)| p != s.page) {
                    core.table.unlock(s.page, s.state);
                }
            }
            runs.unclaim(run);
            return match busy && taken.is_none() {
                true => Claim::Busy,
                false => Claim::No,
            };
        };
        staged.push(Staged {
            page,
            slot: runs.slot(run, i),
            state,
            done: false,
        });
    }
    Claim::Taken
}

/// Whether a page can be part of a region fetched whole: not cached, and either held at
/// home or never written there (zeros: a fault would zero-fill it).
fn fits_region(state: PageState) -> bool {
    worth_fetching(state.with_home_valid(true))
}

/// Reads the claimed pages (a region's, in order) from their homes straight into their
/// slots, one read per run of pages that lie end to end at one home (a placement chunk),
/// and zeroes the slots of pages never written home. The first write into the run gives
/// it its huge page.
fn fetch<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    staged: &[Staged],
    ops_store: &mut Vec<ReadOp<'static>>,
) -> Result<(), RuntimeError> {
    let runs = core.staging.regions().expect("a region is staged in a run");
    if let Some(s) = staged.first() {
        runs.note_filled(runs.run_of(s.slot).0);
    }
    let mut ops: Vec<ReadOp<'_>> = recycle(std::mem::take(ops_store));
    let mut reads = 0;
    let mut i = 0;
    while i < staged.len() {
        let s = &staged[i];
        if !s.state.home_valid() {
            // SAFETY: the slot was just given to this page, which we hold locked.
            unsafe { core.staging.slot_mut(s.slot) }.fill(0);
            i += 1;
            continue;
        }
        let home = core.placement.home(s.page);
        let n = 1 + staged[i + 1..]
            .iter()
            .enumerate()
            .take_while(|(k, t)| {
                let h = core.placement.home(t.page);
                t.state.home_valid()
                    && h.node == home.node
                    && h.offset == home.offset + ((k + 1) * PAGE_BYTES) as u64
            })
            .count();
        ops.push(ReadOp {
            node: home.node,
            offset: home.offset,
            // SAFETY: these slots were just given to these pages (consecutive slots of
            // one run), which we hold locked.
            buf: unsafe { runs.slots_mut(s.slot, n) },
        });
        reads += n;
        i += n;
    }
    let res = session.read_batch(&mut ops);
    count_node_reads(core, &ops);
    *ops_store = recycle(ops);
    res.map_err(RuntimeError::Transport)?;
    count_fetch(core, reads);
    Ok(())
}

/// The fault handler's part: a fault on `page` (locked, `state` staged in a run) moves
/// its whole region in when it can, and otherwise maps what is left of the region from
/// the run with 4 KiB copies, so that a region that cannot move costs one fault, not 512.
/// True if the page is mapped (the fault is served, the page unlocked and the next
/// regions asked for); false leaves `page` locked and staged for the caller.
pub(crate) fn serve<E: Effects>(
    core: &Core<E>,
    page: PageNum,
    state: PageState,
) -> Result<bool, RuntimeError> {
    let Some(runs) = core.staging.regions() else {
        return Ok(false);
    };
    let (run, index) = runs.run_of(state.staged().expect("a staged page"));
    let first = PageNum(page.0 - index as u64);
    let mut states = [PageState::UNTOUCHED; RUN_PAGES];
    states[index] = state;
    let whole = program_runs_alone() && lock_others(core, runs, run, first, index, &mut states);
    let mapped = match whole {
        true => move_whole(core, runs, run, first, index, &states)?,
        false => false,
    };
    if !mapped && !map_rest(core, runs, run, first, index, state)? {
        return Ok(false);
    }
    let st = &core.stats;
    st.staged_hits.fetch_add(1, Ordering::Relaxed);
    st.prefetch_used.fetch_add(1, Ordering::Relaxed);
    core.eviction().on_access(page);
    let next: [PageNum; AHEAD as usize] =
        std::array::from_fn(|k| PageNum(first.0 + (k as u64 + 1) * REGION_PAGES));
    core.prefetcher
        .enqueue(&next, core.layout.pages, &core.stats);
    Ok(true)
}

/// Moves the region (every page locked in `states`) in as one huge page; true if the
/// faulting page `index` is mapped. Pages the kernel did not move stay staged, unlocked,
/// the faulting one locked.
fn move_whole<E: Effects>(
    core: &Core<E>,
    runs: &RegionRuns,
    run: u32,
    first: PageNum,
    index: usize,
    states: &[PageState; RUN_PAGES],
) -> Result<bool, RuntimeError> {
    let addr = core.layout.addr_of(first);
    // The fault left a page table under the region; a move onto it would split the huge
    // page. Nothing of the region is mapped (every page is staged and locked by us).
    crate::cache::unmap_range(addr, REGION_BYTES);
    // SAFETY: we hold every page of the run (locked, staged there), and nothing is mapped
    // at the region.
    let moved = unsafe { core.fx.move_pages(addr, runs.addr(run), REGION_BYTES) } / PAGE_BYTES;
    let protected = moved > 0
        && core
            .write_protect(addr, moved * PAGE_BYTES, true, true)
            .is_ok();
    settle(core, runs, run, first, index, states, moved, protected);
    if moved > 0 {
        core.fx
            .wake(addr, moved * PAGE_BYTES)
            .map_err(RuntimeError::Uffd)?;
    }
    let st = &core.stats;
    st.regions_moved_in
        .fetch_add(u64::from(moved == RUN_PAGES), Ordering::Relaxed);
    st.prefetch_mapped_ahead
        .fetch_add(moved.saturating_sub(1) as u64, Ordering::Relaxed);
    Ok(index < moved)
}

/// Maps, write-protected, every page of the region still staged in its slot of `run`
/// and free, the faulting page `index` (locked, `state`) among them, with one 4 KiB
/// copy per run of consecutive pages. True if the faulting page is mapped.
fn map_rest<E: Effects>(
    core: &Core<E>,
    runs: &RegionRuns,
    run: u32,
    first: PageNum,
    index: usize,
    state: PageState,
) -> Result<bool, RuntimeError> {
    let mut held = [None; RUN_PAGES];
    held[index] = Some(state);
    for (i, h) in held.iter_mut().enumerate().filter(|&(i, _)| i != index) {
        let page = PageNum(first.0 + i as u64);
        if let Some(s) = core.table.try_lock(page) {
            match s.staged() == Some(runs.slot(run, i)) {
                true => *h = Some(s),
                false => core.table.unlock(page, s),
            }
        }
    }
    let mut served = false;
    let mut i = 0;
    while i < RUN_PAGES {
        let n = held[i..].iter().take_while(|h| h.is_some()).count();
        if n == 0 {
            i += 1;
            continue;
        }
        let addr = core.layout.addr_of(PageNum(first.0 + i as u64));
        // SAFETY: the run's slots lie end to end; we hold the pages staged in these.
        let src = unsafe { core.staging.slot_mut(runs.slot(run, i)) }.as_ptr();
        // SAFETY: `src` holds `n` pages (consecutive slots of one run).
        let done = matches!(
            unsafe { core.fx.install(addr, src, n * PAGE_BYTES, true, true) },
            Ok(Installed::Done)
        );
        for (k, h) in held[i..i + n].iter().enumerate() {
            let (page, s) = (PageNum(first.0 + (i + k) as u64), h.expect("held"));
            if !done {
                if i + k != index {
                    core.table.unlock(page, s); // still staged
                }
                continue;
            }
            runs.release(runs.slot(run, i + k));
            let mapped = after_fault(s, FaultAction::Fetch { writable: false });
            let next = match i + k == index {
                true => mapped.with_prefetched(false),
                false => mapped.with_prefetched(true).with_referenced(false),
            };
            core.table.unlock(page, next);
            core.eviction().on_insert(page, true);
            served |= i + k == index;
        }
        if done {
            core.stats
                .prefetch_mapped_ahead
                .fetch_add(n as u64 - 1, Ordering::Relaxed);
        }
        i += n;
    }
    core.stats
        .regions_page_alone
        .fetch_add(1, Ordering::Relaxed);
    let addr = core.layout.addr_of(first);
    core.fx
        .wake(addr, REGION_BYTES)
        .map_err(RuntimeError::Uffd)?;
    Ok(served)
}

/// Locks the pages of the region at `first` other than `index` into `states`, if every
/// one is still staged in its slot of `run` (waiting briefly for one that is busy: the
/// prefetcher looks at pages under their lock); else locks none.
fn lock_others<E: Effects>(
    core: &Core<E>,
    runs: &RegionRuns,
    run: u32,
    first: PageNum,
    index: usize,
    states: &mut [PageState; RUN_PAGES],
) -> bool {
    for i in (0..RUN_PAGES).filter(|&i| i != index) {
        let page = PageNum(first.0 + i as u64);
        let mut taken = core.table.try_lock(page);
        for _ in 0..BUSY_RETRIES {
            if taken.is_some() {
                break;
            }
            std::thread::yield_now();
            taken = core.table.try_lock(page);
        }
        match taken {
            Some(s) if s.staged() == Some(runs.slot(run, i)) => states[i] = s,
            other => {
                if let Some(s) = other {
                    core.table.unlock(page, s);
                }
                for j in (0..i).filter(|&j| j != index) {
                    core.table.unlock(PageNum(first.0 + j as u64), states[j]);
                }
                return false;
            }
        }
    }
    true
}

/// Unlocks the region's pages after a move of its first `moved` pages: those are mapped
/// (write-protected if `protected`; else writable, so dirty), the rest stay staged. The
/// faulting page `index`, if moved, counts as used; the others as mapped ahead.
#[allow(clippy::too_many_arguments)]
fn settle<E: Effects>(
    core: &Core<E>,
    runs: &RegionRuns,
    run: u32,
    first: PageNum,
    index: usize,
    states: &[PageState; RUN_PAGES],
    moved: usize,
    protected: bool,
) {
    let writable = !protected;
    if moved == RUN_PAGES && protected {
        // Before any page is unlocked: eviction must see the region whole from the start,
        // and keep it while the program is in it.
        core.table.mark_huge(first);
        runs.note_moved_in(first.0);
    }
    let mut policy = core.eviction();
    for (i, &s) in states.iter().enumerate() {
        let page = PageNum(first.0 + i as u64);
        if i >= moved {
            if i != index {
                core.table.unlock(page, s);
            }
            continue;
        }
        let mapped = after_fault(s, FaultAction::Fetch { writable });
        let next = match (i == index, writable) {
            (true, _) | (false, true) => mapped.with_prefetched(false),
            (false, false) => mapped.with_prefetched(true).with_referenced(false),
        };
        core.table.unlock(page, next);
        policy.on_insert(page, true);
    }
    drop(policy);
    if moved == RUN_PAGES {
        runs.release_run(run);
    } else {
        for i in 0..moved {
            runs.release(runs.slot(run, i));
        }
    }
}

/// Whether the program runs one thread (the runtime's own not counted).
fn program_runs_alone() -> bool {
    use std::io::Read;
    // Into a buffer on the stack: this runs on the fault path, which allocates nothing.
    let mut buf = [0u8; 1024];
    let Ok(n) = std::fs::File::open("/proc/self/stat").and_then(|mut f| f.read(&mut buf)) else {
        return false;
    };
    let Ok(stat) = std::str::from_utf8(&buf[..n]) else {
        return false;
    };
    // Field 20, num_threads, counted after the command's closing parenthesis (field 2).
    let threads = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse::<usize>().ok());
    threads.is_some_and(|n| n <= 1 + crate::checkpoint::internal_count())
}
