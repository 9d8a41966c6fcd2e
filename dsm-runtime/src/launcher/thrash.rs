//! Telling the user, while the job runs, that it is thrashing.
//!
//! A program whose working set does not fit its local cache spends most of its time
//! waiting for pages and can run tens of times slower than natively (velvetg with a
//! quarter of its memory local: more than 13x). Without a word from `dsmrun`, the user of
//! a long job learns this only from the summary at the end, hours later. So `dsmrun`
//! watches the statistics checkpoints the processes write every second and, once the
//! job's faults have taken more than half of the wall time over a whole window
//! (`--thrash-warning SECS`), says so once on stderr, with what to change.

use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Above this share of the wall time spent in faults (summed over the job's faulting
/// threads), the job is thrashing.
pub const STALL_SHARE: f64 = 0.5;
/// The window is sampled this many times (the checkpoints are a second apart anyway).
const SAMPLES_PER_WINDOW: u32 = 6;

/// One look at the job's totals.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    stall_ns: u64,
    fetched_pages: u64,
}

/// What the warning reports.
#[derive(Debug, PartialEq)]
pub struct Thrashing {
    /// Share of the window's wall time spent in faults.
    pub stall_share: f64,
    /// Pages fetched from the nodes per second over the window.
    pub fetched_per_s: f64,
    /// The window's length.
    pub window: Duration,
}

/// Decides, from samples of the job's totals, whether and when to warn (once).
pub struct ThrashWatch {
    window: Duration,
    period: Duration,
    samples: VecDeque<Sample>,
    warned: bool,
}

impl ThrashWatch {
    /// A watch over windows of `window` (at least a second).
    pub fn new(window: Duration) -> ThrashWatch {
        let window = window.max(Duration::from_secs(1));
        ThrashWatch {
            window,
            period: (window / SAMPLES_PER_WINDOW).max(Duration::from_millis(500)),
            samples: VecDeque::new(),
            warned: false,
        }
    }

    /// Whether a new sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        !self.warned
            && self
                .samples
                .back()
                .is_none_or(|s| now.duration_since(s.at) >= self.period)
    }

    /// Takes the job's totals at `now`; returns the warning the first time a full
    /// window's stall share is above [`STALL_SHARE`].
    pub fn observe(&mut self, now: Instant, total: &Value) -> Option<Thrashing> {
        if self.warned {
            return None;
        }
        let sample = Sample {
            at: now,
            stall_ns: total["fault_service"]["sum_ns"].as_u64().unwrap_or(0),
            fetched_pages: total["remote_read_pages"].as_u64().unwrap_or(0),
        };
        self.samples.push_back(sample);
        // Keep the newest sample at least a window old as the window's start.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].at) >= self.window {
            self.samples.pop_front();
        }
        let first = *self.samples.front()?;
        let span = now.duration_since(first.at);
        if span < self.window {
            return None;
        }
        let secs = span.as_secs_f64();
        let stall_share = sample.stall_ns.saturating_sub(first.stall_ns) as f64 / 1e9 / secs;
        if stall_share <= STALL_SHARE {
            return None;
        }
        self.warned = true;
        Some(Thrashing {
            stall_share,
            fetched_per_s: sample.fetched_pages.saturating_sub(first.fetched_pages) as f64 / secs,
            window: self.window,
        })
    }
}

/// A [`ThrashWatch`] over a job's totals, writing its warning.
pub struct JobThrashWatch {
    watch: ThrashWatch,
    program: String,
    cache_bytes: u64,
}

impl JobThrashWatch {
    pub fn new(window: Duration, program: String, cache_bytes: u64) -> Self {
        JobThrashWatch {
            watch: ThrashWatch::new(window),
            program,
            cache_bytes,
        }
    }

    /// Takes the job's `total` at `now` if a sample is due; returns the warning to print
    /// if it is thrashing.
    pub fn poll(&mut self, now: Instant, total: &Value) -> Option<String> {
        if !self.watch.due(now) {
            return None;
        }
        let t = self.watch.observe(now, total)?;
        Some(self.message(&t))
    }

    fn message(&self, t: &Thrashing) -> String {
        // Faults of several threads overlap, so the share can pass 100%.
        let waited = if t.stall_share <= 1.0 {
            format!(
                "{:.0}% of the last {} s",
                t.stall_share * 100.0,
                t.window.as_secs()
            )
        } else {
            format!(
                "{:.1}x the last {} s (summed over its threads)",
                t.stall_share,
                t.window.as_secs()
            )
        };
        format!(
            "dsmrun: warning: {} has waited for pages {waited}, fetching {:.0} pages a second \
             with a {} MiB local cache: it is thrashing and may run many times slower than \
             natively. A larger --local-cache helps most; --profile can help too \
             (docs/profiles.md). --thrash-warning 0 silences this.",
            self.program,
            t.fetched_per_s,
            self.cache_bytes >> 20
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn totals(stall_s: f64, fetched: u64) -> Value {
        json!({"fault_service": {"sum_ns": (stall_s * 1e9) as u64}, "remote_read_pages": fetched})
    }

    #[test]
    fn warns_once_after_a_full_window_mostly_stalled() {
        let t0 = Instant::now();
        let mut w = ThrashWatch::new(Duration::from_secs(6));
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 80% of each second in faults, 1000 pages a second.
        for s in 0..6 {
            assert_eq!(w.observe(at(s), &totals(0.8 * s as f64, 1000 * s)), None);
        }
        let t = w.observe(at(6), &totals(4.8, 6000)).expect("a warning");
        assert!((t.stall_share - 0.8).abs() < 1e-6, "{t:?}");
        assert!((t.fetched_per_s - 1000.0).abs() < 1e-6, "{t:?}");
        assert!(!w.due(at(100)), "it warns only once");
        assert_eq!(w.observe(at(7), &totals(5.6, 7000)), None);
    }

    #[test]
    fn a_busy_phase_shorter_than_the_window_is_not_thrashing() {
        let t0 = Instant::now();
        let mut w = ThrashWatch::new(Duration::from_secs(10));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut stall = 0.0;
        for s in 0..60 {
            // Four seconds fully stalled out of every twenty: 20% overall.
            stall += if s % 20 < 4 { 1.0 } else { 0.0 };
            assert_eq!(w.observe(at(s), &totals(stall, s)), None, "at {s} s");
        }
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut w = ThrashWatch::new(Duration::from_secs(4));
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Calm for 20 s, then fully stalled: the warning comes once the stalled part
        // fills most of a window, not diluted by the calm start.
        let mut warned_at = None;
        for s in 0..40u64 {
            let stall = s.saturating_sub(20) as f64;
            if w.observe(at(s), &totals(stall, 0)).is_some() {
                warned_at = Some(s);
                break;
            }
        }
        let s = warned_at.expect("a warning");
        assert!((23..=25).contains(&s), "warned at {s} s");
    }
}
