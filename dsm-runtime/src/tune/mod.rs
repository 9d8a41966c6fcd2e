//! The trace-driven tuner: `dsmrun tune FILE [--profiles a,b,...]` replays a recorded
//! page-access trace through each profile's policies in a cache simulator ([`sim`]) and
//! ranks the profiles by predicted stall time, then remote fetches.
//!
//! The trace is read once; every profile's simulator sees each event in turn, so the
//! cost is one decode plus one cache simulation per profile, and the progress bar
//! follows the bytes read.

pub mod check;
pub mod sim;

use crate::config::parse_size;
use crate::policy::{Profile, ProfileError};
use crate::trace::{TraceError, TraceReader};
use sim::{Latencies, SimCounts, Simulator};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Traces smaller than this finish too fast for a progress bar to be worth drawing.
const PROGRESS_BYTES_MIN: u64 = 1 << 20;
/// Events between progress checks.
const PROGRESS_EVERY_EVENTS: u64 = 1 << 16;

/// Why ranking failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The trace could not be read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// A profile could not be loaded.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// Nothing to compare.
    #[error("no profiles to compare: give --profiles NAME,NAME,... (see `dsmrun profiles`)")]
    NoProfiles,
    /// The trace has no cache size and none was given.
    #[error("the trace records a cache of 0 pages: give --local-cache SIZE")]
    NoCache,
}

/// Simulation settings beyond the profiles.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct TuneParams {
    /// Costs charged per fault.
    pub latencies: Latencies,
    /// Cache size to simulate; `None`: the recorded run's.
    pub cache_pages: Option<u64>,
}

/// What one profile is predicted to do on the traced program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// Profile name.
    pub profile: String,
    /// Its policies in one line.
    pub summary: String,
    /// Simulated cache size.
    pub cache_pages: u64,
    /// The simulator's counters.
    pub counts: SimCounts,
}

impl Prediction {
    /// Pages read from memory nodes: demand fetches and prefetches (which include the
    /// extra pages of each fetch).
    pub fn remote_pages(&self) -> u64 {
        let c = &self.counts;
        c.remote_fetches + c.prefetch_issued
    }

    /// Share of prefetched pages used before eviction.
    pub fn accuracy(&self) -> Option<f64> {
        let c = &self.counts;
        (c.prefetch_issued > 0).then(|| c.prefetch_used as f64 / c.prefetch_issued as f64)
    }

    /// Share of would-be remote faults that prefetch turned into staged hits.
    pub fn coverage(&self) -> Option<f64> {
        let c = &self.counts;
        let would_be = c.prefetch_used + c.remote_fetches;
        (would_be > 0).then(|| c.prefetch_used as f64 / would_be as f64)
    }
}

/// Ranks `profiles` on the trace at `trace_path` with the default latencies and the
/// recorded cache size, best first; draws a progress bar on stderr if `progress`.
pub fn rank(
    trace_path: &Path,
    profiles: &[Profile],
    progress: bool,
) -> Result<Vec<Prediction>, TuneError> {
    rank_with(trace_path, profiles, &TuneParams::default(), progress)
}

/// [`rank`] with explicit latencies and cache size.
pub fn rank_with(
    trace_path: &Path,
    profiles: &[Profile],
    params: &TuneParams,
    progress: bool,
) -> Result<Vec<Prediction>, TuneError> {
    if profiles.is_empty() {
        return Err(TuneError::NoProfiles);
    }
    let mut reader = TraceReader::open(trace_path)?;
    let cache_pages = params.cache_pages.unwrap_or(reader.header().cache_pages);
    if cache_pages == 0 {
        return Err(TuneError::NoCache);
    }
    let mut sims: Vec<Simulator> = profiles
        .iter()
        .map(|p| Simulator::new(p, cache_pages as usize, params.latencies))
        .collect();
    let total_bytes = std::fs::metadata(trace_path).map_or(0, |m| m.len());
    let mut bar =
        (progress && total_bytes >= PROGRESS_BYTES_MIN).then(|| Progress::new(total_bytes));
    let mut events = 0u64;
    while let Some(e) = reader.next() {
        let e = e?;
        for s in &mut sims {
            s.access(&e);
        }
        events += 1;
        if events % PROGRESS_EVERY_EVENTS == 0 {
            if let Some(b) = bar.as_mut() {
                b.update(reader.bytes_read(), events);
            }
        }
    }
    if let Some(b) = bar.as_mut() {
        b.finish(events);
    }
    let mut predictions: Vec<Prediction> = profiles
        .iter()
        .zip(&sims)
        .map(|(p, s)| Prediction {
            profile: p.name.clone(),
            summary: p.summary(),
            cache_pages,
            counts: s.counts().clone(),
        })
        .collect();
    predictions.sort_by_key(|p| (p.counts.stall_ns, p.counts.remote_fetches, p.remote_pages()));
    Ok(predictions)
}

