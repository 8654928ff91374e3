//! The values FLUX.2 nodes pass along links, as core [`Payload`]s that report their memory.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use veetance_core::{ExecContext, MemBytes, NodeError, Object, Payload, PortType, Value};
use veetance_models::flux2::lora::Flux2Lora;
use veetance_models::flux2::Flux2Transformer;
use veetance_models::placement::WeightBytes;
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
    /// FP8 attention through cuDNN on Hopper with the fused kernels (CompileModel); elsewhere
    /// `Flash`.
    FlashFp8,
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
    /// LoRAs (LoraLoader), in the order applied; the sampler patches the model it runs with them.
    pub loras: Vec<AppliedLora>,
}

/// A LoRA mapped onto the transformer, and its strength.
#[derive(Clone, Debug)]
pub struct AppliedLora {
    pub lora: Arc<Flux2Lora>,
    pub strength: f64,
}

impl PartialEq for AppliedLora {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lora, &other.lora) && self.strength == other.strength
    }
}

impl Default for ModelPatches {
    fn default() -> Self {
        ModelPatches {
            attention: AttentionImpl::Plain,
            schedule: Schedule::EmpiricalMu,
            compiled: false,
            loras: Vec::new(),
        }
    }
}

/// A FLUX.2 transformer: shared weights plus patches.
///
/// `device` is the model's home: where it computes. Its weights are there, or in host memory when
/// the cache offloaded the value (`offloaded`, undone by [`Payload::to_device`]) or when the
/// loader left them there because they do not fit the device room (the sampler then streams
/// blocks; see `sampler::placed_model`).
#[derive(Clone, Debug)]
pub struct ModelHandle {
    pub model: Arc<Flux2Transformer>,
    pub device: Device,
    pub file: PathBuf,
    /// Bytes of the weights on the tier they are on now.
    pub weight_bytes: MemBytes,
    pub patches: ModelPatches,
    /// Whether the cache moved the weights to host memory (to_host); to_device brings them back.
    pub offloaded: bool,
}

/// `bytes` counted on the tiers of a model's weights.
pub fn mem_of(bytes: WeightBytes) -> MemBytes {
    MemBytes {
        device: bytes.device,
        host: bytes.host,
    }
}

/// Runs a move and wraps its result for the payload hooks.
fn moved<T: Payload>(result: Result<T, String>) -> Option<Result<Arc<dyn Payload>, String>> {
    Some(result.map(|p| Arc::new(p) as Arc<dyn Payload>))
}

/// The [`Payload`] of a model handle (`$ty` holding `Arc<$model>` in `$field`, with `device`,
/// `weight_bytes` and `offloaded`): moves between tiers by walking the model's tensors, shares its
/// weights with the handles patch nodes derive from it (`storage_id` / `rebase`), and wants the
/// device for weights its loader left in host memory. `$streams`: the nodes taking it can use it
/// from host memory (the Sampler streams blocks, TextEncode layers). `$holders`: other payloads
/// that hold such a handle (a [`Guider`] holds a model) and share its storage group, as
/// `Fn(&dyn Any) -> Option<&$ty>`, so that a handle rebases onto a moved holder too.
macro_rules! model_handle_payload {
    ($ty:ident, $field:ident, $what:literal, streams: $streams:expr, held_by: $holders:expr) => {
        impl Payload for $ty {
            fn mem_bytes(&self) -> MemBytes {
                self.weight_bytes
            }
            fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
                if self.$field.weight_bytes().device == 0 {
                    return None;
                }
                self.moved_to(
                    &Device::Cpu,
                    true,
                    concat!("moving ", $what, " to host memory"),
                )
            }
            fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
                if !self.offloaded {
                    return None;
                }
                self.moved_to(
                    &self.device,
                    false,
                    concat!("moving ", $what, " to its device"),
                )
            }
            fn streams_from_host(&self) -> bool {
                $streams
            }
            fn storage_id(&self) -> Option<usize> {
                Some(Arc::as_ptr(&self.$field) as usize)
            }
            fn rebase(&self, moved: &dyn Payload) -> Option<Arc<dyn Payload>> {
                let moved = <$ty>::shared_from(moved)?;
                Some(Arc::new($ty {
                    $field: moved.$field.clone(),
                    weight_bytes: moved.weight_bytes,
                    offloaded: moved.offloaded,
                    ..self.clone()
                }))
            }
            fn device_wanted(&self) -> u64 {
                if self.offloaded || self.device.is_cpu() {
                    0
                } else {
                    self.weight_bytes.host
                }
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        impl $ty {
            /// The handle of this kind that `payload` is or holds (a guider holds a model), for
            /// [`Payload::rebase`] onto whichever member of a storage group moved.
            pub fn shared_from(payload: &dyn Payload) -> Option<&$ty> {
                let any = payload.as_any();
                any.downcast_ref::<$ty>().or_else(|| $holders(any))
            }

            /// This handle with its weights moved to `device` (`offloaded` marks a move by the
            /// cache), as a payload move's result.
            fn moved_to(
                &self,
                device: &Device,
                offloaded: bool,
                context: &str,
            ) -> Option<Result<Arc<dyn Payload>, String>> {
                Some(
                    self.$field
                        .to_device(device)
                        .map_err(|e| format!("{context}: {e}"))
                        .map(|m| {
                            Arc::new($ty {
                                weight_bytes: mem_of(m.weight_bytes()),
                                $field: Arc::new(m),
                                offloaded,
                                ..self.clone()
                            }) as Arc<dyn Payload>
                        }),
                )
            }
        }
    };
}

