#!/usr/bin/env bash
# Checkpoints of velvetg under dsmrun, side by side in one run: velvetg without
# checkpoints, then with a checkpoint every EVERY (the overhead, and each checkpoint's
# size, time and the time the program was held, from --stats), then a job checkpointed
# once, killed with SIGKILL (dsmrun, program and nodes) and restarted: the time from
# `dsmrun restart` to the program running again, and the contigs compared with native.
#
# usage: benches/checkpoint.sh [WORKDIR]    (needs userfaultfd)
# env:   DATA (ecoli: E. coli K-12 reads simulated with ART at COVERAGE x, as
#        benches/velvet.sh; example: Debian's velvet-example, small), COVERAGE (50),
#        NODES (4), CACHE_PCT (75: the local cache as a share of native peak RSS),
#        EVERY (60s), KILL_AFTER (share of the shortest run's time after which the restart
#        run's checkpoint is taken, percent, 50), SEED (7)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-checkpoint-bench}
DATA=${DATA:-ecoli}
COVERAGE=${COVERAGE:-50}
NODES=${NODES:-4}
CACHE_PCT=${CACHE_PCT:-75}
EVERY=${EVERY:-60s}
KILL_AFTER=${KILL_AFTER:-50}
SEED=${SEED:-7}
GENOME=/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz
EXAMPLE=/usr/share/doc/velvet/examples/test_reads.fa.xz
mkdir -p "$WORK"
export DSM_JOBS_DIR=$WORK/jobs
log() { echo "[$(date +%T)] $*" >&2; }
need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need velvetg velvet; need jq jq
cargo build --release --workspace -q
mkdir -p "$WORK/bin"
cp "$ROOT/target/release/dsmrun" "$ROOT/target/release/libdsm_preload.so" "$WORK/bin/"
DSMRUN=$WORK/bin/dsmrun

# --- data, as benches/velvet.sh (E. coli) or velvet-example (small, for a quick look)
if [ ! -f "$WORK/velveth.$DATA.done" ]; then
    rm -rf "$WORK/base"
    if [ "$DATA" = ecoli ]; then
        need art_illumina art-nextgen-simulation-tools
        [ -f "$GENOME" ] || { echo "missing $GENOME (apt-get install ragout-examples)" >&2; exit 1; }
        log "simulating ${COVERAGE}x reads"
        zcat "$GENOME" > "$WORK/genome.fa"
        art_illumina -ss HS25 -p -l 100 -m 300 -s 30 -rs "$SEED" -f "$COVERAGE" -na -q \
            -i "$WORK/genome.fa" -o "$WORK/reads" >/dev/null
        velveth "$WORK/base" 31 -shortPaired -fastq -separate "$WORK/reads1.fq" "$WORK/reads2.fq" >/dev/null
    else
        [ -f "$EXAMPLE" ] || { echo "missing $EXAMPLE (apt-get install velvet-example)" >&2; exit 1; }
        xz -dc "$EXAMPLE" > "$WORK/reads.fa"
        velveth "$WORK/base" 21 -fasta -shortPaired "$WORK/reads.fa" >/dev/null
    fi
    rm -f "$WORK"/velveth.*.done; touch "$WORK/velveth.$DATA.done"
fi
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK/base/Sequences" "$WORK/base/Roadmaps" "$WORK/base/Log" "$1/"; }
ARGS=(-exp_cov auto)
now_ms() { date +%s%3N; }

log "native velvetg"
fresh "$WORK/native"
t0=$(now_ms)
/usr/bin/time -f "%M" -o "$WORK/rss" velvetg "$WORK/native" "${ARGS[@]}" >/dev/null
NATIVE_MS=$(( $(now_ms) - t0 ))
PEAK_KIB=$(tail -1 "$WORK/rss")
CACHE=$(( PEAK_KIB * 1024 * CACHE_PCT / 100 / 4096 * 4096 ))
echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg); native velvetg ${NATIVE_MS} ms, peak RSS $((PEAK_KIB / 1024)) MiB; cache ${CACHE_PCT}% = $((CACHE >> 20)) MiB, $NODES nodes"
echo

# One dsmrun run of velvetg in $1 with extra options; prints its wall time in ms.
run() {
    local dir=$1; shift
    fresh "$dir"
    local t0; t0=$(now_ms)
    "$DSMRUN" -q -n "$NODES" --local-cache "$CACHE" --stats "$dir.json" "$@" -- \
        velvetg "$dir" "${ARGS[@]}" >/dev/null 2>"$dir.err"
    echo $(( $(now_ms) - t0 ))
}
# velvetg's contigs can depend on the allocator (docs/performance.md): compared with
# native and with the dsmrun run without checkpoints.
same() {
    local n p
    cmp -s "$WORK/native/contigs.fa" "$1/contigs.fa" && n="= native" || n="!= native"
    cmp -s "$WORK/plain/contigs.fa" "$1/contigs.fa" && p="= no-checkpoint run" || p="!= no-checkpoint run"
    echo "$n, $p"
}

