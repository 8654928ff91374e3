"""ComfyUI's official FLUX.2 [klein] 4B distilled image-edit template, unmodified, through the
server with its input image uploaded by an unmodified client, and headless: one picture.

The template (`image_flux2_klein_image_edit_4b_distilled.json`, comfyui-workflow-templates-json
0.1.123, never committed) names `flux-2-klein-4b-fp8.safetensors` (mapped to the tiny transformer
in ComfyUI's scaled-fp8 format), `qwen_3_4b.safetensors` and `flux2-vae.safetensors`, and its
active subgraph loads `handbag_white.png`, scales it to 1 megapixel, VAE-encodes it and joins it
as a reference (ReferenceLatent) to the prompt; the output is the input's size, 4 steps.

1. The input images the template names are made here (seeded gradients with noise) and uploaded
   with comfy-api-simplified's `upload_image` to `/upload/image`; the UI JSON is POSTed to
   /prompt and the saved PNG fetched from /view.
2. `veetance --headless template.json --input-dir DIR` on the same files.

Both must decode to identical pixels. (nodes/comfy/tests/edit.rs shows the same templates paint
the native edit graph's pixels bit for bit.)
"""

from __future__ import annotations

import json
import random
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from comfy_api_simplified import ComfyApiWrapper
from PIL import Image

from harness import http_json, png_pixels, published_template, run_headless

TEMPLATE = "image_flux2_klein_image_edit_4b_distilled.json"
RUN_TIMEOUT = 1800


@pytest.fixture(scope="session")
def edit_template_path(request, tmp_path_factory) -> Path:
    return published_template(TEMPLATE, request, tmp_path_factory)


def input_names(template: dict) -> list[str]:
    """The file names of the template's top-level LoadImage nodes."""
    return sorted({node["widgets_values"][0] for node in template["nodes"]
                   if node["type"] == "LoadImage"})


def make_image(path: Path, seed: int) -> None:
    """A 160x120 RGB image: colour gradients with seeded noise."""
    rng = random.Random(seed)
    w, h = 160, 120
    data = bytearray()
    for y in range(h):
        for x in range(w):
            for base in (x / w, y / h, (x + y) / (w + h)):
                data.append(max(0, min(255, int(base * 200 + 20 + rng.gauss(0, 10)))))
    Image.frombytes("RGB", (w, h), bytes(data)).save(path)


def fetch_saved(server, entry: dict) -> bytes:
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 1, entry["outputs"]
    query = urllib.parse.urlencode({k: images[0][k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}") as resp:
        return resp.read()


def test_edit_template_paints_one_picture_through_the_server_and_headless(
        server, models_dir, edit_template_path, tmp_path, timings):
    template = json.loads(edit_template_path.read_text())
    names = input_names(template)
    assert "handbag_white.png" in names, names
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    api = ComfyApiWrapper(server.url)
    for seed, name in enumerate(names):
        make_image(inputs / name, seed)
        uploaded = api.upload_image(inputs / name, subfolder="")
        assert uploaded["name"] == name, uploaded

    start = time.monotonic()
    answer = http_json(f"{server.url}/prompt", {"prompt": template})
    assert answer.get("node_errors") == {}, answer
    entry = server.wait_history(answer["prompt_id"], timeout=RUN_TIMEOUT)
    timings["edit template via server (upload + UI JSON)"] = time.monotonic() - start
    served = png_pixels(fetch_saved(server, entry))
    classes = {node["class_type"] for node in entry["prompt"][2].values()}
    assert {"ReferenceLatent", "VAEEncode", "ImageScaleToTotalPixels", "LoadImage"} <= classes, classes

    out = tmp_path / "headless"
    start = time.monotonic()
    run_headless([str(edit_template_path), "--models-dir", str(models_dir), "--input-dir",
                  str(inputs), "--out", str(out)], cwd=tmp_path, timeout=RUN_TIMEOUT)
    timings["edit template via --headless"] = time.monotonic() - start
    (png,) = sorted(out.rglob("*.png"))
    headless = png_pixels(png.read_bytes())

    # The output has the (scaled) input's size: 160x120 at 1 megapixel, rounded to whole pixels.
    assert served[0] == headless[0], (served[0], headless[0])
    assert served == headless, "the server and headless runs painted different pixels"
