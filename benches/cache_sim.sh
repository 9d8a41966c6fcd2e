#!/usr/bin/env bash
# The cache simulator's long run: SEEDS consecutive seeds from FIRST, OPS operations each,
# against the in-memory effects (dsm_runtime::sim); every step checked. Prints a line per
# seed and the total (ops, seeds, time); exits 1 with the failing seed and step.
#
#   benches/cache_sim.sh                    (16 seeds x 250k ops)
#   SEEDS=64 OPS=500000 FIRST=1000 benches/cache_sim.sh
# Reproduce a failing seed alone:
#   DSM_SIM_SEED=<seed> DSM_SIM_OPS=<step> cargo test --release -p dsm-runtime --test cache_sim
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-16}
OPS=${OPS:-250000}
FIRST=${FIRST:-1}
cargo build --release -p dsm-benches --bin cache_sim
echo "cache_sim: $SEEDS seeds from $FIRST, $OPS ops each, $(nproc) CPUs, $(uname -r)"
target/release/cache_sim --seeds "$SEEDS" --first "$FIRST" --ops-per-seed "$OPS"
