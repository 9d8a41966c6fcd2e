//! The process's life under the runtime: start-up (claim a slot, start the runtime, hand
//! the slot to mimalloc), `fork`, and the statistics written at exit.

use crate::route::{self, FORKED, OFF, READY, STARTING, UNINIT};
use dsm_runtime::config::job::{owner_alive, JobConfig, JobError, Owner};
use dsm_runtime::policy::profile::{PlacementSpec, Profile};
use dsm_runtime::redundancy::Copies;
use dsm_runtime::runtime::{Policies, EXIT_RUNTIME_FAILURE};
use dsm_runtime::space::PAGE_BYTES;
use dsm_runtime::stats::StatsSnapshot;
use dsm_runtime::trace::{TraceHeader, TraceWriter};
use dsm_runtime::transport::{select, SelectError, Transport};
use dsm_runtime::RuntimeConfig;
use dsm_runtime::{Runtime, RuntimeError};
use libc::{c_long, pid_t};
use libmimalloc_sys as mi;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

// mimalloc v3 option numbers (`mi_option_e` in its mimalloc.h; the sys crate's constants
// follow v2's numbering, so they are spelled out here).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;
const MI_OPTION_DISALLOW_OS_ALLOC: mi::mi_option_t = 17;
const MI_OPTION_ALLOW_THP: mi::mi_option_t = 43;
const MI_OPTION_ARENA_MAX_OBJECT_SIZE: mi::mi_option_t = 45;

/// Why this process runs without the runtime, or cannot run at all.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Arena(#[from] crate::heap::ArenaRefused),
    #[error("profile: {0}")]
    Profile(String),
    #[error("recording the trace: {0}")]
    Trace(String),
    #[error("{0}")]
    Restart(String),
}

/// The running job of this process; set once by `start`, then only read.
struct Running {
    runtime: Runtime,
    job: JobConfig,
    slot: usize,
    transport: Box<dyn Transport>,
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// The process that started the runtime (a forked child is not it).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);

fn running() -> Option<&'static Running> {
    let p = RUNNING.load(Ordering::Acquire) as *const Running;
    // SAFETY: set once from a leaked Box and never freed.
    unsafe { p.as_ref() }
}

fn program_name() -> String {
    std::env::args()
        .next()
        .unwrap_or_else(|| "<unknown>".to_string())
}

/// Runs at load (an `.init_array` entry): starts the runtime if this process is part of a
/// job, and exits with a message if it is but cannot start, since the user asked for the
/// program to run on pooled memory and running it elsewhere would hide the problem.
pub extern "C" fn on_load() {
    if route::state() != UNINIT {
        return;
    }
    route::set_state(STARTING);
    match start() {
        Ok(r) => {
            let base = r.runtime.base() as usize;
            route::set_range(base, base + r.runtime.len());
            OWNER_PID.store(std::process::id() as i32, Ordering::Relaxed);
            RUNNING.store(Box::into_raw(Box::new(r)) as usize, Ordering::Release);
            route::set_state(READY);
            if let Some(r) = running().filter(|r| r.job.stats_dir.is_some()) {
                r.runtime
                    .on_checkpoint(STATS_CHECKPOINT_PERIOD, |snap| save_stats(snap, false));
            }
            if let Some(r) = running() {
                serve_control(r);
            }
            dsm_runtime::checkpoint::set_restart_hook(restart_hook);
            dsm_runtime::checkpoint::note_runtime_fds();
        }
        Err(StartError::Job(JobError::NotInJob)) => route::set_state(OFF),
        Err(e) => {
            eprintln!(
                "dsm: cannot run {} (pid {}) on pooled memory: {e}",
                program_name(),
                std::process::id()
            );
            // SAFETY: ends the process at once; nothing has run yet that needs cleanup.
            unsafe { libc::_exit(EXIT_RUNTIME_FAILURE) };
        }
    }
}

