#!/usr/bin/env python3
"""The diffusers side of edit.sh: a warm FLUX.2 [klein] edit with reference images through
Flux2KleinPipeline(image=[...]) (distilled, 4 steps, no CFG), started from the noise Veetance's
bench used (`veetance bench --save-generation`), timed (warm-up, then the median of N, CUDA
synchronised), and its image compared with Veetance's: rel err = ||ours - theirs|| / ||theirs||
and the largest difference, both on [0, 1] pixels (ours mapped from [-1, 1] and clamped, as the
pipeline's postprocessing does).

Usage: edit_diffusers.py --variant 4b --models DIR --veetance FILE --reference A.png [--reference B.png]
       --out DIR [--device cuda] [--dtype bf16] [--width 1024 --height 1024] [--warmup 1] [--iters 3]
       [--no-compile]"""

import argparse
import json
import os
import statistics
import time

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import bench_common as bc

PROMPT = "a red fox in the snow, golden hour"  # veetance bench's default --prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=list(bc.TRANSFORMER), default="4b")
    ap.add_argument("--models", required=True)
    ap.add_argument("--veetance", required=True, help="veetance bench --save-generation output")
    ap.add_argument("--reference", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    dev, dt = a.device, {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
    cuda = torch.device(dev).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    paths = bc.files(a.models, a.variant)
    transformer = bc.load_transformer(paths["transformer"], a.variant, dev, dt)
    text_encoder = bc.load_text_encoder(paths["text_encoder"], a.variant, dev, dt)
    vae = bc.load_vae(paths["vae"], a.variant, dev, dt)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
    tok = bc.tokenizer(paths["tokenizer"])
    refs = [Image.open(p).convert("RGB") for p in a.reference]
    ours = load_file(a.veetance)
    noise = ours["noise"].to(dev, dt)
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu",
              "references": [list(r.size) for r in refs], "width": a.width, "height": a.height}
    modes = [("eager", transformer)]
    if not a.no_compile:
        modes.append(("compile", torch.compile(transformer)))
    theirs = None
    for name, model in modes:
        pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                                  transformer=model, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)

        def run():
            return pipe(image=refs, prompt=PROMPT, height=a.height, width=a.width,
                        num_inference_steps=a.steps, guidance_scale=1.0, latents=noise.clone(),
                        output_type="pt", max_sequence_length=bc.MAX_LEN[a.variant],
                        text_encoder_out_layers=bc.OUT_LAYERS[a.variant]).images

        for _ in range(a.warmup):
            out = run()
        times = []
        for _ in range(a.iters):
            sync()
            t0 = time.perf_counter()
            out = run()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            result[f"{name}_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result[f"{name}_ms"] = {"median": statistics.median(times), "min": min(times), "times": times}
        print(f"diffusers edit {name}: median {statistics.median(times):.1f} ms (min {min(times):.1f}) "
              f"over {a.iters} runs", flush=True)
        if theirs is None:
            theirs = out.float().cpu()
    ours_img = (ours["image"].float().clamp(-1, 1) / 2 + 0.5)
    if ours_img.shape != theirs.shape:
        raise SystemExit(f"image shapes differ: ours {tuple(ours_img.shape)}, diffusers {tuple(theirs.shape)}")
    diff = ours_img - theirs
    result["rel_err"] = float(diff.norm() / theirs.norm())
    result["max_abs_err"] = float(diff.abs().max())
    result["mean_abs_err_8bit"] = float(diff.abs().mean() * 255)
    print(f"output vs diffusers eager: rel err {result['rel_err']:.3e}, max |diff| {result['max_abs_err']:.3f}, "
          f"mean |diff| {result['mean_abs_err_8bit']:.2f}/255", flush=True)
    save_file({"diffusers": theirs.contiguous(), "veetance": ours_img.contiguous()},
              os.path.join(a.out, "edit_images.safetensors"))
    with open(os.path.join(a.out, "edit_diffusers.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
