//! Claims on the pool's memory: a page takes memory on its home node when it is first
//! written home, and gives it back when the program discards it.
//!
//! Nothing is partitioned up front. Every node's header (`node::header`) holds its
//! capacity, the pages claimed on it by all slots, and the pages claimed by each slot;
//! a process changes them with compare-and-swap, so the accounting works one-sided over
//! every transport and needs no coordinator. A process claims in grants of
//! [`GRANT_PAGES`] (so a write-back costs a round trip per grant, not per page) and keeps
//! the unused part as local credit; near a full node it claims exactly what it needs, so
//! the whole pool can be filled. Its own slot word always says what it holds, so when it
//! dies without giving anything back, whoever takes its slot next (or a process that
//! finds the pool full) returns the claim: every claim is returned exactly once, by the
//! compare-and-swap that zeroes the slot word.

use crate::config::job::{owner_alive, Owner, SLOTS_MAX};
use crate::node::header::{
    slot_claimed_offset, slot_owner_offset, CAPACITY_PAGES_OFFSET, CLAIMED_PAGES_OFFSET,
};
use crate::transport::{NodeId, Session, TransportError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pages claimed at once when credit runs out (4 MiB).
pub const GRANT_PAGES: u64 = 1024;

/// Credit beyond this many pages is given back to its node.
const CREDIT_KEPT_PAGES: u64 = 4 * GRANT_PAGES;

/// Compare-and-swap rounds before a contended counter counts as a failure.
const CAS_ROUNDS_MAX: usize = 10_000;

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The home node of pages being written home holds all it may.
    #[error(
        "the memory pool is exhausted: {node} holds all the {capacity_pages} pages ({} MiB) it \
         may, and {wanted_pages} more must be written home to it; raise --node-memory or -n",
        capacity_pages >> 8
    )]
    Exhausted {
        node: NodeId,
        capacity_pages: u64,
        wanted_pages: u64,
    },
    /// A counter kept changing under us for too long, or our own slot word changed.
    #[error("{node}: the pool's counters in its header changed unexpectedly: {detail}")]
    Corrupt { node: NodeId, detail: String },
    /// The node could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What this process holds on one node.
#[derive(Debug, Clone, Copy, Default)]
struct NodeClaim {
    /// Its capacity in pages, read once.
    capacity_pages: u64,
    /// Pages claimed by this slot (the value of its slot word on the node).
    claimed_pages: u64,
    /// Pages of this process with a copy at home on the node.
    used_pages: u64,
}

impl NodeClaim {
    fn credit(&self) -> u64 {
        self.claimed_pages - self.used_pages
    }
}

/// This process's claims on every node.
#[derive(Debug)]
pub struct PoolAccount {
    slot: usize,
    owner: Owner,
    node_count: usize,
    nodes: Mutex<Vec<NodeClaim>>,
    /// Pages the pool could still hold, as last read (see [`Self::free_pages_estimate`]).
    free_estimate: AtomicU64,
    /// When the estimate was last read from the nodes.
    estimated_at: Mutex<Instant>,
}

/// How often [`PoolAccount::trim`] refreshes the free-pages estimate.
const ESTIMATE_PERIOD: Duration = Duration::from_millis(100);

fn read_word(s: &mut dyn Session, node: NodeId, offset: u64) -> Result<u64, TransportError> {
    s.compare_and_swap(node, offset, 0, 0)
}

/// Adds `delta` (may be negative) to a shared counter, refusing (false) when the result
/// would pass `limit`.
fn add_bounded(
    s: &mut dyn Session,
    node: NodeId,
    offset: u64,
    delta: i64,
    limit: u64,
) -> Result<bool, PoolError> {
    let mut cur = read_word(s, node, offset)?;
    for _ in 0..CAS_ROUNDS_MAX {
        let next = cur
            .checked_add_signed(delta)
            .ok_or_else(|| PoolError::Corrupt {
                node,
                detail: format!("counter at {offset:#x} is {cur}, cannot add {delta}"),
            })?;
        if delta > 0 && next > limit {
            return Ok(false);
        }
        let found = s.compare_and_swap(node, offset, cur, next)?;
        if found == cur {
            return Ok(true);
        }
        cur = found;
    }
    Err(PoolError::Corrupt {
        node,
        detail: format!("counter at {offset:#x} stayed contended"),
    })
}

