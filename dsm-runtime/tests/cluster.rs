//! Memory nodes on other hosts, on a real test cluster: `scripts/test-cluster up 4` makes
//! four hosts out of network namespaces (each with its own address, pid namespace, sshd
//! and slurmd; slurmctld and munged here). Programs run here; their nodes run on the
//! hosts, started over ssh (`--hostfile`) or as Slurm job steps (`salloc`, `sbatch`).
//! Needs root and Debian's openssh-server, slurmd, slurmctld, slurm-client and munge
//! (the script installs them when missing).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: usize = 4;
/// Host I's address (scripts/test-cluster).
fn host_addr(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}
/// On the cluster's bridge, where no host is: nothing answers.
const UNREACHABLE: &str = "10.77.0.254";
/// The main namespace's address on the bridge: no sshd listens there.
const NO_SSHD: &str = "10.77.0.1";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-cluster")
}

/// Brings the cluster up (or heals it after a test killed a host) and returns its
/// hostfile; `None` after an allowed skip.
fn cluster(test: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root (network namespaces, sshd, slurmd)");
        return None;
    }
    let out = Command::new(script())
        .args(["up", &HOSTS.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        skip(
            test,
            &format!(
                "scripts/test-cluster up {HOSTS} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
        return None;
    }
    let hostfile = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(hostfile.is_file(), "no hostfile at {hostfile:?}: {stdout}");
    Some(hostfile)
}

/// The pattern that finds this build's memory nodes, wherever they run (every host's
/// processes are visible from here; other checkouts' nodes are not ours).
fn node_pattern() -> String {
    format!("{} node", dsmrun().display())
}

fn nodes_running() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", &node_pattern()])
        .output()
        .expect("pgrep (apt-get install procps)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits up to `secs` for every node to be gone; fails naming what is left.
fn assert_nothing_left(what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = nodes_running();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: memory nodes left running after {secs} s:\n{}",
                left.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes read from nodes on each host, from a --stats file (`node_hosts` maps the
/// `_by_node` counters' index to a host).
fn reads_by_host(stats: &Path) -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string(stats).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hosts: Vec<String> = serde_json::from_value(v["job"]["node_hosts"].clone())
        .unwrap_or_else(|e| panic!("no job.node_hosts in {}: {e}", stats.display()));
    let reads = v["total"]["remote_read_bytes_by_node"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut by_host = std::collections::BTreeMap::new();
    for (i, host) in hosts.iter().enumerate() {
        let n = reads.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
        *by_host.entry(host.clone()).or_insert(0) += n;
    }
    by_host
}

/// The multithreaded C program with checksums, natively: its output and peak RSS.
const HEAPWALK_ARGS: [&str; 4] = ["64", "4", "2", "42"];

fn heapwalk_native(exe: &Path) -> Ran {
    let native = run_measured(Command::new(exe).args(HEAPWALK_ARGS));
    assert_eq!(native.code, 0, "heapwalk natively: {}", native.stderr);
    native
}

/// Checks a pooled run against the native one: same bytes, pooled for real, and every
/// one of the `hosts` served remote reads.
fn assert_pooled_on_every_host(
    what: &str,
    run: &Ran,
    native: &Ran,
    stats: &Path,
    hosts: &[String],
) {
    assert_eq!(run.code, 0, "{what}: {}", run.stderr);
    assert!(
        run.stdout == native.stdout,
        "{what}: output differs from the native run:\n{}\nvs\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&native.stdout)
    );
    assert_pooled(&stats_total(stats), what);
    let by_host = reads_by_host(stats);
    for h in hosts {
        let n = by_host.get(h).copied().unwrap_or(0);
        assert!(
            n > 0,
            "{what}: no remote reads from nodes on {h}: {by_host:?}"
        );
    }
    assert!(
        run.stderr.contains("over tcp") || run.stderr.contains("over shm+tcp"),
        "{what}: nodes on other hosts are reached over TCP: {}",
        run.stderr
    );
}

fn addrs() -> Vec<String> {
    (1..=HOSTS).map(host_addr).collect()
}

#[test]
fn a_program_runs_here_with_its_nodes_on_four_hosts_over_ssh() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("cluster_ssh", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_ssh") else {
        return;
    };
    let native = heapwalk_native(&exe);
    let dir = scratch("cluster-ssh");
    let stats = dir.join("stats.json");
    let run = run_measured(
        dsmrun_cmd(16, quarter_of(native.peak_rss), &stats)
            .arg("--hostfile")
            .arg(&hostfile)
            .arg("--")
            .arg(&exe)
            .args(HEAPWALK_ARGS),
    );
    assert_pooled_on_every_host("heapwalk --hostfile", &run, &native, &stats, &addrs());
    assert_nothing_left("after the job", 5);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn sixteen_nodes_on_four_hosts_are_ready_in_under_five_seconds() {
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_start_time") else {
        return;
    };
    require_preload();
    // The best of three: the machine is shared, and one slow round says little.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(dsmrun())
            .args(["-q", "-n", "16", "--hostfile"])
            .arg(&hostfile)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        best = best.min(t.elapsed());
    }
    assert!(
        best < Duration::from_secs(5),
        "start, run `true`, stop: {best:?}"
    );
    assert_nothing_left("after the job", 5);
}

/// The secret reaches nodes on stdin (ssh) and never shows on a command line.
#[test]
fn the_job_secret_is_on_no_command_line() {
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_secret") else {
        return;
    };
    require_preload();
    let dir = scratch("cluster-secret");
    let secret_file = dir.join("secret");
    // The program learns the secret from its environment (as the runtime does) and
    // writes it down; meanwhile the test reads every process's command line.
    let child = Command::new(dsmrun())
        .args(["-q", "-n", "8", "--hostfile"])
        .arg(&hostfile)
        .args([
            "--",
            "sh",
            "-c",
            "printf %s \"$DSM_SECRET\" > \"$0\"; sleep 4",
        ])
        .arg(&secret_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read(&secret_file).map_or(true, |s| s.is_empty()) {
        assert!(Instant::now() < deadline, "the program never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(secret.len() >= 32, "{secret:?}");
    assert_eq!(nodes_running().len(), 8, "nodes: {:?}", nodes_running());
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            seen += 1;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !text.contains(&secret),
                "the secret is on a command line: {text}"
            );
        }
    }
    assert!(seen > 20, "read {seen} command lines");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left("after the job", 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// How a test starts a job's nodes on the cluster.
#[derive(Clone, Copy, Debug)]
enum Via<'a> {
    /// `dsmrun --hostfile FILE` (ssh).
    Hostfile(&'a Path),
    /// `salloc -N 4 dsmrun ...`.
    Salloc,
    /// `sbatch -N 4 --wait` of a script running `dsmrun ...`.
    Sbatch,
}

/// Runs `dsmrun -n 16 --local-cache CACHE --stats STATS -- PROGRAM ARGS` on the cluster
/// `via`; `dir` holds a batch job's script and output.
fn run_on_cluster(via: Via, cache: u64, stats: &Path, program: &[String], dir: &Path) -> Ran {
    require_preload();
    let dsm_args: Vec<String> = [
        "-v".to_string(),
        "-n".into(),
        "16".into(),
        "--local-cache".into(),
        cache.to_string(),
        "--stats".into(),
        stats.display().to_string(),
    ]
    .into_iter()
    .collect();
    match via {
        Via::Hostfile(hostfile) => run_measured(
            Command::new(dsmrun())
                .args(&dsm_args)
                .arg("--hostfile")
                .arg(hostfile)
                .arg("--")
                .args(program),
        ),
        Via::Salloc => run_measured(
            Command::new("salloc")
                .args(["-N", "4", "--quiet"])
                .arg(dsmrun())
                .args(&dsm_args)
                .arg("--")
                .args(program),
        ),
        Via::Sbatch => {
            let out_file = dir.join("sbatch.out");
            let err_file = dir.join("sbatch.err");
            let batch = dir.join("job.sh");
            let quoted = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
            let line: Vec<String> = std::iter::once(dsmrun().display().to_string())
                .chain(dsm_args.iter().cloned())
                .chain(std::iter::once("--".to_string()))
                .chain(program.iter().cloned())
                .map(|a| quoted(&a))
                .collect();
            std::fs::write(
                &batch,
                format!("#!/bin/sh\n#SBATCH -N 4\nexec {}\n", line.join(" ")),
            )
            .unwrap();
            let t = Instant::now();
            let sb = Command::new("sbatch")
                .args(["--wait", "-o"])
                .arg(&out_file)
                .arg("-e")
                .arg(&err_file)
                .arg(&batch)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            Ran {
                stdout: std::fs::read(&out_file).unwrap_or_default(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&sb.stderr),
                    std::fs::read_to_string(&err_file).unwrap_or_default()
                ),
                code: sb.status.code().unwrap_or(-1),
                peak_rss: 0,
                secs: t.elapsed().as_secs_f64(),
            }
        }
    }
}

fn slurm_hosts() -> Vec<String> {
    (1..=HOSTS).map(|i| format!("host{i}")).collect()
}

/// `salloc -N 4 dsmrun -n 16 -- PROG` and `sbatch -N 4` with the same in its script.
#[test]
fn a_program_runs_with_its_nodes_on_a_slurm_allocation() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("cluster_slurm", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    if cluster("cluster_slurm").is_none() {
        return;
    }
    let native = heapwalk_native(&exe);
    let dir = scratch("cluster-slurm");
    let cache = quarter_of(native.peak_rss);
    let program: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(HEAPWALK_ARGS.iter().map(|a| a.to_string()))
        .collect();
    for (via, what) in [(Via::Salloc, "salloc -N 4"), (Via::Sbatch, "sbatch -N 4")] {
        let stats = dir.join(format!("{what}.json"));
        let run = run_on_cluster(via, cache, &stats, &program, &dir);
        let what = format!("heapwalk under {what}");
        assert_pooled_on_every_host(&what, &run, &native, &stats, &slurm_hosts());
        // salloc runs the program here, outside the allocation's hosts: every node is
        // remote. A batch script runs on the allocation's first host, whose nodes it
        // maps (shm) while it reaches the others' over TCP.
        let expect = match via {
            Via::Sbatch => "transport auto: shm for nodes 0,4,8,12 (on this host), tcp for nodes 1-3,5-7,9-11,13-15",
            _ => "transport auto: tcp, because",
        };
        assert!(run.stderr.contains(expect), "{what}: {}", run.stderr);
        assert_nothing_left(&what, 10);
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

/// Debian's velvetg on velvet-example, over ssh, under salloc and under sbatch, each
/// with a cache of a quarter of its peak RSS: contigs.fa and stats.txt byte-identical to
/// a native run's. A quarter is where velvetg thrashes (its graph lookups are random:
/// about 2.9 million faults, some 200 s over TCP against 1.6 s natively on the 2-CPU
/// test machine), so this is the longest test of the suite.
#[test]
fn velvetg_assembles_the_same_contigs_with_its_nodes_on_four_hosts() {
    let examples = Path::new(VELVET_EXAMPLE_READS);
    if !have("velveth") || !have("velvetg") || !examples.exists() || !have("xz") {
        return skip(
            "cluster_velvet",
            "velvet, velvet-example or xz is missing (apt-get install velvet velvet-example \
             xz-utils)",
        );
    }
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_velvet") else {
        return;
    };
    let dir = scratch("cluster-velvet");
    let base = velveth_example(&dir);
    let fresh = |name: &str| {
        let to = dir.join(name);
        velvet_run_dir(&base, &to);
        to
    };
    let native_dir = fresh("native");
    let native = run_measured(Command::new("velvetg").arg(&native_dir));
    assert_eq!(native.code, 0, "velvetg natively: {}", native.stderr);
    let cache = quarter_of(native.peak_rss);
    let ssh = [(Via::Hostfile(&hostfile), "hostfile", addrs())];
    let slurm = [
        (Via::Salloc, "salloc", slurm_hosts()),
        (Via::Sbatch, "sbatch", slurm_hosts()),
    ];
    for (via, what, hosts) in ssh.into_iter().chain(slurm) {
        let out_dir = fresh(what);
        let stats = dir.join(format!("{what}.json"));
        let program = vec!["velvetg".to_string(), out_dir.display().to_string()];
        let run = run_on_cluster(via, cache, &stats, &program, &dir);
        let what = format!("velvetg via {what}");
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        for f in ["contigs.fa", "stats.txt"] {
            let a = std::fs::read(native_dir.join(f)).unwrap();
            let b = std::fs::read(out_dir.join(f)).unwrap();
            assert!(
                !a.is_empty() || f != "contigs.fa",
                "velvetg assembled nothing"
            );
            assert!(a == b, "{what}: {f} differs from the native run's");
        }
        assert_pooled(&stats_total(&stats), &what);
        let by_host = reads_by_host(&stats);
        for h in &hosts {
            assert!(
                by_host.get(h).copied().unwrap_or(0) > 0,
                "{what}: no remote reads from {h}: {by_host:?}"
            );
        }
        assert_nothing_left(&what, 10);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// scancel of a running batch job ends every node on every host.
#[test]
fn scancel_tears_down_every_node() {
    let _turn = heavy();
    if cluster("cluster_scancel").is_none() {
        return;
    }
    require_preload();
    let dir = scratch("cluster-scancel");
    let batch = dir.join("job.sh");
    std::fs::write(
        &batch,
        format!(
            "#!/bin/sh\nexec {} -n 16 -- sleep 120\n",
            dsmrun().display()
        ),
    )
    .unwrap();
    let out = Command::new("sbatch")
        .args(["--parsable", "-N", "4", "-o"])
        .arg(dir.join("out"))
        .arg(&batch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes_running().len() < 16 {
        assert!(
            Instant::now() < deadline,
            "the job's 16 nodes never all ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new("scancel").arg(&job).status().unwrap();
    assert!(st.success());
    assert_nothing_left("after scancel", 15);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs dsmrun with `args` and `true`; it must fail within 10 s with exit status 1,
/// saying `expect` and naming one of `hosts` (whichever failed first), and leave nothing
/// running.
fn assert_fails_naming_host(what: &str, args: &[&str], hosts: &[String], expect: &str) {
    require_preload();
    let t = Instant::now();
    let out = Command::new(dsmrun())
        .arg("-q")
        .args(args)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(
        took < Duration::from_secs(10),
        "{what}: took {took:?}: {err}"
    );
    assert!(
        hosts.iter().any(|h| err.contains(&format!("host {h}:"))),
        "{what}: names none of {hosts:?}: {err}"
    );
    assert!(err.contains(expect), "{what}: {err}");
    assert_nothing_left(what, 5);
}

#[test]
fn hosts_that_cannot_run_nodes_are_named_within_ten_seconds() {
    let _turn = heavy();
    if cluster("cluster_errors").is_none() {
        return;
    }
    let good = host_addr(1);
    // Nothing at the address: no route (ARP fails) or the connect timeout.
    let list = format!("{good}:4,{UNREACHABLE}:4");
    assert_fails_naming_host(
        "unreachable host",
        &["-n", "8", "--hosts", &list],
        &[UNREACHABLE.to_string()],
        "ssh failed",
    );
    // A host that refuses ssh: its address answers, but nothing listens on port 22.
    let list = format!("{good}:4,{NO_SSHD}:4");
    assert_fails_naming_host(
        "ssh refused",
        &["-n", "8", "--hosts", &list],
        &[NO_SSHD.to_string()],
        "Connection refused",
    );
    // A host without dsmrun where it was said to be.
    let list = addrs().join(",");
    assert_fails_naming_host(
        "no dsmrun",
        &[
            "-n",
            "4",
            "--hosts",
            &list,
            "--remote-dsmrun",
            "/nonexistent",
        ],
        &addrs(),
        "no dsmrun at /nonexistent",
    );
}

/// A host that dies during the job (its processes killed, its link down): the job ends
/// within 12 s, naming the host, with the runtime-failure status, and nothing is left
/// on the other hosts. Whichever notices first ends it (docs/cluster.md): the program's
/// runtime after its 5 s node timeout, or ssh's keep-alives (6-8 s) plus dsmrun's grace
/// and port probe (3 s). The bound was 10 s; a fresh-clone CI run on 2026-12-07 ended by
/// the ssh path in 10.37 s, the runtime's timeout not having fired: a write batch to
/// several of the dead host's nodes waited a timeout per node, one after the other
/// (fixed 2026-12-08 in `TcpSession::drain_pending`). The bound still covers the ssh
/// path; tightening it again waits for more runs of this test.
#[test]
fn a_host_dying_mid_job_ends_it_naming_the_host() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("cluster_host_dies", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_host_dies") else {
        return;
    };
    require_preload();
    let mut child = Command::new(dsmrun())
        .args(["-v", "-n", "16", "--local-cache", "2M", "--hostfile"])
        .arg(&hostfile)
        .arg("--")
        .arg(&exe)
        .args(["32", "4", "1000", "7"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = StampedStderr::read(&mut child);
    kill_host_2_mid_job(&stderr, "a host dying mid-job");
    let killed = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the job hung after host 2 died: {}", stderr.finish());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed.elapsed();
    let err = stderr.finish();
    assert!(took < Duration::from_secs(12), "took {took:?}: {err}");
    assert_eq!(
        status.code(),
        Some(dsm_runtime::runtime::EXIT_RUNTIME_FAILURE),
        "{err}"
    );
    assert!(err.contains(&host_addr(2)), "names no host: {err}");
    // dsmrun names the host whose nodes went silent (the hostfile's interleave puts
    // nodes 1, 5, 9 and 13 on host 2), and only that one.
    let line = format!(
        "dsmrun: host {}: its memory node(s) 1, 5, 9, 13 no longer answer",
        host_addr(2)
    );
    assert!(err.contains(&line), "{err}");
    assert_eq!(err.matches("no longer answer").count(), 1, "{err}");
    assert_nothing_left("after a host died", 10);
    let _ = std::fs::remove_file(exe);
}

/// Issue 19's "its host gone" under redundancy: the same host death as above, but the job
/// keeps every page on two hosts, so it goes on and prints what it prints natively.
#[test]
fn a_host_dying_mid_job_under_replicate_2_loses_nothing() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "cluster_host_dies_replicated",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_host_dies_replicated") else {
        return;
    };
    require_preload();
    // About 40 s on the 4 hosts undisturbed (replicate:2 doubles every write-back): long
    // enough to be mid-job when the host dies, short enough for the 120 s bound below
    // once degraded and re-protecting (1000 rounds took 108 s undisturbed).
    let args = ["32", "4", "300", "7"];
    let native = Command::new(&exe).args(args).output().unwrap();
    assert!(native.status.success());
    let mut child = Command::new(dsmrun())
        .args([
            "-v",
            "-n",
            "16",
            "--local-cache",
            "2M",
            "--redundancy",
            "replicate:2",
        ])
        .args(["--node-timeout", "2000", "--hostfile"])
        .arg(&hostfile)
        .arg("--")
        .arg(&exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = StampedStderr::read(&mut child);
    kill_host_2_mid_job(&stderr, "a host dying under replicate:2");
    // Bounded: a job that hangs on the dead host fails the test instead of hanging it.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let Ok(out) = rx.recv_timeout(Duration::from_secs(120)) else {
        // SAFETY: kill(2) on the dsmrun we started; it has not been reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!(
            "the replicated job hung after host 2 died: {}",
            stderr.finish()
        );
    };
    let err = stderr.finish();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        out.stdout == native.stdout,
        "output differs from the native run after host 2 died: {err}"
    );
    // Host 2 holds nodes 1, 5, 9 and 13 (the hostfile's interleave): all four die.
    assert!(
        err.contains("redundancy: 4 node(s) died and were fenced"),
        "{err}"
    );
    assert_nothing_left("after a replicated job outlived a host", 10);
    let _ = std::fs::remove_file(exe);
}

/// Issue 21's "restart on a different host": heapwalk checkpointed here with its nodes
/// here, everything killed, then `dsmrun restart` run on host 2 over ssh (another network
/// and pid namespace: fresh nodes there, new pids). The checkpoint directory is on the
/// file system the hosts share.
#[test]
fn a_job_checkpointed_here_restarts_on_another_host() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "cluster_restart_elsewhere",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    if cluster("cluster_restart_elsewhere").is_none() {
        return;
    }
    require_preload();
    let dir = scratch("cluster-restart");
    let args = ["64", "4", "100", "11"];
    let native = Command::new(&exe).args(args).output().unwrap();
    assert!(native.status.success());
    checkpoint_mid_run_then_kill(&dir, &["-n", "2"], &exe, &args);
    let remote = format!(
        "cd {d} && DSM_JOBS_DIR={d}/jobs2 {exe} restart -v {d}/ck",
        d = dir.display(),
        exe = dsmrun().display()
    );
    let out = Command::new("ssh")
        .args(["-o", "BatchMode=yes", &host_addr(2), &remote])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsmrun restart on host 2: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&native.stdout),
        "the restart on host 2 printed other than native: {err}"
    );
    assert!(err.contains("the restored program runs again"), "{err}");
    assert_nothing_left("after a restart on another host", 10);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

/// Runs `exe args` under `dsmrun -q --local-cache 16M --checkpoint-dir DIR/ck` plus
/// `placement` (where its nodes go), takes a checkpoint with `dsmrun checkpoint` 1.5 s in,
/// then SIGKILLs dsmrun and everything below it (nodes on other hosts die with their ssh
/// sessions or job steps), and checks that the program had not finished.
fn checkpoint_mid_run_then_kill(dir: &Path, placement: &[&str], exe: &Path, args: &[&str]) {
    let jobs = dir.join("jobs");
    let mut job = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", &jobs)
        .args(["-q", "--local-cache", "16M", "--name", "ck"])
        .args(placement)
        .arg("--checkpoint-dir")
        .arg(dir.join("ck"))
        .arg("--")
        .arg(exe)
        .args(args)
        .stdout(std::fs::File::create(dir.join("out1.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("err1.txt")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let ck = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", &jobs)
        .args(["checkpoint", "ck"])
        .output()
        .unwrap();
    kill_with_children(job.id());
    let _ = job.wait();
    let err1 = std::fs::read_to_string(dir.join("err1.txt")).unwrap_or_default();
    assert!(
        ck.status.success(),
        "{}; the job said: {err1}",
        String::from_utf8_lossy(&ck.stderr)
    );
    let before = std::fs::read(dir.join("out1.txt")).unwrap();
    assert!(before.is_empty(), "the program ended before it was killed");
    assert_nothing_left("after the checkpointed job was killed", 10);
}

/// Issue 21 with the nodes on other hosts: heapwalk with its 8 nodes on the four test
/// hosts (ssh, `--hostfile`) writes its checkpoint into a directory on the file system the
/// hosts share (each node writes its own snapshot there); everything is killed. The job is
/// restarted from that checkpoint twice, with fresh nodes elsewhere each time: over ssh on
/// two of the hosts only (`--hosts`), then as job steps of a two-host Slurm allocation.
/// Both print what heapwalk prints natively.
#[test]
fn a_job_with_its_nodes_on_four_hosts_restarts_on_other_hosts() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "cluster_restart_hosts",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_restart_hosts") else {
        return;
    };
    require_preload();
    let dir = scratch("cluster-restart-hosts");
    let args = ["64", "4", "100", "11"];
    let native = Command::new(&exe).args(args).output().unwrap();
    assert!(native.status.success());
    let hostfile = hostfile.display().to_string();
    checkpoint_mid_run_then_kill(&dir, &["-n", "8", "--hostfile", &hostfile], &exe, &args);
    let complete: Vec<PathBuf> = std::fs::read_dir(dir.join("ck"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none() && p.to_string_lossy().contains("/ckpt-"))
        .collect();
    assert_eq!(complete.len(), 1, "one checkpoint expected: {complete:?}");
    let manifest = std::fs::read_to_string(complete[0].join("MANIFEST")).unwrap();
    for node in 0..8 {
        assert!(
            manifest.contains(&format!("node-{node}.")),
            "node {node} wrote no snapshot: {manifest}"
        );
    }
    let two_hosts = format!("{}:4,{}:4", host_addr(3), host_addr(4));
    let ssh = Command::new(dsmrun())
        .args(["restart", "-v", "--hosts", &two_hosts])
        .arg(dir.join("ck"))
        .env("DSM_JOBS_DIR", dir.join("jobs2"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let slurm = Command::new("salloc")
        .args(["-N", "2", "--quiet"])
        .arg(dsmrun())
        .args(["restart", "-v"])
        .arg(dir.join("ck"))
        .env("DSM_JOBS_DIR", dir.join("jobs3"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    for (how, out) in [
        ("over ssh on hosts 3 and 4", &ssh),
        ("under salloc -N 2", &slurm),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "restart {how}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&native.stdout),
            "the restart {how} printed other than native: {err}"
        );
        assert!(err.contains("the restored program runs again"), "{err}");
        let node_lines: Vec<&str> = err.lines().filter(|l| l.contains(" pid ")).collect();
        assert_eq!(node_lines.len(), 8, "{err}");
        assert!(
            node_lines.iter().all(|l| l.contains(" on host ")),
            "a node of the restart {how} ran here: {err}"
        );
    }
    let err = String::from_utf8_lossy(&ssh.stderr);
    for host in [1, 2] {
        let there = format!("on host {}", host_addr(host));
        assert!(!err.contains(&there), "--hosts left out host {host}: {err}");
    }
    assert_nothing_left("after the restarts on other hosts", 10);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

/// SIGKILL to `pid` and to every process below it, the children first.
fn kill_with_children(pid: u32) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        kill_with_children(child);
    }
    // SAFETY: kill(2) on a process this test started, or one of its descendants.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn an_allocation_too_small_for_the_nodes_is_an_error() {
    let _turn = heavy();
    if cluster("cluster_small_allocation").is_none() {
        return;
    }
    require_preload();
    let out = Command::new("salloc")
        .args(["-N", "1", "--quiet"])
        .arg(dsmrun())
        .args(["-q", "-n", "16", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the Slurm allocation is too small for -n 16"),
        "{err}"
    );
    assert_nothing_left("after a refused allocation", 5);
}

/// Ctrl-C (SIGINT to dsmrun) and dsmrun's own death (SIGKILL: nothing of it runs to
/// clean up) stop every node on every host, over ssh and under Slurm.
#[test]
fn interrupting_or_killing_dsmrun_stops_every_node() {
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_interrupt") else {
        return;
    };
    require_preload();
    let hostfile_arg = hostfile.display().to_string();
    let ssh_args = [
        "-q",
        "-n",
        "16",
        "--hostfile",
        &hostfile_arg,
        "--",
        "sleep",
        "60",
    ];
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGKILL, "SIGKILL")] {
        let what = format!("dsmrun --hostfile given {name}");
        let mut child = Command::new(dsmrun())
            .args(ssh_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_nodes(16, &what);
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let _ = child.wait();
        assert_nothing_left(&what, 10);
    }
    // Under Slurm: dsmrun killed inside an allocation; its srun steps are cancelled.
    let script = format!(
        "{} -q -n 16 -- sleep 60 & p=$!; \
         while [ \"$(pgrep -f -c '^{}')\" -lt 16 ]; do sleep 0.1; done; kill -KILL $p; wait $p",
        dsmrun().display(),
        node_pattern()
    );
    let out = Command::new("timeout")
        .args(["60", "salloc", "-N", "4", "--quiet", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // sh's status is dsmrun's: killed by SIGKILL.
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left("dsmrun killed under salloc", 10);
}

fn wait_for_nodes(n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes_running().len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: the {n} nodes never all ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Once the program's runtime is up on the job's 16 nodes and the program has had 2 s to
/// get going on them, kills host 2 (its processes killed, its link set down). Waiting
/// for the nodes' processes alone was not enough: on a loaded machine the program could
/// still be starting, and a host dying then is a different case (the job then ends when
/// ssh notices, 6-8 s later), which made this test's 10 s bound fail in CI.
fn kill_host_2_mid_job(stderr: &StampedStderr, what: &str) {
    wait_for_nodes(16, what);
    stderr.wait_for_runtime(what);
    std::thread::sleep(Duration::from_secs(2));
    let st = Command::new(script()).args(["kill", "2"]).status().unwrap();
    assert!(st.success(), "{what}: scripts/test-cluster kill 2 failed");
    eprintln!("{what}: host 2 killed at {:?}", stderr.started.elapsed());
}

/// A `dsmrun -v` job's stderr, read on a thread that stamps each line with the time since
/// the job started (a failure then shows when each thing happened) and says when the
/// program's runtime is up (its `slot 0: heap` line).
struct StampedStderr {
    started: Instant,
    runtime_up: std::sync::mpsc::Receiver<()>,
    lines: std::thread::JoinHandle<String>,
}

impl StampedStderr {
    fn read(child: &mut std::process::Child) -> Self {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr piped");
        let started = Instant::now();
        let (up_tx, runtime_up) = std::sync::mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" slot 0: heap ") {
                    let _ = up_tx.send(());
                }
                all.push_str(&format!(
                    "[{:6.2} s] {line}\n",
                    started.elapsed().as_secs_f64()
                ));
            }
            all
        });
        StampedStderr {
            started,
            runtime_up,
            lines,
        }
    }

    fn wait_for_runtime(&self, what: &str) {
        assert!(
            self.runtime_up
                .recv_timeout(Duration::from_secs(30))
                .is_ok(),
            "{what}: the program's runtime never came up"
        );
    }

    /// Everything the job wrote to stderr, once it has closed it.
    fn finish(self) -> String {
        self.lines.join().unwrap_or_default()
    }
}

/// Writes an executable `--remote-dsmrun` stand-in that waits on each host as `delays`
/// says (a `case` on the host's name) before it becomes the real dsmrun, or, on a host
/// whose delay ends in `!`, never does.
fn slow_starter(dir: &Path, name: &str, delays: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut cases = String::new();
    for (host, delay) in delays {
        let line = match delay.strip_suffix('!') {
            Some(d) => format!("    {host}) sleep {d}; exit 1 ;;\n"),
            None => format!("    {host}) sleep {delay} ;;\n"),
        };
        cases.push_str(&line);
    }
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$(hostname)\" in\n{cases}esac\nexec {} \"$@\"\n",
            dsmrun().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Nodes that report ready late and in another order than they were started (host 1
/// last, host 2 first) still make one job with the right node at each index: the
/// program's output is the native one. A host whose nodes never report ready ends the
/// job at the ready timeout, naming that host, with nothing left running elsewhere.
#[test]
fn nodes_that_start_late_or_in_any_order_never_hang_the_job() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("cluster_late_start", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let Some(hostfile) = cluster("cluster_late_start") else {
        return;
    };
    require_preload();
    let native = heapwalk_native(&exe);
    let dir = scratch("cluster-late");
    let late = slow_starter(
        &dir,
        "late.sh",
        &[("host1", "3"), ("host3", "1.5"), ("host4", "0.7")],
    );
    let stats = dir.join("stats.json");
    let run = run_measured(
        dsmrun_cmd(16, quarter_of(native.peak_rss), &stats)
            .arg("--hostfile")
            .arg(&hostfile)
            .arg("--remote-dsmrun")
            .arg(&late)
            .arg("--")
            .arg(&exe)
            .args(HEAPWALK_ARGS),
    );
    assert_pooled_on_every_host("late nodes", &run, &native, &stats, &addrs());
    assert_nothing_left("after the late nodes' job", 5);

    let stuck = slow_starter(&dir, "stuck.sh", &[("host3", "30!")]);
    let t = Instant::now();
    let out = Command::new(dsmrun())
        .args(["-q", "-n", "16", "--hostfile"])
        .arg(&hostfile)
        .arg("--remote-dsmrun")
        .arg(&stuck)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = Command::new("pkill").arg("-f").arg(&stuck).status();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert!(
        err.contains(&format!(
            "host {}: memory nodes did not report ready within 10 s",
            host_addr(3)
        )),
        "{err}"
    );
    assert_nothing_left("after a host never started its nodes", 5);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}
