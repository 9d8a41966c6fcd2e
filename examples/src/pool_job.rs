//! dsm-pool-job: a job on the runtime against running memory nodes, over the selected
//! transport. Starts [`dsm_runtime::Runtime`] with a local cache much smaller than the
//! working set, writes every page of the global range through ordinary stores (faults,
//! fetches, evictions, write-backs), reads it all back and checks every word, then
//! prints the runtime's statistics. Exit 0 when the data is exact.
//!
//! This stands in for `dsmrun -- PROGRAM` with an unmodified program until the launcher
//! can attach to nodes on other machines.

mod cluster_args;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use cluster_args::ClusterArgs;
use dsm_runtime::config::parse_size;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "dsm-pool-job")]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Size of the global range (the working set).
    #[arg(long, default_value = "16M")]
    space: String,
    /// Local cache (smaller than --space forces eviction and write-back).
    #[arg(long, default_value = "1M")]
    cache: String,
    /// Passes over the range (each pass rewrites every page).
    #[arg(long, default_value_t = 2)]
    passes: u64,
}

fn word(pass: u64, i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (pass << 56) ^ 0xd5
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let space = parse_size(&cli.space, None).map_err(anyhow::Error::msg)?;
    let cache = parse_size(&cli.cache, None).map_err(anyhow::Error::msg)?;
    let sel = cli.cluster.transport("dsm-pool-job")?;
    let config = RuntimeConfig {
        space_bytes: space,
        cache_bytes_max: cache,
        node_timeout_ms: cli.cluster.timeout_ms,
        ..Default::default()
    };
    let rt = Runtime::start(config, sel.transport.as_ref()).context("starting the runtime")?;
    let base = rt.base() as usize;
    let words = rt.len() / 8;
    // Touch one word per 512 (8 per page) to keep the run short under emulation, plus the
    // first and last word of every page.
    let stride = 64;
    let t0 = Instant::now();
    for pass in 0..cli.passes {
        for i in (0..words).step_by(stride) {
            // SAFETY: inside the runtime's global range, which lives until shutdown.
            unsafe { ((base + i * 8) as *mut u64).write_volatile(word(pass, i)) };
        }
        let mut bad = 0usize;
        for i in (0..words).step_by(stride) {
            // SAFETY: as above.
            let got = unsafe { ((base + i * 8) as *const u64).read_volatile() };
            if got != word(pass, i) {
                if bad < 5 {
                    eprintln!(
                        "pass {pass}: word {i} at {:#x}: {got:#x}, expected {:#x}",
                        base + i * 8,
                        word(pass, i)
                    );
                }
                bad += 1;
            }
        }
        ensure!(bad == 0, "pass {pass}: {bad} words wrong");
        println!(
            "pass {pass}: {} words over {} MiB written and verified",
            words / stride,
            rt.len() >> 20
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let s = rt.shutdown();
    println!("stats: {}", s.to_json());
    ensure!(
        s.remote_read_pages > 0 && s.remote_write_pages > 0 && s.evictions > 0,
        "expected fetches, evictions and write-backs with a cache smaller than the range"
    );
    println!(
        "pool-job: ok over {}: {} MiB range, {} KiB cache, {} passes in {secs:.1} s, {} pages \
         fetched, {} written back, {} evictions",
        sel.reason,
        space >> 20,
        cache >> 10,
        cli.passes,
        s.remote_read_pages,
        s.remote_write_pages,
        s.evictions
    );
    Ok(())
}
