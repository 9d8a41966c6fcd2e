//! Suspending and resuming a running job from `dsmrun`: every process of the program
//! empties its cache through its control socket (dirty pages home, pages dropped, memory
//! given back to the host), then all of them are stopped with SIGSTOP; resuming sends
//! SIGCONT and reopens their fault paths. The nodes keep running and keep the data.
//!
//! Requests come from `dsmrun suspend/resume JOB` (the job's socket, [`super::jobs`]) and
//! from SIGTSTP/SIGCONT sent to `dsmrun` (a batch system's preemption, or Ctrl-Z).

use super::jobs;
use crate::suspend::control::CTL_DIR;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to empty its cache.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(300);

/// The job's suspend/resume state, shared by the request thread and the signal thread.
#[derive(Debug)]
pub struct Controller {
    program: u32,
    ctl_dir: PathBuf,
    /// Serialises requests; true while suspended.
    suspended: Mutex<bool>,
    /// Report signal-driven suspends and resumes on stderr (not with -q).
    verbose: bool,
    /// Takes checkpoints on `dsmrun checkpoint JOB` (a job run with --checkpoint-dir).
    checkpointer: std::sync::OnceLock<Arc<super::checkpoint::Checkpointer>>,
}

impl Controller {
    /// Controls the job whose program runs as `program`, whose processes' control
    /// sockets are in `stats_dir`'s [`CTL_DIR`].
    pub fn new(program: u32, stats_dir: &Path, verbose: bool) -> Controller {
        Controller {
            program,
            ctl_dir: stats_dir.join(CTL_DIR),
            suspended: Mutex::new(false),
            verbose,
            checkpointer: Default::default(),
        }
    }

    /// Lets `dsmrun checkpoint JOB` take checkpoints with `checkpointer`.
    pub fn checkpoint_with(&self, checkpointer: Arc<super::checkpoint::Checkpointer>) {
        let _ = self.checkpointer.set(checkpointer);
    }

    /// Reports the outcome of a signal-driven request on stderr (errors always).
    pub fn say(&self, outcome: Result<String, String>) {
        match outcome {
            Ok(a) if self.verbose => eprintln!("dsmrun: {a}"),
            Ok(_) => {}
            Err(e) => eprintln!("dsmrun: {e}"),
        }
    }

    /// Suspends the job; the answer says what was released.
    pub fn suspend(&self) -> Result<String, String> {
        self.quiesce_then(true)
    }

    /// Closes the fault paths and writes every dirty page home as
    /// [`Controller::suspend`] does, but keeps the caches (clean) and leaves the
    /// processes running: their control threads answer a checkpoint request then, and
    /// the job goes on with its caches after [`Controller::resume`].
    pub fn quiesce(&self) -> Result<String, String> {
        self.quiesce_then(false)
    }

    /// Suspends (`stop`: the caches emptied, the processes stopped) or quiesces.
    fn quiesce_then(&self, stop: bool) -> Result<String, String> {
        let mut suspended = self.suspended.lock().unwrap_or_else(|e| e.into_inner());
        if *suspended {
            return Err("already suspended".into());
        }
        let start = Instant::now();
        let procs = job_processes(self.program);
        if procs.is_empty() {
            return Err("the program has exited".into());
        }
        let rss_before = rss_bytes(&procs);
        // A Ctrl-Z already stopped them (the terminal's SIGTSTP): they must run to empty
        // their caches.
        signal_all(&procs, libc::SIGCONT);
        let sockets = self.sockets(&procs);
        let request = if stop { "suspend" } else { "quiesce" };
        let (dropped, written) = empty_caches(&sockets, request)?;
        if stop {
            // Those started meanwhile are stopped too (they have their caches, still).
            signal_all(&job_processes(self.program), libc::SIGSTOP);
        }
        *suspended = true;
        let rss_after = rss_bytes(&procs);
        Ok(format!(
            "suspended processes={} emptied={} dropped_pages={dropped} written_pages={written} \
             rss_before_kib={} rss_after_kib={} ms={}",
            procs.len(),
            sockets.len(),
            rss_before >> 10,
            rss_after >> 10,
            start.elapsed().as_millis()
        ))
    }

    /// The program's processes, and the control socket of each that runs the runtime.
    pub fn processes(&self) -> (BTreeSet<u32>, Vec<(u32, PathBuf)>) {
        let procs = job_processes(self.program);
        let sockets = self.sockets(&procs);
        (procs, sockets)
    }

