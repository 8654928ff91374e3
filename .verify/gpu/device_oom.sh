#!/usr/bin/env bash
# On the GPU machine: a device out-of-memory in the middle of a run fails that prompt, and the
# next prompt in the same `veetance serve` process works (issue 20, faults). Another process
# (PyTorch) holds all but FREE_GIB of the GPU while the first prompt (klein-4B, 1024², 4 steps)
# runs; then it lets go, and the same server runs the same prompt again.
# Needs, carried: .gpu/veetance(.xz) and .whl (for the model maker); models as pool.sh makes them.
#   OUT=$OUT bash .verify/gpu/device_oom.sh
set -euo pipefail
OUT=${OUT:-/tmp/oom-out}
FREE_GIB=${FREE_GIB:-12}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[ -x .gpu/veetance ] || { xz -dkc .gpu/veetance.xz > .gpu/veetance && chmod +x .gpu/veetance; }
[ -f /tmp/models/vae/flux2-vae.safetensors ] || python3 .verify/gpu/make_full_size_models.py /tmp/models 2>&1 | grep -v "kept in float32"
python3 - "$OUT" "$FREE_GIB" <<'PY'
import json, os, signal, subprocess, sys, time, urllib.request
sys.path.insert(0, ".verify/gpu")
from pool import free_port, http, prompt, wait_port
from pathlib import Path
out, free_gib = Path(sys.argv[1]), float(sys.argv[2])
hog_code = f"""
import torch, time, sys
free, total = torch.cuda.mem_get_info()
keep = int({free_gib} * 2**30)
block = torch.empty(max(free - keep, 0), dtype=torch.uint8, device='cuda')
print(f'holding {{block.numel() / 2**30:.1f}} GiB, {{keep / 2**30:.1f}} GiB left free', flush=True)
sys.stdin.read()
"""
hog = subprocess.Popen([sys.executable, "-c", hog_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
print(hog.stdout.readline().strip(), flush=True)
port = free_port()
log = open(out / "serve.log", "wb")
server = subprocess.Popen([".gpu/veetance", "serve", "--listen", f"127.0.0.1:{port}", "--models-dir", "/tmp/models",
                           "--out", str(out / "out"), "--state-dir", str(out / "state")], stdout=log, stderr=subprocess.STDOUT)
wait_port(port, server, out / "serve.log")
url = f"http://127.0.0.1:{port}"
def run(seed):
    pid = http(f"{url}/prompt", {"prompt": prompt(seed, "4b", 1024, 4)})["prompt_id"]
    t0 = time.monotonic()
    while True:
        h = http(f"{url}/history/{pid}")
        if pid in h:
            return h[pid]["status"], time.monotonic() - t0
        assert server.poll() is None, "the server exited"
        time.sleep(0.1)
status, s = run(1)
msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
print(f"with {free_gib} GiB free: {status['status_str']} after {s:.1f} s", flush=True)
for m in msgs:
    d = m[1]
    print(f"  execution_error at node {d.get('node_id')} ({d.get('node_type')}): {d.get('exception_type')}: {d.get('exception_message')[:600]}", flush=True)
hog.stdin.close(); hog.wait()
print("the other process let go of its memory", flush=True)
status2, s2 = run(2)
print(f"then, same server process: {status2['status_str']} after {s2:.1f} s; server still up: {server.poll() is None}", flush=True)
status3, s3 = run(3)
print(f"and warm: {status3['status_str']} after {s3:.2f} s", flush=True)
server.terminate(); server.wait(timeout=30)
ok = status["status_str"] == "error" and msgs and status2["status_str"] == "success"
print("RESULT:", "as expected" if ok else "NOT as expected", flush=True)
sys.exit(0 if ok else 1)
PY
