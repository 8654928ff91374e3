#!/usr/bin/env python3
"""Writes the seeded inputs of one transformer forward for `veetance bench --inputs` and
bench_diffusers.py: img (1, N, 128), img_ids (N, 4) = (0, y, x, 0), txt (1, T, ctx),
txt_ids (T, 4) = (0, 0, 0, l), t (1,) = the sigma; all f32.
Usage: bench_inputs.py OUT.safetensors --variant 4b|9b|tiny [--width W --height H --seed S]"""

import argparse

import torch
from safetensors.torch import save_file

from bench_common import MAX_LEN, TRANSFORMER


def make(variant, width, height, seed, sigma=0.75):
    h, w = height // 16, width // 16
    n_txt, ctx = MAX_LEN[variant], TRANSFORMER[variant]["joint_attention_dim"]
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(1, h * w, 128, generator=g)
    txt = torch.randn(1, n_txt, ctx, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack([torch.zeros(h * w), ys.flatten().float(), xs.flatten().float(), torch.zeros(h * w)], 1)
    txt_ids = torch.stack([torch.zeros(n_txt), torch.zeros(n_txt), torch.zeros(n_txt), torch.arange(n_txt).float()], 1)
    # 0.75 is exact in bf16, so both sides see the same timestep (750) whatever they round.
    t = torch.tensor([sigma], dtype=torch.float32)
    return {"img": img, "img_ids": img_ids, "txt": txt, "txt_ids": txt_ids, "t": t}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--variant", choices=list(TRANSFORMER), default="4b")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    inputs = make(a.variant, a.width, a.height, a.seed)
    save_file({k: v.contiguous() for k, v in inputs.items()}, a.out)
    print(f"inputs: {a.out} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in inputs.items())})")


if __name__ == "__main__":
    main()
