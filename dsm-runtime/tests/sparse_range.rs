//! A sparse reservation costs what is touched, not what is reserved. In its own test
//! binary so that the process's RSS is this test's alone.

mod common;

use common::{cluster, runtime};
use std::sync::atomic::{AtomicU64, Ordering};

const PAGE: usize = 4096;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * PAGE as u64
}

/// Reserving 4 TiB and touching 1 GiB of it costs the cache, not gigabytes of metadata.
#[test]
fn a_sparse_4_tib_range_costs_the_cache_not_the_range() {
    const CACHE: u64 = 32 << 20;
    let (_nodes, t) = cluster(4, 1 << 40);
    let rss_before = rss_bytes();
    let rt = runtime(&t, 8, CACHE, 4 << 40);
    assert_eq!(rt.len(), 4 << 40);
    let base = rt.base() as usize;
    // Touch 1 GiB worth of pages spread over the whole 4 TiB.
    let touched = (1u64 << 30) / PAGE as u64;
    let stride = (4u64 << 40) / touched;
    let sum = AtomicU64::new(0);
    for i in 0..touched {
        // SAFETY: inside the global range.
        let v = unsafe { ((base + (i * stride) as usize) as *const u8).read_volatile() };
        sum.fetch_add(v.into(), Ordering::Relaxed);
    }
    assert_eq!(sum.load(Ordering::Relaxed), 0);
    let grown = rss_bytes().saturating_sub(rss_before);
    let s = rt.shutdown();
    // A page installed and then evicted before its thread ran again is zero-filled twice;
    // under load that happens to a handful of pages.
    assert!(
        s.zero_fills >= touched && s.zero_fills <= touched + touched / 100,
        "{s:?}"
    );
    assert_eq!(
        s.remote_read_pages, 0,
        "never-written pages need no network trip"
    );
    // Cache plus the touched part of the page table (one word per page, 4 KiB per
    // touched table page here since the touches are sparse) plus slack.
    assert!(
        grown < CACHE + (touched * 4096 / 1024) + (64 << 20),
        "RSS grew by {grown} bytes"
    );
}
