//! The global address space served from real memory-node processes over TCP (and, for
//! the random-access test, over shared memory too): data integrity under random access,
//! concurrency and eviction, kernel-mode faults, and the cost of a sparse reservation.

mod common;

use common::{cluster, runtime, Rng};
use dsm_runtime::transport::shm::ShmTransport;
use dsm_runtime::transport::Transport;
use std::sync::Arc;
use std::time::Duration;

const PAGE: usize = 4096;

/// Several threads read and write random words over a region 16x the cache; every
/// thread owns every `THREADS`-th word, so all threads share every page, and each checks
/// every read against its own reference. At the end every byte is compared.
#[test]
fn random_reads_and_writes_over_16x_the_cache_are_exact() {
    let (_nodes, t) = cluster(4, 32 << 20);
    random_reads_and_writes(&t, 0);
}

#[test]
fn random_reads_and_writes_over_16x_the_cache_are_exact_over_shm() {
    let (nodes, secret) = common::nodes(4, 32 << 20);
    let t = match ShmTransport::discover(nodes.addrs(), secret, Duration::from_secs(10)) {
        Ok(t) => t,
        Err(e) => panic!("local nodes must be reachable over shared memory: {e:?}"),
    };
    random_reads_and_writes(&t, 4);
}

fn random_reads_and_writes(t: &dyn Transport, slot: usize) {
    const THREADS: usize = 4;
    const CACHE: u64 = 4 << 20;
    const SPACE: usize = 64 << 20;
    let rt = runtime(t, slot, CACHE, SPACE as u64);
    let base = rt.base() as usize;
    let words = SPACE / 8;
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + tid as u64);
                let mine = words / THREADS;
                let mut reference = vec![0u64; mine];
                for _ in 0..60_000 {
                    let k = rng.below(mine as u64) as usize;
                    let word = (k * THREADS + tid) * 8;
                    let p = (base + word) as *mut u64;
                    if rng.below(2) == 0 {
                        let v = rng.next();
                        // SAFETY: inside the global range; this thread owns the word.
                        unsafe { p.write_volatile(v) };
                        reference[k] = v;
                    } else {
                        // SAFETY: as above.
                        let got = unsafe { p.read_volatile() };
                        assert_eq!(got, reference[k], "thread {tid} word {word:#x}");
                    }
                }
                reference
            })
        })
        .collect();
    let refs: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for w in 0..words {
        // SAFETY: inside the global range; no writer is left.
        let got = unsafe { ((base + w * 8) as *const u64).read_volatile() };
        assert_eq!(got, refs[w % THREADS][w / THREADS], "word {w}");
    }
    let s = rt.shutdown();
    assert!(
        s.evictions > 0 && s.remote_write_pages > 0 && s.remote_read_pages > 0,
        "{s:?}"
    );
    assert!(
        s.resident_pages_peak <= CACHE / PAGE as u64,
        "cache bound exceeded: {s:?}"
    );
}

/// Many threads fault on the same few pages at once, reading and writing.
#[test]
fn concurrent_faults_on_the_same_pages_are_served_once_and_correctly() {
    const THREADS: u64 = 8;
    const PAGES: usize = 4;
    let (_nodes, t) = cluster(2, 16 << 20);
    let rt = runtime(&t, 1, 1 << 20, 8 << 20);
    let base = rt.base() as usize;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..200u64 {
                    for p in 0..PAGES {
                        let slot = (base + p * PAGE + tid as usize * 8) as *mut u64;
                        // SAFETY: inside the global range; this thread owns the word.
                        unsafe {
                            assert_eq!(
                                slot.read_volatile(),
                                if round == 0 {
                                    0
                                } else {
                                    round - 1 + tid * 1000
                                }
                            );
                            slot.write_volatile(round + tid * 1000);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = rt.shutdown();
    assert!(s.zero_fills <= PAGES as u64 + s.evictions, "{s:?}");
}

/// Threads increment counters in a working set 4x the cache while the reclaimer evicts
/// and writes back underneath them: a write that races eviction must never be lost.
#[test]
fn writes_racing_eviction_are_never_lost() {
    const THREADS: usize = 3;
    const PAGES: usize = 1024;
    let (_nodes, t) = cluster(3, 8 << 20);
    let rt = runtime(&t, 2, 256 << 10, (PAGES * PAGE) as u64);
    let base = rt.base() as usize;
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            std::thread::spawn(move || {
                let mut rng = Rng(7 + tid as u64);
                let mut mine = vec![0u64; PAGES];
                for _ in 0..40_000 {
                    let p = rng.below(PAGES as u64) as usize;
                    let c = (base + p * PAGE + tid * 64) as *mut u64;
                    // SAFETY: inside the global range; this thread owns the word.
                    unsafe { c.write_volatile(c.read_volatile() + 1) };
                    mine[p] += 1;
                }
                mine
            })
        })
        .collect();
    let counts: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (tid, mine) in counts.iter().enumerate() {
        for (p, want) in mine.iter().enumerate() {
            // SAFETY: inside the global range.
            let got = unsafe { ((base + p * PAGE + tid * 64) as *const u64).read_volatile() };
            assert_eq!(got, *want, "thread {tid} page {p}");
        }
    }
    let s = rt.shutdown();
    // (Release builds fuse the increment into one `inc`, so these are missing-write faults.)
    assert!(s.evictions > 1000 && s.remote_write_pages > 1000, "{s:?}");
}

/// The kernel itself faults on the range: `read(2)` into and `write(2)` out of pages
/// that are not resident (one written back home, one never touched).
#[test]
fn kernel_mode_faults_are_served() {
    let (_nodes, t) = cluster(2, 16 << 20);
    let rt = runtime(&t, 3, 256 << 10, 16 << 20);
    let base = rt.base() as usize;
    let pages = (16 << 20) / PAGE;
    // Fill everything so the first pages are evicted and written home.
    for p in 0..pages {
        // SAFETY: inside the global range.
        unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64 + 1) };
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into our array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // write(2) from an evicted page: the kernel reads the global range.
    // SAFETY: the source lies in the global range; 8 bytes.
    let n = unsafe { libc::write(fds[1], base as *const libc::c_void, 8) };
    assert_eq!(n, 8);
    // read(2) into an evicted page: the kernel writes the global range.
    let dst = base + PAGE;
    // SAFETY: the destination lies in the global range; 8 bytes.
    let n = unsafe { libc::read(fds[0], dst as *mut libc::c_void, 8) };
    assert_eq!(n, 8);
    // SAFETY: inside the global range.
    assert_eq!(unsafe { (dst as *const u64).read_volatile() }, 1);
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    let s = rt.shutdown();
    assert!(s.remote_read_pages > 0, "{s:?}");
}
