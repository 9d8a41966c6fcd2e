//! Policy benchmark: every access pattern, and velvetg on the velvet-example data, under
//! every shipped profile, with the cache at 25% of the working set (of velvetg's native
//! peak RSS), over real memory-node processes. Reports remote fetches,
//! faults that waited on the network, prefetch accuracy and coverage, and wall time
//! relative to the same pattern on plain local memory; writes a markdown table, a CSV
//! and an SVG plot.
//!
//! Run: `cargo build --release --workspace && cargo run --release -p dsm-benches --bin policy_bench -- [--out DIR] [--profiles a,b] [--pages N] [--patterns a,b,velvetg]`

use dsm_benches::patterns::{self, Pattern};
use dsm_benches::velvet::VelvetBench;
use dsm_benches::{cluster, dsmrun_exe, PAGE};
use dsm_runtime::policy::profile::Profile;
use dsm_runtime::runtime::Policies;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::fmt::Write as _;
use std::path::PathBuf;

struct Row {
    pattern: String,
    profile: String,
    remote_fetches: u64,
    network_waits: u64,
    prefetch_issued: u64,
    accuracy: f64,
    coverage: f64,
    slowdown: f64,
}

impl Row {
    /// A row from the counters of one run: accuracy is the share of prefetched pages
    /// used, coverage the share of would-be network waits that prefetch avoided.
    fn new(
        pattern: &str,
        profile: &str,
        remote_fetches: u64,
        network_waits: u64,
        prefetch_issued: u64,
        prefetch_used: u64,
        slowdown: f64,
    ) -> Row {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Row {
            pattern: pattern.into(),
            profile: profile.into(),
            remote_fetches,
            network_waits,
            prefetch_issued,
            accuracy: ratio(prefetch_used, prefetch_issued),
            coverage: ratio(prefetch_used, prefetch_used + network_waits),
            slowdown,
        }
    }
}

fn main() {
    let mut out = PathBuf::from("docs/bench");
    let mut profiles: Vec<String> = Profile::list()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let mut pages = 16384usize;
    let mut only: Option<Vec<String>> = None;
    // Keep the rows of patterns not run this time from the previous results in --out.
    let mut merge = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().expect("--out DIR").into(),
            "--profiles" => {
                profiles = args
                    .next()
                    .expect("--profiles a,b")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--pages" => pages = args.next().expect("--pages N").parse().expect("a number"),
            "--merge" => merge = true,
            "--patterns" => {
                only = Some(
                    args.next()
                        .expect("--patterns a,b")
                        .split(',')
                        .map(String::from)
                        .collect(),
                )
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let cache_pages = pages / 4;
    let accesses = 2 * pages;
    let mut rows = Vec::new();
    for pattern in Pattern::ALL {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == pattern.name()))
        {
            continue;
        }
        let seq = patterns::sequence(pattern, pages, cache_pages, accesses);
        let native = native_time(pattern, &seq, pages, accesses);
        for name in &profiles {
            let profile = Profile::load(name).unwrap_or_else(|e| panic!("profile {name}: {e}"));
            let row = run_one(
                pattern,
                &seq,
                pages,
                cache_pages,
                accesses,
                name,
                &profile,
                native,
            );
            eprintln!(
                "{:<18} {:<12} fetches {:>7} waits {:>7} accuracy {:>5.2} coverage {:>5.2} x{:.0}",
                row.pattern,
                row.profile,
                row.remote_fetches,
                row.network_waits,
                row.accuracy,
                row.coverage,
                row.slowdown
            );
            rows.push(row);
        }
    }
    let mut velvet_note = String::new();
    if only
        .as_ref()
        .is_none_or(|o| o.iter().any(|n| n == "velvetg"))
    {
        match velvet_rows(&profiles, &mut rows) {
            Ok(note) => velvet_note = note,
            Err(why) => eprintln!("velvetg rows skipped: {why}"),
        }
    }
    if merge {
        let (old, old_note) = previous(&out);
        if velvet_note.is_empty() {
            velvet_note = old_note;
        }
        let mut kept: Vec<Row> = old
            .into_iter()
            .filter(|o| !rows.iter().any(|r| r.pattern == o.pattern))
            .collect();
        kept.append(&mut rows);
        rows = kept;
    }
    let table = |rows: &[Row]| format!("{}{velvet_note}", table(rows, pages, cache_pages));
    std::fs::create_dir_all(&out).expect("output dir");
    std::fs::write(out.join("policies.md"), table(&rows)).expect("write table");
    std::fs::write(out.join("policies.csv"), csv(&rows)).expect("write csv");
    std::fs::write(out.join("policies.svg"), svg(&rows, &profiles)).expect("write plot");
    println!("{}", table(&rows));
}

