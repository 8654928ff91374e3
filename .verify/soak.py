#!/usr/bin/env python3
"""Soak of `veetance serve` (issue 20, "Must show"): many prompts on the tiny models through the
server, with random cancels and client disconnects; then every prompt must be accounted for and
the server's resident memory at the end must be within 10% of what it was after the first 100.

Each prompt is the tiny FLUX.2 graph (assets/tiny-models, 64x64, `--steps` sampler steps) with
its own seed, so the sampler, the decode and the save run every time while the loaded models
stay cached, as for a client sending variations. Prompts get client-made UUIDs. For each one
the script picks at random (weights in ACTIONS):

- `plain`: POST /prompt with the watcher's client_id (one WebSocket client that reads every
  message for the whole soak);
- `delete`: POST, then POST /queue {"delete": [id]} at once (a cancel while pending; it may
  already run, then it finishes or is interrupted like any other);
- `interrupt`: POST, then POST /interrupt {"prompt_id": id} after 0-50 ms;
- `global_interrupt`: POST, then POST /interrupt with no body after 0-50 ms (cancels whatever
  runs, maybe another prompt);
- `http_drop`: the POST sent on a raw socket that is closed without reading the answer (the
  client never learns whether it was queued);
- `ws_drop`: a WebSocket opened with a fresh clientId, the prompt queued for it, the socket
  closed abruptly (no close frame) 0-100 ms later, mid-run or before.

The queue is kept at most `--depth` prompts deep. At the end (queue empty) every id must be in
/history (status success, or error with `execution_interrupted`), or be one whose deletion was
asked and that is in neither the history nor the queue, or be an `http_drop` the server never
queued. Anything else is lost, and the soak fails. Resident memory (VmRSS from /proc) is read
after the 100th prompt finished and at the end, and every 500 prompts between.

Run from the repository root after `cargo build --release -p veetance-cli`:

    python3 .verify/soak.py [--bin target/release/veetance] [--prompts 10000] [--minutes 30]
        [--steps 2] [--depth 8] [--seed 1] [--json soak.json]

`--minutes` stops submitting when that much time has passed, whatever `--prompts` says (the
report says how many were sent). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "assets" / "tiny-models"

ACTIONS = {
    "plain": 70,
    "delete": 8,
    "interrupt": 8,
    "global_interrupt": 2,
    "http_drop": 6,
    "ws_drop": 6,
}


def tiny_prompt(seed: int, steps: int) -> dict:
    return {
        "1": {"class_type": "LoadDiffusionModel",
              "inputs": {"file": "flux2-klein-tiny.safetensors"}},
        "2": {"class_type": "LoadTextEncoder", "inputs": {"file": "qwen3-tiny.safetensors"}},
        "3": {"class_type": "TextEncode",
              "inputs": {"text": "a red fox", "text_encoder": ["2", 0]}},
        "4": {"class_type": "LoadVae", "inputs": {"file": "flux2-vae-tiny"}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 64, "height": 64, "batch": 1}},
        "6": {"class_type": "Sampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "latent": ["5", 0],
            "seed": seed, "steps": steps}},
        "7": {"class_type": "VaeDecode", "inputs": {"vae": ["4", 0], "latent": ["6", 0]}},
        "8": {"class_type": "SaveImage",
              "inputs": {"images": ["7", 0], "filename_prefix": "soak"}},
    }


def rss_bytes(pid: int) -> int:
    return memory(pid)["VmRSS"]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and its parts: RssAnon (the heap: what a leak grows) and RssFile (pages of the
    binary and of mapped files, which grow as new code runs and the kernel may drop)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) * 1024
    return out


class Api:
    def __init__(self, port: int):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def call(self, path: str, body: dict | None = None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if raw.strip() else None

    def queue_remaining(self) -> int:
        return self.call("/prompt")["exec_info"]["queue_remaining"]


def ws_connect(port: int, client_id: str) -> socket.socket:
    """A WebSocket by hand (no third-party client): the handshake, then the raw socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
         "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
         f"Sec-WebSocket-Key: {key}\r\n\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError("the WebSocket handshake was cut")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"WebSocket refused: {head[:200]!r}")
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


