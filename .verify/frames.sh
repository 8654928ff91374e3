#!/usr/bin/env bash
# Frame times of the real editor window under Xvfb (Mesa llvmpipe, 1600×1000): see
# docs/editor.md, "Frame times". Not part of CI (CI has no X server).
#
#   .verify/frames.sh [pan|run|empty|all] [REPEATS]
#
# EDITOR_SHOT=<binary> times a given build of the `editor_shot` example (to compare two builds
# in alternation); otherwise it is built in release without the FLUX.2 nodes. The workflows
# (the 60-node graph of the pan, the PreviewDemo run of the screenshots) are written to a
# temporary folder. VEETANCE_FRAMES_PROFILE=1 adds the profile of the pan (see editor_shot.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
repeats="${2:-1}"
export LIBGL_ALWAYS_SOFTWARE=1
bin="${EDITOR_SHOT:-}"
if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-gui}"
  cargo build --release -p veetance-gui --no-default-features --example editor_shot
  bin="$CARGO_TARGET_DIR/release/examples/editor_shot"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 60 nodes: 20 chains Seed → NoiseImage → SaveImage, all saved at one spot, so the editor lays
# them out by rank on open (as the 60-node test of crates/gui/tests/editor.rs does).
{
  printf '(version: 1, nodes: [\n'
  for i in $(seq 0 19); do
    printf '(id: "seed%d", type: "Seed", params: {"seed": %d}),\n' "$i" "$i"
    printf '(id: "noise%d", type: "NoiseImage", params: {"width": 64, "height": 64}),\n' "$i"
    printf '(id: "save%d", type: "SaveImage", params: {"filename_prefix": "n%d"}),\n' "$i" "$i"
  done
  printf '], links: [\n'
  for i in $(seq 0 19); do
    printf '(from: ("seed%d", "seed"), to: ("noise%d", "seed")),\n' "$i" "$i"
    printf '(from: ("noise%d", "image"), to: ("save%d", "images")),\n' "$i" "$i"
  done
  printf '], layout: Some((positions: {'
  for i in $(seq 0 19); do
    printf '"seed%d": (100.0, 100.0), "noise%d": (100.0, 100.0), "save%d": (100.0, 100.0), ' "$i" "$i" "$i"
  done
  printf '})))\n'
} > "$work/sixty.ron"

# The run of the screenshots: PreviewDemo (200 steps, a preview each step) under the overlay.
cat > "$work/run.ron" <<'RON'
(
    version: 1,
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

frames() {
  local mode="$1" workflow="${2:-}"
  echo "== frames-$mode $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
  VEETANCE_SHOT="frames-$mode" xvfb-run -a -s "-screen 0 1600x1000x24" "$bin" $workflow 2>&1 \
    | grep -v '^backdrop blurred'
}

for _ in $(seq 1 "$repeats"); do
  case "$which" in
    pan) frames pan "$work/sixty.ron" ;;
    run) frames run "$work/run.ron" ;;
    empty) frames empty ;;
    all) frames pan "$work/sixty.ron"; frames run "$work/run.ron"; frames empty ;;
    *) echo "unknown: $which (pan, run, empty or all)" >&2; exit 2 ;;
  esac
done
