//! Starting memory nodes as local processes (the embedded default of `dsmrun`, and the
//! integration tests), and owning the processes that stand for nodes on other hosts
//! (`ssh` or `srun`, started by `launcher::remote`).

use crate::node::{NodeSize, READY_PREFIX};
use crate::transport::auth::Secret;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Makes a child start with no signals blocked, whatever its launcher blocks (`dsmrun`
/// blocks the signals it forwards, and the mask survives `exec`).
pub fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: the hook runs between fork and exec and calls only sigemptyset and
    // sigprocmask, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Memory-node processes on this machine, or the `ssh`/`srun` processes that keep remote
/// nodes alive; killed and reaped on drop.
#[derive(Debug)]
pub struct LocalNodes {
    children: Vec<Option<Child>>,
    addrs: Vec<SocketAddr>,
    /// The host each node runs on, for messages; empty for nodes on this machine.
    hosts: Vec<String>,
    /// Ask with SIGTERM first on teardown (srun must cancel its job step itself).
    terminate_first: bool,
    /// Set while the remote nodes' stderr is passed on to ours; cleared at teardown, where
    /// their starters' farewells (srun's "task 0: Killed") are noise.
    forwarding: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Processes the remote nodes depend on (ssh connection masters), ended after them,
    /// and a directory of theirs removed then.
    keepers: Vec<Child>,
    keepers_dir: Option<std::path::PathBuf>,
}

impl LocalNodes {
    /// Starts `count` nodes of `node_bytes` each by running `exe node ...` (`exe` is the
    /// `dsmrun` binary), and waits until each listens.
    pub fn spawn(
        exe: &Path,
        count: usize,
        node_bytes: u64,
        secret: &Secret,
    ) -> io::Result<LocalNodes> {
        LocalNodes::spawn_sized(exe, count, NodeSize::of_memory(node_bytes), secret)
    }

    /// Starts `count` nodes of `size` each, as [`LocalNodes::spawn`].
    pub fn spawn_sized(
        exe: &Path,
        count: usize,
        size: NodeSize,
        secret: &Secret,
    ) -> io::Result<LocalNodes> {
        let plain = vec![crate::node::Snapshots::default(); count];
        LocalNodes::spawn_with_snapshots(exe, size, secret, &plain)
    }

    /// Starts one node of `size` per entry of `snapshots`, which says where each writes
    /// its checkpoint snapshots and which it loads at start.
    pub fn spawn_with_snapshots(
        exe: &Path,
        size: NodeSize,
        secret: &Secret,
        snapshots: &[crate::node::Snapshots],
    ) -> io::Result<LocalNodes> {
        let count = snapshots.len();
        let mut nodes = LocalNodes {
            children: Vec::with_capacity(count),
            addrs: Vec::with_capacity(count),
            hosts: Vec::new(),
            terminate_first: false,
            forwarding: None,
            keepers: Vec::new(),
            keepers_dir: None,
        };
        for (id, node_snapshots) in snapshots.iter().enumerate() {
            let mut cmd = Command::new(exe);
            cmd.args(["node", "--id", &id.to_string(), "--listen", "127.0.0.1:0"])
                .args(["--memory", &size.memory_bytes.to_string()])
                .args(["--span", &size.span_bytes.to_string(), "--die-with-parent"])
                .args(snapshot_args(node_snapshots))
                .env("DSM_SECRET", secret.as_str())
                // A node is not part of the program: no preloaded runtime, and its own
                // process group, so a Ctrl-C meant for the program does not kill the
                // memory the program is still writing back.
                .env_remove("LD_PRELOAD")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            unblock_signals_in_child(&mut cmd);
            let mut child = cmd.spawn().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting memory node {id} ({}): {e}", exe.display()),
                )
            })?;
            let stdout = child.stdout.take().expect("piped");
            nodes.children.push(Some(child));
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let addr = line
                .trim()
                .strip_prefix(READY_PREFIX)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    io::Error::other(format!("memory node {id} failed to start (said {line:?})"))
                })?;
            nodes.addrs.push(addr);
        }
        Ok(nodes)
    }

    /// Nodes this launcher did not start (`dsmrun --attach`): there is nothing to kill,
    /// reap or watch, only addresses.
    pub fn attached(addrs: Vec<SocketAddr>) -> LocalNodes {
        LocalNodes {
            children: addrs.iter().map(|_| None).collect(),
            addrs,
            hosts: Vec::new(),
            terminate_first: false,
            forwarding: None,
            keepers: Vec::new(),
            keepers_dir: None,
        }
    }

    /// Nodes on other hosts, each kept alive by a local process (`ssh`, `srun`) whose exit
    /// means the node is gone. `terminate_first`: teardown sends SIGTERM and waits a
    /// little before SIGKILL.
    pub fn remote(
        children: Vec<Child>,
        addrs: Vec<SocketAddr>,
        hosts: Vec<String>,
        terminate_first: bool,
        forwarding: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> LocalNodes {
        LocalNodes {
            children: children.into_iter().map(Some).collect(),
            addrs,
            hosts,
            terminate_first,
            forwarding: Some(forwarding),
            keepers: Vec::new(),
            keepers_dir: None,
        }
    }

    /// Keeps `children` (and `dir`) until the nodes are gone: see `keepers`.
    pub fn keep(&mut self, children: Vec<Child>, dir: std::path::PathBuf) {
        self.keepers.extend(children);
        self.keepers_dir = Some(dir);
    }

    /// The host node `i` runs on, if it is not this machine.
    pub fn host(&self, i: usize) -> Option<&str> {
        self.hosts.get(i).map(String::as_str)
    }

    /// The nodes' addresses, by node index.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Process id of node `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Kills node `i` (a failure-injection hook for tests and for teardown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether any node exited on its own; returns its index and status.
    pub fn exited(&mut self) -> Option<(usize, std::process::ExitStatus)> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(child) = c {
                if let Ok(Some(st)) = child.try_wait() {
                    *c = None;
                    return Some((i, st));
                }
            }
        }
        None
    }
}

impl Drop for LocalNodes {
    fn drop(&mut self) {
        if let Some(f) = &self.forwarding {
            f.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        if self.terminate_first {
            terminate_all(&mut self.children, std::time::Duration::from_secs(5));
        }
        for i in 0..self.children.len() {
            self.kill(i);
        }
        for mut c in self.keepers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.keepers_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A node's command-line options for its part in checkpoints: `--snapshot-dir DIR` and
/// `--restore FILE...`, as `s` says (for nodes started here and over ssh or srun).
pub(crate) fn snapshot_args(s: &crate::node::Snapshots) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    if let Some(d) = &s.dir {
        args.push("--snapshot-dir".into());
        args.push(d.clone().into_os_string());
    }
    if !s.restore.is_empty() {
        args.push("--restore".into());
        args.extend(s.restore.iter().map(|p| p.clone().into_os_string()));
    }
    args
}

/// SIGTERM to every child still running, then reaps those that exit within `grace`.
pub fn terminate_all(children: &mut [Option<Child>], grace: std::time::Duration) {
    for c in children.iter().flatten() {
        // SAFETY: signalling a child we started and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        let mut running = 0;
        for slot in children.iter_mut() {
            if let Some(c) = slot {
                match c.try_wait() {
                    Ok(None) => running += 1,
                    _ => *slot = None,
                }
            }
        }
        if running == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
