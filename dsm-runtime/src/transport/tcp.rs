//! TCP backend: emulates one-sided operations with a server on each memory node.
//!
//! A batch becomes one request per node (header + entries + data in one `writev`), all
//! nodes' requests are sent before any reply is read, and each reply is read with one
//! `readv` straight into the callers' buffers. Buffers are allocated when the session
//! opens; the fast path allocates nothing.

use super::auth::{self, AuthError, Secret};
use super::vectored::{self, iovec};
use super::wire::{self, Entry, Header, Op, ENTRY_BYTES, HEADER_BYTES, REPLY_BIT, STATUS_OK};
use super::{NodeId, NodeInfo, ReadOp, Session, Transport, TransportError, WriteOp};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The TCP backend for a set of nodes.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    nodes: Vec<NodeInfo>,
    secret: Secret,
    timeout: Duration,
}

impl TcpTransport {
    /// A transport to `nodes`, authenticating with `secret`; any operation that takes
    /// longer than `timeout` fails naming its node.
    pub fn new(nodes: Vec<NodeInfo>, secret: Secret, timeout: Duration) -> TcpTransport {
        TcpTransport {
            nodes,
            secret,
            timeout,
        }
    }

    /// Opens a session and learns each node's region size from its handshake; used by the
    /// launcher, which knows the nodes' addresses but not yet their sizes.
    pub fn discover(
        addrs: &[SocketAddr],
        secret: Secret,
        timeout: Duration,
    ) -> Result<TcpTransport, TransportError> {
        let mut nodes = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            let id = NodeId(i as u16);
            let (_, hello) = open_conn(id, *addr, &secret, timeout)?;
            if hello.node_id != id.0 {
                return Err(TransportError::Protocol {
                    node: id,
                    addr: *addr,
                    detail: format!("node says it is node {}", hello.node_id),
                });
            }
            nodes.push(NodeInfo {
                id,
                addr: *addr,
                region_bytes: hello.region_bytes,
            });
        }
        Ok(TcpTransport::new(nodes, secret, timeout))
    }
}

fn open_conn(
    node: NodeId,
    addr: SocketAddr,
    secret: &Secret,
    timeout: Duration,
) -> Result<(TcpStream, auth::NodeHello), TransportError> {
    let connect_err = |source| TransportError::Connect { node, addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
    stream.set_nodelay(true).map_err(connect_err)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(connect_err)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(connect_err)?;
    let hello = auth::connect(&mut stream, secret).map_err(|e| match e {
        AuthError::Io(source) => io_error(node, addr, timeout, source),
        other => TransportError::Auth {
            node,
            addr,
            detail: other.to_string(),
        },
    })?;
    Ok((stream, hello))
}

fn io_error(
    node: NodeId,
    addr: SocketAddr,
    timeout: Duration,
    source: io::Error,
) -> TransportError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Timeout {
            node,
            addr,
            timeout_ms: timeout.as_millis() as u64,
        },
        _ => TransportError::Io { node, addr, source },
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn connect(&self) -> Result<Box<dyn Session>, TransportError> {
        Ok(Box::new(self.open()?))
    }
}

impl TcpTransport {
    /// Opens a session, as [`Transport::connect`] does, with its concrete type.
    pub fn open(&self) -> Result<TcpSession, TransportError> {
        let mut conns = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let (stream, hello) = open_conn(n.id, n.addr, &self.secret, self.timeout)?;
            if hello.node_id != n.id.0 || hello.region_bytes != n.region_bytes {
                return Err(TransportError::Protocol {
                    node: n.id,
                    addr: n.addr,
                    detail: format!(
                        "expected node {} with {} bytes, found node {} with {} bytes",
                        n.id.0, n.region_bytes, hello.node_id, hello.region_bytes
                    ),
                });
            }
            conns.push(Conn {
                info: n.clone(),
                stream,
                broken: false,
            });
        }
        Ok(TcpSession {
            conns,
            timeout: self.timeout,
            seq: 0,
            frame: Vec::with_capacity(
                HEADER_BYTES + ENTRY_BYTES * wire::MAX_BATCH_ENTRIES as usize,
            ),
            iov: Vec::with_capacity(2 + wire::MAX_BATCH_ENTRIES as usize),
            pending: Vec::with_capacity(self.nodes.len()),
        })
    }
}

struct Conn {
    info: NodeInfo,
    stream: TcpStream,
    /// Set after an error that may leave the stream mid-frame; later use fails fast.
    broken: bool,
}

/// A thread's connections to every node.
pub struct TcpSession {
    conns: Vec<Conn>,
    timeout: Duration,
    seq: u64,
    /// Request frame under construction (header + entries), preallocated.
    frame: Vec<u8>,
    /// iovec scratch, preallocated.
    iov: Vec<libc::iovec>,
    /// (node index, seq) of requests sent and not yet answered, preallocated.
    pending: Vec<(usize, u64)>,
}