log "dsmrun, no checkpoints"
PLAIN_MS=$(run "$WORK/plain")
log "dsmrun, a checkpoint every $EVERY"
rm -rf "$WORK/ck"
CK_MS=$(run "$WORK/ck-run" --checkpoint-dir "$WORK/ck" --checkpoint-every "$EVERY")
C=$WORK/ck-run.json
TAKEN=$(jq '.checkpoints.taken' "$C"); FAILED=$(jq '.checkpoints.failed' "$C")
echo "| run | wall (ms) | contigs | checkpoints (failed) | bytes per checkpoint (first, later mean) | time per checkpoint (ms) | program held (ms) |"
echo "|---|---|---|---|---|---|---|"
echo "| no checkpoints | $PLAIN_MS | $(same "$WORK/plain") | - | - | - | - |"
if [ "$TAKEN" -gt 0 ]; then
    FIRST=$(jq '[.checkpoints.attempts[] | select(.ok)][0].bytes' "$C")
    LATER=$(jq '[.checkpoints.attempts[] | select(.ok)][1:] | if length > 0 then (map(.bytes) | add / length | floor) else "-" end' "$C")
    MS=$(jq '.checkpoints.ms_total / .checkpoints.taken | floor' "$C")
    HELD=$(jq '.checkpoints.paused_ms_total / .checkpoints.taken | floor' "$C")
    echo "| every $EVERY | $CK_MS | $(same "$WORK/ck-run") | $TAKEN ($FAILED) | $FIRST, $LATER | $MS | $HELD |"
    echo
    # Load-independent: what the checkpoints cost in faults and traffic (a checkpoint
    # that emptied the cache would add about a cache's worth of pages read per checkpoint).
    for r in plain ck-run; do
        echo "$r: $(jq -r '.total | "faults read \(.faults_read), write \(.faults_write), write-protect \(.faults_write_protect); pages read from the nodes \(.remote_read_pages), written \(.remote_write_pages)"' "$WORK/$r.json")"
    done
    echo
    echo "Overhead measured: $(( (CK_MS - PLAIN_MS) * 1000 / PLAIN_MS ))‰ of the run without checkpoints for $TAKEN checkpoints."
    PER=$(( (CK_MS - PLAIN_MS) / TAKEN ))
    echo "Derived for one checkpoint every 10 minutes: from the time held, ${HELD} ms / 600000 ms = $(( HELD * 10000 / 600000 ))‱ (hundredths of a percent); from the measured wall-time difference per checkpoint (held time, plus the first write to each page the checkpoint cleaned taking a write-protect fault, plus the load's noise), ${PER} ms / 600000 ms = $(( PER * 10000 / 600000 ))‱."
else
    echo "| every $EVERY | $CK_MS | $(same "$WORK/ck-run") | 0 ($FAILED) | - | - | - |"
    jq -r '.checkpoints.attempts[].error // empty' "$C" | head -3
fi
echo

log "checkpoint, SIGKILL, restart"
rm -rf "$WORK/ck2"; fresh "$WORK/restarted"
"$DSMRUN" -q -n "$NODES" --local-cache "$CACHE" --name ckbench --checkpoint-dir "$WORK/ck2" -- \
    velvetg "$WORK/restarted" "${ARGS[@]}" >/dev/null 2>"$WORK/restarted.err" &
JOB=$!
# Half of the shortest of the runs above: under load the dsmrun runs can be faster than
# the native one was, and a job that ended before its checkpoint has nothing to restart.
SHORTEST_MS=$(printf '%s\n' "$NATIVE_MS" "$PLAIN_MS" "$CK_MS" | sort -n | head -1)
sleep "$(echo "$SHORTEST_MS * $KILL_AFTER / 100000" | bc -l)"
ANSWER=$("$DSMRUN" checkpoint ckbench || true)
echo "checkpoint: $ANSWER"
for c in $(cat "/proc/$JOB/task/$JOB/children" 2>/dev/null); do kill -9 "$c" 2>/dev/null || true; done
kill -9 "$JOB" 2>/dev/null || true; wait "$JOB" 2>/dev/null || true
if [ -d "$WORK/ck2/ckpt-0001" ]; then
    t0=$(now_ms)
    "$DSMRUN" restart -q --stats "$WORK/restarted.json" "$WORK/ck2" >/dev/null 2>>"$WORK/restarted.err" || true
    RESTART_MS=$(( $(now_ms) - t0 ))
    echo "restart: to running $(jq '.checkpoints.restart_to_running_ms' "$WORK/restarted.json") ms, to the end $RESTART_MS ms; contigs $(same "$WORK/restarted"); checkpoint $(du -sm "$WORK/ck2" | cut -f1) MiB"
else
    echo "no checkpoint to restart from: $(tail -2 "$WORK/restarted.err")"
fi
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
