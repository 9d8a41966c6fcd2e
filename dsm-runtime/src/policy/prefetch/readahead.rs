//! Adaptive sequential readahead, after Linux's, following up to four streams at once.
//!
//! A fault on the page after one that faulted recently starts a stream with a window of
//! `window_pages_initial` pages ahead. A fault that lands on a page the stream prefetched
//! doubles its window (up to `window_pages_max`); a fault on a page it issued that was
//! not there when needed (evicted before use, or late) halves it. The window is topped up
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
/// Recent faults remembered for spotting the start of a stream.
const RECENT_FAULTS: usize = 16;

#[derive(Debug, Clone)]
struct Stream {
    /// Last page of the stream that faulted.
    cursor: u64,
    window_pages: usize,
    run: Run,
    last_used: u64,
}

impl Stream {
    /// How far past the cursor a fault may land and still continue the stream.
    fn reach(&self) -> u64 {
        self.run.ahead(self.cursor, 1).max(1)
    }
}

/// Sequential readahead with windows that adapt to how well they are doing.
#[derive(Debug, Clone)]
pub struct Readahead {
    window_pages_initial: usize,
    window_pages_max: usize,
    streams: Vec<Stream>,
    recent: [Option<u64>; RECENT_FAULTS],
    recent_next: usize,
    tick: u64,
}

impl Readahead {
    /// Windows start at `window_pages_initial` and grow to `window_pages_max` (both at
    /// least 1; the maximum is raised to the initial size if below it).
    pub fn new(window_pages_initial: usize, window_pages_max: usize) -> Readahead {
        let initial = window_pages_initial.max(1);
        Readahead {
            window_pages_initial: initial,
            window_pages_max: window_pages_max.max(initial),
            streams: Vec::with_capacity(STREAMS),
            recent: [None; RECENT_FAULTS],
            recent_next: 0,
            tick: 0,
        }
    }

    /// Window of the stream advanced last (0 while no stream is followed).
    pub fn window_pages(&self) -> usize {
        self.streams
            .iter()
            .max_by_key(|s| s.last_used)
            .map_or(0, |s| s.window_pages)
    }

    fn remember(&mut self, page: u64) {
        self.recent[self.recent_next] = Some(page);
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
        let continued = self
            .streams
            .iter_mut()
            .find(|s| p > s.cursor && p - s.cursor <= s.reach());
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
            None if p > 0 && self.recent.contains(&Some(p - 1)) => Some(self.start(p)),
            None => None,
        };
        if let Some(s) = stream {
            s.run.top_up(p, 1, s.window_pages, max, out);
        }
        self.remember(p);
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
                (10, false), // alone: no stream yet
                (11, false), // follows 10: a stream, window 2
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
    fn random_faults_between_do_not_break_a_stream_but_late_pages_halve_it() {
        let mut r = Readahead::new(2, 16);
        let got = feed(
            &mut r,
            &[
                (0, false),
                (1, false), // window 2: 2 3
                (2, true),  // window 4: 4 5 6
                (900, false),
                (3, true), // window 8, 3 ahead: 7..=11
                (77, false),
                (4, false), // issued but missing: window 4, 7 ahead
            ],
            64,
        );
        let want: Vec<Vec<u64>> = vec![
            vec![],
            vec![2, 3],
            vec![4, 5, 6],
            vec![],
            vec![7, 8, 9, 10, 11],
            vec![],
            vec![],
        ];
        assert_eq!(got, want);
        assert_eq!(r.window_pages(), 4);
        // A second stream starts beside the first.
        let got = feed(&mut r, &[(500, false), (501, false), (5, true)], 64);
        assert_eq!(got, vec![vec![], vec![502, 503], vec![]]);
        assert_eq!(r.window_pages(), 8, "the first stream kept its state");
    }

    #[test]
    fn skipping_ahead_inside_the_window_continues_the_stream() {
        let mut r = Readahead::new(4, 4);
        feed(&mut r, &[(0, false), (1, false)], 64); // issued 2..=5
        let got = feed(&mut r, &[(4, true)], 64);
        assert_eq!(got, vec![vec![6, 7, 8]]);
    }

    #[test]
    fn the_least_recently_advanced_stream_is_forgotten() {
        let mut r = Readahead::new(2, 2);
        for base in [100, 200, 300, 400, 500] {
            feed(&mut r, &[(base, false), (base + 1, false)], 64);
        }
        assert_eq!(r.streams.len(), STREAMS);
        assert!(r.streams.iter().all(|s| s.cursor != 101));
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
