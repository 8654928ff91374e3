//! Linear layers whose weights may stay quantized: [`QLinear`] and the [`WeightBuilder`] that makes
//! them.
//!
//! A model built through a [`WeightBuilder`] gets each linear weight in the form its file keeps:
//!
//! * dense (safetensors f32/f16/bf16, or GGUF F32/F16/BF16): loaded in the compute dtype, a plain
//!   matmul, exactly `candle_nn::Linear`;
//! * GGUF block-quantized (Q8_0, Q4_K, ...): on the CPU kept as a candle `QTensor`, multiplied by
//!   candle's quantized kernels (activations quantized to 8 bits per block, llama.cpp's
//!   `vec_dot`); on CUDA the types our kernels read (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K) are kept as
//!   their raw blocks ([`QLinear::Blocks`]) and dequantized into the compute dtype right before
//!   each matmul (one pass at memory bandwidth, then cuBLAS at bf16 speed), the others as a
//!   candle `QTensor` (llama.cpp's MMQ/MMVQ kernels); output in the input's dtype;
//! * fp8 e4m3 (ComfyUI's fp8 files, or any checkpoint loaded with [`LinearFormat::Fp8E4M3`]):
//!   kept in fp8 with a per-row (or per-tensor) scale. On Hopper, `forward` quantizes the
//!   activations to fp8 one scale a row and runs an FP8 GEMM through cuBLASLt with both scale
//!   vectors (`veetance_kernels::fp8_linear`; `VEETANCE_FP8_GEMM=0` turns it off); on other GPUs
//!   our kernel casts the weight to the compute dtype with its scales folded in, one pass, before
//!   a bf16 GEMM (candle's own fp8 casts fail there, see crates/kernels/cuda/quant.cu); on the
//!   CPU candle casts it and the output is scaled per output channel.
//!
//! Small tensors (norms, embeddings) always load dense in the compute dtype, dequantized at load.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::weights::MappedBackend;

type CResult<T> = candle_core::Result<T>;

/// The largest finite fp8 e4m3 value.
const F8E4M3_MAX: f64 = 448.0;

/// How linear weights are kept when the file stores them dense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinearFormat {
    /// In the compute dtype (GGUF-quantized and fp8-stored weights stay as stored).
    #[default]
    AsStored,
    /// Converted to fp8 e4m3 at load, one scale per output row.
    Fp8E4M3,
}

/// A linear layer without bias, `y = x W^T`, with `W` `(out, in)` dense, GGUF-quantized or fp8.
#[derive(Debug, Clone)]
pub enum QLinear {
    Dense(candle_nn::Linear),
    Ggml(QMatMul),
    /// GGUF blocks as the file stores them, `(rows, cols)` whole blocks of `kind`: a 1-D u8
    /// tensor, dequantized into `dtype` by our kernel before each matmul on CUDA (see
    /// `veetance_kernels::gguf_dequant`), through candle's quantized matmul elsewhere.
    Blocks {
        data: Tensor,
        kind: GgmlDType,
        shape: (usize, usize),
        dtype: DType,
    },
    Fp8 {
        /// `(out, in)` in `DType::F8E4M3`.
        weight: Tensor,
        /// `(out,)` or a single value, in the compute dtype; `None`: 1.
        scale: Option<Tensor>,
        dtype: DType,
    },
    /// A base layer plus a low-rank side path (LoRAs on a weight that cannot be merged exactly:
    /// fp8, GGUF, or a block streamed from host memory): `y = base(x) + (x · downᵀ) · upᵀ`, with
    /// `down` `(r, in)` and `up` `(out, r)` in the compute dtype, strengths and scales folded into
    /// `up` (see `crate::lora`).
    LowRank {
        base: Box<QLinear>,
        down: Tensor,
        up: Tensor,
    },
}

