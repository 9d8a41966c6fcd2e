//! In-memory effects: the process's memory as a map of mapped pages, and the memory
//! nodes as a map of written pages. Deterministic, no system call; for the simulator and
//! for unit tests of the cache that need no userfaultfd.

use super::{Effects, Run};
use crate::fault::uffd::{Installed, UffdError};
use crate::space::PAGE_BYTES;
use crate::transport::{NodeId, ReadOp, Session, TransportError, WriteOp};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One mapped page of the simulated process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedPage {
    /// Its bytes.
    pub data: Box<[u8]>,
    /// Whether a write traps (write-protect fault).
    pub write_protected: bool,
}

/// What a simulated program access found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The access went through.
    Done,
    /// No page mapped: a missing fault.
    Missing,
    /// A write to a write-protected page: a write-protect fault.
    WriteProtected,
}

/// The process's memory, as the cache's effects see it: which pages are mapped, with
/// which bytes and protection. Program accesses go through [`MemoryEffects::load`] and
/// [`MemoryEffects::store`], which report the fault a real access would take.
#[derive(Default)]
pub struct MemoryEffects {
    mapped: Mutex<HashMap<usize, MappedPage>>,
    /// Calls of `write_protect` still to be refused with EAGAIN (failure injection).
    write_protect_eagain: AtomicU64,
    /// Effects performed, for tests: installs, write-protect changes, wakes, pages dropped.
    pub installs: AtomicU64,
    /// See `installs`.
    pub protects: AtomicU64,
    /// See `installs`.
    pub wakes: AtomicU64,
    /// See `installs`.
    pub unmapped_pages: AtomicU64,
}

fn eagain(call: &'static str, addr: usize) -> UffdError {
    UffdError::Call {
        call,
        addr,
        source: io::Error::from_raw_os_error(libc::EAGAIN),
    }
}

fn pages(start: usize, len: usize) -> impl Iterator<Item = usize> {
    debug_assert!(start % PAGE_BYTES == 0 && len % PAGE_BYTES == 0);
    (start..start + len).step_by(PAGE_BYTES)
}

impl MemoryEffects {
    /// A process with nothing mapped.
    pub fn new() -> MemoryEffects {
        MemoryEffects::default()
    }

    fn mapped(&self) -> MutexGuard<'_, HashMap<usize, MappedPage>> {
        self.mapped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A program's read of the 8 bytes at `addr`.
    pub fn load(&self, addr: usize) -> Result<u64, Access> {
        let page = addr & !(PAGE_BYTES - 1);
        let off = addr - page;
        let m = self.mapped();
        let p = m.get(&page).ok_or(Access::Missing)?;
        Ok(u64::from_le_bytes(
            p.data[off..off + 8].try_into().expect("8 bytes"),
        ))
    }

    /// A program's write of `value` at `addr` (8 bytes, inside one page).
    pub fn store(&self, addr: usize, value: u64) -> Access {
        let page = addr & !(PAGE_BYTES - 1);
        let off = addr - page;
        let mut m = self.mapped();
        match m.get_mut(&page) {
            None => Access::Missing,
            Some(p) if p.write_protected => Access::WriteProtected,
            Some(p) => {
                p.data[off..off + 8].copy_from_slice(&value.to_le_bytes());
                Access::Done
            }
        }
    }

    /// Fills words `1..=words` of the mapped, writable page at `page_addr` with a
    /// pseudo-random stream from `seed`: how the simulator makes its pages compress badly
    /// (many words) or well (few). Words 0 and the last are left alone.
    pub fn store_fill(&self, page_addr: usize, words: usize, seed: u64) -> Access {
        let mut m = self.mapped();
        match m.get_mut(&page_addr) {
            None => Access::Missing,
            Some(p) if p.write_protected => Access::WriteProtected,
            Some(p) => {
                let mut x = seed | 1;
                for w in p.data[8..PAGE_BYTES - 8].chunks_exact_mut(8).take(words) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    w.copy_from_slice(&x.to_le_bytes());
                }
                Access::Done
            }
        }
    }

    /// The mapped page at `page_addr`, if any.
    pub fn page(&self, page_addr: usize) -> Option<MappedPage> {
        self.mapped().get(&page_addr).cloned()
    }

    /// Whether the page at `page_addr` is mapped, and write-protected.
    pub fn mapping(&self, page_addr: usize) -> Option<bool> {
        self.mapped().get(&page_addr).map(|p| p.write_protected)
    }

    /// Number of mapped pages.
    pub fn mapped_pages(&self) -> usize {
        self.mapped().len()
    }

    /// Drops a page behind the runtime's back (another mapping's `madvise`, a kernel
    /// zap), as a real process may see without EVENT_REMOVE.
    pub fn zap(&self, page_addr: usize) -> bool {
        self.mapped().remove(&page_addr).is_some()
    }

    /// Makes the next `n` write-protect calls fail with EAGAIN.
    pub fn refuse_write_protect(&self, n: u64) {
        self.write_protect_eagain.store(n, Ordering::Relaxed);
    }
}

