#!/usr/bin/env bash
# On the GPU machine: quantized weights at full klein-4B size (seeded random weights, see
# make_full_size_models.py). Converts the transformer and the Qwen3-4B encoder to GGUF Q8_0 and
# Q4_K (ComfyUI-GGUF / llama.cpp layouts) and the transformer to a ComfyUI scaled-fp8 file, then
# runs the golden workflow headless at 1024x1024, 4 steps, for each variant, printing wall time,
# per-node times, peak device memory, and the decoded image's relative error against the bf16 run
# (same seed, same prompt).
#
# Build here (CUDA), carry .gpu and .whl (see docs/performance.md for the .whl recipe):
#   eval "$(../shared/gpu/cuda-toolkit.sh env)"
#   CARGO_TARGET_DIR=target-models-cuda cargo build --release --features cuda -p veetance-cli
#   CARGO_TARGET_DIR=target-models cargo build --release -p veetance-models --example quantize_gguf
#   mkdir -p .gpu && xz -9 -T0 -c target-models-cuda/release/veetance > .gpu/veetance.xz
#   strip -o .gpu/quantize_gguf target-models/release/examples/quantize_gguf
# Then on the H200 (run tool, carry [".gpu", ".whl"]):  bash .verify/gpu/quant.sh
set -euo pipefail
OUT=${OUT:-/tmp/quant-out}
M=/tmp/models
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; }
[ -f $M/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py $M 2>&1 | grep -v "kept in float32"

# ONLY=<regex>: run only the variants whose names match (bf16, the reference, always runs);
# e.g. ONLY='fp8_scaled_file|fp8_attention' for the fp8 file and FP8 attention (PatchAttention
# flash_fp8), alone and together.
ONLY=${ONLY:-.}
if echo gguf | grep -Eq "$ONLY"; then
for q in Q8_0 Q4_K; do
  [ -f $M/diffusion_models/flux-2-klein-4b-$q.gguf ] || \
    .gpu/quantize_gguf flux $M/diffusion_models/flux-2-klein-4b.safetensors $M/diffusion_models/flux-2-klein-4b-$q.gguf $q
  [ -f $M/text_encoders/qwen_3_4b-$q.gguf ] || \
    .gpu/quantize_gguf qwen3 $M/text_encoders/qwen_3_4b.safetensors $M/text_encoders/qwen_3_4b-$q.gguf $q
done
fi
[ -f $M/diffusion_models/flux-2-klein-4b-fp8_scaled.safetensors ] || \
  python3 .verify/gpu/make_fp8.py $M/diffusion_models/flux-2-klein-4b.safetensors $M/diffusion_models/flux-2-klein-4b-fp8_scaled.safetensors
ls -la $M/diffusion_models $M/text_encoders

# name | --set arguments
variants=(
  "bf16|"
  "fp8_e4m3_at_load|--set model.weight_dtype=fp8_e4m3"
  "fp8_scaled_file|--set model.file=flux-2-klein-4b-fp8_scaled.safetensors"
  "fp8_attention|--set attention.attention=flash_fp8"
  "fp8_scaled_file_fp8_attention|--set model.file=flux-2-klein-4b-fp8_scaled.safetensors --set attention.attention=flash_fp8"
  "gguf_Q8_0|--set model.file=flux-2-klein-4b-Q8_0.gguf --set text_encoder.file=qwen_3_4b-Q8_0.gguf"
  "gguf_Q4_K|--set model.file=flux-2-klein-4b-Q4_K.gguf --set text_encoder.file=qwen_3_4b-Q4_K.gguf"
  "gguf_Q8_0_transformer_only|--set model.file=flux-2-klein-4b-Q8_0.gguf"
  "gguf_Q4_K_transformer_only|--set model.file=flux-2-klein-4b-Q4_K.gguf"
)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits > "$OUT/vram_idle.txt"
idle=$(cat "$OUT/vram_idle.txt")
for v in "${variants[@]}"; do
  name=${v%%|*}; args=${v#*|}
  [ "$name" = bf16 ] || echo "$name" | grep -Eq "$ONLY" || continue
  for run in 1 2; do  # run 2: warm page cache
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$OUT/vram_${name}_$run.txt" 2>/dev/null &
    smi=$!
    start=$(date +%s.%N); status=0
    # shellcheck disable=SC2086
    .gpu/veetance --headless workflows/flux2-klein-4b.ron --models-dir $M --out "$OUT/img_${name}_$run" \
        --events "$OUT/events_${name}_$run.jsonl" -q --set sampler.seed=1 $args || status=$?
    end=$(date +%s.%N)
    kill $smi; wait $smi 2>/dev/null || true
    peak=$(sort -n "$OUT/vram_${name}_$run.txt" | tail -1)
    echo "$name run $run: exit $status, wall $(python3 -c "print(f'{$end-$start:.2f}')") s, peak device memory $((peak - idle)) MiB above idle"
    python3 - "$OUT/events_${name}_$run.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["event"] == "node_finished" and e["node_type"] in ("LoadDiffusionModel", "LoadTextEncoder", "TextEncode", "Sampler"):
        print(f"  {e['node_type']:20s} {e['duration_ms']:9.1f} ms{' (cached)' if e['cached'] else ''}")
    if e["event"] in ("run_finished", "node_failed", "warning"):
        print("  ", {k: e[k] for k in e if k in ("event", "node", "message", "duration_ms")})
PY
  done
done
ref=$(ls "$OUT"/img_bf16_1/*.png | head -1)
for v in "${variants[@]}"; do
  name=${v%%|*}
  [ "$name" = bf16 ] && continue
  img=$(ls "$OUT"/img_${name}_1/*.png 2>/dev/null | head -1) || true
  [ -n "$img" ] && { echo "$name:"; python3 .verify/gpu/compare_images.py "$ref" "$img"; }
done
