//! Runtime statistics: lock-free counters bumped on the fault path, a log2 histogram of
//! fault service time, and a serialisable snapshot.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the service-time histogram: bucket `i` counts samples in `[2^i, 2^(i+1))` ns.
pub const HISTOGRAM_BUCKETS: usize = 40;

/// Nodes whose traffic is counted one by one; a node with a higher index is counted with
/// the last. A fixed array keeps the counters lock-free and allocation-free on the fault
/// path (4 KiB a process); jobs have far fewer nodes than this.
pub const NODES_COUNTED_MAX: usize = 256;

/// Bytes moved to and from each memory node, for the per-node plots of `dsmrun report`.
#[derive(Debug)]
pub struct NodeTraffic {
    read_bytes: [AtomicU64; NODES_COUNTED_MAX],
    write_bytes: [AtomicU64; NODES_COUNTED_MAX],
}

impl Default for NodeTraffic {
    fn default() -> Self {
        NodeTraffic {
            read_bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            write_bytes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl NodeTraffic {
    /// Counts `bytes` fetched from `node`.
    pub fn read(&self, node: u16, bytes: usize) {
        let i = usize::from(node).min(NODES_COUNTED_MAX - 1);
        self.read_bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `bytes` written back to `node`.
    pub fn write(&self, node: u16, bytes: usize) {
        let i = usize::from(node).min(NODES_COUNTED_MAX - 1);
        self.write_bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (read, written) bytes per node, up to the last node with any traffic.
    fn snapshot(&self) -> (Vec<u64>, Vec<u64>) {
        let load =
            |a: &[AtomicU64]| -> Vec<u64> { a.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
        let (mut r, mut w) = (load(&self.read_bytes), load(&self.write_bytes));
        let used = r
            .iter()
            .zip(&w)
            .rposition(|(a, b)| *a + *b > 0)
            .map_or(0, |i| i + 1);
        r.truncate(used);
        w.truncate(used);
        (r, w)
    }
}

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
            /// Bytes moved to and from each node.
            pub node_traffic: NodeTraffic,
        }

        /// A copy of every counter, for reports and `--stats` JSON.
        #[derive(Debug, Clone, Serialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
            /// Time from reading a fault to waking its thread.
            pub fault_service: HistogramSnapshot,
            /// Bytes fetched from each node, by node index.
            pub remote_read_bytes_by_node: Vec<u64>,
            /// Bytes written back to each node, by node index.
            pub remote_write_bytes_by_node: Vec<u64>,
        }

        impl Stats {
            /// Copies every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                let (by_node_read, by_node_write) = self.node_traffic.snapshot();
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    fault_service: self.fault_service.snapshot(),
                    remote_read_bytes_by_node: by_node_read,
                    remote_write_bytes_by_node: by_node_write,
                }
            }
        }
    };
}

