//! Prefetched pages mapped ahead of use.
//!
//! A prefetched page that waits in staging still costs its first user a userfaultfd round
//! trip (a local install, 12-45 us). So most prefetched pages are installed straight into
//! the global range, write-protected (a later write faults and is tracked as for any
//! clean page), and their use costs nothing.
//!
//! A mapped page's reads are invisible to the runtime: this kernel has no idle page
//! tracking (`/sys/kernel/mm/page_idle` is absent) and `PAGEMAP_SCAN` reports writes, not
//! accesses. So a sample of the prefetched pages, the *probes*, stays staged as before:
//! one page in [`RuntimeConfig::prefetch_probe_every`] by page number, and the last page
//! of every batch. A probe's use traps, which
//!
//! - measures accuracy on the sample (`prefetch_probes_used / prefetch_probes`, the
//!   estimate [`crate::stats::StatsSnapshot::prefetch_accuracy`] reports);
//! - drives the prefetch policy on: the handler reports the mapped-ahead pages the thread
//!   passed over since the previous probe ([`passed_over`]) and then the probe, so a
//!   stream keeps advancing although most of its pages never fault.
//!
//! A write to a mapped-ahead page is a known use (counted in `prefetch_ahead_written`).
//! A mapped-ahead page evicted is counted in `prefetch_ahead_evicted`: whether it was read
//! is not known, which is why the probes exist.
//!
//! [`RuntimeConfig::prefetch_probe_every`]: crate::config::RuntimeConfig::prefetch_probe_every

use super::prefetcher::Staged;
use super::uffd::{is_transient, Installed};
use crate::coherence::state::{after_fault, FaultAction};
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use std::sync::atomic::Ordering;

/// Retries of an install the kernel answers with EAGAIN before keeping the page staged.
const INSTALL_RETRIES: usize = 100;

/// Whether `page` stays staged as a probe (every page does when mapping ahead is off).
pub(crate) fn is_probe(page: PageNum, every: usize) -> bool {
    every <= 1 || page.0 % every as u64 == every as u64 - 1
}

/// Whether a page of a batch whose highest page is `last` stays staged: a probe, or the
/// batch's last page (so that every batch has one, whatever its stride).
pub(crate) fn stays_staged(page: PageNum, last: u64, every: usize) -> bool {
    is_probe(page, every) || page.0 == last
}

/// The highest page of a batch.
pub(crate) fn last_page(staged: &[Staged]) -> u64 {
    staged.iter().map(|s| s.page.0).max().unwrap_or(0)
}

/// How a mapped-ahead install went.
enum Mapped {
    /// Mapped write-protected and unlocked as a shared prefetched page.
    Ahead,
    /// Already mapped behind our back: kept as it is and unlocked dirty (whatever it holds
    /// goes home rather than being dropped), as the fault handler does.
    WasThere,
    /// The address space kept changing: still locked, for the caller to stage.
    Refused,
}

/// Maps the pages of `staged` (fetched, locked, each holding budget and a slot with its
/// bytes) that are not to stay staged write-protected into the range and unlocks them;
/// leaves the rest in `staged` for the caller to publish as staged prefetches.
pub(crate) fn install<E: Effects>(
    core: &Core<E>,
    staged: &mut Vec<Staged>,
) -> Result<(), RuntimeError> {
    let every = core.config.prefetch_probe_every;
    if every <= 1 || staged.is_empty() {
        return Ok(());
    }
    let last = last_page(staged);
    let mut mapped = 0;
    for s in staged.iter_mut() {
        if stays_staged(s.page, last, every) {
            continue;
        }
        // SAFETY: the page is locked by us, so its slot is ours.
        let src = unsafe { core.staging.slot_mut(s.slot) }.as_ptr();
        match map_one(core, s, src)? {
            Mapped::Ahead => mapped += 1,
            Mapped::WasThere => {}
            Mapped::Refused => continue,
        }
        s.done = true;
    }
    staged.retain(|s| !s.done);
    count(core, mapped, staged.len());
    Ok(())
}

