//! Our own CUDA kernels (cuda/flux2.cu), with the candle-op paths they replace as reference.
//!
//! * [`flash_attention`]: fused softmax attention for head dim 128 in bf16/f16: online softmax,
//!   the `L × L` score matrix never exists; optional causal and key-length masks. Two kernels
//!   ([`FlashKernel`]): `wgmma` on Hopper (cuda/flash_sm90.cu), `mma.sync` elsewhere.
//! * [`qkv_norm_rope`]: QK RMSNorm + interleaved RoPE + the `(B, L, 3, H, D) → (B, H, L, D)`
//!   split, for one or several token ranges (the double block's text and image streams).
//! * [`modulate`], [`gated_residual`], [`swiglu`]: the elementwise work around the matmuls.
//!
//! For the VAE decoder (cuda/vae.cu):
//!
//! * [`conv2d`]: a convolution as a transposed im2col (`col[k][m]`) + one cuBLAS GEMM per image
//!   and row chunk, `W (Cout, Cin·kh·kw) @ col` being NCHW already; the bias, a residual add and a
//!   nearest 2x upsample of the input are folded in. Replaces candle's im2col (one thread per
//!   element, 64-bit divisions, `(N, H, W, Cin, kh, kw)` layout) + GEMM + NHWC→NCHW copy.
//! * [`group_norm`]: GroupNorm with f32 statistics (and an optional SiLU) in three launches,
//!   instead of candle_nn's ten f32 passes with two 32-block reductions.
//!
//! Each function runs the kernel when [`supported`] says the tensor qualifies (a CUDA build, a
//! CUDA tensor, bf16 or f16) and errors otherwise; callers keep the reference path for the rest.
//! `tests/gpu.rs` compares every kernel with its reference on the GPU.

use candle_core::{Result, Tensor};

/// Whether our kernels can take this tensor: a CUDA build, a CUDA tensor, bf16 or f16.
pub fn supported(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(
            t.dtype(),
            candle_core::DType::BF16 | candle_core::DType::F16
        )
}

/// Softmax attention `softmax(q kᵀ / √128) v` over `(B, H, L, 128)` tensors, written as
/// `(B, L, H·128)` followed by `extra_cols` columns left for [`swiglu_into`] (0 for a plain
/// result). `kv_len`: keys at or past it are masked; `causal`: key `j > i` is masked for query `i`.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    kv_len: Option<usize>,
) -> Result<Tensor> {
    imp::flash_attention(q, k, v, causal, kv_len, None, FlashKernel::Auto)
}

/// Which flash-attention kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashKernel {
    /// cuDNN's fused attention when it is loaded and takes the shape (no mask), else `Wgmma` on
    /// a device of compute capability 9.0 (Hopper), `MmaSync` elsewhere.
    #[default]
    Auto,
    /// The `mma.sync` kernel of cuda/flux2.cu (any GPU the build targets).
    MmaSync,
    /// The Hopper kernel of cuda/flash_sm90.cu (`wgmma`, sm_90a only; an error elsewhere).
    Wgmma,
    /// cuDNN's fused attention (`SDPA_FWD`), loaded at run time: an error when cuDNN is absent
    /// or has no engine for the shape, and for masks (causal or `kv_len`), which it is not given.
    Cudnn,
}

/// [`flash_attention`] with the kernel chosen explicitly (to compare the two).
pub fn flash_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    kv_len: Option<usize>,
    kernel: FlashKernel,
) -> Result<Tensor> {
    imp::flash_attention(q, k, v, causal, kv_len, None, kernel)
}

/// [`flash_attention`] whose output rows continue with `silu(h[.., a]) * h[.., b]` (the single
/// block's `cat([attn, mlp])`, without the copy): returns `(B, L, H·128 + mlp)`.
/// `h` is `(B, L, W)` with the SwiGLU halves at columns `a_off..a_off+mlp` and `b_off..b_off+mlp`.
pub fn attention_then_swiglu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    h: &Tensor,
    a_off: usize,
    b_off: usize,
    mlp: usize,
) -> Result<Tensor> {
    imp::flash_attention(
        q,
        k,
        v,
        false,
        None,
        Some((h, a_off, b_off, mlp)),
        FlashKernel::Auto,
    )
}

/// One token range for [`qkv_norm_rope`]: its projection and its q/k RMSNorm weights.
#[derive(Clone, Copy, Debug)]
pub struct QkvPart<'a> {
    /// `(B, n, 3·H·128)`; the row stride may exceed the width (a narrow of a wider projection).
    pub qkv: &'a Tensor,
    pub q_norm: &'a Tensor,
    pub k_norm: &'a Tensor,
}

/// RMSNorm and interleaved RoPE (`cos`, `sin`: `(L, 64)` f32) on q and k, for token ranges
/// concatenated in order. Returns q, k, v as `(B, H, L, 128)` with `L = Σ n`.
pub fn qkv_norm_rope(
    parts: &[QkvPart<'_>],
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    imp::qkv_norm_rope(parts, heads, cos, sin, eps)
}

/// FP8 attention for the token ranges of [`qkv_norm_rope`]: RMSNorm and RoPE on q and k, then
/// q, k and v in e4m3 with one scale a tensor and cuDNN's FP8 attention (Hopper), the output
/// back in the input's dtype as `(B, L, H·128)` rows, continued by the SwiGLU of `mlp` as in
/// [`attention_then_swiglu`] when given.
///
/// Scales: q and k from their norm weights (`448 / (√128 · max|w|)`, a bound RMSNorm and RoPE
/// guarantee), v from its amax, the softmax probabilities 448, the output `384 / amax(v)`.
/// The error against bf16 attention is that of e4m3 (3 mantissa bits) on q, k, P, v and o: about
/// 6e-2 relative on random inputs (see docs/performance.md). `Ok(None)` when it cannot run here
/// (no cuDNN, no Hopper, no plan for the shape): nothing ran, and the caller takes the bf16 path.
pub fn attention_fp8(
    parts: &[QkvPart<'_>],
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    eps: f32,
    mlp: Option<(&Tensor, usize, usize, usize)>,
) -> Result<Option<Tensor>> {
    imp::attention_fp8(parts, heads, cos, sin, eps, mlp)
}

/// `LN(x) · (1 + scale) + shift`, LN without affine; `x: (B, L, n)`, `shift`, `scale`: `(B, 1, n)`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    imp::modulate(x, shift, scale, eps)
}

/// `x + gate · y`; `x: (B, L, n)` contiguous, `y: (B, L, n)` (row stride may exceed n), `gate: (B, 1, n)`.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    imp::gated_residual(x, y, gate)
}

/// `silu(h[.., a]) · h[.., b]` for the column ranges `a_off..a_off+n`, `b_off..b_off+n` of
/// `h: (B, L, W)`; returns `(B, L, n)`.
pub fn swiglu(h: &Tensor, a_off: usize, b_off: usize, n: usize) -> Result<Tensor> {
    imp::swiglu(h, a_off, b_off, n)
}

/// Stride, padding and input upsampling of a [`conv2d`] (dilation 1, one group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub stride: usize,
    pub padding: usize,
    /// 1, or 2 for a nearest 2x upsample of the input before the convolution.
    pub upsample: usize,
}

/// The most elements one im2col chunk may hold (3·2²⁹, 3 GiB in bf16): larger convolutions run
/// in row chunks.
pub const CONV_COL_LIMIT: usize = 3 << 29;

/// `residual + conv2d(upsample?(x), weight) + bias` over `x: (B, Cin, H, W)`, `weight:
/// (Cout, Cin, kh, kw)`, `bias: (Cout,)`, `residual: (B, Cout, Ho, Wo)`, all one dtype; the sums
/// in f32, rounded once (the GEMM's output is rounded to the dtype first).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    geom: ConvGeom,
) -> Result<Tensor> {
    imp::conv2d(
        x,
        weight,
        bias,
        residual,
        geom,
        CONV_COL_LIMIT,
        ConvPath::Auto,
    )
}

/// Which convolution runs: cuDNN's when it is loaded and has an engine for the shape (`Auto`),
/// or our im2col + GEMM kernels only (`Ours`), or cuDNN's only (`Cudnn`, an error without it).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    Auto,
    Ours,
    Cudnn,
}

/// [`conv2d`] on a chosen path (to compare them).
#[doc(hidden)]
pub fn conv2d_with(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    geom: ConvGeom,
    path: ConvPath,
) -> Result<Tensor> {
    imp::conv2d(x, weight, bias, residual, geom, CONV_COL_LIMIT, path)
}

/// Whether cuDNN is loaded (its version and file) or why not; see `VEETANCE_CUDNN` in
/// ARCHITECTURE.md ("GPU kernels").
pub fn cudnn_status() -> String {
    #[cfg(feature = "cuda")]
    {
        cudnn::describe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        "cuDNN not in use: not a CUDA build".to_string()
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // a C library opened at run time: its symbols, descriptors and buffers
mod cudnn;

/// [`conv2d`] through our kernels with im2col chunks of at most `col_limit` elements (tests use
/// small ones).
#[doc(hidden)]
pub fn conv2d_with_limit(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    geom: ConvGeom,
    col_limit: usize,
) -> Result<Tensor> {
    imp::conv2d(x, weight, bias, residual, geom, col_limit, ConvPath::Ours)
}

/// GroupNorm of `x: (B, C, ...)` contiguous-able, `groups` dividing C, affine `gamma`, `beta`:
/// `(C,)`, biased variance, then `x · sigmoid(x)` when `silu`.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    imp::group_norm(x, gamma, beta, groups, eps, silu)
}

/// `softmax(x · scale)` over the last dimension of `x` (bf16 or f16, any leading shape), in f32
/// arithmetic, one block a row: one read of `x` from memory and one write (candle's softmax runs
/// one warp a row, slow on the VAE attention's 16384-wide rows).
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    imp::softmax_last_dim(x, scale)
}

