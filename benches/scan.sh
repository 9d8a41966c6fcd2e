#!/bin/bash
# Issue 22's sequential scan, side by side in one run: write MIB MiB, then read it front
# to back (benches/kernel/scan.c, an unmodified C program), under
#   dsmrun -n 2 --local-cache 32M --profile {sequential,random} --transport {shm,tcp}
# against reading the same number of bytes from the nodes without the runtime:
# - `node batch read`: dsm-fetch-bench's throughput (pages read from a node in batches
#   of 64 over the same transport into one reused buffer: the transport's bandwidth);
# - `pread tmpfs`: dd reading a MIB MiB file on /dev/shm 4 KiB at a time (plain reads of
#   the bytes where the shm transport's nodes keep them).
# Prints microseconds per page of the read pass and the ratios the issue asks for
# (random / sequential >= 5, sequential / node read <= 2).
# Usage: benches/scan.sh [ROUNDS] (default 1); MIB=512 by default. Needs gcc; run as
# root (userfaultfd). Builds release binaries first.
set -euo pipefail
ROUNDS=${1:-1}; MIB=${MIB:-512}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR" /dev/shm/dsm-scan-bench.$$' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload -p dsm-examples)
BIN=$ROOT/target/release
gcc -O2 -o "$DIR/scan" "$HERE/kernel/scan.c"
pages=$((MIB * 256))

read_pass() { # PROFILE TRANSPORT -> us per page of the read pass
  "$BIN/dsmrun" -n 2 --local-cache 32M --profile "$1" --transport "$2" "$DIR/scan" "$MIB" \
    2>/dev/null | sed -n 's/.*read_us_per_page=\([0-9.]*\).*/\1/p'
}
node_read() { # TRANSPORT -> us per page read from a node in batches of 64
  # shellcheck disable=SC2016
  "$BIN/dsmrun" -n 2 --transport "$1" -- sh -c \
    "\"$BIN/dsm-fetch-bench\" --nodes \"\$DSM_NODES\" --transport $1 --iters $pages --batch 64" \
    2>/dev/null | awk '/^fetch_bw/ { for (i = 1; i <= NF; i++) if ($i ~ /^pages\/s/) pps = $(i - 1) }
      END { if (pps > 0) printf "%.2f\n", 1e6 / pps }'
}
pread_tmpfs() { # -> us per page reading a tmpfs file 4 KiB at a time
  dd if=/dev/zero of=/dev/shm/dsm-scan-bench.$$ bs=1M count="$MIB" status=none
  local t0 t1; t0=$(date +%s%N)
  dd if=/dev/shm/dsm-scan-bench.$$ of=/dev/null bs=4096 status=none
  t1=$(date +%s%N)
  rm -f /dev/shm/dsm-scan-bench.$$
  awk -v ns=$((t1 - t0)) -v p="$pages" 'BEGIN { printf "%.2f\n", ns / p / 1000 }'
}

printf '%-5s %-9s %12s %12s %12s %12s %14s %14s\n' round transport sequential random \
  "node read" "pread tmpfs" "random/seq" "seq/node read"
for r in $(seq 1 "$ROUNDS"); do
  pt=$(pread_tmpfs)
  for t in shm tcp; do
    s=$(read_pass sequential "$t"); x=$(read_pass random "$t"); n=$(node_read "$t")
    awk -v r="$r" -v t="$t" -v s="$s" -v x="$x" -v n="$n" -v pt="$pt" 'BEGIN {
      printf "%-5s %-9s %12s %12s %12s %12s %14.1f %14.1f\n", r, t, s, x, n, pt, x / s, s / n }'
  done
done
echo "(microseconds per page of the read pass; node read = dsm-fetch-bench batches of 64)"
