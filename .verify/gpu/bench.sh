#!/usr/bin/env bash
# veetance bench vs diffusers in one run: FLUX.2 klein transformer forward (eager and torch.compile
# against each of our attention/compile variants, on identical inputs and weights, outputs
# checked: rel err <= 2e-2), and a whole warm 4-step generation (encode + steps + VAE decode).
#
#   bash .verify/gpu/bench.sh [4b|9b|tiny]
#
# 4b / 9b: on the GPU machine; needs .gpu/veetance(.xz) (the CUDA build) and .whl (diffusers wheels)
# carried; makes the full-size random weights in $MODELS_DIR (/tmp/models) with
# make_full_size_models.py when absent (shared with golden-4b.sh; 9b adds its two files).
# tiny: on a CPU, small shapes, in f32, to test this script and its helpers (binary: $VEETANCE or
# target/{release,debug}/veetance; python: $PYTHON).
#
# Environment: BENCH_VARIANTS  our variants, "attention[+compiled][@weights]" each (default
#                              "plain chunked:1024"; attention as `veetance bench --attention` takes
#                              it; weights: fp8 (a ComfyUI scaled-fp8 file made by make_fp8.py; FP8
#                              GEMMs on Hopper), Q8_0 or Q4_K (GGUF, made by .gpu/quantize_gguf);
#                              default the bf16 file; a trailing "-ours": without cuDNN, see
#                              VEETANCE_CUDNN in docs/ARCHITECTURE.md)
#              SIZE (1024; tiny 64), ITERS (10; tiny 2), WARMUP (2; tiny 1), GEN_ITERS (3; tiny 1),
#              DIFFUSERS_COMPILE (1; tiny 0), OUT (/tmp/bench-out), MODELS_DIR, TOL (2e-2)
# Full logs, JSON and velocities under $OUT; the tables come last.
set -uo pipefail
VARIANT=${1:-4b}
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
VARIANTS=${BENCH_VARIANTS:-plain chunked:1024}
case "$VARIANT" in
  4b|9b)
    DEVICE=cuda; DTYPE=bf16; SIZE=${SIZE:-1024}; ITERS=${ITERS:-10}; WARMUP=${WARMUP:-2}; GEN_ITERS=${GEN_ITERS:-3}
    DIFFUSERS_COMPILE=${DIFFUSERS_COMPILE:-1}; MODELS=${MODELS_DIR:-/tmp/models}; PY=${PYTHON:-python3}
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
    [ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; } || exit 1
    BIN=${VEETANCE:-.gpu/veetance}
    ;;
  tiny)
    # f32: candle's CPU backend has no bf16 convolutions (the VAE); both sides run f32 here.
    DEVICE=cpu; DTYPE=f32; SIZE=${SIZE:-64}; ITERS=${ITERS:-2}; WARMUP=${WARMUP:-1}; GEN_ITERS=${GEN_ITERS:-1}
    DIFFUSERS_COMPILE=${DIFFUSERS_COMPILE:-0}; MODELS=${MODELS_DIR:-/tmp/bench-tiny-models}; PY=${PYTHON:-python3}
    BIN=${VEETANCE:-$( [ -x target/release/veetance ] && echo target/release/veetance || echo target/debug/veetance)}
    ;;
  *) echo "usage: bench.sh [4b|9b|tiny]" >&2; exit 2 ;;
esac
HERE=.verify/gpu
have_smi() { command -v nvidia-smi >/dev/null 2>&1; }
smi_start() { if have_smi; then nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$OUT/smi_$1.txt" 2>/dev/null & SMI=$!; else SMI=; fi; }
smi_stop() { [ -n "$SMI" ] && { kill "$SMI"; wait "$SMI" 2>/dev/null; }; true; }

echo "== bench $VARIANT: ${SIZE}x${SIZE}, our variants: $VARIANTS; logs in $OUT"
"$BIN" --version || { echo "no veetance binary at $BIN" >&2; exit 1; }
case "$VARIANT" in
  4b) TRANSFORMER=flux-2-klein-4b; TE=qwen_3_4b; VAE=vae/flux2-vae.safetensors ;;
  9b) TRANSFORMER=flux-2-klein-9b; TE=qwen_3_8b; VAE=vae/flux2-vae.safetensors ;;
  tiny) TRANSFORMER=flux-2-klein-tiny; TE=qwen_3_tiny; VAE=vae/flux2-vae-tiny ;;