/// Whether cuDNN is loaded, so that the channels-last path ([`conv2d_nhwc`]) can run at all.
pub fn cudnn_loaded() -> bool {
    #[cfg(feature = "cuda")]
    {
        cudnn::loaded()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// The channels-last convolution of the VAE decoder's cuDNN path:
/// `residual + conv2d(upsample?(x), weight) + bias` over `x: (B, H, W, Cin)`, `weight:
/// (Cout, kh, kw, Cin)`, `bias: (Cout,)`, `residual: (B, Ho, Wo, Cout)`, all contiguous in one
/// dtype, Cin and Cout multiples of 8. The bias and residual adds run inside cuDNN's graph where
/// it has a fused engine (`VEETANCE_CUDNN_FUSE=0` turns that off), else in one pass of ours.
/// `Ok(None)`: cuDNN is absent or has no engine for the shape (nothing ran); callers then take the
/// NCHW path.
pub fn conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    geom: ConvGeom,
) -> Result<Option<Tensor>> {
    imp::conv2d_nhwc(x, weight, bias, residual, geom)
}

/// GroupNorm over a channels-last `x: (B, ..., C)` (C a multiple of 8, at most 2048, and 256
/// divisible by C / 8; `groups` dividing C, at most 64), affine `(C,)`, biased variance, then
/// SiLU when `silu`; what [`group_norm`] computes on the NCHW layout.
pub fn group_norm_nhwc(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    imp::group_norm_nhwc(x, gamma, beta, groups, eps, silu)
}

/// Nearest 2x upsample of a channels-last `x: (B, H, W, C)`, C a multiple of 8.
pub fn upsample2x_nhwc(x: &Tensor) -> Result<Tensor> {
    imp::upsample2x_nhwc(x)
}

/// The weight of an fp8 e4m3 linear layer in `dtype` (bf16, f16 or f32): `w: (out, in)` fp8,
/// times `scale` per output row (`(out,)` in `dtype`) when given. candle's own fp8 casts fail on
/// CUDA (cuda/quant.cu says why).
pub fn fp8_dequant(
    w: &Tensor,
    scale: Option<&Tensor>,
    dtype: candle_core::DType,
) -> Result<Tensor> {
    imp::fp8_dequant(w, scale, dtype)
}

/// A 2-D `(rows, cols)` matrix, f32 (a weight at load) or bf16/f16 (activations before an FP8
/// GEMM), in fp8 e4m3 with one f32 scale per row, `scale = max|row| / 448` (at least
/// `f32::MIN_POSITIVE`), rounded to nearest even and saturated: for an f32 weight, what
/// `veetance_models::qlinear::QLinear::quantize_fp8` computes on the CPU. Returns `(q, scale)`.
pub fn fp8_quantize_rows(w: &Tensor) -> Result<(Tensor, Tensor)> {
    imp::fp8_quantize_rows(w)
}

/// Whether [`gguf_dequant`] takes this GGUF block type: Q4_0, Q8_0, Q4_K, Q5_K, Q6_K.
pub fn gguf_supported(kind: candle_core::quantized::GgmlDType) -> bool {
    use candle_core::quantized::GgmlDType as G;
    matches!(kind, G::Q4_0 | G::Q8_0 | G::Q4K | G::Q5K | G::Q6K)
}

/// A GGUF block-quantized weight of `shape` (rows whole blocks) in `dtype` (bf16, f16 or f32):
/// `blocks` holds its blocks as the file stores them (a 1-D u8 tensor on the GPU). The f32
/// result equals candle's CPU dequantization bit for bit.
pub fn gguf_dequant(
    blocks: &Tensor,
    kind: candle_core::quantized::GgmlDType,
    shape: (usize, usize),
    dtype: candle_core::DType,
) -> Result<Tensor> {
    imp::gguf_dequant(blocks, kind, shape, dtype)
}

/// `y = x · wᵀ` on Hopper's FP8 tensor cores (cuBLASLt): `x: (.., K)` bf16/f16 is quantized to
/// fp8 e4m3 one scale a row (`max|row| / 448`, our kernel), `w: (N, K)` is an fp8 e4m3 weight with
/// `w_scale` one f32 a row (`(N,)`) or one value (`()`/`(1,)`), or none; both scale vectors are
/// applied by cuBLASLt (`OUTER_VEC_32F`), f32 accumulation, output `(.., N)` in `x`'s dtype.
/// Needs compute capability 9.0 and cuBLASLt 12.9 or newer; an error elsewhere (callers
/// dequantize and run a bf16 GEMM instead, see [`fp8_linear_supported`]).
pub fn fp8_linear(x: &Tensor, w: &Tensor, w_scale: Option<&Tensor>) -> Result<Tensor> {
    imp::fp8_linear(x, w, w_scale)
}

/// Whether [`fp8_linear`] can run on `t`'s device: a CUDA build, a CUDA device of compute
/// capability 9.0, and cuBLASLt's FP8 row scaling answering there (checked once a device).
pub fn fp8_linear_supported(t: &Tensor) -> bool {
    imp::fp8_linear_supported(t)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{bail, Result, Tensor};

    pub fn flash_attention(
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _causal: bool,
        _kv_len: Option<usize>,
        _mlp: Option<(&Tensor, usize, usize, usize)>,
        _kernel: super::FlashKernel,
    ) -> Result<Tensor> {
        bail!("flash attention needs a build with the `cuda` feature")
    }
    pub fn qkv_norm_rope(
        _parts: &[super::QkvPart<'_>],
        _heads: usize,
        _cos: &Tensor,
        _sin: &Tensor,
        _eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        bail!("fused kernels need a build with the `cuda` feature")
    }
    pub fn attention_fp8(
        _parts: &[super::QkvPart<'_>],
        _heads: usize,
        _cos: &Tensor,
        _sin: &Tensor,
        _eps: f32,
        _mlp: Option<(&Tensor, usize, usize, usize)>,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn modulate(_x: &Tensor, _shift: &Tensor, _scale: &Tensor, _eps: f32) -> Result<Tensor> {
        bail!("fused kernels need a build with the `cuda` feature")
    }
    pub fn gated_residual(_x: &Tensor, _y: &Tensor, _gate: &Tensor) -> Result<Tensor> {
        bail!("fused kernels need a build with the `cuda` feature")
    }
    pub fn swiglu(_h: &Tensor, _a: usize, _b: usize, _n: usize) -> Result<Tensor> {
        bail!("fused kernels need a build with the `cuda` feature")
    }
    pub fn conv2d(
        _x: &Tensor,
        _w: &Tensor,
        _bias: Option<&Tensor>,
        _res: Option<&Tensor>,
        _geom: super::ConvGeom,
        _col_limit: usize,
        _path: super::ConvPath,
    ) -> Result<Tensor> {
        bail!("our conv2d needs a build with the `cuda` feature")
    }
    pub fn fp8_dequant(
        _w: &Tensor,
        _scale: Option<&Tensor>,
        _dtype: candle_core::DType,
    ) -> Result<Tensor> {
        bail!("our fp8 kernels need a build with the `cuda` feature")
    }
    pub fn fp8_quantize_rows(_w: &Tensor) -> Result<(Tensor, Tensor)> {
        bail!("our fp8 kernels need a build with the `cuda` feature")
    }
    pub fn fp8_linear(_x: &Tensor, _w: &Tensor, _s: Option<&Tensor>) -> Result<Tensor> {
        bail!("fp8 matmuls need a build with the `cuda` feature")
    }
    pub fn fp8_linear_supported(_t: &Tensor) -> bool {
        false
    }
    pub fn gguf_dequant(
        _blocks: &Tensor,
        _kind: candle_core::quantized::GgmlDType,
        _shape: (usize, usize),
        _dtype: candle_core::DType,
    ) -> Result<Tensor> {
        bail!("our GGUF kernels need a build with the `cuda` feature")
    }
    pub fn group_norm(
        _x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        _groups: usize,
        _eps: f64,
        _silu: bool,
    ) -> Result<Tensor> {
        bail!("our group norm needs a build with the `cuda` feature")
    }
    pub fn softmax_last_dim(_x: &Tensor, _scale: f64) -> Result<Tensor> {
        bail!("our softmax needs a build with the `cuda` feature")
    }
    pub fn conv2d_nhwc(
        _x: &Tensor,
        _w: &Tensor,
        _bias: Option<&Tensor>,
        _res: Option<&Tensor>,
        _geom: super::ConvGeom,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    pub fn group_norm_nhwc(
        _x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        _groups: usize,
        _eps: f64,
        _silu: bool,
    ) -> Result<Tensor> {
        bail!("our group norm needs a build with the `cuda` feature")
    }
    pub fn upsample2x_nhwc(_x: &Tensor) -> Result<Tensor> {
        bail!("our upsample needs a build with the `cuda` feature")
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // kernel launches and uninitialised outputs that the kernels fill whole
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, CudaDevice, DType, Layout, Result, Shape, Storage, Tensor};
    use half::{bf16, f16};

    use super::loader::{load, module, Module};

    /// The transformer's kernels (flux2.cu).
    const MODULE: Module = module!("flux2");
    /// The Hopper flash kernel (flash_sm90.cu), compiled for sm_90a only.
    const SM90_MODULE: Module = module!("flash_sm90");

    /// The CUDA storage and layout of a tensor, with a check that names the argument.
    fn cuda_of<'a>(guard: &'a candle_core::StorageRef<'a>, what: &str) -> Result<&'a CudaStorage> {
        match &**guard {
            Storage::Cuda(s) => Ok(s),
            _ => bail!("{what} must be on a CUDA device"),
        }
    }

    fn view<'a, T: CudaDType + DeviceRepr>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<CudaView<'a, T>> {
        Ok(T::as_cuda_slice(s)?.slice(l.start_offset()..))
    }

    fn wrap<T: CudaDType>(
        slice: CudaSlice<T>,
        dev: &CudaDevice,
        shape: impl Into<Shape>,
    ) -> Tensor {
        let storage = Storage::Cuda(T::wrap_cuda_slice(slice, dev.clone()));
        Tensor::from_storage(storage, shape, BackpropOp::none(), false)
    }

    fn suffix(dtype: DType) -> Result<&'static str> {
        match dtype {
            DType::BF16 => Ok("bf16"),
            DType::F16 => Ok("f16"),
            d => bail!("our kernels take bf16 or f16, not {d:?}"),
        }
    }

    /// Element strides of a rank-3 tensor whose last dim is contiguous.
    fn rows3(t: &Tensor, what: &str) -> Result<(usize, usize, usize, i64, i64)> {
        let (b, l, n) = t.dims3()?;
        let st = t.stride();
        if st[2] != 1 {
            bail!("{what}: the last dimension must be contiguous")
        }
        Ok((b, l, n, st[0] as i64, st[1] as i64))
    }

    macro_rules! dispatch {
        ($dtype:expr, $f:ident, $($arg:expr),*) => {
            match $dtype {
                DType::BF16 => $f::<bf16>($($arg),*),
                DType::F16 => $f::<f16>($($arg),*),
                d => bail!("our kernels take bf16 or f16, not {d:?}"),
            }
        };
    }

    pub fn flash_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        kv_len: Option<usize>,
        mlp: Option<(&Tensor, usize, usize, usize)>,
        kernel: super::FlashKernel,
    ) -> Result<Tensor> {
        dispatch!(q.dtype(), flash_t, q, k, v, causal, kv_len, mlp, kernel)
    }

    /// Whether the device runs sm_90a code (compute capability 9.0).
    fn is_sm90(dev: &CudaDevice) -> Result<bool> {
        let cc = dev.cuda_stream().context().compute_capability().w()?;
        Ok(cc == (9, 0))
    }

    fn flash_t<T: CudaDType + DeviceRepr>(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        kv_len: Option<usize>,
        mlp: Option<(&Tensor, usize, usize, usize)>,
        kernel: super::FlashKernel,
    ) -> Result<Tensor> {
        let (b, h, lq, d) = q.dims4()?;
        let (bk, hk, lk, dk) = k.dims4()?;
        if d != 128 || dk != 128 || v.dims4()? != (bk, hk, lk, dk) || (bk, hk) != (b, h) {
            bail!(
                "flash attention takes q, k, v of (B, H, L, 128) with matching B and H: q {:?}, k {:?}, v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            )
        }
        if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
            bail!("flash attention: q, k and v must share a dtype")
        }
        let kv_len = kv_len.unwrap_or(lk).min(lk);
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let extra = mlp.map(|(_, _, _, n)| n).unwrap_or(0);
        let width = h * d + extra;

        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (qc, kc, vc) = (cuda_of(&qs, "q")?, cuda_of(&ks, "k")?, cuda_of(&vs, "v")?);
        let dev = qc.device().clone();
        let (qv, kv, vv) = (view::<T>(qc, ql)?, view::<T>(kc, kl)?, view::<T>(vc, vl)?);
        // SAFETY: every element is written: the attention kernel fills columns 0..H·128 of each
        // row and, when `mlp` is given, the SwiGLU kernel fills the remaining `extra` columns.
        let mut out = unsafe { dev.alloc::<T>(b * lq * width) }?;

        let unmasked = !causal && kv_len == lk;
        if matches!(kernel, super::FlashKernel::Auto | super::FlashKernel::Cudnn) && unmasked {
            let stream = dev.cuda_stream();
            let (qp, _gq) = qv.device_ptr(&stream);
            let (kp, _gk) = kv.device_ptr(&stream);
            let (vp, _gv) = vv.device_ptr(&stream);
            let (op, _go) = out.device_ptr_mut(&stream);
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            let ran = super::cudnn::sdpa(
                &dev,
                q.dtype(),
                (b, h, lq, lk, d),
                width,
                scale,
                [qp as _, kp as _, vp as _, op as _],
            )?;
            drop((_gq, _gk, _gv, _go));
            if ran {
                return finish_attention::<T>(&dev, out, (b, h, lq, d, width), mlp, q.dtype());
            }
        }
        let wgmma = match kernel {
            super::FlashKernel::Cudnn => bail!(
                "cuDNN attention did not run {:?} (causal {causal}, kv_len {kv_len} of {lk}; {})",
                q.dims(),
                super::cudnn::describe()
            ),
            super::FlashKernel::Auto => is_sm90(&dev)?,
            super::FlashKernel::MmaSync => false,
            super::FlashKernel::Wgmma => {
                if !is_sm90(&dev)? {
                    bail!("the wgmma flash kernel needs a device of compute capability 9.0")
                }
                true
            }
        };
        let (func, cfg) = if wgmma {
            // One warpgroup (64 query rows) per CTA, keys in tiles of 64, 3 tiles in flight:
            // 1 KiB of alignment slack + Q (16 KiB) + 3 × (K + V) (32 KiB); two CTAs share an SM.
            // Measured against 2-stage, 2- and 3-warpgroup and 128-key variants on the H200
            // (docs/performance.md): this one was fastest.
            let (bc, wgs, stages) = (64u32, 1u32, 3u32);
            let smem = 1024 + 64 * wgs * 256 + stages * bc * 512;
            let name = format!("flash_sm90_{}_b{bc}_w{wgs}_s{stages}", suffix(q.dtype())?);
            let func = load(&dev, &SM90_MODULE, &name)?;
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .w()?;
            let cfg = LaunchConfig {
                grid_dim: (lq.div_ceil(64 * wgs as usize) as u32, (b * h) as u32, 1),
                block_dim: (128 * wgs, 1, 1),
                shared_mem_bytes: smem,
            };
            (func, cfg)
        } else {
            // 8 warps (128 query rows) per CTA for long sequences, 4 for short ones.
            let (warps, rows) = if lq >= 2048 {
                (8u32, 128usize)
            } else {
                (4, 64)
            };
            let name = format!("flash_attn_{}_w{warps}", suffix(q.dtype())?);
            let func = load(&dev, &MODULE, &name)?;
            let cfg = LaunchConfig {
                grid_dim: (lq.div_ceil(rows) as u32, (b * h) as u32, 1),
                block_dim: (warps * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            (func, cfg)
        };
        let scale_log2 = (1.0 / (d as f64).sqrt() * std::f64::consts::LOG2_E) as f32;
        let (heads, lq_i, lk_i, kvl_i, causal_i) = (
            h as i32,
            lq as i32,
            lk as i32,
            kv_len as i32,
            i32::from(causal),
        );
        let (obs, ors) = ((lq * width) as i64, width as i64);
        let mut builder = func.builder();
        builder.arg(&qv);
        builder.arg(&kv);
        builder.arg(&vv);
        builder.arg(&out);
        builder.arg(&heads);
        builder.arg(&lq_i);
        builder.arg(&lk_i);
        builder.arg(&kvl_i);
        builder.arg(&causal_i);
        builder.arg(&scale_log2);
        builder.arg(&obs);
        builder.arg(&ors);
        // SAFETY: arguments match the kernel's signature; buffers hold what the grid touches.
        unsafe { builder.launch(cfg) }.w()?;
        drop((qs, ks, vs));
        finish_attention::<T>(&dev, out, (b, h, lq, d, width), mlp, q.dtype())
    }

    /// The attention output `(B, L, width)` as a tensor, its columns past H·D filled with the
    /// SwiGLU of `mlp` first when given.
    fn finish_attention<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        out: CudaSlice<T>,
        (b, h, lq, d, width): (usize, usize, usize, usize, usize),
        mlp: Option<(&Tensor, usize, usize, usize)>,
        dtype: DType,
    ) -> Result<Tensor> {
        if let Some((hsrc, a_off, b_off, n)) = mlp {
            let (hb, hl, hw, hbs, hrs) = rows3(hsrc, "swiglu input")?;
            if hb != b || hl != lq || a_off + n > hw || b_off + n > hw {
                bail!(
                    "swiglu input {:?} does not fit the attention output",
                    hsrc.dims()
                )
            }
            if hbs != hrs * hl as i64 {
                bail!("swiglu input: batches must be packed")
            }
            let (hs, hlay) = hsrc.storage_and_layout();
            let hv = view::<T>(cuda_of(&hs, "swiglu input")?, hlay)?;
            launch_swiglu::<T>(
                dev,
                &hv,
                hlay.start_offset(),
                hrs,
                a_off,
                b_off,
                &out,
                width as i64,
                h * d,
                n,
                b * lq,
                dtype,
            )?;
        }
        Ok(wrap(out, dev, (b, lq, width)))
    }

    /// Whether every offset, stride and width is a multiple of 8 elements, so that the `_v8`
    /// kernels' 16-byte loads and stores stay aligned (allocations are 256-byte aligned).
    fn all_multiples_of_8(v: &[usize]) -> bool {
        v.iter().all(|x| x % 8 == 0)
    }

    /// The kernel name (`{base}_v8_{dtype}` when `aligned`, else `{base}_{dtype}`; one signature)
    /// and grid for an elementwise op over `rows × n`: the `_v8` one takes 8 elements a thread
    /// along the row and rows along y (grid-stride past 65535), the other one element a thread.
    fn elementwise(
        base: &str,
        dtype: DType,
        aligned: bool,
        rows: usize,
        n: usize,
    ) -> Result<(String, LaunchConfig)> {
        let (name, grid) = if aligned {
            (
                format!("{base}_v8_{}", suffix(dtype)?),
                ((n / 8).div_ceil(256) as u32, rows.min(65535) as u32, 1),
            )
        } else {
            (
                format!("{base}_{}", suffix(dtype)?),
                ((rows * n).div_ceil(256) as u32, 1, 1),
            )
        };
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        Ok((name, cfg))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_swiglu<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        h: &CudaView<'_, T>,
        h_start: usize,
        h_row_stride: i64,
        a_off: usize,
        b_off: usize,
        out: &CudaSlice<T>,
        out_row_stride: i64,
        out_col: usize,
        n: usize,
        rows: usize,
        dtype: DType,
    ) -> Result<()> {
        let aligned = all_multiples_of_8(&[
            h_start,
            h_row_stride as usize,
            a_off,
            b_off,
            out_row_stride as usize,
            out_col,
            n,
        ]);
        let (name, cfg) = elementwise("swiglu", dtype, aligned, rows, n)?;
        let func = load(dev, &MODULE, &name)?;
        let (a, bo, oc, ni, ri) = (
            a_off as i32,
            b_off as i32,
            out_col as i32,
            n as i32,
            rows as i32,
        );
        let mut builder = func.builder();
        builder.arg(h);
        builder.arg(&h_row_stride);
        builder.arg(&a);
        builder.arg(&bo);
        builder.arg(out);
        builder.arg(&out_row_stride);
        builder.arg(&oc);
        builder.arg(&ni);
        builder.arg(&ri);
        // SAFETY: arguments match the kernel's signature; the grid covers every row × n element,
        // with 16-byte accesses only when aligned (checked above).
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }

    pub fn swiglu(h: &Tensor, a_off: usize, b_off: usize, n: usize) -> Result<Tensor> {
        dispatch!(h.dtype(), swiglu_t, h, a_off, b_off, n)
    }

    fn swiglu_t<T: CudaDType + DeviceRepr>(
        h: &Tensor,
        a_off: usize,
        b_off: usize,
        n: usize,
    ) -> Result<Tensor> {
        let (b, l, w, bs, rs) = rows3(h, "swiglu input")?;
        if a_off + n > w || b_off + n > w || bs != rs * l as i64 {
            bail!(
                "swiglu: columns out of range or batches not packed ({:?})",
                h.dims()
            )
        }
        let (hs, hl) = h.storage_and_layout();
        let hc = cuda_of(&hs, "swiglu input")?;
        let dev = hc.device().clone();
        let hv = view::<T>(hc, hl)?;
        // SAFETY: the kernel writes all b·l·n elements.
        let out = unsafe { dev.alloc::<T>(b * l * n) }?;
        launch_swiglu::<T>(
            &dev,
            &hv,
            hl.start_offset(),
            rs,
            a_off,
            b_off,
            &out,
            n as i64,
            0,
            n,
            b * l,
            h.dtype(),
        )?;
        drop(hs);
        Ok(wrap(out, &dev, (b, l, n)))
    }

    pub fn qkv_norm_rope(
        parts: &[super::QkvPart<'_>],
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let Some(first) = parts.first() else {
            bail!("qkv_norm_rope: no input")
        };
        dispatch!(first.qkv.dtype(), qkv_t, parts, heads, cos, sin, eps)
    }

    fn qkv_t<T: CudaDType + DeviceRepr>(
        parts: &[super::QkvPart<'_>],
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let inp = qkv_inputs(parts, cos, sin, "qkv_norm_rope")?;
        let (dev, batch, l_tot) = (&inp.dev, inp.batch, inp.l_tot);
        let plane = batch * heads * l_tot * 128;
        // SAFETY: the token ranges cover 0..l_tot for every batch and head, and each warp writes
        // all 128 elements of its q, k and v rows.
        let out = unsafe { dev.alloc::<T>(3 * plane) }?;
        launch_qkv::<T>(parts, heads, &inp, eps, QkvOut::Planes(&out))?;
        let all = wrap(out, dev, (3, batch, heads, l_tot, 128));
        Ok((all.get(0)?, all.get(1)?, all.get(2)?))
    }

    /// What both QK-norm + RoPE paths check and prepare first: the token ranges' device, batch
    /// and total length, cos/sin `(l_tot, 64)` f32 (contiguous), each range's q/k norm weights
    /// (128 values) in the compute dtype.
    struct QkvInputs {
        dev: CudaDevice,
        batch: usize,
        l_tot: usize,
        cos: Tensor,
        sin: Tensor,
        norms: Vec<(Tensor, Tensor)>,
    }

    fn qkv_inputs(
        parts: &[super::QkvPart<'_>],
        cos: &Tensor,
        sin: &Tensor,
        what: &str,
    ) -> Result<QkvInputs> {
        let d = 128usize;
        let batch = parts[0].qkv.dim(0)?;
        let l_tot: usize = parts.iter().map(|p| p.qkv.dim(1)).sum::<Result<usize>>()?;
        if cos.dims() != [l_tot, d / 2] || sin.dims() != [l_tot, d / 2] {
            bail!(
                "{what}: cos/sin must be ({l_tot}, 64), got {:?}",
                cos.dims()
            )
        }
        if cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
            bail!("{what}: cos/sin must be f32")
        }
        let dtype = parts[0].qkv.dtype();
        let norms = parts
            .iter()
            .enumerate()
            .map(|(i, p)| -> Result<(Tensor, Tensor)> {
                let (q, k) = (p.q_norm.to_dtype(dtype)?, p.k_norm.to_dtype(dtype)?);
                if q.elem_count() != d || k.elem_count() != d {
                    bail!("{what}: part {i}'s q/k norm weights must hold {d} values")
                }
                Ok((q.contiguous()?, k.contiguous()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(QkvInputs {
            dev: device_of(parts[0].qkv, "qkv input")?,
            batch,
            l_tot,
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            norms,
        })
    }

    /// Where the QK-norm + RoPE kernels write: q, k and v as three planes of T
    /// (`qkv_norm_rope_*`), or q and k in e4m3 with the FP8 attention's scalars and v in T
    /// (`qkv_norm_rope_fp8_*`).
    enum QkvOut<'a, T> {
        Planes(&'a CudaSlice<T>),
        Fp8 {
            qk8: &'a CudaSlice<u8>,
            v: &'a CudaSlice<T>,
            scalars: &'a CudaSlice<f32>,
        },
    }

    /// Launches the QK-norm + RoPE kernel of `out` once for each token range of `parts`.
    fn launch_qkv<T: CudaDType + DeviceRepr>(
        parts: &[super::QkvPart<'_>],
        heads: usize,
        inp: &QkvInputs,
        eps: f32,
        out: QkvOut<'_, T>,
    ) -> Result<()> {
        let d = 128usize;
        let (dev, batch, l_tot) = (&inp.dev, inp.batch, inp.l_tot);
        let (cs, cl) = inp.cos.storage_and_layout();
        let (ss, sl) = inp.sin.storage_and_layout();
        let cv = view::<f32>(cuda_of(&cs, "cos")?, cl)?;
        let sv = view::<f32>(cuda_of(&ss, "sin")?, sl)?;
        let dtype = parts[0].qkv.dtype();
        let sfx = suffix(dtype)?;
        let func = match out {
            QkvOut::Planes(_) => load(dev, &MODULE, &format!("qkv_norm_rope_{sfx}"))?,
            QkvOut::Fp8 { .. } => load(dev, &QUANT_MODULE, &format!("qkv_norm_rope_fp8_{sfx}"))?,
        };
        let mut tok_off = 0usize;
        for (i, (part, (wq, wk))) in parts.iter().zip(&inp.norms).enumerate() {
            let (pb, n, w, bs, rs) = rows3(part.qkv, "qkv input")?;
            if pb != batch || w != 3 * heads * d || part.qkv.dtype() != dtype {
                bail!(
                    "qkv_norm_rope: part {i} is {:?} {:?}, expected ({batch}, _, {}) {dtype:?}",
                    part.qkv.dims(),
                    part.qkv.dtype(),
                    3 * heads * d
                )
            }
            let (wqs, wql) = wq.storage_and_layout();
            let (wks, wkl) = wk.storage_and_layout();
            let wqv = view::<T>(cuda_of(&wqs, "query norm")?, wql)?;
            let wkv = view::<T>(cuda_of(&wks, "key norm")?, wkl)?;
            let (ps, pl) = part.qkv.storage_and_layout();
            let pv = view::<T>(cuda_of(&ps, "qkv input")?, pl)?;
            let warps = (batch * n * heads) as u32;
            let cfg = LaunchConfig {
                grid_dim: (warps.div_ceil(8), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (n_i, b_i, h_i, lt_i, off_i) = (
                n as i32,
                batch as i32,
                heads as i32,
                l_tot as i32,
                tok_off as i32,
            );
            let mut builder = func.builder();
            builder.arg(&pv);
            builder.arg(&rs);
            builder.arg(&bs);
            builder.arg(&n_i);
            builder.arg(&b_i);
            builder.arg(&h_i);
            builder.arg(&wqv);
            builder.arg(&wkv);
            builder.arg(&cv);
            builder.arg(&sv);
            match &out {
                QkvOut::Planes(o) => {
                    builder.arg(*o);
                }
                QkvOut::Fp8 { qk8, v, scalars } => {
                    builder.arg(*qk8);
                    builder.arg(*v);
                    builder.arg(*scalars);
                }
            }
            builder.arg(&lt_i);
            builder.arg(&off_i);
            builder.arg(&eps);
            // SAFETY: arguments match the kernel's signature; the grid covers exactly
            // batch·n·heads warps and the kernel skips any beyond (in the fp8 kernel they still
            // join their block's amax).
            unsafe { builder.launch(cfg) }.w()?;
            tok_off += n;
        }
        Ok(())
    }

    pub fn attention_fp8(
        parts: &[super::QkvPart<'_>],
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
        eps: f32,
        mlp: Option<(&Tensor, usize, usize, usize)>,
    ) -> Result<Option<Tensor>> {
        let Some(first) = parts.first() else {
            bail!("attention_fp8: no input")
        };
        dispatch!(
            first.qkv.dtype(),
            attn_fp8_t,
            parts,
            heads,
            cos,
            sin,
            eps,
            mlp
        )
    }

    fn attn_fp8_t<T: CudaDType + DeviceRepr>(
        parts: &[super::QkvPart<'_>],
        heads: usize,
        cos: &Tensor,
        sin: &Tensor,
        eps: f32,
        mlp: Option<(&Tensor, usize, usize, usize)>,
    ) -> Result<Option<Tensor>> {
        let d = 128usize;
        if parts.len() > 2 {
            bail!(
                "attention_fp8 takes one or two token ranges, got {}",
                parts.len()
            )
        }
        let inp = qkv_inputs(parts, cos, sin, "attention_fp8")?;
        let (dev, batch, l_tot) = (inp.dev.clone(), inp.batch, inp.l_tot);
        let dtype = parts[0].qkv.dtype();
        let sfx = suffix(dtype)?;
        let extra = mlp.map(|(_, _, _, n)| n).unwrap_or(0);
        let width = heads * d + extra;
        if width % 8 != 0 || !is_sm90(&dev)? || !super::cudnn::loaded() {
            return Ok(None);
        }
        if !super::cudnn::sdpa_fp8_ready(&dev, (batch, heads, l_tot, l_tot, d))? {
            return Ok(None);
        }
        let plane = batch * heads * l_tot * d;
        // The scalars, 4 floats apart: cuDNN's (cudnn::FP8_SDPA_SLOTS) then our kernels' q and k
        // scales, v's amax and O's descale (cuda/quant.cu's FP8_ATTN_* slots 8..11).
        const SLOTS: usize = super::cudnn::FP8_SDPA_SLOTS + 4;
        // SAFETY: fp8_attn_scales and fp8_attn_quant_v write every slot read before it is read;
        // cuDNN writes the two amax slots.
        let mut scalars = unsafe { dev.alloc::<f32>(4 * SLOTS) }?;
        let norms = &inp.norms;
        let last = &norms[norms.len() - 1];
        {
            let (a, al) = norms[0].0.storage_and_layout();
            let (b, bl) = norms[0].1.storage_and_layout();
            let (c, cl2) = last.0.storage_and_layout();
            let (e, el) = last.1.storage_and_layout();
            let func = load(&dev, &QUANT_MODULE, &format!("fp8_attn_scales_{sfx}"))?;
            let (wq0, wk0) = (
                view::<T>(cuda_of(&a, "q norm")?, al)?,
                view::<T>(cuda_of(&b, "k norm")?, bl)?,
            );
            let (wq1, wk1) = (
                view::<T>(cuda_of(&c, "q norm")?, cl2)?,
                view::<T>(cuda_of(&e, "k norm")?, el)?,
            );
            let mut builder = func.builder();
            builder.arg(&wq0);
            builder.arg(&wk0);
            builder.arg(&wq1);
            builder.arg(&wk1);
            builder.arg(&scalars);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; each weight holds 128 values.
            unsafe { builder.launch(cfg) }.w()?;
        }
        // SAFETY: the token ranges cover 0..l_tot for every batch and head, and each warp
        // writes all 128 elements of its q, k (e4m3) and v rows.
        let qk8 = unsafe { dev.alloc::<u8>(2 * plane) }?;
        let v16 = unsafe { dev.alloc::<T>(plane) }?;
        launch_qkv::<T>(
            parts,
            heads,
            &inp,
            eps,
            QkvOut::Fp8 {
                qk8: &qk8,
                v: &v16,
                scalars: &scalars,
            },
        )?;
        // SAFETY: fp8_attn_quant_v writes all `plane` values.
        let v8 = unsafe { dev.alloc::<u8>(plane) }?;
        {
            let func = load(&dev, &QUANT_MODULE, &format!("fp8_attn_quant_v_{sfx}"))?;
            let n = plane as i64;
            let mut builder = func.builder();
            builder.arg(&v16);
            builder.arg(&n);
            builder.arg(&scalars);
            builder.arg(&v8);
            // SAFETY: arguments match the kernel's signature; plane % 8 == 0 (d = 128).
            unsafe { builder.launch(grid_for(plane / 8)) }.w()?;
        }
        drop(v16);
        // SAFETY: cuDNN writes the whole (b, l, h·d) output.
        let mut o8 = unsafe { dev.alloc::<u8>(plane) }?;
        let ran = {
            let stream = dev.cuda_stream();
            let (qp, _gq) = qk8.device_ptr(&stream);
            let (vp, _gv) = v8.device_ptr(&stream);
            let (op, _go) = o8.device_ptr_mut(&stream);
            let (sp, _gs) = scalars.device_ptr_mut(&stream);
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            super::cudnn::sdpa_fp8(
                &dev,
                (batch, heads, l_tot, l_tot, d),
                scale,
                [qp as _, (qp as usize + plane) as _, vp as _, op as _],
                sp as _,
            )?
        };
        if !ran {
            return Ok(None);
        }
        // SAFETY: fp8_attn_out fills columns 0..H·128 of every row; finish_attention's SwiGLU
        // the rest.
        let out = unsafe { dev.alloc::<T>(batch * l_tot * width) }?;
        {
            let func = load(&dev, &QUANT_MODULE, &format!("fp8_attn_out_{sfx}"))?;
            let (rows, cols, orow) = ((batch * l_tot) as i64, (heads * d) as i64, width as i64);
            let mut builder = func.builder();
            builder.arg(&o8);
            builder.arg(&rows);
            builder.arg(&cols);
            builder.arg(&scalars);
            builder.arg(&out);
            builder.arg(&orow);
            // SAFETY: arguments match the kernel's signature; cols and the row length are
            // multiples of 8 (checked above), so the 16-byte stores stay aligned.
            unsafe { builder.launch(grid_for(batch * l_tot * heads * d / 8)) }.w()?;
        }
        finish_attention::<T>(&dev, out, (batch, heads, l_tot, d, width), mlp, dtype).map(Some)
    }

    pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
        dispatch!(x.dtype(), modulate_t, x, shift, scale, eps)
    }

    /// A `(B, 1, n)` modulation vector's batch stride, checking its last dim is contiguous.
    fn mod_stride(m: &Tensor, b: usize, n: usize, what: &str) -> Result<i64> {
        let (mb, one, mn) = m.dims3()?;
        if (mb, one, mn) != (b, 1, n) || m.stride()[2] != 1 {
            bail!(
                "{what} must be ({b}, 1, {n}) with a contiguous last dim, got {:?}",
                m.dims()
            )
        }
        Ok(m.stride()[0] as i64)
    }

    fn modulate_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (b, l, n) = x.dims3()?;
        let mbs = mod_stride(shift, b, n, "shift")?;
        if mod_stride(scale, b, n, "scale")? != mbs {
            bail!("shift and scale must share a layout")
        }
        let (xs, xl) = x.storage_and_layout();
        let (shs, shl) = shift.storage_and_layout();
        let (scs, scl) = scale.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let shv = view::<T>(cuda_of(&shs, "shift")?, shl)?;
        let scv = view::<T>(cuda_of(&scs, "scale")?, scl)?;
        // SAFETY: one CTA per row writes the whole row.
        let out = unsafe { dev.alloc::<T>(b * l * n) }?;
        // The 16-byte kernel keeps the row in registers: up to 128 threads × 8 chunks × 8.
        let v8 = n <= 8192
            && all_multiples_of_8(&[
                n,
                xl.start_offset(),
                shl.start_offset(),
                scl.start_offset(),
                mbs as usize,
            ]);
        let (name, threads) = if v8 {
            ("modulate_ln_v8", 128)
        } else {
            ("modulate_ln", 256)
        };
        let func = load(&dev, &MODULE, &format!("{name}_{}", suffix(x.dtype())?))?;
        let cfg = LaunchConfig {
            grid_dim: ((b * l) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows, ni) = (l as i32, n as i32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&shv);
        builder.arg(&scv);
        builder.arg(&mbs);
        builder.arg(&out);
        builder.arg(&rows);
        builder.arg(&ni);
        builder.arg(&eps);
        // SAFETY: arguments match the kernel's signature.
        unsafe { builder.launch(cfg) }.w()?;
        drop((xs, shs, scs));
        Ok(wrap(out, &dev, (b, l, n)))
    }

    pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
        dispatch!(x.dtype(), gated_t, x, y, gate)
    }

    fn gated_t<T: CudaDType + DeviceRepr>(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (b, l, n) = x.dims3()?;
        let (yb, yl, yn, ybs, yrs) = rows3(y, "y")?;
        if (yb, yl, yn) != (b, l, n) || ybs != yrs * l as i64 {
            bail!(
                "gated residual: y {:?} does not match x {:?}",
                y.dims(),
                x.dims()
            )
        }
        let gbs = mod_stride(gate, b, n, "gate")?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl2) = y.storage_and_layout();
        let (gs, gl) = gate.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let yv = view::<T>(cuda_of(&ys, "y")?, yl2)?;
        let gv = view::<T>(cuda_of(&gs, "gate")?, gl)?;
        // SAFETY: the kernel writes all b·l·n elements.
        let out = unsafe { dev.alloc::<T>(b * l * n) }?;
        let aligned = all_multiples_of_8(&[
            n,
            xl.start_offset(),
            yl2.start_offset(),
            yrs as usize,
            gl.start_offset(),
            gbs as usize,
        ]);
        let (name, cfg) = elementwise("gated_residual", x.dtype(), aligned, b * l, n)?;
        let func = load(&dev, &MODULE, &name)?;
        let (rpb, ni, ri) = (l as i32, n as i32, (b * l) as i32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&yv);
        builder.arg(&yrs);
        builder.arg(&gv);
        builder.arg(&gbs);
        builder.arg(&out);
        builder.arg(&rpb);
        builder.arg(&ni);
        builder.arg(&ri);
        // SAFETY: arguments match the kernel's signature; the grid covers every element, with
        // 16-byte accesses only when aligned (checked above).
        unsafe { builder.launch(cfg) }.w()?;
        drop((xs, ys, gs));
        Ok(wrap(out, &dev, (b, l, n)))
    }

    // ------------------------------------------------------------------------------------------
    // VAE decoder kernels (cuda/vae.cu)

    const VAE_MODULE: Module = module!("vae");
    const THREADS: u32 = 256;
    /// Threads of a `softmax_rows` block (SOFTMAX_THREADS in cuda/vae.cu).
    const SOFTMAX_THREADS: u32 = 512;

    fn grid_for(items: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (items.div_ceil(THREADS as usize) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `t` contiguous, in `dtype`, with `dims`; named in the error.
    fn check(t: &Tensor, dtype: DType, dims: &[usize], what: &str) -> Result<Tensor> {
        if t.dtype() != dtype || t.dims() != dims {
            bail!(
                "{what}: expected {dims:?} {dtype:?}, got {:?} {:?}",
                t.dims(),
                t.dtype()
            )
        }
        t.contiguous()
    }

    pub fn conv2d(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        geom: super::ConvGeom,
        col_limit: usize,
        path: super::ConvPath,
    ) -> Result<Tensor> {
        dispatch!(x.dtype(), conv2d_t, x, w, bias, res, geom, col_limit, path)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv2d_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        geom: super::ConvGeom,
        col_limit: usize,
        path: super::ConvPath,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let (b, c, h, wd) = x.dims4()?;
        let (cout, cin, kh, kw) = w.dims4()?;
        let super::ConvGeom {
            stride,
            padding: pad,
            upsample: up,
        } = geom;
        if cin != c || stride == 0 || !(up == 1 || up == 2) {
            bail!(
                "conv2d: input {:?}, weight {:?}, {geom:?} (one group, stride ≥ 1, upsample 1 or 2)",
                x.dims(),
                w.dims()
            )
        }
        let (hv, wv) = (h * up + 2 * pad, wd * up + 2 * pad);
        if hv < kh || wv < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than the padded input {hv}x{wv}")
        }
        let (ho, wo) = ((hv - kh) / stride + 1, (wv - kw) / stride + 1);
        let (m, k) = (ho * wo, cin * kh * kw);
        if k > 65535 || h * up > i32::MAX as usize / 2 || wd * up > i32::MAX as usize / 2 {
            bail!("conv2d: {k} im2col rows or the image size exceed the kernel's grid")
        }
        let x = x.contiguous()?;
        let w2 = check(w, dtype, &[cout, cin, kh, kw], "conv2d weight")?.reshape((cout, k))?;
        let bias = bias
            .map(|t| check(t, dtype, &[cout], "conv2d bias"))
            .transpose()?;
        let res = res
            .map(|t| check(t, dtype, &[b, cout, ho, wo], "conv2d residual"))
            .transpose()?;
        let direct = kh == 1 && kw == 1 && stride == 1 && pad == 0 && up == 1;
        let rows_per = if direct {
            ho
        } else {
            (col_limit / (k * wo)).clamp(1, ho)
        };
        let dev = match &*x.storage_and_layout().0 {
            Storage::Cuda(s) => s.device().clone(),
            _ => bail!("conv2d: x must be on a CUDA device"),
        };
        // SAFETY: the epilogue writes every (image, channel, pixel): the chunks cover all rows.
        let out = unsafe { dev.alloc::<T>(b * cout * m) }?;
        if !direct && path != super::ConvPath::Ours {
            // cuDNN's convolution into a scratch (B, Cout, M), then our epilogue adds bias and
            // residual as it does to each im2col chunk's GEMM.
            let xin = if up == 2 {
                x.upsample_nearest2d(h * 2, wd * 2)?
            } else {
                x.clone()
            };
            let wc = w.contiguous()?;
            // SAFETY: cuDNN writes every element of the (B, Cout, Ho, Wo) result when it runs;
            // when it does not, the buffer is dropped unread.
            let mut g = unsafe { dev.alloc::<T>(b * cout * m) }?;
            let ran = {
                let stream = dev.cuda_stream();
                let (xs, xl) = xin.storage_and_layout();
                let (ws, wl) = wc.storage_and_layout();
                let xv = view::<T>(cuda_of(&xs, "x")?, xl)?;
                let wv = view::<T>(cuda_of(&ws, "conv2d weight")?, wl)?;
                let (xp, _gx) = xv.device_ptr(&stream);
                let (wp, _gw) = wv.device_ptr(&stream);
                let (gp, _gg) = g.device_ptr_mut(&stream);
                super::cudnn::conv2d(
                    &dev,
                    dtype,
                    (b, c, h * up, wd * up),
                    (cout, kh, kw),
                    (ho, wo),
                    stride,
                    pad,
                    [xp as _, wp as _, gp as _],
                )?
            };
            if ran {
                let g = wrap(g, &dev, (b, cout, m));
                for bi in 0..b {
                    conv_epilogue::<T>(
                        &dev,
                        &g.get(bi)?,
                        bias.as_ref(),
                        res.as_ref(),
                        &out,
                        (bi * cout * m) as i64,
                        cout,
                        m,
                        0,
                        m,
                    )?;
                }
                return Ok(wrap(out, &dev, (b, cout, ho, wo)));
            }
            if path == super::ConvPath::Cudnn {
                bail!(
                    "conv2d: cuDNN did not run {:?} * {:?} ({})",
                    x.dims(),
                    w.dims(),
                    super::cudnn::describe()
                )
            }
        }
        let sfx = suffix(dtype)?;
        let v8 = wo % 8 == 0;
        let im2col = load(
            &dev,
            &VAE_MODULE,
            &format!("im2col_t_{}_{sfx}", if v8 { "v8" } else { "v1" }),
        )?;
        for bi in 0..b {
            let mut r0 = 0;
            while r0 < ho {
                let rows = rows_per.min(ho - r0);
                let mc = rows * wo;
                let g = if direct {
                    w2.matmul(&x.get(bi)?.reshape((c, m))?)?
                } else {
                    if mc > i32::MAX as usize {
                        bail!("conv2d: an im2col chunk of {mc} pixels exceeds the kernel's 32-bit index")
                    }
                    // SAFETY: the grid covers all k·mc elements (mc is a multiple of 8 for v8).
                    let col = unsafe { dev.alloc::<T>(k * mc) }?;
                    {
                        let (xs, xl) = x.storage_and_layout();
                        let xv = view::<T>(cuda_of(&xs, "x")?, xl)?;
                        let xb = xv.slice(bi * c * h * wd..);
                        let per = if v8 { 8 } else { 1 };
                        let cfg = LaunchConfig {
                            grid_dim: (mc.div_ceil(per * THREADS as usize) as u32, k as u32, 1),
                            block_dim: (THREADS, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        let a: [i32; 10] = [
                            h as i32,
                            wd as i32,
                            up as i32,
                            kh as i32,
                            kw as i32,
                            stride as i32,
                            pad as i32,
                            wo as i32,
                            r0 as i32,
                            rows as i32,
                        ];
                        let mut builder = im2col.builder();
                        builder.arg(&xb);
                        builder.arg(&col);
                        for v in &a {
                            builder.arg(v);
                        }
                        // SAFETY: arguments match the kernel's signature; reads stay inside
                        // image `bi`, writes inside `col`.
                        unsafe { builder.launch(cfg) }.w()?;
                    }
                    w2.matmul(&wrap(col, &dev, (k, mc)))?
                };
                conv_epilogue::<T>(
                    &dev,
                    &g,
                    bias.as_ref(),
                    res.as_ref(),
                    &out,
                    (bi * cout * m) as i64,
                    cout,
                    m,
                    r0 * wo,
                    mc,
                )?;
                r0 += rows;
            }
        }
        Ok(wrap(out, &dev, (b, cout, ho, wo)))
    }

    /// `out[off + n·m + m0 + j] = g[n][j] + bias[n] + res[off + n·m + m0 + j]`.
    #[allow(clippy::too_many_arguments)]
    fn conv_epilogue<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        g: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        out: &CudaSlice<T>,
        off: i64,
        cout: usize,
        m: usize,
        m0: usize,
        mc: usize,
    ) -> Result<()> {
        let g = g.contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "conv output")?, gl)?;
        let bias_guard = bias.map(|t| t.storage_and_layout());
        let res_guard = res.map(|t| t.storage_and_layout());
        let bv = match &bias_guard {
            Some((s, l)) => Some(view::<T>(cuda_of(s, "conv bias")?, l)?),
            None => None,
        };
        let (rv, res_aligned) = match &res_guard {
            Some((s, l)) => (
                Some(view::<T>(cuda_of(s, "conv residual")?, l)?),
                (l.start_offset() % 8 == 0),
            ),
            None => (None, true),
        };
        let v8 = mc % 8 == 0
            && (m % 8 == 0)
            && (m0 % 8 == 0)
            && (gl.start_offset() % 8 == 0)
            && res_aligned;
        let per = if v8 { 8 } else { 1 };
        let func = load(
            dev,
            &VAE_MODULE,
            &format!(
                "conv_epilogue_{}_{}",
                if v8 { "v8" } else { "v1" },
                suffix(g.dtype())?
            ),
        )?;
        let cfg = grid_for((cout * mc).div_ceil(per));
        let (has_bias, has_res) = (i32::from(bv.is_some()), i32::from(rv.is_some()));
        let (cout_i, m_i, m0_i, mc_i) = (cout as i32, m as i64, m0 as i64, mc as i64);
        let mut builder = func.builder();
        builder.arg(&gv);
        // Absent operands point at `g`; the flags keep the kernel from reading them.
        builder.arg(bv.as_ref().unwrap_or(&gv));
        builder.arg(&has_bias);
        builder.arg(rv.as_ref().unwrap_or(&gv));
        builder.arg(&off);
        builder.arg(&has_res);
        builder.arg(out);
        builder.arg(&off);
        builder.arg(&cout_i);
        builder.arg(&m_i);
        builder.arg(&m0_i);
        builder.arg(&mc_i);
        // SAFETY: arguments match the kernel's signature; the grid covers cout·mc elements.
        unsafe { builder.launch(cfg) }.w()?;
        drop((gs, bias_guard, res_guard));
        Ok(())
    }

    pub fn group_norm(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        dispatch!(x.dtype(), group_norm_t, x, gamma, beta, groups, eps, silu)
    }

    fn group_norm_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let dims = x.dims().to_vec();
        if dims.len() < 3 || groups == 0 || dims[1] % groups != 0 {
            bail!("group norm: input {dims:?} with {groups} groups")
        }
        let (b, c) = (dims[0], dims[1]);
        let hw: usize = dims[2..].iter().product();
        let cpg = c / groups;
        let n = cpg * hw;
        let ng = b * groups;
        if n == 0 || ng > 65535 {
            bail!("group norm: input {dims:?} is empty or has too many groups")
        }
        let x = x.contiguous()?;
        let gamma = check(gamma, dtype, &[c], "group norm weight")?;
        let beta = check(beta, dtype, &[c], "group norm bias")?;
        let (xs, xl) = x.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let (gs, gl) = gamma.storage_and_layout();
        let (bs, bl) = beta.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "group norm weight")?, gl)?;
        let bv = view::<T>(cuda_of(&bs, "group norm bias")?, bl)?;
        let aligned = xl.start_offset() % 8 == 0;
        let sfx = suffix(dtype)?;

        // Statistics: about four blocks per SM over all groups, at least 4096 elements a block.
        let splits = 528usize.div_ceil(ng).clamp(1, n.div_ceil(4096).max(1));
        let chunk = n.div_ceil(splits).next_multiple_of(8);
        let splits = n.div_ceil(chunk);
        let v8 = aligned && (n % 8 == 0);
        // SAFETY: every block writes its two partial sums; every group thread its two stats.
        let part = unsafe { dev.alloc::<f32>(ng * splits * 2) }?;
        let stats = unsafe { dev.alloc::<f32>(ng * 2) }?;
        let func = load(
            &dev,
            &VAE_MODULE,
            &format!("gn_stats_{}_{sfx}", if v8 { "v8" } else { "v1" }),
        )?;
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, ng as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_i, chunk_i) = (n as i64, chunk as i64);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&part);
        builder.arg(&n_i);
        builder.arg(&chunk_i);
        // SAFETY: arguments match the kernel's signature; each group's range lies in x.
        unsafe { builder.launch(cfg) }.w()?;

        let func = load(&dev, &VAE_MODULE, &format!("gn_finalize_{sfx}"))?;
        let cfg = LaunchConfig {
            grid_dim: (ng.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ng_i, splits_i, eps_f) = (ng as i32, splits as i32, eps as f32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&part);
        builder.arg(&stats);
        builder.arg(&ng_i);
        builder.arg(&splits_i);
        builder.arg(&n_i);
        builder.arg(&eps_f);
        // SAFETY: arguments match the kernel's signature.
        unsafe { builder.launch(cfg) }.w()?;

        let total = b * c * hw;
        let v8 = aligned && (hw % 8 == 0);
        let per = if v8 { 8 } else { 1 };
        // SAFETY: the apply kernel writes all `total` elements.
        let out = unsafe { dev.alloc::<T>(total) }?;
        let func = load(
            &dev,
            &VAE_MODULE,
            &format!("gn_apply_{}_{sfx}", if v8 { "v8" } else { "v1" }),
        )?;
        let cfg = grid_for(total.div_ceil(per));
        let (total_i, hw_i, c_i, cpg_i, silu_i) = (
            total as i64,
            hw as i64,
            c as i32,
            cpg as i32,
            i32::from(silu),
        );
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&stats);
        builder.arg(&gv);
        builder.arg(&bv);
        builder.arg(&out);
        builder.arg(&total_i);
        builder.arg(&hw_i);
        builder.arg(&c_i);
        builder.arg(&cpg_i);
        builder.arg(&silu_i);
        // SAFETY: arguments match the kernel's signature; `total` bounds every index.
        unsafe { builder.launch(cfg) }.w()?;
        drop((xs, gs, bs));
        Ok(wrap(out, &dev, dims))
    }

    pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
        dispatch!(x.dtype(), softmax_t, x, scale)
    }

    fn softmax_t<T: CudaDType + DeviceRepr>(x: &Tensor, scale: f64) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / cols.max(1);
        if cols == 0 || rows == 0 || rows > i32::MAX as usize {
            bail!("softmax: input {dims:?} is empty or has too many rows")
        }
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let v8 = xl.start_offset() % 8 == 0 && cols % 8 == 0;
        // SAFETY: the kernel writes every element of every row.
        let out = unsafe { dev.alloc::<T>(rows * cols) }?;
        let func = load(
            &dev,
            &VAE_MODULE,
            &format!(
                "softmax_rows_{}_{}",
                if v8 { "v8" } else { "v1" },
                suffix(x.dtype())?
            ),
        )?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (SOFTMAX_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (cols_i, scale_f) = (cols as i64, scale as f32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&out);
        builder.arg(&cols_i);
        builder.arg(&scale_f);
        // SAFETY: arguments match the kernel's signature; `cols` bounds every row.
        unsafe { builder.launch(cfg) }.w()?;
        drop(xs);
        Ok(wrap(out, &dev, dims))
    }

    // ------------------------------------------------------------------------------------------
    // The channels-last decoder (cuDNN convolutions, cuda/vae.cu's *_nhwc kernels)

    fn device_of(t: &Tensor, what: &str) -> Result<CudaDevice> {
        match &*t.storage_and_layout().0 {
            Storage::Cuda(s) => Ok(s.device().clone()),
            _ => bail!("{what} must be on a CUDA device"),
        }
    }

    pub fn conv2d_nhwc(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        geom: super::ConvGeom,
    ) -> Result<Option<Tensor>> {
        dispatch!(x.dtype(), conv2d_nhwc_t, x, w, bias, res, geom)
    }

    fn conv2d_nhwc_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        geom: super::ConvGeom,
    ) -> Result<Option<Tensor>> {
        if !super::cudnn::loaded() {
            return Ok(None);
        }
        let dtype = x.dtype();
        let (b, h, wd, c) = x.dims4()?;
        let (cout, kh, kw, cin) = w.dims4()?;
        let super::ConvGeom {
            stride,
            padding: pad,
            upsample: up,
        } = geom;
        if cin != c || stride == 0 || !(up == 1 || up == 2) || c % 8 != 0 || cout % 8 != 0 {
            bail!(
                "conv2d_nhwc: input {:?}, weight {:?}, {geom:?} (channels multiples of 8, \
                 stride ≥ 1, upsample 1 or 2)",
                x.dims(),
                w.dims()
            )
        }
        let (hi, wi) = (h * up, wd * up);
        let (hv, wv) = (hi + 2 * pad, wi + 2 * pad);
        if hv < kh || wv < kw {
            bail!("conv2d_nhwc: kernel {kh}x{kw} larger than the padded input {hv}x{wv}")
        }
        let (ho, wo) = ((hv - kh) / stride + 1, (wv - kw) / stride + 1);
        let x = if up == 2 {
            upsample2x_nhwc(x)?
        } else {
            x.contiguous()?
        };
        let w = check(w, dtype, &[cout, kh, kw, cin], "conv2d_nhwc weight")?;
        let bias = bias
            .map(|t| check(t, dtype, &[cout], "conv2d_nhwc bias"))
            .transpose()?;
        let res = res
            .map(|t| check(t, dtype, &[b, ho, wo, cout], "conv2d_nhwc residual"))
            .transpose()?;
        let dev = device_of(&x, "x")?;
        let total = b * ho * wo * cout;
        // SAFETY: cuDNN writes every element when it runs; when it does not, the buffer is
        // dropped unread.
        let mut y = unsafe { dev.alloc::<T>(total) }?;
        let ran = {
            let stream = dev.cuda_stream();
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let xv = view::<T>(cuda_of(&xs, "x")?, xl)?;
            let wv = view::<T>(cuda_of(&ws, "conv2d_nhwc weight")?, wl)?;
            let (xp, _gx) = xv.device_ptr(&stream);
            let (wp, _gw) = wv.device_ptr(&stream);
            let (yp, _gy) = y.device_ptr_mut(&stream);
            let bg = bias.as_ref().map(|t| t.storage_and_layout());
            let rg = res.as_ref().map(|t| t.storage_and_layout());
            let bv = match &bg {
                Some((s, l)) => Some(view::<T>(cuda_of(s, "conv2d_nhwc bias")?, l)?),
                None => None,
            };
            let rv = match &rg {
                Some((s, l)) => Some(view::<T>(cuda_of(s, "conv2d_nhwc residual")?, l)?),
                None => None,
            };
            let bp = bv.as_ref().map(|v| v.device_ptr(&stream));
            let rp = rv.as_ref().map(|v| v.device_ptr(&stream));
            let null = std::ptr::null_mut();
            super::cudnn::conv2d_nhwc(
                &dev,
                dtype,
                (b, c, hi, wi),
                (cout, kh, kw),
                (ho, wo),
                stride,
                pad,
                [
                    xp as _,
                    wp as _,
                    yp as _,
                    bp.as_ref().map_or(null, |(p, _)| *p as _),
                    rp.as_ref().map_or(null, |(p, _)| *p as _),
                ],
            )?
        };
        let y = wrap(y, &dev, (b, ho, wo, cout));
        match ran {
            None => Ok(None),
            Some(true) => Ok(Some(y)),
            Some(false) if bias.is_none() && res.is_none() => Ok(Some(y)),
            Some(false) => bias_res_nhwc::<T>(&dev, &y, bias.as_ref(), res.as_ref()).map(Some),
        }
    }

    /// `g + bias (over the last axis) + res`, one pass.
    fn bias_res_nhwc<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        g: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
    ) -> Result<Tensor> {
        let total = g.elem_count();
        let c = *g.dims().last().unwrap_or(&0);
        let (gs, gl) = g.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "conv output")?, gl)?;
        let bg = bias.map(|t| t.storage_and_layout());
        let rg = res.map(|t| t.storage_and_layout());
        let bv = match &bg {
            Some((s, l)) => Some(view::<T>(cuda_of(s, "conv bias")?, l)?),
            None => None,
        };
        let rv = match &rg {
            Some((s, l)) => Some(view::<T>(cuda_of(s, "conv residual")?, l)?),
            None => None,
        };
        // SAFETY: the kernel writes all `total` elements (total and c multiples of 8).
        let out = unsafe { dev.alloc::<T>(total) }?;
        let func = load(
            dev,
            &VAE_MODULE,
            &format!("bias_res_nhwc_{}", suffix(g.dtype())?),
        )?;
        let (hb, hr, total_i, c_i) = (
            i32::from(bv.is_some()),
            i32::from(rv.is_some()),
            total as i64,
            c as i32,
        );
        let mut builder = func.builder();
        builder.arg(&gv);
        builder.arg(bv.as_ref().unwrap_or(&gv));
        builder.arg(&hb);
        builder.arg(rv.as_ref().unwrap_or(&gv));
        builder.arg(&hr);
        builder.arg(&out);
        builder.arg(&total_i);
        builder.arg(&c_i);
        // SAFETY: arguments match the kernel's signature; `total` bounds every index.
        unsafe { builder.launch(grid_for(total / 8)) }.w()?;
        drop((gs, bg, rg));
        Ok(wrap(out, dev, g.dims()))
    }

    pub fn upsample2x_nhwc(x: &Tensor) -> Result<Tensor> {
        dispatch!(x.dtype(), upsample2x_nhwc_t, x)
    }

    fn upsample2x_nhwc_t<T: CudaDType + DeviceRepr>(x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        if c % 8 != 0 || h > i32::MAX as usize / 2 || w > i32::MAX as usize / 2 {
            bail!(
                "upsample2x_nhwc: input {:?} (channels a multiple of 8)",
                x.dims()
            )
        }
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let total = b * 4 * h * w * c;
        // SAFETY: the kernel writes all `total` elements.
        let out = unsafe { dev.alloc::<T>(total) }?;
        let func = load(
            &dev,
            &VAE_MODULE,
            &format!("upsample2x_nhwc_{}", suffix(x.dtype())?),
        )?;
        let (total_i, h_i, w_i, c_i) = (total as i64, h as i32, w as i32, c as i32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&out);
        builder.arg(&total_i);
        builder.arg(&h_i);
        builder.arg(&w_i);
        builder.arg(&c_i);
        // SAFETY: arguments match the kernel's signature; `total` bounds every index.
        unsafe { builder.launch(grid_for(total / 8)) }.w()?;
        drop(xs);
        Ok(wrap(out, &dev, (b, 2 * h, 2 * w, c)))
    }

    pub fn group_norm_nhwc(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        dispatch!(
            x.dtype(),
            group_norm_nhwc_t,
            x,
            gamma,
            beta,
            groups,
            eps,
            silu
        )
    }

    fn group_norm_nhwc_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let dims = x.dims().to_vec();
        let c = *dims.last().unwrap_or(&0);
        let b = dims.first().copied().unwrap_or(0);
        let hw: usize = dims[1..dims.len().saturating_sub(1)].iter().product();
        if dims.len() < 3
            || groups == 0
            || groups > 64
            || c % groups != 0
            || c % 8 != 0
            || c > 2048
            || (THREADS as usize) % (c / 8) != 0
            || b * groups > i32::MAX as usize
            || b > 65535
            || hw == 0
        {
            bail!(
                "group norm (channels last): input {dims:?} with {groups} groups (channels a \
                 multiple of 8 dividing 2048, at most 64 groups)"
            )
        }
        let cpg = c / groups;
        let x = x.contiguous()?;
        let gamma = check(gamma, dtype, &[c], "group norm weight")?;
        let beta = check(beta, dtype, &[c], "group norm bias")?;
        let (xs, xl) = x.storage_and_layout();
        let xc = cuda_of(&xs, "x")?;
        let dev = xc.device().clone();
        let xv = view::<T>(xc, xl)?;
        let (gs, gl) = gamma.storage_and_layout();
        let (bs, bl) = beta.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "group norm weight")?, gl)?;
        let bv = view::<T>(cuda_of(&bs, "group norm bias")?, bl)?;
        let sfx = suffix(dtype)?;
        // About four blocks per SM over the batch, at least 256 pixels a block.
        let splits = 528usize.div_ceil(b).clamp(1, hw.div_ceil(256).max(1));
        let chunk = hw.div_ceil(splits);
        let splits = hw.div_ceil(chunk);
        let ng = b * groups;
        // SAFETY: every block writes its groups' partial sums; every (image, group) its stats.
        let part = unsafe { dev.alloc::<f32>(ng * splits * 2) }?;
        let stats = unsafe { dev.alloc::<f32>(ng * 2) }?;
        let func = load(&dev, &VAE_MODULE, &format!("gn_nhwc_stats_{sfx}"))?;
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, b as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (hw_i, c_i, cpg_i, chunk_i) = (hw as i64, c as i32, cpg as i32, chunk as i64);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&part);
        builder.arg(&hw_i);
        builder.arg(&c_i);
        builder.arg(&cpg_i);
        builder.arg(&chunk_i);
        // SAFETY: arguments match the kernel's signature; reads stay inside each image.
        unsafe { builder.launch(cfg) }.w()?;

        let func = load(&dev, &VAE_MODULE, &format!("gn_nhwc_finalize_{sfx}"))?;
        let cfg = LaunchConfig {
            grid_dim: (ng.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ng_i, g_i, splits_i, eps_f) = (ng as i32, groups as i32, splits as i32, eps as f32);
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&part);
        builder.arg(&stats);
        builder.arg(&ng_i);
        builder.arg(&g_i);
        builder.arg(&splits_i);
        builder.arg(&hw_i);
        builder.arg(&c_i);
        builder.arg(&cpg_i);
        builder.arg(&eps_f);
        // SAFETY: arguments match the kernel's signature.
        unsafe { builder.launch(cfg) }.w()?;

        let total = b * hw * c;
        // SAFETY: the apply kernel writes all `total` elements.
        let out = unsafe { dev.alloc::<T>(total) }?;
        let func = load(&dev, &VAE_MODULE, &format!("gn_nhwc_apply_{sfx}"))?;
        let (total_i, hwc_i, silu_i) = (total as i64, (hw * c) as i64, i32::from(silu));
        let mut builder = func.builder();
        builder.arg(&xv);
        builder.arg(&stats);
        builder.arg(&gv);
        builder.arg(&bv);
        builder.arg(&out);
        builder.arg(&total_i);
        builder.arg(&hwc_i);
        builder.arg(&c_i);
        builder.arg(&cpg_i);
        builder.arg(&silu_i);
        // SAFETY: arguments match the kernel's signature; `total` bounds every index.
        unsafe { builder.launch(grid_for(total / 8)) }.w()?;
        drop((xs, gs, bs));
        Ok(wrap(out, &dev, dims))
    }

    // ------------------------------------------------------------------------------------------
    // fp8 weights (cuda/quant.cu)

    const QUANT_MODULE: Module = module!("quant");

    pub fn fp8_dequant(w: &Tensor, scale: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::BF16 => fp8_dequant_t::<bf16>(w, scale, dtype, "bf16"),
            DType::F16 => fp8_dequant_t::<f16>(w, scale, dtype, "f16"),
            DType::F32 => fp8_dequant_t::<f32>(w, scale, dtype, "f32"),
            d => bail!("fp8 weights dequantize to bf16, f16 or f32, not {d:?}"),
        }
    }

    fn fp8_dequant_t<T: CudaDType + DeviceRepr>(
        w: &Tensor,
        scale: Option<&Tensor>,
        dtype: DType,
        sfx: &str,
    ) -> Result<Tensor> {
        if w.dtype() != DType::F8E4M3 {
            bail!("fp8 dequant: the weight is {:?}, not fp8 e4m3", w.dtype())
        }
        let w = w.contiguous()?;
        let (rows, cols) = w.dims2()?;
        // One value for the whole tensor (ComfyUI's scaled-fp8 files) stands for every row.
        let scale = scale
            .map(|s| {
                let s = if s.elem_count() == 1 {
                    s.reshape(1)?.broadcast_as(rows)?
                } else {
                    s.clone()
                };
                check(&s, dtype, &[rows], "fp8 scale")
            })
            .transpose()?;
        let (ws, wl) = w.storage_and_layout();
        let wc = cuda_of(&ws, "fp8 weight")?;
        let dev = wc.device().clone();
        let wv = match &wc.slice {
            candle_core::cuda_backend::CudaStorageSlice::F8E4M3(s) => s.slice(wl.start_offset()..),
            _ => bail!("fp8 dequant: the weight's storage is not fp8"),
        };
        let scale_guard = scale.as_ref().map(|s| s.storage_and_layout());
        let sv = match &scale_guard {
            Some((s, l)) => Some(view::<T>(cuda_of(s, "fp8 scale")?, l)?),
            None => None,
        };
        let n = rows * cols;
        if n == 0 {
            // Nothing to launch (a zero-size grid is a launch error).
            return Tensor::zeros((rows, cols), dtype, w.device());
        }
        let vec4 = (cols % 4 == 0) && (wl.start_offset() % 4 == 0);
        // SAFETY: the kernel writes all `rows · cols` elements.
        let out = unsafe { dev.alloc::<T>(n) }?;
        let func = load(&dev, &QUANT_MODULE, &format!("fp8_dequant_{sfx}"))?;
        let cfg = grid_for(if vec4 { n / 4 } else { n });
        let (has_scale, rows_i, cols_i, vec4_i) = (
            i32::from(sv.is_some()),
            rows as i64,
            cols as i64,
            i32::from(vec4),
        );
        let mut builder = func.builder();
        builder.arg(&wv);
        // An absent scale points at the output; `has_scale` keeps the kernel from reading it.
        match &sv {
            Some(v) => builder.arg(v),
            None => builder.arg(&out),
        };
        builder.arg(&has_scale);
        builder.arg(&out);
        builder.arg(&rows_i);
        builder.arg(&cols_i);
        builder.arg(&vec4_i);
        // SAFETY: arguments match the kernel's signature; `rows · cols` bounds every index.
        unsafe { builder.launch(cfg) }.w()?;
        drop((ws, scale_guard));
        Ok(wrap(out, &dev, (rows, cols)))
    }

    /// Each row of a `(rows, cols)` f32 (a weight at load) or bf16/f16 (activations before an
    /// FP8 GEMM) matrix in fp8 e4m3 with its f32 scale.
    pub fn fp8_quantize_rows(w: &Tensor) -> Result<(Tensor, Tensor)> {
        match w.dtype() {
            DType::F32 => fp8_quantize_rows_t::<f32>(w, "f32"),
            DType::BF16 => fp8_quantize_rows_t::<bf16>(w, "bf16"),
            DType::F16 => fp8_quantize_rows_t::<f16>(w, "f16"),
            d => bail!("fp8 quantize takes f32, bf16 or f16, not {d:?}"),
        }
    }

    fn fp8_quantize_rows_t<T: CudaDType + DeviceRepr>(
        w: &Tensor,
        sfx: &str,
    ) -> Result<(Tensor, Tensor)> {
        let (rows, cols) = w.dims2()?;
        if rows * cols == 0 {
            bail!("fp8 quantize: the matrix {:?} is empty", w.dims())
        }
        let w = w.contiguous()?;
        let (ws, wl) = w.storage_and_layout();
        let wc = cuda_of(&ws, "fp8 quantize input")?;
        let dev = wc.device().clone();
        let wv = view::<T>(wc, wl)?;
        // SAFETY: one block per row writes the row's scale and all its `cols` elements.
        let q = unsafe { dev.alloc::<float8::F8E4M3>(rows * cols) }?;
        let scale = unsafe { dev.alloc::<f32>(rows) }?;
        let func = load(&dev, &QUANT_MODULE, &format!("fp8_quant_rows_{sfx}"))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let cols_i = cols as i64;
        let mut builder = func.builder();
        builder.arg(&wv);
        builder.arg(&q);
        builder.arg(&scale);
        builder.arg(&cols_i);
        // SAFETY: arguments match the kernel's signature; `cols` bounds every row's index.
        unsafe { builder.launch(cfg) }.w()?;
        drop(ws);
        Ok((wrap(q, &dev, (rows, cols)), wrap(scale, &dev, rows)))
    }

    // ------------------------------------------------------------------------------------------
    // GGUF block-quantized weights (cuda/gguf.cu)

    const GGUF_MODULE: Module = module!("gguf");

    pub fn gguf_dequant(
        blocks: &Tensor,
        kind: candle_core::quantized::GgmlDType,
        (rows, cols): (usize, usize),
        dtype: DType,
    ) -> Result<Tensor> {
        if rows * cols == 0 && matches!(dtype, DType::BF16 | DType::F16 | DType::F32) {
            return Tensor::zeros((rows, cols), dtype, blocks.device());
        }
        match dtype {
            DType::BF16 => gguf_dequant_t::<bf16>(blocks, kind, rows, cols, "bf16"),
            DType::F16 => gguf_dequant_t::<f16>(blocks, kind, rows, cols, "f16"),
            DType::F32 => gguf_dequant_t::<f32>(blocks, kind, rows, cols, "f32"),
            d => bail!("GGUF weights dequantize to bf16, f16 or f32, not {d:?}"),
        }
    }

    fn gguf_dequant_t<T: CudaDType + DeviceRepr>(
        blocks: &Tensor,
        kind: candle_core::quantized::GgmlDType,
        rows: usize,
        cols: usize,
        sfx: &str,
    ) -> Result<Tensor> {
        use candle_core::quantized::GgmlDType as G;
        let name = match kind {
            G::Q8_0 => "q8_0",
            G::Q4_0 => "q4_0",
            G::Q4K => "q4_k",
            G::Q5K => "q5_k",
            G::Q6K => "q6_k",
            k => bail!("our GGUF kernels take Q4_0, Q8_0, Q4_K, Q5_K and Q6_K, not {k:?}"),
        };
        let (bs, ts) = (kind.block_size(), kind.type_size());
        if cols % bs != 0 {
            bail!("GGUF {kind:?}: rows of {cols} are not whole blocks of {bs}")
        }
        let bytes = rows * (cols / bs) * ts;
        let blocks = check(blocks, DType::U8, &[bytes], "GGUF blocks")?;
        let (gs, gl) = blocks.storage_and_layout();
        let gc = cuda_of(&gs, "GGUF blocks")?;
        let dev = gc.device().clone();
        let gv = view::<u8>(gc, gl)?;
        let n = rows * cols;
        // SAFETY: each of the `n / 8` items writes its 8 elements (block sizes are multiples of 8).
        let out = unsafe { dev.alloc::<T>(n) }?;
        let func = load(&dev, &GGUF_MODULE, &format!("gguf_{name}_{sfx}"))?;
        let items = (n / 8) as i64;
        let mut builder = func.builder();
        builder.arg(&gv);
        builder.arg(&out);
        builder.arg(&items);
        // SAFETY: arguments match the kernel's signature; `items` bounds every block and output.
        unsafe { builder.launch(grid_for(n / 8)) }.w()?;
        drop(gs);
        Ok(wrap(out, &dev, (rows, cols)))
    }

    // ------------------------------------------------------------------------------------------
    // FP8 GEMMs through cuBLASLt

    use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys as lts};
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};

    /// A cuBLASLt handle and workspace for one stream (created on first use, kept for the
    /// process like the stream): GEMMs on different streams may run at once, so each stream has
    /// a workspace of its own.
    struct LtState {
        handle: lts::cublasLtHandle_t,
        workspace: CudaSlice<u8>,
    }
    // SAFETY: the handle is only used under the mutex below, on the context's own stream.
    unsafe impl Send for LtState {}

    const LT_WORKSPACE: usize = 32 << 20;

    fn with_lt<R>(dev: &CudaDevice, f: impl FnOnce(&mut LtState) -> Result<R>) -> Result<R> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static STATES: OnceLock<Mutex<HashMap<usize, LtState>>> = OnceLock::new();
        let stream = dev.cuda_stream();
        let key = stream.cu_stream() as usize;
        let mut map = STATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let state = match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                stream.context().bind_to_thread().w()?;
                let handle = lt::create_handle().map_err(|e| lt_err("handle", e))?;
                // SAFETY: scratch memory cuBLASLt may use as it likes.
                let workspace = unsafe { dev.alloc::<u8>(LT_WORKSPACE) }?;
                slot.insert(LtState { handle, workspace })
            }
        };
        f(state)
    }

    fn lt_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("cuBLASLt {what}: {e:?}"))
    }

    pub fn fp8_linear_supported(t: &Tensor) -> bool {
        let candle_core::Device::Cuda(dev) = t.device() else {
            return false;
        };
        if !super::supported(t) || !is_sm90(dev).unwrap_or(false) {
            return false;
        }
        // One tiny GEMM a context tells whether this cuBLASLt takes FP8 with row scales here;
        // the answer is kept whatever it is (callers fall back to a bf16 GEMM on `false`, and on
        // an error of a later call too).
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static PROBED: OnceLock<Mutex<HashMap<usize, bool>>> = OnceLock::new();
        let key = std::sync::Arc::as_ptr(dev.cuda_stream().context()) as usize;
        let probed = PROBED.get_or_init(Default::default);
        if let Some(&ok) = probed.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return ok;
        }
        let probe = (|| -> Result<()> {
            let x = Tensor::ones((16, 32), DType::BF16, t.device())?;
            let (wq, ws) = fp8_quantize_rows(&Tensor::ones((16, 32), DType::F32, t.device())?)?;
            fp8_linear(&x, &wq, Some(&ws))?;
            Ok(())
        })();
        let ok = probe.is_ok();
        probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, ok);
        ok
    }

    pub fn fp8_linear(x: &Tensor, w: &Tensor, w_scale: Option<&Tensor>) -> Result<Tensor> {
        dispatch!(x.dtype(), fp8_linear_t, x, w, w_scale)
    }

    fn fp8_linear_t<T: CudaDType + DeviceRepr>(
        x: &Tensor,
        w: &Tensor,
        w_scale: Option<&Tensor>,
    ) -> Result<Tensor> {
        if w.dtype() != DType::F8E4M3 {
            bail!("fp8 linear: the weight is {:?}, not fp8 e4m3", w.dtype())
        }
        let (n, k) = w.dims2()?;
        let dims = x.dims().to_vec();
        if dims.last() != Some(&k) {
            bail!("fp8 linear: input {dims:?} does not end in the weight's {k} columns")
        }
        if k % 16 != 0 || n % 16 != 0 {
            bail!("fp8 linear: cuBLASLt's FP8 GEMM needs K and N multiples of 16, not {k} and {n}")
        }
        let m = x.elem_count() / k;
        let out_dtype = x.dtype();
        if m == 0 {
            // No rows: nothing to launch (a zero-size grid is a launch error).
            let mut shape = dims;
            *shape.last_mut().expect("rank ≥ 1") = n;
            return Tensor::zeros(shape, out_dtype, x.device());
        }
        let (xq, xs) = fp8_quantize_rows(&x.reshape((m, k))?)?;
        let ws = match w_scale {
            None => Tensor::ones(n, DType::F32, w.device())?,
            Some(s) if s.elem_count() == 1 => s
                .to_dtype(DType::F32)?
                .reshape(1)?
                .broadcast_as(n)?
                .contiguous()?,
            Some(s) => check(
                &s.to_dtype(DType::F32)?,
                DType::F32,
                &[n],
                "fp8 weight scale",
            )?,
        };
        let w = w.contiguous()?;
        let (wst, wl) = w.storage_and_layout();
        let wc = cuda_of(&wst, "fp8 weight")?;
        let dev = wc.device().clone();
        let stream = dev.cuda_stream();
        let wv = match &wc.slice {
            candle_core::cuda_backend::CudaStorageSlice::F8E4M3(s) => s.slice(wl.start_offset()..),
            _ => bail!("fp8 linear: the weight's storage is not fp8"),
        };
        let (xqs, _) = xq.storage_and_layout();
        let xqv = match &cuda_of(&xqs, "fp8 activation")?.slice {
            candle_core::cuda_backend::CudaStorageSlice::F8E4M3(s) => s.slice(0..),
            _ => bail!("fp8 linear: the quantized activation is not fp8"),
        };
        let (xss, _) = xs.storage_and_layout();
        let xsv = view::<f32>(cuda_of(&xss, "activation scale")?, &Layout::contiguous(m))?;
        let (wss, wsl) = ws.storage_and_layout();
        let wsv = view::<f32>(cuda_of(&wss, "weight scale")?, wsl)?;
        // SAFETY: cuBLASLt writes all of D (beta = 0).
        let mut out = unsafe { dev.alloc::<T>(m * n) }?;

        let (a_ptr, _ga) = wv.device_ptr(&stream);
        let (b_ptr, _gb) = xqv.device_ptr(&stream);
        let (sa_ptr, _gsa) = wsv.device_ptr(&stream);
        let (sb_ptr, _gsb) = xsv.device_ptr(&stream);
        let (d_ptr, _gd) = out.device_ptr_mut(&stream);
        let d_type = match out_dtype {
            DType::BF16 => lts::cudaDataType::CUDA_R_16BF,
            _ => lts::cudaDataType::CUDA_R_16F,
        };
        with_lt(&dev, |st| {
            let (ws_ptr, _gw) = st.workspace.device_ptr(&stream);
            // SAFETY: descriptors are created, used and destroyed here; every pointer is a live
            // device allocation of the size its layout states, used on candle's stream.
            unsafe {
                let desc = lt::create_matmul_desc(
                    lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lts::cudaDataType::CUDA_R_32F,
                )
                .map_err(|e| lt_err("matmul descriptor", e))?;
                let guard = DescGuard(desc);
                let set = |attr, ptr: *const std::ffi::c_void, size: usize| {
                    lt::set_matmul_desc_attribute(guard.0, attr, ptr, size)
                        .map_err(|e| lt_err("matmul attribute", e))
                };
                use lts::cublasLtMatmulDescAttributes_t as A;
                let t =
                    candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
                let nop =
                    candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
                set(A::CUBLASLT_MATMUL_DESC_TRANSA, &t as *const _ as _, 4)?;
                set(A::CUBLASLT_MATMUL_DESC_TRANSB, &nop as *const _ as _, 4)?;
                let mode =
                    lts::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                set(
                    A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                    &mode as *const _ as _,
                    4,
                )?;
                set(
                    A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                    &mode as *const _ as _,
                    4,
                )?;
                set(
                    A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    &sa_ptr as *const _ as _,
                    8,
                )?;
                set(
                    A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    &sb_ptr as *const _ as _,
                    8,
                )?;
                let layout = |ty, rows: usize, cols: usize, ld: usize| {
                    lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
                        .map(LayoutGuard)
                        .map_err(|e| lt_err("matrix layout", e))
                };
                let fp8 = lts::cudaDataType::CUDA_R_8F_E4M3;
                // Column-major views: A = wᵀ-ready (K × N, ld K) with op T; B = x (K × M, ld K);
                // D = y (N × M, ld N), which is y (M, N) row-major.
                let a = layout(fp8, k, n, k)?;
                let b = layout(fp8, k, m, k)?;
                let d = layout(d_type, n, m, n)?;
                let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
                let pref = PrefGuard(pref);
                let wsize = LT_WORKSPACE as u64;
                lt::set_matmul_pref_attribute(
                    pref.0,
                    lts::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &wsize as *const _ as _,
                    8,
                )
                .map_err(|e| lt_err("preference attribute", e))?;
                let heur =
                    lt::get_matmul_algo_heuristic(st.handle, guard.0, a.0, b.0, d.0, d.0, pref.0)
                        .map_err(|e| lt_err("no FP8 algorithm for this shape", e))?;
                let (alpha, beta) = (1.0f32, 0.0f32);
                lt::matmul(
                    st.handle,
                    guard.0,
                    &alpha as *const _ as _,
                    &beta as *const _ as _,
                    a_ptr as _,
                    a.0,
                    b_ptr as _,
                    b.0,
                    d_ptr as _,
                    d.0,
                    d_ptr as _,
                    d.0,
                    &heur.algo,
                    ws_ptr as _,
                    LT_WORKSPACE,
                    stream.cu_stream() as _,
                )
                .map_err(|e| lt_err("FP8 matmul", e))?;
            }
            Ok(())
        })?;
        drop((_ga, _gb, _gsa, _gsb, _gd));
        drop((wst, xqs, xss, wss));
        let out = wrap(out, &dev, (m, n));
        let mut shape = dims;
        *shape.last_mut().expect("rank ≥ 1") = n;
        out.reshape(shape)
    }

    struct DescGuard(lts::cublasLtMatmulDesc_t);
    impl Drop for DescGuard {
        fn drop(&mut self) {
            // SAFETY: created by create_matmul_desc and dropped once.
            let _ = unsafe { lt::destroy_matmul_desc(self.0) };
        }
    }
    struct LayoutGuard(lts::cublasLtMatrixLayout_t);
    impl Drop for LayoutGuard {
        fn drop(&mut self) {
            // SAFETY: created by create_matrix_layout and dropped once.
            let _ = unsafe { lt::destroy_matrix_layout(self.0) };
        }
    }
    struct PrefGuard(lts::cublasLtMatmulPreference_t);
    impl Drop for PrefGuard {
        fn drop(&mut self) {
            // SAFETY: created by create_matmul_pref and dropped once.
            let _ = unsafe { lt::destroy_matmul_pref(self.0) };
        }
    }
}

