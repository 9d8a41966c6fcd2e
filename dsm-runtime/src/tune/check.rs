//! Checking the simulator against a real run: the prediction for the profile a trace was
//! recorded with, next to the counters the run measured (`dsmrun --stats FILE`). The
//! simulator is trusted for ranking only while the two agree (the bar: remote
//! fetches within 10%).

use super::Prediction;
use std::io::Write;

/// One counter, measured and predicted.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The statistics counter's name.
    pub counter: &'static str,
    /// What the run measured (`None`: not in the statistics file).
    pub measured: Option<u64>,
    /// What the simulator predicts.
    pub predicted: u64,
}

impl Comparison {
    /// (predicted - measured) / measured; `None` without a measurement or when both are 0.
    pub fn relative_error(&self) -> Option<f64> {
        let m = self.measured?;
        match (m, self.predicted) {
            (0, 0) => Some(0.0),
            (0, _) => None,
            (m, p) => Some((p as f64 - m as f64) / m as f64),
        }
    }
}

/// The first number named `key` anywhere in `v` (the statistics may be nested in a
/// launcher's report).
fn find_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| map.values().find_map(|c| find_u64(c, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|c| find_u64(c, key)),
        _ => None,
    }
}

/// Lines up `prediction` with the run's statistics (the JSON of `StatsSnapshot`).
pub fn compare_with_stats(prediction: &Prediction, stats: &serde_json::Value) -> Vec<Comparison> {
    let c = &prediction.counts;
    let measured = |key| find_u64(stats, key);
    let demand = measured("remote_read_pages")
        .zip(measured("prefetch_issued"))
        .map(|(all, prefetched)| all.saturating_sub(prefetched));
    vec![
        Comparison {
            counter: "remote_read_pages",
            measured: measured("remote_read_pages"),
            predicted: prediction.remote_pages(),
        },
        Comparison {
            counter: "remote_read_pages - prefetch_issued",
            measured: demand,
            predicted: c.remote_fetches,
        },
        Comparison {
            counter: "zero_fills",
            measured: measured("zero_fills"),
            predicted: c.zero_fills,
        },
        Comparison {
            counter: "prefetch_issued",
            measured: measured("prefetch_issued"),
            predicted: c.prefetch_issued,
        },
        Comparison {
            counter: "prefetch_used",
            measured: measured("prefetch_used"),
            predicted: c.prefetch_used,
        },
        Comparison {
            counter: "evictions",
            measured: measured("evictions"),
            predicted: c.evictions,
        },
        Comparison {
            counter: "remote_write_pages",
            measured: measured("remote_write_pages"),
            predicted: c.writebacks,
        },
    ]
}

/// Writes the comparison as a table.
pub fn write_comparison(out: &mut dyn Write, rows: &[Comparison]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<36}  {:>12}  {:>12}  {:>8}",
        "counter", "measured", "predicted", "error"
    )?;
    for r in rows {
        let measured = r.measured.map_or_else(|| "-".to_owned(), |m| m.to_string());
        let error = r
            .relative_error()
            .map_or_else(|| "-".to_owned(), |e| format!("{:+.1}%", e * 100.0));
        writeln!(
            out,
            "{:<36}  {:>12}  {:>12}  {:>8}",
            r.counter, measured, r.predicted, error
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::sim::SimCounts;

    #[test]
    fn lines_up_counters_even_when_nested() {
        let p = Prediction {
            profile: "default".into(),
            summary: String::new(),
            cache_pages: 64,
            counts: SimCounts {
                remote_fetches: 90,
                prefetch_issued: 20,
                prefetch_used: 15,
                zero_fills: 7,
                ..SimCounts::default()
            },
        };
        let stats = serde_json::json!({
            "exit_status": 0,
            "runtime": {"remote_read_pages": 100, "prefetch_issued": 25, "zero_fills": 7}
        });
        let rows = compare_with_stats(&p, &stats);
        assert_eq!(rows[0].measured, Some(100));
        assert_eq!(rows[0].predicted, 110);
        assert!((rows[0].relative_error().unwrap() - 0.10).abs() < 1e-9);
        assert_eq!(rows[1].measured, Some(75));
        assert_eq!(rows[2].relative_error(), Some(0.0));
        assert_eq!(rows[4].measured, None);
        let mut out = Vec::new();
        write_comparison(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("+10.0%"), "{text}");
    }
}
