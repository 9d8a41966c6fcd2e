//! `dsmrun`'s run mode: start the memory nodes, run the program on pooled memory with the
//! preload library, forward signals, return the program's exit status, tear everything
//! down, and report.
//!
//! Order matters for "nothing left running": the forwarded signals are blocked before any
//! thread or child exists; nodes are started in their own process group with
//! `PR_SET_PDEATHSIG` (they die with `dsmrun`, even on `SIGKILL`); the program gets
//! `PR_SET_PDEATHSIG` too; every exit path drops [`LocalNodes`], which kills and reaps them.

pub mod checkpoint;
pub mod cpus;
pub mod jobs;
pub mod lost_hosts;
pub mod progress;
pub mod remote;
pub mod signals;
pub mod summary;
pub mod suspend;
pub mod thrash;
pub mod timeline;
pub mod watch;

use crate::config::job::{
    JobConfig, TransportKind, DEFAULT_SLOT_BYTES, SLOTS_MAX, SLOT_ALIGN_BYTES,
};
use crate::config::{physical_memory_bytes, SPACE_END_MAX};
use crate::fault::uffd::{UffdError, Userfaultfd, FEATURE_PAGEFAULT_FLAG_WP, FEATURE_THREAD_ID};
use crate::launch::{unblock_signals_in_child, LocalNodes};
use crate::node::header::{data_bytes, NODE_HEADER_BYTES};
use crate::node::NodeSize;
use crate::redundancy::Redundancy;
use crate::runtime::EXIT_RUNTIME_FAILURE;
use crate::space::PAGE_BYTES;
use crate::transport::auth::Secret;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit status when the program cannot be found (as shells use).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status when the program is not executable.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status when `dsmrun` could not set the job up.
pub const EXIT_SETUP: i32 = 1;

/// Everything `dsmrun` needs to run a program; built from its command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Number of memory nodes.
    pub nodes: usize,
    /// Nodes already running elsewhere, by address (`--attach`); `None` starts `nodes`
    /// local ones.
    pub attach: Option<Vec<SocketAddr>>,
    /// Hosts to start the nodes on over ssh (`--hosts`, `--hostfile`).
    pub hosts: Option<Vec<remote::Host>>,
    /// The dsmrun binary on those hosts (default: this one's path).
    pub remote_dsmrun: Option<PathBuf>,
    /// Inside a Slurm allocation (and with no hosts or --attach), start the nodes as job
    /// steps on its hosts; false with `--local-nodes`.
    pub slurm: bool,
    /// Local cache of each process.
    pub cache_bytes_max: u64,
    /// Memory each node contributes (lazily backed).
    pub node_bytes: u64,
    /// Transport backend.
    pub transport: TransportKind,
    /// Where to write the job's statistics as JSON.
    pub stats_path: Option<PathBuf>,
    /// Where to write the job's HTML report.
    pub report_path: Option<PathBuf>,
    /// Draw the live status line on stderr (only if it is a terminal).
    pub progress: bool,
    /// Report each process and the nodes on stderr.
    pub verbose: bool,
    /// Print no summary.
    pub quiet: bool,
    /// Most processes of the job that use the runtime at once.
    pub max_procs: usize,
    /// Base of the job's global range.
    pub space_base: usize,
    /// Fault-handler threads per process.
    pub handler_threads: usize,
    /// CPUs the whole job runs on (`--cpus`); `None` leaves affinity alone.
    pub cpus: Option<std::collections::BTreeSet<usize>>,
    /// Smallest anonymous mmap served from the global range.
    pub mmap_min_bytes: u64,
    /// The preload library (default: next to the `dsmrun` executable).
    pub preload_lib: Option<PathBuf>,
    /// Policy profile (shipped name or path), already checked to load.
    pub profile: Option<String>,
    /// Where to record the page-access stream.
    pub record_trace: Option<PathBuf>,
    /// Warn when the job's faults take more than half the wall time over this long
    /// (`--thrash-warning`); `None` never warns.
    pub thrash_warning: Option<Duration>,
    /// How many places each page is kept at home (`--redundancy`).
    pub redundancy: crate::redundancy::Redundancy,
    /// Of `nodes`, how many (the last) are spares that stand in for dead nodes.
    pub spare_nodes: usize,
    /// Any node operation slower than this fails, and under redundancy declares the
    /// node dead (`--node-timeout`).
    pub node_timeout_ms: u64,
    /// The job's name for `dsmrun suspend/resume NAME` (`--name`).
    pub name: Option<String>,
    /// Where and how often to checkpoint the job (`--checkpoint-dir`, `--checkpoint-every`).
    pub checkpoint: Option<checkpoint::CheckpointOptions>,
    /// The checkpoint to restart from (`dsmrun restart`), validated; `program` is then its
    /// recorded command line, for messages.
    pub restore: Option<checkpoint::restart::Restore>,
    /// The program and its arguments.
    pub program: Vec<OsString>,
}

