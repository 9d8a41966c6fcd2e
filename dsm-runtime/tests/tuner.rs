//! The tuner's simulator against real runs: a run over real node processes records its
//! page-access trace; replaying the trace through the same profile must predict the
//! remote fetches the run measured within 10%.

mod common;

use common::{cluster, Rng};
use dsm_runtime::policy::profile::Profile;
use dsm_runtime::runtime::Policies;
use dsm_runtime::trace::{TraceHeader, TraceWriter};
use dsm_runtime::{Runtime, RuntimeConfig};

const PAGE: usize = 4096;
const PAGES: usize = 4096;
const CACHE_PAGES: usize = 1024;

/// Runs `touch` over a fresh runtime with `profile`, recording a trace; returns the
/// measured remote page reads and the simulator's prediction for the same profile.
fn measured_and_predicted(slot: usize, profile_name: &str, touch: impl Fn(usize)) -> (u64, u64) {
    let profile = Profile::load(profile_name).unwrap();
    let (_nodes, t) = cluster(2, (PAGES * PAGE) as u64);
    let mut config = RuntimeConfig {
        space_base: 0x1000_0000_0000 + slot * 0x100_0000_0000,
        space_bytes: (PAGES * PAGE) as u64,
        cache_bytes_max: (CACHE_PAGES * PAGE) as u64,
        ..Default::default()
    };
    profile.apply(&mut config);
    let dir = std::env::temp_dir().join(format!("dsm-tuner-{}-{slot}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.dsmt");
    let header = TraceHeader::for_run(CACHE_PAGES as u64, profile_name);
    let policies = Policies {
        eviction: profile.eviction(config.cache_pages()),
        prefetch: profile.prefetch(),
        placement: None,
        trace: Some(TraceWriter::create(&path, &header).unwrap()),
    };
    let rt = Runtime::start_with(config, &t, policies).unwrap();
    touch(rt.base() as usize);
    let measured = rt.shutdown().remote_read_pages;
    let predictions = dsm_runtime::tune::rank(&path, &[profile], false).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (measured, predictions[0].remote_pages())
}

fn assert_within_10_percent(what: &str, measured: u64, predicted: u64) {
    let err = (predicted as f64 - measured as f64).abs() / (measured.max(1) as f64);
    eprintln!(
        "{what}: measured {measured} remote page reads, predicted {predicted} ({:.1}% off)",
        err * 100.0
    );
    assert!(
        measured > 1000,
        "{what}: too little traffic to validate anything ({measured})"
    );
    assert!(
        err <= 0.10,
        "{what}: prediction {predicted} is {:.1}% off the measured {measured}",
        err * 100.0
    );
}

/// Uniform random reads and writes over 4x the cache, default profile.
#[test]
fn the_simulator_predicts_a_random_run_within_10_percent() {
    let (m, p) = measured_and_predicted(10, "default", |base| {
        let mut rng = Rng(42);
        for p in 0..PAGES {
            // SAFETY: inside the global range.
            unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64) };
        }
        for _ in 0..4 * PAGES {
            let p = rng.below(PAGES as u64) as usize;
            let w = (base + p * PAGE) as *mut u64;
            // SAFETY: inside the global range.
            unsafe {
                if rng.below(4) == 0 {
                    w.write_volatile(p as u64);
                } else {
                    assert_eq!(w.read_volatile(), p as u64);
                }
            }
        }
    });
    assert_within_10_percent("random/default", m, p);
}

/// Sequential passes under the sequential profile (readahead): most fetches are
/// prefetches, which the simulator must count the same way.
#[test]
fn the_simulator_predicts_a_sequential_run_within_10_percent() {
    let (m, p) = measured_and_predicted(11, "sequential", |base| {
        for p in 0..PAGES {
            // SAFETY: inside the global range.
            unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64) };
        }
        for _ in 0..3 {
            for p in 0..PAGES {
                // SAFETY: inside the global range.
                let v = unsafe { ((base + p * PAGE) as *const u64).read_volatile() };
                assert_eq!(v, p as u64);
            }
        }
    });
    assert_within_10_percent("sequential/sequential", m, p);
}
