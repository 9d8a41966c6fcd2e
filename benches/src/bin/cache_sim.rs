//! The cache simulator's long run: millions of seeded operations against the in-memory
//! effects (see `dsm_runtime::sim`), over consecutive seeds. Prints one line per seed and
//! a total; exits 1 with the failing seed and step on the first failure.
//!
//! Run: `cargo run --release -p dsm-benches --bin cache_sim -- [--seeds N] [--first SEED] [--ops-per-seed N]`
//! (or `benches/cache_sim.sh`).

use dsm_runtime::sim::{self, SimOptions, SimReport};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds = arg(&args, "--seeds", 16);
    let first = arg(&args, "--first", 1);
    let ops = arg(&args, "--ops-per-seed", 250_000);
    let start = Instant::now();
    let mut total = SimReport::default();
    for seed in first..first + seeds {
        let t = Instant::now();
        match sim::run(seed, ops, SimOptions::default()) {
            Ok(r) => {
                println!(
                    "seed {seed}: {} ops, {} processes, {} faults ({} deferred, {} direct reclaims), \
                     {} evictions, {} write-backs, \
                     {} fetches, {} sampled, {} prefetched, {} discarded, forks {}/{} allowed, \
                     {} node failures, {:.2} s",
                    r.ops,
                    r.processes,
                    r.faults,
                    r.deferred,
                    r.direct_reclaims,
                    r.evictions,
                    r.write_backs,
                    r.fetches,
                    r.sampled,
                    r.prefetched,
                    r.discarded,
                    r.forks_allowed,
                    r.forks_allowed + r.forks_refused,
                    r.node_failures,
                    t.elapsed().as_secs_f64()
                );
                total.ops += r.ops;
                total.faults += r.faults;
                total.evictions += r.evictions;
                total.node_failures += r.node_failures;
                total.processes += r.processes;
            }
            Err(f) => {
                eprintln!("{f}");
                std::process::exit(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "total: {} ops over {seeds} seeds ({first}..{}), {} processes, {} faults, {} evictions, \
         {} node failures, in {secs:.1} s ({:.0} ops/s)",
        total.ops,
        first + seeds - 1,
        total.processes,
        total.faults,
        total.evictions,
        total.node_failures,
        total.ops as f64 / secs
    );
}
