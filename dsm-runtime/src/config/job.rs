//! The job: what `dsmrun` tells every process that loads the runtime, through `DSM_*`
//! environment variables, and how each process claims its own slice of the global space.
//!
//! `dsmrun` decides the job's global range once: `slots` slices of `slot_bytes` each
//! (4 TiB by default: address space is cheap), starting at `space_base`. A process that
//! loads the runtime (the program, and every program it `exec`s) claims a free slot with
//! a compare-and-swap on the slot table in node 0's header (`node::header`); the word
//! names the owner (its host and pid, see [`Owner`]). A slot whose owner has exited is
//! free again, so a shell script that runs many programs one after another never runs
//! out of slots, and a crashed process frees its slot by dying.
//! Slot `k` maps `[space_base + k * slot_bytes, +slot_bytes)` and places its pages as
//! global pages `k * slot_pages ..`, so slots never share a page's home. Node memory is
//! not divided among slots: pages claim it as they are first written home
//! (`space::pool`), so one process may fill the whole pool.
//!
//! Variables (unknown `DSM_*` names are rejected, so a typo is an error, not a default):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `DSM_NODES` | comma-separated node addresses, node 0 first (required) |
//! | `DSM_SECRET` | the job secret (required) |
//! | `DSM_TRANSPORT` | `auto` (default: shm when every node is on this host, else verbs when usable, else tcp), `tcp`, `shm` or `verbs` |
//! | `DSM_RDMA_DEVICE`, `DSM_RDMA_PORT`, `DSM_RDMA_GID_INDEX`, `DSM_RDMA_QP_TIMEOUT` | RDMA device, port, GID and QP timeout for `verbs` (docs/rdma.md) |
//! | `DSM_SPACE_BASE` | base of the job's range (hex with `0x`, or decimal) |
//! | `DSM_SLOT_BYTES` | size of each process's slice |
//! | `DSM_SLOTS` | most processes of the job that use the runtime at once (1-64) |
//! | `DSM_CACHE_BYTES` | local cache of each process |
//! | `DSM_HANDLER_THREADS` | fault-handler threads per process |
//! | `DSM_NODE_TIMEOUT_MS` | node operation timeout |
//! | `DSM_MMAP_MIN_BYTES` | anonymous `mmap`s at least this large are served from the global range (`0`: none) |
//! | `DSM_STATS_DIR` | where each process writes its statistics at exit |
//! | `DSM_VERBOSE` | `1` to report each process's start and end on stderr |
//! | `DSM_PROFILE` | policy profile: a shipped name or a path to a TOML file |
//! | `DSM_TRACE` | record the page-access stream to this file (`FILE.SLOT` for slots above 0) |
//! | `DSM_SPARE_NODES` | the last this many of `DSM_NODES` hold no pages until one stands in for a dead node (default 0) |
//! | `DSM_REDUNDANCY` | `none` (default), `replicate:R` or `ec:K+M`: how many places each page is kept at home (`redundancy`) |
//! | `DSM_HANDLER_FOLLOW` | `0`: do not move the job to the faulting thread's CPU (`dsmrun` sets it with `--cpus`; `fault::follow`) |
//! | `DSM_HANDLER_HELPER` | `0`: no helper fault handler for several threads faulting over a network (`fault::helper`) |
//! | `DSM_FOLLOW_NODE_PIDS`, `DSM_FOLLOW_PARENT` | the local nodes' pids, moved with the faulting thread, and the launcher's pid (only its child moves them) |
//! | `DSM_ALLOW_SKIP`, `DSM_SKIP_LOG`, `DSM_SKIP_VERBS`, `DSM_SKIP_SOFT_ROCE`, `DSM_SKIP_FUZZ`, `DSM_CHAOS_SEED` | the test suite's own (scripts/test-all); accepted and ignored |

use super::{parse_size, ConfigError, RuntimeConfig, DEFAULT_SPACE_BASE, SPACE_END_MAX};
use crate::node::header::slot_owner_offset;
use crate::space::PAGE_BYTES;
use crate::transport::auth::Secret;
use crate::transport::{NodeId, Session, TransportError};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Most slots a job can have: the slot table is one page of 8-byte words, and 64 is plenty.
pub const SLOTS_MAX: usize = 64;

