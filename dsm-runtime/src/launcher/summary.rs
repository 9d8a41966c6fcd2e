//! Collecting the statistics every process of a job wrote, adding them up, and the
//! short summary `dsmrun` prints.
//!
//! A process writes its file at exit (`"complete": true`) and, while it runs, a
//! checkpoint every second (`"complete": false`): a process killed by a signal leaves
//! the latest checkpoint, which the summary counts and flags.

use serde_json::{json, Map, Value};
use std::path::Path;

/// Counters that are high-water marks: combined with `max`, not summed.
/// (Each process declares a node's death on its own, so the job's count is the largest.)
const MAXIMA: &[&str] = &[
    "resident_pages_peak",
    "node_deaths",
    "failover_stall_ns_max",
];
/// Counters that describe the final state of one process: not meaningful as a sum.
const DROPPED: &[&str] = &["resident_pages"];

/// Statistics of every process found in `dir` (files `<pid>.json`), sorted by pid.
pub fn read_processes(dir: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .collect();
    out.sort_by_key(|v| v["pid"].as_u64().unwrap_or(0));
    out
}

/// When the newest statistics file in `dir` was written: the moment the figures read
/// from it describe (a checkpoint can be up to a second older than the reading).
pub fn newest_write(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
}

fn add_into(total: &mut Map<String, Value>, stats: &Map<String, Value>) {
    for (k, v) in stats {
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        match v {
            Value::Number(n) => {
                let a = total.get(k).and_then(Value::as_u64).unwrap_or(0);
                let b = n.as_u64().unwrap_or(0);
                let c = if MAXIMA.contains(&k.as_str()) {
                    a.max(b)
                } else {
                    a + b
                };
                total.insert(k.clone(), json!(c));
            }
            Value::Array(items) => {
                let entry = total
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(vec![json!(0); items.len()]));
                if let Value::Array(acc) = entry {
                    acc.resize(acc.len().max(items.len()), json!(0));
                    for (a, b) in acc.iter_mut().zip(items) {
                        *a = json!(a.as_u64().unwrap_or(0) + b.as_u64().unwrap_or(0));
                    }
                }
            }
            Value::Object(inner) => {
                let entry = total
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(acc) = entry {
                    add_into(acc, inner);
                }
            }
            _ => {}
        }
    }
}

