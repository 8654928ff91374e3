// Veetance's own CUDA kernels for the FLUX.2 VAE decoder (convolutions and group norms).
//
// Compiled to PTX by crates/models/build.rs when the `cuda` feature is on, loaded at run time by
// src/kernels.rs. Each has a reference made of candle ops (candle's conv2d, candle_nn's GroupNorm);
// tests/cuda_kernels.rs compares the two.
//
// * im2col_t: the transposed im2col `col[k][m]` (k = (c·kh + ky)·kw + kx, m = output pixel) of one
//   image, for a row range of the output, with an optional nearest 2x upsample of the input folded
//   in. `W (Cout, K) @ col (K, M)` is then the NCHW output directly, with no layout copy.
// * conv_epilogue: `out[n][m0 + j] = g[n][j] + bias[n] + res[n][m0 + j]` (the GEMM chunk placed in
//   the output with the bias and an optional residual), one rounding.
// * gn_stats / gn_finalize / gn_apply: GroupNorm over contiguous NCHW (a group is one contiguous
//   range), statistics in f32/f64 around a shift, normalise + affine + optional SiLU in f32.
// * softmax_rows: softmax(x · scale) over each row (the mid-block attention's score rows).
// * The channels-last (NHWC) decoder's kernels, where cuDNN runs the convolutions:
//   gn_nhwc_stats / gn_nhwc_finalize / gn_nhwc_apply (GroupNorm over (B, H·W, C): a group is
//   cpg adjacent channels of every pixel), upsample2x_nhwc (nearest), bias_res_nhwc (bias over
//   the last axis and a residual, when cuDNN's fused epilogue has no engine).
//
// Conventions: `T` is __nv_bfloat16 or __half; arithmetic in f32; all tensors contiguous.

#include "common.cuh"

#define SOFTMAX_THREADS 512

// ---------------------------------------------------------------------------------------------
// im2col, transposed. grid: (ceil(rows·wo / PER / blockDim), K); one image.
// x: (C, h, w) of the input before the upsample; the convolution sees (C, h·up, w·up).
// col: (K, rows·wo), pixel m of the chunk is output row row0 + m / wo, column m % wo.
// PER = 8 needs wo % 8 == 0 (so 8 pixels share a row and the chunk width is a multiple of 8).