/// Every variable a process of a job reads.
pub const KNOWN_VARS: &[&str] = &[
    "DSM_NODES",
    "DSM_SECRET",
    "DSM_TRANSPORT",
    "DSM_SPACE_BASE",
    "DSM_SLOT_BYTES",
    "DSM_SLOTS",
    "DSM_CACHE_BYTES",
    "DSM_HANDLER_THREADS",
    "DSM_NODE_TIMEOUT_MS",
    "DSM_MMAP_MIN_BYTES",
    "DSM_STATS_DIR",
    "DSM_VERBOSE",
    "DSM_PROFILE",
    "DSM_TRACE",
    "DSM_REDUNDANCY",
    "DSM_SPARE_NODES",
    // RDMA device selection, read by the verbs transport (transport/verbs/device.rs).
    "DSM_RDMA_DEVICE",
    "DSM_RDMA_PORT",
    "DSM_RDMA_GID_INDEX",
    "DSM_RDMA_QP_TIMEOUT",
    // Placement by default, read by the fault handler (fault/follow.rs).
    "DSM_HANDLER_FOLLOW",
    "DSM_FOLLOW_NODE_PIDS",
    "DSM_FOLLOW_PARENT",
    // The helper fault handler, read by the runtime (fault/helper.rs).
    "DSM_HANDLER_HELPER",
    // Read by scripts/test-all and the tests, ignored here: they reach every program the
    // tests run under dsmrun, which must not take them for typos.
    "DSM_ALLOW_SKIP",
    "DSM_SKIP_LOG",
    "DSM_SKIP_VERBS",
    "DSM_SKIP_SOFT_ROCE",
    "DSM_SKIP_FUZZ",
    "DSM_CHAOS_SEED",
];

/// Errors reading the job description or claiming a slot.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No `DSM_NODES`: this process is not part of a job.
    #[error("DSM_NODES is not set: not started by dsmrun")]
    NotInJob,
    /// A `DSM_*` variable nobody reads.
    #[error("unknown environment variable {name}: the runtime reads only {}", KNOWN_VARS.join(", "))]
    UnknownVar { name: String },
    /// A variable with an unusable value.
    #[error("{name}={value:?}: {hint}")]
    BadVar {
        name: &'static str,
        value: String,
        hint: String,
    },
    /// The resulting runtime configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Every slot is held by a live process.
    #[error(
        "all {slots} slots of the job's global space are in use by running processes; \
         raise dsmrun --max-procs"
    )]
    SlotsFull { slots: usize },
    /// The slot a restarted process must have again is held by a live process.
    #[error(
        "slot {slot} of the job's global space, which the restarted process must have \
         again, is held by a running process"
    )]
    SlotHeld { slot: usize },
    /// Node 0 failed while claiming a slot.
    #[error("claiming a slot on node 0: {0}")]
    Transport(#[from] TransportError),
}

/// The transport backends a job can use (`tcp`, `shm`, `verbs`, `auto`).
pub use crate::transport::TransportKind;

/// The job description every process of the job reads from its environment.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Node addresses, by node index.
    pub nodes: Vec<SocketAddr>,
    /// The job secret.
    pub secret: Secret,
    /// Transport backend.
    pub transport: TransportKind,
    /// Base of the job's global range.
    pub space_base: usize,
    /// Bytes of each process's slice.
    pub slot_bytes: u64,
    /// Number of slices.
    pub slots: usize,
    /// Local cache of each process.
    pub cache_bytes_max: u64,
    /// Fault-handler threads per process.
    pub handler_threads: usize,
    /// Node operation timeout.
    pub node_timeout_ms: u64,
    /// Smallest anonymous mmap served from the global range (0: none).
    pub mmap_min_bytes: u64,
    /// Where processes write statistics at exit.
    pub stats_dir: Option<PathBuf>,
    /// Report starts and ends on stderr.
    pub verbose: bool,
    /// Pages per placement chunk.
    pub placement_chunk_pages: u64,
    /// Policy profile (shipped name or path); `None` for the shipped `default` profile.
    pub profile: Option<String>,
    /// Where to record the page-access stream.
    pub trace: Option<PathBuf>,
    /// How many places each page is kept at home.
    pub redundancy: crate::redundancy::Redundancy,
    /// Nodes at the end of `nodes` that stand in for dead ones.
    pub spare_nodes: usize,
}

fn bad(name: &'static str, value: &str, hint: impl Into<String>) -> JobError {
    JobError::BadVar {
        name,
        value: value.to_string(),
        hint: hint.into(),
    }
}

