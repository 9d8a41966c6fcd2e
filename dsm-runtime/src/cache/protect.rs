//! Pages the program made unreadable with `mprotect` (guard pages, `PROT_NONE` windows).
//!
//! The kernel enforces every protection the program sets on the global range: a write to
//! a read-only or executable page, or any access to a `PROT_NONE` one, is a `SIGSEGV`
//! before userfaultfd sees it, exactly as without the runtime. The runtime itself must
//! still copy a cached page out when it evicts or parks it, and a plain copy of a
//! `PROT_NONE` page would fault in the runtime's own thread. So the ranges made
//! unreadable are recorded here, and pages in them are copied through `/proc/self/mem`,
//! which may read any page of this process. Without such ranges (the usual case) a copy
//! costs one relaxed load more than a `memcpy`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Unreadable ranges of the global range, and how to read them anyway.
#[derive(Debug, Default)]
pub struct Protected {
    any: AtomicBool,
    /// Disjoint `[start, end)` ranges.
    ranges: Mutex<Vec<(usize, usize)>>,
    mem: OnceLock<OwnedFd>,
}

/// Removes `[a, b)` from every range of `ranges`, splitting those that straddle it.
fn subtract(ranges: &mut Vec<(usize, usize)>, a: usize, b: usize) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e <= a || s >= b {
            out.push((s, e));
            continue;
        }
        if s < a {
            out.push((s, a));
        }
        if e > b {
            out.push((b, e));
        }
    }
    *ranges = out;
}

impl Protected {
    /// Records that `[start, start + len)` is now readable or not. Allocates: call it as
    /// internal (never from the fault path).
    pub fn set(&self, start: usize, len: usize, readable: bool) {
        let end = start.saturating_add(len);
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        subtract(&mut ranges, start, end);
        if !readable && end > start {
            ranges.push((start, end));
            self.mem.get_or_init(open_self_mem);
        }
        self.any.store(!ranges.is_empty(), Ordering::Release);
    }

    /// Whether the program made the page at `addr` unreadable (a plain copy would fault).
    pub fn unreadable(&self, addr: usize) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// Copies the cached page at `addr` into `dst` (one page) through `/proc/self/mem` if
    /// the program made it unreadable; returns whether it did (if not, the caller copies
    /// it the plain way).
    ///
    /// # Safety
    /// `addr` is a page of the global range that the caller holds locked and that is
    /// mapped (so its bytes are there and stable), and `dst` is a page's worth of bytes.
    pub unsafe fn copy_if_unreadable(&self, addr: usize, dst: &mut [u8]) -> bool {
        if !self.unreadable(addr) {
            return false;
        }
        let fd = self.mem.get_or_init(open_self_mem).as_raw_fd();
        // SAFETY: reads into `dst`, within its length; /proc/self/mem reads our own pages
        // whatever their protection.
        let n = unsafe { libc::pread(fd, dst.as_mut_ptr().cast(), dst.len(), addr as libc::off_t) };
        assert_eq!(
            n,
            dst.len() as isize,
            "reading a protected page at {addr:#x} through /proc/self/mem: {}",
            std::io::Error::last_os_error()
        );
        true
    }
}

fn open_self_mem() -> OwnedFd {
    // SAFETY: a NUL-terminated path and flags; the result is checked.
    let fd = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "opening /proc/self/mem: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_and_merge_as_protections_change() {
        let mut r = vec![(0, 100)];
        subtract(&mut r, 20, 30);
        assert_eq!(r, vec![(0, 20), (30, 100)]);
        subtract(&mut r, 0, 25);
        assert_eq!(r, vec![(30, 100)]);
        subtract(&mut r, 90, 200);
        assert_eq!(r, vec![(30, 90)]);
        let p = Protected::default();
        p.set(4096, 8192, false);
        assert!(p.unreadable(4096 + 8191) && !p.unreadable(4096 + 8192));
        p.set(4096, 4096, true);
        assert!(!p.unreadable(4096) && p.unreadable(8192));
        p.set(0, 1 << 20, true);
        assert!(!p.any.load(Ordering::Acquire));
    }

    #[test]
    fn a_page_with_no_access_is_still_copied() {
        // SAFETY: a fresh private mapping of one page, ours alone.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as usize;
        // SAFETY: the page is mapped read-write.
        unsafe { (page as *mut u8).write_bytes(0x5A, 4096) };
        let p = Protected::default();
        p.set(page, 4096, false);
        // SAFETY: our own page.
        let rc = unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_NONE) };
        assert_eq!(rc, 0);
        let mut dst = vec![0u8; 4096];
        // SAFETY: mapped, ours, and `dst` is a page.
        assert!(unsafe { p.copy_if_unreadable(page, &mut dst) });
        assert!(dst.iter().all(|&b| b == 0x5A));
        // SAFETY: unmapping our own page.
        unsafe { libc::munmap(page as *mut _, 4096) };
    }
}
