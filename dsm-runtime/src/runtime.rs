//! The runtime: reserves the global range, registers it with userfaultfd, and runs the
//! fault handlers and the background reclaimer until shut down.

use crate::cache::{CacheBudget, Evictor, PageTable, Staging};
use crate::config::job::Owner;
use crate::config::{ConfigError, RuntimeConfig};
use crate::effects::Effects;
use crate::fault::prefetcher::{self, PrefetchQueue};
use crate::fault::uffd::{
    UffdError, Userfaultfd, FEATURE_MOVE, FEATURE_PAGEFAULT_FLAG_WP, FEATURE_THREAD_ID,
};
use crate::fault::FaultHandler;
use crate::policy::eviction::Clock;
use crate::policy::placement::Shifted;
use crate::policy::prefetch::NoPrefetch;
use crate::policy::{EvictionPolicy, Interleaved, Placement, PlacementError, PrefetchPolicy};
use crate::redundancy;
use crate::space::pool::PoolAccount;
use crate::space::{Layout, PageNum, Reservation, ReserveError, PAGE_BYTES};
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::{Session, Transport, TransportError};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Exit status of a process whose runtime failed in a way the program cannot observe
/// (a node died while a thread waited for a page): the fault cannot be completed, so the
/// process ends with a message instead of hanging.
pub const EXIT_RUNTIME_FAILURE: i32 = 70;

/// Errors starting or running the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A configuration value is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The global range could not be reserved.
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    /// userfaultfd failed.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The pool is too small for the range.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A memory node failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No node to place pages on.
    #[error("the cluster has no memory nodes")]
    NoNodes,
    /// The pool cannot hold the pages being written home.
    #[error(transparent)]
    Pool(#[from] crate::space::pool::PoolError),
    /// Every cached page stayed locked for too long.
    #[error(
        "the local cache ({capacity_pages} pages) stayed full of pages in use; raise --local-cache"
    )]
    CacheWedged { capacity_pages: usize },
    /// A page stayed locked by another runtime thread for longer than any operation on
    /// it may take (a fetch or a write-back bounded by the node timeout).
    #[error(
        "page {page} of the global range stayed locked for {waited_ms} ms while discarding it \
         (a runtime thread stuck mid-operation)"
    )]
    PageStuck { page: u64, waited_ms: u64 },
    /// A page the runtime held dirty was dropped by someone else: its only up-to-date
    /// copy is gone.
    #[error(
        "page {page} of the global range (address {addr:#x}) was unmapped behind the \
         runtime's back while it held the only up-to-date copy (something called munmap, \
         madvise or mremap on the global range outside the runtime); its data is lost"
    )]
    PageLost { page: u64, addr: usize },
    /// A system call outside userfaultfd failed.
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },
    /// One of the runtime's own threads panicked (a bug, or a policy that panicked).
    #[error("runtime thread {thread} panicked: {message} at {location}")]
    ThreadPanicked {
        thread: String,
        message: String,
        /// `file:line` of the panic, as the panic hook saw it.
        location: String,
    },
}

/// State shared by the handler threads and the reclaimer, generic over the effects on the
/// process's memory: the runtime runs it with the real [`Userfaultfd`], the simulator
/// ([`crate::sim`]) with [`crate::effects::memory::MemoryEffects`].
pub struct Core<E: Effects = Userfaultfd> {
    pub(crate) config: RuntimeConfig,
    pub(crate) layout: Layout,
    /// Installs, write-protects, wakes, copies out and unmaps pages.
    pub(crate) fx: E,
    pub(crate) table: PageTable,
    pub(crate) budget: CacheBudget,
    pub(crate) staging: Staging,
    /// Evicted pages waiting to be recycled for prefetched ones (`None`: recycling off,
    /// or the kernel lacks `UFFDIO_MOVE`).
    pub(crate) spares: Option<crate::cache::Spares>,
    /// The compressed tier (`None` when the profile turns it off).
    pub(crate) compressed: Option<crate::cache::Compressed>,
    pub(crate) placement: Box<dyn Placement>,
    /// Claims on the nodes' memory (`None` outside a job: nothing is counted).
    pub(crate) pool: Option<PoolAccount>,
    /// Ranges the program made unreadable, which eviction copies another way.
    pub(crate) protected: crate::cache::protect::Protected,
    eviction: Mutex<Box<dyn EvictionPolicy>>,
    prefetch: Mutex<Box<dyn PrefetchPolicy>>,
    pub(crate) prefetcher: PrefetchQueue,
    pub(crate) trace: Option<crate::trace::TraceWriter>,
    pub(crate) stats: Arc<Stats>,
    stop: AtomicBool,
    /// Set before the first page leaves the cache (evicted or parked): from then on a
    /// copy of the process's memory (a forked child) may miss pages.
    pages_leaving: AtomicBool,
    stop_fd: OwnedFd,
    reclaim: (Mutex<bool>, Condvar),
    reclaim_start_free: usize,
    reclaim_stop_free: usize,
    checkpoint: std::sync::OnceLock<Checkpoint>,
    /// Closed while the process is suspended (see [`crate::suspend`]).
    pub(crate) gate: crate::suspend::Gate,
    /// Open while the helper fault handler serves faults (see [`crate::fault::helper`]).
    pub(crate) helper_gate: crate::fault::helper::HelperGate,
    /// Parks the reclaimer while a checkpoint writes the image (see [`crate::checkpoint`]).
    pub(crate) ckpt_pause: crate::checkpoint::Pause,
}

