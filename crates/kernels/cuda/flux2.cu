// Veetance's own CUDA kernels for the FLUX.2 transformer (and any head-dim-128 attention).
//
// Compiled to PTX by crates/models/build.rs when the `cuda` feature is on, loaded at run time by
// src/kernels.rs. Every kernel has a reference path made of plain candle ops; the GPU tests
// (tests/cuda_kernels.rs) compare the two.
//
// Conventions: `T` is __nv_bfloat16 or __half; accumulation is always f32; tensors are row-major
// and contiguous unless a stride argument says otherwise.

#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// small helpers

// D = A(16x16, row) * B(16x8, col) + D, f32 accumulators.
template <typename T> __device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem_row) {
    uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// ---------------------------------------------------------------------------------------------
// Flash attention, forward, head dim 128, no mask (or a causal / key-length mask, see below).
//
// q, k, v: (B*H, L, 128) contiguous. Output: o[b, row, h*128 + d] with row stride `o_row_stride`
// elements and batch stride `o_batch_stride` (so the output can be one part of a wider row).
// Each CTA owns BR = 16*NW query rows; each warp owns 16 rows for the whole key loop, its Q
// fragments in registers, S = Q K^T and the online softmax in registers (the L x L matrix never
// exists), P re-used from the S accumulators as the A operand of P V.
// `kv_len`: keys at index >= kv_len are masked (-inf); `causal`: key j > query i is masked.
// Shared-memory rows are padded to 136 elements: conflict-free 32-bit fragment loads and
// ldmatrix row reads.

#define FA_D 128
#define FA_BC 64
#define FA_LDS 136

template <typename T, int NW>
__device__ __forceinline__ void flash_attn_fwd(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
    int heads, int l_q, int l_kv, int kv_len, int causal, float scale_log2,
    long long o_batch_stride, long long o_row_stride) {
    constexpr int BR = 16 * NW;
    constexpr int NT = NW * 32;
    // Q tile (BR x 136) at start; afterwards K tile (64 x 136) then V tile (64 x 136).
    constexpr int SMEM_ELEMS = (BR > 2 * FA_BC ? BR : 2 * FA_BC) * FA_LDS;
    __shared__ __align__(16) T smem[SMEM_ELEMS];
    T* ks = smem;
    T* vs = smem + FA_BC * FA_LDS;

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;   // group (row within 8)
    const int t = lane & 3;    // thread in group
    const int bh = blockIdx.y;
    const int b = bh / heads;
    const int h = bh % heads;
    const int q0 = blockIdx.x * BR;

    const T* qg = q + (long long)bh * l_q * FA_D;
    const T* kg = k + (long long)bh * l_kv * FA_D;
    const T* vg = v + (long long)bh * l_kv * FA_D;

    // ---- Q tile -> smem -> registers
    for (int c = tid; c < BR * (FA_D / 8); c += NT) {
        int r = c / (FA_D / 8), col = (c % (FA_D / 8)) * 8;
        int row = q0 + r;
        bool ok = row < l_q;
        cp_async16(smem + r * FA_LDS + col, qg + (long long)(ok ? row : 0) * FA_D + col, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[FA_D / 16][4];
    {
        const T* qw = smem + (warp * 16) * FA_LDS;
#pragma unroll
        for (int dk = 0; dk < FA_D / 16; ++dk) {
            qf[dk][0] = *reinterpret_cast<const uint32_t*>(qw + g * FA_LDS + dk * 16 + 2 * t);
            qf[dk][1] = *reinterpret_cast<const uint32_t*>(qw + (g + 8) * FA_LDS + dk * 16 + 2 * t);
            qf[dk][2] = *reinterpret_cast<const uint32_t*>(qw + g * FA_LDS + dk * 16 + 8 + 2 * t);
            qf[dk][3] = *reinterpret_cast<const uint32_t*>(qw + (g + 8) * FA_LDS + dk * 16 + 8 + 2 * t);
        }
    }
    __syncthreads();

    float o_acc[FA_D / 2];  // 8-column block i: o_acc[4i .. 4i+3], mma accumulator layout
#pragma unroll
    for (int i = 0; i < FA_D / 2; ++i) o_acc[i] = 0.f;
    float m_row[2] = {-INFINITY, -INFINITY};
    float l_row[2] = {0.f, 0.f};

    const int row_a = q0 + warp * 16 + g;  // this thread's two query rows
    const int row_b = row_a + 8;
    int kv_end = kv_len;
    if (causal) {
        int last = q0 + BR;  // keys beyond the CTA's last row are masked for all its rows
        if (last < kv_end) kv_end = last;
    }
    const int n_tiles = (kv_end + FA_BC - 1) / FA_BC;

    auto load_tile = [&](T* dst, const T* src, int key0) {
        for (int c = tid; c < FA_BC * (FA_D / 8); c += NT) {
            int r = c / (FA_D / 8), col = (c % (FA_D / 8)) * 8;
            int key = key0 + r;
            bool ok = key < kv_len;
            cp_async16(dst + r * FA_LDS + col, src + (long long)(ok ? key : 0) * FA_D + col, ok);
        }
    };

    load_tile(ks, kg, 0);
    cp_async_commit();

    for (int j = 0; j < n_tiles; ++j) {
        const int key0 = j * FA_BC;
        load_tile(vs, vg, key0);
        cp_async_commit();
        cp_async_wait<1>();  // K_j landed
        __syncthreads();

        // S = Q K^T for 16 rows x 64 keys: 8 n-tiles of 8 keys.
        float s[FA_BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BC / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            const T* kr = ks + (nt * 8 + g) * FA_LDS + 2 * t;
#pragma unroll
            for (int dk = 0; dk < FA_D / 16; ++dk) {
                uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr + dk * 16);
                uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + dk * 16 + 8);
                mma16816<T>(s[nt], qf[dk], b0, b1);
            }
        }

        // Mask and scale (log2 domain), row maxima.
        float mx[2] = {m_row[0], m_row[1]};
#pragma unroll
        for (int nt = 0; nt < FA_BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int key = key0 + nt * 8 + 2 * t + (e & 1);
                int row = (e < 2) ? row_a : row_b;
                bool masked = key >= kv_len || (causal && key > row);
                float x = masked ? -INFINITY : s[nt][e] * scale_log2;
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
        }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            // A fully masked row so far keeps max -inf: use 0 as the offset so exp2 gives 0.
            float base = mx[r] == -INFINITY ? 0.f : mx[r];
            corr[r] = exp2f(m_row[r] - base);
            m_row[r] = mx[r];
            l_row[r] *= corr[r];
        }
#pragma unroll
        for (int nt = 0; nt < FA_BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float base = m_row[e >> 1] == -INFINITY ? 0.f : m_row[e >> 1];
                float p = exp2f(s[nt][e] - base);
                s[nt][e] = p;
                l_row[e >> 1] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < FA_D / 8; ++i) {
            o_acc[i * 4 + 0] *= corr[0];
            o_acc[i * 4 + 1] *= corr[0];
            o_acc[i * 4 + 2] *= corr[1];
            o_acc[i * 4 + 3] *= corr[1];
        }

        cp_async_wait<0>();  // V_j landed
        __syncthreads();     // ... and every warp is done reading K_j
        if (j + 1 < n_tiles) {
            load_tile(ks, kg, key0 + FA_BC);
            cp_async_commit();
        }

        // O += P V: 4 k-chunks of 16 keys; P's A fragments are two S n-tiles each.
#pragma unroll
        for (int kc = 0; kc < FA_BC / 16; ++kc) {
            uint32_t a[4];
            a[0] = pack2<T>(s[2 * kc][0], s[2 * kc][1]);
            a[1] = pack2<T>(s[2 * kc][2], s[2 * kc][3]);
            a[2] = pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            a[3] = pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            const int vrow = kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
            const int vcol = (lane >> 4) * 8;
#pragma unroll
            for (int np = 0; np < FA_D / 16; ++np) {
                uint32_t bfr[4];
                ldmatrix_x4_trans(bfr, vs + vrow * FA_LDS + np * 16 + vcol);
                mma16816<T>(&o_acc[(2 * np) * 4], a, bfr[0], bfr[1]);
                mma16816<T>(&o_acc[(2 * np + 1) * 4], a, bfr[2], bfr[3]);
            }
        }
        __syncthreads();  // every warp is done reading V_j before it is overwritten
    }

    flash_write_rows<T>(o_acc, l_row, o + (long long)b * o_batch_stride + (long long)h * FA_D,
                        row_a, row_b, l_q, o_row_stride, t);
}

