#!/usr/bin/env python3
"""Throughput of the shared queue with 1, 2 and 3 workers, and the latency it adds to one job.

Runs on CPU with the tiny models (tests/python's models folder), on loopback, with Debian's
nats-server -js. For each worker count: a cluster (cluster.py), every worker warmed with one
job, then JOBS prompts submitted at once; throughput = JOBS / (time until the last is in the
history). Latency: one prompt at a time, submit -> in /history, median of RUNS, through
`veetance serve` alone and through a front door with one worker, in the same run.

    .venv/bin/python .verify/distributed/bench.py [--jobs 60] [--runs 20]

Prints a Markdown table (docs/distributed.md has the last one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "python"))

import harness  # noqa: E402
from cluster import start_cluster  # noqa: E402


def prompt(seed: int) -> dict:
    p = harness.load_prompt()
    p["7"]["inputs"]["noise_seed"] = seed
    return p


def run_all(url: str, seeds: list[int]) -> float:
    start = time.monotonic()
    ids = [harness.http_json(f"{url}/prompt", {"prompt": prompt(s)})["prompt_id"] for s in seeds]
    pending = set(ids)
    while pending:
        history = harness.http_json(f"{url}/history")
        for pid in list(pending):
            if pid in history:
                assert history[pid]["status"]["status_str"] == "success", history[pid]
                pending.discard(pid)
        time.sleep(0.02)
    return time.monotonic() - start


def latency(url: str, runs: int, seed0: int) -> float:
    times = []
    for i in range(runs):
        start = time.monotonic()
        pid = harness.http_json(f"{url}/prompt", {"prompt": prompt(seed0 + i)})["prompt_id"]
        while pid not in harness.http_json(f"{url}/history/{pid}"):
            time.sleep(0.005)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = harness.make_models_dir(tmp / "models")
        rows = []
        for n in (1, 2, 3):
            cluster = start_cluster(tmp / f"c{n}", models, workers=n)
            try:
                run_all(cluster.front.url, list(range(n)))  # warm: every worker loads models
                seconds = run_all(cluster.front.url, list(range(100, 100 + args.jobs)))
                rows.append((n, seconds))
                if n == 1:
                    queued = latency(cluster.front.url, args.runs, 5000)
            finally:
                cluster.stop()
        alone = harness.start_server(tmp / "alone", models)
        try:
            latency(alone.url, 2, 9000)  # warm
            local = latency(alone.url, args.runs, 6000)
        finally:
            alone.stop()

    base = args.jobs / rows[0][1]
    print(f"| workers | {args.jobs} jobs | jobs/s | vs 1 worker |")
    print("|---|---|---|---|")
    for n, seconds in rows:
        rate = args.jobs / seconds
        print(f"| {n} | {seconds:.2f} s | {rate:.2f} | {rate / base:.2f}x |")
    print()
    print(f"one job, submit -> in /history, median of {args.runs}: `veetance serve` alone "
          f"{local * 1000:.0f} ms; front door + 1 worker {queued * 1000:.0f} ms; the queue adds "
          f"{(queued - local) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
