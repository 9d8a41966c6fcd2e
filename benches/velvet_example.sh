#!/usr/bin/env bash
# One velvetg run on Debian's velvet-example reads under dsmrun, for quick side-by-side
# comparisons of profiles (what docs/performance.md's velvet-profile and compressed-tier
# tables on velvet-example were made with, in a loop over profiles and limits).
# Prints one line: limit, profile, transport, seconds, remote fetches, read faults,
# compressed-tier hits, pages kept, rejected, skipped, seconds compressing, and whether
# contigs.fa is identical to the native run's.
#
# usage: benches/velvet_example.sh PCT PROFILE [TRANSPORT]     (root; userfaultfd)
#        PCT: the local cache as a percent of velvetg's native peak RSS; PROFILE: a
#        shipped profile's name or a .toml path; TRANSPORT: shm (default) or tcp.
# env:   WORK (/tmp/dsm-velvet-example: velveth's output and the native run, made once)
set -euo pipefail
cd "$(dirname "$0")/.."
PCT=${1:?usage: benches/velvet_example.sh PCT PROFILE [TRANSPORT]}
PROFILE=${2:?usage: benches/velvet_example.sh PCT PROFILE [TRANSPORT]}
TRANSPORT=${3:-shm}
WORK=${WORK:-/tmp/dsm-velvet-example}
READS=/usr/share/doc/velvet/examples/test_reads.fa.xz
command -v velvetg >/dev/null || { echo "missing velvetg (apt-get install velvet)" >&2; exit 1; }
[ -f "$READS" ] || { echo "missing $READS (apt-get install velvet-example)" >&2; exit 1; }
DSMRUN=target/release/dsmrun
[ -x "$DSMRUN" ] || cargo build --release --workspace -q
if [ ! -f "$WORK/native.rss" ]; then
    mkdir -p "$WORK"
    xz -dc "$READS" >"$WORK/reads.fa"
    rm -rf "$WORK/h" "$WORK/native"
    velveth "$WORK/h" 21 -fasta -shortPaired "$WORK/reads.fa" >/dev/null
    cp -r "$WORK/h" "$WORK/native"
    /usr/bin/time -f %M -o "$WORK/native.rss" velvetg "$WORK/native" >/dev/null
fi
PEAK_KIB=$(tail -1 "$WORK/native.rss")
RUN=$(mktemp -d "$WORK/run.XXXX")
trap 'rm -rf "$RUN"' EXIT
cp "$WORK"/h/{Sequences,Roadmaps,Log} "$RUN/"
t0=$(date +%s.%N)
"$DSMRUN" -q -n 2 --transport "$TRANSPORT" --local-cache $((PEAK_KIB * PCT / 100))K \
    --profile "$PROFILE" --stats "$RUN/stats.json" -- velvetg "$RUN" >/dev/null 2>"$RUN/err" \
    || { echo "dsmrun failed:" >&2; cat "$RUN/err" >&2; exit 1; }
t1=$(date +%s.%N)
counts=$(python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["total"]
keys = ["remote_read_pages", "faults_read", "compressed_hits", "compressed_in_pages",
        "compress_rejected", "compress_skipped"]
print(*[t.get(k, 0) for k in keys], round(t.get("compress_ns", 0) / 1e9, 2))' "$RUN/stats.json")
same=$(cmp -s "$RUN/contigs.fa" "$WORK/native/contigs.fa" && echo identical || echo DIFFERENT)
printf '%s %s %s %.2f %s %s\n' "$PCT" "$(basename "$PROFILE")" "$TRANSPORT" \
    "$(echo "$t1 - $t0" | bc)" "$counts" "$same"
