//! A test whose prerequisite is missing fails, unless `DSM_ALLOW_SKIP=1` says a skip is
//! fine (never in CI); an allowed skip says so on stderr and in the `DSM_SKIP_LOG` file.
//! Each case runs `common::skip` in a child process (this test binary, re-executed) with
//! the environment under test.

mod common;

use std::process::{Command, Output};

const CHILD_ENV: &str = "DSM_TEST_SKIP_CHILD";
const REASON: &str = "no frobnicator (apt-get install frobnicator)";

/// The child: a test that finds its prerequisite missing.
#[test]
#[ignore = "helper run by the tests below in a child process"]
fn child_missing_a_prerequisite() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    common::skip("a label", REASON);
}

/// Runs the child with `vars` set and the skip variables otherwise cleared.
fn child(vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_missing_a_prerequisite",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("DSM_ALLOW_SKIP")
    .env_remove("DSM_SKIP_LOG")
    .env_remove("CI");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn a_missing_prerequisite_fails_the_test_naming_it() {
    let o = child(&[]);
    let out = text(&o);
    assert!(!o.status.success(), "passed without running: {out}");
    assert!(out.contains(REASON), "does not say what is missing: {out}");
    assert!(
        out.contains("DSM_ALLOW_SKIP=1"),
        "does not say how to allow it: {out}"
    );
}

#[test]
fn an_allowed_skip_is_reported_and_logged() {
    let log = std::env::temp_dir().join(format!("dsm-test-{}-skip.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_arg = log.to_string_lossy().into_owned();
    // The test's file and function, whatever label the call site gave.
    let line = format!("SKIPPED: skipping::child_missing_a_prerequisite: {REASON}");
    // Twice: the log collects the lines of every test binary of a run.
    for _ in 0..2 {
        let o = child(&[("DSM_ALLOW_SKIP", "1"), ("DSM_SKIP_LOG", &log_arg)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{}", text(&o));
        assert!(err.contains(&line), "{err}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(logged, format!("{line}\n{line}\n"));
}

#[test]
fn ci_does_not_honour_the_allowance() {
    let o = child(&[("DSM_ALLOW_SKIP", "1"), ("CI", "true")]);
    let out = text(&o);
    assert!(!o.status.success(), "skipped in CI: {out}");
    assert!(out.contains(REASON), "{out}");
    assert!(out.contains("CI is set"), "{out}");
}
