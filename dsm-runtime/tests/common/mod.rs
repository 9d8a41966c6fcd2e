//! Helpers shared by the integration tests: real memory-node processes on loopback.
#![allow(dead_code)]

use dsm_runtime::launch::LocalNodes;
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::Transport;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::path::Path;
use std::time::Duration;

/// Starts `n` node processes of `node_bytes` each and a transport to them.
pub fn cluster(n: usize, node_bytes: u64) -> (LocalNodes, TcpTransport) {
    let (nodes, secret) = nodes(n, node_bytes);
    let t = TcpTransport::discover(nodes.addrs(), secret, Duration::from_secs(10)).unwrap();
    (nodes, t)
}

/// Starts `n` node processes of `node_bytes` each; returns them and the job secret.
pub fn nodes(n: usize, node_bytes: u64) -> (LocalNodes, Secret) {
    let secret = Secret::generate().unwrap();
    let nodes = LocalNodes::spawn(
        Path::new(env!("CARGO_BIN_EXE_dsmrun")),
        n,
        node_bytes,
        &secret,
    )
    .unwrap();
    (nodes, secret)
}

/// A runtime at its own base (tests in one binary run concurrently in one process).
pub fn runtime(t: &dyn Transport, slot: usize, cache_bytes: u64, space_bytes: u64) -> Runtime {
    let config = RuntimeConfig {
        space_base: 0x1000_0000_0000 + slot * 0x100_0000_0000,
        space_bytes,
        cache_bytes_max: cache_bytes,
        ..Default::default()
    };
    Runtime::start(config, t).unwrap()
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- Running unmodified programs natively and under dsmrun --------------------------

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Heavy program runs take turns: the machine has two cores, and timing-sensitive
/// native/dsm pairs should not fight each other.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// Takes the heavy-run lock (a failed test elsewhere does not poison it for the rest).
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dsmrun binary under test.
pub fn dsmrun() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dsmrun"))
}

