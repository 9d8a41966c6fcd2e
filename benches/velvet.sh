#!/usr/bin/env bash
# velvetg on a data set of >= 500 MiB peak RSS: natively, under dsmrun with the local cache
# at 75%, 50% and 25% of native peak RSS, and under the kernel's swap (memory cgroup limit,
# swap on zram) at the same limits, side by side in one run.
#
# usage: benches/velvet.sh [WORKDIR]        (root; takes about an hour on 2 cores)
# env:   COVERAGE (50), NODES (4), CAP_RATIO (runs slower than CAP_RATIO x native are
#        stopped and reported as such, default 4), SEED (7), LIMITS ("75 50 25"),
#        CPUS (0: every run, native and zram included, is confined to these CPUs, dsmrun
#        with --cpus; velvetg is single-threaded, so this costs the native run nothing
#        and keeps each of dsmrun's faults on one vCPU; empty: no confinement),
#        TRANSPORT (auto: shm with these local nodes), PROFILE (dsmrun --profile; default:
#        the runtime's default profile), SKIP_ZRAM (1: dsmrun rows only), FREE_ROW (1: with
#        CPUS set, also run dsmrun unconfined at the first limit; 0: do not), BASE_ROW (1,
#        default: also run dsmrun with a cache twice the native peak, so nothing is evicted:
#        the cost of the preload and its allocator alone), NATIVE_AGAIN (1, default: run
#        native velvetg again at the end, to show how much the machine drifted meanwhile)
#
# Writes WORKDIR/results.md (a table for docs/performance.md) and one --stats JSON per
# dsmrun run. Each run starts from a fresh copy of velveth's output, since velvetg
# rewrites its directory; every run's contigs.fa is compared with the native one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-velvet-bench}
COVERAGE=${COVERAGE:-50}
NODES=${NODES:-4}
CAP_RATIO=${CAP_RATIO:-4}
SEED=${SEED:-7}
LIMITS=${LIMITS:-"75 50 25"}
CPUS=${CPUS-0}
TRANSPORT=${TRANSPORT:-auto}
PROFILE=${PROFILE:-default}
SKIP_ZRAM=${SKIP_ZRAM:-0}
FREE_ROW=${FREE_ROW:-1}
BASE_ROW=${BASE_ROW:-1}
NATIVE_AGAIN=${NATIVE_AGAIN:-1}
if [ -n "$CPUS" ]; then PIN=(taskset -c "$CPUS"); DSM_PIN=(--cpus "$CPUS"); else PIN=(); DSM_PIN=(); fi
GENOME=/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz
DSMRUN=$ROOT/target/release/dsmrun
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*" >&2; }

need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need velvetg velvet; need art_illumina art-nextgen-simulation-tools; need zramctl util-linux
[ -f "$GENOME" ] || { echo "missing $GENOME (apt-get install ragout-examples)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (memory cgroups, zram, userfaultfd)" >&2; exit 1; }
cargo build --release --workspace -q
# A private copy, so rebuilding the tree during the (long) run changes nothing here.
mkdir -p "$WORK/bin"
cp "$ROOT/target/release/dsmrun" "$ROOT/target/release/libdsm_preload.so" "$WORK/bin/"
DSMRUN=$WORK/bin/dsmrun

# --- data: E. coli K-12 MG1655, ART HiSeq 2500 paired reads, deterministic seed
if [ ! -f "$WORK/velveth.done" ]; then
    log "simulating ${COVERAGE}x reads"
    zcat "$GENOME" > "$WORK/genome.fa"
    art_illumina -ss HS25 -p -l 100 -m 300 -s 30 -rs "$SEED" -f "$COVERAGE" -na -q \
        -i "$WORK/genome.fa" -o "$WORK/reads" >/dev/null
    log "velveth"
    rm -rf "$WORK/base"
    velveth "$WORK/base" 31 -shortPaired -fastq -separate "$WORK/reads1.fq" "$WORK/reads2.fq" >/dev/null
    touch "$WORK/velveth.done"
