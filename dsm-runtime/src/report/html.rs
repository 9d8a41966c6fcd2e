//! The report page: plots, then tables. Plain HTML with inline CSS and inline SVG, so it
//! opens anywhere, offline, and prints.

use super::data::{Counters, Process, StatsFile};
use super::series::Chart;
use serde_json::Value;
use std::fmt::Write;

const STYLE: &str = "
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 8px; }
figure { margin: 0; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; margin: 4px 0; }
";

/// The whole page.
pub fn page(file: &StatsFile, plots: &[(Chart, String)]) -> String {
    let program = esc(&file.job.program.join(" "));
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>dsmrun report: {program}</title><style>{STYLE}</style></head><body>\n\
         <h1>dsmrun report: <code>{program}</code></h1>\n<p>{}</p>\n",
        headline(file)
    );
    warnings(&mut h, file);
    h.push_str("<h2>Over time</h2>\n<div class=\"plots\">\n");
    for (chart, svg) in plots {
        let _ = writeln!(
            h,
            "<figure class=\"plot\" id=\"plot-{}\" data-points=\"{}\">{svg}</figure>",
            chart.id,
            chart.points()
        );
    }
    h.push_str("</div>\n");
    processes(&mut h, &file.processes);
    nodes(&mut h, &file.total);
    options(&mut h, file);
    h.push_str("</body></html>\n");
    h
}

fn headline(file: &StatsFile) -> String {
    let t = &file.total;
    let hit = t
        .hit_rate()
        .map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0));
    let wall = file.job.wall_time_s;
    let stalled = t.fault_service.sum_ns as f64 / 1e9;
    format!(
        "{} process(es) on {} node(s); ran {wall:.1} s, exit status {}; {} faults, fault hit \
         rate {hit}; {stalled:.2} s stalled in faults ({:.0}% of the run, summed over threads); \
         fetched {}, wrote back {}; {} evictions.",
        file.processes.len(),
        file.job.nodes,
        file.job.exit_status,
        t.faults(),
        100.0 * stalled / wall.max(1e-9),
        mib(t.remote_read_bytes),
        mib(t.remote_write_bytes),
        t.evictions,
    )
}

fn warnings(h: &mut String, file: &StatsFile) {
    h.push_str("<h2>Warnings</h2>\n");
    if file.warnings.is_empty() {
        h.push_str("<p>None: the job did not thrash.</p>\n");
    }
    for w in &file.warnings {
        let _ = writeln!(
            h,
            "<div class=\"warn\">at {:.0} s: {}</div>",
            w.t_s,
            esc(&w.message)
        );
    }
}

fn processes(h: &mut String, list: &[Process]) {
    h.push_str(
        "<h2>Processes</h2>\n<table><tr><th>pid</th><th class=\"l\">program</th><th>slot</th>\
         <th class=\"l\">transport</th><th>faults</th><th>hit rate</th><th>stalled (s)</th>\
         <th>p99 fault (µs)</th><th>fetched (MiB)</th><th>written back (MiB)</th>\
         <th>evictions</th><th>peak resident (MiB)</th><th class=\"l\">final stats</th></tr>\n",
    );
    for p in list {
        let s = &p.stats;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>\
             <td>{}</td><td>{:.1}</td><td class=\"l\">{}</td></tr>",
            p.pid,
            esc(&p.program),
            p.slot.map_or("-".into(), |s| s.to_string()),
            esc(p.transport.as_deref().unwrap_or("-")),
            s.faults(),
            percent(s.hit_rate()),
            s.fault_service.sum_ns as f64 / 1e9,
            s.fault_service.p99_ns_upper as f64 / 1e3,
            s.remote_read_bytes as f64 / MIB,
            s.remote_write_bytes as f64 / MIB,
            s.evictions,
            (s.resident_pages_peak * crate::space::PAGE_BYTES as u64) as f64 / MIB,
            if p.complete == Some(false) {
                "no: last checkpoint"
            } else {
                "yes"
            },
        );
    }
    h.push_str("</table>\n");
}

fn nodes(h: &mut String, t: &Counters) {
    let (r, w) = (&t.remote_read_bytes_by_node, &t.remote_write_bytes_by_node);
    let (read_sum, write_sum) = (r.iter().sum::<u64>(), w.iter().sum::<u64>());
    h.push_str(
        "<h2>Nodes</h2>\n<table><tr><th>node</th><th>fetched (MiB)</th><th>share</th>\
         <th>written back (MiB)</th><th>share</th></tr>\n",
    );
    for n in 0..r.len().max(w.len()) {
        let (a, b) = (
            r.get(n).copied().unwrap_or(0),
            w.get(n).copied().unwrap_or(0),
        );
        let _ = writeln!(
            h,
            "<tr><td>{n}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            a as f64 / MIB,
            percent((read_sum > 0).then(|| a as f64 / read_sum as f64)),
            b as f64 / MIB,
            percent((write_sum > 0).then(|| b as f64 / write_sum as f64)),
        );
    }
    h.push_str("</table>\n");
}

fn options(h: &mut String, file: &StatsFile) {
    h.push_str("<h2>Job and options</h2>\n<table>\n");
    for (k, v) in &file.job.all {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
            esc(k),
            esc(&text)
        );
    }
    h.push_str("</table>\n");
}

const MIB: f64 = (1u64 << 20) as f64;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn percent(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{:.1}%", r * 100.0))
}

/// Text made safe for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
