//! The dead nodes of this process, and what their deaths cost.
//!
//! A node is declared dead on the first operation that fails in a way that says the node
//! itself is gone or unreachable: its connection broke, it did not answer within the node
//! timeout, or it answered garbage. From then on it is fenced: no session of this process
//! sends it anything again, even if it comes back (a stopped node that resumes, a link
//! that heals), so a stale copy on it can never be served. A rejected operation (out of
//! bounds, a full node) is the caller's error, not a death.

use crate::stats::Stats;
use crate::transport::{NodeId, NodeInfo, TransportError};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// This process's view of which nodes are dead. Shared by every session of the process.
#[derive(Debug)]
pub struct Fence {
    nodes: Vec<NodeInfo>,
    dead: Vec<AtomicBool>,
    redundancy: super::Redundancy,
    stats: OnceLock<Arc<Stats>>,
}

impl Fence {
    /// Every node of `nodes` alive.
    pub fn new(nodes: &[NodeInfo], redundancy: super::Redundancy) -> Fence {
        Fence {
            nodes: nodes.to_vec(),
            dead: nodes.iter().map(|_| AtomicBool::new(false)).collect(),
            redundancy,
            stats: OnceLock::new(),
        }
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

    /// Dead nodes, in order.
    pub fn dead_nodes(&self) -> Vec<NodeId> {
        (0..self.dead.len() as u16)
            .map(NodeId)
            .filter(|&n| self.is_dead(n))
            .collect()
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
        let line = format!(
            "dsm: {node} at {addr} died ({cause}); it is fenced: this job never contacts it \
             again. Redundancy degraded ({} with {} of {} nodes dead): pages that had a copy \
             on it are served from their other copies\n",
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