template <typename T, int PER>
__device__ __forceinline__ void im2col_t(const T* __restrict__ x, T* __restrict__ col, int h, int w,
                                         int up, int kh, int kw, int stride, int pad, int wo,
                                         int row0, int rows) {
    // The caller keeps rows·wo below 2^31 (a chunk holds at most CONV_COL_LIMIT / K pixels).
    const unsigned mc = (unsigned)rows * (unsigned)wo;
    const unsigned m = (blockIdx.x * blockDim.x + threadIdx.x) * PER;
    if (m >= mc) return;
    const int k = blockIdx.y;
    const int kx = k % kw;
    const int ky = (k / kw) % kh;
    const int c = k / (kw * kh);
    const int oy = row0 + (int)(m / (unsigned)wo);
    const int ox0 = (int)(m % (unsigned)wo);
    const int hv = h * up, wv = w * up;
    const int iy = oy * stride + ky - pad;
    const bool row_ok = iy >= 0 && iy < hv;
    const T* src = x + ((long long)c * h + (row_ok ? iy / up : 0)) * w;
    float v[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        const int ix = (ox0 + j) * stride + kx - pad;
        v[j] = (row_ok && ix >= 0 && ix < wv) ? to_f<T>(src[ix / up]) : 0.f;
    }
    T* dst = col + (long long)k * mc + (long long)m;
    if (PER == 8) {
        store8<T>(dst, v);
    } else {
#pragma unroll
        for (int j = 0; j < PER; ++j) dst[j] = from_f<T>(v[j]);
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM chunk -> output with bias and residual. g: (cout, mc); out, res: (cout, m_total) at the
// given element offsets (one image). grid over cout·mc / PER elements; PER = 8 needs mc, m_total
// and m0 multiples of 8.

template <typename T, int PER>
__device__ __forceinline__ void conv_epilogue(const T* __restrict__ g, const T* __restrict__ bias,
                                              int has_bias, const T* __restrict__ res,
                                              long long res_off, int has_res, T* __restrict__ out,
                                              long long out_off, int cout, long long m_total,
                                              long long m0, long long mc) {
    const long long e = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PER;
    if (e >= (long long)cout * mc) return;
    const int n = (int)(e / mc);
    const long long j = e - (long long)n * mc;
    const long long o = (long long)n * m_total + m0 + j;
    const float bv = has_bias ? to_f<T>(bias[n]) : 0.f;
    float v[PER];
    if (PER == 8) {
        load8<T>(g + e, v);
    } else {
#pragma unroll
        for (int i = 0; i < PER; ++i) v[i] = to_f<T>(g[e + i]);
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) v[i] += bv;
    if (has_res) {
        float r[PER];
        if (PER == 8) {
            load8<T>(res + res_off + o, r);
        } else {
#pragma unroll
            for (int i = 0; i < PER; ++i) r[i] = to_f<T>(res[res_off + o + i]);
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) v[i] += r[i];
    }
    if (PER == 8) {
        store8<T>(out + out_off + o, v);
    } else {
#pragma unroll
        for (int i = 0; i < PER; ++i) out[out_off + o + i] = from_f<T>(v[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm. A group (batch b, group g) is the contiguous range [(b·G + g)·n, +n) of NCHW.
// gn_stats: grid (splits, B·G), 256 threads; block s sums (x − shift) and (x − shift)² over
// [s·chunk, min((s+1)·chunk, n)) of its group, shift = the group's first element; writes two
// floats to part[(group·splits + s)·2]. PER = 8 needs n and chunk multiples of 8.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T, int PER>
__device__ __forceinline__ void gn_stats(const T* __restrict__ x, float* __restrict__ part,
                                         long long n, long long chunk) {
    const int group = blockIdx.y;
    const int splits = gridDim.x;
    const T* base = x + (long long)group * n;
    const float shift = to_f<T>(base[0]);
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = min(start + chunk, n);
    float s1 = 0.f, s2 = 0.f;
    for (long long i = start + (long long)threadIdx.x * PER; i < end; i += (long long)blockDim.x * PER) {
        float v[PER];
        if (PER == 8) {
            load8<T>(base + i, v);
        } else {
#pragma unroll
            for (int j = 0; j < PER; ++j) v[j] = to_f<T>(base[i + j]);
        }
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const float d = v[j] - shift;
            s1 += d;
            s2 += d * d;
        }
    }
    __shared__ float sh1[32], sh2[32];
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) {
        sh1[wid] = s1;
        sh2[wid] = s2;
    }
    __syncthreads();
    if (wid == 0) {
        const int nw = blockDim.x >> 5;
        s1 = lane < nw ? sh1[lane] : 0.f;
        s2 = lane < nw ? sh2[lane] : 0.f;
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        if (lane == 0) {
            part[((long long)group * splits + blockIdx.x) * 2] = s1;
            part[((long long)group * splits + blockIdx.x) * 2 + 1] = s2;
        }
    }
}

// One thread per group: combines the partial sums in f64; stats[group] = (mean, 1/sqrt(var+eps)).
template <typename T>
__device__ __forceinline__ void gn_finalize(const T* __restrict__ x, const float* __restrict__ part,
                                            float* __restrict__ stats, int groups, int splits,
                                            long long n, float eps) {
    const int group = blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= groups) return;
    double s1 = 0.0, s2 = 0.0;
    for (int s = 0; s < splits; ++s) {
        s1 += (double)part[((long long)group * splits + s) * 2];
        s2 += (double)part[((long long)group * splits + s) * 2 + 1];
    }
    const double shift = (double)to_f<T>(x[(long long)group * n]);
    const double md = s1 / (double)n;
    double var = s2 / (double)n - md * md;
    if (var < 0.0) var = 0.0;
    stats[group * 2] = (float)(shift + md);
    stats[group * 2 + 1] = (float)(1.0 / sqrt(var + (double)eps));
}

// y = (x − mean)·rstd·gamma[c] + beta[c], then SiLU when `silu`. PER = 8 needs hw % 8 == 0.
template <typename T, int PER>
__device__ __forceinline__ void gn_apply(const T* __restrict__ x, const float* __restrict__ stats,
                                         const T* __restrict__ gamma, const T* __restrict__ beta,
                                         T* __restrict__ y, long long total, long long hw, int c_total,
                                         int cpg, int silu) {
    const long long e = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PER;
    if (e >= total) return;
    const long long plane = e / hw;  // b·C + c
    const int c = (int)(plane % c_total);
    const long long b = plane / c_total;
    const long long group = b * (c_total / cpg) + c / cpg;
    const float mean = stats[group * 2], rstd = stats[group * 2 + 1];
    const float ga = to_f<T>(gamma[c]) * rstd;
    const float be = to_f<T>(beta[c]) - mean * ga;
    float v[PER];
    if (PER == 8) {
        load8<T>(x + e, v);
    } else {
#pragma unroll
        for (int i = 0; i < PER; ++i) v[i] = to_f<T>(x[e + i]);
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        float t = v[i] * ga + be;
        if (silu) t = t / (1.f + __expf(-t));
        v[i] = t;
    }
    if (PER == 8) {
        store8<T>(y + e, v);
    } else {
#pragma unroll
        for (int i = 0; i < PER; ++i) y[e + i] = from_f<T>(v[i]);
    }
}

// softmax_rows: softmax(x · scale) over each row of `cols` (the mid-block attention's 16384-wide
// score rows), one block a row. Pass 1 keeps a running (max, sum of exp) per thread and merges
// them across the block; pass 2 reads the row again (from L2: one row is 32 KB) and writes
// exp(x · scale - max) / sum. f32 arithmetic; one read of the scores from memory and one write.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float om, float os) {
    if (om == -INFINITY) return;
    if (m == -INFINITY) {
        m = om;
        s = os;
        return;
    }
    const float nm = fmaxf(m, om);
    s = s * __expf(m - nm) + os * __expf(om - nm);
    m = nm;
}

template <typename T, int PER>
__device__ __forceinline__ void softmax_rows(const T* __restrict__ x, T* __restrict__ y,
                                             long long cols, float scale) {
    __shared__ float red[2][SOFTMAX_THREADS / 32];
    const T* xr = x + (long long)blockIdx.x * cols;
    T* yr = y + (long long)blockIdx.x * cols;
    const long long step = (long long)SOFTMAX_THREADS * PER;
    float m = -INFINITY, s = 0.f;
    for (long long i = (long long)threadIdx.x * PER; i < cols; i += step) {
        float v[PER];
        if constexpr (PER == 8) {
            load8<T>(xr + i, v);
        } else {
            v[0] = to_f<T>(xr[i]);
        }
        float lm = -INFINITY;
#pragma unroll
        for (int j = 0; j < PER; ++j) lm = fmaxf(lm, v[j] * scale);
        float ls = 0.f;
#pragma unroll
        for (int j = 0; j < PER; ++j) ls += __expf(v[j] * scale - lm);
        softmax_merge(m, s, lm, ls);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float om = __shfl_xor_sync(0xffffffff, m, off);
        const float os = __shfl_xor_sync(0xffffffff, s, off);
        softmax_merge(m, s, om, os);
    }
    if ((threadIdx.x & 31) == 0) {
        red[0][threadIdx.x >> 5] = m;
        red[1][threadIdx.x >> 5] = s;
    }
    __syncthreads();
    m = -INFINITY;
    s = 0.f;
#pragma unroll
    for (int w = 0; w < SOFTMAX_THREADS / 32; ++w) softmax_merge(m, s, red[0][w], red[1][w]);
    const float inv = 1.f / s;
    for (long long i = (long long)threadIdx.x * PER; i < cols; i += step) {
        float v[PER];
        if constexpr (PER == 8) {
            load8<T>(xr + i, v);
#pragma unroll
            for (int j = 0; j < PER; ++j) v[j] = __expf(v[j] * scale - m) * inv;
            store8<T>(yr + i, v);
        } else {
            yr[i] = from_f<T>(__expf(to_f<T>(xr[i]) * scale - m) * inv);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channels-last (NHWC) GroupNorm. x: (B, hw, C) contiguous; group g of image b is channels
// [g·cpg, (g+1)·cpg) of every pixel. C % 8 == 0 and (256 / (C / 8)) pixels a pass: a thread
// always reads the same 8 channels (one 16-byte load), so its sums stay per channel and are
// folded into per-group sums in shared memory once, at the end.
// gn_nhwc_stats: grid (splits, B), 256 threads; block s covers pixels [s·chunk, +chunk); shift =
// the group's first element (pixel 0); writes part[((b·G + g)·splits + s)·2 + {0, 1}].
#define GN_NHWC_MAX_GROUPS 64

template <typename T>
__device__ __forceinline__ void gn_nhwc_stats(const T* __restrict__ x, float* __restrict__ part,
                                              long long hw, int c, int cpg, long long chunk) {
    const int groups = c / cpg;
    const int b = blockIdx.y, splits = gridDim.x;
    const int vecs = c / 8;
    const int v = threadIdx.x % vecs;
    const int pstep = blockDim.x / vecs;
    const T* img = x + (long long)b * hw * c;
    const int c0 = v * 8;
    float shift[8], s1[8], s2[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        shift[j] = to_f<T>(img[((c0 + j) / cpg) * cpg]);
        s1[j] = 0.f;
        s2[j] = 0.f;
    }
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = min(start + chunk, hw);
    for (long long p = start + threadIdx.x / vecs; p < end; p += pstep) {
        float t[8];
        load8<T>(img + p * c + c0, t);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float d = t[j] - shift[j];
            s1[j] += d;
            s2[j] += d * d;
        }
    }
    __shared__ float sh1[GN_NHWC_MAX_GROUPS], sh2[GN_NHWC_MAX_GROUPS];
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        sh1[g] = 0.f;
        sh2[g] = 0.f;
    }
    __syncthreads();
    if ((int)threadIdx.x < pstep * vecs) {
        // Fold runs of channels of one group first: fewer shared-memory atomics.
        float a1 = s1[0], a2 = s2[0];
        int g = c0 / cpg;
#pragma unroll
        for (int j = 1; j < 8; ++j) {
            const int gj = (c0 + j) / cpg;
            if (gj != g) {
                atomicAdd(&sh1[g], a1);
                atomicAdd(&sh2[g], a2);
                g = gj;
                a1 = 0.f;
                a2 = 0.f;
            }
            a1 += s1[j];
            a2 += s2[j];
        }
        atomicAdd(&sh1[g], a1);
        atomicAdd(&sh2[g], a2);
    }
    __syncthreads();
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        const long long at = (((long long)b * groups + g) * splits + blockIdx.x) * 2;
        part[at] = sh1[g];
        part[at + 1] = sh2[g];
    }
}

// One thread per (image, group): stats[b·G + g] = (mean, 1/sqrt(var + eps)), partial sums in f64.
template <typename T>
__device__ __forceinline__ void gn_nhwc_finalize(const T* __restrict__ x,
                                                 const float* __restrict__ part,
                                                 float* __restrict__ stats, int total_groups,
                                                 int groups, int splits, long long hw, int c,
                                                 int cpg, float eps) {
    const int bg = blockIdx.x * blockDim.x + threadIdx.x;
    if (bg >= total_groups) return;
    const int b = bg / groups, g = bg % groups;
    double s1 = 0.0, s2 = 0.0;
    for (int s = 0; s < splits; ++s) {
        s1 += (double)part[((long long)bg * splits + s) * 2];
        s2 += (double)part[((long long)bg * splits + s) * 2 + 1];
    }
    const double n = (double)hw * (double)cpg;
    const double shift = (double)to_f<T>(x[(long long)b * hw * c + (long long)g * cpg]);
    const double md = s1 / n;
    double var = s2 / n - md * md;
    if (var < 0.0) var = 0.0;
    stats[bg * 2] = (float)(shift + md);
    stats[bg * 2 + 1] = (float)(1.0 / sqrt(var + (double)eps));
}

// y = (x − mean)·rstd·gamma[c] + beta[c], then SiLU when `silu`; 8 channels a thread.
template <typename T>
__device__ __forceinline__ void gn_nhwc_apply(const T* __restrict__ x,
                                              const float* __restrict__ stats,
                                              const T* __restrict__ gamma,
                                              const T* __restrict__ beta, T* __restrict__ y,
                                              long long total, long long hwc, int c, int cpg,
                                              int silu) {
    const long long e = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (e >= total) return;
    const int c0 = (int)(e % c);
    const long long b = e / hwc;
    const long long gbase = b * (c / cpg);
    float v[8];
    load8<T>(x + e, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const long long g = gbase + (c0 + j) / cpg;
        const float ga = to_f<T>(gamma[c0 + j]) * stats[g * 2 + 1];
        float t = (v[j] - stats[g * 2]) * ga + to_f<T>(beta[c0 + j]);
        if (silu) t = t / (1.f + __expf(-t));
        v[j] = t;
    }
    store8<T>(y + e, v);
}

// Nearest 2x upsample of (B, h, w, C) into (B, 2h, 2w, C); 8 channels (16 bytes) a thread.
template <typename T>
__device__ __forceinline__ void upsample2x_nhwc(const T* __restrict__ x, T* __restrict__ y,
                                                long long total, int h, int w, int c) {
    const long long e = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (e >= total) return;
    const int cv = (int)(e % c);
    long long px = e / c;
    const int ox = (int)(px % (2 * w));
    px /= 2 * w;
    const int oy = (int)(px % (2 * h));
    const long long b = px / (2 * h);
    const long long src = ((b * h + oy / 2) * w + ox / 2) * c + cv;
    *reinterpret_cast<uint4*>(y + e) = *reinterpret_cast<const uint4*>(x + src);
}

// y = g + bias[c] + res over (.., C) rows, 8 channels a thread (flags for the optional operands).
template <typename T>
__device__ __forceinline__ void bias_res_nhwc(const T* __restrict__ g, const T* __restrict__ bias,
                                              int has_bias, const T* __restrict__ res, int has_res,
                                              T* __restrict__ y, long long total, int c) {
    const long long e = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (e >= total) return;
    const int c0 = (int)(e % c);
    float v[8], r[8];
    load8<T>(g + e, v);
    if (has_res) {
        load8<T>(res + e, r);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] += r[j];
    }
    if (has_bias) {
        load8<T>(bias + c0, r);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] += r[j];
    }
    store8<T>(y + e, v);
}

