//! The live status line (`--progress`): a long job shows that it is alive, and how it
//! is doing, while it runs.
//!
//! The figures are rates over the last reading of the processes' statistics (a second
//! apart), not since the start: a job that starts fast and then thrashes should show it.
//! The line is drawn only when stderr is a terminal (indicatif hides it otherwise), so a
//! log file never fills with redraws.

use super::timeline::Sample;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

/// The status line.
pub struct Progress {
    bar: ProgressBar,
    last: Sample,
}

impl Progress {
    /// Starts drawing the line on stderr (if it is a terminal).
    pub fn start() -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        if let Ok(style) = ProgressStyle::with_template("dsmrun: {spinner} {elapsed} {wide_msg}") {
            bar.set_style(style);
        }
        bar.set_message("starting");
        // Ticks keep the elapsed time and spinner moving between readings.
        bar.enable_steady_tick(Duration::from_millis(250));
        // The first reading's rates are since the start.
        Progress {
            bar,
            last: Sample::default(),
        }
    }

    /// Shows the rates between the previous reading and `now`.
    pub fn update(&mut self, now: Sample) {
        if now.t_s > self.last.t_s {
            self.bar.set_message(status(&self.last, &now));
        }
        self.last = now;
    }

    /// Runs `f` (which prints to stderr) with the line out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Erases the line, so that the summary starts on a clean line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The line's text for the interval from `a` to `b`.
pub fn status(a: &Sample, b: &Sample) -> String {
    let secs = (b.t_s - a.t_s).max(1e-3);
    let faults = b.faults().saturating_sub(a.faults());
    let bytes = (b.remote_read_bytes + b.remote_write_bytes)
        .saturating_sub(a.remote_read_bytes + a.remote_write_bytes);
    // A hit is a fault that did not wait for the network (a prefetched page is a hit):
    // what decides how fast the job goes.
    let waited = b.faults_network_wait.saturating_sub(a.faults_network_wait);
    let hit = if faults == 0 {
        "n/a".to_string()
    } else {
        let h = (1.0 - waited as f64 / faults as f64).clamp(0.0, 1.0);
        format!("{:.1}%", h * 100.0)
    };
    let stalled = b.stall_ns.saturating_sub(a.stall_ns) as f64 / 1e9 / secs;
    format!(
        "{:.0} faults/s, remote {:.1} MiB/s, hit rate {hit}, stalled {:.0}%",
        faults as f64 / secs,
        bytes as f64 / secs / (1u64 << 20) as f64,
        stalled * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_shows_rates_over_the_interval() {
        let a = Sample {
            t_s: 1.0,
            faults_read: 100,
            faults_network_wait: 50,
            remote_read_bytes: 1 << 20,
            stall_ns: 100_000_000,
            ..Sample::default()
        };
        let b = Sample {
            t_s: 3.0,
            faults_read: 300,
            faults_network_wait: 100,
            remote_read_bytes: 5 << 20,
            stall_ns: 1_100_000_000,
            ..Sample::default()
        };
        assert_eq!(
            status(&a, &b),
            "100 faults/s, remote 2.0 MiB/s, hit rate 75.0%, stalled 50%"
        );
        assert!(status(&a, &a).contains("hit rate n/a"));
    }
}
