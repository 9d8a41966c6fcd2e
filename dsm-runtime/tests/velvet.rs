//! The flagship: Debian's unmodified `velveth` and `velvetg` under `dsmrun -n 4` with a
//! local cache of a quarter of their native peak RSS, on the `velvet-example` data and on
//! reads simulated with ART. Their outputs must be byte-identical to native runs (Velvet
//! 1.2.10 is single-threaded and deterministic), and the statistics must show pages going
//! to the nodes and back.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: &str = "/usr/share/doc/velvet/examples";

fn missing_tools() -> Option<&'static str> {
    if !have("velveth") || !have("velvetg") {
        return Some("velvet is not installed (apt-get install velvet)");
    }
    if !Path::new(EXAMPLES).join("test_reads.fa.xz").exists() {
        return Some("velvet's example data is missing (apt-get install velvet-example)");
    }
    if !have("xz") {
        return Some("xz is missing (apt-get install xz-utils)");
    }
    None
}

fn unxz(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name.trim_end_matches(".xz"));
    let data = Command::new("xz")
        .arg("-dc")
        .arg(Path::new(EXAMPLES).join(name))
        .output()
        .unwrap();
    assert!(data.status.success());
    std::fs::write(&out, data.stdout).unwrap();
    out
}

/// A fresh copy of velveth's output: velvetg rewrites its directory.
fn fresh(base: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for f in ["Sequences", "Roadmaps", "Log"] {
        std::fs::copy(base.join(f), to.join(f)).unwrap();
    }
}

fn velvet_bin(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

/// velveth natively and pooled (same Sequences and Roadmaps), then velvetg natively and
/// pooled (same contigs.fa and stats.txt).
fn assemble(name: &str, dir: &Path, velveth_args: &[&str], velvetg_args: &[&str]) {
    let _turn = heavy();
    let velveth = velvet_bin("velveth");
    let velvetg = velvet_bin("velvetg");
    let native_h = dir.join("h-native");
    let ran = run_measured(Command::new(&velveth).arg(&native_h).args(velveth_args));
    assert_eq!(ran.code, 0, "velveth natively: {}", ran.stderr);
    let pooled_h = dir.join("h-pooled");
    let stats_h = dir.join("velveth.json");
    let cache = quarter_of(ran.peak_rss);
    let pooled = run_measured(
        dsmrun_cmd(4, cache, &stats_h)
            .arg("--")
            .arg(&velveth)
            .arg(&pooled_h)
            .args(velveth_args),
    );
    assert_eq!(pooled.code, 0, "velveth under dsmrun: {}", pooled.stderr);
    println!(
        "{name} velveth: native {:.2} s, peak RSS {} MiB; pooled with {} MiB cache {:.2} s",
        ran.secs,
        ran.peak_rss >> 20,
        cache >> 20,
        pooled.secs
    );
    for f in ["Sequences", "Roadmaps"] {
        let a = std::fs::read(native_h.join(f)).unwrap();
        let b = std::fs::read(pooled_h.join(f)).unwrap();
        assert!(a == b, "{name}: velveth's {f} differs under dsmrun");
    }
    // velveth's heap is mostly a hash table it fills: it must have left the cache too.
    let total = stats_total(&stats_h);
    assert!(
        total["evictions"].as_u64().unwrap_or(0) > 0,
        "velveth: {total}"
    );

    let native_g = dir.join("g-native");
    fresh(&native_h, &native_g);
    let ran = run_measured(Command::new(&velvetg).arg(&native_g).args(velvetg_args));
    assert_eq!(ran.code, 0, "velvetg natively: {}", ran.stderr);
    let pooled_g = dir.join("g-pooled");
    fresh(&native_h, &pooled_g);
    let stats_g = dir.join("velvetg.json");
    let cache = quarter_of(ran.peak_rss);
    let pooled = run_measured(
        dsmrun_cmd(4, cache, &stats_g)
            .arg("--")
            .arg(&velvetg)
            .arg(&pooled_g)
            .args(velvetg_args),
    );
    assert_eq!(pooled.code, 0, "velvetg under dsmrun: {}", pooled.stderr);
    println!(
        "{name} velvetg: native {:.2} s, peak RSS {} MiB; pooled with {} MiB cache {:.2} s ({:.1}x)",
        ran.secs,
        ran.peak_rss >> 20,
        cache >> 20,
        pooled.secs,
        pooled.secs / ran.secs
    );
    let native_contigs = std::fs::read(native_g.join("contigs.fa")).unwrap();
    assert!(
        !native_contigs.is_empty(),
        "{name}: velvetg assembled nothing"
    );
    for f in ["contigs.fa", "stats.txt"] {
        let a = std::fs::read(native_g.join(f)).unwrap();
        let b = std::fs::read(pooled_g.join(f)).unwrap();
        assert!(a == b, "{name}: velvetg's {f} differs under dsmrun");
    }
    assert_pooled(&stats_total(&stats_g), "velvetg");
}

#[test]
fn velvet_example_data() {
    if let Some(why) = missing_tools() {
        return skip("velvet_example_data", why);
    }
    let dir = scratch("velvet-example");
    let reads = unxz("test_reads.fa.xz", &dir);
    let reads = reads.to_string_lossy().into_owned();
    assemble(
        "velvet-example",
        &dir,
        &["21", "-fasta", "-shortPaired", &reads],
        &[],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn velvet_on_reads_simulated_with_art() {
    if let Some(why) = missing_tools() {
        return skip("velvet_on_simulated_reads", why);
    }
    if !have("art_illumina") {
        return skip(
            "velvet_on_simulated_reads",
            "ART is not installed (apt-get install art-nextgen-simulation-tools)",
        );
    }
    let dir = scratch("velvet-art");
    let (r1, r2) = art_reads(&dir);
    assemble(
        "ART 10x",
        &dir,
        &["31", "-shortPaired", "-fastq", "-separate", &r1, &r2],
        &["-exp_cov", "auto", "-ins_length", "300"],
    );
    let _ = std::fs::remove_dir_all(dir);
}
