//! Watching the job while it runs: twice a second, the statistics the processes saved are
//! read once and shared by the timeline (for `dsmrun report`), the status line
//! (`--progress`) and the thrash warning.

use super::progress::Progress;
use super::summary;
use super::thrash::JobThrashWatch;
use super::timeline::{Sample, Timeline};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the statistics are read: twice per checkpoint period (the processes save
/// theirs once a second), so that the thrash watch of a short window sees each one soon.
const READ_PERIOD: Duration = Duration::from_millis(500);

/// A warning given while the job ran, kept for the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// Seconds since the job started.
    pub t_s: f64,
    /// What was printed.
    pub message: String,
}

/// What was seen while the job ran.
#[derive(Debug, Default)]
pub struct Watched {
    pub timeline: Timeline,
    pub warnings: Vec<Warning>,
}

/// The watchers of a running job.
pub struct JobWatch {
    stats_dir: PathBuf,
    started: Instant,
    /// The same moment by the wall clock, which file times are in.
    started_wall: SystemTime,
    next_read: Instant,
    progress: Option<Progress>,
    thrash: Option<JobThrashWatch>,
    /// Print the thrash warning (not with -q; the report keeps it either way).
    print_warnings: bool,
    seen: Watched,
}

impl JobWatch {
    /// Watches the statistics in `stats_dir` of a job that started at `started`.
    pub fn new(
        stats_dir: PathBuf,
        started: Instant,
        progress: bool,
        thrash: Option<JobThrashWatch>,
        print_warnings: bool,
    ) -> JobWatch {
        JobWatch {
            stats_dir,
            started,
            started_wall: SystemTime::now()
                .checked_sub(started.elapsed())
                .unwrap_or(UNIX_EPOCH),
            // At once: the thrash watch takes the start as its first sample.
            next_read: Instant::now(),
            progress: progress.then(Progress::start),
            thrash,
            print_warnings,
            seen: Watched::default(),
        }
    }

    /// Reads the statistics if a reading is due, and updates every watcher.
    pub fn poll(&mut self) {
        let now = Instant::now();
        if now < self.next_read {
            return;
        }
        self.next_read = now + READ_PERIOD;
        let processes = summary::read_processes(&self.stats_dir);
        let total = summary::total(&processes);
        let message = self.thrash.as_mut().and_then(|t| t.poll(now, &total));
        if let Some(message) = message {
            if self.print_warnings {
                self.say(&message);
            }
            self.seen.warnings.push(Warning {
                t_s: (now - self.started).as_secs_f64(),
                message,
            });
        }
        if processes.is_empty() {
            // Nothing reported yet is not "nothing done yet": no sample, so that the
            // first interval runs from the start to the first report.
            return;
        }
        let sample = Sample::of_total(self.taken_at(now), processes.len(), &total);
        self.seen.timeline.record(sample.clone());
        if let Some(p) = self.progress.as_mut() {
            p.update(sample);
        }
    }

    /// When, since the start, the figures just read were saved: the newest file's time,
    /// so that rates are not skewed by the up to a second the checkpoints lag.
    fn taken_at(&self, now: Instant) -> Duration {
        let read_at = now - self.started;
        summary::newest_write(&self.stats_dir)
            .and_then(|t| t.duration_since(self.started_wall).ok())
            .map_or(read_at, |t| t.min(read_at))
    }

    /// Prints `message` on stderr without breaking the status line.
    pub fn say(&self, message: &str) {
        match &self.progress {
            Some(p) => p.suspend(|| eprintln!("{message}")),
            None => eprintln!("{message}"),
        }
    }

    /// Erases the status line and returns what was seen.
    pub fn finish(mut self) -> Watched {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
        std::mem::take(&mut self.seen)
    }
}
