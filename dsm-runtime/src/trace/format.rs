//! The trace's types and its byte-level encoding.

use crate::space::PageNum;
use std::io;
use std::path::PathBuf;

/// First bytes of every trace file.
pub const TRACE_MAGIC: &[u8; 8] = b"DSMTRACE";
/// The format version this code writes and reads.
pub const TRACE_VERSION: u16 = 1;
/// Longest profile name a header may carry.
pub(crate) const PROFILE_NAME_BYTES_MAX: usize = 1024;
/// Bits of a record's first varint that hold the kind.
const KIND_BITS: u32 = 3;

/// What the runtime saw happen to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Missing fault on a read.
    FaultRead = 0,
    /// Missing fault on a write.
    FaultWrite = 1,
    /// Write-protect fault: first write to a clean resident page.
    FaultWriteProtect = 2,
    /// First use of a page that prefetch had staged.
    StagedHit = 3,
    /// A sampled access to a resident page (the recency signal).
    Sampled = 4,
    /// The program gave the page up (`madvise` DONTNEED or FREE): it left the cache
    /// without a write-back and reads as zeros. Not an access.
    Discard = 5,
}

impl EventKind {
    /// Every kind, in code order.
    pub const ALL: [EventKind; 6] = [
        EventKind::FaultRead,
        EventKind::FaultWrite,
        EventKind::FaultWriteProtect,
        EventKind::StagedHit,
        EventKind::Sampled,
        EventKind::Discard,
    ];

    /// Whether the access wrote the page.
    pub fn is_write(self) -> bool {
        matches!(self, EventKind::FaultWrite | EventKind::FaultWriteProtect)
    }

    fn from_code(code: u64) -> Option<EventKind> {
        EventKind::ALL.get(code as usize).copied()
    }
}

/// One access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Nanoseconds since recording started.
    pub time_ns: u64,
    /// The page.
    pub page: PageNum,
    /// What happened.
    pub kind: EventKind,
}

/// What a trace says about the run that recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHeader {
    /// Page size of the run.
    pub page_bytes: u32,
    /// Local cache capacity of the run, in pages.
    pub cache_pages: u64,
    /// Profile the run used.
    pub profile: String,
}

impl TraceHeader {
    /// The header for a run with this page size, cache capacity and profile.
    pub fn for_run(cache_pages: u64, profile: &str) -> TraceHeader {
        TraceHeader {
            page_bytes: crate::space::PAGE_BYTES as u32,
            cache_pages,
            profile: profile.to_owned(),
        }
    }
}

/// Why a trace could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened, created, read or written.
    #[error("trace {path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Not a trace at all.
    #[error("not a dsm trace (bad magic number): record one with `dsmrun --record-trace FILE`")]
    BadMagic,
    /// Written by another version of the format.
    #[error(
        "trace format version {found} is not supported (this build reads version {TRACE_VERSION})"
    )]
    Version {
        /// Version in the file.
        found: u16,
    },
    /// The file ends inside the header or a record.
    #[error("trace truncated at byte {offset}: the run that wrote it was probably killed")]
    Truncated {
        /// Where the data ran out.
        offset: u64,
    },
    /// The bytes do not decode.
    #[error("corrupt trace at byte {offset}: {what}")]
    Corrupt {
        /// Where decoding failed.
        offset: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// The header's profile name is unusable.
    #[error("trace header: profile name is {len} bytes, more than {PROFILE_NAME_BYTES_MAX}")]
    ProfileName {
        /// Its length.
        len: usize,
    },
}

/// Appends `v` as a LEB128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Encodes the header.
pub(crate) fn put_header(buf: &mut Vec<u8>, h: &TraceHeader) -> Result<(), TraceError> {
    let name = h.profile.as_bytes();
    if name.len() > PROFILE_NAME_BYTES_MAX {
        return Err(TraceError::ProfileName { len: name.len() });
    }
    buf.extend_from_slice(TRACE_MAGIC);
    buf.extend_from_slice(&TRACE_VERSION.to_le_bytes());
    buf.extend_from_slice(&h.page_bytes.to_le_bytes());
    buf.extend_from_slice(&h.cache_pages.to_le_bytes());
    buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
    buf.extend_from_slice(name);
    Ok(())
}

/// Encodes one record relative to the previous one's time and page.
pub(crate) fn put_record(buf: &mut Vec<u8>, time_delta_ns: u64, page_delta: i64, kind: EventKind) {
    // Deltas above 2^61 ns (73 years) cannot happen; saturate rather than lose the kind.
    let t = time_delta_ns.min(u64::MAX >> KIND_BITS);
    put_varint(buf, (t << KIND_BITS) | kind as u64);
    put_varint(buf, zigzag(page_delta));
}

/// Splits a record's first varint.
pub(crate) fn split_first(v: u64) -> Option<(u64, EventKind)> {
    let kind = EventKind::from_code(v & ((1 << KIND_BITS) - 1))?;
    Some((v >> KIND_BITS, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        b.clear();
        put_varint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
    }
}
