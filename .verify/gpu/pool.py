#!/usr/bin/env python3
"""The worker pool on GPUs: nats-server -js, one front door (`veetance serve --queue`) and N
`veetance worker`s, each given a GPU with `--device cuda:N`, serving klein 1024² prompts
(4 steps, CFG 1) on full-size random weights. Standard library only (runs on the GPU machine).

    pool.py --bin .gpu/veetance --nats .gpu/nats-server --models /tmp/models --out $OUT \
            [--jobs 40] [--devices 0,1] [--affinity-jobs 40]

Three phases, each with a fresh cluster (new queue store, new processes):
  1. one worker on the first device: one warm-up job, then --jobs prompts submitted at once;
  2. one worker per device in --devices (`0,1` on a two-GPU host; `0,0` puts two workers on
     one GPU): every worker warmed with a job of its own, then the same prompts;
  3. (with --affinity-jobs) the workers of phase 2 given klein-4B and klein-9B jobs alternating:
     how many times each worker's model changed between consecutive jobs (plain FIFO would
     change it on nearly every job), how many jobs of each model each worker ran.
Throughput = jobs / (last job in /history - first submit). nvidia-smi is sampled every 0.2 s:
each GPU's peak memory and each worker process's peak. Prints Markdown tables and writes
pool.json under --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

MODELS = {
    "4b": ("flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors"),
    "9b": ("flux-2-klein-9b.safetensors", "qwen_3_8b.safetensors"),
}


def prompt(seed: int, model: str, side: int, steps: int) -> dict:
    unet, clip = MODELS[model]
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader",
              "inputs": {"clip_name": clip, "type": "flux2", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode",
              "inputs": {"text": f"a red fox in the snow, take {seed}", "clip": ["2", 0]}},
        "6": {"class_type": "CFGGuider",
              "inputs": {"cfg": 1.0, "model": ["1", 0], "positive": ["4", 0], "negative": ["4", 0]}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": side, "height": side}},
        "10": {"class_type": "EmptyFlux2LatentImage",
               "inputs": {"width": side, "height": side, "batch_size": 1}},
        "11": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["7", 0], "guider": ["6", 0], "sampler": ["8", 0],
                          "sigmas": ["9", 0], "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 0]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": model}},
    }


def http(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return json.loads(raw) if raw else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{log} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s ({log})")


class Smi(threading.Thread):
    """Samples nvidia-smi: peak used memory per GPU index and per process id (MiB)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.gpu: dict[int, int] = collections.defaultdict(int)
        self.pid: dict[int, int] = collections.defaultdict(int)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.check_output(
                    ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                    text=True)
                for line in out.strip().splitlines():
                    i, used = (int(x) for x in line.split(","))
                    self.gpu[i] = max(self.gpu[i], used)
                out = subprocess.check_output(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                     "--format=csv,noheader,nounits"], text=True)
                for line in out.strip().splitlines():
                    if line.strip():
                        p, used = (int(x) for x in line.split(","))
                        self.pid[p] = max(self.pid[p], used)
            except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
                pass
            self.stop.wait(0.2)


