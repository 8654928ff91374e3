// Veetance's own CUDA kernels for fp8 (e4m3) linear weights.
//
// candle 0.11 has fp8 cast kernels, but its CUDA backend looks them up as `cast_f8e4m3_*` while
// they are compiled as `cast_f8_e4m3_*`, so every fp8 cast on CUDA fails with "named symbol not
// found". These replace the two casts fp8 weights need, and fold the per-row scale in:
//
// * fp8_dequant_<T>: `out[r][c] = float(w[r][c]) * scale[r]` (scale optional: one value per row,
//   or none), the weight in the compute dtype for one matmul. Four elements per thread when the
//   rows allow aligned 4-byte loads.
// * fp8_quant_rows_<f32|bf16|f16>: one block per row of a `(rows, cols)` matrix (an f32 weight at
//   load; bf16/f16 activations before an fp8 GEMM, `fp8_linear`): `scale = max(|row|) / 448`
//   (at least FLT_MIN; `amax · (1/448)` as candle computes it), `q = fp8(w / scale)` rounded to nearest even and saturated to ±448, which
//   is what the CPU path (candle + the float8 crate) computes.
//
// Compiled by crates/kernels/build.rs with the `cuda` feature; tests/gpu.rs and the models'
// tests/cuda_models.rs compare them with the CPU path.

#include "common.cuh"
#include <cuda_fp8.h>
#include <float.h>
#include <stdint.h>

__device__ __forceinline__ float fp8_to_f(uint8_t b) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

// `vec4`: cols % 4 == 0 and `w` 4-byte aligned, so each thread converts one aligned 4-byte word
// (all four in one row).
template <typename T>
__device__ void fp8_dequant(const uint8_t* __restrict__ w, const T* __restrict__ scale,
                            int has_scale, T* __restrict__ out, long long rows, long long cols,
                            int vec4) {
    const long long n = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec4) {
        const uint32_t* w4 = reinterpret_cast<const uint32_t*>(w);
        for (; i < n / 4; i += stride) {
            const uint32_t word = w4[i];
            const long long e = i * 4;
            const float s = has_scale ? to_f<T>(scale[e / cols]) : 1.0f;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                out[e + k] = from_f<T>(fp8_to_f((word >> (8 * k)) & 0xff) * s);
            }
        }
    } else {
        for (; i < n; i += stride) {
            const float s = has_scale ? to_f<T>(scale[i / cols]) : 1.0f;
            out[i] = from_f<T>(fp8_to_f(w[i]) * s);
        }
    }
}

#define DEQUANT(T, NAME)                                                                      \
    extern "C" __global__ void NAME(const uint8_t* w, const T* scale, int has_scale, T* out,  \
                                    long long rows, long long cols, int vec4) {               \
        fp8_dequant<T>(w, scale, has_scale, out, rows, cols, vec4);                           \
    }

DEQUANT(__nv_bfloat16, fp8_dequant_bf16)
DEQUANT(__half, fp8_dequant_f16)
DEQUANT(float, fp8_dequant_f32)

// One block of 256 threads per row of a `(rows, cols)` matrix in T (f32 weights at load, bf16/f16
// activations before an fp8 GEMM).
template <typename T>
__device__ void quant_rows(const T* __restrict__ w, uint8_t* __restrict__ q,
                           float* __restrict__ scale, long long cols) {
    const long long r = blockIdx.x;
    const T* row = w + r * cols;
    // 16-byte loads when every row starts 16-byte aligned (bf16/f16 rows of a multiple of 8).
    const bool v8 = sizeof(T) == 2 && cols % 8 == 0 && (reinterpret_cast<uintptr_t>(w) & 15) == 0;
    float amax = 0.0f;
    if (v8) {
        for (long long c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
            float v[8];
            load8<T>(row + c, v);
#pragma unroll
            for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
        }
    } else {
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(to_f<T>(row[c])));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    __shared__ float warp_max[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_max[warp] = amax;
    __syncthreads();
    if (warp == 0) {
        amax = lane < (int)(blockDim.x >> 5) ? warp_max[lane] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if (lane == 0) warp_max[0] = amax;
    }
    __syncthreads();
    // candle computes `amax / 448.0` as `amax * (1 / 448)` (an affine op); so does this.
    const float s = fmaxf(warp_max[0] * (1.0f / 448.0f), FLT_MIN);
    if (threadIdx.x == 0) scale[r] = s;
    uint8_t* qrow = q + r * cols;
    if (v8) {
        for (long long c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
            float v[8];
            load8<T>(row + c, v);
            uint2 packed;
            uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
            for (int i = 0; i < 8; ++i) b[i] = (uint8_t)__nv_cvt_float_to_fp8(v[i] / s, __NV_SATFINITE, __NV_E4M3);
            *reinterpret_cast<uint2*>(qrow + c) = packed;
        }
        return;
    }
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        qrow[c] = (uint8_t)__nv_cvt_float_to_fp8(to_f<T>(row[c]) / s, __NV_SATFINITE, __NV_E4M3);
    }
}