/// `result`, or `None` when it failed because `node` died during it (the session fenced
/// it, `redundancy`): a dead node's counters died with it and no longer matter.
fn unless_fenced<T, E: Into<PoolError>>(
    s: &dyn Session,
    node: NodeId,
    result: Result<T, E>,
) -> Result<Option<T>, PoolError> {
    match result.map_err(Into::into) {
        Ok(v) => Ok(Some(v)),
        Err(PoolError::Transport(_)) if s.fenced(node) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives back whatever slot `slot` claimed on every one of `nodes` nodes. The caller
/// holds the slot (its owner word is the caller's), so nobody adds to the claim meanwhile.
pub fn release_slot(s: &mut dyn Session, slot: usize, nodes: usize) -> Result<(), PoolError> {
    for n in 0..nodes {
        let node = NodeId(n as u16);
        if s.fenced(node) {
            continue; // a dead node's counters died with it
        }
        let offset = slot_claimed_offset(slot);
        let read = read_word(s, node, offset);
        let Some(held) = unless_fenced(s, node, read)? else {
            continue;
        };
        // Zero the slot word first: if we die between the two, the pages leak (counted
        // as claimed) rather than being given back twice.
        let zeroed = s.compare_and_swap(node, offset, held, 0);
        if held == 0 || unless_fenced(s, node, zeroed)? != Some(held) {
            continue;
        }
        let given = add_bounded(s, node, CLAIMED_PAGES_OFFSET, -(held as i64), u64::MAX);
        unless_fenced(s, node, given)?;
    }
    Ok(())
}

/// Gives back the claims of every slot whose owner is dead; returns how many slots.
/// Each is held (marked [`Owner::reclaiming`]) while its claims are returned, then freed.
pub fn release_dead_slots(
    s: &mut dyn Session,
    me: Owner,
    slots: usize,
    nodes: usize,
) -> Result<usize, PoolError> {
    let mut released = 0;
    for slot in 0..slots.min(SLOTS_MAX) {
        let offset = slot_owner_offset(slot);
        let word = read_word(s, NodeId(0), offset)?;
        if word == 0 || owner_alive(Owner(word)) {
            continue;
        }
        let mark = me.reclaiming().0;
        if s.compare_and_swap(NodeId(0), offset, word, mark)? != word {
            continue;
        }
        release_slot(s, slot, nodes)?;
        s.compare_and_swap(NodeId(0), offset, mark, 0)?;
        released += 1;
    }
    Ok(released)
}

impl PoolAccount {
    /// The account of `owner`, which holds `slot`: gives back what a previous holder of
    /// the slot left claimed, and reads every node's capacity.
    pub fn open(
        s: &mut dyn Session,
        owner: Owner,
        slot: usize,
        nodes: usize,
    ) -> Result<PoolAccount, PoolError> {
        release_slot(s, slot, nodes)?;
        let mut claims = Vec::with_capacity(nodes);
        for n in 0..nodes {
            claims.push(NodeClaim {
                capacity_pages: read_word(s, NodeId(n as u16), CAPACITY_PAGES_OFFSET)?,
                ..NodeClaim::default()
            });
        }
        let account = PoolAccount {
            slot,
            owner,
            node_count: nodes,
            nodes: Mutex::new(claims),
            free_estimate: AtomicU64::new(0),
            estimated_at: Mutex::new(Instant::now()),
        };
        account
            .free_estimate
            .store(account.free_pages(s)?, Ordering::Relaxed);
        Ok(account)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Vec<NodeClaim>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for `pages` more pages of this process at home on `node`, claiming
    /// from the node when local credit does not cover them.
    /// A fenced node (dead, `redundancy`) takes nothing: no copy is written to it.
    pub fn reserve(&self, s: &mut dyn Session, node: NodeId, pages: u64) -> Result<(), PoolError> {
        if s.fenced(node) {
            return Ok(());
        }
        let mut claims = self.claims();
        let i = usize::from(node.0);
        let c = claims[i];
        if c.credit() < pages {
            let needed = pages - c.credit();
            // If it died during the claim, its copy will not be written either.
            let claimed = self.claim(s, node, c, needed);
            let Some(granted) = unless_fenced(s, node, claimed)? else {
                return Ok(());
            };
            claims[i].claimed_pages += granted;
        }
        claims[i].used_pages += pages;
        Ok(())
    }

    /// Claims at least `needed` pages on `node`: a whole grant when the node has room,
    /// else exactly `needed`, else after giving back dead processes' claims. Returns the
    /// pages claimed.
    fn claim(
        &self,
        s: &mut dyn Session,
        node: NodeId,
        c: NodeClaim,
        needed: u64,
    ) -> Result<u64, PoolError> {
        let grant = needed.max(GRANT_PAGES);
        let cap = c.capacity_pages;
        let mut got = if add_bounded(s, node, CLAIMED_PAGES_OFFSET, grant as i64, cap)? {
            grant
        } else if add_bounded(s, node, CLAIMED_PAGES_OFFSET, needed as i64, cap)? {
            needed
        } else {
            0
        };
        if got == 0 {
            release_dead_slots(s, self.owner, SLOTS_MAX, self.node_count)?;
            if !add_bounded(s, node, CLAIMED_PAGES_OFFSET, needed as i64, cap)? {
                return Err(PoolError::Exhausted {
                    node,
                    capacity_pages: cap,
                    wanted_pages: needed,
                });
            }
            got = needed;
        }
        let offset = slot_claimed_offset(self.slot);
        let found = s.compare_and_swap(node, offset, c.claimed_pages, c.claimed_pages + got)?;
        if found != c.claimed_pages {
            return Err(PoolError::Corrupt {
                node,
                detail: format!(
                    "slot {}'s claim is {found} pages, this process counted {}: another \
                     process took its slot",
                    self.slot, c.claimed_pages
                ),
            });
        }
        Ok(got)
    }

    /// Records that `pages` pages of this process on `node` no longer have a home copy
    /// (discarded). Local only: the credit goes back to the node in [`Self::trim`].
    pub fn forget(&self, node: NodeId, pages: u64) {
        let mut claims = self.claims();
        let c = &mut claims[usize::from(node.0)];
        // Fewer used than forgotten only on a node fenced before the page's first trip
        // home (`reserve` counted nothing there).
        c.used_pages = c.used_pages.saturating_sub(pages);
    }

    /// Gives back credit beyond what is worth keeping, so that memory this process freed
    /// serves others, and refreshes the free-pages estimate now and then. Cheap when
    /// there is nothing to do; the reclaimer calls it every round.
    pub fn trim(&self, s: &mut dyn Session) -> Result<(), PoolError> {
        self.give_back_credit(s)?;
        let mut at = self.estimated_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.elapsed() >= ESTIMATE_PERIOD {
            *at = Instant::now();
            self.free_estimate
                .store(self.free_pages(s)?, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Pages the pool could still hold, as read at most [`ESTIMATE_PERIOD`] ago.
    pub fn free_pages_estimate(&self) -> u64 {
        self.free_estimate.load(Ordering::Relaxed)
    }

    fn give_back_credit(&self, s: &mut dyn Session) -> Result<(), PoolError> {
        let mut claims = self.claims();
        for (i, c) in claims.iter_mut().enumerate() {
            let node = NodeId(i as u16);
            if c.credit() <= CREDIT_KEPT_PAGES || s.fenced(node) {
                continue;
            }
            let back = c.credit() - GRANT_PAGES;
            let offset = slot_claimed_offset(self.slot);
            let next = c.claimed_pages - back;
            let cas = s.compare_and_swap(node, offset, c.claimed_pages, next);
            let Some(found) = unless_fenced(s, node, cas)? else {
                continue;
            };
            if found != c.claimed_pages {
                return Err(PoolError::Corrupt {
                    node,
                    detail: format!("slot {}'s claim changed under its owner", self.slot),
                });
            }
            c.claimed_pages = next;
            let given = add_bounded(s, node, CLAIMED_PAGES_OFFSET, -(back as i64), u64::MAX);
            unless_fenced(s, node, given)?;
        }
        Ok(())
    }

    /// Pages this process has at home, over all nodes.
    pub fn used_pages(&self) -> u64 {
        self.claims().iter().map(|c| c.used_pages).sum()
    }

    /// Pages that could still be written home: every node's capacity less what all
    /// processes claimed, plus this process's own credit. Reads every node's counter.
    pub fn free_pages(&self, s: &mut dyn Session) -> Result<u64, PoolError> {
        let claims = self.claims().clone();
        let mut free = 0;
        for (i, c) in claims.iter().enumerate() {
            if s.fenced(NodeId(i as u16)) {
                continue;
            }
            let node = NodeId(i as u16);
            let read = read_word(s, node, CLAIMED_PAGES_OFFSET);
            let Some(claimed) = unless_fenced(s, node, read)? else {
                continue;
            };
            free += c.capacity_pages.saturating_sub(claimed) + c.credit();
        }
        Ok(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::memory::MemoryNodes;

    /// Two nodes of `capacity` pages each, as a node writes its header at start.
    fn nodes(capacity: u64) -> MemoryNodes {
        let mut m = MemoryNodes::new();
        for n in 0..2 {
            m.compare_and_swap(NodeId(n), CAPACITY_PAGES_OFFSET, 0, capacity)
                .unwrap();
        }
        m
    }

    fn claimed(m: &mut MemoryNodes, node: u16) -> u64 {
        read_word(m, NodeId(node), CLAIMED_PAGES_OFFSET).unwrap()
    }

    #[test]
    fn claims_come_in_grants_and_fill_a_node_exactly() {
        let mut m = nodes(3000);
        let me = Owner::new(1, 10);
        let a = PoolAccount::open(&mut m, me, 0, 2).unwrap();
        a.reserve(&mut m, NodeId(0), 1).unwrap();
        assert_eq!(
            claimed(&mut m, 0),
            GRANT_PAGES,
            "one grant for the first page"
        );
        for _ in 1..GRANT_PAGES {
            a.reserve(&mut m, NodeId(0), 1).unwrap();
        }
        assert_eq!(claimed(&mut m, 0), GRANT_PAGES, "served from credit");
        // Two more grants do not fit in 3000 pages: the last claim is exact.
        a.reserve(&mut m, NodeId(0), 1500).unwrap();
        a.reserve(&mut m, NodeId(0), 3000 - GRANT_PAGES - 1500)
            .unwrap();
        assert_eq!(claimed(&mut m, 0), 3000);
        let err = a.reserve(&mut m, NodeId(0), 1).unwrap_err();
        assert!(
            matches!(
                err,
                PoolError::Exhausted {
                    node: NodeId(0),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("memory pool is exhausted"),
            "{err}"
        );
        assert_eq!(claimed(&mut m, 1), 0, "the other node is untouched");
        assert_eq!(a.used_pages(), 3000);
    }

    #[test]
    fn forgotten_pages_go_back_and_a_dead_slots_claim_is_returned_once() {
        let mut m = nodes(4 * GRANT_PAGES);
        let dead = Owner::new(1, 10);
        let a = PoolAccount::open(&mut m, dead, 0, 2).unwrap();
        a.reserve(&mut m, NodeId(1), 3 * GRANT_PAGES).unwrap();
        // It frees most of it, then the credit beyond what it keeps is given back.
        a.forget(NodeId(1), 3 * GRANT_PAGES);
        a.trim(&mut m).unwrap();
        assert!(claimed(&mut m, 1) <= CREDIT_KEPT_PAGES);
        a.reserve(&mut m, NodeId(1), 3 * GRANT_PAGES).unwrap();
        let held = claimed(&mut m, 1);
        // Its process dies holding the claim (slot 0's owner word names it).
        m.compare_and_swap(NodeId(0), slot_owner_offset(0), 0, dead.0)
            .unwrap();
        drop(a);
        // Another process finds the node full and gives the dead one's claim back.
        let me = Owner::new(crate::config::job::host_tag(), std::process::id());
        m.compare_and_swap(NodeId(0), slot_owner_offset(1), 0, me.0)
            .unwrap();
        let b = PoolAccount::open(&mut m, me, 1, 2).unwrap();
        // Its owner's host tag (1) is not this host's: it is never taken for dead.
        b.reserve(&mut m, NodeId(1), 4 * GRANT_PAGES - held)
            .unwrap();
        assert!(
            b.reserve(&mut m, NodeId(1), held).is_err(),
            "the other host's claim stays"
        );
        // Make the owner a dead process of this host, then the claim comes back.
        m.compare_and_swap(
            NodeId(0),
            slot_owner_offset(0),
            dead.0,
            Owner::new(me.host(), 0x7fff_fff0).0,
        )
        .unwrap();
        b.reserve(&mut m, NodeId(1), held).unwrap();
        assert_eq!(
            read_word(&mut m, NodeId(0), slot_owner_offset(0)).unwrap(),
            0,
            "slot freed"
        );
        assert_eq!(
            read_word(&mut m, NodeId(1), slot_claimed_offset(0)).unwrap(),
            0
        );
        assert_eq!(claimed(&mut m, 1), 4 * GRANT_PAGES);
        // Returning it again changes nothing.
        release_slot(&mut m, 0, 2).unwrap();
        assert_eq!(claimed(&mut m, 1), 4 * GRANT_PAGES);
    }
}
