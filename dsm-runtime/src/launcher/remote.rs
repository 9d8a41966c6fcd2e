//! Memory nodes on other hosts: a host list (`--hosts`, `--hostfile`) started over ssh, or
//! the hosts of a Slurm allocation started as job steps with `srun --overlap`.
//!
//! Either way each node is `dsmrun node` on its host, listening on the host's address
//! with port 0, and names its port on its READY line, which comes back through the ssh or
//! srun process's stdout. That local process stands for the node: its exit means the
//! node, its host or the connection is gone; ending it ends the node (ssh: the node reads
//! the secret on stdin and exits when stdin closes, and sshd's session is its parent for
//! `--die-with-parent`; srun: SIGTERM cancels the step). The secret never appears on a
//! command line: ssh carries it on stdin, srun in the step's environment (DSM_SECRET,
//! which srun propagates). All nodes are started at once and awaited together, under
//! one deadline, so a slow or dead host costs the deadline once, not once per node.

use super::LaunchError;
use crate::launch::{unblock_signals_in_child, LocalNodes};
use crate::node::{NodeSize, Snapshots, READY_PREFIX};
use crate::transport::auth::Secret;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long every node has, from the moment all were started, to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// ssh's connect timeout: an unreachable host fails well within [`READY_TIMEOUT`].
const SSH_CONNECT_TIMEOUT_S: u32 = 5;
/// ssh's keep-alive: a host that dies mid-job is noticed within about 3 x 2 s.
const SSH_ALIVE_INTERVAL_S: u32 = 2;
const SSH_ALIVE_COUNT: u32 = 3;
/// `srun --overlap` appeared in Slurm 20.11.
const SRUN_OVERLAP_SINCE: (u32, u32) = (20, 11);
/// Lines of a starter's stderr kept for the error message.
const STDERR_LINES_KEPT: usize = 8;

/// A host and how many memory nodes it may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Name or address, as ssh and Slurm know it.
    pub name: String,
    /// Memory nodes it may run.
    pub slots: usize,
}

/// Parses `--hosts h1,h2:4` (a host without `:N` has one slot).
pub fn parse_host_list(text: &str) -> Result<Vec<Host>, String> {
    let mut hosts = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        add_host(&mut hosts, host_with_slots(item)?);
    }
    if hosts.is_empty() {
        return Err(format!(
            "--hosts {text:?}: no host given (e.g. --hosts h1,h2:4)"
        ));
    }
    Ok(hosts)
}

fn host_with_slots(item: &str) -> Result<Host, String> {
    // `h:N`, but not an IPv6 address's colons.
    match item.rsplit_once(':') {
        Some((name, n)) if !name.contains(':') => Ok(Host {
            name: name.to_string(),
            slots: slots(n).map_err(|e| format!("{item}: {e}"))?,
        }),
        _ => Ok(Host {
            name: item.to_string(),
            slots: 1,
        }),
    }
}

fn slots(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a number of slots (1 or more)")),
    }
}

/// A host named twice gets the slots of both lines, as Open MPI does.
fn add_host(hosts: &mut Vec<Host>, host: Host) {
    match hosts.iter_mut().find(|h| h.name == host.name) {
        Some(h) => h.slots += host.slots,
        None => hosts.push(host),
    }
}

/// Parses a hostfile: Open MPI's `host slots=N [max_slots=M]` lines and MPICH's `host:N`
/// lines, `#` comments and blank lines. A host without a count has one slot.
pub fn parse_hostfile(text: &str) -> Result<Vec<Host>, String> {
    let mut hosts = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", no + 1);
        let mut words = line.split_whitespace();
        let mut host = host_with_slots(words.next().unwrap_or_default()).map_err(at)?;
        for word in words {
            match word.split_once('=') {
                Some(("slots", n)) => host.slots = slots(n).map_err(at)?,
                // A ceiling for oversubscription in Open MPI; nothing to do here.
                Some(("max_slots" | "max-slots", n)) => {
                    slots(n).map_err(at)?;
                }
                _ => {
                    return Err(at(format!(
                        "{word:?}: expected `host slots=N` (Open MPI) or `host:N` (MPICH)"
                    )))
                }
            }
        }
        add_host(&mut hosts, host);
    }
    if hosts.is_empty() {
        return Err("no host in it (lines like `node1 slots=4` or `node1:4`)".into());
    }
    Ok(hosts)
}

