//! `dsmrun`: runs an unmodified program with its heap on pooled memory
//! (`dsmrun -n N -- PROGRAM ARGS...`), and runs memory nodes (`dsmrun node ...`).

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use dsm_runtime::config::job::TransportKind;
use dsm_runtime::config::{parse_size, physical_memory_bytes, DEFAULT_SPACE_BASE};
use dsm_runtime::launcher::checkpoint::{self, CheckpointOptions};
use dsm_runtime::launcher::{self, RunOptions, EXIT_SETUP};
use dsm_runtime::node::{header::NODE_HEADER_BYTES, NodeSize};
use dsm_runtime::policy::profile::Profile;
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::tune::{self, TuneArgs};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  dsmrun -n 4 -- sort big.txt -o sorted.txt
      sort on 4 local memory nodes, with a local cache of half the machine's memory
  dsmrun -n 16 --local-cache 25% --stats run.json velvetg out_dir -exp_cov auto
      velvetg with its heap spread over 16 nodes and a cache of a quarter of RAM
  dsmrun -n 4 --local-cache 64M -- sh -c 'velveth out 31 -short reads.fa; velvetg out'
      every program the shell runs gets its own part of the pooled memory

Sizes accept 4096, 64K, 64M, 8G, 1T, and for --local-cache and --node-memory a share of
this machine's memory such as 25%.

Exit status: the program's own; 128+N if signal N killed it; 127 if it was not found;
70 if the runtime failed (a memory node died); 1 if the job could not be set up
(including a host that cannot be reached, refuses ssh or lacks dsmrun).

On other hosts:
  dsmrun --hostfile hosts.txt -n 16 -- ./prog
      16 nodes over ssh on the hosts of an Open MPI or MPICH hostfile
  salloc -N 4 dsmrun -n 16 -- ./prog
      inside a Slurm allocation: the nodes run as `srun --overlap` steps on its hosts";

/// Where the memory nodes run: shared by a run and a restart.
#[derive(clap::Args, Debug)]
struct PlacementCli {
    /// Start the nodes on these hosts over ssh (BatchMode: keys, no passwords), spread
    /// across the hosts first and up to each host's slots (host:N; 1 without); the
    /// program runs here (e.g. --hosts node1:4,node2:4 -n 8).
    #[arg(long, value_name = "HOST[:N],...", conflicts_with = "hostfile")]
    hosts: Option<String>,
    /// As --hosts, from a file of Open MPI `host slots=N` or MPICH `host:N` lines
    /// (e.g. --hostfile hosts.txt -n 16).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// The dsmrun binary on the hosts, if not at this one's path (e.g. --remote-dsmrun
    /// /opt/dsm/bin/dsmrun).
    #[arg(long, value_name = "PATH")]
    remote_dsmrun: Option<PathBuf>,
    /// Inside a Slurm allocation, still start the nodes on this machine (by default they
    /// run as job steps on the allocation's hosts).
    #[arg(long)]
    local_nodes: bool,
}

