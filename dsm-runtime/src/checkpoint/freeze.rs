//! Stopping the program's threads for a checkpoint, and letting them go again.
//!
//! Each program thread (every thread of the process that is not one of the runtime's
//! own, see [`register_internal`]) gets [`stop_signal`]. Its handler notes where the
//! kernel put the signal frame (the `ucontext` argument: the thread's registers, FP
//! state and signal mask at the moment it was interrupted), the thread's `fs_base`, and
//! then waits on a futex until released. A restored thread resumes by `rt_sigreturn`
//! from that very frame (see `restart::resume_threads`): the kernel then puts back its
//! exact registers, so no setjmp-style context is needed.
//!
//! A program thread that is running runtime code ([`crate::runtime::current_thread_is_internal`]
//! true, e.g. a discard called from `madvise`) holds runtime locks; its stop is deferred
//! until it leaves that code ([`stop_if_deferred`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most program threads a checkpoint can hold.
pub(crate) const THREADS_MAX: usize = 256;
/// Most runtime threads alive at once.
const INTERNAL_MAX: usize = 256;
/// Bytes of glibc's `struct pthread` searched for the thread's tid.
const PTHREAD_SCAN_BYTES: usize = 2048;

/// One stopped (or to be stopped) program thread; lives in the image with the rest of
/// this library's data, which is how the restored process finds it.
pub(crate) struct Slot {
    pub(crate) tid: AtomicI32,
    /// Address of the signal frame's `ucontext` (0 until the thread stopped).
    pub(crate) frame: AtomicU64,
    pub(crate) fs_base: AtomicU64,
    /// `pthread_self()` of the thread (glibc's `struct pthread`).
    pub(crate) pthread: AtomicU64,
    /// Offsets (in 4-byte words) of `struct pthread` holding the tid, as a bit set.
    tid_words: [AtomicU64; PTHREAD_SCAN_BYTES / 4 / 64],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    tid: AtomicI32::new(0),
    frame: AtomicU64::new(0),
    fs_base: AtomicU64::new(0),
    pthread: AtomicU64::new(0),
    tid_words: [const { AtomicU64::new(0) }; PTHREAD_SCAN_BYTES / 4 / 64],
};

pub(crate) static SLOTS: [Slot; THREADS_MAX] = [EMPTY_SLOT; THREADS_MAX];
/// Slots in use.
pub(crate) static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The main thread's tid when the checkpoint was taken.
pub(crate) static MAIN_TID: AtomicI32 = AtomicI32::new(0);
/// Offset of the tid in glibc's `struct pthread`, found at the last checkpoint.
pub(crate) static TID_OFFSET: AtomicUsize = AtomicUsize::new(0);
/// Threads that reached the handler (a futex word).
static STOPPED: AtomicU32 = AtomicU32::new(0);
/// Bumped to release the stopped threads (a futex word).
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// The runtime's own threads, by tid (0: free).
static INTERNAL: [AtomicI32; INTERNAL_MAX] = [const { AtomicI32::new(0) }; INTERNAL_MAX];