/// Which host each of `n` nodes runs on: interleaved across hosts first (node 0 on the
/// first host, node 1 on the second, ...), each host up to its slots, so that pages
/// placed round-robin over the nodes also spread over the hosts.
pub fn spread(hosts: &[Host], n: usize) -> Result<Vec<usize>, String> {
    let total: usize = hosts.iter().map(|h| h.slots).sum();
    if n > total {
        return Err(format!(
            "-n {n} needs {n} slots but the hosts offer {total} ({}); give more slots \
             (`host slots=N` in a hostfile, host:N in --hosts) or fewer nodes",
            hosts
                .iter()
                .map(|h| format!("{}:{}", h.name, h.slots))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut left: Vec<usize> = hosts.iter().map(|h| h.slots).collect();
    let mut out = Vec::with_capacity(n);
    let mut h = 0;
    while out.len() < n {
        if left[h] > 0 {
            left[h] -= 1;
            out.push(h);
        }
        h = (h + 1) % hosts.len();
    }
    Ok(out)
}

/// How nodes reach their hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Starter {
    /// `ssh HOST dsmrun node ...`.
    Ssh,
    /// `srun --overlap --nodelist HOST dsmrun node ...` inside an allocation.
    Srun,
}

/// Where the nodes go.
#[derive(Clone, Debug)]
pub struct RemotePlan {
    /// ssh or srun.
    pub starter: Starter,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The address each host's nodes listen on (by host index).
    pub addrs: Vec<IpAddr>,
    /// The host of each node (by node index).
    pub node_hosts: Vec<usize>,
    /// The dsmrun binary on the hosts.
    pub remote_exe: PathBuf,
}

impl RemotePlan {
    /// Nodes over ssh on `hosts`, each listening on the address its name resolves to here.
    pub fn ssh(hosts: Vec<Host>, n: usize, remote_exe: PathBuf) -> Result<RemotePlan, String> {
        let node_hosts = spread(&hosts, n)?;
        let addrs = hosts
            .iter()
            .map(|h| resolve(&h.name))
            .collect::<Result<_, _>>()?;
        Ok(RemotePlan {
            starter: Starter::Ssh,
            hosts,
            addrs,
            node_hosts,
            remote_exe,
        })
    }

    /// Nodes as steps of the Slurm allocation this process runs in, or `None` outside one.
    pub fn slurm(n: usize, remote_exe: PathBuf) -> Result<Option<RemotePlan>, String> {
        let (Ok(_), Ok(nodelist)) = (
            std::env::var("SLURM_JOB_ID"),
            std::env::var("SLURM_JOB_NODELIST"),
        ) else {
            return Ok(None);
        };
        check_srun_overlap()?;
        let names = command_lines("scontrol", &["show", "hostnames", &nodelist])?;
        if names.is_empty() {
            return Err(format!(
                "scontrol found no host in SLURM_JOB_NODELIST={nodelist}"
            ));
        }
        let cpus = std::env::var("SLURM_JOB_CPUS_PER_NODE")
            .ok()
            .and_then(|t| expand_cpus_per_node(&t))
            .filter(|c| c.len() == names.len())
            .unwrap_or_else(|| vec![1; names.len()]);
        let hosts: Vec<Host> = names
            .into_iter()
            .zip(cpus)
            .map(|(name, slots)| Host { name, slots })
            .collect();
        let node_hosts = spread(&hosts, n).map_err(|_| {
            let total: usize = hosts.iter().map(|h| h.slots).sum();
            format!(
                "the Slurm allocation is too small for -n {n}: {} host(s) with {total} CPUs \
                 in all ({nodelist}), and dsmrun runs one memory node per allocated CPU; \
                 ask for more (e.g. salloc -N {}) or lower -n",
                hosts.len(),
                hosts.len() * n.div_ceil(total.max(1))
            )
        })?;
        let node_addrs = slurm_node_addrs(&nodelist);
        let addrs = hosts
            .iter()
            .map(
                |h| match node_addrs.iter().find(|(name, _)| *name == h.name) {
                    Some((_, a)) => Ok(*a),
                    None => resolve(&h.name),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(Some(RemotePlan {
            starter: Starter::Srun,
            hosts,
            addrs,
            node_hosts,
            remote_exe,
        }))
    }
}

/// `2(x3),4` -> [2, 2, 2, 4] (Slurm's SLURM_JOB_CPUS_PER_NODE).
fn expand_cpus_per_node(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => (n, rest.strip_suffix(')')?.parse().ok()?),
            None => (part, 1),
        };
        let n: usize = n.trim().parse().ok()?;
        out.extend(std::iter::repeat_n(n, times));
    }
    Some(out)
}

fn resolve(name: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| format!("host {name}: cannot resolve its address here: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| format!("host {name}: no address"))
}

/// Runs a command and returns its stdout's lines, or an error naming it.
fn command_lines(program: &str, args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {program}: {e} (is Slurm's client installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn check_srun_overlap() -> Result<(), String> {
    let lines = command_lines("srun", &["--version"])?;
    let text = lines.first().cloned().unwrap_or_default();
    let version = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| {
            let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .ok_or_else(|| format!("srun --version said {text:?}: not a Slurm version"))?;
    if version < SRUN_OVERLAP_SINCE {
        return Err(format!(
            "this Slurm is {text}; dsmrun starts memory nodes as job steps with \
             `srun --overlap`, which needs Slurm 20.11 or later: use --hosts/--hostfile \
             (ssh) instead"
        ));
    }
    Ok(())
}

/// NodeName -> NodeAddr for the allocation's hosts (`scontrol -o show node LIST`); empty
/// if scontrol cannot say (the names are then resolved).
fn slurm_node_addrs(nodelist: &str) -> Vec<(String, IpAddr)> {
    let lines = command_lines("scontrol", &["-o", "show", "node", nodelist]).unwrap_or_default();
    lines
        .iter()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k).map(str::to_string))
            };
            Some((field("NodeName=")?, field("NodeAddr=")?.parse().ok()?))
        })
        .collect()
}

