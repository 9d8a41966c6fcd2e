//! Emptying the cache of a suspended process: dirty pages home, every page dropped, the
//! staging pool's memory given back.

use crate::cache::Evictor;
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::transport::Session;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pages per write-back batch while emptying the cache: the largest batch the runtime
/// allows (config.rs), since nothing waits on this eviction but the suspend itself.
const RELEASE_BATCH_PAGES: usize = 1024;
/// Rounds in a row that may evict nothing (pages locked by a program thread's discard)
/// before the cache is declared as empty as it will get.
const IDLE_ROUNDS_MAX: usize = 200;

/// What emptying the cache did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Pages that left the cache (written home if dirty, else dropped).
    pub pages_dropped: u64,
    /// Pages among them written home.
    pub pages_written: u64,
    /// Pages still cached afterwards (locked by a program thread throughout).
    pub pages_left: u64,
    /// Time it took.
    pub elapsed_ms: u64,
}

/// Evicts every cached page (the fault path is closed, so none comes back), then frees
/// the staging pool's memory and the spare pages kept for recycling. Runs on the reclaimer, with its session, and an evictor of
/// its own with large batches (its buffer is freed when done).
pub(crate) fn release_cache<E: Effects>(
    core: &Core<E>,
    session: &mut dyn Session,
) -> Result<Released, RuntimeError> {
    let start = Instant::now();
    let mut evictor = Evictor::new(RELEASE_BATCH_PAGES);
    let written_before = core.stats.remote_write_pages.load(Ordering::Relaxed);
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
    core.staging.release_memory();
    if let Some(spares) = &core.spares {
        spares.release_memory();
    }
    Ok(Released {
        pages_dropped: dropped,
        pages_written: core.stats.remote_write_pages.load(Ordering::Relaxed) - written_before,
        pages_left: core.budget.used() as u64,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}
