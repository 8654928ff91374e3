#!/usr/bin/env python3
"""Builds assets/parity/edit_ref.safetensors: f32 parity fixtures for images in (img2img,
inpainting, FLUX.2 [klein] reference-image editing), checked by crates/models/tests/edit_parity.rs.

The tiny random-weight models are make_fixtures.py's (its builders imported, same seeds, hence
the same weights as assets/parity/; nothing there is rewritten). The tiny VAE there has three
levels: 8 pixels per latent token.

What each case runs:
- Reference editing (1 and 3 references of 64x64, 96x64 and 64x128 pixels, width x height; the
  pipeline refuses references under 64 pixels a side) on a 32x32 output: diffusers'
  ``Flux2KleinPipeline(image=[...])`` itself, distilled (guidance 1) for one reference and with
  CFG 4 (``is_distilled=False``) for three. The references are PIL images of sizes that are
  multiples of 8 and under 1 MP, so the pipeline's preprocessing (resize to 1 MP, crop to a
  multiple of ``vae_scale_factor * 2``) leaves them as they are and only maps [0, 255] to [-1, 1].
- Inpainting: diffusers' ``Flux2KleinInpaintPipeline`` itself (strength 0.75, 4 steps). It adds
  the source image as a reference (t = 10) besides masking; its mask is binarised at 0.5 and
  resized to the token grid bilinearly. Its noise is drawn from the generator (passing
  ``latents`` would skip ``scale_noise``), so the script records it by wrapping
  ``prepare_latents``.
- img2img: diffusers 0.42.1 has no FLUX.2 img2img pipeline, so the loop below is written from the
  klein pipeline's own components following ``FluxImg2ImgPipeline`` exactly: the full schedule
  for ``num_inference_steps`` (empirical mu on the image's token count), ``get_timesteps`` by
  strength (``t_start = int(N - min(N * strength, N))``, ``set_begin_index``),
  ``scheduler.scale_noise(image_latents, timesteps[:1], noise)``, then the klein denoising loop.
  Two strengths: 0.6 and 0.35.

It also writes the input images of the tiny edit workflow, assets/tiny-models/input/
edit-reference.png (64x64) and edit-style.png (96x64): random RGB pixels.

Run (CPU, seconds):
    /work/venv-parity/bin/python .verify/parity/make_edit_fixtures.py
"""

import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402

from diffusers.pipelines.flux2.pipeline_flux2_klein import (  # noqa: E402
    Flux2KleinPipeline,
    compute_empirical_mu,
    retrieve_timesteps,
)
from diffusers.pipelines.flux2.pipeline_flux2_klein_inpaint import Flux2KleinInpaintPipeline  # noqa: E402

# Reuse the builders; what they write (weights, configs, tokenizer) goes to a scratch folder so
# that the stored fixtures stay as they are.
mf.save = lambda *args, **kwargs: None
mf.save_file = lambda *args, **kwargs: None
mf.OUT = tempfile.mkdtemp(prefix="veetance-edit-fixtures-")

PROMPT = mf.PROMPT
STEPS = 4
OUT = os.path.join(mf.ROOT, "assets", "parity", "edit_ref.safetensors")


def rgb(seed, width, height):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def as_tensor(pil):
    """(1, H, W, C) in [0, 1], as ComfyUI's IMAGE and our Image hold it."""
    return torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0)[None]


