//! The values FLUX.2 nodes pass along links, as core [`Payload`]s that report their memory.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use veetance_core::{ExecContext, MemBytes, NodeError, Object, Payload, PortType, Value};
use veetance_models::flux2::Flux2Transformer;
use veetance_models::qwen3::TextEncoder;
use veetance_models::vae::Flux2Vae;

/// Bytes of a tensor, counted on the device it lives on.
pub fn tensor_bytes(t: &Tensor) -> MemBytes {
    let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    on_device(t.device(), bytes)
}

pub fn on_device(device: &Device, bytes: u64) -> MemBytes {
    if device.is_cpu() {
        MemBytes::host(bytes)
    } else {
        MemBytes::device(bytes)
    }
}

/// How the transformer computes attention (set by PatchAttention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    /// The whole score matrix at once (the reference path).
    Plain,
    /// Query rows in chunks of this many tokens: never the whole L×L matrix in memory.
    Chunked(usize),
    /// Our fused flash kernel (CUDA, bf16/f16; elsewhere the plain path).
    Flash,
}

/// The noise schedule a sampler uses (set by ModelSampling).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// klein's default: the empirical mu for the image size and step count.
    EmpiricalMu,
    /// A fixed shift `s`: sigma(t) = s·t / (1 + (s − 1)·t).
    FixedShift(f64),
}

/// What patch nodes change on a model, without copying its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPatches {
    pub attention: AttentionImpl,
    pub schedule: Schedule,
    /// Whether CompileModel asked for the fused execution path.
    pub compiled: bool,
}

impl Default for ModelPatches {
    fn default() -> Self {
        ModelPatches {
            attention: AttentionImpl::Plain,
            schedule: Schedule::EmpiricalMu,
            compiled: false,
        }
    }
}

/// A FLUX.2 transformer: shared weights plus patches.
#[derive(Clone, Debug)]
pub struct ModelHandle {
    pub model: Arc<Flux2Transformer>,
    pub device: Device,
    pub file: PathBuf,
    pub weight_bytes: MemBytes,
    pub patches: ModelPatches,
}

impl Payload for ModelHandle {
    fn mem_bytes(&self) -> MemBytes {
        self.weight_bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Clone, Debug)]
pub struct TextEncoderHandle {
    pub encoder: Arc<TextEncoder>,
    pub device: Device,
    pub file: PathBuf,
    pub weight_bytes: MemBytes,
}

impl Payload for TextEncoderHandle {
    fn mem_bytes(&self) -> MemBytes {
        self.weight_bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Clone, Debug)]
pub struct VaeHandle {
    pub vae: Arc<Flux2Vae>,
    pub device: Device,
    pub file: PathBuf,
    pub weight_bytes: MemBytes,
}

impl Payload for VaeHandle {
    fn mem_bytes(&self) -> MemBytes {
        self.weight_bytes
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An encoded prompt.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// `(1, tokens, context_dim)`.
    pub hidden: Tensor,
    pub prompt: String,
}

impl Payload for Conditioning {
    fn mem_bytes(&self) -> MemBytes {
        tensor_bytes(&self.hidden) + MemBytes::host(self.prompt.len() as u64)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A latent batch in the transformer's space: `(B, 128, H/16, W/16)`, batch-norm normalised and
/// 2×2-patchified (ComfyUI's Flux2 latent format), f32.
#[derive(Clone, Debug)]
pub struct Latent {
    pub samples: Tensor,
    /// Text that travels with the latent to the image (generation parameters).
    pub meta: Vec<(String, String)>,
}

impl Payload for Latent {
    fn mem_bytes(&self) -> MemBytes {
        tensor_bytes(&self.samples)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub fn object<T: Payload>(ty: PortType, payload: T) -> Value {
    Value::Object(Object::new(ty, payload))
}

/// The payload of an input, as its concrete type.
pub fn input<'c, T: Payload>(
    ctx: &'c ExecContext<'_>,
    name: &str,
    ty: PortType,
) -> Result<&'c T, NodeError> {
    ctx.object(name, ty)?
        .downcast::<T>()
        .ok_or_else(|| NodeError::failed(format!("input '{name}' is not a FLUX.2 {ty}")))
}

/// An optional input, as its concrete type.
pub fn optional_input<'c, T: Payload>(
    ctx: &'c ExecContext<'_>,
    name: &str,
    ty: PortType,
) -> Result<Option<&'c T>, NodeError> {
    match ctx.input(name) {
        None => Ok(None),
        Some(_) => input(ctx, name, ty).map(Some),
    }
}

/// Turns a model error into a node error.
pub fn model_err(what: &str) -> impl Fn(veetance_models::Error) -> NodeError + '_ {
    move |e| match e {
        veetance_models::Error::Cancelled { .. } => NodeError::Cancelled,
        other => NodeError::failed(format!("{what}: {other}")),
    }
}

pub fn candle_err(what: &str) -> impl Fn(candle_core::Error) -> NodeError + '_ {
    move |e| NodeError::failed(format!("{what}: {e}"))
}

/// Parses a weight dtype param.
pub fn parse_dtype(name: &str, device: &Device) -> DType {
    match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        // "default": bf16 where it is fast (CUDA), f32 on the CPU.
        _ => {
            if device.is_cpu() {
                DType::F32
            } else {
                DType::BF16
            }
        }
    }
}
