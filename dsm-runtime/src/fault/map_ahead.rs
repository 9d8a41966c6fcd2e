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
use crate::space::PageNum;
use std::sync::atomic::Ordering;

/// Retries of an install the kernel answers with EAGAIN before keeping the page staged.
const INSTALL_RETRIES: usize = 100;

/// Whether `page` stays staged as a probe (every page does when mapping ahead is off).
pub(crate) fn is_probe(page: PageNum, every: usize) -> bool {
    every <= 1 || page.0 % every as u64 == every as u64 - 1
}

/// Maps the non-probe pages of `staged` (fetched, locked, each holding budget and a slot
/// with its bytes) write-protected into the range and unlocks them; leaves the probes,
/// and any page the kernel would not take, in `staged` for the caller to publish as
/// staged prefetches.
pub(crate) fn install<E: Effects>(
    core: &Core<E>,
    staged: &mut Vec<Staged>,
) -> Result<(), RuntimeError> {
    let every = core.config.prefetch_probe_every;
    if every <= 1 || staged.is_empty() {
        return Ok(());
    }
    let last = staged.iter().map(|s| s.page.0).max();
    let mut kept = 0;
    for i in 0..staged.len() {
        let s = &staged[i];
        if is_probe(s.page, every) || Some(s.page.0) == last || !map_one(core, s)? {
            staged.swap(kept, i);
            kept += 1;
        }
    }
    let mapped = (staged.len() - kept) as u64;
    let mut policy = core.eviction();
    for s in staged.drain(kept..) {
        policy.on_insert(s.page, true);
    }
    drop(policy);
    let st = &core.stats;
    st.prefetch_mapped_ahead
        .fetch_add(mapped, Ordering::Relaxed);
    st.prefetch_probes.fetch_add(kept as u64, Ordering::Relaxed);
    Ok(())
}

/// Installs one staged page write-protected and unlocks it as a shared, still
/// prefetched page; false if it must stay staged (mapped behind our back, or the address
/// space kept changing).
fn map_one<E: Effects>(core: &Core<E>, s: &Staged) -> Result<bool, RuntimeError> {
    let addr = core.layout.addr_of(s.page);
    // SAFETY: the page is locked by us, so its slot is ours.
    let src = unsafe { core.staging.slot_mut(s.slot) }.as_ptr();
    for _ in 0..INSTALL_RETRIES {
        // Waking: a thread may have faulted on the page while we held it (its fault is
        // deferred, and would also be woken when retried).
        // SAFETY: `src` is a full page.
        match unsafe {
            core.fx
                .install(addr, src, crate::space::PAGE_BYTES, true, false)
        } {
            Ok(Installed::Done) => {
                core.staging.release(s.slot);
                let shared = after_fault(s.state, FaultAction::Fetch { writable: false });
                // Not referenced: nobody has used it yet.
                core.table
                    .unlock(s.page, shared.with_prefetched(true).with_referenced(false));
                return Ok(true);
            }
            Ok(Installed::AlreadyPresent) => return Ok(false),
            Err(e) if is_transient(&e) => std::thread::yield_now(),
            Err(e) => return Err(RuntimeError::Uffd(e)),
        }
    }
    Ok(false)
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
