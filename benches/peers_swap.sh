#!/usr/bin/env bash
# dsmrun (defaults: no --profile) against the kernel's two answers to too little memory,
# in one run: swap on zram (benches/kernel_swap.sh) and swap over the network to a memory
# server (an Infiniswap-class setup: nbdkit's memory plugin serving a swap device over
# loopback TCP). velvetg at 75%, 50% and 25% of its native peak RSS, the kernel's runs in
# a memory cgroup (v1) with that limit. Every output is compared with the native one.
#
# The network swap device: where the kernel has the nbd driver, nbd-client attaches
# nbdkit's export as /dev/nbd0. This kernel has none (CONFIG_BLK_DEV_NBD is not set; the
# script says which path it took), so the export is attached through nbdfuse (libnbd:
# the export as a file on FUSE) and a loop device: swap -> loop -> FUSE -> nbdfuse ->
# TCP -> nbdkit's RAM, every page a network round trip on loopback.
#
# Why the kernel's runs used to be OOM-killed, and what this script does about it
# (docs/performance.md, "The kernel's swap (zram and network) against dsmrun"):
# - v1 memcg charge-path OOM: on this kernel (6.18, cgroup v1 memory controller, the v2
#   hierarchy has no controllers and the v1 one holds the session's own groups, so it
#   cannot be moved) a thrashing velvetg's swap-in charge gives up after the kernel's
#   reclaim retries find nothing to reclaim, although swap is 97% free and reclaim
#   driven by a limit write on the same group succeeds at once. The groups are made with
#   oom_kill_disable=1 (the task then waits instead of dying) and a watchdog, woken by
#   the v1 OOM notifier (eventfd), wakes a waiting group by lowering its limit by one
#   page and restoring it: the kernel reclaims, and restoring the limit wakes the
#   waiter, whose fault is retried. Wake-ups are counted and printed.
# - network swap: nbdkit and nbdfuse run outside the limited group (in the script's own)
#   with all their memory locked (an LD_PRELOAD mlockall: DAMON's proactive pageout on
#   this VM would otherwise push their cold pages to the very device they serve), and
#   the loop device uses direct I/O when FUSE allows it, so that swap-outs do not fill
#   the FUSE file's page cache charged to the swapping group.
#
# usage: benches/peers_swap.sh [WORKDIR]    (root; apt-get install nbdkit libnbd-bin
#        nbd-client fuse3 velvet art-nextgen-simulation-tools ragout-examples; gcc for
#        the mlockall preload)
# env:   COVERAGE (20), LIMITS ("75 50 25"), CPUS (empty: no pinning), NODES (4),
#        CAP_RATIO (10: runs slower than this times native are stopped), PORT (10809),
#        KINDS ("netswap zram dsmrun": which columns to run, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-peers}
COVERAGE=${COVERAGE:-20}; LIMITS=${LIMITS:-"75 50 25"}; CPUS=${CPUS-}; NODES=${NODES:-4}
CAP_RATIO=${CAP_RATIO:-10}; PORT=${PORT:-10809}; KINDS=${KINDS:-"netswap zram dsmrun"}
GENOME=/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz
need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need velvetg velvet; need art_illumina art-nextgen-simulation-tools; need nbdkit nbdkit
need nbdfuse libnbd-bin; need zramctl util-linux; need gcc gcc
[ "$(id -u)" = 0 ] || { echo "run as root (cgroups, swap, userfaultfd)" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
if [ -n "$CPUS" ]; then PIN=(taskset -c "$CPUS"); DSM_PIN=(--cpus "$CPUS"); else PIN=(); DSM_PIN=(); fi
mkdir -p "$WORK/bin"
cargo build --release --workspace -q
cp target/release/dsmrun target/release/libdsm_preload.so "$WORK/bin/"
# nbdkit and nbdfuse lock all their memory: a page of theirs swapped out to the device
# they serve could only come back through them.
printf '#include <sys/mman.h>\n__attribute__((constructor)) static void lock_all(void) { mlockall(MCL_CURRENT | MCL_FUTURE); }\n' \
    >"$WORK/mlockall.c"
gcc -shared -fPIC -O2 -o "$WORK/bin/mlockall.so" "$WORK/mlockall.c"
if [ ! -f "$WORK/velveth.done" ]; then
    log "simulating ${COVERAGE}x reads, velveth"
    zcat "$GENOME" >"$WORK/genome.fa"
    art_illumina -ss HS25 -p -l 100 -m 300 -s 30 -rs 7 -f "$COVERAGE" -na -q \
        -i "$WORK/genome.fa" -o "$WORK/reads" >/dev/null
    rm -rf "$WORK/base"
    velveth "$WORK/base" 31 -shortPaired -fastq -separate "$WORK/reads1.fq" "$WORK/reads2.fq" >/dev/null
    touch "$WORK/velveth.done"
fi
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK"/base/{Sequences,Roadmaps,Log} "$1/"; }
ARGS=(-exp_cov auto -ins_length 300)

# --- the network swap device
NBD_DEV=""; NBDKIT_PID=""; FUSE_DIR="$WORK/nbdfuse"; LOOP=""
netswap_on() {
    rm -f "$WORK/nbdkit.pid"
    # In the foreground (-f), so that the mlockall of its constructor is the server's own
    # (locks are not inherited across fork); it writes its pid file once it listens.
    LD_PRELOAD="$WORK/bin/mlockall.so" setsid nbdkit -f -p "$PORT" -i 127.0.0.1 -P "$WORK/nbdkit.pid" \
        memory 4G >"$WORK/nbdkit.log" 2>&1 &
    for _ in $(seq 100); do [ -s "$WORK/nbdkit.pid" ] && break; sleep 0.1; done
    NBDKIT_PID=$(cat "$WORK/nbdkit.pid")
    if modprobe nbd 2>/dev/null && [ -b /dev/nbd0 ]; then
        nbd-client 127.0.0.1 "$PORT" /dev/nbd0 >/dev/null
        NBD_DEV=/dev/nbd0
        NETSWAP_PATH="nbd-client -> /dev/nbd0"
    else
        mkdir -p "$FUSE_DIR"
        LD_PRELOAD="$WORK/bin/mlockall.so" setsid nbdfuse "$FUSE_DIR/swap" "nbd://127.0.0.1:$PORT" \
            >"$WORK/nbdfuse.log" 2>&1 &
        for _ in $(seq 50); do [ -f "$FUSE_DIR/swap" ] && break; sleep 0.1; done
        # Direct I/O: buffered, the loop device's writes would fill the FUSE file's page
        # cache, charged to the swapping group (loop charges its I/O to the issuer's
        # memcg), the very memory the swap-out was meant to free.
        local dio=on
        LOOP=$(losetup -f --show --direct-io=on "$FUSE_DIR/swap" 2>/dev/null) || {
            dio=off; LOOP=$(losetup -f --show "$FUSE_DIR/swap"); }
        NBD_DEV=$LOOP
        NETSWAP_PATH="no nbd driver in this kernel ($(uname -r)): nbdfuse -> $LOOP, direct I/O $dio"
    fi
    mkswap "$NBD_DEV" >/dev/null
    swapon -p 50 "$NBD_DEV"
}
netswap_off() {
    [ -n "$NBD_DEV" ] && { swapoff "$NBD_DEV" 2>/dev/null || true; }
    [ -n "$LOOP" ] && { losetup -d "$LOOP" 2>/dev/null || true; umount "$FUSE_DIR" 2>/dev/null || true; }
    [ "$NBD_DEV" = /dev/nbd0 ] && { nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true; }
    [ -n "$NBDKIT_PID" ] && { kill "$NBDKIT_PID" 2>/dev/null || true; }
    NBD_DEV=""; LOOP=""; NBDKIT_PID=""
}
ZRAM_SET=0
zram_on() {
    grep -q zram /proc/swaps && return 0
    [ "$(cat /sys/block/zram0/disksize)" = 0 ] || { echo "zram0 is in use; not touching it" >&2; exit 1; }
    echo lz4 >/sys/block/zram0/comp_algorithm 2>/dev/null || true
    echo 4G >/sys/block/zram0/disksize
    mkswap /dev/zram0 >/dev/null
    swapon -p 100 /dev/zram0
    ZRAM_SET=1
}
zram_off() {
    [ "$ZRAM_SET" = 1 ] && { swapoff /dev/zram0 || true; echo 1 >/sys/block/zram0/reset || true; }
    ZRAM_SET=0
}
trap 'netswap_off; zram_off' EXIT
if grep -qv '^Filename' /proc/swaps; then
    echo "some swap is on already ($(tail -n +2 /proc/swaps | awk '{print $1}' | tr '\n' ' ')): turn it off first" >&2
    exit 1
fi

log "native velvetg"
fresh "$WORK/native"
t0=$(date +%s.%N)
/usr/bin/time -f %M -o "$WORK/native.rss" "${PIN[@]}" velvetg "$WORK/native" "${ARGS[@]}" >/dev/null
NATIVE_S=$(echo "$(date +%s.%N) - $t0" | bc)
PEAK_KIB=$(tail -1 "$WORK/native.rss")
CAP=$(printf '%.0f' "$(echo "$NATIVE_S * $CAP_RATIO" | bc)")
log "native: ${NATIVE_S}s, peak RSS $((PEAK_KIB / 1024)) MiB"

# run KIND PCT: prints "seconds verdict"
run() {
    local kind=$1 pct=$2 d="$WORK/run-$1-$2" rc=0 mib=$((PEAK_KIB * $2 / 100 / 1024)) WAKES=-
    fresh "$d"
    local t0; t0=$(date +%s.%N)
    case $kind in
    dsmrun)
        timeout -s INT "$CAP" "$WORK/bin/dsmrun" -n "$NODES" "${DSM_PIN[@]}" --local-cache "${mib}M" -q \
            --preload-lib "$WORK/bin/libdsm_preload.so" --stats "$WORK/dsmrun-$pct.json" \
            -- velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" || rc=$? ;;
    zram|netswap)
        local cg=/sys/fs/cgroup/memory/dsm-peers-$kind-$pct lim=$((mib << 20)) wakes=0 pid
        mkdir -p "$cg"; echo "$lim" >"$cg/memory.limit_in_bytes"
        echo 1 >"$cg/memory.oom_control"
        timeout -s KILL "$CAP" bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$cg" \
            "${PIN[@]}" velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" &
        pid=$!
        echo 0 >"$d.wakes"
        python3 "$ROOT/benches/oomwake.py" "$cg" "$lim" "$d.wakes" &
        local dog=$!
        wait "$pid" || rc=$?
        kill "$dog" 2>/dev/null || true; wait "$dog" 2>/dev/null || true
        wakes=$(cat "$d.wakes")
        echo "$kind $pct: $wakes wake-ups; $(grep -E '^(pgmajfault|swap|rss) ' "$cg/memory.stat" | tr '\n' ' ')" \
            >>"$WORK/cgroups.log"
        WAKES="$wakes"
        # A killed task may still be exiting: the group goes once it is empty.
        for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done ;;
    esac
    local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
    local v
    if [ "$rc" = 0 ]; then cmp -s "$d/contigs.fa" "$WORK/native/contigs.fa" && v=identical || v=DIFFERENT
    elif [ "$rc" = 124 ] || [ "$rc" = 130 ] || [ "$rc" = 137 ]; then v="stopped>${CAP}s"
    else v="failed($rc)"; fi
    printf '%.1f %s %s\n' "$secs" "$v" "${WAKES:--}"
}

