//! RDMA verbs backend (cargo feature `verbs`): one-sided operations done by the NICs.
//!
//! - Bootstrap and authentication stay with TCP: a session first opens a [`TcpSession`]
//!   (HMAC handshake with the job secret), then, per node, creates an RC queue pair and
//!   exchanges QP number, PSN, LID/GID, MTU and the region's address and rkey with the
//!   control call [`CONNECT_CALL`]. The node's QP lives as long as that TCP connection.
//! - Each node registered its whole region as one memory region. A page fetch is an
//!   RDMA READ, a write-back an RDMA WRITE, compare-and-swap the verbs atomic; the node's
//!   CPU does nothing per operation.
//! - A batch is posted as one chain of work requests per node (one `ibv_post_send`, one
//!   doorbell), only the last of each chain signalled; RC completes in order, so its
//!   completion covers the chain. Data goes through a bounce buffer registered once per
//!   session ([`bounce`]: the types keep it untouched until the completion is reaped).
//! - Bounds and alignment are checked against each node's region before posting, giving
//!   the same rejections as TCP; the memory region's bounds remain the hard check.
//! - Completion errors name the verb, the node and the status; a node whose CQ entries do
//!   not arrive within the timeout yields [`TransportError::Timeout`]. Polling spins
//!   for 50 us, then yields the CPU between polls (Soft-RoCE runs in the kernel of the
//!   same machine).
//!
//! [`TcpSession`]: super::tcp::TcpSession

pub mod bounce;
pub mod device;
pub mod ffi;

use self::bounce::{Bounce, Completed, Staging};
use self::device::{Rdma, VerbsConfig};
use self::ffi::{Completion, CompletionQueue, Endpoint, QueuePair, SendWr, Sge, Verb, VerbsError};
use super::auth::Secret;
use super::tcp::TcpTransport;
use super::{NodeId, NodeInfo, ReadOp, Session, Transport, TransportError, WriteOp};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The control call that sets up a node's side of a queue pair; followed by a space and
/// a JSON [`ConnectRequest`], answered by a JSON [`ConnectReply`].
pub const CONNECT_CALL: &str = "verbs-connect";

/// Bytes of a session's bounce buffer: the most one chunk of a batch moves.
pub const BOUNCE_BYTES: usize = 1 << 20;
/// Largest single operation (one page run), as on TCP.
pub const MAX_OP_BYTES: usize = super::wire::MAX_ENTRY_BYTES as usize;
/// Most work requests in one chunk (over all nodes), and the send queue depth.
pub const MAX_CHAIN: usize = 256;
/// How long a completion wait busy-polls before it starts yielding the CPU.
const SPIN: Duration = Duration::from_micros(50);
/// Responder resources asked of a node: outstanding READs/atomics per QP.
const RD_ATOMIC_MAX: u8 = 16;

/// The program's half of a connection.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectRequest {
    /// The node the program thinks it talks to.
    pub node: u16,
    /// The program's QP.
    pub endpoint: Endpoint,
}

/// The node's half.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectReply {
    /// The node's QP, ready to receive (RTR, then RTS).
    pub endpoint: Endpoint,
    /// Remote key of the region's memory region.
    pub rkey: u32,
    /// Virtual address of the region's first byte in the node.
    pub addr: u64,
    /// Region size.
    pub region_bytes: u64,
    /// The node's device supports atomics.
    pub atomics: bool,
    /// Registered with on-demand paging (nothing pinned).
    pub on_demand: bool,
    /// The node's device, port and GID, for logs.
    pub device: String,
}

fn verbs_error(node: NodeId, e: VerbsError) -> TransportError {
    match e {
        VerbsError::Call { call, source, .. } => TransportError::Verbs {
            node,
            verb: call,
            status: source.to_string(),
        },
        VerbsError::NoDevice(why) => TransportError::Verbs {
            node,
            verb: "ibv_get_device_list",
            status: why,
        },
    }
}

/// The verbs backend for a set of nodes.
#[derive(Debug)]
pub struct VerbsTransport {
    tcp: TcpTransport,
    rdma: Arc<Rdma>,
    timeout: Duration,
}

