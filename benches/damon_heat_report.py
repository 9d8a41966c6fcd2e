#!/usr/bin/env python3
"""Summary of a benches/damon_heat.sh run: WORK BASE USE_DAMON PAGE_BYTES."""
import bisect
import collections
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsmtrace  # noqa: E402

work, base, use_damon, page = sys.argv[1], int(sys.argv[2], 16), sys.argv[3] == "1", int(sys.argv[4])


def read_trace(path):
    """[(time_s, page_index, kind)] of the trace."""
    return [(t / 1e9, p, kind) for t, p, kind in dsmtrace.events(path)]


def present(path):
    pages = set()
    for line in open(path):
        if line.startswith("#"):
            continue
        a, n = line.split()
        first = (int(a, 16) - base) // page
        pages.update(range(first, first + int(n)))
    return pages


def regions(path):
    """[(start_page, end_page, nr_accesses, age)] over the heap, sorted."""
    r = {}
    for line in open(path):
        p, v = line.rstrip("\n").rsplit(":", 1)
        d, f = os.path.split(p)
        r.setdefault(d, {})[os.path.basename(f)] = int(v)
    out = []
    for x in r.values():
        if {"start", "end", "nr_accesses", "age"} <= x.keys():
            s, e = max(x["start"], base), x["end"]
            if e > s and s >= base:
                out.append(((s - base) // page, (e - base + page - 1) // page, x["nr_accesses"], x["age"]))
    return sorted(out)


rows = [line.split("\t") for line in open(os.path.join(work, "dumps.tsv"))]
dumps = [(int(r[0]), float(r[1])) for r in rows]
pct = lambda a, b: f"{100.0 * a / b:.1f}%" if b else "-"
print(f"dumps: {len(rows)}")

# The trace: faults (read, write, write-protect) and staged hits, by time.
trace = []
for f in sorted(glob.glob(os.path.join(work, "run.dsmt"))):
    trace = read_trace(f)
faults = [(t, p) for t, p, k in trace if k in (0, 1)]
ftimes = [t for t, _ in faults]
print(f"trace: {len(trace)} events, {len(faults)} missing faults (read or write)")

# Resident pages, the cache's turnover, and faults on pages resident at the last dump.
P = {}
for n, _ in dumps:
    f = os.path.join(work, "dumps", f"{n:05d}.present")
    if os.path.exists(f):
        P[n] = present(f)
sizes = [len(P[n]) for n, _ in dumps if P.get(n)]
if sizes:
    print(f"resident heap pages per dump: median {statistics.median(sizes):.0f}, max {max(sizes)}")
if P and faults:
    last = max((n for n in P if P[n]), default=None)
    if last:
        seen = {p for _, p in faults}
        print(f"check of page numbering: {pct(len(P[last] & seen), len(P[last]))} of the last dump's resident pages appear in the trace")
turn, again, infl, rate = [], [], [], []
for (n0, t0), (n1, t1) in zip(dumps, dumps[1:]):
    if not P.get(n0) or n1 not in P:
        continue
    turn.append(len(P[n0] & P[n1]) / len(P[n0]))
    i, j = bisect.bisect_right(ftimes, t0), bisect.bisect_right(ftimes, t1)
    window = faults[i:j]
    if window:
        rate.append(len(window) / (t1 - t0))
        again.append(sum(1 for _, p in window if p in P[n0]) / len(window))
        infl.append(len({p for _, p in window} & P[n0]) / len(P[n0]))
if turn:
    print(f"resident at one dump and still resident at the next: median {100 * statistics.median(turn):.1f}% "
          f"(min {100 * min(turn):.1f}%, max {100 * max(turn):.1f}%)")
if rate:
    print(f"missing faults per second between dumps: median {statistics.median(rate):,.0f}")
    print(f"faults between two dumps on pages that were resident at the first (evicted and wanted again "
          f"within the interval): median {100 * statistics.median(again):.1f}% of the faults, on "
          f"{100 * statistics.median(infl):.1f}% of the pages resident at the first")

# How concentrated the faults are, and how soon a page is wanted again.
if faults:
    per_page = collections.Counter(p for _, p in faults)
    counts = sorted(per_page.values(), reverse=True)
    cache = statistics.median(sizes) if sizes else 0
    print(f"distinct heap pages faulted: {len(per_page)}; the {int(cache)} most-faulted pages (the cache's size) "
          f"took {pct(sum(counts[:int(cache)]), len(faults))} of the faults")
    # Is the heat clustered in address? Chunks of CH pages ranked by faults per used
    # page, the hottest kept until their used pages fill the cache: the share of all
    # faults they took. Per page (CH 1) that is the frequency oracle; if large chunks come
    # close, a region-granular signal (DAMON's regions) separates hot from cold as well as
    # a per-page one. A flat heat would give the cache's share of the used pages.
    shares = []
    for ch in (1, 16, 256):
        cc, used = collections.Counter(), collections.Counter()
        for p, v in per_page.items():
            cc[p // ch] += v
            used[p // ch] += 1
        kept = n = 0
        for c in sorted(cc, key=lambda c: cc[c] / used[c], reverse=True):
            if n + used[c] > cache:
                break
            n += used[c]
            kept += cc[c]
        shares.append(f"{ch} pages {pct(kept, len(faults))}")
    print(f"hottest chunks filling the cache, share of the faults: {', '.join(shares)}; flat heat: "
          f"{pct(cache, len(per_page))}")
    lastf, gaps = {}, []
    for t, p in faults:
        if p in lastf:
            gaps.append(t - lastf[p])
        lastf[p] = t
    gaps.sort()
    if gaps:
        print("time from a page's fault to its next fault: " + ", ".join(
            f"p{q} {1000 * gaps[int(q / 100 * (len(gaps) - 1))]:.0f} ms" for q in (10, 25, 50, 75, 90)))

# The trace's clock against the script's (both from about the heap line): the smallest
# offset for which no page is resident at a dump before its first fault (0.1% slack for
# pages mapped ahead by the prefetcher, which are not faults).
first = {}
for t, p in faults:
    first.setdefault(p, t)
offset = 0.0
for cand in [x / 500 for x in range(0, 250)]:
    bad = tot = 0
    for r in rows:
        n, t_end = int(r[0]), float(r[1]) + int(r[6]) / 1000
        for p in P.get(n, ()):
            tot += 1
            bad += first.get(p, 0) > t_end + cand
    offset = cand
    if tot and bad <= tot / 1000:
        break
if faults:
    print(f"trace clock offset: {1000 * offset:.0f} ms")

# The clear_refs proxy.
refs = [(float(r[4]) / float(r[3]), float(r[5])) for r in rows if float(r[3]) > 0]
if refs:
    fr = [a for a, _ in refs]
    print(f"clear_refs proxy: share of the resident heap referenced within {refs[0][1]:.0f} ms (plus the read): median "
          f"{100 * statistics.median(fr):.1f}% (min {100 * min(fr):.1f}%, max {100 * max(fr):.1f}%)")
    old, win = [], []
    for r in rows:
        if len(r) < 13 or float(r[3]) <= 0:
            continue
        tc, tr = float(r[11]) + offset, float(r[12]) + offset
        win.append(tr - tc)
        i, j = bisect.bisect_left(ftimes, tc), bisect.bisect_right(ftimes, tr)
        installed = len({p for _, p in faults[i:j]})
        rss, ref = float(r[3]) * 1024 / page, float(r[4]) * 1024 / page
        if rss - installed > 0:
            old.append(max(0.0, ref - installed) / (rss - installed))
    if old:
        print(f"  window clear_refs -> smaps read: median {1000 * statistics.median(win):.0f} ms; pages faulted in "
              f"that window taken out (they are young by construction), the share of the other resident pages "
              f"referenced: median {100 * statistics.median(old):.1f}% (min {100 * min(old):.1f}%, max {100 * max(old):.1f}%)")
scan = [int(r[6]) for r in rows]
print(f"PAGEMAP_SCAN of the heap: median {statistics.median(scan)} ms, max {max(scan)} ms")

stats = os.path.join(work, "stats.json")
if os.path.exists(stats):
    try:
        s = json.load(open(stats))
        t = s.get("total", s)
        keep = ["faults_read", "faults_write", "faults_write_protect", "faults_network_wait",
                "evictions", "remote_read_pages", "resident_pages_peak", "prefetch_used"]
        print("stats: " + ", ".join(f"{k} {t[k]:,}" for k in keep if k in t))
    except (ValueError, AttributeError):
        pass

if not use_damon:
    print("DAMON: not used (see the log above)")
    sys.exit(0)
cmd = [int(r[7]) for r in rows]
rd = [int(r[8]) for r in rows]
nreg = [int(r[9]) for r in rows]
kt = [int(r[10]) for r in rows]
span = dumps[-1][1] - dumps[0][1] if len(dumps) > 1 else 0
hz = os.sysconf("SC_CLK_TCK")
print(f"DAMON regions (all of the process): median {statistics.median(nreg):.0f}, max {max(nreg)}")
print(f"update_schemes_tried_regions: median {statistics.median(cmd)} ms; reading every tried region: "
      f"median {statistics.median(rd)} ms, max {max(rd)} ms")
if span > 0:
    print(f"kdamond CPU: {(kt[-1] - kt[0]) / hz:.2f} s over {span:.1f} s ({pct((kt[-1] - kt[0]) / hz, span)} of a CPU)")
heap_regions, cold_res, warm_res, cold_again, warm_again = [], [], [], [], []
for (n0, t0), (n1, t1) in zip(dumps, dumps[1:]):
    f = os.path.join(work, "dumps", f"{n0:05d}.regions")
    if not os.path.exists(f) or not P.get(n0):
        continue
    R = regions(f)
    heap_regions.append(len(R))
    starts = [s for s, _, _, _ in R]
    cold, warm = set(), set()
    for p in P[n0]:
        k = bisect.bisect_right(starts, p) - 1
        if k >= 0 and p < R[k][1]:
            (cold if R[k][2] == 0 else warm).add(p)
    cold_res.append(len(cold))
    warm_res.append(len(warm))
    i, j = bisect.bisect_right(ftimes, t0), bisect.bisect_right(ftimes, t1)
    hit = {p for _, p in faults[i:j]}
    if cold:
        cold_again.append(len(cold & hit) / len(cold))
    if warm:
        warm_again.append(len(warm & hit) / len(warm))
if heap_regions:
    tot = sum(cold_res) + sum(warm_res)
    print(f"regions over the heap: median {statistics.median(heap_regions):.0f}, max {max(heap_regions)}")
    print(f"resident pages in cold regions (nr_accesses 0): {pct(sum(cold_res), tot)}; in warm: {pct(sum(warm_res), tot)}")
if cold_again and warm_again:
    print(f"faulted again before the next dump: cold-region pages median {100 * statistics.median(cold_again):.1f}%, "
          f"warm-region pages median {100 * statistics.median(warm_again):.1f}%")
