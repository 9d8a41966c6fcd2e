//! Runtime statistics: lock-free counters bumped on the fault path, a log2 histogram of
//! fault service time, and a serialisable snapshot.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the service-time histogram: bucket `i` counts samples in `[2^i, 2^(i+1))` ns.
pub const HISTOGRAM_BUCKETS: usize = 40;

/// Log2 histogram of durations in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, ns: u64) {
        let b = (63 - ns.max(1).leading_zeros() as usize).min(HISTOGRAM_BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        let sum_ns = self.sum_ns.load(Ordering::Relaxed);
        let quantile = |q: f64| -> u64 {
            let target = (count as f64 * q).ceil() as u64;
            let mut seen = 0;
            for (i, c) in buckets.iter().enumerate() {
                seen += c;
                if seen >= target.max(1) {
                    return 1u64 << (i + 1);
                }
            }
            0
        };
        HistogramSnapshot {
            count,
            mean_ns: sum_ns.checked_div(count).unwrap_or(0),
            p50_ns_upper: if count == 0 { 0 } else { quantile(0.5) },
            p99_ns_upper: if count == 0 { 0 } else { quantile(0.99) },
            sum_ns,
            log2_buckets: buckets,
        }
    }
}

/// A histogram as reported: quantiles are bucket upper bounds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Samples.
    pub count: u64,
    /// Mean in ns.
    pub mean_ns: u64,
    /// Median, rounded up to its bucket's upper bound.
    pub p50_ns_upper: u64,
    /// 99th percentile, rounded up to its bucket's upper bound.
    pub p99_ns_upper: u64,
    /// Total ns.
    pub sum_ns: u64,
    /// Counts per log2 bucket of ns.
    pub log2_buckets: Vec<u64>,
}

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident),* $(,)?) => {
        /// Live counters, shared by the fault handlers and the reclaimer.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Time from reading a fault to waking its thread.
            pub fault_service: Histogram,
        }

        /// A copy of every counter, for reports and `--stats` JSON.
        #[derive(Debug, Clone, Serialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
            /// Time from reading a fault to waking its thread.
            pub fault_service: HistogramSnapshot,
        }

        impl Stats {
            /// Copies every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    fault_service: self.fault_service.snapshot(),
                }
            }
        }
    };
}

counters! {
    /// Missing faults caused by reads.
    faults_read,
    /// Missing faults caused by writes.
    faults_write,
    /// Write-protect faults (first write to a clean resident page).
    faults_write_protect,
    /// Faults found already served (another thread's fault installed the page).
    faults_spurious,
    /// Faults that waited because the page was busy (being evicted or fetched).
    faults_deferred,
    /// Pages installed as zeros without a network trip (never written back).
    zero_fills,
    /// Untouched pages zero-filled ahead of a write's zero-fill, sparing their own faults.
    zero_fills_ahead,
    /// Pages fetched from memory nodes.
    remote_read_pages,
    /// Bytes fetched from memory nodes.
    remote_read_bytes,
    /// Read batches sent (one per fault-service round).
    remote_read_batches,
    /// Pages written back to memory nodes.
    remote_write_pages,
    /// Bytes written back to memory nodes.
    remote_write_bytes,
    /// Write-back batches sent.
    remote_write_batches,
    /// Pages evicted (clean and dirty).
    evictions,
    /// Evicted pages that were clean: dropped without traffic.
    evictions_clean,
    /// Dirty evicted pages that were all zeros and never home: dropped, not written (a zero-fill serves them next time, and they claim no node memory).
    evictions_zero,
    /// Times a fault handler had to reclaim because the cache was full.
    direct_reclaims,
    /// Background reclaim rounds.
    reclaim_rounds,
    /// Faults whose thread waited for a network fetch.
    faults_network_wait,
    /// Faults served from a staged local copy (prefetched or sampled).
    staged_hits,
    /// Pages fetched by the prefetcher.
    prefetch_issued,
    /// Prefetched pages used before eviction (accuracy = used / issued).
    prefetch_used,
    /// Prefetched pages evicted without being used.
    prefetch_unused,
    /// Prefetch requests dropped (queue full, or no room in the cache or staging).
    prefetch_dropped,
    /// Pages parked in staging by access sampling.
    sampled_pages,
    /// Of those, pages parked dirty (their slot held the only up-to-date copy).
    sampled_dirty_pages,
    /// Sampled pages used again before eviction (each such use cost one local fault).
    sampled_hits,
    /// Time the reclaimer spent parking sampled pages.
    sampling_ns,
    /// Cached pages the program gave up (madvise DONTNEED or FREE, the allocator's purge): dropped without a write-back.
    discarded_pages,
    /// Clean pages found dropped behind the runtime's back (a thread kept faulting on them while their state said mapped) and installed again.
    pages_remapped,
    /// Pages cached now (mapped or staged).
    resident_pages,
    /// Highest number of pages resident at once.
    resident_pages_peak,
}

impl StatsSnapshot {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("stats serialise")
    }

    /// Fraction of prefetched pages used before eviction.
    pub fn prefetch_accuracy(&self) -> f64 {
        ratio(self.prefetch_used, self.prefetch_issued)
    }

    /// Fraction of would-be network waits that prefetch avoided.
    pub fn prefetch_coverage(&self) -> f64 {
        ratio(
            self.prefetch_used,
            self.prefetch_used + self.faults_network_wait,
        )
    }

    /// Faults of every kind that needed the handler.
    pub fn faults_total(&self) -> u64 {
        self.faults_read + self.faults_write + self.faults_write_protect
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_bound_the_samples() {
        let h = Histogram::default();
        for ns in [1000, 1100, 1200, 50_000] {
            h.record(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ns_upper, 2048);
        assert_eq!(s.p99_ns_upper, 65536);
        assert_eq!(s.mean_ns, (1000 + 1100 + 1200 + 50_000) / 4);
    }

    #[test]
    fn snapshot_serialises_every_counter() {
        let st = Stats::default();
        st.zero_fills.fetch_add(3, Ordering::Relaxed);
        let json = st.snapshot().to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["zero_fills"], 3);
        assert!(v["fault_service"]["log2_buckets"].is_array());
    }
}
