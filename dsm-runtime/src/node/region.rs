//! A memory node's region: one lazily backed shared-memory file (a memfd), mapped.
//!
//! `MAP_NORESERVE` and demand paging mean an untouched terabyte costs nothing: only pages
//! that are written (or read) take memory. The region is a memfd rather than anonymous
//! memory so that a client on the same host can map it too and read and write it with no
//! work by the node's CPU: the `shm` transport (transport/shm.rs), one-sided like RDMA.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's share of the global pool.
#[derive(Debug)]
pub struct Region {
    base: *mut u8,
    len: u64,
    file: OwnedFd,
}

// SAFETY: the region is plain memory; concurrent access follows one-sided semantics (the
// program, like an RDMA NIC, does not order concurrent writes to the same bytes).
unsafe impl Send for Region {}
// SAFETY: as above; the region is only accessed through raw pointers and atomics.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes, lazily backed.
    pub fn new(len: u64) -> io::Result<Region> {
        if len == 0 || len % 4096 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("region size {len} must be a non-zero multiple of 4096"),
            ));
        }
        const NAME: &CStr = c"dsm-node-region";
        // SAFETY: a NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let flen = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: plain syscall on our own descriptor.
        if unsafe { libc::ftruncate(file.as_raw_fd(), flen) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Region::map(file, len)
    }

    /// Maps all `len` bytes of the shared-memory file `file`: a node's region, as seen by
    /// a client of the `shm` transport on the same host.
    pub fn map(file: OwnedFd, len: u64) -> io::Result<Region> {
        let size = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: a fresh mapping at a kernel-chosen address; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            base: p.cast(),
            len,
            file,
        })
    }

    /// The memfd behind the region, for the `shm` transport's clients on this host.
    pub fn file(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Region size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to `[offset, offset+len)`, or `None` when out of bounds.
    pub fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset <= len` of the mapping, so the pointer stays inside it.
        Some(unsafe { self.base.add(offset as usize) })
    }

    /// 8-byte compare-and-swap; `None` when unaligned or out of bounds.
    pub fn compare_and_swap(&self, offset: u64, expected: u64, new: u64) -> Option<u64> {
        if offset % 8 != 0 {
            return None;
        }
        let p = self.ptr(offset, 8)?;
        // SAFETY: `p` is 8-byte aligned (mapping is page aligned, offset multiple of 8) and
        // inside the mapping, which lives as long as `self`.
        let word = unsafe { AtomicU64::from_ptr(p.cast()) };
        Some(
            match word.compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(v) | Err(v) => v,
            },
        )
    }

    /// 8-byte atomic load (acquire); `None` when unaligned or out of bounds.
    pub fn load_word(&self, offset: u64) -> Option<u64> {
        if offset % 8 != 0 {
            return None;
        }
        let p = self.ptr(offset, 8)?;
        // SAFETY: as in `compare_and_swap`: aligned, inside the mapping.
        let word = unsafe { AtomicU64::from_ptr(p.cast()) };
        Some(word.load(Ordering::Acquire))
    }

    /// Bytes of the region actually backed by memory (resident), from `mincore`.
    pub fn resident_bytes(&self) -> u64 {
        // Sampling 1 GiB of mincore vector at a time bounds this call's own memory.
        const CHUNK: u64 = 1 << 30;
        let mut vec = vec![0u8; (CHUNK / 4096) as usize];
        let mut total = 0u64;
        let mut off = 0u64;
        while off < self.len {
            let len = CHUNK.min(self.len - off);
            // SAFETY: the range lies inside our mapping and `vec` has one byte per page.
            let rc = unsafe {
                libc::mincore(
                    self.base.add(off as usize).cast(),
                    len as usize,
                    vec.as_mut_ptr(),
                )
            };
            if rc == 0 {
                total += vec[..(len / 4096) as usize]
                    .iter()
                    .filter(|b| **b & 1 != 0)
                    .count() as u64
                    * 4096;
            }
            off += len;
        }
        total
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        let rc = unsafe { libc::munmap(self.base.cast(), self.len as usize) };
        debug_assert_eq!(rc, 0, "munmap of node region failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_region_costs_nothing_until_written() {
        let r = Region::new(1 << 36).unwrap();
        assert!(r.resident_bytes() < (1 << 20));
        let p = r.ptr((1 << 36) - 4096, 4096).unwrap();
        // SAFETY: in bounds of the mapping.
        unsafe { p.write_bytes(7, 4096) };
        assert!(r.ptr((1 << 36) - 4095, 4096).is_none());
        assert!(r.ptr(u64::MAX, 2).is_none());
    }

    #[test]
    fn compare_and_swap_checks_alignment_and_value() {
        let r = Region::new(4096).unwrap();
        assert_eq!(r.compare_and_swap(8, 0, 5), Some(0));
        assert_eq!(r.compare_and_swap(8, 0, 6), Some(5));
        assert_eq!(r.compare_and_swap(8, 5, 6), Some(5));
        assert_eq!(r.compare_and_swap(8, 0, 0), Some(6));
        assert_eq!(r.compare_and_swap(4, 0, 1), None);
        assert_eq!(r.compare_and_swap(4096, 0, 1), None);
    }
}
