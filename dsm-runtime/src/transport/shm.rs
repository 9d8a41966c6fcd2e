//! Shared-memory backend: one-sided access to memory nodes on this host.
//!
//! A node's region is a memfd (node/region.rs). A client on the same host, once
//! authenticated over TCP, asks the node for it (`shm-attach`), opens it through
//! `/proc/PID/fd/FD`, checks that it is the very file the node described (same boot,
//! device, inode and size), and keeps it open and mapped. Reads and writes are then
//! `pread`/`pwrite` on the file (one kernel memory copy each, which keeps the node's pages
//! out of this process's page tables and RSS), and compare-and-swap is an atomic on the
//! mapping: one-sided like RDMA READ/WRITE/atomics, with no work by the node's CPU and no
//! context switch. On this project's 2-vCPU machines the node's wake-up is most of what a
//! TCP round trip costs (docs/performance.md), so this is the backend `--transport auto`
//! picks when every node runs on the same host, the embedded default of `dsmrun -n N`.
//!
//! Nodes on other hosts: [`ShmTransport::discover_mixed`] maps the nodes it can and
//! serves the others over the TCP connections every session keeps anyway, so a job whose
//! nodes are partly on this host (a Slurm allocation that includes the program's host,
//! a hostfile naming it) copies locally where it can and crosses the network only where
//! it must. That is what `--transport auto` picks when verbs cannot serve every node.
//!
//! Lazy restore: a node restarted from a checkpoint restores its pages while it serves
//! (node/restore.rs). It cannot see this backend's copies, so while the word at
//! [`RESTORING_OFFSET`] in its header is set, a session sends that node's reads and writes
//! over its TCP connection, and the node restores each page before serving it. The word
//! only ever goes from set to clear, so once a session has seen it clear it never looks
//! again: after the restore this costs the fault path nothing.
//!
//! Node death: the mapping outlives the node's process, so liveness comes from the TCP
//! control connection each session keeps to each node. A closed connection (the node's
//! process is gone) fails every later operation on that node, as a broken RDMA queue pair
//! would. The sockets are polled at most once per [`LIVENESS_PERIOD`], so the check costs
//! the fault path nothing measurable. A stopped but living node goes unnoticed, as it
//! would with RDMA: its memory is still served.

use super::tcp::{TcpSession, TcpTransport};
use super::{NodeId, NodeInfo, ReadOp, Session, Transport, TransportError, WriteOp};
use crate::node::header::{NODE_HEADER_BYTES, RESTORING_OFFSET};
use crate::node::region::Region;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The control call a client sends to learn how to map a node's region.
pub const ATTACH_CALL: &str = "shm-attach";

/// How stale a session's knowledge of its nodes' liveness may be.
pub const LIVENESS_PERIOD: Duration = Duration::from_millis(1);

/// What a node tells a client about its region's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The node host's boot id: a client on another host (or VM) sees a different one.
    pub boot_id: String,
    /// The node's process id and the descriptor of the region's memfd in it.
    pub pid: u32,
    pub fd: RawFd,
    /// Device and inode of the memfd, so the client can check it opened the right file.
    pub dev: u64,
    pub ino: u64,
    /// The region's size.
    pub bytes: u64,
}

impl Offer {
    /// Describes the memfd `fd` of `bytes` bytes held by this process.
    pub fn describe(fd: RawFd, bytes: u64) -> io::Result<Offer> {
        let st = fstat(fd)?;
        Ok(Offer {
            boot_id: boot_id()?,
            pid: std::process::id(),
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            bytes,
        })
    }