/// A periodic copy of the statistics handed to whoever started the runtime, so that a
/// process killed by a signal (no exit handlers) still leaves figures behind.
struct Checkpoint {
    period: Duration,
    save: Box<dyn Fn(&StatsSnapshot) + Send + Sync>,
}

/// What [`Core::new`] builds a core from, besides its effects.
pub(crate) struct CoreParts {
    pub(crate) config: RuntimeConfig,
    pub(crate) layout: Layout,
    pub(crate) placement: Box<dyn Placement>,
    pub(crate) pool: Option<PoolAccount>,
    pub(crate) eviction: Box<dyn EvictionPolicy>,
    pub(crate) prefetch: Box<dyn PrefetchPolicy>,
    pub(crate) trace: Option<crate::trace::TraceWriter>,
    /// Spare pages for recycling, registered with the effects' userfaultfd.
    pub(crate) spares: Option<crate::cache::Spares>,
}

impl<E: Effects> Core<E> {
    /// The shared state of a runtime over `layout` that acts through `fx`: an empty cache.
    pub(crate) fn new(fx: E, parts: CoreParts) -> Result<Core<E>, RuntimeError> {
        let CoreParts {
            config,
            layout,
            placement,
            pool,
            eviction,
            prefetch,
            trace,
            spares,
        } = parts;
        let table = PageTable::new(layout.pages, config.cache_pages() * 2).map_err(|source| {
            RuntimeError::Os {
                what: "allocating the page table",
                source,
            }
        })?;
        // SAFETY: eventfd with constant flags; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(RuntimeError::Os {
                what: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        let capacity = config.cache_pages();
        let pct = |p: u8| (capacity * usize::from(p) / 100).max(1);
        Ok(Core {
            layout,
            fx,
            table,
            budget: CacheBudget::new(capacity),
            staging: Staging::new(config.staging_slots(), config.region_runs()).map_err(
                |source| RuntimeError::Os {
                    what: "allocating the staging pool",
                    source,
                },
            )?,
            spares,
            compressed: (config.compress_share_pct > 0).then(|| {
                crate::cache::Compressed::new(
                    capacity * PAGE_BYTES * usize::from(config.compress_share_pct) / 100,
                    PAGE_BYTES * usize::from(config.compress_keep_max_pct) / 100,
                )
            }),
            placement,
            pool,
            protected: Default::default(),
            eviction: Mutex::new(eviction),
            prefetch: Mutex::new(prefetch),
            prefetcher: PrefetchQueue::new(4 * config.prefetch_max_pages.max(16)),
            trace,
            stats: Arc::new(Stats::default()),
            stop: AtomicBool::new(false),
            pages_leaving: AtomicBool::new(false),
            // SAFETY: `efd` is a fresh descriptor we own.
            stop_fd: unsafe { OwnedFd::from_raw_fd(efd) },
            reclaim: (Mutex::new(false), Condvar::new()),
            reclaim_start_free: pct(config.reclaim_start_free_pct),
            reclaim_stop_free: pct(config.reclaim_stop_free_pct),
            checkpoint: std::sync::OnceLock::new(),
            gate: Default::default(),
            helper_gate: Default::default(),
            ckpt_pause: Default::default(),
            config,
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records, before any page leaves the cache, that pages may live only on the nodes.
    pub(crate) fn mark_pages_leaving(&self) {
        self.pages_leaving.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stop_fd(&self) -> RawFd {
        self.stop_fd.as_raw_fd()
    }

    /// The eviction policy (one lock; its calls are short bookkeeping).
    pub(crate) fn eviction(&self) -> MutexGuard<'_, Box<dyn EvictionPolicy>> {
        self.eviction.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The prefetch policy.
    pub(crate) fn prefetch_policy(&self) -> MutexGuard<'_, Box<dyn PrefetchPolicy>> {
        self.prefetch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the reclaimer when free cache fell below the start watermark.
    pub(crate) fn kick_reclaim_if_low(&self) {
        if self.budget.free() < self.reclaim_start_free {
            let (lock, cv) = &self.reclaim;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_one();
        }
    }

    /// Wakes the reclaimer whatever the free cache.
    pub(crate) fn kick_reclaim(&self) {
        let (lock, cv) = &self.reclaim;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    fn reclaim_loop(&self, mut session: Box<dyn Session>) -> Result<(), RuntimeError> {
        let mut evictor = Evictor::new(self.config.writeback_batch_pages);
        let mut last_sample = std::time::Instant::now();
        let mut last_checkpoint = std::time::Instant::now();
        let (lock, cv) = &self.reclaim;
        while !self.stopping() {
            self.ckpt_pause.hold_if_requested();
            {
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (mut kicked, _) = cv
                    .wait_timeout_while(guard, Duration::from_millis(10), |k| {
                        !*k && !self.stopping()
                    })
                    .unwrap_or_else(|e| e.into_inner());
                *kicked = false;
            }
            self.maybe_sample(&mut evictor, &mut last_sample)?;
            if let Some(pool) = &self.pool {
                pool.trim(session.as_mut())?;
            }
            self.maybe_checkpoint(&mut last_checkpoint);
            if let Some(release) = self.gate.take_release_request() {
                let released = crate::suspend::release_cache(self, session.as_mut(), release);
                self.gate
                    .report_released(released.map_err(|e| e.to_string()));
            }
            if self.gate.is_closed() || self.budget.free() >= self.reclaim_start_free {
                continue;
            }
            self.reclaim_round(&mut evictor, session.as_mut())?;
        }
        Ok(())
    }

    /// One round of background reclaim: evicts until free cache reaches the stop mark,
    /// or nothing more can be evicted.
    pub(crate) fn reclaim_round(
        &self,
        evictor: &mut Evictor,
        session: &mut dyn Session,
    ) -> Result<(), RuntimeError> {
        self.stats.reclaim_rounds.fetch_add(1, Ordering::Relaxed);
        while self.budget.free() < self.reclaim_stop_free && !self.stopping() {
            let want = self.reclaim_stop_free - self.budget.free();
            if evictor.evict(self, session, want)? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Sets or clears write protection on a page range, retrying while the kernel
    /// answers EAGAIN (the address space is changing: a fork or an mremap), for at most
    /// the node timeout: past it the change is not transient and the call fails with
    /// [`UffdError::KeptRefusing`] instead of spinning forever.
    pub(crate) fn write_protect(
        &self,
        addr: usize,
        len: usize,
        protect: bool,
        dontwake: bool,
    ) -> Result<(), RuntimeError> {
        let mut first_refusal = None;
        loop {
            match self.fx.write_protect(addr, len, protect, dontwake) {
                Err(e) if crate::fault::uffd::is_transient(&e) => {
                    let since = *first_refusal.get_or_insert_with(std::time::Instant::now);
                    let waited = since.elapsed();
                    if waited >= Duration::from_millis(self.config.node_timeout_ms) {
                        return Err(RuntimeError::Uffd(UffdError::KeptRefusing {
                            call: "UFFDIO_WRITEPROTECT",
                            addr,
                            waited_ms: waited.as_millis() as u64,
                        }));
                    }
                    std::thread::yield_now();
                }
                other => return other.map_err(RuntimeError::Uffd),
            }
        }
    }

    /// Whether free cache is below the mark where background reclaim starts.
    pub(crate) fn reclaim_wanted(&self) -> bool {
        self.budget.free() < self.reclaim_start_free
    }

    /// Copies the cached page at `addr` into `dst`, whatever protection the program gave
    /// it (see `cache/protect.rs`).
    ///
    /// # Safety
    /// As [`Effects::read_page`]: the page is mapped, locked by the caller and stable
    /// during the copy, and `dst` is a page's worth of bytes.
    pub(crate) unsafe fn read_page(&self, addr: usize, dst: &mut [u8]) {
        // SAFETY: as the caller promises.
        if !unsafe { self.protected.copy_if_unreadable(addr, dst) } {
            // SAFETY: as the caller promises; the page is readable.
            unsafe { self.fx.read_page(addr, dst) };
        }
    }

    /// Whether any page may have left the cache; see [`Runtime::pages_have_left`].
    pub(crate) fn pages_have_left(&self) -> bool {
        self.pages_leaving.load(Ordering::SeqCst)
    }
}

impl<E: Effects> Core<E> {
    /// Hands a copy of the statistics to the checkpoint callback, if one is set and its
    /// period has passed. Runs on the reclaimer, which wakes at least every 10 ms.
    fn maybe_checkpoint(&self, last: &mut std::time::Instant) {
        let Some(c) = self.checkpoint.get() else {
            return;
        };
        if last.elapsed() >= c.period {
            *last = std::time::Instant::now();
            (c.save)(&self.stats.snapshot());
        }
    }

    /// Samples recency (see [`Evictor::sample`]) every `sample_interval_ms`, and only when
    /// the cache is under pressure: without pressure nothing is evicted, so recency is
    /// not worth its faults.
    fn maybe_sample(
        &self,
        evictor: &mut Evictor,
        last: &mut std::time::Instant,
    ) -> Result<(), RuntimeError> {
        let n = self.config.sample_pages;
        if n == 0 || last.elapsed() < Duration::from_millis(self.config.sample_interval_ms) {
            return Ok(());
        }
        *last = std::time::Instant::now();
        if self.budget.free() < 2 * self.reclaim_stop_free {
            evictor.sample(self, n)?;
        }
        Ok(())
    }
}

thread_local! {
    /// Set on the runtime's own threads (fault handlers, reclaimer).
    static INTERNAL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is one of the runtime's own (a fault handler or the
/// reclaimer). An allocator that serves the program from the global range must send these
/// threads' allocations elsewhere: a handler that faults on the global range waits for
/// itself.
pub fn current_thread_is_internal() -> bool {
    INTERNAL_THREAD.with(Cell::get)
}

/// Blocks every signal but the synchronous ones (a fault, a bad instruction) in the
/// calling runtime thread, so that the kernel delivers the program's signals to the
/// program's threads only, as it would natively. Otherwise a signal the program blocks
/// in all its threads (to take it with `sigwait`) would run its default action on a
/// runtime thread and, say, end the process; a program's handler would run on a
/// runtime thread, where touching the heap waits on that very thread; and a signal
/// interrupting a blocked socket call (`EINTR`, which is retried) would restart the
/// node timeout.
fn block_asynchronous_signals() {
    // SAFETY: plain signal-set manipulation on a local set, then this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Marks the calling thread as the runtime's own; see [`current_thread_is_internal`].
pub fn mark_current_thread_internal() {
    INTERNAL_THREAD.with(|c| c.set(true));
}

/// Runs `f` with the calling program thread counted as internal: whatever it allocates
/// comes from libc, never from the global range, so runtime code run on a program
/// thread (a discard) cannot fault on the range while it holds the runtime's locks, nor
/// re-enter the allocator that called it.
pub(crate) fn as_internal<R>(f: impl FnOnce() -> R) -> R {
    let was = INTERNAL_THREAD.with(|c| c.replace(true));
    let r = f();
    INTERNAL_THREAD.with(|c| c.set(was));
    if !was {
        // A checkpoint's stop signal waits until runtime code is left.
        crate::checkpoint::stop_if_deferred();
    }
    r
}

/// Starts one of the runtime's own threads. Every such thread is marked internal, so an
/// allocator serving the program from the global range sends its allocations elsewhere
/// (a runtime thread that faulted on the range would wait for itself), and a failure ends
/// the process with a message instead of hanging faulting threads. A panic counts as a
/// failure: a thread that unwound away silently would leave every thread that waits on
/// it (a fault on a page it was fetching, a full cache it was to reclaim) waiting forever.
///
/// Returns only once the thread is marked: the thread allocates before its body runs (the
/// standard library registers thread-local destructors, which `calloc`s), and the caller
/// must not let the global heap serve the program until no runtime thread can allocate
/// unmarked.
fn spawn_internal(
    core: &Arc<Core>,
    name: String,
    body: impl FnOnce(&Core) -> Result<(), RuntimeError> + Send + 'static,
) -> Result<JoinHandle<()>, RuntimeError> {
    record_panic_locations();
    let core = Arc::clone(core);
    let (marked_tx, marked_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            mark_current_thread_internal();
            block_asynchronous_signals();
            let registered = crate::checkpoint::register_internal();
            PANICS_END_THE_PROCESS.with(|c| c.set(true));
            // The starter waits for this below before it returns.
            let _ = marked_tx.send(());
            // Unwind safety does not matter: after a panic nothing looks at the state the
            // body left behind, the process ends.
            match std::panic::catch_unwind(AssertUnwindSafe(|| body(&core))) {
                Ok(Ok(())) => crate::checkpoint::forget_internal(registered),
                Ok(Err(e)) => fatal(&e),
                Err(payload) => fatal(&panicked(payload.as_ref())),
            }
        })
        .map_err(|source| RuntimeError::Os {
            what: "spawning a runtime thread",
            source,
        })?;
    // An error means the thread ended without marking itself: it allocates no more.
    let _ = marked_rx.recv();
    Ok(handle)
}

thread_local! {
    /// Set on the threads [`spawn_internal`] starts, whose panics it reports through
    /// [`fatal`]. Not the same as [`current_thread_is_internal`]: a program thread
    /// running runtime code in [`as_internal`] is internal, but its panics are the
    /// program's, reported as usual.
    static PANICS_END_THE_PROCESS: Cell<bool> = const { Cell::new(false) };
    /// `file:line` of the last panic on this runtime thread. Only the panic hook sees
    /// where a panic happened; `catch_unwind` gets the payload alone.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that notes where a runtime thread panicked.
/// Such a panic is reported by [`fatal`] in one line; the previous hook (the standard
/// library's, which prints the panic over several writes that interleave with other
/// threads' output) runs for it only when `RUST_BACKTRACE` asks for a backtrace. Other
/// threads' panics go to the previous hook as before.
fn record_panic_locations() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANICS_END_THE_PROCESS.with(Cell::get) {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = at);
            if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                previous(info);
            }
        }));
    });
}

/// The error a runtime thread's panic becomes, on that thread.
fn panicked(payload: &(dyn Any + Send)) -> RuntimeError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic payload that is not a string)".into());
    let location = PANIC_LOCATION
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| "an unknown location".into());
    RuntimeError::ThreadPanicked {
        thread: std::thread::current()
            .name()
            .unwrap_or("(unnamed)")
            .to_string(),
        message,
        location,
    }
}

