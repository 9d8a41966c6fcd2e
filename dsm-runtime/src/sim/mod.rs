//! A deterministic simulation of the cache, in the manner of TigerBeetle's simulator.
//!
//! The runtime's own decision code (fault handler, eviction, access sampling, staging,
//! discard, prefetch, page table, budget, policies) runs unchanged against in-memory
//! effects ([`MemoryEffects`]: the process's memory as a map of mapped pages) and
//! in-memory nodes ([`MemoryNodes`]). A seeded generator plays the program and the
//! background threads: reads and writes (each access that finds no page, or a
//! write-protected one, is delivered to the handler as the fault the kernel would
//! report, then retried), background and direct reclaim, sampling rounds, discards,
//! prefetch requests, a suspend's or a checkpoint's release of the cache (dropped, or
//! kept clean: then every page must be identical to home), forks and node failures.
//! After every step the simulator checks that every page holds what was last written to
//! it, wherever the cache's state says it lives (mapped, staged, compressed, at home, or
//! nowhere: zeros), and the bookkeeping around it (a clean compressed copy matches home;
//! the budget counts the compressed tier at its compressed size).
//!
//! A run is a function of its seed (and a shorter run is a prefix of a longer one): a
//! failure names the seed and step, and `DSM_SIM_SEED=<seed> DSM_SIM_OPS=<step>`
//! reproduces it (see `tests/cache_sim.rs`).

mod rng;

pub use rng::Rng;

use crate::cache::Evictor;
use crate::coherence::Access as PageAccess;
use crate::effects::memory::{Access, MemoryEffects, MemoryNodes};
use crate::fault::prefetcher::Prefetcher;
use crate::fault::uffd::{Fault, FaultKind};
use crate::fault::FaultHandler;
use crate::policy::{Interleaved, Profile};
use crate::runtime::{Core, CoreParts, RuntimeError};
use crate::space::{Layout, PageNum, PAGE_BYTES};
use crate::transport::Session;
use crate::RuntimeConfig;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Where the simulated range starts (never dereferenced: the memory is a map).
const BASE: usize = 0x6000_0000_0000;
/// Offset of the second copy of each page's value: a page moved in part reads wrong.
const TAIL: usize = PAGE_BYTES - 8;
/// Most faults one access may take before the simulator calls it a livelock. A real
/// access retries after each wake; the runtime must make progress within a few.
const ACCESS_FAULTS_MAX: usize = 16;
/// One operation in this many fails the nodes (when node failures are on).
const NODE_FAILURE_ONE_IN: u64 = 5_000;
/// One operation in this many ends the process normally (a new one starts): fresh
/// processes, of new shapes, are where forks are allowed.
const EXIT_ONE_IN: u64 = 4_000;

/// Most threads whose faults one round serves together.
const THREADS_MAX: usize = 6;

/// What a simulation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Operations run.
    pub ops: u64,
    /// Simulated processes (a new one starts after a node failure ends one).
    pub processes: u64,
    /// Program reads and writes.
    pub accesses: u64,
    /// Faults delivered to the handler.
    pub faults: u64,
    /// Faults deferred because another fault of their round held the page.
    pub deferred: u64,
    /// Times a fault had to evict for room itself (direct reclaim).
    pub direct_reclaims: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Pages written home.
    pub write_backs: u64,
    /// Pages fetched from home (demand, block and prefetch).
    pub fetches: u64,
    /// Pages parked by sampling.
    pub sampled: u64,
    /// Pages prefetched (mapped ahead or staged).
    pub prefetched: u64,
    /// Of those, pages mapped ahead of use.
    pub mapped_ahead: u64,
    /// Cached pages discarded.
    pub discarded: u64,
    /// Forks allowed (no page had left), each checked for a complete copy.
    pub forks_allowed: u64,
    /// Forks refused (a page had left).
    pub forks_refused: u64,
    /// Node failures that ended a process with a transport error.
    pub node_failures: u64,
    /// Victims kept in the compressed tier.
    pub compressed: u64,
    /// Faults served from the compressed tier.
    pub compressed_hits: u64,
    /// Copies demoted from the compressed tier (written home if dirty).
    pub demoted: u64,
}