impl VerbsTransport {
    /// Opens the local RDMA device (per `cfg`) and learns the nodes' sizes over TCP.
    pub fn discover(
        addrs: &[SocketAddr],
        secret: Secret,
        timeout: Duration,
        cfg: &VerbsConfig,
    ) -> Result<VerbsTransport, TransportError> {
        let rdma = Rdma::open(cfg).map_err(|e| verbs_error(NodeId(0), e))?;
        let tcp = TcpTransport::discover(addrs, secret, timeout)?;
        Ok(VerbsTransport {
            tcp,
            rdma: Arc::new(rdma),
            timeout,
        })
    }

    /// The local device, port and GID in use.
    pub fn describe(&self) -> String {
        self.rdma.describe()
    }

    fn connect_node(
        &self,
        tcp: &mut dyn Session,
        cq: &Arc<CompletionQueue>,
        info: &NodeInfo,
    ) -> Result<Peer, TransportError> {
        let node = info.id;
        let r = &self.rdma;
        let depth = (MAX_CHAIN as u32 + 1).min(r.caps.max_qp_wr.max(2));
        let qp = QueuePair::new_rc(&r.pd, cq, depth).map_err(|e| verbs_error(node, e))?;
        qp.to_init(r.path.port).map_err(|e| verbs_error(node, e))?;
        let psn = random_psn();
        let req = ConnectRequest {
            node: node.0,
            // The program never serves READs; it offers one responder resource.
            endpoint: r.endpoint(qp.qpn(), psn, 1),
        };
        let mut msg = format!("{CONNECT_CALL} ").into_bytes();
        msg.extend_from_slice(&serde_json::to_vec(&req).expect("plain struct serialises"));
        let answer = tcp.call(node, &msg)?;
        let reply: ConnectReply =
            serde_json::from_slice(&answer).map_err(|e| TransportError::Protocol {
                node,
                addr: info.addr,
                detail: format!("bad {CONNECT_CALL} reply: {e}"),
            })?;
        if reply.region_bytes != info.region_bytes {
            return Err(TransportError::Protocol {
                node,
                addr: info.addr,
                detail: format!(
                    "region of {} bytes over RDMA, {} over TCP",
                    reply.region_bytes, info.region_bytes
                ),
            });
        }
        qp.to_rtr(&r.path, &reply.endpoint, r.port.mtu, 1)
            .map_err(|e| verbs_error(node, e))?;
        let rd = r
            .caps
            .max_qp_init_rd_atom
            .min(reply.endpoint.rd_atomic)
            .clamp(1, RD_ATOMIC_MAX);
        qp.to_rts(&r.path, psn, rd)
            .map_err(|e| verbs_error(node, e))?;
        Ok(Peer {
            info: info.clone(),
            qp,
            rkey: reply.rkey,
            base: reply.addr,
            atomics: reply.atomics && r.caps.atomics,
            broken: None,
        })
    }
}

impl Transport for VerbsTransport {
    fn name(&self) -> &'static str {
        "verbs"
    }

    fn nodes(&self) -> &[NodeInfo] {
        self.tcp.nodes()
    }

    fn connect(&self) -> Result<Box<dyn Session>, TransportError> {
        let mut tcp = self.tcp.connect()?;
        let nodes = self.tcp.nodes();
        let first = nodes.first().map_or(NodeId(0), |n| n.id);
        let cq_depth = (nodes.len() * (MAX_CHAIN + 1) + 16).min(i32::MAX as usize) as i32;
        let cq = CompletionQueue::new(self.rdma.pd.context(), cq_depth)
            .map_err(|e| verbs_error(first, e))?;
        let bounce = Bounce::new(&self.rdma.pd, BOUNCE_BYTES).map_err(|e| verbs_error(first, e))?;
        let mut peers = Vec::with_capacity(nodes.len());
        for n in nodes {
            peers.push(self.connect_node(tcp.as_mut(), &cq, n)?);
        }
        Ok(Box::new(VerbsSession {
            bounce,
            tcp,
            ctl: Ctl {
                peers,
                cq,
                timeout: self.timeout,
                wrs: Vec::with_capacity(MAX_CHAIN),
                sges: Vec::with_capacity(MAX_CHAIN),
                descs: Vec::with_capacity(MAX_CHAIN),
                chains: vec![Chain::default(); nodes.len()],
                wcs: vec![
                    Completion {
                        wr_id: 0,
                        ok: true,
                        status: 0,
                        vendor_err: 0
                    };
                    16
                ],
            },
        }))
    }
}

