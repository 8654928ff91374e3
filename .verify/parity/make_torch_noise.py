#!/usr/bin/env python3
"""Writes assets/parity/torch_randn.safetensors: PyTorch's CPU noise for crates/models/tests/torch_noise.rs.

Each tensor is `torch.manual_seed(seed); torch.randn(shape)` (float32, CPU), made by torch itself, so
that the Rust test can check `veetance_models::torch_rng` bit for bit with no Python in CI.

Needs torch (with its C++ headers, which the wheels ship), numpy, the `safetensors` package and g++, on
an x86-64 CPU with AVX2 and FMA. PyPI's Linux torch wheel pulls several GB of CUDA libraries, which it
needs to import even for CPU work; the fixture in the repository was made with torch 2.15.0 that way:

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch safetensors numpy
    /tmp/torchenv/bin/python .verify/parity/make_torch_noise.py            # the checked-in fixture
    /tmp/torchenv/bin/python .verify/parity/make_torch_noise.py --stress /tmp/torch_randn_stress.safetensors
    VEETANCE_TORCH_NOISE_FIXTURE=/tmp/torch_randn_stress.safetensors \
        cargo test -p veetance-models --test torch_noise                     # the big one, locally

torch chooses its float32 Box-Muller kernel by CPU capability, fixed at its first use in a process, so
every group is made in a child process with ATEN_CPU_CAPABILITY set:

  * `avx2/seed=S/shape=AxB...`: ATEN_CPU_CAPABILITY=avx2, the kernel of every x86-64 CPU with AVX2+FMA.
    Where the CPU has AVX-512 the script also draws every tensor with `avx512` and stops unless the
    bits are the same (torch registers no AVX-512 normal kernel, so it falls back to AVX2).
  * `scalar/seed=S/shape=...`: ATEN_CPU_CAPABILITY=default, torch's scalar kernel (libm logf/cosf/sinf).
  * `comfy/seed=S/shape=.../batch_index=i,j,...`: ComfyUI's `prepare_noise` with a latent's
    `batch_index` (restated below from comfy/sample.py), with the avx2 kernel.
  * `avx2_msvc_emulated/seed=S/shape=...`: not torch's output. torch's Windows wheels are built by MSVC,
    which does not fuse the mul/add pairs of avx_mathfun.h into FMAs as GCC does for Linux, so their
    bits differ. HARNESS_CPP (below) runs torch's own avx_mathfun.h on torch's
    own uniforms (`torch.rand`, the same draws) and is built twice with g++: with -ffp-contract=fast it
    must reproduce every `avx2` tensor bit for bit (the script stops otherwise), and with
    -ffp-contract=off it gives these tensors, the no-FMA arithmetic MSVC compiles.

Tensor names hold the seed (decimal u64), the shape and the batch index; the file's metadata holds the
torch version and the capabilities used.
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

SEEDS = [0, 42, 432262096973490, 2**53 - 1, 2**64 - 1]
SHAPES = [
    [1], [5], [15],                      # numel < 16: the double Box-Muller with its cached sample
    [16], [17], [33], [100],             # the float kernel, with and without the overlapping tail
    [1, 128, 4, 4], [1, 128, 8, 8], [2, 128, 4, 6],  # FLUX.2 [klein] latents
]
MSVC_SEEDS = [0, 42, 432262096973490]
SCALAR_SEEDS = [0, 42]
SCALAR_SHAPES = [[16], [17], [100], [1, 128, 4, 4], [1, 128, 8, 8]]
# (seed, latent shape, batch_index): per-sample numel 768 (a multiple of 16) and 5 (< 16, odd: the
# cached double sample carries over from one sample's draw to the next).
COMFY_CASES = [
    (42, [3, 128, 2, 3], [2, 0, 2]),
    (7, [2, 1, 1, 5], [1, 0]),
    (432262096973490, [2, 128, 4, 4], [3, 1]),
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "assets" / "parity" / "torch_randn.safetensors"


def shape_name(shape):
    return "x".join(str(d) for d in shape)


def comfy_prepare_noise(shape, seed, batch_index):
    """comfy.sample.prepare_noise for a float32 latent of `shape` with `batch_index`, restated:
    one generator; for every index 0..=max(batch_index) in turn a randn of [1, *shape[1:]];
    output sample k is the one drawn for batch_index[k]."""
    import torch

    generator = torch.manual_seed(seed)
    drawn = []
    for _ in range(max(batch_index) + 1):
        drawn.append(torch.randn([1] + list(shape[1:]), dtype=torch.float32, generator=generator, device="cpu"))
    return torch.cat([drawn[i] for i in batch_index], dim=0)


def child(group, out_path):
    """Runs in a process whose ATEN_CPU_CAPABILITY is already set; saves its tensors."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    if group in ("avx2", "avx512"):
        for seed in SEEDS:
            for shape in SHAPES:
                torch.manual_seed(seed)
                tensors[f"avx2/seed={seed}/shape={shape_name(shape)}"] = torch.randn(shape, dtype=torch.float32)
        for seed, shape, inds in COMFY_CASES:
            name = f"comfy/seed={seed}/shape={shape_name(shape)}/batch_index={','.join(map(str, inds))}"
            tensors[name] = comfy_prepare_noise(shape, seed, inds)
    elif group == "scalar":
        for seed in SCALAR_SEEDS:
            for shape in SCALAR_SHAPES:
                torch.manual_seed(seed)
                tensors[f"scalar/seed={seed}/shape={shape_name(shape)}"] = torch.randn(shape, dtype=torch.float32)
    elif group in ("stress-avx2", "stress-scalar"):
        rng = random.Random(20260101)
        seeds = [0, 1, 2**32 - 1, 2**64 - 1] + [rng.getrandbits(64) for _ in range(46)]
        kernel = group.split("-")[1]
        if kernel == "scalar":
            seeds = seeds[:10]
        for seed in seeds:
            torch.manual_seed(seed)
            tensors[f"{kernel}/seed={seed}/shape=1x128x64x64"] = torch.randn([1, 128, 64, 64])
            torch.manual_seed(seed)
            tensors[f"{kernel}/seed={seed}/shape=1000003"] = torch.randn([1000003])
    else:
        raise SystemExit(f"unknown group {group}")
    info = {"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "git_version": torch.version.git_version}
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_path, metadata={"info": json.dumps(info)})


