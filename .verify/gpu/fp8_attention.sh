#!/usr/bin/env bash
# FP8 attention (PatchAttention flash_fp8) on the GPU machine, in one run:
#  1. the kernel tests of attention (FP8 against f32 attention, bf16 flash and cuDNN paths);
#  2. `gpu_forward <model> profile` with bf16 and with fp8 weights, each with bf16 attention and
#     with FP8 attention (`attn8`): the median forward, the per-stage profile, and the velocity's
#     error of FP8 attention against bf16 attention on the same random weights and inputs;
#  3. cuDNN's FP8 attention alone against its bf16 attention at klein's shapes, through NVIDIA's
#     cudnn-frontend, when its wheel is in .fe/ (fp8_attention_probe.py).
#
#   bash .verify/gpu/fp8_attention.sh [4b|9b]   # needs .gpu/{kernels_gpu,gpu_forward}(.xz);
#                                               # device run tool, carry [".gpu", ".fe"]
#
# CUDNN: the libcudnn to load (default: PyTorch's, the newest on that machine). ITERS (10).
set -uo pipefail
PY=${PYTHON:-python3}
ITERS=${ITERS:-10}
MODEL=${1:-4b}
export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export VEETANCE_CUDNN=${CUDNN:-$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))')}
export RUST_BACKTRACE=1
for f in kernels_gpu gpu_forward; do
  [ -x .gpu/$f ] || { xz -dkc .gpu/$f.xz > .gpu/$f && chmod +x .gpu/$f; } || exit 1
done
echo "== kernel tests (attention)"
.gpu/kernels_gpu --test-threads 1 --nocapture attention 2>&1 | grep -vE "^\s*$" | tail -40
for weights in bf16 fp8; do
  for attn in flash attn8; do
    echo "== gpu_forward $MODEL profile, $weights weights, $attn"
    .gpu/gpu_forward "$MODEL" "$ITERS" profile "$weights" "$attn" 2>&1 | tail -40
  done
done
if ls .fe/*.whl >/dev/null 2>&1; then
  echo "== cuDNN FP8 attention alone (cudnn-frontend)"
  $PY -m pip install -q --no-index --no-deps --target /tmp/fe-site .fe/*.whl 2>/dev/null
  PYTHONPATH=/tmp/fe-site $PY "$(dirname "$0")/fp8_attention_probe.py" 2>&1 | tail -12
fi
