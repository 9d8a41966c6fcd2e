//! The job on the faulting thread's CPU, without `--cpus`.
//!
//! A fault hands the CPU from the faulting thread to the handler thread and back, and a
//! fetch goes on to a node process and back. When these sit on different vCPUs each
//! hand-over is an inter-processor interrupt that wakes a halted vCPU: about 45-100 us a
//! fault against 12 us on one CPU on this VM (docs/performance.md). `--cpus 0` fixes that
//! for a single-threaded program, but a new user does not know to pass it. So the
//! handler watches who faults: when one thread has made every fault of a window of
//! [`WINDOW_FAULTS`], it pins that thread, the runtime's own threads and the
//! local memory nodes' threads to the CPU that thread last ran on (what `--cpus` with
//! that one CPU would do), and lets them all go again when several threads fault (and
//! then waits for [`MIXED_HOLD_WINDOWS`] windows from one thread before it pins), when
//! no fault comes for [`IDLE_UNPIN_MS`], or when the program thread waits for its CPU
//! longer than it runs (the CPU is taken by something else: the scheduler then places
//! it freely for [`CROWDED_BACKOFF_WINDOWS`] windows, and the next one follows it). Threads the pinned thread starts inherit
//! its one CPU; each window and each release gives them back the CPUs they had. A thread
//! the program itself confined to that one CPU is left so.
//!
//! Only with one handler thread: with several, each handler moves only itself (faults
//! are split between them, so no one window sees the whole stream).

use super::affinity::{self, Task};
use super::uffd::Fault;

/// Faults in a window: after each, the handler looks where the faulting thread runs.
pub const WINDOW_FAULTS: u32 = 256;
/// After a window with faults from several threads, one thread must make this many
/// windows of faults in a row before it is followed again: a thread of a multi-threaded
/// program that the scheduler left alone for a moment is not followed.
pub const MIXED_HOLD_WINDOWS: u32 = 32;
/// While pinned, a handler that sees no fault for this long lets everything go.
pub const IDLE_UNPIN_MS: u64 = 200;
/// Windows left to the scheduler after the followed thread was found crowded, before it
/// is followed again (wherever the scheduler put it by then).
pub const CROWDED_BACKOFF_WINDOWS: u32 = 8;

/// Where the launcher says the job's local nodes are: `DSM_FOLLOW_NODE_PIDS` (their
/// pids, comma-separated), honoured only in the process `DSM_FOLLOW_PARENT` started (the
/// program itself, not its children, which would fight over the nodes).
pub const NODE_PIDS_ENV: &str = "DSM_FOLLOW_NODE_PIDS";
pub const PARENT_ENV: &str = "DSM_FOLLOW_PARENT";
/// `DSM_HANDLER_FOLLOW=0` turns following off (the launcher sets it with `--cpus`).
pub const OFF_ENV: &str = "DSM_HANDLER_FOLLOW";

/// What moves with the faulting thread.
#[derive(Debug, PartialEq)]
enum Reach {
    /// Only this handler thread.
    Handler,
    /// The faulting thread, every runtime thread and these node processes.
    Job { node_pids: Vec<u32> },
}

/// One handler thread's view of who faults.
#[derive(Debug)]
pub struct Follow {
    enabled: bool,
    reach: Reach,
    /// Thread of the last fault, and how many faults in a row it made.
    tid: u32,
    in_a_row: u32,
    seen: u32,
    /// Faults in a row from one thread that make it followed.
    needed: u32,
    /// Times the faulting thread changed in this window.
    switches: u32,
    /// CPU everything is pinned to, if any, and the program thread pinned with it.
    pinned: Option<usize>,
    followed: u32,
    /// The followed thread was on that one CPU already, by the program's own choice: it
    /// (and what it starts) is left so at release.
    kept: bool,
    /// The followed thread's run and run-queue wait times, and the run time of the
    /// threads pinned with it (the runtime's, the nodes'), at the last window (ns).
    sched: (u64, u64, u64),
    /// Windows to wait before pinning again (after a crowded window).
    backoff: u32,
    /// The CPUs the process may use (what to go back to when unpinned).
    allowed: Vec<usize>,
}

impl Follow {
    /// Follows only if `enabled`, the process may run on more than one CPU, and the
    /// environment does not say `DSM_HANDLER_FOLLOW=0`; moves the whole job with one
    /// handler thread (`handlers == 1`), only the handler otherwise.
    pub fn new(enabled: bool, handlers: usize) -> Follow {
        let off = std::env::var_os(OFF_ENV).is_some_and(|v| v == "0");
        let allowed: Vec<usize> = crate::launcher::cpus::allowed()
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        let reach = if handlers == 1 {
            Reach::Job {
                node_pids: node_pids_from_env(),
            }
        } else {
            Reach::Handler
        };
        Follow {
            enabled: enabled && !off && allowed.len() > 1,
            reach,
            tid: 0,
            in_a_row: 0,
            seen: 0,
            needed: WINDOW_FAULTS,
            switches: 0,
            pinned: None,
            followed: 0,
            kept: false,
            sched: (0, 0, 0),
            backoff: 0,
            allowed,
        }
    }