fn random_psn() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u32::from_ne_bytes(b) & 0x00ff_ffff
}

/// The connection to one node.
struct Peer {
    info: NodeInfo,
    qp: QueuePair,
    rkey: u32,
    base: u64,
    atomics: bool,
    /// Set after an error that left the QP in the error state.
    broken: Option<String>,
}

/// One operation of a chunk: which node, where, and where in the bounce buffer.
#[derive(Clone, Copy, Debug)]
struct Desc {
    node: usize,
    offset: u64,
    len: usize,
    boff: usize,
}

/// Per node, the work requests of the current chunk.
#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    first: Option<usize>,
    last: usize,
    /// wr_id of the signalled request still awaited.
    awaited: Option<u64>,
}

/// A thread's queue pairs to every node. See the module documentation.
pub struct VerbsSession {
    // Field order is teardown order: the QPs go before the memory they may address.
    ctl: Ctl,
    bounce: Bounce,
    tcp: Box<dyn Session>,
}

/// Everything of a session but its bounce buffer (borrowed separately while in flight).
struct Ctl {
    peers: Vec<Peer>,
    cq: Arc<CompletionQueue>,
    timeout: Duration,
    /// Work requests and SGEs of the chunk in flight; capacity `MAX_CHAIN`, never grown,
    /// so the pointers chained between them stay valid.
    wrs: Vec<SendWr>,
    sges: Vec<Sge>,
    descs: Vec<Desc>,
    chains: Vec<Chain>,
    wcs: Vec<Completion>,
}

// SAFETY: the raw pointers in `wrs`/`sges` are scratch, only meaningful during one call
// on the owning thread; between calls they are never dereferenced. The verbs objects are
// thread-safe.
unsafe impl Send for VerbsSession {}

fn wr_id(node: usize, verb: Verb, index: usize) -> u64 {
    let v = match verb {
        Verb::Read => 1u64,
        Verb::Write => 2,
        Verb::CompareSwap => 3,
    };
    (v << 56) | ((index as u64) << 16) | node as u64
}

fn wr_node(id: u64) -> usize {
    (id & 0xffff) as usize
}

fn wr_verb(id: u64) -> Verb {
    match id >> 56 {
        1 => Verb::Read,
        2 => Verb::Write,
        _ => Verb::CompareSwap,
    }
}

impl Ctl {
    fn check(
        &self,
        node: NodeId,
        op: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<usize, TransportError> {
        let i = usize::from(node.0);
        let Some(p) = self.peers.get(i) else {
            return Err(TransportError::UnknownNode(node));
        };
        if let Some(why) = &p.broken {
            return Err(TransportError::Verbs {
                node,
                verb: "ibv_post_send",
                status: format!("queue pair unusable after an earlier error: {why}"),
            });
        }
        if len > MAX_OP_BYTES {
            return Err(TransportError::Rejected {
                node,
                op,
                offset,
                detail: format!("{len} bytes exceed the largest single operation ({MAX_OP_BYTES})"),
            });
        }
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > p.info.region_bytes) {
            return Err(TransportError::Rejected {
                node,
                op,
                offset,
                detail: format!(
                    "{len} bytes at offset {offset:#x} fall outside the node's {}-byte region",
                    p.info.region_bytes
                ),
            });
        }
        Ok(i)
    }

    fn poisoned_error(&self) -> TransportError {
        let node = self.peers.first().map_or(NodeId(0), |p| p.info.id);
        TransportError::Verbs {
            node,
            verb: "ibv_post_send",
            status: "session unusable: an earlier batch timed out with work requests in flight"
                .into(),
        }
    }