fi
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK/base/Sequences" "$WORK/base/Roadmaps" "$WORK/base/Log" "$1/"; }
VELVETG_ARGS=(-exp_cov auto -ins_length 300)

# Runs "$@" with a time limit; prints "seconds peak_rss_kib status".
timed() {
    local limit=$1; shift
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    timeout -s KILL "$limit" /usr/bin/time -f "%M" -o "$WORK/rss" "$@" >"$WORK/out.log" 2>"$WORK/err.log" || rc=$?
    t1=$(date +%s.%N)
    local rss; rss=$(tail -1 "$WORK/rss" 2>/dev/null | grep -E '^[0-9]+$' || echo 0)
    echo "$(echo "$t1 - $t0" | bc) $rss $rc"
}

# --- native
log "native velvetg"
fresh "$WORK/native"
read -r NATIVE_S NATIVE_KIB rc < <(timed 3600 "${PIN[@]}" velvetg "$WORK/native" "${VELVETG_ARGS[@]}")
[ "$rc" = 0 ] || { echo "native velvetg failed ($rc)"; cat "$WORK/err.log"; exit 1; }
log "native: ${NATIVE_S}s, peak RSS $((NATIVE_KIB / 1024)) MiB"
CAP=$(printf '%.0f' "$(echo "$NATIVE_S * $CAP_RATIO" | bc)")

# --- swap on zram for the kernel baseline
ZRAM_SET=0
setup_zram() {
    if ! grep -q zram /proc/swaps; then
        [ "$(cat /sys/block/zram0/disksize)" = 0 ] || { echo "zram0 is in use; not touching it" >&2; exit 1; }
        echo lz4 > /sys/block/zram0/comp_algorithm 2>/dev/null || true
        echo 4G > /sys/block/zram0/disksize
        mkswap /dev/zram0 >/dev/null
        swapon -p 100 /dev/zram0
        ZRAM_SET=1
    fi
}
cleanup() {
    if [ "$ZRAM_SET" = 1 ]; then swapoff /dev/zram0 || true; echo 1 > /sys/block/zram0/reset || true; fi
    rmdir /sys/fs/cgroup/memory/dsm-bench 2>/dev/null || true
}
trap cleanup EXIT
setup_zram
CG=/sys/fs/cgroup/memory/dsm-bench
mkdir -p "$CG"
echo 60 > "$CG/memory.swappiness" 2>/dev/null || true
in_cgroup() { echo $$ > "$CG/cgroup.procs"; exec "$@"; }
export -f in_cgroup; export CG

row() { printf '| %s | %s | %s | %s | %s |\n' "$@" >> "$WORK/results.md"; }
{
    echo "Native velvetg: ${NATIVE_S} s, peak RSS $((NATIVE_KIB / 1024)) MiB (E. coli K-12 MG1655, ART HS25 ${COVERAGE}x paired, k=31, velvetg ${VELVETG_ARGS[*]}); dsmrun -n $NODES --transport $TRANSPORT --profile $PROFILE; every run confined to CPUs '${CPUS:-all}'; runs stopped after ${CAP} s."
    echo
    echo "| run | limit | wall time (s) | vs native | contigs.fa identical |"
    echo "| --- | --- | --- | --- | --- |"
} > "$WORK/results.md"
row native "-" "$NATIVE_S" "1.00" "-"

oom_kills() { awk '/^oom_kill /{print $2}' "$CG/memory.oom_control" 2>/dev/null || echo 0; }
judge() { # name limit_mib seconds rc dir oom_kills_before
    local ratio same
    ratio=$(printf '%.2f' "$(echo "$3 / $NATIVE_S" | bc -l)")
    if [ "$4" = 0 ]; then
        cmp -s "$5/contigs.fa" "$WORK/native/contigs.fa" && same=yes || same=NO
    elif [ "$4" = 137 ] && [ "$(oom_kills)" != "${6:-$(oom_kills)}" ]; then
        same="OOM-killed by the memory cgroup"
    elif [ "$4" = 137 ]; then
        same="stopped at cap (> $ratio x)"; ratio="> $ratio"
    else
        same="failed (exit $4)"
    fi
    local limit="$2 MiB"; [ "$2" = - ] && limit=-
    row "$1" "$limit" "$3" "$ratio" "$same"
    log "$1 at $2 MiB: $3 s ($ratio x), $same"
}