/// Recomputes a summed histogram's mean and quantiles from its buckets and totals.
fn fix_histogram(h: &mut Map<String, Value>) {
    let count = h.get("count").and_then(Value::as_u64).unwrap_or(0);
    let sum = h.get("sum_ns").and_then(Value::as_u64).unwrap_or(0);
    h.insert("mean_ns".into(), json!(sum.checked_div(count).unwrap_or(0)));
    let buckets: Vec<u64> = h
        .get("log2_buckets")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let quantile = |q: f64| -> u64 {
        if count == 0 {
            return 0;
        }
        let target = ((count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in buckets.iter().enumerate() {
            seen += c;
            if seen >= target {
                return 1u64 << (i + 1);
            }
        }
        0
    };
    h.insert("p50_ns_upper".into(), json!(quantile(0.5)));
    h.insert("p99_ns_upper".into(), json!(quantile(0.99)));
}

/// The job-wide totals of the processes' statistics.
pub fn total(processes: &[Value]) -> Value {
    let mut acc = Map::new();
    for p in processes {
        if let Some(stats) = p["stats"].as_object() {
            add_into(&mut acc, stats);
        }
    }
    if let Some(Value::Object(h)) = acc.get_mut("fault_service") {
        fix_histogram(h);
    }
    Value::Object(acc)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Fraction of faults served locally (zero-fill, write-protect upgrade, a prefetched
/// copy, already present) rather than by fetching the page for that fault. Pages the
/// prefetcher fetched are not the faults' own fetches: counting them made the rate
/// negative under an eager prefetcher. Accesses to resident pages never fault and are
/// not counted, so this understates how often the cache hits.
pub fn fault_hit_rate(total: &Value) -> Option<f64> {
    let g = |k: &str| total[k].as_u64().unwrap_or(0);
    let faults = g("faults_read") + g("faults_write") + g("faults_write_protect");
    let demand = g("remote_read_pages").saturating_sub(g("prefetch_issued"));
    (faults > 0).then(|| (1.0 - demand as f64 / faults as f64).max(0.0))
}

/// How many processes left only a checkpoint (they did not reach their exit handlers:
/// killed by a signal, or ended by the runtime's `fatal`). Files from before checkpoints
/// existed count as complete.
pub fn incomplete(processes: &[Value]) -> usize {
    processes
        .iter()
        .filter(|p| p["complete"].as_bool() == Some(false))
        .count()
}

/// The transports the processes used, distinct, in order of first use ("shm", "tcp").
pub fn transports(processes: &[Value]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for n in processes.iter().filter_map(|p| p["transport"].as_str()) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        "an unknown transport".into()
    } else {
        names.join("+")
    }
}

/// The summary lines `dsmrun` prints; `incomplete` of the `processes` left only a
/// checkpoint.
pub fn render(total: &Value, processes: usize, incomplete: usize, transports: &str) -> String {
    let g = |k: &str| total[k].as_u64().unwrap_or(0);
    let faults = g("faults_read") + g("faults_write") + g("faults_write_protect");
    let hit = fault_hit_rate(total)
        .map(|h| format!("{:.1}%", h * 100.0))
        .unwrap_or_else(|| "n/a".into());
    let stalled_s = total["fault_service"]["sum_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
    format!(
        "dsmrun: {processes} process(es) on pooled memory over {transports}: {faults} faults (read {}, write {}, \
         write-protect {}), fault hit rate {hit}, {stalled_s:.2} s stalled in faults\n\
         dsmrun: remote reads {} pages ({}), write-backs {} pages ({}), evictions {} \
         ({} clean), zero-fills {}, peak resident {}\n",
        g("faults_read"),
        g("faults_write"),
        g("faults_write_protect"),
        g("remote_read_pages"),
        mib(g("remote_read_bytes")),
        g("remote_write_pages"),
        mib(g("remote_write_bytes")),
        g("evictions"),
        g("evictions_clean"),
        g("zero_fills"),
        mib(g("resident_pages_peak") * crate::space::PAGE_BYTES as u64),
    ) + &redundancy_line(total)
        + &if incomplete > 0 {
        format!(
            "dsmrun: {incomplete} of them ended without writing final statistics (killed by a \
             signal, or ended by a runtime failure): their figures are from their last \
             checkpoint, at most a second old\n"
        )
    } else {
        String::new()
    }
}

/// What node deaths cost the job (`redundancy`), or nothing when no node died.
fn redundancy_line(total: &Value) -> String {
    let g = |k: &str| total[k].as_u64().unwrap_or(0);
    if g("node_deaths") == 0 {
        return String::new();
    }
    let reprotected = match g("reprotect_pages") {
        0 => String::new(),
        n => format!(
            "; {n} pages re-protected (onto spares or the surviving nodes) in {:.2} s",
            g("reprotect_ns") as f64 / 1e9
        ),
    };
    format!(
        "dsmrun: redundancy: {} node(s) died and were fenced; {} pages read from another \
         copy or rebuilt from parity, {} written with fewer copies (or groups written \
         without a piece); longest stall {:.1} ms{reprotected}\n",
        g("node_deaths"),
        g("failover_read_pages"),
        g("degraded_write_pages"),
        g("failover_stall_ns_max") as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_and_take_peaks() {
        let a = json!({"pid": 1, "transport": "shm", "stats": {"faults_read": 3, "resident_pages_peak": 10,
            "resident_pages": 4,
            "fault_service": {"count": 2, "sum_ns": 300, "mean_ns": 150, "p50_ns_upper": 0,
                "p99_ns_upper": 0, "log2_buckets": [0, 2]}}});
        let b = json!({"pid": 2, "transport": "shm", "stats": {"faults_read": 4, "resident_pages_peak": 7,
            "resident_pages": 4,
            "fault_service": {"count": 1, "sum_ns": 100, "mean_ns": 100, "p50_ns_upper": 0,
                "p99_ns_upper": 0, "log2_buckets": [1, 0]}}});
        let t = total(&[a.clone(), b.clone()]);
        assert_eq!(t["faults_read"], 7);
        assert_eq!(t["resident_pages_peak"], 10);
        assert!(t.get("resident_pages").is_none());
        assert_eq!(t["fault_service"]["count"], 3);
        assert_eq!(t["fault_service"]["mean_ns"], 133);
        assert_eq!(t["fault_service"]["log2_buckets"], json!([1, 2]));
        assert_eq!(t["fault_service"]["p99_ns_upper"], 4);
        assert_eq!(transports(&[a.clone(), b.clone()]), "shm");
        assert!(render(&t, 2, 0, "shm").contains("over shm: 7 faults"));
        assert!(!render(&t, 2, 0, "shm").contains("checkpoint"));
        assert!(render(&t, 2, 1, "shm").contains("1 of them ended without writing final"));
        let c = json!({"pid": 3, "complete": false, "stats": {}});
        let d = json!({"pid": 4, "complete": true, "stats": {}});
        assert_eq!(
            incomplete(&[a.clone(), c, d]),
            1,
            "old files without the flag count as complete"
        );
    }

    #[test]
    fn the_hit_rate_leaves_out_the_prefetchers_fetches() {
        // 100 faults: 40 fetched for themselves, 60 served from 300 prefetched pages.
        let t = json!({"faults_read": 90, "faults_write": 10, "remote_read_pages": 340,
            "prefetch_issued": 300});
        assert_eq!(fault_hit_rate(&t), Some(0.6));
        let none = json!({"faults_read": 10, "remote_read_pages": 10});
        assert_eq!(fault_hit_rate(&none), Some(0.0));
        assert_eq!(fault_hit_rate(&json!({})), None);
    }
}
