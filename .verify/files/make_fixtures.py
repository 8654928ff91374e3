#!/usr/bin/env python3
"""Fixtures for the model files ComfyUI users have (issue 15, part 5), written to assets/files/.

Each file is a tiny model in one of ComfyUI's formats, made from the tiny parity models of
.verify/parity/make_fixtures.py (the committed assets/parity/*.safetensors, or rebuilt with the
same builders and seeds), with a reference output computed by diffusers/transformers:

* flux2_tiny_fp8_comfy_quant.safetensors: the tiny FLUX.2 transformer (BFL names) as ComfyUI's
  quantizer writes it: each linear of the blocks and modulations in float8_e4m3fn with a per-tensor
  `<layer>.weight_scale` (float32, amax / 448, ComfyUI's TensorCoreFP8Layout "recalculate" recipe)
  and a `<layer>.comfy_quant` uint8 tensor holding the JSON {"format": "float8_e4m3fn"}; two layers
  also carry an `input_scale`; everything else in bf16.
* flux2_tiny_fp8_scaled.safetensors: the same weights in the older format (an empty
  `model.diffusion_model.scaled_fp8` marker, `<layer>.scale_weight`, ComfyUI's key prefix).
* flux2_tiny_fp8_ref.safetensors: diffusers' Flux2Transformer2DModel velocities on the dequantised
  weights (fp8 value * scale in f32; the bf16 tensors as bf16), on transformer_ref's inputs.
* qwen3_tiny_fp8mixed.safetensors / qwen3_tiny_fp8mixed_meta.safetensors: the tiny Qwen3 with the
  linears of layers 0 and 2 in fp8 (+ weight_scale) and the rest bf16, described by `.comfy_quant`
  tensors in the first and by the header metadata `_quantization_metadata` (the JSON
  {"format_version": "1.0", "layers": {...}} that comfy.utils.convert_old_quants reads) in the
  second; qwen3_tiny_fp8mixed_ref.safetensors: transformers' hidden states on the dequantised
  weights for text_encoder_ref's input ids.
* vae_small_decoder.safetensors: an AutoencoderKLFlux2 whose decoder is narrower than its encoder
  (diffusers' `decoder_block_out_channels`), in BFL names as `full_encoder_small_decoder` is;
  f16 weights to stay small; vae_small_decoder_ref.safetensors: its decode (f32) of a latent.
* qwen3_tokens.json: token ids of prompts from two independent reference tokenizers (see
  make_tokenizer.py).

Run with the parity venv: /work/venv-parity/bin/python .verify/files/make_fixtures.py
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import make_fixtures as parity  # noqa: E402  (same builders and seeds)

from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PARITY = os.path.join(ROOT, "assets", "parity")
OUT = os.path.join(ROOT, "assets", "files")
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def save(tensors, name, metadata=None):
    path = os.path.join(OUT, name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def quantize(w):
    """ComfyUI's per-tensor fp8 recipe: scale = amax / 448 (f32), q = (w / scale) -> e4m3fn."""
    w = w.float()
    scale = (w.abs().amax() / FP8_MAX).to(torch.float32)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale):
    return q.to(torch.float32) * scale


def comfy_quant(conf):
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


# ---------------------------------------------------------------- transformer
KEEP_DENSE = ("img_in.", "txt_in.", "time_in.", "final_layer.")


