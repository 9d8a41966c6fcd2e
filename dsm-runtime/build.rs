//! Builds the checkpoint restarter (`src/checkpoint/restarter.c`): a static program
//! without libc, linked at the restarter's zone (`checkpoint::format::RESTARTER_ZONE`),
//! embedded in the runtime with `include_bytes!`. It needs the system's `gcc`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/checkpoint/restarter.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("dsm-restarter");
    let status = Command::new(std::env::var("DSM_RESTARTER_CC").unwrap_or_else(|_| "gcc".into()))
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fPIE",
            "-no-pie",
            "-O2",
            "-Wall",
            "-Wl,-Ttext-segment=0x3f0000000000",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("building the checkpoint restarter with gcc failed ({s})"),
        Err(e) => panic!("building the checkpoint restarter needs gcc: {e}"),
    }
}
