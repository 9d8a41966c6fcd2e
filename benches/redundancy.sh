#!/bin/bash
# What redundancy costs and what a failure costs, side by side in one window:
#   1. failure-free: velvetg on velvet-example at 75% of its native peak RSS (velvet
#      profile, --cpus 0), and heapwalk (the tests' multithreaded C program), each under
#      --redundancy none, replicate:2 and ec:4+1 on the same NODES nodes, alternated
#      ROUNDS times (ratios of medians), with the node memory each mode holds per page;
#   2. the fault-path benchmark's remote fault (unpinned, blocking wait, TCP) under each
#      mode, and degraded: with node 1 killed once every page is home;
#   3. a failure: heapwalk under replicate:2 and ec:4+1 with --spare-nodes 1, node 1
#      SIGKILLed after KILL_MS, then under replicate:2 SIGSTOPped over TCP (declared dead
#      after the node timeout): the longest stall (--stats failover_stall_ns_max) and
#      the re-protection rate the runtime reports.
# Usage: benches/redundancy.sh [WORK]   (after cargo build --release --workspace)
#   env: ROUNDS (3), NODES (5), KILL_MS (400), TIMEOUT_MS (500),
#        PROGRAMS ("velvetg heapwalk": the failure-free comparisons to run; "" for none),
#        MODES ("none replicate:2 ec:4+1"), FAULT_PATH (1; 0 skips part 2)
set -euo pipefail
WORK=${1:-/tmp/dsm-redundancy-bench}
PROGRAMS=${PROGRAMS-velvetg heapwalk}
ROUNDS=${ROUNDS:-3}; NODES=${NODES:-5}; KILL_MS=${KILL_MS:-400}; TIMEOUT_MS=${TIMEOUT_MS:-500}
MODES=${MODES:-none replicate:2 ec:4+1}; FAULT_PATH=${FAULT_PATH:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DSMRUN=$ROOT/target/release/dsmrun
[ -x "$DSMRUN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
mkdir -p "$WORK"
cc -O2 -pthread -o "$WORK/heapwalk" "$ROOT/dsm-runtime/tests/programs/heapwalk.c"
HW=("$WORK/heapwalk" 96 4 4 11)
"${HW[@]}" >"$WORK/heapwalk.native"
xz -dc /usr/share/doc/velvet/examples/test_reads.fa.xz >"$WORK/reads.fa"
rm -rf "$WORK/h"; velveth "$WORK/h" 21 -fasta -shortPaired "$WORK/reads.fa" >/dev/null
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK"/h/{Sequences,Roadmaps,Log} "$1/"; }
fresh "$WORK/native"
PEAK_KIB=$(/usr/bin/time -f %M -o /dev/stdout velvetg "$WORK/native" 2>/dev/null | tail -1)
CACHE=$((PEAK_KIB * 3 / 4))K
now() { date +%s.%N; }

# one MODE WHAT: prints seconds; checks the output against the native run
one() {
    local mode=$1 what=$2 t0 t1 d="$WORK/run"
    t0=$(now)
    case $what in
    velvetg) fresh "$d"
        "$DSMRUN" -q -n "$NODES" --redundancy "$mode" --profile velvet --cpus 0 \
            --local-cache "$CACHE" -- velvetg "$d" >/dev/null
        cmp -s "$d/contigs.fa" "$WORK/native/contigs.fa" || { echo "velvetg $mode: contigs differ" >&2; exit 1; } ;;
    heapwalk)
        "$DSMRUN" -q -n "$NODES" --redundancy "$mode" --local-cache 16M -- "${HW[@]}" >"$WORK/hw.out"
        cmp -s "$WORK/hw.out" "$WORK/heapwalk.native" || { echo "heapwalk $mode: output differs" >&2; exit 1; } ;;
    esac
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "# failure-free, $ROUNDS rounds alternated, $NODES nodes; velvetg cache $CACHE (75% of $PEAK_KIB KiB)"
for mode in $MODES; do
    "$DSMRUN" -v -n "$NODES" --redundancy "$mode" -- true 2>&1 | grep -h "node memory holds" || true
done
tag() { echo "$1" | tr ':+' '__'; }
for what in $PROGRAMS; do
    for mode in $MODES; do : >"$WORK/$what.$(tag "$mode")"; done
    for r in $(seq 1 "$ROUNDS"); do
        for mode in $MODES; do one "$mode" "$what" >>"$WORK/$what.$(tag "$mode")"; done
    done
    base=$(median <"$WORK/$what.none")
    for mode in $MODES; do
        m=$(median <"$WORK/$what.$(tag "$mode")")
        printf '%-9s %-12s median %6.2f s  ratio to none %.3f  (runs: %s)\n' "$what" "$mode" "$m" \
            "$(echo "$m / $base" | bc -l)" "$(tr '\n' ' ' <"$WORK/$what.$(tag "$mode")")"
    done
done

# The fault-path benchmark's remote fault (TCP, unpinned, blocking wait) under MODE,
# with node KILL killed first when given.
fault_path() {
    local mode=$1 kill=${2:-}
    ( cd "$ROOT" && DSM_BENCH_REDUNDANCY=$mode DSM_BENCH_KILL_NODE=$kill \
        cargo bench -q -p dsm-benches --bench fault_path -- \
        'runtime/unpinned/block/remote_fault_latency' 2>/dev/null ) |
        awk -v m="$mode" -v k="${kill:+degraded, node $kill killed}" \
            '/^remote_fault\/unpinned\/block / { printf "fault path %-12s %-24s %8d ns per remote fault\n", m, k, $2 }'
}
if [ "$FAULT_PATH" = 1 ]; then
    echo "# the fault-path benchmark's remote fault, TCP, unpinned, blocking wait"
    for mode in $MODES; do fault_path "$mode"; done
    for mode in $MODES; do [ "$mode" = none ] || fault_path "$mode" 1; done
fi

# failure MODE SIGNAL TRANSPORT: heapwalk with node 1 signalled KILL_MS after the program is up
failure() {
    local mode=$1 sig=$2 transport=$3 err="$WORK/f.err"
    ( "$DSMRUN" -v -n "$NODES" --spare-nodes 1 --redundancy "$mode" --transport "$transport" \
        --node-timeout "$TIMEOUT_MS" --local-cache 16M --stats "$WORK/f.json" -- "${HW[@]}" \
        >"$WORK/f.out" 2>"$err" ) &
    local job=$!
    until grep -q ': heap 0x' "$err" 2>/dev/null; do sleep 0.02; done
    sleep "$(echo "$KILL_MS / 1000" | bc -l)"
    kill "-$sig" "$(grep -o 'node 1 pid [0-9]*' "$err" | awk '{print $4}')"
    wait "$job"
    cmp -s "$WORK/f.out" "$WORK/heapwalk.native" || { echo "failure run: output differs" >&2; exit 1; }
    python3 - "$WORK/f.json" "$sig" "$transport" "$mode" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["total"]
print(f"{sys.argv[4]:<12} SIG{sys.argv[2]:<5} {sys.argv[3]:<4} deaths {t['node_deaths']}  longest stall "
      f"{t['failover_stall_ns_max'] / 1e6:8.1f} ms  pages read from the other copy or rebuilt "
      f"{t['failover_read_pages']}  re-protected {t['reprotect_pages']} pages in "
      f"{t['reprotect_ns'] / 1e9:.3f} s ({t['reprotect_pages'] * 4096 / 2**20 / max(t['reprotect_ns'] / 1e9, 1e-9):.0f} MiB/s)")
PY
    grep -h "re-protection after" "$err" || true
}
echo "# a failure: heapwalk, 1 spare, node 1 signalled ${KILL_MS} ms after start, node timeout ${TIMEOUT_MS} ms"
for mode in $MODES; do
    [ "$mode" = none ] && continue
    failure "$mode" KILL shm
    failure "$mode" KILL tcp
done
failure replicate:2 STOP tcp
