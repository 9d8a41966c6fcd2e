#!/usr/bin/env bash
# Fuzzes the wire decoder, the node's request parser and control calls, the handshake,
# the TCP client's reply decoding and a live node (fuzz/, cargo-fuzz + libFuzzer;
# docs/fuzzing.md), and prints inputs, time and inputs/s per target and in all. Stops at the first crash (libFuzzer saves the input under
# fuzz/artifacts/TARGET/).
#
#   benches/fuzz.sh            the benchmark: 11,000,000 inputs in all (10 to 20 min)
#   benches/fuzz.sh --ci       a short run for CI: about 55 s of fuzzing in all
#
#   DSM_FUZZ_CORPUS=DIR        keep the corpus in DIR/TARGET (default: a fresh temporary
#                              directory, so runs start from the seeds alone)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; .ci/run installs it) and a C++
# compiler (libFuzzer is built from source). cargo-fuzz passes nightly flags; on stable
# Rust, RUSTC_BOOTSTRAP=1 lets it (see docs/fuzzing.md for why that is acceptable here).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

MODE=bench
case "${1:-}" in
  --ci) MODE=ci ;;
  "") ;;
  *) echo "usage: $0 [--ci]" >&2; exit 2 ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 1
fi
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code under test is safe Rust except the node's raw copies into its
# mmap'd region, which AddressSanitizer does not track; debug assertions turn on
# overflow checks, which are what the offset arithmetic needs. See docs/fuzzing.md.
FLAGS=(-O --debug-assertions --sanitizer none)
cargo fuzz build "${FLAGS[@]}"

CORPUS=${DSM_FUZZ_CORPUS:-}
if [ -z "$CORPUS" ]; then
  CORPUS=$(mktemp -d)
  trap 'rm -rf "$CORPUS"' EXIT
fi

# target  benchmark-inputs  ci-seconds  max-input-bytes
TARGETS=(
  "wire      4000000 8  4096"
  "request   4000000 10 16384"
  "control   1500000 7  70000"
  "handshake 1000000 5  512"
  "client    200000  6  8192"
  "node      300000  20 131072"
)
total_runs=0
total_secs=0
printf '%-10s %12s %9s %11s\n' target inputs seconds inputs/s >"$CORPUS/summary"
for t in "${TARGETS[@]}"; do
  read -r name runs ci_secs max_len <<<"$t"
  if [ "$MODE" = ci ]; then limit=(-max_total_time="$ci_secs"); else limit=(-runs="$runs"); fi
  mkdir -p "$CORPUS/$name"
  echo "== fuzz $name (${limit[*]})"
  start=$(date +%s.%N)
  log="$CORPUS/$name.log"
  if ! cargo fuzz run "${FLAGS[@]}" "$name" "$CORPUS/$name" "seeds/$name" -- \
    -dict=wire.dict -max_len="$max_len" -print_final_stats=1 "${limit[@]}" 2>"$log"; then
    # The panic, libFuzzer's verdict and where the input is; not the input itself (the
    # live node's log of each peer it drops is expected here, so filtered out too).
    grep -a -v -e '^dsm-node' -e '^\s*[0-9]*: ' -e '^\s*at ' "$log" | grep -a -v '^\s*\[' |
      cut -c1-300 | tail -40 >&2
    echo "fuzz target $name failed: the input is under fuzz/artifacts/$name/" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  grep -E '^Done|^stat::(number|average)' "$log"
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  awk -v t="$name" -v n="$n" -v a="$start" -v b="$end" \
    'BEGIN { printf "%-10s %12d %9.1f %11.0f\n", t, n, b - a, n / (b - a) }' >>"$CORPUS/summary"
  total_runs=$((total_runs + n))
  total_secs=$(awk -v s="$total_secs" -v a="$start" -v b="$end" 'BEGIN { print s + b - a }')
done
awk -v n="$total_runs" -v s="$total_secs" \
  'BEGIN { printf "%-10s %12d %9.1f %11.0f\n", "all", n, s, n / s }' >>"$CORPUS/summary"
echo "== fuzzing summary (no crash; times include libFuzzer's start and corpus loading)"
cat "$CORPUS/summary"
