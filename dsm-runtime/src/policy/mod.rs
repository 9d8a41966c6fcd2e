//! Policies: pure decisions the fault path acts on. They do no I/O, so the same code
//! drives the runtime and the offline cache simulator.

pub mod eviction;
pub mod placement;
pub mod prefetch;
pub mod profile;

pub use eviction::{Clock, EvictionPolicy, Fifo, TwoQ};
pub use placement::{Blocked, FirstTouch, Home, Interleaved, Placement, PlacementError};
pub use prefetch::{Leap, NoPrefetch, PrefetchPolicy, Readahead, Stride};
pub use profile::{Profile, ProfileError};