impl SimReport {
    fn add(&mut self, o: &SimReport) {
        self.ops += o.ops;
        self.processes += o.processes;
        self.accesses += o.accesses;
        self.faults += o.faults;
        self.deferred += o.deferred;
        self.direct_reclaims += o.direct_reclaims;
        self.evictions += o.evictions;
        self.write_backs += o.write_backs;
        self.fetches += o.fetches;
        self.sampled += o.sampled;
        self.prefetched += o.prefetched;
        self.mapped_ahead += o.mapped_ahead;
        self.discarded += o.discarded;
        self.forks_allowed += o.forks_allowed;
        self.forks_refused += o.forks_refused;
        self.node_failures += o.node_failures;
        self.compressed += o.compressed;
        self.compressed_hits += o.compressed_hits;
        self.demoted += o.demoted;
    }
}

/// A failed simulation: where, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The run's seed.
    pub seed: u64,
    /// The operation (counted from 1 over the whole run) that failed, or after which the
    /// check failed.
    pub step: u64,
    /// The operation.
    pub op: String,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache simulation failed: seed {} step {} ({}): {}\n  reproduce: DSM_SIM_SEED={} \
             DSM_SIM_OPS={} cargo test --release -p dsm-runtime --test cache_sim",
            self.seed, self.step, self.op, self.message, self.seed, self.step
        )
    }
}

impl std::error::Error for SimFailure {}

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Fail the nodes now and then (each failure ends the simulated process, which must
    /// report a transport error and never return wrong data before it).
    pub node_failures: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            node_failures: true,
        }
    }
}

/// Runs `ops` operations from `seed`.
pub fn run(seed: u64, ops: u64, options: SimOptions) -> Result<SimReport, SimFailure> {
    let mut rng = Rng::new(seed);
    let mut report = SimReport::default();
    let mut step = 0;
    while step < ops {
        let mut p = Process::new(&mut rng, options).map_err(|e| SimFailure {
            seed,
            step,
            op: "start".into(),
            message: e.to_string(),
        })?;
        let r = p
            .run(&mut rng, &mut step, ops)
            .map_err(|(op, message)| SimFailure {
                seed,
                step,
                op,
                message,
            })?;
        report.add(&r);
    }
    Ok(report)
}

/// One operation of the generator.
#[derive(Clone, Copy, Debug)]
enum Op {
    Read(u64),
    Write(u64, u64),
    Reclaim,
    Evict(usize),
    Sample(usize),
    Discard(u64, u64),
    Prefetch(u64),
    /// Several threads' accesses whose faults reach the handler in one round: up to
    /// [`THREADS_MAX`] `(page, value to write or 0 to read)`, `.1` of them used.
    Threads([(u64, u64); THREADS_MAX], usize),
    /// A suspend's or a checkpoint's quiesce (the program's threads held): every dirty
    /// page written home, then the cache dropped (`false`) or kept clean (`true`).
    Release(bool),
    Fork,
    FailNodes,
    Exit,
}

/// Why an operation stopped.
pub(crate) enum Stop {
    /// The runtime returned an error.
    Runtime(RuntimeError),
    /// Wrong data, broken bookkeeping, or no progress.
    Broken(String),
}

impl From<RuntimeError> for Stop {
    fn from(e: RuntimeError) -> Stop {
        Stop::Runtime(e)
    }
}

/// One simulated process: a cache over in-memory effects and nodes, and the model of
/// what its program wrote.
pub(crate) struct Process {
    pub(crate) core: Core<MemoryEffects>,
    pub(crate) nodes: MemoryNodes,
    pub(crate) handler: FaultHandler,
    evictor: Evictor,
    prefetcher: Prefetcher,
    session: Box<dyn Session>,
    /// The value last written to each page (0: never written, or discarded).
    pub(crate) model: Vec<u64>,
    fill_words: usize,
    options: SimOptions,
    nodes_failed: bool,
    report: SimReport,
}

