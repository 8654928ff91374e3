#!/usr/bin/env python3
"""Bench of `veetance serve` (not a test): what the server adds to a tiny run, and 100 WebSocket
clients at once. Results go to docs/performance.md by hand.

(a) Overhead: the tiny klein prompt (tests/python/fixtures/klein_tiny_api.json, 64x64, 4 steps,
    CFG 2.5) timed through the server, from just before POST /prompt to the final `executing
    {node: null}` on the WebSocket of the client that queued it, against `veetance --headless`
    on the same prompt file, timed in-process by its `--events` output (`run_finished`
    `duration_ms`). The server runs twice over: "cold", with POST /free before each run, so that
    it loads the models and encodes the text again as each headless process does (checked: the
    run's `execution_cached` list must be empty), and "warm", only the seed changed between
    runs, as a client sending variations sees it.
(b) Fan-out: N WebSocket clients (default 100) connect at once (time from opening the TCP
    connection to receiving the `status` message the server sends on connect); then one prompt
    per client is queued (seeds differ), each with that client's `client_id`, as fast as POSTs
    go, while all N clients listen. As in ComfyUI, a prompt's execution messages go to its own
    client and every queue change is a `status` broadcast to all. Reported: whether every client
    got every `status` broadcast and its own prompt's final `executing`, the latency of the
    messages that carry the server's `timestamp` (`execution_start`, `execution_cached`,
    `execution_success`: client receive time minus that timestamp, same machine clock, ms
    resolution), the spread of each `status` broadcast over the clients (last minus first
    receipt), and the server's resident memory (VmRSS) idle, with the clients connected, at its
    peak while the prompts run (sampled every 10 ms) and after the clients left.

Run from the repository root with the test environment (.ci/run creates it):

    .venv/bin/python .verify/server_bench.py [--bin target/debug/veetance] [--runs 9]
        [--clients 100] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import harness  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else {}


# ------------------------------------------------------------------------------------ (a)

async def timed_server_run(server: harness.Server, prompt: dict) -> tuple[float, list, dict]:
    """Seconds from POST /prompt to `executing null` for it, its `execution_cached` nodes, and
    where the time went (ms): POST until `execution_start`'s timestamp, `execution_start` to
    `execution_success` (the run), and `execution_success` until `executing null` arrived (the
    history written, then the message)."""
    client_id = str(uuid.uuid4())
    async with websockets.connect(f"ws://{server.host}/ws?clientId={client_id}", max_size=None) as ws:
        await ws.recv()  # status on connect
        start = time.perf_counter()
        start_wall_ms = time.time() * 1e3
        answer = await asyncio.to_thread(
            post, f"{server.url}/prompt", {"prompt": prompt, "client_id": client_id}
        )
        prompt_id = answer["prompt_id"]
        cached = []
        stamps = {}
        while True:
            msg = await asyncio.wait_for(ws.recv(), timeout=600)
            if isinstance(msg, bytes):
                continue
            m = json.loads(msg)
            data = m.get("data", {})
            if m["type"] == "execution_cached" and data.get("prompt_id") == prompt_id:
                cached = data.get("nodes", [])
            if m["type"] in ("execution_start", "execution_success") and data.get("prompt_id") == prompt_id:
                stamps[m["type"]] = data["timestamp"]
            if m["type"] == "execution_error" and data.get("prompt_id") == prompt_id:
                raise RuntimeError(f"prompt failed: {data}")
            if m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                end_wall_ms = time.time() * 1e3
                parts = {
                    "post_to_start": stamps["execution_start"] - start_wall_ms,
                    "run": stamps["execution_success"] - stamps["execution_start"],
                    "success_to_final": end_wall_ms - stamps["execution_success"],
                }
                return time.perf_counter() - start, cached, parts


def headless_run(prompt_file: Path, models_dir: Path, work: Path) -> tuple[float, float]:
    """(in-process run_finished duration in s, whole process wall time in s)."""
    events = work / "events.jsonl"
    out = work / "out"
    start = time.perf_counter()
    harness.run_headless(
        [str(prompt_file), "--models-dir", str(models_dir), "--out", str(out), "--events", str(events)],
        cwd=work,
    )
    wall = time.perf_counter() - start
    finished = [json.loads(line) for line in events.read_text().splitlines()
                if '"run_finished"' in line]
    finished = [e for e in finished if e.get("event") == "run_finished"]
    assert finished and finished[-1]["ok"], finished
    return finished[-1]["duration_ms"] / 1000.0, wall


def bench_overhead(server: harness.Server, models_dir: Path, work: Path, runs: int) -> dict:
    prompt = harness.load_prompt()
    prompt_file = work / "klein_tiny_api.json"
    prompt_file.write_text(json.dumps(prompt))

    headless, headless_wall = [], []
    for i in range(runs + 1):
        run_dir = work / f"headless-{i}"
        run_dir.mkdir()
        inproc, wall = headless_run(prompt_file, models_dir, run_dir)
        if i:  # the first run warms the page cache
            headless.append(inproc)
            headless_wall.append(wall)

    cold, cold_cached, cold_parts = [], [], []
    for i in range(runs + 1):
        post(f"{server.url}/free", {"unload_models": True, "free_memory": True})
        seconds, cached, parts = asyncio.run(timed_server_run(server, prompt))
        if i:
            cold.append(seconds)
            cold_cached.append(len(cached))
            cold_parts.append(parts)

    warm, warm_cached, warm_parts = [], [], []
    for i in range(runs + 1):
        varied = harness.load_prompt()
        varied["7"]["inputs"]["noise_seed"] = 1000 + i
        seconds, cached, parts = asyncio.run(timed_server_run(server, varied))
        if i:
            warm.append(seconds)
            warm_cached.append(len(cached))
            warm_parts.append(parts)

    def ms(values):
        return {"median_ms": statistics.median(values) * 1e3, "min_ms": min(values) * 1e3,
                "max_ms": max(values) * 1e3, "n": len(values)}

    def median_parts(parts):
        return {k: statistics.median(p[k] for p in parts) for k in parts[0]}

    return {
        "headless_in_process": ms(headless),
        "headless_process_wall": ms(headless_wall),
        "server_cold": {**ms(cold), "cached_nodes": cold_cached,
                        "median_parts_ms": median_parts(cold_parts)},
        "server_warm": {**ms(warm), "cached_nodes": warm_cached,
                        "median_parts_ms": median_parts(warm_parts)},
        "ratio_cold_to_headless": statistics.median(cold) / statistics.median(headless),
        "added_cold_ms": (statistics.median(cold) - statistics.median(headless)) * 1e3,
    }


# ------------------------------------------------------------------------------------ (b)

class Listener:
    def __init__(self, index: int):
        self.client_id = f"bench-{index}-{uuid.uuid4().hex[:8]}"
        self.connect_s = None
        self.messages: list[tuple[float, dict]] = []  # (wall time received, message)


async def listen(server: harness.Server, listener: Listener, stop: asyncio.Event, ready):
    start = time.perf_counter()
    async with websockets.connect(
        f"ws://{server.host}/ws?clientId={listener.client_id}", max_size=None, open_timeout=60
    ) as ws:
        first = json.loads(await ws.recv())
        listener.connect_s = time.perf_counter() - start
        assert first["type"] == "status" and first["data"]["sid"] == listener.client_id, first
        ready()
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=0.2)
            except asyncio.TimeoutError:
                continue
            if isinstance(msg, str):
                listener.messages.append((time.time(), json.loads(msg)))


async def fan_out(server: harness.Server, clients: int) -> dict:
    pid = server.proc.pid
    rss = {"idle": rss_bytes(pid)}
    listeners = [Listener(i) for i in range(clients)]
    stop = asyncio.Event()
    connected = 0
    all_connected = asyncio.Event()

    def ready():
        nonlocal connected
        connected += 1
        if connected == clients:
            all_connected.set()

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(listen(server, l, stop, ready)) for l in listeners]
    await asyncio.wait_for(all_connected.wait(), timeout=120)
    connect_all_s = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    rss["connected"] = rss_bytes(pid)

    peak = {"bytes": 0}
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak["bytes"] = max(peak["bytes"], rss_bytes(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    ids = []
    start = time.perf_counter()
    for i, listener in enumerate(listeners):
        prompt = harness.load_prompt()
        prompt["7"]["inputs"]["noise_seed"] = 5000 + i
        answer = await asyncio.to_thread(
            post, f"{server.url}/prompt", {"prompt": prompt, "client_id": listener.client_id}
        )
        ids.append(answer["prompt_id"])
    queued_s = time.perf_counter() - start
    for prompt_id in ids:
        await asyncio.to_thread(server.wait_history, prompt_id, 600)
    all_done_s = time.perf_counter() - start
    await asyncio.sleep(1.0)  # let the last broadcasts arrive everywhere
    sampling.set()
    sampler.join()
    rss["peak_while_running"] = peak["bytes"]
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)
    rss["after_disconnect"] = rss_bytes(pid)

    # Every status broadcast, in order, for each client; and its own prompt's final executing.
    statuses = [[json.dumps(m["data"], sort_keys=True) for _, m in l.messages if m["type"] == "status"]
                for l in listeners]
    same_statuses = sum(1 for st in statuses if st == statuses[0])
    finished = [sum(1 for _, m in l.messages
                    if m["type"] == "executing" and m["data"].get("node") is None
                    and m["data"].get("prompt_id") == ids[i])
                for i, l in enumerate(listeners)]
    foreign = sum(1 for i, l in enumerate(listeners) for _, m in l.messages
                  if m["type"] != "status" and m["data"].get("prompt_id") not in (None, ids[i]))

    latencies_ms = []
    for i, listener in enumerate(listeners):
        for received, m in listener.messages:
            ts = m["data"].get("timestamp")
            if isinstance(ts, (int, float)) and m["data"].get("prompt_id") == ids[i]:
                latencies_ms.append(received * 1e3 - ts)

    # Spread of each status broadcast over the clients (the i-th status of each client is the
    # same broadcast when every client got the same sequence).
    spreads_ms = []
    if same_statuses == clients:
        times = [[t for t, m in l.messages if m["type"] == "status"] for l in listeners]
        for k in range(len(times[0])):
            column = [t[k] for t in times]
            spreads_ms.append((max(column) - min(column)) * 1e3)

    connects_ms = [l.connect_s * 1e3 for l in listeners]
    return {
        "clients": clients,
        "prompts": len(ids),
        "queueing_all_s": queued_s,
        "all_finished_s": all_done_s,
        "connect_all_ms": connect_all_s * 1e3,
        "connect_ms": {"p50": percentile(connects_ms, 0.5), "p95": percentile(connects_ms, 0.95),
                       "p99": percentile(connects_ms, 0.99), "max": max(connects_ms)},
        "messages_per_client_min_max": [min(len(l.messages) for l in listeners),
                                        max(len(l.messages) for l in listeners)],
        "status_broadcasts_per_client": len(statuses[0]),
        "clients_with_every_status": same_statuses,
        "own_final_executing_per_client_min_max": [min(finished), max(finished)],
        "messages_of_other_clients_prompts": foreign,
        "timestamped_event_latency_ms": {
            "n": len(latencies_ms), "p50": percentile(latencies_ms, 0.5),
            "p95": percentile(latencies_ms, 0.95), "p99": percentile(latencies_ms, 0.99),
            "max": max(latencies_ms) if latencies_ms else float("nan"),
        },
        "broadcast_spread_ms": {
            "n": len(spreads_ms), "p50": percentile(spreads_ms, 0.5),
            "p95": percentile(spreads_ms, 0.95), "max": max(spreads_ms) if spreads_ms else float("nan"),
        },
        "server_rss_mib": {k: v / 2**20 for k, v in rss.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", help="veetance binary (default: $VEETANCE_BIN or target/debug/veetance)")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per variant (a)")
    parser.add_argument("--clients", type=int, default=100, help="WebSocket clients (b)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.bin:
        os.environ["VEETANCE_BIN"] = args.bin

    with tempfile.TemporaryDirectory(prefix="veetance-bench-") as tmp:
        root = Path(tmp)
        models = harness.make_models_dir(root / "models")
        server = harness.start_server(root / "serve", models)
        try:
            work = root / "work"
            work.mkdir()
            results = {
                "binary": str(harness.veetance_bin()),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "load_average_before": os.getloadavg(),
                "overhead": bench_overhead(server, models, work, args.runs),
                "fan_out": asyncio.run(fan_out(server, args.clients)),
                "load_average_after": os.getloadavg(),
            }
        finally:
            server.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