thread_local! {
    /// A stop signal arrived while this thread ran runtime code.
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// The real-time signal that stops threads (below `SIGRTMAX`, which programs use most).
pub(crate) fn stop_signal() -> libc::c_int {
    libc::SIGRTMAX() - 2
}

pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Notes the calling thread as one of the runtime's own; it is never stopped. Returns
/// the registry slot, for [`forget_internal`] when the thread ends.
pub(crate) fn register_internal() -> Option<usize> {
    let tid = gettid();
    INTERNAL.iter().position(|t| {
        t.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Removes a thread noted by [`register_internal`].
pub(crate) fn forget_internal(slot: Option<usize>) {
    if let Some(s) = slot {
        INTERNAL[s].store(0, Ordering::Release);
    }
}

/// How many of the runtime's own threads are running now.
pub(crate) fn internal_count() -> usize {
    INTERNAL
        .iter()
        .filter(|t| t.load(Ordering::Acquire) != 0)
        .count()
}

/// Whether thread `tid` is one the runtime started (see [`register_internal`]).
pub(crate) fn is_internal(tid: i32) -> bool {
    INTERNAL.iter().any(|t| t.load(Ordering::Acquire) == tid)
}

/// Called when a program thread leaves runtime code: stops now if a stop came meanwhile.
pub(crate) fn stop_if_deferred() {
    if DEFERRED.with(|d| d.replace(false)) {
        // SAFETY: sends a signal to this very thread.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), stop_signal()) };
    }
}

fn fs_base() -> u64 {
    let mut base = 0u64;
    const ARCH_GET_FS: libc::c_long = 0x1003;
    // SAFETY: the kernel writes 8 bytes to `base`.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut base as *mut u64) };
    base
}

/// Records which words of the thread's `struct pthread` hold its tid.
fn note_tid_words(slot: &Slot, tid: i32) {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    slot.pthread.store(me as u64, Ordering::Relaxed);
    for w in 0..PTHREAD_SCAN_BYTES / 4 {
        // SAFETY: glibc's struct pthread is larger than PTHREAD_SCAN_BYTES and readable.
        let v = unsafe { std::ptr::read_volatile((me + w * 4) as *const i32) };
        if v == tid {
            slot.tid_words[w / 64].fetch_or(1 << (w % 64), Ordering::Relaxed);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: a futex wait on a word that lives as long as the process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wait_for(word: &AtomicU32, expected: u32, within: Duration) {
    let ts = libc::timespec {
        tv_sec: within.as_secs() as libc::time_t,
        tv_nsec: within.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a futex wait on a word that lives as long as the process; `ts` is ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: a futex wake on a word that lives as long as the process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// The stop signal's handler (async-signal-safe: atomics, syscalls, no allocation).
extern "C" fn on_stop(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    if crate::runtime::current_thread_is_internal() {
        DEFERRED.with(|d| d.set(true));
        return;
    }
    let tid = gettid();
    let n = COUNT.load(Ordering::Acquire);
    if let Some(slot) = SLOTS[..n]
        .iter()
        .find(|s| s.tid.load(Ordering::Relaxed) == tid)
    {
        slot.fs_base.store(fs_base(), Ordering::Relaxed);
        note_tid_words(slot, tid);
        let generation = RELEASE.load(Ordering::Acquire);
        slot.frame.store(uc as u64, Ordering::Release);
        STOPPED.fetch_add(1, Ordering::AcqRel);
        futex_wake(&STOPPED);
        while RELEASE.load(Ordering::Acquire) == generation {
            futex_wait(&RELEASE, generation);
        }
    }
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = errno };
}

/// The program's disposition of the stop signal, put back by [`Stopped::release`].
pub(crate) struct Stopped {
    previous: libc::sigaction,
    previous_raw: RawAction,
}

/// Installs the handler and stops every program thread, within `within`.
pub(crate) fn stop_program_threads(within: Duration) -> Result<Stopped, String> {
    let (previous, previous_raw) = install()?;
    let stopped = Stopped {
        previous,
        previous_raw,
    };
    COUNT.store(0, Ordering::Release);
    STOPPED.store(0, Ordering::Release);
    for s in &SLOTS {
        s.frame.store(0, Ordering::Relaxed);
        s.tid_words
            .iter()
            .for_each(|w| w.store(0, Ordering::Relaxed));
    }
    let deadline = Instant::now() + within;
    let all_stopped = || {
        // Threads may start while we signal the others: list again until none is new.
        while signal_new_threads()? > 0 {
            wait_stopped(deadline)?;
        }
        settle_tid_offset()
    };
    match all_stopped() {
        Ok(()) => Ok(stopped),
        Err(e) => {
            stopped.release();
            Err(e)
        }
    }
}

/// The kernel's record of one signal's disposition (`struct kernel_sigaction` on x86-64).
pub(crate) type RawAction = [u64; 4];

/// The kernel's disposition of `sig` (handler, flags, restorer, mask).
pub(crate) fn raw_action(sig: libc::c_int) -> RawAction {
    let mut raw = [0u64; 4];
    // SAFETY: a query (no new action); the kernel writes 32 bytes to `raw`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<RawAction>(),
            raw.as_mut_ptr(),
            8usize,
        )
    };
    raw
}

fn install() -> Result<(libc::sigaction, RawAction), String> {
    let raw = raw_action(stop_signal());
    // SAFETY: zeroed sigaction structs are valid; we fill the fields we use.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_stop as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is ours; blocking everything keeps the handler alone.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both structs are valid for the call.
    if unsafe { libc::sigaction(stop_signal(), &act, &mut old) } != 0 {
        return Err(format!(
            "installing the stop signal's handler: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((old, raw))
}

/// The process's threads, by tid.
pub(crate) fn list_threads() -> Result<Vec<i32>, String> {
    let dir = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("listing /proc/self/task: {e}"))?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Signals the program threads not signalled yet; returns how many.
fn signal_new_threads() -> Result<usize, String> {
    let mut new = 0;
    for tid in list_threads()? {
        let n = COUNT.load(Ordering::Acquire);
        if is_internal(tid)
            || SLOTS[..n]
                .iter()
                .any(|s| s.tid.load(Ordering::Relaxed) == tid)
        {
            continue;
        }
        if n == THREADS_MAX {
            return Err(format!(
                "the program has more than {THREADS_MAX} threads: the checkpointer cannot save it"
            ));
        }
        SLOTS[n].tid.store(tid, Ordering::Relaxed);
        COUNT.store(n + 1, Ordering::Release);
        // SAFETY: signals one thread of this process.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, stop_signal()) };
        if rc != 0 {
            // It ended meanwhile: forget it (it was the last slot taken).
            SLOTS[n].tid.store(0, Ordering::Relaxed);
            COUNT.store(n, Ordering::Release);
            continue;
        }
        new += 1;
    }
    Ok(new)
}

/// Waits until every signalled thread stopped; a thread that ended is dropped.
fn wait_stopped(deadline: Instant) -> Result<(), String> {
    loop {
        let n = COUNT.load(Ordering::Acquire);
        let got = STOPPED.load(Ordering::Acquire);
        if got as usize >= n {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let late: Vec<String> = SLOTS[..n]
                .iter()
                .filter(|s| s.frame.load(Ordering::Acquire) == 0)
                .map(|s| s.tid.load(Ordering::Relaxed).to_string())
                .collect();
            return Err(format!(
                "thread(s) {} did not stop for the checkpoint (blocking signal {} or stuck \
                 in the kernel)",
                late.join(", "),
                stop_signal()
            ));
        }
        drop_ended_threads();
        futex_wait_for(
            &STOPPED,
            got,
            (deadline - now).min(Duration::from_millis(50)),
        );
    }
}

/// Removes from the table the signalled threads that ended before stopping.
fn drop_ended_threads() {
    let n = COUNT.load(Ordering::Acquire);
    for s in &SLOTS[..n] {
        let tid = s.tid.load(Ordering::Relaxed);
        if s.frame.load(Ordering::Acquire) == 0
            && tid > 0
            && !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        {
            s.tid.store(-1, Ordering::Relaxed);
            STOPPED.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Finds the offset of the tid in `struct pthread`: the first word that holds its
/// thread's tid in every stopped thread.
fn settle_tid_offset() -> Result<(), String> {
    let n = COUNT.load(Ordering::Acquire);
    let mut common = [u64::MAX; PTHREAD_SCAN_BYTES / 4 / 64];
    for s in SLOTS[..n]
        .iter()
        .filter(|s| s.tid.load(Ordering::Relaxed) > 0)
    {
        for (c, w) in common.iter_mut().zip(&s.tid_words) {
            *c &= w.load(Ordering::Relaxed);
        }
    }
    let word = common
        .iter()
        .enumerate()
        .find(|(_, c)| **c != 0)
        .map(|(i, c)| i * 64 + c.trailing_zeros() as usize)
        .ok_or("cannot find the thread id in glibc's struct pthread")?;
    TID_OFFSET.store(word * 4, Ordering::Release);
    Ok(())
}

impl Stopped {
    /// Lets the stopped threads go on and puts the program's disposition back.
    pub(crate) fn release(self) {
        RELEASE.fetch_add(1, Ordering::AcqRel);
        futex_wake(&RELEASE);
        // SAFETY: restores the disposition saved by `install`.
        unsafe { libc::sigaction(stop_signal(), &self.previous, std::ptr::null_mut()) };
    }

    /// The program's own disposition of the stop signal, as the kernel holds it.
    pub(crate) fn previous_raw(&self) -> RawAction {
        self.previous_raw
    }
}