model_handle_payload!(ModelHandle, model, "the diffusion model", streams: true,
    held_by: model_in_guider);

fn model_in_guider(any: &dyn Any) -> Option<&ModelHandle> {
    any.downcast_ref::<Guider>().map(|g| &g.model)
}

/// For handles no other payload holds.
fn held_by_none<T>(_: &dyn Any) -> Option<&T> {
    None
}

/// The Qwen3 text encoder; `device` is its home, as for [`ModelHandle`].
#[derive(Clone, Debug)]
pub struct TextEncoderHandle {
    pub encoder: Arc<TextEncoder>,
    pub device: Device,
    pub file: PathBuf,
    /// Bytes of the weights on the tier they are on now.
    pub weight_bytes: MemBytes,
    /// Whether the cache moved the weights to host memory; to_device brings them back.
    pub offloaded: bool,
}

model_handle_payload!(TextEncoderHandle, encoder, "the text encoder", streams: true,
    held_by: held_by_none);

/// The FLUX.2 VAE; `device` is its home, as for [`ModelHandle`].
#[derive(Clone, Debug)]
pub struct VaeHandle {
    pub vae: Arc<Flux2Vae>,
    pub device: Device,
    pub file: PathBuf,
    /// Bytes of the weights on the tier they are on now.
    pub weight_bytes: MemBytes,
    /// Whether the cache moved the weights to host memory; to_device brings them back.
    pub offloaded: bool,
}

model_handle_payload!(VaeHandle, vae, "the VAE", streams: false, held_by: held_by_none);

/// An encoded prompt. `home` is the device it was computed on, when the cache moved it to host
/// memory (`None`: it is where it was made).
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// `(1, tokens, context_dim)`.
    pub hidden: Tensor,
    pub prompt: String,
    /// Reference images for editing, in order: their normalised latents `(1, 128, h, w)`, f32
    /// (ComfyUI's `reference_latents`, appended by `ReferenceLatent` / `AddReference`).
    pub references: Vec<Tensor>,
    pub home: Option<Device>,
}

impl Conditioning {
    /// This conditioning with every tensor moved by `f`.
    fn map_tensors(
        &self,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        home: Option<Device>,
    ) -> candle_core::Result<Conditioning> {
        Ok(Conditioning {
            hidden: f(&self.hidden)?,
            prompt: self.prompt.clone(),
            references: self.references.iter().map(&f).collect::<Result<_, _>>()?,
            home,
        })
    }
}

impl Payload for Conditioning {
    fn mem_bytes(&self) -> MemBytes {
        let mut bytes = tensor_bytes(&self.hidden) + MemBytes::host(self.prompt.len() as u64);
        for r in &self.references {
            bytes += tensor_bytes(r);
        }
        bytes
    }
    fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        let home = self.hidden.device();
        if home.is_cpu() {
            return None;
        }
        moved(
            self.map_tensors(|t| t.to_device(&Device::Cpu), Some(home.clone()))
                .map_err(|e| format!("moving a conditioning to host memory: {e}")),
        )
    }
    fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        let home = self.home.as_ref()?;
        moved(
            self.map_tensors(|t| t.to_device(home), None)
                .map_err(|e| format!("moving a conditioning back to its device: {e}")),
        )
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A latent batch in the transformer's space: `(B, 128, H/16, W/16)`, batch-norm normalised and
/// 2×2-patchified (ComfyUI's Flux2 latent format), f32. `home` as for [`Conditioning`].
#[derive(Clone, Debug)]
pub struct Latent {
    pub samples: Tensor,
    /// Text that travels with the latent to the image (generation parameters).
    pub meta: Vec<(String, String)>,
    /// Inpainting: `(B or 1, H, W)` in [0, 1] at pixel resolution, 1 where the sampler repaints
    /// (ComfyUI's `noise_mask`, set by `SetLatentNoiseMask` or VaeEncode's mask). `None`: all.
    pub noise_mask: Option<Tensor>,
    pub home: Option<Device>,
}

impl Latent {
    /// A latent of `samples` with `meta`, no mask, where it was made.
    pub fn new(samples: Tensor, meta: Vec<(String, String)>) -> Self {
        Latent {
            samples,
            meta,
            noise_mask: None,
            home: None,
        }
    }

    fn moved_to(&self, device: &Device, home: Option<Device>) -> candle_core::Result<Latent> {
        Ok(Latent {
            samples: self.samples.to_device(device)?,
            meta: self.meta.clone(),
            noise_mask: self
                .noise_mask
                .as_ref()
                .map(|m| m.to_device(device))
                .transpose()?,
            home,
        })
    }
}

