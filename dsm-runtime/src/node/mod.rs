//! Memory nodes: each contributes a region of the global pool and serves one-sided
//! operations on it (see [`crate::transport`] for the contract they implement).

pub mod region;
pub mod request;
pub mod server;
#[cfg(feature = "verbs")]
pub mod verbs;

pub use server::NodeServer;

use crate::transport::auth::Secret;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};

/// The line a node prints on stdout once it listens, so a launcher learns its port.
pub const READY_PREFIX: &str = "DSM_NODE_LISTENING ";

/// Runs a memory node until killed: binds `listen`, announces the bound address on stdout,
/// and serves. With `die_with_parent`, the node exits when its launcher does, so a crashed
/// launcher leaves no orphans.
pub fn run(
    id: u16,
    listen: SocketAddr,
    region_bytes: u64,
    secret: Secret,
    die_with_parent: bool,
) -> io::Result<()> {
    if die_with_parent {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            return Err(io::Error::other("launcher exited before the node started"));
        }
    }
    let server = NodeServer::new(id, region_bytes, secret)?;
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let mut out = io::stdout().lock();
    writeln!(out, "{READY_PREFIX}{addr}")?;
    out.flush()?;
    drop(out);
    server.serve(listener)
}
