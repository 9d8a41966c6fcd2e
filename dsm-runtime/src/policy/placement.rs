//! Placement: which node is a page's home, and where on that node it lives.

use crate::node::header::NODE_HEADER_BYTES;
use crate::policy::PageMap;
use crate::redundancy::copies::{CopyLayout, HomeSet};
use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::NodeId;
use std::sync::Mutex;

/// A page's home: node and byte offset in that node's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Home {
    /// Home node.
    pub node: NodeId,
    /// Byte offset of the page in the node's region.
    pub offset: u64,
}

/// Maps global pages to homes. Must be a pure function of the page: every process of a
/// job (and, later, every node's directory) must compute the same answer.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// Primary home of `page`: where operations on it are addressed.
    fn home(&self, page: PageNum) -> Home;
    /// Every home of `page`, primary first: one unless the job keeps copies
    /// (`redundancy`).
    fn homes(&self, page: PageNum) -> HomeSet {
        HomeSet::one(self.home(page))
    }
}

impl<P: Placement + ?Sized> Placement for Box<P> {
    fn home(&self, page: PageNum) -> Home {
        (**self).home(page)
    }
    fn homes(&self, page: PageNum) -> HomeSet {
        (**self).homes(page)
    }
}

/// Another placement whose pages have copies on other nodes (`replicate:R`): its homes
/// are the primary home's copy set ([`CopyLayout`]).
#[derive(Debug)]
pub struct Replicated<P> {
    inner: P,
    layout: std::sync::Arc<CopyLayout>,
}

impl<P: Placement> Replicated<P> {
    /// `inner` must place primaries within `layout.band_bytes()` of each node's data.
    pub fn new(inner: P, layout: std::sync::Arc<CopyLayout>) -> Replicated<P> {
        Replicated { inner, layout }
    }
}

impl<P: Placement> Placement for Replicated<P> {
    fn home(&self, page: PageNum) -> Home {
        self.inner.home(page)
    }
    fn homes(&self, page: PageNum) -> HomeSet {
        self.layout.homes_of(self.inner.home(page))
    }
}

/// The pool cannot hold the requested range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {space_bytes}-byte global range does not fit in the pool: {nodes} nodes of {node_bytes} bytes hold {pool_bytes} (placement chunk {chunk_pages} pages)")]
pub struct PlacementError {
    /// Requested range size.
    pub space_bytes: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Smallest node region.
    pub node_bytes: u64,
    /// What the pool can place.
    pub pool_bytes: u64,
    /// Chunk size in pages.
    pub chunk_pages: u64,
}

/// Round-robin chunks of `chunk_pages` pages over the nodes (interleaved, the default).
#[derive(Debug, Clone)]
pub struct Interleaved {
    nodes: u64,
    chunk_pages: u64,
}

impl Interleaved {
    /// Places `space_pages` pages over nodes whose smallest region is `node_bytes`.
    pub fn new(
        nodes: usize,
        node_bytes: u64,
        chunk_pages: u64,
        space_pages: u64,
    ) -> Result<Interleaved, PlacementError> {
        let page = PAGE_BYTES as u64;
        let chunks_per_node = node_bytes / page / chunk_pages.max(1);
        let pool_pages = chunks_per_node * chunk_pages * nodes as u64;
        if nodes == 0 || chunk_pages == 0 || space_pages > pool_pages {
            return Err(PlacementError {
                space_bytes: space_pages * page,
                nodes,
                node_bytes,
                pool_bytes: pool_pages * page,
                chunk_pages,
            });
        }
        Ok(Interleaved {
            nodes: nodes as u64,
            chunk_pages,
        })
    }
}

impl Placement for Interleaved {
    fn home(&self, page: PageNum) -> Home {
        let chunk = page.0 / self.chunk_pages;
        let within = page.0 % self.chunk_pages;
        let node = chunk % self.nodes;
        let local_chunk = chunk / self.nodes;
        Home {
            node: NodeId(node as u16),
            offset: (local_chunk * self.chunk_pages + within) * PAGE_BYTES as u64,
        }
    }
}

/// Another placement seen through a shift: page `p` is placed as page `p + first_page`,
/// past each node's header ([`NODE_HEADER_BYTES`]). Lets each process of a job place its
/// own slice of the global space (whose pages it numbers from 0) where no other process
/// places pages, while placements themselves number node offsets from 0.
#[derive(Debug, Clone)]
pub struct Shifted<P> {
    inner: P,
    first_page: u64,
}