    /// Whether something is pinned (the handler then wakes up to notice idleness).
    pub fn pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// Notes a round's faults; at the end of each window, moves what follows (if
    /// enabled) and returns whether several threads faulted in that window.
    pub fn note(&mut self, faults: &[Fault]) -> Option<bool> {
        for f in faults {
            if f.tid == self.tid {
                self.in_a_row = self.in_a_row.saturating_add(1);
            } else {
                self.tid = f.tid;
                self.in_a_row = 1;
                self.switches += 1;
            }
        }
        self.seen += faults.len() as u32;
        if self.seen < WINDOW_FAULTS {
            return None;
        }
        self.seen = 0;
        let switches = std::mem::take(&mut self.switches);
        if !self.enabled {
            return Some(switches > 1);
        }
        let follow;
        (self.needed, follow) = judge_window(switches, self.in_a_row, self.needed);
        let want = if follow {
            affinity::cpu_of(self.tid)
        } else {
            None
        };
        self.window_ends(want);
        Some(switches > 1)
    }

    /// No fault for [`IDLE_UNPIN_MS`]: everything goes back to the scheduler.
    pub fn idle(&mut self) {
        if let Some(cpu) = self.pinned.take() {
            self.release(cpu);
        }
    }

    fn window_ends(&mut self, want: Option<usize>) {
        if self.backoff > 0 {
            self.backoff -= 1;
            return;
        }
        match (self.pinned, want) {
            (Some(old), Some(cpu)) if old == cpu && self.followed == self.tid => {
                if self.crowded() {
                    self.idle();
                    self.backoff = CROWDED_BACKOFF_WINDOWS;
                } else {
                    self.release_strays(cpu);
                }
            }
            (_, Some(cpu)) => {
                self.idle();
                self.pin(cpu);
            }
            (Some(_), None) => self.idle(),
            (None, None) => {}
        }
    }

    /// Pins what follows to `cpu`.
    fn pin(&mut self, cpu: usize) {
        self.pinned = Some(cpu);
        self.followed = self.tid;
        let Reach::Job { node_pids } = &self.reach else {
            affinity::set(0, &[cpu]);
            return;
        };
        self.kept = affinity::only_on(self.tid as i32, cpu);
        for t in affinity::tasks(None) {
            if is_runtime(&t) || t.tid as u32 == self.tid {
                affinity::set(t.tid, &[cpu]);
            }
        }
        for &pid in node_pids {
            for t in affinity::tasks(Some(pid)) {
                affinity::set(t.tid, &[cpu]);
            }
        }
        self.sched = self.clocks().unwrap_or_default();
    }

    /// The followed thread's run and run-queue wait times and the run time of the threads
    /// pinned with it (ns).
    fn clocks(&self) -> Option<(u64, u64, u64)> {
        let (ran, waited) = sched_times(None, self.followed)?;
        let ours = affinity::tasks(None)
            .into_iter()
            .filter(is_runtime)
            .map(|t| (None, t.tid))
            .chain(self.node_tasks())
            .filter_map(|(pid, tid)| sched_times(pid, tid as u32))
            .map(|(r, _)| r)
            .sum();
        Some((ran, waited, ours))
    }

    /// The threads of the local nodes, as (pid, tid).
    fn node_tasks(&self) -> Vec<(Option<u32>, i32)> {
        let Reach::Job { node_pids } = &self.reach else {
            return Vec::new();
        };
        node_pids
            .iter()
            .flat_map(|&p| {
                affinity::tasks(Some(p))
                    .into_iter()
                    .map(move |t| (Some(p), t.tid))
            })
            .collect()
    }

    /// Gives every thread pinned to `cpu` (ours, the nodes') the allowed CPUs back.
    fn release(&self, cpu: usize) {
        let Reach::Job { node_pids } = &self.reach else {
            affinity::set(0, &self.allowed);
            return;
        };
        let nodes = node_pids.iter().flat_map(|&p| affinity::tasks(Some(p)));
        for t in affinity::tasks(None).into_iter().chain(nodes) {
            let kept = self.kept && t.tid as u32 == self.followed;
            if !kept && affinity::only_on(t.tid, cpu) {
                affinity::set(t.tid, &self.allowed);
            }
        }
    }