impl Effects for MemoryEffects {
    unsafe fn install(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        write_protect: bool,
        _dontwake: bool,
    ) -> Result<Installed, UffdError> {
        let mut m = self.mapped();
        for (i, page) in pages(dst, len).enumerate() {
            if m.contains_key(&page) {
                return Ok(Installed::AlreadyPresent);
            }
            // SAFETY: the caller guarantees `src` valid for `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(src.add(i * PAGE_BYTES), PAGE_BYTES) };
            m.insert(
                page,
                MappedPage {
                    data: bytes.into(),
                    write_protected: write_protect,
                },
            );
            self.installs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Installed::Done)
    }

    fn write_protect(
        &self,
        start: usize,
        len: usize,
        protect: bool,
        _dontwake: bool,
    ) -> Result<(), UffdError> {
        let refused =
            self.write_protect_eagain
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if refused.is_ok() {
            return Err(eagain("UFFDIO_WRITEPROTECT", start));
        }
        let mut m = self.mapped();
        for page in pages(start, len) {
            if let Some(p) = m.get_mut(&page) {
                p.write_protected = protect;
            }
        }
        self.protects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn wake(&self, _start: usize, _len: usize) -> Result<(), UffdError> {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn read_page(&self, addr: usize, dst: &mut [u8]) {
        let m = self.mapped();
        let p = m
            .get(&addr)
            .unwrap_or_else(|| panic!("copying out page {addr:#x}, which is not mapped"));
        dst.copy_from_slice(&p.data);
    }

    fn is_mapped(&self, addr: usize) -> bool {
        self.mapped().contains_key(&addr)
    }

    fn unmap(&self, runs: &[Run]) {
        let mut m = self.mapped();
        for r in runs {
            for page in pages(r.base, r.len) {
                if m.remove(&page).is_some() {
                    self.unmapped_pages.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Pages written home, by node and offset.
type NodeStore = HashMap<(u16, u64), Box<[u8]>>;

/// Memory nodes in memory: pages written home, by node and offset; never written reads
/// zeros (as a lazily backed region does). Clones share the store.
#[derive(Clone, Default)]
pub struct MemoryNodes {
    store: Arc<Mutex<NodeStore>>,
    failed: Arc<AtomicBool>,
}

impl MemoryNodes {
    /// Empty nodes, all up.
    pub fn new() -> MemoryNodes {
        MemoryNodes::default()
    }

    /// A session on these nodes.
    pub fn session(&self) -> Box<dyn Session> {
        Box::new(self.clone())
    }

    /// Fails (`true`) every operation from now on, as a dead node would, or revives them.
    pub fn fail(&self, on: bool) {
        self.failed.store(on, Ordering::Relaxed);
    }

    /// The bytes at `(node, offset)`, if ever written.
    pub fn read(&self, node: NodeId, offset: u64) -> Option<Box<[u8]>> {
        self.lock().get(&(node.0, offset)).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, NodeStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, node: NodeId) -> Result<(), TransportError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(TransportError::Timeout {
                node,
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                timeout_ms: 0,
            });
        }
        Ok(())
    }
}

impl Session for MemoryNodes {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        let store = self.lock();
        for op in ops.iter_mut() {
            self.check(op.node)?;
            match store.get(&(op.node.0, op.offset)) {
                Some(d) => op.buf.copy_from_slice(&d[..op.buf.len()]),
                None => op.buf.fill(0),
            }
        }
        Ok(())
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        let mut store = self.lock();
        for op in ops {
            self.check(op.node)?;
        }
        for op in ops {
            store.insert((op.node.0, op.offset), op.data.into());
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
        self.check(node)?;
        let mut store = self.lock();
        let d = store
            .entry((node.0, offset))
            .or_insert_with(|| vec![0u8; 8].into());
        let found = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        if found == expected {
            d[..8].copy_from_slice(&new.to_le_bytes());
        }
        Ok(found)
    }

    fn call(&mut self, node: NodeId, _msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.check(node)?;
        Err(TransportError::Rejected {
            node,
            op: "call",
            offset: 0,
            detail: "in-memory nodes answer no control messages".into(),
        })
    }
}
