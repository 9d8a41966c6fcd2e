#!/usr/bin/env python3
"""What a region-heat signal could buy the eviction, replayed on a recorded fault trace.

Usage: benches/damon_heat_sim.py TRACE CACHE_PAGES [WINDOW_MS [REGION_PAGES ...]]

TRACE is a `dsmrun --record-trace` file of a run with `[eviction] policy = "fifo"`
(benches/damon_heat.sh with DSMRUN_ARGS="--profile F.toml", F.toml the default profile
with fifo): a replay is only exact for the recorded run's own policy. Its missing faults
are replayed through a cache of CACHE_PAGES pages under:
  fifo      evict the oldest insert: must reproduce the run's own fault count, the check
            that CACHE_PAGES is the run's effective capacity (the heap's resident pages
            at the reclaimer's low watermark, about 92% of --local-cache: near a cliff a
            few hundred pages change the count twofold);
  lru       evict the least recently faulted page (per-page recency of what the trace
            shows);
  heat:R    DAMON's regions stood in for by aligned runs of R pages, their heat by the
            faults the trace holds for them in the last WINDOW_MS (default 100 ms, DAMON's
            aggregation interval): evict from the coldest region first, oldest insert first
            among equals.
Optimistic for lru and heat: the trace holds only the faults of the recorded run, not
the hits, so a page that the replayed policy evicts while the recorded run kept it
cannot fault in the replay (tests/tuner.rs and docs/performance.md, "Simulator against
real runs", note the same bias). The recorded run's heat is also the heat of faults, a
thinned view of accesses. Read the result as an upper bound on the cut.
"""
import collections
import heapq
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsmtrace  # noqa: E402


def faults(path):
    """(time_ns, page_index) of the trace's missing faults (kinds 0 and 1)."""
    for t, p, kind in dsmtrace.events(path):
        if kind in (0, 1):
            yield t, p


def fifo(trace, cap):
    q, res, miss = collections.deque(), set(), 0
    for _, p in trace:
        if p in res:
            continue
        miss += 1
        if len(res) >= cap:
            res.discard(q.popleft())
        q.append(p)
        res.add(p)
    return miss


def lru(trace, cap):
    od, miss = collections.OrderedDict(), 0
    for _, p in trace:
        if p in od:
            od.move_to_end(p)
            continue
        miss += 1
        if len(od) >= cap:
            od.popitem(last=False)
        od[p] = True
    return miss


def heat(trace, cap, window_ns, rp):
    """Evict from the region with the fewest faults in the last complete window."""
    cur, prev = collections.Counter(), collections.Counter()
    wend = None
    seq = 0
    inserted = {}  # page -> insert sequence
    h = []  # (heat, insert seq, page), lazily invalidated
    miss = 0
    for t, p in trace:
        if wend is None:
            wend = t + window_ns
        if t >= wend:
            prev, cur = cur, collections.Counter()
            while t >= wend:
                wend += window_ns
            # re-rank the resident pages by the new heat
            h = [(prev[q // rp], s, q) for q, s in inserted.items()]
            heapq.heapify(h)
        cur[p // rp] += 1
        if p in inserted:
            continue
        miss += 1
        if len(inserted) >= cap:
            while True:
                hv, s, q = heapq.heappop(h)
                if inserted.get(q) == s:
                    break
            del inserted[q]
        seq += 1
        inserted[p] = seq
        heapq.heappush(h, (prev[p // rp], seq, p))
    return miss


def main():
    path, cap = sys.argv[1], int(sys.argv[2])
    window_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
    regions = [int(x) for x in sys.argv[4:]] or [1, 16, 256]
    trace = list(faults(path))
    print(f"{path}: {len(trace):,} faults, cache {cap:,} pages")
    base = fifo(trace, cap)
    print(f"  fifo      {base:>12,}")
    m = lru(trace, cap)
    print(f"  lru       {m:>12,}  {m / base:.2f}x fifo")
    for r in regions:
        m = heat(trace, cap, int(window_ms * 1e6), r)
        print(f"  heat:{r:<4} {m:>12,}  {m / base:.2f}x fifo  ({window_ms:.0f} ms windows)")


if __name__ == "__main__":
    main()
