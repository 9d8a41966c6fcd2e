//! Taking one checkpoint of a running job, and taking them periodically.

use super::dir;
use super::manifest::{file_sum, FileEntry, JobRecord, Manifest, FORMAT};
use super::{snapshot_name, CHAIN_MAX, IMAGE_NAME};
use crate::launcher::jobs;
use crate::launcher::suspend::{field, Controller};
use crate::transport::auth::Secret;
use crate::transport::tcp::TcpTransport;
use crate::transport::{NodeId, Transport};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to write its image (the heap is not in it: seconds).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a checkpoint waits for a program just started to run its runtime.
const RUNTIME_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to write its snapshot (at disk speed).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// One checkpoint attempt, for `--stats`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    /// Its number.
    pub sequence: u32,
    /// Whether it completed.
    pub ok: bool,
    /// Bytes it wrote (image and snapshots).
    pub bytes: u64,
    /// Time from the start to the rename, in ms.
    pub ms: u64,
    /// Time the program was held (quiesce to resume), in ms.
    pub paused_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Takes the checkpoints of one job into one directory.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    nodes: Vec<SocketAddr>,
    secret: Secret,
    job: JobRecord,
    verbose: bool,
    state: Mutex<State>,
    /// For a restarted job: ms from `dsmrun restart`'s start to the restored program
    /// running its runtime again.
    restart_to_running_ms: Mutex<Option<u64>>,
}

#[derive(Debug, Default)]
struct State {
    /// The last checkpoint this job completed (or restarted from): the chains to extend.
    previous: Option<Manifest>,
    /// The nodes' snapshot bases no longer match `previous` (a failed checkpoint moved
    /// them on): the next snapshots are full.
    force_full: bool,
    attempts: Vec<Attempt>,
}

/// What the program and the nodes wrote while the job was held.
struct Parts {
    image: String,
    snapshots: Vec<String>,
    paused_ms: u64,
}

impl Checkpointer {
    /// Checkpoints of the job `job` whose nodes are at `nodes`, into `dir`; `previous` is
    /// the checkpoint it restarted from, whose chains the next checkpoint extends.
    pub fn new(
        dir: PathBuf,
        (nodes, secret): (Vec<SocketAddr>, Secret),
        job: JobRecord,
        previous: Option<Manifest>,
        verbose: bool,
    ) -> Checkpointer {
        Checkpointer {
            dir,
            nodes,
            secret,
            job,
            verbose,
            state: Mutex::new(State {
                previous,
                ..State::default()
            }),
            restart_to_running_ms: Mutex::new(None),
        }
    }

