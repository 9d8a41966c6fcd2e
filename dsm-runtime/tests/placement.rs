//! Placement by default (`fault/follow.rs`), end to end: an unmodified program under
//! `dsmrun` with no `--cpus` faults from one thread, and its CPU is where the runtime's
//! threads, the program thread and the local memory nodes' threads end up, each allowed
//! that one CPU only; once a second thread faults beside it they may all run anywhere
//! again. With `--cpus` nothing is moved.

mod common;

use common::{compile_c, dsmrun_cmd, heavy, scratch, skip};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A thread's `Cpus_allowed_list`, e.g. `1` or `0-1`.
fn allowed_list(pid: u32, tid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

fn tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn name(pid: u32, tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Names of the runtime's threads (the program's may start with `dsm-` too: the test
/// binaries do).
fn is_runtime(name: &str) -> bool {
    [
        "dsm-fault-",
        "dsm-prefetch",
        "dsm-reclaim",
        "dsm-control",
        "dsm-reprotect",
    ]
    .iter()
    .any(|r| name.starts_with(r))
}

/// Every thread that should follow, by name, with its allowed CPUs: the program's main
/// thread, its runtime threads, and every thread of every node.
fn followers(program: u32, nodes: &[u32]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for tid in tids(program) {
        let n = name(program, tid);
        if tid == program || is_runtime(&n) {
            out.extend(allowed_list(program, tid).map(|a| (n, a)));
        }
    }
    for &pid in nodes {
        for tid in tids(pid) {
            out.extend(allowed_list(pid, tid).map(|a| (format!("node {pid}/{tid}"), a)));
        }
    }
    out
}

/// Each thread's state and wait channel, for a failure message.
fn states(pid: u32) -> String {
    let f = |tid: u32, what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{what}")).unwrap_or_default()
    };
    tids(pid)
        .into_iter()
        .map(|t| {
            format!(
                "{}: {} in {}",
                t,
                f(t, "stat")
                    .split(' ')
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
                f(t, "wchan")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls `followers` until `ok` holds for all of them, up to `secs`; the last sample.
fn wait_for(
    program: u32,
    nodes: &[u32],
    secs: u64,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> (bool, Vec<(String, String)>) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let f = followers(program, nodes);
        if ok(&f) || Instant::now() > end {
            return (ok(&f), f);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The job started: the program's pid (its first line) and the nodes' (from `-v`).
struct Job {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    program: u32,
    nodes: Vec<u32>,
}

fn start(exe: &Path, dir: &Path, extra: &[&str]) -> Job {
    let mut cmd = dsmrun_cmd(2, 4 << 20, &dir.join("stats.json"));
    cmd.arg("-v")
        .args(extra)
        .arg("--")
        .arg(exe)
        .arg("32")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning dsmrun");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut nodes = Vec::new();
    let mut line = String::new();
    while nodes.len() < 2 && err.read_line(&mut line).unwrap_or(0) > 0 {
        // "dsmrun: node I pid P at ADDR ..."
        if let Some(rest) = line.split_once(" pid ").map(|(_, r)| r) {
            nodes.extend(
                rest.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u32>().ok()),
            );
        }
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    let program = line
        .trim()
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("follower's first line: {line:?}"));
    assert_eq!(nodes.len(), 2, "node pids from dsmrun -v");
    Job {
        child,
        out,
        program,
        nodes,
    }
}

/// Lets the program finish (DIR/stop) and checks that it did, correctly.
fn finish(mut job: Job, dir: &Path) {
    std::fs::write(dir.join("two"), b"").unwrap();
    std::fs::write(dir.join("stop"), b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut job.out, &mut rest).unwrap();
    let st = job.child.wait().unwrap();
    assert!(st.success(), "follower under dsmrun: {st}");
    assert_eq!(rest, "ok\n", "the follower checks every word it reads");
}

fn prerequisites(test: &str) -> Option<std::path::PathBuf> {
    let cpus = dsm_runtime::launcher::cpus::allowed().unwrap();
    if cpus.len() < 2 {
        skip(
            test,
            "this machine gives the test one CPU; following needs two",
        );
        return None;
    }
    let exe = compile_c("follower", &[]);
    if exe.is_none() {
        skip(test, "no C compiler (package gcc)");
    }
    exe
}

fn one_cpu(f: &[(String, String)]) -> bool {
    let first = f.first().map(|x| &x.1);
    f.len() >= 5
        && f.iter()
            .all(|(_, a)| Some(a) == first && !a.contains([',', '-']))
}

#[test]
fn one_faulting_thread_brings_the_job_to_its_cpu_and_two_let_it_go() {
    let Some(exe) = prerequisites("one_faulting_thread_brings_the_job_to_its_cpu") else {
        return;
    };
    let _g = heavy();
    let all =
        dsm_runtime::launcher::cpus::describe(&dsm_runtime::launcher::cpus::allowed().unwrap());
    let dir = scratch("placement-follow");
    let job = start(&exe, &dir, &[]);
    let (pinned, seen) = wait_for(job.program, &job.nodes, 30, one_cpu);
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["dsm-fault-0", "dsm-prefetch", "dsm-reclaim"] {
        assert!(names.contains(&want), "{want} not among {names:?}");
    }
    assert!(
        seen.iter().filter(|(n, _)| n.starts_with("node ")).count() >= 2,
        "node threads: {seen:?}"
    );
    assert!(
        pinned,
        "one faulting thread: not all on its one CPU: {seen:?}"
    );

    std::fs::write(dir.join("two"), b"").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let found = tids(job.program)
            .into_iter()
            .find(|&t| t != job.program && !is_runtime(&name(job.program, t)));
        match found {
            Some(t) => break t,
            None if Instant::now() > end => panic!(
                "the second program thread never started: {}",
                states(job.program)
            ),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let released = |f: &[(String, String)]| f.iter().all(|(_, a)| *a == all);
    let (ok, seen) = wait_for(job.program, &job.nodes, 30, released);
    assert!(
        ok,
        "two faulting threads: still pinned ({all} allowed): {seen:?}"
    );
    // And they stay so while both fault (samples over a second), the second thread too,
    // though it was started by a pinned one.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        let f = followers(job.program, &job.nodes);
        assert!(released(&f), "two faulting threads: pinned again: {f:?}");
        let a = allowed_list(job.program, second);
        assert_eq!(a.as_deref(), Some(all.as_str()), "the second thread");
    }
    finish(job, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_cpus_given_nothing_is_moved() {
    let Some(exe) = prerequisites("with_cpus_given_nothing_is_moved") else {
        return;
    };
    let _g = heavy();
    let all =
        dsm_runtime::launcher::cpus::describe(&dsm_runtime::launcher::cpus::allowed().unwrap());
    let dir = scratch("placement-cpus");
    let job = start(&exe, &dir, &["--cpus", &all]);
    // Long enough for many windows of single-thread faults (the test above pins within
    // one or two seconds).
    let (moved, seen) = wait_for(job.program, &job.nodes, 4, |f| {
        f.iter().any(|(_, a)| *a != all)
    });
    assert!(!moved, "--cpus {all}: something was moved: {seen:?}");
    assert!(seen.len() >= 5, "threads seen: {seen:?}");
    finish(job, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the calling thread may run on one CPU only.
fn this_thread_on_one_cpu() -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set; `set` is a valid out-pointer of the
    // size passed; CPU_COUNT reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set) == 1
    }
}

/// A runtime inside a longer-lived program (here the test itself): the thread that faults
/// is pinned while it faults alone, and has its CPUs back once the runtime shuts down.
#[test]
fn a_runtime_in_process_leaves_its_faulting_thread_as_it_found_it() {
    if prerequisites("a_runtime_in_process_leaves_its_faulting_thread").is_none() {
        return;
    }
    let _g = heavy();
    let before = dsm_runtime::launcher::cpus::allowed().unwrap();
    let (_nodes, t) = common::cluster(2, 16 << 20);
    let rt = common::runtime(&t, 41, 2 << 20, 16 << 20);
    let base = rt.base() as usize;
    let pages = 4096;
    let mut rng = common::Rng(7);
    let end = Instant::now() + Duration::from_secs(30);
    let mut pinned = false;
    while !pinned && Instant::now() < end {
        for _ in 0..1000 {
            let p = rng.below(pages) as usize;
            // SAFETY: the page lies in the runtime's global range, which it serves.
            unsafe { std::ptr::write_volatile((base + p * 4096) as *mut u64, p as u64) };
        }
        pinned = this_thread_on_one_cpu();
    }
    assert!(
        pinned,
        "a thread faulting alone was never pinned to its CPU"
    );
    rt.shutdown();
    assert_eq!(
        dsm_runtime::launcher::cpus::allowed().unwrap(),
        before,
        "the runtime shut down and left this thread pinned"
    );
}
