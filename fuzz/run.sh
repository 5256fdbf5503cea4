#!/usr/bin/env bash
# Runs fuzz targets one after the other (one fuzzer at a time: each is single-process), each until
# it has made RUNS executions or run SECONDS, under the memory limits of the fuzzing plan (no
# process over 256 MiB resident, no allocation over 256 MiB), at the lowest CPU priority. Logs go
# to fuzz/logs/<target>.log; crashes to fuzz/artifacts/<target>/ (cargo-fuzz's default).
#
#   fuzz/run.sh                      # every target, 10 M executions or 30 min each
#   SECONDS_EACH=120 fuzz/run.sh sse  # one target, two minutes
#   FUZZ_ARGS=-max_len=16384 fuzz/run.sh trace_csv   # more libFuzzer options
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Fails (exit 1) when a
# target crashes; the log names the input.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10000000}
SECONDS_EACH=${SECONDS_EACH:-1800}
TARGET_DIR=${FUZZ_TARGET_DIR:-fuzz/target}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p fuzz/logs
# A small quarantine: AddressSanitizer's default (256 MiB) alone would pass the RSS limit.
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16:detect_leaks=0}
cargo +nightly fuzz build --target-dir "$TARGET_DIR"
status=0
for t in "${targets[@]}"; do
  echo "== $t: up to $RUNS executions or $SECONDS_EACH s"
  if ! nice -n 19 cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$t" -- \
      -runs="$RUNS" -max_total_time="$SECONDS_EACH" -rss_limit_mb=256 -malloc_limit_mb=256 \
      -timeout=30 -print_final_stats=1 ${FUZZ_ARGS:-} >"fuzz/logs/$t.log" 2>&1; then
    echo "!! $t failed: see fuzz/logs/$t.log"
    status=1
  fi
  grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss_mb" "fuzz/logs/$t.log" | tail -3 || true
done
exit $status