/// Why the job could not start; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program does not exist.
    #[error("{0}: command not found")]
    NotFound(String),
    /// The program is not executable.
    #[error("{0}: permission denied (not an executable file)")]
    NotExecutable(String),
    /// The preload library is missing.
    #[error(
        "the preload library {0} does not exist; build it with `cargo build --release \
         --workspace` or pass --preload-lib"
    )]
    NoPreload(PathBuf),
    /// userfaultfd cannot be used by this user.
    #[error("{0}")]
    Uffd(#[from] crate::fault::uffd::UffdError),
    /// userfaultfd is not permitted; the text says which fix applies on this machine.
    #[error("{0}")]
    UffdPermission(String),
    /// The nodes' regions cannot place the processes' slots (nodes started elsewhere
    /// with a small span).
    #[error(
        "the nodes' regions ({nodes} nodes x {node_mib} MiB) cannot place {procs} processes \
         of at least 64 MiB each: lower --max-procs, start attached nodes with a larger \
         --span, or, for RDMA (which pins a node's region: it is then its memory), raise \
         --node-memory"
    )]
    PoolTooSmall {
        nodes: usize,
        node_mib: u64,
        procs: usize,
    },
    /// A setting is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Nodes on other hosts could not be placed or started; the text names the host.
    #[error("{0}")]
    Remote(String),
    /// Starting the nodes or the program failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The exit status `dsmrun` ends with.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) => EXIT_NOT_FOUND,
            LaunchError::NotExecutable(_) => EXIT_NOT_EXECUTABLE,
            _ => EXIT_SETUP,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Finds `program` as `execvp` would: a path if it has a slash, else on `PATH`.
pub fn resolve_program(program: &OsString) -> Result<PathBuf, LaunchError> {
    let name = program.to_string_lossy().into_owned();
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(program);
        if !p.exists() {
            return Err(LaunchError::NotFound(name));
        }
        if !executable(&p) {
            return Err(LaunchError::NotExecutable(name));
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut found_non_exec = false;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if executable(&p) {
            return Ok(p);
        }
        found_non_exec |= p.exists();
    }
    if found_non_exec {
        Err(LaunchError::NotExecutable(name))
    } else {
        Err(LaunchError::NotFound(name))
    }
}

fn default_preload() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // `cargo test` runs binaries from target/<profile>/, tests from .../deps/.
    [dir.to_path_buf(), dir.join(".."), dir.join("../lib/dsm")]
        .into_iter()
        .map(|d| d.join("libdsm_preload.so"))
        .find(|p| p.exists())
}

/// Capability number of CAP_SYS_PTRACE (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;

/// What stands between this user and userfaultfd here, and which fix applies.
fn diagnose_uffd_permission() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ptrace = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0);
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let dev = Path::new("/dev/userfaultfd");
    let mut lines = vec![format!(
        "here: uid {uid}, {} CAP_SYS_PTRACE; vm.unprivileged_userfaultfd = {sysctl}",
        if ptrace { "with" } else { "without" }
    )];
    if sysctl == "0" {
        lines.push(
            "fix (as root): sysctl -w vm.unprivileged_userfaultfd=1, or run dsmrun as root / \
             with CAP_SYS_PTRACE"
                .into(),
        );
    }
    if dev.exists() {
        let c = std::ffi::CString::new("/dev/userfaultfd").expect("no NUL");
        // SAFETY: access with a NUL-terminated path.
        let ok = unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) } == 0;
        if !ok {
            lines.push(format!(
                "or (as root) give this user read/write access to /dev/userfaultfd, e.g. \
                 setfacl -m u:{uid}:rw /dev/userfaultfd"
            ));
        }
    } else {
        lines.push("/dev/userfaultfd does not exist on this kernel".into());
    }
    lines.join("\n")
}

