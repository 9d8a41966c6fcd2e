//! Real, unmodified programs under `dsmrun -n 4` with a local cache of at most a quarter of
//! their native peak RSS: their output must be byte-identical to a native run, and the
//! statistics must show pages leaving for the nodes and coming back.

mod common;

use common::*;
use std::process::Command;

/// Runs `program args` natively, then under dsmrun with a quarter of its peak RSS as
/// cache; checks identical stdout and real remote traffic. Returns the stats totals.
fn native_vs_pooled(name: &str, program: &std::path::Path, args: &[&str]) -> serde_json::Value {
    native_vs_pooled_env(name, program, args, &[])
}

/// [`native_vs_pooled`] with extra environment variables for both runs.
fn native_vs_pooled_env(
    name: &str,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    native_vs_pooled_over(name, program, args, env, "shm")
}

/// [`native_vs_pooled_env`] over the given transport (`dsmrun --transport`); checks that
/// every process used it.
fn native_vs_pooled_over(
    name: &str,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    transport: &str,
) -> serde_json::Value {
    let _turn = heavy();
    let native = run_measured(
        Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .envs(env.iter().copied()),
    );
    assert_eq!(native.code, 0, "{name} natively: {}", native.stderr);
    let cache = quarter_of(native.peak_rss);
    let dir = scratch(name);
    let stats = dir.join("stats.json");
    let pooled = run_measured(
        dsmrun_cmd(4, cache, &stats)
            .env("LC_ALL", "C")
            .envs(env.iter().copied())
            .args(["--transport", transport])
            .arg("--")
            .arg(program)
            .args(args),
    );
    println!(
        "{name}: native {:.2} s, peak RSS {} MiB; dsmrun -n 4 with a {} MiB cache {:.2} s ({:.1}x)",
        native.secs,
        native.peak_rss >> 20,
        cache >> 20,
        pooled.secs,
        pooled.secs / native.secs
    );
    assert_eq!(pooled.code, 0, "{name} under dsmrun: {}", pooled.stderr);
    assert!(
        pooled.stdout == native.stdout,
        "{name}: output differs under dsmrun ({} vs {} bytes)",
        pooled.stdout.len(),
        native.stdout.len()
    );
    let total = stats_total(&stats);
    assert_pooled(&total, name);
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    for p in all["processes"].as_array().unwrap() {
        assert_eq!(p["transport"], transport, "{name}: {p}");
    }
    let _ = std::fs::remove_dir_all(dir);
    total
}

