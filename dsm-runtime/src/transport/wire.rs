//! The TCP backend's wire format: fixed little-endian headers, decoded with bounds on
//! every length before anything is allocated or read, so a hostile peer cannot make a
//! node or the runtime allocate, over-read or hang.
//!
//! A request is `Header`, then `count` [`Entry`]s (reads and writes), then `payload_len`
//! bytes. A reply is a `Header` with the request's `seq`, the op with [`REPLY_BIT`] set, a
//! status, and `payload_len` bytes (read data, an 8-byte CAS result, a call's answer, or a
//! UTF-8 error message when the status is not [`STATUS_OK`]).

/// "DSM1", little-endian.
pub const MAGIC: u32 = 0x314D_5344;
/// Size of [`Header`] on the wire.
pub const HEADER_BYTES: usize = 24;
/// Size of [`Entry`] on the wire.
pub const ENTRY_BYTES: usize = 16;
/// Most entries in one batch.
pub const MAX_BATCH_ENTRIES: u32 = 4096;
/// Largest single read or write.
pub const MAX_ENTRY_BYTES: u32 = 1 << 20;
/// Largest payload of any frame.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;
/// Largest control message.
pub const MAX_CALL_BYTES: u32 = 64 << 10;

/// Set in the op of every reply.
pub const REPLY_BIT: u8 = 0x80;
/// Reply status: success.
pub const STATUS_OK: u8 = 0;
/// Reply status: the node rejected the request (message in the payload).
pub const STATUS_REJECTED: u8 = 1;

/// Request kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Batched one-sided read.
    Read = 1,
    /// Batched one-sided write.
    Write = 2,
    /// 8-byte compare-and-swap.
    CompareSwap = 3,
    /// Two-sided control message.
    Call = 4,
}

impl Op {
    /// Decodes an op byte (without [`REPLY_BIT`]).
    pub fn from_u8(v: u8) -> Option<Op> {
        match v {
            1 => Some(Op::Read),
            2 => Some(Op::Write),
            3 => Some(Op::CompareSwap),
            4 => Some(Op::Call),
            _ => None,
        }
    }

