//! A reference for what a node must do with the request at the front of a byte stream,
//! written from the protocol's description (transport/wire.rs) with no code shared with
//! the node: fields read by hand, sums and bounds in u128 so nothing can overflow.

const MAGIC: u32 = 0x314D_5344;

/// The node's duty for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More bytes needed.
    Truncated,
    /// Drop the connection.
    Malformed,
    /// Answer with a rejection; the request spans `span` bytes.
    Rejected { span: usize },
    /// Serve it: `extents` are (offset, len) for reads and writes, `[(offset, 8)]` for a
    /// compare-and-swap, empty for a call.
    Serve {
        op: u8,
        extents: Vec<(u64, u32)>,
        span: usize,
    },
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    b[at..at + n]
        .iter()
        .rev()
        .fold(0, |acc, x| (acc << 8) | u64::from(*x))
}

/// What the node must do with the request at the front of `b`, for a region of
/// `region` bytes.
pub fn classify(b: &[u8], region: u64) -> Outcome {
    if b.len() < 24 {
        return Outcome::Truncated;
    }
    let (op, count, payload) = (b[4], le(b, 8, 4), le(b, 12, 4));
    let shape_ok = match op {
        1 => payload == 0,
        2 => true,
        3 => count == 0 && payload == 24,
        4 => count == 0 && payload <= 64 << 10,
        _ => false,
    };
    if le(b, 0, 4) != u64::from(MAGIC) || !shape_ok || count > 4096 || payload > 64 << 20 {
        return Outcome::Malformed;
    }
    let head = 24 + 16 * count as usize;
    let span = head + payload as usize;
    if b.len() < head {
        return Outcome::Truncated;
    }
    let extents: Vec<(u64, u32)> = (0..count as usize)
        .map(|i| (le(b, 24 + 16 * i, 8), le(b, 32 + 16 * i, 4) as u32))
        .collect();
    if extents.iter().any(|e| e.1 > 1 << 20) {
        return Outcome::Malformed;
    }
    let inside = |(o, l): (u64, u32)| u128::from(o) + u128::from(l) <= u128::from(region);
    match op {
        1 | 2 => {
            let sum: u128 = extents.iter().map(|e| u128::from(e.1)).sum();
            if sum > 64 << 20 || (op == 2 && sum != u128::from(payload)) {
                return Outcome::Malformed;
            }
            if !extents.iter().all(|e| inside(*e)) {
                return Outcome::Rejected { span };
            }
        }
        _ => {}
    }
    if b.len() < span {
        return Outcome::Truncated;
    }
    if op == 3 {
        let offset = le(b, 24, 8);
        if offset % 8 != 0 || !inside((offset, 8)) {
            return Outcome::Rejected { span };
        }
        return Outcome::Serve {
            op,
            extents: vec![(offset, 8)],
            span,
        };
    }
    Outcome::Serve { op, extents, span }
}