impl Payload for Latent {
    fn mem_bytes(&self) -> MemBytes {
        let mut bytes = tensor_bytes(&self.samples);
        if let Some(m) = &self.noise_mask {
            bytes += tensor_bytes(m);
        }
        bytes
    }
    fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        let home = self.samples.device();
        if home.is_cpu() {
            return None;
        }
        moved(
            self.moved_to(&Device::Cpu, Some(home.clone()))
                .map_err(|e| format!("moving a latent to host memory: {e}")),
        )
    }
    fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        let home = self.home.as_ref()?;
        moved(
            self.moved_to(home, None)
                .map_err(|e| format!("moving a latent back to its device: {e}")),
        )
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// ComfyUI's GUIDER (`CFGGuider`, `BasicGuider`): a model with the conditionings and the guidance
/// scale a sampler uses them with.
///
/// It holds the model's handle itself (an `Arc` clone: no weights are copied), so it is a member
/// of the model's storage group like the patch nodes' handles: it reports the model's storage id
/// and bytes, moves between tiers with it (`to_host`, `to_device` and `rebase` go through the
/// handle's own), and streams from host memory as the model does. Its conditionings are its
/// inputs' tensors (shared with their cache entries, so counted again here: an over-count of a
/// few MiB at most) and move with it, so that no tensor of it stays on the device once the cache
/// moved it to host memory.
#[derive(Clone, Debug)]
pub struct Guider {
    pub model: ModelHandle,
    pub positive: Conditioning,
    /// `None` for a guider without a negative (`BasicGuider`).
    pub negative: Option<Conditioning>,
    /// The guidance scale; at 1 no negative pass runs (ComfyUI's cfg = 1 shortcut).
    pub cfg: f64,
}

impl Guider {
    /// This guider over `model`, its conditionings moved by `move_cond` (`None`: left as they
    /// are).
    fn with_model(
        &self,
        model: ModelHandle,
        move_cond: impl Fn(&Conditioning) -> Option<Result<Arc<dyn Payload>, String>>,
    ) -> Result<Guider, String> {
        let cond = |c: &Conditioning| match move_cond(c) {
            None => Ok(c.clone()),
            Some(moved) => downcast_clone::<Conditioning>(moved?, "a conditioning"),
        };
        Ok(Guider {
            model,
            positive: cond(&self.positive)?,
            negative: self.negative.as_ref().map(cond).transpose()?,
            cfg: self.cfg,
        })
    }

    /// Its model after a move (`None`: the model did not move).
    fn model_after(
        &self,
        moved: Option<Result<Arc<dyn Payload>, String>>,
    ) -> Result<ModelHandle, String> {
        match moved {
            None => Ok(self.model.clone()),
            Some(moved) => downcast_clone::<ModelHandle>(moved?, "a model handle"),
        }
    }
}

fn downcast_clone<T: Payload + Clone>(payload: Arc<dyn Payload>, what: &str) -> Result<T, String> {
    payload
        .as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| format!("a guider's move did not give back {what}"))
}

impl Payload for Guider {
    fn mem_bytes(&self) -> MemBytes {
        let mut bytes = self.model.mem_bytes() + self.positive.mem_bytes();
        if let Some(n) = &self.negative {
            bytes += n.mem_bytes();
        }
        bytes
    }
    fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        if self.mem_bytes().device == 0 {
            return None;
        }
        moved(
            self.model_after(self.model.to_host())
                .and_then(|model| self.with_model(model, Conditioning::to_host)),
        )
    }
    fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        let back = |c: &Conditioning| c.home.is_some();
        if !self.model.offloaded
            && !back(&self.positive)
            && !self.negative.as_ref().is_some_and(back)
        {
            return None;
        }
        moved(
            self.model_after(self.model.to_device())
                .and_then(|model| self.with_model(model, Conditioning::to_device)),
        )
    }
    fn streams_from_host(&self) -> bool {
        self.model.streams_from_host()
    }
    fn storage_id(&self) -> Option<usize> {
        self.model.storage_id()
    }
    fn rebase(&self, moved: &dyn Payload) -> Option<Arc<dyn Payload>> {
        let model = self.model_after(Some(Ok(self.model.rebase(moved)?))).ok()?;
        // The conditionings follow the weights to host memory; on the way back, to_device brings
        // them.
        let to_host = model.mem_bytes().device == 0;
        let guider = self
            .with_model(model, |c| if to_host { c.to_host() } else { None })
            .ok()?;
        Some(Arc::new(guider))
    }
    fn device_wanted(&self) -> u64 {
        self.model.device_wanted()
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

/// The payload linked to `port` among a node's inputs as `NodeDef::device_need` and
/// `NodeDef::host_need` get them (before an `ExecContext` exists); `None` when it is not linked
/// or not a `T`.
pub fn linked<'a, T: Payload>(inputs: &'a [(&str, Value)], port: &str) -> Option<&'a T> {
    inputs
        .iter()
        .find(|(p, _)| *p == port)
        .and_then(|(_, v)| v.as_object())
        .and_then(|o| o.downcast::<T>())
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