/// Quotes `s` for a POSIX shell (ssh hands its command line to the remote user's shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One started node: its starter process and the last lines of its stderr.
struct Pending {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Starts every node of `plan` at once and waits, up to [`READY_TIMEOUT`], for all to
/// report ready. On any failure everything started is stopped, and the error names the
/// host and says what to do.
pub fn start(
    plan: &RemotePlan,
    size: NodeSize,
    secret: &Secret,
    snapshots: &[Snapshots],
) -> Result<LocalNodes, LaunchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let masters = match plan.starter {
        Starter::Ssh => Some(SshMasters::open(plan, deadline)?),
        Starter::Srun => None,
    };
    let forward = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Result<SocketAddr, String>)>();
    let mut pending: Vec<Pending> = Vec::with_capacity(plan.node_hosts.len());
    let fail = |pending: Vec<Pending>, msg: String| -> LaunchError {
        stop(pending, plan);
        LaunchError::Remote(msg)
    };
    for (id, &h) in plan.node_hosts.iter().enumerate() {
        let host = &plan.hosts[h].name;
        let listen = SocketAddr::new(plan.addrs[h], 0);
        let control = masters.as_ref().map(|m| m.socket(h));
        let node = NodeArgs {
            id,
            listen,
            size,
            snapshots: snapshots.get(id),
        };
        let mut cmd = starter_command(plan, host, control, &node, secret);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let what = match plan.starter {
                    Starter::Ssh => "ssh (apt-get install openssh-client)",
                    Starter::Srun => "srun",
                };
                return Err(fail(pending, format!("host {host}: starting {what}: {e}")));
            }
        };
        if plan.starter == Starter::Ssh {
            // The secret travels on the session's stdin; the pipe stays open (in `child`)
            // for as long as the node may live.
            // A failed write means ssh died at once: its status and stderr say why below.
            let _ = child
                .stdin
                .as_mut()
                .map(|s| writeln!(s, "{}", secret.as_str()).and_then(|()| s.flush()));
        }
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let kept = Arc::new(Mutex::new(Vec::new()));
        read_ready(id, stdout, tx.clone());
        keep_stderr(id, host.clone(), stderr, kept.clone(), forward.clone());
        pending.push(Pending {
            child,
            stderr: kept,
        });
    }
    drop(tx);
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; pending.len()];
    let mut ready = 0;
    while ready < addrs.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Ok(addr))) => {
                addrs[i] = Some(addr);
                ready += 1;
            }
            Ok((i, Err(said))) => {
                let msg = failure_message(plan, i, &mut pending[i], &said);
                return Err(fail(pending, msg));
            }
            Err(_) => {
                let late: Vec<String> = addrs
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.is_none())
                    .map(|(i, _)| plan.hosts[plan.node_hosts[i]].name.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let msg = format!(
                    "host {}: memory nodes did not report ready within {} s (is the host up, \
                     and dsmrun there the same version?)",
                    late.join(", host "),
                    READY_TIMEOUT.as_secs()
                );
                return Err(fail(pending, msg));
            }
        }
    }
    forward.store(true, Ordering::Relaxed);
    let hosts = plan
        .node_hosts
        .iter()
        .map(|&h| plan.hosts[h].name.clone())
        .collect();
    let mut nodes = LocalNodes::remote(
        pending.into_iter().map(|p| p.child).collect(),
        addrs.into_iter().map(|a| a.expect("all ready")).collect(),
        hosts,
        plan.starter == Starter::Srun,
        forward,
    );
    if let Some(m) = masters {
        let (children, dir) = m.into_parts();
        nodes.keep(children, dir);
    }
    Ok(nodes)
}

