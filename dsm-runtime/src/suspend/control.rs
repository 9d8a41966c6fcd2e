//! A process's control socket: `dsmrun` asks the runtime inside the program to suspend
//! (close the fault path and empty the cache) or resume, one line per request.
//!
//! Protocol (text, one request per connection): the client writes `suspend`, `quiesce`,
//! `resume`, `status` or `checkpoint PATH` and a newline; the runtime answers one line
//! starting with `ok` or `error`. `ok suspended dropped=N written=M left=L ms=T` says what
//! emptying the cache did. `quiesce` closes the fault path and writes the dirty pages
//! home as `suspend` does, but keeps the cache (clean): `ok quiesced written=M left=L
//! ms=T`, `left` counting dirty pages that could not be written home. A suspend or
//! quiesce that fails reopens the fault path: the process runs on as before.
//! `checkpoint PATH` (an absolute path) is valid only while the process is suspended or
//! quiesced and not stopped (SIGCONT it after `dsmrun suspend`): it writes the process
//! image there (see [`crate::checkpoint`]) and answers `ok checkpoint bytes=N threads=T
//! ms=M`; on error the process stays suspended and intact.

use super::{Release, Released};
use crate::runtime::{Core, RuntimeError};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// The directory of a job's statistics directory that holds its processes' control
/// sockets (`<pid>.sock`); `dsmrun` creates it, readable by its user only.
pub const CTL_DIR: &str = "ctl";

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line a client may send (`checkpoint` and a path).
const REQUEST_BYTES_MAX: u64 = 4200;

/// Binds the control socket at `path` (replacing a stale one).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, RuntimeError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| RuntimeError::Os {
        what: "binding the control socket",
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| RuntimeError::Os {
            what: "configuring the control socket",
            source,
        })?;
    Ok(listener)
}

/// Serves requests until the runtime stops. Runs on its own runtime thread.
pub(crate) fn serve(core: &Core, listener: UnixListener) -> Result<(), RuntimeError> {
    while !core.stopping() {
        if !wait_readable(listener.as_raw_fd(), core.stop_fd()) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => answer(core, stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(RuntimeError::Os {
                    what: "accepting on the control socket",
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Waits until `fd` is readable (true) or `stop_fd` is (false).
fn wait_readable(fd: i32, stop_fd: i32) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` lives on our stack for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    rc > 0 && fds[0].revents != 0 && fds[1].revents == 0
}

/// Reads one request and writes its answer; a client that misbehaves gets an error
/// line (or nothing, if it is gone): the runtime carries on either way.
fn answer(core: &Core, stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new(Read::take(&stream, REQUEST_BYTES_MAX)).read_line(&mut line);
    let reply = match read {
        Ok(_) => handle(core, line.trim(), stream.as_raw_fd()),
        Err(e) => format!("error reading the request: {e}"),
    };
    let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
}

/// Answers `request`, which came on the connection `client` (a descriptor of the
/// runtime's, which a checkpoint must not take for the program's).
fn handle(core: &Core, request: &str, client: i32) -> String {
    match request {
        "suspend" => match suspend(core, Release::Drop) {
            Ok(r) => format!(
                "ok suspended dropped={} written={} left={} ms={}",
                r.pages_dropped, r.pages_written, r.pages_left, r.elapsed_ms
            ),
            Err(e) => format!("error {e}"),
        },
        "quiesce" => match suspend(core, Release::Keep) {
            Ok(r) => format!(
                "ok quiesced written={} left={} ms={}",
                r.pages_written, r.pages_left, r.elapsed_ms
            ),
            Err(e) => format!("error {e}"),
        },
        "resume" => {
            if core.gate.open() {
                "ok resumed".into()
            } else {
                "ok running (was not suspended)".into()
            }
        }
        "status" => {
            if core.gate.is_closed() {
                "ok suspended".into()
            } else {
                "ok running".into()
            }
        }
        other if other.starts_with("checkpoint ") => {
            let path = std::path::Path::new(other["checkpoint ".len()..].trim());
            match crate::checkpoint::take(core, path, client) {
                Ok(t) => format!(
                    "ok checkpoint bytes={} threads={} ms={}",
                    t.bytes, t.threads, t.ms
                ),
                Err(e) => format!("error {e}"),
            }
        }
        other => format!(
            "error unknown request {other:?}: use suspend, quiesce, resume, status or \
             checkpoint PATH"
        ),
    }
}

/// Closes the fault path and has the reclaimer write the dirty pages home and drop or
/// keep the cache (`release`); on failure the fault path opens again, so that the
/// process runs on.
fn suspend(core: &Core, release: Release) -> Result<Released, String> {
    let within = Duration::from_millis(core.config.node_timeout_ms.saturating_mul(4))
        .max(Duration::from_secs(60));
    let outcome = core
        .gate
        .close_and_release(within, release, || core.kick_reclaim());
    if outcome.is_err() {
        core.gate.open();
    }
    outcome
}
