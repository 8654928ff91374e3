"""Helpers for the client tests: a `veetance serve` process on loopback, a ComfyUI models folder
mapped to the tiny models, the fixture prompt, and PNG decoding.

Nothing here speaks ComfyUI's protocol for the tests: the clients under test do that. The few
direct HTTP calls (readiness, `/history` polling) use only the standard library.
"""

from __future__ import annotations

import concurrent.futures
import copy
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = REPO / "assets" / "tiny-models"

# ComfyUI's model file names (those of its FLUX.2 [klein] templates) -> the tiny random-weight
# models. The text encoder's tokenizer and config sit beside it as `<name>.tokenizer.json` and
# `<name>.config.json`, where Veetance's loader looks for them. The VAE is the tiny diffusers
# folder (its config.json gives the tiny channel counts) under ComfyUI's file name: the BFL
# single-file tiny VAE in assets/parity carries no config, and the loader reads a single file as
# the full-size FLUX.2 VAE.
MODEL_FILES = {
    "diffusion_models/flux-2-klein-base-4b.safetensors": TINY
    / "diffusion_models/flux2-klein-tiny.safetensors",
    "diffusion_models/flux-2-klein-4b.safetensors": TINY
    / "diffusion_models/flux2-klein-tiny.safetensors",
    "text_encoders/qwen_3_4b.safetensors": TINY / "text_encoders/qwen3-tiny.safetensors",
    "text_encoders/qwen_3_4b.tokenizer.json": TINY / "text_encoders/qwen3-tiny.tokenizer.json",
    "text_encoders/qwen_3_4b.config.json": TINY / "text_encoders/qwen3-tiny.config.json",
    "vae/flux2-vae.safetensors": TINY / "vae/flux2-vae-tiny",
    # The edit template's scaled-fp8 checkpoint: the tiny transformer in ComfyUI's fp8 format
    # (`.comfy_quant` per layer, `weight_scale`), made by .verify/files/make_fixtures.py.
    "diffusion_models/flux-2-klein-4b-fp8.safetensors": REPO
    / "assets/files/flux2_tiny_fp8_comfy_quant.safetensors",
}


TEMPLATE_PACKAGE = "comfyui-workflow-templates-json==0.1.123"
TEMPLATE_WHEEL = "comfyui_workflow_templates_json-0.1.123-py3-none-any.whl"
TEMPLATE_DIR = "comfyui_workflow_templates_json/templates"


def published_template(name: str, request, tmp_path_factory) -> Path:
    """ComfyUI's template `name` as published in comfyui-workflow-templates-json 0.1.123: from
    $VEETANCE_COMFY_TEMPLATES (the templates folder .ci/run unpacks from the same wheel) when it
    holds it, else unpacked from the wheel, downloaded once into pytest's cache folder (which git
    ignores). Never committed: it is a third party's file."""
    unpacked = Path(os.environ.get("VEETANCE_COMFY_TEMPLATES", "/nonexistent")) / name
    path = tmp_path_factory.mktemp("template") / name
    if unpacked.is_file():
        path.write_bytes(unpacked.read_bytes())
        return path
    cache = Path(request.config.cache.mkdir("comfyui-templates"))
    wheel = cache / TEMPLATE_WHEEL
    if not wheel.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--quiet", TEMPLATE_PACKAGE, "--dest", str(cache)],
            check=True,
        )
    with zipfile.ZipFile(wheel) as archive:
        path.write_bytes(archive.read(f"{TEMPLATE_DIR}/{name}"))
    return path


def veetance_bin() -> Path:
    """The binary under test: $VEETANCE_BIN, else target/debug/veetance (under
    $CARGO_TARGET_DIR when that is set)."""
    if os.environ.get("VEETANCE_BIN"):
        return Path(os.environ["VEETANCE_BIN"]).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "veetance"


def make_models_dir(root: Path) -> Path:
    """A ComfyUI models folder whose file names are links to the tiny models."""
    for name, source in MODEL_FILES.items():
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        assert source.exists(), f"missing tiny model {source}"
        link.symlink_to(source)
    return root


def load_prompt(name: str = "klein_tiny_api.json") -> dict:
    """A fresh copy of a fixture prompt (tests change seeds in theirs)."""
    return copy.deepcopy(json.loads((FIXTURES / name).read_text()))


def png_pixels(data: bytes) -> tuple[tuple[int, int], str, bytes]:
    """Decodes PNG bytes: (width, height), mode, raw pixel bytes."""
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG", f"not a PNG: {img.format}"
        img.load()
        return img.size, img.mode, img.tobytes()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_timeout(fn, seconds: float):
    """Runs a blocking client call, failing the test if it does not return in time (the client
    libraries wait on the WebSocket without a timeout of their own)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"client call did not return within {seconds} s") from None
    finally:
        pool.shutdown(wait=False)


def http_json(url: str, body: dict | None = None, timeout: float = 30):
    """GET (or POST `body` as JSON) and decode the JSON answer; HTTP errors raise."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{url}: HTTP {err.code}: {err.read()[:2000]!r}") from None


@dataclass
class Server:
    """A running `veetance serve`."""

    proc: subprocess.Popen
    port: int
    root: Path
    models_dir: Path
    out_dir: Path
    input_dir: Path
    state_dir: Path
    log_path: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        """Polls /history/{id} until the prompt is in it (for flows that do not use the WS)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = http_json(f"{self.url}/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            assert self.proc.poll() is None, f"server exited:\n{self.log_tail()}"
            time.sleep(0.05)
        raise AssertionError(f"prompt {prompt_id} not in history after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(root: Path, models_dir: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """Starts `veetance serve` on a free loopback port with its own output, input and state
    folders under `root` (and its user folder, `root/user`), and waits until it answers."""
    binary = veetance_bin()
    assert binary.is_file(), (
        f"{binary} does not exist: build it (cargo build -p veetance-cli) or set VEETANCE_BIN"
    )
    dirs = {name: root / name for name in ("out", "input", "temp", "state")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    log_path = root / "server.log"
    fixed_port = port
    for attempt in range(3):
        port = fixed_port or free_port()
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--models-dir",
                str(models_dir),
                "--out",
                str(dirs["out"]),
                "--input-dir",
                str(dirs["input"]),
                "--temp-dir",
                str(dirs["temp"]),
                "--state-dir",
                str(dirs["state"]),
                *extra_args,
            ],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        server = Server(
            proc, port, root, models_dir, dirs["out"], dirs["input"], dirs["state"], log_path
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                http_json(f"{server.url}/prompt", timeout=2)
                return server
            except AssertionError:
                # An HTTP error answer (401 from a server started with --token): it is up.
                return server
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        server.stop()
        # Another process may have taken the port between free_port() and the bind: try again.
        if "Address already in use" not in server.log_tail() and "in use" not in server.log_tail():
            break
    raise AssertionError(f"veetance serve did not come up:\n{server.log_tail()}")


def run_headless(args: list[str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Runs `veetance --headless ...`, failing with its output when it exits non-zero."""
    proc = subprocess.run(
        [str(veetance_bin()), "--headless", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, f"veetance --headless {' '.join(args)} exited {proc.returncode}:\n{out}"
    return proc

