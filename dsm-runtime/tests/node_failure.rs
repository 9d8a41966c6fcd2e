//! Dead, stalled, hostile and unauthorised peers: every failure is an error naming the
//! node, within seconds, never a hang.

mod common;

use common::{cluster, Rng};
use dsm_runtime::launch::LocalNodes;
use dsm_runtime::runtime::EXIT_RUNTIME_FAILURE;
use dsm_runtime::transport::auth::Secret;
use dsm_runtime::transport::tcp::TcpTransport;
use dsm_runtime::transport::{select, NodeId, Transport, TransportError, TransportKind};
use dsm_runtime::{Runtime, RuntimeConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "DSM_TEST_CHILD_NODES";
const CHILD_TRANSPORT_ENV: &str = "DSM_TEST_CHILD_TRANSPORT";

/// Runs in a child process (re-executed test binary): random writes over a range 16x the
/// cache until the runtime gives up on a dead node.
#[test]
#[ignore = "helper run by node_killed_mid_run_is_reported_naming_it"]
fn child_workload() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let addrs: Vec<SocketAddr> = spec.split(',').map(|a| a.parse().unwrap()).collect();
    let secret = Secret::new(std::env::var("DSM_SECRET").unwrap()).unwrap();
    let kind: TransportKind = std::env::var(CHILD_TRANSPORT_ENV).unwrap().parse().unwrap();
    let t = select(kind, &addrs, secret, Duration::from_secs(2))
        .unwrap()
        .transport;
    assert_eq!(t.name(), kind.to_string());
    let config = RuntimeConfig {
        space_base: 0x2000_0000_0000,
        space_bytes: 16 << 20,
        cache_bytes_max: 1 << 20,
        ..Default::default()
    };
    let rt = Runtime::start(config, t.as_ref()).unwrap();
    let base = rt.base() as usize;
    println!("child running");
    let mut rng = Rng(1);
    loop {
        let off = rng.below(16 << 20) as usize & !7;
        // SAFETY: inside the global range.
        unsafe { ((base + off) as *mut u64).write_volatile(off as u64) };
    }
}

#[test]
fn node_killed_mid_run_is_reported_naming_it() {
    kill_a_node_mid_run(TransportKind::Tcp);
}

/// Over shared memory the dead node's region stays mapped; its closed control connection
/// is what reveals the death.
#[test]
fn node_killed_mid_run_over_shm_is_reported_naming_it() {
    kill_a_node_mid_run(TransportKind::Shm);
}

