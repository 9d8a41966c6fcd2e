//! The dead nodes of this process, and what their deaths cost.
//!
//! A node is declared dead on the first operation that fails in a way that says the node
//! itself is gone or unreachable: its connection broke, it did not answer within the node
//! timeout, or it answered garbage. From then on it is fenced: no session of this process
//! sends it anything again, even if it comes back (a stopped node that resumes, a link
//! that heals), so a stale copy on it can never be served. A rejected operation (out of
//! bounds, a full node) is the caller's error, not a death.

use crate::node::header::NODE_HEADER_BYTES;
use crate::policy::Home;
use crate::stats::Stats;
use crate::transport::{NodeId, NodeInfo, TransportError};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Set in a substitute word once the spare holds every page the dead node held.
const SUBSTITUTE_VALID: u32 = 1 << 31;
/// A substitute word's node part when the surviving nodes stand in for the dead one,
/// each for some of its pieces, in their rescue room.
const SURVIVORS: u32 = SUBSTITUTE_VALID - 1;

/// Who stands in for a dead node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Substitute {
    /// A spare node, at the dead node's offsets.
    Spare(NodeId),
    /// The surviving placed nodes, each piece on one that holds no other piece of its
    /// page or group, in the rescue room of its region.
    Survivors,
}

/// This process's view of which nodes are dead. Shared by every session of the process.
#[derive(Debug)]
pub struct Fence {
    nodes: Vec<NodeInfo>,
    dead: Vec<AtomicBool>,
    /// Per node: 0, or the spare node standing in for it (+1), with [`SUBSTITUTE_VALID`]
    /// once re-protection copied everything onto it.
    substitutes: Vec<AtomicU32>,
    /// Nodes kept out of placement to stand in for dead ones (`--spare-nodes`).
    spares: Vec<NodeId>,
    /// Serialises the choice of a spare.
    assigning: Mutex<()>,
    /// Nodes that hold pages (the first `placed` of `nodes`).
    placed: usize,
    /// Where the rescue room of each placed node starts (0: none), and whether it is
    /// taken already (it holds one dead node's pieces).
    rescue_base: u64,
    rescue_taken: AtomicBool,
    redundancy: super::Redundancy,
    stats: OnceLock<Arc<Stats>>,
}

impl Fence {
    /// Every node of `nodes` alive; the last `spares` of them are spares.
    pub fn new(nodes: &[NodeInfo], redundancy: super::Redundancy, spares: usize) -> Fence {
        let first_spare = nodes.len().saturating_sub(spares);
        Fence {
            nodes: nodes.to_vec(),
            dead: nodes.iter().map(|_| AtomicBool::new(false)).collect(),
            substitutes: nodes.iter().map(|_| AtomicU32::new(0)).collect(),
            spares: (first_spare..nodes.len())
                .map(|i| NodeId(i as u16))
                .collect(),
            assigning: Mutex::new(()),
            placed: first_spare,
            rescue_base: 0,
            rescue_taken: AtomicBool::new(false),
            redundancy,
            stats: OnceLock::new(),
        }
    }

    /// Gives every placed node a rescue room from `base` (a region offset) on, as large as
    /// the data area below it, where the survivors keep a dead node's pieces when no spare
    /// is left.
    pub fn with_rescue_room(mut self, base: u64) -> Fence {
        self.rescue_base = base;
        self
    }

    /// Who stands in for `node`, and whether it already holds all its pieces.
    fn substitute(&self, node: NodeId) -> Option<(Substitute, bool)> {
        let word = self
            .substitutes
            .get(usize::from(node.0))?
            .load(Ordering::Acquire);
        let id = word & !SUBSTITUTE_VALID;
        let full = word & SUBSTITUTE_VALID != 0;
        match id {
            0 => None,
            SURVIVORS => Some((Substitute::Survivors, full)),
            _ => Some((Substitute::Spare(NodeId((id - 1) as u16)), full)),
        }
    }

    /// The live place that keeps the piece at `home` of a dead node, being filled or
    /// full; `holders` are the nodes of every piece of its page or group (`home`'s own
    /// included), which a survivor standing in must not be.
    fn stand_in(&self, home: Home, holders: &[NodeId], full_only: bool) -> Option<Home> {
        let (sub, full) = self.substitute(home.node)?;
        if full_only && !full {
            return None;
        }
        let target = match sub {
            Substitute::Spare(spare) => Home {
                node: spare,
                offset: home.offset,
            },
            Substitute::Survivors => Home {
                node: self.rescuer(home, holders)?,
                offset: self.rescue_base + home.offset.checked_sub(NODE_HEADER_BYTES)?,
            },
        };
        (!self.is_dead(target.node)).then_some(target)
    }

    /// The survivor that keeps the dead node's piece at `home`: a pure function of the
    /// piece and its holders (never of which nodes died since), so that every session,
    /// and every later read, finds it; rows rotate over the candidates to spread them.
    fn rescuer(&self, home: Home, holders: &[NodeId]) -> Option<NodeId> {
        let candidates: Vec<NodeId> = (0..self.placed as u16)
            .map(NodeId)
            .filter(|n| *n != home.node && !holders.contains(n))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let row = home.offset / crate::space::PAGE_BYTES as u64 + u64::from(home.node.0);
        Some(candidates[(row % candidates.len() as u64) as usize])
    }

    /// Where to write the piece that lives at `home` (of a page or group whose pieces are
    /// on `holders`): there if its node lives, else where a spare or survivor stands in
    /// for it (being filled or full), else nowhere.
    pub fn write_target(&self, home: Home, holders: &[NodeId]) -> Option<Home> {
        if !self.is_dead(home.node) {
            return Some(home);
        }
        self.stand_in(home, holders, false)
    }

