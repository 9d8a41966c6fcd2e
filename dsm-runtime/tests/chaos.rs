//! Chaos: real programs under `dsmrun --redundancy replicate:2` and `ec:4+1` while a
//! memory node dies at a random moment. The multithreaded C program with checksums
//! (heapwalk) and Debian's unmodified velvetg must print exactly what they print natively;
//! a node frozen with SIGSTOP is declared dead after the node timeout and fenced; two
//! nodes holding both copies of pages (or two pieces of a group), killed at once, end the
//! job with status 70 and a message saying data was lost, never wrong output and never a
//! hang.
//!
//! Every run is seeded: the seed is printed, and `DSM_CHAOS_SEED=N` replays it (which
//! node, when, over which transport). Runs are kept short (about a second each) so that
//! the 20+ runs take a couple of minutes together.

mod common;

use common::*;
use dsm_runtime::runtime::EXIT_RUNTIME_FAILURE;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Nodes of every chaos job: three, so that each pair of copies has a third node.
const NODES: usize = 3;
/// heapwalk's arguments: 96 MiB over 4 threads, 3 rounds (about a second pooled).
const HEAPWALK_ARGS: [&str; 4] = ["96", "4", "3", "11"];
/// A run that takes longer than this hung.
const HANG: Duration = Duration::from_secs(180);

/// The seed of this test run: `DSM_CHAOS_SEED`, else the clock; printed either way.
fn seed(test: &str) -> u64 {
    let s = std::env::var("DSM_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{test}: seed {s} (replay with DSM_CHAOS_SEED={s})");
    s
}