impl<P: Placement> Shifted<P> {
    /// `inner` must have been built for `first_page` + this range's pages.
    pub fn new(inner: P, first_page: u64) -> Shifted<P> {
        Shifted { inner, first_page }
    }
}

impl<P: Placement> Placement for Shifted<P> {
    fn home(&self, page: PageNum) -> Home {
        let h = self.inner.home(PageNum(page.0 + self.first_page));
        Home {
            node: h.node,
            offset: h.offset + NODE_HEADER_BYTES,
        }
    }
}

/// Contiguous ranges: node 0 is home to the first `space_pages / nodes` pages (rounded
/// up), node 1 to the next range, and so on. Keeps a program's neighbouring pages on one
/// node, so a batch of readahead goes to one node instead of all of them.
#[derive(Debug, Clone)]
pub struct Blocked {
    pages_per_node: u64,
}

impl Blocked {
    /// Splits `space_pages` pages into `nodes` ranges of equal size (the last may be
    /// shorter), each within `node_bytes`.
    pub fn new(nodes: usize, node_bytes: u64, space_pages: u64) -> Result<Blocked, PlacementError> {
        let page = PAGE_BYTES as u64;
        let pages_per_node = space_pages.div_ceil(nodes.max(1) as u64).max(1);
        if nodes == 0 || pages_per_node > node_bytes / page {
            return Err(PlacementError {
                space_bytes: space_pages * page,
                nodes,
                node_bytes,
                pool_bytes: (node_bytes / page) * page * nodes as u64,
                chunk_pages: pages_per_node,
            });
        }
        Ok(Blocked { pages_per_node })
    }
}

impl Placement for Blocked {
    fn home(&self, page: PageNum) -> Home {
        Home {
            node: NodeId((page.0 / self.pages_per_node) as u16),
            offset: (page.0 % self.pages_per_node) * PAGE_BYTES as u64,
        }
    }
}

/// First touch: a page gets its home the first time anyone asks for it (which is its
/// first write-back: a page never written back needs no home), taking the next free
/// slot of node 0 (the local node) and spilling to nodes 1, 2, ... in order when a node
/// is full. A program whose working set fits the local node's region then never leaves
/// it.
///
/// For single-process pooled mode only: homes depend on the order of write-backs, so
/// two processes would not agree on them, which breaks the [`Placement`] rule that every
/// process computes the same answer. Deterministic for a given order of calls, and no
/// two pages of the range it was built for ever share a home (the pool is checked to hold
/// the whole range). Asking for a page outside that range is a caller's bug: debug builds
/// assert, release builds wrap around to node 0.
#[derive(Debug)]
pub struct FirstTouch {
    pages_per_node: u64,
    slots: u64,
    assigned: Mutex<Assigned>,
}

#[derive(Debug, Default)]
struct Assigned {
    homes: PageMap<Home>,
    next_slot: u64,
}

impl FirstTouch {
    /// A pool of `nodes` regions of `node_bytes` for a range of `space_pages` pages.
    pub fn new(
        nodes: usize,
        node_bytes: u64,
        space_pages: u64,
    ) -> Result<FirstTouch, PlacementError> {
        let page = PAGE_BYTES as u64;
        let pages_per_node = node_bytes / page;
        let slots = pages_per_node * nodes as u64;
        if nodes == 0 || pages_per_node == 0 || space_pages > slots {
            return Err(PlacementError {
                space_bytes: space_pages * page,
                nodes,
                node_bytes,
                pool_bytes: slots * page,
                chunk_pages: 1,
            });
        }
        Ok(FirstTouch {
            pages_per_node,
            slots,
            assigned: Mutex::new(Assigned::default()),
        })
    }
}