fn parse_addr(text: &str) -> Result<usize, String> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16).map_err(|e| e.to_string()),
        None => t
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string()),
    }
}

impl JobConfig {
    /// Reads the job from the process environment.
    pub fn from_env() -> Result<JobConfig, JobError> {
        Self::from_vars(std::env::vars_os())
    }

    /// Reads the job from `vars` (name, value pairs); only `DSM_*` names are looked at.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<JobConfig, JobError> {
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for (k, v) in vars {
            let Some(k) = k.to_str() else { continue };
            if !k.starts_with("DSM_") {
                continue;
            }
            let Some(known) = KNOWN_VARS.iter().find(|n| **n == k) else {
                return Err(JobError::UnknownVar { name: k.into() });
            };
            found.push((known, v.to_string_lossy().into_owned()));
        }
        let get = |name: &str| {
            found
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let nodes_text = get("DSM_NODES").ok_or(JobError::NotInJob)?;
        let nodes = nodes_text
            .split(',')
            .map(|a| a.trim().parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(
                    "DSM_NODES",
                    nodes_text,
                    format!("{e}: expect host:port,..."),
                )
            })?;
        if nodes.is_empty() {
            return Err(bad("DSM_NODES", nodes_text, "no nodes"));
        }
        let secret_text = get("DSM_SECRET").unwrap_or("");
        let secret = Secret::new(secret_text).ok_or_else(|| {
            bad(
                "DSM_SECRET",
                "<hidden>",
                "the job secret is missing or empty",
            )
        })?;
        let transport_text = get("DSM_TRANSPORT").unwrap_or("auto");
        let transport: TransportKind = transport_text
            .parse()
            .map_err(|e: String| bad("DSM_TRANSPORT", transport_text, e))?;
        let size = |name: &'static str, default: u64| -> Result<u64, JobError> {
            match get(name) {
                None => Ok(default),
                Some(v) => parse_size(v, None).map_err(|e| bad(name, v, e)),
            }
        };
        let number = |name: &'static str, default: u64| -> Result<u64, JobError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| bad(name, v, "not a number")),
            }
        };
        let space_base = match get("DSM_SPACE_BASE") {
            None => DEFAULT_SPACE_BASE,
            Some(v) => parse_addr(v).map_err(|e| bad("DSM_SPACE_BASE", v, e))?,
        };
        let defaults = RuntimeConfig::default();
        let job = JobConfig {
            nodes,
            secret,
            transport,
            space_base,
            slot_bytes: size("DSM_SLOT_BYTES", DEFAULT_SLOT_BYTES)?,
            slots: number("DSM_SLOTS", 8)? as usize,
            cache_bytes_max: size("DSM_CACHE_BYTES", defaults.cache_bytes_max)?,
            handler_threads: number("DSM_HANDLER_THREADS", defaults.handler_threads as u64)?
                as usize,
            node_timeout_ms: number("DSM_NODE_TIMEOUT_MS", defaults.node_timeout_ms)?,
            mmap_min_bytes: size("DSM_MMAP_MIN_BYTES", 128 << 10)?,
            stats_dir: get("DSM_STATS_DIR").map(PathBuf::from),
            verbose: matches!(get("DSM_VERBOSE"), Some("1" | "yes" | "true")),
            placement_chunk_pages: defaults.placement_chunk_pages,
            profile: get("DSM_PROFILE").map(str::to_owned),
            trace: get("DSM_TRACE").map(PathBuf::from),
            redundancy: match get("DSM_REDUNDANCY") {
                None => Default::default(),
                Some(v) => v.parse().map_err(|e: String| bad("DSM_REDUNDANCY", v, e))?,
            },
            spare_nodes: number("DSM_SPARE_NODES", 0)? as usize,
        };
        job.validate()?;
        Ok(job)
    }

    /// The variables that describe this job, for a launcher to set.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let nodes: Vec<String> = self.nodes.iter().map(ToString::to_string).collect();
        let mut v = vec![
            ("DSM_NODES", nodes.join(",")),
            ("DSM_SECRET", self.secret.as_str().to_string()),
            ("DSM_TRANSPORT", self.transport.to_string()),
            ("DSM_SPACE_BASE", format!("{:#x}", self.space_base)),
            ("DSM_SLOT_BYTES", self.slot_bytes.to_string()),
            ("DSM_SLOTS", self.slots.to_string()),
            ("DSM_CACHE_BYTES", self.cache_bytes_max.to_string()),
            ("DSM_HANDLER_THREADS", self.handler_threads.to_string()),
            ("DSM_NODE_TIMEOUT_MS", self.node_timeout_ms.to_string()),
            ("DSM_MMAP_MIN_BYTES", self.mmap_min_bytes.to_string()),
            ("DSM_VERBOSE", u8::from(self.verbose).to_string()),
            ("DSM_REDUNDANCY", self.redundancy.to_string()),
            ("DSM_SPARE_NODES", self.spare_nodes.to_string()),
        ];
        if let Some(d) = &self.stats_dir {
            v.push(("DSM_STATS_DIR", d.display().to_string()));
        }
        if let Some(p) = &self.profile {
            v.push(("DSM_PROFILE", p.clone()));
        }
        if let Some(t) = &self.trace {
            v.push(("DSM_TRACE", t.display().to_string()));
        }
        v
    }

    /// Checks the job as a whole, and that every slot makes a valid runtime.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.slots == 0 || self.slots > SLOTS_MAX {
            return Err(bad(
                "DSM_SLOTS",
                &self.slots.to_string(),
                format!("use 1 to {SLOTS_MAX}"),
            ));
        }
        if self.slot_bytes == 0 || self.slot_bytes % SLOT_ALIGN_BYTES != 0 {
            return Err(bad(
                "DSM_SLOT_BYTES",
                &self.slot_bytes.to_string(),
                "use a positive multiple of 64 MiB",
            ));
        }
        let end = (self.slot_bytes as u128) * self.slots as u128 + self.space_base as u128;
        if end > SPACE_END_MAX as u128 {
            return Err(bad(
                "DSM_SLOT_BYTES",
                &self.slot_bytes.to_string(),
                format!(
                    "{} slots of this size from {:#x} pass {SPACE_END_MAX:#x}",
                    self.slots, self.space_base
                ),
            ));
        }
        let placed = crate::redundancy::placed_nodes(self.nodes.len(), self.spare_nodes)
            .map_err(|hint| bad("DSM_SPARE_NODES", &self.spare_nodes.to_string(), hint))?;
        if let Err(hint) = self.redundancy.check_nodes(placed) {
            return Err(bad("DSM_REDUNDANCY", &self.redundancy.to_string(), hint));
        }
        if let Err(hint) = self.groups_within_slots() {
            return Err(bad("DSM_REDUNDANCY", &self.redundancy.to_string(), hint));
        }
        for slot in [0, self.slots - 1] {
            self.runtime_config(slot).validate()?;
        }
        Ok(())
    }

    /// Erasure-coded groups are `K` consecutive global pages under the interleaved
    /// placement of one page per chunk (`redundancy::stripes`); a group that straddled two
    /// processes' slots would have its parity updated by both at once.
    fn groups_within_slots(&self) -> Result<(), String> {
        let crate::redundancy::Redundancy::ErasureCoded { data, .. } = self.redundancy else {
            return Ok(());
        };
        let slot_pages = self.slot_bytes / PAGE_BYTES as u64;
        if self.slots > 1 && (self.placement_chunk_pages != 1 || slot_pages % u64::from(data) != 0)
        {
            return Err(format!(
                "with several processes, ec:{data}+1 needs placement chunks of one page and \
                 {data} to divide each process's {slot_pages} pages (use a power of two for K, \
                 or --max-procs 1)"
            ));
        }
        Ok(())
    }

    /// Pages of global space the whole job spans (all slots): what the nodes' regions
    /// must be able to place, not memory they must hold.
    pub fn space_pages(&self) -> u64 {
        self.slots as u64 * (self.slot_bytes / PAGE_BYTES as u64)
    }

    /// The runtime configuration of the process holding `slot`.
    pub fn runtime_config(&self, slot: usize) -> RuntimeConfig {
        let slot_pages = self.slot_bytes / PAGE_BYTES as u64;
        RuntimeConfig {
            space_base: self
                .space_base
                .wrapping_add(slot.wrapping_mul(self.slot_bytes as usize)),
            space_bytes: self.slot_bytes,
            space_page_offset: slot as u64 * slot_pages,
            pool_slot: Some(slot),
            cache_bytes_max: self.cache_bytes_max,
            handler_threads: self.handler_threads,
            node_timeout_ms: self.node_timeout_ms,
            placement_chunk_pages: self.placement_chunk_pages,
            redundancy: self.redundancy,
            spare_nodes: self.spare_nodes,
            ..RuntimeConfig::default()
        }
    }

    /// Where process `slot` records its trace, if the job records one: the file itself for
    /// slot 0, `FILE.SLOT` for the others (children of the program).
    pub fn trace_path(&self, slot: usize) -> Option<PathBuf> {
        let base = self.trace.as_ref()?;
        if slot == 0 {
            return Some(base.clone());
        }
        let mut p = base.clone().into_os_string();
        p.push(format!(".{slot}"));
        Some(PathBuf::from(p))
    }

    /// Claims a free slot for `me` (see [`Owner::this_process`]), using `alive` to tell
    /// whether a slot's previous owner still runs. A slot held by `me` itself was claimed
    /// by the program this process ran before an `exec`; it is reused.
    pub fn claim_slot(
        &self,
        session: &mut dyn Session,
        me: Owner,
        alive: impl Fn(Owner) -> bool,
    ) -> Result<usize, JobError> {
        // Two passes: a slot freed by an exit between our read and our swap is seen again.
        for _ in 0..2 {
            for slot in 0..self.slots {
                let offset = slot_owner_offset(slot);
                let word = session.compare_and_swap(NodeId(0), offset, 0, 0)?;
                let owner = Owner(word);
                // Our own word: the image we replaced with exec held it, and is gone.
                if word != 0 && !owner.same_process(me) && alive(owner) {
                    continue;
                }
                if session.compare_and_swap(NodeId(0), offset, word, me.0)? == word {
                    return Ok(slot);
                }
            }
        }
        Err(JobError::SlotsFull { slots: self.slots })
    }
}

