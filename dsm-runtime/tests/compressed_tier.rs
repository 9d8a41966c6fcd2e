//! The compressed tier end to end: a real C program under `dsmrun` with real node
//! processes and a small cache, with `[compress] policy = "lz4"`. Its output must match
//! the native run's byte for byte; dirty pages kept compressed must survive eviction
//! pressure (demoted home, then read back) and the exit; pages that do not compress go
//! home; and the counters must agree with what the program wrote.

mod common;

use common::{compile_c, dsmrun_cmd, run_measured, scratch, skip, stats_total};
use std::path::Path;
use std::process::Command;

const PAGE: usize = 4096;

/// The program's heap (MiB) and the cache (MiB): the heap is six times the cache.
const HEAP_MIB: u64 = 48;
const CACHE_MIB: u64 = 8;

fn profile(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("lz4.toml");
    std::fs::write(
        &p,
        "description = \"compressed tier test\"\n[compress]\npolicy = \"lz4\"\nshare_pct = 20\nkeep_max_pct = 50\n",
    )
    .unwrap();
    p
}

/// Runs `compressible HEAP_MIB mode` natively and under dsmrun with the tier on;
/// asserts identical output and returns the job's totals.
fn run_both(test: &str, mode: &str) -> Option<serde_json::Value> {
    let Some(bin) = compile_c("compressible", &[]) else {
        skip(test, "no C compiler (apt-get install gcc)");
        return None;
    };
    let native = run_measured(Command::new(&bin).args([&HEAP_MIB.to_string(), mode]));
    assert_eq!(native.code, 0, "native run: {}", native.stderr);
    let dir = scratch(test);
    let stats = dir.join("stats.json");
    let ran = run_measured(
        dsmrun_cmd(2, CACHE_MIB << 20, &stats)
            .arg("--profile")
            .arg(profile(&dir))
            .arg("--")
            .arg(&bin)
            .args([&HEAP_MIB.to_string(), mode]),
    );
    assert_eq!(
        ran.code,
        0,
        "under dsmrun: {}\n{}",
        String::from_utf8_lossy(&ran.stdout),
        ran.stderr
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&native.stdout),
        "the same bytes under dsmrun as natively"
    );
    let total = stats_total(&stats);
    let _ = std::fs::remove_dir_all(&dir);
    Some(total)
}

fn n(total: &serde_json::Value, key: &str) -> u64 {
    total[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key} in {total}"))
}

/// lz4 sizes of the program's patterned pages (the formula of compressible.c's `word`).
fn patterned_sizes() -> (usize, usize) {
    let mut sizes = Vec::new();
    for i in [0u64, 1, 3, 1000, 12_000] {
        for v in 1..=3u64 {
            let page: Vec<u8> = (0..PAGE as u64 / 8)
                .flat_map(|j| (((i * 64 + (j & 63)) * 0x1_0000_0001) ^ (v << 56)).to_le_bytes())
                .collect();
            sizes.push(lz4_flex::block::compress(&page).len());
        }
    }
    (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap())
}

/// Two pages in three compress well, one in three not at all: the program reads back
/// exactly what it wrote; the tier keeps the former (clean and dirty), serves faults
/// from them, demotes dirty copies home under pressure, and sends the latter home.
#[test]
fn a_mixed_heap_stays_byte_identical_and_the_counters_are_honest() {
    let Some(t) = run_both("compressed_tier_mixed", "mixed") else {
        return;
    };
    let kept = n(&t, "compressed_in_pages");
    let kept_bytes = n(&t, "compressed_in_bytes");
    let hits = n(&t, "compressed_hits");
    let rejected = n(&t, "compress_rejected");
    let skipped = n(&t, "compress_skipped");
    let dirty = n(&t, "compressed_in_dirty");
    let demoted_dirty = n(&t, "compressed_demoted_dirty");
    let demoted_clean = n(&t, "compressed_demoted_clean");
    eprintln!(
        "kept {kept} ({kept_bytes} bytes), hits {hits}, rejected {rejected}, dirty {dirty}, \
         demoted {demoted_clean} clean + {demoted_dirty} dirty, fetched {}",
        n(&t, "remote_read_pages")
    );
    // 12288 pages, evicted several times each: most of the patterned ones kept.
    assert!(kept > 8_000 && hits > 4_000, "{t}");
    assert!(dirty > 1_000, "rewritten pages kept dirty: {t}");
    assert!(
        demoted_dirty > 0 && demoted_clean > 0,
        "the tier outgrew its share: {t}"
    );
    // A random page never fits in half a page: each of the 4096 was tried once, sent
    // home, and not tried again at its later evictions.
    assert!(
        (3_500..=4_600).contains(&rejected) && skipped > rejected,
        "{t}"
    );
    assert!(n(&t, "remote_write_pages") >= rejected / 2, "{t}");
    // Honest counts: hits never exceed what was kept, and what was kept is at most what
    // left the mapped cache; the average kept size is that of a patterned page (the
    // program's heap also holds the allocator's few pages, which are tiny or absent).
    assert!(
        hits <= kept && kept + rejected + skipped <= n(&t, "evictions"),
        "{t}"
    );
    assert!(hits <= n(&t, "faults_read") + n(&t, "faults_write"), "{t}");
    let (lo, hi) = patterned_sizes();
    let avg = kept_bytes as f64 / kept as f64;
    assert!(
        avg >= lo as f64 * 0.9 && avg <= hi as f64 * 1.1,
        "average kept copy {avg:.0} bytes, patterned pages pack to {lo}-{hi}: {t}"
    );
}

/// Pages that do not compress go home: the tier keeps (almost) none of them, and the
/// program's data is intact.
#[test]
fn incompressible_pages_go_home() {
    let Some(t) = run_both("compressed_tier_random", "random") else {
        return;
    };
    let kept = n(&t, "compressed_in_pages");
    let rejected = n(&t, "compress_rejected");
    let skipped = n(&t, "compress_skipped");
    eprintln!("kept {kept}, rejected {rejected}, skipped {skipped}");
    // Each of the 12288 random pages tried once; its later evictions do not try again.
    assert!(rejected > 10_000 && skipped > rejected, "{t}");
    // Only the allocator's own pages (headers, the version array) may compress.
    assert!(kept * 20 < rejected, "{t}");
    assert!(n(&t, "remote_write_pages") > 10_000, "{t}");
    assert!(n(&t, "remote_read_pages") > 10_000, "{t}");
}
