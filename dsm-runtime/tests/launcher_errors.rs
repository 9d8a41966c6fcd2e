//! Every way a job can fail ends with a clear message, a non-zero exit status, and no
//! process left running.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Node pids that dsmrun -v reported on stderr.
fn node_pids(stderr: &str) -> Vec<i32> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("dsmrun: node "))
        .filter_map(|l| l.split(" pid ").nth(1))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn assert_gone(pids: &[i32]) {
    for &pid in pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "memory node {pid} outlived dsmrun"
        );
    }
}

fn quick(args: &[&str]) -> Ran {
    require_preload();
    run_measured(Command::new(dsmrun()).args(args))
}

#[test]
fn program_not_found_is_127_and_starts_nothing() {
    let r = quick(&["-n", "2", "-v", "--", "no-such-program-dsm"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert!(
        r.stderr.contains("no-such-program-dsm: command not found"),
        "{}",
        r.stderr
    );
    assert!(
        node_pids(&r.stderr).is_empty(),
        "nodes were started: {}",
        r.stderr
    );
    let r = quick(&["-n", "2", "--", "/nonexistent/prog"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
}

#[test]
fn bad_sizes_and_help_are_clear() {
    let r = quick(&["-n", "2", "--local-cache", "lots", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--local-cache"), "{}", r.stderr);
    let r = quick(&["-n", "2", "--cpus", "1000", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("CPU 1000 is not available"),
        "{}",
        r.stderr
    );
    let r = quick(&["-n", "2", "--cpus", "1-0", "--", "true"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("backwards"), "{}", r.stderr);
    let r = quick(&["-n", "2", "--transport", "carrier-pigeon", "--", "true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("shm"), "{}", r.stderr);
    // The job runs where it is told, nodes included.
    let r = quick(&[
        "-n",
        "1",
        "--cpus",
        "0",
        "--",
        "grep",
        "Cpus_allowed_list",
        "/proc/self/status",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.trim_end().ends_with(":\t0"), "{out}");
    let r = quick(&["--help"]);
    assert_eq!(r.code, 0);
    let help = String::from_utf8_lossy(&r.stdout);
    for opt in [
        "--local-cache",
        "--node-memory",
        "--transport",
        "--cpus",
        "--stats",
        "--verbose",
        "Examples",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn no_userfaultfd_permission_says_which_fix_applies() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !have("setpriv") {
        return skip(
            "no_userfaultfd_permission",
            "needs root, and setpriv (apt-get install util-linux) to drop to an unprivileged user",
        );
    }
    let sysctl =
        std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if sysctl.trim() != "0" {
        return skip(
            "no_userfaultfd_permission",
            "vm.unprivileged_userfaultfd=1 lets every user use userfaultfd (Debian's default is 0: sysctl -w vm.unprivileged_userfaultfd=0)",
        );
    }
    // A copy the unprivileged user can run (the build tree may be private).
    let dir = std::env::temp_dir().join(format!("dsm-test-{}-uffd", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["dsmrun", "libdsm_preload.so"] {
        std::fs::copy(dsmrun().with_file_name(f), dir.join(f)).unwrap();
    }
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    let r = run_measured(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(dir.join("dsmrun"))
            .args(["-n", "2", "--", "true"])
            .current_dir("/"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for fix in [
        "CAP_SYS_PTRACE",
        "vm.unprivileged_userfaultfd=1",
        "/dev/userfaultfd",
    ] {
        assert!(r.stderr.contains(fix), "message lacks {fix}: {}", r.stderr);
    }
}

#[test]
fn base_address_taken_is_reported() {
    // A non-PIE program sits at 0x400000: a global range there overlaps it.
    let Some(exe) = compile_c("oom", &["-no-pie"]) else {
        return skip("base_address_taken", "no C compiler (apt-get install gcc)");
    };
    let r = quick(
        &["-n", "2", "-v", "--space-base", "0x400000", "--"]
            .iter()
            .map(|s| s.to_string())
            .chain([exe.to_string_lossy().into_owned()])
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let _ = std::fs::remove_file(&exe);
    assert_eq!(
        r.code,
        dsm_runtime::runtime::EXIT_RUNTIME_FAILURE,
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("overlaps an existing mapping"),
        "{}",
        r.stderr
    );
    assert_gone(&node_pids(&r.stderr));
}

/// Starts dsmrun -v (plus `extra` options) on a long-running heapwalk; returns it and the
/// node pids once the program runs.
fn start_long_job(
    exe: &Path,
    extra: &[&str],
) -> (
    std::process::Child,
    Vec<i32>,
    std::thread::JoinHandle<String>,
) {
    require_preload();
    let mut child = Command::new(dsmrun())
        .args(["-n", "3", "-v", "--local-cache", "2M"])
        .args(extra)
        .arg("--")
        .arg(exe)
        .args(["32", "2", "100000", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains(" slot ") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "dsmrun ended early: {seen}"
        );
        seen.push_str(&line);
    }
    let pids = node_pids(&seen);
    assert_eq!(pids.len(), 3, "{seen}");
    let rest = std::thread::spawn(move || {
        let mut s = seen;
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    (child, pids, rest)
}

/// The program's runtime ends it (`fatal`) when a node dies under it: the job ends with
/// the runtime-failure status naming the node, and the process's statistics stay its
/// last checkpoint, not a copy marked complete (it did not complete), which `dsmrun`
/// counts among the processes that left no final statistics.
#[test]
fn a_dead_node_ends_the_job_naming_it() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("a_dead_node", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let stats =
        std::env::temp_dir().join(format!("dsm-test-{}-dead-node.json", std::process::id()));
    let stats_arg = stats.to_string_lossy().into_owned();
    let (mut child, pids, rest) = start_long_job(&exe, &["--stats", &stats_arg]);
    // Past the first checkpoint (written every second).
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: killing a node process this test's dsmrun started.
    unsafe { libc::kill(pids[1], libc::SIGKILL) };
    let start = Instant::now();
    let st = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    let _ = std::fs::remove_file(&exe);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        st.code(),
        Some(dsm_runtime::runtime::EXIT_RUNTIME_FAILURE),
        "{stderr}"
    );
    assert!(stderr.contains("node 1"), "{stderr}");
    // The program's runtime noticed the death itself and ended the process: that is the
    // path whose statistics are checked below.
    assert!(stderr.contains("dsm: fatal: "), "{stderr}");
    assert_gone(&pids);
    assert!(
        stderr.contains("1 of them ended without writing final statistics"),
        "{stderr}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let _ = std::fs::remove_file(&stats);
    assert_eq!(doc["job"]["exit_status"], 70, "{doc}");
    assert_eq!(doc["job"]["processes_without_final_stats"], 1, "{doc}");
    assert_eq!(doc["processes"][0]["complete"], false, "{doc}");
}

#[test]
fn sigterm_is_forwarded_and_everything_is_torn_down() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "sigterm_is_forwarded",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let (mut child, pids, rest) = start_long_job(&exe, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling the dsmrun this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("killed by signal 15"), "{stderr}");
    assert_gone(&pids);

    // A crashing program: its signal is reported and the nodes go too.
    let r = quick(&["-n", "2", "-v", "--", "sh", "-c", "kill -SEGV $$"]);
    let _ = std::fs::remove_file(&exe);
    assert_eq!(r.code, 128 + libc::SIGSEGV, "{}", r.stderr);
    assert!(r.stderr.contains("signal 11"), "{}", r.stderr);
    assert_gone(&node_pids(&r.stderr));
}

/// A process killed by a signal never reaches its exit handlers, where it writes its
/// statistics; the checkpoint it writes every second stands in, flagged as such.
#[test]
fn a_program_killed_by_a_signal_still_leaves_its_statistics() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "killed_program_statistics",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let stats = std::env::temp_dir().join(format!("dsm-test-{}-killed.json", std::process::id()));
    let stats_arg = stats.to_string_lossy().into_owned();
    let (mut child, pids, rest) = start_long_job(&exe, &["--stats", &stats_arg]);
    // Past the first checkpoint, with the 2 MiB cache evicting all along.
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: signalling the dsmrun this test started (forwarded to the program).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    let stderr = rest.join().unwrap();
    let _ = std::fs::remove_file(&exe);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert_gone(&pids);
    assert!(
        stderr.contains("1 of them ended without writing final statistics"),
        "{stderr}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let _ = std::fs::remove_file(&stats);
    assert_eq!(doc["job"]["processes_without_final_stats"], 1, "{doc}");
    let p = &doc["processes"][0];
    assert_eq!(p["complete"], false, "{doc}");
    for counter in [
        "faults_write",
        "evictions",
        "remote_write_pages",
        "remote_read_pages",
    ] {
        assert!(
            p["stats"][counter].as_u64().unwrap_or(0) > 0,
            "{counter} is 0 in the checkpoint: {doc}"
        );
    }
}
