//! Placement: which node is a page's home, and where on that node it lives.

use crate::space::{PageNum, PAGE_BYTES};
use crate::transport::NodeId;

/// A page's home: node and byte offset in that node's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Home {
    /// Home node.
    pub node: NodeId,
    /// Byte offset of the page in the node's region.
    pub offset: u64,
}

/// Maps global pages to homes. Must be a pure function of the page: every process of a
/// job (and, later, every node's directory) must compute the same answer.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// Home of `page`.
    fn home(&self, page: PageNum) -> Home;
}

impl<P: Placement + ?Sized> Placement for Box<P> {
    fn home(&self, page: PageNum) -> Home {
        (**self).home(page)
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

/// Another placement seen through a shift: page `p` is placed as page `p + first_page`.
/// Lets each process of a job place its own slice of the global space (whose pages it
/// numbers from 0) on node memory that no other process uses.
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
        self.inner.home(PageNum(page.0 + self.first_page))
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
}