    /// Waits up to `limit` for every process of the job to run its runtime (a program
    /// just started, or whose nodes are on other hosts, may not have connected yet); says
    /// whether they all do.
    pub fn await_runtimes(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (procs, sockets) = self.processes();
            if !procs.is_empty() && sockets.len() == procs.len() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Resumes a suspended job.
    pub fn resume(&self) -> Result<String, String> {
        let mut suspended = self.suspended.lock().unwrap_or_else(|e| e.into_inner());
        if !*suspended {
            return Err("not suspended".into());
        }
        let procs = job_processes(self.program);
        signal_all(&procs, libc::SIGCONT);
        let mut failed = Vec::new();
        for (pid, socket) in self.sockets(&procs) {
            match jobs::ask(&socket, "resume", RELEASE_TIMEOUT) {
                Ok(a) if a.starts_with("ok") => {}
                _ => failed.push(pid),
            }
        }
        *suspended = false;
        if !failed.is_empty() {
            return Err(format!(
                "processes {failed:?} did not answer the resume (they may have exited)"
            ));
        }
        Ok(format!("resumed processes={}", procs.len()))
    }

    /// Whether the job is suspended.
    pub fn is_suspended(&self) -> bool {
        *self.suspended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The control sockets of `procs` (processes running the runtime).
    fn sockets(&self, procs: &BTreeSet<u32>) -> Vec<(u32, PathBuf)> {
        procs
            .iter()
            .map(|&pid| (pid, self.ctl_dir.join(format!("{pid}.sock"))))
            .filter(|(_, s)| s.exists())
            .collect()
    }

    /// Answers requests from `dsmrun suspend/resume/status` on `listener` (a thread that
    /// lives as long as `dsmrun`).
    pub fn serve(self: &Arc<Self>, listener: UnixListener) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("dsmrun-control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let mut line = String::new();
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    if BufReader::new(&stream).read_line(&mut line).is_err() {
                        continue;
                    }
                    let answer = match line.trim() {
                        "suspend" => me.suspend(),
                        "resume" => me.resume(),
                        "checkpoint" => match me.checkpointer.get() {
                            Some(c) => c.take(&me),
                            None => Err("the job was started without --checkpoint-dir".into()),
                        },
                        "status" => Ok(if me.is_suspended() {
                            "suspended"
                        } else {
                            "running"
                        }
                        .into()),
                        other => Err(format!("unknown request {other:?}")),
                    };
                    let text = match answer {
                        Ok(a) => format!("ok {a}\n"),
                        Err(e) => format!("error {e}\n"),
                    };
                    let _ = (&stream).write_all(text.as_bytes());
                }
            });
    }
}

/// Asks every process to write its dirty pages home and to empty its cache (`request`
/// `suspend`) or keep it (`quiesce`); on a failure, resumes those that did and says
/// which process failed and why. Returns the pages dropped and written home.
fn empty_caches(sockets: &[(u32, PathBuf)], request: &str) -> Result<(u64, u64), String> {
    let mut done = Vec::new();
    let (mut dropped, mut written) = (0u64, 0u64);
    for (pid, socket) in sockets {
        match jobs::ask(socket, request, RELEASE_TIMEOUT) {
            Ok(a) if a.starts_with("ok") => {
                dropped += field(&a, "dropped=");
                written += field(&a, "written=");
                done.push(socket.clone());
            }
            outcome => {
                for s in &done {
                    let _ = jobs::ask(s, "resume", RELEASE_TIMEOUT);
                }
                let why = match outcome {
                    Ok(a) => a.trim_start_matches("error").trim().to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(format!(
                    "process {pid} could not write its cache home ({why}); the job runs on"
                ));
            }
        }
    }
    Ok((dropped, written))
}

/// The number after `key` in an answer line (0 if absent).
pub(crate) fn field(answer: &str, key: &str) -> u64 {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `root` and its descendants, from /proc.
pub fn job_processes(root: u32) -> BTreeSet<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent(pid) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut procs = BTreeSet::new();
    if parent_of.iter().any(|&(p, _)| p == root) {
        procs.insert(root);
    }
    loop {
        let before = procs.len();
        for &(pid, ppid) in &parent_of {
            if procs.contains(&ppid) {
                procs.insert(pid);
            }
        }
        if procs.len() == before {
            return procs;
        }
    }
}

/// A process's parent, from /proc/PID/stat (the command may hold spaces and parens).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of `procs`, in bytes (VmRSS of each).
pub fn rss_bytes(procs: &BTreeSet<u32>) -> u64 {
    procs
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

fn signal_all(procs: &BTreeSet<u32>, sig: libc::c_int) {
    for &pid in procs {
        // SAFETY: kill with a pid of the job's processes and a valid signal.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_through_proc() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let procs = job_processes(child.id());
        signal_all(&procs, libc::SIGKILL);
        let _ = child.wait();
        assert!(procs.contains(&child.id()));
        assert_eq!(procs.len(), 2, "sh and its sleep: {procs:?}");
        assert!(job_processes(u32::MAX - 1).is_empty());
    }

    #[test]
    fn answer_fields_are_read() {
        assert_eq!(field("ok suspended dropped=12 written=3", "written="), 3);
        assert_eq!(field("ok", "written="), 0);
    }
}
