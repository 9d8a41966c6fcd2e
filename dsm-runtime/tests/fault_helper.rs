//! The helper fault handler (`fault/helper.rs`), end to end: an unmodified multithreaded
//! program under `dsmrun` over TCP has its faults served by two handlers while its threads
//! fault together, and prints what it prints natively; over shared memory, or with
//! `DSM_HANDLER_HELPER=0`, there is no helper.

mod common;

use common::{compile_c, dsmrun_cmd, heavy, scratch, skip, stats_total};
use std::path::Path;
use std::process::Command;

/// 16 MiB, 4 threads, 200 rounds: about 50,000 faults with the 2 MiB cache.
const ARGS: [&str; 4] = ["16", "4", "200", "11"];
/// The same with one thread.
const ONE_THREAD: [&str; 4] = ["16", "1", "200", "11"];

/// Runs heapwalk with `args` under dsmrun with `extra` flags; returns its job totals after
/// checking that its output is the native one.
fn run(
    exe: &Path,
    (args, native): (&[&str], &[u8]),
    extra: &[&str],
    helper_off: bool,
) -> serde_json::Value {
    let dir = scratch("fault_helper");
    let stats = dir.join("stats.json");
    let mut cmd = dsmrun_cmd(2, 2 << 20, &stats);
    cmd.args(extra).arg("--").arg(exe).args(args);
    if helper_off {
        cmd.env("DSM_HANDLER_HELPER", "0");
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{extra:?}: {err}");
    assert!(
        out.stdout == native,
        "{extra:?}: output differs from native: {err}"
    );
    let total = stats_total(&stats);
    let _ = std::fs::remove_dir_all(dir);
    total
}

fn count(total: &serde_json::Value, key: &str) -> u64 {
    total[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key}: {total}"))
}

#[test]
fn several_threads_over_tcp_get_a_second_handler_and_nothing_else_does() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("fault_helper", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let native = Command::new(&exe).args(ARGS).output().unwrap();
    assert!(native.status.success());
    let four = (&ARGS[..], &native.stdout[..]);

    let tcp = run(&exe, four, &["--transport", "tcp"], false);
    let faults = count(&tcp, "faults_read") + count(&tcp, "faults_write");
    let helped = count(&tcp, "helper_rounds");
    // Four threads fault together for most of the run: the helper serves a good share.
    assert!(
        helped * 10 > faults,
        "helper served {helped} rounds of {faults} faults: {tcp}"
    );

    // One thread faulting: the helper sleeps but for the windows where the program's
    // threads start (their stacks are on the global heap too).
    let native_one = Command::new(&exe).args(ONE_THREAD).output().unwrap();
    let one = run(
        &exe,
        (&ONE_THREAD[..], &native_one.stdout[..]),
        &["--transport", "tcp"],
        false,
    );
    let faults = count(&one, "faults_read") + count(&one, "faults_write");
    let helped = count(&one, "helper_rounds");
    assert!(
        helped * 20 < faults,
        "one thread: helper served {helped} rounds of {faults} faults: {one}"
    );

    let off = run(&exe, four, &["--transport", "tcp"], true);
    assert_eq!(
        count(&off, "helper_rounds"),
        0,
        "DSM_HANDLER_HELPER=0: {off}"
    );
    let shm = run(&exe, four, &["--transport", "shm"], false);
    assert_eq!(count(&shm, "helper_rounds"), 0, "over shm: {shm}");
    let two = run(
        &exe,
        four,
        &["--transport", "tcp", "--handler-threads", "2"],
        false,
    );
    assert_eq!(
        count(&two, "helper_rounds"),
        0,
        "--handler-threads 2: {two}"
    );
    let _ = std::fs::remove_file(exe);
}