/// A simulated process's shape.
pub(crate) struct Shape {
    pub(crate) pages: u64,
    pub(crate) config: RuntimeConfig,
    pub(crate) profile: String,
    /// Pseudo-random words each write fills its page with (0 to 510): how well pages
    /// compress, from a few dozen bytes to not at all.
    pub(crate) fill_words: usize,
}

impl Shape {
    /// A random shape: small caches over small ranges, so that every mechanism runs often.
    fn random(rng: &mut Rng) -> Shape {
        let pages = rng.range(16, 160);
        let cache_pages = rng.range(3, 40.min(pages)) as usize;
        let start = rng.range(0, 20) as u8;
        let mut config = RuntimeConfig {
            space_base: BASE,
            space_bytes: pages * PAGE_BYTES as u64,
            cache_bytes_max: (cache_pages * PAGE_BYTES) as u64,
            reclaim_start_free_pct: start,
            reclaim_stop_free_pct: start + rng.range(1, 30) as u8,
            writeback_batch_pages: rng.range(1, 8) as usize,
            fault_batch_max: 4,
            fetch_granularity_pages: 1 << rng.range(0, 2),
            prefetch_max_pages: rng.range(0, 6) as usize,
            zero_fill_ahead_pages: rng.range(0, 4) as usize,
            fetch_writable_if_dirty_before: rng.chance(2),
            ..RuntimeConfig::default()
        };
        config.staging_pages = rng.range(1, (cache_pages as u64 / 2).max(1)) as usize;
        // Prefetched pages all staged (0), or mapped ahead with a probe every 2, 4 or 16.
        config.prefetch_probe_every = [0, 2, 4, 16][rng.range(0, 3) as usize];
        if rng.chance(2) {
            // The compressed tier, from a sliver of the cache to most of it; now and then
            // keeping almost nothing, so that pages that do not compress go home.
            config.compress_share_pct = rng.range(5, 90) as u8;
            config.compress_keep_max_pct = if rng.chance(4) { 1 } else { 50 };
        }
        let eviction = ["fifo", "clock", "2q"][rng.range(0, 2) as usize];
        let prefetch = ["none", "readahead", "stride", "leap"][rng.range(0, 3) as usize];
        Shape {
            pages,
            config,
            fill_words: [0, 16, 128, 510][rng.range(0, 3) as usize],
            profile: format!(
                "[eviction]\npolicy = \"{eviction}\"\n[prefetch]\npolicy = \"{prefetch}\"\n"
            ),
        }
    }
}

impl Process {
    fn new(rng: &mut Rng, options: SimOptions) -> Result<Process, RuntimeError> {
        Process::with_shape(Shape::random(rng), options)
    }

    pub(crate) fn with_shape(shape: Shape, options: SimOptions) -> Result<Process, RuntimeError> {
        let Shape {
            pages,
            config,
            profile,
            fill_words,
        } = shape;
        let profile =
            Profile::parse(&profile, "sim", "the simulator").map_err(|e| RuntimeError::Os {
                what: "the simulator's profile",
                source: std::io::Error::other(e.to_string()),
            })?;
        let nodes = MemoryNodes::new();
        let placement = Interleaved::new(2, pages * PAGE_BYTES as u64, 1, pages)?;
        let core = Core::new(
            MemoryEffects::new(),
            CoreParts {
                layout: Layout { base: BASE, pages },
                placement: Box::new(placement),
                pool: None,
                eviction: profile.eviction(config.cache_pages()),
                prefetch: profile.prefetch(),
                trace: None,
                // No userfaultfd to move pages with: the memory model has no spares.
                spares: None,
                config,
            },
        )?;
        let handler = FaultHandler::new(&core, nodes.session());
        Ok(Process {
            evictor: Evictor::new(core.config.writeback_batch_pages),
            prefetcher: Prefetcher::new(&core),
            session: nodes.session(),
            model: vec![0; pages as usize],
            fill_words,
            handler,
            core,
            nodes,
            options,
            nodes_failed: false,
            report: SimReport {
                processes: 1,
                ..SimReport::default()
            },
        })
    }

    fn pages(&self) -> u64 {
        self.core.layout.pages
    }

