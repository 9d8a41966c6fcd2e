//! A session that keeps every page on all its homes and survives the death of nodes.
//!
//! Callers address each operation to a page's primary home, exactly as without
//! redundancy; this wrapper maps it to the page's set of homes ([`CopyLayout`]):
//!
//! - a write goes to every live home, in one batch of the inner session; the batch
//!   returns (and the page counts as clean at home) only when every copy is stored;
//! - a read goes to the first live home; after it, the op names the copy actually read;
//! - a home on a dead node that a spare stands in for (`reprotect`) is written on the
//!   spare at the same offset, and read there once re-protection has filled the spare;
//! - an operation that fails because a node is gone ([`Fence::is_death`]) fences that
//!   node and is retried on the surviving copies (reads and writes of whole pages are
//!   idempotent), so a fault that waited on a dead node is served from another copy;
//! - an operation whose page has no live home left fails with
//!   [`TransportError::DataLost`]: wrong data is never returned.
//!
//! Header words: the slot table (node 0's, `node::header`) is kept on the first
//! `copies` nodes; a compare-and-swap on it goes to the first live one, and a swap that
//! took effect is copied to the others, so the table outlives node 0. Pool counters live
//! on the node they count and die with it: the pool skips fenced nodes
//! ([`Session::fenced`]).

use super::copies::CopyLayout;
use super::fence::Fence;
use crate::node::header::CAPACITY_PAGES_OFFSET;
use crate::policy::Home;
use crate::transport::{NodeId, ReadOp, Session, TransportError, WriteOp};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A session over a job kept with `replicate:R` (see the module documentation).
pub struct RedundantSession {
    inner: Box<dyn Session>,
    layout: Arc<CopyLayout>,
    fence: Arc<Fence>,
    /// The primary home of each op of the current read batch.
    primaries: Vec<Home>,
    /// The expanded write batch, kept for its capacity.
    writes: Vec<WriteOp<'static>>,
}

impl RedundantSession {
    /// Wraps `inner`, a session to every node of the job.
    pub fn new(inner: Box<dyn Session>, layout: Arc<CopyLayout>, fence: Arc<Fence>) -> Self {
        RedundantSession {
            inner,
            layout,
            fence,
            primaries: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Most attempts of one operation: each failed one fences a node.
    fn attempts_max(&self) -> usize {
        self.layout.copies() + 1
    }

    /// The first live home of the page whose primary home is `primary`.
    fn live_home(&self, primary: Home) -> Result<Home, TransportError> {
        let set = self.layout.homes_of(primary);
        set.as_slice()
            .iter()
            .find_map(|&h| self.fence.read_target(h))
            .ok_or_else(|| self.lost(primary))
    }

    fn lost(&self, primary: Home) -> TransportError {
        TransportError::DataLost {
            node: primary.node,
            offset: primary.offset,
            copies: self.layout.copies(),
            dead: self.fence.dead_nodes(),
        }
    }

    /// Handles a failed attempt: a death fences its node and asks for a retry.
    fn after_failure(&self, err: TransportError) -> Result<(), TransportError> {
        if Fence::is_death(&err) {
            self.fence.declare_dead(err.node(), &err);
            return Ok(());
        }
        Err(err)
    }

    fn count(&self, failover_pages: u64, degraded_pages: u64, stalled_since: Option<Instant>) {
        if let Some(st) = self.fence.stats() {
            if failover_pages > 0 {
                st.failover_read_pages
                    .fetch_add(failover_pages, Ordering::Relaxed);
            }
            if degraded_pages > 0 {
                st.degraded_write_pages
                    .fetch_add(degraded_pages, Ordering::Relaxed);
            }
        }
        if let Some(t) = stalled_since {
            self.fence.record_stall(t.elapsed().as_nanos() as u64);
        }
    }

    /// The nodes holding the slot table, first to last.
    fn table_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.layout.copies() as u16).map(NodeId)
    }

