//! A session over an erasure-coded job (`ec:K+1`): every group of `K` pages keeps the
//! XOR of its pages as parity on another node ([`StripeLayout`]).
//!
//! Callers address each operation to a page's home, exactly as without redundancy:
//!
//! - a read takes the data piece; when its node is dead (and no filled spare stands in
//!   for it) the page is rebuilt as the XOR of the group's other pieces and its parity;
//! - a write-back locks the groups it touches (one process's write-backs of a group are
//!   serialised; groups never straddle two processes' slices), reads what it needs of the
//!   rest of each group, and stores the new pages and the new parity in one batch of the
//!   inner session: the pages count as clean at home only once both are stored. Parity is
//!   recomputed as the XOR of the group's current data (not patched with old ^ new), so a
//!   group whose pieces were once inconsistent heals on its next write-back;
//! - a piece on a dead node whose spare is still being filled is rebuilt by every
//!   write-back of its group and stored on the spare (which is how re-protection, that
//!   rewrites one page of each affected group, fills the spare);
//! - a group that has lost two pieces is [`TransportError::DataLost`]: never wrong data.
//!
//! Phase one (reads, encoding) is retried from scratch after a death; phase two (the
//! writes) only re-aims the same bytes, since a partly applied batch must not be read
//! back as "old" data.

use super::fence::Fence;
use super::stripes::{xor_into, Group, StripeLayout};
use super::table;
use crate::policy::Home;
use crate::space::PAGE_BYTES;
use crate::transport::{NodeId, ReadOp, Session, TransportError, WriteOp};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Places a page is kept in, for [`TransportError::DataLost`]: its piece and its
/// group's parity.
const PLACES: usize = 2;
/// Copies of the slot table (it must survive one death, like the pages).
const TABLE_COPIES: usize = 2;

/// The session (see the module documentation).
pub struct CodedSession {
    inner: Box<dyn Session>,
    layout: Arc<StripeLayout>,
    fence: Arc<Fence>,
    /// Per group of a write batch: `K` member pages and the old parity.
    reads: Vec<u8>,
    /// Per group of a write batch: the new parity and a rebuilt member.
    encoded: Vec<u8>,
}

/// One group of a write batch.
struct GroupWrite {
    group: Group,
    /// Index into the batch of the op writing member `j`, if any.
    writers: Vec<Option<usize>>,
    /// The member that could not be read (dead, no filled spare) and was rebuilt.
    rebuilt: Option<usize>,
}

