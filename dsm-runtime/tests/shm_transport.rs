//! The shared-memory backend against real node processes: it is the same memory the
//! node serves over TCP, it checks bounds, it notices a dead node, and `--transport auto`
//! falls back to TCP for a node it cannot map (here: a node in another pid namespace,
//! whose `/proc/PID/fd/FD` names a different file from ours).

mod common;

use dsm_runtime::node::READY_PREFIX;
use dsm_runtime::transport::shm::{ShmTransport, ShmUnavailable};
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{
    select, NodeId, ReadOp, SelectError, Transport, TransportError, TransportKind, WriteOp,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

fn read(
    s: &mut dyn dsm_runtime::transport::Session,
    node: u16,
    offset: u64,
    len: usize,
) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    s.read_batch(&mut [ReadOp {
        node: NodeId(node),
        offset,
        buf: &mut buf,
    }])
    .unwrap();
    buf
}

#[test]
fn auto_picks_shm_for_local_nodes_and_it_is_the_nodes_memory() {
    let (nodes, secret) = common::nodes(2, 1 << 20);
    let s = select(TransportKind::Auto, nodes.addrs(), secret.clone(), TIMEOUT).unwrap();
    assert_eq!(s.transport.name(), "shm", "{}", s.reason);
    assert_eq!(s.reason, "auto: shm: every node runs on this host");
    let mut shm = s.transport.connect().unwrap();
    let tcp_t = TcpTransport::discover(nodes.addrs(), secret, TIMEOUT).unwrap();
    let mut tcp = tcp_t.connect().unwrap();

    // Written over shared memory, read over TCP: the same bytes, on both nodes.
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    shm.write_batch(&[
        WriteOp {
            node: NodeId(0),
            offset: 8192,
            data: &page,
        },
        WriteOp {
            node: NodeId(1),
            offset: (1 << 20) - 4096,
            data: &page[..4096],
        },
    ])
    .unwrap();
    assert_eq!(read(tcp.as_mut(), 0, 8192, 4096), page);
    assert_eq!(read(tcp.as_mut(), 1, (1 << 20) - 4096, 4096), page);
    // And the other way round.
    tcp.write_batch(&[WriteOp {
        node: NodeId(1),
        offset: 64,
        data: b"written over tcp",
    }])
    .unwrap();
    assert_eq!(read(shm.as_mut(), 1, 64, 16), b"written over tcp");
    // Compare-and-swap sees the other transport's value.
    assert_eq!(tcp.compare_and_swap(NodeId(0), 0, 0, 41).unwrap(), 0);
    assert_eq!(shm.compare_and_swap(NodeId(0), 0, 41, 42).unwrap(), 41);
    assert_eq!(tcp.compare_and_swap(NodeId(0), 0, 0, 1).unwrap(), 42);
    // Control calls still reach the node.
    assert_eq!(shm.call(NodeId(1), b"ping").unwrap(), b"pong");
}