impl JobConfig {
    /// Claims `slot` itself for `me`: a restarted process must have the slot it had when
    /// its image was taken (its heap is there), although the slot table, restored on the
    /// nodes, names its old pid (`previous_pid`, on whatever host it ran: that word is
    /// taken over even if some process now has that pid here).
    pub fn claim_slot_again(
        &self,
        session: &mut dyn Session,
        slot: usize,
        (me, previous_pid): (Owner, u32),
        alive: impl Fn(Owner) -> bool,
    ) -> Result<(), JobError> {
        if slot >= self.slots {
            return Err(JobError::SlotsFull { slots: self.slots });
        }
        let offset = slot_owner_offset(slot);
        for _ in 0..2 {
            let word = session.compare_and_swap(NodeId(0), offset, 0, 0)?;
            let owner = Owner(word);
            let ours = owner.same_process(me) || owner.pid() == previous_pid;
            if word != 0 && !ours && alive(owner) {
                return Err(JobError::SlotHeld { slot });
            }
            if session.compare_and_swap(NodeId(0), offset, word, me.0)? == word {
                return Ok(());
            }
        }
        Err(JobError::SlotHeld { slot })
    }
}

/// Default size of each process's slice of the global range: address space, not memory.
pub const DEFAULT_SLOT_BYTES: u64 = 4 << 40;

