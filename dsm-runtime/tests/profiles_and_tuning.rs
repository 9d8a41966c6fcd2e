//! Profiles and the tuner through `dsmrun`, on a real unmodified program: a run under a
//! prefetching profile records its trace, `dsmrun tune` ranks profiles on it, and bad
//! profiles are refused before anything starts.

mod common;

use common::*;
use std::process::Command;

/// `sort` under `--profile default` (readahead) with `--record-trace`: identical output,
/// prefetches issued and used, a trace the tuner can rank profiles on.
#[test]
fn a_program_under_a_prefetching_profile_records_a_trace_the_tuner_ranks() {
    if !have("sort") {
        return skip("profile_and_trace", "no sort (apt-get install coreutils)");
    }
    let _turn = heavy();
    let dir = scratch("profile-trace");
    let input = dir.join("input.txt");
    let mut text = String::with_capacity(8 << 20);
    let mut x: u64 = 7;
    while text.len() < (8 << 20) {
        x = (x * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407) % (1 << 63);
        text.push_str(&format!("{:020} payload {:016x}\n", x % 100_000_000_000, x));
    }
    std::fs::write(&input, text).unwrap();
    let native = run_measured(
        Command::new("sort")
            .arg("--parallel=1")
            .arg(&input)
            .env("LC_ALL", "C"),
    );
    assert_eq!(native.code, 0, "{}", native.stderr);

    let stats = dir.join("stats.json");
    let trace = dir.join("run.dsmt");
    let pooled = run_measured(
        dsmrun_cmd(2, quarter_of(native.peak_rss), &stats)
            .args(["--profile", "default", "--record-trace"])
            .arg(&trace)
            .args(["--", "sort", "--parallel=1"])
            .arg(&input)
            .env("LC_ALL", "C"),
    );
    assert_eq!(pooled.code, 0, "sort under dsmrun: {}", pooled.stderr);
    assert!(
        pooled.stdout == native.stdout,
        "output differs under dsmrun"
    );
    let total = stats_total(&stats);
    assert_pooled(&total, "sort --profile default");
    assert!(
        total["prefetch_issued"].as_u64().unwrap_or(0) > 0,
        "readahead never fired: {total}"
    );
    assert!(
        std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0) > 100,
        "no trace recorded"
    );

    let tune = Command::new(dsmrun())
        .arg("tune")
        .arg(&trace)
        .args(["--profiles", "default,random,velvet", "--check-stats"])
        .arg(&stats)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&tune.stdout);
    assert!(
        tune.status.success(),
        "tune failed: {}",
        String::from_utf8_lossy(&tune.stderr)
    );
    for p in ["default", "random", "velvet"] {
        assert!(out.contains(p), "tune output lacks {p}: {out}");
    }
    assert!(
        out.contains("remote_read_pages"),
        "no measured-vs-predicted check: {out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A profile with a mistake is refused with its file, line and a hint, and nothing runs.
#[test]
fn a_bad_profile_is_refused_with_file_and_line_before_anything_starts() {
    let dir = scratch("bad-profile");
    let bad = dir.join("mine.toml");
    std::fs::write(
        &bad,
        "description = \"x\"\n[prefetch]\npolicy = \"readahead\"\nmax_pages = -3\n",
    )
    .unwrap();
    let marker = dir.join("ran");
    let out = Command::new(dsmrun())
        .args(["-n", "2", "--profile"])
        .arg(&bad)
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "accepted a bad profile: {err}");
    assert!(err.contains("mine.toml:4"), "no file:line in: {err}");
    assert!(!marker.exists(), "the program ran despite the bad profile");
    let unknown = Command::new(dsmrun())
        .args(["-n", "2", "--profile", "fastest", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert_ne!(unknown.status.code(), Some(0));
    assert!(err.contains("shipped profiles are"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dsmrun_profiles_lists_the_shipped_profiles() {
    let out = Command::new(dsmrun()).arg("profiles").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for p in [
        "default",
        "sequential",
        "random",
        "strided",
        "loop",
        "velvet",
    ] {
        assert!(text.contains(p), "{p} missing from: {text}");
    }
}
