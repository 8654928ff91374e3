"""A local Veetance cluster for the distributed tests: Debian's `nats-server -js` on a free
loopback port (its own store folder), `veetance serve --queue` front doors, and `veetance
worker`s, each a process the tests can stop, SIGKILL and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness


def nats_server_bin() -> str:
    found = os.environ.get("NATS_SERVER") or shutil.which("nats-server")
    assert found, "nats-server is not installed (Debian: apt install nats-server)"
    return found


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Cluster:
    root: Path
    models_dir: Path
    nats: subprocess.Popen
    nats_port: int
    front: harness.Server | None = None
    workers: list[Worker] = field(default_factory=list)
    started: int = 0
    # Workers write into the front door's output folder (one host, or a shared disk), or each
    # into its own (outputs reach the front door only through the queue's object store).
    shared_out: bool = True
    front_args: tuple[str, ...] = ()

    @property
    def queue_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def start_front(self, port: int | None = None) -> harness.Server:
        """A front door with the cluster's folders (the output folder is the workers', as on
        one host or a shared disk, so that clients that look on disk find the files)."""
        self.front = harness.start_server(
            self.root / "front", self.models_dir, ("--queue", self.queue_url, *self.front_args),
            port=port,
        )
        return self.front

    def start_worker(self, name: str | None = None) -> Worker:
        self.started += 1
        name = name or f"w{self.started}"
        front = self.root / "front"
        log_path = self.root / f"worker-{name}-{self.started}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [
                str(harness.veetance_bin()), "worker", "--queue", self.queue_url,
                "--name", name, "--models-dir", str(self.models_dir),
                "--out", str(front / "out" if self.shared_out else self.root / f"out-{name}"),
                "--input-dir", str(front / "input"),
                "--temp-dir", str(front / "temp" if self.shared_out else self.root / f"temp-{name}"),
                "--state-dir", str(self.root / f"state-{name}"),
            ],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        worker = Worker(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def worker_by_pid(self, pid: int) -> Worker:
        return next(w for w in self.workers if w.pid == pid)

    def logs(self) -> str:
        parts = []
        if self.front:
            parts.append(f"--- front door ---\n{self.front.log_tail(30)}")
        for w in self.workers:
            parts.append(f"--- worker {w.name} (pid {w.pid}) ---\n{w.log_tail(20)}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.front:
            self.front.stop()
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.nats.terminate()
        try:
            self.nats.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.nats.kill()


def start_cluster(root: Path, models_dir: Path, workers: int, shared_out: bool = True,
                  front_args: tuple[str, ...] = ()) -> Cluster:
    """nats-server -js on loopback, one front door and `workers` workers."""
    root.mkdir(parents=True, exist_ok=True)
    port = harness.free_port()
    log_path = root / "nats.log"
    log = open(log_path, "wb")
    nats = subprocess.Popen(
        [nats_server_bin(), "-js", "-a", "127.0.0.1", "-p", str(port),
         "-sd", str(root / "jetstream")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    wait_port(port, nats, log_path)
    cluster = Cluster(root, models_dir, nats, port, shared_out=shared_out, front_args=front_args)
    cluster.start_front()
    for _ in range(workers):
        cluster.start_worker()
    return cluster