    /// Runs `self.descs` as one chunk of `verb`: copies data in with `fill`, posts one
    /// chain per node, reaps every completion. On success the bounce buffer is readable.
    fn run_chunk<'b>(
        &mut self,
        bounce: &'b mut Bounce,
        verb: Verb,
        cas: (u64, u64),
        fill: impl FnOnce(&mut Staging<'_>, &[Desc]),
    ) -> Result<Completed<'b>, TransportError> {
        let Some(mut staging) = bounce.stage() else {
            return Err(self.poisoned_error());
        };
        fill(&mut staging, &self.descs);
        // Build the chains: node-major order, so each node's requests are contiguous.
        self.wrs.clear();
        self.sges.clear();
        for c in self.chains.iter_mut() {
            *c = Chain::default();
        }
        for n in 0..self.peers.len() {
            for (k, d) in self.descs.iter().enumerate().filter(|(_, d)| d.node == n) {
                let peer = &self.peers[n];
                let idx = self.wrs.len();
                debug_assert!(idx < self.wrs.capacity(), "chunk larger than MAX_CHAIN");
                self.sges.push(staging.sge(d.boff, d.len));
                let mut wr = ffi::blank_wr();
                ffi::set_wr(
                    &mut wr,
                    wr_id(n, verb, k),
                    std::ptr::null_mut(),
                    verb,
                    peer.base + d.offset,
                    peer.rkey,
                    false,
                    cas,
                );
                self.wrs.push(wr);
                let c = &mut self.chains[n];
                if c.first.is_none() {
                    c.first = Some(idx);
                }
                c.last = idx;
            }
        }
        // Link now that the vectors no longer move.
        let sge_base = self.sges.as_mut_ptr();
        let wr_base = self.wrs.as_mut_ptr();
        for (i, wr) in self.wrs.iter_mut().enumerate() {
            // SAFETY: `i` < len of both vectors (one SGE per WR).
            wr.sg_list = unsafe { sge_base.add(i) };
        }
        for c in self.chains.iter_mut() {
            let Some(first) = c.first else { continue };
            for i in first..c.last {
                // SAFETY: `i + 1 <= last` < len.
                self.wrs[i].next = unsafe { wr_base.add(i + 1) };
            }
            let w = &mut self.wrs[c.last];
            ffi::set_signaled(w);
            c.awaited = Some(w.wr_id);
        }
        let posted = staging.post();
        for n in 0..self.peers.len() {
            let Some(first) = self.chains[n].first else {
                continue;
            };
            // SAFETY: the chain's SGEs point into the bounce buffer, registered with this
            // QP's PD and held by `posted` until every completion is reaped (or leaked).
            let wr = unsafe { self.wrs.as_mut_ptr().add(first) };
            // SAFETY: as above.
            if let Err(e) = unsafe { self.peers[n].qp.post_send(wr) } {
                let err = verbs_error(self.peers[n].info.id, e);
                self.break_all_pending(&err);
                return Err(err);
            }
        }
        let reaped = self.reap();
        match reaped {
            Err(e) => {
                // Work requests may still be in flight: `posted` drops here and poisons.
                self.break_all_pending(&e);
                drop(posted);
                Err(e)
            }
            Ok(None) => Ok(posted.completed()),
            Ok(Some(e)) => {
                let _ = posted.completed();
                Err(e)
            }
        }
    }

    /// Polls until every chain's signalled request completed. `Ok(Some(e))`: all
    /// completions are in, but one failed (its QP is now in the error state). `Err`:
    /// the timeout passed with requests outstanding.
    fn reap(&mut self) -> Result<Option<TransportError>, TransportError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut outstanding = self.chains.iter().filter(|c| c.awaited.is_some()).count();
        let mut failure: Option<TransportError> = None;
        let mut idle = 0u32;
        while outstanding > 0 {
            let n = self
                .cq
                .poll(&mut self.wcs)
                .map_err(|e| verbs_error(self.peers[0].info.id, e))?;
            for wc in &self.wcs[..n] {
                let node = wr_node(wc.wr_id);
                if !wc.ok {
                    if let Some(p) = self.peers.get_mut(node) {
                        let status = wc.status_text();
                        if p.broken.is_none() {
                            p.broken =
                                Some(format!("{} failed: {status}", wr_verb(wc.wr_id).name()));
                        }
                        if failure.is_none() {
                            failure = Some(TransportError::Verbs {
                                node: p.info.id,
                                verb: wr_verb(wc.wr_id).name(),
                                status,
                            });
                        }
                    }
                }
                if let Some(c) = self.chains.get_mut(node) {
                    // The signalled request, or any request that failed: after a failure
                    // the rest of the chain is flushed, so count the chain done once its
                    // signalled request (flushed or not) comes back.
                    if c.awaited == Some(wc.wr_id) {
                        c.awaited = None;
                        outstanding -= 1;
                    }
                }
            }
            if n == 0 {
                idle += 1;
                // Spin for the first SPIN of a wait (a READ on hardware takes a few us),
                // then give the CPU away between polls: Soft-RoCE, and anything else on
                // this core, needs it to make progress.
                if idle % 64 == 0 {
                    let now = Instant::now();
                    if now > deadline {
                        let c = self
                            .chains
                            .iter()
                            .position(|c| c.awaited.is_some())
                            .unwrap_or(0);
                        let p = &self.peers[c];
                        return Err(TransportError::Timeout {
                            node: p.info.id,
                            addr: p.info.addr,
                            timeout_ms: self.timeout.as_millis() as u64,
                        });
                    }
                    if now.duration_since(started) > SPIN {
                        std::thread::yield_now();
                    }
                } else {
                    std::hint::spin_loop();
                }
            } else {
                idle = 0;
            }
        }
        Ok(failure)
    }

    /// After a timeout or a failed post: every node with requests outstanding is moved to
    /// the error state and refused from now on.
    fn break_all_pending(&mut self, why: &TransportError) {
        for (n, c) in self.chains.iter().enumerate() {
            if c.first.is_some() {
                let p = &mut self.peers[n];
                let _ = p.qp.to_error();
                if p.broken.is_none() {
                    p.broken = Some(why.to_string());
                }
            }
        }
    }

    /// Fills `self.descs` with the next chunk; see [`plan_chunk`].
    fn plan(
        &mut self,
        cap: usize,
        count: usize,
        desc: impl Fn(usize) -> (usize, u64, usize),
        start: usize,
    ) -> usize {
        plan_chunk(&mut self.descs, cap, count, desc, start)
    }
}

