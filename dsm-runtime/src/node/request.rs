//! What a node does with one request, decided by pure functions over bytes.
//!
//! The server reads a request from its socket in parts (header, entries, payload) and
//! calls the step functions here on each part; [`parse_request`] composes the same steps
//! over a whole frame in memory, for the fuzz targets (`fuzz/`) and the unit tests. Nothing
//! here allocates beyond the capacity of the caller's entry vector, and every length is
//! checked against the protocol's limits before the server allocates or reads for it.

use crate::transport::shm::ATTACH_CALL;
use crate::transport::wire::{self, Entry, Header, Op, WireError, ENTRY_BYTES, HEADER_BYTES};

/// Longest part of an unknown call that a rejection quotes back.
pub const QUOTED_CALL_BYTES: usize = 64;

/// Why a read or write batch is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// It breaks the protocol: the node drops the connection.
    Malformed(WireError),
    /// Well formed, but this entry lies outside the region: the node answers with a
    /// rejection (after consuming a write's payload) and keeps the connection.
    OutOfBounds(Entry),
}

/// Decodes a request header and checks its shape for its op.
pub fn parse_header(b: &[u8; HEADER_BYTES]) -> Result<(Header, Op), WireError> {
    let h = Header::decode(b)?;
    let op = h.check_request()?;
    Ok((h, op))
}

/// Bytes of entries that follow a checked header (at most 64 KiB).
pub fn entries_bytes(h: &Header) -> usize {
    h.count as usize * ENTRY_BYTES
}

/// Decodes `raw` (whole entries) into `out`, which is cleared first.
pub fn parse_entries(raw: &[u8], out: &mut Vec<Entry>) -> Result<(), WireError> {
    out.clear();
    if raw.len() % ENTRY_BYTES != 0 {
        return Err(WireError::Inconsistent("partial entry"));
    }
    for chunk in raw.chunks_exact(ENTRY_BYTES) {
        out.push(Entry::decode(chunk.try_into().expect("entry size"))?);
    }
    Ok(())
}

/// Checks a read or write batch against its header and a region of `region_bytes`;
/// returns the bytes it moves.
pub fn check_batch(
    op: Op,
    h: &Header,
    entries: &[Entry],
    region_bytes: u64,
) -> Result<u32, BatchError> {
    let total = wire::total_len(entries).map_err(BatchError::Malformed)?;
    if op == Op::Write && total != h.payload_len {
        return Err(BatchError::Malformed(WireError::Inconsistent(
            "write payload differs from its entries",
        )));
    }
    match entries.iter().find(|e| !e.within(region_bytes)) {
        Some(bad) => Err(BatchError::OutOfBounds(*bad)),
        None => Ok(total),
    }
}

/// Whether a compare-and-swap at `offset` is 8-byte aligned and inside the region.
pub fn cas_within(offset: u64, region_bytes: u64) -> bool {
    offset % 8 == 0 && Entry { offset, len: 8 }.within(region_bytes)
}

/// A control call, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// Liveness check; answered `pong`.
    Ping,
    /// The node's counters as JSON.
    Stats,
    /// The shared-memory backend's request for the region's file.
    ShmAttach,
    /// The verbs backend's queue-pair exchange (the whole message).
    VerbsConnect(&'a [u8]),
    /// Save the pages written since the previous snapshot (all pages if `full`) to the
    /// file `path`, relative to the node's `--snapshot-dir` (`snapshot full|delta PATH`).
    Snapshot { full: bool, path: &'a str },
    /// Anything else: rejected.
    Unknown(&'a [u8]),
}

/// Classifies a control call's message.
pub fn parse_call(msg: &[u8]) -> Call<'_> {
    match msg {
        b"ping" => Call::Ping,
        b"stats" => Call::Stats,
        m if m == ATTACH_CALL.as_bytes() => Call::ShmAttach,
        m if m.starts_with(b"verbs-connect") => Call::VerbsConnect(m),
        m if m.starts_with(SNAPSHOT_CALL) => parse_snapshot(m).unwrap_or(Call::Unknown(m)),
        other => Call::Unknown(other),
    }
}

/// The start of a snapshot call.
pub const SNAPSHOT_CALL: &[u8] = b"snapshot ";

/// `snapshot full|delta relative/path` (no `..`, not absolute); anything else is not a
/// snapshot call.
fn parse_snapshot(msg: &[u8]) -> Option<Call<'_>> {
    let text = std::str::from_utf8(msg.strip_prefix(SNAPSHOT_CALL)?).ok()?;
    let (kind, path) = text.split_once(' ')?;
    let full = match kind {
        "full" => true,
        "delta" => false,
        _ => return None,
    };
    let plain = std::path::Path::new(path)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (plain && !path.is_empty()).then_some(Call::Snapshot { full, path })
}

