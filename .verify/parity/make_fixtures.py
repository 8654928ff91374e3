#!/usr/bin/env python3
"""Builds the small parity fixtures in assets/parity/ for the veetance-models tests.

Tiny random-weight models with the real FLUX.2 [klein] structure are run through the reference
implementations (diffusers' Flux2Transformer2DModel, AutoencoderKLFlux2, Flux2KleinPipeline and its
FlowMatchEulerDiscreteScheduler; transformers' Qwen3ForCausalLM), and weights, inputs and outputs
are saved as safetensors (f32). The Rust tests in crates/models/tests/ read them; CI needs no Python.

Run (CPU, a few seconds once the venv exists):
    python3 -m venv /work/venv-parity
    /work/venv-parity/bin/pip install torch transformers diffusers tokenizers safetensors numpy
    /work/venv-parity/bin/python .verify/parity/make_fixtures.py
"""

import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import diffusers
import transformers
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline, compute_empirical_mu
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "assets", "parity")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
torch.set_grad_enabled(False)

MAX_LEN = 48
OUT_LAYERS = (1, 2, 3)
PROMPT = "a red fox sitting in the snow at dawn"
LONG_PROMPT = " ".join(["a very long prompt about a small house by the lake"] * 6)


def save(tensors, name):
    path = os.path.join(OUT, name)
    save_file({k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in tensors.items()}, path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def randomize(module, gen):
    """Weights ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.05^2)."""
    for name, p in module.named_parameters():
        if p.ndim == 1:
            is_norm = "norm" in name or name.endswith("_layernorm.weight") or name.endswith("scale")
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = int(np.prod(p.shape[1:]))
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


# ---------------------------------------------------------------- tokenizer
def build_tokenizer():
    sentences = [
        "a red fox sitting in the snow at dawn",
        "a photo of a cat on a windowsill, soft light",
        "a very long prompt about a small house by the lake",
        "mountains, fog, and a river in the valley",
        "portrait of an old man with a beard, oil painting",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences, trainer)
    path = os.path.join(OUT, "tokenizer.json")
    tok.save(path)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    # Qwen3's chat template reduced to what the klein pipeline uses (one user turn, generation
    # prompt, enable_thinking=False); it renders the same text as the real template.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}"
    )
    hf = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                 padding_side="right")
    hf.chat_template = template
    return hf


# ---------------------------------------------------------------- Qwen3
def build_qwen3(vocab_size):
    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
        rope_theta=1_000_000.0, max_position_embeddings=128, tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = Qwen3ForCausalLM(cfg).eval()
    randomize(model, torch.Generator().manual_seed(1))
    state = {k: v for k, v in model.state_dict().items() if k.startswith("model.")}
    save(state, "qwen3_tiny.safetensors")
    config = cfg.to_dict()
    config = {k: config[k] for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "head_dim",
                                       "rms_norm_eps", "rope_theta", "max_position_embeddings",
                                       "tie_word_embeddings"] if k in config}
    config.setdefault("rope_theta", 1_000_000.0)
    config["architectures"] = ["Qwen3ForCausalLM"]
    with open(os.path.join(OUT, "qwen3_tiny_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return model


# ---------------------------------------------------------------- transformer
TRANSFORMER_CFG = dict(
    patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=96, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)


def to_bfl(state, num_double, num_single):
    """diffusers -> BFL names (the inverse of diffusers' convert_flux2_to_diffusers.py)."""
    out = {}
    ren = {
        "x_embedder.weight": "img_in.weight",
        "context_embedder.weight": "txt_in.weight",
        "time_guidance_embed.timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
        "time_guidance_embed.timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
        "double_stream_modulation_img.linear.weight": "double_stream_modulation_img.lin.weight",
        "double_stream_modulation_txt.linear.weight": "double_stream_modulation_txt.lin.weight",
        "single_stream_modulation.linear.weight": "single_stream_modulation.lin.weight",
        "proj_out.weight": "final_layer.linear.weight",
    }
    for k, v in ren.items():
        out[v] = state[k]
    scale, shift = state["norm_out.linear.weight"].chunk(2, dim=0)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], 0)
    for i in range(num_double):
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        a = b + "attn."
        out[o + "img_attn.qkv.weight"] = torch.cat([state[a + n + ".weight"] for n in ("to_q", "to_k", "to_v")])
        out[o + "txt_attn.qkv.weight"] = torch.cat(
            [state[a + n + ".weight"] for n in ("add_q_proj", "add_k_proj", "add_v_proj")])
        out[o + "img_attn.norm.query_norm.scale"] = state[a + "norm_q.weight"]
        out[o + "img_attn.norm.key_norm.scale"] = state[a + "norm_k.weight"]
        out[o + "txt_attn.norm.query_norm.scale"] = state[a + "norm_added_q.weight"]
        out[o + "txt_attn.norm.key_norm.scale"] = state[a + "norm_added_k.weight"]
        out[o + "img_attn.proj.weight"] = state[a + "to_out.0.weight"]
        out[o + "txt_attn.proj.weight"] = state[a + "to_add_out.weight"]
        out[o + "img_mlp.0.weight"] = state[b + "ff.linear_in.weight"]
        out[o + "img_mlp.2.weight"] = state[b + "ff.linear_out.weight"]
        out[o + "txt_mlp.0.weight"] = state[b + "ff_context.linear_in.weight"]
        out[o + "txt_mlp.2.weight"] = state[b + "ff_context.linear_out.weight"]
    for i in range(num_single):
        a, o = f"single_transformer_blocks.{i}.attn.", f"single_blocks.{i}."
        out[o + "linear1.weight"] = state[a + "to_qkv_mlp_proj.weight"]
        out[o + "linear2.weight"] = state[a + "to_out.weight"]
        out[o + "norm.query_norm.scale"] = state[a + "norm_q.weight"]
        out[o + "norm.key_norm.scale"] = state[a + "norm_k.weight"]
    assert len(out) == len(state) - 4 * num_double, (len(out), len(state))
    return out


