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
}
