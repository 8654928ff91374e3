#!/usr/bin/env python3
"""Full-size FLUX.2 klein-4B reference on the GPU (bf16): seeded random weights, identical inputs.

Writes into OUT_DIR (argument 1): transformer.safetensors (diffusers layout, bf16, ~7.75 GB),
inputs.safetensors and reference.safetensors (velocities at two timesteps and the latent after a
4-step run, computed as Flux2KleinPipeline's loop does with FlowMatchEulerDiscreteScheduler).
The Rust side is crates/models/examples/gpu_parity.rs; docs/models.md has the command.
"""

import math
import sys
import time

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline, compute_empirical_mu
from safetensors.torch import save_file

out_dir = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
# Weights ~ N(0, (gain^2) / fan_in); norm scales 1 + N(0, 0.1^2).
gain = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
torch.set_grad_enabled(False)
dev = "cuda"
dt = torch.bfloat16

cfg = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
           num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
           axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False)
t0 = time.time()
with torch.device(dev):
    model = Flux2Transformer2DModel(**cfg).to(dt).eval()
gen = torch.Generator(device=dev).manual_seed(1234)
for name, p in model.named_parameters():
    if p.ndim == 1:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=dev))
    else:
        p.copy_(gain * torch.randn(p.shape, generator=gen, device=dev) / math.sqrt(p.shape[1]))
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out_dir}/transformer.safetensors")
print(f"weights built and saved in {time.time() - t0:.1f} s")

h = w = size // 16
gen = torch.Generator(device=dev).manual_seed(99)
noise = torch.randn(1, 128, h, w, generator=gen, device=dev)
txt = torch.randn(1, 512, 7680, generator=gen, device=dev).to(dt)
img = Flux2KleinPipeline._pack_latents(noise).to(dt)
img_ids = Flux2KleinPipeline._prepare_latent_ids(noise).to(dev)
txt_ids = Flux2KleinPipeline._prepare_text_ids(txt).to(dev)
save_file({"noise": noise.float().cpu().contiguous(), "txt": txt.cpu().contiguous()}, f"{out_dir}/inputs.safetensors")

steps = 4
seq = h * w
sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                        base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                        max_image_seq_len=4096, time_shift_type="exponential")
sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(seq, steps), device=dev)


def forward(latents, t):
    timestep = t.expand(latents.shape[0]).to(latents.dtype)
    return model(hidden_states=latents, timestep=timestep / 1000, guidance=None, encoder_hidden_states=txt,
                 txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]


ref = {"sigmas": sched.sigmas.float().cpu()}
ref["velocity_0"] = forward(img, sched.timesteps[0]).float().cpu()
ref["velocity_2"] = forward(img, sched.timesteps[2]).float().cpu()
for _ in range(2):
    forward(img, sched.timesteps[0])
torch.cuda.synchronize()
t0 = time.time()
for _ in range(5):
    forward(img, sched.timesteps[0])
torch.cuda.synchronize()
ms = (time.time() - t0) / 5 * 1000


def run(record):
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(seq, steps), device=dev)
    sched.set_begin_index(0)
    latents = img
    for i, t in enumerate(sched.timesteps):
        v = forward(latents, t)
        if record:
            ref[f"x_step{i}"] = latents.float().cpu()
            ref[f"v_step{i}"] = v.float().cpu()
        latents = sched.step(v, t, latents, return_dict=False)[0]
    return latents


ref["latent_4step"] = run(True).float().cpu()
# The same run with the (bf16-rounded) weights in f32: the yardstick for bf16 rounding alone.
model.float()
txt = txt.float()
img = img.float()
ref["latent_4step_f32"] = run(False).float().cpu()
# Per-step yardstick: the f32 model's velocity at the bf16 run's own intermediate latents.
for i, t in enumerate(sched.timesteps):
    x = ref[f"x_step{i}"].to(dev)
    v32 = model(hidden_states=x, timestep=((t.expand(1).to(torch.bfloat16) / 1000) * 1000).float() / 1000, guidance=None,
                encoder_hidden_states=txt, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0].float().cpu()
    vb = ref[f"v_step{i}"]
    print(f"diffusers bf16 vs f32 velocity at step {i} (same input latent and timestep): rel err "
          f"{float((vb - v32).norm() / v32.norm()):.3e}")
bf, f32 = ref["latent_4step"], ref["latent_4step_f32"]
print(f"diffusers bf16 vs diffusers f32 (same weights), 4-step latent: rel err "
      f"{float((bf - f32).norm() / f32.norm()):.3e}")
save_file({k: v.contiguous() for k, v in ref.items()}, f"{out_dir}/reference.safetensors")
print(f"diffusers klein-4B bf16 forward at {size}x{size} ({seq} image + 512 text tokens): {ms:.1f} ms")
print("sigmas", [round(float(s), 6) for s in sched.sigmas])
