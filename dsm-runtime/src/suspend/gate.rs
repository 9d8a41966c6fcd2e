//! The gate in front of the fault path: closed while a process is suspended.

use super::{Release, Released};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a thread waiting at a closed gate looks whether the runtime is stopping.
const STOP_RECHECK: Duration = Duration::from_millis(10);

#[derive(Default)]
struct State {
    closed: bool,
    /// Runtime threads serving faults or prefetches right now.
    inside: usize,
    /// The control thread asked the reclaimer to write the dirty pages home and to drop
    /// or keep the cache.
    release_requested: Option<Release>,
    /// What the reclaimer reported once the cache was emptied.
    released: Option<Result<Released, String>>,
}

/// Counts the runtime threads inside the fault path and keeps them out while closed.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A thread's permission to serve faults; the gate cannot finish closing while one is held.
pub(crate) struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.inside -= 1;
        drop(s);
        self.0.changed.notify_all();
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while the gate is closed, then lets the caller in; `None` if `stopping` says
    /// the runtime is shutting down meanwhile.
    pub(crate) fn enter(&self, stopping: impl Fn() -> bool) -> Option<Pass<'_>> {
        let mut s = self.lock();
        while s.closed {
            if stopping() {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, STOP_RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.inside += 1;
        Some(Pass(self))
    }

    /// Closes the gate, waits (at most `within`) for the threads inside to leave, asks
    /// for the dirty pages to be written home and the cache dropped or kept (`release`;
    /// `kick` wakes the reclaimer) and waits for the answer. The gate stays closed
    /// whatever the outcome, until [`Gate::open`].
    pub(crate) fn close_and_release(
        &self,
        within: Duration,
        release: Release,
        kick: impl Fn(),
    ) -> Result<Released, String> {
        let deadline = Instant::now() + within;
        let mut s = self.lock();
        s.closed = true;
        s.released = None;
        while s.inside > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} runtime thread(s) stayed busy serving faults for {} ms",
                    s.inside,
                    within.as_millis()
                ));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.release_requested = Some(release);
        drop(s);
        kick();
        let mut s = self.lock();
        loop {
            if let Some(r) = s.released.take() {
                return r;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.release_requested = None;
                return Err(format!(
                    "emptying the cache took longer than {} ms",
                    within.as_millis()
                ));
            }
            s = self
                .changed
                .wait_timeout(s, left.min(STOP_RECHECK))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if s.released.is_none() {
                drop(s);
                kick();
                s = self.lock();
            }
        }
    }

    /// Whether the cache is to be written home now, and then dropped or kept (taken
    /// once per request).
    pub(crate) fn take_release_request(&self) -> Option<Release> {
        std::mem::take(&mut self.lock().release_requested)
    }

    /// Hands the outcome of emptying the cache to the waiting control thread.
    pub(crate) fn report_released(&self, outcome: Result<Released, String>) {
        self.lock().released = Some(outcome);
        self.changed.notify_all();
    }

    /// Opens the gate: faults are served again. Returns whether it was closed.
    pub(crate) fn open(&self) -> bool {
        let was = std::mem::take(&mut self.lock().closed);
        self.changed.notify_all();
        was
    }

    /// Whether the gate is closed (the process is suspended or being suspended).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_waits_for_threads_inside_and_keeps_new_ones_out() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter(|| false).expect("open gate lets in");
        let g = Arc::clone(&gate);
        let closer = std::thread::spawn(move || {
            let g2 = Arc::clone(&g);
            g.close_and_release(Duration::from_secs(5), Release::Drop, move || {
                if g2.take_release_request().is_some() {
                    g2.report_released(Ok(Released::default()));
                }
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "closed while a thread was inside");
        drop(pass);
        assert_eq!(closer.join().unwrap(), Ok(Released::default()));
        assert!(gate.is_closed());
        // A thread arriving now waits until it opens, or gives up when stopping.
        assert!(gate.enter(|| true).is_none());
        assert!(gate.open());
        assert!(gate.enter(|| false).is_some());
    }

    #[test]
    fn a_thread_that_never_leaves_makes_closing_fail_not_hang() {
        let gate = Gate::default();
        let _pass = gate.enter(|| false).unwrap();
        let err = gate
            .close_and_release(Duration::from_millis(30), Release::Drop, || {})
            .unwrap_err();
        assert!(err.contains("stayed busy"), "{err}");
    }
}
