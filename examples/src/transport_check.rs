//! dsm-transport-check: exercises one-sided read, write and compare-and-swap batches on
//! running memory nodes over the selected transport and verifies every byte, then
//! re-reads everything over TCP (so the node's memory itself is checked, not just what
//! the transport says). Exit 0 when every check passed.
//!
//! ```text
//! DSM_SECRET=... dsm-transport-check --nodes 192.0.2.1:7000 --transport verbs
//! ```

mod cluster_args;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use cluster_args::ClusterArgs;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{NodeId, ReadOp, Session, Transport, TransportError, WriteOp};
use std::path::Path;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

#[derive(Parser, Debug)]
#[command(name = "dsm-transport-check")]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Threads contending on one word with compare-and-swap increments.
    #[arg(long, default_value_t = 2)]
    cas_threads: usize,
    /// Increments per thread.
    #[arg(long, default_value_t = 200)]
    cas_increments: u64,
    /// Pages written and verified per node.
    #[arg(long, default_value_t = 600)]
    pages: usize,
    /// After the checks: open a session, create FILE.armed, wait for FILE.killed (the
    /// node 0 was killed by someone else), then check that a read fails with an error
    /// naming node 0 within the timeout, and that the next one fails at once.
    #[arg(long, value_name = "FILE")]
    node_death: Option<std::path::PathBuf>,
}

/// A deterministic byte for (node, offset): every byte of every page differs by position.
fn pattern(node: u16, offset: u64, seed: u64) -> u8 {
    let x = offset
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(node) << 40)
        .wrapping_add(seed);
    (x >> 29) as u8 ^ (offset as u8)
}

fn fill(node: u16, offset: u64, len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| pattern(node, offset + i as u64, seed))
        .collect()
}

fn verify(what: &str, node: u16, offset: u64, got: &[u8], seed: u64) -> Result<()> {
    for (i, b) in got.iter().enumerate() {
        let want = pattern(node, offset + i as u64, seed);
        if *b != want {
            bail!(
                "{what}: node {node} offset {:#x}: byte {want:#04x} expected, {b:#04x} found",
                offset + i as u64
            );
        }
    }
    Ok(())
}

struct Checks {
    passed: usize,
}

