//! `dsmrun --progress`: a live status line on a terminal, cleared before the summary, and
//! nothing of it in a file.

mod common;

use common::*;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// Reads and writes a page of memory for `secs` seconds, so that the job faults all along.
const BUSY_PYTHON: &str = "
import sys, time
b = bytearray(16 << 20)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for i in range(0, len(b), 4096):
        b[i] = (b[i] + 1) & 255
print('done')
";

/// A pseudo-terminal of 120x30: (master, slave).
fn pty() -> (File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to locals; no name buffer, default termios, a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these two descriptors, owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn python() -> &'static str {
    let p = "/usr/bin/python3";
    assert!(
        std::path::Path::new(p).exists(),
        "{p} is missing: apt-get install python3"
    );
    p
}

fn busy_job(stats: &std::path::Path) -> Command {
    let mut c = dsmrun_cmd(2, 2 << 20, stats);
    c.args(["--progress", "--", python(), "-c", BUSY_PYTHON, "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// The status lines drawn, as a terminal would show each redraw (escape sequences and
/// carriage returns split them).
fn status_lines(raw: &str) -> Vec<String> {
    raw.split(['\r', '\n'])
        .map(strip_escapes)
        .filter(|l| l.contains("faults/s"))
        .collect()
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_status_line_updates_on_a_terminal_and_is_cleared_before_the_summary() {
    let _turn = heavy();
    let dir = scratch("progress-tty");
    let (mut master, slave) = pty();
    let mut child = busy_job(&dir.join("stats.json"))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("starting dsmrun");
    // Our copy of the slave went into the Command, dropped with it: the master reads
    // EOF (EIO) once dsmrun and its children have closed theirs.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait().expect("waiting for dsmrun");
    let raw = reader.join().expect("reader");
    assert!(status.success(), "dsmrun failed: {raw:?}");
    let lines = status_lines(&raw);
    let mut distinct = lines.clone();
    distinct.dedup();
    // "dsmrun: <spinner> <elapsed> <figures>": the clock and the figures both move.
    let field = |from: usize, to: usize| -> Vec<String> {
        let mut v: Vec<String> = distinct
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .map(|w| w.get(from..to.min(w.len())).unwrap_or_default().join(" "))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (clock, figures) = (field(2, 3), field(3, usize::MAX));
    assert!(
        clock.len() >= 3 && figures.len() >= 2,
        "the status line should be redrawn with a running clock and new figures while \
         the 4 s job runs: clock {clock:?}, figures {figures:#?}\nraw: {raw:?}"
    );
    for l in &distinct {
        for part in [
            "dsmrun:", "faults/s", "remote", "MiB/s", "hit rate", "stalled",
        ] {
            assert!(l.contains(part), "{part:?} missing from the status {l:?}");
        }
    }
    // Cleared at exit: the summary starts a clean line, with no status text before it
    // on the terminal.
    let summary_at = raw.find("process(es) on pooled memory").expect("a summary");
    let last_status = raw.rfind("faults/s").expect("a status line");
    assert!(
        last_status < summary_at,
        "the status after the summary: {raw:?}"
    );
    let between = &raw[last_status..summary_at];
    assert!(
        between.contains("\x1b[2K") || between.contains("\x1b[K"),
        "the status line is erased before the summary: {between:?}"
    );
    let summary_line = raw[..summary_at]
        .rsplit(['\r', '\n'])
        .next()
        .map(strip_escapes)
        .unwrap_or_default();
    assert_eq!(summary_line, "dsmrun: 1 ", "{raw:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_status_line_goes_into_a_file() {
    let _turn = heavy();
    let dir = scratch("progress-file");
    let log = dir.join("stderr.txt");
    let status = busy_job(&dir.join("stats.json"))
        .stderr(File::create(&log).unwrap())
        .status()
        .expect("running dsmrun");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("process(es) on pooled memory"), "{text}");
    assert!(
        !text.contains("faults/s") && !text.contains('\r') && !text.contains('\x1b'),
        "a file gets no status line, even with --progress: {text:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
