#!/usr/bin/env bash
# The main job end to end on a fresh machine: build `epi`, compute EPI from the bundled 4-node
# submission, validate it, export the community CSV, log results to a database, and draw the
# Pareto figure of the bundled expert-pruning sweep. Outputs go to ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"

echo "== building epi (release) =="
cargo build --release --locked -p epi-cli --bin epi
EPI=${CARGO_TARGET_DIR:-target}/release/epi

echo; echo "== plugins =="
"$EPI" list plugins

SUB=examples/data/submission
echo; echo "== epi calculate =="
"$EPI" calculate --trace "$SUB/power_trace_001.csv" --benchmark "$SUB/benchmark_001.json" \
  --output "$OUT/epi_001.json"

echo; echo "== epi validate =="
"$EPI" validate --submission "$SUB"

echo; echo "== epi export =="
"$EPI" export --results-dir examples/data --output "$OUT/community.csv" --contributor "$(whoami)"