/// One ssh connection per host, which every node's session on that host shares
/// (OpenSSH's ControlMaster): a key exchange per host instead of one per node, which on
/// a loaded machine is most of the start-up time. A master that ends takes its sessions
/// with it, so a host that dies is still seen as its nodes' ssh processes exiting.
struct SshMasters {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl SshMasters {
    fn open(plan: &RemotePlan, deadline: Instant) -> Result<SshMasters, LaunchError> {
        let dir = std::env::temp_dir().join(format!("dsmrun-ssh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LaunchError::Remote(format!("creating {}: {e}", dir.display())))?;
        let mut m = SshMasters {
            dir,
            children: Vec::new(),
        };
        let used: std::collections::BTreeSet<usize> = plan.node_hosts.iter().copied().collect();
        for h in 0..plan.hosts.len() {
            if !used.contains(&h) {
                m.children.push(None);
                continue;
            }
            let mut cmd = ssh_command(&plan.hosts[h].name, &m.socket(h), true);
            cmd.arg("-N")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            detach(&mut cmd, libc::SIGKILL);
            let child = cmd.spawn().map_err(|e| {
                LaunchError::Remote(format!(
                    "host {}: starting ssh (apt-get install openssh-client): {e}",
                    plan.hosts[h].name
                ))
            })?;
            m.children.push(Some(child));
        }
        // Up when its control socket exists; gone when ssh exits (its stderr says why).
        loop {
            let mut waiting = None;
            let dir = m.dir.clone();
            for (h, c) in m.children.iter_mut().enumerate() {
                let Some(child) = c else { continue };
                if let Ok(Some(st)) = child.try_wait() {
                    let mut text = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut text);
                    }
                    let host = &plan.hosts[h].name;
                    return Err(LaunchError::Remote(format!(
                        "host {host}: ssh failed ({}): {}; check that the host is up, runs \
                         sshd and accepts your key without a password (ssh -o \
                         BatchMode=yes {host} true)",
                        describe(st),
                        text.trim().replace('\n', " / ")
                    )));
                }
                if waiting.is_none() && !dir.join(format!("h{h}")).exists() {
                    waiting = Some(h);
                }
            }
            let Some(h) = waiting else { return Ok(m) };
            if Instant::now() >= deadline {
                return Err(LaunchError::Remote(format!(
                    "host {}: no ssh connection within {} s (is the host up?)",
                    plan.hosts[h].name,
                    READY_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn socket(&self, host: usize) -> PathBuf {
        self.dir.join(format!("h{host}"))
    }

    fn into_parts(mut self) -> (Vec<Child>, PathBuf) {
        let children = std::mem::take(&mut self.children)
            .into_iter()
            .flatten()
            .collect();
        (children, std::mem::take(&mut self.dir))
    }
}

impl Drop for SshMasters {
    fn drop(&mut self) {
        for mut c in self.children.drain(..).flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// ssh to `host` with the options every connection of a job uses: the master of the
/// connection, or a session through it (`control` is the master's socket).
fn ssh_command(host: &str, control: &Path, master: bool) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg(if master { "-M" } else { "-oControlMaster=no" })
        .arg("-S")
        .arg(control)
        .args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={SSH_CONNECT_TIMEOUT_S}"))
        .arg("-o")
        .arg(format!("ServerAliveInterval={SSH_ALIVE_INTERVAL_S}"))
        .arg("-o")
        .arg(format!("ServerAliveCountMax={SSH_ALIVE_COUNT}"))
        .args(["-T", "-x", host]);
    cmd
}

/// A starter is not part of the program: no preloaded runtime, its own process group (a
/// Ctrl-C meant for the program must not cut the nodes off), no blocked signals, and
/// `deathsig` when dsmrun dies.
fn detach(cmd: &mut Command, deathsig: i32) {
    cmd.env_remove("LD_PRELOAD").process_group(0);
    unblock_signals_in_child(cmd);
    // SAFETY: prctl with integer arguments is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, deathsig);
            Ok(())
        });
    }
}

/// What one node is started with.
struct NodeArgs<'a> {
    id: usize,
    listen: SocketAddr,
    size: NodeSize,
    /// Where it writes its checkpoint snapshots and which it loads at start: paths in the
    /// checkpoint directory, which must be at the same path on its host (a shared file
    /// system).
    snapshots: Option<&'a Snapshots>,
}

impl NodeArgs<'_> {
    /// `dsmrun node ...` without the secret.
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "node".to_string(),
            "--id".into(),
            self.id.to_string(),
            "--listen".into(),
            self.listen.to_string(),
            "--memory".into(),
            self.size.memory_bytes.to_string(),
            "--span".into(),
            self.size.span_bytes.to_string(),
            "--die-with-parent".into(),
        ];
        if let Some(s) = self.snapshots {
            let paths = crate::launch::snapshot_args(s);
            args.extend(paths.iter().map(|a| a.to_string_lossy().into_owned()));
        }
        args
    }
}

fn starter_command(
    plan: &RemotePlan,
    host: &str,
    control: Option<PathBuf>,
    node: &NodeArgs<'_>,
    secret: &Secret,
) -> Command {
    let exe = plan.remote_exe.to_string_lossy().into_owned();
    let id = node.id;
    let node_args = node.to_args();
    let mut cmd;
    let deathsig;
    match plan.starter {
        Starter::Ssh => {
            cmd = ssh_command(host, &control.unwrap_or_default(), false);
            cmd.arg("--");
            let mut line = format!("exec {}", shell_quote(&exe));
            for a in node_args
                .iter()
                .map(String::as_str)
                .chain(["--secret-stdin"])
            {
                line.push(' ');
                line.push_str(&shell_quote(a));
            }
            cmd.arg(line).stdin(Stdio::piped());
            deathsig = libc::SIGKILL;
        }
        Starter::Srun => {
            cmd = Command::new("srun");
            cmd.args([
                "--overlap",
                "--nodes=1",
                "--ntasks=1",
                "--input=none",
                "--quiet",
            ])
            .arg(format!("--nodelist={host}"))
            .arg(format!("--job-name=dsm-node-{id}"))
            .arg(&exe)
            .args(&node_args)
            .env("DSM_SECRET", secret.as_str())
            .stdin(Stdio::null());
            // srun ends its step when asked politely; SIGKILL would leave it running.
            deathsig = libc::SIGTERM;
        }
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    detach(&mut cmd, deathsig);
    cmd
}

/// Reads node `id`'s stdout until its READY line (sent as `Ok(addr)`) or its end (`Err`
/// with the last line seen), then drains it.
fn read_ready(
    id: usize,
    stdout: std::process::ChildStdout,
    tx: mpsc::Sender<(usize, Result<SocketAddr, String>)>,
) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut last = String::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(addr) = line
                .trim()
                .strip_prefix(READY_PREFIX)
                .and_then(|a| a.parse().ok())
            {
                let _ = tx.send((id, Ok(addr)));
                for _ in lines {}
                return;
            }
            last = line;
        }
        let _ = tx.send((id, Err(last)));
    });
}

