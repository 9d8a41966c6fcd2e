#!/usr/bin/env bash
# The compressed tier on velvetg: dsmrun with and without `[compress] policy = "lz4"`
# (on top of the velvet profile), at 50% and 25% of native peak RSS, over shm and TCP,
# against native velvetg, one run after the other in one invocation. Reports wall-time
# ratios to native, remote fetches and their ratio (with / without), the tier's counters,
# and whether contigs.fa is identical to the native one.
#
# usage: benches/velvet_compress.sh [WORKDIR]     (root; userfaultfd)
# env:   COVERAGE (20: ART reads of E. coli K-12 at this coverage; velvet.sh uses 50),
#        LIMITS ("50 25"), TRANSPORTS ("shm tcp"), CPUS (0: every run on these CPUs,
#        dsmrun with --cpus), NODES (4), SHARE (50: the tier's share of the cache, %),
#        CAP_RATIO (15: runs slower than this times native are stopped)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/dsm-velvet-compress}
COVERAGE=${COVERAGE:-20}; LIMITS=${LIMITS:-"50 25"}; TRANSPORTS=${TRANSPORTS:-"shm tcp"}
CPUS=${CPUS-0}; NODES=${NODES:-4}; SHARE=${SHARE:-50}; CAP_RATIO=${CAP_RATIO:-15}
GENOME=/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz
need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need velvetg velvet; need art_illumina art-nextgen-simulation-tools
[ -f "$GENOME" ] || { echo "missing $GENOME (apt-get install ragout-examples)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (userfaultfd)" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
if [ -n "$CPUS" ]; then PIN=(taskset -c "$CPUS"); DSM_PIN=(--cpus "$CPUS"); else PIN=(); DSM_PIN=(); fi
mkdir -p "$WORK/bin"
cargo build --release --workspace -q
cp target/release/dsmrun target/release/libdsm_preload.so "$WORK/bin/"

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

# The velvet profile, and the same with the compressed tier on.
cp "$ROOT/profiles/velvet.toml" "$WORK/velvet-off.toml"
{ cat "$ROOT/profiles/velvet.toml"; printf '\n[compress]\npolicy = "lz4"\nshare_pct = %s\n' "$SHARE"; } >"$WORK/velvet-lz4.toml"

log "native velvetg"
fresh "$WORK/native"
t0=$(date +%s.%N)
/usr/bin/time -f %M -o "$WORK/native.rss" "${PIN[@]}" velvetg "$WORK/native" "${ARGS[@]}" >/dev/null
NATIVE_S=$(echo "$(date +%s.%N) - $t0" | bc)
PEAK_KIB=$(tail -1 "$WORK/native.rss")
log "native: ${NATIVE_S}s, peak RSS $((PEAK_KIB / 1024)) MiB"
CAP=$(printf '%.0f' "$(echo "$NATIVE_S * $CAP_RATIO" | bc)")

j() { python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['total']; print(t.get(sys.argv[2],0))" "$@"; }
# run TRANSPORT PCT off|lz4: prints "seconds verdict fetched kept hits rejected ratio"
run() {
    local tr=$1 pct=$2 c=$3 d="$WORK/run-$1-$2-$3" st="$WORK/$1-$2-$3.json" rc=0
    local mib=$((PEAK_KIB * pct / 100 / 1024))
    fresh "$d"; rm -f "$st"
    local t0; t0=$(date +%s.%N)
    timeout -s INT "$CAP" "$WORK/bin/dsmrun" -n "$NODES" "${DSM_PIN[@]}" --transport "$tr" \
        --local-cache "${mib}M" --profile "$WORK/velvet-$c.toml" -q \
        --preload-lib "$WORK/bin/libdsm_preload.so" --stats "$st" \
        -- velvetg "$d" "${ARGS[@]}" >/dev/null 2>"$d.err" || rc=$?
    local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
    local v
    if [ "$rc" = 0 ]; then cmp -s "$d/contigs.fa" "$WORK/native/contigs.fa" && v=identical || v=DIFFERENT
    elif [ "$rc" = 124 ] || [ "$rc" = 130 ]; then v="stopped>${CAP}s"
    else v="failed($rc)"; fi
    if [ -f "$st" ]; then
        local kept kb
        kept=$(j "$st" compressed_in_pages); kb=$(j "$st" compressed_in_bytes)
        printf '%.1f %s %s %s %s %s %s\n' "$secs" "$v" "$(j "$st" remote_read_pages)" "$kept" \
            "$(j "$st" compressed_hits)" "$(j "$st" compress_rejected)" \
            "$( [ "$kept" -gt 0 ] && echo "scale=2; $kept * 4096 / $kb" | bc || echo -)"
    else
        printf '%.1f %s - - - - -\n' "$secs" "$v"
    fi
}

echo "velvetg, E. coli K-12 ${COVERAGE}x (ART HiSeq 2500, seed 7): native ${NATIVE_S}s, peak RSS $((PEAK_KIB / 1024)) MiB"
echo "dsmrun -n $NODES ${DSM_PIN[*]} --profile velvet, without and with [compress] policy = \"lz4\" share_pct = $SHARE"
echo
echo "| transport | cache | compression | time (s) | x native | remote fetches | fetches with / without | kept | hits | rejected | ratio | contigs: vs native, lz4 vs off |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for tr in $TRANSPORTS; do
    for pct in $LIMITS; do
        declare -A R=()
        for c in off lz4; do
            log "$tr at $pct%, compression $c"
            R[$c]=$(run "$tr" "$pct" "$c")
            log "  ${R[$c]}"
        done
        off_fetch=$(echo "${R[off]}" | cut -d' ' -f3)
        # velvetg's output depends on its allocator (docs/performance.md): where dsmrun's
        # differs from glibc's native one, the tier must at least not change it.
        same=$(cmp -s "$WORK/run-$tr-$pct-off/contigs.fa" "$WORK/run-$tr-$pct-lz4/contigs.fa" 2>/dev/null && echo "same as off" || echo "DIFFERS from off")
        for c in off lz4; do
            read -r secs v fetch kept hits rej ratio <<<"${R[$c]}"
            rel=-
            if [ "$c" = lz4 ] && [ "$off_fetch" != - ] && [ "$fetch" != - ] && [ "$off_fetch" -gt 0 ]; then
                rel=$(printf '%.2f' "$(echo "$fetch / $off_fetch" | bc -l)")
            fi
            [ "$c" = lz4 ] && v="$v, $same"
            printf '| %s | %s%% | %s | %s | %.2f | %s | %s | %s | %s | %s | %s | %s |\n' "$tr" "$pct" "$c" "$secs" \
                "$(echo "$secs / $NATIVE_S" | bc -l)" "$fetch" "$rel" "$kept" "$hits" "$rej" "$ratio" "$v"
        done
    done
done