// SAFETY: the raw pointers in `iov` are scratch, only meaningful during one call on the
// owning thread; between calls they are dangling values that are never dereferenced.
unsafe impl Send for TcpSession {}

impl TcpSession {
    /// Each node's socket, in node order (for the `shm` backend's liveness checks).
    pub fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.conns.iter().map(|c| c.stream.as_raw_fd()).collect()
    }

    fn conn_index(&self, node: NodeId) -> Result<usize, TransportError> {
        let i = usize::from(node.0);
        if i >= self.conns.len() {
            return Err(TransportError::UnknownNode(node));
        }
        if self.conns[i].broken {
            let c = &self.conns[i].info;
            return Err(TransportError::Io {
                node,
                addr: c.addr,
                source: io::Error::other("connection unusable after an earlier error"),
            });
        }
        Ok(i)
    }

    fn fail(&mut self, i: usize, source: io::Error) -> TransportError {
        self.conns[i].broken = true;
        let c = &self.conns[i].info;
        io_error(c.id, c.addr, self.timeout, source)
    }

    fn protocol(&mut self, i: usize, detail: String) -> TransportError {
        self.conns[i].broken = true;
        let c = &self.conns[i].info;
        TransportError::Protocol {
            node: c.id,
            addr: c.addr,
            detail,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Starts a frame in `self.frame`.
    fn begin_frame(&mut self, op: Op, count: u32, payload_len: u32, seq: u64) {
        let mut h = [0u8; HEADER_BYTES];
        Header {
            op: op as u8,
            status: 0,
            count,
            payload_len,
            seq,
        }
        .encode(&mut h);
        self.frame.clear();
        self.frame.extend_from_slice(&h);
    }

    fn push_entry(&mut self, offset: u64, len: usize) {
        let mut e = [0u8; ENTRY_BYTES];
        Entry {
            offset,
            len: len as u32,
        }
        .encode(&mut e);
        self.frame.extend_from_slice(&e);
    }

    /// Reads a reply header for request `seq` of `op` on connection `i`; on a rejection,
    /// reads the message and returns it as an error.
    fn read_reply(
        &mut self,
        i: usize,
        op: Op,
        seq: u64,
        offset: u64,
    ) -> Result<Header, TransportError> {
        let mut hb = [0u8; HEADER_BYTES];
        if let Err(e) = self.conns[i].stream.read_exact(&mut hb) {
            return Err(self.fail(i, e));
        }
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => return Err(self.protocol(i, e.to_string())),
        };
        if h.op != (op as u8 | REPLY_BIT) || h.seq != seq {
            return Err(self.protocol(
                i,
                format!(
                    "reply op {:#x} seq {} for request op {:?} seq {seq}",
                    h.op, h.seq, op
                ),
            ));
        }
        if h.status != STATUS_OK {
            let mut msg = vec![0u8; (h.payload_len as usize).min(wire::MAX_CALL_BYTES as usize)];
            if let Err(e) = self.conns[i].stream.read_exact(&mut msg) {
                return Err(self.fail(i, e));
            }
            if msg.len() != h.payload_len as usize {
                self.conns[i].broken = true;
            }
            return Err(TransportError::Rejected {
                node: self.conns[i].info.id,
                op: op.name(),
                offset,
                detail: String::from_utf8_lossy(&msg).into_owned(),
            });
        }
        Ok(h)
    }

    /// Reads the reply to read request `seq` on connection `i` straight into the buffers of
    /// that node's ops. One `readv` covering header and data usually brings the whole
    /// reply, saving a system call per batch; a short read is finished exactly.
    fn read_data_reply(
        &mut self,
        i: usize,
        seq: u64,
        ops: &mut [ReadOp<'_>],
    ) -> Result<(), TransportError> {
        let node = self.conns[i].info.id;
        let first = ops.iter().find(|o| o.node == node).map_or(0, |o| o.offset);
        let want: usize = ops
            .iter()
            .filter(|o| o.node == node)
            .map(|o| o.buf.len())
            .sum();
        let mut hb = [0u8; HEADER_BYTES];
        self.iov.clear();
        self.iov.push(iovec(hb.as_mut_ptr(), HEADER_BYTES));
        for o in ops.iter_mut().filter(|o| o.node == node) {
            self.iov.push(iovec(o.buf.as_mut_ptr(), o.buf.len()));
        }
        let fd = self.conns[i].stream.as_raw_fd();
        // SAFETY: the iovecs cover `hb` and caller buffers borrowed mutably for this call.
        let got = match unsafe { vectored::read_once(fd, &mut self.iov) } {
            Ok(n) => n,
            Err(e) => return Err(self.fail(i, e)),
        };
        if got < HEADER_BYTES {
            // SAFETY: as above; only the rest of the header is read here.
            if let Err(e) = unsafe { vectored::read_exact(fd, &mut self.iov[..1]) } {
                return Err(self.fail(i, e));
            }
        }
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => return Err(self.protocol(i, e.to_string())),
        };
        if h.op != (Op::Read as u8 | REPLY_BIT) || h.seq != seq {
            return Err(self.protocol(
                i,
                format!("reply op {:#x} seq {} to read seq {seq}", h.op, h.seq),
            ));
        }
        if h.status != STATUS_OK {
            // The message may have landed in the data buffers already.
            let early = got.saturating_sub(HEADER_BYTES).min(h.payload_len as usize);
            let mut msg = Vec::with_capacity(h.payload_len as usize);
            for o in ops.iter().filter(|o| o.node == node) {
                let take = (early - msg.len()).min(o.buf.len());
                msg.extend_from_slice(&o.buf[..take]);
            }
            let mut rest =
                vec![0u8; (h.payload_len as usize - early).min(wire::MAX_CALL_BYTES as usize)];
            if let Err(e) = self.conns[i].stream.read_exact(&mut rest) {
                return Err(self.fail(i, e));
            }
            msg.extend_from_slice(&rest);
            return Err(TransportError::Rejected {
                node,
                op: Op::Read.name(),
                offset: first,
                detail: String::from_utf8_lossy(&msg).into_owned(),
            });
        }
        if h.payload_len as usize != want {
            return Err(self.protocol(
                i,
                format!("read reply of {} bytes, expected {want}", h.payload_len),
            ));
        }
        // SAFETY: as above; the iovecs were advanced past what `read_once` filled.
        if let Err(e) = unsafe { vectored::read_exact(fd, &mut self.iov) } {
            return Err(self.fail(i, e));
        }
        Ok(())
    }

    /// Every node named in a batch must be in the cluster: checked before anything is
    /// sent, so an error is never a partial transfer.
    fn check_known(&self, mut nodes: impl Iterator<Item = NodeId>) -> Result<(), TransportError> {
        match nodes.find(|n| usize::from(n.0) >= self.conns.len()) {
            Some(bad) => Err(TransportError::UnknownNode(bad)),
            None => Ok(()),
        }
    }

    /// Frames one node's share of a batch (`entries`: offset and length of each of its
    /// operations, `payload_len` the bytes that follow) as one request; `None`, with
    /// nothing framed, when the node has no share.
    fn frame_share(
        &mut self,
        op: Op,
        entries: impl Iterator<Item = (u64, usize)> + Clone,
        payload_len: usize,
    ) -> Option<u64> {
        let count = entries.clone().count();
        if count == 0 {
            return None;
        }
        let seq = self.next_seq();
        self.begin_frame(op, count as u32, payload_len as u32, seq);
        for (offset, len) in entries {
            self.push_entry(offset, len);
        }
        Some(seq)
    }

    /// Reads the reply of every request in `pending`, even after one failed, so that no
    /// healthy node's connection is left with an unread reply (which the next batch would
    /// take for its own): a caller that fails over to other nodes keeps using this
    /// session. Returns the first error.
    ///
    /// The requests went out together, so every node has one node timeout from now to
    /// answer, not one each after the previous node's: a host dying with several of the
    /// batch's nodes on it would otherwise cost a timeout per node, one after the other
    /// (4 nodes: 20 s, and the job ended by ssh's keep-alives instead, 2026-12-08).
    fn drain_pending(
        &mut self,
        mut reply: impl FnMut(&mut Self, usize, u64) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.timeout;
        let mut first_error = None;
        for p in 0..self.pending.len() {
            let (i, seq) = self.pending[p];
            if self.conns[i].broken {
                continue;
            }
            let shortened = self.shorten_read_timeout(i, deadline);
            if let Err(e) = reply(self, i, seq) {
                first_error.get_or_insert(e);
            }
            if shortened {
                let _ = self.conns[i].stream.set_read_timeout(Some(self.timeout));
            }
        }
        self.pending.clear();
        first_error.map_or(Ok(()), Err)
    }

    /// Bounds connection `i`'s reads by what is left until `deadline` (at least a
    /// millisecond: a reply already here is still read), when that is noticeably less
    /// than the node timeout; returns whether it did (the caller restores it).
    fn shorten_read_timeout(&self, i: usize, deadline: Instant) -> bool {
        const SLACK: Duration = Duration::from_millis(100);
        let left = deadline.saturating_duration_since(Instant::now());
        if left + SLACK >= self.timeout {
            return false; // the usual case: replies come in microseconds
        }
        let left = left.max(Duration::from_millis(1));
        self.conns[i].stream.set_read_timeout(Some(left)).is_ok()
    }

    fn drain_write_replies(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        self.drain_pending(|s, i, seq| {
            let node = s.conns[i].info.id;
            let first = ops.iter().find(|o| o.node == node).map_or(0, |o| o.offset);
            let h = s.read_reply(i, Op::Write, seq, first)?;
            if h.payload_len != 0 {
                return Err(s.protocol(i, "write reply with payload".into()));
            }
            Ok(())
        })
    }

    fn send_frame(&mut self, i: usize) -> Result<(), TransportError> {
        let res = self.conns[i].stream.write_all(&self.frame);
        res.map_err(|e| self.fail(i, e))
    }
}

