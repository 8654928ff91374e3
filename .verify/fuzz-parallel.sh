#!/usr/bin/env bash
# Every fuzz target at once on a many-core machine, from one prebuilt instrumented binary (the
# `any` target of fuzz/, which picks its target from VEETANCE_FUZZ_TARGET). Same limits and the
# same table as .verify/fuzz.sh, which builds and runs the targets one after another.
#
# Build (here, nightly + cargo-fuzz):  (cd fuzz && cargo +nightly fuzz build -s none -a any)
# Run:   .verify/fuzz-parallel.sh fuzz/target/x86_64-unknown-linux-gnu/release/any [target...]
# Env:   FUZZ_RUNS=1000000 FUZZ_SECONDS=1800 FUZZ_TIMEOUT=10 FUZZ_JOBS=<cores>
#        FUZZ_WORK=<dir> (new corpus entries, logs and crash inputs; default fuzz/target/parallel)
# The committed corpus and regressions are read, never written. Exit 1 when a target stopped on
# a finding (its input is in $FUZZ_WORK/artifacts/<target>/).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:?usage: fuzz-parallel.sh <any-binary> [target...]}")
shift
runs=${FUZZ_RUNS:-1000000}
seconds=${FUZZ_SECONDS:-1800}
timeout=${FUZZ_TIMEOUT:-10}
jobs=${FUZZ_JOBS:-$(nproc)}
work=$(realpath -m "${FUZZ_WORK:-fuzz/target/parallel}")

. .verify/fuzz-common.sh

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(all_targets)
fi

run_one() {
  local t=$1
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
  local start=$SECONDS
  VEETANCE_FUZZ_TARGET=$t "$bin" "$work/corpus/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" \
    -runs="$runs" -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 \
    -timeout="$timeout" -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
    >"$work/logs/$t.log" 2>&1
  echo "$? $((SECONDS - start))" >"$work/logs/$t.rc"
}

echo "running ${#targets[@]} targets, $jobs at a time: $runs executions or $seconds s each"
running=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/regressions/$t" 2>/dev/null || true
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
summary_header
for t in "${targets[@]}"; do
  read -r rc secs <"$work/logs/$t.rc"
  [ "$rc" -ne 0 ] && failed=1
  summary_line "$t" "$work/logs/$t.log" "$rc" "$secs"
done
echo "logs: $work/logs/<target>.log; crash inputs: $work/artifacts/<target>/"
exit $failed
