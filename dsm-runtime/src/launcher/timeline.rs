//! The job's statistics over time, for the plots of `dsmrun report`.
//!
//! Every process saves its counters once a second; `dsmrun` already reads them to watch
//! for thrashing, and keeps from each reading the job-wide totals the plots need. The
//! samples are cumulative (rates come from differences), so a missed or late reading
//! loses resolution, never counts. A long job keeps at most [`SAMPLES_MAX`] samples: when
//! full, every other one is dropped and the interval doubles, so the file stays small and
//! still covers the whole run.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Most samples kept (about 40 minutes at one a second before the interval doubles).
pub const SAMPLES_MAX: usize = 2400;

/// The job's cumulative totals at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the job started.
    pub t_s: f64,
    /// Processes that had saved statistics by then.
    pub processes: u64,
    pub faults_read: u64,
    pub faults_write: u64,
    pub faults_write_protect: u64,
    pub remote_read_pages: u64,
    pub remote_read_bytes: u64,
    pub remote_write_pages: u64,
    pub remote_write_bytes: u64,
    pub evictions: u64,
    pub evictions_clean: u64,
    pub prefetch_issued: u64,
    /// Prefetched pages used: estimated from the probes when pages were mapped ahead
    /// (`crate::stats::prefetch_used_estimate`).
    pub prefetch_used: u64,
    pub faults_network_wait: u64,
    /// Time spent in faults, summed over the job's faulting threads.
    pub stall_ns: u64,
    /// Bytes fetched from each node, by node index.
    pub remote_read_bytes_by_node: Vec<u64>,
    /// Bytes written back to each node, by node index.
    pub remote_write_bytes_by_node: Vec<u64>,
}

impl Sample {
    /// The sample of the job's `total` (as `summary::total` adds it up) at `t`.
    pub fn of_total(t: Duration, processes: usize, total: &Value) -> Sample {
        let g = |k: &str| total[k].as_u64().unwrap_or(0);
        let list = |k: &str| -> Vec<u64> {
            total[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
                .unwrap_or_default()
        };
        Sample {
            t_s: t.as_secs_f64(),
            processes: processes as u64,
            faults_read: g("faults_read"),
            faults_write: g("faults_write"),
            faults_write_protect: g("faults_write_protect"),
            remote_read_pages: g("remote_read_pages"),
            remote_read_bytes: g("remote_read_bytes"),
            remote_write_pages: g("remote_write_pages"),
            remote_write_bytes: g("remote_write_bytes"),
            evictions: g("evictions"),
            evictions_clean: g("evictions_clean"),
            prefetch_issued: g("prefetch_issued"),
            prefetch_used: crate::stats::prefetch_used_estimate(
                g("prefetch_used"),
                g("prefetch_issued"),
                g("prefetch_probes"),
            ),
            faults_network_wait: g("faults_network_wait"),
            stall_ns: total["fault_service"]["sum_ns"].as_u64().unwrap_or(0),
            remote_read_bytes_by_node: list("remote_read_bytes_by_node"),
            remote_write_bytes_by_node: list("remote_write_bytes_by_node"),
        }
    }

    /// Faults of every kind that needed the handler.
    pub fn faults(&self) -> u64 {
        self.faults_read + self.faults_write + self.faults_write_protect
    }
}

/// The samples of a run, as saved under "timeline" in the `--stats` JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Seconds between kept samples (the last one is taken at the end, whenever that is).
    pub interval_s: f64,
    /// Oldest first; the first is all zeros at the start.
    pub samples: Vec<Sample>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            interval_s: 1.0,
            samples: vec![Sample::default()],
        }
    }
}

impl Timeline {
    /// Keeps `s` if an interval has passed since the last kept sample.
    pub fn record(&mut self, s: Sample) {
        let last = self.samples.last().map_or(f64::MIN, |l| l.t_s);
        // A little slack: readings a second apart must not skip every other second.
        if s.t_s - last < self.interval_s * 0.9 {
            return;
        }
        self.samples.push(s);
        if self.samples.len() >= SAMPLES_MAX {
            self.thin();
        }
    }

    /// Keeps the final sample, whenever it comes. The readings lag the processes by up
    /// to a checkpoint period while the final counters do not, so a short last interval
    /// would show that lag as a spike: it is folded into the interval before.
    pub fn finish(&mut self, s: Sample) {
        let last = self.samples.last().map_or(f64::MIN, |l| l.t_s);
        if self.samples.len() > 1 && s.t_s - last < self.interval_s {
            self.samples.pop();
        }
        self.samples.push(s);
    }

    /// Drops every other sample (keeping the first) and doubles the interval.
    fn thin(&mut self) {
        let mut i = 0;
        self.samples.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        self.interval_s *= 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(t: f64, faults: u64) -> Sample {
        Sample {
            t_s: t,
            faults_read: faults,
            ..Sample::default()
        }
    }

    #[test]
    fn a_sample_reads_the_totals() {
        let total = json!({"faults_read": 3, "faults_write": 2, "fault_service": {"sum_ns": 7},
            "remote_read_bytes_by_node": [1, 2]});
        let s = Sample::of_total(Duration::from_millis(1500), 2, &total);
        assert_eq!((s.t_s, s.processes, s.faults(), s.stall_ns), (1.5, 2, 5, 7));
        assert_eq!(s.remote_read_bytes_by_node, vec![1, 2]);
        assert!(s.remote_write_bytes_by_node.is_empty());
    }

    #[test]
    fn keeps_one_sample_an_interval_and_the_last() {
        let mut t = Timeline::default();
        for ms in (100..=3000).step_by(100) {
            t.record(at(ms as f64 / 1000.0, ms));
        }
        t.finish(at(3.05, 3050));
        let times: Vec<f64> = t.samples.iter().map(|s| s.t_s).collect();
        assert_eq!(
            times,
            vec![0.0, 0.9, 1.8, 3.05],
            "a short last interval is folded"
        );
        t.finish(at(4.5, 4500));
        assert_eq!(t.samples.last().unwrap().t_s, 4.5);
        assert_eq!(t.samples.len(), 5);
        let mut short = Timeline::default();
        short.finish(at(0.2, 200));
        assert_eq!(short.samples.len(), 2, "the start is kept");
    }

    #[test]
    fn a_long_run_stays_bounded_and_covers_the_whole_run() {
        let mut t = Timeline::default();
        for s in 1..=10 * SAMPLES_MAX as u64 {
            t.record(at(s as f64, s));
        }
        assert!(t.samples.len() < SAMPLES_MAX, "{}", t.samples.len());
        assert_eq!(t.samples[0].t_s, 0.0);
        assert!(t.samples.last().unwrap().t_s > 9.0 * SAMPLES_MAX as f64);
        assert!(t.interval_s >= 8.0, "{}", t.interval_s);
    }
}