/// Loads our fat binaries into a device's context once and hands out their functions.
#[cfg(feature = "cuda")]
mod loader {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaModule, CudaStream, LaunchArgs,
    };
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Result};

    /// One of our fat binaries (build.rs: a cubin per built architecture, PTX as the fallback).
    pub struct Module {
        pub name: &'static str,
        pub image: &'static [u8],
    }

    /// `module!("flux2")`: the fat binary build.rs made from cuda/flux2.cu.
    macro_rules! module {
        ($name:literal) => {
            $crate::loader::Module {
                name: $name,
                image: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".fatbin")),
            }
        };
    }
    pub(crate) use module;

    /// A kernel and the stream it launches on (what candle's `CudaFunc` is for its own kernels).
    pub struct Func {
        func: CudaFunction,
        stream: Arc<CudaStream>,
    }

    impl Func {
        pub fn builder(&self) -> LaunchArgs<'_> {
            self.stream.launch_builder(&self.func)
        }
    }

    impl std::ops::Deref for Func {
        type Target = CudaFunction;
        fn deref(&self) -> &CudaFunction {
            &self.func
        }
    }

    /// Loaded modules, by context and module name. A context lives as long as the process here
    /// (candle never destroys one), so its address is a stable key.
    type Loaded = HashMap<(usize, &'static str), Arc<CudaModule>>;
    fn loaded() -> &'static Mutex<Loaded> {
        static LOADED: OnceLock<Mutex<Loaded>> = OnceLock::new();
        LOADED.get_or_init(Default::default)
    }

    fn module_of(dev: &CudaDevice, m: &Module) -> Result<Arc<CudaModule>> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        let key = (Arc::as_ptr(ctx) as usize, m.name);
        let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = map.get(&key) {
            return Ok(module.clone());
        }
        // The driver picks the cubin of the device's architecture, or JIT-compiles the PTX.
        let module = ctx.load_module(Ptx::from_binary(m.image.to_vec())).w()?;
        map.insert(key, module.clone());
        Ok(module)
    }

    /// Function `name` of module `m` on the device.
    pub fn load(dev: &CudaDevice, m: &Module, name: &str) -> Result<Func> {
        let func = module_of(dev, m)?.load_function(name).w()?;
        Ok(Func {
            func,
            stream: dev.cuda_stream(),
        })
    }
}

/// Helpers the GPU tests of this crate and of the model crate share.
#[doc(hidden)]
pub mod testing {
    use candle_core::{DType, Device, Result, Tensor};

    /// CUDA device 0, or `None` (and a note on stderr) where there is none: the GPU tests then
    /// return early.
    pub fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("no CUDA device ({e}); skipping");
                None
            }
        }
    }

    /// ‖a − b‖ / ‖b‖ in f32.
    pub fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let a = a.to_dtype(DType::F32)?;
        let b = b.to_dtype(DType::F32)?;
        let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        Ok(num / den.max(1e-30))
    }

    /// The bit patterns of a bf16 tensor, for exact comparisons.
    pub fn bf16_bits(t: &Tensor) -> Result<Vec<u16>> {
        Ok(t.flatten_all()?
            .to_vec1::<half::bf16>()?
            .into_iter()
            .map(|v| v.to_bits())
            .collect())
    }

    /// Standard normal values of `shape` in `dtype`.
    pub fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
        Tensor::randn(0f32, 1f32, shape, dev)?.to_dtype(dtype)
    }
}