/// Fills `descs` with the next chunk of the `count` operations described by
/// `desc(i) -> (node, offset, len)`, from `start`: as many as fit `cap` bounce bytes and
/// the send queue (`MAX_CHAIN`), laid out from bounce offset 0 in op order. Returns the
/// end of the chunk (always past `start` when an op is left: one op never exceeds the
/// bounce buffer). Allocates nothing within `descs`' capacity.
fn plan_chunk(
    descs: &mut Vec<Desc>,
    cap: usize,
    count: usize,
    desc: impl Fn(usize) -> (usize, u64, usize),
    start: usize,
) -> usize {
    descs.clear();
    let mut boff = 0usize;
    let mut end = start;
    while end < count && end - start < MAX_CHAIN {
        let (node, offset, len) = desc(end);
        if boff + len > cap && end > start {
            break;
        }
        descs.push(Desc {
            node,
            offset,
            len,
            boff,
        });
        boff += len;
        end += 1;
    }
    end
}

impl Session for VerbsSession {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        for o in ops.iter() {
            self.ctl.check(o.node, "read", o.offset, o.buf.len())?;
        }
        let mut start = 0;
        while start < ops.len() {
            let next = self.ctl.plan(
                self.bounce.len(),
                ops.len(),
                |i| (usize::from(ops[i].node.0), ops[i].offset, ops[i].buf.len()),
                start,
            );
            let done = self
                .ctl
                .run_chunk(&mut self.bounce, Verb::Read, (0, 0), |_, _| {})?;
            copy_out(&done, &mut ops[start..next]);
            start = next;
        }
        Ok(())
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        for o in ops.iter() {
            self.ctl.check(o.node, "write", o.offset, o.data.len())?;
        }
        let mut start = 0;
        while start < ops.len() {
            let next = self.ctl.plan(
                self.bounce.len(),
                ops.len(),
                |i| (usize::from(ops[i].node.0), ops[i].offset, ops[i].data.len()),
                start,
            );
            let part = &ops[start..next];
            self.ctl
                .run_chunk(&mut self.bounce, Verb::Write, (0, 0), |st, descs| {
                    for (d, o) in descs.iter().zip(part) {
                        st.write(d.boff, o.data);
                    }
                })?;
            start = next;
        }
        Ok(())
    }

    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        let n = self.ctl.check(node, "compare-and-swap", offset, 8)?;
        crate::transport::check_cas_alignment(node, offset)?;
        if !self.ctl.peers[n].atomics {
            return Err(TransportError::Rejected {
                node,
                op: "compare-and-swap",
                offset,
                detail: "the RDMA devices do not support atomics (atomic_cap is IBV_ATOMIC_NONE)"
                    .into(),
            });
        }
        self.ctl.descs.clear();
        self.ctl.descs.push(Desc {
            node: n,
            offset,
            len: 8,
            boff: 0,
        });
        let done = self.ctl.run_chunk(
            &mut self.bounce,
            Verb::CompareSwap,
            (expected, new),
            |_, _| {},
        )?;
        Ok(done.read_u64(0))
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.tcp.call(node, msg)
    }
}