impl Placement for FirstTouch {
    fn home(&self, page: PageNum) -> Home {
        // A panic elsewhere while holding the lock leaves the map consistent (every
        // update is one insert after the slot is computed), so poisoning is ignored.
        let mut a = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&h) = a.homes.get(&page) {
            return h;
        }
        debug_assert!(
            a.next_slot < self.slots,
            "first-touch pool exhausted at page {}",
            page.0
        );
        let slot = a.next_slot % self.slots;
        a.next_slot += 1;
        let h = Home {
            node: NodeId((slot / self.pages_per_node) as u16),
            offset: (slot % self.pages_per_node) * PAGE_BYTES as u64,
        };
        a.homes.insert(page, h);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn interleaving_spreads_chunks_round_robin() {
        let p = Interleaved::new(3, 1 << 20, 2, 100).unwrap();
        let h: Vec<_> = (0..8).map(|i| p.home(PageNum(i))).collect();
        assert_eq!(
            h[0],
            Home {
                node: NodeId(0),
                offset: 0
            }
        );
        assert_eq!(
            h[1],
            Home {
                node: NodeId(0),
                offset: 4096
            }
        );
        assert_eq!(
            h[2],
            Home {
                node: NodeId(1),
                offset: 0
            }
        );
        assert_eq!(
            h[6],
            Home {
                node: NodeId(0),
                offset: 8192
            }
        );
    }

    #[test]
    fn shifted_slices_do_not_overlap() {
        let node_bytes = 64 * 4096;
        let a = Shifted::new(Interleaved::new(4, node_bytes, 1, 128).unwrap(), 0);
        let b = Shifted::new(Interleaved::new(4, node_bytes, 1, 256).unwrap(), 128);
        let mut seen = HashSet::new();
        for i in 0..128 {
            for h in [a.home(PageNum(i)), b.home(PageNum(i))] {
                assert!(seen.insert((h.node, h.offset)));
            }
        }
    }

    #[test]
    fn every_page_gets_a_distinct_in_bounds_home() {
        let node_bytes = 64 * 4096;
        let p = Interleaved::new(4, node_bytes, 4, 256).unwrap();
        let mut seen = HashSet::new();
        for i in 0..256 {
            let h = p.home(PageNum(i));
            assert!(h.offset + 4096 <= node_bytes);
            assert!(seen.insert((h.node, h.offset)));
        }
        assert!(Interleaved::new(4, node_bytes, 4, 257).is_err());
    }

    #[test]
    fn blocked_gives_each_node_one_contiguous_range() {
        let p = Blocked::new(3, 4 * 4096, 10).unwrap(); // 4 pages per node
        let nodes: Vec<u16> = (0..10).map(|i| p.home(PageNum(i)).node.0).collect();
        assert_eq!(nodes, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
        assert_eq!(p.home(PageNum(5)).offset, 4096);
        let mut seen = HashSet::new();
        for i in 0..10 {
            assert!(seen.insert(p.home(PageNum(i))));
        }
        assert!(
            Blocked::new(3, 4 * 4096, 13).is_err(),
            "5 pages per node do not fit"
        );
        assert!(Blocked::new(0, 4096, 1).is_err());
    }

    #[test]
    fn first_touch_fills_node_zero_first_in_order_of_asking() {
        let p = FirstTouch::new(2, 2 * 4096, 4).unwrap();
        let h = |i| p.home(PageNum(i));
        assert_eq!(
            h(9),
            Home {
                node: NodeId(0),
                offset: 0
            }
        );
        assert_eq!(
            h(3),
            Home {
                node: NodeId(0),
                offset: 4096
            }
        );
        assert_eq!(
            h(9),
            Home {
                node: NodeId(0),
                offset: 0
            },
            "stable once given"
        );
        assert_eq!(
            h(0),
            Home {
                node: NodeId(1),
                offset: 0
            }
        );
        assert_eq!(
            h(1),
            Home {
                node: NodeId(1),
                offset: 4096
            }
        );
        assert!(FirstTouch::new(2, 2 * 4096, 5).is_err());
    }

    proptest::proptest! {
        #[test]
        fn first_touch_never_shares_a_home(order in proptest::collection::vec(0u64..64, 0..300)) {
            let p = FirstTouch::new(3, 22 * 4096, 64).unwrap();
            let mut homes = std::collections::HashMap::new();
            for i in order {
                let h = p.home(PageNum(i));
                proptest::prop_assert!(h.offset + 4096 <= 22 * 4096);
                if let Some(prev) = homes.insert(h, i) {
                    proptest::prop_assert_eq!(prev, i, "two pages share {:?}", h);
                }
            }
        }
    }
}
