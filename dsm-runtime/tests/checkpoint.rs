//! Checkpoint and restart (`--checkpoint-dir`, `dsmrun checkpoint JOB`, `dsmrun restart
//! DIR`): real programs on real nodes are checkpointed mid-run, everything of the job is
//! killed with SIGKILL, and the restarted job must print exactly what a native run
//! prints. Damaged and unfinished checkpoints must be refused or ignored, and a
//! checkpoint that cannot be taken must leave the job running.

mod common;

use common::*;
use dsm_runtime::launch::LocalNodes;
use dsm_runtime::node::{NodeSize, Snapshots};
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{NodeId, ReadOp, Session, Transport, WriteOp};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on waiting for a job to reach a state.
const WAIT_MAX: Duration = Duration::from_secs(120);
const PAGE: usize = 4096;

fn jobs_dir(dir: &Path) -> PathBuf {
    let d = dir.join("jobs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dsmrun VERB ARGS` with the test's jobs directory.
fn dsmrun_verb(dir: &Path, args: &[&str]) -> Output {
    Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(dir))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `dsmrun -v -n 2 --local-cache CACHE --name NAME --checkpoint-dir DIR/ck --
/// program args`, its output in `dir/out1.txt` and `dir/err1.txt`.
fn start_job(dir: &Path, name: &str, cache: u64, program: &[&str], env: &[(&str, &str)]) -> Job {
    start_job_with(dir, name, cache, program, env, &[])
}

/// As [`start_job`], with more dsmrun options.
fn start_job_with(
    dir: &Path,
    name: &str,
    cache: u64,
    program: &[&str],
    env: &[(&str, &str)],
    options: &[&str],
) -> Job {
    require_preload();
    let child = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(dir))
        .env("LC_ALL", "C")
        .envs(env.iter().copied())
        .args(["-v", "-n", "2", "--local-cache", &cache.to_string()])
        .args(["--name", name, "--checkpoint-dir"])
        .arg(dir.join("ck"))
        .args(options)
        .arg("--")
        .args(program)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out1.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("err1.txt")).unwrap())
        .spawn()
        .unwrap();
    Job(child)
}

/// The processes `dsmrun` (pid `launcher`) started: its children, memory nodes included.
fn children(launcher: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == launcher).then_some(pid)
        })
        .collect()
}

/// A running job, killed whole if the test fails before it ends.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill_everything(&mut self.0);
        }
    }
}