#[test]
fn multithreaded_c_program_with_random_access() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "multithreaded_c_program",
            "no C compiler (apt-get install gcc)",
        );
    };
    let total = native_vs_pooled(
        "heapwalk",
        &exe,
        &["96", "4", "2", "42"], // 96 MiB over 4 threads
    );
    assert!(total["faults_write"].as_u64().unwrap() > 0);
    // The same over TCP, the transport for nodes on other hosts.
    let total = native_vs_pooled_over("heapwalk-tcp", &exe, &["96", "4", "2", "42"], &[], "tcp");
    assert!(total["remote_read_pages"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn a_thrashing_job_is_told_so_while_it_runs() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("thrash_warning", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    // 32 MiB walked at random by 4 threads through a 2 MiB cache: nearly every access
    // faults, for about 4 s. (40 rounds took 1.3 s: the checkpoints a second apart and
    // the samples half a second apart then hardly made one whole window, and a suite run
    // on 2026-12-08 saw no warning.)
    let args = ["32", "4", "120", "7"];
    let native = run_measured(Command::new(&exe).args(args));
    assert_eq!(native.code, 0, "heapwalk natively: {}", native.stderr);
    let dir = scratch("thrash");
    let run = |window: &str| {
        run_measured(
            dsmrun_cmd(2, 2 << 20, &dir.join("stats.json"))
                .args(["--thrash-warning", window, "--"])
                .arg(&exe)
                .args(args),
        )
    };
    let warned = run("1");
    assert_eq!(warned.code, 0, "{}", warned.stderr);
    assert_eq!(
        warned.stdout, native.stdout,
        "the warning must not disturb the job"
    );
    assert_eq!(
        warned.stderr.matches("is thrashing").count(),
        1,
        "one warning, naming the cure: {}",
        warned.stderr
    );
    assert!(
        warned.stderr.contains("heapwalk") && warned.stderr.contains("--local-cache"),
        "{}",
        warned.stderr
    );
    let silenced = run("0");
    assert_eq!(silenced.code, 0, "{}", silenced.stderr);
    assert!(
        !silenced.stderr.contains("thrashing"),
        "--thrash-warning 0 silences it: {}",
        silenced.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
}

/// A program that blocks its signals and takes them with `sigwait` (as servers do) gets
/// each one, as natively: the runtime's threads block them, so the kernel does not hand
/// them to a runtime thread (where SIGALRM's or SIGUSR1's default action would end the
/// process, and a handler would run on a runtime thread).
#[test]
fn signals_blocked_by_the_program_wait_for_its_sigwait() {
    let Some(exe) = compile_c("sigwaiter", &[]) else {
        return skip("sigwaiter", "no C compiler (apt-get install gcc)");
    };
    let total = native_vs_pooled("sigwaiter", &exe, &["64", "200"]);
    assert!(total["faults_read"].as_u64().unwrap_or(0) > 0, "{total}");
    let _ = std::fs::remove_file(exe);
}

#[test]
fn openmp_program() {
    let Some(exe) = compile_c("omp", &["-fopenmp"]) else {
        return skip("openmp_program", "no C compiler (apt-get install gcc)");
    };
    // Two OpenMP threads whatever the machine, so native and pooled runs do the same work.
    let total = native_vs_pooled_env("openmp", &exe, &["48"], &[("OMP_NUM_THREADS", "2")]);
    assert!(total["faults_read"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_file(exe);
}

#[test]
fn sort_of_a_generated_file() {
    if !have("sort") {
        return skip(
            "sort_of_a_generated_file",
            "no sort (apt-get install coreutils)",
        );
    }
    let dir = scratch("sort-input");
    let input = dir.join("input.txt");
    // Deterministic lines with random keys: a linear congruential generator.
    let mut text = String::with_capacity(20 << 20);
    let mut x: u64 = 1;
    let mut i = 0u64;
    while text.len() < (20 << 20) {
        x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
        text.push_str(&format!("{x:010} line {i} payload {:016x}\n", x * 69_069));
        i += 1;
    }
    std::fs::write(&input, text).unwrap();
    let sort = std::path::Path::new("/usr/bin/sort");
    let sort = if sort.exists() {
        sort.to_path_buf()
    } else {
        "sort".into()
    };
    // One thread (and the C locale, set for every run): the same work natively and pooled.
    let input_s = input.to_string_lossy().into_owned();
    native_vs_pooled("sort", &sort, &["--parallel=1", &input_s]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn python_builds_and_hashes_a_large_dictionary() {
    if !have("python3") {
        return skip("python_dictionary", "no python3 (apt-get install python3)");
    }
    let script = r#"
import hashlib
d = {}
for i in range(100000):
    d["key-%d" % (i * 7919 % 1000003)] = (i, str(i * i), [i, i + 1])
h = hashlib.sha256()
for k in sorted(d):
    v = d[k]
    h.update(k.encode()); h.update(v[1].encode()); h.update(bytes(str(v[2]), "ascii"))
print(len(d), h.hexdigest())
"#;
    native_vs_pooled("python3", &real_python(), &["-c", script]);
}

/// Memory the program gives up with `madvise(MADV_DONTNEED)` reads as zeros afterwards,
/// also where its only copy had been written home; the rest is intact. The runtime drops
/// such pages without a write-back (how the allocator's purge of freed spans works).
#[test]
fn madvise_dontneed_gives_memory_up() {
    if !have("python3") {
        return skip("madvise_dontneed", "no python3 (apt-get install python3)");
    }
    let script = r#"
import mmap
n = 64 << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
for off in range(0, n, 4096):
    m[off:off + 8] = (off // 4096).to_bytes(8, "little")
m.madvise(mmap.MADV_DONTNEED, 0, n // 2)
zero = sum(1 for off in range(0, n // 2, 4096) if m[off:off + 8] == bytes(8))
kept = sum(1 for off in range(n // 2, n, 4096) if m[off:off + 8] == (off // 4096).to_bytes(8, "little"))
print(zero, kept)
"#;
    let total = native_vs_pooled("madvise", &real_python(), &["-c", script]);
    assert!(
        total["discarded_pages"].as_u64().unwrap() > 0,
        "nothing discarded: {total}"
    );
}

/// A partial `munmap` of a pooled mapping keeps the rest intact and gives the unmapped
/// pages up (no write-back; counted as discarded).
#[test]
fn partial_munmap_gives_the_unmapped_pages_up() {
    let Some(exe) = compile_c("unmapper", &[]) else {
        return skip("unmapper", "no C compiler (apt-get install gcc)");
    };
    let total = native_vs_pooled("unmapper", &exe, &[]);
    assert!(
        total["discarded_pages"].as_u64().unwrap() > 0,
        "nothing discarded: {total}"
    );
}

/// The interpreter itself, not a version-manager shim that would run it through shells.
fn real_python() -> std::path::PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| "python3".into())
}

/// A program that leaves with `_exit` (no atexit handlers, no destructors) still has its
/// statistics collected, and its exit status passed on.
#[test]
fn a_program_ending_with_underscore_exit_reports_its_statistics() {
    if !have("python3") {
        return skip("underscore_exit", "no python3 (apt-get install python3)");
    }
    let dir = scratch("underscore-exit");
    let stats = dir.join("stats.json");
    let ran = run_measured(
        dsmrun_cmd(2, 4 << 20, &stats)
            .arg("--")
            .arg(real_python())
            .args([
                "-c",
                "x = [str(i) for i in range(200000)]; import os; os._exit(3)",
            ]),
    );
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let procs = all["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{all}");
    assert!(
        procs[0]["stats"]["faults_write"].as_u64().unwrap() > 0,
        "{all}"
    );
    assert!(
        ran.stderr.contains("1 process(es) on pooled memory"),
        "{}",
        ran.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shell_running_programs_and_fork_without_exec() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip(
            "shell_running_programs",
            "no C compiler (apt-get install gcc)",
        );
    };
    let Some(forker) = compile_c("forker", &[]) else {
        return skip(
            "shell_running_programs",
            "no C compiler (apt-get install gcc)",
        );
    };
    let _turn = heavy();
    let e = exe.display();
    let f = forker.display();
    // A shell that runs programs one after another and in a pipeline; a program that
    // uses system() and posix_spawn; a program that forks without exec.
    let script = format!("{e} 24 2 1 5 | tail -1; {e} 24 3 1 6 | tail -1 & wait; {f}");
    let native = run_measured(Command::new("sh").args(["-c", &script]));
    assert_eq!(native.code, 0, "natively: {}", native.stderr);
    let dir = scratch("shell");
    let stats = dir.join("stats.json");
    let pooled = run_measured(
        dsmrun_cmd(4, 4 << 20, &stats)
            .arg("-v")
            .args(["--", "sh", "-c", &script]),
    );
    assert_eq!(pooled.code, 0, "under dsmrun: {}", pooled.stderr);
    assert_eq!(
        String::from_utf8_lossy(&pooled.stdout),
        String::from_utf8_lossy(&native.stdout)
    );
    // sh, two heapwalks, forker and the programs it spawns each had their own slot.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let procs = doc["processes"].as_array().unwrap();
    assert!(procs.len() >= 5, "{} processes: {doc}", procs.len());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(exe);
    let _ = std::fs::remove_file(forker);
}

#[test]
fn fork_after_eviction_is_refused_clearly() {
    let Some(forker) = compile_c("forker", &[]) else {
        return skip("fork_after_eviction", "no C compiler (apt-get install gcc)");
    };
    let _turn = heavy();
    let dir = scratch("fork-refused");
    let stats = dir.join("stats.json");
    // 64 MiB of heap through a 1 MiB cache: pages are on the nodes when it forks.
    let pooled = run_measured(
        dsmrun_cmd(2, 1 << 20, &stats)
            .arg("--")
            .arg(&forker)
            .arg("64"),
    );
    assert_eq!(pooled.code, 0, "{}", pooled.stderr);
    let out = String::from_utf8_lossy(&pooled.stdout);
    assert!(out.contains("fork refused: errno"), "{out}");
    assert!(
        pooled
            .stderr
            .contains("fork() without exec is not supported"),
        "{}",
        pooled.stderr
    );
    // The parent's heap is intact after the refusal.
    assert!(out.contains("parent heap ok"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(forker);
}
