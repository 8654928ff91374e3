"""How fast cuDNN's FP8 attention runs at klein's shapes, against its bf16 attention, same run.

Issue 18 names FP8 attention as the lever for the fp8 forward. Before building it into Veetance's
own cuDNN binding (crates/kernels/src/cudnn.rs), this measures what it can give, on this GPU and
this cuDNN, through NVIDIA's cudnn-frontend Python package (not a Veetance dependency: carried as
a wheel to the GPU machine, see docs/performance.md):

* bf16: PyTorch's SDPA restricted to its cuDNN backend (what our bf16 path's cuDNN SDPA matches);
* fp8: cudnn-frontend's `sdpa_fp8` graph, Q, K, V quantized to e4m3 one scale per tensor, with
  each output type cuDNN accepts (bf16, fp16, e4m3).

For each: median time of 30 runs after 5 warm-ups (CUDA events), TFLOP/s (4 b h s^2 d), and the
relative error of the output against PyTorch's f32 attention on the same bf16 inputs.

`--log-graph`: build and run only the fp8 graph (e4m3 out) once for the 4B shape (run it with cuDNN's and the
frontend's logging on to read the backend descriptors the frontend makes).

Usage (GPU machine): python3 fp8_attention_probe.py [--log-graph] [--out FILE.json]
"""

import argparse
import json
import sys

import cudnn
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

E4M3_MAX = 448.0
SHAPES = [("klein-4b", 1, 24, 4608, 128), ("klein-9b", 1, 32, 4608, 128)]


def timed(fn, warmup=5, iters=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def inputs(b, h, s, d, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    # Q and K as they reach attention: RMS-normalised rows (then RoPE, which keeps the norm).
    q = torch.randn(b, h, s, d, device="cuda", generator=g)
    k = torch.randn(b, h, s, d, device="cuda", generator=g)
    v = torch.randn(b, h, s, d, device="cuda", generator=g)
    q = q / q.pow(2).mean(-1, keepdim=True).sqrt()
    k = k / k.pow(2).mean(-1, keepdim=True).sqrt()
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def quantize(x):
    amax = x.abs().amax().float()
    scale = E4M3_MAX / amax
    return (x.float() * scale).to(torch.float8_e4m3fn), (1.0 / scale).reshape(1, 1, 1, 1)


def fp8_graph(handle, b, h, s, d, attn_scale, otype):
    g = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )
    dims, bhsd = (b, h, s, d), (h * s * d, s * d, d, 1)
    q = g.tensor(name="q", dim=dims, stride=bhsd, data_type=cudnn.data_type.FP8_E4M3)
    k = g.tensor(name="k", dim=dims, stride=bhsd, data_type=cudnn.data_type.FP8_E4M3)
    v = g.tensor(name="v", dim=dims, stride=bhsd, data_type=cudnn.data_type.FP8_E4M3)
    one = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.FLOAT)
    sc = {n: g.tensor(name=n, **one) for n in ["dq", "dk", "dv", "ds", "ss", "so"]}
    o, _stats, amax_s, amax_o = g.sdpa_fp8(
        q=q, k=k, v=v,
        descale_q=sc["dq"], descale_k=sc["dk"], descale_v=sc["dv"],
        descale_s=sc["ds"], scale_s=sc["ss"], scale_o=sc["so"],
        generate_stats=False, attn_scale=attn_scale, use_causal_mask=False,
    )
    # O as Veetance writes attention's output: (b, s, h*d) rows.
    o.set_output(True).set_dim(dims).set_stride((s * h * d, d, h * d, 1)).set_data_type(otype)
    amax_s.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(cudnn.data_type.FLOAT)
    amax_o.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(cudnn.data_type.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g, (q, k, v, o, amax_s, amax_o, sc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-graph", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    handle = cudnn.create_handle()
    print(f"cuDNN {cudnn.backend_version()}, frontend {cudnn.__version__}, torch {torch.__version__}")
    otypes = [("bf16", cudnn.data_type.BFLOAT16, torch.bfloat16),
              ("fp16", cudnn.data_type.HALF, torch.float16),
              ("e4m3", cudnn.data_type.FP8_E4M3, torch.float8_e4m3fn)]
    if args.log_graph:
        otypes = otypes[2:]
    rows = []
    for name, b, h, s, d in SHAPES[:1] if args.log_graph else SHAPES:
        flop = 4 * b * h * s * s * d
        q, k, v = inputs(b, h, s, d, seed=len(rows) + 1)
        scale = d ** -0.5
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)
        if not args.log_graph:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                o16 = F.scaled_dot_product_attention(q, k, v, scale=scale)
                ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
            err = ((o16.float() - ref).norm() / ref.norm()).item()
            rows.append(dict(shape=name, path="cudnn bf16 (torch SDPA)", ms=ms,
                             tflops=flop / ms / 1e9, rel_err=err))
            print(rows[-1], flush=True)
        q8, dq = quantize(q)
        k8, dk = quantize(k)
        v8, dv = quantize(v)
        for oname, otype, ttype in otypes:
            try:
                g, (tq, tk, tv, to, tas, tao, sc) = fp8_graph(handle, b, h, s, d, scale, otype)
            except Exception as e:  # noqa: BLE001 - report what cuDNN refused, go on
                rows.append(dict(shape=name, path=f"cudnn fp8 -> {oname}", error=str(e)[:300]))
                print(rows[-1], flush=True)
                continue
            out = torch.empty(b, s, h, d, device="cuda", dtype=ttype)
            amax_s = torch.zeros(1, 1, 1, 1, device="cuda")
            amax_o = torch.zeros(1, 1, 1, 1, device="cuda")
            # P is in [0, 1]: its scale fills e4m3's range. O's is bounded by max |V| (a convex
            # combination of V's rows) when O is e4m3; 1 otherwise.
            so = (E4M3_MAX / (v.float().abs().amax())).reshape(1, 1, 1, 1) if oname == "e4m3" \
                else torch.ones(1, 1, 1, 1, device="cuda")
            scal = {"dq": dq, "dk": dk, "dv": dv,
                    "ds": torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, device="cuda"),
                    "ss": torch.full((1, 1, 1, 1), E4M3_MAX, device="cuda"), "so": so}
            pack = {tq: q8, tk: k8, tv: v8, to: out, tas: amax_s, tao: amax_o}
            pack.update({sc[n]: t.float().contiguous() for n, t in scal.items()})
            ws = torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)
            run = lambda: g.execute(pack, ws, handle=handle)  # noqa: E731
            run()
            torch.cuda.synchronize()
            o = out.float().permute(0, 2, 1, 3)
            if oname == "e4m3":
                o = o / so.float()
            err = ((o - ref).norm() / ref.norm()).item()
            ms = float("nan") if args.log_graph else timed(run)
            rows.append(dict(shape=name, path=f"cudnn fp8 -> {oname}", ms=ms,
                             tflops=flop / ms / 1e9, rel_err=err,
                             amax_s=amax_s.item(), amax_o=amax_o.item(),
                             workspace=g.get_workspace_size()))
            print(rows[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
