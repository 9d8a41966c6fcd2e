//! Batched unmapping: many scattered runs of the global range dropped in one system call.
//!
//! Victims of eviction and sampling are scattered pages, and a `madvise` per page costs a
//! system call and a TLB flush each (2.7 us a page on the development VM). Since Linux
//! 6.13 `process_madvise` accepts `MADV_DONTNEED` for the calling process, and since 6.16
//! it flushes the TLB once for the whole vector: 0.9 us a page in batches of 128 (measured
//! side by side, docs/performance.md). Older kernels refuse it; the batch then falls back
//! to one `madvise` per run, once and for all.

use super::unmap_range;
use crate::effects::{Effects, Run};
use crate::runtime::Core;
use crate::space::{PageNum, PAGE_BYTES};
use std::sync::atomic::{AtomicBool, Ordering};

/// Most runs per `process_madvise` call (the kernel's limit is IOV_MAX, 1024).
const RUNS_MAX: usize = 128;
/// `PIDFD_SELF` (Linux 6.14): the calling thread, and so its address space, without
/// opening a pidfd (which a forked child would inherit pointing at its parent). This
/// kernel's `process_madvise` takes the thread sentinel, not `PIDFD_SELF_THREAD_GROUP`.
const PIDFD_SELF: libc::c_int = -10000;

/// Whether the kernel refused `process_madvise(MADV_DONTNEED)` on ourselves.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Runs of pages waiting to be unmapped. The caller keeps the pages locked until
/// [`UnmapBatch::flush`] returns.
pub(crate) struct UnmapBatch {
    runs: Vec<Run>,
}

impl UnmapBatch {
    /// An empty batch; allocates its vector once.
    pub(crate) fn new() -> UnmapBatch {
        UnmapBatch {
            runs: Vec::with_capacity(RUNS_MAX),
        }
    }

    /// Adds `n` pages from `first`, merged with the previous run when adjacent; flushes
    /// first if the batch is full.
    pub(crate) fn push<E: Effects>(&mut self, core: &Core<E>, first: PageNum, n: usize) {
        self.push_range(&core.fx, core.layout.addr_of(first), n * PAGE_BYTES);
    }

    fn push_range<E: Effects>(&mut self, fx: &E, base: usize, len: usize) {
        if let Some(last) = self.runs.last_mut() {
            if last.base + last.len == base {
                last.len += len;
                return;
            }
        }
        if self.runs.len() == RUNS_MAX {
            self.flush(fx);
        }
        self.runs.push(Run { base, len });
    }

    /// Unmaps every run added so far.
    pub(crate) fn flush<E: Effects>(&mut self, fx: &E) {
        if self.runs.is_empty() {
            return;
        }
        fx.unmap(&self.runs);
        self.runs.clear();
    }
}

/// The real unmapping of a batch of runs: one `process_madvise` where the kernel takes
/// it, else (or for what it left) one `madvise` per run.
pub(crate) fn unmap_runs(runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    let total: usize = runs.iter().map(|r| r.len).sum();
    let mut done = 0;
    if !UNSUPPORTED.load(Ordering::Relaxed) {
        // SAFETY: `Run` has iovec's layout; the runs lie in the global range, whose
        // pages are private anonymous memory locked by the caller.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                PIDFD_SELF,
                runs.as_ptr(),
                runs.len(),
                libc::MADV_DONTNEED,
                0,
            )
        };
        if rc < 0 {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        } else {
            done = rc as usize;
        }
    }
    if done < total {
        // Refused, or stopped short: finish run by run from where it stopped.
        unmap_each_after(runs, done);
    }
}

