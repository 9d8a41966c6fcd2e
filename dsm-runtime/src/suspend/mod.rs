//! Suspending a process's share of a job: the fault path is closed (no page comes in),
//! every cached page is written home if dirty and dropped, and the memory behind the
//! cache is given back to the host; resuming opens the fault path again and pages come
//! back on demand. `dsmrun suspend` (and SIGTSTP to `dsmrun`) drives it through each
//! process's control socket ([`control`]) and then stops the processes.
//!
//! Who does what: the control thread closes the [`Gate`] and waits until no runtime
//! thread is inside the fault path; the reclaimer, which owns a session to the nodes and
//! an evictor, writes the dirty pages home in large batches ([`flush`]) and empties the
//! cache ([`release`]); the control thread answers once it is done. A checkpoint's
//! quiesce does the same but keeps the cache, clean ([`Release::Keep`]). The program's threads keep running until `dsmrun` stops them; any of them that
//! touches the heap meanwhile waits in its fault, which is served after the resume.

pub mod control;
mod flush;
mod gate;
mod release;

pub use flush::Release;
pub(crate) use gate::Gate;
pub(crate) use release::release_cache;
pub use release::{Released, EVICT_PATH_ENV};