/// The job's layout: each process's slice of the global range and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    slot_bytes: u64,
    slots: usize,
}

impl Plan {
    /// What each of `nodes` nodes must offer: `node_bytes` of memory, and a region that
    /// can place its share of every slot's pages (address space only: lazily backed).
    fn node_size(&self, nodes: usize, node_bytes: u64, (stored, per): (u64, u64)) -> NodeSize {
        let page = PAGE_BYTES as u64;
        // Every page takes `stored / per` pages of node memory (`redundancy`): its copies,
        // each in its own band, or its piece and its share of its group's parity.
        let pages = (self.slots as u64 * (self.slot_bytes / page) * stored).div_ceil(per);
        // Room for the largest placement chunk a profile may ask for, rounded up.
        let per_node = pages.div_ceil(nodes as u64) + PLACEMENT_CHUNK_PAGES_MAX;
        NodeSize {
            memory_bytes: node_bytes,
            span_bytes: NODE_HEADER_BYTES + per_node * page,
        }
    }
}

/// What `r` costs in node memory, said once at the start (`-v`); nothing for `none`.
fn redundancy_overhead(r: Redundancy, spares: usize) -> Option<String> {
    let (stored, per) = r.stored_per_page();
    let how = match r {
        Redundancy::None => return None,
        Redundancy::Replicate { copies } => format!("{copies} copies of every page"),
        Redundancy::ErasureCoded { data, parity } => format!(
            "groups of {data} pages on {data} nodes with {parity} parity piece(s) on another"
        ),
    };
    Some(format!(
        "dsmrun: redundancy {r}: {how}: node memory holds {:.2}x the data written home, \
         plus {spares} spare node(s)",
        stored as f64 / per as f64
    ))
}

/// Largest `chunk_pages` of an interleaved placement (profile.rs validates it).
const PLACEMENT_CHUNK_PAGES_MAX: u64 = 1 << 20;

/// Slices of the job's global range: [`DEFAULT_SLOT_BYTES`] each (address space, not
/// memory: pages claim node memory only when written home), or as much as the address
/// space, and nodes that were started elsewhere (`span_bytes`), allow.
fn plan_job(opts: &RunOptions, span_bytes: Option<u64>) -> Result<Plan, LaunchError> {
    let page = PAGE_BYTES as u64;
    if opts.max_procs == 0 || opts.max_procs > SLOTS_MAX {
        return Err(LaunchError::Invalid(format!(
            "--max-procs {}: use 1 to {SLOTS_MAX}",
            opts.max_procs
        )));
    }
    let procs = opts.max_procs as u64;
    let by_space = (SPACE_END_MAX.saturating_sub(opts.space_base) as u64) / procs;
    let by_nodes = match span_bytes {
        Some(span) => {
            let (stored, per) = opts.redundancy.stored_per_page();
            let placed = opts.nodes.saturating_sub(opts.spare_nodes);
            let rooms = 1 + u64::from(opts.redundancy.rescue_room(placed, opts.spare_nodes));
            (data_bytes(span) / rooms / stored * per / page * placed as u64 * page) / procs
        }
        None => u64::MAX,
    };
    let slot = DEFAULT_SLOT_BYTES.min(by_space).min(by_nodes) / SLOT_ALIGN_BYTES * SLOT_ALIGN_BYTES;
    if slot == 0 {
        return Err(LaunchError::PoolTooSmall {
            nodes: opts.nodes,
            node_mib: span_bytes.map_or(opts.node_bytes, data_bytes) >> 20,
            procs: opts.max_procs,
        });
    }
    Ok(Plan {
        slot_bytes: slot,
        slots: opts.max_procs,
    })
}

/// Whether the nodes will register their regions for RDMA (which pins them whole on
/// devices without on-demand paging, Soft-RoCE's included): `--transport verbs`, or
/// `auto` with nodes on other hosts and an RDMA device up here.
fn regions_pinned(kind: TransportKind, remote: bool) -> bool {
    match kind {
        TransportKind::Verbs => true,
        TransportKind::Auto => remote && crate::transport::verbs_device().is_ok(),
        TransportKind::Tcp | TransportKind::Shm => false,
    }
}

