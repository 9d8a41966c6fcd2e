//! Region runs: staging for whole 2 MiB regions of a stream, one huge page each.
//!
//! With `huge_regions` on, the prefetcher fetches a region the stream reaches into a run
//! of 512 staging slots that is one 2 MiB-aligned range advised `MADV_HUGEPAGE`: the
//! first bytes written there make the kernel back it with a transparent huge page. The
//! first fault in the region then moves that huge page into the global range with one
//! `UFFDIO_MOVE` (see `fault::regions`): 512 pages installed for the cost of one, where
//! `UFFDIO_COPY` and `MADV_DONTNEED` cost about 1 us a page on the development VM
//! (`benches/kernel/uffd_move_thp.c`).
//!
//! A run's slots are ordinary staging slots to the rest of the cache (numbered after the
//! pool's, see [`super::Staging`]): a page of a run can be evicted, or installed alone by
//! a 4 KiB copy when the whole region cannot move, and the run is free again once none
//! of its slots holds a page.

use crate::space::PAGE_BYTES;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `prctl` options (the libc crate lacks the flag, Linux 6.18).
const PR_SET_THP_DISABLE: libc::c_int = 41;
const PR_GET_THP_DISABLE: libc::c_int = 42;
const PR_THP_DISABLE_EXCEPT_ADVISED: libc::c_ulong = 1 << 1;

/// Lets the runs have huge pages although the process has them turned off: mimalloc
/// turns them off for the whole process (the preload clears its `allow_thp` option, so
/// that no huge page ever backs the global range). Where the kernel can (Linux 6.18,
/// `PR_THP_DISABLE_EXCEPT_ADVISED`), they stay off except in ranges advised
/// `MADV_HUGEPAGE`, which only the runs are. Call once mimalloc is set up. Returns
/// whether the runs can have huge pages; without them regions still move in whole, 4 KiB
/// page by 4 KiB page.
pub fn allow_advised_huge_pages() -> bool {
    // SAFETY: prctl with integer arguments only.
    let now = unsafe { libc::prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if now == 0 || now as libc::c_ulong & PR_THP_DISABLE_EXCEPT_ADVISED != 0 {
        return true;
    }
    // SAFETY: as above.
    unsafe { libc::prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0) == 0 }
}

/// Pages per run: one 2 MiB region.
pub const RUN_PAGES: usize = super::page_table::REGION_PAGES as usize;
const RUN_BYTES: usize = RUN_PAGES * PAGE_BYTES;

/// Runs, and their slots' numbers from `first_slot` on.
pub struct RegionRuns {
    /// The mapping as made (one run longer than needed, for alignment).
    map: usize,
    /// The first run, 2 MiB aligned.
    base: usize,
    runs: usize,
    first_slot: u32,
    state: Mutex<RunsState>,
}

struct RunsState {
    /// Free runs with no memory (their huge page moved into the range).
    free: Vec<u32>,
    /// Free runs that hold memory: a region moved back out whole on eviction, or a run
    /// given back slot by slot. Taken first, so that no huge page is allocated and zeroed.
    spare: Vec<u32>,
    /// Per run, how many of its slots still hold a page (0: free).
    held: Vec<u16>,
    /// Per run, whether it holds memory (a spare one, or one in use).
    filled: Vec<bool>,
    /// Runs in use, oldest first, with the first page of the region each stages and
    /// when it was taken.
    in_use: std::collections::VecDeque<(u32, u64, Instant)>,
    /// The first page of the region moved in last: where the stream is.
    newest: Option<u64>,
    /// When it moved in.
    newest_at: Option<Instant>,
}

impl RunsState {
    /// Forgets `run` as in use.
    fn retire(&mut self, run: u32) {
        self.in_use.retain(|&(r, _, _)| r != run);
    }
}

