//! Re-protection: after a node's death, the pages that had a copy on it are copied from
//! a surviving copy onto a spare node (`--spare-nodes`), or, with no spare, onto the
//! surviving nodes, in the background, so that a later failure of their other home loses
//! nothing either.
//!
//! A spare stands in for the dead node at the same offsets ([`Fence::assign_spare`]):
//! its region is empty, so nothing there collides, and every process computes the same
//! homes. Without spares, a job with a node more than a page's copies (or a group's
//! pieces) need keeps a rescue room on every node; the survivors then stand in
//! ([`Fence::assign_survivors`]): each piece goes to a survivor that holds no other piece
//! of its page or group, at the piece's offset in the rescue room (once per job: a
//! second dead node finds the room taken). From the moment the stand-in is chosen,
//! write-backs store the dead node's copies there too; this thread copies what was
//! already at home, one batch of pages at a time, each page locked meanwhile so that no
//! write-back of it runs between the read and the write. Once every page is copied the
//! stand-in is marked full and reads may use it.
//!
//! A second death during re-protection: pages that still have a live copy (or a group
//! with one piece missing at most) go on being served and re-protected; the copy on the
//! stand-in is never read before it is known complete, so a page whose only other copy
//! was on the second node has none left, and the job ends with status 70 saying data was
//! lost (from whichever thread needs the page first, this one included).
//!
//! Erasure-coded (`ec:K+1`), the same thread rewrites every page of this process whose
//! group had a piece on the dead node: the coded session rebuilds the lost piece (data
//! from the rest of the group, or parity from the data) and stores it on the stand-in as
//! part of that write-back (batches of consecutive pages are whole groups, whose parity
//! needs no reads).

use super::fence::Fence;
use super::Layout;
use crate::coherence::PageState;
use crate::effects::Effects;
use crate::runtime::{Core, RuntimeError};
use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::{NodeId, ReadOp, Session, WriteOp};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pages copied per batch.
const BATCH_PAGES: usize = 64;
/// How often the thread looks for new deaths.
const POLL: Duration = Duration::from_millis(20);

/// Runs until the runtime stops: re-protects after each death it sees.
pub(crate) fn run<E: Effects>(
    core: &Core<E>,
    (layout, fence): (&Layout, &Fence),
    mut session: Box<dyn Session>,
) -> Result<(), RuntimeError> {
    let mut handled: Vec<NodeId> = Vec::new();
    while !core.stopping() {
        std::thread::sleep(POLL);
        for dead in fence.dead_nodes() {
            if handled.contains(&dead) {
                continue;
            }
            handled.push(dead);
            let onto = match fence.assign_spare(dead) {
                Some(spare) => format!("spare {spare}"),
                None => match survivors_lack_room(core, layout, session.as_mut(), dead) {
                    None if fence.assign_survivors(dead) => "the surviving nodes".to_string(),
                    lack => {
                        let why = lack.unwrap_or_else(|| "nor a rescue room".to_string());
                        say(&format!(
                            "dsm: no spare node left to stand in for {dead}, {why}: pages \
                             that had a copy on it keep one copy fewer until the job ends \
                             (start more with --spare-nodes)"
                        ));
                        continue;
                    }
                },
            };
            reprotect(core, (layout, fence), session.as_mut(), dead, &onto)?;
        }
    }
    Ok(())
}

/// Why the surviving nodes cannot take `dead`'s pieces of this process's pages: the
/// pool (when the job has one) has less free room than they need. Counted before the
/// stand-in is chosen, from the pages at home then; a page's piece counts as a page.
fn survivors_lack_room<E: Effects>(
    core: &Core<E>,
    layout: &Layout,
    session: &mut dyn Session,
    dead: NodeId,
) -> Option<String> {
    let pool = core.pool.as_ref()?;
    let mut pages = Vec::new();
    core.table.pages_at_home_or_busy(&mut pages);
    let needed: u64 = pages
        .iter()
        .map(|&p| layout.pieces_on(core.placement.home(p), dead))
        .sum();
    match pool.free_pages(session) {
        Ok(free) if free >= needed => None,
        Ok(free) => Some(format!(
            "and the surviving nodes have room for {free} more pages, not the {needed} it \
             held"
        )),
        Err(e) => Some(format!("and the pool's free room could not be read ({e})")),
    }
}

fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Copies every page of this process with a home on `dead` onto its stand-in, `onto`
/// (or, coded, rewrites one page of each group with a piece on `dead`, which rebuilds
/// that piece there).
fn reprotect<E: Effects>(
    core: &Core<E>,
    (layout, fence): (&Layout, &Fence),
    session: &mut dyn Session,
    dead: NodeId,
    onto: &str,
) -> Result<(), RuntimeError> {
    let start = Instant::now();
    say(&format!(
        "dsm: re-protection: copying the pages that had a copy on {dead} to {onto}"
    ));
    let mut pages = Vec::new();
    // Pages being written back now count too: their write-back may have chosen its
    // targets before the stand-in was, and they may be home only once it ends (the
    // copier waits for their lock, then skips those that are not at home).
    core.table.pages_at_home_or_busy(&mut pages);
    pages.retain(|&p| layout.damaged(core.placement.home(p), dead));
    let mut copier = Copier::new();
    let mut copied = 0u64;
    for chunk in pages.chunks(BATCH_PAGES) {
        if core.stopping() {
            return Ok(());
        }
        copied += copier.copy(core, session, chunk)? as u64;
    }
    fence.mark_substitute_full(dead);
    let secs = start.elapsed().as_secs_f64();
    let mib = (copied * PAGE_BYTES as u64) as f64 / f64::from(1u32 << 20);
    let st = &core.stats;
    st.reprotect_pages.fetch_add(copied, Ordering::Relaxed);
    st.reprotect_ns
        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    say(&format!(
        "dsm: re-protection after {dead}'s death done: {copied} pages ({mib:.1} MiB) copied \
         to {onto} in {secs:.2} s ({:.0} MiB/s); every page has all its copies again",
        if secs > 0.0 { mib / secs } else { 0.0 }
    ));
    Ok(())
}

/// Buffers of one batch, allocated once.
struct Copier {
    buf: Vec<u8>,
    locked: Vec<(PageNum, PageState)>,
}

impl Copier {
    fn new() -> Copier {
        Copier {
            buf: vec![0u8; BATCH_PAGES * PAGE_BYTES],
            locked: Vec::with_capacity(BATCH_PAGES),
        }
    }

    /// Locks the pages of `batch` (waiting for ones in use), reads each from a live copy
    /// and writes it to every live home (the spare included), then unlocks them. Returns
    /// the pages copied (a page no longer at home is skipped).
    fn copy<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
        batch: &[PageNum],
    ) -> Result<usize, RuntimeError> {
        self.locked.clear();
        for &page in batch {
            let state = lock(core, page)?;
            if state.home_valid() {
                self.locked.push((page, state));
            } else {
                core.table.unlock(page, state);
            }
        }
        let result = self.transfer(core, session);
        for &(page, state) in &self.locked {
            core.table.unlock(page, state);
        }
        result.map(|()| self.locked.len())
    }

    fn transfer<E: Effects>(
        &mut self,
        core: &Core<E>,
        session: &mut dyn Session,
    ) -> Result<(), RuntimeError> {
        let n = self.locked.len();
        let mut reads: Vec<ReadOp<'_>> = self
            .locked
            .iter()
            .zip(self.buf.chunks_exact_mut(PAGE_BYTES))
            .map(|(&(page, _), buf)| {
                let home = core.placement.home(page);
                ReadOp {
                    node: home.node,
                    offset: home.offset,
                    buf,
                }
            })
            .collect();
        session.read_batch(&mut reads)?;
        drop(reads);
        let writes: Vec<WriteOp<'_>> = self
            .locked
            .iter()
            .zip(self.buf.chunks_exact(PAGE_BYTES).take(n))
            .map(|(&(page, _), data)| {
                let home = core.placement.home(page);
                WriteOp {
                    node: home.node,
                    offset: home.offset,
                    data,
                }
            })
            .collect();
        session.write_batch(&writes)?;
        Ok(())
    }
}

/// Takes `page`'s lock, waiting while another runtime thread holds it (a fetch or a
/// write-back, each bounded by the node timeout).
fn lock<E: Effects>(core: &Core<E>, page: PageNum) -> Result<PageState, RuntimeError> {
    let since = Instant::now();
    let limit = Duration::from_millis(2 * core.config.node_timeout_ms);
    loop {
        if let Some(state) = core.table.try_lock(page) {
            return Ok(state);
        }
        if since.elapsed() > limit {
            return Err(RuntimeError::PageStuck {
                page: page.0,
                waited_ms: since.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
