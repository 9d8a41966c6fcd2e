#!/usr/bin/env bash
# Memory released by `dsmrun suspend`: a program fills a local cache of CACHE_MIB (1 GiB
# by default) and keeps going over it, reading (clean pages at the suspend) or writing
# (every page dirty, so all of them go home first); it is suspended, and the script reads
# the program's RSS from /proc before the suspend and when `dsmrun suspend` returns, and
# times the suspend and the resume. Side by side in one run: both modes, REPS times each,
# through both paths of the runtime: "batched" (the default: one write-protect and one
# unmap per run of adjacent pages, dirty pages written home from their mapped addresses)
# and "evict" (DSM_SUSPEND_EVICT=1: the ordinary eviction path, page by page).
#
# usage: benches/suspend.sh [WORKDIR]       (needs userfaultfd; about two minutes)
# env:   CACHE_MIB (1024), NODES (2), REPS (3), TRANSPORT (auto), PATHS ("batched evict")
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-suspend-bench}
CACHE_MIB=${CACHE_MIB:-1024}
NODES=${NODES:-2}
REPS=${REPS:-3}
TRANSPORT=${TRANSPORT:-auto}
PATHS=${PATHS:-batched evict}
mkdir -p "$WORK"
export DSM_JOBS_DIR=$WORK/jobs
cargo build --release --workspace -q
DSMRUN=$ROOT/target/release/dsmrun
cc -O2 -o "$WORK/fill" benches/programs/fill.c

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
# The program dsmrun (pid $1) runs: its child that is not a memory node.
program_of() {
    for c in $(cat "/proc/$1/task/$1/children"); do
        [ "$(cat "/proc/$c/comm")" = fill ] && { echo "$c"; return; }
    done
}

# The physical reference, measured in the same run: writing CACHE_MIB into a tmpfs file
# with dd (a node's region is a memfd, a tmpfs file, and the shm transport writes into it).
ref_ms() {
    local t0 t1
    t0=$(now_ms)
    dd if=/dev/zero of=/dev/shm/dsm-suspend-bench-ref bs=1M count="$CACHE_MIB" status=none
    t1=$(now_ms)
    rm -f /dev/shm/dsm-suspend-bench-ref
    echo $((t1 - t0))
}
echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg); dd of ${CACHE_MIB} MiB to tmpfs: $(ref_ms) ms"
echo
echo "| mode | path | RSS before (MiB) | RSS after (MiB) | released | suspend (ms) | pages written home | resume (ms) |"
echo "|---|---|---|---|---|---|---|---|"
for mode in r w; do
    for rep in $(seq "$REPS"); do
      for path in $PATHS; do
        evict=0
        [ "$path" = evict ] && evict=1
        # The heap is a little larger than the cache, so that the cache is full.
        DSM_SUSPEND_EVICT=$evict "$DSMRUN" -q -n "$NODES" --transport "$TRANSPORT" --local-cache "${CACHE_MIB}M" \
            --name "bench-$mode-$rep-$path" -- "$WORK/fill" $((CACHE_MIB + 64)) "$mode" &
        job=$!
        prog=""
        until [ -n "$prog" ] && [ "$(rss_kib "$prog")" -ge $((CACHE_MIB * 1024 * 95 / 100)) ]; do
            sleep 0.1
            prog=$(program_of "$job")
        done
        sleep 1
        before=$(rss_kib "$prog")
        t0=$(now_ms)
        answer=$("$DSMRUN" suspend "bench-$mode-$rep-$path")
        t1=$(now_ms)
        after=$(rss_kib "$prog")
        written=$(sed -n 's/.*written_pages=\([0-9]*\).*/\1/p' <<<"$answer")
        t2=$(now_ms)
        "$DSMRUN" resume "bench-$mode-$rep-$path" >/dev/null
        t3=$(now_ms)
        kill "$job"; wait "$job" 2>/dev/null || true
        echo "| $([ $mode = r ] && echo reading || echo writing) | $path | $((before / 1024)) | $((after / 1024)) | $(( (before - after) * 100 / before ))% | $((t1 - t0)) | $written | $((t3 - t2)) |"
      done
    done
done
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg); dd of ${CACHE_MIB} MiB to tmpfs: $(ref_ms) ms"
