// GGUF (llama.cpp / ComfyUI-GGUF) block-quantized weights, dequantized on the GPU into the compute
// dtype right before their matmul: one pass at memory bandwidth, so a quantized layer costs its
// GEMM in bf16 plus a few microseconds, instead of candle's quantized matmul kernels (2.4-2.7x
// slower than bf16 for a whole klein forward at 1024²).
//
// * gguf_<type>_<T>(blocks, out, items): `blocks` holds the tensor's blocks back to back, as the
//   file stores them; `out` its elements in order (row-major, rows are whole blocks). Each thread
//   makes 8 consecutive outputs (one "item"); `items` = elements / 8.
//
// Types: Q4_0, Q8_0 (32 elements a block), Q4_K, Q5_K, Q6_K (256 a super-block). The arithmetic
// follows llama.cpp's dequantize_row_* (and candle's `to_float`) operation by operation, with
// contraction into FMAs turned off (`__fmul_rn`, `__fadd_rn`), so the f32 output equals candle's
// CPU dequantization bit for bit (tests/gpu.rs checks it).

#include "common.cuh"
#include <stdint.h>

__device__ __forceinline__ float h2f(const uint8_t* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// common.cuh's store8 packs 8 bf16/f16 into one 16-byte store; f32 outputs take two.
template <> __device__ __forceinline__ void store8<float>(float* dst, const float* v) {
    float4* d = reinterpret_cast<float4*>(dst);
    d[0] = make_float4(v[0], v[1], v[2], v[3]);
    d[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// llama.cpp's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q8_0: 34-byte blocks {f16 d; int8 qs[32]}; 4 items a block.
template <typename T> __device__ void q8_0(const uint8_t* __restrict__ src, T* __restrict__ out, long long items) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = src + (i >> 2) * 34;
        const int p = (int)(i & 3);
        const float d = h2f(b);
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = __fmul_rn((float)(int8_t)b[2 + 8 * p + k], d);
        store8<T>(out + i * 8, v);
    }
}

// Q4_0: 18-byte blocks {f16 d; uint8 qs[16]}; low nibbles are elements 0..15, high 16..31.
template <typename T> __device__ void q4_0(const uint8_t* __restrict__ src, T* __restrict__ out, long long items) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = src + (i >> 2) * 18;
        const int p = (int)(i & 3);
        const int hi = p >> 1, j0 = (p & 1) * 8;
        const float d = h2f(b);
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int q = hi ? (b[2 + j0 + k] >> 4) : (b[2 + j0 + k] & 0xF);
            v[k] = __fmul_rn((float)(q - 8), d);
        }
        store8<T>(out + i * 8, v);
    }
}

// Q4_K: 144-byte super-blocks {f16 d, dmin; uint8 scales[12]; uint8 qs[128]}; 32 items each.
// Item p: 64-element chunk c = p / 8; its low (hi = 0) or high nibbles; bytes l0..l0+8.
template <typename T> __device__ void q4_k(const uint8_t* __restrict__ src, T* __restrict__ out, long long items) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = src + (i >> 5) * 144;
        const int p = (int)(i & 31);
        const int c = p >> 3, hi = (p >> 2) & 1, l0 = (p & 3) * 8;
        int sc, m;
        scale_min_k4(2 * c + hi, b + 4, &sc, &m);
        const float ds = __fmul_rn(h2f(b), (float)sc);
        const float ms = __fmul_rn(h2f(b + 2), (float)m);
        const uint8_t* q = b + 16 + 32 * c + l0;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int n = hi ? (q[k] >> 4) : (q[k] & 0xF);
            v[k] = __fsub_rn(__fmul_rn(ds, (float)n), ms);
        }
        store8<T>(out + ((i >> 5) * 256 + 64 * c + 32 * hi + l0), v);
    }
}

// Q5_K: 176-byte super-blocks {f16 d, dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]}; the
// fifth bit of sub-block j comes from bit j of qh.
template <typename T> __device__ void q5_k(const uint8_t* __restrict__ src, T* __restrict__ out, long long items) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = src + (i >> 5) * 176;
        const int p = (int)(i & 31);
        const int c = p >> 3, hi = (p >> 2) & 1, l0 = (p & 3) * 8;
        const int sub = 2 * c + hi;
        int sc, m;
        scale_min_k4(sub, b + 4, &sc, &m);
        const float ds = __fmul_rn(h2f(b), (float)sc);
        const float ms = __fmul_rn(h2f(b + 2), (float)m);
        const uint8_t* qh = b + 16 + l0;
        const uint8_t* q = b + 48 + 32 * c + l0;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int n = hi ? (q[k] >> 4) : (q[k] & 0xF);
            const float add = (qh[k] >> sub) & 1 ? 16.0f : 0.0f;
            v[k] = __fsub_rn(__fmul_rn(ds, __fadd_rn((float)n, add)), ms);
        }
        store8<T>(out + ((i >> 5) * 256 + 64 * c + 32 * hi + l0), v);
    }
}

// Q6_K: 210-byte super-blocks {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d}. Each half
// (128 elements) n has four quarters; item p: half n = p / 16, quarter r = (p / 4) % 4, l0..l0+8.
template <typename T> __device__ void q6_k(const uint8_t* __restrict__ src, T* __restrict__ out, long long items) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items;
         i += (long long)gridDim.x * blockDim.x) {
        const uint8_t* b = src + (i >> 5) * 210;
        const int p = (int)(i & 31);
        const int n = p >> 4, r = (p >> 2) & 3, l0 = (p & 3) * 8;
        const uint8_t* ql = b + 64 * n + ((r & 1) ? 32 : 0) + l0;
        const uint8_t* qh = b + 128 + 32 * n + l0;
        const int is = l0 / 16;
        const float dsc = __fmul_rn(h2f(b + 208), (float)(int8_t)b[192 + 8 * n + is + 2 * r]);
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int low = (r >= 2) ? (ql[k] >> 4) : (ql[k] & 0xF);
            const int q = (low | (((qh[k] >> (2 * r)) & 3) << 4)) - 32;
            v[k] = __fmul_rn(dsc, (float)q);
        }
        store8<T>(out + ((i >> 5) * 256 + 128 * n + 32 * r + l0), v);
    }
}

#define GGUF(FN, T, NAME)                                                                       \
    extern "C" __global__ void NAME(const uint8_t* src, T* out, long long items) {              \
        FN<T>(src, out, items);                                                                 \
    }
#define GGUF_ALL(FN)                                  \
    GGUF(FN, __nv_bfloat16, gguf_##FN##_bf16)         \
    GGUF(FN, __half, gguf_##FN##_f16)                 \
    GGUF(FN, float, gguf_##FN##_f32)

GGUF_ALL(q8_0)
GGUF_ALL(q4_0)
GGUF_ALL(q4_k)
GGUF_ALL(q5_k)
GGUF_ALL(q6_k)