/// Ends the process after a failure that leaves a faulting thread unservable.
///
/// It ends with the raw `exit_group` system call, not `_exit`: in a program run by
/// `dsmrun`, `_exit` is the preload library's, which writes statistics marked complete
/// (they are not: the program did not finish) and may touch the global range, whose
/// faults can no longer be served. The statistics file keeps the last checkpoint, and
/// `dsmrun` reports the process as one that left no final statistics.
pub fn fatal(err: &RuntimeError) -> ! {
    // The first failure is the one to report; a thread failing after it (often because
    // of it) waits for the exit the first one makes.
    static ENDING: AtomicBool = AtomicBool::new(false);
    if ENDING.swap(true, Ordering::AcqRel) {
        loop {
            std::thread::park();
        }
    }
    // One write, so that the line stays whole among other threads' output. Not
    // `eprintln!`: it panics if stderr is broken (a closed pipe), and a panic here would
    // end this thread silently, the very hang this function exists to prevent.
    let line = format!("dsm: fatal: {err}\n");
    let _ = io::stderr().write_all(line.as_bytes());
    loop {
        // SAFETY: exit_group ends every thread of the process and never returns; no
        // handler or destructor runs. The loop only satisfies the type.
        unsafe { libc::syscall(libc::SYS_exit_group, EXIT_RUNTIME_FAILURE) };
    }
}

