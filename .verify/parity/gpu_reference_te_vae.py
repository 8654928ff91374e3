#!/usr/bin/env python3
"""Full-size Qwen3-4B text encoder and FLUX.2 VAE references on the GPU (bf16), seeded random weights.

Usage: gpu_reference_te_vae.py OUT_DIR TOKENIZER_JSON. Writes qwen3.safetensors + qwen3_config.json,
vae/ (diffusers layout + config.json) and te_vae_reference.safetensors. The Rust side is
crates/models/examples/gpu_parity_te_vae.rs.
"""

import json
import math
import os
import sys

import torch
from diffusers import AutoencoderKLFlux2
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

out, tok_path = sys.argv[1], sys.argv[2]
torch.set_grad_enabled(False)
dev, dt = "cuda", torch.bfloat16
PROMPT = "a red fox sitting in the snow at dawn, photographed with a telephoto lens"


def randomize(module, seed, gain=1.0):
    gen = torch.Generator(device=dev).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim == 1:
            if name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=dev))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen, device=dev))
        else:
            fan_in = int(math.prod(p.shape[1:]))
            p.copy_(gain * torch.randn(p.shape, generator=gen, device=dev) / math.sqrt(fan_in))


cfg = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                  rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True)
with torch.device(dev):
    qwen = Qwen3ForCausalLM(cfg).to(dt).eval()
randomize(qwen, 7)
save_file({k: v.contiguous() for k, v in qwen.state_dict().items() if k.startswith("model.")},
          f"{out}/qwen3.safetensors")
with open(f"{out}/qwen3_config.json", "w") as f:
    json.dump({k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict)}, f)
tok = PreTrainedTokenizerFast(tokenizer_file=tok_path, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                              padding_side="right")
tok.chat_template = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}")
ref = {"prompt_embeds": Flux2KleinPipeline._get_qwen3_prompt_embeds(qwen, tok, PROMPT, dtype=dt, device=dev).float().cpu()}
# Yardstick: the same (bf16-rounded) weights run in f32.
qwen.float()
ref["prompt_embeds_f32"] = Flux2KleinPipeline._get_qwen3_prompt_embeds(qwen, tok, PROMPT, dtype=torch.float32, device=dev).cpu()
a, b = ref["prompt_embeds"], ref["prompt_embeds_f32"]
print(f"transformers bf16 vs f32 (same weights), text encoder: rel err {float((a - b).norm() / b.norm()):.3e}")
del qwen
torch.cuda.empty_cache()

with torch.device(dev):
    vae = AutoencoderKLFlux2().to(dt).eval()
randomize(vae, 8)
gen = torch.Generator(device=dev).manual_seed(9)
vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=gen, device=dev))
vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=gen, device=dev))
os.makedirs(f"{out}/vae", exist_ok=True)
save_file({k: v.contiguous() for k, v in vae.state_dict().items() if "num_batches" not in k},
          f"{out}/vae/diffusion_pytorch_model.safetensors")
with open(f"{out}/vae/config.json", "w") as f:
    json.dump({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()}, f)
latent = torch.randn(1, 128, 64, 64, generator=gen, device=dev)
std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
z = Flux2KleinPipeline._unpatchify_latents(latent.to(dt) * std + vae.bn.running_mean.view(1, -1, 1, 1))
ref["latent"] = latent.cpu()
ref["image"] = vae.decode(z).sample.float().cpu()
vae.float()
ref["image_f32"] = vae.decode(z.float()).sample.cpu()
a, b = ref["image"], ref["image_f32"]
print(f"diffusers bf16 vs f32 (same weights), VAE decode: rel err {float((a - b).norm() / b.norm()):.3e}")
vae.to(dt)
pixels = torch.rand(1, 3, 512, 512, generator=gen, device=dev) * 2 - 1
enc = vae.encode(pixels.to(dt)).latent_dist.mode()
ref["pixels"] = pixels.cpu()
ref["encoded"] = ((Flux2KleinPipeline._patchify_latents(enc) - vae.bn.running_mean.view(1, -1, 1, 1)) / std).float().cpu()
save_file({k: v.contiguous() for k, v in ref.items()}, f"{out}/te_vae_reference.safetensors")
print("vae image", tuple(ref["image"].shape), "encoded", tuple(ref["encoded"].shape))
