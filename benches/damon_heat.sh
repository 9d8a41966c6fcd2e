#!/bin/bash
# DAMON as the missing accessed bit: a feasibility probe (docs/performance.md, "DAMON as
# the missing accessed bit").
#
# Runs a program (default: velvetg on Debian's velvet-example reads) under
#   dsmrun -v -n NODES --local-cache X --record-trace WORK/run.dsmt --stats WORK/stats.json
# with X = PCT% of the program's native peak RSS (/usr/bin/time -v), and every INTERVAL
# seconds, in the same instant as far as a shell allows:
#   - the runtime's resident pages: present bits of the heap (PAGEMAP_SCAN, through the
#     small C helper benches/damon_heat_scan.c), WORK/dumps/N.present;
#   - DAMON's regions of the program (vaddr monitoring, a "stat" scheme matching every
#     region, state command update_schemes_tried_regions, then every
#     schemes/0/tried_regions/R/{start,end,nr_accesses,age}), WORK/dumps/N.regions, with
#     the time the command and the reads took and kdamond's CPU time (/proc/PID/stat);
#   - a DAMON-less proxy of the accessed bit, whatever the kernel: `echo 1 >
#     /proc/PID/clear_refs` clears the accessed bits of the program's page tables, and
#     REF_WINDOW_MS later /proc/PID/smaps's "Referenced" of the heap's mappings says
#     how much of the resident heap was touched (or installed) in that window. Aggregate
#     only: smaps has no per-page figure.
# Afterwards WORK/summary.txt: regions over the heap, resident pages in cold
# (nr_accesses == 0) and warm regions, whether cold-region pages fault again in the next
# INTERVAL (from the trace) against warm ones, the cache's turnover between dumps, the
# faults on pages that were resident at the previous dump (evicted and wanted again
# within INTERVAL), and the costs.
#
# DAMON is used only when it can be without disturbing anything: the kernel must offer
# vaddr monitoring (CONFIG_DAMON_VADDR: "vaddr" in a context's avail_operations; fvaddr
# comes with it) and the
# sysfs interface must have no kdamond: creating one rewrites kdamonds/nr_kdamonds, which
# the kernel refuses (EBUSY) while any kdamond runs and which would delete the existing
# kdamonds' directories otherwise. A kdamond this script did not start is never stopped.
# DAMON=off skips it; DAMON=on fails when it cannot be used; DAMON=auto (default) says
# why and goes on with the rest.
#
# Usage (as root): benches/damon_heat.sh [WORK] [-- PROG ARGS...]
#   (a PROG's output directory, if it has one, is its business; the default is velvetg)
#   env: PCT (50), NODES (2), INTERVAL (1), REF_WINDOW_MS (20), DAMON (auto), OPS (vaddr;
#        fvaddr: fixed regions over the heap's used part, see below),
#        SAMPLE_US (5000), AGGR_US (100000), UPDATE_US (1000000), MIN_NR (100),
#        MAX_NR (2000), BIN (target/release of this checkout), DSMRUN_ARGS (extra args),
#        KERNEL_REF (0; 1: also the kernel's swap at the same limit, below)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=/tmp/dsm-damon-heat
if [ $# -gt 0 ] && [ "$1" != -- ]; then WORK=$1; shift; fi
[ "${1:-}" = -- ] && shift
PCT=${PCT:-50}; NODES=${NODES:-2}; INTERVAL=${INTERVAL:-1}; REF_WINDOW_MS=${REF_WINDOW_MS:-20}
DAMON=${DAMON:-auto}; SAMPLE_US=${SAMPLE_US:-5000}; AGGR_US=${AGGR_US:-100000}
UPDATE_US=${UPDATE_US:-1000000}; MIN_NR=${MIN_NR:-100}; MAX_NR=${MAX_NR:-2000}; OPS=${OPS:-vaddr}
BIN=${BIN:-$HERE/../target/release}
D=/sys/kernel/mm/damon/admin/kdamonds
[ "$(id -u)" = 0 ] || { echo "run as root (pagemap, clear_refs, DAMON sysfs)" >&2; exit 1; }
[ -x "$BIN/dsmrun" ] && [ -f "$BIN/libdsm_preload.so" ] \
    || { echo "build first: cargo build --release -p dsm-runtime -p dsm-preload" >&2; exit 1; }
mkdir -p "$WORK/dumps"; rm -f "$WORK"/dumps/*
gcc -O2 -Wall -o "$WORK/scan" "$HERE/damon_heat_scan.c"
log() { echo "[$(date -u +%T)] $*" | tee -a "$WORK/summary.txt" >&2; }
: >"$WORK/summary.txt"
log "load average $(cut -d' ' -f1-3 /proc/loadavg); kernel $(uname -r)"

# --- can DAMON watch a process here? ---------------------------------------------
damon_why_not() {
    [ -d "$D" ] || { echo "no DAMON sysfs interface ($D)"; return; }
    local nr k why="" ops=""
    nr=$(cat "$D/nr_kdamonds")
    for ((k = 0; k < nr; k++)); do
        [ -f "$D/$k/contexts/0/avail_operations" ] && ops=$(tr '\n' ' ' <"$D/$k/contexts/0/avail_operations")
        if [ "$(cat "$D/$k/state")" = on ]; then
            why+="kdamond $k is running (pid $(cat "$D/$k/pid"), operations $(cat "$D/$k/contexts/0/operations" 2>/dev/null), "
            why+="action $(cat "$D/$k/contexts/0/schemes/0/action" 2>/dev/null)): a new kdamond means rewriting nr_kdamonds, "
            why+="which the kernel refuses while one runs, and it is not ours to stop; "
        fi
    done
    [ "$nr" = 0 ] || [ -n "$why" ] || why+="$nr idle kdamond(s) configured by someone else: rewriting nr_kdamonds would delete them; "
    if [ -z "$ops" ] && [ -r /proc/config.gz ] && zcat /proc/config.gz | grep -q '^# CONFIG_DAMON_VADDR is not set'; then
        ops="(none listed; /proc/config.gz: CONFIG_DAMON_VADDR is not set)"
    fi
    case " $ops " in *" $OPS "*) ;; "  ") ;; *) why+="no $OPS operations in this kernel (avail_operations: $ops); " ;; esac
    echo "$why"
}
USE_DAMON=0
if [ "$DAMON" != off ]; then
    WHY=$(damon_why_not)
    if [ -z "$WHY" ]; then USE_DAMON=1
    elif [ "$DAMON" = on ]; then echo "DAMON unusable: $WHY" >&2; exit 2
    else log "DAMON unusable, going on without it: $WHY"; fi
fi
if ((USE_DAMON)); then
    echo 1 >"$D/nr_kdamonds"
    echo 1 >"$D/0/contexts/nr_contexts"
    case " $(tr '\n' ' ' <"$D/0/contexts/0/avail_operations" 2>/dev/null || true) " in
    *" $OPS "*) ;;
    *) echo 0 >"$D/nr_kdamonds"; [ "$DAMON" = on ] && { echo "no $OPS operations" >&2; exit 2; }
       log "DAMON unusable: no $OPS operations"; USE_DAMON=0 ;;
    esac
fi
K=$D/0; C=$K/contexts/0; S=$C/schemes/0
damon_stop() {
    if ((USE_DAMON)); then
        [ "$(cat "$K/state")" = on ] && echo off >"$K/state"
        echo 0 >"$D/nr_kdamonds"
    fi
}

# --- the program and its native peak RSS -------------------------------------------
prepare() { # DIR: a fresh velvetg directory
    rm -rf "$1"; mkdir -p "$1"; cp "$WORK/h"/{Sequences,Roadmaps,Log} "$1/"
}
if [ $# -eq 0 ]; then
    if [ ! -f "$WORK/h/Roadmaps" ]; then
        xz -dc /usr/share/doc/velvet/examples/test_reads.fa.xz >"$WORK/reads.fa"
        velveth "$WORK/h" 21 -fasta -shortPaired "$WORK/reads.fa" >/dev/null
    fi
    prepare "$WORK/native"; prepare "$WORK/run"
    NATIVE=(velvetg "$WORK/native"); PROG=(velvetg "$WORK/run")
else
    NATIVE=("$@"); PROG=("$@")
fi
/usr/bin/time -v -o "$WORK/native.time" "${NATIVE[@]}" >/dev/null
PEAK_KIB=$(awk -F': ' '/Maximum resident set size/{print $2}' "$WORK/native.time")
NATIVE_S=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/native.time")
CACHE_MIB=$((PEAK_KIB * PCT / 100 / 1024))
log "native: ${NATIVE[*]}: peak RSS $PEAK_KIB KiB, wall $NATIVE_S; cache ${CACHE_MIB} MiB ($PCT%)"

# --- the run ---------------------------------------------------------------------------
rm -f "$WORK/run.dsmt"*
# shellcheck disable=SC2086
"$BIN/dsmrun" -v -n "$NODES" --local-cache "${CACHE_MIB}M" --preload-lib "$BIN/libdsm_preload.so" \
    --record-trace "$WORK/run.dsmt" --stats "$WORK/stats.json" ${DSMRUN_ARGS:-} \
    -- "${PROG[@]}" >"$WORK/run.out" 2>"$WORK/run.err" &
RUNNER=$!
trap 'damon_stop; kill $RUNNER 2>/dev/null || true' EXIT
HEAP=""
for _ in $(seq 1 2000); do
    HEAP=$(grep -m1 -o 'pid [0-9]*) slot 0: heap 0x[0-9a-f]*\.\.0x[0-9a-f]*' "$WORK/run.err" || true)
    [ -n "$HEAP" ] && break
    kill -0 $RUNNER 2>/dev/null || break
    sleep 0.005
done
[ -n "$HEAP" ] || { echo "no 'slot 0: heap' line from dsmrun -v:" >&2; cat "$WORK/run.err" >&2; exit 1; }
T0=$(date +%s.%N)
PID=$(sed -E 's/pid ([0-9]+)\).*/\1/' <<<"$HEAP")
BASE=$(sed -E 's/.*heap (0x[0-9a-f]+)\.\..*/\1/' <<<"$HEAP")
END=$(sed -E 's/.*\.\.(0x[0-9a-f]+)$/\1/' <<<"$HEAP")
log "program pid $PID, heap $BASE..$END; started $T0"

KPID=""
if ((USE_DAMON)); then
    echo "$OPS" >"$C/operations"
    echo "$SAMPLE_US" >"$C/monitoring_attrs/intervals/sample_us"
    echo "$AGGR_US" >"$C/monitoring_attrs/intervals/aggr_us"
    echo "$UPDATE_US" >"$C/monitoring_attrs/intervals/update_us"
    echo "$MAX_NR" >"$C/monitoring_attrs/nr_regions/max"
    echo "$MIN_NR" >"$C/monitoring_attrs/nr_regions/min"
    echo 1 >"$C/targets/nr_targets"
    echo "$PID" >"$C/targets/0/pid_target"
    if [ "$OPS" = fvaddr ]; then
        # fixed ranges: the heap's start up to twice the native peak RSS (vaddr would
        # instead cover the whole 4 TiB reservation, one VMA, and have to find the used
        # part by splitting regions)
        echo 1 >"$C/targets/0/regions/nr_regions"
        echo $((BASE)) >"$C/targets/0/regions/0/start"
        echo $((BASE + PEAK_KIB * 2048)) >"$C/targets/0/regions/0/end"
    fi
    echo 1 >"$C/schemes/nr_schemes"
    echo stat >"$S/action"
    # an access pattern that every region matches
    echo 0 >"$S/access_pattern/sz/min"; echo 18446744073709551615 >"$S/access_pattern/sz/max"
    echo 0 >"$S/access_pattern/nr_accesses/min"; echo 4294967295 >"$S/access_pattern/nr_accesses/max"
    echo 0 >"$S/access_pattern/age/min"; echo 4294967295 >"$S/access_pattern/age/max"
    echo on >"$K/state"
    KPID=$(cat "$K/pid")
    log "kdamond pid $KPID: $OPS, sample ${SAMPLE_US} us, aggregation ${AGGR_US} us, regions $MIN_NR..$MAX_NR"
fi

# smaps of the heap's mappings: "rss_kib referenced_kib"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }

# columns: n t_s present_pages heap_rss_kib referenced_kib ref_window_ms scan_ms damon_cmd_ms
#          damon_read_ms regions kdamond_ticks t_clear_refs_s t_smaps_read_s (times from the heap line)
: >"$WORK/dumps.tsv"
n=0
while kill -0 "$PID" 2>/dev/null; do
    n=$((n + 1)); f=$(printf '%s/dumps/%05d' "$WORK" $n)
    t=$(date +%s.%N)
    a=$(now_ms)
    if ((USE_DAMON)); then
        echo update_schemes_tried_regions >"$K/state" 2>/dev/null || true
        b=$(now_ms)
        # one grep prints every region file as PATH:VALUE
        grep -r '' "$S/tried_regions" 2>/dev/null | grep -E '/(start|end|nr_accesses|age):' >"$f.regions" || true
        c=$(now_ms)
    else b=$a; c=$a; fi
    "$WORK/scan" "$PID" "$BASE" "$END" >"$f.present" 2>/dev/null || true
    d=$(now_ms)
    tc=$(date +%s.%N)
    read -r rss ref us < <("$WORK/scan" "$PID" "$BASE" "$END" refs "$REF_WINDOW_MS" 2>/dev/null || echo "0 0 0")
    tr=$(echo "$tc + $us / 1000000" | bc -l)
    present=$(awk '/^# present/{print $3}' "$f.present")
    regions=$( ((USE_DAMON)) && grep -c '/start:' "$f.regions" || echo 0)
    kt=$( [ -n "$KPID" ] && cpu_ticks "$KPID" || echo 0)
    printf '%d\t%.3f\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%.3f\t%.3f\n' $n "$(echo "$t - $T0" | bc)" "${present:-0}" "$rss" "$ref" \
        "$REF_WINDOW_MS" $((d - c)) $((b - a)) $((c - b)) "$regions" "$kt" "$(echo "$tc - $T0" | bc)" "$(echo "$tr - $T0" | bc)" >>"$WORK/dumps.tsv"
    sleep "$(awk -v i="$INTERVAL" -v ms=$(($(now_ms) - a)) 'BEGIN { s = i - ms / 1000; print (s > 0.01 ? s : 0.01) }')"
done
rc=0; wait $RUNNER || rc=$?
T_END=$(date +%s.%N)
damon_stop; USE_DAMON_WAS=$USE_DAMON; USE_DAMON=0
log "dsmrun exit $rc after $(echo "$T_END - $T0" | bc) s, $n dumps; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ $# -eq 0 ]; then
    cmp -s "$WORK/run/contigs.fa" "$WORK/native/contigs.fa" && log "contigs.fa identical to native" \
        || log "contigs.fa DIFFERS from native"
fi
# --- optional: the kernel's LRU (per-page accessed bits) at the same limit -------------
# KERNEL_REF=1: the native program in a memory cgroup (v1) limited to the same MiB, swap
# on zram (benches/kernel_swap.sh), with the OOM watchdog of benches/peers_swap.sh
# (oom_kill_disable and a wake by lowering the limit a page); prints its major faults
# (swap-ins), the count an eviction with accessed bits reaches on the same program.
if [ "${KERNEL_REF:-0}" = 1 ]; then
    # shellcheck source=benches/kernel_swap.sh
    . "$HERE/kernel_swap.sh"
    zram_swap_on
    trap 'swapoff /dev/zram0 2>/dev/null; echo 1 >/sys/block/zram0/reset' EXIT
    CG=$(swap_cgroup dsm-damon-heat "$CACHE_MIB")
    echo 1 >"$CG/memory.oom_control"
    [ $# -eq 0 ] && { prepare "$WORK/kernel"; NATIVE=(velvetg "$WORK/kernel"); }
    python3 "$HERE/oomwake.py" "$CG" $((CACHE_MIB << 20)) "$WORK/kernel.wakes" &
    DOG=$!
    echo 0 >"$WORK/kernel.wakes"
    k0=$(date +%s.%N)
    bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$CG" "${NATIVE[@]}" >/dev/null 2>"$WORK/kernel.err" || true
    k1=$(date +%s.%N)
    kill $DOG; wait $DOG 2>/dev/null || true
    log "kernel, zram swap, ${CACHE_MIB} MiB cgroup: $(echo "$k1 - $k0" | bc) s, $(cat "$WORK/kernel.wakes") OOM wake-ups; $(grep -E '^(pgmajfault|pgpgin|swap) ' "$CG/memory.stat" | tr '\n' ' ')"
    [ $# -eq 0 ] && { cmp -s "$WORK/kernel/contigs.fa" "$WORK/native/contigs.fa" && log "kernel run: contigs.fa identical to native" || log "kernel run: contigs.fa DIFFERS"; }
    for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
fi
python3 "$HERE/damon_heat_report.py" "$WORK" "$BASE" "$USE_DAMON_WAS" "$(getconf PAGESIZE)" | tee -a "$WORK/summary.txt"