/// Runs the program as `opts` says and returns the exit status for `dsmrun`.
pub fn run(opts: &RunOptions, dsmrun_exe: &Path) -> Result<i32, LaunchError> {
    let started = Instant::now();
    let placed = crate::redundancy::placed_nodes(opts.nodes, opts.spare_nodes)
        .map_err(|e| LaunchError::Invalid(format!("--spare-nodes: {e}")))?;
    opts.redundancy
        .check_nodes(placed)
        .map_err(LaunchError::Invalid)?;
    if opts.spare_nodes > 0 && !opts.redundancy.survives_a_death() {
        return Err(LaunchError::Invalid(format!(
            "--spare-nodes {} stand in for dead nodes, which only --redundancy replicate:R or \
             ec:K+1 survives: add --redundancy replicate:2",
            opts.spare_nodes
        )));
    }
    if opts.checkpoint.is_some() {
        checkpoint::restart::check_supported(opts, opts.attach.is_some())
            .map_err(LaunchError::Invalid)?;
    }
    if let Some(cpus) = &opts.cpus {
        // Before anything starts, so that nodes, program and runtime threads inherit it.
        cpus::restrict_to(cpus).map_err(LaunchError::Invalid)?;
    }
    let attached = match &opts.attach {
        Some(addrs) => Some(attach(addrs)?),
        None => None,
    };
    let sized;
    let opts = match &attached {
        // The pool is what the running nodes offer, whatever --node-memory says.
        Some((_, node_bytes)) => {
            sized = RunOptions {
                node_bytes: *node_bytes,
                ..opts.clone()
            };
            &sized
        }
        None => opts,
    };
    if opts.nodes == 0 || opts.nodes > usize::from(u16::MAX) {
        return Err(LaunchError::Invalid(format!(
            "-n {}: use at least one node",
            opts.nodes
        )));
    }
    let program = opts
        .program
        .first()
        .ok_or_else(|| LaunchError::Invalid("no program given: dsmrun -n N -- PROGRAM".into()))?;
    // A restarted program comes back from its image, not from its executable.
    let program_path = match &opts.restore {
        Some(_) => dsmrun_exe.to_path_buf(),
        None => resolve_program(program)?,
    };
    let preload = match &opts.preload_lib {
        Some(p) => p.clone(),
        None => default_preload().unwrap_or_else(|| PathBuf::from("libdsm_preload.so")),
    };
    if !preload.exists() {
        return Err(LaunchError::NoPreload(preload));
    }
    let preload = preload.canonicalize().map_err(io_err("preload library"))?;
    // The program's processes run as this user: if we cannot open a userfaultfd, neither
    // can they. Say so before starting anything.
    match Userfaultfd::open(FEATURE_PAGEFAULT_FLAG_WP | FEATURE_THREAD_ID) {
        Ok(_) => {}
        Err(e @ UffdError::PermissionDenied { .. }) => {
            return Err(LaunchError::UffdPermission(format!(
                "{e}\n{}",
                diagnose_uffd_permission()
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let remote_plan = remote_plan(opts, attached.is_some(), dsmrun_exe)?;
    // Nodes this launcher starts get terabyte spans, unless they will serve RDMA: without
    // on-demand paging a registration pins the node's whole region, so those get a region
    // of their memory only, and the slots shrink to what such regions can place.
    let pinned = attached.is_none() && regions_pinned(opts.transport, remote_plan.is_some());
    let fixed_span = match &attached {
        Some((_, span)) => Some(*span),
        None => pinned.then(|| NodeSize::of_memory(opts.node_bytes).span_bytes),
    };
    let plan = match &opts.restore {
        Some(r) => r.plan().map_err(LaunchError::Invalid)?,
        None => plan_job(opts, fixed_span)?,
    };
    let control = register_job(opts)?;

    signals::start_forwarding().map_err(io_err("blocking forwarded signals"))?;
    let mut node_size = NodeSize::of_memory(opts.node_bytes);
    let (secret, mut nodes) = match attached {
        Some((secret, _)) => (
            secret,
            LocalNodes::attached(opts.attach.clone().unwrap_or_default()),
        ),
        None => {
            let secret = Secret::generate().map_err(io_err("generating the job secret"))?;
            let size = match (&opts.restore, fixed_span) {
                (Some(r), _) => r.node_size(),
                (None, Some(_)) => NodeSize::of_memory(opts.node_bytes),
                (None, None) => {
                    let placed = opts.nodes - opts.spare_nodes;
                    let (stored, per) = opts.redundancy.stored_per_page();
                    // A rescue room doubles the address space, not the memory.
                    let rooms =
                        1 + u64::from(opts.redundancy.rescue_room(placed, opts.spare_nodes));
                    plan.node_size(placed, opts.node_bytes, (stored * rooms, per))
                }
            };
            node_size = size;
            let snapshots = checkpoint::restart::node_snapshots(opts);
            let nodes = match &remote_plan {
                Some(p) => remote::start(p, size, &secret, &snapshots)?,
                None => LocalNodes::spawn_with_snapshots(dsmrun_exe, size, &secret, &snapshots)
                    .map_err(io_err("starting memory nodes"))?,
            };
            (secret, nodes)
        }
    };
    if opts.verbose {
        for i in 0..opts.nodes {
            eprintln!(
                "dsmrun: node {i} pid {} at {}{} ({} MiB)",
                nodes.pid(i).unwrap_or(0),
                nodes.addrs()[i],
                nodes
                    .host(i)
                    .map(|h| format!(" on host {h}"))
                    .unwrap_or_default(),
                opts.node_bytes >> 20
            );
        }
        if let Some(line) = redundancy_overhead(opts.redundancy, opts.spare_nodes) {
            eprintln!("{line}");
        }
    }
    let stats_dir = std::env::temp_dir().join(format!(
        "dsmrun-{}-{}",
        std::process::id(),
        &secret.as_str()[..8.min(secret.as_str().len())]
    ));
    std::fs::create_dir_all(&stats_dir).map_err(io_err("creating the statistics directory"))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(stats_dir.join(crate::suspend::control::CTL_DIR))
        .map_err(io_err("creating the control directory"))?;
    let fresh = JobConfig {
        nodes: nodes.addrs().to_vec(),
        secret,
        transport: opts.transport,
        space_base: opts.space_base,
        slot_bytes: plan.slot_bytes,
        slots: plan.slots,
        cache_bytes_max: opts.cache_bytes_max,
        handler_threads: opts.handler_threads,
        node_timeout_ms: opts.node_timeout_ms,
        mmap_min_bytes: opts.mmap_min_bytes,
        stats_dir: Some(stats_dir.clone()),
        verbose: opts.verbose,
        placement_chunk_pages: crate::RuntimeConfig::default().placement_chunk_pages,
        profile: opts.profile.clone(),
        trace: opts.record_trace.clone(),
        redundancy: opts.redundancy,
        spare_nodes: opts.spare_nodes,
    };
    let job = match &opts.restore {
        Some(r) => r.job(&fresh).map_err(LaunchError::Invalid)?,
        None => fresh,
    };
    let node_hosts: Vec<String> = (0..nodes.addrs().len())
        .map(|i| nodes.host(i).unwrap_or("localhost").to_string())
        .collect();
    let result = job
        .validate()
        .map_err(|e| LaunchError::Invalid(e.to_string()))
        .and_then(|()| {
            let cmd = match &opts.restore {
                Some(r) => r.command(&job, dsmrun_exe).map_err(LaunchError::Invalid)?,
                None => {
                    let mut cmd = program_command(opts, &job, &program_path, &preload);
                    cmd.envs(cpus::follow_vars(opts.cpus.is_some(), &local_pids(&nodes)));
                    cmd.envs(crate::fault::helper::passed_on());
                    cmd
                }
            };
            let checkpointer = opts.checkpoint.as_ref().map(|c| {
                Arc::new(checkpoint::Checkpointer::new(
                    c.dir.clone(),
                    (job.nodes.clone(), job.secret.clone()),
                    checkpoint::restart::job_record(opts, &job, node_size),
                    opts.restore.as_ref().map(|r| r.manifest.clone()),
                    opts.verbose,
                ))
            });
            run_program(opts, &job, cmd, &mut nodes, started, control, checkpointer)
        });
    drop(nodes);
    let (code, watched, checkpoints) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stats_dir);
            return Err(e);
        }
    };
    report(
        opts,
        &stats_dir,
        code,
        started,
        (watched, checkpoints),
        &node_hosts,
    );
    let _ = std::fs::remove_dir_all(&stats_dir);
    Ok(code)
}

/// The pids of the nodes this launcher runs on this machine.
fn local_pids(nodes: &LocalNodes) -> Vec<u32> {
    (0..nodes.addrs().len())
        .filter(|&i| nodes.host(i).is_none())
        .filter_map(|i| nodes.pid(i))
        .collect()
}

/// Where the nodes go when not on this machine: the `--hosts` over ssh, or the Slurm
/// allocation this runs in; `None` for local (or attached) nodes.
fn remote_plan(
    opts: &RunOptions,
    attached: bool,
    dsmrun_exe: &Path,
) -> Result<Option<remote::RemotePlan>, LaunchError> {
    if attached {
        return Ok(None);
    }
    let exe = remote::remote_exe(opts.remote_dsmrun.as_deref(), dsmrun_exe);
    match &opts.hosts {
        Some(hosts) => remote::RemotePlan::ssh(hosts.clone(), opts.nodes, exe)
            .map(Some)
            .map_err(LaunchError::Remote),
        None if opts.slurm => {
            remote::RemotePlan::slurm(opts.nodes, exe).map_err(LaunchError::Remote)
        }
        None => Ok(None),
    }
}

/// Checks that the nodes at `addrs` answer and know the job secret (from DSM_SECRET);
/// returns the secret and the smallest node's memory.
fn attach(addrs: &[SocketAddr]) -> Result<(Secret, u64), LaunchError> {
    let secret = std::env::var("DSM_SECRET")
        .ok()
        .and_then(Secret::new)
        .ok_or_else(|| {
            LaunchError::Invalid(
                "--attach needs DSM_SECRET: the secret the nodes were started with".into(),
            )
        })?;
    let transport = crate::transport::tcp::TcpTransport::discover(
        addrs,
        secret.clone(),
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| LaunchError::Invalid(format!("--attach: {e}")))?;
    let node_bytes = crate::transport::Transport::nodes(&transport)
        .iter()
        .map(|n| n.region_bytes)
        .min()
        .unwrap_or(0);
    Ok((secret, node_bytes))
}

/// Registers the job in the per-user jobs directory, for `dsmrun suspend/resume`. Without
/// `--name` a failure only costs that, and is said; with one it stops the job.
fn register_job(
    opts: &RunOptions,
) -> Result<Option<(jobs::Registration, std::os::unix::net::UnixListener)>, LaunchError> {
    match jobs::register(opts.name.as_deref()) {
        Ok(r) => Ok(Some(r)),
        Err(e) if opts.name.is_some() => Err(LaunchError::Invalid(e)),
        Err(e) => {
            eprintln!("dsmrun: warning: the job cannot be suspended by pid: {e}");
            Ok(None)
        }
    }
}

/// The program's command: its environment (the job's `DSM_*` variables, the preload
/// library) and its death with `dsmrun`.
fn program_command(
    opts: &RunOptions,
    job: &JobConfig,
    program_path: &Path,
    preload: &Path,
) -> Command {
    let mut cmd = Command::new(program_path);
    cmd.arg0(&opts.program[0]).args(&opts.program[1..]);
    // Stale job variables from an enclosing dsmrun must not leak into this job. The
    // user's RDMA device choice (DSM_RDMA_*) is not the job's and passes through.
    for (k, _) in std::env::vars_os() {
        let k_text = k.to_string_lossy();
        if k_text.starts_with("DSM_") && !k_text.starts_with("DSM_RDMA_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in job.to_vars() {
        cmd.env(k, v);
    }
    let mut ld = preload.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        ld.push(":");
        ld.push(old);
    }
    cmd.env("LD_PRELOAD", ld);
    if opts.checkpoint.is_some() {
        // Checkpointable programs run without address randomisation, so that their
        // libraries and vDSO come back at the same addresses on restart.
        // SAFETY: the hook only calls personality(2), which is async-signal-safe.
        unsafe { cmd.pre_exec(crate::checkpoint::disable_aslr) };
    }
    cmd
}

/// Runs the program's command `cmd` and waits for it, watching the nodes; serves
/// suspend, resume and checkpoint requests meanwhile and takes the periodic checkpoints.
fn run_program(
    opts: &RunOptions,
    job: &JobConfig,
    mut cmd: Command,
    nodes: &mut LocalNodes,
    started: Instant,
    control: Option<(jobs::Registration, std::os::unix::net::UnixListener)>,
    checkpointer: Option<Arc<checkpoint::Checkpointer>>,
) -> Result<(i32, watch::Watched, Option<serde_json::Value>), LaunchError> {
    unblock_signals_in_child(&mut cmd);
    // SAFETY: prctl with integer arguments is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // The program dies with dsmrun: without its nodes it could not go on.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(format!(
        "starting {}",
        opts.program[0].to_string_lossy()
    )))?;
    signals::forward_to(child.id());
    let stats_dir = job.stats_dir.clone().unwrap_or_default();
    if let (Some(c), Some(r)) = (&checkpointer, &opts.restore) {
        checkpoint::restart::watch_running(Arc::clone(c), child.id(), &stats_dir, r.began);
    }
    let controller = std::sync::Arc::new(suspend::Controller::new(
        child.id(),
        &stats_dir,
        !opts.quiet,
    ));
    signals::control_with(Some(controller.clone()));
    let periodic = checkpointer.as_ref().and_then(|c| {
        controller.checkpoint_with(Arc::clone(c));
        let every = opts.checkpoint.as_ref()?.every?;
        Some(checkpoint::Periodic::start(
            Arc::clone(c),
            Arc::clone(&controller),
            every,
        ))
    });
    let registration = control.map(|(registration, listener)| {
        controller.serve(listener);
        registration
    });
    let thrash = opts.thrash_warning.map(|window| {
        thrash::JobThrashWatch::new(
            window,
            opts.program[0].to_string_lossy().into_owned(),
            opts.cache_bytes_max,
        )
    });
    let mut watch = watch::JobWatch::new(stats_dir, started, opts.progress, thrash, !opts.quiet);
    let status = wait_watching_nodes(&mut child, nodes, &mut watch, opts.redundancy);
    drop(periodic);
    // The status line goes before anything else is printed about the end.
    let watched = watch.finish();
    let code = match status {
        Ok(st) => exit_code_of(st, opts),
        Err(()) => EXIT_RUNTIME_FAILURE,
    };
    if code == EXIT_RUNTIME_FAILURE {
        name_lost_hosts(nodes);
    }
    signals::stop_forwarding();
    signals::control_with(None);
    drop(registration);
    Ok((code, watched, checkpointer.map(|c| c.stats_json())))
}

