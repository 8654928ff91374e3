"""ComfyUI's own web frontend on `veetance serve`, in a real browser.

The frontend is `comfyui-frontend-package` from PyPI at the version pinned in requirements.txt
(never copied into this repository), found by `veetance serve --frontend auto` in this Python
environment, with the workflow templates of `comfyui-workflow-templates` (also pinned). The
browser is Debian's Chromium, headless, driven by `playwright-core` from npm
(tests/browser/package.json); tests/browser/web_editor.mjs holds the steps. The models folder
links ComfyUI's file names to the tiny random-weight models.

The server is started, the browser runs the first part (page, template browser, Run, progress,
previews, the image in the canvas, the queue panel and the output gallery, a saved workflow across a reload, a
setting changed in the settings dialog), the server is stopped and started again on the same
folders, and the browser, in a new profile, finds the setting and the workflow again.

Screenshots of every step land in $VEETANCE_SCREENSHOTS when set (docs/web-editor/ holds the
ones looked at for the docs), else in pytest's temporary folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, start_server

FRONTEND_VERSION = "1.58.1"
BROWSER_DIR = REPO / "tests" / "browser"
STEP_TIMEOUT = 1800


def run_browser(url: str, shots: Path, phase: str) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed (.ci/run installs Node.js's npm packages; see README)"
    proc = subprocess.run(
        [node, str(BROWSER_DIR / "web_editor.mjs"), url, str(shots), phase],
        cwd=BROWSER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=STEP_TIMEOUT,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    assert proc.returncode == 0 and summary.get("ok"), (
        f"the browser's {phase} part failed (exit {proc.returncode}):\n{proc.stdout[-8000:]}"
    )
    return summary


def test_comfyuis_frontend_drives_veetance(models_dir, tmp_path, timings):
    chromium = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    assert chromium.is_file(), f"{chromium} is missing: install Debian's chromium (.ci/run does)"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is missing: npm ci --prefix tests/browser (.ci/run does)"
    )
    installed = importlib.metadata.version("comfyui-frontend-package")
    assert installed == FRONTEND_VERSION, (
        f"comfyui-frontend-package {installed} is installed; this test is pinned to "
        f"{FRONTEND_VERSION} (tests/python/requirements.txt)"
    )

    shots = Path(os.environ.get("VEETANCE_SCREENSHOTS") or tmp_path / "shots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "serve"
    # `--frontend auto` asks this environment's python for the package.
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
    args = ("--frontend", "auto", "--preview-method", "auto")

    server = start_server(root, models_dir, args, env=env)
    try:
        start = time.monotonic()
        first = run_browser(server.url, shots, "first")
        timings["web editor: load, template, run, save, setting"] = time.monotonic() - start
    finally:
        server.stop()
    log = server.log_tail(400)
    assert f"frontend {FRONTEND_VERSION} from" in log, log

    server = start_server(root, models_dir, args, env=env)
    try:
        start = time.monotonic()
        second = run_browser(server.url, shots, "restarted")
        timings["web editor: after a server restart"] = time.monotonic() - start
    finally:
        server.stop()

    steps = [s["name"] for s in first["steps"] + second["steps"]]
    assert steps == [
        "page-loads", "template-browser", "template-loaded", "progress", "preview",
        "image-in-canvas", "queue-panel", "output-gallery", "workflow-saved", "workflow-after-reload",
        "setting-changed", "setting-survives-restart", "workflow-survives-restart",
        "node-library",
    ], steps
    saved = root / "user" / "default" / "workflows" / "veetance-browser-test.json"
    assert json.loads(saved.read_text())["nodes"], f"{saved} holds no graph"
    settings = json.loads((root / "user" / "default" / "comfy.settings.json").read_text())
    assert settings["Comfy.EnableTooltips"] is False, settings


def test_the_frontend_signs_in_to_a_server_with_a_token(models_dir, tmp_path):
    """`--token`: the page is refused until the browser signs in at `/?token=`, after which its
    cookie carries every request and the WebSocket."""
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is missing: npm ci --prefix tests/browser (.ci/run does)"
    )
    shots = Path(os.environ.get("VEETANCE_SCREENSHOTS") or tmp_path / "shots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    token = "browser-test-token"
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
    server = start_server(tmp_path / "serve", models_dir,
                          ("--frontend", "auto", "--token", token), env=env)
    try:
        os.environ["VEETANCE_TOKEN"] = token
        summary = run_browser(server.url, shots, "token")
    finally:
        os.environ.pop("VEETANCE_TOKEN", None)
        server.stop()
    assert [s["name"] for s in summary["steps"]] == ["token-sign-in"]