/// A restored process's entry point (see `dsm_runtime::checkpoint`): called by the
/// restarter on its own stack, with the main thread's TLS and every other thread gone.
/// Starts a new runtime over the slot this process had, from the job described in the
/// file at `job_env` (the new nodes), then brings the threads back.
extern "C" fn restart_hook(job_env: *const libc::c_char) -> ! {
    // libc serves every allocation until the new runtime is up.
    route::set_state(STARTING);
    // SAFETY: the restarter passes a NUL-terminated path in its own memory.
    let path = unsafe { std::ffi::CStr::from_ptr(job_env) };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let program_fds = dsm_runtime::checkpoint::open_fds();
    match restart(path) {
        Ok((r, vars)) => {
            OWNER_PID.store(std::process::id() as i32, Ordering::Relaxed);
            // The old `Running` stays where it is: its threads are gone, its memory leaks.
            RUNNING.store(Box::into_raw(Box::new(r)) as usize, Ordering::Release);
            // Programs this one starts from now on belong to the new job, not the old.
            // Set while libc still serves allocations: the environment must not live in
            // the global heap, where a runtime thread that reads it would fault on the
            // range it serves.
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
            route::set_state(READY);
            if let Some(r) = running().filter(|r| r.job.stats_dir.is_some()) {
                r.runtime
                    .on_checkpoint(STATS_CHECKPOINT_PERIOD, |snap| save_stats(snap, false));
            }
            if let Some(r) = running() {
                serve_control(r);
            }
            dsm_runtime::checkpoint::note_runtime_fds_except(&program_fds);
            dsm_runtime::checkpoint::restart::resume_threads()
        }
        Err(e) => {
            eprintln!(
                "dsm: cannot restart {} (pid {}) from its image: {e}",
                program_name(),
                std::process::id()
            );
            loop {
                // SAFETY: ends the process; there is no runtime to run it on.
                unsafe { libc::syscall(libc::SYS_exit_group, EXIT_RUNTIME_FAILURE) };
            }
        }
    }
}

/// The job's variables, as read from a job environment file.
type JobVars = Vec<(std::ffi::OsString, std::ffi::OsString)>;

/// Starts the new runtime of a restored process over its old slot.
fn restart(job_env: &std::path::Path) -> Result<(Running, JobVars), StartError> {
    let old = running().ok_or_else(|| StartError::Restart("the image has no runtime".into()))?;
    let vars = dsm_runtime::checkpoint::restart::read_job_env(job_env)
        .map_err(|e| StartError::Restart(format!("{}: {e}", job_env.display())))?;
    let job = JobConfig::from_vars(vars.clone())?;
    let slot = old.slot;
    let base = old.runtime.base() as usize;
    if job.runtime_config(slot).space_base != base {
        return Err(StartError::Restart(format!(
            "the new job's global range puts slot {slot} at {:#x}, the image has it at \
             {base:#x}: DSM_SPACE_BASE and DSM_SLOT_BYTES must be those of the checkpointed job",
            job.runtime_config(slot).space_base
        )));
    }
    let timeout = Duration::from_millis(job.node_timeout_ms);
    let transport = select(job.transport, &job.nodes, job.secret.clone(), timeout)?.transport;
    {
        let copies = Copies::for_transport(job.redundancy, job.spare_nodes, transport.as_ref())
            .map_err(RuntimeError::from)?;
        let mut session = copies.wrap(transport.connect().map_err(RuntimeError::from)?);
        // The pid the process had when its image was taken (not yet replaced).
        let previous_pid = OWNER_PID.load(Ordering::Relaxed) as u32;
        let me = (Owner::this_process(), previous_pid);
        job.claim_slot_again(session.as_mut(), slot, me, owner_alive)?;
    }
    let runtime = start_runtime(&job, slot, transport.as_ref())?;
    runtime.adopt_pages_at_home(&old.runtime);
    let running = Running {
        runtime,
        job,
        slot,
        transport,
    };
    Ok((running, vars))
}

/// The profile a job without `--profile` runs under.
const DEFAULT_PROFILE: &str = "default";

