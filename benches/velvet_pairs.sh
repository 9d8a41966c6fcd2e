#!/bin/bash
# Interleaved repeats at one limit: native, dsmrun and zram runs of velvetg, ROUNDS times,
# in a rotating order, so that the machine's drift (10-25% within minutes on the
# development VM) hits every kind of run alike. Uses the data set benches/velvet.sh
# built (run it once first) and the binaries it copied to WORK/bin.
# Usage (as root): benches/velvet_pairs.sh [WORK]   env: PCT (75), ROUNDS (3), CPUS (0),
#        PROFILE (velvet), NODES (4)
set -euo pipefail
WORK=${1:-/tmp/dsm-velvet-bench}
PCT=${PCT:-75}; ROUNDS=${ROUNDS:-3}; CPUS=${CPUS:-0}; PROFILE=${PROFILE:-velvet}; NODES=${NODES:-4}
ARGS=(-exp_cov auto -ins_length 300)
[ -x "$WORK/bin/dsmrun" ] && [ -d "$WORK/base" ] || { echo "run benches/velvet.sh first ($WORK/bin, $WORK/base)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (memory cgroups, zram, userfaultfd)" >&2; exit 1; }
PEAK_KIB=${PEAK_KIB:-$(cat "$WORK/peak_kib" 2>/dev/null || echo 0)}
if [ "$PEAK_KIB" = 0 ]; then
    echo "measuring native peak RSS" >&2
    rm -rf "$WORK/pp"; mkdir -p "$WORK/pp"; cp "$WORK"/base/{Sequences,Roadmaps,Log} "$WORK/pp/"
    PEAK_KIB=$(/usr/bin/time -f %M -o /dev/stdout taskset -c "$CPUS" velvetg "$WORK/pp" "${ARGS[@]}" 2>/dev/null | tail -1)
    echo "$PEAK_KIB" >"$WORK/peak_kib"
fi
LIMIT_MIB=$((PEAK_KIB * PCT / 100 / 1024))
# shellcheck source=benches/kernel_swap.sh
. "$(dirname "$0")/kernel_swap.sh"
zram_swap_on
CG=$(swap_cgroup dsm-velvet-pairs "$LIMIT_MIB")
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK"/base/{Sequences,Roadmaps,Log} "$1/"; }
secs() { local t0 t1 rc=0; t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/pairs.err" || rc=$?; t1=$(date +%s.%N); printf '%.1f %s\n' "$(echo "$t1 - $t0" | bc)" "$rc"; }
run() { # kind -> "seconds verdict"
    local d="$WORK/pair-$1" s rc oom0 v
    fresh "$d"
    case $1 in
    native) read -r s rc < <(secs taskset -c "$CPUS" velvetg "$d" "${ARGS[@]}") ;;
    dsmrun) read -r s rc < <(secs "$WORK/bin/dsmrun" -n "$NODES" --cpus "$CPUS" --local-cache "${LIMIT_MIB}M" \
                --profile "$PROFILE" --preload-lib "$WORK/bin/libdsm_preload.so" -- velvetg "$d" "${ARGS[@]}") ;;
    zram)   oom0=$(awk '/^oom_kill /{print $2}' "$CG/memory.oom_control")
            read -r s rc < <(secs bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$CG" taskset -c "$CPUS" velvetg "$d" "${ARGS[@]}")
            [ "$(awk '/^oom_kill /{print $2}' "$CG/memory.oom_control")" = "$oom0" ] || rc=oom ;;
    esac
    if [ "$rc" = 0 ]; then cmp -s "$d/contigs.fa" "$WORK/native/contigs.fa" && v=identical || v=DIFFERENT
    elif [ "$rc" = oom ]; then v=OOM-killed
    else v="failed($rc)"; fi
    echo "$s $v"
}
echo "velvetg at $PCT% of native peak RSS ($((PEAK_KIB / 1024)) MiB) = $LIMIT_MIB MiB, CPUs $CPUS, $ROUNDS rounds, profile $PROFILE"
echo "| round | order | native (s) | dsmrun (s) | zram (s) | dsmrun / native | zram / native |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
orders=("native dsmrun zram" "dsmrun zram native" "zram native dsmrun")
for r in $(seq 1 "$ROUNDS"); do
    order=${orders[$(((r - 1) % 3))]}
    declare -A res=()
    for k in $order; do res[$k]=$(run "$k"); echo "[$(date +%T)] round $r $k: ${res[$k]}" >&2; done
    n=${res[native]%% *}; d=${res[dsmrun]%% *}; z=${res[zram]%% *}
    echo "| $r | $order | ${res[native]} | ${res[dsmrun]} | ${res[zram]} | $(printf '%.2f' "$(echo "$d / $n" | bc -l)") | $(printf '%.2f' "$(echo "$z / $n" | bc -l)") |"
done
