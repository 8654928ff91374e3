#!/usr/bin/env bash
# Screenshots of the real editor window under Xvfb (Mesa llvmpipe), saved to docs/screenshots/.
# Not part of CI (CI has no X server); run by hand after changing how the editor looks:
#
#   apt-get install -y xvfb xauth imagemagick libgl1-mesa-dri libegl1 libgl1 libglx-mesa0 \
#       libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6
#   .verify/screenshots.sh
#
# Each shot starts the `editor_shot` example on its own X server, waits, captures the root
# window with ImageMagick's `import`, and stops the editor.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-gui}"
export LIBGL_ALWAYS_SOFTWARE=1
# GUI_CARGO_FLAGS=--no-default-features builds without the FLUX.2 nodes (no candle), for a
# quick look; the golden-workflow shot then falls back to workflows/hello.ron.
flags="${GUI_CARGO_FLAGS:-}"
cargo build -p veetance-gui --example editor_shot $flags
bin="$CARGO_TARGET_DIR/debug/examples/editor_shot"
out=docs/screenshots
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The golden workflow: a FLUX.2 [klein] workflow when one exists, else the model-free example.
golden=""
if [[ "$flags" != *no-default-features* ]]; then
  # The tiny model set ships with the repository, so this one validates without real weights.
  golden="$(ls workflows/flux2-klein-tiny.ron 2>/dev/null || true)"
fi
golden="${golden:-workflows/hello.ron}"

# A run to photograph: the sampler stand-in (PreviewDemo) resolving noise into an image.
cat > "$work/run.ron" <<'RON'
(
    version: 1,
    description: Some("PreviewDemo stands in for the FLUX.2 sampler: progress and a preview every step."),
    nodes: [
        (id: "seed", type: "Seed", params: {"control": "fixed", "seed": 42}),
        (id: "sampler", type: "PreviewDemo", params: {"size": 384, "step_ms": 60, "steps": 200}),
        (id: "gradient", type: "GradientImage", params: {"color_a": "#4b0082", "color_b": "#ff69b4", "direction": "radial", "height": 384, "width": 384}),
        (id: "blend", type: "ImageBlend", params: {"factor": 0.5, "mode": "screen"}),
        (id: "save", type: "SaveImage", params: {"filename_prefix": "demo"}),
    ],
    links: [
        (from: ("sampler", "image"), to: ("blend", "a")),
        (from: ("gradient", "image"), to: ("blend", "b")),
        (from: ("blend", "image"), to: ("save", "images")),
    ],
    layout: Some((
        positions: {"blend": (620.0, 120.0), "gradient": (300.0, 300.0), "sampler": (300.0, 0.0), "save": (900.0, 120.0), "seed": (0.0, 60.0)},
    )),
)
RON

# shot NAME SECONDS MODE [WORKFLOW]
shot() {
  local name="$1" wait="$2" mode="$3" workflow="${4:-}"
  VEETANCE_SHOT="$mode" xvfb-run -a -s "-screen 0 1600x1000x24" bash -c '
    "$0" $1 &
    pid=$!
    sleep "$2"
    import -window root "$3"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  ' "$bin" "$workflow" "$wait" "$work/$name.png"
  # Keep the files small: strip metadata, squeeze the PNG.
  convert "$work/$name.png" -strip -define png:compression-level=9 "$out/$name.png"
  # Noise-heavy frames (the preview early in a run) compress badly: fall back to 256 colours.
  if [ "$(du -k "$out/$name.png" | cut -f1)" -gt 480 ]; then
    convert "$work/$name.png" -strip -colors 256 -define png:compression-level=9 "$out/$name.png"
  fi
  echo "$out/$name.png: $(du -k "$out/$name.png" | cut -f1) KiB"
}

# A batch of three seeds for the history and the compare view.
cat > "$work/batch.ron" <<'RON'
(
    version: 1,
    description: Some("Value noise under a gradient: a batch of three seeds."),
    nodes: [
        (id: "noise", type: "NoiseImage", params: {"width": 384, "height": 384, "seed": 7, "scale": 48.0}),
        (id: "gradient", type: "GradientImage", params: {"color_a": "#4b0082", "color_b": "#ff69b4", "direction": "radial", "height": 384, "width": 384}),
        (id: "blend", type: "ImageBlend", params: {"factor": 0.6, "mode": "screen"}),
        (id: "save", type: "SaveImage", params: {"filename_prefix": "batch"}),
    ],
    links: [
        (from: ("noise", "image"), to: ("blend", "a")),
        (from: ("gradient", "image"), to: ("blend", "b")),
        (from: ("blend", "image"), to: ("save", "images")),
    ],
    layout: Some((
        positions: {"noise": (0.0, 0.0), "gradient": (0.0, 300.0), "blend": (340.0, 120.0), "save": (640.0, 120.0)},
    )),
)
RON

shot golden-workflow 6 canvas "$golden"
shot run-in-progress 8 run "$work/run.ron"
# The splash mid-reveal: the pink diamond has landed and the editor shows through the hole.
VEETANCE_SPLASH_AT=1.75 shot splash 6 splash "$golden"
shot history-compare 12 history "$work/batch.ron"
