#!/usr/bin/env python3
"""Builds assets/parity/resample_ref.safetensors: ComfyUI's image scaling methods on small images,
as ComfyUI computes them (comfy.utils.common_upscale): torch.nn.functional.interpolate for
nearest-exact, bilinear, area and bicubic (align_corners=False, no antialiasing, as common_upscale
calls it), and Pillow's LANCZOS on 8-bit pixels for lanczos (comfy.utils.lanczos: clip(255*x)
truncated to uint8, Image.resize, /255). Also ImageScaleToTotalPixels' target sizes.

The Rust test nodes/basic/tests/resample.rs compares veetance-nodes-basic's `resample` module
with it; CI needs no Python.

Run (CPU, a second; the venv of .verify/parity/make_fixtures.py):
    /work/venv-parity/bin/python .verify/parity/make_resample_fixture.py
"""
import json
import math
import os

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "assets", "parity", "resample_ref.safetensors")


def lanczos(samples, w, h):
    out = []
    for image in samples:
        arr = np.clip(255.0 * image.movedim(0, -1).numpy(), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((w, h), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(img).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out)


def scale(samples, w, h, method):
    if method == "lanczos":
        return lanczos(samples, w, h)
    if method in ("bilinear", "bicubic"):
        return F.interpolate(samples, size=(h, w), mode=method, align_corners=False)
    return F.interpolate(samples, size=(h, w), mode=method)


def total_pixels(w, h, megapixels, steps):
    total = megapixels * 1024 * 1024
    s = math.sqrt(total / (w * h))
    return int(round(w * s / steps) * steps), int(round(h * s / steps) * steps)


def main():
    gen = torch.Generator().manual_seed(7)
    # (1, 3, 13, 17): values in [0, 1], as ComfyUI's IMAGE (channels first here)
    image = torch.rand(1, 3, 13, 17, generator=gen)
    out = {"input": image.movedim(1, -1).contiguous()}
    for method in ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]:
        for (w, h) in [(29, 23), (9, 7), (17, 30), (40, 6)]:
            r = scale(image, w, h, method)
            out[f"{method}_{w}x{h}"] = r.movedim(1, -1).contiguous()
    sizes = []
    for (w, h, mp, steps) in [(17, 13, 1.0, 1), (640, 480, 1.0, 1), (1000, 333, 1.0, 16), (512, 512, 0.5, 1),
                              (3000, 2000, 1.0, 1), (123, 457, 0.3, 8), (1024, 1024, 1.0, 1), (96, 64, 0.01, 1)]:
        sizes.append([w, h, mp, steps, *total_pixels(w, h, mp, steps)])
    save_file(out, OUT, metadata={"total_pixels": json.dumps(sizes), "torch": torch.__version__,
                                  "pillow": PIL.__version__})
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
