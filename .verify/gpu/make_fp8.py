#!/usr/bin/env python3
"""Writes a ComfyUI-style scaled fp8 copy of a FLUX.2 transformer (BFL layout):
every 2-D `.weight` of the blocks and modulations becomes float8_e4m3fn with a per-tensor
`<layer>.scale_weight` (amax / 448, float32), plus the empty `scaled_fp8` marker ComfyUI writes;
img_in / txt_in / time_in / final_layer and 1-D tensors stay as they are.

Usage: make_fp8.py <in.safetensors> <out.safetensors>
"""

import sys

import torch
from safetensors.torch import load_file, save_file

KEEP = ("img_in.", "txt_in.", "time_in.", "final_layer.")


def main(src, dst):
    sd = load_file(src)
    out = {}
    for name, t in sd.items():
        if t.ndim == 2 and name.endswith(".weight") and not any(k in name for k in KEEP):
            w = t.float()
            scale = (w.abs().max() / 448.0).clamp(min=1e-12)
            out[name] = (w / scale).to(torch.float8_e4m3fn)
            out[name[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
        else:
            out[name] = t
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, dst)
    print(f"{dst}: {sum(1 for t in out.values() if t.dtype == torch.float8_e4m3fn) - 1} fp8 weights")


if __name__ == "__main__":
    main(*sys.argv[1:3])
