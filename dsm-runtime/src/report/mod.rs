//! `dsmrun report` and `--report`: one self-contained HTML page (no script, no network)
//! that shows where a job's time went: plots over time from the timeline the `--stats`
//! JSON carries, tables per process and per node, the options, and the warnings given.
//!
//! The page is rendered from the `--stats` document alone, so a report can be made later,
//! elsewhere, from the file a job left.

mod data;
mod html;
mod plot;
pub mod series;

use data::StatsFile;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Why no report was made; each message says what to do. (The causes are in the messages,
/// not `source`s, so that `{:#}` does not print them twice.)
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {}: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error(
        "{} is cut short (it ends at line {line}): it is not a whole `dsmrun --stats` file; \
         run the job again with --stats FILE",
        path.display()
    )]
    Truncated { path: PathBuf, line: usize },
    #[error("{} is not a `dsmrun --stats` file: {err}", path.display())]
    Invalid {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error(
        "{} has no timeline: it was written by a dsmrun older than `dsmrun report`; run the \
         job again with --stats FILE (or --report FILE)",
        path.display()
    )]
    NoTimeline { path: PathBuf },
    #[error("{} is the statistics file itself: write the report elsewhere (-o FILE.html)", path.display())]
    SameFile { path: PathBuf },
    #[error("drawing the plot {chart}: {message}")]
    Plot {
        chart: &'static str,
        message: String,
    },
    #[error("cannot write {}: {err}", path.display())]
    Write { path: PathBuf, err: std::io::Error },
}

/// `dsmrun report STATS -o OUT`.
pub fn run(stats: &Path, out: &Path) -> Result<(), ReportError> {
    if out == stats
        || out
            .canonicalize()
            .ok()
            .is_some_and(|o| stats.canonicalize().ok() == Some(o))
    {
        return Err(ReportError::SameFile { path: out.into() });
    }
    let text = std::fs::read_to_string(stats).map_err(|err| ReportError::Read {
        path: stats.into(),
        err,
    })?;
    let file: StatsFile = serde_json::from_str(&text).map_err(|e| invalid(stats, e))?;
    save(&file, stats, out)
}

/// `--report OUT`: the page of the `--stats` document `doc` a run just made.
pub fn write(doc: &Value, out: &Path) -> Result<(), ReportError> {
    let source = Path::new("the job's statistics");
    let file = StatsFile::deserialize(doc).map_err(|e| invalid(source, e))?;
    save(&file, source, out)
}

fn invalid(path: &Path, source: serde_json::Error) -> ReportError {
    match source.classify() {
        Category::Eof => ReportError::Truncated {
            path: path.into(),
            line: source.line(),
        },
        _ => ReportError::Invalid {
            path: path.into(),
            err: source,
        },
    }
}

fn save(file: &StatsFile, source: &Path, out: &Path) -> Result<(), ReportError> {
    let Some(timeline) = &file.timeline else {
        return Err(ReportError::NoTimeline {
            path: source.into(),
        });
    };
    let mut plots = Vec::new();
    for chart in series::charts(timeline, file.job.nodes) {
        let svg = plot::svg(&chart).map_err(|message| ReportError::Plot {
            chart: chart.id,
            message,
        })?;
        plots.push((chart, svg));
    }
    let page = html::page(file, &plots);
    std::fs::write(out, page).map_err(|err| ReportError::Write {
        path: out.into(),
        err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("dsm-report-{}-{name}", std::process::id()))
    }

    const GOOD: &str = r#"{"job": {"program": ["x"], "nodes": 2, "wall_time_s": 1.5,
        "exit_status": 0, "profile": "default"},
        "total": {"faults_read": 10, "remote_read_bytes_by_node": [4096, 8192]},
        "processes": [{"pid": 7, "program": "x", "stats": {"faults_read": 10}}],
        "timeline": {"interval_s": 1.0, "samples": [
            {"t_s": 0.0, "processes": 0, "faults_read": 0, "faults_write": 0,
             "faults_write_protect": 0, "remote_read_pages": 0, "remote_read_bytes": 0,
             "remote_write_pages": 0, "remote_write_bytes": 0, "evictions": 0,
             "evictions_clean": 0, "prefetch_issued": 0, "prefetch_used": 0,
             "faults_network_wait": 0, "stall_ns": 0, "remote_read_bytes_by_node": [],
             "remote_write_bytes_by_node": []},
            {"t_s": 1.5, "processes": 1, "faults_read": 10, "faults_write": 0,
             "faults_write_protect": 0, "remote_read_pages": 3, "remote_read_bytes": 12288,
             "remote_write_pages": 0, "remote_write_bytes": 0, "evictions": 0,
             "evictions_clean": 0, "prefetch_issued": 0, "prefetch_used": 0,
             "faults_network_wait": 3, "stall_ns": 5000, "remote_read_bytes_by_node": [4096, 8192],
             "remote_write_bytes_by_node": []}]},
        "warnings": [{"t_s": 1.0, "message": "dsmrun: warning: <thrashing>"}]}"#;

    #[test]
    fn renders_a_page_from_a_stats_file() {
        let (input, out) = (tmp("good.json"), tmp("good.html"));
        std::fs::write(&input, GOOD).unwrap();
        run(&input, &out).unwrap();
        let page = std::fs::read_to_string(&out).unwrap();
        assert!(
            page.contains("&lt;thrashing&gt;"),
            "warnings are shown, escaped"
        );
        assert_eq!(page.matches("<figure").count(), 7);
        for outside in ["src=", "<script", "<link", "url("] {
            assert!(!page.contains(outside), "the page loads nothing: {outside}");
        }
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&out);
    }

    #[test]
    fn bad_files_get_errors_that_say_what_is_wrong() {
        let input = tmp("bad.json");
        let out = tmp("bad.html");
        let cut = &GOOD[..GOOD.len() / 2];
        let cases = [
            (cut.to_string(), "is cut short (it ends at line"),
            ("[1, 2]".to_string(), "is not a `dsmrun --stats` file"),
            ("\u{0}garbage".to_string(), "is not a `dsmrun --stats` file"),
            (String::new(), "is cut short"),
            (
                GOOD.replace("\"timeline\"", "\"old_timeline\""),
                "has no timeline",
            ),
            (
                GOOD.replace("\"t_s\": 1.5", "\"t_s\": \"soon\""),
                "is not a `dsmrun --stats` file",
            ),
        ];
        for (text, expected) in cases {
            std::fs::write(&input, &text).unwrap();
            let e = run(&input, &out).expect_err(&text).to_string();
            assert!(e.contains(expected), "{e}");
        }
        let same = run(&input, &input).unwrap_err().to_string();
        assert!(same.contains("is the statistics file itself"), "{same}");
        let missing = run(Path::new("/nonexistent/stats.json"), &out).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("cannot read /nonexistent/stats.json"));
        let _ = std::fs::remove_file(&input);
    }
}
