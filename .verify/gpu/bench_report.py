#!/usr/bin/env python3
"""The last step of bench.sh: compares each `veetance bench` variant's velocity with diffusers'
(eager, bf16) on the same inputs, and prints the tables. Reads OUT/diffusers.json,
OUT/velocity_diffusers_*.safetensors, OUT/veetance_<name>.json, OUT/velocity_<name>.safetensors and
the nvidia-smi logs OUT/smi_<name>.txt (with OUT/smi_idle.txt); writes OUT/summary.json.
Exits 1 when a variant failed, or its relative error ||ours - diffusers|| / ||diffusers|| exceeds
the tolerance (2e-2 by default).

Usage: bench_report.py OUT "variant1 variant2 ..." [--tol 2e-2]"""

import argparse
import json
import os
import sys

from safetensors.torch import load_file

GIB = float(1 << 30)


def safe_name(variant):
    return variant.replace(":", "-").replace("+", "_").replace("@", "_")


def rel_err(a, b):
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        return float("nan")
    return float((a - b).norm() / b.norm())


def smi_peak_gib(out, name):
    """Peak nvidia-smi memory.used (MiB) of a process's log above the idle reading, in GiB."""
    try:
        idle = int(open(os.path.join(out, "smi_idle.txt")).read().split()[0])
        vals = [int(x) for x in open(os.path.join(out, f"smi_{name}.txt")).read().split() if x.strip().isdigit()]
        return (max(vals) - idle) / 1024.0 if vals else None
    except (OSError, ValueError, IndexError):
        return None


def fmt(x, spec):
    return "-" if x is None or x != x else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("variants")
    ap.add_argument("--tol", type=float, default=2e-2)
    a = ap.parse_args()
    out = a.out
    d = json.load(open(os.path.join(out, "diffusers.json")))
    eager = d["forward_eager"]["median_ms"]
    compiled = d.get("forward_compile", {}).get("median_ms")
    ref = load_file(os.path.join(out, "velocity_diffusers_eager.safetensors"))["velocity"]
    rows, failed, summary = [], [], {"tolerance": a.tol, "diffusers": d, "variants": {}}
    flop = None
    ours = {}
    for v in a.variants.split():
        name = safe_name(v)
        path = os.path.join(out, f"veetance_{name}.json")
        if not os.path.exists(path):
            failed.append(f"{v}: no result (see {name}.log)")
            continue
        j = json.load(open(path))
        ours[v] = j
        f = j["forward"]
        flop = flop or f["flop"]
        vel = os.path.join(out, f"velocity_{name}.safetensors")
        err = rel_err(load_file(vel)["velocity"], ref) if os.path.exists(vel) else float("nan")
        if not err <= a.tol:
            failed.append(f"{v}: relative error {err:.3e} > {a.tol:g}")
        peak = f.get("peak_bytes")
        rows.append((f"veetance {v}", f["median_ms"], f["min_ms"], f["tflops_median"], peak / GIB if peak else None,
                     smi_peak_gib(out, name), err))
        summary["variants"][v] = {"rel_err": err, "forward_median_ms": f["median_ms"],
                                  "x_eager": f["median_ms"] / eager, "x_compile": f["median_ms"] / compiled if compiled else None,
                                  "json": path}
    tf = (lambda ms: flop / (ms * 1e-3) / 1e12) if flop else (lambda ms: None)
    drows = [("diffusers eager", d["forward_eager"], None)]
    if "forward_compile" in d:
        drows.append(("diffusers torch.compile", d["forward_compile"], d.get("compile_vs_eager_rel_err")))
    # diffusers first; the rel err of torch.compile is against eager (the noise floor of bf16).
    rows = [(label, r["median_ms"], r["min_ms"], tf(r["median_ms"]),
             r["peak_used_bytes"] / GIB if r.get("peak_used_bytes") else None,
             smi_peak_gib(out, "diffusers"), 0.0 if err is None else err) for label, r, err in drows] + rows

    print()
    print(f"FLUX.2 klein-{d['variant']} transformer forward, {d['image_tokens']} image + {d['text_tokens']} text "
          f"tokens, {d['dtype']} on {d['gpu']} ({fmt(flop and flop / 1e12, '.2f')} TFLOP a forward)")
    print("x eager / x compile: our time over theirs (above 1 = slower). peak: driver used memory during the forward "
          "phase (all allocations); smi: the process's nvidia-smi peak above idle.")
    head = f"{'variant':34s} {'median ms':>10s} {'min ms':>9s} {'x eager':>8s} {'x compile':>9s} {'TFLOP/s':>8s} " \
           f"{'peak GiB':>8s} {'smi GiB':>8s} {'rel err':>9s}"
    print(head)
    print("-" * len(head))
    for label, med, mn, tflops, peak, smi, err in rows:
        print(f"{label:34s} {med:10.2f} {mn:9.2f} {med / eager:8.2f} {fmt(compiled and med / compiled, '9.2f'):>9s} "
              f"{fmt(tflops, '8.1f'):>8s} {fmt(peak, '8.2f'):>8s} {fmt(smi, '8.2f'):>8s} {fmt(err, '9.2e'):>9s}")

    gen = [(f"diffusers {k.split('_', 1)[1]}", d[k]["total"]["median_ms"], d[k]["encode"]["median_ms"],
            d[k]["step"]["median_ms"], d[k]["decode"]["median_ms"], d[k].get("peak_used_bytes"))
           for k in ("generation_eager", "generation_compile") if k in d]
    for v, j in ours.items():
        g = j.get("generation")
        if g:
            gen.append((f"veetance {v}", g["total"]["median_ms"], g["encode"]["median_ms"], g["step"]["median_ms"],
                        g["decode"]["median_ms"], g.get("peak_bytes")))
    if gen:
        base = gen[0][1] if gen[0][0] == "diffusers eager" else None
        print()
        print("whole generation (text encoding + steps + VAE decode, warm), medians; step: all steps pooled "
              "(diffusers' first lap includes preparing the latents)")
        head = f"{'variant':34s} {'total ms':>9s} {'x eager':>8s} {'encode':>8s} {'step':>8s} {'decode':>8s} {'peak GiB':>8s}"
        print(head)
        print("-" * len(head))
        for label, total, enc, step, dec, peak in gen:
            print(f"{label:34s} {total:9.1f} {fmt(base and total / base, '8.2f'):>8s} {enc:8.1f} {step:8.1f} {dec:8.1f} "
                  f"{fmt(peak and peak / GIB, '8.2f'):>8s}")
        summary["generation"] = [dict(zip(("variant", "total_ms", "encode_ms", "step_ms", "decode_ms", "peak_bytes"), g))
                                 for g in gen]

    summary["failed"] = failed
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print()
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed))
        return 1
    print(f"all variants within rel err {a.tol:g} of diffusers eager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
