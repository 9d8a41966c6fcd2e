//! A panic on one of the runtime's own threads ends the process at once, with a message
//! naming the thread, and the runtime-failure status; it never leaves the program's
//! faulting threads waiting for a thread that is gone.
//!
//! The panics come from policies, which are pluggable: a policy that panics is a real
//! way for a runtime thread to panic, and needs no test-only hook in the runtime. Each
//! case runs in a child process (this test binary, re-executed), since the panic ends
//! the process it happens in.

mod common;

use dsm_runtime::policy::{Clock, EvictionPolicy, PrefetchPolicy};
use dsm_runtime::runtime::{Policies, EXIT_RUNTIME_FAILURE};
use dsm_runtime::space::{PageNum, PAGE_BYTES};
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which policy the child runs with: `eviction` or `prefetch`.
const ROLE_ENV: &str = "DSM_TEST_PANIC_ROLE";
const NODES_ENV: &str = "DSM_TEST_PANIC_NODES";

const CACHE_BYTES: u64 = 1 << 20;
const SPACE_BYTES: u64 = 8 << 20;

/// CLOCK, except that it panics when asked for a victim.
struct PanicsOnEviction(Clock);

impl EvictionPolicy for PanicsOnEviction {
    fn name(&self) -> &'static str {
        "panics-on-eviction"
    }
    fn on_insert(&mut self, page: PageNum, prefetched: bool) {
        self.0.on_insert(page, prefetched);
    }
    fn on_access(&mut self, page: PageNum) {
        self.0.on_access(page);
    }
    fn on_remove(&mut self, page: PageNum) {
        self.0.on_remove(page);
    }
    fn select_victims(&mut self, _: usize, _: &mut Vec<PageNum>) {
        // The reclaimer asks first, but a fault handler reclaims too when the cache is
        // full: the message says which thread it was, for the parent to check.
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        panic!("eviction policy gave up on {thread}");
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Panics on the first fault it hears of (on a fault-handler thread).
struct PanicsOnFault;

impl PrefetchPolicy for PanicsOnFault {
    fn name(&self) -> &'static str {
        "panics-on-fault"
    }
    fn on_fault(&mut self, _: PageNum, _: bool, _: usize, _: &mut Vec<PageNum>) {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        panic!("prefetch policy gave up on {thread}");
    }
}

/// The child: a runtime with the policy `ROLE_ENV` names, and writes over a range eight
/// times the cache, again and again, until the runtime ends the process.
#[test]
#[ignore = "helper run by the tests below in a child process"]
fn child_with_a_panicking_policy() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let addrs: Vec<SocketAddr> = std::env::var(NODES_ENV)
        .unwrap()
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let secret = Secret::new(std::env::var("DSM_SECRET").unwrap()).unwrap();
    let t = TcpTransport::discover(&addrs, secret, Duration::from_secs(10)).unwrap();
    let config = RuntimeConfig {
        space_base: 0x3000_0000_0000,
        space_bytes: SPACE_BYTES,
        cache_bytes_max: CACHE_BYTES,
        prefetch_max_pages: 4,
        ..Default::default()
    };
    let mut policies = Policies::defaults(&config);
    match role.as_str() {
        "eviction" => {
            policies.eviction =
                Box::new(PanicsOnEviction(Clock::with_capacity(config.cache_pages())))
        }
        // Prefetch policies hear only of faults served from a node: the first pass over
        // the range is zero-filled, the second fetches what the first evicted.
        "prefetch" => policies.prefetch = Box::new(PanicsOnFault),
        other => panic!("unknown {ROLE_ENV} {other}"),
    }
    let rt = Runtime::start_with(config, &t, policies).unwrap();
    let base = rt.base() as usize;
    for pass in 0u64.. {
        for off in (0..SPACE_BYTES as usize).step_by(PAGE_BYTES) {
            // SAFETY: inside the global range, which lives as long as `rt`.
            unsafe { ((base + off) as *mut u64).write_volatile(pass) };
        }
    }
}

/// Runs the child with `role`; returns its exit code (None if killed) and its stderr.
/// Fails if it is still running after ten seconds: that is the hang under test.
fn run_child(role: &str) -> (Option<i32>, String) {
    let (nodes, secret) = common::nodes(2, 16 << 20);
    let addrs: Vec<String> = nodes.addrs().iter().map(ToString::to_string).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_with_a_panicking_policy",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(NODES_ENV, addrs.join(","))
        .env("DSM_SECRET", secret.as_str())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the child still ran 10 s after starting: a runtime thread's panic left it \
                 hanging; stderr: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(nodes);
    let stderr = reader.join().unwrap();
    // For the log of a failing run, and to show what a user sees.
    eprintln!("child ({role}) exited with {status}; its stderr:\n{stderr}");
    (status.code(), stderr)
}

/// The `dsm: fatal:` line names the thread the policy panicked on, repeats the panic
/// message, and gives the panic's place in this file.
fn assert_fatal_line_names_the_thread(stderr: &str, policy: &str, threads: &[&str]) {
    let at = stderr
        .find("dsm: fatal: runtime thread ")
        .unwrap_or_else(|| panic!("no `dsm: fatal: runtime thread` line: {stderr}"));
    let line = stderr[at..].lines().next().unwrap();
    let thread = line["dsm: fatal: runtime thread ".len()..]
        .split(' ')
        .next()
        .unwrap();
    assert!(
        threads.iter().any(|t| thread.starts_with(t)),
        "panicked on {thread}, expected one of {threads:?}: {line}"
    );
    let expected = format!(
        "dsm: fatal: runtime thread {thread} panicked: {policy} policy gave up on {thread} at "
    );
    assert!(line.starts_with(&expected), "{line}\nexpected: {expected}");
    assert!(
        line.contains("tests/runtime_panics.rs:"),
        "no file:line: {line}"
    );
    assert_eq!(
        stderr.matches("dsm: fatal:").count(),
        1,
        "one failure, one report: {stderr}"
    );
}

#[test]
fn a_panic_in_the_eviction_policy_ends_the_process_naming_the_thread() {
    let (code, stderr) = run_child("eviction");
    assert_eq!(code, Some(EXIT_RUNTIME_FAILURE), "stderr: {stderr}");
    assert_fatal_line_names_the_thread(&stderr, "eviction", &["dsm-reclaim", "dsm-fault-"]);
}

#[test]
fn a_panic_in_the_prefetch_policy_ends_the_process_naming_the_thread() {
    let (code, stderr) = run_child("prefetch");
    assert_eq!(code, Some(EXIT_RUNTIME_FAILURE), "stderr: {stderr}");
    assert_fatal_line_names_the_thread(&stderr, "prefetch", &["dsm-fault-"]);
}
