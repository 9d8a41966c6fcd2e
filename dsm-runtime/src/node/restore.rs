//! Lazy restore of a checkpoint: a restarted node reports ready once it has read its
//! snapshot chain's indexes (a few bytes per page, never the pages), then copies the pages
//! into its region in a low-priority thread while it serves. A request that touches a page
//! not restored yet restores that page first, so restart time does not grow with the heap.
//!
//! Who may touch a page, and when:
//! - The header's pages (the first [`NODE_HEADER_BYTES`]) are restored before the node
//!   reports ready: clients compare-and-swap on them directly (the `shm` mapping).
//! - Every other page is restored by exactly one thread, under its shard's lock; its state
//!   goes from pending to done once and never back, and no write reaches it before: TCP
//!   reads, writes and compare-and-swaps call [`Restorer::ensure`] first.
//! - `shm` clients copy the region's bytes themselves, so the node cannot intercept them:
//!   while the header's [`RESTORING_OFFSET`] word is set they send that node's reads and
//!   writes over their TCP connection instead (transport/shm.rs). The word is cleared
//!   only after the last page is done, and never set again.
//! - RDMA is one-sided too, but a queue pair cannot be redirected: the node finishes the
//!   restore before it accepts the first one. So does a snapshot call (it scans the region).
//!
//! So a write is never overwritten by a late restore (the page was done before the write
//! reached it) and a read never sees a page not restored. A page whose bytes do not match
//! their index entry is never served: the request is refused, naming the file, and the
//! node exits with [`EXIT_DAMAGED`], which ends the job.

use super::header::{NODE_HEADER_BYTES, RESTORING_OFFSET};
use super::region::Region;
use super::snapshot::{Chain, PageSums, PAGE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exit status of a node that found its checkpoint damaged while restoring it.
pub const EXIT_DAMAGED: i32 = 3;
/// How long a node that found damage waits before exiting, so the refusal reaches the
/// client that asked (its runtime names the file) before the connection closes.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Locks over the pages (a page's is its index modulo this): enough that request threads
/// and the background restorer seldom wait for each other.
const SHARDS: usize = 64;
/// Nice value of the background restorer: the program's requests come first.
const BACKGROUND_NICE: libc::c_int = 19;
/// Test hook: the background restorer starts only once this many pages were restored on
/// demand (or after [`HOOK_WAIT_MAX`]), so that a test sees requests served while the
/// restore is under way, whatever the machine's speed.
const AFTER_DEMAND_VAR: &str = "DSM_TEST_RESTORE_AFTER_DEMAND";
/// Bound on the test hook's wait.
const HOOK_WAIT_MAX: Duration = Duration::from_secs(10);

const PENDING: u8 = 0;
const DONE: u8 = 1;

/// Why a page was restored, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// Before the node reported ready (the header's pages).
    AtStart,
    /// A request needed it.
    OnDemand,
    /// The background restorer reached it.
    Background,
}

/// A node's checkpoint being restored into its region.
#[derive(Debug)]
pub struct Restorer {
    node: u16,
    chain: Chain,
    /// Per page of `chain.pages()`: [`PENDING`] or [`DONE`].
    state: Vec<AtomicU8>,
    locks: Vec<Mutex<()>>,
    left: AtomicU64,
    at_start: AtomicU64,
    on_demand: AtomicU64,
    background: AtomicU64,
    started: Instant,
    finished_ms: OnceLock<u64>,
    /// The first damage found: every later request that needs a page is refused with it.
    failure: OnceLock<String>,
}

impl Restorer {
    /// Opens the chain `paths` (checking each file's header and index), restores the
    /// header's pages, and sets the header's restoring word if pages are left.
    pub fn start(node: u16, region: &Region, paths: &[PathBuf]) -> Result<Restorer, String> {
        let chain = Chain::open(paths, node.into(), region.len())
            .map_err(|(path, e)| format!("restoring snapshot {}: {e}", path.display()))?;
        let n = chain.pages().len();
        let header_pages = NODE_HEADER_BYTES / PAGE;
        let in_header = chain.pages().partition_point(|p| p.page < header_pages);
        let r = Restorer {
            node,
            chain,
            state: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            left: AtomicU64::new(n as u64),
            at_start: AtomicU64::new(0),
            on_demand: AtomicU64::new(0),
            background: AtomicU64::new(0),
            started: Instant::now(),
            finished_ms: OnceLock::new(),
            failure: OnceLock::new(),
        };
        for i in 0..in_header {
            r.restore_one(region, i, Why::AtStart)?;
        }
        if r.left.load(Ordering::Acquire) > 0 {
            // Nobody is served yet: restoring page 0 above cannot race with this.
            set_word(region, RESTORING_OFFSET, 1);
        } else {
            r.finish(region);
        }
        Ok(r)
    }