def build_transformer():
    model = Flux2Transformer2DModel(**TRANSFORMER_CFG).eval()
    randomize(model, torch.Generator().manual_seed(2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # diffusers layout, sharded in two files like the real transformer/ folder
    d = os.path.join(OUT, "flux2_tiny_diffusers")
    os.makedirs(d, exist_ok=True)
    keys = sorted(state)
    half = len(keys) // 2
    for idx, part in enumerate((keys[:half], keys[half:])):
        save_file({k: state[k] for k in part}, os.path.join(d, f"diffusion_pytorch_model-0000{idx + 1}-of-00002.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({**dict(model.config), "_class_name": "Flux2Transformer2DModel"}, f, indent=1, default=list)
    save(to_bfl(state, TRANSFORMER_CFG["num_layers"], TRANSFORMER_CFG["num_single_layers"]),
         "flux2_tiny_bfl.safetensors")
    return model


# ---------------------------------------------------------------- VAE
VAE_CFG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 32, 32), layers_per_block=1, latent_channels=32, norm_num_groups=32,
    use_quant_conv=True, use_post_quant_conv=True, batch_norm_eps=1e-4,
)


def vae_to_bfl(state, levels):
    out = {}
    for k, v in state.items():
        n = k
        if k.startswith("quant_conv."):
            n = "encoder." + k
        elif k.startswith("post_quant_conv."):
            n = "decoder." + k
        elif k.startswith("bn."):
            if "num_batches" in k:
                continue
        else:
            part, rest = k.split(".", 1)
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            if rest.startswith("mid_block.resnets.0."):
                rest = "mid.block_1." + rest[len("mid_block.resnets.0."):]
            elif rest.startswith("mid_block.resnets.1."):
                rest = "mid.block_2." + rest[len("mid_block.resnets.1."):]
            elif rest.startswith("mid_block.attentions.0."):
                r = rest[len("mid_block.attentions.0."):]
                field, kind = r.rsplit(".", 1)
                field = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[field]
                rest = f"mid.attn_1.{field}.{kind}"
                if field != "norm" and kind == "weight":
                    v = v[:, :, None, None]
            elif rest.startswith("conv_norm_out."):
                rest = "norm_out." + rest[len("conv_norm_out."):]
            elif rest.startswith("down_blocks."):
                _, i, kind, tail = rest.split(".", 3)
                if kind == "resnets":
                    rest = f"down.{i}.block.{tail}"
                else:  # downsamplers.0.conv...
                    rest = f"down.{i}.downsample.{tail.split('.', 1)[1]}"
            elif rest.startswith("up_blocks."):
                _, i, kind, tail = rest.split(".", 3)
                j = levels - 1 - int(i)
                if kind == "resnets":
                    rest = f"up.{j}.block.{tail}"
                else:
                    rest = f"up.{j}.upsample.{tail.split('.', 1)[1]}"
            n = f"{part}.{rest}"
        out[n] = v.contiguous()
    return out


def build_vae():
    vae = AutoencoderKLFlux2(**VAE_CFG).eval()
    randomize(vae, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=gen))
    vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=gen))
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if "num_batches_tracked" not in k}
    d = os.path.join(OUT, "vae_tiny_diffusers")
    os.makedirs(d, exist_ok=True)
    save_file(state, os.path.join(d, "diffusion_pytorch_model.safetensors"))
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({**cfg, "_class_name": "AutoencoderKLFlux2"}, f, indent=1)
    save(vae_to_bfl(state, len(VAE_CFG["block_out_channels"])), "vae_tiny_bfl.safetensors")
    return vae


