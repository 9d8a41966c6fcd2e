//! `node`: a real `NodeServer` over a 16 KiB region on a loopback socket, fed the input
//! as the byte stream of an authenticated peer.
//!
//! Per input: connect and authenticate; read the whole region and compare it with the
//! shadow copy the previous input left (the node is alive, answers a valid read, and
//! holds exactly the bytes the previous peer wrote); zero the region with a valid write;
//! send the input and close the sending side; then read every reply to the end of the
//! stream and compare it with what the shadow says it must be (computed with the node's
//! own parser: the `request` target checks that parser against an independent model).
//! A read reply with a byte from outside the region, a reply the model does not
//! predict, a hang (10 s) or a dead node is a crash.
//!
//! Checking the region at the start of the next input, on the same connection, halves
//! the round trips per input. A failure of that check is the previous input's: it is
//! saved as `previous-input` in the working directory, and `node previous-input crash-*`
//! replays the pair.

use dsm_runtime::node::header::{CAPACITY_PAGES_OFFSET, NODE_HEADER_BYTES};
use dsm_runtime::node::request::{self, Call, ParseError, Request};
use dsm_runtime::node::{NodeServer, NodeSize};
use dsm_runtime::transport::auth::{self, Secret};
use dsm_runtime::transport::shm::Offer;
use dsm_runtime::transport::wire::{
    self, Entry, Header, Op, ENTRY_BYTES, HEADER_BYTES, MAX_CALL_BYTES, REPLY_BIT, STATUS_OK,
    STATUS_REJECTED,
};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The node's whole region: its 64 KiB header (node::header) and 16 KiB of pages. The
/// fuzzer treats it as plain bytes, as a hostile peer may.
const REGION: u64 = NODE_HEADER_BYTES + (16 << 10);
const TIMEOUT: Duration = Duration::from_secs(10);

struct Node {
    addr: SocketAddr,
    secret: Secret,
    /// What the region must hold after the previous input, and that input.
    shadow: Vec<u8>,
    previous: Vec<u8>,
}

/// One node per process; inputs run one at a time against it (the region is shared).
static NODE: OnceLock<Mutex<Node>> = OnceLock::new();

/// A reply the node must send: the header fields it must carry, and its payload when
/// that is known exactly.
struct Reply {
    op: u8,
    status: u8,
    seq: u64,
    payload: Option<Vec<u8>>,
    offer: bool,
}

pub fn run(data: &[u8]) {
    let mut node = NODE
        .get_or_init(start)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let s = connect(&node);
    check_and_zero_region(&s, &node);
    node.previous.clear();
    node.previous.extend_from_slice(data);
    let shadow = &mut node.shadow;
    shadow.fill(0);
    let (replies, dropped) = expect(data, shadow);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // The node may drop us half way (malformed input): errors are expected here.
            let _ = (&s).write_all(data);
            let _ = s.shutdown(Shutdown::Write);
        });
        check_replies(&s, &replies, dropped);
    });
}

fn start() -> Mutex<Node> {
    // SAFETY: setting a signal disposition; as Rust's own `main` does (libFuzzer's `main`
    // does not), so that writing to a socket the peer closed fails with EPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let secret = Secret::new("fuzz").unwrap();
    let size = NodeSize {
        memory_bytes: 16 << 10,
        span_bytes: REGION,
    };
    let server = NodeServer::new(0, size, secret.clone()).expect("node region");
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let e = server.serve(listener);
        panic!("the node stopped serving: {e:?}");
    });
    // The node starts with its capacity (in pages) written in its header.
    let mut shadow = vec![0; REGION as usize];
    let at = CAPACITY_PAGES_OFFSET as usize;
    shadow[at..at + 8].copy_from_slice(&size.capacity_pages().to_le_bytes());
    Mutex::new(Node {
        addr,
        secret,
        shadow,
        previous: Vec::new(),
    })
}

fn connect(node: &Node) -> TcpStream {
    let mut s = TcpStream::connect(node.addr).expect("the node accepts connections");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    auth::connect(&mut s, &node.secret).expect("the node authenticates");
    s
}

