//! Policies: pure decisions the fault path acts on. They do no I/O, so the same code
//! drives the runtime and the offline cache simulator.

pub mod eviction;
pub mod placement;
pub mod prefetch;
pub mod profile;

pub use eviction::{Clock, EvictionPolicy, Fifo, TwoQ};
pub use placement::{Blocked, FirstTouch, Home, Interleaved, Placement, PlacementError};
pub use prefetch::{Leap, NoPrefetch, PrefetchPolicy, Readahead, Stride};
pub use profile::{Profile, ProfileError};

use crate::space::PageNum;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes page numbers with a 64-bit finaliser (MurmurHash3's fmix64): page numbers are
/// not chosen by an attacker, and SipHash would cost more than the policy work it
/// indexes. The finaliser mixes high bits into low ones, so pages a power of two apart
/// (matrix columns) do not land in one bucket.
#[derive(Default, Clone, Copy)]
pub struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

/// A map keyed by page number, with [`PageHasher`].
pub type PageMap<V> = HashMap<PageNum, V, BuildHasherDefault<PageHasher>>;
/// A set of page numbers, with [`PageHasher`].
pub type PageSet = HashSet<PageNum, BuildHasherDefault<PageHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn page_hashes_spread_power_of_two_strides_over_buckets() {
        let build = BuildHasherDefault::<PageHasher>::default();
        for shift in [0, 9, 20, 33] {
            let buckets: HashSet<u64> = (0..1024u64)
                .map(|k| build.hash_one(PageNum(k << shift)) & 1023)
                .collect();
            assert!(
                buckets.len() > 550,
                "stride 2^{shift}: {} buckets",
                buckets.len()
            );
        }
    }
}