/// Panics with a clear message unless the preload library was built next to dsmrun
/// (`cargo build --release --workspace`; scripts/test-all does it).
pub fn require_preload() {
    let lib = dsmrun().with_file_name("libdsm_preload.so");
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build --release --workspace` before the tests",
        lib.display()
    );
}

/// Variable that lets a test whose prerequisite is missing pass without running.
pub const ALLOW_SKIP_ENV: &str = "DSM_ALLOW_SKIP";
/// File that each allowed skip appends its `SKIPPED:` line to (scripts/test-all lists it).
pub const SKIP_LOG_ENV: &str = "DSM_SKIP_LOG";

/// `test` cannot run here: `reason` says what is missing and which Debian package
/// provides it. Fails the test, since a suite that passes by not running proves nothing,
/// unless `DSM_ALLOW_SKIP=1` (ignored when `CI` is set: CI installs everything, so a
/// missing prerequisite there is a broken CI). An allowed skip says so on stderr and in
/// the file `DSM_SKIP_LOG` names; the test then returns without asserting anything.
pub fn skip(test: &str, reason: &str) {
    let test = test_name(test);
    let test = test.as_str();
    let allowed = std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if !allowed || ci {
        panic!(
            "{test} cannot run: {reason}.\nInstall what is missing (.ci/run installs every \
             prerequisite on Debian 12){}",
            if ci {
                "; CI is set, so DSM_ALLOW_SKIP is not honoured"
            } else {
                ", or set DSM_ALLOW_SKIP=1 to let such tests pass without running"
            }
        );
    }
    let line = format!("SKIPPED: {test}: {reason}\n");
    // Straight to stderr, not `eprint!`, which the test harness captures and shows only
    // for failing tests: a skip must be seen.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One append-mode write per line: concurrent tests and test binaries do not
        // interleave their lines.
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = res {
            panic!(
                "{test}: recording the skip in {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

/// `file::function` of the running test, for a skip line that says what to rerun:
/// libtest names each test's thread after the test (except with one test thread, where
/// `fallback` stands in), and the binary after its file, plus a hash.
fn test_name(fallback: &str) -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.rsplit_once('-')
                .map_or(s.clone(), |(name, _hash)| name.to_string())
        })
        .unwrap_or_default();
    let current = std::thread::current();
    let function = current.name().filter(|n| *n != "main").unwrap_or(fallback);
    format!("{binary}::{function}")
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(program);
            f.is_file()
        })
    })
}

/// What a finished process did.
#[derive(Debug)]
pub struct Ran {
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Exit code, or 128+signal.
    pub code: i32,
    /// Peak resident set of the process and its waited-for descendants, in bytes.
    pub peak_rss: u64,
    pub secs: f64,
}

/// Runs `cmd` to completion, measuring its peak RSS with wait4.
// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> Ran {
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        String::from_utf8_lossy(&v).into_owned()
    });
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; pointers to locals.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(rc > 0, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ran {
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        code,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// A dsmrun command line: `-n nodes --local-cache cache --stats stats_path` + `extra`.
pub fn dsmrun_cmd(nodes: usize, cache_bytes: u64, stats: &std::path::Path) -> Command {
    require_preload();
    let mut c = Command::new(dsmrun());
    c.args([
        "-n",
        &nodes.to_string(),
        "--local-cache",
        &cache_bytes.to_string(),
    ])
    .arg("--stats")
    .arg(stats);
    c
}

/// Reads a --stats file's job totals.
pub fn stats_total(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading stats {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["total"].clone()
}

/// Asserts that pages really went to the nodes and came back.
pub fn assert_pooled(total: &serde_json::Value, what: &str) {
    for k in ["evictions", "remote_write_pages", "remote_read_pages"] {
        let n = total[k].as_u64().unwrap_or(0);
        assert!(n > 0, "{what}: {k} is {n}; stats: {total}");
    }
}

/// A quarter of `peak_rss`, in whole pages, at least the runtime's minimum cache.
pub fn quarter_of(peak_rss: u64) -> u64 {
    (peak_rss / 4 / 4096 * 4096).max(256 << 10)
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dsm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles a C program from tests/programs; None without a compiler (the caller skips).
pub fn compile_c(name: &str, extra: &[&str]) -> Option<PathBuf> {
    if !have("cc") {
        return None;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("dsm-test-{}-{name}.{n}.bin", std::process::id()));
    let st = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "compiling {}", src.display());
    Some(out)
}

/// Debian's velvet-example reads (package velvet-example).
pub const VELVET_EXAMPLE_READS: &str = "/usr/share/doc/velvet/examples/test_reads.fa.xz";

/// Unpacks velvet-example's reads into `dir` and runs `velveth` on them (k = 21, paired
/// reads); returns the directory of its output, which [`velvet_run_dir`] copies.
pub fn velveth_example(dir: &Path) -> PathBuf {
    let reads = dir.join("reads.fa");
    let data = Command::new("xz")
        .arg("-dc")
        .arg(VELVET_EXAMPLE_READS)
        .output()
        .unwrap();
    assert!(data.status.success(), "xz -dc {VELVET_EXAMPLE_READS}");
    std::fs::write(&reads, data.stdout).unwrap();
    let h = dir.join("h");
    let st = Command::new("velveth")
        .arg(&h)
        .args(["21", "-fasta", "-shortPaired"])
        .arg(&reads)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "velveth");
    h
}

/// Debian's velvet-example reference genome (100 kb).
pub const VELVET_EXAMPLE_REFERENCE: &str = "/usr/share/doc/velvet/examples/test_reference.fa.xz";

/// The tests' ART set: 10x HiSeq 2500 paired reads of velvet-example's reference,
/// simulated into `dir` with a fixed seed (needs art_illumina, xz and velvet-example);
/// returns the two FASTQ files.
pub fn art_reads(dir: &Path) -> (String, String) {
    let reference = dir.join("test_reference.fa");
    let data = Command::new("xz")
        .arg("-dc")
        .arg(VELVET_EXAMPLE_REFERENCE)
        .output()
        .unwrap();
    assert!(data.status.success(), "xz -dc {VELVET_EXAMPLE_REFERENCE}");
    std::fs::write(&reference, data.stdout).unwrap();
    let prefix = dir.join("sim");
    let st = Command::new("art_illumina")
        .args(["-ss", "HS25", "-p", "-l", "100", "-m", "300", "-s", "30"])
        .args(["-rs", "11", "-f", "10", "-na", "-q", "-i"])
        .arg(&reference)
        .arg("-o")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "art_illumina: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let fq = |i: u32| {
        dir.join(format!("sim{i}.fq"))
            .to_string_lossy()
            .into_owned()
    };
    (fq(1), fq(2))
}

/// Makes `to` a fresh copy of velveth's output in `h`: velvetg rewrites its directory,
/// so each run needs its own.
pub fn velvet_run_dir(h: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for f in ["Sequences", "Roadmaps", "Log"] {
        std::fs::copy(h.join(f), to.join(f)).unwrap();
    }
}

/// A prefetch policy that asks for the next `n` pages after every fault.
pub struct NextN(pub u64);

impl dsm_runtime::policy::PrefetchPolicy for NextN {
    fn name(&self) -> &'static str {
        "next-n"
    }
    fn on_fault(
        &mut self,
        page: dsm_runtime::space::PageNum,
        _hit: bool,
        max: usize,
        out: &mut Vec<dsm_runtime::space::PageNum>,
    ) {
        for d in 1..=self.0.min(max as u64) {
            out.push(dsm_runtime::space::PageNum(page.0 + d));
        }
    }
}

/// An in-process runtime over two fresh nodes, at slot `slot` of the test address space,
/// prefetching the next 64 pages after every fault (every 16th staged as a probe) under
/// CLOCK; `tweak` sets anything else.
pub fn prefetching_runtime(
    slot: usize,
    cache: u64,
    space: u64,
    tweak: impl FnOnce(&mut RuntimeConfig),
) -> (LocalNodes, Runtime) {
    let (nodes, t) = cluster(2, space);
    let mut config = RuntimeConfig {
        space_base: 0x1000_0000_0000 + slot * 0x100_0000_0000,
        space_bytes: space,
        cache_bytes_max: cache,
        prefetch_max_pages: 64,
        prefetch_probe_every: 16,
        ..Default::default()
    };
    tweak(&mut config);
    let policies = dsm_runtime::runtime::Policies {
        eviction: Box::new(dsm_runtime::policy::eviction::Clock::with_capacity(
            config.cache_pages(),
        )),
        prefetch: Box::new(NextN(64)),
        placement: None,
        trace: None,
    };
    (nodes, Runtime::start_with(config, &t, policies).unwrap())
}
