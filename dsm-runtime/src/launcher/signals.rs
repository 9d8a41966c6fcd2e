//! Forwarding signals from `dsmrun` to the program.
//!
//! The forwarded signals are blocked in every thread of `dsmrun` (children unblock them
//! before `exec`) and taken by one thread with `sigwaitinfo`, so `dsmrun` itself never
//! dies of them and always tears the nodes down. A Ctrl-C or Ctrl-\ typed at the terminal
//! already reaches the program, which shares `dsmrun`'s process group: those are not sent
//! a second time. Everything else (`kill -TERM`, a batch system's `SIGUSR1`) is.
//! SIGTSTP and SIGCONT suspend and resume the job (see [`super::suspend`]) once
//! [`control_with`] has given this thread the job's controller.

use super::suspend::Controller;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Signals `dsmrun` forwards to the program.
pub const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
    libc::SIGALRM,
    libc::SIGTSTP,
];

/// Suspends and resumes the job on SIGTSTP/SIGCONT while the program runs.
static JOB_CONTROL: Mutex<Option<Arc<Controller>>> = Mutex::new(None);

/// Hands SIGTSTP and SIGCONT to `controller` (`None`: forward them as others).
pub fn control_with(controller: Option<Arc<Controller>>) {
    *JOB_CONTROL.lock().unwrap_or_else(|e| e.into_inner()) = controller;
}

/// SIGTSTP suspends the job (a batch system preempting it, or Ctrl-Z: then `dsmrun`
/// stops itself too, so that the shell sees the job stopped); SIGCONT resumes a suspended
/// job. Returns whether the signal was taken care of.
fn job_control(sig: libc::c_int, from_terminal: bool) -> bool {
    let Some(c) = JOB_CONTROL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return false;
    };
    match sig {
        libc::SIGTSTP => {
            c.say(c.suspend().map(|a| format!("SIGTSTP: {a}")));
            if from_terminal {
                // SAFETY: stops this process until a SIGCONT; no memory is involved.
                unsafe { libc::raise(libc::SIGSTOP) };
            }
            true
        }
        libc::SIGCONT if c.is_suspended() => {
            c.say(c.resume().map(|a| format!("SIGCONT: {a}")));
            true
        }
        libc::SIGWINCH => false,
        _ => {
            // A stopped program would keep any other signal pending, and a `kill` of a
            // suspended job would do nothing: resume it first, so that the signal acts
            // (a handler that touches the heap needs the fault path open).
            if c.is_suspended() {
                c.say(c.resume().map(|a| format!("signal {sig}: {a}")));
            }
            false
        }
    }
}

/// The pid signals go to (0 until the program runs).
static TARGET: AtomicI32 = AtomicI32::new(0);

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Blocks the forwarded signals in this thread (call before starting any thread or child)
/// and starts the forwarding thread.
pub fn start_forwarding() -> std::io::Result<()> {
    let set = forwarded_set();
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("dsmrun-signals".into())
        .spawn(move || loop {
            // SAFETY: siginfo_t is plain data the kernel fills.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` and `info` live on this thread's stack.
            let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
            if sig < 0 {
                continue;
            }
            let from_terminal = info.si_code == libc::SI_KERNEL;
            if job_control(sig, from_terminal) {
                continue;
            }
            if from_terminal && matches!(sig, libc::SIGINT | libc::SIGQUIT | libc::SIGWINCH) {
                continue;
            }
            let pid = TARGET.load(Ordering::Acquire);
            if pid > 0 {
                // SAFETY: kill with a pid we started and a valid signal number.
                unsafe { libc::kill(pid, sig) };
            }
        })?;
    Ok(())
}

/// Sets the process signals are forwarded to.
pub fn forward_to(pid: u32) {
    TARGET.store(pid as i32, Ordering::Release);
}

/// Stops forwarding (the program has exited; its pid may be reused).
pub fn stop_forwarding() {
    TARGET.store(0, Ordering::Release);
}
