//! A second fault handler that works only while several threads fault over a network.
//!
//! One handler thread serves every fault by default: placement by default needs one
//! handler that sees the whole fault stream (`follow`), and over shared memory a second
//! handler only shares the same two CPUs (docs/performance.md, "Many faulting threads":
//! 0.75-1.22x, no direction). Over TCP a handler spends most of a fault waiting for the
//! network, and there a second one overlapped those waits: 4 threads of random access ran
//! 1.33-1.45x faster with two handlers in three rounds out of three. So when some node is
//! reached over a network transport, the runtime starts a helper handler that sleeps
//! until the main handler ends a window of faults from several threads, and goes back to
//! sleep when a window comes from one thread alone or nothing faults for a while.
//!
//! `DSM_HANDLER_HELPER=0` (given to `dsmrun`, which passes it on) goes without it;
//! `--handler-threads` above 1 replaces it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// `DSM_HANDLER_HELPER=0` turns the helper off.
pub const OFF_ENV: &str = "DSM_HANDLER_HELPER";

/// How often a sleeping helper checks whether the runtime is stopping: the gate's
/// opening wakes it at once, stopping is rare and may wait this long.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Whether a process with `handler_threads` handlers over the transport named
/// `transport` gets a helper: only with one handler and some node not mapped locally.
pub fn wanted(handler_threads: usize, transport: &str) -> bool {
    let off = std::env::var_os(OFF_ENV).is_some_and(|v| v == "0");
    handler_threads == 1 && transport != "shm" && !off
}

/// What `dsmrun` passes on to the program about the helper: `dsmrun` clears every
/// `DSM_*` variable from the program's environment, so a `DSM_HANDLER_HELPER=0` given to
/// it would otherwise never arrive.
pub fn passed_on() -> Vec<(&'static str, String)> {
    match std::env::var(OFF_ENV) {
        Ok(v) => vec![(OFF_ENV, v)],
        Err(_) => Vec::new(),
    }
}

/// Open while the helper should serve faults.
#[derive(Debug, Default)]
pub struct HelperGate {
    open: AtomicBool,
    lock: Mutex<()>,
    opened: Condvar,
}

impl HelperGate {
    /// Opens or closes the gate; cheap when nothing changes (the main handler calls it at
    /// the end of every window).
    pub fn set(&self, open: bool) {
        if self.open.load(Ordering::Relaxed) == open {
            return;
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.open.store(open, Ordering::Release);
        if open {
            self.opened.notify_all();
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Sleeps until the gate opens or `stopping()` says the runtime ends; true if open.
    pub fn wait_open(&self, stopping: impl Fn() -> bool) -> bool {
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.is_open() {
            if stopping() {
                return false;
            }
            held = match self.opened.wait_timeout(held, STOP_CHECK) {
                Ok((h, _)) => h,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn only_one_handler_over_a_network_gets_a_helper() {
        assert!(wanted(1, "tcp"));
        assert!(wanted(1, "shm+tcp"));
        assert!(wanted(1, "verbs"));
        assert!(!wanted(1, "shm"));
        assert!(!wanted(2, "tcp"));
    }

    #[test]
    fn a_sleeping_helper_wakes_when_the_gate_opens_and_when_the_runtime_stops() {
        let gate = Arc::new(HelperGate::default());
        let g = Arc::clone(&gate);
        let waiter = std::thread::spawn(move || g.wait_open(|| false));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        gate.set(true);
        assert!(waiter.join().unwrap());
        assert!(gate.wait_open(|| true), "an open gate does not wait");

        gate.set(false);
        let started = Instant::now();
        assert!(!gate.wait_open(|| started.elapsed() > Duration::from_millis(50)));
        assert!(started.elapsed() < STOP_CHECK * 3);
    }
}