/// The policies a runtime runs with (see [`crate::policy`]).
pub struct Policies {
    /// Victim choice.
    pub eviction: Box<dyn EvictionPolicy>,
    /// What to fetch along with a fault.
    pub prefetch: Box<dyn PrefetchPolicy>,
    /// Where pages live; `None` for interleaving with the configured chunk size.
    pub placement: Option<Box<dyn Placement>>,
    /// Where to record the page-access stream for the tuner (`--record-trace`).
    pub trace: Option<crate::trace::TraceWriter>,
}

impl Policies {
    /// CLOCK, no prefetch, interleaved placement.
    pub fn defaults(config: &RuntimeConfig) -> Policies {
        Policies {
            eviction: Box::new(Clock::with_capacity(config.cache_pages())),
            prefetch: Box::new(NoPrefetch),
            placement: None,
            trace: None,
        }
    }
}

/// A running runtime. Dropping it (or [`Runtime::shutdown`]) stops the threads and
/// releases the range; pages in it become inaccessible.
pub struct Runtime {
    core: Arc<Core>,
    threads: Vec<JoinHandle<()>>,
    reservation: Option<Reservation>,
}

impl Runtime {
    /// Starts the runtime over the nodes of `transport` with the default policies.
    pub fn start(
        config: RuntimeConfig,
        transport: &dyn Transport,
    ) -> Result<Runtime, RuntimeError> {
        let policies = Policies::defaults(&config);
        Runtime::start_with(config, transport, policies)
    }