// ---------------------------------------------------------------------------------------------
// entry points

#define VAE_KERNELS(T, SFX)                                                                            \
    extern "C" __global__ void im2col_t_v8_##SFX(const T* x, T* col, int h, int w, int up, int kh,    \
                                                 int kw, int stride, int pad, int wo, int row0,      \
                                                 int rows) {                                         \
        im2col_t<T, 8>(x, col, h, w, up, kh, kw, stride, pad, wo, row0, rows);                       \
    }                                                                                                \
    extern "C" __global__ void im2col_t_v1_##SFX(const T* x, T* col, int h, int w, int up, int kh,    \
                                                 int kw, int stride, int pad, int wo, int row0,      \
                                                 int rows) {                                         \
        im2col_t<T, 1>(x, col, h, w, up, kh, kw, stride, pad, wo, row0, rows);                       \
    }                                                                                                \
    extern "C" __global__ void conv_epilogue_v8_##SFX(const T* g, const T* bias, int has_bias,        \
                                                      const T* res, long long res_off, int has_res,  \
                                                      T* out, long long out_off, int cout,           \
                                                      long long m_total, long long m0,               \
                                                      long long mc) {                                \
        conv_epilogue<T, 8>(g, bias, has_bias, res, res_off, has_res, out, out_off, cout, m_total,   \
                            m0, mc);                                                                 \
    }                                                                                                \
    extern "C" __global__ void conv_epilogue_v1_##SFX(const T* g, const T* bias, int has_bias,        \
                                                      const T* res, long long res_off, int has_res,  \
                                                      T* out, long long out_off, int cout,           \
                                                      long long m_total, long long m0,               \
                                                      long long mc) {                                \
        conv_epilogue<T, 1>(g, bias, has_bias, res, res_off, has_res, out, out_off, cout, m_total,   \
                            m0, mc);                                                                 \
    }                                                                                                \
    extern "C" __global__ void gn_stats_v8_##SFX(const T* x, float* part, long long n,                \
                                                 long long chunk) {                                  \
        gn_stats<T, 8>(x, part, n, chunk);                                                           \
    }                                                                                                \
    extern "C" __global__ void gn_stats_v1_##SFX(const T* x, float* part, long long n,                \
                                                 long long chunk) {                                  \
        gn_stats<T, 1>(x, part, n, chunk);                                                           \
    }                                                                                                \
    extern "C" __global__ void gn_finalize_##SFX(const T* x, const float* part, float* stats,         \
                                                 int groups, int splits, long long n, float eps) {   \
        gn_finalize<T>(x, part, stats, groups, splits, n, eps);                                      \
    }                                                                                                \
    extern "C" __global__ void gn_apply_v8_##SFX(const T* x, const float* stats, const T* gamma,      \
                                                 const T* beta, T* y, long long total, long long hw, \
                                                 int c_total, int cpg, int silu) {                   \
        gn_apply<T, 8>(x, stats, gamma, beta, y, total, hw, c_total, cpg, silu);                     \
    }                                                                                                \
    extern "C" __global__ void gn_apply_v1_##SFX(const T* x, const float* stats, const T* gamma,      \
                                                 const T* beta, T* y, long long total, long long hw, \
                                                 int c_total, int cpg, int silu) {                   \
        gn_apply<T, 1>(x, stats, gamma, beta, y, total, hw, c_total, cpg, silu);                     \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS)                                    \
        softmax_rows_v8_##SFX(const T* x, T* y, long long cols, float scale) {                       \
        softmax_rows<T, 8>(x, y, cols, scale);                                                       \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS)                                    \
        softmax_rows_v1_##SFX(const T* x, T* y, long long cols, float scale) {                       \
        softmax_rows<T, 1>(x, y, cols, scale);                                                       \
    }                                                                                                \
    extern "C" __global__ void gn_nhwc_stats_##SFX(const T* x, float* part, long long hw, int c,     \
                                                   int cpg, long long chunk) {                       \
        gn_nhwc_stats<T>(x, part, hw, c, cpg, chunk);                                                \
    }                                                                                                \
    extern "C" __global__ void gn_nhwc_finalize_##SFX(const T* x, const float* part, float* stats,   \
                                                      int total_groups, int groups, int splits,      \
                                                      long long hw, int c, int cpg, float eps) {     \
        gn_nhwc_finalize<T>(x, part, stats, total_groups, groups, splits, hw, c, cpg, eps);          \
    }                                                                                                \
    extern "C" __global__ void gn_nhwc_apply_##SFX(const T* x, const float* stats, const T* gamma,   \
                                                   const T* beta, T* y, long long total,             \
                                                   long long hwc, int c, int cpg, int silu) {        \
        gn_nhwc_apply<T>(x, stats, gamma, beta, y, total, hwc, c, cpg, silu);                        \
    }                                                                                                \
    extern "C" __global__ void upsample2x_nhwc_##SFX(const T* x, T* y, long long total, int h,       \
                                                     int w, int c) {                                 \
        upsample2x_nhwc<T>(x, y, total, h, w, c);                                                    \
    }                                                                                                \
    extern "C" __global__ void bias_res_nhwc_##SFX(const T* g, const T* bias, int has_bias,          \
                                                   const T* res, int has_res, T* y, long long total, \
                                                   int c) {                                          \
        bias_res_nhwc<T>(g, bias, has_bias, res, has_res, y, total, c);                              \
    }

VAE_KERNELS(__nv_bfloat16, bf16)
VAE_KERNELS(__half, f16)
