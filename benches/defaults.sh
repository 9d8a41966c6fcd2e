#!/bin/bash
# Good defaults (issue 22, point 3), side by side in one run: each pattern with no
# --cpus and no --profile, against
# - "before": the policies a run without --profile got until 2026-12-06 (CLOCK, no
#   prefetch, one page per fault: exactly the shipped `random` profile), and
# - "no place": the defaults without placement by default (DSM_HANDLER_FOLLOW=0: the job
#   is not moved to the faulting thread's CPU, fault/follow.rs), and
# - "best": the best shipped profile for the pattern with a hand-picked CPU (--cpus 0).
# Patterns:
# - scan: benches/kernel/scan.c, write SCAN_MIB MiB then read it front to back (read
#   pass in us/page; best = `sequential`), cache 32 MiB;
# - random: benches/kernel/random_threads.c with one thread over 256 MiB (us per access;
#   best = `random`), cache 32 MiB;
# - velvetg: velvet-example at 75% of its native peak RSS (seconds; best = `velvet`;
#   contigs checked against the native run).
# 2 local nodes. Usage: benches/defaults.sh [ROUNDS] (default 1); SCAN_MIB (default 1024).
set -euo pipefail
ROUNDS=${1:-1}
SCAN_MIB=${SCAN_MIB:-1024}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
DIR=$(mktemp -d); trap 'rm -rf "$DIR"' EXIT
(cd "$ROOT" && cargo build --release -q -p dsm-runtime -p dsm-preload)
gcc -O2 -o "$DIR/scan" "$HERE/kernel/scan.c"
gcc -O2 -pthread -o "$DIR/random_threads" "$HERE/kernel/random_threads.c"
DSMRUN=$ROOT/target/release/dsmrun
xz -dc /usr/share/doc/velvet/examples/test_reads.fa.xz >"$DIR/reads.fa"
velveth "$DIR/h" 21 -fasta -shortPaired "$DIR/reads.fa" >/dev/null
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$DIR"/h/{Sequences,Roadmaps,Log} "$1/"; }
fresh "$DIR/native"
PEAK_KIB=$(/usr/bin/time -f %M -o /dev/stdout velvetg "$DIR/native" 2>/dev/null | tail -1)

scan() { # ARGS... -> read pass us/page
  "$DSMRUN" -n 2 --local-cache 32M "$@" "$DIR/scan" "$SCAN_MIB" 2>/dev/null |
    sed -n 's/.*read_us_per_page=\([0-9.]*\).*/\1/p'
}
random() { # ARGS... -> us per access
  "$DSMRUN" -n 2 --local-cache 32M "$@" "$DIR/random_threads" 256 1 40000 2>/dev/null |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^accesses_per_s=/) { split($i, a, "="); printf "%.2f\n", 1e6 / a[2] } }'
}
velvetg() { # ARGS... -> seconds; fails on contigs that differ from the native run's
  local d=$DIR/run t0 t1
  fresh "$d"; t0=$(date +%s.%N)
  "$DSMRUN" -q -n 2 --local-cache $((PEAK_KIB * 3 / 4))K "$@" -- velvetg "$d" >/dev/null
  t1=$(date +%s.%N)
  cmp -s "$d/contigs.fa" "$DIR/native/contigs.fa" || { echo "velvetg $*: contigs differ" >&2; exit 1; }
  echo "$t1 - $t0" | bc -l | awk '{printf "%.2f\n", $1}'
}

printf '%-5s %-8s %10s %10s %10s %12s %10s %14s\n' round pattern defaults before \
  "no place" "best+cpus 0" "def/best" "no place/best"
for r in $(seq 1 "$ROUNDS"); do
  for p in scan random velvetg; do
    case $p in scan) best=sequential ;; random) best=random ;; velvetg) best=velvet ;; esac
    d=$($p); b4=$($p --profile random); np=$(DSM_HANDLER_FOLLOW=0 $p)
    b=$($p --profile "$best" --cpus 0)
    awk -v r="$r" -v p="$p" -v d="$d" -v o="$b4" -v n="$np" -v b="$b" 'BEGIN {
      printf "%-5s %-8s %10s %10s %10s %12s %10.2f %14.2f\n", r, p, d, o, n, b, d / b, n / b }'
  done
done
echo "(scan: us per page read, random: us per access, velvetg: s; lower is better;" \
  "velvetg native peak $PEAK_KIB KiB; load: $(cut -d' ' -f1-3 /proc/loadavg))"