    /// The offer as the call's answer.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an offer always serialises")
    }

    /// Parses an answer; an error describes what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Offer, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed shm-attach answer: {e}"))
    }

    /// Opens and maps the offered file, after checking it is on this host, is the file
    /// described, and has the size the node announced at its handshake.
    fn map(&self, region_bytes: u64) -> Result<Region, String> {
        let here = boot_id().map_err(|e| format!("cannot read this host's boot id: {e}"))?;
        if self.boot_id != here {
            return Err("it runs on another host".into());
        }
        if self.bytes != region_bytes {
            return Err(format!(
                "it offers {} bytes but announced {region_bytes}",
                self.bytes
            ));
        }
        let path = format!("/proc/{}/fd/{}\0", self.pid, self.fd);
        // SAFETY: `path` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("cannot open {}: {e}", path.trim_end_matches('\0')));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(file.as_raw_fd()).map_err(|e| format!("fstat: {e}"))?;
        if st.st_dev != self.dev || st.st_ino != self.ino {
            return Err("the file found is not the one described (another pid namespace?)".into());
        }
        if u64::try_from(st.st_size).ok() != Some(region_bytes) {
            return Err(format!(
                "its file has {} bytes, not {region_bytes}",
                st.st_size
            ));
        }
        // Only the header is mapped, for compare-and-swap; data moves with pread/pwrite.
        // A region's span may be terabytes, and mapping every node's whole span would use
        // up the address space the program's own slice of the global range needs.
        Region::map(file, NODE_HEADER_BYTES.min(region_bytes)).map_err(|e| format!("mmap: {e}"))
    }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Why the shared-memory backend cannot serve a cluster.
#[derive(Debug)]
pub enum ShmUnavailable {
    /// Some node is not on this host, or will not share its region: the reason, naming it.
    NotLocal(String),
    /// The nodes could not be reached at all.
    Transport(TransportError),
}

/// The shared-memory backend: nodes on this host mapped, any others over TCP.
pub struct ShmTransport {
    tcp: TcpTransport,
    /// Per node, its mapped region, or `None` for a node served over TCP.
    regions: Arc<[Option<Region>]>,
    /// Per node served over TCP, why it could not be mapped.
    remote: Vec<(NodeId, String)>,
}

impl ShmTransport {
    /// Authenticates to every node over TCP, then maps every node's region; fails with
    /// [`ShmUnavailable::NotLocal`] as soon as one node cannot be mapped.
    pub fn discover(
        addrs: &[std::net::SocketAddr],
        secret: super::auth::Secret,
        timeout: Duration,
    ) -> Result<ShmTransport, ShmUnavailable> {
        let t = ShmTransport::discover_mixed(addrs, secret, timeout)?;
        match t.remote.first() {
            Some((node, why)) => Err(ShmUnavailable::NotLocal(format!(
                "{node} at {}: {why}",
                t.tcp.nodes()[usize::from(node.0)].addr
            ))),
            None => Ok(t),
        }
    }

    /// Like [`ShmTransport::discover`], but a node that cannot be mapped is served over
    /// TCP instead; fails with [`ShmUnavailable::NotLocal`] only when no node can be.
    pub fn discover_mixed(
        addrs: &[std::net::SocketAddr],
        secret: super::auth::Secret,
        timeout: Duration,
    ) -> Result<ShmTransport, ShmUnavailable> {
        let tcp =
            TcpTransport::discover(addrs, secret, timeout).map_err(ShmUnavailable::Transport)?;
        let mut control = tcp.open().map_err(ShmUnavailable::Transport)?;
        let mut regions = Vec::with_capacity(addrs.len());
        let mut remote = Vec::new();
        for n in tcp.nodes() {
            match attach(&mut control, n).map_err(ShmUnavailable::Transport)? {
                Ok(region) => regions.push(Some(region)),
                Err(why) => {
                    regions.push(None);
                    remote.push((n.id, why));
                }
            }
        }
        if remote.len() == regions.len() {
            let (node, why) = &remote[0];
            let addr = tcp.nodes()[usize::from(node.0)].addr;
            return Err(ShmUnavailable::NotLocal(format!("{node} at {addr}: {why}")));
        }
        Ok(ShmTransport {
            tcp,
            regions: regions.into(),
            remote,
        })
    }

    /// The nodes served over TCP, each with why it could not be mapped.
    pub fn remote_nodes(&self) -> &[(NodeId, String)] {
        &self.remote
    }