/// The rows of a previous run's CSV in `out`, and the velvetg note of its table.
fn previous(out: &std::path::Path) -> (Vec<Row>, String) {
    let csv = std::fs::read_to_string(out.join("policies.csv")).unwrap_or_default();
    let rows = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 8).then(|| Row {
                pattern: f[0].to_string(),
                profile: f[1].to_string(),
                remote_fetches: f[2].parse().unwrap_or(0),
                network_waits: f[3].parse().unwrap_or(0),
                prefetch_issued: f[4].parse().unwrap_or(0),
                accuracy: f[5].parse().unwrap_or(0.0),
                coverage: f[6].parse().unwrap_or(0.0),
                slowdown: f[7].parse().unwrap_or(0.0),
            })
        })
        .collect();
    let md = std::fs::read_to_string(out.join("policies.md")).unwrap_or_default();
    let note = md
        .lines()
        .filter(|l| l.starts_with("velvetg:"))
        .map(|l| format!("\n{l}\n"))
        .collect();
    (rows, note)
}

/// velvetg on velvet-example natively, then under each profile with a local cache of a
/// quarter of its native peak RSS; every run's contigs must equal the native ones.
/// Returns a note for the table.
fn velvet_rows(profiles: &[String], rows: &mut Vec<Row>) -> Result<String, String> {
    let bench = VelvetBench::prepare(&dsmrun_exe())?;
    let cpu = bench.cpu().to_string();
    let native = bench.native()?;
    let cache = (native.peak_rss / 4 / PAGE as u64 * PAGE as u64).max(1 << 20);
    eprintln!(
        "velvetg native: {:.2} s, peak RSS {} MiB; cache {} MiB",
        native.secs,
        native.peak_rss >> 20,
        cache >> 20
    );
    for name in profiles {
        let run = bench.pooled(name, cache)?;
        if run.contigs != native.contigs {
            return Err(format!("velvetg's contigs.fa differs under profile {name}"));
        }
        let st = run.stats.unwrap_or_default();
        let g = |k: &str| st[k].as_u64().unwrap_or(0);
        let (issued, waits) = (g("prefetch_issued"), g("faults_network_wait"));
        let used = dsm_runtime::stats::prefetch_used_estimate(
            g("prefetch_used"),
            issued,
            g("prefetch_probes"),
        );
        let row = Row::new(
            "velvetg",
            name,
            g("remote_read_pages"),
            waits,
            issued,
            used,
            run.secs / native.secs.max(1e-9),
        );
        eprintln!(
            "velvetg            {:<12} fetches {:>7} waits {:>7} accuracy {:>5.2} coverage {:>5.2} x{:.1} ({:.1} s)",
            row.profile, row.remote_fetches, row.network_waits, row.accuracy, row.coverage, row.slowdown, run.secs
        );
        rows.push(row);
    }
    Ok(format!(
        "\nvelvetg: the unmodified Debian binary on velvet-example (velveth k=21), natively {:.2} s at a peak RSS of {} MiB; under `dsmrun -n 2 --cpus {cpu} --profile NAME` with a local cache of {} MiB (25% of that); contigs.fa identical in every run; native velvetg ran on CPU {cpu} too.\n",
        native.secs,
        native.peak_rss >> 20,
        cache >> 20
    ))
}

