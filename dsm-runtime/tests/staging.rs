//! The staging tier end to end over real node processes. Prefetch: pages asked for by the policy
//! are fetched asynchronously, staged, mapped on first use, counted, and always hold the
//! right bytes, also when evicted unused.

mod common;

use common::{cluster, Rng};
use dsm_runtime::policy::eviction::Clock;
use dsm_runtime::policy::PrefetchPolicy;
use dsm_runtime::runtime::Policies;
use dsm_runtime::space::PageNum;
use dsm_runtime::{Runtime, RuntimeConfig};

const PAGE: usize = 4096;

/// Asks for the next `n` pages after every fault: enough to exercise the mechanism
/// without depending on a particular shipped policy.
struct NextN(u64);

impl PrefetchPolicy for NextN {
    fn name(&self) -> &'static str {
        "next-n"
    }
    fn on_fault(&mut self, page: PageNum, _hit: bool, max: usize, out: &mut Vec<PageNum>) {
        for d in 1..=self.0.min(max as u64) {
            out.push(PageNum(page.0 + d));
        }
    }
}

fn start(
    slot: usize,
    cache: u64,
    space: u64,
    n: u64,
) -> (dsm_runtime::launch::LocalNodes, Runtime) {
    start_with(slot, cache, space, n, 0)
}

fn start_with(
    slot: usize,
    cache: u64,
    space: u64,
    n: u64,
    sample_pages: usize,
) -> (dsm_runtime::launch::LocalNodes, Runtime) {
    let (nodes, t) = cluster(2, space);
    let config = RuntimeConfig {
        space_base: 0x1000_0000_0000 + slot * 0x100_0000_0000,
        space_bytes: space,
        cache_bytes_max: cache,
        prefetch_max_pages: if n == 0 { 0 } else { 16 },
        sample_pages,
        sample_interval_ms: 2,
        ..Default::default()
    };
    let policies = Policies {
        eviction: Box::new(Clock::with_capacity(config.cache_pages())),
        prefetch: Box::new(NextN(n)),
        placement: None,
        trace: None,
    };
    (nodes, Runtime::start_with(config, &t, policies).unwrap())
}

#[test]
fn a_sequential_scan_is_served_mostly_from_prefetched_pages() {
    const SPACE: usize = 32 << 20;
    let (_nodes, rt) = start(4, 4 << 20, SPACE as u64, 16);
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    for p in 0..pages {
        // SAFETY: inside the global range.
        unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64 * 3 + 1) };
    }
    let before = rt.snapshot();
    for p in 0..pages {
        // SAFETY: inside the global range.
        let v = unsafe { ((base + p * PAGE) as *const u64).read_volatile() };
        assert_eq!(v, p as u64 * 3 + 1, "page {p}");
    }
    let s = rt.shutdown();
    let waited = s.faults_network_wait - before.faults_network_wait;
    // Most prefetched pages are mapped ahead (their reads are not seen); the probes' use
    // estimates how many were used.
    let used = s.prefetch_used_estimate() - before.prefetch_used_estimate();
    assert!(used > pages as u64 / 2, "prefetch barely used: {s:?}");
    assert!(s.prefetch_mapped_ahead > pages as u64 / 2, "{s:?}");
    assert!(
        waited < pages as u64 / 2,
        "{waited} of {pages} faults waited on the network"
    );
    assert!(s.prefetch_accuracy() > 0.5, "{s:?}");
}

/// Random access with an eager prefetcher: most prefetches are wasted and evicted unused;
/// every byte must still be right.
#[test]
fn wasted_prefetches_are_evicted_cleanly_and_never_corrupt_data() {
    const SPACE: usize = 16 << 20;
    let (_nodes, rt) = start(5, 1 << 20, SPACE as u64, 8);
    let base = rt.base() as usize;
    let words = SPACE / 8;
    let mut reference = vec![0u64; words];
    let mut rng = Rng(5);
    for _ in 0..200_000 {
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
    assert!(s.prefetch_issued > 0 && s.prefetch_unused > 0, "{s:?}");
}

/// Access sampling parks pages the policy is about to evict; a hot set read between
/// passes of a cold scan is caught re-used (a local fault, no network) and every value
/// stays right.
#[test]
fn sampling_catches_reuse_of_parked_pages_and_keeps_data() {
    const SPACE: usize = 8 << 20;
    const HOT: usize = 64;
    let (_nodes, rt) = start_with(6, 1 << 20, SPACE as u64, 0, 64);
    let base = rt.base() as usize;
    let pages = SPACE / PAGE;
    for p in 0..pages {
        // SAFETY: inside the global range.
        unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64 + 11) };
    }
    for round in 0..20 {
        for p in HOT..pages {
            if p % 8 == round % 8 {
                // SAFETY: inside the global range.
                let v = unsafe { ((base + p * PAGE) as *const u64).read_volatile() };
                assert_eq!(v, p as u64 + 11);
            }
            if p % 32 == 0 {
                for h in 0..HOT {
                    // SAFETY: inside the global range.
                    let v = unsafe { ((base + h * PAGE) as *const u64).read_volatile() };
                    assert_eq!(v, h as u64 + 11, "hot page {h}");
                }
            }
        }
    }
    let s = rt.shutdown();
    assert!(s.sampled_pages > 0 && s.sampled_hits > 0, "{s:?}");
}

/// Sampling parks dirty pages too (their staging slot then holds the only up-to-date
/// copy). Threads write and read words that share pages while the reclaimer parks and
/// evicts them under them: a write must never be lost between the freeze, the copy, the
/// unmap, the local re-install and the write-back from the slot.
#[test]
fn sampling_parks_dirty_pages_without_losing_a_write() {
    const SPACE: usize = 8 << 20;
    const THREADS: usize = 4;
    let (_nodes, rt) = start_with(7, 1 << 20, SPACE as u64, 0, 64);
    let base = rt.base() as usize;
    let words = SPACE / 8;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                // Thread t owns the words w with w % THREADS == t: every page is shared.
                let mine = words / THREADS;
                let mut reference = vec![0u64; mine];
                let mut rng = Rng(100 + t as u64);
                // A hot eighth of the space, touched most of the time, so that parked
                // pages are used again and come back from their slots.
                let hot = mine / 8;
                for _ in 0..300_000 {
                    let i = if rng.below(4) != 0 {
                        rng.below(hot as u64) as usize
                    } else {
                        rng.below(mine as u64) as usize
                    };
                    let p = (base + (i * THREADS + t) * 8) as *mut u64;
                    if rng.below(2) == 0 {
                        let v = rng.next() | 1;
                        // SAFETY: inside the global range.
                        unsafe { p.write_volatile(v) };
                        reference[i] = v;
                    } else {
                        // SAFETY: inside the global range.
                        let got = unsafe { p.read_volatile() };
                        assert_eq!(got, reference[i], "thread {t}, word {i}");
                    }
                }
                for (i, &v) in reference.iter().enumerate() {
                    let p = (base + (i * THREADS + t) * 8) as *const u64;
                    // SAFETY: inside the global range.
                    let got = unsafe { p.read_volatile() };
                    assert_eq!(got, v, "thread {t}, word {i} at the end");
                }
            });
        }
    });
    let s = rt.shutdown();
    assert!(s.sampled_dirty_pages > 0, "no dirty page was parked: {s:?}");
    assert!(s.sampled_hits > 0 && s.remote_write_pages > 0, "{s:?}");
}