    /// Starts the runtime over the nodes of `transport` with `policies`.
    pub fn start_with(
        config: RuntimeConfig,
        transport: &dyn Transport,
        policies: Policies,
    ) -> Result<Runtime, RuntimeError> {
        config.validate()?;
        let nodes = transport.nodes();
        let data_bytes = nodes
            .iter()
            .map(|n| crate::node::header::data_bytes(n.region_bytes))
            .min()
            .ok_or(RuntimeError::NoNodes)?;
        let copies =
            redundancy::Copies::plan(config.redundancy, nodes, config.spare_nodes, data_bytes)?;
        // Spares hold nothing until they stand in for a dead node.
        let placed = nodes.len() - config.spare_nodes;
        // Placement places primaries in the first band of each node; copies use the rest.
        let node_bytes = copies.primary_bytes(data_bytes);
        let page = PAGE_BYTES as u64;
        let space_bytes = if config.space_bytes == 0 {
            ((node_bytes / page) * placed as u64).saturating_sub(config.space_page_offset) * page
        } else {
            config.space_bytes.div_ceil(page) * page
        };
        let mut config = config;
        config.space_bytes = space_bytes;
        config.validate()?;
        let pages = space_bytes / page;
        // Pages below `space_page_offset` belong to other processes of the job (or are
        // reserved), so placement sees this range shifted up by that many pages. A
        // placement given in `policies` must be built for `space_page_offset + pages`.
        let placement: Box<dyn Placement> = match policies.placement {
            Some(p) => p,
            None => Box::new(Interleaved::new(
                placed,
                node_bytes,
                config.placement_chunk_pages,
                config.space_page_offset + pages,
            )?),
        };
        let placement =
            copies.placement(Box::new(Shifted::new(placement, config.space_page_offset)));

        // Connect before reserving, so an unreachable node fails fast and leaves nothing.
        let mut sessions = Vec::with_capacity(config.handler_threads + 2);
        for _ in 0..config.handler_threads + 2 {
            sessions.push(copies.wrap(transport.connect()?));
        }
        let helper_session =
            if crate::fault::helper::wanted(config.handler_threads, transport.name()) {
                Some(copies.wrap(transport.connect()?))
            } else {
                None
            };
        let reprotect_session = match copies.fence() {
            Some(_) => Some(copies.wrap(transport.connect()?)),
            None => None,
        };
        let pool = match config.pool_slot {
            Some(slot) => Some(PoolAccount::open(
                sessions[0].as_mut(),
                Owner::this_process(),
                slot,
                nodes.len(),
            )?),
            None => None,
        };
        let reservation = Reservation::new(config.space_base, space_bytes as usize)?;
        let can_move = Userfaultfd::probe_features().is_ok_and(|f| f & FEATURE_MOVE != 0);
        let recycling = config.recycle_pages > 0 && can_move;
        config.huge_regions &= can_move;
        let features = FEATURE_PAGEFAULT_FLAG_WP | FEATURE_THREAD_ID;
        let uffd = Userfaultfd::open(if recycling || config.huge_regions {
            features | FEATURE_MOVE
        } else {
            features
        })?;
        uffd.register(reservation.base(), reservation.len(), true)?;
        let spares = if recycling {
            let spares = crate::cache::Spares::new(config.recycle_pages).map_err(|source| {
                RuntimeError::Os {
                    what: "mapping the spare pages",
                    source,
                }
            })?;
            let (base, len) = spares.range();
            uffd.register(base, len, true)?;
            Some(spares)
        } else {
            None
        };
        let core = Arc::new(Core::new(
            uffd,
            CoreParts {
                layout: Layout {
                    base: reservation.base(),
                    pages,
                },
                placement,
                pool,
                eviction: policies.eviction,
                prefetch: policies.prefetch,
                trace: policies.trace,
                spares,
                config,
            },
        )?);
        if let Some(runs) = core.staging.regions() {
            // Evicted regions move back out into the runs (a move's destination must be
            // registered); write-protect mode only, so filling an empty run is the
            // kernel's own fault.
            let (base, len) = runs.range();
            core.fx.register_wp_only(base, len)?;
        }
        copies.count_into(&core.stats);
        let mut rt = Runtime {
            core,
            threads: Vec::new(),
            reservation: Some(reservation),
        };
        let helper_session_is_some = helper_session.is_some();
        let reclaim_session = sessions.pop().expect("one session per thread");
        let prefetch_session = sessions.pop().expect("one session per thread");
        for (i, session) in sessions.into_iter().enumerate() {
            let t = spawn_internal(&rt.core, format!("dsm-fault-{i}"), move |core| {
                if let Some(cpu) = core.config.handler_cpu {
                    pin_current_thread(cpu);
                }
                FaultHandler::new(core, session)
                    .opening_helper(helper_session_is_some)
                    .run(core)
            })?;
            rt.threads.push(t);
        }
        if let Some(session) = helper_session {
            let t = spawn_internal(&rt.core, "dsm-fault-helper".into(), move |core| {
                if let Some(cpu) = core.config.handler_cpu {
                    pin_current_thread(cpu);
                }
                FaultHandler::helper(core, session).run(core)
            })?;
            rt.threads.push(t);
        }
        let t = spawn_internal(&rt.core, "dsm-prefetch".into(), move |core| {
            prefetcher::run(core, prefetch_session)
        })?;
        rt.threads.push(t);
        let t = spawn_internal(&rt.core, "dsm-reclaim".into(), move |core| {
            core.reclaim_loop(reclaim_session)
        })?;
        rt.threads.push(t);
        let kept = copies.fence().cloned().zip(copies.layout().cloned());
        if let (Some((fence, layout)), Some(session)) = (kept, reprotect_session) {
            let t = spawn_internal(&rt.core, "dsm-reprotect".into(), move |core| {
                redundancy::reprotect::run(core, (&layout, &fence), session)
            })?;
            rt.threads.push(t);
        }
        Ok(rt)
    }