class Watcher(threading.Thread):
    """One WebSocket client for the whole soak: reads every frame, counts the messages and
    the `executing {node: null}` of each prompt."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.client_id = "soak-watcher"
        self.sock = ws_connect(port, self.client_id)
        self.sock.settimeout(None)
        self.messages = 0
        self.finished: set[str] = set()
        self.closed_by_server: str | None = None

    def run(self) -> None:
        try:
            while True:
                b0, b1 = recv_exact(self.sock, 2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(recv_exact(self.sock, 2), "big")
                elif n == 127:
                    n = int.from_bytes(recv_exact(self.sock, 8), "big")
                payload = recv_exact(self.sock, n)
                opcode = b0 & 0x0F
                if opcode == 0x8:
                    self.closed_by_server = payload[2:].decode(errors="replace")
                    return
                if opcode == 0x1:
                    self.messages += 1
                    m = json.loads(payload)
                    d = m.get("data", {})
                    if m.get("type") == "executing" and d.get("node") is None:
                        self.finished.add(d.get("prompt_id"))
        except (ConnectionError, OSError) as e:
            if self.closed_by_server is None:
                self.closed_by_server = f"connection lost: {e}"


def start_server(binary: Path, work: Path, ram_budget: str,
                 wrap: list[str]) -> tuple[subprocess.Popen, int, Path]:
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log_path = work / "server.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            wrap + [str(binary), "serve", "--listen", f"127.0.0.1:{port}",
             "--models-dir", str(TINY), "--out", str(work / "out"),
             "--input-dir", str(work / "input"), "--temp-dir", str(work / "temp"),
             "--state-dir", str(work / "state"), "--user-directory", str(work / "user"),
             "--ram-budget", ram_budget],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                Api(port).queue_remaining()
                return proc, port, log_path
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise SystemExit(f"veetance serve did not start:\n{log_path.read_text()[-3000:]}")


def post_and_drop(port: int, body: dict) -> None:
    """POST /prompt and close the socket without reading the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            (f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
            + data
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "veetance")
    ap.add_argument("--prompts", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ram-budget", default="6MiB",
                    help="the server's --ram-budget: small, so that its result cache is full "
                         "(models and the newest results) before the first 100 prompts end")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--wrap", default="",
                    help="a command the server runs under, e.g. 'heaptrack -o /tmp/soak' to "
                         "see which allocations stay (the memory readings are then the "
                         "wrapper's, not the server's)")
    ap.add_argument("--weights", default="",
                    help="override action weights, e.g. plain=1,http_drop=0,ws_drop=0 "
                         "(to tell which kind of prompt the memory grows with)")
    args = ap.parse_args()
    args.bin = args.bin.resolve()
    if not args.bin.is_file():
        raise SystemExit(f"{args.bin} does not exist: cargo build --release -p veetance-cli")
    rng = random.Random(args.seed)
    table = dict(ACTIONS)
    for item in filter(None, args.weights.split(",")):
        name, _, weight = item.partition("=")
        if name not in table:
            sys.exit(f"--weights: unknown action {name!r} (one of {', '.join(ACTIONS)})")
        table[name] = int(weight)
    actions = list(table)
    weights = [table[a] for a in actions]

    work = Path(tempfile.mkdtemp(prefix="veetance-soak-"))
    proc, port, log_path = start_server(args.bin, work, args.ram_budget, shlex.split(args.wrap))
    api = Api(port)
    watcher = Watcher(port)
    watcher.start()
    print(f"soak: {args.bin} on port {port}, pid {proc.pid}, work {work}", flush=True)

    sent: dict[str, str] = {}  # prompt id -> action
    delete_asked: set[str] = set()
    rss_samples: list[tuple[int, int]] = []  # (prompts sent, VmRSS bytes)
    rss_after_100: int | None = None
    started = time.monotonic()
    deadline = started + args.minutes * 60
    errors: list[str] = []
    first_100_done_at: float | None = None
    mem_after_100: dict[str, int] = {}

    def finished_count() -> int:
        return len(watcher.finished)

    i = 0
    try:
        while i < args.prompts and time.monotonic() < deadline:
            while api.queue_remaining() >= args.depth:
                time.sleep(0.005)
            if rss_after_100 is None and finished_count() >= 100:
                mem_after_100 = memory(proc.pid)
                rss_after_100 = mem_after_100["VmRSS"]
                first_100_done_at = time.monotonic()
                rss_samples.append((i, rss_after_100))
                print(f"  after the first 100: VmRSS {rss_after_100 / 2**20:.1f} MiB", flush=True)
            if i % 500 == 0 and i:
                rss = rss_bytes(proc.pid)
                rss_samples.append((i, rss))
                rate = i / (time.monotonic() - started)
                print(f"  {i} sent, {finished_count()} finished, {rate:.1f} prompts/s, "
                      f"VmRSS {rss / 2**20:.1f} MiB", flush=True)
            action = rng.choices(actions, weights)[0]
            pid = str(uuid.uuid4())
            body = {"prompt": tiny_prompt(seed=i + 1, steps=args.steps), "prompt_id": pid,
                    "client_id": watcher.client_id}
            sent[pid] = action
            try:
                if action == "http_drop":
                    post_and_drop(port, body)
                elif action == "ws_drop":
                    s = ws_connect(port, f"soak-drop-{i}")
                    body["client_id"] = f"soak-drop-{i}"
                    api.call("/prompt", body)
                    time.sleep(rng.uniform(0, 0.1))
                    # An abrupt close: RST instead of a close frame.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 (1).to_bytes(4, "little") + (0).to_bytes(4, "little"))
                    s.close()
                else:
                    api.call("/prompt", body)
                    if action == "delete":
                        delete_asked.add(pid)
                        api.call("/queue", {"delete": [pid]})
                    elif action == "interrupt":
                        time.sleep(rng.uniform(0, 0.05))
                        api.call("/interrupt", {"prompt_id": pid})
                    elif action == "global_interrupt":
                        time.sleep(rng.uniform(0, 0.05))
                        if rng.random() < 0.5:
                            api.call("/interrupt", {})
                        else:  # no body at all
                            urllib.request.urlopen(urllib.request.Request(
                                api.base + "/interrupt", data=b"", method="POST"), timeout=60)
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                errors.append(f"prompt {i} ({action}): {e}")
                if proc.poll() is not None:
                    break
            i += 1
        # Drain.
        drain_deadline = time.monotonic() + 600
        while api.queue_remaining() > 0 and time.monotonic() < drain_deadline:
            time.sleep(0.05)
        sending_s = time.monotonic() - started
        time.sleep(0.5)
        mem_end = memory(proc.pid)
        rss_end = mem_end["VmRSS"]
        rss_samples.append((i, rss_end))
        history = api.call("/history", timeout=300)
        queue = api.call("/queue")
    finally:
        alive = proc.poll() is None

    in_queue = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
    outcome: dict[str, int] = {}
    lost: list[str] = []
    for pid, action in sent.items():
        entry = history.get(pid)
        if entry is not None:
            status = entry["status"]
            kinds = [m[0] for m in status.get("messages", [])]
            if status["status_str"] == "success":
                key = "success"
            elif "execution_interrupted" in kinds:
                key = "interrupted"
            else:
                key = "error"
            outcome[key] = outcome.get(key, 0) + 1
        elif pid in in_queue:
            lost.append(f"{pid} ({action}) still queued")
        elif pid in delete_asked:
            outcome["deleted while pending"] = outcome.get("deleted while pending", 0) + 1
        elif action == "http_drop":
            outcome["dropped before the answer, never queued"] = (
                outcome.get("dropped before the answer, never queued", 0) + 1)
        else:
            lost.append(f"{pid} ({action})")

    # Files: one PNG per successful prompt, none from interrupted ones.
    pngs = sum(1 for _ in (work / "out").rglob("*.png"))
    watcher_messages, watcher_closed = watcher.messages, watcher.closed_by_server
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    ratio = (rss_end / rss_after_100) if rss_after_100 else float("nan")
    report = {
        "binary": str(args.bin),
        "prompts_sent": i,
        "requested": args.prompts,
        "minutes_limit": args.minutes,
        "steps": args.steps,
        "ram_budget": args.ram_budget,
        "seconds": round(sending_s, 1),
        "seconds_per_prompt": round(sending_s / max(i, 1), 4),
        "actions": {a: sum(1 for x in sent.values() if x == a) for a in actions},
        "outcome": outcome,
        "lost": lost,
        "client_errors": errors[:20],
        "client_error_count": len(errors),
        "pngs_in_output": pngs,
        "watcher_messages": watcher_messages,
        "watcher_closed_before_the_end": watcher_closed,
        "server_alive_at_end": alive,
        "rss_after_100_mib": round(rss_after_100 / 2**20, 1) if rss_after_100 else None,
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_end_over_after_100": round(ratio, 3),
        "after_100_mib": {k: round(v / 2**20, 1) for k, v in mem_after_100.items()},
        "end_mib": {k: round(v / 2**20, 1) for k, v in mem_end.items()},
        "rss_samples_mib": [(n, round(b / 2**20, 1)) for n, b in rss_samples],
        "first_100_seconds": round(first_100_done_at - started, 1) if first_100_done_at else None,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = (not lost and alive and rss_after_100 is not None and abs(ratio - 1) <= 0.10
          and pngs >= outcome.get("success", 0))
    print("soak:", "PASS" if ok else "FAIL", flush=True)
    if ok:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work} (server log: {log_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
