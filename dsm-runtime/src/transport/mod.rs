//! Transports: one-sided access to memory nodes' regions.
//!
//! The contract is written once, here, and every backend (`tcp`, `shm`, `verbs`) keeps it:
//!
//! - A [`Transport`] knows the cluster's nodes and opens [`Session`]s. A session belongs
//!   to one thread (the fault handler, the reclaimer) so the fast path takes no locks.
//! - [`Session::read_batch`] and [`Session::write_batch`] are one-sided: the node's CPU
//!   does no work beyond what its backend needs to emulate RDMA READ/WRITE. A batch may
//!   span nodes; the backend issues every node's share before waiting for any reply
//!   (pipelining), and returns only when every operation has completed. The buffers are
//!   borrowed for the whole call, so none can be reused while a request is in flight.
//!   A backend may reorder a read batch's ops in place (shm+tcp groups them by route);
//!   callers find their data through their own buffers, never by an op's position.
//! - Every operation is bounds-checked by the node against its region; an out-of-range
//!   access is an error, never a partial transfer.
//! - [`Session::compare_and_swap`] is an 8-byte atomic on an 8-byte-aligned offset in
//!   the node's header (`node::header`: the slot table and the pool's counters); `shm`
//!   maps only the header, so it refuses an atomic anywhere else.
//! - [`Session::call`] is a small two-sided message for control and, later, coherence.
//! - A node that does not answer within the configured timeout, closes the connection, or
//!   sends something malformed yields an error naming that node. Nothing blocks forever.

pub mod auth;
pub mod select;
pub mod shm;
pub mod tcp;
pub mod vectored;
#[cfg(feature = "verbs")]
pub mod verbs;
pub mod wire;

pub use select::{select, verbs_device, SelectError, Selected, TransportKind};

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Index of a memory node in the cluster description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Where a node is and how much memory it contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its index.
    pub id: NodeId,
    /// Its transport endpoint.
    pub addr: SocketAddr,
    /// Bytes of its region.
    pub region_bytes: u64,
}

/// Errors of any transport, always naming the node involved.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not reach the node at all.
    #[error("{node} at {addr}: cannot connect: {source}")]
    Connect {
        node: NodeId,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The node did not answer in time.
    #[error("{node} at {addr}: no answer within {timeout_ms} ms (node dead or stalled?)")]
    Timeout {
        node: NodeId,
        addr: SocketAddr,
        timeout_ms: u64,
    },
    /// The connection broke.
    #[error("{node} at {addr}: connection lost: {source}")]
    Io {
        node: NodeId,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The peer sent something that is not our protocol, or refused us.
    #[error("{node} at {addr}: protocol error: {detail}")]
    Protocol {
        node: NodeId,
        addr: SocketAddr,
        detail: String,
    },
    /// Authentication failed (wrong job secret on one side).
    #[error("{node} at {addr}: authentication failed: {detail}")]
    Auth {
        node: NodeId,
        addr: SocketAddr,
        detail: String,
    },
    /// The node rejected an operation (for example out of its region's bounds).
    #[error("{node}: rejected {op} at offset {offset:#x}: {detail}")]
    Rejected {
        node: NodeId,
        op: &'static str,
        offset: u64,
        detail: String,
    },
    /// The request names a node that is not in the cluster.
    #[error("no such node: {0}")]
    UnknownNode(NodeId),
    /// Every home of a page is on a dead node (`redundancy`): its data is lost.
    #[error(
        "data was lost: the page whose primary home is {node} offset {offset:#x} was kept in \
         {copies} places (copies, or pieces of its group) and too many of them were on dead \
         nodes (dead: {dead:?}); the job cannot go on"
    )]
    DataLost {
        /// The page's primary home.
        node: NodeId,
        offset: u64,
        /// Places the page was kept in: its copies, or the pieces of its group that could
        /// each be lost alone.
        copies: usize,
        /// The nodes declared dead so far.
        dead: Vec<NodeId>,
    },
    /// An RDMA verb, or the completion of a work request, failed.
    #[error("{node}: {verb} failed: {status}")]
    Verbs {
        node: NodeId,
        /// The verb (`ibv_create_qp`, `RDMA READ` ...).
        verb: &'static str,
        /// errno or completion status, as libibverbs names it.
        status: String,
    },
}

impl TransportError {
    /// The node this error is about.
    pub fn node(&self) -> NodeId {
        match self {
            TransportError::Connect { node, .. }
            | TransportError::Timeout { node, .. }
            | TransportError::Io { node, .. }
            | TransportError::Protocol { node, .. }
            | TransportError::Auth { node, .. }
            | TransportError::Rejected { node, .. }
            | TransportError::Verbs { node, .. }
            | TransportError::DataLost { node, .. }
            | TransportError::UnknownNode(node) => *node,
        }
    }
}

/// Refuses a compare-and-swap whose offset is not 8-byte aligned, as every backend must
/// (TCP nodes check it themselves; shm and verbs clients before issuing it).
pub(crate) fn check_cas_alignment(node: NodeId, offset: u64) -> Result<(), TransportError> {
    if offset % 8 == 0 {
        return Ok(());
    }
    Err(TransportError::Rejected {
        node,
        op: "compare-and-swap",
        offset,
        detail: "the offset must be 8-byte aligned".into(),
    })
}

/// One read of `buf.len()` bytes at `offset` in `node`'s region.
#[derive(Debug)]
pub struct ReadOp<'a> {
    /// Source node.
    pub node: NodeId,
    /// Byte offset in its region.
    pub offset: u64,
    /// Destination, filled when the batch returns.
    pub buf: &'a mut [u8],
}

/// One write of `data` at `offset` in `node`'s region.
#[derive(Debug, Clone, Copy)]
pub struct WriteOp<'a> {
    /// Destination node.
    pub node: NodeId,
    /// Byte offset in its region.
    pub offset: u64,
    /// Bytes to write.
    pub data: &'a [u8],
}

/// A thread's connection set to every node. See the module documentation for the contract.
pub trait Session: Send {
    /// Reads every op; returns when all completed, or the first error.
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError>;
    /// Writes every op; returns when all are durable in the nodes' regions.
    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError>;
    /// Atomically replaces the 8 bytes at `offset` by `new` if they equal `expected`;
    /// returns the value found.
    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError>;
    /// Sends a small control message and returns the node's answer.
    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError>;
    /// Whether `node` was declared dead and is never contacted again (only sessions that
    /// keep redundant copies declare deaths; see `redundancy`).
    fn fenced(&self, _node: NodeId) -> bool {
        false
    }
}

/// A cluster reachable through one backend.
pub trait Transport: Send + Sync {
    /// The backend's name as users select it (`tcp`, `verbs`).
    fn name(&self) -> &'static str;
    /// The nodes, indexed by `NodeId`.
    fn nodes(&self) -> &[NodeInfo];
    /// Opens a session (connections to every node) for the calling thread.
    fn connect(&self) -> Result<Box<dyn Session>, TransportError>;
}
