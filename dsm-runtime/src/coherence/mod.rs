//! Coherence: the page-state machine every access goes through.
//!
//! Mode 1 (pooled memory, one process) is the special case of the mode-2 protocol in
//! which this process is always granted what it asks: a read fault obtains a shared
//! (read-only) copy, a write fault or the first write to a shared copy obtains the
//! exclusive (writable) copy, and eviction gives the copy back (writing it home if it was
//! exclusive). In mode 2 the same transitions will first ask the page's home directory,
//! which may also revoke copies; nothing here changes, the directory adds messages.

pub mod state;

pub use state::{Access, EvictAction, FaultAction, PageState};
