//! The memory node's server: authenticates each connection, then executes batched
//! one-sided reads and writes, compare-and-swap and control calls on the region.
//!
//! One thread per connection: a job has a handful of client threads per node (fault
//! handlers, reclaimer), so the simplest model is also the fastest here. Every length is
//! checked before it is trusted; a peer that breaks the protocol is logged and dropped.

use super::region::Region;
use super::request::{self, BatchError, Call};
use crate::transport::auth::{self, NodeHello, Secret};
use crate::transport::vectored::{self, iovec};
use crate::transport::wire::{
    self, Entry, Header, Op, WireError, HEADER_BYTES, REPLY_BIT, STATUS_OK, STATUS_REJECTED,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new peer may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node stops accepting after running out of descriptors or threads.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(10);

/// Counters a node keeps about the traffic it served.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Pages (entries) read.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Entries written.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Compare-and-swap operations.
    pub atomics: AtomicU64,
    /// Peers refused: at the handshake, or for want of descriptors or threads.
    pub refused_peers: AtomicU64,
}

/// A memory node: a region and the identity it announces.
#[derive(Debug)]
pub struct NodeServer {
    /// RDMA state; declared before `region` so its registration is dropped first.
    #[cfg(feature = "verbs")]
    verbs: super::verbs::NodeVerbs,
    region: Region,
    id: u16,
    secret: Secret,
    counters: NodeCounters,
    /// Page checksums as of the last snapshot or restore (checkpoints save only changes);
    /// the lock also keeps two snapshots from running at once.
    snapshot_sums: std::sync::Mutex<super::snapshot::PageSums>,
    /// Where snapshot calls may write (`--snapshot-dir`); unset, they are refused.
    snapshot_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// The checkpoint being restored lazily (`--restore`), if any.
    restorer: std::sync::OnceLock<super::restore::Restorer>,
    /// Set once `snapshot_sums` was given the restored checkpoint's sums.
    restored_sums_taken: std::sync::OnceLock<()>,
}

