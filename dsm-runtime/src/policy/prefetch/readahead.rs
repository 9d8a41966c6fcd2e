//! Adaptive sequential readahead, after Linux's, following up to four streams at once.
//!
//! Three faults in a row on successive pages (among the last 64 faults) start a stream
//! with a window of `window_pages_initial` pages ahead. A fault that lands on a page the
//! stream prefetched doubles its window (up to `window_pages_max`); a fault on a page it
//! issued that was not there when needed (evicted before use, or late) halves it. With a
//! fetch granularity above one page, "successive" means within one aligned block. The window is topped up
//! only once half of it has been consumed, so requests go out in batches. When a fifth
//! stream starts, the least recently advanced one is forgotten.
//!
//! Streams rather than "the last fault" because the runtime sees one fault stream for the
//! whole program: a sequential scan interleaved with another thread's random faults (the
//! Velvet assembler reads its input in order while it hashes at random) would otherwise
//! never look sequential. Faults that continue no stream prefetch nothing and leave the
//! streams alone.

use crate::policy::prefetch::{PrefetchPolicy, Run};
use crate::space::PageNum;

/// Streams followed at once.
const STREAMS: usize = 4;
/// Recent faults remembered for spotting the start of a stream: a stream is seen
/// through up to this many interleaved other faults.
const RECENT_FAULTS: usize = 64;
/// Faults in a row, each at most one gap after the previous, that start a stream. Three
/// rather than two: with 64 recent faults remembered, a random fault lands just after
/// one of them often enough on a small working set; twice in a row it practically never
/// does.
const STREAM_START_FAULTS: u8 = 3;
/// Farthest a fault on a staged page may land past a stream's last page and still
/// continue it.
const SKIP_PAGES_MAX: u64 = 4;

#[derive(Debug, Clone)]
struct Stream {
    /// Last page of the stream that faulted.
    cursor: u64,
    window_pages: usize,
    run: Run,
    last_used: u64,
}

impl Stream {
    /// Whether a fault on `p` continues the stream: the next page, or, for a fault on a
    /// staged page, one a few pages on (a scan that skips pages it does not touch). A
    /// fault further into the window is more likely a random access landing there: if
    /// those counted, one false start among random faults would march through memory.
    fn continued_by(&self, p: u64, hit_prefetched: bool, gap_pages: u64) -> bool {
        let reach = if hit_prefetched {
            self.run
                .ahead(self.cursor, 1)
                .clamp(1, SKIP_PAGES_MAX.max(gap_pages))
        } else {
            gap_pages
        };
        p > self.cursor && p - self.cursor <= reach
    }
}

/// Sequential readahead with windows that adapt to how well they are doing.
#[derive(Debug, Clone)]
pub struct Readahead {
    /// Pages between a stream's successive faults (the fetch granularity: a fault brings
    /// the aligned block, so a scan faults once per block).
    gap_pages: u64,
    window_pages_initial: usize,
    window_pages_max: usize,
    streams: Vec<Stream>,
    /// Recent faults, each with how many faults in a row led up to it.
    recent: [Option<(u64, u8)>; RECENT_FAULTS],
    recent_next: usize,
    tick: u64,
}

impl Readahead {
    /// Windows start at `window_pages_initial` and grow to `window_pages_max` (both at
    /// least 1; the maximum is raised to the initial size if below it).
    pub fn new(window_pages_initial: usize, window_pages_max: usize) -> Readahead {
        let initial = window_pages_initial.max(1);
        Readahead {
            gap_pages: 1,
            window_pages_initial: initial,
            window_pages_max: window_pages_max.max(initial),
            streams: Vec::with_capacity(STREAMS),
            recent: [None; RECENT_FAULTS],
            recent_next: 0,
            tick: 0,
        }
    }

    /// For a runtime that fetches `granularity_pages` (a power of two) per demand fault:
    /// a scan then faults once per aligned block, so successive faults of a stream may be
    /// up to that many pages apart.
    pub fn with_fetch_granularity(mut self, granularity_pages: usize) -> Readahead {
        self.gap_pages = granularity_pages.max(1) as u64;
        self
    }

    /// Window of the stream advanced last (0 while no stream is followed).
    pub fn window_pages(&self) -> usize {
        self.streams
            .iter()
            .max_by_key(|s| s.last_used)
            .map_or(0, |s| s.window_pages)
    }

    fn remember(&mut self, page: u64, in_a_row: u8) {
        self.recent[self.recent_next] = Some((page, in_a_row));
        self.recent_next = (self.recent_next + 1) % RECENT_FAULTS;
    }

