"""Shared by the benchmark helpers: model configs per variant, the files make_full_size_models.py
writes, loading them into diffusers/transformers modules (BFL -> diffusers names), and the
tokenizer. Variants: 4b (klein-4B + Qwen3-4B), 9b (klein-9B + Qwen3-8B), tiny (CPU test shapes)."""

import json
import os
import threading
import time

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TINY_TOKENIZER = os.path.join(ROOT, "assets", "tiny-models", "text_encoders", "qwen3-tiny.tokenizer.json")

TRANSFORMER = {
    "4b": dict(num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
               joint_attention_dim=7680, axes_dims_rope=(32, 32, 32, 32)),
    "9b": dict(num_layers=8, num_single_layers=24, attention_head_dim=128, num_attention_heads=32,
               joint_attention_dim=12288, axes_dims_rope=(32, 32, 32, 32)),
    "tiny": dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=96, axes_dims_rope=(4, 4, 4, 4)),
}
COMMON_TRANSFORMER = dict(patch_size=1, in_channels=128, timestep_guidance_channels=256, mlp_ratio=3.0,
                          rope_theta=2000, eps=1e-6, guidance_embeds=False)

QWEN = {
    "4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "9b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=360, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True),
}
COMMON_QWEN = dict(rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=40960)
# The text encoder's output layers and prompt length as the pipeline is called.
OUT_LAYERS = {"4b": (9, 18, 27), "9b": (9, 18, 27), "tiny": (1, 2, 3)}
MAX_LEN = {"4b": 512, "9b": 512, "tiny": 48}
VAE = {"4b": {}, "9b": {}, "tiny": dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)}


def files(models_dir, variant):
    """Where make_full_size_models.py puts each model of a variant."""
    te = os.path.join(models_dir, "text_encoders")
    name = {"4b": ("flux-2-klein-4b", "qwen_3_4b"), "9b": ("flux-2-klein-9b", "qwen_3_8b"),
            "tiny": ("flux-2-klein-tiny", "qwen_3_tiny")}[variant]
    return {
        "transformer": os.path.join(models_dir, "diffusion_models", name[0] + ".safetensors"),
        "text_encoder": os.path.join(te, name[1] + ".safetensors"),
        "tokenizer": os.path.join(te, "tokenizer.json"),
        # tiny: a diffusers folder with config.json (the Rust loader reads the shapes from it);
        # full size: BFL single file with the default FLUX.2 VAE config.
        "vae": os.path.join(models_dir, "vae", "flux2-vae-tiny" if variant == "tiny" else "flux2-vae.safetensors"),
    }


def from_bfl(state, num_double, num_single):
    """BFL -> diffusers transformer names (the inverse of make_fixtures.to_bfl)."""
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
        out[v] = state[k]
    shift, scale = state["final_layer.adaLN_modulation.1.weight"].chunk(2, dim=0)
    out["norm_out.linear.weight"] = torch.cat([scale, shift], 0)
    for i in range(num_double):
        o, b = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        a = b + "attn."
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for n, part in zip(names, state[o + f"{stream}_attn.qkv.weight"].chunk(3, dim=0)):
                out[a + n + ".weight"] = part
        out[a + "norm_q.weight"] = state[o + "img_attn.norm.query_norm.scale"]
        out[a + "norm_k.weight"] = state[o + "img_attn.norm.key_norm.scale"]
        out[a + "norm_added_q.weight"] = state[o + "txt_attn.norm.query_norm.scale"]
        out[a + "norm_added_k.weight"] = state[o + "txt_attn.norm.key_norm.scale"]
        out[a + "to_out.0.weight"] = state[o + "img_attn.proj.weight"]
        out[a + "to_add_out.weight"] = state[o + "txt_attn.proj.weight"]
        out[b + "ff.linear_in.weight"] = state[o + "img_mlp.0.weight"]
        out[b + "ff.linear_out.weight"] = state[o + "img_mlp.2.weight"]
        out[b + "ff_context.linear_in.weight"] = state[o + "txt_mlp.0.weight"]
        out[b + "ff_context.linear_out.weight"] = state[o + "txt_mlp.2.weight"]
    for i in range(num_single):
        o, a = f"single_blocks.{i}.", f"single_transformer_blocks.{i}.attn."
        out[a + "to_qkv_mlp_proj.weight"] = state[o + "linear1.weight"]
        out[a + "to_out.weight"] = state[o + "linear2.weight"]
        out[a + "norm_q.weight"] = state[o + "norm.query_norm.scale"]
        out[a + "norm_k.weight"] = state[o + "norm.key_norm.scale"]
    assert len(out) == len(state) + 4 * num_double, (len(out), len(state))
    return out


