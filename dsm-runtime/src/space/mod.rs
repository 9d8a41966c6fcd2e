//! The global address space: a fixed virtual range whose pages live on memory nodes.

pub mod pool;
mod reservation;

pub use reservation::{Reservation, ReserveError};

/// Size of a page of the global space (the fault and transfer unit).
pub const PAGE_BYTES: usize = 4096;

/// Index of a page in the global range (0 = the page at the base).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageNum(pub u64);

/// Address arithmetic for a range at `base` of `pages` pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// First byte of the range.
    pub base: usize,
    /// Number of pages.
    pub pages: u64,
}

impl Layout {
    /// The page holding `addr`, if `addr` is inside the range.
    pub fn page_of(&self, addr: usize) -> Option<PageNum> {
        let off = addr.checked_sub(self.base)? as u64 / PAGE_BYTES as u64;
        (off < self.pages).then_some(PageNum(off))
    }

    /// First byte of `page`.
    pub fn addr_of(&self, page: PageNum) -> usize {
        debug_assert!(page.0 < self.pages, "page {} outside the range", page.0);
        self.base + page.0 as usize * PAGE_BYTES
    }

    /// Size of the range in bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_BYTES as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_arithmetic_round_trips_and_rejects_outsiders() {
        let l = Layout {
            base: 0x10_0000,
            pages: 4,
        };
        assert_eq!(l.page_of(0x10_0000), Some(PageNum(0)));
        assert_eq!(l.page_of(0x10_3fff), Some(PageNum(3)));
        assert_eq!(l.page_of(0x10_4000), None);
        assert_eq!(l.page_of(0xf_ffff), None);
        assert_eq!(l.addr_of(PageNum(2)), 0x10_2000);
    }
}
