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

echo; echo "== epi results (SQLite database) =="
rm -f "$OUT/results.db"
"$EPI" results log --db "$OUT/results.db" --tags baseline,example "$OUT/epi_001.json"
"$EPI" results log --db "$OUT/results.db" --tags expert-pruning examples/data/expert-pruning/*.json
"$EPI" results best --db "$OUT/results.db" --model qwen3-30b-a3b

echo; echo "== the figures =="
"$EPI" timeline --trace "$SUB/power_trace_001.csv" --output "$OUT/power_timeline.png"
"$EPI" bars --results-dir examples/data/expert-pruning --sort-by epi --output "$OUT/epi_bars.png"
"$EPI" curve --results-dir examples/data/expert-pruning --x-param experts_dropped --output "$OUT/surgery_curve.png"
"$EPI" pareto --results-dir examples/data/expert-pruning \
  --title "Expert Pruning: Accuracy vs Energy Cost" --output "$OUT/pareto.png"
echo; echo "done: results in $OUT/ (the Pareto figure is $OUT/pareto.png)"
