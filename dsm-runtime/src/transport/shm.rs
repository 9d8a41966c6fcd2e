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
//! Node death: the mapping outlives the node's process, so liveness comes from the TCP
//! control connection each session keeps to each node. A closed connection (the node's
//! process is gone) fails every later operation on that node, as a broken RDMA queue pair
//! would. The sockets are polled at most once per [`LIVENESS_PERIOD`], so the check costs
//! the fault path nothing measurable. A stopped but living node goes unnoticed, as it
//! would with RDMA: its memory is still served.

use super::tcp::{TcpSession, TcpTransport};
use super::{NodeId, NodeInfo, ReadOp, Session, Transport, TransportError, WriteOp};
use crate::node::header::NODE_HEADER_BYTES;
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

/// The shared-memory backend for a set of nodes on this host.
pub struct ShmTransport {
    tcp: TcpTransport,
    regions: Arc<[Region]>,
}

impl ShmTransport {
    /// Authenticates to every node over TCP, then maps every node's region; fails with
    /// [`ShmUnavailable::NotLocal`] as soon as one node cannot be mapped.
    pub fn discover(
        addrs: &[std::net::SocketAddr],
        secret: super::auth::Secret,
        timeout: Duration,
    ) -> Result<ShmTransport, ShmUnavailable> {
        let tcp =
            TcpTransport::discover(addrs, secret, timeout).map_err(ShmUnavailable::Transport)?;
        let mut control = tcp.open().map_err(ShmUnavailable::Transport)?;
        let mut regions = Vec::with_capacity(addrs.len());
        for n in tcp.nodes() {
            let answer = match control.call(n.id, ATTACH_CALL.as_bytes()) {
                Ok(a) => a,
                Err(TransportError::Rejected { detail, .. }) => {
                    return Err(ShmUnavailable::NotLocal(format!("{}: {detail}", n.id)))
                }
                Err(e) => return Err(ShmUnavailable::Transport(e)),
            };
            let mapping = Offer::decode(&answer)
                .and_then(|offer| offer.map(n.region_bytes))
                .map_err(|why| {
                    ShmUnavailable::NotLocal(format!("{} at {}: {why}", n.id, n.addr))
                })?;
            regions.push(mapping);
        }
        Ok(ShmTransport {
            tcp,
            regions: regions.into(),
        })
    }
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn nodes(&self) -> &[NodeInfo] {
        self.tcp.nodes()
    }

    fn connect(&self) -> Result<Box<dyn Session>, TransportError> {
        let control = self.tcp.open()?;
        let watch = control
            .raw_fds()
            .into_iter()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        Ok(Box::new(ShmSession {
            regions: Arc::clone(&self.regions),
            nodes: self.tcp.nodes().to_vec(),
            dead: vec![false; self.regions.len()],
            watch,
            checked: Instant::now(),
            control,
        }))
    }
}

/// A thread's view of every node's region, plus its control connections.
pub struct ShmSession {
    regions: Arc<[Region]>,
    nodes: Vec<NodeInfo>,
    /// Nodes whose control connection was found closed.
    dead: Vec<bool>,
    /// poll(2) set over the control connections, in node order, preallocated.
    watch: Vec<libc::pollfd>,
    /// When liveness was last checked.
    checked: Instant,
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
        for (i, p) in self.watch.iter().enumerate() {
            if p.revents & gone != 0 {
                self.dead[i] = true;
            }
        }
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
        // Check every op before copying any: an error is never a partial transfer.
        for op in ops.iter() {
            self.locate(op.node, "read", op.offset, op.buf.len())?;
        }
        for op in ops.iter_mut() {
            let file = self.regions[usize::from(op.node.0)].file();
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
        for op in ops {
            self.locate(op.node, "write", op.offset, op.data.len())?;
        }
        for op in ops {
            let file = self.regions[usize::from(op.node.0)].file();
            file_io(op.node, &self.nodes, op.data.len(), |at| {
                // SAFETY: writes from the caller's data, within its length.
                unsafe {
                    libc::pwrite(
                        file,
                        op.data[at..].as_ptr().cast(),
                        op.data.len() - at,
                        (op.offset + at as u64) as libc::off_t,
                    )
                }
            })?;
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
        super::check_cas_alignment(node, offset)?;
        self.locate(node, "compare-and-swap", offset, 8)?;
        Ok(self.regions[usize::from(node.0)]
            .compare_and_swap(offset, expected, new)
            .expect("alignment and bounds checked above"))
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.control.call(node, msg)
    }
}
