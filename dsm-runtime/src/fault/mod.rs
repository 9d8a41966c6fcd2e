//! The fault path: userfaultfd events in, pages installed, threads woken.
//!
//! ```text
//! uffd events -> decode -> page state -> plan (fault action) -> transport batch read
//!             -> install (UFFDIO_COPY, write-protected for reads) -> wake -> statistics
//! ```

pub(crate) mod affinity;
pub mod follow;
pub mod handler;
pub mod helper;
pub(crate) mod map_ahead;
pub mod prefetcher;
pub(crate) mod regions;
pub mod uffd;

pub use handler::FaultHandler;
