//! dsm-fetch-bench: what one page fetch costs over the selected transport, measured the
//! way perftest measures RDMA READ so the two can be put side by side:
//!
//! - latency: `--iters` single-page `read_batch` round trips, one at a time
//!   (like `ib_read_lat -s 4096`): t_min, t_typical (median), t_avg, 99%, t_max in us;
//! - throughput: `--iters` pages fetched in batches of `--batch` (one doorbell per batch
//!   on verbs; like `ib_read_bw -s 4096`, which keeps a window of reads in flight), MB/s
//!   with MB = 2^20 bytes, as perftest prints it.
//!
//! Output lines start with `fetch_lat` and `fetch_bw` for scripts to parse.

mod cluster_args;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use cluster_args::ClusterArgs;
use dsm_runtime::transport::{NodeId, ReadOp};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "dsm-fetch-bench")]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Bytes per fetch.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Round trips for latency, and pages for throughput.
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Pages per batch for throughput.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Untimed round trips first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.size > 0 && cli.batch > 0 && cli.iters > 0,
        "sizes must be positive"
    );
    let sel = cli.cluster.transport("dsm-fetch-bench")?;
    let t = sel.transport;
    let node = t.nodes()[0].clone();
    let span = (node.region_bytes / cli.size as u64).clamp(1, 4096);
    let mut s = t.connect().context("opening a session")?;
    let mut buf = vec![0u8; cli.size];
    let at = |i: usize| (i as u64 % span) * cli.size as u64;

    for i in 0..cli.warmup {
        s.read_batch(&mut [ReadOp {
            node: NodeId(node.id.0),
            offset: at(i),
            buf: &mut buf,
        }])?;
    }
    let mut lat_ns = Vec::with_capacity(cli.iters);
    for i in 0..cli.iters {
        let t0 = Instant::now();
        s.read_batch(&mut [ReadOp {
            node: node.id,
            offset: at(i),
            buf: &mut buf,
        }])?;
        lat_ns.push(t0.elapsed().as_nanos() as u64);
    }
    lat_ns.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let avg = lat_ns.iter().sum::<u64>() as f64 / lat_ns.len() as f64 / 1000.0;
    let pct = |p: f64| lat_ns[((lat_ns.len() as f64 * p) as usize).min(lat_ns.len() - 1)];
    println!(
        "fetch_lat {} B x {} over {}: t_min {:.2} us, t_typical {:.2} us, t_avg {:.2} us, 99% {:.2} us, t_max {:.2} us",
        cli.size,
        cli.iters,
        t.name(),
        us(lat_ns[0]),
        us(pct(0.5)),
        avg,
        us(pct(0.99)),
        us(lat_ns[lat_ns.len() - 1])
    );

    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; cli.size]; cli.batch];
    let t0 = Instant::now();
    let mut done = 0usize;
    while done < cli.iters {
        let n = cli.batch.min(cli.iters - done);
        let mut ops: Vec<ReadOp<'_>> = bufs[..n]
            .iter_mut()
            .enumerate()
            .map(|(k, b)| ReadOp {
                node: node.id,
                offset: at(done + k),
                buf: b,
            })
            .collect();
        s.read_batch(&mut ops)?;
        done += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mbps = (done * cli.size) as f64 / secs / (1u64 << 20) as f64;
    println!(
        "fetch_bw {} B x {} over {} (batches of {}): {:.2} MB/s, {:.0} pages/s",
        cli.size,
        done,
        t.name(),
        cli.batch,
        mbps,
        done as f64 / secs
    );
    Ok(())
}
