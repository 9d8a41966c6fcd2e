//! `dsmrun --attach`: a program on memory nodes that were started elsewhere (here: by the
//! test, as another machine would), with the secret they were started with.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_program_runs_on_nodes_it_did_not_start() {
    if !have("sort") {
        return skip("attach", "no sort (apt-get install coreutils)");
    }
    let _turn = heavy();
    let (nodes, secret) = common::nodes(2, 1 << 30);
    let addrs: Vec<String> = nodes.addrs().iter().map(ToString::to_string).collect();
    let dir = scratch("attach");
    let input = dir.join("input.txt");
    let text: String = (0..200_000u64)
        .map(|i| format!("{:012}\n", (i * 7_919) % 1_000_003))
        .collect();
    std::fs::write(&input, text).unwrap();
    let native = run_measured(Command::new("sort").arg(&input).env("LC_ALL", "C"));
    let stats = dir.join("stats.json");
    require_preload();
    let pooled = run_measured(
        Command::new(dsmrun())
            .args([
                "--attach",
                &addrs.join(","),
                "--local-cache",
                "1M",
                "--stats",
            ])
            .arg(&stats)
            .args(["--", "sort"])
            .arg(&input)
            .env("LC_ALL", "C")
            .env("DSM_SECRET", secret.as_str()),
    );
    assert_eq!(pooled.code, 0, "{}", pooled.stderr);
    assert!(
        pooled.stdout == native.stdout,
        "output differs under dsmrun --attach"
    );
    assert_pooled(&stats_total(&stats), "sort --attach");
    // The nodes outlive the job: dsmrun did not start them, so it does not stop them.
    let mut nodes = nodes;
    assert!(
        nodes.exited().is_none(),
        "dsmrun stopped nodes it did not start"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn attaching_needs_the_nodes_secret() {
    let (nodes, _secret) = common::nodes(1, 64 << 20);
    let addr = nodes.addrs()[0].to_string();
    let out = Command::new(dsmrun())
        .args(["--attach", &addr, "--", "true"])
        .env_remove("DSM_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("DSM_SECRET"), "{err}");
    let out = Command::new(dsmrun())
        .args(["--attach", &addr, "--", "true"])
        .env("DSM_SECRET", "not-the-secret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("authentication failed") && err.contains("node 0"),
        "{err}"
    );
}

/// A node that dies under an attached job (which `dsmrun` does not watch: it did not
/// start the nodes) ends the program through its runtime, and `dsmrun` says that the
/// runtime failed, not only the bare status, and that the process left only a
/// checkpoint of its statistics.
#[test]
fn a_node_dying_under_an_attached_job_is_reported_as_a_runtime_failure() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("attached_node_dies", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let (mut nodes, secret) = common::nodes(2, 1 << 30);
    let addrs: Vec<String> = nodes.addrs().iter().map(ToString::to_string).collect();
    require_preload();
    let mut child = Command::new(dsmrun())
        .args(["--attach", &addrs.join(","), "--local-cache", "2M", "--"])
        .arg(&exe)
        .args(["32", "2", "100000", "3"])
        .env("DSM_SECRET", secret.as_str())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the first statistics checkpoint (every second).
    std::thread::sleep(Duration::from_millis(1500));
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    nodes.kill(1);
    let killed = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if killed.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the job hung after its node died: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    let _ = std::fs::remove_file(&exe);
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(dsm_runtime::runtime::EXIT_RUNTIME_FAILURE),
        "{err}"
    );
    assert!(err.contains("dsm: fatal: node 1"), "{err}");
    assert!(
        err.contains("exited with status 70: the pooled-memory runtime in it failed"),
        "{err}"
    );
    assert!(
        err.contains("1 of them ended without writing final statistics"),
        "{err}"
    );
}
