#!/usr/bin/env bash
# A warm FLUX.2 [klein] edit with two reference images, Veetance against diffusers in one run:
# `veetance bench --reference A --reference B` (VAE-encode the references, text encoding, 4
# steps with the reference tokens joined, VAE decode) and Flux2KleinPipeline(image=[A, B]) from
# the same noise on the same weights; times and the output error (edit_diffusers.py).
#
#   bash .verify/gpu/edit.sh [4b|tiny]
#
# 4b: on the GPU machine, needs .gpu/veetance(.xz) and .whl carried (as bench.sh); full-size
# random weights from make_full_size_models.py in $MODELS_DIR (/tmp/models). References: a
# 1024x1024 and a 768x1024 image made by make_references below (smooth gradients + noise).
# tiny: on a CPU in f32 (binary: $VEETANCE or target/{release,debug}/veetance, python: $PYTHON).
# Environment: OUT (/tmp/edit-out), SIZE (1024; tiny 64), ITERS (3; tiny 1), VARIANT_ARGS
# (our attention/compile flags; default "--attention flash --compiled" on 4b), DIFFUSERS_COMPILE
# (1: diffusers also under torch.compile; 0: eager only).
set -uo pipefail
VARIANT=${1:-4b}
OUT=${OUT:-/tmp/edit-out}
mkdir -p "$OUT"
case "$VARIANT" in
  4b)
    DEVICE=cuda; DTYPE=bf16; SIZE=${SIZE:-1024}; ITERS=${ITERS:-3}; MODELS=${MODELS_DIR:-/tmp/models}; PY=${PYTHON:-python3}
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export LD_LIBRARY_PATH=$($PY -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
    [ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; } || exit 1
    BIN=${VEETANCE:-.gpu/veetance}; FLAGS=${VARIANT_ARGS:---attention flash --compiled}
    COMPILE=; [ "${DIFFUSERS_COMPILE:-1}" = 1 ] || COMPILE=--no-compile
    TRANSFORMER=flux-2-klein-4b; TE=qwen_3_4b; VAE=vae/flux2-vae.safetensors; REFS="1024x1024 768x1024"
    ;;
  tiny)
    DEVICE=cpu; DTYPE=f32; SIZE=${SIZE:-64}; ITERS=${ITERS:-1}; MODELS=${MODELS_DIR:-/tmp/bench-tiny-models}; PY=${PYTHON:-python3}
    BIN=${VEETANCE:-$( [ -x target/release/veetance ] && echo target/release/veetance || echo target/debug/veetance)}
    FLAGS=${VARIANT_ARGS:-}; COMPILE=--no-compile
    TRANSFORMER=flux-2-klein-tiny; TE=qwen_3_tiny; VAE=vae/flux2-vae-tiny; REFS="64x64 96x64"
    ;;
  *) echo "usage: edit.sh [4b|tiny]" >&2; exit 2 ;;
esac
HERE=.verify/gpu
"$BIN" --version || { echo "no veetance binary at $BIN" >&2; exit 1; }
if [ ! -f "$MODELS/diffusion_models/$TRANSFORMER.safetensors" ]; then
  $PY $HERE/make_full_size_models.py "$MODELS" --variant "$VARIANT" --device "$DEVICE" 2>&1 \
    | grep --line-buffered -v "kept in float32" | tee "$OUT/make_models.log"
fi
ARGS=()
i=0
for r in $REFS; do
  i=$((i + 1))
  $PY - "$OUT/ref$i.png" "${r%x*}" "${r#*x}" "$i" <<'PY' || exit 1
import sys, numpy as np
from PIL import Image
path, w, h, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(seed)
y, x = np.mgrid[0:h, 0:w]
base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * 200 + 20
img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
Image.fromarray(img).save(path)
PY
  ARGS+=(--reference "$OUT/ref$i.png")
done
echo "== veetance bench: ${SIZE}x${SIZE} edit, references $REFS, $FLAGS"
"$BIN" bench --transformer "$MODELS/diffusion_models/$TRANSFORMER.safetensors" \
    --text-encoder "$MODELS/text_encoders/$TE.safetensors" --vae "$MODELS/$VAE" \
    --device "$DEVICE" --dtype "$DTYPE" --width "$SIZE" --height "$SIZE" --steps 4 \
    --warmup 1 --iters 2 --gen-iters "$ITERS" $FLAGS "${ARGS[@]}" \
    --save-generation "$OUT/veetance_edit.safetensors" --json "$OUT/veetance_edit.json" 2>&1 | tee "$OUT/veetance.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "veetance bench failed" >&2; exit 1; }
echo "== diffusers"
$PY $HERE/edit_diffusers.py --variant "$VARIANT" --models "$MODELS" --veetance "$OUT/veetance_edit.safetensors" \
    "${ARGS[@]}" --out "$OUT" --device "$DEVICE" --dtype "$DTYPE" --width "$SIZE" --height "$SIZE" \
    --iters "$ITERS" $COMPILE 2>&1 | grep --line-buffered -v "kept in float32" | tee "$OUT/diffusers.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "diffusers failed" >&2; exit 1; }
echo "== summary"
grep -h "^generation" "$OUT/veetance.log"
grep -h "^diffusers edit\|^output vs" "$OUT/diffusers.log"
