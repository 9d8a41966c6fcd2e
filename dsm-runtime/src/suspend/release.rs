//! Writing a quiesced process's dirty pages home, and then emptying its cache (a
//! suspend: the staging pool's memory is given back too) or keeping it, clean (a
//! checkpoint).

use super::flush::{Flusher, Release, BATCH_PAGES};
use crate::cache::Evictor;
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::PageNum;
use crate::transport::Session;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pages per write-back batch of the per-page eviction path: the largest batch the
/// runtime allows (config.rs), since nothing waits on this eviction but the suspend.
const RELEASE_BATCH_PAGES: usize = 1024;
/// Rounds in a row that may evict nothing (pages locked by a program thread's discard)
/// before the cache is declared as empty (or as clean) as it will get.
const IDLE_ROUNDS_MAX: usize = 200;
/// Set (to anything but `0`) in the program's environment, a suspend empties the cache
/// through the ordinary eviction path, page by page, as it did before the batched path
/// (for side-by-side measurements, `benches/suspend.sh`).
pub const EVICT_PATH_ENV: &str = "DSM_SUSPEND_EVICT";

/// What emptying (or cleaning) the cache did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Pages that left the cache (written home if dirty, else dropped).
    pub pages_dropped: u64,
    /// Pages written home.
    pub pages_written: u64,
    /// Pages still cached afterwards (locked by a program thread throughout); when the
    /// cache is kept, dirty pages that could not be written home.
    pub pages_left: u64,
    /// Time it took.
    pub elapsed_ms: u64,
}

/// Writes every dirty cached page home, then drops every cached page (and frees the
/// staging pool's memory and the spare pages kept for recycling) or keeps them
/// (`release`). The fault path is closed, so no page comes in meanwhile. Runs on the
/// reclaimer, with its session.
pub(crate) fn release_cache<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    release: Release,
) -> Result<Released, RuntimeError> {
    let start = Instant::now();
    let written_before = core.stats.remote_write_pages.load(Ordering::Relaxed);
    let (dropped, left) = match release {
        Release::Drop => {
            let mut dropped = 0;
            if !evict_path_chosen() {
                dropped += flush_mapped(core, session, Release::Drop)?;
            }
            // What is left (staged and compressed copies, pages that were locked): the
            // ordinary eviction path.
            dropped += evict_all(core, session)?;
            core.staging.release_memory();
            if let Some(spares) = &core.spares {
                spares.release_memory();
            }
            (dropped, core.budget.used() as u64)
        }
        Release::Keep => {
            flush_mapped(core, session, Release::Keep)?;
            clean_unmapped(core, session)?
        }
    };
    Ok(Released {
        pages_dropped: dropped,
        pages_written: core.stats.remote_write_pages.load(Ordering::Relaxed) - written_before,
        pages_left: left,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

fn evict_path_chosen() -> bool {
    std::env::var_os(EVICT_PATH_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The cached pages whose state satisfies `wanted`, address-ordered.
fn cached_pages<E: Effects>(
    core: &Core<E>,
    wanted: impl Fn(crate::coherence::PageState) -> bool,
) -> Vec<PageNum> {
    let mut pages = Vec::new();
    core.table.pages_cached(&mut pages);
    pages.retain(|&p| wanted(core.table.get(p)));
    pages.sort_unstable();
    pages
}

/// Writes the mapped dirty pages home in large batches and drops or keeps every mapped
/// page ([`super::flush`]); pages locked meanwhile are tried again a few times. Returns
/// the pages handled.
fn flush_mapped<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
    release: Release,
) -> Result<u64, RuntimeError> {
    // Kept pages that are clean need nothing; dropped ones all leave.
    let wanted = |s: crate::coherence::PageState| match release {
        Release::Drop => s.resident(),
        Release::Keep => s.access() == crate::coherence::Access::Exclusive,
    };
    let mut flusher = Flusher::new();
    let mut handled = 0;
    let mut idle = 0;
    loop {
        let pages = cached_pages(core, wanted);
        if pages.is_empty() || idle >= IDLE_ROUNDS_MAX {
            return Ok(handled);
        }
        let mut progress = 0;
        for chunk in pages.chunks(BATCH_PAGES) {
            progress += flusher.batch(core, session, chunk, release)?;
        }
        handled += progress;
        if progress == 0 {
            idle += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Evicts every cached page through the ordinary eviction path; returns how many left.
fn evict_all<E: Effects>(core: &Core<E>, session: &mut dyn Session) -> Result<u64, RuntimeError> {
    let mut evictor = Evictor::new(RELEASE_BATCH_PAGES);
    let mut dropped = 0u64;
    let mut idle = 0;
    while core.budget.used() > 0 && idle < IDLE_ROUNDS_MAX {
        let n = evictor.evict(core, session, usize::MAX)?;
        if n == 0 {
            idle += 1;
            std::thread::sleep(Duration::from_millis(1));
        } else {
            idle = 0;
            dropped += n as u64;
        }
    }
    Ok(dropped)
}

/// Writes home the dirty copies that are not mapped (staged or compressed) by evicting
/// them: few, and not worth keeping. Returns the pages evicted and the dirty pages left
/// (locked by a program thread throughout).
fn clean_unmapped<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
) -> Result<(u64, u64), RuntimeError> {
    let dirty = |s: crate::coherence::PageState| {
        s.access() == crate::coherence::Access::Exclusive
            || s.staged_dirty()
            || s.compressed_dirty()
    };
    let unmapped_dirty = |s: crate::coherence::PageState| !s.resident() && dirty(s);
    let mut evictor = Evictor::new(RELEASE_BATCH_PAGES);
    let mut dropped = 0;
    let mut idle = 0;
    loop {
        let pages = cached_pages(core, unmapped_dirty);
        if pages.is_empty() || idle >= IDLE_ROUNDS_MAX {
            break;
        }
        let mut progress = 0;
        for chunk in pages.chunks(RELEASE_BATCH_PAGES) {
            progress += evictor.evict_pages(core, session, chunk)? as u64;
        }
        dropped += progress;
        if progress == 0 {
            idle += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((dropped, cached_pages(core, dirty).len() as u64))
}