class Cluster:
    def __init__(self, args, root: Path, devices: list[str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        nats_port = free_port()
        self._spawn("nats", [args.nats, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", str(root / "js")], {})
        wait_port(nats_port, self.procs[-1], root / "nats.log")
        queue = f"nats://127.0.0.1:{nats_port}"
        http_port = free_port()
        self.url = f"http://127.0.0.1:{http_port}"
        common = ["--models-dir", args.models, "--input-dir", str(root / "input")]
        self._spawn("front", [args.bin, "serve", "--queue", queue, "--listen",
                              f"127.0.0.1:{http_port}", "--out", str(root / "out"),
                              "--temp-dir", str(root / "temp"), "--state-dir",
                              str(root / "state-front"), *common], {"CUDA_VISIBLE_DEVICES": ""})
        wait_port(http_port, self.procs[-1], root / "front.log")
        for i, dev in enumerate(devices):
            name = f"w{i + 1}"
            self.workers[name] = self._spawn(
                name, [args.bin, "worker", "--queue", queue, "--name", name,
                       "--out", str(root / "out"), "--temp-dir", str(root / f"temp-{name}"),
                       "--state-dir", str(root / f"state-{name}"), "--device", f"cuda:{dev}",
                       *common], {})

    def _spawn(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env})
        log.close()
        self.procs.append(proc)
        return proc

    def submit(self, p: dict) -> str:
        return http(f"{self.url}/prompt", {"prompt": p})["prompt_id"]

    def wait(self, ids: list[str], timeout: float = 900) -> dict[str, float]:
        """Polls /history until every id is in it: id -> time it was first seen there."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(ids) - len(seen)} of {len(ids)} unfinished; logs in {self.root}")
            for name, w in self.workers.items():
                if w.poll() is not None:
                    log = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise SystemExit(f"worker {name} exited:\n{log}")
            history = http(f"{self.url}/history?max_items=100000")
            now = time.monotonic()
            for pid in ids:
                if pid in history and pid not in seen:
                    status = history[pid]["status"]
                    if status.get("status_str") != "success":
                        raise SystemExit(f"{pid} failed: {json.dumps(status)[:2000]}")
                    seen[pid] = now
            time.sleep(0.05)
        return seen

    def job(self, pid: str) -> dict:
        return http(f"{self.url}/api/jobs/{pid}")

    def warm(self, model: str, side: int, steps: int) -> None:
        """Until every worker has run a job (a worker busy loading takes none meanwhile)."""
        warmed: set[str] = set()
        seed = 10_000
        while warmed != set(self.workers):
            batch = [self.submit(prompt(seed + i, model, side, steps)) for i in range(len(self.workers))]
            seed += len(self.workers)
            self.wait(batch)
            warmed |= {self.job(pid)["worker"].split(":")[0] for pid in batch}

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def throughput(args, label: str, devices: list[str], seeds: range) -> dict:
    smi = Smi()
    smi.start()
    cluster = Cluster(args, Path(args.out) / label, devices)
    try:
        t0 = time.monotonic()
        cluster.warm("4b", args.side, args.steps)
        warm_s = time.monotonic() - t0
        start = time.monotonic()
        ids = [cluster.submit(prompt(s, "4b", args.side, args.steps)) for s in seeds]
        seen = cluster.wait(ids)
        elapsed = max(seen.values()) - start
        per_worker = collections.Counter(cluster.job(pid)["worker"].split(":")[0] for pid in ids)
        worker_pids = {name: w.pid for name, w in cluster.workers.items()}
    finally:
        cluster.stop()
        smi.stop.set()
        smi.join()
    return {
        "label": label, "devices": devices, "jobs": len(ids), "seconds": elapsed,
        "images_per_s": len(ids) / elapsed, "warm_s": warm_s, "per_worker": dict(per_worker),
        "gpu_peak_mib": dict(smi.gpu),
        "worker_peak_mib": {n: smi.pid.get(p, 0) for n, p in worker_pids.items()},
    }


def affinity(args, devices: list[str]) -> dict:
    smi = Smi()
    smi.start()
    cluster = Cluster(args, Path(args.out) / "affinity", devices)
    try:
        start = time.monotonic()
        ids = {}
        for i in range(args.affinity_jobs):
            model = "4b" if i % 2 == 0 else "9b"
            ids[cluster.submit(prompt(20_000 + i, model, args.side, args.steps))] = model
        seen = cluster.wait(list(ids))
        elapsed = max(seen.values()) - start
        runs = collections.defaultdict(list)
        for pid, model in ids.items():
            j = cluster.job(pid)
            runs[j["worker"].split(":")[0]].append((j["execution_start_time"], model))
        switches, mix = {}, {}
        for worker, jobs in runs.items():
            models = [m for _, m in sorted(jobs)]
            switches[worker] = sum(a != b for a, b in zip(models, models[1:]))
            mix[worker] = dict(collections.Counter(models))
        worker_pids = {name: w.pid for name, w in cluster.workers.items()}
    finally:
        cluster.stop()
        smi.stop.set()
        smi.join()
    return {
        "jobs": len(ids), "seconds": elapsed, "switches": switches, "models_per_worker": mix,
        "fifo_switches_expected": len(ids) - len(runs),
        "gpu_peak_mib": dict(smi.gpu),
        "worker_peak_mib": {n: smi.pid.get(p, 0) for n, p in worker_pids.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nats", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", default="0,1", help="one CUDA device per worker in phase 2")
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--affinity-jobs", type=int, default=0)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tiny", action="store_true",
                    help="the tiny test models' names (tests/python's models folder), to test on a CPU")
    args = ap.parse_args()
    args.bin = str(Path(args.bin).resolve())
    if args.tiny:
        MODELS["9b"] = MODELS["4b"] = ("flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors")
    devices = args.devices.split(",")
    try:
        gpus = subprocess.check_output(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"], text=True
        ).strip().splitlines()
    except (FileNotFoundError, subprocess.CalledProcessError):
        gpus = ["none (nvidia-smi absent: a CPU run, to test this script)"]
    result = {"host_gpus": gpus}
    result["one"] = throughput(args, "one-worker", devices[:1], range(args.jobs))
    print(json.dumps(result["one"]), flush=True)
    result["pool"] = throughput(args, "pool", devices, range(args.jobs))
    print(json.dumps(result["pool"]), flush=True)
    if args.affinity_jobs:
        result["affinity"] = affinity(args, devices)
        print(json.dumps(result["affinity"]), flush=True)
    Path(args.out, "pool.json").write_text(json.dumps(result, indent=1))

    one, pool = result["one"], result["pool"]
    print(f"\nGPUs: {'; '.join(result['host_gpus'])}\n")
    print("| workers (devices) | jobs | seconds | images/s | × one worker | jobs per worker | peak MiB per GPU | peak MiB per worker |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | --- |")
    for r in (one, pool):
        print(f"| {len(r['devices'])} ({','.join('cuda:' + d for d in r['devices'])}) | {r['jobs']} | "
              f"{r['seconds']:.2f} | {r['images_per_s']:.3f} | {r['images_per_s'] / one['images_per_s']:.2f} | "
              f"{r['per_worker']} | {r['gpu_peak_mib']} | {r['worker_peak_mib']} |")
    if "affinity" in result:
        a = result["affinity"]
        print(f"\naffinity: {a['jobs']} jobs alternating klein-4B / klein-9B in {a['seconds']:.1f} s; "
              f"model switches per worker {a['switches']} (FIFO: ~{a['fifo_switches_expected']}); "
              f"models per worker {a['models_per_worker']}; peak MiB per worker {a['worker_peak_mib']}")


if __name__ == "__main__":
    main()
