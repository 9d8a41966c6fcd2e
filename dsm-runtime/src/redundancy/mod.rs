//! Redundancy: every page at home in several places, so that a memory node's death costs
//! the job a stall, not its data.
//!
//! - [`Redundancy`] is the setting (`--redundancy none|replicate:R|ec:K+M`).
//! - [`copies::CopyLayout`] says where a page's copies live: placement picks the primary
//!   home, and copy `r` sits on another node, in that node's `r`-th band of its region
//!   ([`crate::policy::Placement::homes`] returns the set).
//! - [`fence::Fence`] is a process's list of dead nodes: a node declared dead is never
//!   contacted again by this process, even if it comes back.
//! - [`session::RedundantSession`] wraps a transport session: writes go to every live
//!   copy before they count as done, reads take one copy and fail over to the next when
//!   a node dies or does not answer within the node timeout; a page left with no live copy
//!   is a [`crate::transport::TransportError::DataLost`], which ends the job with status
//!   70 and a message saying data was lost.
//!
//! - [`stripes::StripeLayout`] and [`coded::CodedSession`] do the same for `ec:K+1`:
//!   groups of `K` pages on `K` nodes and their XOR parity on another; a page whose node
//!   is dead is rebuilt from the rest of its group.
//!
//! With `none` nothing here is on the fault path: sessions are not wrapped.

pub mod coded;
pub mod copies;
pub mod fence;
#[cfg(test)]
mod flaky;
pub mod reprotect;
pub mod session;
pub mod stripes;
pub mod table;

use crate::config::ConfigError;
use crate::policy::placement::Replicated;
use crate::policy::Placement;
use crate::stats::Stats;
use crate::transport::{NodeId, NodeInfo, Session};
use copies::CopyLayout;
use fence::Fence;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use stripes::StripeLayout;

/// Most copies of a page (`replicate:R`) or pieces of a group (`ec:K+M`).
pub const COPIES_MAX: usize = 8;

/// How pages are kept at home.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Redundancy {
    /// One copy: a node's death loses the pages it held (the job ends with status 70).
    #[default]
    None,
    /// `copies` copies of every page, each on a different node.
    Replicate { copies: u8 },
    /// `data` data pieces and `parity` parity pieces per group, on `data + parity` nodes.
    ErasureCoded { data: u8, parity: u8 },
}

impl Redundancy {
    /// Copies of each page kept at home (1 for `none`).
    pub fn copies(self) -> usize {
        match self {
            Redundancy::None => 1,
            Redundancy::Replicate { copies } => usize::from(copies),
            Redundancy::ErasureCoded { .. } => 1,
        }
    }

    /// Whether the job survives a node's death.
    pub fn survives_a_death(self) -> bool {
        self != Redundancy::None
    }

    /// Node memory per page of data, as a fraction (numerator, denominator): 2/1 for
    /// `replicate:2`, 5/4 for `ec:4+1`.
    pub fn stored_per_page(self) -> (u64, u64) {
        match self {
            Redundancy::None => (1, 1),
            Redundancy::Replicate { copies } => (u64::from(copies), 1),
            Redundancy::ErasureCoded { data, parity } => {
                (u64::from(data) + u64::from(parity), u64::from(data))
            }
        }
    }

    /// Whether each node keeps a rescue room (address space as large as its data area,
    /// memory only once used) where the survivors re-protect a dead node's pieces: when
    /// the job survives a death, has no spare for it, and has a node beyond the
    /// `nodes_needed` that a page's pieces occupy.
    pub fn rescue_room(self, placed: usize, spares: usize) -> bool {
        self.survives_a_death() && spares == 0 && placed > self.nodes_needed()
    }

    /// Nodes the setting needs at least.
    pub fn nodes_needed(self) -> usize {
        match self {
            Redundancy::None => 1,
            Redundancy::Replicate { copies } => usize::from(copies),
            Redundancy::ErasureCoded { data, parity } => usize::from(data) + usize::from(parity),
        }
    }