/// A `\r`-redrawn progress bar on stderr.
struct Progress {
    total_bytes: u64,
    started: Instant,
    drawn: Instant,
}

impl Progress {
    fn new(total_bytes: u64) -> Progress {
        let now = Instant::now();
        Progress {
            total_bytes,
            started: now,
            drawn: now - Duration::from_secs(1),
        }
    }

    fn draw(&self, done_bytes: u64, events: u64) {
        const WIDTH: usize = 30;
        let frac = (done_bytes as f64 / self.total_bytes.max(1) as f64).min(1.0);
        let filled = (frac * WIDTH as f64) as usize;
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a closed stderr must not fail the ranking.
        let _ = write!(
            err,
            "\rreplaying [{}{}] {:3.0}%  {:.1}M events  {:.0}s",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            frac * 100.0,
            events as f64 / 1e6,
            self.started.elapsed().as_secs_f64(),
        );
        let _ = err.flush();
    }

    fn update(&mut self, done_bytes: u64, events: u64) {
        if self.drawn.elapsed() >= Duration::from_millis(200) {
            self.draw(done_bytes, events);
            self.drawn = Instant::now();
        }
    }

    fn finish(&mut self, events: u64) {
        self.draw(self.total_bytes, events);
        let _ = writeln!(std::io::stderr());
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

/// Writes the ranking as a table, best first.
pub fn write_table(out: &mut dyn Write, predictions: &[Prediction]) -> std::io::Result<()> {
    let name_width = predictions
        .iter()
        .map(|p| p.profile.len())
        .max()
        .unwrap_or(7)
        .max(7);
    writeln!(
        out,
        "{:>4}  {:<name_width$}  {:>10}  {:>13}  {:>10}  {:>10}  {:>8}  {:>8}  {:>10}  policies",
        "rank",
        "profile",
        "stall ms",
        "remote faults",
        "net pages",
        "prefetched",
        "accuracy",
        "coverage",
        "writebacks"
    )?;
    for (i, p) in predictions.iter().enumerate() {
        let c = &p.counts;
        writeln!(
            out,
            "{:>4}  {:<name_width$}  {:>10.1}  {:>13}  {:>10}  {:>10}  {:>8}  {:>8}  {:>10}  {}",
            i + 1,
            p.profile,
            c.stall_ns as f64 / 1e6,
            c.remote_fetches,
            p.remote_pages(),
            c.prefetch_issued,
            pct(p.accuracy()),
            pct(p.coverage()),
            c.writebacks,
            p.summary,
        )?;
    }
    Ok(())
}

/// Prints the ranking to stdout.
pub fn print_table(predictions: &[Prediction]) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = write_table(&mut out, predictions);
}

/// `dsmrun tune`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
    /// Trace recorded with `dsmrun --record-trace FILE`.
    pub trace: PathBuf,
    /// Profiles to compare: comma-separated shipped names or paths to .toml files
    /// (default: every shipped profile).
    #[arg(long)]
    pub profiles: Option<String>,
    /// Latency of a fault served by a memory node, in microseconds.
    #[arg(long, default_value_t = 35.0)]
    pub fetch_latency_us: f64,
    /// Latency of a fault served locally (staged page, zero-fill), in microseconds.
    #[arg(long, default_value_t = 13.0)]
    pub local_fault_us: f64,
    /// Simulate this local cache size (e.g. 512M) instead of the recorded run's.
    #[arg(long)]
    pub local_cache: Option<String>,
    /// Statistics of the recorded run (`dsmrun --stats FILE`): also print the
    /// prediction for the profile the trace was recorded with next to what the run
    /// measured, to check the simulator on this program.
    #[arg(long, value_name = "STATS_JSON")]
    pub check_stats: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Loads a comma-separated list of profile names or paths.
pub fn load_profiles(list: &str) -> Result<Vec<Profile>, ProfileError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Profile::load)
        .collect()
}

fn micros_to_ns(field: &str, us: f64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        (0.0..1e9).contains(&us),
        "--{field} {us}: give a latency in microseconds, like 35 or 2.5"
    );
    Ok((us * 1000.0).round() as u64)
}

