//! Leap's majority-trend prefetcher (Al Maruf and Chowdhury, "Effectively Prefetching
//! Remote Memory with Leap", USENIX ATC 2020).
//!
//! The last `history_deltas` fault deltas are kept. To find the trend, a Boyer-Moore
//! majority vote runs over the most recent few deltas (4 at first); if no delta holds a
//! strict majority there, the search window doubles, up to the whole history. A trend
//! survives a few irregular faults (another thread's, a pointer chase's) that a strict
//! stride detector would be reset by.
//!
//! The prefetch window adapts to accuracy: a fault on a prefetched page doubles it (up
//! to `window_pages_max`), a fault on a page that was not prefetched while a prediction
//! was out halves it (down to one page). With no majority, Leap proper falls back to reading around the fault; here
//! it prefetches nothing, so random faults cost no bandwidth.

use crate::policy::prefetch::{delta, PrefetchPolicy, Run};
use crate::space::PageNum;
use std::collections::VecDeque;

/// Smallest search window for the majority vote.
const SEARCH_DELTAS_MIN: usize = 4;
/// Fewest deltas a vote needs: with fewer, two faults would make a "trend".
const VOTE_DELTAS_MIN: usize = 3;

/// Majority-trend prefetcher.
#[derive(Debug, Clone)]
pub struct Leap {
    history: VecDeque<i64>,
    history_deltas: usize,
    window_pages: usize,
    window_pages_max: usize,
    last: Option<u64>,
    run: Run,
}

impl Leap {
    /// Keeps `history_deltas` deltas (at least 4); the prefetch window starts at
    /// `window_pages_initial` and stays within 1..=`window_pages_max`.
    pub fn new(
        history_deltas: usize,
        window_pages_initial: usize,
        window_pages_max: usize,
    ) -> Leap {
        let window_pages_max = window_pages_max.max(1);
        Leap {
            history: VecDeque::with_capacity(history_deltas.max(SEARCH_DELTAS_MIN)),
            history_deltas: history_deltas.max(SEARCH_DELTAS_MIN),
            window_pages: window_pages_initial.clamp(1, window_pages_max),
            window_pages_max,
            last: None,
            run: Run::default(),
        }
    }

    /// Current prefetch window in pages.
    pub fn window_pages(&self) -> usize {
        self.window_pages
    }

    /// The majority delta of the most recent deltas, searching wider windows until one
    /// has a strict majority.
    pub fn trend(&self) -> Option<i64> {
        let len = self.history.len();
        if len < VOTE_DELTAS_MIN {
            return None;
        }
        let mut w = SEARCH_DELTAS_MIN;
        loop {
            let w_eff = w.min(len);
            let recent = self.history.range(len - w_eff..);
            if let Some(d) = majority(recent) {
                return Some(d);
            }
            if w_eff == len {
                return None;
            }
            w *= 2;
        }
    }
}

/// Boyer-Moore majority vote, then a second pass to check the candidate really holds
/// more than half.
fn majority<'a>(deltas: impl Iterator<Item = &'a i64> + Clone) -> Option<i64> {
    let (mut candidate, mut votes) = (0i64, 0usize);
    for &d in deltas.clone() {
        if votes == 0 {
            candidate = d;
            votes = 1;
        } else if d == candidate {
            votes += 1;
        } else {
            votes -= 1;
        }
    }
    let (mut count, mut total) = (0, 0);
    for &d in deltas {
        total += 1;
        count += usize::from(d == candidate);
    }
    (total > 0 && count * 2 > total).then_some(candidate)
}

impl PrefetchPolicy for Leap {
    fn name(&self) -> &'static str {
        "leap"
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
        // A repeated fault on one page says nothing about direction.
        let Some(d) = delta(last, p).filter(|&d| d != 0) else {
            return;
        };
        if self.history.len() == self.history_deltas {
            self.history.pop_front();
        }
        self.history.push_back(d);
        // Only a fault while a prediction is out says anything about its accuracy.
        if hit_prefetched {
            self.window_pages = (self.window_pages * 2).min(self.window_pages_max);
        } else if self.run.active() {
            self.window_pages = (self.window_pages / 2).max(1);
        }
        match self.trend() {
            Some(t) => self.run.top_up(p, t, self.window_pages, max, out),
            None => self.run.reset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::prefetch::test_support::{feed, silent_on_random};

    fn leap_with(deltas: &[i64]) -> Leap {
        let mut l = Leap::new(32, 4, 16);
        l.history.extend(deltas);
        l
    }

    #[test]
    fn majority_search_widens_until_a_delta_holds_half() {
        // Last 4: [3 9 3 -5] has no strict majority; last 8 has 3 five times.
        let l = leap_with(&[3, 3, 3, 7, 3, 9, 3, -5]);
        assert_eq!(l.trend(), Some(3));
        assert_eq!(leap_with(&[1, 2, 3, 4, 5, 6, 7, 8]).trend(), None);
        assert_eq!(leap_with(&[2, 2]).trend(), None, "too few deltas to vote");
        assert_eq!(leap_with(&[5, 2, 2]).trend(), Some(2));
    }

    #[test]
    fn follows_the_majority_through_noise_and_adapts_the_window() {
        let mut l = Leap::new(32, 4, 16);
        let got = feed(
            &mut l,
            &[
                (0, false),
                (2, false),
                (4, false),
                (6, false),    // deltas [2 2 2]: a trend, window 4
                (8, true),     // hit: window 8, 3 of 8 ahead
                (1000, false), // noise: [2 2 2 2 992] still votes 2; a miss: window 4
            ],
            64,
        );
        let want: Vec<Vec<u64>> = vec![
            vec![],
            vec![],
            vec![],
            vec![8, 10, 12, 14],
            vec![16, 18, 20, 22, 24],
            vec![1002, 1004, 1006, 1008],
        ];
        assert_eq!(got, want);
        assert_eq!(l.window_pages(), 4);
    }

    #[test]
    fn a_restarted_loop_is_prefetched_again() {
        let mut l = Leap::new(32, 4, 4);
        let pass: Vec<(u64, bool)> = (0..20).map(|i| (100 + 3 * i, i >= 4)).collect();
        feed(&mut l, &pass, 64);
        // Back to the start: the trend (3) still holds the majority, and the run issued
        // during the first pass is far ahead, so it is stale. A miss: window 4 -> 2.
        let got = feed(&mut l, &[(100, false)], 64);
        assert_eq!(got, vec![vec![103, 106]]);
    }

    #[test]
    fn backward_trend() {
        let mut l = Leap::new(8, 8, 8);
        let got = feed(
            &mut l,
            &[(100, false), (99, false), (98, false), (97, false)],
            64,
        );
        assert_eq!(got[3], (89..=96).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn silent_on_random_faults() {
        silent_on_random(&mut Leap::new(32, 4, 64));
    }
}
