#!/usr/bin/env bash
# On the GPU machine: `veetance serve` on full-size random klein-4B weights. Queues ComfyUI's klein
# text-to-image template (UI JSON as published, 1024², 20 steps, CFG 5) through POST /prompt, then
# reads /system_stats and nvidia-smi before and after POST /free, to show that /free hands the
# device memory back. Needs, carried: .whl (diffusers wheels), .gpu/veetance (the CUDA build, or .gpu/veetance.xz) and
# .gpu/image_flux2_klein_text_to_image.json (from PyPI's comfyui-workflow-templates-json).
# Run 2026-12-03; the figures are in docs/server.md ("On the H200").
set -euo pipefail
OUT=${OUT:-/tmp/serve-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; }
[ -f /tmp/models/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py /tmp/models 2>&1 | grep -v "kept in float32"
# The template's base model is the same architecture; random weights either way.
ln -sf flux-2-klein-4b.safetensors /tmp/models/diffusion_models/flux-2-klein-base-4b.safetensors
smi() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; }
echo "device memory used before the server: $(smi) MiB"
.gpu/veetance serve --listen 127.0.0.1:8188 --models-dir /tmp/models --out "$OUT/out" \
    --state-dir "$OUT/state" > "$OUT/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python3 - "$OUT" <<'PY'
import json, subprocess, sys, time, urllib.request
base = "http://127.0.0.1:8188"
def call(path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        raw = r.read()
        return json.loads(raw) if raw else None
def smi():
    return int(subprocess.check_output(["nvidia-smi", "--query-gpu=memory.used",
                                        "--format=csv,noheader,nounits"]).decode().split()[0])
for _ in range(300):
    try:
        call("/system_stats"); break
    except Exception:
        time.sleep(0.2)
def stats(label):
    d = call("/system_stats")["devices"][0]
    print(f"{label}: /system_stats vram_free {d['vram_free']/2**30:.2f} of {d['vram_total']/2**30:.2f} GiB "
          f"({d['name']}); nvidia-smi used {smi()} MiB")
stats("idle server")
ui = json.load(open(".gpu/image_flux2_klein_text_to_image.json"))
for run in range(3):
    t0 = time.time()
    pid = call("/prompt", {"prompt": ui, "client_id": "gpu-check"})["prompt_id"]
    while True:
        h = call(f"/history/{pid}")
        if h and h[pid]["status"].get("completed") is not None and h[pid]["status"]["status_str"] in ("success", "error"):
            break
        time.sleep(0.02)
    status = h[pid]["status"]["status_str"]
    imgs = [i["filename"] for o in h[pid]["outputs"].values() for i in o.get("images", [])]
    print(f"template run {run + 1}: {status} in {time.time() - t0:.2f} s (POST to history), images {imgs}")
    if status != "success":
        print(json.dumps(h[pid]["status"]["messages"])[:2000]); sys.exit(1)
stats("after 3 runs (models cached)")
call("/free", {"unload_models": True, "free_memory": True})
time.sleep(2)
stats("after POST /free")
PY
