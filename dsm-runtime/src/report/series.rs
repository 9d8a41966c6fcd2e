//! What each plot shows, computed from the timeline's cumulative samples: rates over each
//! interval, or shares to date.

use crate::launcher::timeline::{Sample, Timeline};
use crate::stats::NODES_COUNTED_MAX;

/// One line of a plot: (seconds, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Stable name, for the page's anchors and tests.
    pub id: &'static str,
    pub title: &'static str,
    pub y_label: &'static str,
    pub series: Vec<Series>,
}

impl Chart {
    /// Points over all its lines.
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// Every plot of the report, for a job with `nodes` nodes.
pub fn charts(t: &Timeline, nodes: usize) -> Vec<Chart> {
    let s = &t.samples;
    let nodes = nodes
        .max(node_count(s, |x| &x.remote_read_bytes_by_node))
        .max(node_count(s, |x| &x.remote_write_bytes_by_node))
        .min(NODES_COUNTED_MAX);
    vec![
        Chart {
            id: "faults",
            title: "Faults per second, by kind",
            y_label: "faults/s",
            series: vec![
                rate(s, "read", |x| x.faults_read as f64),
                rate(s, "write", |x| x.faults_write as f64),
                rate(s, "write-protect", |x| x.faults_write_protect as f64),
            ],
        },
        Chart {
            id: "remote-read",
            title: "Remote reads per node (MiB/s)",
            y_label: "MiB/s",
            series: per_node_mib_rate(s, nodes, |x| &x.remote_read_bytes_by_node),
        },
        Chart {
            id: "remote-write",
            title: "Remote writes (write-backs) per node (MiB/s)",
            y_label: "MiB/s",
            series: per_node_mib_rate(s, nodes, |x| &x.remote_write_bytes_by_node),
        },
        Chart {
            id: "hit-rate",
            title: "Cache hit rate: share of faults served locally (%)",
            y_label: "%",
            series: vec![
                per_fault(s, "without waiting for the network", |x| {
                    x.faults_network_wait
                }),
                per_fault(s, "without any fetch (the summary's fault hit rate)", |x| {
                    x.remote_read_pages.saturating_sub(x.prefetch_issued)
                }),
            ],
        },
        Chart {
            id: "stalled",
            title: "Share of time stalled in faults (%, summed over threads)",
            y_label: "%",
            series: vec![rate(s, "stalled", |x| x.stall_ns as f64 / 1e7)],
        },
        Chart {
            id: "evictions",
            title: "Evictions and write-backs per second",
            y_label: "pages/s",
            series: vec![
                rate(s, "evictions", |x| x.evictions as f64),
                rate(s, "clean evictions", |x| x.evictions_clean as f64),
                rate(s, "pages written back", |x| x.remote_write_pages as f64),
            ],
        },
        Chart {
            id: "prefetch",
            title: "Prefetch accuracy and coverage, to date (%)",
            y_label: "%",
            series: vec![
                to_date(s, "accuracy (used / issued)", |x| {
                    share(x.prefetch_used, x.prefetch_issued)
                }),
                to_date(s, "coverage (used / (used + network waits))", |x| {
                    share(x.prefetch_used, x.prefetch_used + x.faults_network_wait)
                }),
            ],
        },
    ]
}

fn node_count(s: &[Sample], f: impl Fn(&Sample) -> &Vec<u64>) -> usize {
    s.iter().map(|x| f(x).len()).max().unwrap_or(0)
}

fn by_node(v: &[u64], n: usize) -> f64 {
    v.get(n).copied().unwrap_or(0) as f64
}

fn share(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// One MiB/s series per node, from the per-node byte counters `bytes` picks.
fn per_node_mib_rate(
    s: &[Sample],
    nodes: usize,
    bytes: impl Fn(&Sample) -> &Vec<u64> + Copy,
) -> Vec<Series> {
    (0..nodes)
        .map(|n| rate(s, &format!("node {n}"), |x| by_node(bytes(x), n) / MIB))
        .collect()
}

/// The per-second rate of the cumulative `f` over each interval, at the interval's end.
/// Intervals that do not move forward in time (a hand-edited file) are skipped.
fn rate(s: &[Sample], name: &str, f: impl Fn(&Sample) -> f64) -> Series {
    let points = s
        .windows(2)
        .filter(|w| w[1].t_s > w[0].t_s)
        .map(|w| {
            let d = (f(&w[1]) - f(&w[0])).max(0.0);
            (w[1].t_s, d / (w[1].t_s - w[0].t_s))
        })
        .collect();
    Series {
        name: name.into(),
        points,
    }
}

/// `f` of each sample but the all-zero first.
fn to_date(s: &[Sample], name: &str, f: impl Fn(&Sample) -> f64) -> Series {
    Series {
        name: name.into(),
        points: s.iter().skip(1).map(|x| (x.t_s, f(x))).collect(),
    }
}

/// Per interval, the share of faults that did not cost the cumulative `missed`;
/// intervals without faults have no point. Prefetched pages count as fetched, so the
/// share is clamped at zero.
fn per_fault(s: &[Sample], name: &str, missed: impl Fn(&Sample) -> u64) -> Series {
    let points = s
        .windows(2)
        .filter_map(|w| {
            let faults = w[1].faults().saturating_sub(w[0].faults());
            let missed = missed(&w[1]).saturating_sub(missed(&w[0]));
            (faults > 0 && w[1].t_s > w[0].t_s).then(|| {
                (
                    w[1].t_s,
                    (100.0 * (1.0 - missed as f64 / faults as f64)).max(0.0),
                )
            })
        })
        .collect();
    Series {
        name: name.into(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, faults: u64, fetched: u64, node1_bytes: u64) -> Sample {
        Sample {
            t_s: t,
            faults_read: faults,
            remote_read_pages: fetched,
            remote_read_bytes_by_node: vec![0, node1_bytes],
            ..Sample::default()
        }
    }

    #[test]
    fn rates_come_from_differences() {
        let t = Timeline {
            interval_s: 1.0,
            samples: vec![
                Sample::default(),
                sample(1.0, 100, 50, 2 << 20),
                sample(3.0, 300, 50, 6 << 20),
                // Time going backwards is skipped, not divided by.
                sample(3.0, 400, 60, 6 << 20),
            ],
        };
        let c = charts(&t, 1);
        let get = |id: &str| c.iter().find(|c| c.id == id).unwrap().clone();
        assert_eq!(
            get("faults").series[0].points,
            vec![(1.0, 100.0), (3.0, 100.0)]
        );
        let reads = get("remote-read");
        assert_eq!(reads.series.len(), 2, "nodes seen in the data count");
        assert_eq!(reads.series[1].points, vec![(1.0, 2.0), (3.0, 2.0)]);
        assert_eq!(
            get("hit-rate").series[1].points,
            vec![(1.0, 50.0), (3.0, 100.0)]
        );
        assert_eq!(get("prefetch").series[0].points.len(), 3);
    }

    #[test]
    fn a_single_sample_gives_empty_plots_not_a_panic() {
        let c = charts(&Timeline::default(), 0);
        assert!(c.iter().all(|c| c.points() == 0));
    }
}
