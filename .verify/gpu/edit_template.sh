#!/usr/bin/env bash
# On the GPU machine: ComfyUI's klein 4B distilled image-edit template (UI JSON as published,
# carried as .gpu/image_flux2_klein_image_edit_4b_distilled.json, with .whl) headless on full-size random
# klein-4B weights, twice (the second warm), with its input image (a 1024x768 PNG made here) in
# --input-dir; prints each node's time from the events and the peak device memory. The template's
# file names are linked to make_full_size_models.py's files (flux-2-klein-4b-fp8.safetensors to
# the bf16 transformer: random weights either way). Needs .gpu/veetance(.xz) carried.
set -euo pipefail
OUT=${OUT:-/tmp/edit-template-out}
mkdir -p "$OUT/input"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; }
[ -f /tmp/models/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py /tmp/models 2>&1 | grep -v "kept in float32"
ln -sf flux-2-klein-4b.safetensors /tmp/models/diffusion_models/flux-2-klein-4b-fp8.safetensors
python3 - "$OUT/input/handbag_white.png" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
y, x = np.mgrid[0:768, 0:1024]
base = np.stack([x / 1024, y / 768, (x + y) / 1792], -1) * 200 + 20
Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)).save(sys.argv[1])
PY
smi() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; }
idle=$(smi)
for run in 1 2; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > "$OUT/vram_$run.txt" 2>/dev/null &
  s=$!
  start=$(date +%s.%N)
  .gpu/veetance --headless .gpu/image_flux2_klein_image_edit_4b_distilled.json --models-dir /tmp/models \
      --input-dir "$OUT/input" --out "$OUT/img" --events "$OUT/events_$run.jsonl" -q
  end=$(date +%s.%N)
  kill $s; wait $s 2>/dev/null || true
  echo "run $run: wall $(python3 -c "print(f'{$end-$start:.2f}')") s, peak device memory $(( $(sort -n "$OUT/vram_$run.txt" | tail -1) - idle )) MiB above idle"
  python3 - "$OUT/events_$run.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e["event"] == "node_finished" and e["duration_ms"] > 1:
        print(f"  {e['node']:8s} {e['node_type']:24s} {e['duration_ms']:9.1f} ms{' (cached)' if e['cached'] else ''}")
    if e["event"] == "run_finished":
        print(f"  run total (engine): {e['duration_ms']:.1f} ms")
    if e["event"] == "warning":
        print(f"  warning: {e['node']}: {e['message']}")
PY
done
ls -la "$OUT/img"
