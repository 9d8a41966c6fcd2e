//! Fault-path benchmark: our remote fault against the physical limits measured in the
//! same run (raw userfaultfd round trip + raw TCP 4 KiB request/response; for the shm
//! transport, raw userfaultfd round trip + a raw 4 KiB `pread` from a memfd), and fault
//! throughput, each pinned to one vCPU and unpinned, for both handler wait designs.
//!
//! Run: `cargo build --release -p dsm-runtime && cargo bench -p dsm-benches --bench fault_path`
//! (`DSM_BENCH_REDUNDANCY=ec:4+1` and `DSM_BENCH_KILL_NODE=1` for the runtime's faults
//! with redundancy, and degraded after a node's death; `benches/redundancy.sh` runs them)
//! The summary table at the end gives means per operation and the ratios.

use criterion::{criterion_group, Criterion, Throughput};
use dsm_benches::{cluster, pin, shm_cluster, unpin, RawShm, RawTcp, RawUffd, PAGE};
use dsm_runtime::config::HandlerWait;
use dsm_runtime::launch::LocalNodes;
use dsm_runtime::redundancy::Redundancy;
use dsm_runtime::transport::Transport;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE_BYTES: u64 = 16 << 20;
/// Four times the cache: sweeping it in order misses on every page.
const SPACE_PAGES: usize = 4 * (CACHE_BYTES as usize / PAGE);
const BASE: usize = 0x1800_0000_0000;

/// Mean ns per operation of every benchmark, for the summary.
static RESULTS: Mutex<Vec<(String, u64, Duration)>> = Mutex::new(Vec::new());

fn record(name: &str, iters: u64, took: Duration) {
    let mut r = RESULTS.lock().unwrap();
    match r.iter_mut().find(|(n, _, _)| n == name) {
        Some(e) => {
            e.1 += iters;
            e.2 += took;
        }
        None => r.push((name.to_string(), iters, took)),
    }
}

fn mean_ns(name: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap();
    r.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, i, d)| d.as_nanos() as f64 / *i as f64)
}

#[derive(Clone, Copy)]
struct Mode {
    pinned: bool,
    wait: HandlerWait,
    shm: bool,
}

impl Mode {
    fn label(&self) -> String {
        let w = match self.wait {
            HandlerWait::Block => "block",
            HandlerWait::Spin => "spin",
        };
        let t = if self.shm { "shm/" } else { "" };
        format!("{t}{}/{w}", if self.pinned { "pinned" } else { "unpinned" })
    }
    fn cpu(&self) -> Option<usize> {
        self.pinned.then_some(0)
    }
    fn apply(&self) {
        if self.pinned {
            pin(0)
        } else {
            unpin()
        }
    }
}

fn config(c: &mut Criterion) -> &mut Criterion {
    c
}

fn raw_limits(c: &mut Criterion) {
    let mut g = config(c).benchmark_group("raw");
    g.throughput(Throughput::Elements(1));
    for pinned in [true, false] {
        let m = Mode {
            pinned,
            wait: HandlerWait::Block,
            shm: false,
        };
        let tag = if pinned { "pinned" } else { "unpinned" };
        m.apply();
        let mut u = RawUffd::new(BASE, 8192, m.cpu());
        let name = format!("uffd_copy_round_trip/{tag}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let t = u.run(iters);
                record(&name, iters, t);
                t
            })
        });
        drop(u);
        let mut t = RawTcp::new(m.cpu());
        let name = format!("tcp_4k_request_response/{tag}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let d = t.run(iters);
                record(&name, iters, d);
                d
            })
        });
        drop(t);
        let mut s = RawShm::new(SPACE_PAGES);
        let name = format!("shm_4k_pread/{tag}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let d = s.run(iters);
                record(&name, iters, d);
                d
            })
        });
    }
    g.finish();
    unpin();
}

/// `DSM_BENCH_REDUNDANCY` (none, replicate:R, ec:K+1; default none) and
/// `DSM_BENCH_KILL_NODE` (a node killed once every page is home, so that faults are
/// served degraded: from the other copy, or rebuilt from the group).
fn redundancy_from_env() -> (Redundancy, Option<usize>) {
    let r = std::env::var("DSM_BENCH_REDUNDANCY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().expect("DSM_BENCH_REDUNDANCY"))
        .unwrap_or_default();
    let kill = std::env::var("DSM_BENCH_KILL_NODE")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().expect("DSM_BENCH_KILL_NODE: a node number"));
    (r, kill)
}

/// A runtime over 2 node processes (or as many as `DSM_BENCH_REDUNDANCY` needs) whose
/// every page has been written home once.
fn populated_runtime(m: Mode) -> (LocalNodes, Runtime) {
    let (redundancy, kill) = redundancy_from_env();
    let count = redundancy.nodes_needed().max(2);
    // Room for the copies or parity and the survivors' rescue room (address space).
    let bytes = (SPACE_PAGES * PAGE) as u64 * if count > 2 { 4 } else { 1 };
    let (nodes, t): (LocalNodes, Box<dyn Transport>) = if m.shm {
        let (n, t) = shm_cluster(count, bytes);
        (n, Box::new(t))
    } else {
        let (n, t) = cluster(count, bytes);
        (n, Box::new(t))
    };
    if m.pinned {
        for i in 0..count {
            if let Some(pid) = nodes.pid(i) {
                // SAFETY: cpu_set_t is plain data; affinity of our child's main thread,
                // inherited by the connection threads it spawns later.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set);
                }
            }
        }
    }
    let cfg = RuntimeConfig {
        space_base: BASE,
        space_bytes: (SPACE_PAGES * PAGE) as u64,
        cache_bytes_max: CACHE_BYTES,
        handler_wait: m.wait,
        handler_cpu: m.cpu(),
        redundancy,
        ..Default::default()
    };
    let rt = Runtime::start(cfg, t.as_ref()).expect("runtime");
    let base = rt.base() as usize;
    for p in 0..SPACE_PAGES {
        // SAFETY: inside the global range.
        unsafe { ((base + p * PAGE) as *mut u64).write_volatile(p as u64) };
    }
    if let Some(pid) = kill.and_then(|k| nodes.pid(k)) {
        // SAFETY: killing a node process this benchmark started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
    }
    (nodes, rt)
}