/// Slot sizes are multiples of this, so that each slot starts where an allocator's arena
/// may start (mimalloc wants 64 KiB; a round size keeps addresses readable).
pub const SLOT_ALIGN_BYTES: u64 = 64 << 20;

/// Who holds a slot: a hash of the host's boot id in the high 32 bits (never 0), the pid
/// in the low 31, and a flag bit. Processes of one job may run on several hosts and share
/// node 0's slot table, where a pid alone would name different processes; a slot owned by
/// another host's process is never taken, since its liveness cannot be checked from here
/// (it is freed when the job ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner(pub u64);

/// Set in an owner word while its holder gives back the node memory of a dead process's
/// slot (`space::pool`): the slot is held, by a live process, until that is done.
pub const OWNER_RECLAIMING: u64 = 1 << 31;

impl Owner {
    /// `pid` on the host tagged `host`.
    pub fn new(host: u32, pid: u32) -> Owner {
        Owner((u64::from(host.max(1)) << 32) | u64::from(pid & 0x7fff_ffff))
    }

    /// The calling process on this host.
    pub fn this_process() -> Owner {
        Owner::new(host_tag(), std::process::id())
    }

    /// The host tag.
    pub fn host(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The pid on that host.
    pub fn pid(self) -> u32 {
        (self.0 & 0x7fff_ffff) as u32
    }

    /// The same process, whatever the flag bits.
    pub fn same_process(self, other: Owner) -> bool {
        self.host() == other.host() && self.pid() == other.pid()
    }

    /// This owner, marked as giving back a dead slot's memory.
    pub fn reclaiming(self) -> Owner {
        Owner(self.0 | OWNER_RECLAIMING)
    }
}

/// This host's tag: a hash of its boot id (which also tells apart VMs and reboots), or of
/// its host name if the boot id cannot be read.
pub fn host_tag() -> u32 {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let h = id.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    ((h >> 32) as u32 ^ h as u32).max(1)
}

/// Whether the process `owner` may still run: one of this host's that exists, or any of
/// another host's.
pub fn owner_alive(owner: Owner) -> bool {
    owner.host() != host_tag() || pid_alive(owner.pid())
}

/// Whether process `pid` exists on this machine and has not exited: a zombie (killed,
/// not yet reaped by a parent that may never do it) holds nothing any more.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    exists && !zombie(pid)
}

