//! Restarting from an image: [`exec_restarter`] replaces the calling process by the
//! restarter, which maps the image back and calls the restored program's hook; the hook
//! (dsm-preload's) starts a new runtime and then calls [`resume_threads`], which brings
//! every saved thread back from its signal frame.

use super::freeze::{gettid, COUNT, MAIN_TID, SLOTS, TID_OFFSET};
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::Ordering;

/// The restarter program, built by `build.rs` from `restarter.c`.
static RESTARTER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dsm-restarter"));

/// Replaces the calling process by the program saved in `image`, which starts a new
/// runtime from the `DSM_*` variables in `job_env` (a file of `KEY=VALUE` lines) and goes
/// on where it was checkpointed. Returns only on failure (before the exec); once the
/// restarter runs, a failure is its message on stderr and exit status 1.
pub fn exec_restarter(image: &Path, job_env: &Path) -> io::Error {
    match exec(image, job_env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn exec(image: &Path, job_env: &Path) -> io::Result<std::convert::Infallible> {
    let image = std::fs::canonicalize(image)?;
    let job_env = std::fs::canonicalize(job_env)?;
    // SAFETY: creates a descriptor owned by this function until the exec.
    let fd = unsafe { libc::memfd_create(c"dsm-restarter".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is ours.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    io::Write::write_all(&mut &file, RESTARTER)?;
    super::disable_aslr()?;
    let args = [
        CString::new("dsm-restarter").expect("no NUL"),
        CString::new(image.as_os_str().as_bytes())?,
        CString::new(job_env.as_os_str().as_bytes())?,
    ];
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: argv and envp are NUL-terminated arrays of C strings that outlive the call.
    unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

/// Reads a job environment file: `KEY=VALUE` lines (blank lines and `#` comments
/// skipped).
pub fn read_job_env(path: &Path) -> io::Result<Vec<(OsString, OsString)>> {
    let bytes = std::fs::read(path)?;
    let mut vars = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let eq = line.iter().position(|b| *b == b'=').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a line is not KEY=VALUE: {}",
                    path.display(),
                    String::from_utf8_lossy(line)
                ),
            )
        })?;
        vars.push((
            OsString::from_vec(line[..eq].to_vec()),
            OsString::from_vec(line[eq + 1..].to_vec()),
        ));
    }
    Ok(vars)
}

// Brings a thread back: `dsm_ckpt_clone(flags, stack, ptid, ctid, tls, frame)` starts a
// thread on `stack` that calls `dsm_ckpt_thread(frame)`; `dsm_ckpt_sigreturn(frame)`
// returns from the signal whose `ucontext` is at `frame`, as the interrupted thread
// would have: the kernel puts back its registers, FP state and signal mask.
std::arch::global_asm!(
    ".globl dsm_ckpt_clone",
    "dsm_ckpt_clone:",
    "mov r10, rcx",
    "mov eax, 56", // clone(flags, stack, ptid, ctid, tls); r9 (frame) survives it
    "syscall",
    "test rax, rax",
    "jnz 1f",
    "mov rdi, r9",
    "call dsm_ckpt_thread",
    "ud2",
    "1:",
    "ret",
    ".globl dsm_ckpt_sigreturn",
    "dsm_ckpt_sigreturn:",
    "mov rsp, rdi",
    "mov eax, 15", // rt_sigreturn
    "syscall",
    "ud2",
);

extern "C" {
    fn dsm_ckpt_clone(flags: u64, stack: u64, ptid: u64, ctid: u64, tls: u64, frame: u64) -> i64;
    fn dsm_ckpt_sigreturn(frame: u64) -> !;
    static __rseq_offset: isize;
    static __rseq_size: libc::c_uint;
}

/// A new thread's first code: registers glibc's rseq area, then resumes.
#[no_mangle]
extern "C" fn dsm_ckpt_thread(frame: u64) -> ! {
    register_rseq();
    // SAFETY: `frame` is the signal frame this thread was stopped in, restored intact.
    unsafe { dsm_ckpt_sigreturn(frame) }
}

/// Registers this thread's rseq area with the kernel, as glibc does at thread start
/// (`sched_getcpu` reads it). Best effort: without it glibc falls back to system calls.
fn register_rseq() {
    // SAFETY: glibc's exported constants, read-only.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return;
    }
    let mut tp = 0u64;
    // SAFETY: ARCH_GET_FS writes 8 bytes to `tp`.
    unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut tp as *mut u64) };
    let area = (tp as i64 + offset as i64) as u64;
    // SAFETY: the area is glibc's rseq area of this thread, in its restored TCB.
    unsafe { libc::syscall(libc::SYS_rseq, area, size.max(32), 0, 0x5305_3053u32) };
}

/// Recreates every saved thread but the main one, each on its old TLS with its glibc tid
/// updated, then resumes the calling (main) thread. Called by the restart hook once the
/// new runtime serves the range.
pub fn resume_threads() -> ! {
    let offset = TID_OFFSET.load(Ordering::Acquire) as u64;
    let main_tid = MAIN_TID.load(Ordering::Acquire);
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
    let mut main_frame = 0;
    let mut main_tid_field = 0;
    for s in &SLOTS[..COUNT.load(Ordering::Acquire)] {
        let tid = s.tid.load(Ordering::Relaxed);
        let frame = s.frame.load(Ordering::Acquire);
        if tid <= 0 || frame == 0 {
            continue;
        }
        let tid_field = s.pthread.load(Ordering::Relaxed) + offset;
        if tid == main_tid {
            main_frame = frame;
            main_tid_field = tid_field;
            continue;
        }
        // The handler's frames below the signal frame are dead: the new thread starts
        // there, well below the frame.
        let stack = (frame - 64 * 1024) & !15;
        let fs = s.fs_base.load(Ordering::Relaxed);
        // SAFETY: a new thread on the saved thread's own stack and TLS, which nothing else
        // uses; it only registers rseq and returns from its signal frame.
        let rc = unsafe { dsm_ckpt_clone(flags, stack, tid_field, tid_field, fs, frame) };
        if rc < 0 {
            eprintln!("dsm: restart: cannot recreate thread {tid}: error {}", -rc);
            // SAFETY: ends the process; it cannot go on without one of its threads.
            unsafe { libc::syscall(libc::SYS_exit_group, crate::runtime::EXIT_RUNTIME_FAILURE) };
        }
    }
    // SAFETY: the main thread's glibc tid word, in its restored `struct pthread`.
    unsafe { std::ptr::write_volatile(main_tid_field as *mut i32, gettid()) };
    register_rseq();
    // SAFETY: the main thread's signal frame, restored intact.
    unsafe { dsm_ckpt_sigreturn(main_frame) }
}
