//! Writing the process image (layout in [`super::format`]).
//!
//! Everything that allocates (the descriptor list, signal dispositions, buffers) is done
//! first; the memory is then read and written without a single allocation, so that the
//! saved libc heap (brk and malloc's own mappings) is the one the process has once the
//! image is complete: an allocation made halfway would leave a heap whose metadata does
//! not match its saved pages.

use super::fds::{program_fds, SavedFd};
use super::format::*;
use super::freeze::{raw_action, RawAction};
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

const PAGE: u64 = 4096;
const MAPS_TEXT_BYTES: usize = 8 << 20;
const MAPS_MAX: usize = 32 << 10;
const RUNS_MAX: usize = 256 << 10;
const BOUNCE_BYTES: usize = 1 << 20;

/// What the image must say about the process besides its memory.
pub(crate) struct Process {
    /// The restored process's entry point (see `set_restart_hook`).
    pub(crate) hook: u64,
    /// The runtime's slot of the global range: not saved, it is on the nodes.
    pub(crate) slot: Range<u64>,
    pub(crate) main_tid: i32,
    pub(crate) main_fs_base: u64,
    /// The program's own disposition of the stop signal.
    pub(crate) stop_signal: (libc::c_int, RawAction),
    /// The control connection the request came on (the runtime's, not saved).
    pub(crate) client: i32,
}

/// How much was written.
pub(crate) struct Written {
    pub(crate) bytes: u64,
}

struct Mapping {
    start: u64,
    end: u64,
    prot: i32,
    shared: bool,
    offset: u64,
    inode: u64,
    path: Range<usize>,
}

struct Run {
    addr: u64,
    bytes: u64,
    offset: u64,
    hash: u64,
}

/// Buffers reserved before the memory is read, so that reading allocates nothing.
struct Scratch {
    maps_text: Vec<u8>,
    maps: Vec<Mapping>,
    runs: Vec<Run>,
    /// (first run, runs, kind) of each saved mapping, parallel to `saved`.
    saved: Vec<(usize, usize, u64, usize)>,
    meta: Vec<u64>,
    bounce: Vec<u8>,
}