/// Whether `pid` has exited and waits to be reaped (state `Z` in /proc/PID/stat).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn reads_a_job_and_rejects_unknown_keys() {
        let base = [
            ("DSM_NODES", "127.0.0.1:1,127.0.0.1:2"),
            ("DSM_SECRET", "s3cret"),
            ("DSM_SLOT_BYTES", "1G"),
            ("DSM_CACHE_BYTES", "64M"),
            ("PATH", "/bin"),
        ];
        let job = JobConfig::from_vars(vars(&base)).unwrap();
        assert_eq!(job.nodes.len(), 2);
        assert_eq!(job.cache_bytes_max, 64 << 20);
        let round = JobConfig::from_vars(
            job.to_vars()
                .into_iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .unwrap();
        assert_eq!(round.slot_bytes, job.slot_bytes);

        let mut suite = base.to_vec();
        suite.push(("DSM_SKIP_LOG", "/tmp/x"));
        suite.push(("DSM_ALLOW_SKIP", "1"));
        assert!(
            JobConfig::from_vars(vars(&suite)).is_ok(),
            "the test suite's variables reach programs under test"
        );

        let mut typo = base.to_vec();
        typo.push(("DSM_CACHE_BYTE", "1G"));
        let err = JobConfig::from_vars(vars(&typo)).unwrap_err();
        assert!(err.to_string().contains("DSM_CACHE_BYTE"), "{err}");

        let mut badsize = base.to_vec();
        badsize[2] = ("DSM_SLOT_BYTES", "100M");
        assert!(matches!(
            JobConfig::from_vars(vars(&badsize)),
            Err(JobError::BadVar {
                name: "DSM_SLOT_BYTES",
                ..
            })
        ));
        assert!(matches!(
            JobConfig::from_vars(vars(&[("PATH", "/bin")])),
            Err(JobError::NotInJob)
        ));
    }

    #[test]
    fn transport_and_rdma_variables_are_read() {
        let base = [("DSM_NODES", "127.0.0.1:1"), ("DSM_SECRET", "x")];
        assert_eq!(
            JobConfig::from_vars(vars(&base)).unwrap().transport,
            TransportKind::Auto
        );
        for (text, kind) in [
            ("tcp", TransportKind::Tcp),
            ("shm", TransportKind::Shm),
            ("verbs", TransportKind::Verbs),
            ("auto", TransportKind::Auto),
        ] {
            let mut v = base.to_vec();
            v.push(("DSM_TRANSPORT", text));
            v.push(("DSM_RDMA_DEVICE", "rxe0"));
            v.push(("DSM_RDMA_GID_INDEX", "1"));
            let job = JobConfig::from_vars(vars(&v)).unwrap();
            assert_eq!(job.transport, kind);
            let round: Vec<_> = job.to_vars();
            assert!(round.contains(&("DSM_TRANSPORT", text.to_string())));
        }
        let mut v = base.to_vec();
        v.push(("DSM_TRANSPORT", "infiniband"));
        let err = JobConfig::from_vars(vars(&v)).unwrap_err();
        assert!(
            matches!(
                err,
                JobError::BadVar {
                    name: "DSM_TRANSPORT",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("tcp, shm, verbs or auto"), "{err}");
    }

    #[test]
    fn slots_use_disjoint_addresses_and_node_pages() {
        let job = JobConfig::from_vars(vars(&[
            ("DSM_NODES", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"),
            ("DSM_SECRET", "x"),
            ("DSM_SLOT_BYTES", "128M"),
            ("DSM_SLOTS", "4"),
        ]))
        .unwrap();
        let a = job.runtime_config(0);
        let b = job.runtime_config(1);
        assert_eq!(a.space_base + (128 << 20), b.space_base);
        assert_eq!(a.space_page_offset, 0);
        assert_eq!(b.space_page_offset, (128 << 20) / 4096);
        assert_eq!(job.space_pages(), 4 * (128 << 20) / 4096);
    }

    #[test]
    fn a_restarted_process_takes_its_old_slot_back_but_not_a_live_stranger() {
        use crate::effects::memory::MemoryNodes;
        let job = JobConfig::from_vars(vars(&[
            ("DSM_NODES", "127.0.0.1:1"),
            ("DSM_SECRET", "x"),
            ("DSM_SLOT_BYTES", "128M"),
            ("DSM_SLOTS", "3"),
        ]))
        .unwrap();
        let mut nodes = MemoryNodes::new();
        let everyone_alive = |_: Owner| true;
        let old = Owner::new(7, 300);
        let stranger = Owner::new(7, 400);
        assert_eq!(
            job.claim_slot(&mut nodes, stranger, everyone_alive)
                .unwrap(),
            0
        );
        assert_eq!(job.claim_slot(&mut nodes, old, everyone_alive).unwrap(), 1);
        // The restarted process (pid 500 on another host) takes slot 1 back from its old
        // pid, alive or not; slot 0 stays the live stranger's.
        let restarted = Owner::new(9, 500);
        job.claim_slot_again(&mut nodes, 1, (restarted, 300), everyone_alive)
            .unwrap();
        assert!(matches!(
            job.claim_slot_again(&mut nodes, 0, (restarted, 300), everyone_alive),
            Err(JobError::SlotHeld { slot: 0 })
        ));
        assert!(matches!(
            job.claim_slot_again(&mut nodes, 3, (restarted, 300), everyone_alive),
            Err(JobError::SlotsFull { slots: 3 })
        ));
    }

    #[test]
    fn a_slot_is_never_taken_from_a_live_process_or_another_hosts() {
        use crate::effects::memory::MemoryNodes;
        let job = JobConfig::from_vars(vars(&[
            ("DSM_NODES", "127.0.0.1:1"),
            ("DSM_SECRET", "x"),
            ("DSM_SLOT_BYTES", "128M"),
            ("DSM_SLOTS", "3"),
        ]))
        .unwrap();
        let mut nodes = MemoryNodes::new();
        let here = 7;
        let alive_here = |o: Owner| o.host() != here || o.pid() == 100;
        // Another host's process whose pid happens to be dead here, then a live local one.
        let remote = Owner::new(8, 200);
        assert_eq!(job.claim_slot(&mut nodes, remote, alive_here).unwrap(), 0);
        let live = Owner::new(here, 100);
        assert_eq!(job.claim_slot(&mut nodes, live, alive_here).unwrap(), 1);
        // A pid-only check would have taken slot 0 (pid 200 is not alive on this host).
        let dead = Owner::new(here, 300);
        assert_eq!(job.claim_slot(&mut nodes, dead, alive_here).unwrap(), 2);
        let next = Owner::new(here, 400);
        // Slot 2's owner (pid 300) is dead here: its slot is free again.
        assert_eq!(job.claim_slot(&mut nodes, next, alive_here).unwrap(), 2);
        // Now everyone is alive (or remote): full.
        let late = Owner::new(here, 500);
        assert!(matches!(
            job.claim_slot(&mut nodes, late, |o| o.pid() != 500),
            Err(JobError::SlotsFull { slots: 3 })
        ));
        // The same process after an exec reuses its own slot, flags or not.
        assert_eq!(
            job.claim_slot(&mut nodes, Owner(next.reclaiming().0), |_| true)
                .unwrap(),
            2
        );
    }

    #[test]
    fn owner_words_keep_host_and_pid_apart() {
        let o = Owner::new(0xdead_beef, 4_194_304);
        assert_eq!((o.host(), o.pid()), (0xdead_beef, 4_194_304));
        assert!(o.same_process(o.reclaiming()));
        assert_ne!(
            Owner::new(0, 1).0,
            0,
            "a zero host tag would look like a free slot"
        );
        assert!(
            owner_alive(Owner::new(host_tag() ^ 1, 1 << 30)),
            "another host's"
        );
        assert!(
            !owner_alive(Owner::new(host_tag(), 0x7fff_fff0)),
            "no such pid here"
        );
    }
}
