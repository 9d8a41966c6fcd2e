#!/bin/bash
# Many faulting threads (issue 22, point 5), side by side in one run: random page
# accesses by 4 and 8 threads (benches/kernel/random_threads.c, unmodified C) over a
# 256 MiB heap, 8x the 32 MiB cache, under
#   dsmrun -n 2 --local-cache 32M --profile random --handler-threads H   (H = 1, 2, 4)
# Prints accesses per second and the throughput against one handler thread.
# Usage: benches/threads.sh [ROUNDS] (default 1); TOTAL accesses per run (default 80000),
# TRANSPORT (default auto). Needs gcc; run as root (userfaultfd).
set -euo pipefail
ROUNDS=${1:-1}; TOTAL=${TOTAL:-80000}; TRANSPORT=${TRANSPORT:-auto}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload)
gcc -O2 -pthread -o "$DIR/random_threads" "$HERE/kernel/random_threads.c"

rate() { # THREADS HANDLERS -> accesses per second
  "$ROOT/target/release/dsmrun" -n 2 --local-cache 32M --profile random \
    --transport "$TRANSPORT" --handler-threads "$2" \
    "$DIR/random_threads" 256 "$1" $((TOTAL / $1)) 2>/dev/null |
    sed -n 's/.*accesses_per_s=\([0-9]*\).*/\1/p'
}

printf '%-5s %-8s %14s %14s %14s %10s %10s\n' round threads "1 handler" "2 handlers" \
  "4 handlers" "2 vs 1" "4 vs 1"
for r in $(seq 1 "$ROUNDS"); do
  for t in 4 8; do
    a=$(rate "$t" 1); b=$(rate "$t" 2); c=$(rate "$t" 4)
    awk -v r="$r" -v t="$t" -v a="$a" -v b="$b" -v c="$c" 'BEGIN {
      printf "%-5s %-8s %14s %14s %14s %10.2f %10.2f\n", r, t, a, b, c, b / a, c / a }'
  done
done
echo "(random page accesses per second, all threads together; load: $(cut -d' ' -f1-3 /proc/loadavg))"