    /// Where to read the piece that lives at `home`: there if its node lives, else where
    /// a spare or survivor stands in for it once re-protection has filled it, else
    /// nowhere.
    pub fn read_target(&self, home: Home, holders: &[NodeId]) -> Option<Home> {
        if !self.is_dead(home.node) {
            return Some(home);
        }
        self.stand_in(home, holders, true)
    }

    /// Chooses a live spare, not standing in for anyone, to stand in for `dead`; from now
    /// on writes of `dead`'s copies go to it. `None` when no spare is left.
    pub fn assign_spare(&self, dead: NodeId) -> Option<NodeId> {
        let _one_at_a_time = self.assigning.lock().unwrap_or_else(|e| e.into_inner());
        match self.substitute(dead) {
            Some((Substitute::Spare(spare), _)) => return Some(spare),
            Some((Substitute::Survivors, _)) => return None,
            None => {}
        }
        let taken: Vec<NodeId> = (0..self.nodes.len() as u16)
            .filter_map(|n| match self.substitute(NodeId(n)) {
                Some((Substitute::Spare(s), _)) => Some(s),
                _ => None,
            })
            .collect();
        let spare = *self
            .spares
            .iter()
            .find(|s| !self.is_dead(**s) && !taken.contains(s))?;
        self.substitutes[usize::from(dead.0)].store(u32::from(spare.0) + 1, Ordering::Release);
        Some(spare)
    }

    /// Lets the surviving nodes stand in for `dead` in their rescue room, if the job has
    /// one and no other dead node took it; from now on writes of `dead`'s pieces go there.
    pub fn assign_survivors(&self, dead: NodeId) -> bool {
        let _one_at_a_time = self.assigning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sub, _)) = self.substitute(dead) {
            return sub == Substitute::Survivors;
        }
        if self.rescue_base == 0 || self.rescue_taken.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.substitutes[usize::from(dead.0)].store(SURVIVORS, Ordering::Release);
        true
    }

    /// Records that `dead`'s spare now holds every page `dead` held: reads may use it.
    pub fn mark_substitute_full(&self, dead: NodeId) {
        self.substitutes[usize::from(dead.0)].fetch_or(SUBSTITUTE_VALID, Ordering::AcqRel);
    }

    /// Where deaths, fail-overs and stalls are counted (set once, when the runtime's
    /// statistics exist).
    pub fn count_into(&self, stats: Arc<Stats>) {
        let _ = self.stats.set(stats);
    }

    pub(crate) fn stats(&self) -> Option<&Stats> {
        self.stats.get().map(|s| &**s)
    }

    /// Whether `node` was declared dead.
    pub fn is_dead(&self, node: NodeId) -> bool {
        self.dead
            .get(usize::from(node.0))
            .is_some_and(|d| d.load(Ordering::Acquire))
    }

    /// How many nodes the job has (spares included).
    pub fn node_count(&self) -> usize {
        self.dead.len()
    }

    /// How many times an operation may be tried: a failed attempt is retried only after
    /// it fenced a node that was alive, so with every node fenced once the last attempt
    /// has run. A host that dies takes several nodes at once, and one batch may find
    /// them dead one attempt at a time.
    pub fn attempts_max(&self) -> usize {
        self.node_count() + 1
    }

    /// Dead nodes, in order.
    pub fn dead_nodes(&self) -> Vec<NodeId> {
        (0..self.dead.len() as u16)
            .map(NodeId)
            .filter(|&n| self.is_dead(n))
            .collect()
    }

    /// The error for the page at `home`, kept in `copies` places (copies or pieces),
    /// none of which is left.
    pub fn lost(&self, home: Home, copies: usize) -> TransportError {
        TransportError::DataLost {
            node: home.node,
            offset: home.offset,
            copies,
            dead: self.dead_nodes(),
        }
    }

    /// Whether `err` means that its node is gone (rather than that the request was wrong).
    pub fn is_death(err: &TransportError) -> bool {
        matches!(
            err,
            TransportError::Connect { .. }
                | TransportError::Timeout { .. }
                | TransportError::Io { .. }
                | TransportError::Protocol { .. }
                | TransportError::Verbs { .. }
        )
    }

    /// Declares `node` dead because of `cause`: fences it and, the first time, says so on
    /// stderr and counts the death. Returns whether this call declared it.
    pub fn declare_dead(&self, node: NodeId, cause: &TransportError) -> bool {
        let Some(flag) = self.dead.get(usize::from(node.0)) else {
            return false;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(st) = self.stats() {
            st.node_deaths.fetch_add(1, Ordering::Relaxed);
        }
        let addr = self.nodes[usize::from(node.0)].addr;
        let dead = self.dead_nodes();
        let served = match self.redundancy {
            super::Redundancy::ErasureCoded { .. } => {
                "pages that had a piece on it are rebuilt from the rest of their group"
            }
            _ => "pages that had a copy on it are served from their other copies",
        };
        let line = format!(
            "dsm: {node} at {addr} died ({cause}); it is fenced: this job never contacts it \
             again. Redundancy degraded ({} with {} of {} nodes dead): {served}\n",
            self.redundancy,
            dead.len(),
            self.nodes.len()
        );
        // One write, so the line stays whole among other threads' output.
        let _ = std::io::stderr().write_all(line.as_bytes());
        true
    }

    /// Records a stall of `ns` caused by a failure (from the first failed attempt of an
    /// operation to its success on another copy).
    pub fn record_stall(&self, ns: u64) {
        if let Some(st) = self.stats() {
            st.failover_stall_ns_max.fetch_max(ns, Ordering::Relaxed);
            st.failover_stall_ns_total.fetch_add(ns, Ordering::Relaxed);
        }
    }
}
