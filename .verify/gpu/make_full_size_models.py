#!/usr/bin/env python3
"""Writes a full-size FLUX.2 [klein] 4B model set with seeded random weights, laid out as a
ComfyUI models folder, for timing the golden workflow on the GPU machine:

    <dir>/diffusion_models/flux-2-klein-4b.safetensors  BFL single file (as ComfyUI keeps it), bf16
    <dir>/text_encoders/qwen_3_4b.safetensors           Qwen3-4B, HF names, bf16 (all 36 layers)
    <dir>/text_encoders/tokenizer.json                  the tiny test tokenizer (no network there;
                                                        prompt ids index the real-size embedding)
    <dir>/vae/flux2-vae.safetensors                     the FLUX.2 VAE, BFL names, bf16

Weights ~ N(0, gain^2 / fan_in) (gain 0.5), norm scales 1 + N(0, 0.1^2): the image is noise; only
shapes, layouts and costs are real. Usage: make_full_size_models.py <dir> [4b|9b]

With `9b` it writes the klein-9B set instead (8 double + 24 single blocks of 32 heads, context
12288): diffusion_models/flux-2-klein-9b.safetensors and text_encoders/qwen_3_8b.safetensors (Qwen3-8B),
plus the same tokenizer and VAE.
"""

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
    out = sys.argv[1]
    variant = sys.argv[2] if len(sys.argv) > 2 else "4b"
    if variant == "4b":
        double, single, heads, context = 5, 20, 24, 7680
        te_hidden, te_inter, te_file = 2560, 9728, "qwen_3_4b.safetensors"
    elif variant == "9b":
        double, single, heads, context = 8, 24, 32, 12288
        te_hidden, te_inter, te_file = 4096, 12288, "qwen_3_8b.safetensors"
    else:
        sys.exit(f"make_full_size_models.py: unknown variant {variant!r}; use 4b or 9b")
    dev, dt = "cuda", torch.bfloat16
    torch.set_grad_enabled(False)
    t0 = time.time()
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from make_fixtures import to_bfl, vae_to_bfl
    from transformers import Qwen3Config, Qwen3ForCausalLM

    os.makedirs(os.path.join(out, "diffusion_models"), exist_ok=True)
    with torch.device(dev):
        model = Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=double, num_single_layers=single, attention_head_dim=128,
            num_attention_heads=heads, joint_attention_dim=context, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False).to(dt).eval()
    randomize(model, torch.Generator(device=dev).manual_seed(1))
    state = {k: v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in to_bfl(state, double, single).items()},
              os.path.join(out, "diffusion_models", f"flux-2-klein-{variant}.safetensors"))
    del model, state
    print(f"transformer written ({time.time() - t0:.0f} s)", flush=True)

    te = os.path.join(out, "text_encoders")
    os.makedirs(te, exist_ok=True)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=te_hidden, intermediate_size=te_inter, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True)
    with torch.device(dev):
        qwen = Qwen3ForCausalLM(cfg).to(dt).eval()
    randomize(qwen, torch.Generator(device=dev).manual_seed(2))
    save_file({k: v.contiguous() for k, v in qwen.state_dict().items() if k.startswith("model.")},
              os.path.join(te, te_file))
    del qwen
    shutil.copy(os.path.join(ROOT, "assets", "tiny-models", "text_encoders", "qwen3-tiny.tokenizer.json"),
                os.path.join(te, "tokenizer.json"))
    print(f"text encoder written ({time.time() - t0:.0f} s)", flush=True)

    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    with torch.device(dev):
        vae = AutoencoderKLFlux2().to(dt).eval()
    randomize(vae, torch.Generator(device=dev).manual_seed(3), gain=1.0)
    g = torch.Generator(device=dev).manual_seed(4)
    vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=g, device=dev))
    vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=g, device=dev))
    state = {k: v for k, v in vae.state_dict().items() if "num_batches" not in k}
    save_file({k: v.contiguous() for k, v in vae_to_bfl(state, 4).items()},
              os.path.join(out, "vae", "flux2-vae.safetensors"))
    print(f"vae written ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
