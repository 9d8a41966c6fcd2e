//! `request`: the node's request parser and bounds checks (node/request.rs), against the
//! independent model in `model.rs`, over a stream of requests.
//!
//! Input: 8 bytes that pick the region size (small, huge, near `u64::MAX`), then the
//! byte stream a peer sends after authenticating.

use crate::model::{self, Outcome};
use dsm_runtime::node::request::{self, ParseError, Request};
use dsm_runtime::transport::wire::{Entry, MAX_CALL_BYTES};

/// Most requests followed per input (an input is at most a few KiB).
const MAX_REQUESTS: usize = 256;

pub fn run(data: &[u8]) {
    let (pick, mut stream) = crate::take_u64(data);
    let region = region_bytes(pick);
    let mut entries = Vec::with_capacity(16);
    for _ in 0..MAX_REQUESTS {
        let want = model::classify(stream, region);
        let got = request::parse_request(stream, region, &mut entries);
        let span = check(&want, &got, &entries, region);
        allocation_bounded(stream);
        match span {
            Some(span) if span <= stream.len() => stream = &stream[span..],
            _ => return,
        }
    }
}

/// Region sizes where bounds arithmetic is interesting.
pub fn region_bytes(pick: u64) -> u64 {
    let x = pick >> 2;
    match pick & 3 {
        0 => 4096 * (1 + x % 16),
        1 => u64::MAX - x % 8192,
        2 => x,
        _ => 1 << 40,
    }
}

/// Asserts the parser agrees with the model; returns the span to skip, if the node goes on.
fn check(
    want: &Outcome,
    got: &Result<(Request<'_>, usize), ParseError>,
    entries: &[Entry],
    region: u64,
) -> Option<usize> {
    match (want, got) {
        (Outcome::Truncated, Err(ParseError::Truncated)) => None,
        (Outcome::Malformed, Err(ParseError::Malformed(_))) => None,
        (Outcome::Rejected { span }, Err(ParseError::Rejected(h))) => {
            assert_eq!(*span, request::request_span(h));
            Some(*span)
        }
        (Outcome::Serve { op, extents, span }, Ok((req, got_span))) => {
            assert_eq!(span, got_span);
            served(*op, extents, req, entries, region);
            Some(*span)
        }
        _ => panic!("model says {want:?}, parser says {got:?}"),
    }
}

fn served(op: u8, extents: &[(u64, u32)], req: &Request<'_>, entries: &[Entry], region: u64) {
    let inside = |o: u64, l: u64| u128::from(o) + u128::from(l) <= u128::from(region);
    match *req {
        Request::Read { header, total } => {
            assert_eq!(
                u64::from(total),
                batch(header.op, op, extents, entries, &inside)
            );
        }
        Request::Write { header, payload } => {
            let sum = batch(header.op, op, extents, entries, &inside);
            assert_eq!(payload.len() as u64, sum);
        }
        Request::CompareSwap { offset, .. } => {
            assert_eq!((op, extents), (3, &[(offset, 8)][..]));
            assert!(offset % 8 == 0 && inside(offset, 8));
        }
        Request::Call { header, .. } => {
            assert_eq!(op, 4);
            assert!(header.payload_len <= MAX_CALL_BYTES);
        }
    }
}

/// Checks a served batch's entries; returns their total length.
fn batch(
    got_op: u8,
    op: u8,
    extents: &[(u64, u32)],
    entries: &[Entry],
    inside: &dyn Fn(u64, u64) -> bool,
) -> u64 {
    assert_eq!(got_op, op);
    let mine: Vec<(u64, u32)> = entries.iter().map(|e| (e.offset, e.len)).collect();
    assert_eq!(mine, extents);
    assert!(entries.iter().all(|e| inside(e.offset, e.len.into())));
    entries.iter().map(|e| u64::from(e.len)).sum()
}

/// What the server allocates for a request it has only the header of: the entries'
/// bytes, and a call's message. Both must be small whatever the header says.
fn allocation_bounded(stream: &[u8]) {
    let Some(hb) = stream.get(..24) else { return };
    let Ok((h, op)) = request::parse_header(hb.try_into().unwrap()) else {
        return;
    };
    assert!(request::entries_bytes(&h) <= 64 << 10, "{h:?}");
    if op == dsm_runtime::transport::wire::Op::Call {
        assert!(h.payload_len <= 64 << 10, "{h:?}");
    }
}
