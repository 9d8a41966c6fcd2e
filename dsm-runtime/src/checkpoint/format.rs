//! The image file's layout, shared with the restarter (`restarter/restarter.c`, which
//! reads it with the same constants). Every field is a little-endian `u64`.
//!
//! - Header, the first page: `MAGIC`, `VERSION`, offset and length of the metadata,
//!   the metadata's hash, then the hash of these five words.
//! - Data: the saved pages, in runs of contiguous pages, each at a page-aligned offset.
//! - Metadata (after the data), in order:
//!   `hook`, `slot base`, `slot bytes`, `main tid`, `main fs_base`;
//!   `MM_FIELDS` words for `PR_SET_MM_MAP` (code, data, brk, stack, args, environment);
//!   `n`, then `n` words of the auxiliary vector;
//!   `vdso start, vdso end, vvar start, vvar end` (0 when absent);
//!   `SIGNALS` dispositions of 4 words (kernel `struct sigaction`: handler, flags,
//!   restorer, mask), for signals 1 to 64;
//!   `n` mappings: `start, end, prot, kind, runs`, then per run
//!   `address, bytes, file offset, hash`;
//!   `n` descriptors: `fd, kind, open flags, offset, path bytes`, then the path padded
//!   with zeros to whole words.

/// "DSMCKPT1" read as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DSMCKPT1");
/// Bumped whenever the layout changes.
pub const VERSION: u64 = 1;
/// Bytes before the first run of data.
pub const HEADER_BYTES: u64 = 4096;
/// Words of the mm fields.
pub const MM_FIELDS: usize = 11;
/// Signal dispositions recorded (1 to 64).
pub const SIGNALS: usize = 64;

/// A mapping restored as it was.
pub const KIND_PLAIN: u64 = 0;
/// The main thread's stack: restored with room below to grow.
pub const KIND_STACK: u64 = 1;

/// A descriptor the restarter keeps as its own (0, 1, 2).
pub const FD_INHERITED: u64 = 0;
/// A file or device reopened by path.
pub const FD_PATH: u64 = 1;

/// Where the restarter lives (its text, data and stack; see `build.rs`): no mapping of
/// an image may lie there.
pub const RESTARTER_ZONE: std::ops::Range<u64> = 0x3f00_0000_0000..0x3f01_0000_0000;

/// A fast hash of whole words (FNV-1a over 64-bit words): any change of one word changes
/// it, which is what a damaged image needs.
#[derive(Clone, Copy)]
pub struct Hash(u64);

impl Default for Hash {
    fn default() -> Self {
        Hash(0xcbf2_9ce4_8422_2325)
    }
}

impl Hash {
    /// Adds `bytes` (a multiple of 8 long; a shorter tail is padded with zeros).
    pub fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut w = [0u8; 8];
            w[..tail.len()].copy_from_slice(tail);
            self.word(u64::from_le_bytes(w));
        }
    }

    /// Adds one word.
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The hash of `words`.
pub fn hash_words(words: &[u64]) -> u64 {
    let mut h = Hash::default();
    words.iter().for_each(|w| h.word(*w));
    h.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flipped_byte_changes_the_hash() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut a = Hash::default();
        a.add(&data);
        for i in [0, 1, 100, 4095] {
            let mut d = data.clone();
            d[i] ^= 0x10;
            let mut b = Hash::default();
            b.add(&d);
            assert_ne!(a.value(), b.value(), "byte {i}");
        }
    }
}
