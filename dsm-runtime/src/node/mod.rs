//! Memory nodes: each contributes a region of the global pool and serves one-sided
//! operations on it (see [`crate::transport`] for the contract they implement).

pub mod header;
pub mod region;
pub mod request;
pub mod restore;
pub mod server;
pub mod snapshot;
#[cfg(feature = "verbs")]
pub mod verbs;

pub use server::NodeServer;

use crate::transport::auth::Secret;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};

/// The line a node prints on stdout once it listens, so a launcher learns its port.
pub const READY_PREFIX: &str = "DSM_NODE_LISTENING ";

/// What a node offers: the address space of its region (where pages of the global space
/// are placed) and the memory it may fill. The span can far exceed the memory: the region
/// is lazily backed, and pages claim memory only as they are written home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSize {
    /// Pages this node may hold, in bytes (`--memory`).
    pub memory_bytes: u64,
    /// Size of its region, header included (`--span`); at least `memory_bytes`.
    pub span_bytes: u64,
}

impl NodeSize {
    /// A node whose region is exactly its memory plus the header.
    pub fn of_memory(memory_bytes: u64) -> NodeSize {
        NodeSize {
            memory_bytes,
            span_bytes: memory_bytes + header::NODE_HEADER_BYTES,
        }
    }

    /// Pages the node may hold: its memory, or what fits in its span after the header.
    pub fn capacity_pages(&self) -> u64 {
        self.memory_bytes.min(header::data_bytes(self.span_bytes)) / 4096
    }
}

/// A node's part in checkpoints: where it may write snapshots, and what it starts from.
#[derive(Clone, Debug, Default)]
pub struct Snapshots {
    /// The directory snapshot calls write under (the job's `--checkpoint-dir`).
    pub dir: Option<std::path::PathBuf>,
    /// Snapshots restored at start (lazily), a base then its deltas.
    pub restore: Vec<std::path::PathBuf>,
}

/// Runs a memory node until killed: binds `listen`, announces the bound address on stdout,
/// and serves. With `die_with_parent`, the node exits when its launcher does, so a crashed
/// launcher leaves no orphans. Snapshot calls write under `snapshots.dir` (none without);
/// `snapshots.restore` (a base, then deltas) are restored lazily: their indexes are
/// checked before the node listens, their pages come back while it serves.
pub fn run(
    id: u16,
    listen: SocketAddr,
    size: NodeSize,
    secret: Secret,
    die_with_parent: bool,
    snapshots: &Snapshots,
) -> io::Result<()> {
    if die_with_parent {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            return Err(io::Error::other("launcher exited before the node started"));
        }
    }
    let server = NodeServer::new(id, size, secret)?;
    server.restore(&snapshots.restore)?;
    server.restore_in_background()?;
    if let Some(dir) = &snapshots.dir {
        check_snapshot_dir(id, dir)?;
        server.allow_snapshots_in(dir.clone());
    }
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let mut out = io::stdout().lock();
    writeln!(out, "{READY_PREFIX}{addr}")?;
    out.flush()?;
    drop(out);
    server.serve(listener)
}

/// A node on another host writes its snapshots into the job's checkpoint directory at the
/// path the launcher gave: that only works on a file system every host shares. Saying so
/// at start beats a failed checkpoint hours into the job.
fn check_snapshot_dir(id: u16, dir: &std::path::Path) -> io::Result<()> {
    let probe = dir.join(format!(".node-{id}-{}.probe", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        io::Error::other(format!(
            "checkpoint directory {}: cannot write there on this host ({e}); it must be \
             on a file system that every host of the job shares, at the same path",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