def from_bfl(bfl, num_double, num_single):
    """BFL -> diffusers names (the inverse of parity.to_bfl)."""
    out = {}
    ren = {
        "img_in.weight": "x_embedder.weight",
        "txt_in.weight": "context_embedder.weight",
        "time_in.in_layer.weight": "time_guidance_embed.timestep_embedder.linear_1.weight",
        "time_in.out_layer.weight": "time_guidance_embed.timestep_embedder.linear_2.weight",
        "double_stream_modulation_img.lin.weight": "double_stream_modulation_img.linear.weight",
        "double_stream_modulation_txt.lin.weight": "double_stream_modulation_txt.linear.weight",
        "single_stream_modulation.lin.weight": "single_stream_modulation.linear.weight",
        "final_layer.linear.weight": "proj_out.weight",
    }
    for k, v in ren.items():
        out[v] = bfl[k]
    shift, scale = bfl["final_layer.adaLN_modulation.1.weight"].chunk(2, dim=0)
    out["norm_out.linear.weight"] = torch.cat([scale, shift], 0)
    for i in range(num_double):
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        a = b + "attn."
        for n, part in zip(("to_q", "to_k", "to_v"), bfl[o + "img_attn.qkv.weight"].chunk(3, 0)):
            out[a + n + ".weight"] = part
        for n, part in zip(("add_q_proj", "add_k_proj", "add_v_proj"), bfl[o + "txt_attn.qkv.weight"].chunk(3, 0)):
            out[a + n + ".weight"] = part
        out[a + "norm_q.weight"] = bfl[o + "img_attn.norm.query_norm.scale"]
        out[a + "norm_k.weight"] = bfl[o + "img_attn.norm.key_norm.scale"]
        out[a + "norm_added_q.weight"] = bfl[o + "txt_attn.norm.query_norm.scale"]
        out[a + "norm_added_k.weight"] = bfl[o + "txt_attn.norm.key_norm.scale"]
        out[a + "to_out.0.weight"] = bfl[o + "img_attn.proj.weight"]
        out[a + "to_add_out.weight"] = bfl[o + "txt_attn.proj.weight"]
        out[b + "ff.linear_in.weight"] = bfl[o + "img_mlp.0.weight"]
        out[b + "ff.linear_out.weight"] = bfl[o + "img_mlp.2.weight"]
        out[b + "ff_context.linear_in.weight"] = bfl[o + "txt_mlp.0.weight"]
        out[b + "ff_context.linear_out.weight"] = bfl[o + "txt_mlp.2.weight"]
    for i in range(num_single):
        a, o = f"single_transformer_blocks.{i}.attn.", f"single_blocks.{i}."
        out[a + "to_qkv_mlp_proj.weight"] = bfl[o + "linear1.weight"]
        out[a + "to_out.weight"] = bfl[o + "linear2.weight"]
        out[a + "norm_q.weight"] = bfl[o + "norm.query_norm.scale"]
        out[a + "norm_k.weight"] = bfl[o + "norm.key_norm.scale"]
    return out


