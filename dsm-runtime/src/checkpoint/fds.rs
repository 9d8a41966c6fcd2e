//! The program's file descriptors in an image: which are the runtime's (skipped: a new
//! runtime opens its own), which can be reopened by path, and which cannot be saved.
//!
//! The runtime's descriptors are those open when it finished starting, before the
//! program's `main` ([`note_runtime_fds`]): its userfaultfd, eventfds, node sockets,
//! shared-memory regions, trace file and control socket. A descriptor the runtime opens
//! later (a reconnection after a node failure) counts as the program's and makes the
//! checkpoint fail clearly.

use super::format::{FD_INHERITED, FD_PATH};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// Most descriptors of the runtime's noted.
const RUNTIME_FDS_MAX: usize = 1024;
/// The runtime's descriptors (-1: none). A fixed table: it is written by a program
/// thread, whose allocations would come from the global heap, and read by the control
/// thread while that heap is out of reach.
static RUNTIME_FDS: [AtomicI32; RUNTIME_FDS_MAX] = [const { AtomicI32::new(-1) }; RUNTIME_FDS_MAX];

/// Notes the descriptors open now, except 0, 1 and 2, as the runtime's. Called once the
/// runtime serves the process, before the program runs.
pub fn note_runtime_fds() {
    note_runtime_fds_except(&[]);
}

/// As [`note_runtime_fds`], leaving out `program`'s (a restored process's own files).
pub fn note_runtime_fds_except(program: &[i32]) {
    let mut fds = open_fds()
        .into_iter()
        .filter(|fd| *fd > 2 && !program.contains(fd));
    for slot in &RUNTIME_FDS {
        slot.store(fds.next().unwrap_or(-1), Ordering::Release);
    }
}

fn is_runtime_fd(fd: i32) -> bool {
    RUNTIME_FDS.iter().any(|s| s.load(Ordering::Acquire) == fd)
}

/// The descriptors open now (not counting the one the listing itself used).
pub fn open_fds() -> Vec<i32> {
    let listed: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return Vec::new(),
    };
    listed
        .into_iter()
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect()
}

/// One descriptor to restore.
pub(crate) struct SavedFd {
    pub(crate) fd: i32,
    pub(crate) kind: u64,
    pub(crate) flags: u64,
    pub(crate) offset: u64,
    pub(crate) path: Vec<u8>,
}

/// The program's descriptors (but the runtime's `others`: the image being written, the
/// control connection), or why one of them cannot be saved.
pub(crate) fn program_fds(others: &[i32]) -> Result<Vec<SavedFd>, String> {
    let mut saved = Vec::new();
    let mut fds = open_fds();
    fds.sort_unstable();
    for fd in fds {
        if is_runtime_fd(fd) || others.contains(&fd) {
            continue;
        }
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue; // the listing's own descriptor, closed by now
        };
        if fd <= 2 {
            saved.push(SavedFd {
                fd,
                kind: FD_INHERITED,
                flags: 0,
                offset: 0,
                path: Vec::new(),
            });
            continue;
        }
        saved.push(by_path(fd, &target)?);
    }
    Ok(saved)
}

/// A regular file or a character device, reopened by path at restart.
fn by_path(fd: i32, target: &std::path::Path) -> Result<SavedFd, String> {
    let text = target.to_string_lossy();
    let refuse = |kind: &str| format!("fd {fd} is a {kind}: the checkpointer cannot save it");
    if !text.starts_with('/') {
        let kind = text.split(':').next().unwrap_or("descriptor");
        let kind = match kind {
            "anon_inode" => text.trim_start_matches("anon_inode:").to_string(),
            k => k.to_string(),
        };
        return Err(refuse(&kind));
    }
    if text.ends_with(" (deleted)") {
        return Err(refuse(&format!("deleted file ({text})")));
    }
    let meta = std::fs::metadata(target).map_err(|e| format!("fd {fd} ({text}): {e}"))?;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(refuse(&format!("{:?} ({text})", kind)));
    }
    // SAFETY: fcntl and lseek on a descriptor of ours, no memory passed.
    let (mut flags, fd_flags, offset) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
            libc::lseek(fd, 0, libc::SEEK_CUR),
        )
    };
    if fd_flags & libc::FD_CLOEXEC != 0 {
        flags |= libc::O_CLOEXEC;
    }
    Ok(SavedFd {
        fd,
        kind: FD_PATH,
        flags: flags as u64,
        offset: offset.max(0) as u64,
        path: text.as_bytes().to_vec(),
    })
}
