//! Checkpoint and restart of a process's image, in the runtime itself (DMTCP's design:
//! the checkpointer is a library inside the process; CRIU does not work here, see
//! `docs/checkpoint.md`).
//!
//! A checkpoint is taken on request through the control socket while the process is
//! suspended or quiesced ([`take`]): the program's threads are stopped by a signal
//! ([`freeze`]), the dirty pages are written home (the cache stays, clean and
//! write-protected) so that the global heap is all on the nodes, and the rest of the
//! process (mappings outside the global range, descriptors, signal dispositions, the
//! threads' signal frames) is written to an image file ([`write`], layout in
//! [`format`]). A restart ([`restart`]) execs a small static restarter that maps the
//! image back and calls the restored program's restart hook, which starts a new runtime
//! over the same slot and lets the threads go on from their signal frames.
//!
//! Programs to be checkpointed run with ASLR disabled ([`disable_aslr`]), so that the
//! restarter finds the vDSO where the image expects it.

mod fds;
pub mod format;
mod freeze;
mod pause;
pub mod restart;
mod take;
mod write;

pub use fds::{note_runtime_fds, note_runtime_fds_except, open_fds};
pub(crate) use freeze::{
    forget_internal, internal_count, is_internal, register_internal, stop_if_deferred,
};
pub(crate) use pause::Pause;
pub(crate) use take::take;

use std::sync::atomic::{AtomicUsize, Ordering};

/// The restored process's entry point: called by the restarter on its own stack with the
/// main thread's TLS, with the path of the job environment file; never returns.
pub type RestartHook = extern "C" fn(job_env: *const libc::c_char) -> !;

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Sets the hook a restored process enters (dsm-preload's, which starts a new runtime).
/// A process without one cannot be checkpointed.
pub fn set_restart_hook(hook: RestartHook) {
    HOOK.store(hook as usize, Ordering::Release);
}

pub(crate) fn restart_hook() -> usize {
    HOOK.load(Ordering::Acquire)
}

/// Turns address randomisation off for the programs this process execs from now on
/// (`personality(ADDR_NO_RANDOMIZE)`): call it in a child before exec'ing a program that
/// is to be checkpointed. Its vDSO and libraries then sit at the same addresses in every
/// run, where a restarted image expects them.
pub fn disable_aslr() -> std::io::Result<()> {
    // SAFETY: personality(0xffffffff) only reports the current persona.
    let current = unsafe { libc::personality(0xffff_ffff) };
    if current < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = (current as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong;
    // SAFETY: sets this process's persona; nothing else changes.
    if unsafe { libc::personality(wanted) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
