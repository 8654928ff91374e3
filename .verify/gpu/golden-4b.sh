#!/usr/bin/env bash
# On the GPU machine: the golden workflow (workflows/flux2-klein-4b.ron) headless at 1024x1024,
# 4 steps, on full-size random klein-4B weights in the real layouts; prints the total time, the
# per-node times from the events and the peak device memory (nvidia-smi, sampled every 20 ms).
# Needs .gpu/veetance (the CUDA build) and .whl (diffusers wheels) carried; see docs/performance.md.
set -euo pipefail
OUT=${OUT:-/tmp/golden-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance
[ -f /tmp/models/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py /tmp/models 2>&1 | grep -v "kept in float32"
ls -la /tmp/models/diffusion_models /tmp/models/text_encoders
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits > "$OUT/vram_idle.txt"
for run in 1 2; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$OUT/vram_$run.txt" 2>/dev/null &
  smi=$!
  start=$(date +%s.%N)
  status=0
  .gpu/veetance --headless workflows/flux2-klein-4b.ron --models-dir /tmp/models --out "$OUT/img" \
      --events "$OUT/events_$run.jsonl" -q --set sampler.seed=$run || status=$?
  end=$(date +%s.%N)
  kill $smi; wait $smi 2>/dev/null || true
  [ $status = 0 ] || { echo "veetance exited $status"; exit $status; }
  idle=$(cat "$OUT/vram_idle.txt")
  peak=$(sort -n "$OUT/vram_$run.txt" | tail -1)
  echo "run $run: wall $(python3 -c "print(f'{$end-$start:.2f}')") s, peak device memory $((peak - idle)) MiB above idle ($peak MiB used, $idle idle)"
  python3 - "$OUT/events_$run.jsonl" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
for e in ev:
    if e["event"] == "node_finished":
        print(f"  {e['node']:14s} {e['node_type']:20s} {e['duration_ms']:9.1f} ms{' (cached)' if e['cached'] else ''}")
    if e["event"] == "run_finished":
        print(f"  run total (engine): {e['duration_ms']:.1f} ms")
    if e["event"] == "warning":
        print(f"  warning: {e['node']}: {e['message']}")
PY
done
