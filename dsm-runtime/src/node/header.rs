//! The header at the start of every node's region: the words through which the processes
//! of a job share the pool without a coordinator. Every field is an 8-byte word read and
//! changed with the transports' compare-and-swap, so it works one-sided over shm, TCP and
//! RDMA alike. Pages of the global space are placed after it.
//!
//! | offset | words | meaning |
//! | --- | --- | --- |
//! | 0 | [`SLOTS_MAX`] | node 0 only: the slot table, each word the owner of a slot (see `config::job`) |
//! | 512 | 1 | pages this node may hold (its `--memory`), written by the node at start |
//! | 520 | 1 | pages claimed on this node by all slots together |
//! | 528 | 1 | non-zero while the node restores its checkpoint lazily: `shm` clients then send it their reads and writes (see `node/restore.rs`) |
//! | 1024 | [`SLOTS_MAX`] | pages claimed on this node by each slot, so a dead process's claim can be given back |
//!
//! Node memory is claimed as pages are first written home (`space::pool`), never
//! partitioned up front: one process may take the whole pool, several share it on demand.

use crate::config::job::SLOTS_MAX;

/// Bytes reserved at the start of every region. Generous (64 KiB of address space, a
/// page of it ever touched) so later fields (fencing, directories) fit without moving
/// the data.
pub const NODE_HEADER_BYTES: u64 = 64 << 10;

/// Offset of slot `slot`'s owner word in node 0's slot table.
pub fn slot_owner_offset(slot: usize) -> u64 {
    debug_assert!(slot < SLOTS_MAX);
    (slot * 8) as u64
}

/// Offset of the node's capacity, in pages.
pub const CAPACITY_PAGES_OFFSET: u64 = 512;

/// Offset of the pages claimed on the node by every slot together.
pub const CLAIMED_PAGES_OFFSET: u64 = 520;

/// Offset of the word that is non-zero while the node restores pages of a checkpoint:
/// clients that copy the region's bytes themselves (`shm`) must then go through the node,
/// which restores each page before serving it. It only ever goes from set to clear.
pub const RESTORING_OFFSET: u64 = 528;

/// Offset of the pages claimed on the node by slot `slot`.
pub fn slot_claimed_offset(slot: usize) -> u64 {
    debug_assert!(slot < SLOTS_MAX);
    1024 + (slot * 8) as u64
}

/// Bytes of a region of `region_bytes` that hold pages (after the header).
pub fn data_bytes(region_bytes: u64) -> u64 {
    region_bytes.saturating_sub(NODE_HEADER_BYTES)
}

const _: () = assert!(SLOTS_MAX * 8 <= CAPACITY_PAGES_OFFSET as usize);
const _: () = assert!(1024 + SLOTS_MAX * 8 <= NODE_HEADER_BYTES as usize);
const _: () = assert!(NODE_HEADER_BYTES % 4096 == 0);