/// Writes the image of this process to `path` (through `path.tmp`, fsync, rename).
pub(crate) fn write_image(path: &Path, p: &Process) -> Result<Written, String> {
    let tmp = {
        let mut t = path.as_os_str().to_owned();
        t.push(".tmp");
        std::path::PathBuf::from(t)
    };
    let file = File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let result = write_to(&file, p).and_then(|w| {
        file.sync_all()
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
        Ok(w)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(file: &File, p: &Process) -> Result<Written, String> {
    let fds = program_fds(&[std::os::fd::AsRawFd::as_raw_fd(file), p.client])?;
    let signals = signal_actions(p.stop_signal);
    let mm = mm_fields()?;
    let auxv = auxv()?;
    let file_sizes = mapped_file_sizes()?;
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("opening pagemap: {e}"))?;
    let mut maps_file = File::open("/proc/self/maps").map_err(|e| format!("opening maps: {e}"))?;
    let mut s = Scratch {
        maps_text: Vec::with_capacity(MAPS_TEXT_BYTES),
        maps: Vec::with_capacity(MAPS_MAX),
        runs: Vec::with_capacity(RUNS_MAX),
        saved: Vec::with_capacity(MAPS_MAX),
        meta: Vec::with_capacity(64 + auxv.len() + 4 * SIGNALS + 5 * MAPS_MAX + 4 * RUNS_MAX),
        bounce: vec![0u8; BOUNCE_BYTES],
    };
    s.meta
        .reserve(fds.iter().map(|f| 5 + f.path.len() / 8 + 1).sum());
    // From here on: no allocation until the data is written.
    read_all(&mut maps_file, &mut s.maps_text)?;
    parse_maps(&mut s)?;
    let mut data_end = HEADER_BYTES;
    let (mut vdso, mut vvar) = ([0u64; 2], [0u64; 2]);
    for i in 0..s.maps.len() {
        let m = &s.maps[i];
        let name = &s.maps_text[m.path.clone()];
        match name {
            b"[vdso]" => vdso = [m.start, m.end],
            b"[vvar]" => vvar = [m.start, m.end],
            // Newer kernels add `[vvar_vclock]` after `[vvar]`: the kernel's too.
            b"[vsyscall]" => {}
            _ if name.starts_with(b"[vvar") => {}
            _ if skipped(m, name, p)? => {}
            _ => {
                let kind = if name == b"[stack]" {
                    KIND_STACK
                } else {
                    KIND_PLAIN
                };
                let first = s.runs.len();
                let limit = file_limit(m, &file_sizes);
                save_mapping(i, limit, &mut s, &pagemap, file, &mut data_end)?;
                let runs = s.runs.len() - first;
                within(&s.saved, MAPS_MAX, "mappings")?;
                s.saved.push((first, runs, kind, i));
            }
        }
    }
    let meta_offset = data_end.next_multiple_of(PAGE);
    build_meta(&mut s, p, &mm, &auxv, vdso, vvar, &signals, &fds)?;
    let meta_bytes: Vec<u8> = s.meta.iter().flat_map(|w| w.to_le_bytes()).collect();
    let write = |bytes: &[u8], at: u64| {
        file.write_all_at(bytes, at)
            .map_err(|e| format!("writing the image: {e}"))
    };
    write(&meta_bytes, meta_offset)?;
    let mut header = [
        MAGIC,
        VERSION,
        meta_offset,
        meta_bytes.len() as u64,
        hash_words(&s.meta),
        0,
    ];
    header[5] = hash_words(&header[..5]);
    let header_bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(&header_bytes, 0)?;
    Ok(Written {
        bytes: data_end - HEADER_BYTES + meta_bytes.len() as u64 + header_bytes.len() as u64,
    })
}

fn within<T>(v: &[T], max: usize, what: &str) -> Result<(), String> {
    if v.len() >= max {
        return Err(format!(
            "the process has more {what} than the checkpointer can record ({max})"
        ));
    }
    Ok(())
}

/// Reads `f` into `buf` without growing it.
fn read_all(f: &mut File, buf: &mut Vec<u8>) -> Result<(), String> {
    loop {
        let len = buf.len();
        let spare = buf.capacity() - len;
        if spare == 0 {
            return Err("/proc/self/maps is too long for the checkpointer".into());
        }
        buf.resize(buf.capacity(), 0);
        let n = f
            .read(&mut buf[len..])
            .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
        buf.truncate(len + n);
        if n == 0 {
            return Ok(());
        }
    }
}

/// Parses `/proc/self/maps` lines: `start-end perms offset dev inode path`.
fn parse_maps(s: &mut Scratch) -> Result<(), String> {
    let text = &s.maps_text;
    let mut at = 0;
    while at < text.len() {
        let end = text[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(text.len(), |e| at + e);
        let line = &text[at..end];
        let mut fields = line.split(|b| *b == b' ').filter(|f| !f.is_empty());
        let bad = || "cannot parse /proc/self/maps".to_string();
        let range = fields.next().ok_or_else(bad)?;
        let perms = fields.next().ok_or_else(bad)?;
        let offset = hex(fields.next().ok_or_else(bad)?)?;
        let _dev = fields.next();
        let inode = decimal(fields.next().ok_or_else(bad)?);
        let dash = range.iter().position(|b| *b == b'-').ok_or_else(bad)?;
        // The path is the rest of the line after the inode, spaces included.
        let path_start = fields
            .next()
            .map_or(end, |f| f.as_ptr() as usize - text.as_ptr() as usize);
        let prot = [
            (b'r', libc::PROT_READ),
            (b'w', libc::PROT_WRITE),
            (b'x', libc::PROT_EXEC),
        ]
        .iter()
        .zip(perms)
        .filter(|((c, _), p)| *c == **p)
        .fold(0, |acc, ((_, bit), _)| acc | bit);
        within(&s.maps, MAPS_MAX, "mappings")?;
        s.maps.push(Mapping {
            start: hex(&range[..dash])?,
            end: hex(&range[dash + 1..])?,
            prot,
            shared: perms.get(3) == Some(&b's'),
            offset,
            inode,
            path: path_start..end,
        });
        at = end + 1;
    }
    Ok(())
}

fn hex(b: &[u8]) -> Result<u64, String> {
    b.iter().try_fold(0u64, |acc, c| {
        let d = (*c as char)
            .to_digit(16)
            .ok_or_else(|| "cannot parse /proc/self/maps".to_string())?;
        Ok(acc << 4 | u64::from(d))
    })
}

fn decimal(b: &[u8]) -> u64 {
    b.iter()
        .filter_map(|c| (*c as char).to_digit(10))
        .fold(0, |acc, d| acc * 10 + u64::from(d))
}

/// Whether a mapping stays out of the image: the global range (on the nodes), the
/// runtime's shared-memory views of node regions, the restarter of a restored process.
/// A shared mapping of anything else cannot be saved.
fn skipped(m: &Mapping, name: &[u8], p: &Process) -> Result<bool, String> {
    if m.start < p.slot.end && m.end > p.slot.start {
        return Ok(true);
    }
    if RESTARTER_ZONE.contains(&m.start) {
        return Ok(true);
    }
    if m.shared {
        if name.starts_with(b"/memfd:dsm-node-region") {
            return Ok(true);
        }
        return Err(format!(
            "shared mapping {:#x}-{:#x} ({}): the checkpointer cannot save it",
            m.start,
            m.end,
            String::from_utf8_lossy(name)
        ));
    }
    Ok(false)
}

/// Refuses, before the program's threads are disturbed, a shared mapping the image could
/// not hold (writing the image checks again).
pub(crate) fn check_shared_mappings(p: &Process) -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (f.first(), f.get(1)) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let m = Mapping {
            start: hex(start.as_bytes())?,
            end: hex(end.as_bytes())?,
            prot: 0,
            shared: perms.as_bytes().get(3) == Some(&b's'),
            offset: 0,
            inode: 0,
            path: 0..0,
        };
        let name = f.get(5..).map(|n| n.join(" ")).unwrap_or_default();
        skipped(&m, name.as_bytes(), p)?;
    }
    Ok(())
}

/// Sizes of the files mapped, by inode: pages past a file's end cannot be read.
fn mapped_file_sizes() -> Result<Vec<(u64, u64)>, String> {
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let mut sizes = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[5].starts_with('/') || f[3].is_empty() {
            continue;
        }
        let inode: u64 = f[4].parse().unwrap_or(0);
        let path = line[line.find(f[5]).unwrap_or(0)..].to_string();
        if let Ok(meta) = std::fs::metadata(&path) {
            sizes.push((inode, meta.len()));
        }
    }
    Ok(sizes)
}