/// Touches `iters` pages in `order` starting at `*cursor`; returns the time taken.
fn sweep(base: usize, order: &[u32], cursor: &mut usize, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let p = order[*cursor] as usize;
        *cursor = (*cursor + 1) % order.len();
        // SAFETY: inside the global range.
        unsafe { std::ptr::read_volatile((base + p * PAGE) as *const u8) };
    }
    start.elapsed()
}

fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x = seed;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn runtime_faults(c: &mut Criterion) {
    let modes = [true, false].into_iter().flat_map(|pinned| {
        [
            (HandlerWait::Block, false),
            (HandlerWait::Spin, false),
            (HandlerWait::Block, true),
        ]
        .map(|(wait, shm)| Mode { pinned, wait, shm })
    });
    for m in modes {
        {
            let pinned = m.pinned;
            m.apply();
            let (_nodes, rt) = populated_runtime(m);
            let base = rt.base() as usize;
            let seq: Vec<u32> = (0..SPACE_PAGES as u32).collect();
            let rnd = permutation(SPACE_PAGES, 0x2545_F491);
            let mut g = c.benchmark_group(format!("runtime/{}", m.label()));
            g.throughput(Throughput::Elements(1));
            let before = rt.snapshot();
            let mut cursor = 0;
            let name = format!("remote_fault/{}", m.label());
            g.bench_function("remote_fault_latency", |b| {
                b.iter_custom(|iters| {
                    let d = sweep(base, &seq, &mut cursor, iters);
                    record(&name, iters, d);
                    d
                })
            });
            let after = rt.snapshot();
            let touched = RESULTS
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or(1, |e| e.1);
            let fetched = after.remote_read_pages - before.remote_read_pages;
            eprintln!(
                "  {}: {fetched} remote fetches for {touched} touches ({:.1}% missed), handler-side service mean {} ns",
                m.label(),
                100.0 * fetched as f64 / touched as f64,
                after.fault_service.mean_ns
            );
            for (pattern, order) in [("sequential", &seq), ("random", &rnd)] {
                for threads in [1usize, 2] {
                    let name = format!("throughput/{pattern}/{threads}t/{}", m.label());
                    g.bench_function(format!("{pattern}_{threads}_threads"), |b| {
                        b.iter_custom(|iters| {
                            let per = iters.div_ceil(threads as u64);
                            let start = Instant::now();
                            std::thread::scope(|s| {
                                for t in 0..threads {
                                    let order = &order[t * order.len() / threads
                                        ..(t + 1) * order.len() / threads];
                                    s.spawn(move || {
                                        if pinned {
                                            pin(0);
                                        }
                                        let mut cur = 0;
                                        sweep(base, order, &mut cur, per);
                                    });
                                }
                            });
                            let d = start.elapsed();
                            record(&name, per * threads as u64, d);
                            d
                        })
                    });
                }
            }
            g.finish();
            drop(rt);
        }
    }
    unpin();
}

fn summary() {
    println!("\n== Summary (means per operation over every sample of this run)");
    let r = RESULTS.lock().unwrap().clone();
    for (name, iters, d) in &r {
        let ns = d.as_nanos() as f64 / *iters as f64;
        if name.starts_with("throughput") {
            println!("{name:<52} {:>10.0} pages/s  ({ns:.0} ns/page)", 1e9 / ns);
        } else {
            println!("{name:<52} {ns:>10.0} ns");
        }
    }
    println!("\n== Remote fault vs. raw userfaultfd round trip + raw TCP 4 KiB round trip");
    for pinned in ["pinned", "unpinned"] {
        let (Some(u), Some(t)) = (
            mean_ns(&format!("uffd_copy_round_trip/{pinned}")),
            mean_ns(&format!("tcp_4k_request_response/{pinned}")),
        ) else {
            continue;
        };
        for wait in ["block", "spin"] {
            if let Some(ours) = mean_ns(&format!("remote_fault/{pinned}/{wait}")) {
                println!(
                    "{pinned}/{wait}: ours {ours:.0} ns; uffd {u:.0} + tcp {t:.0} = {:.0} ns; ratio {:.2}",
                    u + t,
                    ours / (u + t)
                );
            }
        }
        if let (Some(ours), Some(s)) = (
            mean_ns(&format!("remote_fault/shm/{pinned}/block")),
            mean_ns(&format!("shm_4k_pread/{pinned}")),
        ) {
            println!(
                "shm/{pinned}/block: ours {ours:.0} ns; uffd {u:.0} + pread {s:.0} = {:.0} ns; ratio {:.2}",
                u + s,
                ours / (u + s)
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = raw_limits, runtime_faults
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