/// Copies a completed read chunk into the callers' buffers (chunk offsets are laid out
/// in op order from 0, as `plan` assigns them).
fn copy_out(done: &Completed<'_>, ops: &mut [ReadOp<'_>]) {
    let mut boff = 0;
    for o in ops.iter_mut() {
        done.read(boff, o.buf);
        boff += o.buf.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_request_ids_carry_node_and_verb() {
        for (n, v) in [
            (0, Verb::Read),
            (7, Verb::Write),
            (65535, Verb::CompareSwap),
        ] {
            let id = wr_id(n, v, 255);
            assert_eq!(wr_node(id), n);
            assert_eq!(wr_verb(id), v);
        }
    }

    #[test]
    fn chunks_respect_the_bounce_buffer_and_the_send_queue() {
        let mut d = Vec::with_capacity(MAX_CHAIN);
        // 600 pages over 3 nodes: limited by the send queue first.
        let page = |i: usize| (i % 3, (i * 4096) as u64, 4096);
        let mut start = 0;
        let mut chunks = Vec::new();
        while start < 600 {
            let end = plan_chunk(&mut d, BOUNCE_BYTES, 600, page, start);
            assert!(end > start);
            assert!(d.len() <= MAX_CHAIN);
            assert!(d.iter().map(|x| x.len).sum::<usize>() <= BOUNCE_BYTES);
            assert_eq!(d[0].boff, 0);
            for w in d.windows(2) {
                assert_eq!(w[1].boff, w[0].boff + w[0].len);
            }
            chunks.push(end - start);
            start = end;
        }
        // 256 pages fill both the send queue and the 1 MiB bounce buffer.
        assert_eq!(chunks, vec![256, 256, 88]);
        assert_eq!(chunks.iter().sum::<usize>(), 600);
        // Large ops: limited by the bounce buffer; one op of the full size fits alone.
        let big = |i: usize| {
            (
                0,
                (i * MAX_OP_BYTES) as u64,
                if i == 1 { MAX_OP_BYTES } else { 300_000 },
            )
        };
        let e = plan_chunk(&mut d, BOUNCE_BYTES, 4, big, 0);
        assert_eq!(e, 1);
        let e = plan_chunk(&mut d, BOUNCE_BYTES, 4, big, 1);
        assert_eq!((e, d.len()), (2, 1));
        let e = plan_chunk(&mut d, BOUNCE_BYTES, 4, big, 2);
        assert_eq!(e, 4);
    }
}