impl QLinear {
    /// This layer with every tensor replaced by `f(tensor)` (a move between devices, a count).
    /// GGUF blocks kept raw ([`Self::Blocks`], on CUDA) are a u8 tensor and move like any other;
    /// a candle `QTensor` ([`Self::Ggml`]: the CPU, or types our kernels do not read) cannot be
    /// walked: that is an error, and callers (the cache's offload, block streaming) fall back to
    /// dropping or keeping it.
    pub fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> CResult<Tensor>) -> CResult<Self> {
        Ok(match self {
            Self::Dense(l) => {
                let bias = match l.bias() {
                    Some(b) => Some(f(b)?),
                    None => None,
                };
                Self::Dense(candle_nn::Linear::new(f(l.weight())?, bias))
            }
            Self::Ggml(QMatMul::Tensor(t)) => Self::Ggml(QMatMul::Tensor(f(t)?)),
            Self::Ggml(QMatMul::TensorF16(t)) => Self::Ggml(QMatMul::TensorF16(f(t)?)),
            Self::Ggml(QMatMul::QTensor(_)) => candle_core::bail!(
                "GGUF-quantized weights cannot be moved between devices yet; reload the model instead"
            ),
            Self::Blocks {
                data,
                kind,
                shape,
                dtype,
            } => Self::Blocks {
                data: f(data)?,
                kind: *kind,
                shape: *shape,
                dtype: *dtype,
            },
            Self::Fp8 {
                weight,
                scale,
                dtype,
            } => Self::Fp8 {
                weight: f(weight)?,
                scale: match scale {
                    Some(s) => Some(f(s)?),
                    None => None,
                },
                dtype: *dtype,
            },
            Self::LowRank { base, down, up } => Self::LowRank {
                base: Box::new(base.map_tensors(f)?),
                down: f(down)?,
                up: f(up)?,
            },
        })
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        match self {
            Self::Dense(l) => l.weight().device().clone(),
            Self::Ggml(QMatMul::QTensor(t)) => t.device(),
            Self::Ggml(QMatMul::Tensor(t)) | Self::Ggml(QMatMul::TensorF16(t)) => {
                t.device().clone()
            }
            Self::Fp8 { weight, .. } => weight.device().clone(),
            Self::Blocks { data, .. } => data.device().clone(),
            Self::LowRank { base, .. } => base.device(),
        }
    }

    /// A GGUF-quantized weight (candle's quantized matmul).
    pub fn ggml(weight: QTensor) -> Self {
        Self::Ggml(QMatMul::QTensor(Arc::new(weight)))
    }

    /// GGUF blocks of `kind` for a `(rows, cols)` weight, kept as raw bytes on `device` when our
    /// kernels read the type there (a CUDA device), else a candle `QTensor` ([`Self::ggml`]).
    pub fn gguf_blocks(
        bytes: &[u8],
        kind: GgmlDType,
        shape: (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> CResult<Self> {
        if device.is_cuda() && veetance_kernels::gguf_supported(kind) {
            let data = Tensor::from_raw_buffer(bytes, DType::U8, &[bytes.len()], device)?;
            return Ok(Self::Blocks {
                data,
                kind,
                shape,
                dtype,
            });
        }
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, kind)?;
        Ok(Self::ggml(QTensor::new(storage, shape)?))
    }

    /// A stored fp8 weight with its optional scale (one value, or one per output row).
    pub fn fp8(weight: Tensor, scale: Option<Tensor>, dtype: DType) -> Result<Self, String> {
        if weight.dtype() != DType::F8E4M3 {
            return Err(format!(
                "expected an fp8 e4m3 weight, found {:?}",
                weight.dtype()
            ));
        }
        let out = weight.dim(0).map_err(|e| e.to_string())?;
        let scale = match scale {
            None => None,
            Some(s) => Some(
                row_scale(&s, out).and_then(|s| s.to_dtype(dtype).map_err(|e| e.to_string()))?,
            ),
        };
        Ok(Self::Fp8 {
            weight,
            scale,
            dtype,
        })
    }

    /// Converts a dense `(out, in)` weight to fp8 e4m3 with one scale per row
    /// (`scale = max|row| / 448`), as fp8 checkpoints are made.
    pub fn quantize_fp8(weight: &Tensor, dtype: DType) -> CResult<Self> {
        let w = weight.to_dtype(DType::F32)?;
        if w.device().is_cuda() {
            // candle's fp8 casts fail on CUDA; our kernel computes the same per-row scale.
            let (q, scale) = veetance_kernels::fp8_quantize_rows(&w)?;
            return Ok(Self::Fp8 {
                weight: q,
                scale: Some(scale.to_dtype(dtype)?),
                dtype,
            });
        }
        let amax = w.abs()?.max_keepdim(1)?; // (out, 1)
        let scale = (amax / F8E4M3_MAX)?.clamp(f32::MIN_POSITIVE, f32::MAX)?;
        let q = w.broadcast_div(&scale)?.to_dtype(DType::F8E4M3)?;
        Ok(Self::Fp8 {
            weight: q,
            scale: Some(scale.squeeze(1)?.to_dtype(dtype)?),
            dtype,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        match self {
            Self::Dense(linear) => linear.forward(xs),
            Self::Ggml(qmm) => qmm.forward(&xs.contiguous()?),
            Self::Blocks {
                data,
                kind,
                shape,
                dtype,
            } if data.device().is_cuda() => {
                let w = veetance_kernels::gguf_dequant(data, *kind, *shape, *dtype)?;
                candle_nn::Linear::new(w, None).forward(xs)
            }
            Self::Blocks {
                data, kind, shape, ..
            } => {
                // Moved off the GPU (an offload): candle's quantized matmul on the bytes.
                let bytes = data.to_vec1::<u8>()?;
                let storage =
                    QStorage::from_data(std::borrow::Cow::Owned(bytes), data.device(), *kind)?;
                QMatMul::from_qtensor(QTensor::new(storage, *shape)?)?.forward(&xs.contiguous()?)
            }
            Self::Fp8 {
                weight,
                scale,
                dtype,
            } if weight.device().is_cuda() => {
                if fp8_gemm_enabled() && veetance_kernels::fp8_linear_supported(xs) {
                    // Hopper: activations quantized per row, an FP8 GEMM with both row scales.
                    // A shape it refuses (sides not multiples of 16) takes the bf16 GEMM below.
                    if let Ok(y) = veetance_kernels::fp8_linear(xs, weight, scale.as_ref()) {
                        return Ok(y);
                    }
                }
                // The weight times its row scales in one pass (candle's fp8 casts fail on CUDA).
                let w = veetance_kernels::fp8_dequant(weight, scale.as_ref(), *dtype)?;
                candle_nn::Linear::new(w, None).forward(xs)
            }
            Self::Fp8 {
                weight,
                scale,
                dtype,
            } => {
                let w = weight.to_dtype(*dtype)?;
                let y = candle_nn::Linear::new(w, None).forward(xs)?;
                match scale {
                    Some(s) => y.broadcast_mul(s),
                    None => Ok(y),
                }
            }
            Self::LowRank { base, down, up } => {
                let y = base.forward(xs)?;
                let low = candle_nn::Linear::new(down.clone(), None)
                    .forward(&xs.to_dtype(down.dtype())?)?;
                let side = candle_nn::Linear::new(up.clone(), None).forward(&low)?;
                let side = side.to_dtype(y.dtype())?;
                y + side
            }
        }
    }

    /// What the weight is kept as, e.g. `dense BF16`, `Q4K`, `fp8 e4m3`.
    pub fn storage(&self) -> String {
        match self {
            Self::Dense(l) => format!("dense {:?}", l.weight().dtype()),
            Self::Ggml(QMatMul::QTensor(t)) => format!("{:?}", t.dtype()),
            Self::Ggml(_) => "dequantized".into(),
            Self::Blocks { kind, .. } => format!("{kind:?}"),
            Self::Fp8 { .. } => "fp8 e4m3".into(),
            Self::LowRank { base, down, .. } => format!(
                "{} + rank-{} side path",
                base.storage(),
                down.dim(0).unwrap_or(0)
            ),
        }
    }
}

/// Whether fp8 layers may run FP8 GEMMs (on Hopper): on unless `VEETANCE_FP8_GEMM=0`, which
/// makes them dequantize to the compute dtype and run a bf16 GEMM as on other GPUs.
fn fp8_gemm_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("VEETANCE_FP8_GEMM").map_or(true, |v| v != "0"))
}

