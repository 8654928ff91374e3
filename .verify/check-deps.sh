#!/usr/bin/env bash
# Checks the dependency rules of docs/ARCHITECTURE.md with `cargo tree`:
# - core, workflow and cli never pull in egui/eframe/wgpu;
# - core and models do not depend on each other, and core pulls in no candle;
# - workflow does not depend on models or any node crate;
# - comfy (ComfyUI's formats) depends on no nodes, models, HTTP stack or UI;
# - server links no UI;
# - kernels (our CUDA kernels) depend on no other veetance crate and no UI;
# - fuzzing (the fuzz entry points) links no UI, and nothing depends on it.
# Exit 0 when every rule holds, 1 with the offending paths otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
# Dependencies of a package as a headless build has them (default features off: the cli's
# `editor` feature is what brings in the UI, on purpose, for the one desktop binary).
deps_of() { cargo tree -q -e normal -p "$1" --no-default-features --prefix none 2>/dev/null | awk '{print $1}' | sort -u; }

forbid() { # package, regex of crate names it must not depend on, why
  local pkg=$1 pattern=$2 why=$3
  local hits
  hits=$(deps_of "$pkg" | grep -E "^($pattern)$" || true)
  if [ -n "$hits" ]; then
    echo "FAIL: $pkg depends on $(echo "$hits" | tr '\n' ' ')— $why"
    fail=1
  else
    echo "ok:   $pkg has no $pattern"
  fi
}

ui='egui|eframe|egui-snarl|egui_kittest|wgpu|winit'
forbid veetance-core "$ui" "the core must build without a UI"
forbid veetance-workflow "$ui" "the file format must build without a UI"
forbid veetance-cli "$ui" "a headless build (--no-default-features) must not link a UI"
forbid veetance-core 'candle-core|candle-nn|candle-transformers|veetance-models' "core knows nothing of models"
forbid veetance-models 'veetance-core|veetance-workflow|petgraph' "models know nothing of graphs"
forbid veetance-workflow 'veetance-models|veetance-nodes|veetance-nodes-basic|candle-core' "the format is independent of nodes and models"
forbid veetance-comfy 'veetance-models|veetance-nodes|veetance-nodes-basic|veetance-nodes-flux2|veetance-nodes-comfy|candle-core|axum|tokio' "ComfyUI's formats are translated without nodes, models or HTTP"
forbid veetance-comfy "$ui" "ComfyUI's formats build without a UI"
forbid veetance-server "$ui" "the server links no UI"
forbid veetance-kernels "veetance-(core|workflow|models|comfy|server|cli|gui|nodes[a-z-]*)|$ui" "the kernels build and test alone, under the model code"
forbid veetance-fuzzing "$ui" "the fuzz targets build headless, with the server's dependencies"
for pkg in veetance-core veetance-workflow veetance-models veetance-comfy veetance-server veetance-cli veetance-gui; do
  forbid "$pkg" 'veetance-fuzzing' "the fuzz entry points are a leaf: only fuzz/ and its own tests use them"
done
exit $fail