impl PlacementCli {
    /// The hosts (from --hosts or --hostfile), the remote dsmrun and whether a Slurm
    /// allocation's hosts may be used.
    fn parse(self) -> Result<(Option<Vec<launcher::remote::Host>>, Option<PathBuf>, bool)> {
        let hosts = match (&self.hosts, &self.hostfile) {
            (Some(list), _) => {
                Some(launcher::remote::parse_host_list(list).map_err(anyhow::Error::msg)?)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--hostfile {}", path.display()))?;
                Some(
                    launcher::remote::parse_hostfile(&text)
                        .map_err(|e| anyhow::anyhow!("--hostfile {}: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        Ok((hosts, self.remote_dsmrun, !self.local_nodes))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "dsmrun",
    version,
    about = "Run an unmodified program with its heap on distributed shared memory",
    long_about = "Runs PROGRAM with its heap (malloc and large anonymous mmaps) in a global \
                  address space whose memory is spread over N memory nodes; a bounded local \
                  cache holds the pages in use and the rest live on the nodes. With no host \
                  list, the nodes are started on this machine. Needs userfaultfd: root, \
                  CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1, or access to /dev/userfaultfd.",
    override_usage = "dsmrun [OPTIONS] -n N [--] PROGRAM [ARGS]...\n       dsmrun profiles\n       dsmrun tune TRACE [--profiles a,b,...]\n       dsmrun report STATS.json [-o REPORT.html]\n       dsmrun suspend|resume|status|checkpoint JOB\n       dsmrun restart [--hostfile FILE] DIR\n       dsmrun node --id I --listen ADDR --memory SIZE",
    after_help = EXAMPLES,
    trailing_var_arg = true
)]
struct RunCli {
    /// Number of memory nodes to spread the heap over (e.g. -n 16): started on this
    /// machine, on the --hosts, or inside a Slurm allocation on its hosts.
    #[arg(
        short = 'n',
        long = "nodes",
        value_name = "N",
        required_unless_present = "attach"
    )]
    nodes: Option<usize>,
    /// Use memory nodes that are already running (`dsmrun node` on other machines) instead
    /// of starting them; DSM_SECRET must hold the secret they were started with
    /// (e.g. --attach 10.0.0.2:7000,10.0.0.3:7000).
    #[arg(
        long,
        value_name = "ADDR,...",
        value_delimiter = ',',
        conflicts_with_all = ["nodes", "hosts", "hostfile"]
    )]
    attach: Vec<std::net::SocketAddr>,
    #[command(flatten)]
    placement: PlacementCli,
    /// Most of a process's heap kept in local memory at once; the rest lives on the nodes.
    /// Applies to each process of the job (e.g. 512M, 8G, 25%).
    #[arg(long, value_name = "SIZE", default_value = "50%")]
    local_cache: String,
    /// Memory each node contributes to the pool; reserved lazily, so only what is written
    /// back costs memory (e.g. 64G, 100%).
    #[arg(long, value_name = "SIZE", default_value = "100%")]
    node_memory: String,
    /// How processes reach the nodes: auto (shm when every node runs on this host, as with
    /// -n; else verbs when an RDMA device is active; else tcp; -v says which), tcp, shm
    /// (one-sided memory copies into the nodes' regions; local nodes only) or verbs (RDMA;
    /// fails clearly without a device). E.g. --transport tcp to measure over the network.
    #[arg(long, value_enum, default_value = "auto")]
    transport: TransportArg,
    /// Run the program, its fault handler and the local nodes on these CPUs only, as taskset
    /// would (e.g. --cpus 0 for a single-threaded program: every fault then stays on one
    /// CPU, about twice as fast on a VM; --cpus 0-7 for a program with 8 threads).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Write every counter of every process, and the job's totals, as JSON to FILE
    /// (e.g. --stats run.json).
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Write an HTML report of the job to FILE: plots over time (faults, remote traffic
    /// per node, hit rate, stalls, evictions, prefetch), per-process and per-node tables,
    /// the options and the warnings; one file that opens offline (e.g. --report run.html).
    /// `dsmrun report` makes the same page later from a --stats file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Show a live status line on stderr while the job runs (elapsed time, faults per
    /// second, remote MiB/s, hit rate, share of time stalled), cleared before the summary.
    /// On by default when stderr is a terminal and -q is not given; never drawn into a
    /// file or pipe.
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// No live status line.
    #[arg(long, overrides_with = "progress")]
    no_progress: bool,
    /// Report the nodes, and each process's slot and counters, on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Print no summary at the end.
    #[arg(short, long)]
    quiet: bool,
    /// Most processes of the job on pooled memory at once (a shell and the programs it
    /// runs count one each); each gets an equal share of the pool (e.g. --max-procs 4).
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_procs: usize,
    /// Base address of the job's global range (e.g. 0x100000000000).
    #[arg(long, value_name = "ADDR", default_value_t = format!("{DEFAULT_SPACE_BASE:#x}"))]
    space_base: String,
    /// Fault-handler threads per process (e.g. --handler-threads 2).
    #[arg(long, value_name = "N", default_value_t = 1)]
    handler_threads: usize,
    /// Anonymous mmaps at least this large are pooled too; 0 turns that off (e.g. 1M).
    #[arg(long, value_name = "SIZE", default_value = "128K")]
    mmap_min: String,
    /// The preload library (default: libdsm_preload.so next to dsmrun).
    #[arg(long, value_name = "PATH")]
    preload_lib: Option<PathBuf>,
    /// Caching, eviction and prefetch policies: a shipped profile (`dsmrun profiles`
    /// lists them) or a TOML file (e.g. --profile velvet, --profile ./mine.toml).
    #[arg(long, value_name = "NAME|PATH")]
    profile: Option<String>,
    /// Record the program's page-access stream to FILE for `dsmrun tune` (children of the
    /// program write FILE.1, FILE.2, ...) (e.g. --record-trace run.dsmt).
    #[arg(long, value_name = "FILE")]
    record_trace: Option<PathBuf>,
    /// Warn on stderr, once, when the job has waited for pages more than half of the time
    /// for this many seconds in a row: it is thrashing, and a larger --local-cache would
    /// help. 0 never warns, nor does -q (e.g. --thrash-warning 300 for a job known to
    /// start slowly).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    thrash_warning: u64,
    /// Keep every page at home in several places, so the job survives a memory node's
    /// death: none, replicate:R (R copies on R different nodes, on different hosts where
    /// the nodes span hosts; needs -n R or more) or ec:K+1 (groups of K pages on K nodes
    /// plus an XOR parity page on another, K+1 nodes or more, (K+1)/K memory; more than
    /// one parity piece is refused). Default: the profile's `redundancy` key, else none
    /// (e.g. --redundancy ec:4+1).
    #[arg(long, value_name = "MODE")]
    redundancy: Option<String>,
    /// Start N more nodes that hold nothing until one stands in for a dead node: its
    /// pages' surviving copies are then copied onto it in the background, so that a second
    /// failure loses nothing either (needs --redundancy replicate:R or ec:K+1; e.g.
    /// --spare-nodes 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    spare_nodes: usize,
    /// A node that does not answer within this many milliseconds fails the operation;
    /// under --redundancy it is declared dead and fenced (e.g. --node-timeout 1000).
    #[arg(long, value_name = "MS", default_value_t = dsm_runtime::RuntimeConfig::default().node_timeout_ms)]
    node_timeout: u64,
    /// A name to suspend and resume the job by (`dsmrun suspend NAME`) instead of
    /// dsmrun's pid; refused if a running job has it (e.g. --name velvet-run1).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Take consistent checkpoints of the job (the program's process image and every
    /// node's pages) into DIR, as ckpt-NNNN/ directories; `dsmrun restart DIR` resumes
    /// from the newest. Local nodes only (e.g. --checkpoint-dir /scratch/ckpt).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Take a checkpoint this often (e.g. 10m, 30s, 500ms); without it, checkpoints are
    /// taken on `dsmrun checkpoint JOB` only.
    #[arg(long, value_name = "DURATION", requires = "checkpoint_dir")]
    checkpoint_every: Option<String>,
    /// The program and its arguments.
    #[arg(required = true, value_name = "PROGRAM [ARGS]...")]
    program: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransportArg {
    /// TCP (works everywhere).
    Tcp,
    /// Shared memory with nodes on this host.
    Shm,
    /// RDMA verbs (a build with `--features verbs` and an active RDMA device).
    Verbs,
    /// Shm for local nodes, else verbs when usable, else TCP (the default).
    Auto,
}

#[derive(Parser, Debug)]
#[command(
    name = "dsmrun node",
    about = "Run a memory node (normally started by dsmrun itself). The job secret is read \
             from the DSM_SECRET environment variable."
)]
struct NodeCli {
    /// Node index in the cluster.
    #[arg(long)]
    id: u16,
    /// Address to listen on, e.g. 127.0.0.1:0 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Memory this node contributes (e.g. 64G): the most pages it holds; lazily backed.
    #[arg(long, default_value = "16G")]
    memory: String,
    /// Address space of its region, where pages of the global space are placed (e.g.
    /// 64T); only pages written home take memory. Default: --memory plus a 64 KiB header.
    /// A job's processes get slices as large as the nodes' spans allow (4 TiB at most).
    /// An RDMA node without on-demand paging pins its whole span: keep the default there.
    #[arg(long)]
    span: Option<String>,
    /// Exit when the launching process exits.
    #[arg(long)]
    die_with_parent: bool,
    /// Read the job secret from the first line of standard input instead of DSM_SECRET,
    /// and exit when standard input closes (how `dsmrun --hosts` starts nodes over ssh:
    /// the secret stays off every command line, and the node ends with the connection).
    #[arg(long)]
    secret_stdin: bool,
    /// Restore these snapshots into the region (a base, then its deltas, in order):
    /// their indexes are checked before serving, their pages restored while serving, in
    /// the background and on demand. How `dsmrun restart` brings a checkpointed node back.
    #[arg(long, value_name = "SNAPSHOT", num_args = 1..)]
    restore: Vec<PathBuf>,
    /// Accept snapshot calls (checkpoints) writing files under this directory.
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
}

fn size_arg(flag: &str, text: &str, percent: bool) -> Result<u64> {
    let ram = percent.then(physical_memory_bytes);
    parse_size(text, ram).map_err(|e| anyhow::anyhow!("{flag} {e}"))
}

fn run_options(cli: RunCli) -> Result<RunOptions> {
    let page = 4096;
    let cache = size_arg("--local-cache", &cli.local_cache, true)? / page * page;
    let node = size_arg("--node-memory", &cli.node_memory, true)? / page * page;
    if node == 0 {
        bail!("--node-memory {}: must be at least 4 KiB", cli.node_memory);
    }
    let base_text = cli.space_base.trim();
    let space_base = match base_text.strip_prefix("0x") {
        Some(h) => usize::from_str_radix(h, 16),
        None => base_text.parse(),
    }
    .with_context(|| {
        format!("--space-base {base_text}: expected an address like 0x100000000000")
    })?;
    let (hosts, remote_dsmrun, slurm) = cli.placement.parse()?;
    // Load the profile now, so a bad one is reported (file, line, hint) before anything
    // starts; the processes load it again from DSM_PROFILE.
    let profile_redundancy = match &cli.profile {
        Some(p) => {
            Profile::load(p)
                .map_err(|e| anyhow::anyhow!("--profile {p}: {e}"))?
                .redundancy
        }
        None => None,
    };
    Ok(RunOptions {
        nodes: cli.nodes.unwrap_or(cli.attach.len()) + cli.spare_nodes,
        spare_nodes: cli.spare_nodes,
        hosts,
        remote_dsmrun,
        slurm,
        attach: (!cli.attach.is_empty()).then_some(cli.attach),
        cache_bytes_max: cache,
        node_bytes: node,
        transport: match cli.transport {
            TransportArg::Tcp => TransportKind::Tcp,
            TransportArg::Shm => TransportKind::Shm,
            TransportArg::Verbs => TransportKind::Verbs,
            TransportArg::Auto => TransportKind::Auto,
        },
        stats_path: cli.stats,
        report_path: cli.report,
        progress: match (cli.progress, cli.no_progress) {
            (true, _) => true,
            (_, true) => false,
            _ => !cli.quiet && std::io::stderr().is_terminal(),
        },
        verbose: cli.verbose,
        quiet: cli.quiet,
        max_procs: cli.max_procs,
        space_base,
        handler_threads: cli.handler_threads,
        cpus: cli
            .cpus
            .as_deref()
            .map(launcher::cpus::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        mmap_min_bytes: size_arg("--mmap-min", &cli.mmap_min, false)?,
        preload_lib: cli.preload_lib,
        redundancy: match &cli.redundancy {
            Some(r) => r
                .parse()
                .map_err(|e| anyhow::anyhow!("--redundancy {r}: {e}"))?,
            None => profile_redundancy.unwrap_or_default(),
        },
        node_timeout_ms: match cli.node_timeout {
            0 => anyhow::bail!("--node-timeout 0: use a positive number of milliseconds"),
            ms => ms,
        },
        profile: cli.profile,
        record_trace: cli.record_trace,
        thrash_warning: (cli.thrash_warning > 0)
            .then(|| std::time::Duration::from_secs(cli.thrash_warning)),
        name: match cli.name {
            Some(n) => {
                launcher::jobs::check_name(&n).map_err(anyhow::Error::msg)?;
                Some(n)
            }
            None => None,
        },
        checkpoint: checkpoint_options(
            cli.checkpoint_dir.as_deref(),
            cli.checkpoint_every.as_deref(),
        )?,
        restore: None,
        program: cli.program,
    })
}

/// `--checkpoint-dir` and `--checkpoint-every`, checked.
fn checkpoint_options(
    dir: Option<&std::path::Path>,
    every: Option<&str>,
) -> Result<Option<CheckpointOptions>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let every = every
        .map(checkpoint::duration::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--checkpoint-every {e}"))?;
    let dir = checkpoint::restart::prepare_dir(dir).map_err(anyhow::Error::msg)?;
    Ok(Some(CheckpointOptions { dir, every }))
}

fn node_main(args: Vec<OsString>) -> Result<()> {
    let cli = NodeCli::parse_from(args);
    let bytes = parse_size(&cli.memory, None).map_err(anyhow::Error::msg)?;
    if bytes == 0 || bytes % 4096 != 0 {
        bail!(
            "--memory {}: must be a positive multiple of 4 KiB",
            cli.memory
        );
    }
    let mut size = NodeSize::of_memory(bytes);
    if let Some(text) = &cli.span {
        size.span_bytes = parse_size(text, None).map_err(anyhow::Error::msg)?;
        if size.span_bytes % 4096 != 0 || size.span_bytes <= NODE_HEADER_BYTES {
            bail!("--span {text}: must be a multiple of 4 KiB above the 64 KiB header");
        }
    }
    let secret = if cli.secret_stdin {
        secret_from_stdin()?
    } else {
        std::env::var("DSM_SECRET")
            .ok()
            .and_then(Secret::new)
            .context("DSM_SECRET is not set: a memory node needs the job secret")?
    };
    dsm_runtime::node::run(
        cli.id,
        cli.listen,
        size,
        secret,
        cli.die_with_parent,
        &dsm_runtime::node::Snapshots {
            dir: cli.snapshot_dir,
            restore: cli.restore,
        },
    )
    .with_context(|| format!("memory node {} on {}", cli.id, cli.listen))?;
    Ok(())
}

/// The secret on stdin's first line; then a thread that ends the node when stdin closes
/// (the launcher, or its ssh connection, is gone).
fn secret_from_stdin() -> Result<Secret> {
    use std::io::{BufRead, Read};
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .context("--secret-stdin: reading the secret")?;
    let secret = Secret::new(line.trim_end_matches(['\r', '\n']))
        .context("--secret-stdin: standard input closed before a secret was sent")?;
    drop(stdin);
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        eprintln!("dsmrun node: standard input closed: the launcher is gone, exiting");
        std::process::exit(0);
    });
    Ok(secret)
}

