//! `dsmrun`: the launcher. For now it only runs a memory node (`dsmrun node`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use dsm_runtime::config::parse_size;
use dsm_runtime::transport::auth::Secret;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "dsmrun",
    version,
    about = "Run programs on distributed shared memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a memory node (normally started by dsmrun itself). The job secret is read from
    /// the DSM_SECRET environment variable.
    Node {
        /// Node index in the cluster.
        #[arg(long)]
        id: u16,
        /// Address to listen on, e.g. 127.0.0.1:0 (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Memory this node contributes (e.g. 64G); lazily backed.
        #[arg(long, default_value = "16G")]
        memory: String,
        /// Exit when the launching process exits.
        #[arg(long)]
        die_with_parent: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node {
            id,
            listen,
            memory,
            die_with_parent,
        } => {
            let bytes = parse_size(&memory, None).map_err(anyhow::Error::msg)?;
            if bytes == 0 || bytes % 4096 != 0 {
                bail!("--memory {memory}: must be a positive multiple of 4 KiB");
            }
            let secret = std::env::var("DSM_SECRET")
                .ok()
                .and_then(Secret::new)
                .context("DSM_SECRET is not set: a memory node needs the job secret")?;
            dsm_runtime::node::run(id, listen, bytes, secret, die_with_parent)
                .with_context(|| format!("memory node {id} on {listen}"))?;
            Ok(())
        }
    }
}