/// After the runtime failed, names the hosts whose nodes no longer answer (nodes on this
/// machine are not probed: their deaths are seen as their processes' exits).
fn name_lost_hosts(nodes: &LocalNodes) {
    let remote: Vec<lost_hosts::Probe<'_>> = (0..nodes.addrs().len())
        .filter_map(|i| Some((i, nodes.addrs()[i], nodes.host(i)?)))
        .collect();
    if remote.is_empty() {
        return;
    }
    for lost in lost_hosts::find(&remote) {
        eprintln!("{}", lost_hosts::describe(&lost));
    }
}

/// Waits for the program; if a node dies first, says which and stops the program
/// (`Err`, once said). Meanwhile keeps `watch` up to date.
fn wait_watching_nodes(
    child: &mut Child,
    nodes: &mut LocalNodes,
    watch: &mut watch::JobWatch,
    redundancy: crate::redundancy::Redundancy,
) -> Result<ExitStatus, ()> {
    loop {
        watch.poll();
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) => {}
            Err(e) => {
                watch.say(&format!("dsmrun: waiting for the program: {e}"));
                return Err(());
            }
        }
        if let Some((i, st)) = nodes.exited() {
            if redundancy.survives_a_death() {
                // The program's runtime fails over to the other copies, or ends with
                // status 70 saying data was lost when a page had no other copy.
                watch.say(&format!(
                    "dsmrun: memory node {i} exited during the run ({st}); the job goes on \
                     with its pages' other copies ({redundancy}, degraded)"
                ));
                continue;
            }
            // Give the program a moment to report the failure itself (it names the node
            // it was waiting on), then stop it.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let said = match nodes.host(i) {
                None => format!(
                    "dsmrun: memory node {i} exited during the run ({st}); the program cannot \
                     continue without its memory"
                ),
                Some(host) => format!(
                    "dsmrun: memory node {i} on host {host} is gone ({st} from its ssh/srun): \
                     the host, the node or the connection to it died; the program cannot \
                     continue without its memory"
                ),
            };
            watch.say(&said);
            if let Ok(None) = child.try_wait() {
                // SAFETY: signalling the child we started.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            }
            let _ = child.wait();
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_code_of(st: ExitStatus, opts: &RunOptions) -> i32 {
    if st.code() == Some(EXIT_RUNTIME_FAILURE) {
        // The runtime's own line (`dsm: fatal: ...`) says what failed, but among the
        // program's output it is easy to miss that the program did not fail by itself.
        eprintln!(
            "dsmrun: {} exited with status {EXIT_RUNTIME_FAILURE}: the pooled-memory runtime \
             in it failed (see the `dsm: fatal:` line above), unless the program chose that \
             status itself",
            opts.program[0].to_string_lossy()
        );
    }
    if let Some(c) = st.code() {
        return c;
    }
    let sig = st.signal().unwrap_or(0);
    if sig == libc::SIGPIPE {
        // `dsmrun prog | head`: the reader left; shells do not report this either.
        return 128 + sig;
    }
    // SAFETY: strsignal returns a pointer to a static or thread-local string.
    let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }
        .to_string_lossy()
        .into_owned();
    eprintln!(
        "dsmrun: {} was killed by signal {sig} ({name}){}",
        opts.program[0].to_string_lossy(),
        if st.core_dumped() {
            " and dumped core"
        } else {
            ""
        }
    );
    128 + sig
}

