#!/bin/bash
# What in the `sequential` profile makes the scan faster than the defaults (issue 22,
# point 3): the scan's read pass (benches/kernel/scan.c, SCAN_MIB MiB through a 32 MiB
# cache, 2 local nodes, --cpus 0 for all) under the default profile, under `sequential`,
# and under the default profile with one of `sequential`'s settings at a time.
# Prints us per page read, per round, and each variant against the default.
# Usage: benches/scan_profile_split.sh [ROUNDS] (default 3); SCAN_MIB (default 256).
# Needs gcc; run as root (userfaultfd).
set -euo pipefail
ROUNDS=${1:-3}
SCAN_MIB=${SCAN_MIB:-256}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload)
gcc -O2 -o "$DIR/scan" "$HERE/kernel/scan.c"
DSMRUN=$ROOT/target/release/dsmrun
DEFAULT=$ROOT/profiles/default.toml

# variant NAME: the default profile with one of sequential's settings (TOML edits).
variant() {
  local out=$DIR/$1.toml
  case $1 in
    2q) sed 's/^policy = "heat"/policy = "2q"\na1in_pct = 25\na1out_pct = 50/' "$DEFAULT" ;;
    clock) sed 's/^policy = "heat"/policy = "clock"/' "$DEFAULT" ;;
    granularity4) sed 's/^granularity_pages = 1/granularity_pages = 4/' "$DEFAULT" ;;
    chunk64) sed 's/^chunk_pages = 1/chunk_pages = 64/' "$DEFAULT" ;;
    readahead256) sed 's/^max_pages = 32/max_pages = 256/; s/^window_initial_pages = 4/window_initial_pages = 16/' "$DEFAULT" ;;
    recycle) sed 's/^map_ahead_probe_every = 16/map_ahead_probe_every = 16\nrecycle_pages = 1024/' "$DEFAULT" ;;
    reclaim) sed 's/^reclaim_start_free_pct = 3/reclaim_start_free_pct = 5/; s/^reclaim_stop_free_pct = 8/reclaim_stop_free_pct = 15/' "$DEFAULT" ;;
    batch256) sed 's/^batch_pages = 64/batch_pages = 256/' "$DEFAULT" ;;
  esac >"$out"
  cmp -s "$out" "$DEFAULT" && { echo "variant $1 changed nothing" >&2; exit 1; }
  echo "$out"
}

scan() { # PROFILE -> read pass us/page
  "$DSMRUN" -n 2 --local-cache 32M --cpus 0 --profile "$1" "$DIR/scan" "$SCAN_MIB" 2>/dev/null |
    sed -n 's/.*read_us_per_page=\([0-9.]*\).*/\1/p'
}

VARIANTS="clock 2q granularity4 chunk64 readahead256 recycle reclaim batch256"
for v in $VARIANTS; do variant "$v" >/dev/null; done
printf '%-5s %-14s %10s %12s\n' round profile "us/page" "vs default"
for r in $(seq 1 "$ROUNDS"); do
  d=$(scan "$DEFAULT")
  printf '%-5s %-14s %10s %12s\n' "$r" default "$d" 1.00
  for v in sequential $VARIANTS; do
    p=$v; [ "$v" = sequential ] || p=$DIR/$v.toml
    t=$(scan "$p")
    awk -v r="$r" -v v="$v" -v t="$t" -v d="$d" 'BEGIN { printf "%-5s %-14s %10s %12.2f\n", r, v, t, t / d }'
  done
done
echo "(scan of $SCAN_MIB MiB, --cpus 0; load: $(cut -d' ' -f1-3 /proc/loadavg))"
