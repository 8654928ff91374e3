#!/usr/bin/env bash
# cuDNN (loaded at run time) against our own kernels, on the GPU machine, in one run:
#  1. the kernel tests (cuDNN's attention and convolution checked against the same references);
#  2. attention at the 4B and 9B shapes: our mma.sync and wgmma kernels against cuDNN's SDPA;
#  3. the 1024² VAE decode and each decoder conv shape: ours (im2col + GEMM) against cuDNN's,
#     then the whole decode again with cuDNN off (VEETANCE_CUDNN=0).
#
#   bash .verify/gpu/cudnn.sh        # needs .gpu/{kernels_gpu,gpu_forward,vae_profile}(.xz)
#
# CUDNN: the libcudnn to load (default: PyTorch's, the newest on that machine).
set -uo pipefail
PY=${PYTHON:-python3}
export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export VEETANCE_CUDNN=${CUDNN:-$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))')}
export RUST_BACKTRACE=0
for f in kernels_gpu gpu_forward vae_profile; do
  [ -x .gpu/$f ] || { xz -dkc .gpu/$f.xz > .gpu/$f && chmod +x .gpu/$f; } || exit 1
done
echo "== kernel tests"
.gpu/kernels_gpu --test-threads 1 --nocapture 2>&1 | grep -E "cuDNN|^test |test result|panicked|Error" | sort | uniq -c | sort -rn | head -40
echo "== attention"
.gpu/gpu_forward 4b 20 attention 2>&1 | grep -E "^attention|cuDNN"
.gpu/gpu_forward 9b 20 attention 2>&1 | grep -E "^attention|cuDNN"
echo "== VAE, cuDNN convolutions"
.gpu/vae_profile 5 2>&1
echo "== VAE, our kernels only (VEETANCE_CUDNN=0)"
VEETANCE_CUDNN=0 .gpu/vae_profile 5 2>&1 | grep -E "whole decode|cuDNN"
