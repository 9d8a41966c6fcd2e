//! Checkpoints of a running job (`--checkpoint-dir DIR --checkpoint-every 10m`, or
//! `dsmrun checkpoint JOB`) and restarts from them (`dsmrun restart DIR`).
//!
//! A checkpoint, in order: the job is quiesced as for a suspend (fault paths closed, every
//! dirty page written home, caches empty: the whole heap is on the nodes, consistent with
//! the processes); the program's process writes its image (the runtime's in-process
//! engine, `crate::checkpoint`); each node writes the pages changed since its previous
//! snapshot; the job resumes; then the files are checksummed into a manifest and the
//! checkpoint's directory is renamed from `ckpt-NNNN.tmp` to `ckpt-NNNN` ([`dir`]).

pub mod dir;
pub mod duration;
pub mod manifest;
pub mod restart;
mod take;

pub use take::{Checkpointer, Periodic};

use std::path::PathBuf;
use std::time::Duration;

/// What `--checkpoint-dir` and `--checkpoint-every` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Where checkpoints go (absolute).
    pub dir: PathBuf,
    /// Take one this often; `None`: only on `dsmrun checkpoint JOB`.
    pub every: Option<Duration>,
}

/// File name of node `i`'s snapshot inside a checkpoint.
pub fn snapshot_name(node: usize) -> String {
    format!("node-{node}.snap")
}

/// File name of the process image inside a checkpoint.
pub const IMAGE_NAME: &str = "image";

/// After this many snapshots in a node's chain, the next one is full: restarts load at
/// most this many files per node, and older checkpoints can be pruned.
pub const CHAIN_MAX: usize = 8;
