"""Prints the wgmma inline-asm wrappers that kernels/flash_sm90.cu pastes in (64 or 32 "+f"
operands are too many to write by hand). Run: python3 kernels/gen_wgmma.py"""
# emits the wgmma wrappers used by flash_sm90.cu
def ss(n, ty, cty):
    nreg = n // 2
    outs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(nreg))
    return f'''__device__ __forceinline__ void wgmma_ss_m64n{n}_{ty}(float (&d)[{nreg}], uint64_t a, uint64_t b, int scale_d) {{
    asm volatile(
        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+2}, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{cty}.{cty} "
        "{{{outs}}}, %{nreg}, %{nreg+1}, p, 1, 1, 0, 0;\\n}}\\n"
        : {cons}
        : "l"(a), "l"(b), "r"(scale_d));
}}
'''
def rs(n, ty, cty):
    nreg = n // 2
    outs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"+f"(d[{i}])' for i in range(nreg))
    return f'''__device__ __forceinline__ void wgmma_rs_m64n{n}_{ty}(float (&d)[{nreg}], const uint32_t (&a)[4], uint64_t b) {{
    asm volatile(
        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+5}, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{cty}.{cty} "
        "{{{outs}}}, {{%{nreg}, %{nreg+1}, %{nreg+2}, %{nreg+3}}}, %{nreg+4}, p, 1, 1, 1;\\n}}\\n"
        : {cons}
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}}
'''
def ss0(n, ty, cty):
    nreg = n // 2
    outs = ", ".join(f"%{i}" for i in range(nreg))
    cons = ", ".join(f'"=f"(d[{i}])' for i in range(nreg))
    return f'''// D = A B (the accumulators are only written: no register of the previous value stays live).
__device__ __forceinline__ void wgmma_ss0_m64n{n}_{ty}(float (&d)[{nreg}], uint64_t a, uint64_t b) {{
    asm volatile(
        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+2}, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{cty}.{cty} "
        "{{{outs}}}, %{nreg}, %{nreg+1}, p, 1, 1, 0, 0;\\n}}\\n"
        : {cons}
        : "l"(a), "l"(b), "r"(0));
}}
'''
def rsk(n, ty, cty, zero):
    nreg = n // 2
    outs = ", ".join(f"%{i}" for i in range(nreg))
    c = "=f" if zero else "+f"
    cons = ", ".join(f'"{c}"(d[{i}])' for i in range(nreg))
    name = "rsk0" if zero else "rsk"
    return f'''__device__ __forceinline__ void wgmma_{name}_m64n{n}_{ty}(float (&d)[{nreg}], const uint32_t (&a)[4], uint64_t b) {{
    asm volatile(
        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{nreg+5}, 0;\\n"
        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{cty}.{cty} "
        "{{{outs}}}, {{%{nreg}, %{nreg+1}, %{nreg+2}, %{nreg+3}}}, %{nreg+4}, p, 1, 1, 0;\\n}}\\n"
        : {cons}
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"({0 if zero else 1}));
}}
'''
out = []
for ty, cty in [("bf16", "bf16"), ("f16", "f16")]:
    for n in (64,):
        out.append(ss0(n, ty, cty))
        out.append(ss(n, ty, cty))
    out.append(rs(128, ty, cty))
print("\n".join(out))
