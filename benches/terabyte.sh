#!/usr/bin/env bash
# Start-up time and memory of terabyte heaps: for a block of 1 GiB, 64 GiB, 1 TiB and
# 3 TiB (the largest one block can be in a 4 TiB slot) reserved with malloc on 16 lazily
# backed nodes of 256 GiB (a 4 TiB pool), 64 MiB of pages written spread across it through
# a 64 MiB cache. Prints, per size: dsmrun's start-up (the same job running /bin/true),
# the program's wall time, its resident and page-table growth, and the peak resident
# memory of all 16 nodes together.
#
#   benches/terabyte.sh            (after cargo build --release --workspace; as root)
set -euo pipefail
cd "$(dirname "$0")/.."
DSMRUN=target/release/dsmrun
BIN=$(mktemp -d)/bigheap
cc -O2 -o "$BIN" dsm-runtime/tests/programs/bigheap.c
FLAGS=(-n 16 --node-memory 256G --local-cache 64M -q)

nodes_rss_kib() { # sum of VmRSS of this job's memory nodes
  local total=0 pid
  for pid in $(pgrep -f "dsmrun node --id" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

printf '| reserved | start-up (true) | wall | program RSS growth | page tables growth | nodes RSS (peak) |\n'
printf '| ---: | ---: | ---: | ---: | ---: | ---: |\n'
for gib in 1 64 1024 3072; do
  t0=$(date +%s.%N); "$DSMRUN" "${FLAGS[@]}" -- /bin/true; t1=$(date +%s.%N)
  out=$(mktemp)
  s0=$(date +%s.%N)
  "$DSMRUN" "${FLAGS[@]}" -- "$BIN" sparse "$gib" 64 >"$out" &
  job=$!
  peak=0
  while kill -0 "$job" 2>/dev/null; do
    r=$(nodes_rss_kib); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
  done
  wait "$job"
  s1=$(date +%s.%N)
  rss=$(sed -n 's/.*rss_growth_kib \([0-9-]*\).*/\1/p' "$out")
  pte=$(sed -n 's/.*pte_growth_kib \([0-9-]*\).*/\1/p' "$out")
  printf '| %s GiB | %.3f s | %.1f s | %s MiB | %s MiB | %s MiB |\n' "$gib" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$s1 - $s0" | bc)" $((rss / 1024)) $((pte / 1024)) $((peak / 1024))
  rm -f "$out"
done
