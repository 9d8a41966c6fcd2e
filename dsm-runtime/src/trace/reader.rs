//! Decoding a trace: a header, then an iterator of events that stops at the first
//! error. Every length and shift is checked, so arbitrary bytes yield an error, never a
//! panic or a huge allocation.

use super::format::{
    split_first, unzigzag, EventKind, TraceError, TraceEvent, TraceHeader, PROFILE_NAME_BYTES_MAX,
    TRACE_MAGIC, TRACE_VERSION,
};
use crate::space::PageNum;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Reads a trace's events in order.
pub struct TraceReader<R> {
    input: R,
    path: PathBuf,
    header: TraceHeader,
    offset: u64,
    time_ns: u64,
    page: u64,
    done: bool,
}

impl TraceReader<BufReader<File>> {
    /// Opens the trace at `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io {
            path: path.to_owned(),
            op: "open",
            source,
        })?;
        TraceReader::with_path(BufReader::with_capacity(1 << 16, file), path.to_owned())
    }
}

impl<R: BufRead> TraceReader<R> {
    /// Reads the header from `input`.
    pub fn new(input: R) -> Result<Self, TraceError> {
        TraceReader::with_path(input, PathBuf::from("<stream>"))
    }

    fn with_path(input: R, path: PathBuf) -> Result<Self, TraceError> {
        let mut r = TraceReader {
            input,
            path,
            header: TraceHeader {
                page_bytes: 0,
                cache_pages: 0,
                profile: String::new(),
            },
            offset: 0,
            time_ns: 0,
            page: 0,
            done: false,
        };
        r.header = r.read_header()?;
        Ok(r)
    }

    /// The header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Bytes consumed so far (for progress reports).
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TraceError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(TraceError::Truncated {
                offset: self.offset,
            }),
            Err(source) => Err(self.io_error(source)),
        }
    }

    fn io_error(&self, source: io::Error) -> TraceError {
        TraceError::Io {
            path: self.path.clone(),
            op: "read",
            source,
        }
    }

    fn read_header(&mut self) -> Result<TraceHeader, TraceError> {
        let mut magic = [0u8; 8];
        self.read_exact(&mut magic)?;
        if &magic != TRACE_MAGIC {
            return Err(TraceError::BadMagic);
        }
        let mut fixed = [0u8; 2 + 4 + 8 + 2];
        self.read_exact(&mut fixed)?;
        let version = u16::from_le_bytes([fixed[0], fixed[1]]);
        if version != TRACE_VERSION {
            return Err(TraceError::Version { found: version });
        }
        let page_bytes = u32::from_le_bytes(fixed[2..6].try_into().expect("4 bytes"));
        let cache_pages = u64::from_le_bytes(fixed[6..14].try_into().expect("8 bytes"));
        let name_len = u16::from_le_bytes([fixed[14], fixed[15]]) as usize;
        if name_len > PROFILE_NAME_BYTES_MAX {
            return Err(TraceError::ProfileName { len: name_len });
        }
        let mut name = vec![0u8; name_len];
        self.read_exact(&mut name)?;
        let at = self.offset;
        let profile = String::from_utf8(name).map_err(|_| TraceError::Corrupt {
            offset: at,
            what: "profile name is not UTF-8",
        })?;
        Ok(TraceHeader {
            page_bytes,
            cache_pages,
            profile,
        })
    }

    /// Next byte, or `None` at a clean end of input.
    fn next_byte(&mut self) -> Result<Option<u8>, TraceError> {
        let buf = loop {
            match self.input.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        };
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.input.consume(1);
        self.offset += 1;
        Ok(Some(b))
    }

    /// A varint; `first` says whether a clean end of input is allowed before it.
    fn varint(&mut self, first: bool) -> Result<Option<u64>, TraceError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let Some(b) = self.next_byte()? else {
                if first && i == 0 {
                    return Ok(None);
                }
                return Err(TraceError::Truncated {
                    offset: self.offset,
                });
            };
            if i == 9 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Err(TraceError::Corrupt {
            offset: self.offset,
            what: "varint longer than 64 bits",
        })
    }

    fn next_event(&mut self) -> Result<Option<TraceEvent>, TraceError> {
        let Some(first) = self.varint(true)? else {
            return Ok(None);
        };
        let (dt, kind): (u64, EventKind) = split_first(first).ok_or(TraceError::Corrupt {
            offset: self.offset,
            what: "unknown event kind",
        })?;
        let dp = self.varint(false)?.ok_or(TraceError::Truncated {
            offset: self.offset,
        })?;
        self.time_ns = self.time_ns.checked_add(dt).ok_or(TraceError::Corrupt {
            offset: self.offset,
            what: "time overflows 64 bits",
        })?;
        self.page = self.page.wrapping_add(unzigzag(dp) as u64);
        Ok(Some(TraceEvent {
            time_ns: self.time_ns,
            page: PageNum(self.page),
            kind,
        }))
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<TraceEvent, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_event().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}
