//! `--transport tcp|verbs|auto` against real node processes: what is chosen, what is said,
//! and the errors when verbs cannot work. On a machine without an RDMA device (the
//! project's build machines: `ibv_get_device_list` fails with ENOSYS) the fallback and
//! error paths run; with a device the verbs paths do (the Soft-RoCE guests cover them:
//! soft-roce-tests/guest-tests/4*-dsm-verbs-*.sh).

mod common;

use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{
    select, verbs_device, NodeId, SelectError, Transport, TransportError, TransportKind,
};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn tcp_is_chosen_when_asked() {
    let (nodes, secret) = common::nodes(1, 1 << 20);
    let s = select(TransportKind::Tcp, nodes.addrs(), secret, TIMEOUT).unwrap();
    assert_eq!(s.transport.name(), "tcp");
    assert_eq!(s.reason, "tcp (as asked)");
}

/// Local nodes are served over shared memory by `auto` (tests/shm_transport.rs); with
/// verbs or TCP asked for, those are used.
#[test]
fn auto_prefers_shm_for_local_nodes_and_verbs_is_used_only_with_a_device() {
    let (nodes, secret) = common::nodes(2, 1 << 20);
    let s = select(TransportKind::Auto, nodes.addrs(), secret.clone(), TIMEOUT).unwrap();
    assert_eq!(s.transport.name(), "shm", "{}", s.reason);
    let s = match select(TransportKind::Verbs, nodes.addrs(), secret, TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                verbs_device().is_err(),
                "device present but verbs failed: {e}"
            );
            return;
        }
    };
    match verbs_device() {
        Ok(dev) => {
            assert_eq!(s.transport.name(), "verbs", "device {dev}: {}", s.reason);
            assert!(s.reason.starts_with("verbs over "), "{}", s.reason);
        }
        Err(why) => panic!("verbs selected without a device ({why}): {}", s.reason),
    }
    // The chosen transport works.
    let mut session = s.transport.connect().unwrap();
    assert_eq!(session.call(NodeId(1), b"ping").unwrap(), b"pong");
}

#[test]
fn verbs_without_a_device_is_a_clear_error() {
    if let Ok(dev) = verbs_device() {
        eprintln!(
            "SKIP: this machine has an RDMA device ({dev}); the no-device error cannot be shown"
        );
        return;
    }
    let (nodes, secret) = common::nodes(1, 1 << 20);
    let err = match select(TransportKind::Verbs, nodes.addrs(), secret, TIMEOUT) {
        Err(e) => e,
        Ok(s) => panic!("verbs selected without a device: {}", s.reason),
    };
    assert!(
        matches!(err, SelectError::VerbsUnavailable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("--transport verbs: "), "{msg}");
    assert!(msg.contains("--transport tcp"), "{msg}");
    if cfg!(feature = "verbs") {
        assert!(msg.contains("no RDMA device"), "{msg}");
    } else {
        assert!(msg.contains("--features verbs"), "{msg}");
    }
}

#[test]
fn a_node_that_cannot_do_rdma_rejects_the_queue_pair_exchange_clearly() {
    if verbs_device().is_ok() {
        eprintln!("SKIP: this machine has an RDMA device; the node would accept");
        return;
    }
    let (nodes, secret) = common::nodes(1, 1 << 20);
    let t = TcpTransport::discover(nodes.addrs(), secret, TIMEOUT).unwrap();
    let mut s = t.connect().unwrap();
    let req = br#"verbs-connect {"node":0,"endpoint":{"qpn":1,"psn":1,"lid":0,"gid":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"mtu":3,"rd_atomic":1}}"#;
    match s.call(NodeId(0), req) {
        Err(TransportError::Rejected { node, detail, .. }) => {
            assert_eq!(node, NodeId(0));
            assert!(
                detail.contains("no usable RDMA device") || detail.contains("without RDMA support"),
                "{detail}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The connection is still usable.
    assert_eq!(s.call(NodeId(0), b"ping").unwrap(), b"pong");
}

/// Compare-and-swap through whatever `auto` picks (TCP here; verbs on a machine with a
/// device): the same semantics the Soft-RoCE guests check on rxe's atomics, so the
/// operation stays covered on the host whatever rxe does.
#[test]
fn compare_and_swap_semantics_and_contention_through_the_selected_transport() {
    let (nodes, secret) = common::nodes(1, 1 << 20);
    let t = select(TransportKind::Auto, nodes.addrs(), secret, TIMEOUT)
        .unwrap()
        .transport;
    let node = NodeId(0);
    let mut s = t.connect().unwrap();
    let word = 4096 * 3;
    for (exp, new, found) in [
        (0, 5, 0),
        (0, 6, 5),
        (5, 7, 5),
        (7, u64::MAX - 1, 7),
        (u64::MAX - 1, 0x0123_4567_89ab_cdef, u64::MAX - 1),
    ] {
        assert_eq!(s.compare_and_swap(node, word, exp, new).unwrap(), found);
    }
    let mut v = [0u8; 8];
    s.read_batch(&mut [dsm_runtime::transport::ReadOp {
        node,
        offset: word,
        buf: &mut v,
    }])
    .unwrap();
    assert_eq!(u64::from_le_bytes(v), 0x0123_4567_89ab_cdef);
    assert!(matches!(
        s.compare_and_swap(node, word + 4, 0, 1),
        Err(TransportError::Rejected { .. })
    ));

    const THREADS: u64 = 3;
    const EACH: u64 = 300;
    let counter = word + 64;
    std::thread::scope(|sc| {
        for _ in 0..THREADS {
            let t = &t;
            sc.spawn(move || {
                let mut s = t.connect().unwrap();
                for _ in 0..EACH {
                    let mut cur = 0;
                    loop {
                        let got = s.compare_and_swap(node, counter, cur, cur + 1).unwrap();
                        if got == cur {
                            break;
                        }
                        cur = got;
                    }
                }
            });
        }
    });
    assert_eq!(
        s.compare_and_swap(node, counter, 0, 0).unwrap(),
        THREADS * EACH
    );
}