extern "C" __global__ void fp8_quant_rows_f32(const float* w, uint8_t* q, float* scale, long long cols) {
    quant_rows<float>(w, q, scale, cols);
}
extern "C" __global__ void fp8_quant_rows_bf16(const __nv_bfloat16* w, uint8_t* q, float* scale,
                                               long long cols) {
    quant_rows<__nv_bfloat16>(w, q, scale, cols);
}
extern "C" __global__ void fp8_quant_rows_f16(const __half* w, uint8_t* q, float* scale,
                                              long long cols) {
    quant_rows<__half>(w, q, scale, cols);
}

// ---------------------------------------------------------------------------------------------
// FP8 attention (cuDNN's FP8 SDPA, one scale a tensor): its inputs and its output.
//
// `s` holds the scalars the attention graph reads, one at every 4th float so that each sits on a
// 16-byte boundary as cuDNN's tensor descriptors state (slots: see FP8_ATTN_* below and
// `fp8_attn` in src/lib.rs, which must agree).
//
// * q and k: RMSNorm then RoPE bound every component by sqrt(128) · max|w| (the normalised row
//   has a squared sum of 128 before the weight; a rotation of a pair keeps each component under
//   the pair's norm), so their scales come from the norm weights alone: no pass over q or k, and
//   `qkv_norm_rope_fp8` writes them in e4m3 directly.
// * v: no such bound; the same kernel takes its amax (atomicMax on the float's bits, which orders
//   non-negative floats), and `fp8_attn_quant_v` quantizes it.
// * P (softmax probabilities, at most 1): scale 448. O: a convex combination of v's rows, so
//   |O| <= amax(v); its scale is 384 / amax(v), which leaves room for the rounding of P and v.
#define FP8_ATTN_DQ 0
#define FP8_ATTN_DK 1
#define FP8_ATTN_DV 2
#define FP8_ATTN_DS 3
#define FP8_ATTN_SS 4
#define FP8_ATTN_SO 5
#define FP8_ATTN_AMAX_S 6
#define FP8_ATTN_AMAX_O 7
#define FP8_ATTN_QQ 8
#define FP8_ATTN_QK 9
#define FP8_ATTN_AMAX_V 10
#define FP8_ATTN_DO 11
#define FP8_SLOT(i) (4 * (i))

__device__ __forceinline__ uint8_t to_e4m3(float x) {
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

// One warp: the q and k scales from the norm weights of up to two token ranges (w*1 may repeat
// w*0), P's scales, and v's amax cleared.
template <typename T>
__device__ void fp8_attn_scales(const T* wq0, const T* wk0, const T* wq1, const T* wk1, float* s) {
    const int lane = threadIdx.x & 31;
    float mq = 0.f, mk = 0.f;
    for (int i = lane; i < 128; i += 32) {
        mq = fmaxf(mq, fmaxf(fabsf(to_f<T>(wq0[i])), fabsf(to_f<T>(wq1[i]))));
        mk = fmaxf(mk, fmaxf(fabsf(to_f<T>(wk0[i])), fabsf(to_f<T>(wk1[i]))));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mq = fmaxf(mq, __shfl_xor_sync(0xffffffffu, mq, o));
        mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, o));
    }
    if (lane == 0) {
        const float root = 11.313708498984761f;  // sqrt(128)
        const float qq = mq > 0.f ? 448.f / (root * mq) : 1.f;
        const float qk = mk > 0.f ? 448.f / (root * mk) : 1.f;
        s[FP8_SLOT(FP8_ATTN_QQ)] = qq;
        s[FP8_SLOT(FP8_ATTN_DQ)] = 1.f / qq;
        s[FP8_SLOT(FP8_ATTN_QK)] = qk;
        s[FP8_SLOT(FP8_ATTN_DK)] = 1.f / qk;
        s[FP8_SLOT(FP8_ATTN_SS)] = 448.f;
        s[FP8_SLOT(FP8_ATTN_DS)] = 1.f / 448.f;
        reinterpret_cast<unsigned int*>(s)[FP8_SLOT(FP8_ATTN_AMAX_V)] = 0u;
    }
}