esac
if [ ! -f "$MODELS/diffusion_models/$TRANSFORMER.safetensors" ] || [ ! -f "$MODELS/text_encoders/$TE.safetensors" ]; then
  $PY $HERE/make_full_size_models.py "$MODELS" --variant "$VARIANT" --device "$DEVICE" 2>&1 \
    | grep --line-buffered -v "kept in float32" | tee "$OUT/make_models.log"
  [ -f "$MODELS/diffusion_models/$TRANSFORMER.safetensors" ] || { echo "making the models failed" >&2; exit 1; }
fi
[ "$VARIANT" = tiny ] && { $PY $HERE/bench_common.py || exit 1; }
ls -la "$MODELS"/diffusion_models "$MODELS"/text_encoders "$MODELS"/vae
$PY $HERE/bench_inputs.py "$OUT/inputs.safetensors" --variant "$VARIANT" --width "$SIZE" --height "$SIZE" || exit 1
have_smi && nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits > "$OUT/smi_idle.txt"
have_smi && nvidia-smi > "$OUT/nvidia-smi.txt"

echo "== diffusers"
COMPILE_ARG=; [ "$DIFFUSERS_COMPILE" = 1 ] || COMPILE_ARG=--no-compile
smi_start diffusers
$PY $HERE/bench_diffusers.py --variant "$VARIANT" --models "$MODELS" --inputs "$OUT/inputs.safetensors" \
    --out "$OUT" --device "$DEVICE" --dtype "$DTYPE" --warmup "$WARMUP" --iters "$ITERS" --gen-iters "$GEN_ITERS" \
    --width "$SIZE" --height "$SIZE" $COMPILE_ARG 2>&1 | grep --line-buffered -v "kept in float32" | tee "$OUT/diffusers.log"
status=${PIPESTATUS[0]}
smi_stop
[ "$status" = 0 ] || { echo "diffusers failed ($status); see $OUT/diffusers.log" >&2; exit 1; }

for v in $VARIANTS; do
  name=$(echo "$v" | tr ':+@' '-__')
  # "-ours": our attention and convolution kernels only, cuDNN not loaded (VEETANCE_CUDNN=0).
  cudnn=${VEETANCE_CUDNN:-}; [ "$v" != "${v%-ours}" ] && { cudnn=0; v=${v%-ours}; }
  weights=; [ "$v" != "${v%@*}" ] && weights=${v##*@}
  v=${v%@*}
  attention=${v%%+*}
  extra=; [ "$v" != "${v%+compiled}" ] && extra=--compiled
  file="$MODELS/diffusion_models/$TRANSFORMER.safetensors"
  case "$weights" in
    "") ;;
    fp8) file="$MODELS/diffusion_models/$TRANSFORMER-fp8_scaled.safetensors"
         [ -f "$file" ] || $PY $HERE/make_fp8.py "$MODELS/diffusion_models/$TRANSFORMER.safetensors" "$file" > "$OUT/make_fp8.log" 2>&1 ;;
    Q8_0|Q4_K) file="$MODELS/diffusion_models/$TRANSFORMER-$weights.gguf"
         [ -x .gpu/quantize_gguf ] || { xz -dkc .gpu/quantize_gguf.xz > .gpu/quantize_gguf && chmod +x .gpu/quantize_gguf; }
         [ -f "$file" ] || .gpu/quantize_gguf flux "$MODELS/diffusion_models/$TRANSFORMER.safetensors" "$file" "$weights" > "$OUT/quantize_$weights.log" 2>&1 ;;
    *) echo "unknown weights '$weights' in variant $v (fp8, Q8_0 or Q4_K)" >&2; exit 2 ;;
  esac
  echo "== veetance $v"
  smi_start "$name"
  VEETANCE_CUDNN=$cudnn "$BIN" bench --transformer "$file" \
      --text-encoder "$MODELS/text_encoders/$TE.safetensors" --vae "$MODELS/$VAE" \
      --device "$DEVICE" --dtype "$DTYPE" --width "$SIZE" --height "$SIZE" --steps 4 \
      --warmup "$WARMUP" --iters "$ITERS" --gen-iters "$GEN_ITERS" --attention "$attention" $extra \
      --inputs "$OUT/inputs.safetensors" --dump-velocity "$OUT/velocity_$name.safetensors" \
      --json "$OUT/veetance_$name.json" 2>&1 | tee "$OUT/$name.log"
  status=${PIPESTATUS[0]}
  smi_stop
  [ "$status" = 0 ] || echo "veetance $v failed ($status); see $OUT/$name.log" >&2
done

$PY $HERE/bench_report.py "$OUT" "$VARIANTS" --tol "${TOL:-2e-2}" 2>&1 | tee "$OUT/report.txt"
exit "${PIPESTATUS[0]}"