/// Installs the pages of `staged` (sorted by page, locked, each holding budget and a
/// slot) that are not to stay staged, from `ahead_buf`, which holds their bytes one after
/// the other in that order: each run of consecutive pages with one `UFFDIO_COPY`
/// (write-protected). Unlocks them and leaves the rest in `staged` (their bytes in their
/// slots).
pub(crate) fn install_runs<E: Effects>(
    core: &Core<E>,
    staged: &mut Vec<Staged>,
    ahead_buf: &[u8],
) -> Result<(), RuntimeError> {
    let every = core.config.prefetch_probe_every;
    let last = last_page(staged);
    let ahead = |s: &Staged| !stays_staged(s.page, last, every);
    let (mut i, mut k, mut mapped) = (0, 0, 0);
    while i < staged.len() {
        if !ahead(&staged[i]) {
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < staged.len()
            && ahead(&staged[i + n])
            && staged[i + n].page.0 == staged[i].page.0 + n as u64
        {
            n += 1;
        }
        let bytes = &ahead_buf[k * PAGE_BYTES..(k + n) * PAGE_BYTES];
        // Recycled evicted pages first; what they do not cover is copied.
        let recycled = map_recycled(core, &mut staged[i..i + n], bytes)?;
        mapped += recycled;
        let (run, bytes) = (
            &mut staged[i + recycled..i + n],
            &bytes[recycled * PAGE_BYTES..],
        );
        if run.is_empty() {
        } else if map_run(core, run, bytes.as_ptr())? {
            mapped += run.len();
        } else {
            // Some page was there after all, or the kernel refused the run: page by page.
            mapped += map_each(core, run, bytes)?;
        }
        i += n;
        k += n;
    }
    staged.retain(|s| !s.done);
    count(core, mapped, staged.len());
    Ok(())
}

/// Maps the pages of `run` one by one from `bytes` (theirs, in order); a page the kernel
/// keeps refusing gets its bytes copied to its slot and stays staged. Returns how many
/// were mapped ahead.
fn map_each<E: Effects>(
    core: &Core<E>,
    run: &mut [Staged],
    bytes: &[u8],
) -> Result<usize, RuntimeError> {
    let mut mapped = 0;
    for (s, page) in run.iter_mut().zip(bytes.chunks_exact(PAGE_BYTES)) {
        match map_one(core, s, page.as_ptr())? {
            Mapped::Ahead => mapped += 1,
            Mapped::WasThere => {}
            Mapped::Refused => {
                // SAFETY: the page is locked by us, so its slot is ours.
                unsafe { core.staging.slot_mut(s.slot) }.copy_from_slice(page);
                continue;
            }
        }
        s.done = true;
    }
    Ok(mapped)
}

/// Counts a batch's mapped-ahead pages and probes.
fn count<E: Effects>(core: &Core<E>, mapped: usize, probes: usize) {
    let st = &core.stats;
    st.prefetch_mapped_ahead
        .fetch_add(mapped as u64, Ordering::Relaxed);
    st.prefetch_probes
        .fetch_add(probes as u64, Ordering::Relaxed);
}

/// The state of a page mapped ahead: shared, still prefetched (unconfirmed), and not
/// referenced, since nobody has used it yet.
fn ahead_state(s: &Staged) -> crate::coherence::PageState {
    after_fault(s.state, FaultAction::Fetch { writable: false })
        .with_prefetched(true)
        .with_referenced(false)
}

/// Installs the consecutive pages of `run` from `src` in one call; true if all were
/// mapped (they are then unlocked and done), false if none was and the caller must
/// settle them one by one.
fn map_run<E: Effects>(
    core: &Core<E>,
    run: &mut [Staged],
    src: *const u8,
) -> Result<bool, RuntimeError> {
    let addr = core.layout.addr_of(run[0].page);
    // Waking: a thread may have faulted on a page while we held it.
    // SAFETY: `src` holds `run.len()` full pages.
    match unsafe {
        core.fx
            .install(addr, src, run.len() * PAGE_BYTES, true, false)
    } {
        Ok(Installed::Done) => {
            let mut policy = core.eviction();
            for s in run.iter_mut() {
                core.staging.release(s.slot);
                core.table.unlock(s.page, ahead_state(s));
                policy.on_insert(s.page, true);
                s.done = true;
            }
            Ok(true)
        }
        Ok(Installed::AlreadyPresent) => Ok(false),
        Err(e) if is_transient(&e) => Ok(false),
        Err(e) => Err(RuntimeError::Uffd(e)),
    }
}

/// Maps the consecutive pages of `run` (locked, not mapped) from recycled spare pages
/// holding `bytes` (theirs, in order), as far as the spares go; returns how many, from
/// the first (those are unlocked and done).
///
/// A page moved in arrives writable (the kernel builds its entry afresh), so it is
/// write-protected right after; a program thread that wrote it in between left bytes
/// that differ from `bytes` (the page held exactly those when it moved in): such a page
/// is kept writable and dirty, as a page found mapped behind our back is, so that the
/// write goes home. A write of the same bytes changed nothing and needs no tracking.
fn map_recycled<E: Effects>(
    core: &Core<E>,
    run: &mut [Staged],
    bytes: &[u8],
) -> Result<usize, RuntimeError> {
    let Some(spares) = &core.spares else {
        return Ok(0);
    };
    let addr = core.layout.addr_of(run[0].page);
    let (tried, n) = spares.give(&core.fx, addr, bytes);
    let st = &core.stats;
    st.recycle_refused
        .fetch_add((tried - n) as u64, Ordering::Relaxed);
    if n == 0 {
        return Ok(0);
    }
    // A failure leaves the pages writable: all are then treated as written.
    let protected = core.write_protect(addr, n * PAGE_BYTES, true, true).is_ok();
    let mut raced = 0;
    let mut policy = core.eviction();
    for (j, s) in run[..n].iter_mut().enumerate() {
        let page = addr + j * PAGE_BYTES;
        // SAFETY: a page we just mapped and hold locked; write-protected, so its bytes
        // stay put while we compare (a racing write was made before the protection).
        let now = unsafe { std::slice::from_raw_parts(page as *const u8, PAGE_BYTES) };
        core.staging.release(s.slot);
        s.done = true;
        if protected && now == &bytes[j * PAGE_BYTES..(j + 1) * PAGE_BYTES] {
            core.table.unlock(s.page, ahead_state(s));
            policy.on_insert(s.page, true);
            continue;
        }
        if protected {
            // Writable again, as its dirty state says (a write-protect fault on a page
            // held exclusive would only be woken, forever).
            core.write_protect(page, PAGE_BYTES, false, true)?;
        }
        let dirty = after_fault(s.state, FaultAction::Fetch { writable: true });
        core.table.unlock(s.page, dirty.with_prefetched(false));
        policy.on_insert(s.page, false);
        raced += 1;
    }
    drop(policy);
    // A thread may have faulted on a page while we held it.
    core.fx
        .wake(addr, n * PAGE_BYTES)
        .map_err(RuntimeError::Uffd)?;
    st.recycled_in.fetch_add(n as u64, Ordering::Relaxed);
    st.recycle_raced.fetch_add(raced, Ordering::Relaxed);
    Ok(n)
}

/// Installs one locked page from `src` write-protected.
fn map_one<E: Effects>(core: &Core<E>, s: &Staged, src: *const u8) -> Result<Mapped, RuntimeError> {
    let addr = core.layout.addr_of(s.page);
    for _ in 0..INSTALL_RETRIES {
        // SAFETY: `src` is a full page.
        match unsafe { core.fx.install(addr, src, PAGE_BYTES, true, false) } {
            Ok(Installed::Done) => {
                core.staging.release(s.slot);
                core.table.unlock(s.page, ahead_state(s));
                core.eviction().on_insert(s.page, true);
                return Ok(Mapped::Ahead);
            }
            Ok(Installed::AlreadyPresent) => {
                // Mapped behind our back (or by a run that stopped part way): keep it,
                // dirty, so that what it holds goes home rather than being dropped.
                core.staging.release(s.slot);
                let dirty = after_fault(s.state, FaultAction::Fetch { writable: true });
                core.table.unlock(s.page, dirty.with_prefetched(false));
                core.eviction().on_insert(s.page, false);
                core.fx.wake(addr, PAGE_BYTES).map_err(RuntimeError::Uffd)?;
                return Ok(Mapped::WasThere);
            }
            Err(e) if is_transient(&e) => std::thread::yield_now(),
            Err(e) => return Err(RuntimeError::Uffd(e)),
        }
    }
    Ok(Mapped::Refused)
}

/// The mapped-ahead pages just before probe `page` that the program has most likely
/// passed over on its way to the probe, oldest first, into `out` (cleared first): at most
/// `2 * prefetch_probe_every`, stopping at the first page that is not mapped ahead.
pub(crate) fn passed_over<E: Effects>(core: &Core<E>, page: PageNum, out: &mut Vec<PageNum>) {
    out.clear();
    let every = core.config.prefetch_probe_every as u64;
    if every <= 1 {
        return;
    }
    let mut p = page.0;
    while p > 0 && page.0 - p < 2 * every {
        p -= 1;
        let s = core.table.get(PageNum(p));
        if !(s.prefetched() && s.resident() && !s.busy()) {
            break;
        }
        out.push(PageNum(p));
    }
    out.reverse();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_in_n_is_a_probe_and_all_are_when_off() {
        let probes = (0..64).filter(|&p| is_probe(PageNum(p), 16)).count();
        assert_eq!(probes, 4);
        assert!(is_probe(PageNum(15), 16) && !is_probe(PageNum(16), 16));
        assert!((0..10).all(|p| is_probe(PageNum(p), 0) && is_probe(PageNum(p), 1)));
    }
}
