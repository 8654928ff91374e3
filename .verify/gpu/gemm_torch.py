"""Times the matmul shapes of one FLUX.2 klein 1024² forward with PyTorch (F.linear, bf16), for
comparison with `gpu_forward <4b|9b> <iters> gemm` (the same shapes through candle) in the same
device run. Usage: python3 .verify/gpu/gemm_torch.py 4b|9b [iters]"""
import sys

import torch
import torch.nn.functional as F


def forward_gemms(which):
    d, double, single = (4096, 8, 24) if which == "9b" else (3072, 5, 20)
    mlp = 3 * d
    shapes = []
    for m in (4096, 512):
        shapes += [(m, d, 3 * d, double), (m, d, d, double), (m, d, 2 * mlp, double), (m, mlp, d, double)]
    shapes += [(4608, d, 3 * d + 2 * mlp, single), (4608, d + mlp, d, single)]
    return shapes


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "4b"
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    total_ms = total_flop = 0.0
    for m, k, n, count in forward_gemms(which):
        x = torch.randn(1, m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            F.linear(x, w)
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            F.linear(x, w)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        ms = sorted(times)[len(times) // 2]
        flop = 2.0 * m * k * n
        print(f"torch gemm {m}x{k}x{n} (x{count}): {ms:.3f} ms, {flop / ms / 1e9:.0f} TFLOP/s")
        total_ms += ms * count
        total_flop += flop * count
    print(f"torch gemm total per forward ({which}): {total_ms:.2f} ms, {total_flop / total_ms / 1e9:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