    /// What serves which nodes, for the user: `shm` alone, or the split.
    pub fn describe(&self) -> String {
        if self.remote.is_empty() {
            return "shm: every node runs on this host".into();
        }
        let local: Vec<u16> = (0..self.regions.len() as u16)
            .filter(|&i| self.regions[usize::from(i)].is_some())
            .collect();
        let remote: Vec<u16> = self.remote.iter().map(|(n, _)| n.0).collect();
        let (first, why) = &self.remote[0];
        format!(
            "shm for nodes {} (on this host), tcp for nodes {} ({first}: {why})",
            ranges(&local),
            ranges(&remote)
        )
    }
}

/// Asks node `n` for its region and maps it: `Ok(Err(why))` when the node is not on this
/// host or will not share it, `Err` when the node could not be reached at all.
fn attach(
    control: &mut TcpSession,
    n: &NodeInfo,
) -> Result<Result<Region, String>, TransportError> {
    let answer = match control.call(n.id, ATTACH_CALL.as_bytes()) {
        Ok(a) => a,
        Err(TransportError::Rejected { detail, .. }) => return Ok(Err(detail)),
        Err(e) => return Err(e),
    };
    Ok(Offer::decode(&answer).and_then(|offer| offer.map(n.region_bytes)))
}

/// `0-3,6,8-9`: node numbers, consecutive ones as ranges.
fn ranges(ids: &[u16]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        if self.remote.is_empty() {
            "shm"
        } else {
            "shm+tcp"
        }
    }

    fn nodes(&self) -> &[NodeInfo] {
        self.tcp.nodes()
    }

    fn connect(&self) -> Result<Box<dyn Session>, TransportError> {
        let control = self.tcp.open()?;
        // Only mapped nodes' connections are watched: the others carry data, and their
        // failures surface as errors of the TCP operations themselves.
        let (watched, watch) = control
            .raw_fds()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.regions[*i].is_some())
            .map(|(i, fd)| {
                let p = libc::pollfd {
                    fd,
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                };
                (i, p)
            })
            .unzip();
        Ok(Box::new(ShmSession {
            // Every mapped node may be restoring until its header says otherwise.
            restoring: self.regions.iter().map(Option::is_some).collect(),
            any_restoring: true,
            regions: Arc::clone(&self.regions),
            nodes: self.tcp.nodes().to_vec(),
            dead: vec![false; self.regions.len()],
            watched,
            watch,
            checked: Instant::now(),
            any_remote: !self.remote.is_empty(),
            control,
        }))
    }
}

/// A thread's view of every mapped node's region, plus its TCP connections to every
/// node (control for mapped nodes, all traffic for the others).
pub struct ShmSession {
    regions: Arc<[Option<Region>]>,
    nodes: Vec<NodeInfo>,
    /// Nodes whose control connection was found closed.
    dead: Vec<bool>,
    /// The mapped nodes whose connections `watch` polls, in the same order.
    watched: Vec<usize>,
    /// poll(2) set over the mapped nodes' connections, preallocated.
    watch: Vec<libc::pollfd>,
    /// When liveness was last checked.
    checked: Instant,
    /// Whether some node is served over TCP (the split costs nothing otherwise).
    any_remote: bool,
    /// Mapped nodes that may still be restoring a checkpoint: served over TCP meanwhile.
    restoring: Vec<bool>,
    /// Whether `restoring` has any `true` left.
    any_restoring: bool,
    control: TcpSession,
}

impl ShmSession {
    /// Marks nodes whose control connection is closed, at most once per period. The
    /// control connections carry nothing unsolicited, so a readable one means end of file.
    fn check_liveness(&mut self) {
        if self.checked.elapsed() < LIVENESS_PERIOD {
            return;
        }
        self.checked = Instant::now();
        for p in &mut self.watch {
            p.revents = 0;
        }
        // SAFETY: `watch` is a valid pollfd array of its length; timeout 0 never blocks.
        let n = unsafe { libc::poll(self.watch.as_mut_ptr(), self.watch.len() as _, 0) };
        if n <= 0 {
            return;
        }
        let gone = libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        for (&i, p) in self.watched.iter().zip(&self.watch) {
            if p.revents & gone != 0 {
                self.dead[i] = true;
            }
        }
    }

