//! The cache simulator, short version: the runtime's cache code against in-memory effects
//! and nodes, driven by seeded random operations, checked after every step (see
//! `dsm_runtime::sim`). The long version is `benches/cache_sim.sh`.
//!
//! `DSM_SIM_SEED=<seed>` runs that seed alone (to reproduce a failure);
//! `DSM_SIM_OPS=<n>` sets the operations per seed.

use dsm_runtime::sim::{self, SimOptions};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
    )
}

/// 200k operations over eight seeds: a few seconds in release.
#[test]
fn seeded_operations_never_lose_a_write() {
    let one = env_u64("DSM_SIM_SEED");
    let seeds: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (1..=8).collect(),
    };
    let ops = env_u64("DSM_SIM_OPS").unwrap_or(25_000);
    let mut total = sim::SimReport::default();
    for seed in seeds {
        match sim::run(seed, ops, SimOptions::default()) {
            Ok(r) => {
                eprintln!("seed {seed}: {r:?}");
                assert_eq!(r.ops, ops);
                total.evictions += r.evictions;
                total.faults += r.faults;
                total.deferred += r.deferred;
                total.direct_reclaims += r.direct_reclaims;
                total.sampled += r.sampled;
                total.prefetched += r.prefetched;
                total.mapped_ahead += r.mapped_ahead;
                total.discarded += r.discarded;
                total.node_failures += r.node_failures;
                total.forks_allowed += r.forks_allowed;
                total.compressed += r.compressed;
                total.compressed_hits += r.compressed_hits;
                total.demoted += r.demoted;
            }
            Err(f) => panic!("{f}"),
        }
    }
    if one.is_none() {
        // Every mechanism ran.
        let t = &total;
        assert!(t.evictions > 0 && t.faults > 0 && t.sampled > 0, "{t:?}");
        assert!(t.prefetched > 0 && t.discarded > 0, "{t:?}");
        assert!(t.mapped_ahead > 0 && t.mapped_ahead < t.prefetched, "{t:?}");
        assert!(t.deferred > 0 && t.direct_reclaims > 0, "{t:?}");
        assert!(t.node_failures > 0, "no node failure was simulated");
        assert!(t.forks_allowed > 0, "no fork was allowed");
        assert!(
            t.compressed > 0 && t.compressed_hits > 0 && t.demoted > 0,
            "the compressed tier: {t:?}"
        );
    }
}

/// A seed names a run: the same seed twice gives the same run.
#[test]
fn a_seed_reproduces_its_run() {
    let a = sim::run(42, 5_000, SimOptions::default()).unwrap();
    let b = sim::run(42, 5_000, SimOptions::default()).unwrap();
    assert_eq!(a, b);
    let c = sim::run(43, 5_000, SimOptions::default()).unwrap();
    assert_ne!(a, c, "different seeds, different runs");
}
