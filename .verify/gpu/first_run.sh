#!/usr/bin/env bash
# On the GPU machine: the first transformer forward of a fresh process, as on a fresh machine.
# Each row but the last gets an empty driver compute cache of its own (CUDA_CACHE_PATH), so the
# driver JIT-compiles every PTX module it loads, as on a machine that never ran CUDA code.
# Seeded random klein-4B weights (no files), 1024², bf16, flash + compiled; `--warmup 0 --iters 1`
# makes the one timed forward the process's first. Rows:
#   before:   VEETANCE_BEFORE (a binary whose kernels ship as PTX), if given
#   fresh:    this build (our kernels as cubins; candle's PTX modules JIT-compile at first use)
#   cached:   this build again, with the compute cache the `fresh` row filled (a second process)
# Usage (device run tool, carry [".gpu"]): OUT=$OUT [VEETANCE_BEFORE=.gpu/veetance-before] bash .verify/gpu/first_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/first-run}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
for b in .gpu/*.xz; do [ -x "${b%.xz}" ] || { xz -dkc "$b" > "${b%.xz}" && chmod +x "${b%.xz}"; }; done
BIN=${VEETANCE:-.gpu/veetance}
run() { # name, binary, env...
  local name=$1 bin=$2; shift 2
  local t0=$(date +%s.%N)
  env "$@" "$bin" bench --model klein-4b --no-generation --attention flash --compiled \
      --warmup 0 --iters 1 > "$OUT/$name.log" 2>&1
  local status=$? t1=$(date +%s.%N)
  local load=$(grep -o 'transformer [0-9]* ms' "$OUT/$name.log" | grep -o '[0-9]*')
  local fwd=$(grep -o 'median [0-9.]* ms' "$OUT/$name.log" | grep -o '[0-9.]*')
  printf '%-8s exit %s  process %6.1f s  load %6s ms  first forward %8s ms\n' "$name" "$status" \
      "$(python3 -c "print($t1-$t0)")" "$load" "$fwd" | tee -a "$OUT/table.txt"
}
: > "$OUT/table.txt"
rm -rf "$OUT"/cache-*
if [ -n "${VEETANCE_BEFORE:-}" ]; then run before "$VEETANCE_BEFORE" CUDA_CACHE_PATH="$OUT/cache-before"; fi
run fresh "$BIN" CUDA_CACHE_PATH="$OUT/cache-fresh"
run cached "$BIN" CUDA_CACHE_PATH="$OUT/cache-fresh"
du -sh "$OUT"/cache-* | tee -a "$OUT/table.txt"
rm -rf "$OUT"/cache-*
