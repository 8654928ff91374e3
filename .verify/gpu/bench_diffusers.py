#!/usr/bin/env python3
"""The diffusers side of bench.sh: on the weights make_full_size_models.py wrote and the inputs
bench_inputs.py wrote, times Flux2Transformer2DModel's forward in eager mode and under
torch.compile (default mode), and a whole generation through Flux2KleinPipeline (text encoding,
the 4 steps, VAE decode; distilled, no CFG) with the eager and the compiled transformer.

Timing: warm-up runs, then the median of N, torch.cuda.synchronize around every clock reading.
Memory: torch.cuda.max_memory_allocated per phase, and the driver's used memory (total - free,
what `veetance bench` reports) sampled on a thread. Writes OUT/diffusers.json and the velocities
OUT/velocity_diffusers_{eager,compile}.safetensors (f32).

Usage: bench_diffusers.py --variant 4b --models DIR --inputs FILE --out DIR
       [--device cuda] [--warmup 2] [--iters 10] [--gen-iters 3] [--width 1024 --height 1024]
       [--no-compile] [--no-generation]"""

import argparse
import os
import statistics
import time

import torch
from safetensors.torch import load_file, save_file

import bench_common as bc


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_runs(fn, warmup, iters, device):
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return out, times


def summary(times):
    return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times),
            "times_ms": times}


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def max_allocated(device):
    return torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=list(bc.TRANSFORMER), default="4b")
    ap.add_argument("--models", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--gen-iters", type=int, default=3)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-generation", action="store_true")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    dev, dt = a.device, {"bf16": torch.bfloat16, "f32": torch.float32}[a.dtype]
    os.makedirs(a.out, exist_ok=True)
    import diffusers
    import transformers
    result = {"torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "variant": a.variant, "device": dev, "dtype": a.dtype,
              "gpu": torch.cuda.get_device_name() if torch.device(dev).type == "cuda" else "cpu",
              "warmup": a.warmup, "iters": a.iters}
    mem = bc.MemorySampler(dev)
    paths = bc.files(a.models, a.variant)

    t0 = time.perf_counter()
    transformer = bc.load_transformer(paths["transformer"], a.variant, dev, dt)
    sync(dev)
    result["load_transformer_ms"] = (time.perf_counter() - t0) * 1e3
    mem.take_peak()

    raw = load_file(a.inputs)
    inp = dict(hidden_states=raw["img"].to(dev, dt), encoder_hidden_states=raw["txt"].to(dev, dt),
               timestep=raw["t"].to(dev, dt), img_ids=raw["img_ids"].to(dev), txt_ids=raw["txt_ids"].to(dev),
               guidance=None, return_dict=False)
    result["image_tokens"], result["text_tokens"] = raw["img"].shape[1], raw["txt"].shape[1]

    def forward(model):
        return lambda: model(**inp)[0]

    modes = [("eager", transformer)]
    if not a.no_compile:
        modes.append(("compile", torch.compile(transformer)))
    for name, model in modes:
        reset_peak(dev)
        mem.take_peak()
        t0 = time.perf_counter()
        out, times = timed_runs(forward(model), a.warmup, a.iters, dev)
        r = summary(times)
        r["wall_incl_warmup_s"] = time.perf_counter() - t0
        r["max_memory_allocated_bytes"] = max_allocated(dev)
        r["peak_used_bytes"] = mem.take_peak()
        result[f"forward_{name}"] = r
        save_file({"velocity": out.float().cpu().contiguous()}, os.path.join(a.out, f"velocity_diffusers_{name}.safetensors"))
        print(f"diffusers forward {name}: median {r['median_ms']:.2f} ms, min {r['min_ms']:.2f} ms "
              f"(warm-up + runs {r['wall_incl_warmup_s']:.1f} s)", flush=True)
    if len(modes) == 2:
        e = load_file(os.path.join(a.out, "velocity_diffusers_eager.safetensors"))["velocity"]
        c = load_file(os.path.join(a.out, "velocity_diffusers_compile.safetensors"))["velocity"]
        result["compile_vs_eager_rel_err"] = float((c - e).norm() / e.norm())

    if not a.no_generation:
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
        t0 = time.perf_counter()
        text_encoder = bc.load_text_encoder(paths["text_encoder"], a.variant, dev, dt)
        vae = bc.load_vae(paths["vae"], a.variant, dev, dt)
        sync(dev)
        result["load_text_encoder_and_vae_ms"] = (time.perf_counter() - t0) * 1e3
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
        tok = bc.tokenizer(paths["tokenizer"])
        for name, model in modes:
            pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                                      transformer=model, is_distilled=True)
            pipe.set_progress_bar_config(disable=True)
            stage = {}

            def wrap(fn, key):
                def inner(*args, **kw):
                    sync(dev)
                    t = time.perf_counter()
                    out = fn(*args, **kw)
                    sync(dev)
                    stage[key] = (time.perf_counter() - t) * 1e3
                    stage[key + "_end"] = time.perf_counter()
                    return out
                return inner

            pipe.encode_prompt = wrap(pipe.encode_prompt, "encode")
            vae.decode = wrap(type(vae).decode.__get__(vae), "decode")
            laps = []

            def on_step(p, i, t, kw):
                sync(dev)
                laps.append(time.perf_counter())
                return {}

            runs = []
            for it in range(1 + a.gen_iters):  # one warm-up run
                laps.clear()
                stage.clear()
                reset_peak(dev)
                sync(dev)
                t0 = time.perf_counter()
                pipe(prompt="a red fox in the snow, golden hour", height=a.height, width=a.width,
                     num_inference_steps=a.steps, guidance_scale=1.0, output_type="pt",
                     max_sequence_length=bc.MAX_LEN[a.variant], text_encoder_out_layers=bc.OUT_LAYERS[a.variant],
                     generator=torch.Generator(device=dev).manual_seed(0), callback_on_step_end=on_step)
                sync(dev)
                total = (time.perf_counter() - t0) * 1e3
                marks = [stage["encode_end"]] + laps
                steps = [(b - c) * 1e3 for c, b in zip(marks, marks[1:])]
                if it > 0:
                    runs.append({"total_ms": total, "encode_ms": stage["encode"], "steps_ms": steps,
                                 "decode_ms": stage["decode"], "max_memory_allocated_bytes": max_allocated(dev)})
            del vae.decode
            r = {
                "total": summary([x["total_ms"] for x in runs]),
                "encode": summary([x["encode_ms"] for x in runs]),
                # the first step's lap includes preparing latents and the schedule after encoding
                "step": summary([s for x in runs for s in x["steps_ms"]]),
                "decode": summary([x["decode_ms"] for x in runs]),
                "runs": runs,
                "peak_used_bytes": mem.take_peak(),
                "max_memory_allocated_bytes": max(x["max_memory_allocated_bytes"] or 0 for x in runs) or None,
            }
            result[f"generation_{name}"] = r
            print(f"diffusers generation {name} {a.width}x{a.height}, {a.steps} steps: median "
                  f"{r['total']['median_ms']:.1f} ms (encode {r['encode']['median_ms']:.1f}, step "
                  f"{r['step']['median_ms']:.1f}, decode {r['decode']['median_ms']:.1f})", flush=True)
    mem.close()
    bc.write_json(os.path.join(a.out, "diffusers.json"), result)


if __name__ == "__main__":
    main()