/// Starts the runtime with the job's profile (the shipped default if none) and trace
/// recording (if asked).
fn start_runtime(
    job: &JobConfig,
    slot: usize,
    transport: &dyn Transport,
) -> Result<Runtime, StartError> {
    let mut config = job.runtime_config(slot);
    // No --profile means the shipped `default` profile (profiles/default.toml), as the
    // docs and the summary say: before, it meant the runtime's bare policies (CLOCK, no
    // prefetch), so a program run without flags never got readahead.
    let name = job.profile.as_deref().unwrap_or(DEFAULT_PROFILE);
    let profile = Profile::load(name).map_err(|e| StartError::Profile(e.to_string()))?;
    profile.apply(&mut config);
    let placement = match profile.placement {
        // Interleaving takes its chunk from the config the profile just set.
        PlacementSpec::Interleaved { .. } => None,
        _ => {
            // Under redundancy, primaries use the first band of each node.
            let node_bytes =
                Copies::for_transport(config.redundancy, config.spare_nodes, transport)
                    .map_err(RuntimeError::from)?
                    .primary_bytes(
                        transport
                            .nodes()
                            .iter()
                            .map(|n| dsm_runtime::node::header::data_bytes(n.region_bytes))
                            .min()
                            .unwrap_or(0),
                    );
            let pages = config.space_page_offset + config.space_bytes / PAGE_BYTES as u64;
            Some(
                profile
                    .placement(
                        transport.nodes().len() - config.spare_nodes,
                        node_bytes,
                        pages,
                    )
                    .map_err(RuntimeError::from)?,
            )
        }
    };
    let policies = Policies {
        eviction: profile.eviction(config.cache_pages()),
        prefetch: profile.prefetch(),
        placement,
        trace: open_trace(job, slot, &config, &profile.name)?,
    };
    Ok(Runtime::start_with(config, transport, policies)?)
}

fn open_trace(
    job: &JobConfig,
    slot: usize,
    config: &RuntimeConfig,
    profile: &str,
) -> Result<Option<TraceWriter>, StartError> {
    let Some(path) = job.trace_path(slot) else {
        return Ok(None);
    };
    let header = TraceHeader::for_run(config.cache_pages() as u64, profile);
    TraceWriter::create(&path, &header)
        .map(Some)
        .map_err(|e| StartError::Trace(e.to_string()))
}

fn start() -> Result<Running, StartError> {
    let job = JobConfig::from_env()?;
    let timeout = Duration::from_millis(job.node_timeout_ms);
    let selected = select(job.transport, &job.nodes, job.secret.clone(), timeout)?;
    let transport = selected.transport;
    let pid = std::process::id();
    if job.verbose {
        eprintln!(
            "dsm: {} (pid {pid}): transport {}",
            program_name(),
            selected.reason
        );
    }
    let slot = {
        // Through the redundancy wrapper: the slot table has a copy on each of the first
        // R nodes, and claims go to the first live one.
        let copies = Copies::for_transport(job.redundancy, job.spare_nodes, transport.as_ref())
            .map_err(RuntimeError::from)?;
        let mut session = copies.wrap(transport.connect().map_err(RuntimeError::from)?);
        job.claim_slot(session.as_mut(), Owner::this_process(), owner_alive)?
    };
    let runtime = start_runtime(&job, slot, transport.as_ref())?;
    let base = runtime.base() as usize;
    let len = runtime.len();
    // SAFETY: plain option setters, called before mimalloc serves anything.
    unsafe {
        // Purge freed spans soon: the purge is an `madvise` that our `madvise` turns into
        // a discard, so freed memory leaves the cache without being written home and is
        // zero-filled, not fetched, when reused.
        mi::mi_option_set(
            MI_OPTION_PURGE_DELAY,
            runtime.config().purge_delay_ms as c_long,
        );
        // The global range is the only memory the program's heap may use.
        mi::mi_option_set(MI_OPTION_DISALLOW_OS_ALLOC, 1);
        mi::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        mi::mi_option_set(
            MI_OPTION_ARENA_MAX_OBJECT_SIZE,
            (crate::heap::ARENA_BYTES >> 10) as c_long,
        );
    }
    crate::heap::init(base, len)?;
    if runtime.config().huge_regions {
        allow_huge_region_runs(job.verbose);
    }
    crate::mmap::configure(job.mmap_min_bytes as usize, len);
    if job.verbose {
        eprintln!(
            "dsm: {} (pid {pid}) slot {slot}: heap {base:#x}..{:#x}, local cache {} MiB",
            program_name(),
            base + len,
            job.cache_bytes_max >> 20
        );
    }
    Ok(Running {
        runtime,
        job,
        slot,
        transport,
    })
}

