#!/usr/bin/env bash
# On the GPU machine: the first image of a fresh process, as on a fresh machine (issue 18's
# "first image, load time apart"). Seeded random klein-4B weights with a random text encoder and
# VAE (no files), 1024², 4 steps, bf16, flash + compiled, cuDNN loaded (PyTorch's).
# `--warmup 0 --iters 1 --gen-iters 1`: the process runs one transformer forward (its first: the
# transformer's modules load and JIT there) and then one whole generation with no warm-up (the
# text encoder's and the VAE's first use: their modules, cuDNN's plans, the fused engines'
# compilation). Rows:
#   fresh:        an empty driver compute cache (CUDA_CACHE_PATH), as on a machine that never ran CUDA
#   cached:       a second process with the cache `fresh` filled
#   fresh-nofuse: an empty cache, VEETANCE_CUDNN_FUSE=0 (the VAE's epilogue unfused)
# Usage (device run tool, carry [".gpu"]): OUT=$OUT bash .verify/gpu/first_image.sh
set -uo pipefail
OUT=${OUT:-/tmp/first-image}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export VEETANCE_CUDNN=${CUDNN:-$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))')}
BIN=${VEETANCE:-.gpu/veetance}
[ -x "$BIN" ] || { xz -dkc "$BIN.xz" > "$BIN" && chmod +x "$BIN"; } || exit 1
run() { # name, env...
  local name=$1; shift
  local t0=$(date +%s.%N)
  env "$@" "$BIN" bench --model klein-4b --attention flash --compiled --steps 4 \
      --warmup 0 --iters 1 --gen-iters 1 > "$OUT/$name.log" 2>&1
  local status=$? t1=$(date +%s.%N)
  local load=$(grep -o '^loaded: .*' "$OUT/$name.log")
  local fwd=$(grep -o 'median [0-9.]* ms' "$OUT/$name.log" | head -1 | grep -o '[0-9.]*')
  local gen=$(grep -o '^generation .*' "$OUT/$name.log" | sed 's/ (.*TFLOP)//')
  printf '%-13s exit %s  process %5.1f s  first forward %8s ms | %s | %s\n' "$name" "$status" \
      "$($PY -c "print($t1-$t0)")" "$fwd" "$load" "$gen" | tee -a "$OUT/table.txt"
}
: > "$OUT/table.txt"
rm -rf "$OUT"/cache-*
run fresh CUDA_CACHE_PATH="$OUT/cache-fresh"
run cached CUDA_CACHE_PATH="$OUT/cache-fresh"
run fresh-nofuse CUDA_CACHE_PATH="$OUT/cache-nofuse" VEETANCE_CUDNN_FUSE=0
du -sh "$OUT"/cache-* | tee -a "$OUT/table.txt"
rm -rf "$OUT"/cache-*