impl CodedSession {
    /// Wraps `inner`, a session to every node of the job.
    pub fn new(inner: Box<dyn Session>, layout: Arc<StripeLayout>, fence: Arc<Fence>) -> Self {
        CodedSession {
            inner,
            layout,
            fence,
            reads: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// Where to read piece `home` of group `g` (see [`Fence::read_target`]).
    fn read_at(&self, g: Group, home: Home) -> Option<Home> {
        match self.fence.is_dead(home.node) {
            false => Some(home),
            true => self.fence.read_target(home, &self.layout.holders(g)),
        }
    }

    /// Where to write piece `home` of group `g` (see [`Fence::write_target`]).
    fn write_at(&self, g: Group, home: Home) -> Option<Home> {
        match self.fence.is_dead(home.node) {
            false => Some(home),
            true => self.fence.write_target(home, &self.layout.holders(g)),
        }
    }

    fn attempts_max(&self) -> usize {
        self.fence.attempts_max()
    }

    fn lost(&self, home: Home) -> TransportError {
        self.fence.lost(home, PLACES)
    }

    fn count(&self, rebuilt: u64, degraded: u64, stalled_since: Option<Instant>) {
        if let Some(st) = self.fence.stats() {
            st.failover_read_pages.fetch_add(rebuilt, Ordering::Relaxed);
            st.degraded_write_pages
                .fetch_add(degraded, Ordering::Relaxed);
        }
        if let Some(t) = stalled_since {
            self.fence.record_stall(t.elapsed().as_nanos() as u64);
        }
    }

    /// Rebuilds the data piece at `home`, whose node is dead, into `buf`.
    fn rebuild(&mut self, home: Home, buf: &mut [u8]) -> Result<(), TransportError> {
        let layout = self.layout.clone();
        let (g, j) = layout.group_of(home).ok_or_else(|| self.lost(home))?;
        let _locked = layout.lock(std::iter::once(g));
        let k = layout.data_pieces();
        for _ in 0..self.attempts_max() {
            let mut sources: Vec<Home> = (0..k)
                .filter(|&m| m != j)
                .map(|m| layout.member(g, m))
                .collect();
            sources.push(layout.parity(g));
            let mut targets = Vec::with_capacity(k);
            for s in &sources {
                targets.push(self.read_at(g, *s).ok_or_else(|| self.lost(home))?);
            }
            self.reads.resize(k * PAGE_BYTES, 0);
            let mut ops: Vec<ReadOp<'_>> = targets
                .iter()
                .zip(self.reads.chunks_exact_mut(PAGE_BYTES))
                .map(|(t, b)| ReadOp {
                    node: t.node,
                    offset: t.offset,
                    buf: b,
                })
                .collect();
            match self.inner.read_batch(&mut ops) {
                Ok(()) => {
                    buf.fill(0);
                    for piece in self.reads.chunks_exact(PAGE_BYTES) {
                        xor_into(buf, piece);
                    }
                    return Ok(());
                }
                Err(e) => table::declare_or_fail(&self.fence, e)?,
            }
        }
        Err(self.lost(home))
    }

    /// Groups the batch's ops by group (sorted); `None` when an op is outside the data
    /// band (nothing but pages is ever written through this session).
    fn groups_of(&self, ops: &[WriteOp<'_>]) -> Result<Vec<GroupWrite>, TransportError> {
        let mut by_group: Vec<(Group, usize, usize)> = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let home = Home {
                node: op.node,
                offset: op.offset,
            };
            let (g, j) = self.layout.group_of(home).ok_or_else(|| self.lost(home))?;
            by_group.push((g, j, i));
        }
        by_group.sort_unstable();
        let mut groups: Vec<GroupWrite> = Vec::new();
        for (g, j, i) in by_group {
            if groups.last().is_none_or(|w| w.group != g) {
                groups.push(GroupWrite {
                    group: g,
                    writers: vec![None; self.layout.data_pieces()],
                    rebuilt: None,
                });
            }
            groups.last_mut().expect("pushed").writers[j] = Some(i);
        }
        Ok(groups)
    }

    /// Phase one: reads what each group needs and computes its new parity (and the
    /// rebuilt member, if any) into `self.encoded`.
    fn encode(
        &mut self,
        ops: &[WriteOp<'_>],
        groups: &mut [GroupWrite],
    ) -> Result<(), TransportError> {
        let layout = self.layout.clone();
        let k = layout.data_pieces();
        let slots = k + 1;
        'attempt: for _ in 0..self.attempts_max() {
            self.reads.resize(groups.len() * slots * PAGE_BYTES, 0);
            let mut wanted: Vec<(usize, Home)> = Vec::new();
            for (gi, w) in groups.iter_mut().enumerate() {
                w.rebuilt = None;
                let members: Vec<(usize, Home)> =
                    (0..k).map(|j| (j, layout.member(w.group, j))).collect();
                for &(j, m) in members.iter().filter(|&&(j, _)| w.writers[j].is_none()) {
                    match self.read_at(w.group, m) {
                        Some(t) => wanted.push((gi * slots + j, t)),
                        None if w.rebuilt.is_none() => w.rebuilt = Some(j),
                        None => return Err(self.lost(m)),
                    }
                }
                if w.rebuilt.is_some() {
                    // The unreadable member is the XOR of the old parity and old others.
                    let parity = layout.parity(w.group);
                    let t = self
                        .read_at(w.group, parity)
                        .ok_or_else(|| self.lost(parity))?;
                    wanted.push((gi * slots + k, t));
                    for &(j, m) in members.iter().filter(|&&(j, _)| w.writers[j].is_some()) {
                        let t = self.read_at(w.group, m).ok_or_else(|| self.lost(m))?;
                        wanted.push((gi * slots + j, t));
                    }
                }
            }
            let mut bufs: Vec<Option<&mut [u8]>> =
                self.reads.chunks_exact_mut(PAGE_BYTES).map(Some).collect();
            let mut reads: Vec<ReadOp<'_>> = wanted
                .iter()
                .map(|&(slot, t)| ReadOp {
                    node: t.node,
                    offset: t.offset,
                    buf: bufs[slot].take().expect("one read per slot"),
                })
                .collect();
            if !reads.is_empty() {
                if let Err(e) = self.inner.read_batch(&mut reads) {
                    table::declare_or_fail(&self.fence, e)?;
                    continue 'attempt;
                }
            }
            drop(reads);
            self.combine(ops, groups);
            return Ok(());
        }
        Err(self.lost(layout.parity(groups[0].group)))
    }

    /// Computes, from the pages read, each group's new parity and rebuilt member.
    fn combine(&mut self, ops: &[WriteOp<'_>], groups: &[GroupWrite]) {
        let k = self.layout.data_pieces();
        let slots = k + 1;
        self.encoded.clear();
        self.encoded.resize(groups.len() * 2 * PAGE_BYTES, 0);
        for (gi, w) in groups.iter().enumerate() {
            let read = |s: usize| &self.reads[(gi * slots + s) * PAGE_BYTES..][..PAGE_BYTES];
            let (parity, rebuilt) =
                self.encoded[gi * 2 * PAGE_BYTES..][..2 * PAGE_BYTES].split_at_mut(PAGE_BYTES);
            if let Some(x) = w.rebuilt {
                rebuilt.copy_from_slice(read(k));
                (0..k)
                    .filter(|&j| j != x)
                    .for_each(|j| xor_into(rebuilt, read(j)));
                xor_into(parity, rebuilt);
            }
            for j in (0..k).filter(|&j| Some(j) != w.rebuilt) {
                match w.writers[j] {
                    Some(i) => xor_into(parity, ops[i].data),
                    None => xor_into(parity, read(j)),
                }
            }
        }
    }

    /// Phase two: stores the new pages, the rebuilt members (on their spares) and the
    /// parities; re-aimed after each death. Returns the groups written degraded.
    fn store(&mut self, ops: &[WriteOp<'_>], groups: &[GroupWrite]) -> Result<u64, TransportError> {
        let layout = self.layout.clone();
        let k = layout.data_pieces();
        for _ in 0..self.attempts_max() {
            let mut out: Vec<WriteOp<'_>> = Vec::with_capacity(ops.len() + 2 * groups.len());
            let mut degraded = 0;
            for (gi, w) in groups.iter().enumerate() {
                let (parity, rebuilt) =
                    self.encoded[gi * 2 * PAGE_BYTES..][..2 * PAGE_BYTES].split_at(PAGE_BYTES);
                let mut missing = 0;
                for j in 0..k {
                    let target = self.write_at(w.group, layout.member(w.group, j));
                    let data = match (w.writers[j], w.rebuilt == Some(j)) {
                        (Some(i), _) => Some(ops[i].data),
                        (None, true) => Some(rebuilt),
                        (None, false) => None,
                    };
                    match (target, data) {
                        (Some(t), Some(d)) => out.push(WriteOp {
                            node: t.node,
                            offset: t.offset,
                            data: d,
                        }),
                        (None, _) => missing += 1,
                        (Some(_), None) => {}
                    }
                }
                match self.write_at(w.group, layout.parity(w.group)) {
                    Some(t) => out.push(WriteOp {
                        node: t.node,
                        offset: t.offset,
                        data: parity,
                    }),
                    None => missing += 1,
                }
                if missing > 1 {
                    return Err(self.lost(layout.member(w.group, 0)));
                }
                degraded += u64::from(missing > 0);
            }
            match self.inner.write_batch(&out) {
                Ok(()) => return Ok(degraded),
                Err(e) => table::declare_or_fail(&self.fence, e)?,
            }
        }
        Err(self.lost(layout.parity(groups[0].group)))
    }
}

impl Session for CodedSession {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        let mut stalled_since = None;
        for _ in 0..self.attempts_max() {
            let mut missing = Vec::new();
            let mut direct: Vec<ReadOp<'_>> = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter_mut().enumerate() {
                let home = Home {
                    node: op.node,
                    offset: op.offset,
                };
                let target = match self.layout.group_of(home) {
                    Some((g, _)) => self.read_at(g, home),
                    None => self.fence.read_target(home, &[home.node]),
                };
                match target {
                    Some(t) => direct.push(ReadOp {
                        node: t.node,
                        offset: t.offset,
                        buf: &mut op.buf[..],
                    }),
                    None => missing.push(i),
                }
            }
            let started = Instant::now();
            if let Err(e) = self.inner.read_batch(&mut direct) {
                table::declare_or_fail(&self.fence, e)?;
                stalled_since.get_or_insert(started);
                continue;
            }
            drop(direct);
            if !missing.is_empty() {
                stalled_since.get_or_insert(started);
            }
            for &i in &missing {
                let home = Home {
                    node: ops[i].node,
                    offset: ops[i].offset,
                };
                self.rebuild(home, &mut ops[i].buf[..])?;
            }
            self.count(missing.len() as u64, 0, stalled_since);
            return Ok(());
        }
        Err(self.lost(Home {
            node: ops.first().map_or(NodeId(0), |o| o.node),
            offset: ops.first().map_or(0, |o| o.offset),
        }))
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        if ops.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut groups = self.groups_of(ops)?;
        let layout = self.layout.clone();
        let _locked = layout.lock(groups.iter().map(|w| w.group));
        let deaths_before = self.fence.dead_nodes().len();
        self.encode(ops, &mut groups)?;
        let degraded = self.store(ops, &groups)?;
        let stalled = (self.fence.dead_nodes().len() > deaths_before).then_some(started);
        self.count(0, degraded, stalled);
        Ok(())
    }

    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        if table::is_table_word(node, offset) {
            let fence = &self.fence;
            return table::compare_and_swap(
                self.inner.as_mut(),
                fence,
                TABLE_COPIES,
                (offset, expected, new),
                |h| fence.lost(h, TABLE_COPIES),
            );
        }
        let res = self.inner.compare_and_swap(node, offset, expected, new);
        table::noting_death(&self.fence, node, res)
    }

    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        let res = self.inner.call(node, msg);
        table::noting_death(&self.fence, node, res)
    }

