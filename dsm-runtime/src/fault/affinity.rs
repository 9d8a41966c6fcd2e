//! CPU affinity of single threads, ours or another process's, through `/proc` and
//! `sched_{get,set}affinity(tid)`: the steps `follow` is made of.
//!
//! Every call here may fail (a thread that exited, a node that died); a failure leaves
//! that thread where it was, which is only slower, so the errors are dropped.

use std::io::Read;

/// A thread of this process or of a node.
#[derive(Debug)]
pub struct Task {
    pub tid: i32,
}

/// The threads of process `pid` (`None`: this process).
pub fn tasks(pid: Option<u32>) -> Vec<Task> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_string(),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(|tid| Task { tid })
        .collect()
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub fn set(tid: i32, cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (CPUs come from the
    // kernel's own lists, below CPU_SETSIZE); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Whether thread `tid` may run on `cpu` only.
pub fn only_on(tid: i32, cpu: usize) -> bool {
    // SAFETY: an all-zero cpu_set_t is the empty set; `set` is a valid out-pointer of
    // the size passed; CPU_COUNT and CPU_ISSET read it within CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return false;
        }
        cpu < libc::CPU_SETSIZE as usize && libc::CPU_COUNT(&set) == 1 && libc::CPU_ISSET(cpu, &set)
    }
}

/// The CPU thread `tid` of this process last ran on (field 39 of its `stat`), read
/// without allocating.
pub fn cpu_of(tid: u32) -> Option<usize> {
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

    #[test]
    fn a_thread_pinned_and_released_is_seen_so() {
        let allowed: Vec<usize> = crate::launcher::cpus::allowed()
            .unwrap()
            .into_iter()
            .collect();
        let n = allowed.len();
        let me = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            set(tid, &allowed[..1]);
            let pinned = only_on(tid, allowed[0]);
            set(tid, &allowed);
            (pinned, only_on(tid, allowed[0]), tid)
        });
        let (pinned, after, tid) = me.join().unwrap();
        assert!(pinned);
        assert_eq!(after, n == 1);
        assert!(
            tasks(None).iter().all(|t| t.tid != tid),
            "exited thread listed"
        );
        assert!(tasks(None)
            .iter()
            .any(|t| t.tid == std::process::id() as i32));
    }
}
