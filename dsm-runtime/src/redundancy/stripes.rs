//! Where the pieces of an erasure-coded group live (`ec:K+1`).
//!
//! Each node's data area is cut in two: a data band of `band_bytes`, where placement puts
//! pages exactly as without redundancy, and a parity band after it. The data slots of all
//! nodes are numbered row-major, `slot = row * nodes + node` (row = page offset in the
//! band); group `g` is the `K` consecutive slots `g*K .. g*K+K`, so its data pieces sit on
//! `K` different nodes. With the default interleaved placement (one page per chunk) the
//! slot number *is* the global page number, so a group is `K` consecutive pages of one
//! process's slice of the space as long as the slice is a multiple of `K` pages: no group
//! straddles two processes, and one process's group lock serialises every write-back of
//! a group.
//!
//! Group `g`'s parity sits on node `(g*K + K + s(g)) % nodes`, which is never one of the
//! group's data nodes (`0 <= s(g) < nodes - K`), in that node's parity band at the next
//! free parity slot. `s(g)` steps every `nodes / gcd(nodes, K)` groups so that parity
//! spreads evenly over the nodes, and moves on to the next node when that one shares a
//! host with a data piece (the data pieces, on consecutive nodes, are on different hosts
//! when `dsmrun` spreads nodes round-robin over at least K hosts). The pattern repeats
//! every `period` groups, so a parity's offset is a pure function of `g` and of the node
//! list: every process computes the same one.
//!
//! With `M = 1` the parity is the XOR of the `K` data pieces. Any one lost piece is the
//! XOR of the others; two lost pieces of one group are lost data.

use crate::node::header::NODE_HEADER_BYTES;
use crate::policy::Home;
use crate::space::PAGE_BYTES;
use crate::transport::{NodeId, NodeInfo};
use std::sync::{Mutex, MutexGuard};

/// Locks that serialise the write-backs and rebuilds of a group within a process.
const GROUP_LOCKS: usize = 1024;

/// The stripe layout of a job (see the module documentation).
#[derive(Debug)]
pub struct StripeLayout {
    nodes: u64,
    data: u64,
    band_pages: u64,
    /// Per group of one period: its parity node and its rank among that node's parities.
    period: Vec<(u16, u32)>,
    /// Parities per node in one period.
    per_period: Vec<u32>,
    locks: Vec<Mutex<()>>,
}

/// A group's number.
pub type Group = u64;

impl StripeLayout {
    /// `data` data pieces per group over `nodes` (at least `data + 1` of them) whose data
    /// areas hold at least `data_bytes`: the data band is as large as the parity band
    /// that goes with it leaves room for.
    pub fn new(nodes: &[NodeInfo], data: usize, data_bytes: u64) -> StripeLayout {
        let n = nodes.len().max(2) as u64;
        let k = (data as u64).clamp(1, n - 1);
        let c = n / gcd(n, k);
        let spread = n - k;
        let period_len = c * spread;
        let host = |i: u64| nodes.get(i as usize).map(|n| n.addr.ip());
        let mut per_period = vec![0u32; n as usize];
        let period = (0..period_len)
            .map(|g| {
                let members: Vec<_> = (0..k).map(|j| host((g * k + j) % n)).collect();
                // Among the nodes after the group, starting at the rotating one: the first
                // on a host of its own, else the first (all hosts taken by the data).
                let candidates = (0..spread).map(|i| (g * k + k + ((g / c) + i) % spread) % n);
                let node = candidates
                    .clone()
                    .find(|&p| !members.contains(&host(p)))
                    .or_else(|| candidates.clone().next())
                    .expect("at least one node beyond the group")
                    as usize;
                per_period[node] += 1;
                (node as u16, per_period[node] - 1)
            })
            .collect();
        let mut layout = StripeLayout {
            nodes: n,
            data: k,
            band_pages: 0,
            period,
            per_period,
            locks: (0..GROUP_LOCKS).map(|_| Mutex::new(())).collect(),
        };
        layout.band_pages = layout.largest_band(data_bytes / PAGE_BYTES as u64);
        layout
    }

    /// The largest data band (a whole number of groups) that fits with its parity in
    /// `area_pages`.
    fn largest_band(&self, area_pages: u64) -> u64 {
        // Bands must hold whole groups: rows * nodes a multiple of K.
        let step = self.data / gcd(self.nodes, self.data);
        let (mut lo, mut hi) = (0u64, area_pages / step);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let band = mid * step;
            if band + self.parity_pages(band) <= area_pages {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo * step
    }

    /// Parity pages the fullest node needs for a data band of `band` pages.
    fn parity_pages(&self, band: u64) -> u64 {
        let groups = band * self.nodes / self.data;
        let len = self.period.len() as u64;
        let (whole, rest) = (groups / len, groups % len);
        let mut need: Vec<u64> = self
            .per_period
            .iter()
            .map(|&c| whole * u64::from(c))
            .collect();
        for &(node, _) in &self.period[..rest as usize] {
            need[usize::from(node)] += 1;
        }
        need.into_iter().max().unwrap_or(0)
    }

    /// Bytes of each node that data pieces (placement) may use.
    pub fn band_bytes(&self) -> u64 {
        self.band_pages * PAGE_BYTES as u64
    }

    /// Data pieces per group.
    pub fn data_pieces(&self) -> usize {
        self.data as usize
    }

    /// The group of the data piece at `home`; `None` for an offset outside the data band.
    pub fn group_of(&self, home: Home) -> Option<(Group, usize)> {
        let row = home.offset.checked_sub(NODE_HEADER_BYTES)? / PAGE_BYTES as u64;
        if row >= self.band_pages || u64::from(home.node.0) >= self.nodes {
            return None;
        }
        let slot = row * self.nodes + u64::from(home.node.0);
        Some((slot / self.data, (slot % self.data) as usize))
    }

    /// Data piece `j` of group `g`.
    pub fn member(&self, g: Group, j: usize) -> Home {
        let slot = g * self.data + j as u64;
        Home {
            node: NodeId((slot % self.nodes) as u16),
            offset: NODE_HEADER_BYTES + slot / self.nodes * PAGE_BYTES as u64,
        }
    }

    /// The parity piece of group `g`.
    pub fn parity(&self, g: Group) -> Home {
        let len = self.period.len() as u64;
        let (node, rank) = self.period[(g % len) as usize];
        let before = g / len * u64::from(self.per_period[usize::from(node)]);
        Home {
            node: NodeId(node),
            offset: NODE_HEADER_BYTES
                + self.band_bytes()
                + (before + u64::from(rank)) * PAGE_BYTES as u64,
        }
    }

    /// Whether a piece of `g` (data or parity) lives on `node`.
    pub fn touches(&self, g: Group, node: NodeId) -> bool {
        self.holders(g).contains(&node)
    }

    /// The nodes of every piece of `g`, parity last.
    pub fn holders(&self, g: Group) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = (0..self.data_pieces())
            .map(|j| self.member(g, j).node)
            .collect();
        nodes.push(self.parity(g).node);
        nodes
    }