    /// First byte of the global range.
    pub fn base(&self) -> *mut u8 {
        self.core.layout.base as *mut u8
    }

    /// Size of the global range in bytes.
    pub fn len(&self) -> usize {
        self.core.layout.bytes() as usize
    }

    /// Whether the range is empty (never, once started).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives up the contents of `[addr, addr + len)`, as `madvise(MADV_DONTNEED)` does
    /// for private anonymous memory: cached pages are dropped without a write-back and
    /// read as zeros afterwards. `addr` must be page-aligned and the range inside this
    /// runtime's range (else `false`, nothing done). Returns whether it was done. A page
    /// that another runtime thread keeps locked past twice the node timeout ends the
    /// process ([`fatal`], [`RuntimeError::PageStuck`]): the range would be left half
    /// discarded, which the caller cannot be told.
    pub fn discard(&self, addr: usize, len: usize) -> bool {
        let base = self.core.layout.base;
        let end = base + self.len();
        if addr % PAGE_BYTES != 0 || addr < base || addr.saturating_add(len) > end {
            return false;
        }
        let first = PageNum(((addr - base) / PAGE_BYTES) as u64);
        let done = as_internal(|| self.core.discard(first, len.div_ceil(PAGE_BYTES) as u64));
        if let Err(e) = done {
            // Part of the range may be discarded and the rest not: the program cannot be
            // told, and zeroing by hand would fault on the stuck page.
            fatal(&e);
        }
        true
    }

