//! Command-line options shared by the examples that talk to running memory nodes.

use anyhow::{Context, Result};
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::{select, Selected, TransportKind};
use std::net::SocketAddr;
use std::time::Duration;

/// Where the nodes are and how to reach them.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Memory nodes, in node order (`host:port,host:port`). The job secret is read from
    /// DSM_SECRET.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<SocketAddr>,
    /// tcp, shm, verbs or auto (shm when every node is on this host, else verbs when an
    /// RDMA device is active, else TCP).
    #[arg(long, default_value = "auto")]
    pub transport: TransportKind,
    /// Any node operation slower than this fails, naming the node.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl ClusterArgs {
    /// The job secret from the environment.
    pub fn secret(&self) -> Result<Secret> {
        std::env::var("DSM_SECRET")
            .ok()
            .and_then(Secret::new)
            .context("DSM_SECRET is not set: the nodes need the job secret")
    }

    /// Sets up the transport and says which one was chosen, on stderr.
    pub fn transport(&self, who: &str) -> Result<Selected> {
        let s = select(
            self.transport,
            &self.nodes,
            self.secret()?,
            Duration::from_millis(self.timeout_ms),
        )?;
        eprintln!("{who}: transport: {}", s.reason);
        Ok(s)
    }
}
