//! Streams prefetched in whole 2 MiB regions (`[fetch] huge_regions`, `fault/regions.rs`),
//! end to end over real node processes:
//!
//! - an unmodified single-threaded C program scanning 128 MiB through a 32 MiB cache under
//!   `dsmrun` gets its regions moved in whole (one fault per region) and evicted whole,
//!   keeps every byte, and its writes to pages of such regions go home;
//! - a runtime in this (multi-threaded) test process never moves a region in whole (a
//!   thread not waiting on the region could write it between the move and its write
//!   protection) and maps the region with 4 KiB copies instead, keeping every byte.
//!
//! Needs Linux 6.8+ (`UFFDIO_MOVE`): without it regions are never staged and the tests
//! fail, saying so.

mod common;

use common::{compile_c, dsmrun_cmd, heavy, prefetching_runtime, run_measured, scratch, skip};

const PAGE: usize = 4096;

fn n(total: &serde_json::Value, key: &str) -> u64 {
    total[key].as_u64().unwrap_or(0)
}

#[test]
fn a_scan_under_dsmrun_moves_whole_regions_in_and_keeps_every_byte() {
    // Alone: the counters below need the prefetcher to keep ahead of the scan.
    let _turn = heavy();
    let Some(bin) = compile_c("regionscan", &[]) else {
        skip(
            "a_scan_under_dsmrun_moves_whole_regions_in_and_keeps_every_byte",
            "no C compiler (apt-get install gcc)",
        );
        return;
    };
    let dir = scratch("huge-regions");
    let profile = dir.join("stream.toml");
    std::fs::write(
        &profile,
        "[prefetch]\npolicy = \"readahead\"\nmax_pages = 256\nwindow_initial_pages = 16\n\
         [placement]\npolicy = \"interleaved\"\nchunk_pages = 64\n\
         [fetch]\nhuge_regions = true\n",
    )
    .unwrap();
    let stats = dir.join("stats.json");
    let mut cmd = dsmrun_cmd(2, 32 << 20, &stats);
    cmd.arg("--profile")
        .arg(&profile)
        .arg("--")
        .arg(&bin)
        .arg("128");
    let ran = run_measured(&mut cmd);
    let out = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(ran.code, 0, "regionscan failed: {out}{}", ran.stderr);
    assert!(out.contains("regionscan ok pages=32768"), "{out}");
    let t = common::stats_total(&stats);
    // 64 regions in all; the write pass and the first regions of each read go 4 KiB.
    assert!(
        n(&t, "regions_moved_in") >= 32,
        "few regions moved in whole (a kernel without UFFDIO_MOVE, Linux < 6.8?): {t}"
    );
    assert!(n(&t, "regions_evicted_whole") >= 16, "{t}");
    // One fault per region, not per page: the read passes take far fewer read faults
    // than they read pages (3 passes over 32768 pages).
    assert!(n(&t, "faults_read") < 20_000, "{t}");
    // The rewrite wrote to pages of regions moved in: each write seen and sent home.
    assert!(n(&t, "prefetch_ahead_written") > 0, "{t}");
    assert!(n(&t, "remote_write_pages") >= 32768, "{t}");
}

/// The value page `page` holds in its checked word after pass `pass`.
fn value(page: usize, pass: u64) -> u64 {
    ((page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pass) | 1
}

fn word(base: usize, page: usize) -> *mut u64 {
    (base + page * PAGE + (page % 512) * 8) as *mut u64
}

#[test]
fn a_multi_threaded_process_maps_regions_by_4k_copies_and_keeps_every_byte() {
    let _turn = heavy();
    const SPACE: usize = 64 << 20;
    let (_nodes, rt) = prefetching_runtime(24, 16 << 20, SPACE as u64, |c| {
        c.huge_regions = true;
        c.writeback_batch_pages = 64;
    });
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    // A second program thread, so that no region may move in whole.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    for p in 0..pages {
        // SAFETY: inside the global range.
        unsafe { word(base, p).write_volatile(value(p, 1)) };
    }
    // Read everything back and rewrite it all, then read it back and rewrite every fifth
    // page (writes to pages mapped from a region's run must be tracked and go home).
    for (pass, every) in [(2u64, 1usize), (3, 5)] {
        for p in 0..pages {
            let before = if p % 5 == 0 || pass == 2 { pass - 1 } else { 2 };
            // SAFETY: inside the global range.
            let v = unsafe { word(base, p).read_volatile() };
            assert_eq!(v, value(p, before), "page {p} in pass {pass}");
            if p % every == 0 {
                // SAFETY: as above.
                unsafe { word(base, p).write_volatile(value(p, pass)) };
            }
        }
    }
    for p in 0..pages {
        // SAFETY: inside the global range.
        let v = unsafe { word(base, p).read_volatile() };
        assert_eq!(
            v,
            value(p, if p % 5 == 0 { 3 } else { 2 }),
            "page {p} at the end"
        );
    }
    drop(tx);
    let _ = other.join();
    let s = rt.shutdown();
    assert!(
        s.regions_staged > 0,
        "no region staged (a kernel without UFFDIO_MOVE, Linux < 6.8?): {s:?}"
    );
    assert_eq!(s.regions_moved_in, 0, "{s:?}");
    assert!(s.regions_page_alone > 0, "{s:?}");
}
