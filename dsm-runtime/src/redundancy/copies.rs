//! Where a page's copies live.
//!
//! Placement chooses the primary home `(node n, offset o)` inside the first band of each
//! node's data area (the area is cut into `copies` bands of `band_bytes`). Copy `r` lives
//! on node `(n + r * stride) % nodes` at offset `o + r * band_bytes`: a pure function of
//! the primary home, so every process (and every session wrapper, which sees only the
//! primary home of each operation) computes the same set without a table. `stride` is
//! chosen so that the copies of a page land on different hosts wherever the nodes allow.

use crate::policy::Home;
use crate::transport::{NodeId, NodeInfo};
use std::net::IpAddr;

use super::COPIES_MAX;

/// The homes of one page: primary first. Fixed size, so the fault path never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HomeSet {
    homes: [Home; COPIES_MAX],
    len: u8,
}

impl HomeSet {
    /// A set of one home.
    pub fn one(home: Home) -> HomeSet {
        let mut homes = [home; COPIES_MAX];
        homes[0] = home;
        HomeSet { homes, len: 1 }
    }

    fn push(&mut self, home: Home) {
        self.homes[usize::from(self.len)] = home;
        self.len += 1;
    }

    /// The homes, primary first.
    pub fn as_slice(&self) -> &[Home] {
        &self.homes[..usize::from(self.len)]
    }

    /// The nodes of the homes, primary first.
    pub fn nodes(&self) -> [NodeId; COPIES_MAX] {
        let mut nodes = [self.homes[0].node; COPIES_MAX];
        for (n, h) in nodes.iter_mut().zip(self.as_slice()) {
            *n = h.node;
        }
        nodes
    }

    /// How many homes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true (a page has at least one home).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The copy layout of a job: how many copies, on which nodes, at which offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyLayout {
    nodes: u16,
    copies: u8,
    band_bytes: u64,
    stride: u16,
}

impl CopyLayout {
    /// `copies` copies over `nodes` whose data areas (after the header) hold at least
    /// `data_bytes`: each band gets `data_bytes / copies`, rounded down to pages.
    pub fn new(nodes: &[NodeInfo], copies: usize, data_bytes: u64) -> CopyLayout {
        let page = crate::space::PAGE_BYTES as u64;
        let copies = copies.clamp(1, COPIES_MAX.min(nodes.len().max(1)));
        CopyLayout {
            nodes: nodes.len() as u16,
            copies: copies as u8,
            band_bytes: data_bytes / copies as u64 / page * page,
            stride: stride_across_hosts(nodes, copies),
        }
    }

    /// Bytes of each node that primary homes may use (what placement is built over).
    pub fn band_bytes(&self) -> u64 {
        self.band_bytes
    }

    /// Copies per page.
    pub fn copies(&self) -> usize {
        usize::from(self.copies)
    }

    /// Every home of the page whose primary home is `primary`, primary first.
    pub fn homes_of(&self, primary: Home) -> HomeSet {
        let mut set = HomeSet::one(primary);
        for r in 1..u64::from(self.copies) {
            let node =
                (u64::from(primary.node.0) + r * u64::from(self.stride)) % u64::from(self.nodes);
            set.push(Home {
                node: NodeId(node as u16),
                offset: primary.offset + r * self.band_bytes,
            });
        }
        set
    }
}

/// The stride (1 to nodes - 1) whose copies fall on the most distinct hosts, summed over
/// every primary node, among strides that keep the copies on distinct nodes; 1 when all
/// nodes share a host (then any distinct nodes will do). `dsmrun` spreads nodes over
/// hosts round-robin, so stride 1 usually already crosses hosts.
fn stride_across_hosts(nodes: &[NodeInfo], copies: usize) -> u16 {
    let n = nodes.len();
    if n < 2 {
        return 1;
    }
    let host = |i: usize| -> IpAddr { nodes[i % n].addr.ip() };
    let mut best = (0usize, 1u16);
    for stride in 1..n {
        let mut score = 0;
        let mut distinct_nodes = true;
        for first in 0..n {
            let members: Vec<usize> = (0..copies).map(|r| (first + r * stride) % n).collect();
            let mut sorted = members.clone();
            sorted.sort_unstable();
            sorted.dedup();
            distinct_nodes &= sorted.len() == copies;
            let mut hosts: Vec<IpAddr> = members.iter().map(|&m| host(m)).collect();
            hosts.sort_unstable();
            hosts.dedup();
            score += hosts.len();
        }
        if distinct_nodes && score > best.0 {
            best = (score, stride as u16);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn nodes(addrs: &[&str]) -> Vec<NodeInfo> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| NodeInfo {
                id: NodeId(i as u16),
                addr: a.parse().unwrap(),
                region_bytes: 1 << 30,
            })
            .collect()
    }

    #[test]
    fn copies_sit_on_distinct_nodes_and_never_overlap() {
        let ns = nodes(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let l = CopyLayout::new(&ns, 2, 64 * 4096);
        assert_eq!(l.band_bytes(), 32 * 4096);
        let mut seen = HashSet::new();
        for node in 0..3u16 {
            for p in 0..32u64 {
                let set = l.homes_of(Home {
                    node: NodeId(node),
                    offset: p * 4096,
                });
                assert_eq!(set.len(), 2);
                assert_ne!(set.as_slice()[0].node, set.as_slice()[1].node);
                for h in set.as_slice() {
                    assert!(h.offset + 4096 <= 64 * 4096, "{h:?} outside the area");
                    assert!(seen.insert(*h), "{h:?} holds two copies");
                }
            }
        }
    }

    #[test]
    fn copies_go_to_other_hosts_when_nodes_span_hosts() {
        // Nodes 0 and 1 on host A, 2 and 3 on host B: stride 1 would pair 0 with 1.
        let ns = nodes(&["10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1", "10.0.0.2:2"]);
        let l = CopyLayout::new(&ns, 2, 1 << 20);
        for n in 0..4u16 {
            let set = l.homes_of(Home {
                node: NodeId(n),
                offset: 0,
            });
            let [a, b] = [set.as_slice()[0].node, set.as_slice()[1].node];
            assert_ne!(
                ns[usize::from(a.0)].addr.ip(),
                ns[usize::from(b.0)].addr.ip(),
                "copies of node {n}'s pages share a host"
            );
        }
    }
}
