//! `--cpus LIST`: the CPUs a job runs on (program, its fault handler, local nodes).
//!
//! The launcher restricts itself before it starts anything, so every process and thread
//! of the job inherits the set, as with `taskset`. Why it matters: a fault hands the
//! faulting thread's CPU to the handler thread and back; when the two sit on different
//! vCPUs of a VM each hand-over is an inter-processor interrupt that wakes a halted vCPU,
//! which costs several times the fault itself (docs/performance.md). A single-threaded
//! program with `--cpus 0` keeps every fault on one CPU.

use std::collections::BTreeSet;

/// Parses a CPU list such as `0`, `0-3` or `0,2,4-5`.
pub fn parse(list: &str) -> Result<BTreeSet<usize>, String> {
    let mut cpus = BTreeSet::new();
    for part in list.split(',').map(str::trim) {
        let bad =
            || format!("--cpus {list:?}: {part:?} is not a CPU number or range (e.g. 0, 0-3, 0,2)");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let c: usize = part.parse().map_err(|_| bad())?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(format!("--cpus {list:?}: range {part:?} runs backwards"));
        }
        if hi >= libc::CPU_SETSIZE as usize {
            return Err(format!(
                "--cpus {list:?}: CPU {hi} is beyond what Linux supports"
            ));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// The CPUs this process may run on now.
pub fn allowed() -> std::io::Result<BTreeSet<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid out-pointer of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Restricts this process (and so everything it starts) to `cpus`, which must all be
/// CPUs it may use now.
pub fn restrict_to(cpus: &BTreeSet<usize>) -> Result<(), String> {
    let allowed = allowed().map_err(|e| format!("--cpus: sched_getaffinity: {e}"))?;
    if let Some(c) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!(
            "--cpus: CPU {c} is not available to this job (available: {})",
            describe(&allowed)
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays within CPU_SETSIZE
    // (checked by `parse`).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: as above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(format!(
            "--cpus: sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The variables that tell the program's runtime whether to move the job to its
/// faulting thread's CPU, and which local node processes move with it (`fault::follow`):
/// off with `--cpus` (the user placed the job) or with `DSM_HANDLER_FOLLOW=0` here.
pub fn follow_vars(user_cpus: bool, node_pids: &[u32]) -> Vec<(&'static str, String)> {
    use crate::fault::follow::{NODE_PIDS_ENV, OFF_ENV, PARENT_ENV};
    let off = std::env::var_os(OFF_ENV).is_some_and(|v| v == "0");
    if user_cpus || off {
        return vec![(OFF_ENV, "0".into())];
    }
    let pids: Vec<String> = node_pids.iter().map(u32::to_string).collect();
    vec![
        (PARENT_ENV, std::process::id().to_string()),
        (NODE_PIDS_ENV, pids.join(",")),
    ]
}

/// A set as a compact list, e.g. `0-3,6`.
pub fn describe(cpus: &BTreeSet<usize>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = cpus.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&(hi + 1)) {
            hi = it.next().unwrap_or(hi);
        }
        out.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_and_print_back() {
        let s = parse("0,2-4, 7").unwrap();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(describe(&s), "0,2-4,7");
        assert_eq!(describe(&parse("1").unwrap()), "1");
    }

    #[test]
    fn bad_lists_are_rejected_with_the_culprit() {
        assert!(parse("").unwrap_err().contains("\"\""));
        assert!(parse("a").unwrap_err().contains("\"a\""));
        assert!(parse("3-1").unwrap_err().contains("backwards"));
        assert!(parse("0,-1").is_err());
        assert!(parse("99999").unwrap_err().contains("beyond"));
    }

    #[test]
    fn an_unavailable_cpu_is_refused_before_anything_changes() {
        let before = allowed().unwrap();
        let err = restrict_to(&parse("1000").unwrap()).unwrap_err();
        assert!(err.contains("CPU 1000 is not available"), "{err}");
        assert_eq!(allowed().unwrap(), before);
    }
}
