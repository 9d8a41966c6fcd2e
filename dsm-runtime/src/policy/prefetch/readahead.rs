//! Adaptive sequential readahead, after Linux's: two consecutive faults start a window
//! of `window_pages_initial` pages ahead; each fault that lands on a prefetched page
//! doubles it (up to `window_pages_max`); a fault that breaks the sequence halves it, and
//! below the initial size readahead stops until the next sequence shows up. The window is
//! topped up only once half of it has been consumed, so requests go out in batches.
//!
//! A fault on a page that was issued but not staged (evicted before use, or still in
//! flight) continues the sequence but halves the window: those pages were wasted or late.

use crate::policy::prefetch::{PrefetchPolicy, Run};
use crate::space::PageNum;

/// Sequential readahead with a window that adapts to how well it is doing.
#[derive(Debug, Clone)]
pub struct Readahead {
    window_pages_initial: usize,
    window_pages_max: usize,
    window_pages: usize,
    last: Option<u64>,
    /// Last page of the sequence being followed (`None`: not following one).
    cursor: Option<u64>,
    run: Run,
}

impl Readahead {
    /// Windows start at `window_pages_initial` and grow to `window_pages_max` (both at
    /// least 1; the maximum is raised to the initial size if below it).
    pub fn new(window_pages_initial: usize, window_pages_max: usize) -> Readahead {
        let initial = window_pages_initial.max(1);
        Readahead {
            window_pages_initial: initial,
            window_pages_max: window_pages_max.max(initial),
            window_pages: 0,
            last: None,
            cursor: None,
            run: Run::default(),
        }
    }

    /// Current window in pages (0 while no sequence is followed).
    pub fn window_pages(&self) -> usize {
        self.window_pages
    }
}

impl PrefetchPolicy for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }

    fn on_fault(
        &mut self,
        page: PageNum,
        hit_prefetched: bool,
        max: usize,
        out: &mut Vec<PageNum>,
    ) {
        let p = page.0;
        let Some(last) = self.last.replace(p) else {
            return;
        };
        if p == last {
            return;
        }
        let ahead = |c: u64| self.run.ahead(c, 1);
        let in_run = self
            .cursor
            .is_some_and(|c| p > c && p - c <= ahead(c).max(1));
        let sequential = p == last.wrapping_add(1) || in_run;
        if !sequential {
            self.window_pages /= 2;
            if self.window_pages < self.window_pages_initial {
                self.window_pages = 0;
                self.cursor = None;
                self.run.reset();
            }
            return;
        }
        let issued = self.cursor.is_some_and(|c| p - c <= ahead(c));
        self.window_pages = if self.window_pages == 0 {
            self.window_pages_initial
        } else if hit_prefetched {
            (self.window_pages * 2).min(self.window_pages_max)
        } else if issued {
            (self.window_pages / 2).max(self.window_pages_initial)
        } else {
            self.window_pages
        };
        self.cursor = Some(p);
        self.run.top_up(p, 1, self.window_pages, max, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::prefetch::test_support::{feed, silent_on_random};

    #[test]
    fn window_opens_on_a_pair_grows_on_hits_and_tops_up_in_halves() {
        let mut r = Readahead::new(2, 8);
        let got = feed(
            &mut r,
            &[
                (10, false), // alone: no sequence yet
                (11, false), // sequence: window 2
                (12, true),  // hit: window 4, 1 of 4 ahead: top up
                (13, true),  // hit: window 8, 3 of 8 ahead: top up
                (14, true),  // 7 ahead: more than half, wait
                (15, true),
                (16, true),
                (17, true), // 4 ahead of 8: top up
                (18, true),
            ],
            64,
        );
        let want: Vec<Vec<u64>> = vec![
            vec![],
            vec![12, 13],
            vec![14, 15, 16],
            vec![17, 18, 19, 20, 21],
            vec![],
            vec![],
            vec![],
            vec![22, 23, 24, 25],
            vec![],
        ];
        assert_eq!(got, want);
        assert_eq!(r.window_pages(), 8);
    }

    #[test]
    fn breaks_shrink_the_window_and_late_pages_halve_it() {
        let mut r = Readahead::new(2, 16);
        feed(&mut r, &[(0, false), (1, false), (2, true), (3, true)], 64);
        assert_eq!(r.window_pages(), 8);
        // 4 was issued but faulted as a miss: evicted or late.
        feed(&mut r, &[(4, false)], 64);
        assert_eq!(r.window_pages(), 4);
        // Random faults halve it, then stop readahead altogether.
        let got = feed(&mut r, &[(900, false), (77, false)], 64);
        assert_eq!(got, vec![Vec::<u64>::new(), vec![]]);
        assert_eq!(r.window_pages(), 0);
        // A new sequence starts from the initial window.
        let got = feed(&mut r, &[(500, false), (501, false)], 64);
        assert_eq!(got, vec![vec![], vec![502, 503]]);
    }

    #[test]
    fn skipping_ahead_inside_the_window_continues_the_sequence() {
        let mut r = Readahead::new(4, 4);
        feed(&mut r, &[(0, false), (1, false)], 64); // issued 2..=5
        let got = feed(&mut r, &[(4, true)], 64);
        assert_eq!(got, vec![vec![6, 7, 8]]);
    }

    #[test]
    fn respects_max() {
        let mut r = Readahead::new(16, 16);
        let got = feed(&mut r, &[(0, false), (1, false)], 3);
        assert_eq!(got[1], vec![2, 3, 4]);
    }

    #[test]
    fn silent_on_random_faults() {
        silent_on_random(&mut Readahead::new(4, 64));
    }
}
