//! The cache's effects on the process's memory, behind one small interface.
//!
//! The cache decides (page states, budget, victims, staging, discard, prefetch
//! bookkeeping) and then acts on the process's memory through [`Effects`]: map a page,
//! write-protect it, wake the threads waiting on it, copy it out, drop it. The node side
//! of every action is already behind [`crate::transport::Session`]. Two implementations:
//!
//! - [`Userfaultfd`]: the real one (ioctls on the descriptor, raw copies from the global
//!   range, `process_madvise`/`madvise` to drop pages). The runtime instantiates the cache
//!   code with it only, so every call is static and inlined: no cost on the fault path.
//! - [`memory::MemoryEffects`]: the process's memory as a map of page address to bytes
//!   and protection, for the seeded simulator ([`crate::sim`]) and unit tests that need
//!   no userfaultfd; [`memory::MemoryNodes`] is its node store.

pub mod memory;

use crate::fault::uffd::{Installed, UffdError, Userfaultfd};
use crate::space::PAGE_BYTES;

/// A run of the global range to drop: laid out as `struct iovec`, so that a batch of them
/// is handed to `process_madvise` as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First byte (page-aligned).
    pub base: usize,
    /// Length in bytes (a multiple of the page size).
    pub len: usize,
}

/// What the cache does to the process's memory. The contract, for every implementation:
///
/// - Addresses are page-aligned and inside the registered global range; lengths are
///   multiples of [`PAGE_BYTES`].
/// - The caller holds the lock of every page it names (see
///   [`crate::cache::PageTable::try_lock`]), so no two calls act on one page at once.
/// - A page is *mapped* from a successful [`Effects::install`] until an [`Effects::unmap`]
///   that covers it; a mapped page is writable by the program unless write-protected.
/// - Errors are the kernel's, as [`UffdError`]; EAGAIN means "the address space is
///   changing, retry".
pub trait Effects: Send + Sync + 'static {
    /// Maps a copy of `len` bytes at `src` at `dst`, write-protected if `write_protect`,
    /// and wakes the threads waiting on it unless `dontwake`. Stops at the first page
    /// already mapped and answers [`Installed::AlreadyPresent`] (pages before it are
    /// mapped), as `UFFDIO_COPY` does with EEXIST.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes for the duration of the call.
    unsafe fn install(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        write_protect: bool,
        dontwake: bool,
    ) -> Result<Installed, UffdError>;

    /// Sets (`protect`) or clears write protection on mapped pages; clearing wakes the
    /// waiting threads unless `dontwake`.
    fn write_protect(
        &self,
        start: usize,
        len: usize,
        protect: bool,
        dontwake: bool,
    ) -> Result<(), UffdError>;

    /// Wakes threads waiting on faults in the range; they retry the access.
    fn wake(&self, start: usize, len: usize) -> Result<(), UffdError>;

    /// Copies the mapped page at `addr` into `dst` (one page).
    ///
    /// # Safety
    /// The page is mapped and locked by the caller, and nobody can change it during the
    /// copy: it is write-protected, or no program thread may write it (the simulator).
    unsafe fn read_page(&self, addr: usize, dst: &mut [u8]);

    /// Drops every page of `runs` (their contents are lost; the next access faults as
    /// missing). Dropping a page that is not mapped does nothing.
    fn unmap(&self, runs: &[Run]);

    /// Whether the global range's pages are this process's own memory, so that a mapped
    /// page may be read in place at its address (no copy) while nobody can change it.
    /// The simulator keeps its pages elsewhere and answers false: callers copy through
    /// [`Effects::read_page`] then.
    fn reads_in_place(&self) -> bool {
        false
    }

    /// Moves the pages of `[src, src+len)` to `[dst, dst+len)` without copying them, one
    /// end being the global range and the other the spare pages
    /// ([`crate::cache::spares`]), and wakes nobody; returns how many bytes moved (the
    /// pages after those stay where they were). A moved page arrives writable. The
    /// default moves nothing: the caller then takes its usual path.
    ///
    /// # Safety
    /// The caller owns the pages leaving `src` (locked, or spare), and nothing is mapped
    /// at `dst`.
    unsafe fn move_pages(&self, _dst: usize, _src: usize, _len: usize) -> usize {
        0
    }

    /// Whether the page at `addr` is in the process's memory (mapped, or swapped out).
    /// For a rare check (a thread that keeps faulting on a page its state calls mapped):
    /// it may cost a system call. When it cannot tell, it answers true.
    fn is_mapped(&self, addr: usize) -> bool;
}

impl Effects for Userfaultfd {
    #[inline]
    unsafe fn install(
        &self,
        dst: usize,
        src: *const u8,
        len: usize,
        write_protect: bool,
        dontwake: bool,
    ) -> Result<Installed, UffdError> {
        // SAFETY: the caller guarantees `src` valid for `len` bytes.
        unsafe { self.copy(dst, src, len, write_protect, dontwake) }
    }

    #[inline]
    fn write_protect(
        &self,
        start: usize,
        len: usize,
        protect: bool,
        dontwake: bool,
    ) -> Result<(), UffdError> {
        Userfaultfd::write_protect(self, start, len, protect, dontwake)
    }

    #[inline]
    fn wake(&self, start: usize, len: usize) -> Result<(), UffdError> {
        Userfaultfd::wake(self, start, len)
    }

    #[inline]
    unsafe fn read_page(&self, addr: usize, dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), PAGE_BYTES);
        // SAFETY: the caller guarantees the page is mapped and stable during the copy;
        // `dst` is a full page we borrow mutably.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), PAGE_BYTES) };
    }

    #[inline]
    fn unmap(&self, runs: &[Run]) {
        crate::cache::unmap_runs(runs);
    }

    fn reads_in_place(&self) -> bool {
        true
    }

    #[inline]
    unsafe fn move_pages(&self, dst: usize, src: usize, len: usize) -> usize {
        // SAFETY: the caller owns the pages leaving `src`.
        unsafe { Userfaultfd::move_pages(self, dst, src, len) }
    }

    fn is_mapped(&self, addr: usize) -> bool {
        pagemap_present(addr).unwrap_or(true)
    }
}

/// Whether `/proc/self/pagemap` shows the page at `addr` present or swapped (bits 63 and
/// 62 of its entry; readable without privileges). `None` if it cannot be read.
fn pagemap_present(addr: usize) -> Option<bool> {
    // SAFETY: a NUL-terminated literal path; the descriptor is checked and closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut entry = 0u64;
    let offset = (addr / PAGE_BYTES * 8) as libc::off_t;
    // SAFETY: reads 8 bytes into a local u64 from the descriptor we opened.
    let n = unsafe { libc::pread(fd, (&mut entry as *mut u64).cast(), 8, offset) };
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(fd) };
    (n == 8).then_some(entry & (3 << 62) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_tells_mapped_pages_from_dropped_ones() {
        // SAFETY: a fresh private anonymous page, unmapped at the end.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as usize;
        assert_eq!(pagemap_present(addr), Some(false), "never touched");
        // SAFETY: inside the mapping.
        unsafe { (p as *mut u8).write(1) };
        assert_eq!(pagemap_present(addr), Some(true), "written");
        // SAFETY: dropping the page of our own mapping.
        unsafe { libc::madvise(p, PAGE_BYTES, libc::MADV_DONTNEED) };
        assert_eq!(pagemap_present(addr), Some(false), "dropped");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, PAGE_BYTES) };
    }
}