    fn addr(&self, page: u64) -> usize {
        self.core.layout.addr_of(PageNum(page))
    }

    /// Runs operations until `ops` in all, or until a node failure ends the process.
    fn run(
        &mut self,
        rng: &mut Rng,
        step: &mut u64,
        ops: u64,
    ) -> Result<SimReport, (String, String)> {
        while *step < ops {
            let op = self.next_op(rng, *step);
            *step += 1;
            self.report.ops += 1;
            if let Op::Exit = op {
                break;
            }
            match self.apply(op) {
                Ok(()) => {}
                Err(Stop::Runtime(RuntimeError::Transport(_))) if self.nodes_failed => {
                    // The process ends here, as the runtime's fatal path ends it.
                    self.report.node_failures += 1;
                    break;
                }
                Err(Stop::Runtime(e)) => return Err((format!("{op:?}"), e.to_string())),
                Err(Stop::Broken(m)) => return Err((format!("{op:?}"), m)),
            }
            self.check().map_err(|m| (format!("{op:?}"), m))?;
        }
        self.collect();
        Ok(self.report.clone())
    }

    fn next_op(&mut self, rng: &mut Rng, step: u64) -> Op {
        let n = self.pages();
        if self.options.node_failures && !self.nodes_failed && rng.chance(NODE_FAILURE_ONE_IN) {
            return Op::FailNodes;
        }
        if rng.chance(EXIT_ONE_IN) {
            return Op::Exit;
        }
        if !self.core.pages_have_left() && rng.chance(10) {
            return Op::Fork;
        }
        // Accesses favour a hot set a little larger than the cache, so pages come and go.
        let hot = (self.core.budget.capacity() as u64 * 3 / 2).clamp(1, n);
        let page = if rng.chance(4) {
            rng.range(0, n - 1)
        } else {
            rng.range(0, hot - 1)
        };
        match rng.range(0, 99) {
            0..=27 => Op::Read(page),
            28..=61 => Op::Write(page, (step << 8) | rng.range(1, 255)),
            62..=67 => {
                let mut t = [(0, 0); THREADS_MAX];
                let k = rng.range(2, THREADS_MAX as u64) as usize;
                for (i, a) in t.iter_mut().take(k).enumerate() {
                    // Neighbours of one page often, so that threads meet on a page.
                    let q = (page + rng.range(0, 3)) % n;
                    let write = rng.chance(2);
                    *a = (
                        q,
                        if write {
                            (step << 8) | (i as u64 + 1)
                        } else {
                            0
                        },
                    );
                }
                Op::Threads(t, k)
            }
            68..=74 => Op::Reclaim,
            75..=79 => Op::Evict(rng.range(1, 8) as usize),
            80..=85 => Op::Sample(rng.range(1, 4) as usize),
            86..=89 => Op::Discard(page, rng.range(1, 8)),
            90..=97 => Op::Prefetch(page),
            98 => Op::Release(step % 2 == 0),
            _ => Op::Fork,
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), Stop> {
        match op {
            Op::Read(p) => {
                let v = self.read(p)?;
                if v != self.model[p as usize] {
                    return Err(Stop::Broken(format!(
                        "page {p} read {v:#x}, last written {:#x}",
                        self.model[p as usize]
                    )));
                }
            }
            Op::Write(p, v) => {
                self.write(p, v)?;
                self.model[p as usize] = v;
            }
            Op::Reclaim => {
                if self.core.reclaim_wanted() {
                    self.core
                        .reclaim_round(&mut self.evictor, self.session.as_mut())?;
                }
            }
            Op::Evict(n) => {
                self.evictor.evict(&self.core, self.session.as_mut(), n)?;
            }
            Op::Sample(n) => {
                self.evictor.sample(&self.core, n)?;
            }
            Op::Discard(first, count) => {
                let end = (first + count).min(self.pages());
                self.report.discarded += self.core.discard(PageNum(first), end - first)?;
                self.model[first as usize..end as usize].fill(0);
            }
            Op::Prefetch(p) => {
                // A request from outside the policy (as a neighbour's block would be),
                // then one batch of whatever is queued.
                let req = [PageNum(p), PageNum((p + 1) % self.pages())];
                self.core
                    .prefetcher
                    .enqueue(&req, self.pages(), &self.core.stats);
                self.prefetcher
                    .serve_batch(&self.core, self.session.as_mut(), Duration::ZERO)?;
            }
            Op::Threads(t, k) => self.threads(&t[..k])?,
            Op::Release(keep) => self.release(keep)?,
            Op::Fork => self.fork()?,
            Op::FailNodes => {
                self.nodes.fail(true);
                self.nodes_failed = true;
            }
            Op::Exit => {}
        }
        Ok(())
    }

    /// A program read of `page`: both copies of its value, faulting as needed.
    pub(crate) fn read(&mut self, page: u64) -> Result<u64, Stop> {
        let addr = self.addr(page);
        self.report.accesses += 1;
        for _ in 0..ACCESS_FAULTS_MAX {
            match self.core.fx.load(addr) {
                Ok(v) => {
                    let tail =
                        self.core.fx.load(addr + TAIL).map_err(|a| {
                            Stop::Broken(format!("page {page} half mapped ({a:?})"))
                        })?;
                    if tail != v {
                        return Err(Stop::Broken(format!(
                            "page {page} torn: {v:#x} at its start, {tail:#x} at its end"
                        )));
                    }
                    return Ok(v);
                }
                Err(_) => self.fault(addr, FaultKind::MissingRead)?,
            }
        }
        Err(Stop::Broken(format!(
            "a read of page {page} faulted {ACCESS_FAULTS_MAX} times in a row (livelock)"
        )))
    }

    /// A program write of `value` to both copies of `page`'s value, faulting as needed.
    pub(crate) fn write(&mut self, page: u64, value: u64) -> Result<(), Stop> {
        let addr = self.addr(page);
        self.report.accesses += 1;
        for _ in 0..ACCESS_FAULTS_MAX {
            match self.core.fx.store(addr, value) {
                Access::Done => {
                    if self.core.fx.store(addr + TAIL, value) != Access::Done
                        || self.core.fx.store_fill(addr, self.fill_words, value) != Access::Done
                    {
                        return Err(Stop::Broken(format!(
                            "page {page} became unwritable between two writes"
                        )));
                    }
                    return Ok(());
                }
                Access::Missing => self.fault(addr, FaultKind::MissingWrite)?,
                Access::WriteProtected => self.fault(addr, FaultKind::WriteProtect)?,
            }
        }
        Err(Stop::Broken(format!(
            "a write to page {page} faulted {ACCESS_FAULTS_MAX} times in a row (livelock)"
        )))
    }

    /// Each thread tries its access; those that fault block, and their faults reach the
    /// handler in one round (faults on a page another fault of the round holds are
    /// deferred to a later round, as in the runtime). Then each thread retries until
    /// its access goes through. Threads run in order, so a read sees the writes of the
    /// threads before it.
    fn threads(&mut self, accesses: &[(u64, u64)]) -> Result<(), Stop> {
        let mut faults = [Fault {
            addr: 0,
            kind: FaultKind::MissingRead,
            tid: 0,
        }; THREADS_MAX];
        let mut n = 0;
        for (i, &(page, value)) in accesses.iter().enumerate() {
            let addr = self.addr(page);
            // Only the fault is taken here; the access itself is made in the turns below.
            let kind = match (self.core.fx.mapping(addr), value) {
                (None, 0) => Some(FaultKind::MissingRead),
                (None, _) => Some(FaultKind::MissingWrite),
                (Some(true), v) if v != 0 => Some(FaultKind::WriteProtect),
                _ => None,
            };
            if let Some(kind) = kind {
                faults[n] = Fault {
                    addr,
                    kind,
                    tid: 2 + i as u32,
                };
                n += 1;
            }
        }
        self.report.faults += n as u64;
        self.handler.serve(&self.core, &faults[..n])?;
        self.prefetcher
            .serve_batch(&self.core, self.session.as_mut(), Duration::ZERO)?;
        for &(page, value) in accesses {
            if value == 0 {
                let v = self.read(page)?;
                if v != self.model[page as usize] {
                    return Err(Stop::Broken(format!(
                        "page {page} read {v:#x} by a thread of a round, last written {:#x}",
                        self.model[page as usize]
                    )));
                }
            } else {
                self.write(page, value)?;
                self.model[page as usize] = value;
            }
        }
        Ok(())
    }

    fn fault(&mut self, addr: usize, kind: FaultKind) -> Result<(), Stop> {
        self.report.faults += 1;
        let fault = Fault { addr, kind, tid: 1 };
        self.handler.serve(&self.core, &[fault])?;
        // What the prefetch policy asked for is fetched by the prefetcher thread.
        self.prefetcher
            .serve_batch(&self.core, self.session.as_mut(), Duration::ZERO)?;
        Ok(())
    }

    /// A fork: refused once a page has left; otherwise the child's copy of the mapped
    /// memory must hold every page's data.
    fn fork(&mut self) -> Result<(), Stop> {
        if self.core.pages_have_left() {
            self.report.forks_refused += 1;
            return Ok(());
        }
        self.report.forks_allowed += 1;
        for p in 0..self.pages() {
            let want = self.model[p as usize];
            let got = self.core.fx.load(self.addr(p)).unwrap_or(0);
            if got != want {
                return Err(Stop::Broken(format!(
                    "fork allowed, but the child would read {got:#x} in page {p}, last \
                     written {want:#x} (a page left before the flag was set)"
                )));
            }
        }
        Ok(())
    }

    /// A suspend (`keep` false: the cache must be empty afterwards) or a checkpoint's
    /// quiesce (`keep`: every page must be clean, each cached one identical to home).
    fn release(&mut self, keep: bool) -> Result<(), Stop> {
        use crate::suspend::{release_cache, Release};
        let how = if keep { Release::Keep } else { Release::Drop };
        let r = release_cache(&self.core, self.session.as_mut(), how)?;
        if r.pages_left != 0 {
            return Err(Stop::Broken(format!("{how:?} left {} pages", r.pages_left)));
        }
        if !keep {
            if self.core.budget.used() != 0 {
                return Err(Stop::Broken(format!(
                    "a suspend left {} pages cached",
                    self.core.budget.used()
                )));
            }
            return Ok(());
        }
        for p in 0..self.pages() {
            let page = PageNum(p);
            let s = self.core.table.get(page);
            let dirty =
                s.access() == PageAccess::Exclusive || s.staged_dirty() || s.compressed_dirty();
            let want = self.model[p as usize];
            let home = self.home_value(page).map_err(Stop::Broken)?;
            if dirty || (home != want && (s.home_valid() || want != 0)) {
                return Err(Stop::Broken(format!(
                    "after a checkpoint's quiesce page {p} ({s:?}) holds {want:#x}, home \
                     {home:#x}: not clean at home"
                )));
            }
        }
        Ok(())
    }

    /// Every page holds its last written value where its state says it lives, and the
    /// budget, the policy and the mappings agree with the states.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut cached = 0;
        let mut compressed = 0;
        let mut buf = vec![0u8; PAGE_BYTES];
        for p in 0..self.pages() {
            let want = self.model[p as usize];
            let page = PageNum(p);
            let s = self.core.table.get(page);
            if s.busy() {
                return Err(format!("page {p} left locked: {s:?}"));
            }
            let addr = self.addr(p);
            let mapping = self.core.fx.mapping(addr);
            let (where_, got) = if s.resident() {
                cached += 1;
                let Some(wp) = mapping else {
                    return Err(format!("page {p} is resident ({s:?}) but not mapped"));
                };
                if s.access() == PageAccess::Shared && !wp {
                    return Err(format!(
                        "page {p} is shared (clean) but mapped writable: a write would be lost"
                    ));
                }
                ("mapped", self.mapped_value(addr)?)
            } else if mapping.is_some() {
                return Err(format!("page {p} is mapped but its state says {s:?}"));
            } else if let Some(slot) = s.staged() {
                cached += 1;
                // SAFETY: nobody holds the page's lock (checked above), and the simulator
                // runs one operation at a time: nothing writes the slot meanwhile.
                buf.copy_from_slice(unsafe { self.core.staging.slot_mut(slot) });
                ("staged", value_of(&buf, p)?)
            } else if s.compressed() {
                compressed += 1;
                let tier = self
                    .core
                    .compressed
                    .as_ref()
                    .ok_or("compressed, with no tier")?;
                tier.read(page, &mut buf);
                let v = value_of(&buf, p)?;
                if !s.compressed_dirty() && self.home_value(page)? != v {
                    return Err(format!(
                        "page {p} is compressed clean ({s:?}) but home differs from its copy"
                    ));
                }
                ("compressed", v)
            } else if s.home_valid() {
                let home = self.core.placement.home(page);
                match self.nodes.read(home.node, home.offset) {
                    Some(d) => ("at home", value_of(&d, p)?),
                    None => ("at home (never written)", 0),
                }
            } else {
                ("nowhere (zeros)", 0)
            };
            if got != want {
                return Err(format!(
                    "page {p} holds {got:#x} {where_} ({s:?}), last written {want:#x}"
                ));
            }
        }
        let (copies, bytes, held) = self
            .core
            .compressed
            .as_ref()
            .map_or((0, 0, 0), |t| t.usage());
        if copies != compressed || held != bytes.div_ceil(PAGE_BYTES) {
            return Err(format!(
                "the compressed tier holds {copies} copies ({bytes} bytes, {held} pages of \
                 budget); {compressed} pages say compressed"
            ));
        }
        if self.core.budget.used() != cached + held {
            return Err(format!(
                "budget counts {} pages, {cached} are cached and the compressed tier holds {held}",
                self.core.budget.used()
            ));
        }
        let tracked = self.core.eviction().len();
        if tracked != cached {
            return Err(format!(
                "the eviction policy tracks {tracked} pages, {cached} are cached"
            ));
        }
        Ok(())
    }

