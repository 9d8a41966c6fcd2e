//! Holding the reclaimer still while the image is written: it wakes every few
//! milliseconds and, among other things, saves statistics (allocating from libc), which
//! would change the libc heap under the image writer. It parks at the top of its loop,
//! where it holds nothing.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    requested: bool,
    parked: bool,
}

/// A request to park, and the reclaimer's answer.
#[derive(Default)]
pub(crate) struct Pause {
    state: Mutex<State>,
    changed: Condvar,
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the reclaimer at the top of its loop: parks while a pause is requested.
    pub(crate) fn hold_if_requested(&self) {
        let mut s = self.lock();
        if !s.requested {
            return;
        }
        s.parked = true;
        self.changed.notify_all();
        while s.requested {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked = false;
    }

    /// Asks the reclaimer to park (`kick` wakes it) and waits until it has, at most
    /// `within`. On failure the request is withdrawn.
    pub(crate) fn park(&self, within: Duration, kick: impl Fn()) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut s = self.lock();
        s.requested = true;
        while !s.parked {
            drop(s);
            kick();
            s = self.lock();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.requested = false;
                return Err("the reclaimer did not pause for the checkpoint".into());
            }
            s = self
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets the reclaimer go on.
    pub(crate) fn unpark(&self) {
        self.lock().requested = false;
        self.changed.notify_all();
    }
}