impl RegionRuns {
    /// `runs` runs whose slots are numbered from `first_slot`.
    pub fn new(runs: usize, first_slot: u32) -> io::Result<RegionRuns> {
        let len = (runs + 1) * RUN_BYTES;
        let map = super::map_anonymous(len)?; // unmapped in `drop`
        let base = (map as usize).next_multiple_of(RUN_BYTES);
        // Huge pages wanted here; the global range is not advised (a write fault there
        // would make the kernel allocate and zero a huge page before reporting it).
        // SAFETY: advice on our own mapping (the raw call: the preload's `madvise` is the
        // runtime's).
        unsafe {
            libc::syscall(
                libc::SYS_madvise,
                base,
                runs * RUN_BYTES,
                libc::MADV_HUGEPAGE,
            )
        };
        Ok(RegionRuns {
            map: map as usize,
            base,
            runs,
            first_slot,
            state: Mutex::new(RunsState {
                free: (0..runs as u32).rev().collect(),
                spare: Vec::with_capacity(runs),
                held: vec![0; runs],
                filled: vec![false; runs],
                in_use: std::collections::VecDeque::with_capacity(runs),
                newest: None,
                newest_at: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `slot` is one of the runs' slots.
    pub fn contains(&self, slot: u32) -> bool {
        slot >= self.first_slot && ((slot - self.first_slot) as usize) < self.runs * RUN_PAGES
    }

    /// The run of `slot` (one of ours) and the slot's page within it.
    pub fn run_of(&self, slot: u32) -> (u32, usize) {
        let i = (slot - self.first_slot) as usize;
        ((i / RUN_PAGES) as u32, i % RUN_PAGES)
    }

    /// The slot of page `index` of `run`.
    pub fn slot(&self, run: u32, index: usize) -> u32 {
        self.first_slot + (run as usize * RUN_PAGES + index) as u32
    }

    /// The address of `run`'s first byte.
    pub fn addr(&self, run: u32) -> usize {
        self.base + run as usize * RUN_BYTES
    }

    /// Takes a free run for the region starting at page `first`; all its slots are the
    /// caller's.
    pub fn alloc(&self, first: u64) -> Option<u32> {
        let mut st = self.lock();
        let run = st.spare.pop().or_else(|| st.free.pop())?;
        st.held[run as usize] = RUN_PAGES as u16;
        st.in_use.push_back((run, first, Instant::now()));
        Some(run)
    }

    /// Whether a run is free.
    pub fn has_free(&self) -> bool {
        let st = self.lock();
        !st.free.is_empty() || !st.spare.is_empty()
    }

    /// The first page of a region staged in a run that the stream will not use: one it
    /// has passed (see [`Self::is_passed`]), or one staged before the last move in and
    /// not within `ahead` pages after it (the stream went elsewhere, say back to the
    /// start of its array; with two streams interleaved, the other stream's, which then
    /// have to share the runs); else the one taken longest ago if that was more than
    /// `age` ago. Called only when every run is in use.
    pub fn stale(&self, age: Duration, ahead: u64) -> Option<u64> {
        let st = self.lock();
        let left = |first: u64, since: Instant| {
            let (Some(newest), Some(at)) = (st.newest, st.newest_at) else {
                return false;
            };
            since < at && !(first > newest && first - newest <= ahead)
        };
        let unused = st
            .in_use
            .iter()
            .find(|&&(_, first, since)| passed(st.newest, first) || left(first, since));
        if let Some(&(_, first, _)) = unused {
            return Some(first);
        }
        let &(_, first, since) = st.in_use.front()?;
        (since.elapsed() > age).then_some(first)
    }

    /// Whether a run holds the region at page `first`.
    pub fn holds(&self, first: u64) -> bool {
        self.lock().in_use.iter().any(|&(_, f, _)| f == first)
    }

    /// Notes that the region at page `first` moved in whole: the stream is there now.
    pub fn note_moved_in(&self, first: u64) {
        let mut st = self.lock();
        st.newest = Some(first);
        st.newest_at = Some(Instant::now());
    }

    /// Whether the region at page `first` is the one moved in last, which the program
    /// has just entered: evicting it would throw away the pages it reads next.
    pub fn is_newest(&self, first: u64) -> bool {
        self.lock().newest == Some(first)
    }

    /// Whether the stream has passed the region at page `first`: it lies a little
    /// behind the region moved in last. Fetching it now would be for nothing.
    pub fn is_passed(&self, first: u64) -> bool {
        passed(self.lock().newest, first)
    }

    /// Gives back a run taken by [`Self::alloc`] and not used after all.
    pub fn unclaim(&self, run: u32) {
        let mut st = self.lock();
        st.retire(run);
        st.held[run as usize] = 0;
        match st.filled[run as usize] {
            true => st.spare.push(run),
            false => st.free.push(run),
        }
    }

    /// Notes that `run` holds memory now (its pages were written).
    pub fn note_filled(&self, run: u32) {
        self.lock().filled[run as usize] = true;
    }

    /// Gives back one slot of a run; the run is free once all are back.
    pub fn release(&self, slot: u32) {
        let (run, _) = self.run_of(slot);
        let mut st = self.lock();
        let held = &mut st.held[run as usize];
        debug_assert!(*held > 0, "region run {run} released once too often");
        *held -= 1;
        if *held == 0 {
            st.retire(run);
            st.spare.push(run);
            st.filled[run as usize] = true;
        }
    }

    /// Gives back every slot of `run` at once (its pages moved into the range whole).
    pub fn release_run(&self, run: u32) {
        let mut st = self.lock();
        debug_assert_eq!(st.held[run as usize] as usize, RUN_PAGES);
        st.retire(run);
        st.held[run as usize] = 0;
        st.filled[run as usize] = false;
        st.free.push(run);
    }

    /// Moves the region mapped whole at `addr` (its pages locked by the caller and done
    /// with) out of the range into a free run with no memory, to be filled again by the
    /// next region instead of a fresh huge page; true if it moved whole. Otherwise moves
    /// nothing back in: whatever moved is dropped, and the caller drops the region.
    pub fn take_back<E: crate::effects::Effects>(&self, fx: &E, addr: usize) -> bool {
        let mut st = self.lock();
        let Some(run) = st.free.pop() else {
            return false;
        };
        let to = self.addr(run);
        // SAFETY: the caller owns the region's pages; nothing is mapped in a run with no
        // memory (we hold the state, and the run is free).
        let moved = unsafe { fx.move_pages(to, addr, RUN_BYTES) };
        if moved == RUN_BYTES {
            st.spare.push(run);
            st.filled[run as usize] = true;
            return true;
        }
        if moved > 0 {
            drop_range(to, moved);
        }
        st.free.push(run);
        false
    }

    /// The runs' memory: first byte and length (to register it with the userfaultfd).
    pub fn range(&self) -> (usize, usize) {
        (self.base, self.runs * RUN_BYTES)
    }

    /// The bytes of `n` consecutive slots of one run from `slot`.
    ///
    /// # Safety
    /// As [`super::Staging::slot_mut`], for each of the slots.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slots_mut(&self, slot: u32, n: usize) -> &mut [u8] {
        let (run, index) = self.run_of(slot);
        assert!(index + n <= RUN_PAGES, "slots past the end of run {run}");
        let i = (slot - self.first_slot) as usize;
        // SAFETY: inside one run of our mapping; exclusive ownership is the caller's.
        unsafe {
            std::slice::from_raw_parts_mut((self.base + i * PAGE_BYTES) as *mut u8, n * PAGE_BYTES)
        }
    }

    /// The bytes of `slot` (one of ours).
    ///
    /// # Safety
    /// As [`super::Staging::slot_mut`]: the caller owns the slot.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_mut(&self, slot: u32) -> &mut [u8] {
        assert!(self.contains(slot), "slot {slot} is not a region run's");
        let i = (slot - self.first_slot) as usize;
        // SAFETY: inside our mapping; exclusive ownership is the caller's obligation.
        unsafe {
            std::slice::from_raw_parts_mut((self.base + i * PAGE_BYTES) as *mut u8, PAGE_BYTES)
        }
    }

    /// Drops the memory of every run when all are free; returns whether it did.
    pub fn release_memory(&self) -> bool {
        let mut st = self.lock();
        if st.free.len() + st.spare.len() != self.runs {
            return false;
        }
        // SAFETY: our own mapping, no run of which is in use (we hold the state).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_madvise,
                self.base,
                self.runs * RUN_BYTES,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            let spare = std::mem::take(&mut st.spare);
            st.free.extend(spare);
            st.filled.iter_mut().for_each(|f| *f = false);
        }
        rc == 0
    }
}

/// Regions behind the newest one moved in that count as passed by the stream: a few, so
/// that a second stream far behind the first still gets its regions.
const PASSED_REGIONS: u64 = 4;

/// Whether the region at page `first` lies at most [`PASSED_REGIONS`] regions behind
/// the one at `newest` (first pages).
fn passed(newest: Option<u64>, first: u64) -> bool {
    newest.is_some_and(|n| first < n && n - first <= PASSED_REGIONS * RUN_PAGES as u64)
}

/// `MADV_DONTNEED` as the raw system call (the preload's `madvise` is the runtime's).
fn drop_range(addr: usize, len: usize) {
    // SAFETY: a range of our own mapping, no page of which anyone uses.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_DONTNEED) };
}

impl Drop for RegionRuns {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.map as *mut libc::c_void, (self.runs + 1) * RUN_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_free_again_once_every_slot_is_back() {
        let r = RegionRuns::new(2, 100).unwrap();
        assert_eq!(r.addr(0) % RUN_BYTES, 0);
        let a = r.alloc(0).unwrap();
        let b = r.alloc(512).unwrap();
        assert!(r.alloc(1024).is_none());
        assert_eq!(r.stale(Duration::ZERO, 0), Some(0));
        assert_eq!(r.stale(Duration::from_secs(60), 0), None);
        let s = r.slot(a, 511);
        assert!(r.contains(s) && !r.contains(99) && !r.contains(100 + 2 * 512));
        assert_eq!(r.run_of(s), (a, 511));
        for i in 0..RUN_PAGES {
            r.release(r.slot(a, i));
        }
        assert_eq!(r.stale(Duration::ZERO, 0), Some(512));
        assert_eq!(r.alloc(0), Some(a));
        assert_ne!(a, b);
    }

    #[test]
    fn a_region_the_stream_has_passed_or_left_is_stale_at_once() {
        let r = RegionRuns::new(3, 0).unwrap();
        let region = |k: u64| k * RUN_PAGES as u64;
        let (long, ahead) = (Duration::from_secs(60), region(2));
        r.alloc(region(10)).unwrap();
        r.alloc(region(12)).unwrap();
        assert_eq!(r.stale(long, ahead), None, "no stream seen yet");
        r.note_moved_in(region(11));
        assert!(r.is_newest(region(11)) && !r.is_newest(region(10)));
        assert!(r.is_passed(region(10)) && r.is_passed(region(7)));
        assert!(!r.is_passed(region(11)) && !r.is_passed(region(12)));
        assert!(
            !r.is_passed(region(6)),
            "far behind: perhaps another stream's"
        );
        assert_eq!(r.stale(long, ahead), Some(region(10)));
        for i in 0..RUN_PAGES {
            r.release(r.slot(0, i));
        }
        // Region 12 is just ahead of the stream: kept; not once the stream has gone back
        // to the start.
        assert_eq!(r.stale(long, ahead), None);
        std::thread::sleep(Duration::from_millis(2));
        r.note_moved_in(region(0));
        assert_eq!(r.stale(long, ahead), Some(region(12)));
        // A region staged after that move is the stream's next.
        for i in 0..RUN_PAGES {
            r.release(r.slot(1, i));
        }
        r.alloc(region(1)).unwrap();
        assert_eq!(r.stale(long, ahead), None);
    }
}
