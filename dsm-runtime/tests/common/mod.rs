//! Helpers shared by the integration tests: real memory-node processes on loopback.
#![allow(dead_code)]

use dsm_runtime::launch::LocalNodes;
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::{Runtime, RuntimeConfig};
use std::path::Path;
use std::time::Duration;

/// Starts `n` node processes of `node_bytes` each and a transport to them.
pub fn cluster(n: usize, node_bytes: u64) -> (LocalNodes, TcpTransport) {
    let (nodes, secret) = nodes(n, node_bytes);
    let t = TcpTransport::discover(nodes.addrs(), secret, Duration::from_secs(3)).unwrap();
    (nodes, t)
}

/// Starts `n` node processes of `node_bytes` each; returns them and the job secret.
pub fn nodes(n: usize, node_bytes: u64) -> (LocalNodes, Secret) {
    let secret = Secret::generate().unwrap();
    let nodes = LocalNodes::spawn(
        Path::new(env!("CARGO_BIN_EXE_dsmrun")),
        n,
        node_bytes,
        &secret,
    )
    .unwrap();
    (nodes, secret)
}

/// A runtime at its own base (tests in one binary run concurrently in one process).
pub fn runtime(t: &TcpTransport, slot: usize, cache_bytes: u64, space_bytes: u64) -> Runtime {
    let config = RuntimeConfig {
        space_base: 0x1000_0000_0000 + slot * 0x100_0000_0000,
        space_bytes,
        cache_bytes_max: cache_bytes,
        ..Default::default()
    };
    Runtime::start(config, t).unwrap()
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