def vae_from_bfl(state, levels):
    """BFL -> diffusers VAE names (the inverse of make_fixtures.vae_to_bfl)."""
    out = {}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    for k, v in state.items():
        if k.startswith("bn."):
            out[k] = v
            continue
        if k == "encoder.quant_conv.weight" or k == "encoder.quant_conv.bias":
            out[k[len("encoder."):]] = v
            continue
        if k.startswith("decoder.post_quant_conv."):
            out[k[len("decoder."):]] = v
            continue
        part, rest = k.split(".", 1)
        rest = rest.replace("nin_shortcut", "conv_shortcut")
        if rest.startswith("mid.block_1."):
            rest = "mid_block.resnets.0." + rest[len("mid.block_1."):]
        elif rest.startswith("mid.block_2."):
            rest = "mid_block.resnets.1." + rest[len("mid.block_2."):]
        elif rest.startswith("mid.attn_1."):
            field, kind = rest[len("mid.attn_1."):].rsplit(".", 1)
            rest = f"mid_block.attentions.0.{attn[field]}.{kind}"
            if field != "norm" and kind == "weight":
                v = v[:, :, 0, 0]
        elif rest.startswith("norm_out."):
            rest = "conv_norm_out." + rest[len("norm_out."):]
        elif rest.startswith("down."):
            _, i, kind, tail = rest.split(".", 3)
            rest = f"down_blocks.{i}.resnets.{tail}" if kind == "block" else f"down_blocks.{i}.downsamplers.0.conv.{tail.split('.', 1)[1]}"
        elif rest.startswith("up."):
            _, j, kind, tail = rest.split(".", 3)
            i = levels - 1 - int(j)
            rest = f"up_blocks.{i}.resnets.{tail}" if kind == "block" else f"up_blocks.{i}.upsamplers.0.conv.{tail.split('.', 1)[1]}"
        out[f"{part}.{rest}"] = v
    return out


def transformer_config(variant):
    return {**COMMON_TRANSFORMER, **TRANSFORMER[variant]}


def qwen_config(variant):
    from transformers import Qwen3Config
    return Qwen3Config(**COMMON_QWEN, **QWEN[variant])


def load_transformer(path, variant, device, dtype):
    from diffusers import Flux2Transformer2DModel
    cfg = transformer_config(variant)
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**cfg)
    state = from_bfl(load_file(path, device=str(device)), cfg["num_layers"], cfg["num_single_layers"])
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_text_encoder(path, variant, device, dtype):
    from transformers import Qwen3ForCausalLM
    # Built on the device (its rotary buffers must be real), then the stored weights copied in.
    with torch.device(device):
        model = Qwen3ForCausalLM(qwen_config(variant)).to(dtype).eval()
    state = load_file(path, device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only model.* is stored: the LM head (tied to the embedding, or left random for Qwen3-8B) is
    # computed by the pipeline's forward but never used.
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise SystemExit(f"{path}: unexpected {unexpected[:5]}, missing {missing[:5]}")
    return model


def load_vae(path, variant, device, dtype):
    from diffusers import AutoencoderKLFlux2
    if os.path.isdir(path):
        return AutoencoderKLFlux2.from_pretrained(path, torch_dtype=dtype).to(device).eval()
    cfg = VAE[variant]
    with torch.device("meta"):
        vae = AutoencoderKLFlux2(**cfg)
    levels = len(vae.config.block_out_channels)
    state = vae_from_bfl(load_file(path, device=str(device)), levels)
    if "bn.num_batches_tracked" in vae.state_dict():
        state["bn.num_batches_tracked"] = torch.tensor(0, device=device)
    vae.load_state_dict({k: (v.to(dtype) if v.is_floating_point() and not k.startswith("bn.") else v)
                         for k, v in state.items()}, strict=True, assign=True)
    return vae.to(device=device).eval()


def tokenizer(path):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  padding_side="right")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}")
    return tok


class MemorySampler:
    """Device memory in use (driver total - free, as `veetance bench` measures it), sampled on a
    thread; `take_peak()` returns the peak since the last call. No-op on the CPU."""

    def __init__(self, device, interval=0.005):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0
        self.stop = False
        if self.cuda:
            self.peak = self.used()
            self.thread = threading.Thread(target=self.loop, args=(interval,), daemon=True)
            self.thread.start()

    @staticmethod
    def used():
        free, total = torch.cuda.mem_get_info()
        return total - free

    def loop(self, interval):
        while not self.stop:
            self.peak = max(self.peak, self.used())
            time.sleep(interval)

    def take_peak(self):
        if not self.cuda:
            return None
        peak, self.peak = max(self.peak, self.used()), self.used()
        return peak

    def close(self):
        self.stop = True


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def selftest():
    """Round trips of the name maps against make_fixtures' forward maps, on random modules: the
    tiny and the full-size VAE, the tiny transformer (run by `bench.sh tiny`)."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, ".verify", "parity"))
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from make_fixtures import to_bfl, vae_to_bfl

    cfg = transformer_config("tiny")
    model = Flux2Transformer2DModel(**cfg)
    state = model.state_dict()
    back = from_bfl(to_bfl(state, cfg["num_layers"], cfg["num_single_layers"]), cfg["num_layers"], cfg["num_single_layers"])
    assert back.keys() == state.keys(), set(back) ^ set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    for kw in (VAE["tiny"], {}):
        vae = AutoencoderKLFlux2(**kw)
        state = {k: v for k, v in vae.state_dict().items() if "num_batches" not in k}
        levels = len(vae.config.block_out_channels)
        back = vae_from_bfl(vae_to_bfl(state, levels), levels)
        assert back.keys() == state.keys(), set(back) ^ set(state)
        assert all(torch.equal(back[k], state[k]) for k in state)
    print("bench_common selftest: transformer and VAE name maps round-trip")


if __name__ == "__main__":
    selftest()