def scheduler():
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
    )


def main():
    print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)
    tokenizer = build_tokenizer()
    qwen = build_qwen3(len(tokenizer))
    transformer = build_transformer()
    vae = build_vae()

    # ---- text encoder: the pipeline's own function
    def encode(prompt):
        return Flux2KleinPipeline._get_qwen3_prompt_embeds(
            qwen, tokenizer, prompt, dtype=torch.float32, device="cpu",
            max_sequence_length=MAX_LEN, hidden_states_layers=OUT_LAYERS)

    def ids_of(prompt):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        enc = tokenizer(text, padding="max_length", truncation=True, max_length=MAX_LEN)
        return text, torch.tensor(enc["input_ids"], dtype=torch.int64), torch.tensor(enc["attention_mask"])

    text, ids, mask = ids_of(PROMPT)
    print("template:", repr(text))
    _, long_ids, _ = ids_of(LONG_PROMPT)
    prompt_embeds = encode(PROMPT)
    negative_embeds = encode("")
    save({"input_ids": ids, "attention_mask": mask, "long_input_ids": long_ids,
          "prompt_embeds": prompt_embeds, "negative_embeds": negative_embeds}, "text_encoder_ref.safetensors")

    # ---- schedule
    sched = {}
    for steps, seq in [(4, 16), (4, 1024), (4, 4096), (50, 4096), (4, 4300), (4, 4301), (4, 4624), (28, 1024)]:
        s = scheduler()
        s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(seq, steps))
        sched[f"sigmas_{steps}_{seq}"] = s.sigmas.clone()
    save(sched, "schedule_ref.safetensors")

    # ---- transformer velocity at several timesteps
    h = w = 4
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 128, h, w, generator=gen)
    img = Flux2KleinPipeline._pack_latents(noise)
    img_ids = Flux2KleinPipeline._prepare_latent_ids(noise)
    txt_ids = Flux2KleinPipeline._prepare_text_ids(prompt_embeds)
    vel = {"img": img, "txt": prompt_embeds, "img_ids": img_ids[0].float(), "txt_ids": txt_ids[0].float()}
    for i, t in enumerate([1.0, 0.7, 0.3]):
        out = transformer(hidden_states=img, encoder_hidden_states=prompt_embeds, timestep=torch.tensor([t]),
                          img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        vel[f"t_{i}"] = torch.tensor([t])
        vel[f"velocity_{i}"] = out
    save(vel, "transformer_ref.safetensors")

    # ---- VAE decode / encode
    gen = torch.Generator().manual_seed(6)
    latent = torch.randn(1, 128, h, w, generator=gen)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    z = Flux2KleinPipeline._unpatchify_latents(latent * std + vae.bn.running_mean.view(1, -1, 1, 1))
    image = vae.decode(z).sample
    pixels = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    enc = vae.encode(pixels).latent_dist.mode()
    enc = (Flux2KleinPipeline._patchify_latents(enc) - vae.bn.running_mean.view(1, -1, 1, 1)) / std
    save({"latent": latent, "image": image, "pixels": pixels, "encoded": enc}, "vae_ref.safetensors")

    # ---- whole generations through the pipeline (distilled: 4 steps no CFG; base: CFG 4.0)
    runs = {"noise": noise}
    for name, distilled, guidance in [("distilled", True, 1.0), ("cfg", False, 4.0)]:
        pipe = Flux2KleinPipeline(scheduler=scheduler(), vae=vae, text_encoder=qwen, tokenizer=tokenizer,
                                  transformer=transformer, is_distilled=distilled)
        pipe.set_progress_bar_config(disable=True)
        steps = []

        def cb(p, i, t, kw):
            steps.append(kw["latents"].clone())
            return {}

        out = pipe(prompt=PROMPT, height=32, width=32, num_inference_steps=4, guidance_scale=guidance,
                   latents=noise.clone(), output_type="latent", max_sequence_length=MAX_LEN,
                   text_encoder_out_layers=OUT_LAYERS, callback_on_step_end=cb).images
        runs[f"{name}_latent"] = steps[-1]  # packed (1, 16, 128), normalised
        runs[f"{name}_step1"] = steps[0]
        if name == "distilled":
            runs["distilled_image"] = vae.decode(out).sample
    save(runs, "generation_ref.safetensors")
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"assets/parity total: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