    /// Notes the mapped nodes that finished restoring (their header's restoring word is
    /// clear); once all have, this is a single test.
    fn check_restoring(&mut self) {
        if !self.any_restoring {
            return;
        }
        for (i, restoring) in self.restoring.iter_mut().enumerate() {
            if *restoring {
                let word = self.regions[i]
                    .as_ref()
                    .and_then(|r| r.load_word(RESTORING_OFFSET));
                *restoring = word.is_some_and(|w| w != 0);
            }
        }
        self.any_restoring = self.restoring.iter().any(|&r| r);
    }

    /// Whether `node` is not mapped, so that every operation on it goes over TCP (unknown
    /// nodes are not: the bounds check names them).
    fn is_remote(&self, node: NodeId) -> bool {
        matches!(self.regions.get(usize::from(node.0)), Some(None))
    }

    /// Whether `node`'s reads and writes go over TCP: it is not mapped, or it restores a
    /// checkpoint (the node must restore pages before they are copied).
    fn via_tcp(&self, node: NodeId) -> bool {
        self.is_remote(node) || self.restoring.get(usize::from(node.0)) == Some(&true)
    }

    /// The mapped region of `node`, checked by [`ShmSession::locate`] before.
    fn region(&self, node: NodeId) -> &Region {
        self.regions[usize::from(node.0)]
            .as_ref()
            .expect("located ops are on mapped nodes")
    }

    /// Checks that `node` is alive and `[offset, offset+len)` lies inside its region.
    fn locate(
        &self,
        node: NodeId,
        op: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<(), TransportError> {
        let i = usize::from(node.0);
        let region = self
            .regions
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(TransportError::UnknownNode(node))?;
        if self.dead[i] {
            return Err(TransportError::Io {
                node,
                addr: self.nodes[i].addr,
                source: io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the node closed its connection: its process is gone",
                ),
            });
        }
        let region_bytes = self.nodes[i].region_bytes;
        // The header mapping bounds compare-and-swap; the file's size bounds the rest.
        let limit = if op == "compare-and-swap" {
            region.len()
        } else {
            region_bytes
        };
        match offset.checked_add(len as u64) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(TransportError::Rejected {
                node,
                op,
                offset,
                detail: format!(
                    "{len} bytes at {offset:#x} lie outside its region of {region_bytes:#x} \
                     bytes (compare-and-swap: outside its {:#x}-byte header)",
                    region.len()
                ),
            }),
        }
    }
}

/// Runs `step(done)` (a pread or pwrite of the bytes from `done` on) until `len` bytes
/// moved. Copying through the file rather than the mapping keeps the node's pages out of
/// this process's page tables, so they neither count in its RSS nor cost it page faults.
/// Most writes gathered in one `pwritev` (its vector lives on the stack).
const WRITEV_MAX: usize = 64;

/// Writes `ops`, which continue one another in one node's region file `file`: one
/// `pwritev` when it writes them all (a suspend writes a large cache home a run of
/// pages at a time, rather than a system call per page), else what is left op by op.
fn write_run(file: i32, nodes: &[NodeInfo], ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
    let mut done = 0usize;
    if ops.len() > 1 {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; WRITEV_MAX];
        for (v, op) in iov.iter_mut().zip(ops) {
            v.iov_base = op.data.as_ptr() as *mut libc::c_void;
            v.iov_len = op.data.len();
        }
        // SAFETY: the vector's first `ops.len()` entries point into the caller's data,
        // within their lengths; the kernel only reads them.
        let n = unsafe {
            libc::pwritev(
                file,
                iov.as_ptr(),
                ops.len() as libc::c_int,
                ops[0].offset as libc::off_t,
            )
        };
        done = n.max(0) as usize;
    }
    for op in ops {
        let len = op.data.len();
        if done >= len {
            done -= len;
            continue;
        }
        let from = std::mem::take(&mut done);
        file_io(op.node, nodes, len - from, |at| {
            let at = from + at;
            // SAFETY: writes from the caller's data, within its length.
            unsafe {
                libc::pwrite(
                    file,
                    op.data[at..].as_ptr().cast(),
                    len - at,
                    (op.offset + at as u64) as libc::off_t,
                )
            }
        })?;
    }
    Ok(())
}