    /// Records the protection the program is about to give `[addr, addr + len)` (the
    /// caller applies it with `mprotect`: the kernel enforces it; the runtime only needs
    /// to know which pages it can no longer read directly). Returns false, doing
    /// nothing, if the range is not page-aligned or not inside this runtime's range.
    pub fn set_protection(&self, addr: usize, len: usize, readable: bool) -> bool {
        let base = self.core.layout.base;
        let end = base + self.len();
        if addr % PAGE_BYTES != 0 || addr < base || addr.saturating_add(len) > end {
            return false;
        }
        as_internal(|| self.core.protected.set(addr, len, readable));
        true
    }

    /// Whether any page may have left the cache (evicted, or parked by sampling): the
    /// flag is set before the first one leaves, so a `fork` that sees it clear copies
    /// every page the process has.
    pub fn pages_have_left(&self) -> bool {
        self.core.pages_have_left()
    }

    /// Bytes the memory pool could still hold (as read from the nodes at most 100 ms
    /// ago), or `None` outside a job, where nothing is counted.
    pub fn pool_free_bytes(&self) -> Option<u64> {
        let pool = self.core.pool.as_ref()?;
        Some(pool.free_pages_estimate() * PAGE_BYTES as u64)
    }

    /// Calls `save` with a copy of the statistics every `period` (on a runtime thread,
    /// whose allocations are the runtime's own) until the runtime stops. Set once; a
    /// second call is ignored and returns false.
    pub fn on_checkpoint(
        &self,
        period: Duration,
        save: impl Fn(&StatsSnapshot) + Send + Sync + 'static,
    ) -> bool {
        self.core
            .checkpoint
            .set(Checkpoint {
                period,
                save: Box::new(save),
            })
            .is_ok()
    }

