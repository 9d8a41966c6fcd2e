//! The exported `malloc` family. A Rust cdylib does not re-export mimalloc's C symbols, so
//! each is defined here and routed (see [`crate::route`]). Failures follow libc: NULL and
//! `errno = ENOMEM` (or `EINVAL` for a bad alignment), never an abort.

use crate::heap;
use crate::route::{global_heap_serves, owns};
use libc::{c_int, c_void, size_t};

extern "C" {
    // glibc's own allocator under its internal names: what the program would have used.
    fn __libc_malloc(size: size_t) -> *mut c_void;
    fn __libc_calloc(n: size_t, size: size_t) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: size_t) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: size_t, size: size_t) -> *mut c_void;
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn enomem_if_null(p: *mut c_void) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

fn valid_alignment(align: size_t) -> bool {
    align.is_power_of_two()
}

/// The usable size of a libc block, through glibc's `malloc_usable_size` (which this
/// library shadows, so it is looked up past us).
fn libc_usable_size(p: *mut c_void) -> size_t {
    type UsableSize = unsafe extern "C" fn(*mut c_void) -> size_t;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut f = NEXT.load(std::sync::atomic::Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds glibc's definition.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) } as usize;
        if f == 0 {
            return 0;
        }
        NEXT.store(f, std::sync::atomic::Ordering::Relaxed);
    }
    // SAFETY: `f` is glibc's malloc_usable_size, whose signature is `UsableSize`.
    unsafe { std::mem::transmute::<usize, UsableSize>(f)(p) }
}

/// # Safety
/// C `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    if global_heap_serves() {
        enomem_if_null(heap::malloc(size))
    } else {
        // SAFETY: libc's malloc has no preconditions.
        unsafe { __libc_malloc(size) }
    }
}

/// # Safety
/// C `free`: `p` is NULL or a live block from this allocator or libc's.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    if owns(p as usize) {
        heap::free(p)
    } else {
        // SAFETY: not ours, so libc's (the caller guarantees it is a live block).
        unsafe { __libc_free(p) }
    }
}

/// # Safety
/// C `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    if global_heap_serves() {
        enomem_if_null(heap::calloc(n, size))
    } else {
        // SAFETY: libc's calloc checks the product for overflow.
        unsafe { __libc_calloc(n, size) }
    }
}

/// # Safety
/// C `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if p.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { malloc(size) };
    }
    if owns(p as usize) {
        return enomem_if_null(heap::realloc(p, size));
    }
    if !global_heap_serves() {
        // SAFETY: a libc block resized by libc.
        return unsafe { __libc_realloc(p, size) };
    }
    // A block from before start-up being resized now: move it to the global heap, which is
    // where the program's memory is meant to live.
    let old = libc_usable_size(p);
    if old == 0 {
        // SAFETY: cannot size it; let libc resize its own block.
        return unsafe { __libc_realloc(p, size) };
    }
    let q = heap::malloc(size);
    if q.is_null() {
        return enomem_if_null(q);
    }
    // SAFETY: `p` holds `old` usable bytes, `q` at least `size`; distinct blocks.
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old.min(size));
        __libc_free(p);
    }
    q
}

/// # Safety
/// C `reallocarray`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded with the checked product.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

fn aligned(align: size_t, size: size_t) -> *mut c_void {
    if global_heap_serves() {
        enomem_if_null(heap::aligned(size, align))
    } else {
        // SAFETY: `align` is a power of two (checked by every caller).
        unsafe { __libc_memalign(align, size) }
    }
}

/// # Safety
/// C `posix_memalign`: `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !valid_alignment(align) || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable pointer.
    unsafe { *out = p };
    0
}

/// # Safety
/// C `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !valid_alignment(align) {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    aligned(align, size)
}

/// # Safety
/// C `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    if !valid_alignment(align) {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    aligned(align, size)
}

/// # Safety
/// C `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    aligned(page_size(), size)
}

/// # Safety
/// C `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(rounded) => aligned(page, rounded),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// C `malloc_usable_size`: `p` is NULL or a live block.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if p.is_null() {
        0
    } else if owns(p as usize) {
        heap::usable_size(p)
    } else {
        libc_usable_size(p)
    }
}

fn page_size() -> size_t {
    dsm_runtime::space::PAGE_BYTES
}
