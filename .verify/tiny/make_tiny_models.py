#!/usr/bin/env python3
"""Builds the tiny FLUX.2 [klein] model set in assets/tiny-models/ and the reference image of
workflows/flux2-klein-tiny.ron.

The models are the parity fixtures' tiny Qwen3 encoder and transformer (same seeds, hence the
same weights as in assets/parity/), plus a tiny VAE with four resolution levels so that, like the
real VAE, it decodes 16 pixels per latent token. They are laid out as a ComfyUI models folder:

    assets/tiny-models/diffusion_models/flux2-klein-tiny.safetensors   (BFL single-file layout)
    assets/tiny-models/text_encoders/qwen3-tiny.safetensors            (+ .tokenizer.json, .config.json)
    assets/tiny-models/vae/flux2-vae-tiny/                             (diffusers folder with config.json)

The reference image is what diffusers' Flux2KleinPipeline paints for the tiny workflow's settings
(prompt, 64x64, 4 steps, guidance 1) from Veetance's seeded noise for the workflow's seed (the
noise generator is ported below, bit for bit), saved as uint8 in reference.safetensors. The Rust
test runs the workflow headless and compares its PNG with it. The random weights paint noise.

Run (CPU, seconds; the venv as in .verify/parity/make_fixtures.py):
    /work/venv-parity/bin/python .verify/tiny/make_tiny_models.py
"""

import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import make_fixtures as mf  # noqa: E402  (the parity fixtures' model builders)
from diffusers import AutoencoderKLFlux2  # noqa: E402
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "assets", "tiny-models")
# What workflows/flux2-klein-tiny.ron asks for; keep the two in step.
PROMPT = "a red fox sitting in the snow at dawn"
SEED = 42
WIDTH = HEIGHT = 64
STEPS = 4

MASK64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def veetance_noise(seed, n):
    """veetance_models::sampling::gaussian_noise_vec, in Python (keep the two in step)."""
    gamma = 0x9E3779B97F4A7C15
    key = mix64(seed ^ 0xD1B54A32D192ED03)
    out = []
    for j in range((n + 1) // 2):
        h = mix64((key + ((j + 1) * gamma)) & MASK64)
        u1 = ((h >> 40) + 1) / float(1 << 24)
        u2 = (h & 0xFFFFFF) / float(1 << 24)
        r = math.sqrt(-2.0 * math.log(u1))
        a = 2.0 * math.pi * u2
        out.append(np.float32(r * math.cos(a)))
        out.append(np.float32(r * math.sin(a)))
    return np.array(out[:n], dtype=np.float32)


def main():
    torch.set_grad_enabled(False)
    scratch = os.path.join(OUT, ".scratch")
    os.makedirs(scratch, exist_ok=True)
    mf.OUT = scratch  # the builders write their parity copies here; we keep what we need

    tokenizer = mf.build_tokenizer()
    qwen = mf.build_qwen3(len(tokenizer))
    transformer = mf.build_transformer()

    mf.VAE_CFG = dict(mf.VAE_CFG, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32))
    vae = AutoencoderKLFlux2(**mf.VAE_CFG).eval()
    mf.randomize(vae, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=gen))
    vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=gen))

    # ---- the models folder
    dm = os.path.join(OUT, "diffusion_models")
    te = os.path.join(OUT, "text_encoders")
    vd = os.path.join(OUT, "vae", "flux2-vae-tiny")
    for d in (dm, te, vd):
        os.makedirs(d, exist_ok=True)
    os.replace(os.path.join(scratch, "flux2_tiny_bfl.safetensors"),
               os.path.join(dm, "flux2-klein-tiny.safetensors"))
    os.replace(os.path.join(scratch, "qwen3_tiny.safetensors"), os.path.join(te, "qwen3-tiny.safetensors"))
    os.replace(os.path.join(scratch, "tokenizer.json"), os.path.join(te, "qwen3-tiny.tokenizer.json"))
    with open(os.path.join(scratch, "qwen3_tiny_config.json")) as f:
        cfg = json.load(f)
    cfg["output_layers"] = list(mf.OUT_LAYERS)
    cfg["max_length"] = mf.MAX_LEN
    with open(os.path.join(te, "qwen3-tiny.config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if "num_batches_tracked" not in k}
    save_file(state, os.path.join(vd, "diffusion_pytorch_model.safetensors"))
    vcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()}
    with open(os.path.join(vd, "config.json"), "w") as f:
        json.dump({**vcfg, "_class_name": "AutoencoderKLFlux2"}, f, indent=1)
    for root, dirs, files in os.walk(scratch, topdown=False):
        for name in files:
            os.remove(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(scratch)

    # ---- the reference image
    h, w = HEIGHT // 16, WIDTH // 16
    noise = torch.from_numpy(veetance_noise(SEED, 128 * h * w)).reshape(1, 128, h, w)
    pipe = Flux2KleinPipeline(scheduler=mf.scheduler(), vae=vae, text_encoder=qwen, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=1.0,
                 latents=noise, output_type="np", max_sequence_length=mf.MAX_LEN,
                 text_encoder_out_layers=mf.OUT_LAYERS).images
    pixels = torch.from_numpy((image[0] * 255).round().astype(np.uint8))  # (H, W, 3)
    save_file({"image_u8": pixels.contiguous(), "image_f32": torch.from_numpy(image[0]).contiguous(),
               "noise": noise.contiguous()}, os.path.join(OUT, "reference.safetensors"))
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"assets/tiny-models: {total / 1e6:.2f} MB; reference image {tuple(pixels.shape)}, "
          f"mean {pixels.float().mean():.1f}")


if __name__ == "__main__":
    sys.exit(main())