#[test]
fn out_of_bounds_and_unaligned_operations_are_rejected_whole() {
    let (nodes, secret) = common::nodes(2, 1 << 20);
    let t =
        ShmTransport::discover(nodes.addrs(), secret, TIMEOUT).unwrap_or_else(|e| panic!("{e:?}"));
    let mut s = t.connect().unwrap();
    // A node's region is its memory plus its header.
    let region_bytes = t.nodes()[1].region_bytes;
    let mut ok = vec![0xAAu8; 4096];
    let mut bad = vec![0xAAu8; 4096];
    let err = s
        .read_batch(&mut [
            ReadOp {
                node: NodeId(0),
                offset: 0,
                buf: &mut ok,
            },
            ReadOp {
                node: NodeId(1),
                offset: region_bytes - 2048,
                buf: &mut bad,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected {
                node: NodeId(1),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("outside its region"), "{err}");
    // Never a partial transfer: the valid op was not done either.
    assert!(ok.iter().all(|b| *b == 0xAA));
    let err = s
        .write_batch(&[WriteOp {
            node: NodeId(0),
            offset: u64::MAX - 10,
            data: b"x",
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected {
                node: NodeId(0),
                ..
            }
        ),
        "{err}"
    );
    let err = s.compare_and_swap(NodeId(0), 4, 0, 1).unwrap_err();
    assert!(err.to_string().contains("aligned"), "{err}");
    let err = s.compare_and_swap(NodeId(7), 0, 0, 1).unwrap_err();
    assert!(
        matches!(err, TransportError::UnknownNode(NodeId(7))),
        "{err}"
    );
}

#[test]
fn a_dead_node_fails_the_next_operation_naming_it() {
    let (mut nodes, secret) = common::nodes(2, 1 << 20);
    let t =
        ShmTransport::discover(nodes.addrs(), secret, TIMEOUT).unwrap_or_else(|e| panic!("{e:?}"));
    let mut s = t.connect().unwrap();
    assert_eq!(read(s.as_mut(), 1, 0, 8), [0u8; 8]);
    nodes.kill(1);
    let killed = Instant::now();
    let mut buf = [0u8; 8];
    let err = loop {
        match s.read_batch(&mut [ReadOp {
            node: NodeId(1),
            offset: 0,
            buf: &mut buf,
        }]) {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(5),
                    "death never noticed"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    assert_eq!(err.node(), NodeId(1), "{err}");
    assert!(err.to_string().contains("process is gone"), "{err}");
    // The living node still serves.
    assert_eq!(read(s.as_mut(), 0, 0, 8), [0u8; 8]);
}

/// A node in its own pid namespace: `/proc/PID/fd/FD` in ours names another file.
struct ForeignNode {
    child: Child,
    addr: SocketAddr,
}

impl ForeignNode {
    fn spawn(secret: &str, id: u16) -> Option<ForeignNode> {
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(env!("CARGO_BIN_EXE_dsmrun"))
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                "127.0.0.1:0",
                "--memory",
                "1M",
            ])
            .env("DSM_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take()?)
            .read_line(&mut line)
            .ok()?;
        let Some(addr) = line.trim().strip_prefix(READY_PREFIX) else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        Some(ForeignNode {
            addr: addr.parse().ok()?,
            child,
        })
    }
}

impl Drop for ForeignNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_node_that_cannot_be_mapped_means_tcp_for_auto_and_an_error_for_shm() {
    let secret = dsm_runtime::transport::auth::Secret::generate().unwrap();
    let Some(node) = ForeignNode::spawn(secret.as_str(), 0) else {
        common::skip(
            "a_node_that_cannot_be_mapped_means_tcp_for_auto_and_an_error_for_shm",
            "cannot start a node in its own pid namespace: needs root and unshare (apt-get install util-linux)",
        );
        return;
    };
    let addrs = [node.addr];
    match ShmTransport::discover(&addrs, secret.clone(), TIMEOUT) {
        Err(ShmUnavailable::NotLocal(why)) => {
            assert!(why.contains("node 0"), "{why}");
            // Its PID names another process here (init, for a namespace's first child):
            // either that process's descriptor cannot be opened or it is another file.
            assert!(
                why.contains("not the one described") || why.contains("cannot open /proc/"),
                "{why}"
            );
        }
        Err(ShmUnavailable::Transport(e)) => panic!("{e}"),
        Ok(_) => panic!("mapped a node of another pid namespace"),
    }
    let err = match select(TransportKind::Shm, &addrs, secret.clone(), TIMEOUT) {
        Err(e) => e,
        Ok(s) => panic!("shm selected: {}", s.reason),
    };
    assert!(matches!(err, SelectError::ShmUnavailable { .. }), "{err}");
    assert!(
        err.to_string().starts_with("--transport shm: node 0"),
        "{err}"
    );
    let s = select(TransportKind::Auto, &addrs, secret, TIMEOUT).unwrap();
    assert!(
        s.transport.name() == "tcp" || s.transport.name() == "verbs",
        "{}",
        s.reason
    );
    assert!(s.reason.contains("not shm: node 0"), "{}", s.reason);
    let mut session = s.transport.connect().unwrap();
    assert_eq!(session.call(NodeId(0), b"ping").unwrap(), b"pong");
}

/// Nodes here and a node "elsewhere" (another pid namespace): `auto` maps the local ones
/// and reaches the other over TCP in the same session, says which is which and why, and
/// a batch that spans both lands on the nodes' memory as plain TCP sees it.
#[test]
fn auto_maps_the_nodes_here_and_reaches_the_others_over_tcp() {
    let (nodes, secret) = common::nodes(2, 1 << 20);
    let Some(foreign) = ForeignNode::spawn(secret.as_str(), 2) else {
        common::skip(
            "auto_maps_the_nodes_here_and_reaches_the_others_over_tcp",
            "cannot start a node in its own pid namespace: needs root and unshare (apt-get install util-linux)",
        );
        return;
    };
    let addrs = [nodes.addrs()[0], nodes.addrs()[1], foreign.addr];
    let s = select(TransportKind::Auto, &addrs, secret.clone(), TIMEOUT).unwrap();
    if s.transport.name() == "verbs" {
        return common::skip(
            "auto_maps_the_nodes_here_and_reaches_the_others_over_tcp",
            "an RDMA device is up, so auto takes verbs for every node",
        );
    }
    assert_eq!(s.transport.name(), "shm+tcp", "{}", s.reason);
    assert!(
        s.reason
            .starts_with("auto: shm for nodes 0-1 (on this host), tcp for nodes 2 (node 2: "),
        "{}",
        s.reason
    );
    assert!(s.reason.contains("not verbs, because"), "{}", s.reason);
    let mut mixed = s.transport.connect().unwrap();
    let tcp_t = TcpTransport::discover(&addrs, secret, TIMEOUT).unwrap();
    let mut tcp = tcp_t.connect().unwrap();

    let pages: Vec<Vec<u8>> = (0..3u8)
        .map(|n| (0..4096u32).map(|i| (i as u8) ^ (n * 85 + 1)).collect())
        .collect();
    let writes: Vec<WriteOp<'_>> = (0..3u16)
        .rev()
        .map(|n| WriteOp {
            node: NodeId(n),
            offset: 65536 + u64::from(n) * 4096,
            data: &pages[usize::from(n)],
        })
        .collect();
    mixed.write_batch(&writes).unwrap();
    for n in 0..3u16 {
        let at = 65536 + u64::from(n) * 4096;
        assert_eq!(
            read(tcp.as_mut(), n, at, 4096),
            pages[usize::from(n)],
            "node {n}"
        );
    }
    // One read batch over all three nodes, interleaved: every buffer gets its own page.
    let mut bufs = vec![vec![0u8; 4096]; 6];
    let mut ops: Vec<ReadOp<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, buf)| {
            let n = (i % 3) as u16;
            ReadOp {
                node: NodeId(n),
                offset: 65536 + u64::from(n) * 4096,
                buf,
            }
        })
        .collect();
    mixed.read_batch(&mut ops).unwrap();
    drop(ops);
    for (i, buf) in bufs.iter().enumerate() {
        assert_eq!(buf, &pages[i % 3], "buffer {i}");
    }
    // Atomics on the header of a mapped node and of the TCP one.
    for n in [0u16, 2] {
        assert_eq!(mixed.compare_and_swap(NodeId(n), 4096, 0, 7).unwrap(), 0);
        assert_eq!(mixed.compare_and_swap(NodeId(n), 4096, 0, 9).unwrap(), 7);
        let word = read(tcp.as_mut(), n, 4096, 8);
        assert_eq!(u64::from_le_bytes(word.try_into().unwrap()), 7);
    }
    // The node elsewhere dies: an operation on it fails naming it; the others serve on.
    drop(foreign);
    let err = mixed
        .read_batch(&mut [ReadOp {
            node: NodeId(2),
            offset: 0,
            buf: &mut [0u8; 8],
        }])
        .unwrap_err();
    assert_eq!(err.node(), NodeId(2), "{err}");
    assert_eq!(read(mixed.as_mut(), 1, 65536 + 4096, 4096), pages[1]);
}