def transformer_fixtures():
    cfg = parity.TRANSFORMER_CFG
    bfl = load_file(os.path.join(PARITY, "flux2_tiny_bfl.safetensors"))
    comfy, legacy, dequant = {}, {"model.diffusion_model.scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    quantized = 0
    for name, w in sorted(bfl.items()):
        linear = w.ndim == 2 and name.endswith(".weight") and not name.startswith(KEEP_DENSE)
        if not linear:
            dense = w.to(torch.bfloat16)
            comfy[name] = dense
            legacy["model.diffusion_model." + name] = dense
            dequant[name] = dense.float()
            continue
        quantized += 1
        layer = name[: -len(".weight")]
        q, scale = quantize(w)
        comfy[name] = q
        comfy[layer + ".weight_scale"] = scale  # 0-d, as ComfyUI's QuantizedTensor saves it
        comfy[layer + ".comfy_quant"] = comfy_quant({"format": "float8_e4m3fn"})
        if layer.endswith("img_attn.proj") or layer.endswith("linear2"):
            # Activation scales are for fp8 matmuls; the weights do not depend on them.
            comfy[layer + ".input_scale"] = torch.tensor(0.02, dtype=torch.float32)
        legacy["model.diffusion_model." + name] = q
        legacy["model.diffusion_model." + layer + ".scale_weight"] = scale.reshape(1)
        dequant[name] = dequantize(q, scale)
    print(f"transformer: {quantized} fp8 linears")
    save(comfy, "flux2_tiny_fp8_comfy_quant.safetensors")
    save(legacy, "flux2_tiny_fp8_scaled.safetensors")

    model = Flux2Transformer2DModel(**cfg).eval()
    state = from_bfl(dequant, cfg["num_layers"], cfg["num_single_layers"])
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    ref = load_file(os.path.join(PARITY, "transformer_ref.safetensors"))
    out = {}
    with torch.no_grad():
        img_ids, txt_ids = ref["img_ids"][None], ref["txt_ids"][None]
        for i in range(3):
            v = model(hidden_states=ref["img"], encoder_hidden_states=ref["txt"], timestep=ref[f"t_{i}"],
                      img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
            out[f"t_{i}"] = ref[f"t_{i}"]
            out[f"velocity_{i}"] = v
            rel = ((v - ref[f"velocity_{i}"]).norm() / ref[f"velocity_{i}"].norm()).item()
            print(f"  velocity_{i}: fp8 vs f32 weights rel err {rel:.3e}")
    save(out, "flux2_tiny_fp8_ref.safetensors")


# ---------------------------------------------------------------- text encoder
FP8_LAYERS = (0, 2)


def qwen3_fixtures():
    with open(os.path.join(PARITY, "qwen3_tiny_config.json")) as f:
        cfg = json.load(f)
    state = load_file(os.path.join(PARITY, "qwen3_tiny.safetensors"))
    ref = load_file(os.path.join(PARITY, "text_encoder_ref.safetensors"))
    layers_conf, tensors, dequant = {}, {}, {}
    for name, w in sorted(state.items()):
        parts = name.split(".")
        in_fp8_layer = name.startswith("model.layers.") and int(parts[2]) in FP8_LAYERS
        if in_fp8_layer and w.ndim == 2 and name.endswith("_proj.weight"):
            layer = name[: -len(".weight")]
            q, scale = quantize(w)
            tensors[name] = q
            tensors[layer + ".weight_scale"] = scale
            layers_conf[layer] = {"format": "float8_e4m3fn"}
            dequant[name] = dequantize(q, scale)
        else:
            tensors[name] = w.to(torch.bfloat16)
            dequant[name] = tensors[name].float()
    print(f"text encoder: {len(layers_conf)} fp8 linears in layers {FP8_LAYERS}")
    with_tensors = dict(tensors)
    for layer, conf in layers_conf.items():
        with_tensors[layer + ".comfy_quant"] = comfy_quant(conf)
    save(with_tensors, "qwen3_tiny_fp8mixed.safetensors")
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers_conf})}
    save(tensors, "qwen3_tiny_fp8mixed_meta.safetensors", metadata=meta)

    config = Qwen3Config(**{k: v for k, v in cfg.items() if k != "architectures"}, attn_implementation="eager")
    model = Qwen3ForCausalLM(config).eval()

    def hidden(weights):
        model.load_state_dict({**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}, strict=True)
        with torch.no_grad():
            hs = model(input_ids=ref["input_ids"][None], attention_mask=ref["attention_mask"][None],
                       output_hidden_states=True).hidden_states
        # diffusers' _get_qwen3_prompt_embeds: layers (1, 2, 3) concatenated per token.
        return torch.cat([hs[k] for k in parity.OUT_LAYERS], dim=-1)

    check = hidden(state)
    err = ((check - ref["prompt_embeds"]).abs().max() / ref["prompt_embeds"].abs().max()).item()
    assert err < 1e-5, f"the reference recipe does not reproduce text_encoder_ref ({err})"
    out = hidden(dequant)
    rel = ((out - ref["prompt_embeds"]).norm() / ref["prompt_embeds"].norm()).item()
    print(f"  prompt_embeds: fp8mixed vs f32 weights rel err {rel:.3e}")
    save({"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"], "prompt_embeds": out},
         "qwen3_tiny_fp8mixed_ref.safetensors")


# ---------------------------------------------------------------- small-decoder VAE
SMALL_VAE_CFG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,), decoder_block_out_channels=(32,), layers_per_block=1,
    latent_channels=32, norm_num_groups=32, use_quant_conv=True, use_post_quant_conv=True,
    batch_norm_eps=1e-4,
)


def vae_fixtures():
    vae = AutoencoderKLFlux2(**SMALL_VAE_CFG).eval()
    parity.randomize(vae, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(128, generator=gen))
        vae.bn.running_var.copy_(0.5 + torch.rand(128, generator=gen))
        # Stored in f16: the reference uses exactly the stored values.
        for p in vae.parameters():
            p.copy_(p.to(torch.float16).float())
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if "num_batches_tracked" not in k}
    bfl = parity.vae_to_bfl(state, len(SMALL_VAE_CFG["block_out_channels"]))
    save({k: (v if k.startswith("bn.") else v.to(torch.float16)) for k, v in bfl.items()},
         "vae_small_decoder.safetensors")
    latent = torch.randn(1, 128, 3, 4, generator=gen)
    with torch.no_grad():
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        z = parity.Flux2KleinPipeline._unpatchify_latents(latent * std + vae.bn.running_mean.view(1, -1, 1, 1))
        image = vae.decode(z).sample
    save({"latent": latent, "image": image}, "vae_small_decoder_ref.safetensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_grad_enabled(False)
    transformer_fixtures()
    qwen3_fixtures()
    vae_fixtures()


if __name__ == "__main__":
    main()