fn kill_a_node_mid_run(kind: TransportKind) {
    let secret = Secret::generate().unwrap();
    let mut nodes =
        LocalNodes::spawn(Path::new(env!("CARGO_BIN_EXE_dsmrun")), 3, 8 << 20, &secret).unwrap();
    let spec: Vec<String> = nodes.addrs().iter().map(ToString::to_string).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_workload",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.join(","))
        .env(CHILD_TRANSPORT_ENV, kind.to_string())
        .env("DSM_SECRET", secret.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("child running") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "child ended before running: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::sleep(Duration::from_millis(300));
    nodes.kill(1);
    let killed = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if killed.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the program hung after its node died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(EXIT_RUNTIME_FAILURE), "stderr: {err}");
    assert!(
        err.contains("node 1"),
        "error must name the dead node: {err}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused_and_logged() {
    let secret = Secret::generate().unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_dsmrun"))
        .args(["node", "--id", "0", "--memory", "1M"])
        .env("DSM_SECRET", secret.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(node.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr: SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();

    // Collect the node's log as it comes: the refusal is logged by the node's connection
    // thread, which may run after our side has already seen the refusal.
    let stderr = node.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let wrong = Secret::new("not-the-secret").unwrap();
    let err = TcpTransport::discover(&[addr], wrong, Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Auth {
                node: NodeId(0),
                ..
            }
        ),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while !log.contains("refused peer") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push_str(&line),
            Err(_) => panic!("the node never logged the refusal: {log:?}"),
        }
    }
    // The node keeps serving peers that know the secret.
    let t = TcpTransport::discover(&[addr], secret, Duration::from_secs(2)).unwrap();
    let mut s = t.connect().unwrap();
    assert_eq!(s.call(NodeId(0), b"ping").unwrap(), b"pong");
    node.kill().unwrap();
    node.wait().unwrap();
}

#[test]
fn an_unreachable_node_is_a_connect_error_naming_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = TcpTransport::discover(&[addr], Secret::new("x").unwrap(), Duration::from_secs(1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Connect {
                node: NodeId(0),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("node 0"));
}

#[test]
fn a_silent_node_times_out_naming_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let conns: Vec<_> = l.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let start = Instant::now();
    let err = TcpTransport::discover(
        &[addr],
        Secret::new("x").unwrap(),
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                node: NodeId(0),
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// A batch that spans several nodes which all stop answering at once (their host died)
/// fails within about one node timeout, not one per node: the nodes' replies are awaited
/// against one deadline. Three real nodes, two of them stopped with SIGSTOP.
#[test]
fn a_batch_to_several_silent_nodes_fails_within_one_timeout() {
    use dsm_runtime::transport::WriteOp;
    let (nodes, secret) = common::nodes(3, 1 << 20);
    let timeout = Duration::from_millis(600);
    let t = TcpTransport::discover(nodes.addrs(), secret, timeout).unwrap();
    let mut s = t.connect().unwrap();
    let page = vec![7u8; 4096];
    let ops: Vec<WriteOp<'_>> = (0..3)
        .map(|n| WriteOp {
            node: NodeId(n),
            offset: 1 << 16,
            data: &page,
        })
        .collect();
    s.write_batch(&ops).unwrap();
    let stopped = [1, 2].map(|i| nodes.pid(i).expect("node running") as i32);
    for pid in stopped {
        // SAFETY: signals a node process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        wait_stopped(pid);
    }
    let start = Instant::now();
    let err = s.write_batch(&ops).unwrap_err();
    let took = start.elapsed();
    for pid in stopped {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    // Two timeouts one after the other would take 1.2 s.
    assert!(took < timeout + Duration::from_millis(400), "took {took:?}");
}

/// Waits until process `pid` shows as stopped (SIGSTOP takes effect asynchronously).
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("node process {pid} did not stop");
}

#[test]
fn a_node_speaking_garbage_is_a_protocol_error() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let _srv = std::thread::spawn(move || {
        if let Some(Ok(mut c)) = l.incoming().next() {
            let _ = c.write_all(&[0xAB; 4096]);
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let err = TcpTransport::discover(&[addr], Secret::new("x").unwrap(), Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, TransportError::Auth { .. }), "{err}");
}

/// A client that authenticates and then sends malformed frames is dropped; the node keeps
/// serving everyone else, and out-of-bounds operations are refused, not performed.
#[test]
fn a_node_survives_hostile_frames_and_refuses_out_of_bounds_access() {
    let (_nodes, t) = cluster(1, 1 << 20);
    let mut s = t.connect().unwrap();
    let mut buf = vec![0u8; 4096];
    // A node's region is its memory plus its header.
    let mut ops = [dsm_runtime::transport::ReadOp {
        node: NodeId(0),
        offset: t.nodes()[0].region_bytes - 100,
        buf: &mut buf,
    }];
    let err = s.read_batch(&mut ops).unwrap_err();
    assert!(matches!(err, TransportError::Rejected { .. }), "{err}");
    let err = s.compare_and_swap(NodeId(0), 3, 0, 1).unwrap_err();
    assert!(matches!(err, TransportError::Rejected { .. }), "{err}");
    let data = [7u8; 64];
    s.write_batch(&[dsm_runtime::transport::WriteOp {
        node: NodeId(0),
        offset: 128,
        data: &data,
    }])
    .unwrap();
    assert_eq!(
        s.compare_and_swap(NodeId(0), 128, 0x0707_0707_0707_0707, 5)
            .unwrap(),
        0x0707_0707_0707_0707
    );

    // Raw garbage after a valid handshake: connect at the TCP level and send junk.
    let addr = t.nodes()[0].addr;
    let mut rng = Rng(99);
    for _ in 0..20 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let junk: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
        let _ = c.write_all(&junk);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert_eq!(s.call(NodeId(0), b"ping").unwrap(), b"pong");
}