/// Lets the runtime's region runs have huge pages (`huge_regions`): mimalloc turns them
/// off for the whole process when it sets itself up, so it is set up first.
fn allow_huge_region_runs(verbose: bool) {
    // SAFETY: mimalloc's own set-up, which runs once; its options are set by now.
    unsafe { mi::mi_process_init() };
    if !dsm_runtime::cache::region_runs::allow_advised_huge_pages() && verbose {
        eprintln!("dsm: huge pages stay off in this process (a kernel before 6.18): regions move in 4 KiB pages");
    }
}

/// Lets `dsmrun suspend`/`resume` reach this process: a control socket in the job's
/// `ctl` directory, named by pid. A process that cannot serve one runs on (it then cannot
/// be suspended, which `dsmrun suspend` reports), after saying why.
fn serve_control(r: &Running) {
    let Some(dir) = &r.job.stats_dir else { return };
    let ctl = dir.join(dsm_runtime::suspend::control::CTL_DIR);
    if !ctl.is_dir() {
        return;
    }
    let socket = ctl.join(format!("{}.sock", std::process::id()));
    if let Err(e) = r.runtime.serve_control(&socket) {
        eprintln!(
            "dsm: {} (pid {}): no control socket, so it cannot be suspended: {e}",
            program_name(),
            std::process::id()
        );
    }
}

/// How often a process's statistics are saved while it runs, for `dsmrun` to report
/// should the process be killed by a signal (which skips `on_exit`).
const STATS_CHECKPOINT_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Serialises the writers of this process's statistics file; true once the final copy
/// is written, after which checkpoints (older by construction) must not replace it.
static STATS_FINAL: Mutex<bool> = Mutex::new(false);

/// Runs at exit (a `.fini_array` entry, after the program's `atexit` handlers): writes
/// this process's statistics for `dsmrun`. The runtime keeps running: libc still flushes
/// stdio buffers, which live in the global heap, after this.
pub extern "C" fn on_exit() {
    let Some(r) = running() else { return };
    if route::state() != READY || OWNER_PID.load(Ordering::Relaxed) != std::process::id() as i32 {
        return;
    }
    let snap = r.runtime.snapshot();
    r.runtime.flush_trace();
    if r.job.verbose {
        eprintln!(
            "dsm: {} (pid {}) slot {} done: {} faults, {} remote reads, {} write-backs, {} evictions",
            program_name(),
            std::process::id(),
            r.slot,
            snap.faults_total(),
            snap.remote_read_pages,
            snap.remote_write_pages,
            snap.evictions
        );
    }
    save_stats(&snap, true);
}

/// Writes `snap` to `<stats dir>/<pid>.json` (through a temporary file and a rename, so
/// `dsmrun` never reads half a file). `complete` marks the copy written at exit; a
/// checkpoint (`complete` false) never replaces it.
fn save_stats(snap: &StatsSnapshot, complete: bool) {
    let Some(r) = running() else { return };
    let Some(dir) = &r.job.stats_dir else { return };
    if OWNER_PID.load(Ordering::Relaxed) != std::process::id() as i32 {
        return; // a forked child: its parent owns the file
    }
    let mut written_final = STATS_FINAL.lock().unwrap_or_else(|e| e.into_inner());
    if *written_final {
        return;
    }
    let path = dir.join(format!("{}.json", std::process::id()));
    let tmp = dir.join(format!("{}.json.tmp", std::process::id()));
    let text = format!(
        "{{\"pid\":{},\"program\":{:?},\"slot\":{},\"transport\":{:?},\"complete\":{complete},\"stats\":{}}}",
        std::process::id(),
        program_name(),
        r.slot,
        r.transport.name(),
        snap.to_json()
    );
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        eprintln!("dsm: writing statistics to {}: {e}", path.display());
    }
    *written_final = complete;
}

extern "C" {
    /// glibc's fork under its public alias (our `fork` shadows the plain name).
    fn __fork() -> pid_t;
}

/// Gives up the contents of `[addr, addr + len)` of this process's slot through the
/// runtime (see [`dsm_runtime::Runtime::discard`]). False if the runtime does not serve
/// this process (not started, or a forked child whose range is ordinary memory) or the
/// range is not a page-aligned part of its slot.
pub fn discard(addr: usize, len: usize) -> bool {
    let is_owner = OWNER_PID.load(Ordering::Relaxed) == std::process::id() as i32;
    match running().filter(|_| route::state() == READY && is_owner) {
        Some(r) => r.runtime.discard(addr, len),
        None => false,
    }
}

