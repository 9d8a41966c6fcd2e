//! An insertion-ordered set of pages with O(1) push, removal and move-to-back: the
//! queue under FIFO and each of 2Q's queues. A doubly linked list threaded through a
//! slab, so removing from the middle (the evictor took a page, or it was invalidated)
//! does not shift anything.

use crate::policy::PageMap;
use crate::space::PageNum;

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    page: PageNum,
    prev: usize,
    next: usize,
}

/// Pages in the order they were pushed (front = oldest).
#[derive(Default)]
pub(crate) struct OrderedSet {
    nodes: Vec<Node>,
    free: Vec<usize>,
    index: PageMap<usize>,
    head: usize,
    tail: usize,
}

impl OrderedSet {
    pub(crate) fn with_capacity(capacity: usize) -> OrderedSet {
        let capacity = capacity.min(crate::policy::eviction::PREALLOC_PAGES_MAX);
        OrderedSet {
            nodes: Vec::with_capacity(capacity),
            free: Vec::new(),
            index: PageMap::with_capacity_and_hasher(capacity, Default::default()),
            head: NIL,
            tail: NIL,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn contains(&self, page: PageNum) -> bool {
        self.index.contains_key(&page)
    }

    /// Appends `page` at the back; returns false (and changes nothing) if present.
    pub(crate) fn push_back(&mut self, page: PageNum) -> bool {
        if self.index.contains_key(&page) {
            return false;
        }
        let node = Node {
            page,
            prev: self.tail,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        match self.tail {
            NIL => self.head = i,
            t => self.nodes[t].next = i,
        }
        self.tail = i;
        self.index.insert(page, i);
        true
    }

    /// Removes `page`; returns whether it was present.
    pub(crate) fn remove(&mut self, page: PageNum) -> bool {
        let Some(i) = self.index.remove(&page) else {
            return false;
        };
        let Node { prev, next, .. } = self.nodes[i];
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
        self.free.push(i);
        true
    }

    /// Moves a present `page` to the back (most recent); returns whether it was present.
    pub(crate) fn move_to_back(&mut self, page: PageNum) -> bool {
        self.remove(page) && self.push_back(page)
    }

    /// Removes and returns the oldest page.
    pub(crate) fn pop_front(&mut self) -> Option<PageNum> {
        let page = self.front()?;
        self.remove(page);
        Some(page)
    }

    pub(crate) fn front(&self) -> Option<PageNum> {
        (self.head != NIL).then(|| self.nodes[self.head].page)
    }

    /// Oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = PageNum> + '_ {
        let mut i = self.head;
        std::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let n = self.nodes[i];
            i = n.next;
            Some(n.page)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(s: &OrderedSet) -> Vec<u64> {
        s.iter().map(|p| p.0).collect()
    }

    #[test]
    fn keeps_push_order_through_removals_and_moves() {
        let mut s = OrderedSet::with_capacity(4);
        for p in 1..=5 {
            assert!(s.push_back(PageNum(p)));
        }
        assert!(!s.push_back(PageNum(3)), "no duplicates");
        assert!(s.remove(PageNum(3)));
        assert!(!s.remove(PageNum(3)));
        assert!(s.move_to_back(PageNum(1)));
        assert_eq!(contents(&s), [2, 4, 5, 1]);
        assert_eq!(s.pop_front(), Some(PageNum(2)));
        s.push_back(PageNum(9));
        assert_eq!(contents(&s), [4, 5, 1, 9]);
        assert_eq!(s.len(), 4);
        while s.pop_front().is_some() {}
        assert_eq!(s.len(), 0);
        assert_eq!(s.front(), None);
    }
}
