#!/bin/bash
# Good defaults (issue 22, point 3), side by side in one run: each pattern with no
# --cpus and no --profile against the best shipped profile with a hand-picked CPU
# (--cpus 0), and against the defaults with the handler not following the faulting
# thread (DSM_HANDLER_FOLLOW=0, what the defaults were before fault/follow.rs):
# - scan: benches/kernel/scan.c, write 256 MiB then read it front to back (read pass
#   in us/page; best profile `sequential`);
# - random: benches/kernel/random_threads.c with one thread over 256 MiB (us per access;
#   best profile `random`).
# Cache 32 MiB, 2 local nodes. Usage: benches/defaults.sh [ROUNDS] (default 1).
set -euo pipefail
ROUNDS=${1:-1}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload)
gcc -O2 -o "$DIR/scan" "$HERE/kernel/scan.c"
gcc -O2 -pthread -o "$DIR/random_threads" "$HERE/kernel/random_threads.c"
DSMRUN=$ROOT/target/release/dsmrun

scan() { # DSMRUN ARGS... -> read pass us/page
  "$DSMRUN" -n 2 --local-cache 32M "$@" "$DIR/scan" 256 2>/dev/null |
    sed -n 's/.*read_us_per_page=\([0-9.]*\).*/\1/p'
}
random() { # DSMRUN ARGS... -> us per access
  "$DSMRUN" -n 2 --local-cache 32M "$@" "$DIR/random_threads" 256 1 40000 2>/dev/null |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^accesses_per_s=/) { split($i, a, "="); printf "%.2f\n", 1e6 / a[2] } }'
}

printf '%-5s %-8s %12s %12s %14s %12s %14s\n' round pattern defaults "no follow" \
  "best+cpus 0" "def/best" "nofollow/best"
for r in $(seq 1 "$ROUNDS"); do
  for p in scan random; do
    case $p in scan) best=sequential ;; random) best=random ;; esac
    d=$($p); n=$(DSM_HANDLER_FOLLOW=0 $p); b=$($p --profile "$best" --cpus 0)
    awk -v r="$r" -v p="$p" -v d="$d" -v n="$n" -v b="$b" 'BEGIN {
      printf "%-5s %-8s %12s %12s %14s %12.2f %14.2f\n", r, p, d, n, b, d / b, n / b }'
  done
done
echo "(us per page read / per access; lower is better; load: $(cut -d' ' -f1-3 /proc/loadavg))"