/// `dsmrun tune`: ranks profiles on a recorded trace.
#[derive(Parser, Debug)]
#[command(
    name = "dsmrun tune",
    about = "Replay a trace recorded with --record-trace through profiles' policies in a \
             cache simulator, and rank them by predicted remote fetches and stall time \
             (e.g. dsmrun tune run.dsmt --profiles default,random,velvet)"
)]
struct TuneCli {
    #[command(flatten)]
    args: TuneArgs,
}

/// `dsmrun report`: the HTML page of a `--stats` file.
#[derive(Parser, Debug)]
#[command(
    name = "dsmrun report",
    bin_name = "dsmrun report",
    about = "Make the HTML report of a job from the file it wrote with --stats: plots over \
             time, per-process and per-node tables, the options and the warnings, in one \
             file that opens offline (e.g. dsmrun report run.json -o run.html)"
)]
struct ReportCli {
    /// The job's --stats file.
    #[arg(value_name = "STATS.json")]
    stats: PathBuf,
    /// Where to write the page (default: STATS with the extension .html).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn report_main(args: Vec<OsString>) -> Result<()> {
    let cli = ReportCli::parse_from(args);
    let out = cli
        .output
        .unwrap_or_else(|| cli.stats.with_extension("html"));
    dsm_runtime::report::run(&cli.stats, &out)?;
    eprintln!("dsmrun report: wrote {}", out.display());
    Ok(())
}

