//! The slot table (node 0's header words, `node::header`) kept on the first few nodes,
//! so that it outlives node 0: a compare-and-swap goes to the first live copy, which
//! decides it, and a swap that took effect is copied to the others.

use super::fence::Fence;
use crate::node::header::CAPACITY_PAGES_OFFSET;
use crate::policy::Home;
use crate::transport::{NodeId, Session, TransportError};

/// Whether the word at `offset` of `node` belongs to the slot table.
pub fn is_table_word(node: NodeId, offset: u64) -> bool {
    node == NodeId(0) && offset < CAPACITY_PAGES_OFFSET
}

/// A compare-and-swap on the slot table kept on nodes `0..copies`; `lost` makes the
/// error for a table with no live copy left.
pub fn compare_and_swap(
    inner: &mut dyn Session,
    fence: &Fence,
    copies: usize,
    (offset, expected, new): (u64, u64, u64),
    lost: impl Fn(Home) -> TransportError,
) -> Result<u64, TransportError> {
    let mut decided = None;
    for node in (0..copies as u16).map(NodeId) {
        if fence.is_dead(node) {
            continue;
        }
        match decided {
            None => match inner.compare_and_swap(node, offset, expected, new) {
                Ok(found) => decided = Some(found),
                Err(e) => declare_or_fail(fence, e)?,
            },
            Some(found) if found == expected && expected != new => {
                if let Err(e) = mirror_word(inner, node, offset, new) {
                    declare_or_fail(fence, e)?;
                }
            }
            Some(_) => break,
        }
    }
    decided.ok_or_else(|| {
        lost(Home {
            node: NodeId(0),
            offset,
        })
    })
}

/// A failed attempt: a death fences its node (the caller goes on with the next copy);
/// anything else is the caller's error.
pub fn declare_or_fail(fence: &Fence, err: TransportError) -> Result<(), TransportError> {
    if Fence::is_death(&err) {
        fence.declare_dead(err.node(), &err);
        return Ok(());
    }
    Err(err)
}

/// `res`, an operation's result on `node`, after fencing the node if it failed because
/// the node is gone.
pub fn noting_death<T>(
    fence: &Fence,
    node: NodeId,
    res: Result<T, TransportError>,
) -> Result<T, TransportError> {
    if let Err(e) = &res {
        if Fence::is_death(e) {
            fence.declare_dead(node, e);
        }
    }
    res
}

/// Sets the word at `offset` on `node` to `new`, whatever it held.
fn mirror_word(
    inner: &mut dyn Session,
    node: NodeId,
    offset: u64,
    new: u64,
) -> Result<(), TransportError> {
    let mut current = inner.compare_and_swap(node, offset, 0, 0)?;
    for _ in 0..1000 {
        let found = inner.compare_and_swap(node, offset, current, new)?;
        if found == current {
            return Ok(());
        }
        current = found;
    }
    Ok(())
}