    /// A compare-and-swap on the slot table: decided by its first live copy, then copied
    /// to the others when it took effect.
    fn table_cas(&mut self, offset: u64, expected: u64, new: u64) -> Result<u64, TransportError> {
        let mut decided = None;
        for node in self.table_nodes().collect::<Vec<_>>() {
            if self.fence.is_dead(node) {
                continue;
            }
            match decided {
                None => match self.inner.compare_and_swap(node, offset, expected, new) {
                    Ok(found) => decided = Some(found),
                    Err(e) => self.after_failure(e)?,
                },
                Some(found) if found == expected && expected != new => {
                    if let Err(e) = self.mirror_word(node, offset, new) {
                        self.after_failure(e)?;
                    }
                }
                Some(_) => break,
            }
        }
        decided.ok_or_else(|| {
            self.lost(Home {
                node: NodeId(0),
                offset,
            })
        })
    }

    /// Sets the word at `offset` on `node` to `new`, whatever it held.
    fn mirror_word(&mut self, node: NodeId, offset: u64, new: u64) -> Result<(), TransportError> {
        let mut current = self.inner.compare_and_swap(node, offset, 0, 0)?;
        for _ in 0..1000 {
            let found = self.inner.compare_and_swap(node, offset, current, new)?;
            if found == current {
                return Ok(());
            }
            current = found;
        }
        Ok(())
    }
}

impl Session for RedundantSession {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        self.primaries.clear();
        self.primaries.extend(ops.iter().map(|o| Home {
            node: o.node,
            offset: o.offset,
        }));
        let mut stalled_since = None;
        for _ in 0..self.attempts_max() {
            let mut moved = 0;
            for (op, &primary) in ops.iter_mut().zip(&self.primaries) {
                let h = self.live_home(primary)?;
                moved += u64::from(h.node != primary.node);
                (op.node, op.offset) = (h.node, h.offset);
            }
            let started = Instant::now();
            match self.inner.read_batch(ops) {
                Ok(()) => {
                    self.count(moved, 0, stalled_since);
                    return Ok(());
                }
                Err(e) => self.after_failure(e)?,
            }
            stalled_since.get_or_insert(started);
        }
        Err(self.lost(self.primaries[0]))
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        let mut out: Vec<WriteOp<'_>> = crate::cache::recycle(std::mem::take(&mut self.writes));
        let mut stalled_since = None;
        let mut result = Err(self.lost(Home {
            node: ops.first().map_or(NodeId(0), |o| o.node),
            offset: ops.first().map_or(0, |o| o.offset),
        }));
        for _ in 0..self.attempts_max() {
            out.clear();
            let mut degraded = 0;
            for op in ops {
                let primary = Home {
                    node: op.node,
                    offset: op.offset,
                };
                let set = self.layout.homes_of(primary);
                let before = out.len();
                for h in set
                    .as_slice()
                    .iter()
                    .filter_map(|&h| self.fence.write_target(h))
                {
                    out.push(WriteOp {
                        node: h.node,
                        offset: h.offset,
                        data: op.data,
                    });
                }
                if out.len() == before {
                    self.writes = crate::cache::recycle(out);
                    return Err(self.lost(primary));
                }
                degraded += u64::from(out.len() - before < set.len());
            }
            let started = Instant::now();
            match self.inner.write_batch(&out) {
                Ok(()) => {
                    self.count(0, degraded, stalled_since);
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    if let Err(e) = self.after_failure(e) {
                        result = Err(e);
                        break;
                    }
                }
            }
            stalled_since.get_or_insert(started);
        }
        self.writes = crate::cache::recycle(out);
        result
    }

    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        if node == NodeId(0) && offset < CAPACITY_PAGES_OFFSET {
            return self.table_cas(offset, expected, new);
        }
        let res = self.inner.compare_and_swap(node, offset, expected, new);
        if let Err(e) = &res {
            if Fence::is_death(e) {
                self.fence.declare_dead(node, e);
            }
        }
        res
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        let res = self.inner.call(node, msg);
        if let Err(e) = &res {
            if Fence::is_death(e) {
                self.fence.declare_dead(node, e);
            }
        }
        res
    }

    fn fenced(&self, node: NodeId) -> bool {
        self.fence.is_dead(node)
    }
}
