#!/usr/bin/env bash
# Restart time against heap size, side by side in one run: for each heap size, a program
# fills its heap (every byte written), waits; it is checkpointed, killed with SIGKILL
# (dsmrun, program and nodes), and `dsmrun restart` brings it back: the time from the
# restart's start to the program running again (`restart_to_running_ms` in --stats), to
# the program's first result (it then reads one word of 1000 pages spread over its heap),
# and to every node having restored all its pages (the program waits for that before it
# exits), with each node's own line on how its lazy restore went (pages restored at
# start, on demand and in the background, and how long it took).
#
# usage: benches/restart_lazy.sh [WORKDIR]    (needs userfaultfd)
# env:   SIZES_MIB ("64 2048"), NODES (2), CACHE (64M), KEEP (set: keep the checkpoints),
#        BIN_DIR (take dsmrun and libdsm_preload.so from there instead of building: to
#        measure another build, e.g. one from before lazy restore, whose nodes print no
#        "checkpoint restored" line: their restore is over when they report ready)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-restart-lazy-bench}
SIZES_MIB=${SIZES_MIB:-64 2048}
NODES=${NODES:-2}
CACHE=${CACHE:-64M}
mkdir -p "$WORK"
export DSM_JOBS_DIR=$WORK/jobs
log() { echo "[$(date +%T)] $*" >&2; }
command -v jq >/dev/null || { echo "missing jq (apt-get install jq)" >&2; exit 1; }
command -v cc >/dev/null || { echo "missing cc (apt-get install gcc)" >&2; exit 1; }
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -p dsm-runtime -p dsm-preload -q
    BIN_DIR=$ROOT/target/release
fi
mkdir -p "$WORK/bin"
cp "$BIN_DIR/dsmrun" "$BIN_DIR/libdsm_preload.so" "$WORK/bin/"
DSMRUN=$WORK/bin/dsmrun
now_ms() { date +%s%3N; }

# fillwait MIB GO END: writes every byte of MIB MiB, says "filled" on stderr, waits until
# the file GO exists, then reads one word of 1000 pages spread over the heap, prints
# their sum and the heap's size, and waits until the file END exists.
cat > "$WORK/fillwait.c" <<'EOF'
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t bytes = strtoull(argv[1], 0, 10) << 20;
    uint64_t *a = malloc(bytes);
    if (!a) { perror("malloc"); return 2; }
    for (size_t i = 0; i < bytes / 8; i++) a[i] = i * 0x9E3779B97F4A7C15ull | 1;
    fprintf(stderr, "filled\n");
    while (access(argv[2], F_OK) != 0) usleep(10000);
    uint64_t sum = 0, pages = bytes / 4096;
    for (uint64_t k = 0; k < 1000; k++) sum += a[(k * pages / 1000) * 512];
    printf("%zu MiB sum %llu\n", bytes >> 20, (unsigned long long)sum);
    fflush(stdout);
    while (access(argv[3], F_OK) != 0) usleep(10000);
    return 0;
}
EOF
cc -O2 -o "$WORK/fillwait" "$WORK/fillwait.c"

echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg); $NODES nodes, local cache $CACHE, $(nproc) CPUs"
echo
echo "| heap | checkpoint (MiB on disk) | restart to running (ms) | to first result (ms) | to every page restored (ms) | per node: pages (at start+on demand, in background) in ms |"
echo "|---|---:|---:|---:|---:|---|"
for MIB in $SIZES_MIB; do
    D=$WORK/h$MIB
    rm -rf "$D"; mkdir -p "$D"
    log "$MIB MiB: filling"
    "$DSMRUN" -q -n "$NODES" --local-cache "$CACHE" --name "lazy$MIB" --checkpoint-dir "$D/ck" -- \
        "$WORK/fillwait" "$MIB" "$D/go" "$D/end" >"$D/out1" 2>"$D/err1" &
    JOB=$!
    until grep -q filled "$D/err1" 2>/dev/null; do
        kill -0 "$JOB" 2>/dev/null || { echo "the job ended: $(tail -3 "$D/err1")" >&2; exit 1; }
        sleep 0.2
    done
    log "$MIB MiB: checkpoint"
    "$DSMRUN" checkpoint "lazy$MIB" >"$D/ckpt.txt"
    for c in $(cat "/proc/$JOB/task/$JOB/children" 2>/dev/null); do kill -9 "$c" 2>/dev/null || true; done
    kill -9 "$JOB" 2>/dev/null || true; wait "$JOB" 2>/dev/null || true
    sync
    touch "$D/go"
    log "$MIB MiB: restart"
    t0=$(now_ms)
    "$DSMRUN" restart -q --stats "$D/restart.json" "$D/ck" >"$D/out2" 2>"$D/err2" &
    R=$!
    until [ -s "$D/out2" ]; do kill -0 "$R" 2>/dev/null || break; sleep 0.01; done
    FIRST_MS=$(( $(now_ms) - t0 ))
    if grep -qa "checkpoint restored" "$WORK/bin/dsmrun"; then
        until [ "$(grep -c 'checkpoint restored' "$D/err2")" -ge "$NODES" ]; do
            kill -0 "$R" 2>/dev/null || break; sleep 0.02
        done
    fi
    ALL_MS=$(( $(now_ms) - t0 ))
    touch "$D/end"
    wait "$R" || { echo "restart failed: $(tail -3 "$D/err2")" >&2; exit 1; }
    RUNNING=$(jq '.checkpoints.restart_to_running_ms' "$D/restart.json")
    NODELINES=$(grep -o 'checkpoint restored: .*' "$D/err2" | sed 's/checkpoint restored: //; s/ pages (/ (/; s/ at start, /+/; s/ on demand, /, /; s/ in background) in/) in/' | paste -sd';' || true)
    cat "$D/out2" >&2
    echo "| $MIB MiB | $(du -sm "$D/ck" | cut -f1) | $RUNNING | $FIRST_MS | $ALL_MS | ${NODELINES:-none} |"
    [ -n "${KEEP:-}" ] || rm -rf "$D/ck"
done
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