fn native_time(
    pattern: Pattern,
    seq: &[u32],
    pages: usize,
    accesses: usize,
) -> std::time::Duration {
    let mut mem = vec![0u8; pages * PAGE];
    let base = mem.as_mut_ptr() as usize;
    // SAFETY: `mem` spans the pages.
    unsafe { patterns::initialise(base, pages) };
    // SAFETY: initialised above.
    let t = unsafe { patterns::run(base, pattern, seq, accesses) };
    drop(mem);
    t
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    pattern: Pattern,
    seq: &[u32],
    pages: usize,
    cache_pages: usize,
    accesses: usize,
    name: &str,
    profile: &Profile,
    native: std::time::Duration,
) -> Row {
    let space = (pages * PAGE) as u64;
    let (_nodes, t) = cluster(2, space);
    let mut config = RuntimeConfig {
        space_base: 0x1800_0000_0000,
        space_bytes: space,
        cache_bytes_max: (cache_pages * PAGE) as u64,
        ..Default::default()
    };
    profile.apply(&mut config);
    let policies = Policies {
        eviction: profile.eviction(config.cache_pages()),
        prefetch: profile.prefetch(),
        placement: Some(
            profile
                .placement(2, space, pages as u64)
                .expect("placement"),
        ),
        trace: None,
    };
    let rt = Runtime::start_with(config, &t, policies).expect("runtime");
    let base = rt.base() as usize;
    // SAFETY: the global range spans the pages.
    unsafe { patterns::initialise(base, pages) };
    let before = rt.snapshot();
    // SAFETY: initialised above.
    let took = unsafe { patterns::run(base, pattern, seq, accesses) };
    let s = rt.shutdown();
    eprintln!(
        "  dropped prefetches {}, deferred faults {}",
        s.prefetch_dropped - before.prefetch_dropped,
        s.faults_deferred - before.faults_deferred
    );
    let fetched = s.remote_read_pages - before.remote_read_pages;
    let waits = s.faults_network_wait - before.faults_network_wait;
    let issued = s.prefetch_issued - before.prefetch_issued;
    // Most prefetched pages are mapped ahead: their use is estimated from the probes.
    let used = s
        .prefetch_used_estimate()
        .saturating_sub(before.prefetch_used_estimate());
    Row::new(
        pattern.name(),
        name,
        fetched,
        waits,
        issued,
        used,
        took.as_secs_f64() / native.as_secs_f64().max(1e-9),
    )
}

fn table(rows: &[Row], pages: usize, cache_pages: usize) -> String {
    let mut t = format!(
        "Working set {pages} pages ({} MiB), cache {cache_pages} pages (25%), {} accesses per run, 2 memory nodes on loopback.\n\n",
        (pages * PAGE) >> 20,
        2 * pages
    );
    t.push_str("| pattern | profile | remote fetches | faults waiting on the network | prefetches issued | accuracy | coverage | time vs native |\n");
    t.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1}x |",
            r.pattern,
            r.profile,
            r.remote_fetches,
            r.network_waits,
            r.prefetch_issued,
            r.accuracy,
            r.coverage,
            r.slowdown
        );
    }
    t
}

fn csv(rows: &[Row]) -> String {
    let mut c = String::from(
        "pattern,profile,remote_fetches,network_waits,prefetch_issued,accuracy,coverage,slowdown\n",
    );
    for r in rows {
        let _ = writeln!(
            c,
            "{},{},{},{},{},{:.4},{:.4},{:.2}",
            r.pattern,
            r.profile,
            r.remote_fetches,
            r.network_waits,
            r.prefetch_issued,
            r.accuracy,
            r.coverage,
            r.slowdown
        );
    }
    c
}

/// Grouped bars: faults that waited on the network, per pattern and profile.
fn svg(rows: &[Row], profiles: &[String]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 360.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 60.0;
    let colors = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
    ];
    // Groups in the order the rows came; each group scaled to its own worst profile, since
    // velvetg's counts dwarf the synthetic patterns'.
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.pattern.as_str()) {
            names.push(&r.pattern);
        }
    }
    let group_max = |name: &str| {
        rows.iter()
            .filter(|r| r.pattern == name)
            .map(|r| r.network_waits)
            .max()
            .unwrap_or(1)
            .max(1) as f64
    };
    let groups = names.len().max(1) as f64;
    let gw = (W - LEFT - 20.0) / groups;
    let bw = gw * 0.8 / profiles.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\">Faults that waited on the network, relative to the worst profile per pattern (lower is better); cache = 25% of working set</text>\n"
    );
    let plot_h = H - BOTTOM - 30.0;
    for (gi, &name) in names.iter().enumerate() {
        let gx = LEFT + gi as f64 * gw;
        let max = group_max(name);
        for (pi, prof) in profiles.iter().enumerate() {
            let Some(r) = rows
                .iter()
                .find(|r| r.pattern == name && &r.profile == prof)
            else {
                continue;
            };
            let h = plot_h * r.network_waits as f64 / max;
            let x = gx + gw * 0.1 + pi as f64 * bw;
            let y = H - BOTTOM - h;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} / {}: {}</title></rect>",
                bw * 0.9,
                colors[pi % colors.len()],
                name,
                prof,
                r.network_waits
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + gw / 2.0,
            H - BOTTOM + 16.0,
            name
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        H - BOTTOM,
        W - 20.0,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        "<text x=\"5\" y=\"{:.1}\">worst</text>",
        H - BOTTOM - plot_h
    );
    for (pi, prof) in profiles.iter().enumerate() {
        let x = LEFT + pi as f64 * 140.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{prof}</text>",
            H - 22.0,
            colors[pi % colors.len()],
            x + 14.0,
            H - 13.0
        );
    }
    s.push_str("</svg>\n");
    s
}