    /// The value home holds for `page` (0 if never written there).
    fn home_value(&self, page: PageNum) -> Result<u64, String> {
        let home = self.core.placement.home(page);
        match self.nodes.read(home.node, home.offset) {
            Some(d) => value_of(&d, page.0),
            None => Ok(0),
        }
    }

    fn mapped_value(&self, addr: usize) -> Result<u64, String> {
        let v = self.core.fx.load(addr).map_err(|a| format!("{a:?}"))?;
        let t = self
            .core
            .fx
            .load(addr + TAIL)
            .map_err(|a| format!("{a:?}"))?;
        if v != t {
            return Err(format!("page at {addr:#x} torn: {v:#x} / {t:#x}"));
        }
        Ok(v)
    }

    fn collect(&mut self) {
        let st = &self.core.stats;
        let r = &mut self.report;
        r.evictions = st.evictions.load(Ordering::Relaxed);
        r.deferred = st.faults_deferred.load(Ordering::Relaxed);
        r.direct_reclaims = st.direct_reclaims.load(Ordering::Relaxed);
        r.write_backs = st.remote_write_pages.load(Ordering::Relaxed);
        r.fetches = st.remote_read_pages.load(Ordering::Relaxed);
        r.sampled = st.sampled_pages.load(Ordering::Relaxed);
        r.prefetched = st.prefetch_issued.load(Ordering::Relaxed);
        r.mapped_ahead = st.prefetch_mapped_ahead.load(Ordering::Relaxed);
        r.compressed = st.compressed_in_pages.load(Ordering::Relaxed);
        r.compressed_hits = st.compressed_hits.load(Ordering::Relaxed);
        r.demoted = st.compressed_demoted_clean.load(Ordering::Relaxed)
            + st.compressed_demoted_dirty.load(Ordering::Relaxed);
    }
}

/// The value a page's bytes hold (both copies must agree).
fn value_of(bytes: &[u8], page: u64) -> Result<u64, String> {
    let v = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let t = u64::from_le_bytes(bytes[TAIL..].try_into().expect("8 bytes"));
    if v != t {
        return Err(format!("page {page} torn: {v:#x} / {t:#x}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
