//! The bounded local cache: page states, the budget, the staging tier, and eviction with
//! write-back.

pub mod budget;
pub mod compressed;
mod discard;
pub mod evict;
pub mod page_table;
pub mod protect;
pub mod region_runs;
pub mod spares;
pub mod staging;
mod unmap;

pub use budget::CacheBudget;
pub use compressed::Compressed;
pub use evict::Evictor;
pub use page_table::PageTable;
pub use spares::Spares;
pub use staging::Staging;

/// Unmaps `n` pages of the global range from `first` (their contents are dropped; the
/// next access faults as missing). The caller holds every one of those pages' locks.
pub(crate) fn unmap_pages<E: crate::effects::Effects>(
    core: &crate::runtime::Core<E>,
    first: crate::space::PageNum,
    n: usize,
) {
    core.fx.unmap(&[crate::effects::Run {
        base: core.layout.addr_of(first),
        len: n * crate::space::PAGE_BYTES,
    }]);
}

/// Unmaps whole each 2 MiB region of `pages` (in page order) that no longer holds a
/// mapped or locked page, so that the kernel frees its page table: it frees one only when
/// its whole range is unmapped at once, and eviction unmaps pages one by one, so sparse
/// access would otherwise leave a page table behind per touched 2 MiB
/// ([`PageTable::try_zap`]). Costs one failed compare-and-swap per region that still
/// holds pages.
pub(crate) fn zap_empty_regions<E: crate::effects::Effects>(
    core: &crate::runtime::Core<E>,
    pages: impl Iterator<Item = crate::space::PageNum>,
) {
    let mut last = u64::MAX;
    for page in pages {
        let region = page.0 / page_table::REGION_PAGES;
        if region == last {
            continue;
        }
        last = region;
        if let Some((first, n)) = core.table.try_zap(page) {
            unmap_pages(core, first, n as usize);
            core.table.end_zap(page);
        }
    }
}

/// The raw system call: in a program with the preload, a `madvise` symbol call from a
/// program thread (a discard runs on one) would be routed back into the runtime.
pub(crate) fn unmap_range(addr: usize, len: usize) {
    // SAFETY: callers pass runs of the global range, whose pages are private anonymous
    // memory locked by them; MADV_DONTNEED only drops those pages.
    let rc = unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0, "madvise(DONTNEED) on the global range failed");
}

pub(crate) use unmap::{unmap_runs, UnmapBatch};

/// A fresh private anonymous mapping of `len` bytes, backed only where touched
/// (`MAP_NORESERVE`), at a place the kernel picks: the cache's own buffers (staging,
/// spare pages, region runs). Its owner unmaps it.
pub(crate) fn map_anonymous(len: usize) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: a new mapping at a kernel-chosen address touches no existing memory; the
    // result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p)
}

/// Empties a vector and gives its allocation back with another lifetime parameter.
///
/// Batches of transport operations borrow buffers for one call only; keeping one vector
/// per thread and recycling it this way keeps the fault path free of allocation. (The
/// standard library reuses the allocation for an in-place `collect` of an identically
/// laid-out type; were it ever not to, this would merely allocate.)
pub(crate) fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("vector was cleared"))
        .collect()
}
