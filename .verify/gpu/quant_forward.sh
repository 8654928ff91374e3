#!/usr/bin/env bash
# On the GPU machine: the klein-4B transformer forward at 1024² (flash + compiled) with the weights
# in bf16, fp8 e4m3 (a ComfyUI scaled-fp8 file, make_fp8.py: FP8 GEMMs through cuBLASLt, and with
# VEETANCE_FP8_GEMM=0 dequantized to bf16 per matmul), GGUF Q8_0 and GGUF Q4_K (the same seeded
# random weights, make_full_size_models.py then quantize_gguf), each a separate process timed by
# `veetance bench` (medians of ITERS forwards after 2 warm-ups), and each velocity's relative
# error against the bf16 one.
# VEETANCE_BEFORE=<binary> adds rows for an older build (candle's quantized matmul).
# Needs .gpu/veetance(.xz), .gpu/quantize_gguf(.xz) and .whl (diffusers, for the weights).
# Usage (device run tool, carry [".gpu", ".whl"]): OUT=$OUT bash .verify/gpu/quant_forward.sh
set -uo pipefail
OUT=${OUT:-/tmp/quant-forward}
M=${MODELS_DIR:-/tmp/models}
ITERS=${ITERS:-10}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
for b in .gpu/*.xz; do [ -x "${b%.xz}" ] || { xz -dkc "$b" > "${b%.xz}" && chmod +x "${b%.xz}"; }; done
BIN=${VEETANCE:-.gpu/veetance}
T=$M/diffusion_models/flux-2-klein-4b
t0=$(date +%s)
[ -f $T.safetensors ] || python3 .verify/gpu/make_full_size_models.py $M 2>&1 | grep -v "kept in float32" | tail -3
echo "weights made in $(( $(date +%s) - t0 )) s"
for q in Q8_0 Q4_K; do
  t0=$(date +%s)
  [ -f $T-$q.gguf ] || .gpu/quantize_gguf flux $T.safetensors $T-$q.gguf $q > "$OUT/quantize_$q.log" 2>&1
  echo "$q: $(du -h $T-$q.gguf | cut -f1), made in $(( $(date +%s) - t0 )) s"
done
[ -f $T-fp8_scaled.safetensors ] || python3 .verify/gpu/make_fp8.py $T.safetensors $T-fp8_scaled.safetensors > "$OUT/make_fp8.log" 2>&1
python3 .verify/gpu/bench_inputs.py "$OUT/inputs.safetensors" --variant 4b > /dev/null || echo "cannot write the inputs; synthetic ones instead"
inputs=(); [ -f "$OUT/inputs.safetensors" ] && inputs=(--inputs "$OUT/inputs.safetensors")
row() { # name, binary, file [env...]
  env "${@:4}" "$2" bench --transformer "$3" --no-generation --attention flash --compiled --warmup 2 \
      --iters "$ITERS" "${inputs[@]}" --dump-velocity "$OUT/v_$1.safetensors" \
      --json "$OUT/$1.json" > "$OUT/$1.log" 2>&1 || echo "$1 failed: $(tail -3 "$OUT/$1.log")"
}
row bf16 "$BIN" $T.safetensors
row fp8_gemm "$BIN" $T-fp8_scaled.safetensors
row fp8_dequant "$BIN" $T-fp8_scaled.safetensors VEETANCE_FP8_GEMM=0
row Q8_0 "$BIN" $T-Q8_0.gguf
row Q4_K "$BIN" $T-Q4_K.gguf
if [ -n "${VEETANCE_BEFORE:-}" ]; then
  row before_Q8_0 "$VEETANCE_BEFORE" $T-Q8_0.gguf
  row before_Q4_K "$VEETANCE_BEFORE" $T-Q4_K.gguf
fi
python3 - "$OUT" <<'PY'
import json, os, sys
from safetensors.torch import load_file
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
base = load("bf16")
vref = load_file(os.path.join(out, "v_bf16.safetensors"))["velocity"].float()
print(f"{'weights':14s} {'forward ms':>11s} {'x bf16':>7s} {'peak GiB':>9s} {'rel err vs bf16':>16s}")
for n in ["bf16", "fp8_gemm", "fp8_dequant", "Q8_0", "Q4_K", "before_Q8_0", "before_Q4_K"]:
    j = load(n)
    if j is None:
        continue
    f = j["forward"]["median_ms"] if "forward" in j else float("nan")
    peak = (j.get("forward", {}).get("peak_bytes") or 0) / 2**30
    v = load_file(os.path.join(out, f"v_{n}.safetensors"))["velocity"].float()
    err = ((v - vref).norm() / vref.norm()).item()
    print(f"{n:14s} {f:11.2f} {f / base['forward']['median_ms']:7.2f} {peak:9.2f} {err:16.2e}")
PY
