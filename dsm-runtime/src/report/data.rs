//! The `--stats` JSON as the report reads it: typed, so that a file that is not one, or
//! is cut short, is refused with the reason instead of rendering nonsense.

use crate::launcher::timeline::Timeline;
use crate::launcher::watch::Warning;
use serde::Deserialize;
use serde_json::{Map, Value};

/// A whole `--stats` file.
#[derive(Debug, Deserialize)]
pub struct StatsFile {
    pub job: Job,
    pub total: Counters,
    pub processes: Vec<Process>,
    /// Absent from files of a `dsmrun` older than the report.
    pub timeline: Option<Timeline>,
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

/// The job and the options it ran with.
#[derive(Debug, Deserialize)]
pub struct Job {
    pub program: Vec<String>,
    pub nodes: usize,
    pub wall_time_s: f64,
    pub exit_status: i32,
    /// Every key, for the options table (options added later show up by themselves).
    #[serde(flatten)]
    pub all: Map<String, Value>,
}

/// One process of the job.
#[derive(Debug, Deserialize)]
pub struct Process {
    pub pid: u64,
    pub program: String,
    #[serde(default)]
    pub slot: Option<u64>,
    #[serde(default)]
    pub transport: Option<String>,
    /// False when the process left only a checkpoint; absent in old files.
    #[serde(default)]
    pub complete: Option<bool>,
    pub stats: Counters,
}

/// The counters the tables show, of one process or of the job.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub faults_read: u64,
    pub faults_write: u64,
    pub faults_write_protect: u64,
    pub remote_read_pages: u64,
    pub remote_read_bytes: u64,
    pub remote_write_bytes: u64,
    pub evictions: u64,
    pub evictions_clean: u64,
    pub prefetch_issued: u64,
    pub prefetch_used: u64,
    pub faults_network_wait: u64,
    pub resident_pages_peak: u64,
    pub fault_service: Service,
    pub remote_read_bytes_by_node: Vec<u64>,
    pub remote_write_bytes_by_node: Vec<u64>,
}

/// The fault service-time histogram's totals.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Service {
    pub count: u64,
    pub sum_ns: u64,
    pub p50_ns_upper: u64,
    pub p99_ns_upper: u64,
}

impl Counters {
    /// Faults of every kind that needed the handler.
    pub fn faults(&self) -> u64 {
        self.faults_read + self.faults_write + self.faults_write_protect
    }

    /// Share of faults served without fetching (as the summary line counts it).
    pub fn hit_rate(&self) -> Option<f64> {
        let f = self.faults();
        (f > 0).then(|| (1.0 - self.remote_read_pages as f64 / f as f64).max(0.0))
    }
}
