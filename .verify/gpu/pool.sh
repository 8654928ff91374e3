#!/usr/bin/env bash
# On the GPU machine: the worker pool of issue 21 (docs/distributed.md, "On GPUs"). Writes
# full-size random klein-4B and klein-9B model sets (ComfyUI layout) under /tmp/models, then runs
# .verify/gpu/pool.py: one worker against a pool of workers on DEVICES (default 0,1: one worker
# per GPU of a two-GPU host; DEVICES=0,0 puts two workers on one GPU), 40 klein-4B 1024² 4-step
# prompts each, then 4B and 9B jobs mixed (model affinity).
# Needs, carried: .gpu/veetance(.xz) (the CUDA build, --no-default-features), .gpu/nats-server(.xz)
# (Debian's nats-server, which the GPU machine lacks) and .whl (diffusers wheels).
#   OUT=$OUT DEVICES=0,1 bash .verify/gpu/pool.sh
set -euo pipefail
OUT=${OUT:-/tmp/pool-out}
DEVICES=${DEVICES:-0,1}
JOBS=${JOBS:-40}
AFFINITY_JOBS=${AFFINITY_JOBS:-40}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
for b in veetance nats-server; do
  [ -x .gpu/$b ] || { xz -dkc .gpu/$b.xz > .gpu/$b && chmod +x .gpu/$b; }
done
t0=$SECONDS
[ -f /tmp/models/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py /tmp/models 2>&1 | grep -v "kept in float32"
if [ "$AFFINITY_JOBS" -gt 0 ] && [ ! -f /tmp/models/diffusion_models/flux-2-klein-9b.safetensors ]; then
  python3 .verify/gpu/make_full_size_models.py /tmp/models --variant 9b 2>&1 | grep -v "kept in float32"
fi
echo "models ready in $((SECONDS - t0)) s"; df -h /tmp | tail -1
python3 .verify/gpu/pool.py --bin .gpu/veetance --nats .gpu/nats-server --models /tmp/models \
  --out "$OUT" --devices "$DEVICES" --jobs "$JOBS" --affinity-jobs "$AFFINITY_JOBS"