/// Bytes of `m` backed by its file (all of it for an anonymous mapping, where pages
/// are chosen by the page map instead).
fn file_limit(m: &Mapping, sizes: &[(u64, u64)]) -> Option<u64> {
    if m.inode == 0 {
        return None;
    }
    let size = sizes
        .iter()
        .find(|(i, _)| *i == m.inode)
        .map_or(0, |(_, s)| *s);
    Some(size.saturating_sub(m.offset).next_multiple_of(PAGE))
}

/// Writes the pages of mapping `i` worth saving: of a file mapping every page inside
/// the file, of an anonymous one those present or swapped; all-zero pages are left out
/// (they read as zeros at restart).
fn save_mapping(
    i: usize,
    file_limit: Option<u64>,
    s: &mut Scratch,
    pagemap: &File,
    out: &File,
    data_end: &mut u64,
) -> Result<(), String> {
    let (start, end, prot) = (s.maps[i].start, s.maps[i].end, s.maps[i].prot);
    let readable = prot & libc::PROT_READ != 0;
    if !readable && !any_present(pagemap, start, end)? {
        return Ok(());
    }
    if !readable {
        // SAFETY: makes a mapping of ours readable for the copy; restored below.
        unsafe {
            libc::mprotect(
                start as *mut _,
                (end - start) as usize,
                prot | libc::PROT_READ,
            )
        };
    }
    let mut run = RunWriter {
        out,
        start: 0,
        len: 0,
        data_end,
    };
    let mut entries = [0u64; 512];
    let mut page = start;
    let result = (|| {
        while page < end {
            let n = (((end - page) / PAGE) as usize).min(entries.len());
            read_pagemap(pagemap, page, &mut entries[..n])?;
            for e in &entries[..n] {
                let wanted = match file_limit {
                    Some(limit) => page - start < limit,
                    None => e & (3 << 62) != 0,
                };
                if wanted && !page_is_zero(page) {
                    run.add(page, s)?;
                } else {
                    run.flush(s)?;
                }
                page += PAGE;
            }
        }
        run.flush(s)
    })();
    if !readable {
        // SAFETY: puts back the protection changed above.
        unsafe { libc::mprotect(start as *mut _, (end - start) as usize, prot) };
    }
    result
}

fn any_present(pagemap: &File, start: u64, end: u64) -> Result<bool, String> {
    let mut entries = [0u64; 512];
    let mut page = start;
    while page < end {
        let n = (((end - page) / PAGE) as usize).min(entries.len());
        read_pagemap(pagemap, page, &mut entries[..n])?;
        if entries[..n].iter().any(|e| e & (3 << 62) != 0) {
            return Ok(true);
        }
        page += n as u64 * PAGE;
    }
    Ok(false)
}

fn read_pagemap(pagemap: &File, page: u64, entries: &mut [u64]) -> Result<(), String> {
    let mut bytes = [0u8; 4096];
    let want = entries.len() * 8;
    pagemap
        .read_exact_at(&mut bytes[..want], page / PAGE * 8)
        .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
    for (e, b) in entries.iter_mut().zip(bytes.chunks_exact(8)) {
        *e = u64::from_le_bytes(b.try_into().expect("8 bytes"));
    }
    Ok(())
}