/// What to do to which nodes, how long after the program is up; then, optionally, a
/// second kill of another node once a line containing `then_after` appears on stderr.
#[derive(Clone, Debug)]
struct Fault {
    nodes: Vec<usize>,
    signal: i32,
    after: Duration,
    then: Option<(&'static str, usize)>,
}

/// A finished chaos run.
struct Outcome {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    /// Whether the signal was sent while the program still ran.
    landed: bool,
    secs: f64,
}

/// Starts `dsmrun -v ... -- program`, sends `fault` once the nodes are up (if the program
/// still runs then), and waits, at most [`HANG`], for the end.
fn run_with_fault(dsmrun_args: &[&str], program: &[&std::ffi::OsStr], fault: &Fault) -> Outcome {
    require_preload();
    let started = Instant::now();
    let mut child = Command::new(dsmrun())
        .arg("-v")
        .args(dsmrun_args)
        .arg("--")
        .args(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut out = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let arg = |name: &str| {
        let at = dsmrun_args.iter().position(|a| *a == name)?;
        dsmrun_args.get(at + 1)?.parse::<usize>().ok()
    };
    let node_count = arg("-n").unwrap_or(NODES) + arg("--spare-nodes").unwrap_or(0);
    let pids = node_pids(&lines_rx, node_count);
    let mut landed = match &pids {
        Some(pids) => inject(&mut child, pids, fault),
        None => false,
    };
    if let (Some((line, node)), Some(pids), true) = (fault.then, &pids, landed) {
        landed = second_kill(&mut child, &lines_rx, line, pids[node]);
    }
    let code = wait_bounded(&mut child);
    Outcome {
        code,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
        landed,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// The node pids `dsmrun -v` reports (`dsmrun: node I pid P at ...`), in node order,
/// once the program's runtime is up (`dsm: PROG (pid P) slot S: heap ...`): a node that
/// dies while a process connects to the nodes fails that process's start (a known gap,
/// docs/architecture.md), which is not what these runs test.
fn node_pids(rx: &mpsc::Receiver<String>, n: usize) -> Option<Vec<u32>> {
    let mut pids = vec![0u32; n];
    let mut found = 0;
    let mut program_up = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while found < n || !program_up {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let line = line.ok()?;
        if line.starts_with("dsm: ") && line.contains(" slot ") && line.contains(": heap ") {
            program_up = true;
            continue;
        }
        let Some(rest) = line.strip_prefix("dsmrun: node ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(i), Some("pid"), Some(pid)) = (
            words.first().and_then(|w| w.parse::<usize>().ok()),
            words.get(1).copied(),
            words.get(2).and_then(|w| w.parse::<u32>().ok()),
        ) {
            pids[i] = pid;
            found += 1;
        }
    }
    Some(pids)
}

/// Sleeps `fault.after`, then signals its nodes if the program still runs.
fn inject(child: &mut Child, pids: &[u32], fault: &Fault) -> bool {
    std::thread::sleep(fault.after);
    if child.try_wait().unwrap().is_some() {
        return false;
    }
    for &n in &fault.nodes {
        // SAFETY: signalling a node process this test's dsmrun started.
        unsafe { libc::kill(pids[n] as i32, fault.signal) };
    }
    true
}

/// Kills `pid` once a stderr line contains `line`, if the program still runs then.
fn second_kill(child: &mut Child, rx: &mpsc::Receiver<String>, line: &str, pid: u32) -> bool {
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) if l.contains(line) => {
                if child.try_wait().unwrap().is_some() {
                    return false;
                }
                // SAFETY: signalling a node process this test's dsmrun started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return true;
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
    }
    false
}

/// Waits for `child`; after [`HANG`] kills it and fails: a hang is a bug.
fn wait_bounded(child: &mut Child) -> i32 {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return st.code().unwrap_or(128 + st.signal().unwrap_or(0));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the job hung for {HANG:?} after a node failure");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn native(program: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(program[0])
        .args(&program[1..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{program:?} natively failed");
    out.stdout
}

fn heapwalk() -> Option<PathBuf> {
    let exe = compile_c("heapwalk", &[]);
    if exe.is_none() {
        skip("chaos", "no C compiler (apt-get install gcc)");
    }
    exe
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

/// Checks a run that lost one node: exit 0, the native bytes, the death noticed and said.
fn assert_survived(what: &str, run: &Outcome, fault: &Fault, expected: &[u8]) {
    assert!(
        run.stdout == expected,
        "{what}: output differs from the native run:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stdout),
        run.stderr
    );
    assert_went_on(what, run, fault);
}

/// The job ended well, and dsmrun saw a node killed while the program ran die.
fn assert_went_on(what: &str, run: &Outcome, fault: &Fault) {
    assert_eq!(run.code, 0, "{what}: the job failed:\n{}", run.stderr);
    if run.landed && fault.signal == libc::SIGKILL {
        let node = fault.nodes[0];
        assert!(
            run.stderr
                .contains(&format!("memory node {node} exited during the run")),
            "{what}: dsmrun did not see node {node} die:\n{}",
            run.stderr
        );
    }
}

#[test]
fn heapwalk_survives_a_random_node_killed_at_a_random_moment() {
    heapwalk_under_random_kills("heapwalk chaos", "replicate:2", NODES, 18);
}

#[test]
fn heapwalk_survives_a_random_node_killed_at_a_random_moment_under_ec_4_1() {
    // Five nodes: every group has a piece on each, so any death degrades every group.
    heapwalk_under_random_kills("heapwalk ec:4+1 chaos", "ec:4+1", 5, 18);
}

/// `runs` runs of heapwalk on `nodes` nodes kept with `redundancy`, each with a random
/// node killed at a random moment over a random transport: output identical to native.
fn heapwalk_under_random_kills(test: &str, redundancy: &str, nodes: usize, runs: usize) {
    let Some(exe) = heapwalk() else { return };
    let _turn = heavy();
    let mut program = vec![exe.clone().into_os_string()];
    program.extend(os(&HEAPWALK_ARGS));
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|s| s.as_os_str()).collect();
    let expected = native(&program);
    let mut rng = Rng(seed(test));
    let node_count = nodes.to_string();
    let mut landed = 0;
    let mut noticed = 0;
    for run in 0..runs {
        let transport = if rng.below(2) == 0 { "shm" } else { "tcp" };
        let fault = Fault {
            nodes: vec![rng.below(nodes as u64) as usize],
            signal: libc::SIGKILL,
            after: Duration::from_millis(rng.below(800)),
            then: None,
        };
        let out = run_with_fault(
            &[
                "-n",
                &node_count,
                "--redundancy",
                redundancy,
                "--local-cache",
                "16M",
                "--transport",
                transport,
            ],
            &program,
            &fault,
        );
        let what = format!("{redundancy} run {run} ({transport}, {fault:?})");
        eprintln!(
            "{what}: exit {} in {:.2} s, kill {}",
            out.code,
            out.secs,
            if out.landed {
                "landed"
            } else {
                "came after the end"
            }
        );
        assert_survived(&what, &out, &fault, &expected);
        landed += usize::from(out.landed);
        noticed += usize::from(out.stderr.contains("it is fenced"));
    }
    assert!(
        landed * 4 >= runs * 3,
        "only {landed} of {runs} kills landed while the program ran: the runs are too short"
    );
    assert!(
        noticed > 0,
        "no run's runtime noticed a death: failover was never exercised"
    );
}

#[test]
fn velvetg_survives_a_random_node_killed_at_a_random_moment() {
    if !have("velveth") || !have("velvetg") || !have("xz") {
        return skip(
            "velvetg chaos",
            "velvet or xz is missing (apt-get install velvet xz-utils)",
        );
    }
    if !Path::new(VELVET_EXAMPLE_READS).exists() {
        return skip(
            "velvetg chaos",
            "velvet's example data is missing (apt-get install velvet-example)",
        );
    }
    let _turn = heavy();
    let dir = scratch("chaos-velvet");
    let h = velveth_example(&dir);
    let fresh = |to: &Path| velvet_run_dir(&h, to);
    let native_g = dir.join("native");
    fresh(&native_g);
    let ran = run_measured(Command::new("velvetg").arg(&native_g));
    assert_eq!(ran.code, 0, "velvetg natively: {}", ran.stderr);
    let expected = std::fs::read(native_g.join("contigs.fa")).unwrap();
    assert!(!expected.is_empty());
    // Three quarters of its peak RSS, with the velvet profile on one CPU (as the
    // benchmarks run it): short runs that still fetch hundreds of MiB from the nodes.
    let cache = (ran.peak_rss * 3 / 4 / 4096 * 4096).to_string();
    let mut rng = Rng(seed("velvetg chaos"));
    // Two runs under each mode, one over shm and one over TCP.
    for run in 0..4 {
        let g = dir.join(format!("g{run}"));
        fresh(&g);
        let transport = if run % 2 == 0 { "shm" } else { "tcp" };
        let (redundancy, nodes) = if run < 2 {
            ("replicate:2", NODES)
        } else {
            ("ec:4+1", 5)
        };
        let n = nodes.to_string();
        let fault = Fault {
            nodes: vec![rng.below(nodes as u64) as usize],
            signal: libc::SIGKILL,
            after: Duration::from_millis(rng.below(2000)),
            then: None,
        };
        let program = [std::ffi::OsStr::new("velvetg"), g.as_os_str()];
        let out = run_with_fault(
            &[
                "-n",
                &n,
                "--redundancy",
                redundancy,
                "--local-cache",
                &cache,
                "--profile",
                "velvet",
                "--cpus",
                "0",
                "--transport",
                transport,
            ],
            &program,
            &fault,
        );
        let what = format!("velvetg run {run} ({redundancy}, {transport}, {fault:?})");
        eprintln!(
            "{what}: exit {} in {:.2} s, landed {}",
            out.code, out.secs, out.landed
        );
        assert_eq!(out.code, 0, "{what}: {}", out.stderr);
        assert_same_assembly(&what, &g, &native_g);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// velvetg's contigs and statistics in `g` are those of the native run in `native_g`.
fn assert_same_assembly(what: &str, g: &Path, native_g: &Path) {
    for f in ["contigs.fa", "stats.txt"] {
        let got = std::fs::read(g.join(f)).unwrap();
        assert!(!got.is_empty(), "{what}: {f} is empty");
        assert!(
            got == std::fs::read(native_g.join(f)).unwrap(),
            "{what}: {f} differs from the native run"
        );
    }
}

#[test]
fn velvetg_on_the_art_reads_survives_a_node_killed_under_replicate_2_and_ec_4_1() {
    if ["velveth", "velvetg", "xz", "art_illumina"]
        .iter()
        .any(|p| !have(p))
        || !Path::new(VELVET_EXAMPLE_REFERENCE).exists()
    {
        return skip(
            "velvetg ART chaos",
            "velvet, xz, ART or velvet-example is missing (apt-get install velvet xz-utils \
             art-nextgen-simulation-tools velvet-example)",
        );
    }
    let _turn = heavy();
    let dir = scratch("chaos-velvet-art");
    let (r1, r2) = art_reads(&dir);
    let h = dir.join("h");
    let st = Command::new("velveth")
        .arg(&h)
        .args(["31", "-shortPaired", "-fastq", "-separate", &r1, &r2])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "velveth on the ART reads");
    let g_args = ["-exp_cov", "auto", "-ins_length", "300"];
    let native_g = dir.join("native");
    velvet_run_dir(&h, &native_g);
    let ran = run_measured(Command::new("velvetg").arg(&native_g).args(g_args));
    assert_eq!(ran.code, 0, "velvetg natively: {}", ran.stderr);
    // Three quarters of its peak RSS (as the velvet-example runs): short runs that
    // still fetch its heap from the nodes.
    let cache = (ran.peak_rss * 3 / 4 / 4096 * 4096).to_string();
    let mut rng = Rng(seed("velvetg ART chaos"));
    // Two runs under each mode, one over shm and one over TCP.
    for run in 0..4u64 {
        let g = dir.join(format!("g{run}"));
        velvet_run_dir(&h, &g);
        let transport = if run % 2 == 0 { "shm" } else { "tcp" };
        let (redundancy, nodes) = if run < 2 {
            ("replicate:2", NODES)
        } else {
            ("ec:4+1", 5)
        };
        let n = nodes.to_string();
        // The first kill of each mode as soon as velvetg runs (its run is short), the
        // second anywhere in a native run's time.
        let fault = Fault {
            nodes: vec![rng.below(nodes as u64) as usize],
            signal: libc::SIGKILL,
            after: Duration::from_millis((run % 2) * rng.below((ran.secs * 1000.0) as u64 + 1)),
            then: None,
        };
        let mut program = vec![std::ffi::OsStr::new("velvetg"), g.as_os_str()];
        program.extend(g_args.iter().map(std::ffi::OsStr::new));
        let out = run_with_fault(
            &[
                "-n",
                &n,
                "--redundancy",
                redundancy,
                "--local-cache",
                &cache,
                "--transport",
                transport,
            ],
            &program,
            &fault,
        );
        let what = format!("velvetg ART run {run} ({redundancy}, {transport}, {fault:?})");
        eprintln!(
            "{what}: exit {} in {:.2} s, landed {}",
            out.code, out.secs, out.landed
        );
        assert!(
            run % 2 == 1 || out.landed,
            "{what}: the kill came after the end"
        );
        assert_went_on(&what, &out, &fault);
        assert_same_assembly(&what, &g, &native_g);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_frozen_node_is_declared_dead_after_the_node_timeout_and_fenced() {
    let Some(exe) = heapwalk() else { return };
    let _turn = heavy();
    let mut program = vec![exe.clone().into_os_string()];
    program.extend(os(&HEAPWALK_ARGS));
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|s| s.as_os_str()).collect();
    let expected = native(&program);
    for (redundancy, nodes) in [("replicate:2", "3"), ("ec:4+1", "5")] {
        frozen_node_is_fenced(redundancy, nodes, &program, &expected);
    }
}

/// heapwalk under `redundancy` on `nodes` nodes over TCP with node 1 stopped by SIGSTOP.
fn frozen_node_is_fenced(
    redundancy: &str,
    nodes: &str,
    program: &[&std::ffi::OsStr],
    expected: &[u8],
) {
    let fault = Fault {
        nodes: vec![1],
        signal: libc::SIGSTOP,
        after: Duration::from_millis(300),
        then: None,
    };
    // Over TCP: a stopped node's socket stays open, so only the timeout reveals it.
    let out = run_with_fault(
        &[
            "-n",
            nodes,
            "--redundancy",
            redundancy,
            "--local-cache",
            "16M",
            "--transport",
            "tcp",
            "--node-timeout",
            "500",
        ],
        program,
        &fault,
    );
    assert!(
        out.landed,
        "{redundancy}: the program ended before the node was stopped"
    );
    assert_survived(&format!("SIGSTOP {redundancy}"), &out, &fault, expected);
    assert!(
        out.stderr.contains("node 1 at")
            && out.stderr.contains("no answer within 500 ms")
            && out.stderr.contains("it is fenced"),
        "{redundancy}: the frozen node was not declared dead and fenced:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("redundancy: 1 node(s) died"),
        "{redundancy}: the summary does not count the death:\n{}",
        out.stderr
    );
}

#[test]
fn both_nodes_of_a_pair_killed_at_once_end_the_job_saying_data_was_lost() {
    // Three local nodes, two copies: node 1's pages have their second copy on node 2.
    two_kills_at_once_lose_data("replicate:2", 3);
}

#[test]
fn two_pieces_of_a_group_killed_at_once_end_the_job_saying_data_was_lost() {
    // Five nodes under ec:4+1: every group has a piece on nodes 1 and 2.
    two_kills_at_once_lose_data("ec:4+1", 5);
}

/// Kills nodes 1 and 2 of `nodes` at once, which holds two places of some page under
/// `redundancy`: status 70 saying data was lost, and no result printed.
fn two_kills_at_once_lose_data(redundancy: &str, nodes: usize) {
    let Some(exe) = heapwalk() else { return };
    let _turn = heavy();
    let mut program = vec![exe.clone().into_os_string()];
    program.extend(os(&HEAPWALK_ARGS));
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|s| s.as_os_str()).collect();
    let fault = Fault {
        nodes: vec![1, 2],
        signal: libc::SIGKILL,
        after: Duration::from_millis(300),
        then: None,
    };
    let node_count = nodes.to_string();
    let out = run_with_fault(
        &[
            "-n",
            &node_count,
            "--redundancy",
            redundancy,
            "--local-cache",
            "16M",
        ],
        &program,
        &fault,
    );
    assert!(out.landed, "the program ended before the nodes were killed");
    assert_eq!(
        out.code, EXIT_RUNTIME_FAILURE,
        "{redundancy}: two places lost must end the job with status 70:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("data was lost"),
        "the message must say data was lost:\n{}",
        out.stderr
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("heapwalk"),
        "a job that lost data printed a result"
    );
}

#[test]
fn a_second_kill_after_reprotection_onto_a_spare_loses_nothing() {
    // Node 1's pages have their second copy on node 2: without re-protection onto the
    // spare (node 3), killing node 2 after node 1 would lose them.
    second_kill_after_reprotection("replicate:2", 3, 1);
}

#[test]
fn a_second_kill_after_ec_reprotection_onto_a_spare_loses_nothing() {
    // Every group has pieces on nodes 1 and 2: without the piece rebuilt on the spare
    // (node 5), killing node 2 after node 1 would lose them.
    second_kill_after_reprotection("ec:4+1", 5, 1);
}

#[test]
fn a_second_kill_after_reprotection_onto_the_survivors_loses_nothing() {
    // No spare: node 1's copies are re-made on nodes 0 and 2, each page's on the one
    // that does not hold its other copy.
    second_kill_after_reprotection("replicate:2", 3, 0);
}

#[test]
fn a_second_kill_after_ec_reprotection_onto_the_survivors_loses_nothing() {
    // Six nodes: each group spans five, so node 1's pieces are rebuilt on the sixth.
    second_kill_after_reprotection("ec:4+1", 6, 0);
}

#[test]
fn a_second_kill_during_reprotection_goes_on_while_every_page_still_has_a_copy() {
    let Some(exe) = heapwalk() else { return };
    let _turn = heavy();
    let args = ["96", "4", "8", "11"];
    let mut program = vec![exe.clone().into_os_string()];
    program.extend(os(&args));
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|s| s.as_os_str()).collect();
    let expected = native(&program);
    // Four nodes, copies on the next node: node 1's pages have their other copies on
    // nodes 0 and 2, so node 3 dying as soon as re-protection starts leaves every page a
    // copy (some re-made copies meant for node 3 are then simply not made).
    let fault = Fault {
        nodes: vec![1],
        signal: libc::SIGKILL,
        after: Duration::from_millis(400),
        then: Some((
            "re-protection: copying the pages that had a copy on node 1",
            3,
        )),
    };
    let out = run_with_fault(
        &[
            "-n",
            "4",
            "--redundancy",
            "replicate:2",
            "--local-cache",
            "16M",
        ],
        &program,
        &fault,
    );
    assert!(out.landed, "the program ended before the second kill");
    assert_survived("second kill during re-protection", &out, &fault, &expected);
    assert!(
        out.stderr.contains("memory node 3 exited during the run")
            && out.stderr.contains("redundancy: 2 node(s) died"),
        "{}",
        out.stderr
    );
}

/// Kills node 1 of `nodes` (plus `spares` spares, node `nodes` the first), then node 2
/// once re-protection is done: output identical to native.
fn second_kill_after_reprotection(redundancy: &str, nodes: usize, spares: usize) {
    let Some(exe) = heapwalk() else { return };
    let _turn = heavy();
    // More rounds than the other runs: the second kill comes after re-protection.
    let args = ["96", "4", "8", "11"];
    let mut program = vec![exe.clone().into_os_string()];
    program.extend(os(&args));
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|s| s.as_os_str()).collect();
    let expected = native(&program);
    let fault = Fault {
        nodes: vec![1],
        signal: libc::SIGKILL,
        after: Duration::from_millis(400),
        then: Some(("re-protection after node 1's death done", 2)),
    };
    let (node_count, spare_count) = (nodes.to_string(), spares.to_string());
    let out = run_with_fault(
        &[
            "-n",
            &node_count,
            "--spare-nodes",
            &spare_count,
            "--redundancy",
            redundancy,
            "--local-cache",
            "16M",
        ],
        &program,
        &fault,
    );
    eprintln!("{}", out.stderr);
    assert!(
        out.landed,
        "the program ended before the second kill: make it run longer"
    );
    assert_survived("second kill after re-protection", &out, &fault, &expected);
    for said in [
        format!(
            "re-protection: copying the pages that had a copy on node 1 to {}",
            match spares {
                0 => "the surviving nodes".to_string(),
                _ => format!("spare node {nodes}"),
            }
        ),
        "memory node 2 exited during the run".into(),
        "no spare node left to stand in for node 2".into(),
        "redundancy: 2 node(s) died".into(),
    ] {
        assert!(
            out.stderr.contains(&said),
            "{redundancy}: stderr lacks {said:?}:\n{}",
            out.stderr
        );
    }
    let done = out
        .stderr
        .lines()
        .find(|l| l.contains("re-protection after node 1's death done"))
        .unwrap();
    eprintln!("{done}");
}

#[test]
fn bad_redundancy_settings_are_refused_before_anything_starts() {
    require_preload();
    for (args, said) in [
        (
            vec!["-n", "2", "--redundancy", "replicate:3"],
            "keeps every page on 3 different nodes, but the job has 2: raise -n to at least 3",
        ),
        (
            vec!["-n", "2", "--redundancy", "mirror:2"],
            "use none, replicate:R",
        ),
        (
            vec!["-n", "2", "--redundancy", "replicate:1"],
            "replicate:1",
        ),
        (
            vec!["-n", "6", "--redundancy", "ec:4+2"],
            "only one parity piece per group is implemented",
        ),
        (
            vec!["-n", "4", "--redundancy", "ec:4+1"],
            "raise -n to at least 5",
        ),
        (
            vec!["-n", "4", "--redundancy", "ec:3+1"],
            "use a power of two for K, or --max-procs 1",
        ),
        (
            vec!["-n", "2", "--spare-nodes", "1"],
            "add --redundancy replicate:2",
        ),
        (vec!["-n", "2", "--node-timeout", "0"], "--node-timeout 0"),
    ] {
        let out = Command::new(dsmrun())
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code() != Some(EXIT_RUNTIME_FAILURE),
            "{args:?}: {:?}\n{err}",
            out.status
        );
        assert!(err.contains(said), "{args:?}: expected {said:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A profile's key is checked when the profile is loaded.
    let dir = scratch("chaos-profile");
    let profile = dir.join("r.toml");
    std::fs::write(&profile, "redundancy = \"replicate:x\"\n").unwrap();
    let out = Command::new(dsmrun())
        .args(["-n", "2", "--profile"])
        .arg(&profile)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not a redundancy setting") && err.contains("r.toml:1:"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