/// One `madvise` per run for everything after the first `skip` bytes of the batch.
fn unmap_each_after(runs: &[Run], mut skip: usize) {
    for r in runs {
        if skip >= r.len {
            skip -= r.len;
            continue;
        }
        unmap_range(r.base + skip, r.len - skip);
        skip = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real effects' unmapping, without a userfaultfd.
    struct Real;
    const REAL: Real = Real;
    impl Effects for Real {
        unsafe fn install(
            &self,
            _: usize,
            _: *const u8,
            _: usize,
            _: bool,
            _: bool,
        ) -> Result<crate::fault::uffd::Installed, crate::fault::uffd::UffdError> {
            unreachable!()
        }
        fn write_protect(
            &self,
            _: usize,
            _: usize,
            _: bool,
            _: bool,
        ) -> Result<(), crate::fault::uffd::UffdError> {
            unreachable!()
        }
        fn wake(&self, _: usize, _: usize) -> Result<(), crate::fault::uffd::UffdError> {
            unreachable!()
        }
        unsafe fn read_page(&self, _: usize, _: &mut [u8]) {
            unreachable!()
        }
        fn unmap(&self, runs: &[Run]) {
            unmap_runs(runs);
        }
        fn is_mapped(&self, _: usize) -> bool {
            unreachable!()
        }
    }

    /// A private anonymous mapping of `pages` pages, each holding 1 in its first byte.
    fn filled(pages: usize) -> usize {
        // SAFETY: a fresh private anonymous mapping; tests unmap it at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        for i in 0..pages {
            // SAFETY: inside the mapping.
            unsafe { (base as *mut u8).add(i * PAGE_BYTES).write(1) };
        }
        base as usize
    }

    fn first_byte(base: usize, page: usize) -> u8 {
        // SAFETY: callers pass pages of a live mapping from `filled`.
        unsafe { ((base + page * PAGE_BYTES) as *const u8).read() }
    }

    fn unmap_all(base: usize, pages: usize) {
        // SAFETY: a mapping made by `filled`.
        unsafe { libc::munmap(base as *mut libc::c_void, pages * PAGE_BYTES) };
    }

    /// Scattered single pages and a merged run are all dropped, through whichever path
    /// this kernel offers, and the pages in between keep their data.
    #[test]
    fn a_flush_drops_exactly_the_pushed_pages() {
        let pages = 600;
        let base = filled(pages);
        let mut batch = UnmapBatch::new();
        // Every third page: more runs than one call takes, so the batch flushes midway.
        for i in (0..pages).step_by(3) {
            batch.push_range(&REAL, base + i * PAGE_BYTES, PAGE_BYTES);
        }
        // And two adjacent pages, merged into one run.
        batch.push_range(&REAL, base + 301 * PAGE_BYTES, PAGE_BYTES);
        batch.push_range(&REAL, base + 302 * PAGE_BYTES, PAGE_BYTES);
        batch.flush(&REAL);
        for i in 0..pages {
            let gone = i % 3 == 0 || i == 301 || i == 302;
            assert_eq!(first_byte(base, i), u8::from(!gone), "page {i}");
        }
        eprintln!(
            "process_madvise(MADV_DONTNEED) on self: {}",
            if UNSUPPORTED.load(Ordering::Relaxed) {
                "refused, fell back to madvise"
            } else {
                "used"
            }
        );
        unmap_all(base, pages);
    }

    /// The fallback (an old kernel, or a call that stopped short) resumes exactly where
    /// the kernel stopped, inside a run included.
    #[test]
    fn the_fallback_resumes_where_the_kernel_stopped() {
        let base = filled(10);
        let mut batch = UnmapBatch::new();
        batch.push_range(&REAL, base, 3 * PAGE_BYTES); // pages 0-2
        batch.push_range(&REAL, base + 5 * PAGE_BYTES, 2 * PAGE_BYTES); // pages 5-6
        batch.push_range(&REAL, base + 8 * PAGE_BYTES, PAGE_BYTES); // page 8
        unmap_each_after(&batch.runs, 2 * PAGE_BYTES); // as if pages 0-1 were done
        let left: Vec<u8> = (0..10).map(|i| first_byte(base, i)).collect();
        assert_eq!(left, [1, 1, 0, 1, 1, 0, 0, 1, 0, 1]);
        unmap_all(base, 10);
    }
}