impl Session for TcpSession {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        self.check_known(ops.iter().map(|o| o.node))?;
        self.pending.clear();
        // Send every node's request first, so nodes work in parallel.
        for i in 0..self.conns.len() {
            let node = self.conns[i].info.id;
            let share = ops.iter().filter(|o| o.node == node);
            let Some(seq) = self.frame_share(Op::Read, share.map(|o| (o.offset, o.buf.len())), 0)
            else {
                continue;
            };
            if let Err(e) = self.conn_index(node).and_then(|_| self.send_frame(i)) {
                // This error is the first; the drained replies' own errors come after it.
                let _ = self.drain_pending(|s, i, seq| s.read_data_reply(i, seq, ops));
                return Err(e);
            }
            self.pending.push((i, seq));
        }
        self.drain_pending(|s, i, seq| s.read_data_reply(i, seq, ops))
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        self.check_known(ops.iter().map(|o| o.node))?;
        self.pending.clear();
        for i in 0..self.conns.len() {
            let node = self.conns[i].info.id;
            let share = ops.iter().filter(|o| o.node == node);
            let total: usize = share.clone().map(|o| o.data.len()).sum();
            let entries = share.map(|o| (o.offset, o.data.len()));
            let Some(seq) = self.frame_share(Op::Write, entries, total) else {
                continue;
            };
            if let Err(e) = self.conn_index(node) {
                let _ = self.drain_write_replies(ops);
                return Err(e);
            }
            self.iov.clear();
            self.iov.push(iovec(self.frame.as_ptr(), self.frame.len()));
            for o in ops.iter().filter(|o| o.node == node) {
                self.iov.push(iovec(o.data.as_ptr(), o.data.len()));
            }
            let fd = self.conns[i].stream.as_raw_fd();
            // SAFETY: the iovecs point into `self.frame` and the callers' borrowed data,
            // both alive for this call.
            if let Err(e) = unsafe { vectored::write_all(fd, &mut self.iov) } {
                let e = self.fail(i, e);
                let _ = self.drain_write_replies(ops);
                return Err(e);
            }
            self.pending.push((i, seq));
        }
        self.drain_write_replies(ops)
    }

    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        let i = self.conn_index(node)?;
        let seq = self.next_seq();
        self.begin_frame(Op::CompareSwap, 0, 24, seq);
        self.frame
            .extend_from_slice(&wire::encode_cas(offset, expected, new));
        self.send_frame(i)?;
        let h = self.read_reply(i, Op::CompareSwap, seq, offset)?;
        if h.payload_len != 8 {
            return Err(self.protocol(i, "compare-and-swap reply is not 8 bytes".into()));
        }
        let mut old = [0u8; 8];
        if let Err(e) = self.conns[i].stream.read_exact(&mut old) {
            return Err(self.fail(i, e));
        }
        Ok(u64::from_le_bytes(old))
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        let i = self.conn_index(node)?;
        if msg.len() > wire::MAX_CALL_BYTES as usize {
            return Err(TransportError::Rejected {
                node,
                op: "call",
                offset: 0,
                detail: format!(
                    "message of {} bytes exceeds {}",
                    msg.len(),
                    wire::MAX_CALL_BYTES
                ),
            });
        }
        let seq = self.next_seq();
        self.begin_frame(Op::Call, 0, msg.len() as u32, seq);
        self.frame.extend_from_slice(msg);
        self.send_frame(i)?;
        let h = self.read_reply(i, Op::Call, seq, 0)?;
        let mut answer = vec![0u8; (h.payload_len as usize).min(wire::MAX_CALL_BYTES as usize)];
        if answer.len() != h.payload_len as usize {
            return Err(self.protocol(i, "call reply too large".into()));
        }
        if let Err(e) = self.conns[i].stream.read_exact(&mut answer) {
            return Err(self.fail(i, e));
        }
        Ok(answer)
    }
}