    /// Takes a checkpoint of the job `controller` controls. On failure the job runs on,
    /// the unfinished checkpoint is removed and the previous one stays the newest.
    pub fn take(&self, controller: &Controller) -> Result<String, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let io = |e: std::io::Error| format!("{}: {e}", self.dir.display());
        dir::remove_unfinished(&self.dir).map_err(io)?;
        let seq = dir::list(&self.dir).map_err(io)?.next_sequence();
        let full = state.force_full
            || state
                .previous
                .as_ref()
                .is_none_or(|p| p.chains.iter().any(|c| c.len() >= CHAIN_MAX));
        let outcome = self.write(controller, seq, full, &state);
        let (manifest, paused_ms) = match outcome {
            Ok(done) => done,
            Err((e, paused_ms)) => {
                let _ = std::fs::remove_dir_all(dir::tmp_path(&self.dir, seq));
                // The nodes may have moved their bases on: the next snapshots are full.
                state.force_full = true;
                state.attempts.push(Attempt {
                    sequence: seq,
                    ok: false,
                    bytes: 0,
                    ms: started.elapsed().as_millis() as u64,
                    paused_ms,
                    error: Some(e.clone()),
                });
                return Err(format!(
                    "checkpoint {seq} failed: {e}; the job runs on and the previous \
                     checkpoint stays"
                ));
            }
        };
        let bytes: u64 = manifest
            .files()
            .filter(|f| f.checkpoint == seq)
            .map(|f| f.bytes)
            .sum();
        let pruned = dir::prune(&self.dir, &manifest).unwrap_or_default();
        let ms = started.elapsed().as_millis() as u64;
        state.previous = Some(manifest);
        state.force_full = false;
        state.attempts.push(Attempt {
            sequence: seq,
            ok: true,
            bytes,
            ms,
            paused_ms,
            error: None,
        });
        Ok(format!(
            "checkpoint {} {} bytes={bytes} ms={ms} paused_ms={paused_ms} pruned={}",
            dir::complete_path(&self.dir, seq).display(),
            if full { "full" } else { "incremental" },
            pruned.len()
        ))
    }

    /// Writes checkpoint `seq` and renames it complete; on failure, says why and how
    /// long the program was held.
    fn write(
        &self,
        controller: &Controller,
        seq: u32,
        full: bool,
        state: &State,
    ) -> Result<(Manifest, u64), (String, u64)> {
        let tmp = dir::tmp_path(&self.dir, seq);
        std::fs::create_dir(&tmp).map_err(|e| (format!("{}: {e}", tmp.display()), 0))?;
        let parts = self.held_parts(controller, &tmp, full)?;
        let paused = parts.paused_ms;
        let manifest = self
            .manifest(seq, &parts, state.previous.as_ref().filter(|_| !full))
            .map_err(|e| (e, paused))?;
        dir::commit(&self.dir, &manifest).map_err(|e| (format!("committing: {e}"), paused))?;
        Ok((manifest, paused))
    }

    /// Quiesces the job, has the program write its image and the nodes their snapshots
    /// into `tmp`, and resumes the job whatever happened.
    fn held_parts(
        &self,
        controller: &Controller,
        tmp: &Path,
        full: bool,
    ) -> Result<Parts, (String, u64)> {
        // A checkpoint asked for right after the start waits for the runtime to come up;
        // one that never does is refused by `image` below.
        controller.await_runtimes(RUNTIME_START_TIMEOUT);
        let held = Instant::now();
        controller.quiesce().map_err(|e| (e, 0))?;
        let image = self.image(controller, &tmp.join(IMAGE_NAME));
        let snapshots = image
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|_| self.snapshots(tmp, full));
        let resumed = controller.resume();
        let paused_ms = held.elapsed().as_millis() as u64;
        let fail = |e: String| (e, paused_ms);
        let image = image.map_err(fail)?;
        let snapshots = snapshots.map_err(fail)?;
        resumed.map_err(fail)?;
        Ok(Parts {
            image,
            snapshots,
            paused_ms,
        })
    }

    /// Has the program's one process write its image to `path`; returns its answer.
    fn image(&self, controller: &Controller, path: &Path) -> Result<String, String> {
        let (procs, sockets) = controller.processes();
        if procs.len() != 1 {
            return Err(format!(
                "the job has {} processes ({procs:?}): a checkpoint saves a program of one \
                 process only",
                procs.len()
            ));
        }
        let Some((pid, socket)) = sockets.first() else {
            return Err(format!(
                "process {procs:?} does not run the runtime (a statically linked program?): \
                 it cannot save its image"
            ));
        };
        let request = format!("checkpoint {}", path.display());
        match jobs::ask(socket, &request, IMAGE_TIMEOUT) {
            Ok(a) if a.starts_with("ok") => Ok(a),
            Ok(a) if a.is_empty() => Err(format!(
                "process {pid} closed its control connection without answering the \
                 checkpoint request"
            )),
            Ok(a) => Err(format!(
                "process {pid} cannot save its image: {}",
                a.trim_start_matches("error").trim()
            )),
            Err(e) => Err(format!("process {pid}: asking for its image: {e}")),
        }
    }

    /// Has every node write its snapshot into `tmp`, all at once (each node is its own
    /// process; the job is held meanwhile); returns their answers.
    fn snapshots(&self, tmp: &Path, full: bool) -> Result<Vec<String>, String> {
        let transport = TcpTransport::discover(&self.nodes, self.secret.clone(), SNAPSHOT_TIMEOUT)
            .map_err(|e| format!("reaching the nodes: {e}"))?;
        let tmp_name = tmp
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if full { "full" } else { "delta" };
        let one = |i: usize| -> Result<String, String> {
            let mut session = transport
                .connect()
                .map_err(|e| format!("reaching the nodes: {e}"))?;
            let call = format!("snapshot {kind} {tmp_name}/{}", snapshot_name(i));
            let answer = session
                .call(NodeId(i as u16), call.as_bytes())
                .map_err(|e| format!("node {i}'s snapshot: {e}"))?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..self.nodes.len())
                .map(|i| scope.spawn(move || one(i)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("a snapshot thread panicked".into()))
                })
                .collect()
        })
    }

    /// The manifest of checkpoint `seq`: its files checksummed, the chains extended
    /// from `base` (none: every snapshot is a full one).
    fn manifest(
        &self,
        seq: u32,
        parts: &Parts,
        base: Option<&Manifest>,
    ) -> Result<Manifest, String> {
        let tmp = dir::tmp_path(&self.dir, seq);
        let entry = |file: String| -> Result<FileEntry, String> {
            let (bytes, xxh3) = file_sum(&tmp.join(&file)).map_err(|e| format!("{file}: {e}"))?;
            Ok(FileEntry {
                checkpoint: seq,
                file,
                bytes,
                xxh3,
            })
        };
        let image = entry(IMAGE_NAME.to_string())?;
        if field(&parts.image, "bytes=") == 0 {
            return Err(format!(
                "the program's answer {:?} names no image",
                parts.image
            ));
        }
        let mut chains = Vec::with_capacity(parts.snapshots.len());
        for i in 0..parts.snapshots.len() {
            let mut chain = base
                .and_then(|b| b.chains.get(i).cloned())
                .unwrap_or_default();
            chain.push(entry(snapshot_name(i))?);
            chains.push(chain);
        }
        Ok(Manifest {
            format: FORMAT,
            sequence: seq,
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            job: self.job.clone(),
            chains,
            image,
        })
    }

    /// Notes how long the restart took until the program ran again.
    pub fn restarted_in(&self, ms: u64) {
        *self
            .restart_to_running_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ms);
    }

    /// The attempts so far, for `--stats`.
    pub fn stats_json(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let done: Vec<&Attempt> = state.attempts.iter().filter(|a| a.ok).collect();
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "taken": done.len(),
            "failed": state.attempts.len() - done.len(),
            "bytes_total": done.iter().map(|a| a.bytes).sum::<u64>(),
            "ms_total": done.iter().map(|a| a.ms).sum::<u64>(),
            "paused_ms_total": done.iter().map(|a| a.paused_ms).sum::<u64>(),
            "attempts": state.attempts,
            "restart_to_running_ms": *self
                .restart_to_running_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// Whether successes are reported on stderr (`-v`).
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}

/// Takes a checkpoint every `every` until dropped.
#[derive(Debug)]
pub struct Periodic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    /// Starts the thread that checkpoints the job of `controller` every `every`.
    pub fn start(
        checkpointer: Arc<Checkpointer>,
        controller: Arc<Controller>,
        every: Duration,
    ) -> Periodic {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dsmrun-checkpoint".into())
            .spawn(move || {
                let mut due = Instant::now() + every;
                while !stopping.load(Ordering::Relaxed) {
                    if Instant::now() < due {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    say(&checkpointer, checkpointer.take(&controller));
                    due = Instant::now() + every;
                }
            })
            .ok();
        Periodic { stop, thread }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reports a checkpoint on stderr: failures always, successes with `-v`.
pub fn say(checkpointer: &Checkpointer, outcome: Result<String, String>) {
    match outcome {
        Ok(a) if checkpointer.verbose() => eprintln!("dsmrun: {a}"),
        Ok(_) => {}
        Err(e) => eprintln!("dsmrun: {e}"),
    }
}