#define FA_ENTRY(NAME, T, NW)                                                                        \
    extern "C" __global__ void __launch_bounds__(NW * 32) NAME(                                      \
        const T* q, const T* k, const T* v, T* o, int heads, int l_q, int l_kv, int kv_len,          \
        int causal, float scale_log2, long long o_batch_stride, long long o_row_stride) {            \
        flash_attn_fwd<T, NW>(q, k, v, o, heads, l_q, l_kv, kv_len, causal, scale_log2,            \
                              o_batch_stride, o_row_stride);                                         \
    }
FA_ENTRY(flash_attn_bf16_w4, __nv_bfloat16, 4)
FA_ENTRY(flash_attn_bf16_w8, __nv_bfloat16, 8)
FA_ENTRY(flash_attn_f16_w4, __half, 4)
FA_ENTRY(flash_attn_f16_w8, __half, 8)

// ---------------------------------------------------------------------------------------------
// QK RMSNorm + interleaved RoPE + head split, one warp per (token, head).
//
// src: rows of `3*H*128` (q | k | v, each (H, 128)) at `src_row_stride` elements per token,
// `n_tok` tokens. dst: (3, B, H, l_tot, 128) contiguous; this source lands at tokens
// [tok_off, tok_off + n_tok). cos/sin: (l_tot, 64) f32, indexed by destination token.
// q and k: x * rsqrt(mean(x^2) + eps) * w, rounded to T (as the unfused path does), then RoPE in
// f32 on pairs (2i, 2i+1), rounded to T. v is copied.