    /// The checksums of the restored region's pages, for the next snapshot.
    pub fn sums(&self) -> PageSums {
        self.chain.sums()
    }

    /// Whether pages are still to be restored.
    pub fn pending(&self) -> bool {
        self.left.load(Ordering::Acquire) > 0
    }

    /// Restores every page of `[offset, offset+len)` not restored yet; an error (damage)
    /// says which file, and the node exits shortly after.
    pub fn ensure(&self, region: &Region, offset: u64, len: u64) -> Result<(), String> {
        if len == 0 || !self.pending() {
            return self.failure.get().map_or(Ok(()), |f| Err(f.clone()));
        }
        let first = offset / PAGE;
        let last = offset.saturating_add(len - 1) / PAGE;
        let pages = self.chain.pages();
        let mut i = pages.partition_point(|p| p.page < first);
        while i < pages.len() && pages[i].page <= last {
            self.restore_one(region, i, Why::OnDemand)
                .map_err(|e| self.fail(e))?;
            i += 1;
        }
        Ok(())
    }

    /// Restores every page left now, in the caller's thread (before a snapshot or a
    /// queue pair).
    pub fn finish_now(&self, region: &Region) -> Result<(), String> {
        for i in 0..self.state.len() {
            self.restore_one(region, i, Why::OnDemand)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// The background restorer: every page in order, at the lowest priority; damage ends
    /// the node.
    pub fn run_background(&self, region: &Region) {
        // SAFETY: setpriority on this thread's own id (per thread on Linux); a failure
        // leaves it at normal priority, which is only slower for the program.
        unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                BACKGROUND_NICE,
            )
        };
        self.wait_for_test_hook();
        for i in 0..self.state.len() {
            if let Err(e) = self.restore_one(region, i, Why::Background) {
                self.fail(e);
                return;
            }
        }
    }

    /// [`AFTER_DEMAND_VAR`]: waits (bounded) for that many pages restored on demand.
    fn wait_for_test_hook(&self) {
        let Some(pages) = std::env::var(AFTER_DEMAND_VAR)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        let deadline = Instant::now() + HOOK_WAIT_MAX;
        while self.on_demand.load(Ordering::Relaxed) < pages && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Restores page `i` of the chain unless done; once done it is never written by the
    /// restore again.
    fn restore_one(&self, region: &Region, i: usize, why: Why) -> Result<(), String> {
        if self.state[i].load(Ordering::Acquire) == DONE {
            return Ok(());
        }
        let _guard = self.locks[i % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.state[i].load(Ordering::Acquire) == DONE {
            return Ok(());
        }
        if let Some(f) = self.failure.get() {
            return Err(f.clone());
        }
        let page = &self.chain.pages()[i];
        let mut buf = [0u8; 8 + PAGE as usize];
        self.chain.read(page, &mut buf).map_err(|e| {
            format!(
                "checkpoint file {} is damaged or unreadable: {e}",
                self.chain.path_of(page).display()
            )
        })?;
        let dest = region
            .ptr(page.page * PAGE, PAGE)
            .ok_or_else(|| format!("page {} lies outside the node's region", page.page))?;
        // SAFETY: a whole page inside the region's mapping. Nobody else writes it now: TCP
        // requests for it wait for this page's lock, `shm` clients go through the node
        // while the restoring word is set, and RDMA is not accepted before the end.
        unsafe { std::ptr::copy_nonoverlapping(buf[8..].as_ptr(), dest, PAGE as usize) };
        self.state[i].store(DONE, Ordering::Release);
        let counter = match why {
            Why::AtStart => &self.at_start,
            Why::OnDemand => &self.on_demand,
            Why::Background => &self.background,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(region);
        }
        Ok(())
    }

    /// Every page is done: clears the restoring word (clients may copy directly again)
    /// and says so on the node's stderr.
    fn finish(&self, region: &Region) {
        set_word(region, RESTORING_OFFSET, 0);
        let ms = self.started.elapsed().as_millis() as u64;
        let _ = self.finished_ms.set(ms);
        eprintln!(
            "dsm-node {}: checkpoint restored: {} pages ({} at start, {} on demand, {} in \
             background) in {ms} ms",
            self.node,
            self.state.len(),
            self.at_start.load(Ordering::Relaxed),
            self.on_demand.load(Ordering::Relaxed),
            self.background.load(Ordering::Relaxed),
        );
    }

    /// Records damage (the first only), says it, and ends the node after a grace period
    /// so the refusal reaches the client first; returns the message.
    fn fail(&self, why: String) -> String {
        if self.failure.set(why.clone()).is_ok() {
            eprintln!(
                "dsm-node {}: {why}; the job cannot go on without these pages",
                self.node
            );
            let _ = std::thread::Builder::new()
                .name("dsm-node-damaged".into())
                .spawn(|| {
                    std::thread::sleep(EXIT_GRACE);
                    std::process::exit(EXIT_DAMAGED);
                });
        }
        self.failure.get().cloned().unwrap_or(why)
    }

    /// The restore's counters, for the node's stats.
    pub fn stats_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pages": self.state.len(),
            "left": self.left.load(Ordering::Relaxed),
            "at_start": self.at_start.load(Ordering::Relaxed),
            "on_demand": self.on_demand.load(Ordering::Relaxed),
            "background": self.background.load(Ordering::Relaxed),
            "ms": self.finished_ms.get(),
            "failure": self.failure.get(),
        })
    }
}