    /// Threads the followed one started since the last window inherited its one CPU:
    /// they get the allowed CPUs back.
    fn release_strays(&self, cpu: usize) {
        if self.reach == Reach::Handler || self.kept {
            return;
        }
        for t in affinity::tasks(None) {
            let ours = is_runtime(&t) || t.tid as u32 == self.followed;
            if !ours && affinity::only_on(t.tid, cpu) {
                affinity::set(t.tid, &self.allowed);
            }
        }
    }

    /// Whether the followed thread waited for its CPU, since the last window, longer than
    /// it and the threads pinned with it ran: something else wants that CPU, and the
    /// scheduler should place it again. The threads pinned with it do not count as
    /// crowding: each fault wakes the handler, then the faulting thread, so on one CPU the
    /// faulting thread always waits about as long as the handler ran (counting that
    /// released the pin every few windows and left random access at half the speed of
    /// `--cpus 0`).
    fn crowded(&mut self) -> bool {
        if self.reach == Reach::Handler {
            return false;
        }
        let Some(now) = self.clocks() else {
            return false;
        };
        let delta = |a: u64, b: u64| a - b.min(a);
        let ran = delta(now.0, self.sched.0) + delta(now.2, self.sched.2);
        let waited = delta(now.1, self.sched.1);
        self.sched = now;
        waited > ran
    }
}

/// At the end of a window in which the faulting thread changed `switches` times and the
/// last one made `in_a_row` faults in a row: the faults in a row needed from now on, and
/// whether to follow that thread now.
///
/// Several changes mean several threads faulting at once: following waits for
/// [`MIXED_HOLD_WINDOWS`] windows of one thread. One change is a hand-over (a main thread
/// that built the data starting the worker that uses it, then waiting): it sets no hold,
/// so the new thread is followed after one window of its own. Counting a hand-over as
/// mixed left a one-thread random-access run unpinned for its first 8,192 faults, at 1.4-
/// 1.7x the time per access of `--cpus 0`.
fn judge_window(switches: u32, in_a_row: u32, needed: u32) -> (u32, bool) {
    let needed = if switches > 1 {
        WINDOW_FAULTS * MIXED_HOLD_WINDOWS
    } else {
        needed
    };
    if in_a_row >= needed {
        (WINDOW_FAULTS, true)
    } else {
        (needed, false)
    }
}

/// A runtime thread (`runtime::spawn_internal` registers each; a program may name its
/// own threads `dsm-...` too, so names do not tell).
fn is_runtime(t: &Task) -> bool {
    crate::checkpoint::is_internal(t.tid)
}

/// The local nodes' pids, if the launcher started this very process.
fn node_pids_from_env() -> Vec<u32> {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    let ours = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == parent);
    if !ours {
        return Vec::new();
    }
    parse_pids(&std::env::var(NODE_PIDS_ENV).unwrap_or_default())
}

fn parse_pids(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Time thread `tid` of process `pid` (`None`: this one) has run and waited on a run
/// queue (ns), from `/proc/PID/task/TID/schedstat`.
fn sched_times(pid: Option<u32>, tid: u32) -> Option<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/task/{tid}/schedstat"),
        None => format!("/proc/self/task/{tid}/schedstat"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_followed_after_one_window_but_interleaving_is_held() {
        let w = WINDOW_FAULTS;
        let hold = WINDOW_FAULTS * MIXED_HOLD_WINDOWS;
        // One thread all along: followed.
        assert_eq!(judge_window(0, 5 * w, w), (w, true));
        // A hand-over mid-window: not yet, no hold; the next window of the new one is.
        assert_eq!(judge_window(1, w / 2, w), (w, false));
        assert_eq!(judge_window(0, w / 2 + w, w), (w, true));
        // Threads taking turns within a window: held until one makes `hold` in a row.
        assert_eq!(judge_window(2, w / 4, w), (hold, false));
        assert_eq!(judge_window(0, w / 4 + w, hold), (hold, false));
        assert_eq!(judge_window(0, hold, hold), (w, true));
        // A hand-over during a hold does not lift it.
        assert_eq!(judge_window(1, w / 2, hold), (hold, false));
    }

    #[test]
    fn node_pids_parse_and_skip_junk() {
        assert_eq!(parse_pids("12,34, 56"), [12, 34, 56]);
        assert_eq!(parse_pids(""), Vec::<u32>::new());
        assert_eq!(parse_pids("7,x"), [7]);
    }

    #[test]
    fn this_threads_sched_times_are_read() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        // The kernel adds a thread's run time when it leaves the CPU: work, then sleep.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        let (ran, _) = sched_times(None, tid).expect("schedstat readable");
        assert!(ran > 0);
    }
}