/// Tells the runtime that the part of `[addr, addr + len)` inside this process's slot
/// is (or is no longer) readable; see `mmap::mprotect`.
pub fn protect(addr: usize, len: usize, readable: bool) {
    let is_owner = OWNER_PID.load(Ordering::Relaxed) == std::process::id() as i32;
    let Some(r) = running().filter(|_| route::state() == READY && is_owner) else {
        return;
    };
    let base = r.runtime.base() as usize;
    let start = addr.max(base);
    let end = addr.saturating_add(len).min(base + r.runtime.len());
    if end > start {
        let start = start / PAGE_BYTES * PAGE_BYTES;
        r.runtime
            .set_protection(start, (end - start).next_multiple_of(PAGE_BYTES), readable);
    }
}

/// What the pool could still hold and the local cache's size, in bytes, for the heap's
/// admission of large blocks; `None` when no runtime serves this process.
pub fn pool_free_bytes() -> Option<(u64, u64)> {
    let r = running().filter(|_| route::state() == READY)?;
    let pool = r.runtime.pool_free_bytes()?;
    Some((pool, r.job.cache_bytes_max))
}

/// Whether any page of this process may have left its local cache: decided by a flag
/// the runtime sets before the first page leaves (not by statistics counters, which are
/// bumped after the fact), so a fork that finds it clear copies a complete heap.
fn eviction_started(r: &Running) -> bool {
    r.runtime.pages_have_left()
}

/// `_exit`: the program leaves without running `atexit` handlers or destructors, so the
/// `.fini_array` entry that writes this process's statistics never runs. Write them here,
/// then end the process as glibc's `_exit` does. (glibc's own `exit` reaches its `_exit`
/// internally, not through this symbol, so a normal exit writes them once.) A forked or
/// vforked child calling `_exit` writes nothing: `on_exit` only acts in the process that
/// started the runtime.
///
/// # Safety
/// C `_exit`.
#[no_mangle]
pub unsafe extern "C" fn _exit(status: libc::c_int) -> ! {
    on_exit();
    loop {
        // SAFETY: exit_group never returns; the loop only satisfies the type.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// `_Exit` (C99): the same as `_exit`.
///
/// # Safety
/// C `_Exit`.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn _Exit(status: libc::c_int) -> ! {
    // SAFETY: as the caller's `_Exit`.
    unsafe { _exit(status) }
}

/// `fork` without `exec`: the child gets a copy of the parent's resident pages, but no
/// userfaultfd registration and no runtime threads (the kernel drops both), so a page
/// whose only copy is on a memory node would read as zeros in the child. While nothing
/// has been evicted, every page with data is resident and the child is a faithful copy:
/// fork is allowed, and the child's heap is ordinary local memory from then on (an `exec`
/// starts a fresh runtime in a fresh slot). Once pages live remotely, fork fails with
/// ENOSYS and a message, instead of handing the child a corrupt heap. `vfork`,
/// `posix_spawn`, `system` and `popen` share the parent's memory until `exec` and always
/// work.
///
/// # Safety
/// C `fork`.
#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    let Some(r) = running().filter(|_| route::state() == READY) else {
        // SAFETY: glibc's fork, as the program would have called it.
        return unsafe { __fork() };
    };
    if eviction_started(r) {
        refuse_fork(r);
        return -1;
    }
    // SAFETY: glibc's fork.
    let pid = unsafe { __fork() };
    if pid == 0 {
        // The child's memory is the parent's at the instant of the fork: if an eviction
        // had begun by then, some page may be missing here.
        if eviction_started(r) {
            eprintln!(
                "dsm: {}: fork() raced with the first eviction; the child cannot have an \
                 intact heap and exits",
                program_name()
            );
            // SAFETY: ends the child at once, before it runs on a damaged heap.
            unsafe { libc::_exit(EXIT_RUNTIME_FAILURE) };
        }
        route::set_state(FORKED);
    }
    pid
}

fn refuse_fork(r: &Running) {
    eprintln!(
        "dsm: {} (pid {}): fork() without exec is not supported once the heap has outgrown \
         the local cache ({} MiB): the child would not see pages held on memory nodes. \
         Use posix_spawn/system/vfork+exec, or raise --local-cache.",
        program_name(),
        std::process::id(),
        r.job.cache_bytes_max >> 20
    );
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
}
