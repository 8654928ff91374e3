#!/usr/bin/env python3
"""Writes a full-size FLUX.2 [klein] 4B model set with seeded random weights, laid out as a
ComfyUI models folder, for timing the golden workflow on the GPU machine:

    <dir>/diffusion_models/flux-2-klein-4b.safetensors  BFL single file (as ComfyUI keeps it), bf16
    <dir>/text_encoders/qwen_3_4b.safetensors           Qwen3-4B, HF names, bf16 (all 36 layers)
    <dir>/text_encoders/tokenizer.json                  the tiny test tokenizer (no network there;
                                                        prompt ids index the real-size embedding)
    <dir>/vae/flux2-vae.safetensors                     the FLUX.2 VAE, BFL names, bf16

Weights ~ N(0, gain^2 / fan_in) (gain 0.5), norm scales 1 + N(0, 0.1^2): the image is noise; only
shapes, layouts and costs are real. Usage: make_full_size_models.py <dir> [--variant 4b|9b|tiny]
[--device cuda|cpu]

--variant 9b writes diffusion_models/flux-2-klein-9b.safetensors and text_encoders/qwen_3_8b.safetensors
(Qwen3-8B, untied head, only model.* stored) beside the same tokenizer and VAE. --variant tiny writes
small models of the same layouts (transformer flux-2-klein-tiny, text encoder qwen_3_tiny with its
config.json, the VAE as a diffusers folder vae/flux2-vae-tiny) for testing the benchmark on a CPU.
"""

import json
import math
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".verify", "parity"))
sys.path.insert(0, HERE)


def randomize(module, gen, gain=0.5):
    for name, p in module.named_parameters():
        if p.ndim == 1:
            is_norm = "norm" in name or name.endswith("scale")
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=p.device))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen, device=p.device))
        else:
            fan_in = p[0].numel()
            p.copy_(gain * torch.randn(p.shape, generator=gen, device=p.device) / math.sqrt(fan_in))


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--variant", choices=["4b", "9b", "tiny"], default="4b")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    out, variant, dev, dt = args.out, args.variant, args.device, torch.bfloat16
    torch.set_grad_enabled(False)
    t0 = time.time()
    from bench_common import QWEN, files, qwen_config, transformer_config, MAX_LEN, OUT_LAYERS, VAE
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from make_fixtures import to_bfl, vae_to_bfl
    from transformers import Qwen3ForCausalLM

    paths = files(out, variant)
    os.makedirs(os.path.join(out, "diffusion_models"), exist_ok=True)
    tcfg = transformer_config(variant)
    with torch.device(dev):
        model = Flux2Transformer2DModel(**tcfg).to(dt).eval()
    randomize(model, torch.Generator(device=dev).manual_seed(1))
    state = {k: v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in to_bfl(state, tcfg["num_layers"], tcfg["num_single_layers"]).items()},
              paths["transformer"])
    del model, state
    print(f"transformer written ({time.time() - t0:.0f} s)", flush=True)

    te = os.path.join(out, "text_encoders")
    os.makedirs(te, exist_ok=True)
    cfg = qwen_config(variant)
    with torch.device(dev):
        qwen = Qwen3ForCausalLM(cfg).to(dt).eval()
    randomize(qwen, torch.Generator(device=dev).manual_seed(2))
    save_file({k: v.contiguous() for k, v in qwen.state_dict().items() if k.startswith("model.")},
              paths["text_encoder"])
    del qwen
    if variant == "tiny":
        # The Rust loader reads the shapes and the encoder settings from <weights name>.config.json.
        with open(paths["text_encoder"].replace(".safetensors", ".config.json"), "w") as f:
            json.dump({**QWEN[variant], "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
                       "output_layers": list(OUT_LAYERS[variant]), "max_length": MAX_LEN[variant]}, f, indent=1)
    shutil.copy(os.path.join(ROOT, "assets", "tiny-models", "text_encoders", "qwen3-tiny.tokenizer.json"),
                paths["tokenizer"])
    print(f"text encoder written ({time.time() - t0:.0f} s)", flush=True)

    if os.path.exists(paths["vae"]):
        print(f"vae kept ({paths['vae']})", flush=True)
        return
    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    with torch.device(dev):
        vae = AutoencoderKLFlux2(**VAE[variant]).to(dt).eval()
    randomize(vae, torch.Generator(device=dev).manual_seed(3), gain=1.0)
    g = torch.Generator(device=dev).manual_seed(4)
    vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=g, device=dev))
    vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=g, device=dev))
    if variant == "tiny":
        vae.save_pretrained(paths["vae"], safe_serialization=True)
    else:
        state = {k: v for k, v in vae.state_dict().items() if "num_batches" not in k}
        save_file({k: v.contiguous() for k, v in vae_to_bfl(state, 4).items()}, paths["vae"])
    print(f"vae written ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