if [ "$BASE_ROW" = 1 ]; then
    LIMIT=$((NATIVE_KIB * 1024 * 2))
    log "dsmrun, local cache 200% = $((LIMIT >> 20)) MiB (nothing evicted)"
    fresh "$WORK/dsm200"
    read -r S _ rc < <(timed "$CAP" "$DSMRUN" -n "$NODES" --local-cache "$LIMIT" "${DSM_PIN[@]}" \
        --profile "$PROFILE" --transport "$TRANSPORT" --stats "$WORK/dsm200.json" -- velvetg "$WORK/dsm200" "${VELVETG_ARGS[@]}")
    judge "dsmrun 200% (no eviction)" "$((LIMIT >> 20))" "$S" "$rc" "$WORK/dsm200"
fi

for pct in $LIMITS; do
    LIMIT=$((NATIVE_KIB * 1024 * pct / 100))
    LIMIT_MIB=$((LIMIT >> 20))
    log "dsmrun, local cache $pct% = ${LIMIT_MIB} MiB"
    fresh "$WORK/dsm$pct"
    read -r S _ rc < <(timed "$CAP" "$DSMRUN" -n "$NODES" --local-cache "$LIMIT" "${DSM_PIN[@]}" \
        --profile "$PROFILE" --transport "$TRANSPORT" --stats "$WORK/dsm$pct.json" -- velvetg "$WORK/dsm$pct" "${VELVETG_ARGS[@]}")
    judge "dsmrun $pct%" "$LIMIT_MIB" "$S" "$rc" "$WORK/dsm$pct"
    if [ -n "$CPUS" ] && [ "$FREE_ROW" = 1 ] && [ "$pct" = "${LIMITS%% *}" ]; then
        log "dsmrun without --cpus, local cache $pct%, to show what confinement is worth"
        fresh "$WORK/dsm$pct-free"
        read -r S _ rc < <(timed "$CAP" "$DSMRUN" -n "$NODES" --local-cache "$LIMIT" \
            --profile "$PROFILE" --transport "$TRANSPORT" --stats "$WORK/dsm$pct-free.json" -- velvetg "$WORK/dsm$pct-free" "${VELVETG_ARGS[@]}")
        judge "dsmrun $pct%, no --cpus" "$LIMIT_MIB" "$S" "$rc" "$WORK/dsm$pct-free"
    fi

    [ "$SKIP_ZRAM" = 1 ] && continue
    log "kernel swap on zram, cgroup limit $pct% = ${LIMIT_MIB} MiB"
    fresh "$WORK/zram$pct"
    echo "$LIMIT" > "$CG/memory.limit_in_bytes"
    OOM_BEFORE=$(oom_kills)
    read -r S _ rc < <(timed "$CAP" bash -c 'in_cgroup "$@"' _ "${PIN[@]}" velvetg "$WORK/zram$pct" "${VELVETG_ARGS[@]}")
    judge "zram swap $pct%" "$LIMIT_MIB" "$S" "$rc" "$WORK/zram$pct" "$OOM_BEFORE"
    echo $((64 << 30)) > "$CG/memory.limit_in_bytes"
done

if [ "$NATIVE_AGAIN" = 1 ]; then
    log "native velvetg again"
    fresh "$WORK/native2"
    read -r S _ rc < <(timed 3600 "${PIN[@]}" velvetg "$WORK/native2" "${VELVETG_ARGS[@]}")
    judge "native again" "-" "$S" "$rc" "$WORK/native2"
fi
cat "$WORK/results.md"
