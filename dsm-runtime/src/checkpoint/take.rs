//! Taking a checkpoint of a suspended process, on its control thread.
//!
//! The gate opens for a moment so that every program thread can take the stop signal (a
//! thread waiting in a fault behind a closed gate cannot run a handler until served);
//! once all are stopped, the gate closes again and every dirty cached page is written
//! home and write-protected, so that the whole global heap is at home on the nodes while
//! the cache stays (clean: the program goes on with it after the checkpoint); the
//! reclaimer is parked and the image written. The threads are then let go: they find
//! the gate closed, as in any suspended process (a write to a cached page now takes a
//! write-protect fault, which waits behind the gate too, so nothing the nodes snapshot
//! next can change), and the caller resumes or ends the process as it sees fit.

use super::freeze::{self, Stopped, COUNT, SLOTS};
use super::write::{write_image, Process, Written};
use crate::runtime::Core;
use crate::suspend::Release;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the program threads may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a checkpoint wrote.
pub(crate) struct Taken {
    pub(crate) bytes: u64,
    pub(crate) threads: usize,
    pub(crate) ms: u128,
}

/// Writes this process's image to `path`; the process stays suspended either way.
/// `client` is the control connection the request came on (the runtime's).
pub(crate) fn take(core: &Core, path: &Path, client: i32) -> Result<Taken, String> {
    let start = Instant::now();
    if !path.is_absolute() {
        return Err(format!(
            "{}: the image path must be absolute",
            path.display()
        ));
    }
    if !core.gate.is_closed() {
        return Err("the process is not suspended: suspend it first".into());
    }
    let hook = super::restart_hook();
    if hook == 0 {
        return Err(
            "this process has no restart hook (the runtime was not started by \
                    dsm-preload), so it could not be restarted"
                .into(),
        );
    }
    only_process()?;
    // Refused descriptors and mappings are refused before the threads are disturbed
    // (and again while writing, should one have appeared meanwhile).
    super::fds::program_fds(&[client])?;
    super::write::check_shared_mappings(&process_of(core, hook, client, [0; 4]))?;
    core.gate.open();
    let stopped = match freeze::stop_program_threads(STOP_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            resuspend(core)?;
            return Err(e);
        }
    };
    let written = save(core, path, &stopped, (hook, client));
    stopped.release();
    if !core.gate.is_closed() {
        resuspend(core)?;
    }
    let threads = SLOTS[..COUNT.load(Ordering::Acquire)]
        .iter()
        .filter(|s| s.tid.load(Ordering::Relaxed) > 0)
        .count();
    written.map(|w| Taken {
        bytes: w.bytes,
        threads,
        ms: start.elapsed().as_millis(),
    })
}

fn release_timeout(core: &Core) -> Duration {
    Duration::from_millis(core.config.node_timeout_ms.saturating_mul(4))
        .max(Duration::from_secs(60))
}

/// Closes the gate and empties the cache again (the process is suspended as before).
fn resuspend(core: &Core) -> Result<(), String> {
    core.gate
        .close_and_release(release_timeout(core), Release::Drop, || core.kick_reclaim())
        .map(|_| ())
        .map_err(|e| format!("suspending the process again after a failed checkpoint: {e}"))
}

/// With every program thread stopped: writes the dirty pages home (the cache stays,
/// clean), parks the reclaimer, writes.
fn save(
    core: &Core,
    path: &Path,
    stopped: &Stopped,
    (hook, client): (usize, i32),
) -> Result<Written, String> {
    let cleaned = core
        .gate
        .close_and_release(release_timeout(core), Release::Keep, || core.kick_reclaim())?;
    if cleaned.pages_left > 0 {
        return Err(format!(
            "{} dirty page(s) stayed locked and could not be written home",
            cleaned.pages_left
        ));
    }
    let main_tid = std::process::id() as i32;
    freeze::MAIN_TID.store(main_tid, Ordering::Release);
    let main = SLOTS[..COUNT.load(Ordering::Acquire)]
        .iter()
        .find(|s| s.tid.load(Ordering::Relaxed) == main_tid)
        .ok_or("the main thread has ended: the checkpointer cannot restore such a process")?;
    let mut process = process_of(core, hook, client, stopped.previous_raw());
    process.main_tid = main_tid;
    process.main_fs_base = main.fs_base.load(Ordering::Relaxed);
    core.ckpt_pause
        .park(release_timeout(core), || core.kick_reclaim())?;
    let written = write_image(path, &process);
    core.ckpt_pause.unpark();
    written
}

/// What the image says of the process besides its memory (the main thread's fields are
/// filled in once it is stopped).
fn process_of(core: &Core, hook: usize, client: i32, stop_action: freeze::RawAction) -> Process {
    let base = core.layout.base as u64;
    Process {
        hook: hook as u64,
        slot: base..base + core.layout.bytes(),
        main_tid: 0,
        main_fs_base: 0,
        stop_signal: (freeze::stop_signal(), stop_action),
        client,
    }
}

/// Refuses a process with children: a job of several processes is not saved.
fn only_process() -> Result<(), String> {
    for tid in freeze::list_threads()? {
        let children =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return Err(format!(
                "the job has more than one process (child pid {child}): the checkpointer \
                 saves single-process programs only"
            ));
        }
    }
    Ok(())
}