    /// Checks the setting against a job of `nodes` memory nodes; the error says what to do.
    pub fn check_nodes(self, nodes: usize) -> Result<(), String> {
        if let Redundancy::ErasureCoded { data, parity } = self {
            if parity > 1 {
                return Err(format!(
                    "--redundancy {self}: only one parity piece per group is implemented (XOR \
                     parity; Reed-Solomon for more is not): use ec:{data}+1, or replicate:3 to \
                     survive two deaths"
                ));
            }
        }
        let needed = self.nodes_needed();
        if nodes < needed {
            return Err(format!(
                "--redundancy {self} keeps every page on {needed} different nodes, but the job \
                 has {nodes}: raise -n to at least {needed}, or lower the redundancy"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::None => write!(f, "none"),
            Redundancy::Replicate { copies } => write!(f, "replicate:{copies}"),
            Redundancy::ErasureCoded { data, parity } => write!(f, "ec:{data}+{parity}"),
        }
    }
}

impl FromStr for Redundancy {
    type Err = String;

    fn from_str(text: &str) -> Result<Redundancy, String> {
        let t = text.trim();
        let usage = "use none, replicate:R (R copies, 2 to 8) or ec:K+M (K data and M parity \
                     pieces, K+M at most 8)";
        if t == "none" {
            return Ok(Redundancy::None);
        }
        let count = |s: &str, what: &str| -> Result<u8, String> {
            s.trim()
                .parse::<u8>()
                .map_err(|_| format!("{what} {s:?} is not a number: {usage}"))
        };
        if let Some(r) = t.strip_prefix("replicate:") {
            let copies = count(r, "copy count")?;
            if !(2..=COPIES_MAX as u8).contains(&copies) {
                return Err(format!("replicate:{copies}: {usage}"));
            }
            return Ok(Redundancy::Replicate { copies });
        }
        if let Some(km) = t.strip_prefix("ec:") {
            let (k, m) = km
                .split_once('+')
                .ok_or_else(|| format!("ec:{km}: expect ec:K+M, e.g. ec:4+1; {usage}"))?;
            let (data, parity) = (count(k, "data pieces")?, count(m, "parity pieces")?);
            let total = usize::from(data) + usize::from(parity);
            if data == 0 || parity == 0 || total > COPIES_MAX {
                return Err(format!("ec:{data}+{parity}: {usage}"));
            }
            return Ok(Redundancy::ErasureCoded { data, parity });
        }
        Err(format!("{t:?}: {usage}"))
    }
}

/// Nodes that hold pages when the last `spares` of `nodes` are spares; an error unless
/// at least one node is left.
pub fn placed_nodes(nodes: usize, spares: usize) -> Result<usize, String> {
    match nodes.checked_sub(spares) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{spares} spare nodes leave none of the {nodes} nodes to hold pages"
        )),
    }
}

/// Where a job's copies or pieces live.
#[derive(Clone, Debug)]
pub enum Layout {
    /// `replicate:R`.
    Replicas(Arc<CopyLayout>),
    /// `ec:K+1`.
    Stripes(Arc<StripeLayout>),
}

impl Layout {
    /// Pieces on `dead` that re-protection re-makes for the page whose home is `home`:
    /// its copy there, or its data piece there plus its group's parity when that is there
    /// (counted with the group's first page).
    pub fn pieces_on(&self, home: crate::policy::Home, dead: NodeId) -> u64 {
        match self {
            Layout::Replicas(_) => u64::from(self.damaged(home, dead)),
            Layout::Stripes(l) => l.group_of(home).map_or(0, |(g, j)| {
                u64::from(home.node == dead) + u64::from(j == 0 && l.parity(g).node == dead)
            }),
        }
    }

    /// Whether `dead` held a copy of the page whose home is `home`, or a piece of its
    /// group: re-protection rewrites such pages.
    pub fn damaged(&self, home: crate::policy::Home, dead: NodeId) -> bool {
        match self {
            Layout::Replicas(l) => l.homes_of(home).as_slice().iter().any(|h| h.node == dead),
            Layout::Stripes(l) => l.group_of(home).is_some_and(|(g, _)| l.touches(g, dead)),
        }
    }
}

/// A runtime's redundancy machinery: nothing at all for `none` (the fast path is the
/// plain session), else the copy or stripe layout and the process's fence.
pub struct Copies {
    kept: Option<(Layout, Arc<Fence>)>,
}

impl Copies {
    /// The machinery for `config.redundancy` over `nodes`, whose data areas hold at least
    /// `data_bytes` each; an error when the job has too few nodes for it.
    /// The last `spares` of `nodes` hold no pages until they stand in for a dead node.
    pub fn plan(
        r: Redundancy,
        nodes: &[NodeInfo],
        spares: usize,
        data_bytes: u64,
    ) -> Result<Copies, ConfigError> {
        let active = placed_nodes(nodes.len(), spares).map_err(|hint| ConfigError {
            field: "spare_nodes",
            value: spares.to_string(),
            hint,
        })?;
        r.check_nodes(active).map_err(|hint| ConfigError {
            field: "redundancy",
            value: r.to_string(),
            hint,
        })?;
        let rescue = r.rescue_room(active, spares);
        let page = crate::space::PAGE_BYTES as u64;
        // With a rescue room, the pieces use the first half of the data area.
        let data_bytes = if rescue {
            data_bytes / 2 / page * page
        } else {
            data_bytes
        };
        let layout =
            match r {
                Redundancy::None => return Ok(Copies { kept: None }),
                Redundancy::Replicate { copies } => Layout::Replicas(Arc::new(CopyLayout::new(
                    &nodes[..active],
                    usize::from(copies),
                    data_bytes,
                ))),
                Redundancy::ErasureCoded { data, .. } => Layout::Stripes(Arc::new(
                    StripeLayout::new(&nodes[..active], usize::from(data), data_bytes),
                )),
            };
        let mut fence = Fence::new(nodes, r, spares);
        if rescue {
            fence = fence.with_rescue_room(crate::node::header::NODE_HEADER_BYTES + data_bytes);
        }
        let fence = Arc::new(fence);
        Ok(Copies {
            kept: Some((layout, fence)),
        })
    }