def main():
    tokenizer = mf.build_tokenizer()
    qwen = mf.build_qwen3(len(tokenizer))
    transformer = mf.build_transformer()
    vae = mf.build_vae()
    # The same weights as the stored fixtures that the Rust tests load.
    stored = load_file(os.path.join(mf.ROOT, "assets", "parity", "vae_tiny_diffusers",
                                    "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in vae.state_dict().items() if k in stored)
    stored = load_file(os.path.join(mf.ROOT, "assets", "parity", "flux2_tiny_bfl.safetensors"))
    assert torch.equal(stored["img_in.weight"], transformer.x_embedder.weight)
    stored = load_file(os.path.join(mf.ROOT, "assets", "parity", "qwen3_tiny.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in qwen.state_dict().items() if k in stored)
    out = {}

    def pipe_of(cls, distilled):
        pipe = cls(scheduler=mf.scheduler(), vae=vae, text_encoder=qwen, tokenizer=tokenizer,
                   transformer=transformer, is_distilled=distilled)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def last_latents():
        steps = []

        def cb(p, i, t, kw):
            steps.append(kw["latents"].clone())
            return {}
        return steps, cb

    # ---------------------------------------------------------------- references
    refs = [rgb(10, 64, 64), rgb(11, 96, 64), rgb(12, 64, 128)]
    for i, r in enumerate(refs):
        out[f"ref_{i}_image"] = as_tensor(r)
    gen = torch.Generator().manual_seed(20)
    noise = torch.randn(1, 128, 4, 4, generator=gen)
    out["ref_noise"] = noise
    for name, images, distilled, guidance in [("ref1", refs[:1], True, 1.0), ("ref3", refs, False, 4.0)]:
        pipe = pipe_of(Flux2KleinPipeline, distilled)
        steps, cb = last_latents()
        pipe(prompt=PROMPT, image=images, height=32, width=32, num_inference_steps=STEPS,
             guidance_scale=guidance, latents=noise.clone(), output_type="latent",
             max_sequence_length=mf.MAX_LEN, text_encoder_out_layers=mf.OUT_LAYERS,
             callback_on_step_end=cb)
        out[f"{name}_latent"] = steps[-1]  # packed (1, 16, 128), normalised
        out[f"{name}_guidance"] = torch.tensor([guidance])

    # ---------------------------------------------------------------- img2img
    source = rgb(30, 32, 32)
    out["source_image"] = as_tensor(source)
    pipe = pipe_of(Flux2KleinPipeline, True)
    prompt_embeds, text_ids = pipe.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1,
                                                 max_sequence_length=mf.MAX_LEN,
                                                 text_encoder_out_layers=mf.OUT_LAYERS)
    pixels = pipe.image_processor.preprocess(source, height=32, width=32)
    image_latents = pipe._encode_vae_image(pixels, generator=None)  # (1, 128, 4, 4) normalised
    out["source_latent"] = image_latents
    latent_ids = Flux2KleinPipeline._prepare_latent_ids(image_latents)
    gen = torch.Generator().manual_seed(31)
    i2i_noise = torch.randn(1, 128, 4, 4, generator=gen)
    out["i2i_noise"] = i2i_noise
    for k, strength in enumerate([0.6, 0.35]):
        sched = mf.scheduler()
        sigmas = np.linspace(1.0, 1 / STEPS, STEPS)
        mu = compute_empirical_mu(image_seq_len=16, num_steps=STEPS)
        retrieve_timesteps(sched, STEPS, "cpu", sigmas=sigmas, mu=mu)
        # FluxImg2ImgPipeline.get_timesteps
        init_timestep = min(STEPS * strength, STEPS)
        t_start = int(max(STEPS - init_timestep, 0))
        timesteps = sched.timesteps[t_start * sched.order:]
        sched.set_begin_index(t_start * sched.order)
        latents = sched.scale_noise(image_latents, timesteps[:1].repeat(1), i2i_noise)
        latents = Flux2KleinPipeline._pack_latents(latents)
        for t in timesteps:
            timestep = t.expand(latents.shape[0]).to(latents.dtype)
            v = transformer(hidden_states=latents, timestep=timestep / 1000, guidance=None,
                            encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=latent_ids,
                            return_dict=False)[0]
            latents = sched.step(v, t, latents, return_dict=False)[0]
        out[f"i2i_{k}_strength"] = torch.tensor([strength])
        out[f"i2i_{k}_sigmas"] = sched.sigmas[t_start:].clone()
        out[f"i2i_{k}_latent"] = latents

    # ---------------------------------------------------------------- inpainting
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:20, 8:28] = 255      # repaint
    mask[20:26, 0:16] = 140     # >= 0.5: repaint after binarising
    mask[26:30, 16:32] = 100    # < 0.5: kept after binarising
    mask_pil = Image.fromarray(mask, "L")
    out["mask_image"] = torch.from_numpy(mask.astype(np.float32) / 255.0)[None]  # (1, H, W)
    pipe = pipe_of(Flux2KleinInpaintPipeline, True)
    seen = {}
    prepare_latents = pipe.prepare_latents
    prepare_mask = pipe.prepare_mask_latents

    def record_latents(*args, **kwargs):
        res = prepare_latents(*args, **kwargs)
        seen["start"], seen["noise"] = res[0].clone(), res[1].clone()
        return res

    def record_mask(*args, **kwargs):
        res = prepare_mask(*args, **kwargs)
        seen["mask"] = res.clone()
        return res

    pipe.prepare_latents = record_latents
    pipe.prepare_mask_latents = record_mask
    steps, cb = last_latents()
    strength = 0.75
    pipe(prompt=PROMPT, image=source, mask_image=mask_pil, strength=strength, num_inference_steps=STEPS,
         guidance_scale=1.0, generator=torch.Generator().manual_seed(40), output_type="latent",
         max_sequence_length=mf.MAX_LEN, text_encoder_out_layers=mf.OUT_LAYERS, callback_on_step_end=cb)
    out["inpaint_strength"] = torch.tensor([strength])
    out["inpaint_noise"] = seen["noise"]          # packed (1, 16, 128)
    out["inpaint_start"] = seen["start"]          # packed
    out["inpaint_mask_tokens"] = seen["mask"]     # packed (1, 16, 1)
    out["inpaint_latent"] = steps[-1]

    # Input images for the tiny edit workflow (workflows/flux2-klein-tiny-edit.ron) and the
    # ComfyUI edit-template tests: plain RGB PNGs in a ComfyUI-style input folder.
    inputs = os.path.join(mf.ROOT, "assets", "tiny-models", "input")
    os.makedirs(inputs, exist_ok=True)
    for name, seed, size in [("edit-reference.png", 50, (64, 64)), ("edit-style.png", 51, (96, 64))]:
        path = os.path.join(inputs, name)
        rgb(seed, *size).save(path, optimize=False)
        print(f"wrote {os.path.relpath(path, mf.ROOT)} ({os.path.getsize(path)} bytes)")

    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}, OUT)
    print(f"wrote {os.path.relpath(OUT, mf.ROOT)} ({os.path.getsize(OUT)} bytes)")
    for k in sorted(out):
        print(f"  {k}: {tuple(out[k].shape)}")


if __name__ == "__main__":
    sys.exit(main())
