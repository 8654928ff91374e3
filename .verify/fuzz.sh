#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every parser of untrusted input: the targets
# of crates/fuzzing, built from fuzz/ with nightly Rust. Each target runs until it has made
# FUZZ_RUNS executions or FUZZ_SECONDS have passed, whichever comes first, starting from its
# committed seeds (fuzz/corpus/<target>/) and regressions; new corpus entries go to a work folder
# under fuzz/target/ (FUZZ_KEEP=1 merges them, minimized, into fuzz/corpus/). A crash, hang
# (FUZZ_TIMEOUT seconds for one input) or allocation past 2 GiB stops that target and leaves
# the input in fuzz/artifacts/<target>/; the script goes on with the next and exits 1 at the end.
#
# Usage: .verify/fuzz.sh [target...]          (default: every target of fuzz/fuzz_targets/)
# Env:   FUZZ_RUNS=1000000 FUZZ_SECONDS=1800 FUZZ_TIMEOUT=10 FUZZ_KEEP=0
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz --locked` (installed here when
#        missing). Prints one line per target: executions, seconds, executions/s, coverage
#        (libFuzzer's edge `cov` and feature `ft` counts), corpus entries, peak RSS, finding.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${FUZZ_RUNS:-1000000}
seconds=${FUZZ_SECONDS:-1800}
timeout=${FUZZ_TIMEOUT:-10}
keep=${FUZZ_KEEP:-0}

. .verify/fuzz-common.sh

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(all_targets)
fi

# -s none: no sanitizer (the parsers are safe Rust; libFuzzer still catches panics, hangs and
# allocations past -rss_limit_mb); -a: debug assertions, so integer overflow panics.
flags=(-s none -a)
echo "building ${#targets[@]} targets (cargo +nightly fuzz build ${flags[*]})"
(cd fuzz && cargo +nightly fuzz build "${flags[@]}") || exit 1

logs=fuzz/target/logs
mkdir -p "$logs"
failed=0
summary_header
for t in "${targets[@]}"; do
  work=fuzz/target/work-corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/regressions/$t"
  log=$logs/$t.log
  start=$SECONDS
  (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "../$work" "corpus/$t" "regressions/$t" -- \
    -runs="$runs" -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 \
    -timeout="$timeout" -print_final_stats=1 -artifact_prefix="artifacts/$t/") >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  [ $rc -ne 0 ] && failed=1
  summary_line "$t" "$log" "$rc" "$secs" fuzz
  if [ "$keep" = 1 ] && [ $rc -eq 0 ]; then
    (cd fuzz && cargo +nightly fuzz cmin "${flags[@]}" "$t" "../$work" -- -max_len="$(max_len "$t")" \
      >/dev/null 2>&1 && cp -n "../$work"/* "corpus/$t/" 2>/dev/null)
  fi
done
echo "logs: $logs/<target>.log; crash inputs: fuzz/artifacts/<target>/"
exit $failed
