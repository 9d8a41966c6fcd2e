#!/bin/bash
# dsmrun against the kernel's swap with the machine's drift taken out: the two run at the
# same time, one on each CPU, and then again with the CPUs swapped; a pair of native runs
# (one per CPU, also at the same time) gives each CPU's baseline in the same window. On
# the development VM native velvetg drifts 10-25% within minutes, far more than the
# difference being measured, while two runs taken side by side see the same host.
#
# Each round is three pairs: dsmrun on CPU_A with zram on CPU_B; zram on CPU_A with
# dsmrun on CPU_B; native on both. dsmrun is confined to its CPU with --cpus (its nodes
# too); zram's velvetg with taskset inside a memory cgroup at the same limit. The
# dsmrun/zram ratio of a round is the geometric mean of its two pairs, so a faster CPU
# favours neither.
#
# Uses the data set benches/velvet.sh built and the binaries it copied (WORK/base,
# WORK/bin). Usage (as root): benches/velvet_side_by_side.sh [WORK]
#   env: PCT (75), ROUNDS (2), PROFILE (velvet), NODES (4), CPU_A (0), CPU_B (1)
set -euo pipefail
WORK=${1:-/tmp/dsm-velvet-bench}
PCT=${PCT:-75}; ROUNDS=${ROUNDS:-2}; PROFILE=${PROFILE:-velvet}; NODES=${NODES:-4}
CPU_A=${CPU_A:-0}; CPU_B=${CPU_B:-1}
ARGS=(-exp_cov auto -ins_length 300)
[ -x "$WORK/bin/dsmrun" ] && [ -d "$WORK/base" ] || { echo "run benches/velvet.sh first ($WORK/bin, $WORK/base)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (memory cgroups, zram, userfaultfd)" >&2; exit 1; }
fresh() { rm -rf "$1"; mkdir -p "$1"; cp "$WORK"/base/{Sequences,Roadmaps,Log} "$1/"; }

PEAK_KIB=${PEAK_KIB:-$(cat "$WORK/peak_kib" 2>/dev/null || echo 0)}
if [ "$PEAK_KIB" = 0 ]; then
    echo "measuring native peak RSS" >&2
    fresh "$WORK/pp"
    PEAK_KIB=$(/usr/bin/time -f %M -o /dev/stdout taskset -c "$CPU_A" velvetg "$WORK/pp" "${ARGS[@]}" 2>/dev/null | tail -1)
    echo "$PEAK_KIB" >"$WORK/peak_kib"
fi
[ -f "$WORK/native/contigs.fa" ] || { fresh "$WORK/native"; taskset -c "$CPU_A" velvetg "$WORK/native" "${ARGS[@]}" >/dev/null; }
LIMIT_MIB=$((PEAK_KIB * PCT / 100 / 1024))

# shellcheck source=benches/kernel_swap.sh
. "$(dirname "$0")/kernel_swap.sh"
zram_swap_on
CG=$(swap_cgroup dsm-side-by-side "$LIMIT_MIB")

