#!/bin/bash
# Recycling evicted pages for prefetched ones (`[fetch] recycle_pages`, cache/spares.rs)
# on and off, side by side: the read pass of issue 22's scan (benches/kernel/scan.c:
# write MIB MiB, then read it front to back) under
#   dsmrun -n 2 --local-cache 32M --profile P --transport T
# for P = the shipped sequential and random profiles with recycle_pages = 0 and = PAGES
# (the profile copied with that one key set), T = shm and tcp.
# Prints microseconds per page of the read pass and the pages recycled (--stats).
# Usage: benches/recycle.sh [ROUNDS] (default 1); MIB=512, PAGES=1024 by default.
# Needs gcc; run as root (userfaultfd). Builds release binaries first.
set -euo pipefail
ROUNDS=${1:-1}; MIB=${MIB:-512}; PAGES=${PAGES:-1024}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload)
BIN=$ROOT/target/release
gcc -O2 -o "$DIR/scan" "$HERE/kernel/scan.c"

profile() { # NAME PAGES -> path of the shipped profile NAME with recycle_pages = PAGES
  local out="$DIR/$1-$2.toml"
  grep -v '^recycle_pages' "$ROOT/profiles/$1.toml" |
    awk -v n="$2" '{ print } /^\[fetch\]/ { print "recycle_pages = " n; done = 1 }
      END { if (!done) printf "[fetch]\nrecycle_pages = %s\n", n }' >"$out"
  echo "$out"
}
read_pass() { # PROFILE_FILE TRANSPORT -> "us_per_page recycled_in"
  local us
  us=$("$BIN/dsmrun" -n 2 --local-cache 32M --profile "$1" --transport "$2" \
    --stats "$DIR/stats.json" "$DIR/scan" "$MIB" 2>/dev/null |
    sed -n 's/.*read_us_per_page=\([0-9.]*\).*/\1/p')
  echo "$us $(sed -n 's/.*"recycled_in": \([0-9]*\).*/\1/p' "$DIR/stats.json" | tail -1)"
}

printf '%-5s %-9s %-10s %10s %10s %8s %12s\n' round transport profile off on "off/on" \
  "recycled in"
for r in $(seq 1 "$ROUNDS"); do
  for t in shm tcp; do
    for p in sequential random; do
      read -r off _ < <(read_pass "$(profile "$p" 0)" "$t")
      read -r on n < <(read_pass "$(profile "$p" "$PAGES")" "$t")
      awk -v r="$r" -v t="$t" -v p="$p" -v a="$off" -v b="$on" -v n="$n" 'BEGIN {
        printf "%-5s %-9s %-10s %10s %10s %8.2f %12s\n", r, t, p, a, b, a / b, n }'
    done
  done
done
echo "(microseconds per page of the read pass; recycle_pages = 0 (off) and $PAGES (on))"
