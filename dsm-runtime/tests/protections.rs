//! `mprotect` on pooled memory is honoured: JIT code made read-execute runs and refuses
//! writes, a `PROT_NONE` guard page faults, and neither breaks eviction (a real C program
//! under `dsmrun`, with a cache far smaller than what it writes).

mod common;

use common::*;
use std::process::Command;

#[test]
fn jit_code_and_guard_pages_keep_their_protection_through_eviction() {
    let exe = compile_c("protect", &[]).expect("a C compiler is needed (apt-get install gcc)");
    let _turn = heavy();
    let native = Command::new(&exe).output().unwrap();
    assert!(
        native.status.success(),
        "{}",
        String::from_utf8_lossy(&native.stdout)
    );
    require_preload();
    let r = run_measured(
        Command::new(dsmrun())
            .args(["-n", "2", "--local-cache", "4M", "--"])
            .arg(&exe),
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert_eq!(r.stdout, native.stdout, "{out}");
    assert!(out.contains("all protections held"), "{out}");
    // The pages under test really left the cache and came back.
    assert!(!r.stderr.contains("evictions 0 "), "{}", r.stderr);
}