/// A scale tensor as `(out,)`: one value broadcast, or one per row (`(out,)` or `(out, 1)`).
fn row_scale(scale: &Tensor, out: usize) -> Result<Tensor, String> {
    let n = scale.elem_count();
    let flat = scale.flatten_all().map_err(|e| e.to_string())?;
    if n == 1 {
        flat.reshape(()).map_err(|e| e.to_string())
    } else if n == out {
        Ok(flat)
    } else {
        Err(format!(
            "fp8 scale of shape {:?} fits neither one value nor one per output row ({out}); \
             per-block scales are not supported",
            scale.dims()
        ))
    }
}

/// `w * scale` for a dense `(out, in)` weight and a per-tensor or per-row scale.
pub(crate) fn apply_row_scale(w: &Tensor, scale: &Tensor) -> Result<Tensor, String> {
    let out = w.dim(0).map_err(|e| e.to_string())?;
    let s = row_scale(&scale.to_dtype(w.dtype()).map_err(|e| e.to_string())?, out)?;
    let s = if s.rank() == 1 {
        s.unsqueeze(1).map_err(|e| e.to_string())?
    } else {
        s
    };
    w.broadcast_mul(&s).map_err(|e| e.to_string())
}

/// What model constructors take instead of candle's `VarBuilder`: the same `pp`/`get`/`dtype`/
/// `device`, plus linear layers in their stored (possibly quantized) form through
/// [`linear_no_bias`].
#[derive(Clone)]
pub struct WeightBuilder {
    vb: VarBuilder<'static>,
    backend: Option<MappedBackend>,
    linears: LinearFormat,
}

