#!/usr/bin/env python3
"""Builds the LoRA parity fixtures in assets/parity/lora/ for crates/models/tests/lora.rs.

Three tiny random LoRAs (ranks 2-4, alpha != rank) on the tiny FLUX.2 transformer of
make_fixtures.py (same builder and seed, so the same weights as assets/parity/flux2_tiny_*), each
saved in one of the naming styles klein LoRAs are published in:

* lora_diffusers.safetensors: diffusers/PEFT names (`transformer.<module>.lora_A.weight`), alpha in
  the safetensors metadata (`lora_adapter_metadata`, as diffusers' save_lora_weights writes it,
  with a rank_pattern/alpha_pattern entry); split to_q/to_k (no to_v), norm_out.linear.
* lora_kohya.safetensors: kohya/ComfyUI names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down`,
  `.lora_up`, `.alpha`); fused qkv.
* lora_bfl.safetensors: BFL/ai-toolkit names (`diffusion_model.double_blocks.0.txt_attn.qkv.lora_A`,
  `.lora_B`) with `.alpha` tensors (ComfyUI's scale alpha/rank); modulation layers.

The reference velocities come from diffusers' Flux2Transformer2DModel with the LoRAs loaded the
diffusers way (Flux2LoraLoaderMixin.load_lora_weights into PEFT layers, strengths through
set_adapters). diffusers' converter for BFL names refuses `.alpha` tensors, so for that file the
alpha/rank scale is folded into lora_A before the state dict is handed to load_lora_weights (the same
arithmetic as diffusers' kohya converter).

Run (CPU, seconds): /work/venv-parity/bin/pip install peft
                    /work/venv-parity/bin/python .verify/parity/make_lora_fixtures.py
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the tiny transformer's builder and seed)

from diffusers import Flux2Transformer2DModel  # noqa: E402
from diffusers.loaders.lora_pipeline import Flux2LoraLoaderMixin  # noqa: E402

OUT = os.path.join(mf.ROOT, "assets", "parity", "lora")
os.makedirs(OUT, exist_ok=True)
torch.set_grad_enabled(False)

CFG = mf.TRANSFORMER_CFG
D = CFG["num_attention_heads"] * CFG["attention_head_dim"]  # 32
MLP = int(D * CFG["mlp_ratio"])  # 96
T_IN = CFG["timestep_guidance_channels"]

# (in, out) of each BFL linear
SHAPES = {
    "img_in": (CFG["in_channels"], D),
    "txt_in": (CFG["joint_attention_dim"], D),
    "time_in.in_layer": (T_IN, D),
    "time_in.out_layer": (D, D),
    "double_stream_modulation_img.lin": (D, 6 * D),
    "double_stream_modulation_txt.lin": (D, 6 * D),
    "single_stream_modulation.lin": (D, 3 * D),
    "final_layer.linear": (D, CFG["in_channels"]),
    "final_layer.adaLN_modulation.1": (D, 2 * D),
}
for i in range(CFG["num_layers"]):
    for s in ("img", "txt"):
        SHAPES[f"double_blocks.{i}.{s}_attn.qkv"] = (D, 3 * D)
        SHAPES[f"double_blocks.{i}.{s}_attn.proj"] = (D, D)
        SHAPES[f"double_blocks.{i}.{s}_mlp.0"] = (D, 2 * MLP)
        SHAPES[f"double_blocks.{i}.{s}_mlp.2"] = (MLP, D)
for i in range(CFG["num_single_layers"]):
    SHAPES[f"single_blocks.{i}.linear1"] = (D, 3 * D + 2 * MLP)
    SHAPES[f"single_blocks.{i}.linear2"] = (D + MLP, D)

# diffusers module -> (BFL linear, first row, rows)
DIFFUSERS = {
    "x_embedder": ("img_in", 0, D),
    "context_embedder": ("txt_in", 0, D),
    "time_guidance_embed.timestep_embedder.linear_2": ("time_in.out_layer", 0, D),
    "double_stream_modulation_txt.linear": ("double_stream_modulation_txt.lin", 0, 6 * D),
    "proj_out": ("final_layer.linear", 0, CFG["in_channels"]),
    "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv", 0, D),
    "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv", D, D),
    "transformer_blocks.1.attn.add_v_proj": ("double_blocks.1.txt_attn.qkv", 2 * D, D),
    "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj", 0, D),
    "transformer_blocks.1.ff.linear_in": ("double_blocks.1.img_mlp.0", 0, 2 * MLP),
    "transformer_blocks.0.ff_context.linear_out": ("double_blocks.0.txt_mlp.2", 0, D),
    "single_transformer_blocks.0.attn.to_qkv_mlp_proj": ("single_blocks.0.linear1", 0, 3 * D + 2 * MLP),
    "single_transformer_blocks.1.attn.to_out": ("single_blocks.1.linear2", 0, D),
    # diffusers' (scale, shift) halves: the Rust side must swap them onto BFL's (shift, scale)
    "norm_out.linear": ("final_layer.adaLN_modulation.1", 0, 2 * D),
}
KOHYA = [  # (BFL linear, rank, alpha)
    ("double_blocks.0.img_attn.qkv", 4, 3.0),
    ("double_blocks.1.txt_attn.qkv", 3, 1.5),
    ("double_blocks.0.img_attn.proj", 2, 5.0),
    ("double_blocks.0.txt_attn.proj", 4, 2.0),
    ("double_blocks.1.img_mlp.0", 3, 4.0),
    ("double_blocks.0.txt_mlp.2", 2, 1.0),
    ("single_blocks.0.linear1", 4, 6.0),
    ("single_blocks.1.linear2", 3, 2.0),
    ("img_in", 2, 3.0),
    ("time_in.in_layer", 4, 2.0),
]
BFL = [
    ("double_blocks.0.txt_attn.qkv", 3, 2.0),
    ("double_blocks.1.img_attn.qkv", 4, 8.0),
    ("double_blocks.1.img_attn.proj", 2, 1.0),
    ("double_blocks.0.img_mlp.0", 4, 3.0),
    ("double_blocks.1.txt_mlp.2", 3, 4.5),
    ("single_blocks.0.linear2", 2, 3.0),
    ("single_blocks.1.linear1", 4, 2.0),
    ("double_stream_modulation_img.lin", 3, 1.0),
    ("single_stream_modulation.lin", 2, 4.0),
    ("final_layer.linear", 4, 6.0),
    ("txt_in", 3, 2.0),
]
DIFFUSERS_R, DIFFUSERS_ALPHA = 4, 6.0
DIFFUSERS_PATTERN = ("transformer_blocks.1.ff.linear_in", 2, 5.0)  # rank_pattern / alpha_pattern


def factors(gen, fan_in, rows, rank):
    a = torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
    b = 0.3 * torch.randn(rows, rank, generator=gen)
    return a, b


def build_model():
    model = Flux2Transformer2DModel(**CFG).eval()
    mf.randomize(model, torch.Generator().manual_seed(2))
    # Same weights as the checked-in tiny model (make_fixtures.py's build_transformer).
    bfl = mf.to_bfl(model.state_dict(), CFG["num_layers"], CFG["num_single_layers"])
    stored = load_file(os.path.join(mf.OUT, "flux2_tiny_bfl.safetensors"))
    assert all(torch.equal(bfl[k], stored[k]) for k in stored), "tiny transformer weights differ"
    return model


def save(tensors, name, metadata=None):
    path = os.path.join(OUT, name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    print(f"wrote {os.path.relpath(path, mf.ROOT)} ({os.path.getsize(path)} bytes)")
    return path


class Pipe(Flux2LoraLoaderMixin):
    """The least a Flux2LoraLoaderMixin needs: a transformer."""

    hf_device_map = None

    def __init__(self, transformer):
        self.transformer = transformer

    @property
    def components(self):
        return {"transformer": self.transformer}


def main():
    gen = torch.Generator().manual_seed(42)

    # ---- diffusers/PEFT style, alpha in the metadata
    diff = {}
    for module, (linear, _, rows) in DIFFUSERS.items():
        rank = DIFFUSERS_PATTERN[1] if module == DIFFUSERS_PATTERN[0] else DIFFUSERS_R
        a, b = factors(gen, SHAPES[linear][0], rows, rank)
        diff[f"transformer.{module}.lora_A.weight"] = a
        diff[f"transformer.{module}.lora_B.weight"] = b
    meta = {
        "r": DIFFUSERS_R,
        "lora_alpha": DIFFUSERS_ALPHA,
        "rank_pattern": {DIFFUSERS_PATTERN[0]: DIFFUSERS_PATTERN[1]},
        "alpha_pattern": {DIFFUSERS_PATTERN[0]: DIFFUSERS_PATTERN[2]},
        "target_modules": sorted(DIFFUSERS),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    diffusers_path = save(diff, "lora_diffusers.safetensors", metadata={
        "format": "pt",
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in meta.items()}, sort_keys=True),
    })

    # ---- kohya style
    kohya = {}
    for linear, rank, alpha in KOHYA:
        fan_in, out = SHAPES[linear]
        a, b = factors(gen, fan_in, out, rank)
        key = "lora_unet_" + linear.replace(".", "_")
        kohya[f"{key}.lora_down.weight"] = a
        kohya[f"{key}.lora_up.weight"] = b
        kohya[f"{key}.alpha"] = torch.tensor(alpha)
    kohya_path = save(kohya, "lora_kohya.safetensors")

    # ---- BFL style with alpha tensors
    bfl = {}
    bfl_for_diffusers = {}
    for linear, rank, alpha in BFL:
        fan_in, out = SHAPES[linear]
        a, b = factors(gen, fan_in, out, rank)
        key = f"diffusion_model.{linear}"
        bfl[f"{key}.lora_A.weight"] = a
        bfl[f"{key}.lora_B.weight"] = b
        bfl[f"{key}.alpha"] = torch.tensor(alpha)
        bfl_for_diffusers[f"{key}.lora_A.weight"] = a * (alpha / rank)
        bfl_for_diffusers[f"{key}.lora_B.weight"] = b
    save(bfl, "lora_bfl.safetensors")

    # ---- reference velocities (inputs of transformer_ref.safetensors)
    r = load_file(os.path.join(mf.OUT, "transformer_ref.safetensors"))
    img, txt = r["img"], r["txt"]
    img_ids, txt_ids = r["img_ids"].unsqueeze(0), r["txt_ids"].unsqueeze(0)
    times = [1.0, 0.3]

    def velocities(model):
        return [model(hidden_states=img, encoder_hidden_states=txt, timestep=torch.tensor([t]), img_ids=img_ids,
                      txt_ids=txt_ids, guidance=None, return_dict=False)[0] for t in times]

    out = {}
    for i, t in enumerate(times):
        out[f"t_{i}"] = torch.tensor([t])
    cases = [
        ("diffusers", [("diffusers", 0.8)]),
        ("kohya", [("kohya", 1.3)]),
        ("bfl", [("bfl", 0.6)]),
        ("two", [("kohya", 0.75), ("bfl", -0.5)]),
    ]
    sources = {"diffusers": diffusers_path, "kohya": kohya_path, "bfl": bfl_for_diffusers}
    for case, loras in cases:
        pipe = Pipe(build_model())
        for name, _ in loras:
            src = sources[name]
            pipe.load_lora_weights(dict(src) if isinstance(src, dict) else src, adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        for i, v in enumerate(velocities(pipe.transformer)):
            out[f"{case}_velocity_{i}"] = v
    base = build_model()
    for i, v in enumerate(velocities(base)):
        out[f"base_velocity_{i}"] = v
        assert torch.allclose(v, r[f"velocity_{[1.0, 0.7, 0.3].index(times[i])}"], atol=1e-6)
    for case, _ in cases:
        d = max(float((out[f"{case}_velocity_{i}"] - out[f"base_velocity_{i}"]).norm() /
                      out[f"base_velocity_{i}"].norm()) for i in range(len(times)))
        print(f"{case}: LoRA changes the velocity by {d:.3f} (relative)")
    out["strengths"] = torch.tensor([0.8, 1.3, 0.6, 0.75, -0.5])
    save(out, "velocity_ref.safetensors")


if __name__ == "__main__":
    sys.exit(main())