    /// Locks every group of `groups` (sorted, so that two sessions never wait on each
    /// other), for a write-back or a rebuild.
    pub fn lock(&self, groups: impl Iterator<Item = Group>) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = groups.map(|g| (g % GROUP_LOCKS as u64) as usize).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| self.locks[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `acc ^= piece`, a page at a time.
pub fn xor_into(acc: &mut [u8], piece: &[u8]) {
    for (a, p) in acc.chunks_exact_mut(8).zip(piece.chunks_exact(8)) {
        let x =
            u64::from_ne_bytes(a.try_into().unwrap()) ^ u64::from_ne_bytes(p.try_into().unwrap());
        a.copy_from_slice(&x.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

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

    fn local(n: usize) -> Vec<NodeInfo> {
        let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 1000 + i)).collect();
        nodes(&addrs.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    }

    /// Every piece of every group on its own node, inside the area, never two pieces at
    /// one place; parity spread evenly; overhead close to (K+1)/K.
    #[test]
    fn pieces_sit_on_distinct_nodes_fill_the_area_and_never_overlap() {
        for (n, k) in [(5usize, 4usize), (6, 4), (8, 4), (3, 2), (7, 3)] {
            let area = 4000 * PAGE_BYTES as u64;
            let l = StripeLayout::new(&local(n), k, area);
            let band = l.band_bytes() / PAGE_BYTES as u64;
            let groups = band * n as u64 / k as u64;
            let mut seen = HashSet::new();
            let mut parity_per_node: HashMap<u16, u64> = HashMap::new();
            for g in 0..groups {
                let mut on = HashSet::new();
                for j in 0..k {
                    let h = l.member(g, j);
                    assert_eq!(l.group_of(h), Some((g, j)));
                    assert!(
                        on.insert(h.node),
                        "({n},{k}) group {g}: two pieces on a node"
                    );
                    assert!(seen.insert(h));
                }
                let p = l.parity(g);
                assert!(
                    on.insert(p.node),
                    "({n},{k}) group {g}: parity beside its data"
                );
                assert!(p.offset + PAGE_BYTES as u64 <= NODE_HEADER_BYTES + area);
                assert!(l.group_of(p).is_none(), "parity inside the data band");
                assert!(seen.insert(p));
                *parity_per_node.entry(p.node.0).or_default() += 1;
            }
            let (lo, hi) = (
                *parity_per_node.values().min().unwrap(),
                *parity_per_node.values().max().unwrap(),
            );
            assert_eq!(parity_per_node.len(), n, "({n},{k}) parity misses nodes");
            assert!(
                hi - lo <= hi / 10 + 2,
                "({n},{k}) parity uneven: {lo}..{hi}"
            );
            let used = (band + hi) as f64 / band as f64;
            let ideal = (k + 1) as f64 / k as f64;
            assert!(
                used < ideal + 0.02,
                "({n},{k}) overhead {used} over {ideal}"
            );
        }
    }

    #[test]
    fn pieces_go_to_different_hosts_when_the_nodes_span_enough_of_them() {
        // Ten nodes spread round-robin over five hosts, as dsmrun spreads them.
        let addrs: Vec<String> = (0..10)
            .map(|i| format!("10.0.0.{}:{}", i % 5 + 1, 7000 + i))
            .collect();
        let ns = nodes(&addrs.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let l = StripeLayout::new(&ns, 4, 4000 * PAGE_BYTES as u64);
        let host = |h: Home| ns[usize::from(h.node.0)].addr.ip();
        for g in 0..200 {
            let mut hosts: Vec<_> = (0..4).map(|j| host(l.member(g, j))).collect();
            hosts.push(host(l.parity(g)));
            hosts.sort_unstable();
            hosts.dedup();
            assert_eq!(hosts.len(), 5, "group {g}: pieces share a host");
        }
    }

    #[test]
    fn xor_of_the_others_rebuilds_any_piece() {
        let pieces: Vec<Vec<u8>> = (0..4u8)
            .map(|i| vec![i.wrapping_mul(37) ^ 5; 4096])
            .collect();
        let mut parity = vec![0u8; 4096];
        for p in &pieces {
            xor_into(&mut parity, p);
        }
        let mut rebuilt = parity.clone();
        for p in [&pieces[0], &pieces[1], &pieces[3]] {
            xor_into(&mut rebuilt, p);
        }
        assert_eq!(rebuilt, pieces[2]);
    }
}
