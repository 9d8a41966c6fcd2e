//! verbs-probe: a host-built Rust binary run inside the soft-roce guests.
//!
//! It proves the path later project binaries take: built on the host, shared
//! over 9p, dynamically linked against the guest's libibverbs, which loads the
//! rxe provider. It opens the device, allocates a PD and registers a 4 KiB MR.
//! Built by soft-roce-tests/run with plain rustc (no crates, no -dev package).
use std::ffi::{c_char, c_int, c_void, CStr};
use std::process::ExitCode;

#[repr(C)]
struct IbvMr {
    context: *mut c_void,
    pd: *mut c_void,
    addr: *mut c_void,
    length: usize,
    handle: u32,
    lkey: u32,
    rkey: u32,
}

const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
const IBV_ACCESS_REMOTE_WRITE: c_int = 2;
const IBV_ACCESS_REMOTE_READ: c_int = 4;

extern "C" {
    fn ibv_get_device_list(num: *mut c_int) -> *mut *mut c_void;
    fn ibv_free_device_list(list: *mut *mut c_void);
    fn ibv_get_device_name(dev: *mut c_void) -> *const c_char;
    fn ibv_open_device(dev: *mut c_void) -> *mut c_void;
    fn ibv_close_device(ctx: *mut c_void) -> c_int;
    fn ibv_alloc_pd(ctx: *mut c_void) -> *mut c_void;
    fn ibv_dealloc_pd(pd: *mut c_void) -> c_int;
    fn ibv_reg_mr(pd: *mut c_void, addr: *mut c_void, len: usize, access: c_int) -> *mut IbvMr;
    fn ibv_dereg_mr(mr: *mut IbvMr) -> c_int;
}

fn main() -> ExitCode {
    let want = std::env::args().nth(1).unwrap_or_else(|| "rxe0".to_string());
    let mut n: c_int = 0;
    // SAFETY: plain libibverbs calls; every pointer is checked before use and
    // released in reverse order; `page` outlives the MR registered on it.
    unsafe {
        let list = ibv_get_device_list(&mut n);
        if list.is_null() {
            eprintln!("ibv_get_device_list failed: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
        let mut dev = std::ptr::null_mut();
        for i in 0..n as usize {
            let d = *list.add(i);
            let name = CStr::from_ptr(ibv_get_device_name(d)).to_string_lossy();
            println!("device {i}: {name}");
            if name == want {
                dev = d;
            }
        }
        if dev.is_null() {
            eprintln!("device {want} not found");
            ibv_free_device_list(list);
            return ExitCode::FAILURE;
        }
        let ctx = ibv_open_device(dev);
        ibv_free_device_list(list);
        if ctx.is_null() {
            eprintln!("ibv_open_device({want}) failed");
            return ExitCode::FAILURE;
        }
        let pd = ibv_alloc_pd(ctx);
        if pd.is_null() {
            eprintln!("ibv_alloc_pd failed");
            ibv_close_device(ctx);
            return ExitCode::FAILURE;
        }
        let mut page = vec![0u8; 4096];
        let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
        let mr = ibv_reg_mr(pd, page.as_mut_ptr().cast(), page.len(), access);
        if mr.is_null() {
            eprintln!("ibv_reg_mr failed: {}", std::io::Error::last_os_error());
            ibv_dealloc_pd(pd);
            ibv_close_device(ctx);
            return ExitCode::FAILURE;
        }
        println!("{want}: registered 4096 B MR lkey={:#x} rkey={:#x}", (*mr).lkey, (*mr).rkey);
        let ok = ibv_dereg_mr(mr) == 0 && ibv_dealloc_pd(pd) == 0 && ibv_close_device(ctx) == 0;
        if ok {
            ExitCode::SUCCESS
        } else {
            eprintln!("teardown failed");
            ExitCode::FAILURE
        }
    }
}