template <typename T>
__device__ __forceinline__ void qkv_norm_rope(
    const T* __restrict__ src, long long src_row_stride, long long src_batch_stride, int n_tok,
    int batch, int heads, const T* __restrict__ wq, const T* __restrict__ wk,
    const float* __restrict__ cos_t, const float* __restrict__ sin_t, T* __restrict__ dst,
    int l_tot, int tok_off, float eps) {
    const int warp_global = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (warp_global >= batch * n_tok * heads) return;
    const QkvAt at = qkv_at(warp_global, src_row_stride, src_batch_stride, n_tok, batch, heads,
                            l_tot, tok_off);
    const T* row = src + at.src_off;
    // lane owns elements 4*lane .. 4*lane+3 = pairs 2*lane, 2*lane+1
    const int e0 = 4 * (threadIdx.x & 31);
#pragma unroll
    for (int which = 0; which < 2; ++which) {
        float r[4];
        qk_norm_rope4<T>(row, at, heads, which, which == 0 ? wq : wk, cos_t, sin_t, eps, r);
        T* out = dst + which * at.plane + at.dst_off + e0;
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i] = from_f<T>(r[i]);
    }
    const T* xv = row + 2 * heads * 128 + at.head * 128 + e0;
    T* out = dst + 2 * at.plane + at.dst_off + e0;
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = xv[i];
}

#define QKV_ENTRY(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const T* src, long long src_row_stride,                        \
                                    long long src_batch_stride, int n_tok, int batch, int heads,     \
                                    const T* wq, const T* wk, const float* cos_t,                    \
                                    const float* sin_t, T* dst, int l_tot, int tok_off, float eps) { \
        qkv_norm_rope<T>(src, src_row_stride, src_batch_stride, n_tok, batch, heads, wq, wk, cos_t, \
                         sin_t, dst, l_tot, tok_off, eps);                                           \
    }
QKV_ENTRY(qkv_norm_rope_bf16, __nv_bfloat16)
QKV_ENTRY(qkv_norm_rope_f16, __half)

// ---------------------------------------------------------------------------------------------
// Modulated LayerNorm: y = LN(x) * (1 + scale) + shift, LN without affine, stats in f32.
// x: (B, rows, n) contiguous; scale/shift: (B, n) rows at `mod_batch_stride` elements apart with
// unit element stride. One CTA per row.