declare -A T=() V=() W=()
runs() { for pct in $LIMITS; do
    read -r T[$1-$pct] V[$1-$pct] W[$1-$pct] < <(run "$1" "$pct")
    log "$1 $pct%: ${T[$1-$pct]}s ${V[$1-$pct]}, wake-ups ${W[$1-$pct]}, load $(cut -d' ' -f1-3 /proc/loadavg)"
done; }
NETSWAP_PATH="not run"
for kind in $KINDS; do
    case $kind in
    netswap) netswap_on; log "network swap: $NETSWAP_PATH"; runs netswap; netswap_off ;;
    zram) zram_on; runs zram; zram_off ;;
    dsmrun) runs dsmrun ;;
    *) echo "unknown kind $kind" >&2; exit 1 ;;
    esac
done

x() { [ -n "$1" ] && [ -n "$2" ] && printf '%.2f' "$(echo "$1 / $2" | bc -l)" || printf -- -; }
echo "velvetg, E. coli K-12 ${COVERAGE}x: native ${NATIVE_S}s, peak RSS $((PEAK_KIB / 1024)) MiB; CPUs ${CPUS:-any}"
echo "network swap: nbdkit memory 4G over loopback TCP ($NETSWAP_PATH); zram: lz4, 4 GiB; dsmrun -n $NODES ${DSM_PIN[*]}, no --profile"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| cache | dsmrun (s) | zram swap (s) | network swap (s) | dsmrun x native | zram x native | network swap x native | dsmrun / zram | dsmrun / network swap | outputs (dsmrun, zram, network) | OOM wake-ups (zram, network) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
for pct in $LIMITS; do
    d=${T[dsmrun-$pct]:-} z=${T[zram-$pct]:-} n=${T[netswap-$pct]:-}
    echo "| $pct% | $d | $z | $n | $(x "$d" "$NATIVE_S") | $(x "$z" "$NATIVE_S") | $(x "$n" "$NATIVE_S") | $(x "$d" "$z") | $(x "$d" "$n") | ${V[dsmrun-$pct]:--}, ${V[zram-$pct]:--}, ${V[netswap-$pct]:--} | ${W[zram-$pct]:--}, ${W[netswap-$pct]:--} |"
done
