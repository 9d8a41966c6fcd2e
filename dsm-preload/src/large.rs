//! Extents of the large-object part of a process's slot: which page ranges hold blocks
//! and which are free. Pure bookkeeping (first fit by address, neighbours merged on
//! free); the caller maps nothing and discards freed pages itself (`heap.rs`).
//!
//! Large blocks are few (a program holds a handful of multi-GiB arrays), so ordered maps
//! and a linear first-fit scan over the free extents are plenty; what matters is that a
//! block's address range is exactly what it was given, so freeing it can give its pages
//! up, and that a block followed by free space can grow in place (a `realloc` that
//! doubles a huge array moves nothing).

use std::collections::BTreeMap;

/// A block handed out: first byte and length (page multiples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: usize,
    pub len: usize,
}

/// Free and used extents of `[start, start + len)`.
#[derive(Debug, Default)]
pub struct Extents {
    free: BTreeMap<usize, usize>,
    used: BTreeMap<usize, usize>,
}

impl Extents {
    /// All of `[start, start + len)` free.
    pub fn new(start: usize, len: usize) -> Extents {
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(start, len);
        }
        Extents {
            free,
            used: BTreeMap::new(),
        }
    }

    /// Takes the lowest range of `len` bytes starting at a multiple of `align` (a power
    /// of two); `None` when no free extent has room.
    pub fn alloc(&mut self, len: usize, align: usize) -> Option<Block> {
        let (at, ext_start, ext_len) = self.free.iter().find_map(|(&s, &l)| {
            let at = s.checked_next_multiple_of(align)?;
            let end = s + l;
            (at.checked_add(len)? <= end).then_some((at, s, l))
        })?;
        self.free.remove(&ext_start);
        if at > ext_start {
            self.free.insert(ext_start, at - ext_start);
        }
        let tail = ext_start + ext_len - (at + len);
        if tail > 0 {
            self.free.insert(at + len, tail);
        }
        self.used.insert(at, len);
        Some(Block { start: at, len })
    }

    /// The block starting at `start`, if one does.
    pub fn block(&self, start: usize) -> Option<Block> {
        self.used.get(&start).map(|&len| Block { start, len })
    }

    /// Frees the block at `start`; returns it, or `None` if no block starts there.
    pub fn free(&mut self, start: usize) -> Option<Block> {
        let len = self.used.remove(&start)?;
        self.insert_free(start, len);
        Some(Block { start, len })
    }

    /// Grows the block at `start` to `new_len` in place if the extent after it is free
    /// and large enough; returns whether it did.
    pub fn grow_in_place(&mut self, start: usize, new_len: usize) -> bool {
        let Some(&len) = self.used.get(&start) else {
            return false;
        };
        let need = new_len.saturating_sub(len);
        let next = start + len;
        match self.free.get(&next) {
            Some(&free_len) if free_len >= need => {
                self.free.remove(&next);
                if free_len > need {
                    self.free.insert(next + need, free_len - need);
                }
                self.used.insert(start, new_len);
                true
            }
            _ => false,
        }
    }

    /// Shrinks the block at `start` to `new_len` (not zero); returns the range given up.
    pub fn shrink(&mut self, start: usize, new_len: usize) -> Option<Block> {
        let len = *self.used.get(&start)?;
        if new_len == 0 || new_len >= len {
            return None;
        }
        self.used.insert(start, new_len);
        self.insert_free(start + new_len, len - new_len);
        Some(Block {
            start: start + new_len,
            len: len - new_len,
        })
    }

    /// Bytes held by blocks.
    #[cfg(test)]
    pub fn used_bytes(&self) -> usize {
        self.used.values().sum()
    }

    fn insert_free(&mut self, mut start: usize, mut len: usize) {
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                start = s;
                len += l;
            }
        }
        if let Some(&l) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += l;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = 1 << 30;

    #[test]
    fn first_fit_aligns_and_merges_on_free() {
        let mut e = Extents::new(0x1000, 100 * G);
        let a = e.alloc(G, 4096).unwrap();
        assert_eq!(
            a,
            Block {
                start: 0x1000,
                len: G
            }
        );
        let b = e.alloc(G, 1 << 21).unwrap();
        assert_eq!(b.start % (1 << 21), 0);
        assert!(b.start >= a.start + a.len);
        let c = e.alloc(2 * G, 4096).unwrap();
        assert_eq!(e.free(b.start), Some(b));
        assert_eq!(e.free(b.start), None, "freed twice");
        e.free(a.start).unwrap();
        e.free(c.start).unwrap();
        assert_eq!(e.free.len(), 1, "everything merged back: {:?}", e.free);
        assert_eq!(e.used_bytes(), 0);
    }

    #[test]
    fn blocks_grow_in_place_when_the_next_extent_is_free() {
        let mut e = Extents::new(0, 64 * G);
        let a = e.alloc(G, 4096).unwrap();
        assert!(e.grow_in_place(a.start, 21 * G));
        assert_eq!(e.block(a.start).unwrap().len, 21 * G);
        let b = e.alloc(G, 4096).unwrap();
        assert_eq!(b.start, 21 * G);
        assert!(!e.grow_in_place(a.start, 22 * G), "b is in the way");
        assert_eq!(
            e.shrink(a.start, G),
            Some(Block {
                start: G,
                len: 20 * G
            })
        );
        assert!(e.grow_in_place(a.start, 21 * G));
        assert!(e.alloc(64 * G, 4096).is_none(), "more than is free");
    }
}