/// Keeps the last lines of node `id`'s stderr (for an error at start), and once the job
/// runs, passes them on to ours, naming the node and host.
fn keep_stderr(
    id: usize,
    host: String,
    stderr: std::process::ChildStderr,
    kept: Arc<Mutex<Vec<String>>>,
    forward: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if forward.load(Ordering::Relaxed) {
                eprintln!("dsmrun: node {id} on {host}: {line}");
            }
            let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
            if k.len() == STDERR_LINES_KEPT {
                k.remove(0);
            }
            k.push(line);
        }
    });
}

/// What went wrong with node `i`, which ended before it was ready.
fn failure_message(plan: &RemotePlan, i: usize, p: &mut Pending, said: &str) -> String {
    let host = &plan.hosts[plan.node_hosts[i]].name;
    // Its stderr reader needs a moment to see the last lines after the exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        match p.child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut lines = p.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !said.is_empty() {
        lines.push(said.to_string());
    }
    let text = lines.join(" / ");
    let code = status.and_then(|s| s.code());
    let exe = plan.remote_exe.display();
    match (&plan.starter, code) {
        (_, Some(126 | 127)) => format!(
            "host {host}: no dsmrun at {exe} there ({text}); install it at the same path on \
             every host or pass --remote-dsmrun PATH"
        ),
        (Starter::Ssh, Some(255)) => format!(
            "host {host}: ssh failed: {text}; check that the host is up, runs sshd and \
             accepts your key without a password (ssh -o BatchMode=yes {host} true)"
        ),
        (_, _) => format!(
            "host {host}: memory node {i} failed to start ({}): {text}",
            match status {
                Some(st) => describe(st),
                None => "still running".into(),
            }
        ),
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

/// Stops nodes that were started before a failure.
fn stop(pending: Vec<Pending>, plan: &RemotePlan) {
    let mut children: Vec<Option<Child>> = pending.into_iter().map(|p| Some(p.child)).collect();
    if plan.starter == Starter::Srun {
        crate::launch::terminate_all(&mut children, Duration::from_secs(5));
    }
    for mut c in children.into_iter().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The dsmrun binary on the hosts: `--remote-dsmrun`, else this one's path.
pub fn remote_exe(given: Option<&Path>, this: &Path) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| this.canonicalize().unwrap_or_else(|_| this.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, slots: usize) -> Host {
        Host {
            name: name.into(),
            slots,
        }
    }

    #[test]
    fn host_lists_and_hostfiles_parse() {
        assert_eq!(
            parse_host_list("a,b:4").unwrap(),
            vec![h("a", 1), h("b", 4)]
        );
        assert!(parse_host_list("a:0").is_err());
        assert!(parse_host_list("").is_err());
        let text = "# cluster\n\nn1 slots=4\nn2:2  # mpich\nn3 slots=2 max_slots=8\nn1\n10.0.0.9\n";
        assert_eq!(
            parse_hostfile(text).unwrap(),
            vec![h("n1", 5), h("n2", 2), h("n3", 2), h("10.0.0.9", 1)]
        );
        let err = parse_hostfile("n1 cpus=4").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse_hostfile("# nothing\n").is_err());
    }

    #[test]
    fn nodes_interleave_across_hosts_within_slots() {
        let hosts = [h("a", 1), h("b", 3), h("c", 2)];
        assert_eq!(spread(&hosts, 6).unwrap(), vec![0, 1, 2, 1, 2, 1]);
        assert_eq!(spread(&hosts, 2).unwrap(), vec![0, 1]);
        let err = spread(&hosts, 7).unwrap_err();
        assert!(err.contains("offer 6"), "{err}");
    }

    #[test]
    fn slurm_cpu_counts_expand() {
        assert_eq!(expand_cpus_per_node("4(x4)"), Some(vec![4; 4]));
        assert_eq!(expand_cpus_per_node("2(x2),8"), Some(vec![2, 2, 8]));
        assert_eq!(expand_cpus_per_node("x"), None);
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