/// `dsmrun suspend JOB` / `dsmrun resume JOB` / `dsmrun checkpoint JOB`.
#[derive(Parser, Debug)]
#[command(
    name = "dsmrun suspend|resume|status|checkpoint",
    bin_name = "dsmrun suspend|resume|status|checkpoint",
    about = "Suspend a running job (its processes write their dirty pages home, free their \
             local cache and stop; the nodes keep the data) or resume it; or take a \
             checkpoint of a job started with --checkpoint-dir now. JOB is the pid of \
             its dsmrun or the --name it was started with (e.g. dsmrun suspend velvet-run1). \
             SIGTSTP and SIGCONT sent to dsmrun do the same as suspend and resume."
)]
struct JobCli {
    /// The job: its dsmrun's pid or its --name.
    #[arg(value_name = "JOB")]
    job: String,
}

fn job_main(verb: &str, args: Vec<OsString>) -> Result<()> {
    let cli = JobCli::parse_from(args);
    let answer = launcher::jobs::request(&cli.job, verb).map_err(anyhow::Error::msg)?;
    println!("{answer}");
    Ok(())
}

/// `dsmrun restart DIR`.
#[derive(Parser, Debug)]
#[command(
    name = "dsmrun restart",
    bin_name = "dsmrun restart",
    about = "Restart a job from the newest complete checkpoint in DIR (written with \
             --checkpoint-dir): fresh nodes (here, on --hosts or --hostfile, or on a Slurm \
             allocation's hosts) load their snapshots, the program continues from its image, its pages come back from the nodes as it touches them. A damaged \
             checkpoint is refused, naming the file (e.g. dsmrun restart /scratch/ckpt)."
)]
struct RestartCli {
    /// The checkpoint directory.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Checkpoint the restarted job again this often, into DIR (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    checkpoint_every: Option<String>,
    /// Report the nodes, the checkpoints and each process on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Print no summary.
    #[arg(short, long)]
    quiet: bool,
    /// Write the job's counters as JSON to FILE, as for a run.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// A name for `dsmrun suspend|resume|checkpoint NAME`.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Where the fresh nodes run (default: this machine, or the Slurm allocation's hosts
    /// inside one); the checkpoint directory must be at the same path on those hosts.
    #[command(flatten)]
    placement: PlacementCli,
}