fn report(
    opts: &RunOptions,
    stats_dir: &Path,
    code: i32,
    started: Instant,
    (mut watched, checkpoints): (watch::Watched, Option<serde_json::Value>),
    node_hosts: &[String],
) {
    let processes = summary::read_processes(stats_dir);
    let total = summary::total(&processes);
    if !opts.quiet {
        eprint!(
            "{}",
            summary::render(
                &total,
                processes.len(),
                summary::incomplete(&processes),
                &summary::transports(&processes)
            )
        );
    }
    if opts.stats_path.is_none() && opts.report_path.is_none() {
        return;
    }
    let wall = started.elapsed();
    watched
        .timeline
        .finish(timeline::Sample::of_total(wall, processes.len(), &total));
    let mut doc = stats_document(opts, code, wall, total, processes, watched);
    // Which host each node (the index of the `_by_node` counters) ran on.
    doc["job"]["node_hosts"] = serde_json::json!(node_hosts);
    if let Some(c) = checkpoints {
        doc["checkpoints"] = c;
    }
    if let Some(path) = &opts.stats_path {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("dsmrun: writing --stats {}: {e}", path.display());
        }
    }
    if let Some(path) = &opts.report_path {
        if let Err(e) = crate::report::write(&doc, path) {
            eprintln!("dsmrun: --report: {e}");
        }
    }
}

