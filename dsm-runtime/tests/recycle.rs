//! Evicted pages recycled for mapped-ahead prefetched pages (`cache/spares.rs`,
//! `[fetch] recycle_pages`), end to end over real node processes: scans that write, read
//! back and rewrite a space eight times the cache keep every byte, writes racing the
//! prefetcher's installs are never lost, and the recycling really happened (its counters
//! are non-zero). Needs Linux 6.8+ (`UFFDIO_MOVE`): on an older kernel the counters stay
//! at zero and the tests fail, saying so.

mod common;

use common::{
    compile_c, dsmrun_cmd, prefetching_runtime, run_measured, scratch, skip, stats_total,
};
use dsm_runtime::Runtime;
use std::sync::atomic::{AtomicUsize, Ordering};

const PAGE: usize = 4096;

fn start(slot: usize, cache: u64, space: u64) -> (dsm_runtime::launch::LocalNodes, Runtime) {
    prefetching_runtime(slot, cache, space, |c| {
        c.writeback_batch_pages = 64;
        c.recycle_pages = 512;
    })
}

/// The value page `page` holds in its checked words after pass `pass`.
fn value(page: usize, word: usize, pass: u64) -> u64 {
    ((((page as u64) << 20) | word as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pass) | 1
}

/// Words of a page that the tests write and check: spread over the page, so that a
/// page recycled with another's bytes, or half-moved, shows.
const WORDS: [usize; 4] = [0, 129, 300, 511];

/// Whether the page at `addr` is mapped (mincore), without touching it.
fn resident(addr: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: one page of the global range, one byte of result on our stack.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, PAGE, &mut v) };
    rc == 0 && v & 1 != 0
}

fn at(base: usize, page: usize, word: usize) -> *mut u64 {
    (base + page * PAGE + word * 8) as *mut u64
}

fn write_page(base: usize, page: usize, pass: u64) {
    for w in WORDS {
        // SAFETY: inside the global range.
        unsafe { at(base, page, w).write_volatile(value(page, w, pass)) };
    }
}

fn check_page(base: usize, page: usize, pass: u64) {
    for w in WORDS {
        // SAFETY: inside the global range.
        let v = unsafe { at(base, page, w).read_volatile() };
        assert_eq!(
            v,
            value(page, w, pass),
            "page {page} word {w} after pass {pass}"
        );
    }
}

/// Write every page, read them back (a scan the prefetcher maps ahead of, on recycled
/// pages), then read and rewrite each (writes to recycled mapped-ahead pages must be
/// tracked and go home), and read everything back again.
#[test]
fn scans_over_recycled_pages_keep_every_byte() {
    const SPACE: usize = 32 << 20;
    let (_nodes, rt) = start(22, 4 << 20, SPACE as u64);
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    for p in 0..pages {
        write_page(base, p, 1);
    }
    for p in 0..pages {
        check_page(base, p, 1);
    }
    let mid = rt.snapshot();
    for p in 0..pages {
        check_page(base, p, 1);
        write_page(base, p, 2);
    }
    for p in 0..pages {
        check_page(base, p, 2);
    }
    let s = rt.shutdown();
    assert!(
        mid.recycled_out > 0 && mid.recycled_in > 0,
        "nothing recycled during the read scan (a kernel without UFFDIO_MOVE, Linux < 6.8?): {mid:?}"
    );
    assert!(
        s.recycled_in >= pages as u64 / 4,
        "few pages recycled: {s:?}"
    );
    assert!(s.recycled_in <= s.recycled_out, "{s:?}");
    // The rewrite pass wrote to pages mapped ahead on recycled pages: each write seen.
    assert!(s.prefetch_ahead_written > 0, "{s:?}");
    assert!(s.remote_write_pages >= pages as u64, "{s:?}");
}

/// A thread keeps writing the pages just ahead of a reading thread's scan, where the
/// prefetcher is installing them on recycled pages: every write lands either before the
/// page is fetched (written home first), or on the mapped page (tracked: a write-protect
/// fault, or seen in its bytes when it came between the move in and the write
/// protection). None may be lost: each round ends with every page read back after the
/// cache (an eighth of the space) has evicted it.
#[test]
fn writes_racing_recycled_installs_are_not_lost() {
    const SPACE: usize = 32 << 20;
    const AHEAD: usize = 64;
    let (_nodes, rt) = start(23, 4 << 20, SPACE as u64);
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    for p in 0..pages {
        write_page(base, p, 1);
    }
    for round in 0..4u64 {
        let pass = 2 + round;
        let reader_at = AtomicUsize::new(0);
        let mut written = vec![false; pages];
        std::thread::scope(|s| {
            s.spawn(|| {
                for p in 0..pages {
                    // SAFETY: inside the global range; the writer writes other words.
                    unsafe { at(base, p, 7).read_volatile() };
                    reader_at.store(p, Ordering::Relaxed);
                }
                reader_at.store(pages, Ordering::Relaxed);
            });
            s.spawn(|| {
                // Over and over, the window the prefetcher is mapping: each page written
                // as soon as it shows up mapped (without faulting it in), which is most
                // often right after its move in, racing the write protection.
                loop {
                    let r = reader_at.load(Ordering::Relaxed);
                    if r >= pages {
                        break;
                    }
                    let end = (r + AHEAD).min(pages);
                    for (p, done) in written.iter_mut().enumerate().take(end).skip(r + 1) {
                        if !*done && resident(base + p * PAGE) {
                            write_page(base, p, pass);
                            *done = true;
                        }
                    }
                }
            });
        });
        for p in (0..pages).filter(|&p| !written[p]) {
            write_page(base, p, pass);
        }
        for p in 0..pages {
            check_page(base, p, pass);
        }
    }
    let s = rt.shutdown();
    assert!(s.recycled_in > 0 && s.recycled_out > 0, "{s:?}");
    eprintln!(
        "recycled in {} out {}, raced {}, refused {}",
        s.recycled_in, s.recycled_out, s.recycle_raced, s.recycle_refused
    );
}

/// An unmodified C program under `dsmrun` with a profile that turns recycling on: it
/// writes, scans, rewrites and verifies a heap eight times the cache; its own checks
/// must pass and `--stats` must show pages recycled both ways.
#[test]
fn an_unmodified_program_under_dsmrun_recycles_and_keeps_its_bytes() {
    let Some(bin) = compile_c("rescan", &[]) else {
        skip(
            "an_unmodified_program_under_dsmrun_recycles",
            "no C compiler (gcc)",
        );
        return;
    };
    let dir = scratch("recycle");
    let profile = dir.join("recycle.toml");
    std::fs::write(
        &profile,
        "description = \"sequential with recycling\"\n\
         [prefetch]\npolicy = \"readahead\"\nmax_pages = 256\nwindow_initial_pages = 16\n\
         [fetch]\nrecycle_pages = 1024\n[writeback]\nbatch_pages = 256\n",
    )
    .unwrap();
    let stats = dir.join("stats.json");
    let _g = common::heavy();
    let mut cmd = dsmrun_cmd(2, 8 << 20, &stats);
    cmd.arg("--profile").arg(&profile).arg(&bin).arg("64");
    let out = run_measured(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.code, 0, "rescan failed: {stdout}\n{}", out.stderr);
    assert!(stdout.contains("bad=0"), "{stdout}");
    let total = stats_total(&stats);
    common::assert_pooled(&total, "rescan");
    for k in ["recycled_in", "recycled_out"] {
        let n = total[k].as_u64().unwrap_or(0);
        assert!(
            n > 1000,
            "{k} is {n} (kernel without UFFDIO_MOVE?); stats: {total}"
        );
    }
}
