//! A userspace distributed shared memory runtime.
//!
//! A process reserves a large global address range ([`space`]); every access to a page
//! that is not resident is trapped with userfaultfd ([`fault`]) and served from the
//! page's home memory node ([`node`]) over a [`transport`], while a bounded local
//! [`cache`] evicts and writes pages back. Decisions live in [`policy`] and the page-state
//! machine in [`coherence`]; [`config`] is the one typed configuration and [`stats`] the
//! counters. [`runtime::Runtime`] ties them together.

pub mod cache;
pub mod checkpoint;
pub mod coherence;
pub mod config;
pub mod effects;
pub mod fault;
pub mod launch;
pub mod launcher;
pub mod node;
pub mod policy;
pub mod redundancy;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod space;
pub mod stats;
pub mod suspend;
pub mod trace;
pub mod transport;
pub mod tune;

pub use config::RuntimeConfig;
pub use runtime::{Runtime, RuntimeError};
