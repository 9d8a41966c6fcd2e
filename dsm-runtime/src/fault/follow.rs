//! Fault handling on the faulting thread's CPU, without `--cpus`.
//!
//! A fault hands the CPU from the faulting thread to the handler thread and back. When
//! the two sit on different vCPUs each hand-over is an inter-processor interrupt that
//! wakes a halted vCPU: about 65 us a fault against 13 us on one CPU on this VM
//! (docs/performance.md). `--cpus 0` fixes that for a single-threaded program, but a new
//! user does not know to pass it. So a handler thread watches who faults: when one
//! thread has made every fault of a window of [`WINDOW_FAULTS`], the handler moves itself
//! to the CPU that thread last ran on (read from `/proc/self/task/TID/stat`), and
//! when several threads fault it lets the scheduler place it again. Only the handler
//! moves; the program's threads keep whatever affinity they had.

use super::uffd::Fault;
use std::io::Read;

/// Faults in a window: after each, the handler looks where the faulting thread runs.
pub const WINDOW_FAULTS: u32 = 256;

/// One handler thread's view of who faults.
#[derive(Debug)]
pub struct Follow {
    enabled: bool,
    /// Thread of the last fault, and how many faults in a row it made.
    tid: u32,
    in_a_row: u32,
    seen: u32,
    /// CPU the handler is pinned to, if any.
    pinned: Option<usize>,
    /// The CPUs the process may use (what to go back to when unpinned).
    allowed: Vec<usize>,
}

impl Follow {
    /// Follows only if `enabled`, the process may run on more than one CPU, and the
    /// environment does not say `DSM_HANDLER_FOLLOW=0` (to measure against).
    pub fn new(enabled: bool) -> Follow {
        let off = std::env::var_os("DSM_HANDLER_FOLLOW").is_some_and(|v| v == "0");
        let allowed: Vec<usize> = crate::launcher::cpus::allowed()
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        Follow {
            enabled: enabled && !off && allowed.len() > 1,
            tid: 0,
            in_a_row: 0,
            seen: 0,
            pinned: None,
            allowed,
        }
    }

    /// Notes a round's faults; at the end of each window, moves the handler thread.
    pub fn note(&mut self, faults: &[Fault]) {
        if !self.enabled {
            return;
        }
        for f in faults {
            if f.tid == self.tid {
                self.in_a_row += 1;
            } else {
                self.tid = f.tid;
                self.in_a_row = 1;
            }
        }
        self.seen += faults.len() as u32;
        if self.seen < WINDOW_FAULTS {
            return;
        }
        self.seen = 0;
        let want = if self.in_a_row >= WINDOW_FAULTS {
            cpu_of(self.tid)
        } else {
            None
        };
        if want != self.pinned {
            match want {
                Some(cpu) => set_affinity(&[cpu]),
                None => set_affinity(&self.allowed),
            }
            self.pinned = want;
        }
    }
}

/// The CPU thread `tid` of this process last ran on (field 39 of its `stat`), read
/// without allocating.
fn cpu_of(tid: u32) -> Option<usize> {
    let mut path = [0u8; 48];
    let mut w = &mut path[..];
    std::io::Write::write_fmt(&mut w, format_args!("/proc/self/task/{tid}/stat")).ok()?;
    let len = path.iter().position(|&b| b == 0)?;
    let path = std::str::from_utf8(&path[..len]).ok()?;
    let mut buf = [0u8; 1024];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    parse_cpu(&buf[..n])
}

/// Field 39 (`processor`) of a `stat` line; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_cpu(stat: &[u8]) -> Option<usize> {
    let after = stat.iter().rposition(|&b| b == b')')? + 1;
    let text = std::str::from_utf8(&stat[after..]).ok()?;
    text.split_ascii_whitespace().nth(36)?.parse().ok()
}

/// Restricts the calling thread to `cpus`.
fn set_affinity(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (CPUs come from the
    // kernel's own list, below CPU_SETSIZE); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        // A failure leaves the thread where it was: only slower.
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_field_is_found_past_a_name_with_spaces() {
        let mut line = b"42 (a b) c) S".to_vec();
        for i in 4..=38 {
            line.extend_from_slice(format!(" {i}").as_bytes());
        }
        line.extend_from_slice(b" 7 0 0");
        assert_eq!(parse_cpu(&line), Some(7));
        assert_eq!(parse_cpu(b"1 (x) S 2"), None);
    }

    #[test]
    fn this_threads_cpu_is_one_it_may_run_on() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let cpu = cpu_of(tid).expect("own stat readable");
        assert!(crate::launcher::cpus::allowed().unwrap().contains(&cpu));
    }
}