    /// The machinery for `r` over `transport`'s nodes (for a session used before the
    /// runtime starts: the slot claim).
    pub fn for_transport(
        r: Redundancy,
        spares: usize,
        transport: &dyn crate::transport::Transport,
    ) -> Result<Copies, ConfigError> {
        let data_bytes = transport
            .nodes()
            .iter()
            .map(|n| crate::node::header::data_bytes(n.region_bytes))
            .min()
            .unwrap_or(0);
        Copies::plan(r, transport.nodes(), spares, data_bytes)
    }

    /// Bytes of each node's data area that primary homes (data pieces) may use.
    pub fn primary_bytes(&self, data_bytes: u64) -> u64 {
        match &self.kept {
            None => data_bytes,
            Some((Layout::Replicas(l), _)) => l.band_bytes(),
            Some((Layout::Stripes(l), _)) => l.band_bytes(),
        }
    }

    /// `placement` with each page's copies as its homes (a coded page's home is its data
    /// piece alone: parity is shared by the group and claims no memory of its own).
    pub fn placement(&self, placement: Box<dyn Placement>) -> Box<dyn Placement> {
        match &self.kept {
            Some((Layout::Replicas(l), _)) => Box::new(Replicated::new(placement, l.clone())),
            None | Some((Layout::Stripes(_), _)) => placement,
        }
    }

    /// `session`, writing every copy or piece and failing over between them.
    pub fn wrap(&self, session: Box<dyn Session>) -> Box<dyn Session> {
        match &self.kept {
            None => session,
            Some((Layout::Replicas(l), fence)) => Box::new(session::RedundantSession::new(
                session,
                l.clone(),
                fence.clone(),
            )),
            Some((Layout::Stripes(l), fence)) => {
                Box::new(coded::CodedSession::new(session, l.clone(), fence.clone()))
            }
        }
    }

    /// Counts deaths, fail-overs and stalls into `stats`.
    pub fn count_into(&self, stats: &Arc<Stats>) {
        if let Some((_, fence)) = &self.kept {
            fence.count_into(stats.clone());
        }
    }

    /// The process's fence, when pages are kept redundantly.
    pub fn fence(&self) -> Option<&Arc<Fence>> {
        self.kept.as_ref().map(|(_, f)| f)
    }

    /// The layout, when pages are kept redundantly.
    pub fn layout(&self) -> Option<&Layout> {
        self.kept.as_ref().map(|(l, _)| l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_print_and_check_the_node_count() {
        for (text, r) in [
            ("none", Redundancy::None),
            ("replicate:2", Redundancy::Replicate { copies: 2 }),
            ("replicate:3", Redundancy::Replicate { copies: 3 }),
            ("ec:4+1", Redundancy::ErasureCoded { data: 4, parity: 1 }),
        ] {
            assert_eq!(text.parse::<Redundancy>().unwrap(), r);
            assert_eq!(r.to_string(), text);
        }
        for bad in [
            "",
            "replicate",
            "replicate:1",
            "replicate:9",
            "replicate:x",
            "ec:4",
            "ec:0+1",
            "ec:4+0",
            "ec:8+1",
            "raid5",
            "mirror:2",
        ] {
            let err = bad.parse::<Redundancy>().unwrap_err();
            assert!(err.contains("use none, replicate:R"), "{bad}: {err}");
        }
        let two = Redundancy::Replicate { copies: 2 };
        assert!(two.check_nodes(2).is_ok());
        let err = two.check_nodes(1).unwrap_err();
        assert!(err.contains("raise -n to at least 2"), "{err}");
        assert!(Redundancy::None.check_nodes(1).is_ok());
        let ec = "ec:4+1".parse::<Redundancy>().unwrap();
        assert_eq!(ec.nodes_needed(), 5);
        assert!(ec.check_nodes(5).is_ok());
        assert!(ec
            .check_nodes(4)
            .unwrap_err()
            .contains("raise -n to at least 5"));
        let two_parities = "ec:4+2".parse::<Redundancy>().unwrap();
        assert!(two_parities
            .check_nodes(6)
            .unwrap_err()
            .contains("use ec:4+1"));
        assert_eq!(ec.stored_per_page(), (5, 4));
    }
}