    /// Name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::CompareSwap => "compare-and-swap",
            Op::Call => "call",
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not our magic number.
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    /// Unknown op byte.
    #[error("unknown op {0:#x}")]
    BadOp(u8),
    /// A count or length over the protocol's limits.
    #[error("{what} {value} exceeds limit {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// Entries and payload disagree.
    #[error("inconsistent frame: {0}")]
    Inconsistent(&'static str),
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Op byte, with [`REPLY_BIT`] on replies.
    pub op: u8,
    /// Reply status; zero on requests.
    pub status: u8,
    /// Number of entries following.
    pub count: u32,
    /// Bytes of payload after the entries.
    pub payload_len: u32,
    /// Request sequence number, echoed by the reply.
    pub seq: u64,
}

impl Header {
    /// Encodes into the first [`HEADER_BYTES`] of `out`.
    pub fn encode(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.op;
        out[5] = self.status;
        out[6..8].copy_from_slice(&0u16.to_le_bytes());
        out[8..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Decodes and checks the limits that do not depend on the op.
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Result<Header, WireError> {
        let magic = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let h = Header {
            op: b[4],
            status: b[5],
            count: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            payload_len: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        };
        if Op::from_u8(h.op & !REPLY_BIT).is_none() {
            return Err(WireError::BadOp(h.op));
        }
        if h.count > MAX_BATCH_ENTRIES {
            return Err(WireError::TooLarge {
                what: "entry count",
                value: h.count.into(),
                limit: MAX_BATCH_ENTRIES.into(),
            });
        }
        if h.payload_len > MAX_PAYLOAD_BYTES {
            return Err(WireError::TooLarge {
                what: "payload length",
                value: h.payload_len.into(),
                limit: MAX_PAYLOAD_BYTES.into(),
            });
        }
        Ok(h)
    }

    /// The request op (reply bit cleared); valid after [`Header::decode`].
    pub fn request_op(&self) -> Op {
        Op::from_u8(self.op & !REPLY_BIT).expect("checked in decode")
    }

    /// Checks a request's shape for its op: which parts it may carry.
    pub fn check_request(&self) -> Result<Op, WireError> {
        if self.op & REPLY_BIT != 0 {
            return Err(WireError::Inconsistent(
                "reply where a request was expected",
            ));
        }
        let op = self.request_op();
        match op {
            Op::Read if self.payload_len != 0 => Err(WireError::Inconsistent("read with payload")),
            Op::CompareSwap if self.count != 0 || self.payload_len != 24 => Err(
                WireError::Inconsistent("compare-and-swap must carry 24 bytes"),
            ),
            Op::Call if self.count != 0 || self.payload_len > MAX_CALL_BYTES => Err(
                WireError::Inconsistent("call must carry only a small payload"),
            ),
            _ => Ok(op),
        }
    }
}

/// One read or write of `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// Byte offset in the node's region.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Entry {
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8; ENTRY_BYTES]) {
        out[0..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
    }

    /// Decodes and checks the per-entry length limit.
    pub fn decode(b: &[u8; ENTRY_BYTES]) -> Result<Entry, WireError> {
        let e = Entry {
            offset: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        };
        if e.len > MAX_ENTRY_BYTES {
            return Err(WireError::TooLarge {
                what: "entry length",
                value: e.len.into(),
                limit: MAX_ENTRY_BYTES.into(),
            });
        }
        Ok(e)
    }

    /// Whether the entry lies inside a region of `region_bytes`.
    pub fn within(&self, region_bytes: u64) -> bool {
        self.offset
            .checked_add(u64::from(self.len))
            .is_some_and(|end| end <= region_bytes)
    }
}

/// Sum of entry lengths, checked against the payload limit.
pub fn total_len(entries: &[Entry]) -> Result<u32, WireError> {
    let total: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
    if total > u64::from(MAX_PAYLOAD_BYTES) {
        return Err(WireError::TooLarge {
            what: "batch bytes",
            value: total,
            limit: MAX_PAYLOAD_BYTES.into(),
        });
    }
    Ok(total as u32)
}

/// Compare-and-swap arguments, as carried in a request payload.
pub fn encode_cas(offset: u64, expected: u64, new: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[0..8].copy_from_slice(&offset.to_le_bytes());
    out[8..16].copy_from_slice(&expected.to_le_bytes());
    out[16..24].copy_from_slice(&new.to_le_bytes());
    out
}

/// Inverse of [`encode_cas`].
pub fn decode_cas(b: &[u8; 24]) -> (u64, u64, u64) {
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    (word(0), word(8), word(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            op: Op::Write as u8,
            status: 0,
            count: 3,
            payload_len: 3 * 4096,
            seq: 77,
        };
        let mut b = [0u8; HEADER_BYTES];
        h.encode(&mut b);
        assert_eq!(Header::decode(&b), Ok(h));
        assert_eq!(Header::decode(&b).unwrap().check_request(), Ok(Op::Write));
    }

    #[test]
    fn rejects_oversized_and_inconsistent_frames() {
        let mut b = [0u8; HEADER_BYTES];
        let mut h = Header {
            op: Op::Read as u8,
            status: 0,
            count: MAX_BATCH_ENTRIES + 1,
            payload_len: 0,
            seq: 1,
        };
        h.encode(&mut b);
        assert!(matches!(
            Header::decode(&b),
            Err(WireError::TooLarge { .. })
        ));
        h.count = 1;
        h.payload_len = 5;
        h.encode(&mut b);
        assert!(Header::decode(&b).unwrap().check_request().is_err());
        b[0] = 0;
        assert!(matches!(Header::decode(&b), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn entry_bounds_do_not_overflow() {
        let e = Entry {
            offset: u64::MAX - 10,
            len: 4096,
        };
        assert!(!e.within(u64::MAX));
        assert!(Entry {
            offset: 0,
            len: 4096
        }
        .within(4096));
        assert!(!Entry {
            offset: 1,
            len: 4096
        }
        .within(4096));
    }

    proptest! {
        // Fuzz the decoders: arbitrary bytes never panic, and whatever decodes re-encodes
        // to the same bytes (for the fields the format defines).
        #[test]
        fn header_decoder_never_panics(bytes in proptest::array::uniform24(any::<u8>())) {
            if let Ok(h) = Header::decode(&bytes) {
                let _ = h.check_request();
                let mut again = [0u8; HEADER_BYTES];
                h.encode(&mut again);
                prop_assert_eq!(&again[0..6], &bytes[0..6]);
                prop_assert_eq!(&again[8..24], &bytes[8..24]);
            }
        }

        #[test]
        fn entry_decoder_never_panics(bytes in proptest::array::uniform16(any::<u8>())) {
            if let Ok(e) = Entry::decode(&bytes) {
                prop_assert!(e.len <= MAX_ENTRY_BYTES);
                let _ = e.within(1 << 40);
            }
        }
    }
}
