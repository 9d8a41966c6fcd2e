//! Terabyte heaps: each process gets a 4 TiB slice of address space, node memory is
//! claimed as pages are first written home, and allocations of any size up to the pool
//! work, with real programs under `dsmrun` on real local nodes.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn bigheap() -> PathBuf {
    compile_c("bigheap", &[]).expect("a C compiler is needed (apt-get install gcc)")
}

fn dsmrun_with(args: &[&str], program: &[&str]) -> Ran {
    require_preload();
    run_measured(Command::new(dsmrun()).args(args).arg("--").args(program))
}

fn stdout(r: &Ran) -> String {
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[test]
fn three_24_gib_arrays_and_a_100_gib_calloc_survive_eviction() {
    let exe = bigheap();
    let _turn = heavy();
    // 8 nodes of this machine's RAM: a pool larger than the 172 GiB of address space the
    // program takes, of which it writes one word per MiB (688 MiB) through a 64 MiB cache.
    let r = dsmrun_with(
        &["-n", "8", "--local-cache", "64M"],
        &[exe.to_str().unwrap(), "arrays"],
    );
    let out = stdout(&r);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert!(
        out.contains("arrays: 172 GiB in 4 blocks, 176128 words checked, 0 bad"),
        "{out}"
    );
    // Every page went home and came back: far more than the cache holds.
    assert!(r.stderr.contains("remote reads 176"), "{}", r.stderr);
}

#[test]
fn realloc_grows_an_array_past_20_gib_keeping_its_contents() {
    let exe = bigheap();
    let _turn = heavy();
    let r = dsmrun_with(
        &["-n", "4", "--local-cache", "64M"],
        &[exe.to_str().unwrap(), "realloc"],
    );
    let out = stdout(&r);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert!(
        out.contains("realloc: 1 GiB -> 21 GiB and 100 MiB -> 2 GiB, 0 bad"),
        "{out}"
    );
}

#[test]
fn one_process_may_fill_most_of_the_pool() {
    let exe = bigheap();
    let _turn = heavy();
    // 2 x 256 MiB: with the old partitioning (1/8 of the pool per process) 64 MiB.
    let r = dsmrun_with(
        &["-n", "2", "--node-memory", "256M", "--local-cache", "16M"],
        &[exe.to_str().unwrap(), "fill", "400"],
    );
    let out = stdout(&r);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert!(
        out.contains("fill: 400 MiB written and checked, 0 bad"),
        "{out}"
    );
}

#[test]
fn processes_one_after_another_reuse_the_pool() {
    let exe = bigheap();
    let _turn = heavy();
    // Each run needs 300 of the 512 MiB: the second fits only if the first one's claim
    // was given back (by whoever took its slot, or when the pool looked full).
    let script = format!(
        "{0} fill 300 && {0} fill 300 && {0} fill 300",
        exe.display()
    );
    let r = dsmrun_with(
        &["-n", "2", "--node-memory", "256M", "--local-cache", "16M"],
        &["sh", "-c", &script],
    );
    let out = stdout(&r);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert_eq!(
        out.matches("fill: 300 MiB written and checked, 0 bad")
            .count(),
        3,
        "{out}"
    );
}

#[test]
fn an_exhausted_pool_is_enomem_for_malloc_and_mmap_and_exit_70_for_write_back() {
    let exe = bigheap();
    let _turn = heavy();
    let r = dsmrun_with(
        &["-n", "2", "--node-memory", "64M", "--local-cache", "16M"],
        &[exe.to_str().unwrap(), "exhaust"],
    );
    let out = stdout(&r);
    assert!(out.contains("malloc(1 TiB): NULL errno 12"), "{out}");
    assert!(out.contains("mmap(1 TiB): MAP_FAILED errno 12"), "{out}");
    assert!(!out.contains("without running out"), "{out}");
    assert_eq!(
        r.code,
        dsm_runtime::runtime::EXIT_RUNTIME_FAILURE,
        "{out}{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the memory pool is exhausted")
            && r.stderr.contains("raise --node-memory or -n"),
        "{}",
        r.stderr
    );
}

/// The interpreter itself, not a shim (pyenv's runs bash first).
fn real_python3() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed (apt-get install python3)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn python3_runs_on_16_nodes_with_defaults() {
    let python = real_python3();
    let _turn = heavy();
    let script = "d = {i: str(i) * 3 for i in range(300_000)}; \
                  print(len(d), sum(len(v) for v in d.values()))";
    let native = Command::new(&python).args(["-c", script]).output().unwrap();
    assert!(native.status.success());
    let r = dsmrun_with(&["-n", "16"], &[&python, "-c", script]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, native.stdout, "{}", r.stderr);
}

#[test]
fn sixty_four_nodes_and_terabyte_nodes_start_with_defaults() {
    for args in [&["-n", "64"][..], &["-n", "16", "--node-memory", "1T"][..]] {
        let r = dsmrun_with(args, &["/bin/true"]);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("1 process(es) on pooled memory"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn sparse_pages_across_terabytes_cost_the_cache_plus_little_memory() {
    let exe = bigheap();
    let _turn = heavy();
    // 2.5 TiB reserved (a 4 TiB pool of 16 lazily backed nodes), 256 MiB of pages written
    // one every 10 MiB, through a 64 MiB cache.
    let r = dsmrun_with(
        &["-n", "16", "--node-memory", "256G", "--local-cache", "64M"],
        &[exe.to_str().unwrap(), "sparse", "2560", "256"],
    );
    let out = stdout(&r);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert!(out.contains("0 bad"), "{out}");
    let kib = |key: &str| -> u64 {
        out.split(&format!("{key} "))
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    let rss = kib("rss_growth_kib");
    assert!(
        rss < (64 + 64) << 10,
        "the process grew by {rss} KiB: more than the cache plus 64 MiB ({out})"
    );
    // Page tables too: one per cached page here (each alone in its 2 MiB), not one per
    // page ever touched (256 MiB of them before regions were unmapped whole).
    let pte = kib("pte_growth_kib");
    assert!(
        pte < (64 + 64) << 10,
        "page tables grew by {pte} KiB: evicted regions kept theirs ({out})"
    );
}