impl NodeServer {
    /// A node with a lazily backed region of `size.span_bytes`, announcing in its header
    /// that it may hold `size.capacity_pages()` pages.
    pub fn new(id: u16, size: super::NodeSize, secret: Secret) -> io::Result<Arc<NodeServer>> {
        if size.span_bytes <= super::header::NODE_HEADER_BYTES || size.capacity_pages() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a node needs memory for at least one page and a span above its {} KiB \
                     header (memory {} bytes, span {} bytes)",
                    super::header::NODE_HEADER_BYTES >> 10,
                    size.memory_bytes,
                    size.span_bytes
                ),
            ));
        }
        let region = Region::new(size.span_bytes)?;
        region
            .compare_and_swap(
                super::header::CAPACITY_PAGES_OFFSET,
                0,
                size.capacity_pages(),
            )
            .expect("the header lies inside the region");
        Ok(Arc::new(NodeServer {
            #[cfg(feature = "verbs")]
            verbs: Default::default(),
            region,
            id,
            secret,
            counters: NodeCounters::default(),
            snapshot_sums: Default::default(),
            snapshot_dir: Default::default(),
            restorer: Default::default(),
            restored_sums_taken: Default::default(),
        }))
    }

    /// Starts restoring snapshots (a base, then deltas, in order) into the region: checks
    /// their headers and indexes and restores the header's pages now, the rest lazily
    /// ([`NodeServer::restore_in_background`], and on demand). The next snapshot saves
    /// what changed since. Before serving only.
    pub fn restore(&self, files: &[std::path::PathBuf]) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let restorer = super::restore::Restorer::start(self.id, &self.region, files)
            .map_err(io::Error::other)?;
        // The next snapshot's baseline comes from the indexes, taken when it is first
        // needed (`snapshot`): a map of every page would delay the node's start.
        let _ = self.restorer.set(restorer);
        Ok(())
    }

    /// Restores the pages left in a low-priority thread, if a restore is under way.
    pub fn restore_in_background(self: &Arc<Self>) -> io::Result<()> {
        if !self.restorer.get().is_some_and(|r| r.pending()) {
            return Ok(());
        }
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("dsm-node-{}-restore", self.id))
            .spawn(move || {
                if let Some(r) = me.restorer.get() {
                    r.run_background(&me.region);
                }
            })?;
        Ok(())
    }

    /// Restores, before serving them, the pages that `entries` touch and that are not
    /// restored yet; the error (a damaged checkpoint) is the refusal to send.
    fn restore_for(&self, entries: &[Entry]) -> Result<(), String> {
        let Some(r) = self.restorer.get() else {
            return Ok(());
        };
        for e in entries {
            r.ensure(&self.region, e.offset, e.len.into())?;
        }
        Ok(())
    }

    /// Restores every page left now (before a snapshot scans the region, or RDMA
    /// bypasses the node).
    fn finish_restore(&self) -> Result<(), String> {
        match self.restorer.get() {
            Some(r) => r.finish_now(&self.region),
            None => Ok(()),
        }
    }

    /// Lets snapshot calls write files under `dir` (a job's checkpoint directory).
    pub fn allow_snapshots_in(&self, dir: std::path::PathBuf) {
        let _ = self.snapshot_dir.set(dir);
    }

    /// Writes a snapshot to `path` (under the snapshot directory): the pages changed since
    /// the last one, or all (`full`). The answer says what was written.
    fn snapshot(&self, full: bool, path: &str) -> Result<Vec<u8>, String> {
        let started = Instant::now();
        let Some(dir) = self.snapshot_dir.get() else {
            return Err(format!(
                "node {} was started without --snapshot-dir: it takes no snapshots",
                self.id
            ));
        };
        let path = dir.join(path);
        self.finish_restore()?;
        let mut sums = self.snapshot_sums.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.restorer.get() {
            // Once: the sums of the restored region, before its first snapshot.
            self.restored_sums_taken.get_or_init(|| *sums = r.sums());
        }
        let previous = if full {
            Default::default()
        } else {
            sums.clone()
        };
        let (written, now) = super::snapshot::write(&self.region, self.id.into(), &previous, &path)
            .map_err(|e| format!("node {}: writing snapshot {}: {e}", self.id, path.display()))?;
        *sums = now;
        Ok(format!(
            "pages={} zeroed={} bytes={} ms={}",
            written.pages,
            written.zeroed,
            written.bytes,
            started.elapsed().as_millis()
        )
        .into_bytes())
    }

    /// Traffic counters.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Accepts connections forever, one thread each. Peers that exhaust descriptors,
    /// memory or threads are refused for a moment; they never stop the node.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let mut quiet_until = Instant::now();
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) => match accept_error(&e) {
                    AcceptError::Retry => continue,
                    AcceptError::Exhausted => {
                        self.pause(&mut quiet_until, &e);
                        continue;
                    }
                    AcceptError::Fatal => return Err(e),
                },
            };
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("dsm-node-{}-conn", self.id))
                .spawn(move || me.connection(stream, peer));
            // A failed spawn drops the closure, and with it the stream: the peer is closed.
            if let Err(e) = spawned {
                self.pause(&mut quiet_until, &e);
            }
        }
    }

    /// Backs off after running out of a resource; says so at most once a second.
    fn pause(&self, quiet_until: &mut Instant, e: &io::Error) {
        self.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= *quiet_until {
            eprintln!("dsm-node {}: refusing peers for now: {e}", self.id);
            *quiet_until = Instant::now() + Duration::from_secs(1);
        }
        std::thread::sleep(EXHAUSTED_BACKOFF);
    }

    fn connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        let hello = NodeHello {
            node_id: self.id,
            region_bytes: self.region.len(),
        };
        if let Err(e) = auth::accept(&mut stream, &self.secret, hello) {
            self.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
            if !hung_up(&e) {
                eprintln!("dsm-node {}: refused peer {peer}: {e}", self.id);
            }
            return;
        }
        // Clients may sit idle for long (a program computing); reads block without limit,
        // but writes of replies still time out so a stuck client cannot pin a thread.
        let _ = stream.set_read_timeout(None);
        let mut conn = ConnState::default();
        loop {
            match self.serve_one(&mut stream, &mut conn) {
                Ok(()) => {}
                Err(ServeError::Closed) => return,
                // How a process's connections end when it exits with data unread: the
                // normal end of every program under dsmrun, not worth a message.
                Err(ServeError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => {
                    eprintln!("dsm-node {}: dropping peer {peer}: {e}", self.id);
                    return;
                }
            }
        }
    }

    fn serve_one(&self, s: &mut TcpStream, conn: &mut ConnState) -> Result<(), ServeError> {
        let mut hb = [0u8; HEADER_BYTES];
        match conn.input.read_exact(s, &mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ServeError::Closed),
            Err(e) => return Err(e.into()),
        }
        let (h, op) = request::parse_header(&hb)?;
        // At most 64 KiB (the entry count is bounded): the vector grows to that once.
        conn.raw.resize(request::entries_bytes(&h), 0);
        conn.input.read_exact(s, &mut conn.raw)?;
        request::parse_entries(&conn.raw, &mut conn.entries)?;
        match op {
            Op::Read => self.read(s, &h, conn),
            Op::Write => self.write(s, &h, conn),
            Op::CompareSwap => self.compare_and_swap(s, &h, conn),
            Op::Call => self.call(s, &h, conn),
        }
    }

    fn read(&self, s: &mut TcpStream, h: &Header, conn: &mut ConnState) -> Result<(), ServeError> {
        let total = match request::check_batch(Op::Read, h, &conn.entries, self.region.len()) {
            Ok(total) => total,
            Err(BatchError::Malformed(e)) => return Err(e.into()),
            Err(BatchError::OutOfBounds(bad)) => return reject(s, h, &self.bounds_message(bad)),
        };
        if let Err(why) = self.restore_for(&conn.entries) {
            return reject(s, h, &why);
        }
        let mut rh = [0u8; HEADER_BYTES];
        reply_header(h, STATUS_OK, total).encode(&mut rh);
        conn.iov.clear();
        conn.iov.push(iovec(rh.as_ptr(), rh.len()));
        for e in &conn.entries {
            let p = self
                .region
                .ptr(e.offset, e.len.into())
                .expect("checked above");
            conn.iov.push(iovec(p, e.len as usize));
        }
        // SAFETY: the iovecs cover `rh` on our stack and in-bounds parts of the region.
        unsafe { vectored::write_all(s.as_raw_fd(), &mut conn.iov) }?;
        self.counters
            .reads
            .fetch_add(conn.entries.len() as u64, Ordering::Relaxed);
        self.counters
            .read_bytes
            .fetch_add(total.into(), Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, s: &mut TcpStream, h: &Header, conn: &mut ConnState) -> Result<(), ServeError> {
        let total = match request::check_batch(Op::Write, h, &conn.entries, self.region.len()) {
            Ok(total) => total,
            Err(BatchError::Malformed(e)) => return Err(e.into()),
            Err(BatchError::OutOfBounds(bad)) => {
                // Consume the payload so the stream stays in step, then refuse.
                conn.input.skip(s, h.payload_len as usize)?;
                return reject(s, h, &self.bounds_message(bad));
            }
        };
        if let Err(why) = self.restore_for(&conn.entries) {
            conn.input.skip(s, h.payload_len as usize)?;
            return reject(s, h, &why);
        }
        conn.iov.clear();
        for e in &conn.entries {
            let p = self
                .region
                .ptr(e.offset, e.len.into())
                .expect("checked above");
            conn.iov.push(iovec(p, e.len as usize));
        }
        conn.input.read_into(s, &mut conn.iov)?;
        self.counters
            .writes
            .fetch_add(conn.entries.len() as u64, Ordering::Relaxed);
        self.counters
            .write_bytes
            .fetch_add(total.into(), Ordering::Relaxed);
        let mut rh = [0u8; HEADER_BYTES];
        reply_header(h, STATUS_OK, 0).encode(&mut rh);
        s.write_all(&rh)?;
        Ok(())
    }

    fn compare_and_swap(
        &self,
        s: &mut TcpStream,
        h: &Header,
        conn: &mut ConnState,
    ) -> Result<(), ServeError> {
        let mut args = [0u8; 24];
        conn.input.read_exact(s, &mut args)?;
        let (offset, expected, new) = wire::decode_cas(&args);
        if let Err(why) = self.restore_for(&[Entry { offset, len: 8 }]) {
            return reject(s, h, &why);
        }
        let old = request::cas_within(offset, self.region.len())
            .then(|| self.region.compare_and_swap(offset, expected, new))
            .flatten();
        let Some(old) = old else {
            let msg = format!(
                "compare-and-swap at {offset:#x}: must be 8-byte aligned and inside the {}-byte region",
                self.region.len()
            );
            return reject(s, h, &msg);
        };
        self.counters.atomics.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; HEADER_BYTES + 8];
        let mut rh = [0u8; HEADER_BYTES];
        reply_header(h, STATUS_OK, 8).encode(&mut rh);
        out[..HEADER_BYTES].copy_from_slice(&rh);
        out[HEADER_BYTES..].copy_from_slice(&old.to_le_bytes());
        s.write_all(&out)?;
        Ok(())
    }

    fn call(&self, s: &mut TcpStream, h: &Header, conn: &mut ConnState) -> Result<(), ServeError> {
        let mut msg = vec![0u8; h.payload_len as usize];
        conn.input.read_exact(s, &mut msg)?;
        let answer = match request::parse_call(&msg) {
            Call::Ping => b"pong".to_vec(),
            Call::Stats => self.stats_json().into_bytes(),
            Call::ShmAttach => {
                match crate::transport::shm::Offer::describe(self.region.file(), self.region.len())
                {
                    Ok(offer) => offer.encode(),
                    Err(e) => return reject(s, h, &format!("cannot share the region: {e}")),
                }
            }
            Call::VerbsConnect(m) => match self.verbs_connect(m, conn) {
                Ok(a) => a,
                Err(why) => return reject(s, h, &why),
            },
            Call::Snapshot { full, path } => match self.snapshot(full, path) {
                Ok(a) => a,
                Err(why) => return reject(s, h, &why),
            },
            Call::Unknown(m) => return reject(s, h, &request::unknown_call_message(m)),
        };
        let mut rh = [0u8; HEADER_BYTES];
        reply_header(h, STATUS_OK, answer.len() as u32).encode(&mut rh);
        s.write_all(&rh)?;
        s.write_all(&answer)?;
        Ok(())
    }

    #[cfg(feature = "verbs")]
    fn verbs_connect(&self, msg: &[u8], conn: &mut ConnState) -> Result<Vec<u8>, String> {
        if !super::verbs::NodeVerbs::is_connect_call(msg) {
            return Err("malformed verbs-connect call".into());
        }
        if conn.qps.len() >= super::verbs::MAX_QPS_PER_CONNECTION {
            return Err(format!(
                "at most {} queue pairs per connection",
                super::verbs::MAX_QPS_PER_CONNECTION
            ));
        }
        self.finish_restore()?;
        // SAFETY: `self.region` lives as long as `self.verbs` (same struct, dropped after
        // it) and is the only region ever passed.
        let (qp, answer) = unsafe { self.verbs.accept(self.id, &self.region, msg) }?;
        conn.qps.push(qp);
        Ok(answer)
    }

    #[cfg(not(feature = "verbs"))]
    fn verbs_connect(&self, _msg: &[u8], _conn: &mut ConnState) -> Result<Vec<u8>, String> {
        Err(format!(
            "node {} was built without RDMA support (the `verbs` cargo feature)",
            self.id
        ))
    }

    /// The node's counters and memory use as JSON.
    pub fn stats_json(&self) -> String {
        let c = &self.counters;
        #[cfg(feature = "verbs")]
        let rdma = self.verbs.stats();
        #[cfg(not(feature = "verbs"))]
        let rdma = serde_json::json!({"state": "not built"});
        serde_json::json!({
            "node": self.id,
            "region_bytes": self.region.len(),
            "reads": c.reads.load(Ordering::Relaxed),
            "read_bytes": c.read_bytes.load(Ordering::Relaxed),
            "writes": c.writes.load(Ordering::Relaxed),
            "write_bytes": c.write_bytes.load(Ordering::Relaxed),
            "atomics": c.atomics.load(Ordering::Relaxed),
            "refused_peers": c.refused_peers.load(Ordering::Relaxed),
            "resident_bytes": self.region.resident_bytes(),
            "restore": self.restorer.get().map(super::restore::Restorer::stats_json),
            "rdma": rdma,
        })
        .to_string()
    }

    fn bounds_message(&self, e: Entry) -> String {
        format!(
            "{} bytes at offset {:#x} fall outside the node's {}-byte region",
            e.len,
            e.offset,
            self.region.len()
        )
    }
}