template <typename T, int NT>
__device__ __forceinline__ void modulate_ln(const T* __restrict__ x, const T* __restrict__ shift,
                                            const T* __restrict__ scale, long long mod_batch_stride,
                                            T* __restrict__ y, int rows, int n, float eps) {
    const int r = blockIdx.x;  // global row over B*rows
    const int b = r / rows;
    const T* xr = x + (long long)r * n;
    T* yr = y + (long long)r * n;
    const T* sh = shift + (long long)b * mod_batch_stride;
    const T* sc = scale + (long long)b * mod_batch_stride;
    float sum = 0.f, sq = 0.f;
    for (int i = threadIdx.x; i < n; i += NT) {
        float v = to_f<T>(xr[i]);
        sum += v;
        sq += v * v;
    }
    block_sum2<NT>(sum, sq);
    const float mean = sum / n;
    const float var = fmaxf(sq / n - mean * mean, 0.f);
    const float inv = rsqrtf(var + eps);
    for (int i = threadIdx.x; i < n; i += NT) {
        // LN rounded to T, as the unfused path stores it, then the modulation in f32.
        float ln = round_t<T>((to_f<T>(xr[i]) - mean) * inv);
        yr[i] = from_f<T>(ln * (1.f + to_f<T>(sc[i])) + to_f<T>(sh[i]));
    }
}

#define MOD_ENTRY(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) NAME(const T* x, const T* shift,             \
                                                           const T* scale, long long mbs, T* y,    \
                                                           int rows, int n, float eps) {           \
        modulate_ln<T, 256>(x, shift, scale, mbs, y, rows, n, eps);                                \
    }
MOD_ENTRY(modulate_ln_bf16, __nv_bfloat16)
MOD_ENTRY(modulate_ln_f16, __half)

// ---------------------------------------------------------------------------------------------
// Gated residual: out = x + gate * y. x, y: (B, rows_per_batch, n) (y at `y_row_stride`); gate
// (B, n) at `gate_batch_stride`; `rows` = B * rows_per_batch.
//
// SwiGLU: out[r, c] = silu(h[r, a_off + c]) * h[r, b_off + c], h rows at `h_row_stride`, out rows
// at `out_row_stride` starting at column `out_col` (so it can fill part of a wider row).
//
// Each has two kernels of one signature: `_v8` takes 8 consecutive elements (16 bytes) a thread,
// rows from blockIdx.y (grid-stride), when n, every column offset, row stride and tensor start
// are multiples of 8 elements (the caller checks); the other takes one element a thread. Same
// arithmetic, same rounding (the unfused path rounds gate * y and silu(a) to T first).

template <typename T>
__device__ __forceinline__ void gated_residual(const T* __restrict__ x, const T* __restrict__ y,
                                               long long y_row_stride, const T* __restrict__ gate,
                                               long long gate_batch_stride, T* __restrict__ out,
                                               int rows_per_batch, int n, int rows) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * n) return;
    long long r = i / n;
    int c = (int)(i % n);
    long long b = r / rows_per_batch;
    float yv = to_f<T>(y[r * y_row_stride + c]);
    float gv = to_f<T>(gate[b * gate_batch_stride + c]);
    out[i] = from_f<T>(to_f<T>(x[i]) + round_t<T>(gv * yv));
}

template <typename T>
__device__ __forceinline__ void gated_residual_v8(const T* __restrict__ x, const T* __restrict__ y,
                                                  long long y_row_stride, const T* __restrict__ gate,
                                                  long long gate_batch_stride, T* __restrict__ out,
                                                  int rows_per_batch, int n, int rows) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= n) return;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const int b = r / rows_per_batch;
        float xv[8], yv[8], gv[8], o[8];
        load8(x + (long long)r * n + c, xv);
        load8(y + (long long)r * y_row_stride + c, yv);
        load8(gate + (long long)b * gate_batch_stride + c, gv);
#pragma unroll
        for (int k = 0; k < 8; ++k) o[k] = xv[k] + round_t<T>(gv[k] * yv[k]);
        store8(out + (long long)r * n + c, o);
    }
}

template <typename T>
__device__ __forceinline__ void swiglu(const T* __restrict__ h, long long h_row_stride, int a_off,
                                       int b_off, T* __restrict__ out, long long out_row_stride,
                                       int out_col, int n, int rows) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * n) return;
    long long r = i / n;
    int c = (int)(i % n);
    float a = to_f<T>(h[r * h_row_stride + a_off + c]);
    float bv = to_f<T>(h[r * h_row_stride + b_off + c]);
    out[r * out_row_stride + out_col + c] = from_f<T>(round_t<T>(a / (1.f + expf(-a))) * bv);
}

