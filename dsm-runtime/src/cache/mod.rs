//! The bounded local cache: page states, the budget, the staging tier, and eviction with
//! write-back.

pub mod budget;
mod discard;
pub mod evict;
pub mod page_table;
pub mod staging;

pub use budget::CacheBudget;
pub use evict::Evictor;
pub use page_table::PageTable;
pub use staging::Staging;

/// Empties a vector and gives its allocation back with another lifetime parameter.
///
/// Batches of transport operations borrow buffers for one call only; keeping one vector
/// per thread and recycling it this way keeps the fault path free of allocation. (The
/// standard library reuses the allocation for an in-place `collect` of an identically
/// laid-out type; were it ever not to, this would merely allocate.)
pub(crate) fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("vector was cleared"))
        .collect()
}
