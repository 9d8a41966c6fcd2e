//! Finding running jobs: each `dsmrun` that runs a program listens on a Unix socket in a
//! per-user runtime directory, `<pid>.sock`, and a job started with `--name NAME` also
//! leaves `name-NAME` there holding its pid. `dsmrun suspend JOB` and `dsmrun resume JOB`
//! find the job by pid or name and send it one request line; the job answers one line
//! (`ok ...` or `error ...`), as the processes' own control sockets do.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest a job name may be.
const NAME_BYTES_MAX: usize = 64;
/// How long a client waits for a job's answer (a suspend writes the whole cache home).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The per-user directory of running jobs: `$XDG_RUNTIME_DIR/dsmrun` when that is set,
/// else `/tmp/dsmrun-<uid>`; `DSM_JOBS_DIR` overrides both (tests). Created mode 0700;
/// refused if another user owns it or others may write in it.
pub fn jobs_dir() -> Result<PathBuf, String> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = match (
        std::env::var_os("DSM_JOBS_DIR"),
        std::env::var_os("XDG_RUNTIME_DIR"),
    ) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(r)) if Path::new(&r).is_dir() => Path::new(&r).join("dsmrun"),
        _ => std::env::temp_dir().join(format!("dsmrun-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "creating the jobs directory {}: {e}",
                dir.display()
            ))
        }
    }
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "the jobs directory {} belongs to another user or others may write in it; \
             remove it or set DSM_JOBS_DIR",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Checks a `--name`: letters, digits, `.`, `_` and `-`, not only digits (a pid).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "--name {name:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-', \
             not starting with '.'"
        ));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "--name {name}: a name of digits only would be taken for a pid"
        ));
    }
    Ok(())
}

/// A running job's entry in the jobs directory; removed on drop.
#[derive(Debug)]
pub struct Registration {
    socket: PathBuf,
    name_file: Option<PathBuf>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some(f) = &self.name_file {
            // Only if still ours: a later job may have taken the name of a stale entry.
            if std::fs::read_to_string(f).is_ok_and(|t| t.trim() == std::process::id().to_string())
            {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// Registers this `dsmrun` (by pid, and by `name` if given) and returns the listener
/// requests arrive on. A name held by a job that still answers is refused.
pub fn register(name: Option<&str>) -> Result<(Registration, UnixListener), String> {
    let dir = jobs_dir()?;
    let pid = std::process::id();
    let name_file = match name {
        Some(n) => {
            check_name(n)?;
            let f = dir.join(format!("name-{n}"));
            if let Ok(other) = resolve_in(&dir, n) {
                if UnixStream::connect(&other).is_ok() {
                    return Err(format!(
                        "--name {n}: a job of that name is already running ({}); pick \
                         another name",
                        other.display()
                    ));
                }
            }
            std::fs::write(&f, format!("{pid}\n"))
                .map_err(|e| format!("registering --name {n} in {}: {e}", dir.display()))?;
            Some(f)
        }
        None => None,
    };
    let socket = dir.join(format!("{pid}.sock"));
    let _ = std::fs::remove_file(&socket);
    let registration = Registration {
        socket: socket.clone(),
        name_file,
    };
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    Ok((registration, listener))
}

/// The socket of job `job` (a dsmrun pid or a `--name`) in `dir`.
fn resolve_in(dir: &Path, job: &str) -> Result<PathBuf, String> {
    let pid = if !job.is_empty() && job.chars().all(|c| c.is_ascii_digit()) {
        job.to_string()
    } else {
        let f = dir.join(format!("name-{job}"));
        std::fs::read_to_string(&f)
            .map_err(|_| format!("no job named {job:?} (nothing in {})", dir.display()))?
            .trim()
            .to_string()
    };
    Ok(dir.join(format!("{pid}.sock")))
}

/// Sends `request` to job `job` (a dsmrun pid or a `--name`) and returns its answer
/// (the text after `ok`); an `error` answer or an unreachable job is an `Err`.
pub fn request(job: &str, request: &str) -> Result<String, String> {
    let dir = jobs_dir()?;
    let socket = resolve_in(&dir, job)?;
    let line = ask(&socket, request, ANSWER_TIMEOUT).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "no running dsmrun job {job} ({}: {e}); jobs are listed in {}",
            socket.display(),
            dir.display()
        ),
        _ => format!("job {job}: {e}"),
    })?;
    let line = line.as_str();
    if let Some(ok) = line.strip_prefix("ok") {
        return Ok(ok.trim().to_string());
    }
    Err(match line.strip_prefix("error") {
        Some(e) => format!("job {job}: {}", e.trim()),
        None if line.is_empty() => format!("job {job} closed the connection without answering"),
        None => format!("job {job}: unexpected answer {line:?}"),
    })
}

/// Sends one request line to a Unix socket and returns the answer line, trimmed.
pub(crate) fn ask(socket: &Path, request: &str, timeout: Duration) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    (&stream).write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_be_pids_or_paths_are_refused() {
        assert!(check_name("velvet-1.run_2").is_ok());
        for bad in ["", "1234", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_unknown_job_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("dsm-jobs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = resolve_in(&dir, "nosuchjob").unwrap_err();
        assert!(e.contains("no job named \"nosuchjob\""), "{e}");
        assert_eq!(resolve_in(&dir, "42").unwrap(), dir.join("42.sock"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