impl Checks {
    fn pass(&mut self, what: &str, t0: Instant) {
        self.passed += 1;
        println!("ok   {what} ({} ms)", t0.elapsed().as_millis());
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let sel = cli.cluster.transport("dsm-transport-check")?;
    let t = sel.transport;
    let nodes: Vec<(u16, u64)> = t.nodes().iter().map(|n| (n.id.0, n.region_bytes)).collect();
    ensure!(!nodes.is_empty(), "no nodes");
    println!(
        "transport {} ({}), {} node(s)",
        t.name(),
        sel.reason,
        nodes.len()
    );
    let mut s = t.connect().context("opening a session")?;
    let mut c = Checks { passed: 0 };
    let seed = 0x5eed;
    let pages = cli.pages;
    for &(_, bytes) in &nodes {
        ensure!(
            bytes >= ((pages + 8) * PAGE) as u64,
            "nodes need at least {} bytes for --pages {pages}",
            (pages + 8) * PAGE
        );
    }

    // 1. Write `pages` pages per node in one batch (chunked by the backend), one op per
    //    page, every node in the same batch.
    let t0 = Instant::now();
    let data: Vec<Vec<u8>> = nodes
        .iter()
        .flat_map(|&(n, _)| (0..pages).map(move |p| fill(n, (p * PAGE) as u64, PAGE, seed)))
        .collect();
    let ops: Vec<WriteOp<'_>> = nodes
        .iter()
        .flat_map(|&(n, _)| (0..pages).map(move |p| (n, p)))
        .zip(&data)
        .map(|((n, p), d)| WriteOp {
            node: NodeId(n),
            offset: (p * PAGE) as u64,
            data: d,
        })
        .collect();
    s.write_batch(&ops)?;
    c.pass(
        &format!(
            "write batch: {} single-page writes over {} node(s)",
            ops.len(),
            nodes.len()
        ),
        t0,
    );

    // 2. Read them back in one batch and verify every byte.
    let t0 = Instant::now();
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; PAGE]; nodes.len() * pages];
    {
        let mut rops: Vec<ReadOp<'_>> = nodes
            .iter()
            .flat_map(|&(n, _)| (0..pages).map(move |p| (n, p)))
            .zip(bufs.iter_mut())
            .map(|((n, p), b)| ReadOp {
                node: NodeId(n),
                offset: (p * PAGE) as u64,
                buf: b,
            })
            .collect();
        s.read_batch(&mut rops)?;
    }
    for (i, b) in bufs.iter().enumerate() {
        let (n, _) = nodes[i / pages];
        verify("read batch", n, ((i % pages) * PAGE) as u64, b, seed)?;
    }
    c.pass(
        &format!("read batch: {} single-page reads, every byte", bufs.len()),
        t0,
    );

    // 3. Single reads, one round trip each.
    let t0 = Instant::now();
    for &(n, _) in &nodes {
        for p in [0, 1, pages / 2, pages - 1] {
            let mut b = vec![0u8; PAGE];
            s.read_batch(&mut [ReadOp {
                node: NodeId(n),
                offset: (p * PAGE) as u64,
                buf: &mut b,
            }])?;
            verify("single read", n, (p * PAGE) as u64, &b, seed)?;
        }
    }
    c.pass("single-page reads", t0);

    // 4. Multi-page and unaligned operations: one op spanning 9 pages, odd offsets and
    //    lengths, mixed in one batch.
    let t0 = Instant::now();
    let (n0, _) = nodes[0];
    let spans: [(u64, usize); 4] = [
        (3 * PAGE as u64, 9 * PAGE),
        (17 * PAGE as u64 + 13, 100),
        (20 * PAGE as u64 - 7, 14),
        (40 * PAGE as u64 + 1, 3 * PAGE - 2),
    ];
    let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, l)| vec![0u8; l]).collect();
    {
        let mut rops: Vec<ReadOp<'_>> = spans
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(o, _), b)| ReadOp {
                node: NodeId(n0),
                offset: o,
                buf: b,
            })
            .collect();
        s.read_batch(&mut rops)?;
    }
    for (&(o, _), b) in spans.iter().zip(&bufs) {
        verify("multi-page/unaligned read", n0, o, b, seed)?;
    }
    // Overwrite the spans with another seed, read them back with one multi-page read.
    let seed2 = 0xbeef;
    let w: Vec<Vec<u8>> = spans.iter().map(|&(o, l)| fill(n0, o, l, seed2)).collect();
    let wops: Vec<WriteOp<'_>> = spans
        .iter()
        .zip(&w)
        .map(|(&(o, _), d)| WriteOp {
            node: NodeId(n0),
            offset: o,
            data: d,
        })
        .collect();
    s.write_batch(&wops)?;
    for (&(o, l), _) in spans.iter().zip(&w) {
        let mut b = vec![0u8; l];
        s.read_batch(&mut [ReadOp {
            node: NodeId(n0),
            offset: o,
            buf: &mut b,
        }])?;
        verify("multi-page/unaligned write", n0, o, &b, seed2)?;
    }
    c.pass("multi-page (9 pages) and unaligned reads and writes", t0);

    // 5. Out of bounds: rejected with an error naming the node; the session still works.
    let t0 = Instant::now();
    let (nl, bytes) = nodes[nodes.len() - 1];
    let mut b = vec![0u8; PAGE];
    match s.read_batch(&mut [ReadOp {
        node: NodeId(nl),
        offset: bytes - 100,
        buf: &mut b,
    }]) {
        Err(TransportError::Rejected { node, .. }) if node == NodeId(nl) => {}
        other => bail!("out-of-bounds read: expected a rejection naming node {nl}, got {other:?}"),
    }
    match s.compare_and_swap(NodeId(n0), 12, 0, 1) {
        Err(TransportError::Rejected { .. }) => {}
        other => bail!("unaligned compare-and-swap: expected a rejection, got {other:?}"),
    }
    s.read_batch(&mut [ReadOp {
        node: NodeId(n0),
        offset: 0,
        buf: &mut b,
    }])?;
    verify("read after a rejection", n0, 0, &b, seed)?;
    c.pass(
        "out-of-bounds read and unaligned CAS rejected; session still usable",
        t0,
    );

    // 6. Compare-and-swap semantics, and interplay with READ/WRITE of the same word.
    let t0 = Instant::now();
    let word = (pages as u64 + 2) * PAGE as u64;
    for &(n, _) in &nodes {
        let node = NodeId(n);
        s.write_batch(&[WriteOp {
            node,
            offset: word,
            data: &0u64.to_le_bytes(),
        }])?;
        let steps: [(u64, u64, u64); 5] = [
            (0, 5, 0),
            (0, 6, 5),
            (5, 7, 5),
            (7, u64::MAX - 1, 7),
            (u64::MAX - 1, 0x0123_4567_89ab_cdef, u64::MAX - 1),
        ];
        for (i, &(exp, new, found)) in steps.iter().enumerate() {
            let got = s.compare_and_swap(node, word, exp, new)?;
            ensure!(
                got == found,
                "compare-and-swap step {i} on node {n}: cas({exp:#x} -> {new:#x}) returned \
                 {got:#x}, expected {found:#x}"
            );
        }
        let mut v = [0u8; 8];
        s.read_batch(&mut [ReadOp {
            node,
            offset: word,
            buf: &mut v,
        }])?;
        ensure!(
            u64::from_le_bytes(v) == 0x0123_4567_89ab_cdef,
            "after compare-and-swap, READ of node {n} word {word:#x} gives {:#x}, expected \
             0x0123456789abcdef (byte order?)",
            u64::from_le_bytes(v)
        );
    }
    c.pass(
        "compare-and-swap results, and READ/WRITE of the same word agree",
        t0,
    );

    // 7. Contention: threads with their own sessions increment one word by CAS loops.
    let t0 = Instant::now();
    let counter = word + 64;
    s.write_batch(&[WriteOp {
        node: NodeId(n0),
        offset: counter,
        data: &0u64.to_le_bytes(),
    }])?;
    let retries: u64 = std::thread::scope(|sc| -> Result<u64> {
        let handles: Vec<_> = (0..cli.cas_threads)
            .map(|_| {
                let t = &t;
                sc.spawn(move || -> Result<u64> {
                    let mut s = t.connect()?;
                    let mut retries = 0;
                    for _ in 0..cli.cas_increments {
                        let mut cur = 0u64;
                        loop {
                            let got = s.compare_and_swap(NodeId(n0), counter, cur, cur + 1)?;
                            if got == cur {
                                break;
                            }
                            retries += 1;
                            ensure!(retries < 1_000_000, "compare-and-swap never succeeds");
                            cur = got;
                        }
                    }
                    Ok(retries)
                })
            })
            .collect();
        let mut r = 0;
        for h in handles {
            r += h.join().expect("thread")?;
        }
        Ok(r)
    })?;
    let mut v = [0u8; 8];
    s.read_batch(&mut [ReadOp {
        node: NodeId(n0),
        offset: counter,
        buf: &mut v,
    }])?;
    let want = cli.cas_threads as u64 * cli.cas_increments;
    ensure!(
        u64::from_le_bytes(v) == want,
        "{} threads x {} compare-and-swap increments gave {}, expected {want}: atomics lost \
         updates",
        cli.cas_threads,
        cli.cas_increments,
        u64::from_le_bytes(v)
    );
    c.pass(
        &format!(
            "{} threads x {} contended compare-and-swap increments exact ({retries} retries)",
            cli.cas_threads, cli.cas_increments
        ),
        t0,
    );

    // 8. The node's memory itself, read over TCP: every page written in step 1.
    let t0 = Instant::now();
    let tcp = TcpTransport::discover(
        &cli.cluster.nodes,
        cli.cluster.secret()?,
        Duration::from_millis(cli.cluster.timeout_ms),
    )?;
    let mut ts = tcp.connect()?;
    for &(n, _) in &nodes {
        for p in (0..pages).step_by(7) {
            if n == n0 && (3..52).contains(&p) {
                continue; // rewritten in step 4
            }
            let mut b = vec![0u8; PAGE];
            ts.read_batch(&mut [ReadOp {
                node: NodeId(n),
                offset: (p * PAGE) as u64,
                buf: &mut b,
            }])?;
            verify("re-read over TCP", n, (p * PAGE) as u64, &b, seed)?;
        }
    }
    let stats = ts.call(NodeId(n0), b"stats")?;
    println!("node {n0} stats: {}", String::from_utf8_lossy(&stats));
    c.pass("pages written over the transport read back over TCP", t0);
    drop(s);
    if let Some(f) = &cli.node_death {
        let t0 = Instant::now();
        node_death(&*t, f, cli.cluster.timeout_ms)?;
        c.pass("node killed mid-session: error names the node, no hang", t0);
    }
    println!(
        "transport-check: {} passed, 0 failed ({})",
        c.passed,
        t.name()
    );
    Ok(())
}