fn page_is_zero(page: u64) -> bool {
    (0..PAGE / 8).all(|w| {
        // SAFETY: the page is readable (checked by the caller); the program's threads
        // are stopped, so nothing writes it meanwhile.
        unsafe { std::ptr::read_volatile((page + w * 8) as *const u64) == 0 }
    })
}

/// Gathers contiguous pages into a run, copied through the bounce buffer so that the
/// hash is that of the bytes written.
struct RunWriter<'a> {
    out: &'a File,
    start: u64,
    len: usize,
    data_end: &'a mut u64,
}

impl RunWriter<'_> {
    fn add(&mut self, page: u64, s: &mut Scratch) -> Result<(), String> {
        if self.len > 0 && (self.start + self.len as u64 != page || self.len == s.bounce.len()) {
            self.flush(s)?;
        }
        if self.len == 0 {
            self.start = page;
        }
        // SAFETY: the page is readable and the bounce buffer has room for it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                page as *const u8,
                s.bounce.as_mut_ptr().add(self.len),
                PAGE as usize,
            )
        };
        self.len += PAGE as usize;
        Ok(())
    }

    fn flush(&mut self, s: &mut Scratch) -> Result<(), String> {
        if self.len == 0 {
            return Ok(());
        }
        let bytes = &s.bounce[..self.len];
        self.out
            .write_all_at(bytes, *self.data_end)
            .map_err(|e| format!("writing the image: {e}"))?;
        let mut h = Hash::default();
        h.add(bytes);
        within(&s.runs, RUNS_MAX, "runs of pages")?;
        s.runs.push(Run {
            addr: self.start,
            bytes: self.len as u64,
            offset: *self.data_end,
            hash: h.value(),
        });
        *self.data_end += self.len as u64;
        self.len = 0;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn build_meta(
    s: &mut Scratch,
    p: &Process,
    mm: &[u64; MM_FIELDS],
    auxv: &[u64],
    vdso: [u64; 2],
    vvar: [u64; 2],
    signals: &[RawAction],
    fds: &[SavedFd],
) -> Result<(), String> {
    let m = &mut s.meta;
    m.extend_from_slice(&[
        p.hook,
        p.slot.start,
        p.slot.end - p.slot.start,
        p.main_tid as u64,
        p.main_fs_base,
    ]);
    m.extend_from_slice(mm);
    m.push(auxv.len() as u64);
    m.extend_from_slice(auxv);
    m.extend_from_slice(&[vdso[0], vdso[1], vvar[0], vvar[1]]);
    signals.iter().for_each(|a| m.extend_from_slice(a));
    m.push(s.saved.len() as u64);
    for &(first, runs, kind, i) in &s.saved {
        let map = &s.maps[i];
        m.extend_from_slice(&[map.start, map.end, map.prot as u64, kind, runs as u64]);
        for r in &s.runs[first..first + runs] {
            m.extend_from_slice(&[r.addr, r.bytes, r.offset, r.hash]);
        }
    }
    m.push(fds.len() as u64);
    for f in fds {
        m.extend_from_slice(&[f.fd as u64, f.kind, f.flags, f.offset, f.path.len() as u64]);
        for chunk in f.path.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            m.push(u64::from_le_bytes(w));
        }
    }
    Ok(())
}

/// Every signal's disposition as the kernel holds it, the program's own for the stop
/// signal (whose handler is ours during the checkpoint).
fn signal_actions(stop: (libc::c_int, RawAction)) -> Vec<RawAction> {
    (1..=SIGNALS as libc::c_int)
        .map(|sig| {
            if sig == stop.0 {
                stop.1
            } else {
                raw_action(sig)
            }
        })
        .collect()
}

/// The mm fields `PR_SET_MM_MAP` takes, from `/proc/self/stat` and `brk(0)`.
fn mm_fields() -> Result<[u64; MM_FIELDS], String> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("reading /proc/self/stat: {e}"))?;
    let after = &stat[stat.rfind(')').ok_or("cannot parse /proc/self/stat")? + 1..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Field N of stat(5) is f[N - 3].
    let field = |n: usize| f.get(n - 3).copied().ok_or("cannot parse /proc/self/stat");
    // SAFETY: brk(0) only reports the current break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0usize) } as u64;
    Ok([
        field(26)?, // start_code
        field(27)?, // end_code
        field(45)?, // start_data
        field(46)?, // end_data
        field(47)?, // start_brk
        brk,
        field(28)?, // start_stack
        field(48)?, // arg_start
        field(49)?, // arg_end
        field(50)?, // env_start
        field(51)?, // env_end
    ])
}

fn auxv() -> Result<Vec<u64>, String> {
    let bytes = std::fs::read("/proc/self/auxv").map_err(|e| format!("reading auxv: {e}"))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}