/// Runs `dsmrun tune`: ranks the profiles on the trace and prints the table.
pub fn run(args: TuneArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut profiles: Vec<Profile> = match &args.profiles {
        Some(list) => load_profiles(list)?,
        None => Profile::list()
            .into_iter()
            .map(|(name, _)| Profile::load(name))
            .collect::<Result<_, _>>()?,
    };
    let header = TraceReader::open(&args.trace)?.header().clone();
    let stats = match &args.check_stats {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading statistics {}", path.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a --stats JSON file", path.display()))?;
            if !profiles.iter().any(|p| p.name == header.profile) {
                let recorded = Profile::load(&header.profile).with_context(|| {
                    format!(
                        "the trace was recorded with profile {:?}, needed for --check-stats",
                        header.profile
                    )
                })?;
                profiles.push(recorded);
            }
            Some(json)
        }
        None => None,
    };
    let cache_pages = match &args.local_cache {
        Some(size) => {
            let bytes = parse_size(size, None).map_err(|e| anyhow::anyhow!("--local-cache {e}"))?;
            Some(bytes / crate::space::PAGE_BYTES as u64)
        }
        None => None,
    };
    let params = TuneParams {
        latencies: Latencies {
            fetch_latency_ns: micros_to_ns("fetch-latency-us", args.fetch_latency_us)?,
            local_fault_ns: micros_to_ns("local-fault-us", args.local_fault_us)?,
        },
        cache_pages,
    };
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let predictions = rank_with(&args.trace, &profiles, &params, progress)
        .with_context(|| format!("tuning on {}", args.trace.display()))?;
    let events = predictions.first().map_or(0, |p| p.counts.accesses);
    println!(
        "{}: {events} accesses recorded with profile {:?}; simulated cache {} pages; fetch {} us, local fault {} us",
        args.trace.display(),
        header.profile,
        predictions.first().map_or(0, |p| p.cache_pages),
        args.fetch_latency_us,
        args.local_fault_us,
    );
    print_table(&predictions);
    if let Some(best) = predictions.first() {
        println!("best: dsmrun --profile {} ...", best.profile);
    }
    if let Some(stats) = stats {
        let recorded = predictions
            .iter()
            .find(|p| p.profile == header.profile)
            .context("the recorded profile was not simulated")?;
        println!(
            "\nsimulator vs the recorded run (profile {:?}):",
            header.profile
        );
        let rows = check::compare_with_stats(recorded, &stats);
        let _ = check::write_comparison(&mut std::io::stdout().lock(), &rows);
    }
    Ok(())
}

/// Writes the shipped profiles, one per line: name, description.
pub fn write_profiles(out: &mut dyn Write) -> std::io::Result<()> {
    let list = Profile::list();
    let width = list.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, description) in list {
        writeln!(out, "{name:<width$}  {description}")?;
    }
    writeln!(
        out,
        "\nUse one with `dsmrun --profile NAME`, or your own file with `--profile PATH.toml`\n(keys: docs/profiles.md)."
    )
}