/// The rejection of an unknown call: quotes at most [`QUOTED_CALL_BYTES`] of it, so the
/// answer stays within what a client accepts ([`wire::MAX_CALL_BYTES`]).
pub fn unknown_call_message(msg: &[u8]) -> String {
    let quoted = &msg[..msg.len().min(QUOTED_CALL_BYTES)];
    let more = if msg.len() > quoted.len() { "..." } else { "" };
    format!(
        "unknown call {:?}{more} ({} bytes)",
        String::from_utf8_lossy(quoted),
        msg.len()
    )
}

/// A whole request, checked: what [`parse_request`] found at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read every entry (in `entries`), `total` bytes in all, all inside the region.
    Read { header: Header, total: u32 },
    /// Write `payload` to the entries, in order; all inside the region.
    Write { header: Header, payload: &'a [u8] },
    /// Compare-and-swap on an aligned, in-bounds word.
    CompareSwap {
        header: Header,
        offset: u64,
        expected: u64,
        new: u64,
    },
    /// A control call.
    Call { header: Header, call: Call<'a> },
}

/// Why [`parse_request`] did not yield a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer ends inside the request; the node would wait for more bytes.
    Truncated,
    /// The request breaks the protocol: the node drops the connection.
    Malformed(WireError),
    /// Well formed but outside the region: the node answers with a rejection.
    Rejected(Header),
}

/// Parses and checks the request at the front of `bytes` as the node does for a region
/// of `region_bytes`, decoding entries into `entries`; returns it and the bytes it spans.
/// After `Rejected`, the node goes on with the next request; [`request_span`] says where.
pub fn parse_request<'a>(
    bytes: &'a [u8],
    region_bytes: u64,
    entries: &mut Vec<Entry>,
) -> Result<(Request<'a>, usize), ParseError> {
    let (h, op) = parse_header(take_header(bytes)?).map_err(ParseError::Malformed)?;
    let body = &bytes[HEADER_BYTES..];
    let raw = body.get(..entries_bytes(&h)).ok_or(ParseError::Truncated)?;
    parse_entries(raw, entries).map_err(ParseError::Malformed)?;
    let span = request_span(&h);
    let payload = body
        .get(raw.len()..raw.len() + h.payload_len as usize)
        .ok_or(ParseError::Truncated);
    let req = match op {
        Op::Read | Op::Write => {
            let total = match check_batch(op, &h, entries, region_bytes) {
                Ok(t) => t,
                Err(BatchError::Malformed(e)) => return Err(ParseError::Malformed(e)),
                Err(BatchError::OutOfBounds(_)) => return Err(ParseError::Rejected(h)),
            };
            match op {
                Op::Read => Request::Read { header: h, total },
                _ => Request::Write {
                    header: h,
                    payload: payload?,
                },
            }
        }
        Op::CompareSwap => {
            let args: &[u8; 24] = payload?.try_into().expect("checked: 24 bytes");
            let (offset, expected, new) = wire::decode_cas(args);
            if !cas_within(offset, region_bytes) {
                return Err(ParseError::Rejected(h));
            }
            Request::CompareSwap {
                header: h,
                offset,
                expected,
                new,
            }
        }
        Op::Call => Request::Call {
            header: h,
            call: parse_call(payload?),
        },
    };
    Ok((req, span))
}

/// Bytes a request with this (checked) header spans on the wire.
pub fn request_span(h: &Header) -> usize {
    HEADER_BYTES + entries_bytes(h) + h.payload_len as usize
}