impl std::fmt::Debug for WeightBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightBuilder")
            .field("prefix", &self.vb.prefix())
            .field("linears", &self.linears)
            .finish()
    }
}

impl WeightBuilder {
    pub(crate) fn new(
        backend: MappedBackend,
        dtype: DType,
        device: &Device,
        linears: LinearFormat,
    ) -> Self {
        Self {
            vb: VarBuilder::from_backend(Box::new(backend.clone()), dtype, device.clone()),
            backend: Some(backend),
            linears,
        }
    }

    /// Over a plain candle `VarBuilder` (every weight dense), e.g. for tests with random weights.
    pub fn from_var_builder(vb: VarBuilder<'static>, linears: LinearFormat) -> Self {
        Self {
            vb,
            backend: None,
            linears,
        }
    }

    pub fn pp<S: ToString>(&self, s: S) -> Self {
        Self {
            vb: self.vb.pp(s),
            backend: self.backend.clone(),
            linears: self.linears,
        }
    }

    pub fn get<S: Into<Shape>>(&self, s: S, name: &str) -> CResult<Tensor> {
        self.vb.get(s, name)
    }

    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    fn full_name(&self, name: &str) -> String {
        let prefix = self.vb.prefix();
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    }
}

/// A linear layer `in_dim -> out_dim` without bias from `<prefix>.weight`, kept as stored.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: WeightBuilder) -> CResult<QLinear> {
    if let Some(backend) = &vb.backend {
        let name = vb.full_name("weight");
        if let Some(l) = backend.stored_linear(&name, (out_dim, in_dim), vb.dtype(), vb.device())? {
            return Ok(l);
        }
    }
    let weight = vb.get((out_dim, in_dim), "weight")?;
    match vb.linears {
        LinearFormat::AsStored => Ok(QLinear::Dense(candle_nn::Linear::new(weight, None))),
        LinearFormat::Fp8E4M3 => QLinear::quantize_fp8(&weight, vb.dtype()),
    }
}

/// An embedding table `(vocab, hidden)` from `<prefix>.weight`, dequantized at load.
pub fn embedding(vocab: usize, hidden: usize, vb: WeightBuilder) -> CResult<candle_nn::Embedding> {
    Ok(candle_nn::Embedding::new(
        vb.get((vocab, hidden), "weight")?,
        hidden,
    ))
}