fn file_io(
    node: NodeId,
    nodes: &[NodeInfo],
    len: usize,
    mut step: impl FnMut(usize) -> isize,
) -> Result<(), TransportError> {
    let mut done = 0usize;
    while done < len {
        match step(done) {
            n if n > 0 => done += n as usize,
            0 => {
                return Err(TransportError::Io {
                    node,
                    addr: nodes[usize::from(node.0)].addr,
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "region file ended early"),
                })
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(TransportError::Io {
                        node,
                        addr: nodes[usize::from(node.0)].addr,
                        source: e,
                    });
                }
            }
        }
    }
    Ok(())
}

impl Session for ShmSession {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        self.check_liveness();
        self.check_restoring();
        let ops = if self.any_remote || self.any_restoring {
            // Mapped nodes' ops first, then the others' as one TCP batch, in place (the
            // contract lets a backend reorder a batch): no allocation on the fault path.
            ops.sort_unstable_by_key(|op| self.via_tcp(op.node));
            let split = ops.partition_point(|op| !self.via_tcp(op.node));
            let (mapped, remote) = ops.split_at_mut(split);
            self.control.read_batch(remote)?;
            mapped
        } else {
            ops
        };
        // Check every op before copying any: an error is never a partial transfer.
        for op in ops.iter() {
            self.locate(op.node, "read", op.offset, op.buf.len())?;
        }
        for op in ops.iter_mut() {
            let file = self.region(op.node).file();
            file_io(op.node, &self.nodes, op.buf.len(), |at| {
                // SAFETY: reads into the caller's buffer, within its length.
                unsafe {
                    libc::pread(
                        file,
                        op.buf[at..].as_mut_ptr().cast(),
                        op.buf.len() - at,
                        (op.offset + at as u64) as libc::off_t,
                    )
                }
            })?;
        }
        Ok(())
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        self.check_liveness();
        self.check_restoring();
        for op in ops.iter().filter(|op| !self.via_tcp(op.node)) {
            self.locate(op.node, "write", op.offset, op.data.len())?;
        }
        let split = self.any_remote || self.any_restoring;
        if split && ops.iter().any(|op| self.via_tcp(op.node)) {
            // Write-back batches are not on the fault path's fast side: a small vector
            // here costs nothing next to the network round trip it saves.
            let remote: Vec<WriteOp<'_>> = ops
                .iter()
                .filter(|op| self.via_tcp(op.node))
                .copied()
                .collect();
            self.control.write_batch(&remote)?;
        }
        let mut i = 0;
        while i < ops.len() {
            if self.via_tcp(ops[i].node) {
                i += 1;
                continue;
            }
            // Ops that continue one another in one node's region go in one pwritev.
            let mut j = i + 1;
            while j < ops.len()
                && j - i < WRITEV_MAX
                && ops[j].node == ops[i].node
                && ops[j].offset == ops[j - 1].offset + ops[j - 1].data.len() as u64
            {
                j += 1;
            }
            let file = self.region(ops[i].node).file();
            write_run(file, &self.nodes, &ops[i..j])?;
            i = j;
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
        self.check_liveness();
        if self.is_remote(node) {
            return self.control.compare_and_swap(node, offset, expected, new);
        }
        super::check_cas_alignment(node, offset)?;
        self.locate(node, "compare-and-swap", offset, 8)?;
        Ok(self
            .region(node)
            .compare_and_swap(offset, expected, new)
            .expect("alignment and bounds checked above"))
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.control.call(node, msg)
    }
}
