//! FIFO: the page resident longest leaves first, whatever its use. The baseline the
//! others are measured against, and the right choice when the runtime samples no
//! accesses at all (recency information then costs nothing and buys nothing).

use super::list::OrderedSet;
use crate::policy::eviction::EvictionPolicy;
use crate::space::PageNum;

/// First in, first out.
#[derive(Default)]
pub struct Fifo {
    queue: OrderedSet,
}

impl Fifo {
    /// A policy sized for `capacity` pages (it grows if more are inserted).
    pub fn with_capacity(capacity: usize) -> Fifo {
        Fifo {
            queue: OrderedSet::with_capacity(capacity),
        }
    }
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn on_insert(&mut self, page: PageNum, _prefetched: bool) {
        self.queue.push_back(page);
    }

    fn on_access(&mut self, _page: PageNum) {}

    fn on_remove(&mut self, page: PageNum) {
        self.queue.remove(page);
    }

    fn select_victims(&mut self, n: usize, out: &mut Vec<PageNum>) {
        out.extend(self.queue.iter().take(n));
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(v: &[u64]) -> Vec<PageNum> {
        v.iter().map(|&p| PageNum(p)).collect()
    }

    #[test]
    fn oldest_goes_first_whatever_its_use() {
        let mut f = Fifo::with_capacity(4);
        for p in [5, 1, 9, 3] {
            f.on_insert(PageNum(p), false);
        }
        f.on_access(PageNum(5));
        f.on_insert(PageNum(1), false); // already tracked: keeps its place
        let mut out = Vec::new();
        f.select_victims(2, &mut out);
        assert_eq!(out, pages(&[5, 1]));
        // Proposing does not forget: the evictor skipped 5, evicted 1.
        f.on_remove(PageNum(1));
        f.on_insert(PageNum(7), true);
        out.clear();
        f.select_victims(10, &mut out);
        assert_eq!(out, pages(&[5, 9, 3, 7]));
        assert_eq!(f.len(), 4);
    }
}
