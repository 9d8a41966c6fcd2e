//! Suspend and resume of running jobs (`dsmrun suspend/resume JOB`, SIGTSTP/SIGCONT to
//! `dsmrun`): real programs on real nodes are suspended mid-run; their processes must be
//! stopped with their local cache released (RSS read from /proc), and once resumed they
//! must print exactly what a native run prints.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// RSS must fall to at most this share of what it was (the program's code, stack and
/// libraries stay; benches/checkpoint.sh measures the real share with a 1 GiB cache).
const RSS_LEFT_MAX_PCT: u64 = 50;
/// Bound on waiting for a job to reach a state (a loaded machine is slow, never this slow).
const WAIT_MAX: Duration = Duration::from_secs(120);

/// A job's directory of running jobs, private to the test.
fn jobs_dir(dir: &Path) -> PathBuf {
    let d = dir.join("jobs");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dsmrun suspend|resume|status JOB` with the test's jobs directory.
fn control(jobs: &Path, verb: &str, job: &str) -> (bool, String, String) {
    let out = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs)
        .args([verb, job])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Starts `dsmrun -n 2 --local-cache CACHE --name NAME -- program args` with its output
/// in `dir/out.txt`.
fn start_job(dir: &Path, name: &str, cache: u64, program: &Path, args: &[&str]) -> Child {
    require_preload();
    Command::new(dsmrun())
        .env("DSM_JOBS_DIR", jobs_dir(dir))
        .env("LC_ALL", "C")
        .args(["-q", "-n", "2", "--local-cache", &cache.to_string()])
        .args(["--name", name, "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("err.txt")).unwrap())
        .spawn()
        .unwrap()
}

/// The program `dsmrun` (pid `launcher`) runs: its child that is not a memory node.
fn program_pid(launcher: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (ppid == launcher && comm.trim() != "dsmrun").then_some(pid)
    })
}

/// A line of /proc/PID/status (`State`, `VmRSS`), its value.
fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
        .unwrap_or_default()
}

fn rss_bytes(pid: u32) -> u64 {
    let kib: u64 = status_field(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    kib << 10
}

fn stopped(pid: u32) -> bool {
    status_field(pid, "State").starts_with('T')
}

/// Waits (bounded) until `what` holds; panics with `describe` otherwise.
fn wait_for(mut what: impl FnMut() -> bool, describe: &str) {
    let start = Instant::now();
    while !what() {
        assert!(start.elapsed() < WAIT_MAX, "timed out waiting: {describe}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the job's program runs on pooled memory with at least `rss` resident.
fn program_running_with(job: &mut Child, rss: u64) -> u32 {
    let mut pid = None;
    wait_for(
        || {
            assert!(
                job.try_wait().unwrap().is_none(),
                "the job ended before it was suspended"
            );
            pid = program_pid(job.id());
            pid.is_some_and(|p| rss_bytes(p) >= rss)
        },
        "the program to fill its cache",
    );
    pid.unwrap()
}

/// Suspends via `suspend` (a command or a signal), checks that the program is stopped
/// with its cache released and stays so, then resumes via `resume`.
fn suspend_and_resume(
    what: &str,
    pid: u32,
    suspend: impl FnOnce() -> String,
    resume: impl FnOnce(),
) {
    let before = rss_bytes(pid);
    let answer = suspend();
    wait_for(|| stopped(pid), "the program to be stopped");
    let after = rss_bytes(pid);
    println!(
        "{what}: RSS {} KiB before suspend, {} KiB after ({}% released); {answer}",
        before >> 10,
        after >> 10,
        100 - after * 100 / before.max(1)
    );
    assert!(
        after * 100 <= before * RSS_LEFT_MAX_PCT,
        "{what}: RSS {after} after suspend, {before} before: the cache was not released"
    );
    // Suspended means suspended: still stopped, and nothing came back into memory.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        stopped(pid),
        "{what}: the program runs again while suspended"
    );
    assert!(
        rss_bytes(pid) <= after + (256 << 10),
        "{what}: pages came back while suspended"
    );
    resume();
    wait_for(|| !stopped(pid), "the program to run again");
}

/// Waits for the job and checks that it succeeded with `expected` as its output.
fn finishes_with(job: &mut Child, dir: &Path, expected: &[u8], what: &str) {
    let st = job.wait().unwrap();
    let err = std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default();
    assert!(st.success(), "{what}: {st}: {err}");
    let out = std::fs::read(dir.join("out.txt")).unwrap();
    assert!(
        out == expected,
        "{what}: output differs from the native run: {}",
        String::from_utf8_lossy(&out)
    );
}

fn heapwalk() -> Option<PathBuf> {
    compile_c("heapwalk", &[])
}

const HEAPWALK_ARGS: [&str; 4] = ["160", "4", "6", "7"];

#[test]
fn heapwalk_suspended_and_resumed_by_name_prints_the_native_output() {
    let Some(exe) = heapwalk() else {
        return skip("heapwalk_suspended", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let native = Command::new(&exe).args(HEAPWALK_ARGS).output().unwrap();
    assert!(native.status.success());
    let dir = scratch("suspend-heapwalk");
    let jobs = jobs_dir(&dir);
    let mut job = start_job(&dir, "walk", 32 << 20, &exe, &HEAPWALK_ARGS);
    let pid = program_running_with(&mut job, 24 << 20);
    let (ok, status, _) = control(&jobs, "status", "walk");
    assert!(ok && status == "running", "status: {status}");
    suspend_and_resume(
        "heapwalk",
        pid,
        || {
            let (ok, out, err) = control(&jobs, "suspend", "walk");
            assert!(ok, "dsmrun suspend walk: {err}");
            assert!(out.starts_with("suspended processes=1 emptied=1"), "{out}");
            let (_, again, err) = control(&jobs, "suspend", "walk");
            assert!(
                again.is_empty() && err.contains("already suspended"),
                "{err}"
            );
            let (_, status, _) = control(&jobs, "status", "walk");
            assert_eq!(status, "suspended");
            out
        },
        || {
            let (ok, out, err) = control(&jobs, "resume", "walk");
            assert!(
                ok && out.starts_with("resumed"),
                "dsmrun resume walk: {out} {err}"
            );
        },
    );
    // By pid too, a second time in the same run, once pages came back into the cache.
    let by_pid = job.id().to_string();
    assert_eq!(program_running_with(&mut job, 24 << 20), pid);
    suspend_and_resume(
        "heapwalk by pid",
        pid,
        || {
            let (ok, out, err) = control(&jobs, "suspend", &by_pid);
            assert!(ok, "dsmrun suspend {by_pid}: {err}");
            out
        },
        || assert!(control(&jobs, "resume", &by_pid).0),
    );
    finishes_with(&mut job, &dir, &native.stdout, "heapwalk");
    // The job's entries are gone with it.
    let (ok, _, err) = control(&jobs, "suspend", "walk");
    assert!(!ok && err.contains("no job named"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn sigtstp_and_sigcont_to_dsmrun_suspend_and_resume_the_job() {
    let Some(exe) = heapwalk() else {
        return skip("sigtstp_and_sigcont", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let native = Command::new(&exe).args(HEAPWALK_ARGS).output().unwrap();
    let dir = scratch("suspend-signals");
    let jobs = jobs_dir(&dir);
    let mut job = start_job(&dir, "sig", 32 << 20, &exe, &HEAPWALK_ARGS);
    let pid = program_running_with(&mut job, 24 << 20);
    let launcher = job.id() as i32;
    suspend_and_resume(
        "heapwalk SIGTSTP",
        pid,
        || {
            // SAFETY: signalling the dsmrun we started.
            unsafe { libc::kill(launcher, libc::SIGTSTP) };
            wait_for(
                || control(&jobs, "status", "sig").1 == "suspended",
                "the suspend",
            );
            "SIGTSTP".into()
        },
        || {
            // SAFETY: as above.
            unsafe { libc::kill(launcher, libc::SIGCONT) };
        },
    );
    assert!(
        !stopped(job.id()),
        "dsmrun itself must keep running (it was not a Ctrl-Z)"
    );
    finishes_with(
        &mut job,
        &dir,
        &native.stdout,
        "heapwalk after SIGTSTP/SIGCONT",
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn a_suspended_job_that_is_killed_ends() {
    let Some(exe) = heapwalk() else {
        return skip(
            "a_suspended_job_that_is_killed",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let dir = scratch("suspend-kill");
    let jobs = jobs_dir(&dir);
    let mut job = start_job(&dir, "doomed", 32 << 20, &exe, &HEAPWALK_ARGS);
    let pid = program_running_with(&mut job, 24 << 20);
    let (ok, _, err) = control(&jobs, "suspend", "doomed");
    assert!(ok, "{err}");
    assert!(stopped(pid));
    // SAFETY: signalling the dsmrun we started; it forwards SIGTERM to the program.
    unsafe { libc::kill(job.id() as i32, libc::SIGTERM) };
    let mut status = None;
    wait_for(
        || {
            status = job.try_wait().unwrap();
            status.is_some()
        },
        "the suspended job to end on SIGTERM",
    );
    assert_eq!(status.unwrap().code(), Some(128 + libc::SIGTERM));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn velvetg_suspended_mid_run_assembles_the_native_contigs() {
    if !have("velveth")
        || !have("velvetg")
        || !Path::new(VELVET_EXAMPLE_READS).exists()
        || !have("xz")
    {
        return skip(
            "velvetg_suspended",
            "velvet, velvet-example or xz is missing (apt-get install velvet velvet-example xz-utils)",
        );
    }
    let _turn = heavy();
    let dir = scratch("suspend-velvet");
    let jobs = jobs_dir(&dir);
    let h = velveth_example(&dir);
    let copy = |to: &Path| velvet_run_dir(&h, to);
    let native = dir.join("native");
    copy(&native);
    assert!(Command::new("velvetg")
        .arg(&native)
        .output()
        .unwrap()
        .status
        .success());
    let pooled = dir.join("pooled");
    copy(&pooled);
    let velvetg = PathBuf::from("/usr/bin/velvetg");
    let mut job = start_job(
        &dir,
        "velvet",
        48 << 20,
        &velvetg,
        &[pooled.to_str().unwrap()],
    );
    let pid = program_running_with(&mut job, 32 << 20);
    suspend_and_resume(
        "velvetg",
        pid,
        || {
            let (ok, out, err) = control(&jobs, "suspend", "velvet");
            assert!(ok, "dsmrun suspend velvet: {err}");
            out
        },
        || assert!(control(&jobs, "resume", "velvet").0),
    );
    let st = job.wait().unwrap();
    assert!(
        st.success(),
        "velvetg: {}",
        std::fs::read_to_string(dir.join("err.txt")).unwrap()
    );
    for f in ["contigs.fa", "stats.txt"] {
        let a = std::fs::read(native.join(f)).unwrap();
        let b = std::fs::read(pooled.join(f)).unwrap();
        assert!(
            !a.is_empty() && a == b,
            "velvetg's {f} differs after a suspend"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_jobs_and_bad_names_are_clear_errors() {
    require_preload();
    let dir = scratch("suspend-errors");
    let jobs = jobs_dir(&dir);
    let (ok, _, err) = control(&jobs, "suspend", "nosuchjob");
    assert!(!ok && err.contains("no job named \"nosuchjob\""), "{err}");
    let (ok, _, err) = control(&jobs, "resume", "999999");
    assert!(!ok && err.contains("no running dsmrun job 999999"), "{err}");
    for bad in ["123", "../x", ""] {
        let out = Command::new(dsmrun())
            .env("DSM_JOBS_DIR", &jobs)
            .args(["-n", "1", "--name", bad, "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--name {bad:?}: {err}");
        assert!(err.contains("--name"), "--name {bad:?}: {err}");
    }
    // A name in use is refused; the running job is not disturbed, and resuming a job
    // that is not suspended says so.
    let mut first = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", &jobs)
        .args(["-q", "-n", "1", "--name", "busy", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    wait_for(
        || control(&jobs, "status", "busy").0,
        "the first job to register",
    );
    let out = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", &jobs)
        .args(["-n", "1", "--name", "busy", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already running"),
        "{err}"
    );
    let (ok, _, err) = control(&jobs, "resume", "busy");
    assert!(!ok && err.contains("not suspended"), "{err}");
    // SAFETY: signalling the dsmrun we started; it forwards SIGTERM to sleep.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();
    let _ = std::fs::remove_dir_all(dir);
}