counters! {
    /// Memory nodes this process declared dead and fenced (`redundancy`).
    node_deaths,
    /// Pages read from another copy (or rebuilt from their group's parity, `ec:K+1`) because their first home was dead.
    failover_read_pages,
    /// Pages written home with fewer copies than the redundancy asks for (a home dead).
    degraded_write_pages,
    /// Longest stall of one operation caused by a node's failure (first failed attempt to success on another copy), ns.
    failover_stall_ns_max,
    /// Sum of those stalls, in ns.
    failover_stall_ns_total,
    /// Pages copied onto a spare node after a death (re-protection).
    reprotect_pages,
    /// Time spent re-protecting, in ns.
    reprotect_ns,
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
    /// Fault-service rounds served by the helper handler (several threads faulting over a network).
    helper_rounds,
    /// Background reclaim rounds.
    reclaim_rounds,
    /// Faults whose thread waited for a network fetch.
    faults_network_wait,
    /// Faults served from a staged local copy (prefetched or sampled).
    staged_hits,
    /// Pages fetched by the prefetcher.
    prefetch_issued,
    /// Staged prefetched pages used before eviction (with mapping ahead on, the probes used; accuracy = used / probes, else used / issued).
    prefetch_used,
    /// Prefetched pages mapped into the range ahead of use (write-protected): their use costs no fault and is not seen one by one.
    prefetch_mapped_ahead,
    /// Prefetched pages kept staged as probes while the rest were mapped ahead: the sample whose use measures accuracy.
    prefetch_probes,
    /// Mapped-ahead pages written (a known use: the write-protect fault shows it).
    prefetch_ahead_written,
    /// Mapped-ahead pages evicted (whether they were read is not known; see the probes).
    prefetch_ahead_evicted,
    /// Prefetched pages evicted without being used.
    prefetch_unused,
    /// Victims moved out of the range into the spare pages instead of being freed (recycling, `recycle_pages`).
    recycled_out,
    /// Mapped-ahead pages installed by moving a spare page in (no allocation, no zeroing) instead of `UFFDIO_COPY`.
    recycled_in,
    /// Pages the kernel would not move (shared after a fork, pinned, the address space changing): dropped or copied the usual way instead.
    recycle_refused,
    /// Recycled pages written by the program between their move in and their write protection: kept writable and dirty.
    recycle_raced,
    /// Whole 2 MiB regions fetched into a huge page of staging (`huge_regions`); each counts as one probe.
    regions_staged,
    /// Regions moved into the range whole, as one huge page, on the first fault in them.
    regions_moved_in,
    /// Region pages installed alone by a 4 KiB copy (the region could not move whole: a page of it busy or evicted, a program with several threads, the kernel refusing).
    regions_page_alone,
    /// Regions mapped whole and evicted whole (one 2 MiB drop, or moved out).
    regions_evicted_whole,
    /// Of those, regions moved back out into a region run whole, to be refilled (no huge page allocated).
    regions_recycled,
    /// Prefetch requests dropped (queue full, or no room in the cache or staging).
    prefetch_dropped,
    /// Pages parked in staging by access sampling.
    sampled_pages,
    /// Of those, pages parked dirty (their slot held the only up-to-date copy).
    sampled_dirty_pages,
    /// Sampled pages used again before eviction (each such use cost one local fault).
    sampled_hits,
    /// Victims kept in the compressed tier instead of leaving (see `compressed_in_bytes`).
    compressed_in_pages,
    /// Their compressed bytes: the ratio is `compressed_in_pages * 4096 / compressed_in_bytes`.
    compressed_in_bytes,
    /// Of the kept victims, those dirty (their copy is newer than home).
    compressed_in_dirty,
    /// Victims tried but not kept: they compressed to more than the profile allows, and went home.
    compress_rejected,
    /// Victims not tried: they failed to compress small enough once before (a page is tried once).
    compress_skipped,
    /// Faults served by decompressing a local copy: no network.
    compressed_hits,
    /// Copies that left the compressed tier for home, clean (dropped).
    compressed_demoted_clean,
    /// Copies that left the compressed tier for home, dirty (written home first).
    compressed_demoted_dirty,
    /// Time spent compressing victims and decompressing hits.
    compress_ns,
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

    /// Fraction of prefetched pages used before eviction: measured on the probes when
    /// pages were mapped ahead (their reads are not seen one by one), else on all.
    pub fn prefetch_accuracy(&self) -> f64 {
        if self.prefetch_probes > 0 {
            ratio(self.prefetch_used, self.prefetch_probes)
        } else {
            ratio(self.prefetch_used, self.prefetch_issued)
        }
    }

    /// Prefetched pages used: counted when all were staged, estimated from the probes'
    /// accuracy when most were mapped ahead.
    pub fn prefetch_used_estimate(&self) -> u64 {
        prefetch_used_estimate(
            self.prefetch_used,
            self.prefetch_issued,
            self.prefetch_probes,
        )
    }

    /// Fraction of would-be network waits that prefetch avoided.
    pub fn prefetch_coverage(&self) -> f64 {
        let used = self.prefetch_used_estimate();
        ratio(used, used + self.faults_network_wait)
    }

    /// Faults of every kind that needed the handler.
    pub fn faults_total(&self) -> u64 {
        self.faults_read + self.faults_write + self.faults_write_protect
    }
}

/// Prefetched pages used, from the counters: `used` itself when every prefetched page was
/// staged (`probes` = 0), else the probes' accuracy times `issued` (most pages were mapped
/// ahead, and their reads are not seen one by one).
pub fn prefetch_used_estimate(used: u64, issued: u64, probes: u64) -> u64 {
    if probes == 0 {
        return used;
    }
    (ratio(used, probes) * issued as f64).round() as u64
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

    #[test]
    fn node_traffic_lists_nodes_up_to_the_last_used() {
        let st = Stats::default();
        assert!(st.snapshot().remote_read_bytes_by_node.is_empty());
        st.node_traffic.read(2, 4096);
        st.node_traffic.write(0, 8192);
        st.node_traffic.write(u16::MAX, 1);
        let s = st.snapshot();
        assert_eq!(s.remote_read_bytes_by_node.len(), NODES_COUNTED_MAX);
        assert_eq!(s.remote_read_bytes_by_node[2], 4096);
        assert_eq!(s.remote_write_bytes_by_node[0], 8192);
        assert_eq!(s.remote_write_bytes_by_node[NODES_COUNTED_MAX - 1], 1);
    }
}
