//! Policies: pure decisions the fault path acts on. They do no I/O.

pub mod placement;

pub use placement::{Interleaved, Placement, PlacementError};