/// Sets a header word only this node changes (whatever the restored page held there).
fn set_word(region: &Region, offset: u64, value: u64) {
    let now = region.load_word(offset).unwrap_or(0);
    region.compare_and_swap(offset, now, value);
}

#[cfg(test)]
mod tests {
    use super::super::snapshot;
    use super::*;

    fn fill(region: &Region, page: u64, byte: u8) {
        let p = region.ptr(page * PAGE, PAGE).unwrap();
        // SAFETY: a page inside the region.
        unsafe { p.write_bytes(byte, PAGE as usize) };
    }

    fn byte_at(region: &Region, page: u64) -> u8 {
        // SAFETY: a byte inside the region.
        unsafe { *region.ptr(page * PAGE + 8, 1).unwrap() }
    }

    #[test]
    fn pages_come_back_on_demand_or_in_background_and_a_later_write_is_never_overwritten() {
        let region = Region::new(1 << 24).unwrap();
        for (page, byte) in [(0, 1), (20, 2), (21, 3), (500, 4)] {
            fill(&region, page, byte);
        }
        let path = std::env::temp_dir().join(format!("dsm-restore-{}", std::process::id()));
        snapshot::write(&region, 3, &PageSums::new(), &path).unwrap();
        let fresh = Region::new(1 << 24).unwrap();
        let r = Restorer::start(3, &fresh, std::slice::from_ref(&path)).unwrap();
        // Ready: the header's page is back, the others not yet, and clients are told.
        assert_eq!(byte_at(&fresh, 0), 1);
        assert_eq!((byte_at(&fresh, 20), byte_at(&fresh, 500)), (0, 0));
        assert_eq!(fresh.load_word(RESTORING_OFFSET), Some(1));
        assert!(r.pending());
        // A request over pages 20 and 21 restores both first.
        r.ensure(&fresh, 20 * PAGE + 100, PAGE).unwrap();
        assert_eq!((byte_at(&fresh, 20), byte_at(&fresh, 21)), (2, 3));
        // The program then writes page 21: the background restorer must not undo it.
        fill(&fresh, 21, 9);
        r.run_background(&fresh);
        assert_eq!((byte_at(&fresh, 21), byte_at(&fresh, 500)), (9, 4));
        assert_eq!(fresh.load_word(RESTORING_OFFSET), Some(0));
        assert!(!r.pending());
        let stats = r.stats_json();
        assert_eq!(
            (
                &stats["at_start"],
                &stats["on_demand"],
                &stats["background"]
            ),
            (&1.into(), &2.into(), &1.into())
        );
        let _ = std::fs::remove_file(path);
    }
}
