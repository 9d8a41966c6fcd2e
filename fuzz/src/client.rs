//! `client`: the TCP backend's decoding of a node's replies (transport/tcp.rs), against
//! a fake node that authenticates properly and then sends the input.
//!
//! Input: the first byte picks the operation (a batch of reads, a write, a
//! compare-and-swap or a call), the rest is the fake node's reply stream. The client must
//! return (an answer or an error naming the node) within its timeout, never panic, and a
//! successful read must have filled exactly the caller's buffers (read data is written
//! with raw vectored I/O).

use dsm_runtime::transport::auth::{self, NodeHello, Secret};
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{NodeId, NodeInfo, ReadOp, Session, WriteOp};
use std::io::Write;
use std::net::{Shutdown, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const REGION: u64 = 1 << 20;

static LISTENER: OnceLock<Mutex<TcpListener>> = OnceLock::new();

pub fn run(data: &[u8]) {
    let Some((pick, replies)) = data.split_first() else {
        return;
    };
    let listener = LISTENER
        .get_or_init(|| Mutex::new(TcpListener::bind("127.0.0.1:0").unwrap()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let addr = listener.local_addr().unwrap();
    let secret = Secret::new("fuzz").unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| fake_node(&listener, &secret, replies));
        let nodes = vec![NodeInfo {
            id: NodeId(0),
            addr,
            region_bytes: REGION,
        }];
        let t = TcpTransport::new(nodes, secret.clone(), Duration::from_secs(5));
        let mut session = t.open().expect("the fake node authenticates");
        operate(&mut session, *pick);
    });
}

/// Authenticates, sends the replies, and reads what the client sent until it closes.
fn fake_node(listener: &TcpListener, secret: &Secret, replies: &[u8]) {
    let (mut s, _) = listener.accept().unwrap();
    let hello = NodeHello {
        node_id: 0,
        region_bytes: REGION,
    };
    auth::accept(&mut s, secret, hello).expect("the client authenticates");
    let _ = s.write_all(replies);
    let _ = s.shutdown(Shutdown::Write);
    let _ = std::io::copy(&mut s, &mut std::io::sink());
}

fn operate(session: &mut dyn Session, pick: u8) {
    let node = NodeId(0);
    match pick % 4 {
        0 => {
            // Guard bytes around the buffers: a read must fill exactly its buffers.
            let mut mem = vec![0xa5u8; 3 * 64 + 4096 + 100];
            let (head, rest) = mem.split_at_mut(64);
            let (a, rest) = rest.split_at_mut(4096);
            let (gap, rest) = rest.split_at_mut(64);
            let (b, tail) = rest.split_at_mut(100);
            let mut ops = [
                ReadOp {
                    node,
                    offset: 0,
                    buf: a,
                },
                ReadOp {
                    node,
                    offset: 8192,
                    buf: b,
                },
            ];
            let _ = session.read_batch(&mut ops);
            for guard in [&*head, &*gap, &*tail] {
                assert!(
                    guard.iter().all(|x| *x == 0xa5),
                    "a read wrote past its buffer"
                );
            }
        }
        1 => {
            let data = [7u8; 100];
            let _ = session.write_batch(&[WriteOp {
                node,
                offset: 4096,
                data: &data,
            }]);
        }
        2 => {
            let _ = session.compare_and_swap(node, 8, 0, 1);
        }
        _ => {
            if let Ok(answer) = session.call(node, b"ping") {
                assert!(answer.len() <= 64 << 10);
            }
        }
    }
}