def run_child(group, capability, tmp):
    out = f"{tmp}.{group}.{capability}.safetensors"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    subprocess.run([sys.executable, __file__, "--child", group, out], env=env, check=True)
    from safetensors import safe_open

    with safe_open(out, framework="pt") as f:
        info = json.loads(f.metadata()["info"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    os.remove(out)
    return tensors, info


HARNESS_CPP = r"""// torch's AVX2 float32 Box-Muller (`normal_fill` with `NormalFill16<float, true>`) on uniforms
// given by the caller, with torch's own avx_mathfun.h, built with FP contraction on (what GCC does
// for torch's Linux wheels) or off (what MSVC does for its Windows wheels).
//
//   torch_normal_avx2 NUMEL < uniforms.f32 > normals.f32
//
// stdin: NUMEL + 16 float32 uniforms (`torch.manual_seed(s); torch.rand(NUMEL + 16)`), of which
// the last 16 are used only when NUMEL % 16 != 0. stdout: NUMEL float32 normals (mean 0, std 1).
#include <ATen/native/cpu/avx_mathfun.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

static void box_muller_16(float* data) {
  const __m256 u1 = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(data));
  const __m256 u2 = _mm256_loadu_ps(data + 8);
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log256_ps(u1)));
  const __m256 theta = _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(2.0 * 3.14159265358979323846)), u2);
  __m256 s, c;
  sincos256_ps(theta, &s, &c);
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  _mm256_storeu_ps(data, _mm256_fmadd_ps(_mm256_mul_ps(radius, c), one, zero));
  _mm256_storeu_ps(data + 8, _mm256_fmadd_ps(_mm256_mul_ps(radius, s), one, zero));
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const long n = std::atol(argv[1]);
  if (n < 16) return 2;
  std::vector<float> u(n + 16);
  if (std::fread(u.data(), sizeof(float), u.size(), stdin) != u.size()) return 3;
  std::vector<float> out(u.begin(), u.begin() + n);
  for (long i = 0; i + 16 <= n; i += 16) box_muller_16(out.data() + i);
  if (n % 16 != 0) {
    float* tail = out.data() + n - 16;
    for (int j = 0; j < 16; ++j) tail[j] = u[n + j];
    box_muller_16(tail);
  }
  return std::fwrite(out.data(), sizeof(float), n, stdout) == static_cast<size_t>(n) ? 0 : 4;
}
"""


def build_harness(tmp):
    """HARNESS_CPP built with and without FP contraction: {"fast": path, "off": path}."""
    import torch

    include = Path(torch.__file__).parent / "include"
    source = Path(f"{tmp}.harness.cpp")
    source.write_text(HARNESS_CPP)
    built = {}
    for contract in ("fast", "off"):
        exe = f"{tmp}.harness-{contract}"
        subprocess.run(["g++", "-std=c++17", "-O2", "-mavx2", "-mfma", f"-ffp-contract={contract}",
                        "-DCPU_CAPABILITY_AVX2", f"-I{include}", str(source), "-o", exe], check=True)
        built[contract] = exe
    return built


def harness_randn(exe, seed, numel):
    """torch_normal_avx2 on `torch.manual_seed(seed); torch.rand(numel + 16)`."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    uniforms = torch.rand(numel + 16, dtype=torch.float32).numpy().tobytes()
    out = subprocess.run([exe, str(numel)], input=uniforms, capture_output=True, check=True).stdout
    return torch.from_numpy(np.frombuffer(out, dtype=np.float32).copy())


def emulate_msvc(tensors, seeds, tmp):
    """Checks the contracted harness against torch's `avx2` tensors, returns the uncontracted ones."""
    import torch

    exes = build_harness(tmp)
    out = {}
    try:
        for name, torch_out in tensors.items():
            group, seed_part, shape_part = name.split("/")[:3]
            if group != "avx2" or torch_out.numel() < 16:
                continue
            seed = int(seed_part.removeprefix("seed="))
            flat = torch_out.reshape(-1)
            fused = harness_randn(exes["fast"], seed, flat.numel())
            if not torch.equal(fused.view(torch.int32), flat.view(torch.int32)):
                raise SystemExit(f"{name}: the contracted harness does not reproduce torch; emulation is off")
            if seed in seeds:
                out[f"avx2_msvc_emulated/{seed_part}/{shape_part}"] = harness_randn(
                    exes["off"], seed, flat.numel()).reshape(torch_out.shape)
    finally:
        for path in [*exes.values(), f"{tmp}.harness.cpp"]:
            os.remove(path)
    return out


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--stress", action="store_true", help="50 seeds x 2 big draws (10 seeds for the scalar and MSVC groups), about 430 MB")
    p.add_argument("--child", nargs=2, metavar=("GROUP", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return

    import torch
    from safetensors.torch import save_file

    flags = cpu_flags()
    if not {"avx2", "fma"} <= flags:
        raise SystemExit("this CPU lacks AVX2+FMA: torch would not use its AVX2 kernel here")
    tmp = args.out
    groups = (["stress-avx2", "stress-scalar"] if args.stress else ["avx2", "scalar"])
    tensors, meta = {}, {}
    for group in groups:
        capability = "default" if group.endswith("scalar") else "avx2"
        got, info = run_child(group, capability, tmp)
        if info["capability"].lower() != capability:
            raise SystemExit(f"asked torch for {capability}, it ran {info['capability']}")
        if capability == "avx2" and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            wide, wide_info = run_child(group, "avx512", tmp)
            assert wide_info["capability"] == "AVX512", wide_info
            for k, v in got.items():
                if not torch.equal(v.view(torch.int32), wide[k].view(torch.int32)):
                    raise SystemExit(f"{k}: AVX512 differs from AVX2; the AVX-512 fallback assumption is wrong")
            meta[f"{group}_avx512_checked_equal"] = "true"
        tensors.update(got)
        if capability == "avx2":
            seeds = MSVC_SEEDS if not args.stress else {int(k.split("/")[1][5:]) for k in got}
            if args.stress:
                seeds = sorted(seeds)[:10]
            tensors.update(emulate_msvc(got, set(seeds), tmp))
            meta["avx2_contracted_harness_checked_equal"] = "true"
        meta[f"{group}_capability"] = info["capability"]
        meta["torch"] = info["torch"]
        meta["torch_git_version"] = info["git_version"]
    meta["cpu"] = cpu_model()
    meta["made_by"] = ".verify/parity/make_torch_noise.py" + (" --stress" if args.stress else "")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {len(tensors)} tensors, {os.path.getsize(args.out)} bytes, to {args.out}")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