fn frame(op: Op, entry: Entry, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES + ENTRY_BYTES];
    let h = Header {
        op: op as u8,
        status: 0,
        count: 1,
        payload_len: payload.len() as u32,
        seq: 1,
    };
    h.encode((&mut out[..HEADER_BYTES]).try_into().unwrap());
    entry.encode((&mut out[HEADER_BYTES..]).try_into().unwrap());
    out.extend_from_slice(payload);
    out
}

fn whole() -> Entry {
    Entry {
        offset: 0,
        len: REGION as u32,
    }
}

/// Reads the whole region and zeroes it, in one round trip.
fn check_and_zero_region(mut s: &TcpStream, node: &Node) {
    let mut both = frame(Op::Read, whole(), &[]);
    both.extend_from_slice(&frame(Op::Write, whole(), &[0; REGION as usize]));
    s.write_all(&both).unwrap();
    let h = read_header(&mut s).expect("the node answers a valid read");
    assert_eq!((h.status, h.payload_len), (STATUS_OK, REGION as u32));
    let mut got = vec![0u8; REGION as usize];
    s.read_exact(&mut got).unwrap();
    if let Some(i) = (0..got.len()).find(|i| got[*i] != node.shadow[*i]) {
        let _ = std::fs::write("previous-input", &node.previous);
        panic!(
            "after the previous input (saved as previous-input), region byte {i:#x} is {:#x}, \
             should be {:#x}",
            got[i], node.shadow[i]
        );
    }
    let h = read_header(&mut s).expect("the node answers a valid write");
    assert_eq!((h.status, h.payload_len), (STATUS_OK, 0), "valid write");
}

fn read_header(s: &mut impl Read) -> io::Result<Header> {
    let mut hb = [0u8; HEADER_BYTES];
    s.read_exact(&mut hb)?;
    Ok(Header::decode(&hb).expect("the node's reply header decodes"))
}

/// The replies the node owes for `data`, updating `shadow` as it must; and whether the
/// node must drop the connection (malformed input) rather than read to its end.
fn expect(data: &[u8], shadow: &mut [u8]) -> (Vec<Reply>, bool) {
    let mut entries = Vec::new();
    let mut rest = data;
    let mut out = Vec::new();
    loop {
        let span = match request::parse_request(rest, REGION, &mut entries) {
            Ok((req, span)) => {
                out.push(serve(&req, &entries, shadow));
                span
            }
            Err(ParseError::Rejected(h)) => {
                let span = request::request_span(&h);
                if span > rest.len() {
                    return (out, false);
                }
                out.push(reply(&h, STATUS_REJECTED, None));
                span
            }
            Err(ParseError::Truncated) => {
                partial_write(rest, shadow);
                return (out, false);
            }
            Err(ParseError::Malformed(_)) => return (out, true),
        };
        rest = &rest[span..];
    }
}

fn reply(h: &Header, status: u8, payload: Option<Vec<u8>>) -> Reply {
    Reply {
        op: h.op | REPLY_BIT,
        status,
        seq: h.seq,
        payload,
        offer: false,
    }
}

fn serve(req: &Request<'_>, entries: &[Entry], shadow: &mut [u8]) -> Reply {
    let at = |e: &Entry| e.offset as usize..e.offset as usize + e.len as usize;
    match *req {
        Request::Read { header, .. } => {
            let data = entries.iter().flat_map(|e| &shadow[at(e)]).copied();
            reply(&header, STATUS_OK, Some(data.collect()))
        }
        Request::Write { header, payload } => {
            fill(entries, payload, shadow);
            reply(&header, STATUS_OK, Some(Vec::new()))
        }
        Request::CompareSwap {
            header,
            offset,
            expected,
            new,
        } => {
            let word = &mut shadow[offset as usize..offset as usize + 8];
            let old = u64::from_le_bytes((&*word).try_into().unwrap());
            if old == expected {
                word.copy_from_slice(&new.to_le_bytes());
            }
            reply(&header, STATUS_OK, Some(old.to_le_bytes().to_vec()))
        }
        Request::Call { header, call } => match call {
            Call::Ping => reply(&header, STATUS_OK, Some(b"pong".to_vec())),
            Call::Stats => reply(&header, STATUS_OK, None),
            Call::ShmAttach => Reply {
                offer: true,
                ..reply(&header, STATUS_OK, None)
            },
            // This build has no verbs support: the node says so. The fuzzed node has no
            // --snapshot-dir, so it refuses snapshots too.
            Call::VerbsConnect(_) | Call::Snapshot { .. } | Call::Unknown(_) => {
                reply(&header, STATUS_REJECTED, None)
            }
        },
    }
}

