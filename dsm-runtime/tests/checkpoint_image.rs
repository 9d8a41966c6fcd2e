//! The checkpoint engine's process image (`checkpoint PATH` on a process's control
//! socket, `dsmrun restore-image`): real nodes started by the test, a real multithreaded
//! program checkpointed mid-run, killed, and restored from its image on the same nodes;
//! its output must be the native run's. Also: a program holding a pipe is refused and
//! runs on; a damaged image is refused by the restarter.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT_MAX: Duration = Duration::from_secs(60);
/// Long enough under an 8 MiB cache (several seconds) to be caught mid-run.
const HEAPWALK_ARGS: [&str; 4] = ["160", "4", "30", "7"];
const PIPEHOLDER_ARGS: [&str; 2] = ["32", "30"];

/// Nodes started by the test (as another machine would), outliving the jobs.
struct Pool {
    _nodes: dsm_runtime::launch::LocalNodes,
    attach: String,
    secret: String,
}

fn pool() -> Pool {
    let (nodes, secret) = common::nodes(2, 1 << 30);
    let attach = nodes
        .addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Pool {
        _nodes: nodes,
        attach,
        secret: secret.as_str().to_string(),
    }
}

/// `dsmrun --attach NODES --local-cache CACHE --name NAME -- program args`, its output
/// in `dir/out1.txt`.
fn start_job(
    pool: &Pool,
    dir: &Path,
    (name, cache): (&str, &str),
    program: &Path,
    args: &[&str],
) -> Child {
    require_preload();
    Command::new(dsmrun())
        .env("DSM_JOBS_DIR", dir.join("jobs"))
        .env("DSM_SECRET", &pool.secret)
        .args(["-q", "--attach", &pool.attach, "--local-cache", cache])
        .args(["--name", name, "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out1.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("err1.txt")).unwrap())
        .spawn()
        .unwrap()
}

fn wait_for(mut what: impl FnMut() -> bool, describe: &str) {
    let start = Instant::now();
    while !what() {
        assert!(start.elapsed() < WAIT_MAX, "timed out waiting: {describe}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The program `dsmrun` (pid `launcher`) runs, once it has a control socket.
fn program_of(launcher: u32) -> u32 {
    let mut found = None;
    wait_for(
        || {
            found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: u32 = stat[stat.rfind(')')? + 2..]
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                (ppid == launcher && control_socket(pid).exists()).then_some(pid)
            });
            found.is_some()
        },
        "the program to start with a control socket",
    );
    found.unwrap()
}

/// The program's `DSM_*` variables (its job), as `KEY=VALUE` lines.
fn job_vars(pid: u32) -> Vec<(String, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            k.starts_with("DSM_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn control_socket(pid: u32) -> PathBuf {
    let dir = job_vars(pid)
        .into_iter()
        .find(|(k, _)| k == "DSM_STATS_DIR")
        .map(|(_, v)| v)
        .unwrap_or_default();
    Path::new(&dir).join("ctl").join(format!("{pid}.sock"))
}

/// One request on the program's control socket; its answer.
fn ask(pid: u32, request: &str) -> String {
    ask_at(&control_socket(pid), request)
}

/// `dsmrun suspend|resume NAME` with the test's jobs directory.
fn job_request(dir: &Path, verb: &str, name: &str) -> String {
    let out = Command::new(dsmrun())
        .env("DSM_JOBS_DIR", dir.join("jobs"))
        .args([verb, name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "dsmrun {verb}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Suspends the job and lets its program run again (its gate stays closed) so that it
/// can answer a checkpoint request; returns the answer to `checkpoint image`.
fn suspend_and_checkpoint(dir: &Path, name: &str, pid: u32, image: &Path) -> String {
    job_request(dir, "suspend", name);
    // SAFETY: a signal to the test's own job.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    ask(pid, &format!("checkpoint {}", image.display()))
}

/// Kills the job (program first, so that dsmrun reaps it and its pid is free), keeping
/// the nodes.
fn kill_job(job: &mut Child, pid: u32) {
    // SAFETY: signals to the test's own processes.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for(
        || !Path::new(&format!("/proc/{pid}")).exists(),
        "the killed program to be gone",
    );
    let _ = job.kill();
    let _ = job.wait();
}

/// Kills the job after noting its environment; returns the job environment file.
fn kill_keeping_env(dir: &Path, job: &mut Child, pid: u32) -> PathBuf {
    let vars = job_vars(pid);
    kill_job(job, pid);
    job_env_file(dir, &vars, "stats2")
}

/// The job environment a restored process starts from: the old job's variables, with a
/// fresh statistics directory.
fn job_env_file(dir: &Path, vars: &[(String, String)], stats_name: &str) -> PathBuf {
    let stats = dir.join(stats_name);
    std::fs::create_dir_all(stats.join("ctl")).unwrap();
    let text: String = vars
        .iter()
        .map(|(k, v)| match k.as_str() {
            "DSM_STATS_DIR" => format!("{k}={}\n", stats.display()),
            _ => format!("{k}={v}\n"),
        })
        .collect();
    let path = dir.join(format!("{stats_name}.env"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `dsmrun restore-image IMAGE JOB_ENV`, output in `dir/NAME.txt`.
fn spawn_restore(dir: &Path, image: &Path, job_env: &Path, name: &str) -> Child {
    Command::new(dsmrun())
        .args(["restore-image"])
        .arg(image)
        .arg(job_env)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.txt"))).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a restored program (`ctl`: its control socket directory, which fills just
/// before its threads resume); its status and stderr.
fn wait_restored(mut child: Child, ctl: &Path, name: &str) -> (Option<i32>, String) {
    let start = Instant::now();
    let mut running = false;
    let status = loop {
        if !running && std::fs::read_dir(ctl).is_ok_and(|mut d| d.next().is_some()) {
            running = true;
            println!(
                "{name}: running again {:?} after restore-image",
                start.elapsed()
            );
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > WAIT_MAX {
            let _ = child.kill();
            panic!("the restored program did not finish within {WAIT_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// Restores `image` and waits for the program to end.
fn restore(dir: &Path, image: &Path, job_env: &Path, name: &str) -> (Option<i32>, String) {
    let child = spawn_restore(dir, image, job_env, name);
    wait_restored(child, &dir.join("stats2").join("ctl"), name)
}

/// One request on the control socket at `socket`; its answer.
fn ask_at(socket: &Path, request: &str) -> String {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(WAIT_MAX)).unwrap();
    (&s).write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn heapwalk_checkpointed_killed_and_restored_twice_prints_the_native_output() {
    let Some(exe) = compile_c("heapwalk", &[]) else {
        return skip("checkpoint_image", "no C compiler (apt-get install gcc)");
    };
    let native = Command::new(&exe).args(HEAPWALK_ARGS).output().unwrap();
    assert!(native.status.success());
    let _turn = heavy();
    let pool = pool();
    let dir = scratch("ckpt-heapwalk");
    let mut job = start_job(&pool, &dir, ("ckpt-hw", "8M"), &exe, &HEAPWALK_ARGS);
    let pid = program_of(job.id());
    std::thread::sleep(Duration::from_millis(1500));
    let image = dir.join("heapwalk.img");
    let answer = suspend_and_checkpoint(&dir, "ckpt-hw", pid, &image);
    println!("checkpoint: {answer}");
    assert!(answer.starts_with("ok checkpoint bytes="), "{answer}");
    assert!(answer.contains("threads=5"), "main and 4 workers: {answer}");
    assert!(!dir.join("heapwalk.img.tmp").exists());
    let vars = job_vars(pid);
    kill_job(&mut job, pid);
    let job_env = job_env_file(&dir, &vars, "stats2");

    // A damaged image is refused by the restarter, whatever byte is hit.
    let bytes = std::fs::read(&image).unwrap();
    for (what, at) in [
        ("header", 20),
        ("data", 4096 + 100),
        ("end", bytes.len() - 9),
    ] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        let bad = dir.join("damaged.img");
        std::fs::write(&bad, &damaged).unwrap();
        let (code, err) = restore(&dir, &bad, &job_env, "damaged-out");
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains("damaged"), "{what}: {err}");
    }

    // Restored, the program is an ordinary process of the job: checkpointed again while
    // it runs, killed, and restored from the second image, it still finishes right.
    let start = Instant::now();
    let mut child = spawn_restore(&dir, &image, &job_env, "out2");
    let socket = dir
        .join("stats2")
        .join("ctl")
        .join(format!("{}.sock", child.id()));
    wait_for(|| socket.exists(), "the restored program's control socket");
    println!(
        "out2: running again {:?} after restore-image",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let answer = ask_at(&socket, "suspend");
    assert!(answer.starts_with("ok suspended"), "{answer}");
    let image2 = dir.join("heapwalk2.img");
    let answer = ask_at(&socket, &format!("checkpoint {}", image2.display()));
    println!("second checkpoint: {answer}");
    assert!(answer.contains("threads=5"), "{answer}");
    let _ = child.kill();
    let _ = child.wait();
    let job_env3 = job_env_file(&dir, &vars, "stats3");
    let child = spawn_restore(&dir, &image2, &job_env3, "out3");
    let (code, err) = wait_restored(child, &dir.join("stats3").join("ctl"), "out3");
    assert_eq!(code, Some(0), "the twice restored heapwalk failed: {err}");
    let mut out = Vec::new();
    for f in ["out1.txt", "out2.txt", "out3.txt"] {
        out.extend(std::fs::read(dir.join(f)).unwrap());
    }
    assert!(
        out == native.stdout,
        "output differs from the native run: {}",
        String::from_utf8_lossy(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_holding_a_pipe_is_refused_and_runs_on() {
    let Some(exe) = compile_c("pipeholder", &[]) else {
        return skip("checkpoint_image", "no C compiler (apt-get install gcc)");
    };
    let native = Command::new(&exe).args(PIPEHOLDER_ARGS).output().unwrap();
    assert!(native.status.success());
    let _turn = heavy();
    let pool = pool();
    let dir = scratch("ckpt-pipe");
    let mut job = start_job(&pool, &dir, ("ckpt-pipe", "8M"), &exe, &PIPEHOLDER_ARGS);
    let pid = program_of(job.id());
    std::thread::sleep(Duration::from_millis(500));
    let image = dir.join("pipe.img");
    // Only a suspended process can be checkpointed, to an absolute path.
    let answer = ask(pid, &format!("checkpoint {}", image.display()));
    assert_eq!(
        answer,
        "error the process is not suspended: suspend it first"
    );
    let answer = ask(pid, "checkpoint relative.img");
    assert!(answer.contains("must be absolute"), "{answer}");
    let answer = suspend_and_checkpoint(&dir, "ckpt-pipe", pid, &image);
    assert!(
        answer.starts_with("error fd ")
            && answer.contains("is a pipe")
            && answer.contains("cannot save it"),
        "{answer}"
    );
    assert!(!image.exists() && !dir.join("pipe.img.tmp").exists());
    assert_eq!(ask(pid, "status"), "ok suspended");
    job_request(&dir, "resume", "ckpt-pipe");
    let st = job.wait().unwrap();
    let err = std::fs::read_to_string(dir.join("err1.txt")).unwrap_or_default();
    assert!(st.success(), "{st}: {err}");
    assert_eq!(
        std::fs::read(dir.join("out1.txt")).unwrap(),
        native.stdout,
        "output differs from the native run after a refused checkpoint"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn velvetg_checkpointed_killed_and_restored_assembles_the_native_contigs() {
    if !have("velveth")
        || !have("velvetg")
        || !Path::new(VELVET_EXAMPLE_READS).exists()
        || !have("xz")
    {
        return skip(
            "checkpoint_image velvetg",
            "velvet, velvet-example or xz is missing (apt-get install velvet velvet-example xz-utils)",
        );
    }
    let _turn = heavy();
    let dir = scratch("ckpt-velvet");
    let h = velveth_example(&dir);
    let native = dir.join("native");
    velvet_run_dir(&h, &native);
    assert!(Command::new("velvetg")
        .arg(&native)
        .output()
        .unwrap()
        .status
        .success());
    let pool = pool();
    let pooled = dir.join("pooled");
    velvet_run_dir(&h, &pooled);
    let args = [pooled.to_str().unwrap()];
    let velvetg = Path::new("/usr/bin/velvetg");
    let mut job = start_job(&pool, &dir, ("ckpt-velvet", "48M"), velvetg, &args);
    let pid = program_of(job.id());
    wait_for(|| rss_kib(pid) >= 32 << 10, "velvetg to fill its cache");
    let image = dir.join("velvetg.img");
    let answer = suspend_and_checkpoint(&dir, "ckpt-velvet", pid, &image);
    println!("checkpoint: {answer}");
    assert!(answer.starts_with("ok checkpoint bytes="), "{answer}");
    let job_env = kill_keeping_env(&dir, &mut job, pid);
    let (code, err) = restore(&dir, &image, &job_env, "out2");
    assert_eq!(code, Some(0), "the restored velvetg failed: {err}");
    for f in ["contigs.fa", "stats.txt"] {
        let a = std::fs::read(native.join(f)).unwrap();
        let b = std::fs::read(pooled.join(f)).unwrap();
        assert!(
            !a.is_empty() && a == b,
            "velvetg's {f} differs after a checkpoint and restart"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_process_with_a_child_is_refused_and_runs_on() {
    if !have("sh") || !have("sleep") {
        return skip(
            "checkpoint_image",
            "no sh or sleep (apt-get install dash coreutils)",
        );
    }
    let pool = pool();
    let dir = scratch("ckpt-child");
    let sh = Path::new("/bin/sh");
    let script = ["-c", "sleep 4; echo done"];
    let mut job = start_job(&pool, &dir, ("ckpt-child", "8M"), sh, &script);
    let pid = program_of(job.id());
    wait_for(
        || {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        },
        "the shell to start sleep",
    );
    let image = dir.join("sh.img");
    let answer = suspend_and_checkpoint(&dir, "ckpt-child", pid, &image);
    assert!(
        answer.starts_with("error the job has more than one process"),
        "{answer}"
    );
    assert!(!image.exists());
    job_request(&dir, "resume", "ckpt-child");
    let st = job.wait().unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out1.txt")).unwrap(),
        "done\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}