fn take_header(bytes: &[u8]) -> Result<&[u8; HEADER_BYTES], ParseError> {
    bytes
        .get(..HEADER_BYTES)
        .map(|b| b.try_into().expect("header size"))
        .ok_or(ParseError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: u64 = 1 << 16;

    fn frame(op: Op, entries: &[(u64, u32)], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_BYTES];
        Header {
            op: op as u8,
            status: 0,
            count: entries.len() as u32,
            payload_len: payload.len() as u32,
            seq: 9,
        }
        .encode((&mut out[..]).try_into().unwrap());
        for &(offset, len) in entries {
            let mut e = [0u8; ENTRY_BYTES];
            Entry { offset, len }.encode(&mut e);
            out.extend_from_slice(&e);
        }
        out.extend_from_slice(payload);
        out
    }

    fn parse(bytes: &[u8]) -> Result<(Request<'_>, usize), ParseError> {
        parse_request(bytes, REGION, &mut Vec::new())
    }

    #[test]
    fn a_valid_read_and_write_parse_with_their_spans() {
        let f = frame(Op::Read, &[(0, 4096), (REGION - 8, 8)], &[]);
        let (req, span) = parse(&f).unwrap();
        assert_eq!(span, f.len());
        assert!(matches!(req, Request::Read { total: 4104, .. }));
        let f = frame(Op::Write, &[(8, 3)], b"abc");
        assert!(matches!(
            parse(&f).unwrap().0,
            Request::Write {
                payload: b"abc",
                ..
            }
        ));
    }

    #[test]
    fn offsets_that_overflow_or_end_past_the_region_are_rejected() {
        for (offset, len) in [
            (u64::MAX, 1),
            (u64::MAX - 4095, 4096),
            (u64::MAX, 0),
            (REGION, 1),
            (REGION - 1, 2),
            (REGION + 1, 0),
        ] {
            let f = frame(Op::Read, &[(offset, len)], &[]);
            assert!(
                matches!(parse(&f), Err(ParseError::Rejected(_))),
                "{offset:#x}+{len}"
            );
        }
        // Empty at the very end is inside.
        assert!(parse(&frame(Op::Read, &[(REGION, 0)], &[])).is_ok());
    }

    #[test]
    fn huge_lengths_are_refused_before_any_payload_arrives() {
        // 64 x 1 MiB = 64 MiB + ... exceeds the batch limit: no allocation is made for it.
        let many: Vec<(u64, u32)> = (0..65).map(|_| (0, wire::MAX_ENTRY_BYTES)).collect();
        assert!(matches!(
            parse(&frame(Op::Read, &many, &[])),
            Err(ParseError::Malformed(WireError::TooLarge { .. }))
        ));
        let f = frame(Op::Read, &[(0, wire::MAX_ENTRY_BYTES + 1)], &[]);
        assert!(matches!(parse(&f), Err(ParseError::Malformed(_))));
        let mut h = frame(Op::Call, &[], &[]);
        h[12..16].copy_from_slice(&(wire::MAX_CALL_BYTES + 1).to_le_bytes());
        assert!(matches!(parse(&h), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn compare_and_swap_checks_alignment_and_bounds_without_overflow() {
        for (offset, ok) in [(0, true), (REGION - 8, true), (4, false), (REGION, false)] {
            let f = frame(Op::CompareSwap, &[], &wire::encode_cas(offset, 1, 2));
            assert_eq!(parse(&f).is_ok(), ok, "{offset:#x}");
        }
        let f = frame(Op::CompareSwap, &[], &wire::encode_cas(u64::MAX - 7, 1, 2));
        assert!(matches!(parse(&f), Err(ParseError::Rejected(_))));
        assert!(!cas_within(u64::MAX - 7, u64::MAX));
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        let f = frame(Op::Write, &[(0, 16)], &[7; 16]);
        for cut in [0, 10, HEADER_BYTES, HEADER_BYTES + 3, f.len() - 1] {
            assert_eq!(parse(&f[..cut]), Err(ParseError::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn calls_are_classified_and_unknown_ones_quoted_briefly() {
        assert_eq!(parse_call(b"ping"), Call::Ping);
        assert_eq!(parse_call(ATTACH_CALL.as_bytes()), Call::ShmAttach);
        assert!(matches!(
            parse_call(b"verbs-connect {}"),
            Call::VerbsConnect(_)
        ));
        assert!(matches!(parse_call(b"pingx"), Call::Unknown(_)));
        assert_eq!(
            parse_call(b"snapshot delta ckpt-0001.tmp/node-0.snap"),
            Call::Snapshot {
                full: false,
                path: "ckpt-0001.tmp/node-0.snap"
            }
        );
        for bad in [
            &b"snapshot full /abs"[..],
            b"snapshot full ../up",
            b"snapshot full a/../../b",
            b"snapshot half x",
            b"snapshot x",
        ] {
            assert!(matches!(parse_call(bad), Call::Unknown(_)), "{bad:?}");
        }
        let long = vec![0xffu8; wire::MAX_CALL_BYTES as usize];
        let m = unknown_call_message(&long);
        assert!(m.len() < 1024, "{} bytes", m.len());
    }
}
