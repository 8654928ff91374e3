"""ComfyUI's official FLUX.2 [klein] text-to-image template, unmodified, four ways to one picture.

The template (`image_flux2_klein_text_to_image.json` from PyPI's
comfyui-workflow-templates-json 0.1.123) is fetched and unpacked at test time, never committed.
Its model file names resolve in a models folder that links them to the tiny random-weight models
(harness.MODEL_FILES). It runs at its own settings: 1024x1024, 20 steps, CFG 5, seed 0.

1. its UI JSON, POSTed to /prompt of `veetance serve`;
2. the API prompt the server stored for it in /history, POSTed back (after POST /free);
3. `veetance --headless template.json`;
4. the equivalent native workflow, workflows/flux2-klein-tiny-comfy-equivalent.ron, headless,
   with the template's prompt text (read from the template) set on its prompt node. It names the
   tiny models by their paths in assets/ (the files the models folder links to), so it runs
   from the repository root.

All four must decode to identical pixels (compared as decoded pixel arrays, not PNG bytes).
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from harness import REPO, http_json, png_pixels, published_template, run_headless

TEMPLATE_MEMBER = "comfyui_workflow_templates_json/templates/image_flux2_klein_text_to_image.json"
NATIVE_WORKFLOW = REPO / "workflows" / "flux2-klein-tiny-comfy-equivalent.ron"
RUN_TIMEOUT = 1800


@pytest.fixture(scope="session")
def template_path(request, tmp_path_factory) -> Path:
    return published_template(Path(TEMPLATE_MEMBER).name, request, tmp_path_factory)


def post_prompt(server, prompt: dict) -> str:
    answer = http_json(f"{server.url}/prompt", {"prompt": prompt})
    assert answer.get("node_errors") == {}, answer
    return answer["prompt_id"]


def saved_image(server, entry: dict) -> bytes:
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 1, entry["outputs"]
    image = images[0]
    query = urllib.parse.urlencode(
        {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
    )
    with urllib.request.urlopen(f"{server.url}/view?{query}") as resp:
        return resp.read()


def only_png(folder: Path) -> bytes:
    pngs = sorted(folder.rglob("*.png"))
    assert len(pngs) == 1, pngs
    return pngs[0].read_bytes()


def template_prompt(template: dict) -> str:
    """The text of the template's "Prompt" node (a PrimitiveStringMultiline at the top level)."""
    (text,) = [node["widgets_values"][0] for node in template["nodes"]
               if node["type"] == "PrimitiveStringMultiline"]
    return text


def test_template_gives_identical_pixels_four_ways(server, template_path, models_dir, tmp_path,
                                                     timings):
    template = json.loads(template_path.read_text())
    pictures = {}

    start = time.monotonic()
    ui_id = post_prompt(server, template)
    ui_entry = server.wait_history(ui_id, timeout=RUN_TIMEOUT)
    timings["template via server, UI JSON"] = time.monotonic() - start
    pictures["server, UI JSON"] = saved_image(server, ui_entry)

    api_prompt = ui_entry["prompt"][2]
    assert all("class_type" in node and "inputs" in node for node in api_prompt.values()), (
        "history's prompt is not an API prompt"
    )
    classes = sorted({node["class_type"] for node in api_prompt.values()})
    assert "SamplerCustomAdvanced" in classes and "MarkdownNote" not in classes, classes
    # Out of the cache, so that the API form is computed again rather than served from memory.
    urllib.request.urlopen(urllib.request.Request(
        f"{server.url}/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode()
    )).read()
    start = time.monotonic()
    api_id = post_prompt(server, api_prompt)
    api_entry = server.wait_history(api_id, timeout=RUN_TIMEOUT)
    timings["template via server, API form"] = time.monotonic() - start
    pictures["server, API form"] = saved_image(server, api_entry)

    out = tmp_path / "headless-json"
    start = time.monotonic()
    run_headless([str(template_path), "--models-dir", str(models_dir), "--out", str(out)],
                 cwd=tmp_path, timeout=RUN_TIMEOUT)
    timings["template via --headless, UI JSON"] = time.monotonic() - start
    pictures["headless, UI JSON"] = only_png(out)

    assert NATIVE_WORKFLOW.is_file(), f"{NATIVE_WORKFLOW} is missing"
    out = tmp_path / "headless-ron"
    start = time.monotonic()
    run_headless([str(NATIVE_WORKFLOW), "--set", f"prompt.text={template_prompt(template)}",
                  "--out", str(out)],
                 cwd=REPO, timeout=RUN_TIMEOUT)
    timings["native .ron via --headless"] = time.monotonic() - start
    pictures["headless, native .ron"] = only_png(out)

    decoded = {how: png_pixels(data) for how, data in pictures.items()}
    sizes = {how: (size, mode) for how, (size, mode, _) in decoded.items()}
    assert set(size for size, _ in sizes.values()) == {(1024, 1024)}, sizes
    reference_how, (_, _, reference) = next(iter(decoded.items()))
    for how, (_, _, pixels) in decoded.items():
        assert pixels == reference, f"{how} differs from {reference_how}"