// As qkv_norm_rope (flux2.cu), but q and k leave as e4m3 times their scale (after rounding to T,
// which is what the bf16 attention reads), v as T, and v's amax goes to `s`. Blocks of 256.
template <typename T>
__device__ void qkv_norm_rope_fp8(const T* __restrict__ src, long long src_row_stride,
                                  long long src_batch_stride, int n_tok, int batch, int heads,
                                  const T* __restrict__ wq, const T* __restrict__ wk,
                                  const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                  uint8_t* __restrict__ qk8, T* __restrict__ v_out, float* s,
                                  int l_tot, int tok_off, float eps) {
    __shared__ float warp_max[8];
    const int warp_global = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int total = batch * n_tok * heads;
    float vmax = 0.f;
    if (warp_global < total) {
        const QkvAt at = qkv_at(warp_global, src_row_stride, src_batch_stride, n_tok, batch,
                                heads, l_tot, tok_off);
        const T* row = src + at.src_off;
        const int e0 = 4 * lane;
#pragma unroll
        for (int which = 0; which < 2; ++which) {
            const float scale = s[FP8_SLOT(which == 0 ? FP8_ATTN_QQ : FP8_ATTN_QK)];
            float r[4];
            qk_norm_rope4<T>(row, at, heads, which, which == 0 ? wq : wk, cos_t, sin_t, eps, r);
            uchar4 q4;
            uint8_t* qb = reinterpret_cast<uint8_t*>(&q4);
#pragma unroll
            for (int i = 0; i < 4; ++i) qb[i] = to_e4m3(round_t<T>(r[i]) * scale);
            *reinterpret_cast<uchar4*>(qk8 + which * at.plane + at.dst_off + e0) = q4;
        }
        const T* xv = row + 2 * heads * 128 + at.head * 128 + e0;
        T* out = v_out + at.dst_off + e0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[i] = xv[i];
            vmax = fmaxf(vmax, fabsf(to_f<T>(xv[i])));
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, o));
    if (lane == 0) warp_max[warp] = vmax;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = 0.f;
        for (int i = 0; i < (int)(blockDim.x >> 5); ++i) m = fmaxf(m, warp_max[i]);
        atomicMax(reinterpret_cast<unsigned int*>(s) + FP8_SLOT(FP8_ATTN_AMAX_V), __float_as_uint(m));
    }
}

// v (n values of T, n % 8 == 0, 16-byte aligned) to e4m3 with one scale from its amax; also the
// scales of v and O the attention and `fp8_attn_out` read.
template <typename T>
__device__ void fp8_attn_quant_v(const T* __restrict__ v, long long n, float* s, uint8_t* __restrict__ out) {
    const float amax = fmaxf(__uint_as_float(reinterpret_cast<const unsigned int*>(s)[FP8_SLOT(FP8_ATTN_AMAX_V)]), 1e-30f);
    const float scale = 448.f / amax;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        s[FP8_SLOT(FP8_ATTN_DV)] = amax / 448.f;
        s[FP8_SLOT(FP8_ATTN_SO)] = 384.f / amax;
        s[FP8_SLOT(FP8_ATTN_DO)] = amax / 384.f;
    }
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n / 8; i += stride) {
        float x[8];
        load8<T>(v + 8 * i, x);
        uint2 packed;
        uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
        for (int k = 0; k < 8; ++k) b[k] = to_e4m3(x[k] * scale);
        *reinterpret_cast<uint2*>(out + 8 * i) = packed;
    }
}

// O (rows × cols e4m3, contiguous, cols % 8 == 0) back to T at `out_row` elements a row.
template <typename T>
__device__ void fp8_attn_out(const uint8_t* __restrict__ o8, long long rows, long long cols,
                             const float* s, T* __restrict__ out, long long out_row) {
    const float d = s[FP8_SLOT(FP8_ATTN_DO)];
    const long long per_row = cols / 8;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < rows * per_row; i += stride) {
        const long long r = i / per_row, c = (i % per_row) * 8;
        const uint2 packed = *reinterpret_cast<const uint2*>(o8 + r * cols + c);
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&packed);
        float y[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) y[k] = fp8_to_f(b[k]) * d;
        store8<T>(out + r * out_row + c, y);
    }
}

#define FP8_ATTN_ENTRIES(T, SFX)                                                                   \
    extern "C" __global__ void fp8_attn_scales_##SFX(const T* wq0, const T* wk0, const T* wq1,    \
                                                     const T* wk1, float* s) {                     \
        fp8_attn_scales<T>(wq0, wk0, wq1, wk1, s);                                                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) qkv_norm_rope_fp8_##SFX(                     \
        const T* src, long long rs, long long bs, int n_tok, int batch, int heads, const T* wq,    \
        const T* wk, const float* cos_t, const float* sin_t, uint8_t* qk8, T* v_out, float* s,    \
        int l_tot, int tok_off, float eps) {                                                       \
        qkv_norm_rope_fp8<T>(src, rs, bs, n_tok, batch, heads, wq, wk, cos_t, sin_t, qk8, v_out, s, \
                             l_tot, tok_off, eps);                                                 \
    }                                                                                              \
    extern "C" __global__ void fp8_attn_quant_v_##SFX(const T* v, long long n, float* s,          \
                                                      uint8_t* out) {                              \
        fp8_attn_quant_v<T>(v, n, s, out);                                                         \
    }                                                                                              \
    extern "C" __global__ void fp8_attn_out_##SFX(const uint8_t* o8, long long rows,               \
                                                  long long cols, const float* s, T* out,          \
                                                  long long out_row) {                             \
        fp8_attn_out<T>(o8, rows, cols, s, out, out_row);                                          \
    }
FP8_ATTN_ENTRIES(__nv_bfloat16, bf16)
FP8_ATTN_ENTRIES(__half, f16)
