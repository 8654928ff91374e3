#!/usr/bin/env bash
# On the GPU machine: the golden workflows under a VRAM budget and without one.
#
#   klein-9B (workflows/flux2-klein-9b.ron) with --vram-budget 16GiB, and unconstrained
#   klein-4B (workflows/flux2-klein-4b.ron) with --vram-budget 8GiB, and unconstrained
#
# 1024x1024, 4 steps, full-size random weights in the real layouts (make_full_size_models.py).
# For each run: wall time, the peak device memory above idle (nvidia-smi every 20 ms), the
# sampler's and the decoder's times, and the warnings (streamed blocks, tiled decode); then a
# table. A budgeted run whose peak exceeds its budget is flagged OVER (the budget covers what the
# engine allocates; the CUDA context, ~0.5 GiB, is above idle as well).
#
# Needs .gpu/veetance (the CUDA build, or .gpu/veetance.xz) and .whl (diffusers wheels) carried,
# as golden-4b.sh; see docs/performance.md. The 9B set takes ~35 GB of disk and a few minutes to
# write. Streaming only starts once the scheduler passes the budget to nodes as
# ExecContext::device_room; before that, the budget only limits the output cache.
set -euo pipefail
OUT=${OUT:-/tmp/budget-out}
MODELS=${MODELS:-/tmp/models}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; }
[ -f "$MODELS/diffusion_models/flux-2-klein-4b.safetensors" ] || \
    python3 .verify/gpu/make_full_size_models.py "$MODELS" --variant 4b 2>&1 | grep -v "kept in float32"
[ -f "$MODELS/diffusion_models/flux-2-klein-9b.safetensors" ] || \
    python3 .verify/gpu/make_full_size_models.py "$MODELS" --variant 9b 2>&1 | grep -v "kept in float32"
# The 9B workflow asks for the Qwen3-8B tokenizer beside its weights; the tiny one stands in.
ls -la "$MODELS/diffusion_models" "$MODELS/text_encoders"
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
echo "idle device memory: $idle MiB"

: > "$OUT/table.tsv"
run() { # name workflow budget(or "none")
  local name=$1 wf=$2 budget=$3
  local args=()
  [ "$budget" = none ] || args=(--vram-budget "$budget")
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$OUT/vram_$name.txt" 2>/dev/null &
  local smi=$!
  local start end status=0
  start=$(date +%s.%N)
  .gpu/veetance --headless "$wf" --models-dir "$MODELS" --out "$OUT/img_$name" \
      --events "$OUT/events_$name.jsonl" -q "${args[@]}" --set sampler.seed=1 \
      > "$OUT/log_$name.txt" 2>&1 || status=$?
  end=$(date +%s.%N)
  kill $smi; wait $smi 2>/dev/null || true
  local peak
  peak=$(sort -n "$OUT/vram_$name.txt" | tail -1)
  python3 - "$name" "$budget" "$status" "$start" "$end" "$idle" "$peak" "$OUT/events_$name.jsonl" \
      "$OUT/log_$name.txt" >> "$OUT/table.tsv" <<'PY'
import json, os, sys
name, budget, status, start, end, idle, peak, events, log = sys.argv[1:]
sampler = decode = "-"
warnings = []
if os.path.exists(events):
    for line in open(events):
        e = json.loads(line)
        if e["event"] == "node_finished" and e["node_type"] == "Sampler":
            sampler = f"{e['duration_ms'] / 1000:.2f}"
        if e["event"] == "node_finished" and e["node_type"] == "VaeDecode":
            decode = f"{e['duration_ms'] / 1000:.2f}"
        if e["event"] == "warning":
            warnings.append(f"{e['node']}: {e['message']}")
above = int(peak) - int(idle)
flag = ""
if budget != "none":
    units = {"GiB": 1024, "MiB": 1}
    num = float(budget.rstrip("GiBM"))
    limit = num * units["GiB" if budget.endswith("GiB") else "MiB"]
    flag = "OVER" if above > limit else "ok"
err = "" if status == "0" else open(log).read().strip().splitlines()[-1][:120]
print("\t".join([name, budget, status, f"{float(end) - float(start):.2f}", sampler, decode,
                 str(above), flag, " | ".join(warnings)[:400] or "-", err]))
PY
  tail -1 "$OUT/table.tsv" | cut -f1-8
}

# The first CUDA process on a machine JIT-compiles candle's and our PTX kernels (~15 s, cached by
# the driver in ~/.nv/ComputeCache afterwards): one unmeasured run first, so that every measured
# run finds the cache warm.
.gpu/veetance --headless workflows/flux2-klein-4b.ron --models-dir "$MODELS" --out "$OUT/warmup" -q \
    --set sampler.seed=1 > "$OUT/log_warmup.txt" 2>&1 || echo "warm-up run failed (see $OUT/log_warmup.txt)"

run 9b-16GiB workflows/flux2-klein-9b.ron 16GiB
run 9b-free workflows/flux2-klein-9b.ron none
run 4b-8GiB workflows/flux2-klein-4b.ron 8GiB
run 4b-free workflows/flux2-klein-4b.ron none

echo
printf "%-10s %-7s %-4s %8s %9s %8s %10s %-5s\n" run budget exit wall_s sampler_s decode_s peak_MiB check
while IFS=$'\t' read -r name budget status wall sampler decode above flag warnings err; do
  printf "%-10s %-7s %-4s %8s %9s %8s %10s %-5s\n" "$name" "$budget" "$status" "$wall" "$sampler" "$decode" "$above" "$flag"
  [ "$warnings" = "-" ] || echo "    warnings: $warnings"
  [ -z "$err" ] || echo "    error: $err"
done < "$OUT/table.tsv"

# The budget must not change the picture: streamed blocks compute on the same values, so the
# budgeted image should match the unconstrained one (a tiled decode, if any, differs slightly).
echo
for pair in "9b-free 9b-16GiB" "4b-free 4b-8GiB"; do
  set -- $pair
  ref=$(ls "$OUT/img_$1"/*.png 2>/dev/null | head -1); other=$(ls "$OUT/img_$2"/*.png 2>/dev/null | head -1)
  if [ -n "$ref" ] && [ -n "$other" ]; then
    echo "$2 vs $1: $(python3 .verify/gpu/compare_images.py "$ref" "$other" | tail -1)"
    cmp -s "$ref" "$other" && echo "    (identical files)"
  fi
done