# run KIND CPU TAG: one velvetg run; writes "seconds verdict [major faults (swap-ins) of a
# zram run]" to WORK/TAG.res
run() {
    local kind=$1 cpu=$2 tag=$3 d="$WORK/sbs-$3" t0 t1 rc=0 v oom0 maj=""
    fresh "$d"
    t0=$(date +%s.%N)
    case $kind in
    native) taskset -c "$cpu" velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" || rc=$? ;;
    dsmrun) "$WORK/bin/dsmrun" -n "$NODES" --cpus "$cpu" --local-cache "${LIMIT_MIB}M" --profile "$PROFILE" \
                --preload-lib "$WORK/bin/libdsm_preload.so" --stats "$WORK/$tag.json" \
                -- velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" || rc=$? ;;
    zram)   oom0=$(awk '/^oom_kill /{print $2}' "$CG/memory.oom_control")
            local maj0; maj0=$(awk '/^total_pgmajfault /{print $2}' "$CG/memory.stat")
            bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$CG" taskset -c "$cpu" \
                velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" || rc=$?
            maj=$(( $(awk '/^total_pgmajfault /{print $2}' "$CG/memory.stat") - maj0 ))
            [ "$(awk '/^oom_kill /{print $2}' "$CG/memory.oom_control")" = "$oom0" ] || rc=oom ;;
    esac
    t1=$(date +%s.%N)
    if [ "$rc" = 0 ]; then cmp -s "$d/contigs.fa" "$WORK/native/contigs.fa" && v=identical || v=DIFFERENT
    elif [ "$rc" = oom ]; then v=OOM-killed
    else v="failed($rc)"; fi
    printf '%.1f %s %s\n' "$(echo "$t1 - $t0" | bc)" "$v" "$maj" >"$WORK/$tag.res"
}
# pair KIND_A KIND_B TAG: KIND_A on CPU_A and KIND_B on CPU_B, at the same time
pair() {
    run "$1" "$CPU_A" "$3-a" & local a=$!
    run "$2" "$CPU_B" "$3-b" & local b=$!
    wait "$a" "$b"
    echo "[$(date +%T)] $3: $1 on $CPU_A: $(cat "$WORK/$3-a.res"); $2 on $CPU_B: $(cat "$WORK/$3-b.res")" >&2
}
secs_of() { cut -d' ' -f1 "$WORK/$1.res"; }
verdict_of() { cut -d' ' -f2 "$WORK/$1.res"; }
ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }
gmean() { printf '%.3f' "$(echo "sqrt($1 * $2)" | bc -l)"; }

echo "velvetg at $PCT% of native peak RSS ($((PEAK_KIB / 1024)) MiB) = $LIMIT_MIB MiB; dsmrun -n $NODES --profile $PROFILE; CPUs $CPU_A and $CPU_B; $ROUNDS rounds"
echo
echo "| round | dsmrun on $CPU_A / zram on $CPU_B (s) | zram on $CPU_A / dsmrun on $CPU_B (s) | native on $CPU_A / $CPU_B (s) | dsmrun / zram | dsmrun / native | zram / native | outputs |"
echo "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"
for r in $(seq 1 "$ROUNDS"); do
    pair dsmrun zram "r$r-dz"
    pair zram dsmrun "r$r-zd"
    pair native native "r$r-nn"
    d1=$(secs_of "r$r-dz-a"); z1=$(secs_of "r$r-dz-b"); z2=$(secs_of "r$r-zd-a"); d2=$(secs_of "r$r-zd-b")
    n1=$(secs_of "r$r-nn-a"); n2=$(secs_of "r$r-nn-b")
    verdicts="$(verdict_of "r$r-dz-a") $(verdict_of "r$r-dz-b") $(verdict_of "r$r-zd-a") $(verdict_of "r$r-zd-b")"
    # Per CPU: dsmrun and zram against that CPU's native run of the same round.
    dn=$(gmean "$(ratio "$d1" "$n1")" "$(ratio "$d2" "$n2")")
    zn=$(gmean "$(ratio "$z2" "$n1")" "$(ratio "$z1" "$n2")")
    dz=$(gmean "$(ratio "$d1" "$z1")" "$(ratio "$d2" "$z2")")
    # A killed run has no time to compare. (DIFFERENT output is shown, not hidden: velvetg's
    # output depends on its allocator on some data sets; docs/performance.md.)
    case $verdicts in *OOM*|*failed*) dz="- (see outputs)";; esac
    swapins="$(cut -d' ' -f3 "$WORK/r$r-dz-b.res") + $(cut -d' ' -f3 "$WORK/r$r-zd-a.res")"
    echo "| $r | $d1 / $z1 | $z2 / $d2 | $n1 / $n2 | $dz | $dn | $zn | dsmrun: $(verdict_of "r$r-dz-a"), $(verdict_of "r$r-zd-b"); zram: $(verdict_of "r$r-dz-b"), $(verdict_of "r$r-zd-a"), $swapins major faults |"
done
echo
echo "dsmrun's statistics: $WORK/r*-dz-a.json (on CPU $CPU_A) and $WORK/r*-zd-b.json (on CPU $CPU_B)"

