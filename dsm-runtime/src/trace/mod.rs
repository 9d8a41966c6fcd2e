//! Page-access traces: a compact binary record of a run's faults and sampled accesses,
//! written by the runtime (`dsmrun --record-trace FILE`) and replayed offline by the
//! tuner ([`crate::tune`]).
//!
//! Format, version 1 (integers little-endian; varints are LEB128, at most 10 bytes):
//!
//! ```text
//! header:  "DSMTRACE"  version:u16  page_bytes:u32  cache_pages:u64
//!          profile_len:u16  profile:utf-8[profile_len]
//! record:  varint(time_delta_ns << 3 | kind)  varint(zigzag(page - previous page))
//! ```
//!
//! Times are nanoseconds since the writer was created, stored as the difference from the
//! previous record; pages as the signed difference from the previous record's page (the
//! first record's differences are from 0). A sequential scan costs about four bytes per
//! event. A file cut short (a run that was killed) reads up to its last whole record and
//! then reports the truncation.

mod format;
mod reader;
mod writer;

pub use format::{EventKind, TraceError, TraceEvent, TraceHeader, TRACE_MAGIC, TRACE_VERSION};
pub use reader::TraceReader;
pub use writer::TraceWriter;
