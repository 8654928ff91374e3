#!/usr/bin/env bash
# The VAE decode's layouts against each other, on the GPU machine, in one run:
#  1. the kernel tests of the VAE (NCHW and channels-last, cuDNN's and ours) and the models' fast
#     decode test (a small VAE through both fast paths against candle's ops);
#  2. `vae_profile` with the default path (channels-last through cuDNN where it is loaded): whole
#     1024² decode against candle's ops, the stage table, each conv shape on every path;
#  3. the whole decode again on the NCHW cuDNN path (VEETANCE_VAE_NHWC=0), without the fused
#     bias/residual epilogue (VEETANCE_CUDNN_FUSE=0), and with our kernels only (VEETANCE_CUDNN=0).
#
#   bash .verify/gpu/vae.sh     # needs .gpu/{kernels_gpu,cuda_models,vae_profile}(.xz); device run
#                               # tool, carry [".gpu"]
#
# CUDNN: the libcudnn to load (default: PyTorch's, the newest on that machine). ITERS (10).
set -uo pipefail
PY=${PYTHON:-python3}
ITERS=${ITERS:-10}
export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export VEETANCE_CUDNN=${CUDNN:-$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))')}
export RUST_BACKTRACE=1
for f in kernels_gpu cuda_models vae_profile; do
  [ -x .gpu/$f ] || { xz -dkc .gpu/$f.xz > .gpu/$f && chmod +x .gpu/$f; } || exit 1
done
echo "== kernel tests (VAE)"
.gpu/kernels_gpu --test-threads 1 --nocapture vae softmax 2>&1 | grep -vE "^\s*$" | tail -80
echo "== models: fast decode against candle's ops"
.gpu/cuda_models --test-threads 1 --nocapture vae 2>&1 | grep -E "decode|test |test result|panicked" | head -20
echo "== vae_profile, default path"
.gpu/vae_profile "$ITERS" 2>&1
for v in "VEETANCE_VAE_NHWC=0" "VEETANCE_CUDNN_FUSE=0" "VEETANCE_CUDNN=0"; do
  echo "== whole decode with $v"
  env "$v" .gpu/vae_profile "$ITERS" decode 2>&1
done