    fn fenced(&self, node: NodeId) -> bool {
        self.fence.is_dead(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redundancy::flaky::{infos, Flaky};
    use crate::redundancy::Redundancy;

    fn session(flaky: &Flaky, nodes: u16, spares: usize) -> (CodedSession, Arc<Fence>) {
        let infos = infos(nodes);
        let placed = &infos[..infos.len() - spares];
        let layout = Arc::new(StripeLayout::new(placed, 4, 1 << 19));
        let fence = Arc::new(Fence::new(
            &infos,
            Redundancy::ErasureCoded { data: 4, parity: 1 },
            spares,
        ));
        let s = CodedSession::new(Box::new(flaky.clone()), layout, fence.clone());
        (s, fence)
    }

    fn write(s: &mut CodedSession, home: Home, byte: u8) {
        let data = [byte; PAGE_BYTES];
        s.write_batch(&[WriteOp {
            node: home.node,
            offset: home.offset,
            data: &data,
        }])
        .unwrap();
    }

    fn read(s: &mut CodedSession, home: Home) -> Result<u8, TransportError> {
        let mut buf = [0u8; PAGE_BYTES];
        s.read_batch(&mut [ReadOp {
            node: home.node,
            offset: home.offset,
            buf: &mut buf,
        }])?;
        assert!(buf.iter().all(|&b| b == buf[0]), "a torn page");
        Ok(buf[0])
    }

    #[test]
    fn a_dead_piece_is_rebuilt_fenced_for_good_and_two_dead_pieces_are_lost_not_wrong() {
        let flaky = Flaky::default();
        let (mut s, fence) = session(&flaky, 5, 0);
        let layout = s.layout.clone();
        let m: Vec<Home> = (0..4).map(|j| layout.member(0, j)).collect();
        for (j, &h) in m.iter().enumerate() {
            write(&mut s, h, 10 + j as u8);
        }
        let parity = layout.parity(0);
        assert_eq!(
            flaky.nodes.read(parity.node, parity.offset).unwrap()[0],
            10 ^ 11 ^ 12 ^ 13
        );
        flaky.set_down(m[1].node.0, true);
        assert_eq!(read(&mut s, m[1]).unwrap(), 11, "rebuilt from the others");
        assert!(fence.is_dead(m[1].node));
        // Written while its node is dead: kept by parity alone, and still right after
        // another member of the group is written.
        write(&mut s, m[1], 21);
        write(&mut s, m[2], 22);
        assert_eq!(read(&mut s, m[1]).unwrap(), 21);
        assert_eq!(read(&mut s, m[2]).unwrap(), 22);
        // The node comes back holding the stale piece: never asked again.
        flaky.set_down(m[1].node.0, false);
        flaky.contacted.lock().unwrap().clear();
        assert_eq!(read(&mut s, m[1]).unwrap(), 21, "never the stale piece");
        assert!(!flaky.contacted.lock().unwrap().contains(&m[1].node.0));
        // A second piece of the group dies: the page is lost, and said so.
        flaky.set_down(m[3].node.0, true);
        let err = read(&mut s, m[1]).unwrap_err();
        assert!(matches!(err, TransportError::DataLost { .. }), "{err}");
        assert!(err.to_string().contains("data was lost"), "{err}");
    }

    #[test]
    fn a_write_back_rebuilds_the_dead_piece_on_the_spare_which_then_survives_a_second_death() {
        let flaky = Flaky::default();
        let (mut s, fence) = session(&flaky, 6, 1);
        let layout = s.layout.clone();
        let m: Vec<Home> = (0..4).map(|j| layout.member(7, j)).collect();
        for (j, &h) in m.iter().enumerate() {
            write(&mut s, h, 30 + j as u8);
        }
        flaky.set_down(m[0].node.0, true);
        assert_eq!(read(&mut s, m[0]).unwrap(), 30);
        let spare = fence.assign_spare(m[0].node).unwrap();
        assert_eq!(spare, NodeId(5));
        // As re-protection does: one page of the group written back.
        write(&mut s, m[3], 43);
        assert_eq!(flaky.nodes.read(spare, m[0].offset).unwrap()[0], 30);
        fence.mark_substitute_full(m[0].node);
        flaky.set_down(m[2].node.0, true);
        assert_eq!(read(&mut s, m[0]).unwrap(), 30, "the filled spare serves");
        assert_eq!(
            read(&mut s, m[2]).unwrap(),
            32,
            "rebuilt with the spare's piece"
        );
        assert_eq!(read(&mut s, m[3]).unwrap(), 43);
    }

    #[test]
    fn a_batch_of_whole_and_partial_groups_keeps_every_parity_right() {
        let flaky = Flaky::default();
        let (mut s, _) = session(&flaky, 5, 0);
        let layout = s.layout.clone();
        let homes: Vec<Home> = (0..4)
            .map(|j| layout.member(3, j))
            .chain((1..3).map(|j| layout.member(4, j)))
            .collect();
        let pages: Vec<[u8; PAGE_BYTES]> = (0..homes.len())
            .map(|i| [i as u8 + 1; PAGE_BYTES])
            .collect();
        let ops: Vec<WriteOp<'_>> = homes
            .iter()
            .zip(&pages)
            .map(|(h, d)| WriteOp {
                node: h.node,
                offset: h.offset,
                data: d,
            })
            .collect();
        s.write_batch(&ops).unwrap();
        for g in [3, 4] {
            let mut x = 0u8;
            for j in 0..4 {
                let h = layout.member(g, j);
                x ^= flaky.nodes.read(h.node, h.offset).map_or(0, |p| p[0]);
            }
            let p = layout.parity(g);
            assert_eq!(
                flaky.nodes.read(p.node, p.offset).unwrap()[0],
                x,
                "group {g}"
            );
        }
    }
}
