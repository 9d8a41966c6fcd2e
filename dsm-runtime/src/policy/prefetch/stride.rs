//! Stride detection: when two successive fault deltas are equal (three faults a constant
//! distance apart, forward or backward), prefetch the next `depth_pages` pages along that
//! stride. Any other delta drops the stride until two equal ones are seen again.
//!
//! A stride of one is allowed (a plain sequential scan), at a fixed depth: readahead is
//! the better choice there, since its window adapts.

use crate::policy::prefetch::{delta, PrefetchPolicy, Run};
use crate::space::PageNum;

/// Constant-stride prefetcher.
#[derive(Debug, Clone)]
pub struct Stride {
    depth_pages: usize,
    last: Option<u64>,
    /// Last delta, and whether the one before it was the same.
    delta: Option<i64>,
    confirmed: bool,
    run: Run,
}

impl Stride {
    /// Prefetches `depth_pages` strides ahead once a stride is confirmed.
    pub fn new(depth_pages: usize) -> Stride {
        Stride {
            depth_pages: depth_pages.max(1),
            last: None,
            delta: None,
            confirmed: false,
            run: Run::default(),
        }
    }
}

impl PrefetchPolicy for Stride {
    fn name(&self) -> &'static str {
        "stride"
    }

    fn on_fault(
        &mut self,
        page: PageNum,
        _hit_prefetched: bool,
        max: usize,
        out: &mut Vec<PageNum>,
    ) {
        let p = page.0;
        let Some(last) = self.last.replace(p) else {
            return;
        };
        let d = match delta(last, p) {
            Some(d) if d != 0 => d,
            Some(_) => return,
            None => {
                self.delta = None;
                self.confirmed = false;
                return;
            }
        };
        self.confirmed = self.delta == Some(d);
        self.delta = Some(d);
        if !self.confirmed {
            self.run.reset();
            return;
        }
        self.run.top_up(p, d, self.depth_pages, max, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::prefetch::test_support::{feed, silent_on_random};

    #[test]
    fn forward_stride_after_two_equal_deltas() {
        let mut s = Stride::new(4);
        let faults: Vec<_> = [100, 107, 114, 121, 128, 135]
            .iter()
            .map(|&p| (p, false))
            .collect();
        let got = feed(&mut s, &faults, 64);
        let want: Vec<Vec<u64>> = vec![
            vec![],
            vec![],
            vec![121, 128, 135, 142],
            vec![], // 3 strides still ahead of 4: more than half
            vec![149, 156],
            vec![],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn backward_stride_stops_at_page_zero() {
        let mut s = Stride::new(8);
        let got = feed(&mut s, &[(30, false), (20, false), (10, false)], 64);
        assert_eq!(got[2], vec![0]);
    }

    #[test]
    fn a_changed_stride_must_be_confirmed_again() {
        let mut s = Stride::new(2);
        let got = feed(
            &mut s,
            &[(0, false), (3, false), (6, false), (8, false), (10, false)],
            64,
        );
        assert_eq!(got, vec![vec![], vec![], vec![9, 12], vec![], vec![12, 14]]);
    }

    #[test]
    fn silent_on_random_faults() {
        silent_on_random(&mut Stride::new(16));
    }
}