/// Runs `dsmrun profiles`.
pub fn print_profiles() {
    let _ = write_profiles(&mut std::io::stdout().lock());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::PageNum;
    use crate::trace::{EventKind, TraceHeader, TraceWriter};

    fn profile(text: &str, name: &str) -> Profile {
        Profile::parse(text, name, "test").unwrap()
    }

    /// Writes a trace of `(kind, page)` accesses 2 us apart for a cache of `cache_pages`.
    fn write_trace(
        name: &str,
        cache_pages: u64,
        accesses: impl Iterator<Item = (EventKind, u64)>,
    ) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("dsm-tune-{}-{name}.trace", std::process::id()));
        let header = TraceHeader {
            page_bytes: 4096,
            cache_pages,
            profile: "default".into(),
        };
        let w = TraceWriter::create(&path, &header).unwrap();
        for (i, (kind, page)) in accesses.enumerate() {
            w.record_at(i as u64 * 2000, kind, PageNum(page));
        }
        w.finish().unwrap();
        path
    }

    /// A write pass over `pages` (so they get written home), then `reads` read passes.
    fn passes(pages: Vec<u64>, reads: usize) -> impl Iterator<Item = (EventKind, u64)> {
        let writes: Vec<_> = pages.iter().map(|&p| (EventKind::FaultWrite, p)).collect();
        let reads: Vec<_> = (0..reads)
            .flat_map(|_| pages.iter().map(|&p| (EventKind::FaultRead, p)))
            .collect();
        writes.into_iter().chain(reads)
    }

    fn by_name<'a>(r: &'a [Prediction], name: &str) -> &'a SimCounts {
        &r.iter().find(|p| p.profile == name).unwrap().counts
    }

    #[test]
    fn readahead_removes_most_remote_faults_of_a_scan() {
        let path = write_trace("scan", 256, passes((0..4096).collect(), 2));
        let none = profile("[prefetch]\npolicy = \"none\"\n", "none");
        let ra = profile("[prefetch]\npolicy = \"readahead\"\nmax_pages = 32\n", "ra");
        let r = rank(&path, &[none, ra], false).unwrap();
        let (n, a) = (by_name(&r, "none"), by_name(&r, "ra"));
        assert!(n.remote_fetches > 7000, "{n:?}");
        assert!(a.remote_fetches * 10 <= n.remote_fetches, "{a:?} vs {n:?}");
        assert_eq!(r[0].profile, "ra", "ranked first");
        let best = &r[0];
        assert!(best.accuracy().unwrap() > 0.9, "{best:?}");
        assert!(best.coverage().unwrap() > 0.9, "{best:?}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn stride_and_leap_remove_most_remote_faults_of_a_strided_walk() {
        for stride in [7i64, -5] {
            let pages: Vec<u64> = (0..3000).map(|i| (20_000 + i * stride) as u64).collect();
            let path = write_trace(&format!("stride{stride}"), 256, passes(pages, 2));
            let none = profile("[prefetch]\npolicy = \"none\"\n", "none");
            let st = profile(
                "[prefetch]\npolicy = \"stride\"\nmax_pages = 16\n",
                "stride",
            );
            let leap = profile("[prefetch]\npolicy = \"leap\"\nmax_pages = 16\n", "leap");
            let r = rank(&path, &[none, st, leap], false).unwrap();
            let n = by_name(&r, "none").remote_fetches;
            for name in ["stride", "leap"] {
                let c = by_name(&r, name);
                assert!(
                    c.remote_fetches * 10 <= n,
                    "stride {stride}: {name} {c:?} vs none {n}"
                );
            }
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn two_q_beats_clock_on_a_loop_slightly_larger_than_the_cache() {
        let path = write_trace("loop", 256, passes((0..280).collect(), 20));
        let clock = profile(
            "[eviction]\npolicy = \"clock\"\n[prefetch]\npolicy = \"none\"\n",
            "clock",
        );
        let two_q = profile(
            "[eviction]\npolicy = \"2q\"\n[prefetch]\npolicy = \"none\"\n",
            "2q",
        );
        let r = rank(&path, &[clock, two_q], false).unwrap();
        let (c, q) = (by_name(&r, "clock"), by_name(&r, "2q"));
        assert!(
            q.remote_fetches * 2 < c.remote_fetches,
            "2q {q:?} vs clock {c:?}"
        );
        assert_eq!(r[0].profile, "2q");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn ranking_reports_bad_input_with_reasons() {
        assert!(matches!(
            rank(
                Path::new("/nonexistent.trace"),
                &[Profile::load("default").unwrap()],
                false
            ),
            Err(TuneError::Trace(_))
        ));
        assert!(matches!(
            rank(Path::new("/x"), &[], false),
            Err(TuneError::NoProfiles)
        ));
        let e = load_profiles("default,nope").unwrap_err();
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn run_ranks_and_checks_against_a_runs_statistics() {
        let trace = write_trace("run", 64, passes((0..300).collect(), 2));
        let stats = trace.with_extension("json");
        std::fs::write(&stats, r#"{"remote_read_pages": 600, "zero_fills": 300}"#).unwrap();
        let args = |check_stats| TuneArgs {
            trace: trace.clone(),
            profiles: Some("random".into()),
            fetch_latency_us: 35.0,
            local_fault_us: 13.0,
            local_cache: Some("1M".into()),
            check_stats,
            quiet: true,
        };
        run(args(Some(stats.clone()))).unwrap();
        let e = run(args(Some(PathBuf::from("/nonexistent/stats.json")))).unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/stats.json"),
            "{e:#}"
        );
        let mut bad = args(None);
        bad.fetch_latency_us = -1.0;
        assert!(run(bad).is_err());
        std::fs::remove_file(trace).unwrap();
        std::fs::remove_file(stats).unwrap();
    }

    #[test]
    fn table_and_profile_list_print() {
        let path = write_trace("table", 64, passes((0..100).collect(), 1));
        let r = rank(
            &path,
            &load_profiles("default,random,sequential,velvet").unwrap(),
            false,
        )
        .unwrap();
        let mut out = Vec::new();
        write_table(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("velvet"));
        let mut out = Vec::new();
        write_profiles(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("default"), "{text}");
        std::fs::remove_file(path).unwrap();
    }
}