/// Writes `payload` (possibly short) over the entries, in order, as the node does.
fn fill(entries: &[Entry], mut payload: &[u8], shadow: &mut [u8]) {
    for e in entries {
        let n = payload.len().min(e.len as usize);
        let start = e.offset as usize;
        shadow[start..start + n].copy_from_slice(&payload[..n]);
        payload = &payload[n..];
    }
}

/// A write cut short by the end of the stream: its entries were checked and the bytes
/// that arrived are already in the region.
fn partial_write(rest: &[u8], shadow: &mut [u8]) {
    let Some(Ok((h, Op::Write))) = rest
        .get(..HEADER_BYTES)
        .map(|b| request::parse_header(b.try_into().unwrap()))
    else {
        return;
    };
    let mut entries = Vec::new();
    let body = &rest[HEADER_BYTES..];
    let Some(raw) = body.get(..request::entries_bytes(&h)) else {
        return;
    };
    if request::parse_entries(raw, &mut entries).is_ok()
        && request::check_batch(Op::Write, &h, &entries, REGION).is_ok()
    {
        fill(&entries, &body[raw.len()..], shadow);
    }
}

/// Reads the replies the node owes, in order, then the end of the stream. A node that
/// drops a peer for malformed input closes with the peer's bytes unread, which resets the
/// connection and may discard replies still queued to earlier requests: after malformed
/// input, a reset is accepted anywhere, and the bytes that did arrive are still checked.
fn check_replies(s: &TcpStream, replies: &[Reply], dropped: bool) {
    let mut r = BufReader::new(s);
    for (i, want) in replies.iter().enumerate() {
        let mut hb = [0u8; HEADER_BYTES];
        if read_reply(&mut r, &mut hb, dropped, i) < HEADER_BYTES {
            return;
        }
        let h = Header::decode(&hb).expect("the node's reply header decodes");
        assert_eq!(
            (h.op, h.status, h.seq, h.count),
            (want.op, want.status, want.seq, 0),
            "reply {i}"
        );
        if h.status != STATUS_OK || wire::Op::from_u8(h.op & !REPLY_BIT) == Some(Op::Call) {
            // What a client accepts (transport/tcp.rs).
            assert!(h.payload_len <= MAX_CALL_BYTES, "reply {i}: {h:?}");
        }
        let mut got = vec![0u8; h.payload_len as usize];
        let n = read_reply(&mut r, &mut got, dropped, i);
        if let Some(p) = &want.payload {
            assert!(
                p.len() == got.len() && p[..n] == got[..n],
                "reply {i}: payload differs from the region's bytes"
            );
        }
        if n < got.len() {
            return;
        }
        if want.offer {
            Offer::decode(&got).expect("the shm-attach answer parses");
        }
    }
    let mut more = [0u8; 1];
    match r.read(&mut more) {
        Ok(0) => {}
        Err(e) if dropped && e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("after {} replies: {other:?}", replies.len()),
    }
}

/// Reads until `buf` is full, or the connection is reset after malformed input; returns
/// the bytes read.
fn read_reply(r: &mut impl Read, buf: &mut [u8], dropped: bool, i: usize) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => panic!("reply {i}: the node closed the connection early"),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if dropped && e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reply {i}: {e}"),
        }
    }
    n
}