/// Per-connection scratch, reused across requests.
#[derive(Default)]
struct ConnState {
    /// Queue pairs this connection set up; destroyed when it closes.
    #[cfg(feature = "verbs")]
    qps: Vec<crate::transport::verbs::ffi::QueuePair>,
    input: InputBuffer,
    raw: Vec<u8>,
    entries: Vec<Entry>,
    iov: Vec<libc::iovec>,
}

/// Bytes received but not yet consumed. One `read` usually brings a whole request (header,
/// entries and small payloads), instead of a system call per part.
struct InputBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for InputBuffer {
    fn default() -> Self {
        InputBuffer {
            buf: vec![0u8; 64 << 10].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl InputBuffer {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn refill(&mut self, s: &mut TcpStream) -> io::Result<()> {
        let n = loop {
            match s.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.start = 0;
        self.end = n;
        Ok(())
    }

    fn read_exact(&mut self, s: &mut TcpStream, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.start == self.end {
                if out.len() - done >= self.buf.len() {
                    return s.read_exact(&mut out[done..]);
                }
                self.refill(s)?;
            }
            let n = (self.end - self.start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }

    /// Fills raw iovecs (region memory): buffered bytes first, then straight from the socket.
    fn read_into(&mut self, s: &mut TcpStream, iov: &mut [libc::iovec]) -> io::Result<()> {
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let n = self.buffered().len().min(total);
        // SAFETY: the iovecs cover in-bounds parts of the region, which outlives the call and
        // never overlaps our buffer.
        unsafe { vectored::fill_from(iov, &self.buf[self.start..self.start + n]) };
        self.start += n;
        // SAFETY: as above.
        unsafe { vectored::read_exact(s.as_raw_fd(), iov) }
    }

    fn skip(&mut self, s: &mut TcpStream, mut n: usize) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end {
                self.refill(s)?;
            }
            let k = (self.end - self.start).min(n);
            self.start += k;
            n -= k;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("peer closed the connection")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
}

/// What an `accept` error means for the listening loop.
#[derive(Debug, PartialEq, Eq)]
enum AcceptError {
    /// Try again at once: a signal, or a peer that went away (accept(2) passes a
    /// pending connection's network errors on, to be treated like EAGAIN).
    Retry,
    /// Out of descriptors or memory, because of many peers: retry after a pause.
    Exhausted,
    /// The listener itself is unusable.
    Fatal,
}

fn accept_error(e: &io::Error) -> AcceptError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Exhausted,
        Some(
            libc::EINTR
            | libc::EAGAIN
            | libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => AcceptError::Retry,
        _ if e.kind() == io::ErrorKind::Interrupted => AcceptError::Retry,
        _ => AcceptError::Fatal,
    }
}

fn reply_header(req: &Header, status: u8, payload_len: u32) -> Header {
    Header {
        op: req.op | REPLY_BIT,
        status,
        count: 0,
        payload_len,
        seq: req.seq,
    }
}

fn reject(s: &mut TcpStream, h: &Header, msg: &str) -> Result<(), ServeError> {
    let mut rh = [0u8; HEADER_BYTES];
    reply_header(h, STATUS_REJECTED, msg.len() as u32).encode(&mut rh);
    s.write_all(&rh)?;
    s.write_all(msg.as_bytes())?;
    Ok(())
}

/// Whether a handshake failed because the peer hung up without finishing it: a port probe
/// (dsmrun checks whether a host's nodes still answer by connecting and closing at once)
/// or a client that died. Counted among refused peers, but not worth a line: after a
/// host's death every surviving node would print one per probe.
fn hung_up(e: &auth::AuthError) -> bool {
    matches!(e, auth::AuthError::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_pauses_the_node_instead_of_stopping_it() {
        let err = |n| io::Error::from_raw_os_error(n);
        assert_eq!(accept_error(&err(libc::EMFILE)), AcceptError::Exhausted);
        assert_eq!(accept_error(&err(libc::ENFILE)), AcceptError::Exhausted);
        assert_eq!(accept_error(&err(libc::ECONNABORTED)), AcceptError::Retry);
        assert_eq!(accept_error(&err(libc::EINTR)), AcceptError::Retry);
        assert_eq!(accept_error(&err(libc::EBADF)), AcceptError::Fatal);
        assert_eq!(accept_error(&err(libc::EINVAL)), AcceptError::Fatal);
    }

    #[test]
    fn a_peer_hanging_up_mid_handshake_is_not_reported_but_a_wrong_one_is() {
        let io = |k: io::ErrorKind| auth::AuthError::Io(io::Error::from(k));
        assert!(hung_up(&io(io::ErrorKind::UnexpectedEof)));
        assert!(hung_up(&io(io::ErrorKind::ConnectionReset)));
        assert!(!hung_up(&io(io::ErrorKind::TimedOut)));
        assert!(!hung_up(&auth::AuthError::BadSecret));
        assert!(!hung_up(&auth::AuthError::NotOurProtocol("client")));
    }
}
