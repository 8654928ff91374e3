// Helpers shared by Veetance's CUDA kernels (flux2.cu, flash_sm90.cu, vae.cu, quant.cu): dtype
// conversions, 16-byte vector loads, packed pairs, cp.async copies and a block-wide reduction.
// `T` is __nv_bfloat16 or __half (float where a kernel says so); arithmetic is in f32.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }

// x rounded to T and back: what an unfused path that stores an intermediate in T sees.
template <typename T> __device__ __forceinline__ float round_t(float x) { return to_f<T>(from_f<T>(x)); }

// One warp's RMSNorm of a 128-wide row, 4 elements a lane: `x` points at the lane's first element
// (4·lane of the row), `w` at the whole weight. y = x · rsqrt(mean(x²) + eps) · w, rounded to T as
// the unfused path stores it (QK norm ahead of RoPE).
template <typename T>
__device__ __forceinline__ void rms_norm_row4(const T* x, const T* w, int e0, float eps, float y[4]) {
    float xv[4];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        xv[i] = to_f<T>(x[i]);
        ss += xv[i] * xv[i];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, off);
    const float inv = rsqrtf(ss / 128.f + eps);
#pragma unroll
    for (int i = 0; i < 4; ++i) y[i] = round_t<T>(xv[i] * inv * to_f<T>(w[e0 + i]));
}

// Where warp `w` of the QK-norm + RoPE kernels works: one warp per (batch, token, head) of a token
// range of `n_tok` tokens whose source rows (q | k | v, each (H, 128)) are `rs` elements apart
// (`bs` a batch), landing at tokens [tok_off, tok_off + n_tok) of (B, H, l_tot, 128) planes.
struct QkvAt {
    long long src_off;  // the token's source row, elements from the source's start
    long long dst_off;  // its row in each destination plane
    long long plane;    // elements of one destination plane
    int head, dtok;     // its head, and its destination token (the row of cos/sin)
};
__device__ __forceinline__ QkvAt qkv_at(int w, long long rs, long long bs, int n_tok, int batch,
                                        int heads, int l_tot, int tok_off) {
    QkvAt at;
    at.head = w % heads;
    const int tok = (w / heads) % n_tok;
    const int b = w / (heads * n_tok);
    at.dtok = tok_off + tok;
    at.src_off = (long long)b * bs + (long long)tok * rs;
    at.plane = (long long)batch * heads * l_tot * 128;
    at.dst_off = (((long long)b * heads + at.head) * l_tot + at.dtok) * 128;
    return at;
}

// q (`which` 0) or k (1) of that row, the lane's 4 elements (pairs 2·lane, 2·lane + 1): RMSNorm
// rounded to T as the unfused path stores it, then RoPE in f32 on the pairs, left unrounded.
template <typename T>
__device__ __forceinline__ void qk_norm_rope4(const T* __restrict__ row, const QkvAt& at, int heads,
                                              int which, const T* __restrict__ w,
                                              const float* __restrict__ cos_t,
                                              const float* __restrict__ sin_t, float eps,
                                              float r[4]) {
    const int lane = threadIdx.x & 31, e0 = 4 * lane;
    float y[4];
    rms_norm_row4<T>(row + which * heads * 128 + at.head * 128 + e0, w, e0, eps, y);
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        const int pair = 2 * lane + p;
        const float c = cos_t[(long long)at.dtok * 64 + pair];
        const float s = sin_t[(long long)at.dtok * 64 + pair];
        const float a = y[2 * p], bb = y[2 * p + 1];
        r[2 * p] = a * c - bb * s;
        r[2 * p + 1] = a * s + bb * c;
    }
}

// 8 consecutive T (16 bytes, 16-byte aligned) <-> 8 floats.
template <typename T> __device__ __forceinline__ void load8(const T* p, float* v) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = to_f<T>(h[i]);
}
template <typename T> __device__ __forceinline__ void store8(T* p, const float* v) {
    uint4 u;
    T* h = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = from_f<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = u;
}

// Two floats packed into one 32-bit register of two T (low half = first).
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte global -> shared copy to a shared-space address; `valid == false` writes zeros without
// reading.
__device__ __forceinline__ void cp_async16(uint32_t saddr, const void* gmem, bool valid) {
    int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    cp_async16(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Sums a and b over a block of NT threads (a multiple of 32); every thread gets both totals.
// Contains a __syncthreads: call it from every thread of the block.
template <int NT> __device__ __forceinline__ void block_sum2(float& a, float& b) {
    __shared__ float red[2][NT / 32];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        a += __shfl_xor_sync(0xffffffff, a, off);
        b += __shfl_xor_sync(0xffffffff, b, off);
    }
    if ((threadIdx.x & 31) == 0) {
        red[0][threadIdx.x >> 5] = a;
        red[1][threadIdx.x >> 5] = b;
    }
    __syncthreads();
    a = 0.f;
    b = 0.f;
#pragma unroll
    for (int i = 0; i < NT / 32; ++i) {
        a += red[0][i];
        b += red[1][i];
    }
}

// The end of a flash-attention row pair (mma accumulator layout: this thread holds, for every
// 8-column block nt of the 128, columns 8nt + 2t, +1 of rows row_a (o[4nt], o[4nt+1]) and row_b
// (o[4nt+2], o[4nt+3])): full row sums across the quad, normalise, write rows below l_q.
template <typename T>
__device__ __forceinline__ void flash_write_rows(const float* o, float (&l_row)[2], T* ob,
                                                 int row_a, int row_b, int l_q,
                                                 long long o_row_stride, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l_row[r] += __shfl_xor_sync(0xffffffff, l_row[r], 1);
        l_row[r] += __shfl_xor_sync(0xffffffff, l_row[r], 2);
    }
    const float inv_a = l_row[0] > 0.f ? 1.f / l_row[0] : 0.f;
    const float inv_b = l_row[1] > 0.f ? 1.f / l_row[1] : 0.f;
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) {
        int col = nt * 8 + 2 * t;
        if (row_a < l_q)
            *reinterpret_cast<uint32_t*>(ob + (long long)row_a * o_row_stride + col) =
                pack2<T>(o[nt * 4 + 0] * inv_a, o[nt * 4 + 1] * inv_a);
        if (row_b < l_q)
            *reinterpret_cast<uint32_t*>(ob + (long long)row_b * o_row_stride + col) =
                pack2<T>(o[nt * 4 + 2] * inv_b, o[nt * 4 + 3] * inv_b);
    }
}