    /// A new stream at `page`, replacing the least recently advanced one if all are taken.
    fn start(&mut self, page: u64) -> &mut Stream {
        let s = Stream {
            cursor: page,
            window_pages: self.window_pages_initial,
            run: Run::default(),
            last_used: self.tick,
        };
        if self.streams.len() < STREAMS {
            self.streams.push(s);
            let last = self.streams.len() - 1;
            return &mut self.streams[last];
        }
        let lru = self
            .streams
            .iter_mut()
            .min_by_key(|s| s.last_used)
            .expect("STREAMS > 0");
        *lru = s;
        lru
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
        self.tick += 1;
        let (initial, window_max, tick) =
            (self.window_pages_initial, self.window_pages_max, self.tick);
        let gap = self.gap_pages;
        // The longest run of faults, each at most one gap after the previous, ending here.
        let in_a_row = self
            .recent
            .iter()
            .flatten()
            .filter(|&&(q, _)| p > q && p - q <= gap)
            .map(|&(_, n)| n)
            .max()
            .map_or(1, |n| n.saturating_add(1));
        let continued = self
            .streams
            .iter_mut()
            .find(|s| s.continued_by(p, hit_prefetched, gap));
        let stream = match continued {
            Some(s) => {
                let issued = p - s.cursor <= s.run.ahead(s.cursor, 1);
                if hit_prefetched {
                    s.window_pages = (s.window_pages * 2).min(window_max);
                } else if issued {
                    s.window_pages = (s.window_pages / 2).max(initial);
                }
                s.cursor = p;
                s.last_used = tick;
                Some(s)
            }
            None if in_a_row >= STREAM_START_FAULTS => Some(self.start(p)),
            None => None,
        };
        if let Some(s) = stream {
            s.run.top_up(p, 1, s.window_pages, max, out);
        }
        self.remember(p, in_a_row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::prefetch::test_support::{feed, silent_on_random};

    fn none() -> Vec<u64> {
        Vec::new()
    }

    #[test]
    fn window_opens_on_three_in_a_row_grows_on_hits_and_tops_up_in_halves() {
        let mut r = Readahead::new(2, 8);
        let got = feed(
            &mut r,
            &[
                (9, false),  // alone: no stream yet
                (10, false), // two in a row: not yet
                (11, false), // three in a row: a stream, window 2
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
            none(),
            none(),
            vec![12, 13],
            vec![14, 15, 16],
            vec![17, 18, 19, 20, 21],
            none(),
            none(),
            none(),
            vec![22, 23, 24, 25],
            none(),
        ];
        assert_eq!(got, want);
        assert_eq!(r.window_pages(), 8);
    }

    #[test]
    fn random_faults_between_do_not_break_a_stream_but_late_pages_halve_it() {
        let mut r = Readahead::new(2, 16);
        let got = feed(
            &mut r,
            &[
                (0, false),
                (1, false),
                (2, false), // window 2: 3 4
                (3, true),  // window 4: 5 6 7
                (900, false),
                (4, true), // window 8, 3 ahead: 8..=12
                (77, false),
                (5, false), // issued but missing: window 4, 7 ahead
            ],
            64,
        );
        let want: Vec<Vec<u64>> = vec![
            none(),
            none(),
            vec![3, 4],
            vec![5, 6, 7],
            none(),
            vec![8, 9, 10, 11, 12],
            none(),
            none(),
        ];
        assert_eq!(got, want);
        assert_eq!(r.window_pages(), 4);
        // A second stream starts beside the first, which keeps its state.
        let got = feed(
            &mut r,
            &[(499, false), (500, false), (501, false), (6, true)],
            64,
        );
        assert_eq!(got, vec![none(), none(), vec![502, 503], none()]);
        assert_eq!(r.window_pages(), 8);
    }

    #[test]
    fn a_stream_is_seen_through_many_interleaved_faults() {
        let mut r = Readahead::new(4, 4);
        let mut faults = Vec::new();
        for p in 0..3u64 {
            faults.push((p, false));
            faults.extend((0..40).map(|i| (1_000_000 + 7919 * (p * 40 + i), false)));
        }
        let got = feed(&mut r, &faults, 64);
        assert_eq!(got[2 * 41], vec![3, 4, 5, 6]);
    }

    #[test]
    fn only_a_staged_hit_a_few_pages_on_may_skip_ahead() {
        let mut r = Readahead::new(4, 4);
        feed(&mut r, &[(0, false), (1, false), (2, false)], 64); // issued 3..=6
        let got = feed(&mut r, &[(5, false), (5, true)], 64);
        assert_eq!(got, vec![none(), vec![7, 8, 9]]);
        let mut r = Readahead::new(16, 16);
        feed(&mut r, &[(0, false), (1, false), (2, false)], 64); // issued 3..=18
        let got = feed(&mut r, &[(13, true)], 64);
        assert_eq!(got, vec![none()], "13 is too far on: a random hit");
    }

    #[test]
    fn with_coarse_fetches_a_scan_faults_once_per_block() {
        let mut r = Readahead::new(8, 8).with_fetch_granularity(4);
        let got = feed(&mut r, &[(0, false), (4, false), (8, false)], 64);
        assert_eq!(got[2], (9..=16).collect::<Vec<u64>>());
        let mut r = Readahead::new(8, 8);
        let got = feed(&mut r, &[(0, false), (4, false), (8, false)], 64);
        assert_eq!(got[2], none(), "without the gap: not a stream");
    }

    #[test]
    fn the_least_recently_advanced_stream_is_forgotten() {
        let mut r = Readahead::new(2, 2);
        for base in [100, 200, 300, 400, 500] {
            feed(
                &mut r,
                &[(base, false), (base + 1, false), (base + 2, false)],
                64,
            );
        }
        assert_eq!(r.streams.len(), STREAMS);
        assert!(r.streams.iter().all(|s| s.cursor != 102));
    }

    #[test]
    fn respects_max() {
        let mut r = Readahead::new(16, 16);
        let got = feed(&mut r, &[(0, false), (1, false), (2, false)], 3);
        assert_eq!(got[2], vec![3, 4, 5]);
    }

    #[test]
    fn silent_on_random_faults() {
        silent_on_random(&mut Readahead::new(4, 64));
    }
}