/// SIGKILL to `dsmrun`, its program and its nodes at once: a crash of the whole job.
/// Returns once they are all gone (or zombies: their memory is released).
fn kill_everything(job: &mut Child) {
    let mut pids = children(job.id());
    pids.push(job.id());
    for &pid in &pids {
        // SAFETY: kill with pids of processes this test started (or their children).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = job.wait();
    let start = Instant::now();
    while pids.iter().any(|&pid| running(pid)) && start.elapsed() < WAIT_MAX {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Waits until the job NAME answers `dsmrun status`.
fn wait_registered(dir: &Path, name: &str) {
    let start = Instant::now();
    while !dsmrun_verb(dir, &["status", name]).status.success() {
        assert!(start.elapsed() < WAIT_MAX, "job {name} never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `dsmrun checkpoint NAME` succeeds (the program may not have registered
/// its control socket yet); returns its answer.
fn checkpoint_now(dir: &Path, name: &str) -> String {
    let start = Instant::now();
    loop {
        let out = dsmrun_verb(dir, &["checkpoint", name]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let said = text(&out);
        // Only a job that is not registered yet, or whose program has not started its
        // runtime yet, is worth asking again.
        let early = [
            "no job named",
            "no running dsmrun job",
            "does not run the runtime",
        ];
        assert!(
            start.elapsed() < WAIT_MAX && early.iter().any(|e| said.contains(e)),
            "dsmrun checkpoint {name}: {said}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `dsmrun restart DIR/ck` to completion, output in `dir/out2.txt`.
fn restart(dir: &Path) -> Output {
    restart_with(dir, &[])
}

/// As [`restart`], with more options.
fn restart_with(dir: &Path, options: &[&str]) -> Output {
    let out = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(dir))
        .env("LC_ALL", "C")
        .args(["restart", "-v", "--stats"])
        .arg(dir.join("restart.json"))
        .args(options)
        .arg(dir.join("ck"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::write(dir.join("out2.txt"), &out.stdout).unwrap();
    out
}

/// What the job printed before the crash and after the restart, together.
fn both_outputs(dir: &Path) -> Vec<u8> {
    let mut all = std::fs::read(dir.join("out1.txt")).unwrap();
    all.extend(std::fs::read(dir.join("out2.txt")).unwrap());
    all
}

fn heapwalk() -> Option<PathBuf> {
    compile_c("heapwalk", &[])
}

/// About 5 s under dsmrun with a 16 MiB cache on the loaded 2-vCPU machine: long enough
/// to be checkpointed mid-run.
const HEAPWALK_ARGS: [&str; 4] = ["64", "4", "100", "11"];

fn native(exe: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(exe).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "native {}: {}",
        exe.display(),
        text(&out)
    );
    out.stdout
}

/// Anonymous resident memory of the program `exe` that `dsmrun` (pid `launcher`) runs,
/// in KiB (its cached pages of the global range are anonymous memory); `None` while it
/// is not running.
fn program_rss_anon_kib(launcher: u32, exe: &Path) -> Option<u64> {
    let pid = children(launcher)
        .into_iter()
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn heapwalk_checkpointed_keeps_its_cache_killed_and_restarted_prints_the_native_output() {
    let Some(exe) = heapwalk() else {
        return skip(
            "heapwalk_checkpointed",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _heavy = heavy();
    let native = native(&exe, &HEAPWALK_ARGS);
    let dir = scratch("ckpt-heapwalk");
    let exe_text = exe.display().to_string();
    let mut program = vec![exe_text.as_str()];
    program.extend(HEAPWALK_ARGS);
    let cache_kib = 16 << 10;
    let mut job = start_job(&dir, "ckhw", cache_kib << 10, &program, &[]);
    wait_registered(&dir, "ckhw");
    // heapwalk's 64 MiB heap fills the 16 MiB cache within a second or so.
    let start = Instant::now();
    while program_rss_anon_kib(job.0.id(), &exe).unwrap_or(0) < cache_kib {
        assert!(start.elapsed() < WAIT_MAX, "the cache never filled");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = || program_rss_anon_kib(job.0.id(), &exe).expect("heapwalk runs");
    let before = rss();
    let answer = checkpoint_now(&dir, "ckhw");
    let after = rss();
    println!("checkpoint: {answer}; program RssAnon {before} KiB before, {after} KiB after");
    assert!(answer.contains("ckpt-0001"), "{answer}");
    // The checkpoint writes the dirty pages home but keeps the cache: emptying it would
    // take the whole 16 MiB away (and the program would fetch it all again).
    assert!(
        after + cache_kib / 4 >= before,
        "the checkpoint emptied the cache: RssAnon {before} KiB before, {after} KiB after"
    );
    kill_everything(&mut job.0);
    assert!(
        std::fs::read(dir.join("out1.txt")).unwrap().is_empty(),
        "heapwalk ended before it was killed: the test proves nothing"
    );
    let out = restart(&dir);
    assert!(out.status.success(), "dsmrun restart: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&both_outputs(&dir)),
        String::from_utf8_lossy(&native),
        "heapwalk: output before the crash and after the restart differs from native"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("restart.json")).unwrap()).unwrap();
    let ms = &stats["checkpoints"]["restart_to_running_ms"];
    println!("restart to running: {ms} ms");
    assert!(ms.as_u64().is_some(), "no restart time in --stats: {stats}");
}

/// The chain of node 0's snapshots in the newest complete checkpoint of `ck`, with sizes.
fn newest_chain(ck: &Path) -> (u32, Vec<(u32, u64)>) {
    let newest = std::fs::read_dir(ck)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ckpt-")?.parse::<u32>().ok()
        })
        .max()
        .expect("a complete checkpoint");
    let text = std::fs::read_to_string(ck.join(format!("ckpt-{newest:04}/MANIFEST"))).unwrap();
    let json = &text[..text.rfind("xxh3 ").unwrap()];
    let m: serde_json::Value = serde_json::from_str(json).unwrap();
    let chain = m["chains"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["checkpoint"].as_u64().unwrap() as u32,
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    (newest, chain)
}

#[test]
fn periodic_incremental_checkpoints_restart_and_go_on_after_the_restart() {
    let Some(exe) = heapwalk() else {
        return skip(
            "periodic_checkpoints",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _heavy = heavy();
    let native = native(&exe, &HEAPWALK_ARGS);
    let dir = scratch("ckpt-periodic");
    let exe_text = exe.display().to_string();
    let mut program = vec![exe_text.as_str()];
    program.extend(HEAPWALK_ARGS);
    let every = ["--checkpoint-every", "700ms"];
    let mut job = start_job_with(&dir, "ckper", 16 << 20, &program, &[], &every);
    let start = Instant::now();
    while !dir.join("ck/ckpt-0002").exists() {
        assert!(start.elapsed() < WAIT_MAX, "no second checkpoint");
        assert!(job.0.try_wait().unwrap().is_none(), "the job ended first");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_everything(&mut job.0);
    let (newest, chain) = newest_chain(&dir.join("ck"));
    println!("checkpoint {newest}, node 0's chain {chain:?}");
    assert!(chain.len() >= 2, "{chain:?}: not incremental");
    // (heapwalk rewrites pages all over its heap between two checkpoints, so its deltas
    // are not much smaller than its base; the node test shows a delta holds only changes.)
    // The restarted job checkpoints on, extending the restored chains.
    let out = restart_with(&dir, &every);
    assert!(out.status.success(), "dsmrun restart: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&both_outputs(&dir)),
        String::from_utf8_lossy(&native)
    );
    let (after, chain_after) = newest_chain(&dir.join("ck"));
    println!("after the restart: checkpoint {after}, node 0's chain {chain_after:?}");
    assert!(
        after > newest,
        "no checkpoint after the restart: {}",
        text(&out)
    );
}

#[test]
fn a_crash_during_a_checkpoint_leaves_the_previous_one_usable_and_damage_is_refused() {
    let Some(exe) = heapwalk() else {
        return skip(
            "crash_during_checkpoint",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _heavy = heavy();
    let native = native(&exe, &HEAPWALK_ARGS);
    let dir = scratch("ckpt-crash");
    let exe_text = exe.display().to_string();
    let mut program = vec![exe_text.as_str()];
    program.extend(HEAPWALK_ARGS);
    // Checkpoint 2 waits a minute before its rename: the job is killed meanwhile.
    let pause = [("DSM_TEST_CHECKPOINT_PAUSE", "2:60000")];
    let mut job = start_job(&dir, "ckcrash", 16 << 20, &program, &pause);
    std::thread::sleep(Duration::from_millis(1000));
    checkpoint_now(&dir, "ckcrash");
    let second = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(&dir))
        .args(["checkpoint", "ckcrash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let unfinished = dir.join("ck/ckpt-0002.tmp");
    let start = Instant::now();
    while !unfinished.join("node-1.snap").exists() {
        assert!(start.elapsed() < WAIT_MAX, "checkpoint 2 never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_everything(&mut job.0);
    let _ = { second }.wait();
    assert!(unfinished.exists() && !dir.join("ck/ckpt-0002").exists());

    // Damage to what is checked up front (a snapshot's index) is refused, naming the file.
    let snap = dir.join("ck/ckpt-0001/node-0.snap");
    let good = std::fs::read(&snap).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() - 20] ^= 0x01;
    std::fs::write(&snap, &flipped).unwrap();
    let out = restart(&dir);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("is damaged") && said.contains("ckpt-0001/node-0.snap: checksum"),
        "{said}"
    );
    // Damage to a page's bytes is found when the page is restored, after the job started
    // again: the job ends, naming the file, and prints nothing the native run would not.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    std::fs::write(&snap, &flipped).unwrap();
    let out = restart(&dir);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("ckpt-0001/node-0.snap is damaged") && said.contains("checksum mismatch"),
        "{said}"
    );
    assert!(native.starts_with(&both_outputs(&dir)), "{said}");
    std::fs::write(&snap, &good).unwrap();
    let image = dir.join("ck/ckpt-0001/image");
    std::fs::rename(&image, dir.join("image.away")).unwrap();
    let out = restart(&dir);
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("ckpt-0001/image"),
        "{said}"
    );
    std::fs::rename(dir.join("image.away"), &image).unwrap();

    // Intact again: the restart uses checkpoint 1 and ignores the unfinished 2.
    let out = restart(&dir);
    assert!(out.status.success(), "dsmrun restart: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&both_outputs(&dir)),
        String::from_utf8_lossy(&native)
    );
}

#[test]
fn velvetg_checkpointed_killed_and_restarted_assembles_the_native_contigs() {
    if !have("velvetg") || !Path::new(VELVET_EXAMPLE_READS).exists() {
        return skip(
            "velvetg_checkpointed",
            "velvet or its example reads are missing (apt-get install velvet velvet-example)",
        );
    }
    let _heavy = heavy();
    let dir = scratch("ckpt-velvet");
    let h = velveth_example(&dir);
    let native_dir = dir.join("native");
    velvet_run_dir(&h, &native_dir);
    let st = Command::new("velvetg")
        .arg(&native_dir)
        .args(["-exp_cov", "auto"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "native velvetg");
    let run_dir = dir.join("run");
    velvet_run_dir(&h, &run_dir);
    let run_text = run_dir.display().to_string();
    let program = ["velvetg", run_text.as_str(), "-exp_cov", "auto"];
    let mut job = start_job(&dir, "ckvelvet", 48 << 20, &program, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let answer = checkpoint_now(&dir, "ckvelvet");
    println!("checkpoint: {answer}");
    kill_everything(&mut job.0);
    let out = restart(&dir);
    assert!(out.status.success(), "dsmrun restart: {}", text(&out));
    for f in ["contigs.fa", "stats.txt"] {
        let a = std::fs::read(native_dir.join(f)).unwrap();
        let b = std::fs::read(run_dir.join(f)).unwrap_or_default();
        assert!(a == b, "{f} differs from the native run's");
    }
}

#[test]
fn a_checkpoint_that_cannot_be_taken_leaves_the_job_running() {
    let Some(exe) = heapwalk() else {
        return skip("checkpoint_refused", "no C compiler (apt-get install gcc)");
    };
    let _heavy = heavy();
    let native = native(&exe, &HEAPWALK_ARGS);
    let dir = scratch("ckpt-refused");
    // Two processes (the shell and its sleep): the image engine saves one.
    let script = format!(
        "sleep 4; exec {} {}",
        exe.display(),
        HEAPWALK_ARGS.join(" ")
    );
    let mut job = start_job(&dir, "ckrefused", 16 << 20, &["sh", "-c", &script], &[]);
    wait_registered(&dir, "ckrefused");
    let out = dsmrun_verb(&dir, &["checkpoint", "ckrefused"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("checkpoint 1 failed") && said.contains("the job runs on"),
        "{said}"
    );
    assert!(!dir.join("ck/ckpt-0001").exists() && !dir.join("ck/ckpt-0001.tmp").exists());
    let st = job.0.wait().unwrap();
    let err = std::fs::read_to_string(dir.join("err1.txt")).unwrap();
    assert!(st.success(), "{st}: {err}");
    assert_eq!(std::fs::read(dir.join("out1.txt")).unwrap(), native);
    let out = restart(&dir);
    assert!(
        !out.status.success() && text(&out).contains("holds no complete checkpoint"),
        "{}",
        text(&out)
    );
}

#[test]
fn checkpoint_options_are_checked_before_anything_starts() {
    let dir = scratch("ckpt-options");
    let ck = dir.join("ck").display().to_string();
    for (args, expected) in [
        (
            vec!["--checkpoint-dir", &ck, "--checkpoint-every", "10"],
            "--checkpoint-every \"10\"",
        ),
        (
            vec!["--checkpoint-dir", &ck, "--checkpoint-every", "0s"],
            "longer than zero",
        ),
        (
            vec!["--checkpoint-dir", &ck, "--checkpoint-every", "3d"],
            "expected a duration",
        ),
        (vec!["--checkpoint-every", "10m"], "--checkpoint-dir"),
        (
            vec!["--checkpoint-dir", &ck, "--redundancy", "replicate:2"],
            "cannot be combined with --redundancy",
        ),
    ] {
        let out = Command::new(dsmrun())
            .args(["-n", "2"])
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let said = text(&out);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(said.contains(expected), "{args:?}: {said}");
    }
    // Nodes that dsmrun does not start cannot be told where to write or what to load.
    let out = Command::new(dsmrun())
        .args([
            "--attach",
            "127.0.0.1:9",
            "--checkpoint-dir",
            &ck,
            "--",
            "true",
        ])
        .env("DSM_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("cannot be combined with --attach"),
        "{said}"
    );
    // A node on a host that does not see the checkpoint directory (no shared file system)
    // says so when it starts, not at the first checkpoint.
    let out = Command::new(dsmrun())
        .args([
            "node",
            "--id",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "1M",
        ])
        .args(["--snapshot-dir", "/nonexistent/ck"])
        .env("DSM_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        !out.status.success()
            && said.contains("checkpoint directory /nonexistent/ck: cannot write there")
            && said.contains("shares"),
        "{said}"
    );
    let out = dsmrun_verb(&dir, &["restart", "/nonexistent/ckpt"]);
    assert!(!out.status.success() && text(&out).contains("/nonexistent/ckpt"));
    std::fs::create_dir_all(dir.join("empty/ckpt-0003.tmp")).unwrap();
    let out = dsmrun_verb(&dir, &["restart", dir.join("empty").to_str().unwrap()]);
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("only unfinished ones: ckpt-0003.tmp"),
        "{said}"
    );
    let out = dsmrun_verb(&dir, &["checkpoint", "nosuchjob"]);
    assert!(!out.status.success() && text(&out).contains("no job named"));
}

/// Writes `pages` pages filled with `byte` at page numbers `at` on node 0.
fn write_pages(s: &mut dyn Session, at: &[u64], byte: u8) {
    let data = vec![byte; PAGE];
    let ops: Vec<WriteOp<'_>> = at
        .iter()
        .map(|&p| WriteOp {
            node: NodeId(0),
            offset: p * PAGE as u64,
            data: &data,
        })
        .collect();
    s.write_batch(&ops).unwrap();
}

fn read_page(s: &mut dyn Session, page: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE];
    s.read_batch(&mut [ReadOp {
        node: NodeId(0),
        offset: page * PAGE as u64,
        buf: &mut buf,
    }])
    .unwrap();
    buf
}

fn node_with(snapshots: Snapshots, secret: &Secret) -> (LocalNodes, Box<dyn Session>) {
    let size = NodeSize {
        memory_bytes: 64 << 20,
        span_bytes: 1 << 40,
    };
    let nodes = LocalNodes::spawn_with_snapshots(&dsmrun(), size, secret, &[snapshots]).unwrap();
    let t = TcpTransport::discover(nodes.addrs(), secret.clone(), Duration::from_secs(10)).unwrap();
    let s = t.connect().unwrap();
    (nodes, s)
}

#[test]
fn node_snapshots_are_incremental_and_bring_a_fresh_node_back() {
    let dir = scratch("ckpt-node");
    let secret = Secret::generate().unwrap();
    let snaps = |restore: Vec<PathBuf>| Snapshots {
        dir: Some(dir.clone()),
        restore,
    };
    let (_node, mut s) = node_with(snaps(Vec::new()), &secret);
    // Pages far apart in a terabyte span: only they are scanned and saved.
    let first: Vec<u64> = (0..200).map(|i| 16 + i * 1_000_003).collect();
    write_pages(s.as_mut(), &first, 0xa5);
    let answer = s.call(NodeId(0), b"snapshot full base.snap").unwrap();
    let answer = String::from_utf8(answer).unwrap();
    // The 200 pages and the region's header page (the node's capacity word).
    assert!(answer.starts_with("pages=201 zeroed=0"), "{answer}");
    write_pages(s.as_mut(), &first[..10], 0x5a);
    write_pages(s.as_mut(), &first[10..13], 0);
    write_pages(s.as_mut(), &[7_777_777_777 / PAGE as u64], 0x33);
    let answer =
        String::from_utf8(s.call(NodeId(0), b"snapshot delta delta.snap").unwrap()).unwrap();
    assert!(answer.starts_with("pages=11 zeroed=3"), "{answer}");
    let delta_bytes = std::fs::metadata(dir.join("delta.snap")).unwrap().len();
    assert!(
        delta_bytes < 12 * (PAGE as u64 + 8) + 64,
        "{delta_bytes} bytes"
    );
    // Paths outside the directory are refused.
    assert!(s.call(NodeId(0), b"snapshot full ../escape.snap").is_err());

    let chain = vec![dir.join("base.snap"), dir.join("delta.snap")];
    let (_fresh, mut f) = node_with(snaps(chain.clone()), &secret);
    for page in first.iter().chain([&(7_777_777_777 / PAGE as u64), &1]) {
        assert_eq!(
            read_page(f.as_mut(), *page),
            read_page(s.as_mut(), *page),
            "page {page}"
        );
    }
    // A damaged index: the node refuses to start.
    let good = std::fs::read(&chain[1]).unwrap();
    let mut bytes = good.clone();
    bytes[good.len() - 20] ^= 1;
    std::fs::write(&chain[1], &bytes).unwrap();
    let size = NodeSize {
        memory_bytes: 64 << 20,
        span_bytes: 1 << 40,
    };
    let e = LocalNodes::spawn_with_snapshots(&dsmrun(), size, &secret, &[snaps(chain.clone())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed to start"), "{e}");
    // A damaged page: the node starts (pages are checked as they are restored), but
    // never serves that page: the read is refused, or the node is gone.
    let mut bytes = good.clone();
    let damaged_page = 7_777_777_777 / PAGE as u64;
    let at = find_record(&good, damaged_page);
    bytes[at + 100] ^= 1;
    std::fs::write(&chain[1], &bytes).unwrap();
    let (_damaged, mut d) = node_with(snaps(chain), &secret);
    let mut buf = vec![0u8; PAGE];
    let read = d.read_batch(&mut [ReadOp {
        node: NodeId(0),
        offset: damaged_page * PAGE as u64,
        buf: &mut buf,
    }]);
    assert!(read.is_err(), "a damaged page was served: {:?}", &buf[..8]);
}

/// The offset of page `page`'s bytes in a snapshot file (from its index, at its end).
fn find_record(snapshot: &[u8], page: u64) -> usize {
    let word = |at: usize| u64::from_le_bytes(snapshot[at..at + 8].try_into().unwrap());
    let index_at = word(snapshot.len() - 16) as usize;
    let entry = snapshot[index_at..snapshot.len() - 16]
        .chunks_exact(24)
        .find(|e| u64::from_le_bytes(e[..8].try_into().unwrap()) == page)
        .expect("the page has a record");
    u64::from_le_bytes(entry[8..16].try_into().unwrap()) as usize
}

/// A restarted node's line `dsm-node N: checkpoint restored: P pages (S at start, D on
/// demand, B in background) in MS ms`, as (P, S, D, B).
fn restored_counts(line: &str) -> Option<(u64, u64, u64, u64)> {
    let rest = line.split_once("checkpoint restored: ")?.1;
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(4)
        .map(|w| w.parse().unwrap())
        .collect();
    (nums.len() == 4).then(|| (nums[0], nums[1], nums[2], nums[3]))
}

#[test]
fn a_restarted_job_runs_while_its_nodes_restore_pages_lazily() {
    let Some(exe) = heapwalk() else {
        return skip("restart_lazily", "no C compiler (apt-get install gcc)");
    };
    let _heavy = heavy();
    let native = native(&exe, &HEAPWALK_ARGS);
    let dir = scratch("ckpt-lazy");
    let exe_text = exe.display().to_string();
    let mut program = vec![exe_text.as_str()];
    program.extend(HEAPWALK_ARGS);
    let mut job = start_job(&dir, "cklazy", 16 << 20, &program, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    checkpoint_now(&dir, "cklazy");
    kill_everything(&mut job.0);
    assert!(
        std::fs::read(dir.join("out1.txt")).unwrap().is_empty(),
        "heapwalk ended before it was killed: the test proves nothing"
    );
    // The nodes' background restorers wait until 64 pages were asked for: the program
    // must run, and be served, while its nodes still restore (the nodes report ready
    // before any page is restored, or it could not).
    let out = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(&dir))
        .env("LC_ALL", "C")
        .env("DSM_TEST_RESTORE_AFTER_DEMAND", "64")
        .args(["restart", "-v"])
        .arg(dir.join("ck"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::write(dir.join("out2.txt"), &out.stdout).unwrap();
    let said = text(&out);
    assert!(out.status.success(), "dsmrun restart: {said}");
    assert_eq!(
        String::from_utf8_lossy(&both_outputs(&dir)),
        String::from_utf8_lossy(&native),
        "heapwalk: output before the crash and after a lazy restart differs from native"
    );
    let lines: Vec<(u64, u64, u64, u64)> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(restored_counts)
        .collect();
    println!("restored (pages, at start, on demand, background): {lines:?}");
    assert!(!lines.is_empty(), "no node finished its restore: {said}");
    for &(pages, start, demand, background) in &lines {
        assert_eq!(pages, start + demand + background, "{said}");
    }
    assert!(
        lines.iter().any(|&(_, _, demand, _)| demand >= 64),
        "no node served 64 pages on demand while restoring: {said}"
    );
}
