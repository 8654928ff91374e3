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
