//! `wire`: the frame header and entry decoders, and the compare-and-swap arguments.
//!
//! Input: 24 header bytes, then entries (16 bytes each); shorter inputs are zero-padded.

use dsm_runtime::transport::wire::{
    self, Entry, Header, WireError, ENTRY_BYTES, HEADER_BYTES, MAX_BATCH_ENTRIES, MAX_ENTRY_BYTES,
    MAX_PAYLOAD_BYTES,
};

pub fn run(data: &[u8]) {
    let mut hb = [0u8; HEADER_BYTES];
    let n = data.len().min(HEADER_BYTES);
    hb[..n].copy_from_slice(&data[..n]);
    header(&hb);
    let mut entries = Vec::new();
    for chunk in data[n..].chunks_exact(ENTRY_BYTES) {
        if let Some(e) = entry(chunk.try_into().unwrap()) {
            entries.push(e);
        }
    }
    total(&entries);
    if let Some(args) = data.get(..24) {
        let args: &[u8; 24] = args.try_into().unwrap();
        let (o, x, y) = wire::decode_cas(args);
        assert_eq!(&wire::encode_cas(o, x, y), args, "cas arguments round trip");
    }
}

fn header(b: &[u8; HEADER_BYTES]) {
    let Ok(h) = Header::decode(b) else { return };
    assert!(h.count <= MAX_BATCH_ENTRIES && h.payload_len <= MAX_PAYLOAD_BYTES);
    let mut again = [0u8; HEADER_BYTES];
    h.encode(&mut again);
    // Bytes 6..8 are reserved: ignored on decode, zero on encode.
    assert_eq!(&again[..6], &b[..6], "header round trip");
    assert_eq!(&again[8..], &b[8..], "header round trip");
    assert_eq!(Header::decode(&again), Ok(h), "header re-decodes");
    if let Ok(op) = h.check_request() {
        assert_eq!(op as u8, h.op, "a request has no reply bit");
    }
}

fn entry(b: &[u8; ENTRY_BYTES]) -> Option<Entry> {
    let e = match Entry::decode(b) {
        Ok(e) => e,
        Err(WireError::TooLarge { value, .. }) => {
            assert!(value > u64::from(MAX_ENTRY_BYTES));
            return None;
        }
        Err(other) => panic!("entry decode: unexpected {other:?}"),
    };
    let mut again = [0u8; ENTRY_BYTES];
    e.encode(&mut again);
    assert_eq!(&again[..12], &b[..12], "entry round trip");
    // The bounds check against regions at and around the overflow edge, in u128.
    let end = u128::from(e.offset) + u128::from(e.len);
    for region in [
        0,
        4096,
        e.offset,
        e.offset.wrapping_add(1),
        u64::MAX - 1,
        u64::MAX,
    ] {
        assert_eq!(
            e.within(region),
            end <= u128::from(region),
            "{e:?} within {region}"
        );
    }
    Some(e)
}

fn total(entries: &[Entry]) {
    let sum: u128 = entries.iter().map(|e| u128::from(e.len)).sum();
    match wire::total_len(entries) {
        Ok(t) => assert_eq!(u128::from(t), sum),
        Err(_) => assert!(sum > u128::from(MAX_PAYLOAD_BYTES)),
    }
}
