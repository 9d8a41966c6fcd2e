//! Prefetched pages mapped ahead of use (`fault/map_ahead.rs`), end to end over real
//! node processes: a mapped-ahead page that is then written is tracked dirty and written
//! home (no write lost); mapped-ahead pages never used are accounted and evicted within
//! the budget; the probes keep accuracy measured.

mod common;

use common::{prefetching_runtime, Rng};
use dsm_runtime::Runtime;

const PAGE: usize = 4096;

fn start(slot: usize, cache: u64, space: u64) -> (dsm_runtime::launch::LocalNodes, Runtime) {
    prefetching_runtime(slot, cache, space, |_| {})
}

fn word(base: usize, page: usize) -> *mut u64 {
    (base + page * PAGE + (page % 512) * 8) as *mut u64
}

/// Pages mapped ahead by a read scan are then written: each write must be tracked (a
/// write-protect fault on the mapped-ahead page) and reach home when the page is evicted,
/// so that a later pass that fetches them again reads the written values.
#[test]
fn a_mapped_ahead_page_written_later_is_written_home() {
    const SPACE: usize = 16 << 20;
    let (_nodes, rt) = start(20, 2 << 20, SPACE as u64);
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    for p in 0..pages {
        // SAFETY: inside the global range.
        unsafe { word(base, p).write_volatile(p as u64 + 1) };
    }
    let before = rt.snapshot();
    for p in 0..pages {
        // SAFETY: inside the global range. Read (maps ahead), then write the same page.
        unsafe {
            assert_eq!(word(base, p).read_volatile(), p as u64 + 1, "page {p}");
            word(base, p).write_volatile(p as u64 * 7 + 3);
        }
    }
    let mid = rt.snapshot();
    for p in 0..pages {
        // SAFETY: inside the global range.
        let v = unsafe { word(base, p).read_volatile() };
        assert_eq!(v, p as u64 * 7 + 3, "page {p} lost its write");
    }
    let s = rt.shutdown();
    let mapped = mid.prefetch_mapped_ahead - before.prefetch_mapped_ahead;
    let written = mid.prefetch_ahead_written - before.prefetch_ahead_written;
    // How many pages the prefetcher maps before the scan reaches them depends on the
    // scheduling; the path must have been taken, and every write seen.
    assert!(mapped >= 64, "few pages mapped ahead: {mid:?}");
    assert!(
        written >= 64 && written <= mapped,
        "writes not seen: {mid:?}"
    );
    // The cache is an eighth of the space: the written pages went home and came back.
    let written_home = s.remote_write_pages - before.remote_write_pages;
    assert!(written_home >= (pages - 512) as u64, "{s:?}");
}

/// Random access under an eager prefetcher: nearly every page mapped ahead is never
/// used. They must be evicted like any clean page, counted, never exceed the budget, and
/// every value must stay right.
#[test]
fn unused_mapped_ahead_pages_are_counted_and_evicted() {
    const SPACE: usize = 16 << 20;
    const CACHE: u64 = 1 << 20;
    let (_nodes, rt) = start(21, CACHE, SPACE as u64);
    let base = rt.base() as usize;
    let words = SPACE / 8;
    let mut reference = vec![0u64; words];
    let mut rng = Rng(21);
    for _ in 0..100_000 {
        let w = rng.below(words as u64) as usize;
        let p = (base + w * 8) as *mut u64;
        if rng.below(3) == 0 {
            let v = rng.next();
            // SAFETY: inside the global range.
            unsafe { p.write_volatile(v) };
            reference[w] = v;
        } else {
            // SAFETY: inside the global range.
            assert_eq!(unsafe { p.read_volatile() }, reference[w], "word {w}");
        }
    }
    let s = rt.shutdown();
    assert!(
        s.prefetch_mapped_ahead > 0 && s.prefetch_probes > 0,
        "{s:?}"
    );
    assert!(s.prefetch_ahead_evicted > 0, "{s:?}");
    assert!(s.resident_pages_peak <= CACHE / PAGE as u64, "{s:?}");
    // Random access: the probes must show that most prefetches were wasted.
    assert!(s.prefetch_accuracy() < 0.5, "{s:?}");
    // Every prefetched page is either mapped ahead or a probe.
    assert_eq!(
        s.prefetch_mapped_ahead + s.prefetch_probes,
        s.prefetch_issued,
        "{s:?}"
    );
}