template <typename T>
__device__ __forceinline__ void swiglu_v8(const T* __restrict__ h, long long h_row_stride, int a_off,
                                          int b_off, T* __restrict__ out, long long out_row_stride,
                                          int out_col, int n, int rows) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= n) return;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* hr = h + (long long)r * h_row_stride;
        float a[8], bv[8], o[8];
        load8(hr + a_off + c, a);
        load8(hr + b_off + c, bv);
#pragma unroll
        for (int k = 0; k < 8; ++k) o[k] = round_t<T>(a[k] / (1.f + expf(-a[k]))) * bv[k];
        store8(out + (long long)r * out_row_stride + out_col + c, o);
    }
}

// Modulated LayerNorm, 16-byte version of modulate_ln: one CTA of 128 threads per row, the row
// held in registers (n <= 128 * 8 * MOD_CHUNKS, n and the offsets multiples of 8).
#define MOD_CHUNKS 8
template <typename T>
__device__ __forceinline__ void modulate_v8(const T* __restrict__ x, const T* __restrict__ shift,
                                            const T* __restrict__ scale, long long mod_batch_stride,
                                            T* __restrict__ y, int rows, int n, float eps) {
    const int r = blockIdx.x;
    const int b = r / rows;
    const T* xr = x + (long long)r * n;
    float v[MOD_CHUNKS][8];
    float sum = 0.f, sq = 0.f;
#pragma unroll
    for (int i = 0; i < MOD_CHUNKS; ++i) {
        const int c = (threadIdx.x + i * 128) * 8;
        if (c < n) {
            load8(xr + c, v[i]);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                sum += v[i][k];
                sq += v[i][k] * v[i][k];
            }
        }
    }
    block_sum2<128>(sum, sq);
    const float mean = sum / n;
    const float var = fmaxf(sq / n - mean * mean, 0.f);
    const float inv = rsqrtf(var + eps);
    const T* sh = shift + (long long)b * mod_batch_stride;
    const T* sc = scale + (long long)b * mod_batch_stride;
    T* yr = y + (long long)r * n;
#pragma unroll
    for (int i = 0; i < MOD_CHUNKS; ++i) {
        const int c = (threadIdx.x + i * 128) * 8;
        if (c < n) {
            float shv[8], scv[8], o[8];
            load8(sh + c, shv);
            load8(sc + c, scv);
#pragma unroll
            for (int k = 0; k < 8; ++k) o[k] = round_t<T>((v[i][k] - mean) * inv) * (1.f + scv[k]) + shv[k];
            store8(yr + c, o);
        }
    }
}

#define ELEMENTWISE_ENTRIES(SUF, T)                                                                \
    extern "C" __global__ void __launch_bounds__(256) gated_residual_##SUF(                        \
        const T* x, const T* y, long long ys, const T* gate, long long gbs, T* out,                \
        int rows_per_batch, int n, int rows) {                                                     \
        gated_residual<T>(x, y, ys, gate, gbs, out, rows_per_batch, n, rows);                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) gated_residual_v8_##SUF(                     \
        const T* x, const T* y, long long ys, const T* gate, long long gbs, T* out,                \
        int rows_per_batch, int n, int rows) {                                                     \
        gated_residual_v8<T>(x, y, ys, gate, gbs, out, rows_per_batch, n, rows);                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) swiglu_##SUF(                                \
        const T* h, long long hs, int a_off, int b_off, T* out, long long os, int out_col, int n,  \
        int rows) {                                                                                \
        swiglu<T>(h, hs, a_off, b_off, out, os, out_col, n, rows);                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) swiglu_v8_##SUF(                             \
        const T* h, long long hs, int a_off, int b_off, T* out, long long os, int out_col, int n,  \
        int rows) {                                                                                \
        swiglu_v8<T>(h, hs, a_off, b_off, out, os, out_col, n, rows);                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) modulate_ln_v8_##SUF(                        \
        const T* x, const T* shift, const T* scale, long long mbs, T* y, int rows, int n,          \
        float eps) {                                                                               \
        modulate_v8<T>(x, shift, scale, mbs, y, rows, n, eps);                                     \
    }
ELEMENTWISE_ENTRIES(bf16, __nv_bfloat16)
ELEMENTWISE_ENTRIES(f16, __half)