/// Opens a session, announces it (`FILE.armed`), waits for `FILE.killed`, then expects
/// a read of node 0 to fail naming node 0 within the timeout, and the next one too.
fn node_death(t: &dyn Transport, f: &Path, timeout_ms: u64) -> Result<()> {
    let mut s = t.connect()?;
    let mut b = vec![0u8; PAGE];
    let mut read = |s: &mut Box<dyn Session>| {
        s.read_batch(&mut [ReadOp {
            node: NodeId(0),
            offset: 0,
            buf: &mut b,
        }])
    };
    read(&mut s)?;
    let armed = f.with_extension("armed");
    let killed = f.with_extension("killed");
    std::fs::write(&armed, b"")?;
    let t0 = Instant::now();
    while !killed.exists() {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "nobody killed the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let err = match read(&mut s) {
        Ok(()) => bail!("read from a killed node succeeded"),
        Err(e) => e,
    };
    let ms = t0.elapsed().as_millis();
    println!("node death: first read failed after {ms} ms: {err}");
    ensure!(err.node() == NodeId(0), "error does not name node 0: {err}");
    ensure!(
        ms <= u128::from(timeout_ms) + 2000,
        "the error took {ms} ms, more than the {timeout_ms} ms timeout"
    );
    let t0 = Instant::now();
    let again = read(&mut s);
    println!(
        "node death: next read after {} ms: {}",
        t0.elapsed().as_millis(),
        match &again {
            Ok(()) => "succeeded".to_string(),
            Err(e) => e.to_string(),
        }
    );
    ensure!(again.is_err(), "a read after the failure succeeded");
    Ok(())
}
