//! CLOCK (second chance): FIFO order, but a page used since the hand last passed gets
//! another round.

use crate::policy::eviction::{EvictionPolicy, PREALLOC_PAGES_MAX};
use crate::policy::PageMap;
use crate::space::PageNum;

#[derive(Clone, Copy)]
struct Entry {
    page: PageNum,
    referenced: bool,
}

/// CLOCK over a ring of tracked pages.
#[derive(Default)]
pub struct Clock {
    ring: Vec<Option<Entry>>,
    index: PageMap<usize>,
    free: Vec<usize>,
    hand: usize,
}

impl Clock {
    /// A policy sized for `capacity` pages (it grows if more are inserted).
    pub fn with_capacity(capacity: usize) -> Clock {
        Clock {
            ring: Vec::with_capacity(capacity.min(PREALLOC_PAGES_MAX)),
            index: PageMap::with_capacity_and_hasher(
                capacity.min(PREALLOC_PAGES_MAX),
                Default::default(),
            ),
            free: Vec::with_capacity(capacity.min(PREALLOC_PAGES_MAX)),
            hand: 0,
        }
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn on_insert(&mut self, page: PageNum, _prefetched: bool) {
        if self.index.contains_key(&page) {
            return;
        }
        let e = Some(Entry {
            page,
            referenced: false,
        });
        let i = match self.free.pop() {
            Some(i) => {
                self.ring[i] = e;
                i
            }
            None => {
                self.ring.push(e);
                self.ring.len() - 1
            }
        };
        self.index.insert(page, i);
    }

    fn on_access(&mut self, page: PageNum) {
        if let Some(&i) = self.index.get(&page) {
            if let Some(e) = self.ring[i].as_mut() {
                e.referenced = true;
            }
        }
    }

    fn on_remove(&mut self, page: PageNum) {
        if let Some(i) = self.index.remove(&page) {
            self.ring[i] = None;
            self.free.push(i);
        }
    }

    fn select_victims(&mut self, n: usize, out: &mut Vec<PageNum>) {
        let start = out.len();
        let len = self.ring.len();
        // Two sweeps: the first may only clear reference bits.
        for step in 0..2 * len {
            if out.len() - start >= n.min(self.index.len()) {
                break;
            }
            self.hand = (self.hand + 1) % len;
            let Some(e) = self.ring[self.hand].as_mut() else {
                continue;
            };
            // In the first sweep every slot is visited once, so only the second can meet
            // a page already proposed: checking earlier would make a batch quadratic.
            let seen = step >= len && out[start..].contains(&e.page);
            if e.referenced {
                e.referenced = false;
            } else if !seen {
                out.push(e.page);
            }
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(v: &[u64]) -> Vec<PageNum> {
        v.iter().map(|&p| PageNum(p)).collect()
    }

    #[test]
    fn referenced_pages_get_a_second_chance() {
        let mut c = Clock::with_capacity(4);
        for p in 1..=4 {
            c.on_insert(PageNum(p), false);
        }
        c.on_access(PageNum(1));
        c.on_access(PageNum(3));
        let mut out = Vec::new();
        c.select_victims(2, &mut out);
        assert_eq!(out, pages(&[2, 4]));
        c.on_remove(PageNum(2));
        c.on_remove(PageNum(4));
        out.clear();
        c.select_victims(4, &mut out);
        assert_eq!(out, pages(&[3, 1]), "second chance used up, in hand order");
    }

    #[test]
    fn never_proposes_a_page_twice_or_an_untracked_one() {
        let mut c = Clock::with_capacity(2);
        c.on_insert(PageNum(7), false);
        let mut out = Vec::new();
        c.select_victims(5, &mut out);
        assert_eq!(out, pages(&[7]));
        c.on_remove(PageNum(7));
        out.clear();
        c.select_victims(5, &mut out);
        assert!(out.is_empty());
    }
}