fn restart_main(args: Vec<OsString>) -> i32 {
    let cli = RestartCli::parse_from(args);
    let opts = (|| -> Result<RunOptions> {
        let every = cli
            .checkpoint_every
            .as_deref()
            .map(checkpoint::duration::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--checkpoint-every {e}"))?;
        if let Some(n) = &cli.name {
            launcher::jobs::check_name(n).map_err(anyhow::Error::msg)?;
        }
        let restore = checkpoint::restart::Restore::open(&cli.dir).map_err(anyhow::Error::msg)?;
        if cli.verbose {
            eprintln!(
                "dsmrun: restarting from {}/ckpt-{:04} ({} nodes, {} files checked)",
                cli.dir.display(),
                restore.manifest.sequence,
                restore.manifest.chains.len(),
                restore.manifest.files().count()
            );
        }
        let (hosts, remote_dsmrun, slurm) = cli.placement.parse()?;
        restore
            .run_options(checkpoint::restart::RestartArgs {
                hosts,
                remote_dsmrun,
                slurm,
                every,
                verbose: cli.verbose,
                quiet: cli.quiet,
                stats_path: cli.stats,
                name: cli.name,
            })
            .map_err(anyhow::Error::msg)
    })();
    let opts = match opts {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dsmrun restart: {e:#}");
            return EXIT_SETUP;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dsmrun"));
    match launcher::run(&opts, &exe) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dsmrun restart: {e}");
            e.exit_code()
        }
    }
}

/// `dsmrun restore-image IMAGE JOB_ENV`: internal (tests, and what `dsmrun restart`
/// runs): becomes the process saved in IMAGE, on the job described by the `DSM_*`
/// lines of JOB_ENV. Returns only by exiting with an error.
fn restore_image_main(args: &[OsString]) -> ! {
    let [image, job_env] = args else {
        eprintln!("usage: dsmrun restore-image IMAGE JOB_ENV (internal)");
        std::process::exit(EXIT_SETUP);
    };
    let e = dsm_runtime::checkpoint::restart::exec_restarter(
        std::path::Path::new(image),
        std::path::Path::new(job_env),
    );
    eprintln!(
        "dsmrun restore-image: {}: {e}",
        std::path::Path::new(image).display()
    );
    std::process::exit(EXIT_SETUP);
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    for verb in ["suspend", "resume", "status", "checkpoint"] {
        if args.get(1).is_some_and(|a| a == verb) {
            args.remove(1);
            if let Err(e) = job_main(verb, args) {
                eprintln!("dsmrun {verb}: {e:#}");
                std::process::exit(EXIT_SETUP);
            }
            return;
        }
    }
    if args.get(1).is_some_and(|a| a == "profiles") {
        tune::print_profiles();
        return;
    }
    if args.get(1).is_some_and(|a| a == "tune") {
        args.remove(1);
        let cli = TuneCli::parse_from(args);
        if let Err(e) = tune::run(cli.args) {
            eprintln!("dsmrun tune: {e:#}");
            std::process::exit(EXIT_SETUP);
        }
        return;
    }
    if args.get(1).is_some_and(|a| a == "report") {
        args.remove(1);
        if let Err(e) = report_main(args) {
            eprintln!("dsmrun report: {e:#}");
            std::process::exit(EXIT_SETUP);
        }
        return;
    }
    if args.get(1).is_some_and(|a| a == "restart") {
        args.remove(1);
        std::process::exit(restart_main(args));
    }
    if args
        .get(1)
        .is_some_and(|a| a == checkpoint::restart::RESTORE_VERB)
    {
        restore_image_main(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "node") {
        args.remove(1);
        if let Err(e) = node_main(args) {
            eprintln!("dsmrun node: {e:#}");
            std::process::exit(EXIT_SETUP);
        }
        return;
    }
    let cli = RunCli::parse_from(args);
    let code = match run_options(cli) {
        Err(e) => {
            eprintln!("dsmrun: {e:#}");
            EXIT_SETUP
        }
        Ok(opts) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dsmrun"));
            match launcher::run(&opts, &exe) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("dsmrun: {e}");
                    e.exit_code()
                }
            }
        }
    };
    std::process::exit(code);
}