/// The `--stats` JSON: the job and its options, the totals, every process, and what was
/// seen while it ran. Keys only ever get added, so that scripts keep working.
fn stats_document(
    opts: &RunOptions,
    code: i32,
    wall: Duration,
    total: serde_json::Value,
    processes: Vec<serde_json::Value>,
    watched: watch::Watched,
) -> serde_json::Value {
    serde_json::json!({
        "job": {
            "program": opts.program.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "nodes": opts.nodes,
            "node_bytes": opts.node_bytes,
            "cache_bytes_max": opts.cache_bytes_max,
            "transport": opts.transport.to_string(),
            "exit_status": code,
            "wall_time_s": wall.as_secs_f64(),
            "fault_hit_rate": summary::fault_hit_rate(&total),
            "processes_without_final_stats": summary::incomplete(&processes),
            "profile": opts.profile.as_deref().unwrap_or("default"),
            "attach": opts.attach.as_ref().map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
            "max_procs": opts.max_procs,
            "redundancy": opts.redundancy.to_string(),
            "spare_nodes": opts.spare_nodes,
            "handler_threads": opts.handler_threads,
            "mmap_min_bytes": opts.mmap_min_bytes,
            "space_base": format!("{:#x}", opts.space_base),
            "cpus": opts.cpus.as_ref().map(|c| c.iter().copied().collect::<Vec<_>>()),
            "thrash_warning_s": opts.thrash_warning.map(|d| d.as_secs()),
            "record_trace": opts.record_trace.as_ref().map(|p| p.display().to_string()),
        },
        "total": total,
        "processes": processes,
        "timeline": watched.timeline,
        "warnings": watched.warnings,
    })
}

/// The default local cache: half of this machine's memory.
pub fn default_cache_bytes() -> u64 {
    physical_memory_bytes() / 2
}