    /// Serves `dsmrun`'s suspend and resume requests on a Unix socket at `socket` (see
    /// [`crate::suspend::control`]), on a runtime thread that ends when the runtime stops.
    pub fn serve_control(&self, socket: &std::path::Path) -> Result<(), RuntimeError> {
        // Called by a program thread once the global heap serves it: what starting the
        // thread allocates (its name, its handle, the closure) must come from libc, or the
        // control thread would touch the global range while the cache is being emptied.
        as_internal(|| {
            let listener = crate::suspend::control::bind(socket)?;
            // Not joined at shutdown: it ends on the stop event like the others, and a
            // process that exits without shutting down has nothing to wait for.
            spawn_internal(&self.core, "dsm-control".into(), move |core| {
                crate::suspend::control::serve(core, listener)
            })?;
            Ok(())
        })
    }

    /// Takes over what `old` knew of the pages at home: a restarted process's new runtime
    /// must fetch them, not zero-fill them. `old` is the runtime of the process when its
    /// image was taken (its threads are gone; its tables are intact in the restored
    /// memory). Returns how many pages.
    pub fn adopt_pages_at_home(&self, old: &Runtime) -> usize {
        let mut pages = Vec::new();
        old.core.table.pages_at_home(&mut pages);
        for p in &pages {
            self.core.table.mark_home_valid(*p);
        }
        pages.len()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.core.config
    }

    /// Live statistics.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.core.stats
    }

    /// A copy of the statistics.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.core.stats.snapshot()
    }

    /// Writes out what the trace recorder holds (for a process that exits without
    /// shutting the runtime down); errors are reported by the recorder itself.
    pub fn flush_trace(&self) {
        if let Some(t) = &self.core.trace {
            if let Err(e) = t.flush() {
                eprintln!("dsm: trace: {e}");
            }
        }
    }

    /// Stops the threads, releases the range, and returns the final statistics.
    pub fn shutdown(mut self) -> StatsSnapshot {
        self.stop();
        self.core.stats.snapshot()
    }

    fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.core.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our eventfd.
        unsafe { libc::write(self.core.stop_fd(), (&one as *const u64).cast(), 8) };
        self.core.reclaim.1.notify_all();
        self.core.prefetcher.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(r) = self.reservation.take() {
            // Unregistering wakes any thread still waiting; it then sees an empty range.
            let _ = self.core.fx.unregister(r.base(), r.len());
            drop(r);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins the calling thread to `cpu` (best effort: a bad CPU number leaves it unpinned).
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
