//! Sampler: flow-match Euler over the model's schedule, with seeded noise, optional CFG, progress
//! and a latent preview every step, and cancellation between steps.

use std::ops::ControlFlow;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value,
};
use veetance_models::flux2::lora::{self, Flux2Lora, PatchMode};
use veetance_models::flux2::{AttentionBackend, Flux2Transformer, ForwardOptions};
use veetance_models::preview::preview_rgb;
use veetance_models::sampling::{
    self, denoise_with, image_ids, mask_to_tokens, pack_latents, seeded_noise, strength_start,
    text_ids, unpack_latents, Cfg, DenoiseExtras, Inpaint, MaskBlend, References, TextCondition,
    VelocityModel, PIXELS_PER_TOKEN,
};
use veetance_models::torch_rng::comfy_noise;

use crate::loaders::gib;
use crate::values::{
    candle_err, input, linked, model_err, object, optional_input, AttentionImpl, Conditioning,
    Latent, ModelHandle, Schedule,
};

/// The largest seed: 2^53 − 1, the largest integer every JSON tool keeps exactly.
pub const SEED_MAX: i64 = (1 << 53) - 1;

pub struct Sampler {
    schema: NodeSchema,
}

impl Sampler {
    pub fn new() -> Self {
        Sampler {
            schema: NodeSchema::new("Sampler", "Sampler", "sampling")
                .doc(
                    "Denoises a latent with the model: seeded noise, the model's schedule (klein's \
                     empirical mu unless ModelSampling changed it), flow-match Euler steps. With \
                     guidance above 1 and a negative conditioning it runs classifier-free guidance \
                     (for the base, undistilled models; the distilled klein models use guidance 1 \
                     and 4 steps). Shows a preview of the denoised estimate at every step.",
                )
                .input("model", PortType::Model, "From the loader and its patches.")
                .input("positive", PortType::Conditioning, "The prompt.")
                .optional_input(
                    "negative",
                    PortType::Conditioning,
                    "The negative prompt, used when guidance is above 1.",
                )
                .input(
                    "latent",
                    PortType::Latent,
                    "The starting latent (EmptyLatent for text-to-image).",
                )
                .param(ParamDef::int(
                    "seed",
                    0,
                    0,
                    SEED_MAX,
                    "The noise seed; the same seed gives the same image on CPU and GPU.",
                ))
                .param(ParamDef::choice(
                    "noise",
                    &["veetance", "comfyui"],
                    "veetance",
                    "Which generator draws the noise for the seed. veetance: our own, the same \
                     numbers on every device. comfyui: ComfyUI's (PyTorch's CPU generator), so \
                     that a seed paints what it paints in ComfyUI.",
                ))
                .param(ParamDef::int("steps", 4, 1, 200, "Denoising steps."))
                .param(ParamDef::choice(
                    "sampler",
                    &["euler"],
                    "euler",
                    "The step rule (flow-match Euler).",
                ))
                .param(ParamDef::float(
                    "guidance",
                    1.0,
                    0.0,
                    30.0,
                    0.1,
                    "Classifier-free guidance scale; 1 turns it off.",
                ))
                .param(ParamDef::bool(
                    "add_noise",
                    true,
                    "Add the seeded noise to the latent. Off: the input latent is taken as the \
                     starting noise as is.",
                ))
                .param(ParamDef::float(
                    "strength",
                    1.0,
                    0.0,
                    1.0,
                    0.01,
                    "img2img and inpainting (diffusers' strength): how much of the schedule runs. \
                     The first int(steps · (1 − strength)) steps are skipped and the latent \
                     (from VaeEncode) is noised to the sigma where the run starts; 1 runs them \
                     all from pure noise.",
                ))
                .output("latent", PortType::Latent, "The denoised latent."),
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// The model with its attention and compile patches applied.
struct Patched<'a> {
    model: &'a Flux2Transformer,
    attention: AttentionImpl,
    compiled: bool,
}

impl VelocityModel for Patched<'_> {
    fn velocity(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> veetance_models::Result<Tensor> {
        let attention = match self.attention {
            AttentionImpl::Plain => AttentionBackend::Plain,
            AttentionImpl::Chunked(n) => AttentionBackend::Chunked(n),
            AttentionImpl::Flash => AttentionBackend::Flash,
            AttentionImpl::FlashFp8 => AttentionBackend::FlashFp8,
        };
        let opts = ForwardOptions {
            attention,
            fused: self.compiled,
        };
        Ok(self
            .model
            .forward_with(img, img_ids, txt, txt_ids, t, &opts)?)
    }
}

/// The transformer as this run uses it: the handle's model when it is on its device (or no
/// device room is set and it is), else placed for streaming: as many blocks on the device as the
/// room leaves after `activations`, the others copied there block by block at every step.
///
/// The room is what the node may allocate beyond what its inputs already hold on the device, so
/// a model that is already on the device costs nothing more; one in host memory (left there by the
/// loader, or offloaded by the cache) has its weights counted against the room.
pub fn placed_model(
    ctx: &ExecContext<'_>,
    handle: &ModelHandle,
    activations: u64,
) -> Result<Arc<Flux2Transformer>, NodeError> {
    let model = &handle.model;
    let device = &handle.device;
    let all_home = model.weight_bytes().host == 0 || (device.is_cpu() && model.device().is_cpu());
    let room = match ctx.device_room() {
        None if all_home => return Ok(model.clone()),
        // No budget: the whole model goes to its device.
        None => u64::MAX,
        Some(_) if all_home && !device.is_cpu() => return Ok(model.clone()),
        Some(room) => room,
    };
    let plan = model.plan_blocks(room.saturating_sub(activations));
    if plan.streamed > 0 {
        let blocks = model.config().num_layers + model.config().num_single_layers;
        ctx.warn(format!(
            "streaming {} of {blocks} transformer blocks from host memory at every step: the \
             device room ({}) minus about {} for activations does not hold the weights ({}); \
             slower but the same result",
            plan.streamed,
            gib(room),
            gib(activations),
            gib(model.weight_bytes().total()),
        ));
    }
    if plan.over_room {
        ctx.warn(format!(
            "even with every block streamed the sampler needs about {} on the device, more than \
             the room ({}); it may run out of memory: lower the resolution, use PatchAttention's \
             chunked attention, or raise --vram-budget",
            gib(plan.device_bytes + activations),
            gib(room)
        ));
    }
    let placed = model
        .place(device, plan.blocks)
        .map_err(candle_err("placing the model's weights on the device"))?;
    Ok(Arc::new(placed))
}

/// Device bytes one forward pass of `handle`'s model allocates beside its weights, for `batch`
/// latents of `img_tokens` tokens and a prompt of `txt_tokens`.
fn activations(handle: &ModelHandle, batch: usize, img_tokens: usize, txt_tokens: usize) -> u64 {
    // The estimate's score-matrix rows: flash keeps none (one row stands for its tiles).
    let chunk = match handle.patches.attention {
        AttentionImpl::Plain => None,
        AttentionImpl::Chunked(n) => Some(n),
        AttentionImpl::Flash | AttentionImpl::FlashFp8 => Some(1),
    };
    handle
        .model
        .activation_bytes(batch, img_tokens, txt_tokens, chunk)
        + lora_bytes(handle)
}

/// Device bytes the LoRA patches add while the sampler runs: at most a merged copy of each
/// patched linear (side paths hold only the small factors).
fn lora_bytes(handle: &ModelHandle) -> u64 {
    if handle.patches.loras.is_empty() {
        return 0;
    }
    let loras: Vec<&Flux2Lora> = handle.patches.loras.iter().map(|l| &*l.lora).collect();
    lora::merged_bytes(handle.model.config(), handle.model.dtype(), &loras)
}

/// `placed` with the handle's LoRAs applied (see `veetance_models::flux2::lora`): merged into
/// dense weights on the device, a side path for quantized weights and streamed blocks. The
/// handle's base weights are not touched; the patched copy lives for this run.
fn with_loras(
    handle: &ModelHandle,
    placed: Arc<Flux2Transformer>,
) -> Result<Arc<Flux2Transformer>, NodeError> {
    if handle.patches.loras.is_empty() {
        return Ok(placed);
    }
    let loras: Vec<(&Flux2Lora, f64)> = handle
        .patches
        .loras
        .iter()
        .map(|l| (&*l.lora, l.strength))
        .collect();
    let (patched, _report) = lora::apply_loras(&placed, &loras, PatchMode::Auto)
        .map_err(model_err("applying the LoRAs"))?;
    Ok(Arc::new(patched))
}

/// The sigmas for `steps` on an image of `tokens` tokens under `schedule`.
pub fn sigmas(schedule: Schedule, steps: usize, tokens: usize) -> Vec<f32> {
    match schedule {
        Schedule::EmpiricalMu => sampling::schedule(steps, tokens),
        Schedule::FixedShift(shift) => {
            let n = steps as f64;
            let mut s: Vec<f32> = (0..steps)
                .map(|i| {
                    let t = 1.0 - i as f64 / n;
                    (shift * t / (1.0 + (shift - 1.0) * t)) as f32
                })
                .collect();
            s.push(0.0);
            s
        }
    }
}

fn preview_image(x0: &Tensor, h: usize, w: usize) -> Option<Image> {
    let rgb = preview_rgb(x0, Some((h, w))).ok()?;
    let data: Vec<f32> = rgb.pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    Image::new(1, rgb.height as u32, rgb.width as u32, 3, data).ok()
}

/// Where the starting noise comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseSource {
    /// Veetance's own seeded noise ([`seeded_noise`]): the same numbers on every device.
    Veetance(u64),
    /// ComfyUI's noise for this seed ([`comfy_noise`]: `torch.manual_seed` + one `torch.randn`
    /// of the whole latent on the CPU in f32, as `comfy.sample.prepare_noise` draws it), so that a
    /// seed gives ComfyUI's picture.
    ComfyUi(u64),
    /// Zeros, as ComfyUI's `DisableNoise`: the start is `(1 − σ₀) · latent`.
    Zeros,
    /// None added: the input latent is the start as it is (the Sampler's `add_noise` off).
    Off,
}

impl NoiseSource {
    fn seed(self) -> Option<u64> {
        match self {
            NoiseSource::Veetance(seed) | NoiseSource::ComfyUi(seed) => Some(seed),
            NoiseSource::Zeros | NoiseSource::Off => None,
        }
    }
}

/// Whose rules a run's inpainting mask follows (see [`MaskBlend`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskRules {
    /// diffusers' `Flux2KleinInpaintPipeline`: the mask binarised at 0.5, resized bilinearly to
    /// the token grid, the kept region re-noised after each step.
    Diffusers,
    /// ComfyUI's `KSamplerX0Inpaint`: the mask resized bilinearly as it is (soft edges kept), the
    /// kept region blended in before each model call and into its clean estimate.
    ComfyUi,
}

/// What one sampling run takes: the model, its conditionings and guidance, the start, the noise
/// and the sigmas. The native `Sampler` and ComfyUI's `SamplerCustomAdvanced` both fill it.
/// References come with the conditionings, an inpainting mask with the latent.
#[derive(Clone, Copy, Debug)]
pub struct SampleArgs<'a> {
    pub model: &'a ModelHandle,
    pub positive: &'a Conditioning,
    /// Used when `guidance` is not 1.
    pub negative: Option<&'a Conditioning>,
    /// Classifier-free guidance scale; 1 runs no negative pass.
    pub guidance: f64,
    /// The starting latent `(B, 128, h, w)`.
    pub latent: &'a Latent,
    pub noise: NoiseSource,
    /// From 1 (or the start's noise level) down to 0: one step per pair.
    pub sigmas: &'a [f32],
    /// The step rule's name, for the image's generation parameters (only `euler` exists).
    pub sampler: &'a str,
    /// How the latent's `noise_mask`, if any, is applied.
    pub mask_rules: MaskRules,
}

/// What sampling gives: the final latent and the model's last estimate of the clean latent
/// (ComfyUI's `denoised_output`), both with the generation parameters in their `meta`.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub latent: Latent,
    pub denoised: Latent,
}

/// Device bytes a sampling run of `model` on `latent` with `positive` allocates beside the
/// weights (see `activations`); `None` on the CPU or when the shapes cannot be read. Both
/// samplers' `NodeDef::device_need`.
pub fn sampling_need(model: &ModelHandle, latent: &Latent, positive: &Conditioning) -> Option<u64> {
    if model.device.is_cpu() {
        return None;
    }
    let (batch, _, h, w) = latent.samples.dims4().ok()?;
    let txt_tokens = positive.hidden.dim(1).ok()?;
    Some(activations(
        model,
        batch,
        h * w + reference_tokens(positive),
        txt_tokens,
    ))
}

/// Host bytes a sampling run allocates when the model runs on the CPU (its activations, as
/// [`sampling_need`] counts them on a device, and a few latent-sized buffers: the noise, the
/// state, the velocity, the clean estimate); `None` when the model is on a device (its host use
/// is the latent's size) or the shapes cannot be read. Both samplers' `NodeDef::host_need`.
pub fn sampling_host_need(
    model: &ModelHandle,
    latent: &Latent,
    positive: &Conditioning,
) -> Option<u64> {
    if !model.device.is_cpu() {
        return None;
    }
    let (batch, channels, h, w) = latent.samples.dims4().ok()?;
    let txt_tokens = positive.hidden.dim(1).ok()?;
    let buffers = 6 * (batch * channels * h * w) as u64 * 4;
    Some(
        activations(model, batch, h * w + reference_tokens(positive), txt_tokens)
            .saturating_add(buffers),
    )
}

/// Tokens the references of `c` add to the image sequence.
fn reference_tokens(c: &Conditioning) -> usize {
    c.references
        .iter()
        .filter_map(|r| r.dims4().ok())
        .map(|(_, _, h, w)| h * w)
        .sum()
}

/// Runs flow-match Euler along `args.sigmas`: the one sampling routine of both samplers, with
/// progress and a preview at every step, cancellation between steps, and the model placed for
/// the device room (blocks streamed when it does not hold them).
pub fn sample(ctx: &ExecContext<'_>, args: SampleArgs<'_>) -> Result<Sampled, NodeError> {
    let SampleArgs {
        model: handle,
        positive,
        negative,
        guidance,
        latent,
        noise,
        sigmas,
        sampler,
        mask_rules,
    } = args;
    if sampler != "euler" {
        return Err(NodeError::failed(format!(
            "sampler '{sampler}' is not supported: only euler (flow-match Euler) is"
        )));
    }
    if sigmas.len() < 2 {
        return Err(NodeError::failed(format!(
            "{} sigmas make no step: a schedule needs at least two",
            sigmas.len()
        )));
    }
    let device = &handle.device;
    let dtype = handle.model.dtype();
    let cerr = candle_err("sampler");
    let (batch, channels, h, w) = latent.samples.dims4().map_err(&cerr)?;
    let ctx_dim = handle.model.config().joint_attention_dim;
    for (name, c) in [("positive", Some(positive)), ("negative", negative)] {
        if let Some(c) = c {
            let found = c.hidden.dim(2).map_err(&cerr)?;
            if found != ctx_dim {
                return Err(NodeError::failed(format!(
                    "input '{name}': the conditioning is {found} wide but the model takes \
                     {ctx_dim}; the text encoder does not belong to this model (klein-4B takes \
                     Qwen3-4B, klein-9B Qwen3-8B)"
                )));
            }
        }
    }

    let start = latent
        .samples
        .to_device(device)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(&cerr)?;
    let noise_tensor = match noise {
        NoiseSource::Veetance(seed) => Some(
            seeded_noise(
                seed,
                batch,
                h * PIXELS_PER_TOKEN,
                w * PIXELS_PER_TOKEN,
                DType::F32,
                device,
            )
            .map_err(model_err("sampler"))?,
        ),
        NoiseSource::ComfyUi(seed) => {
            let shape = [batch, channels, h, w];
            Some(
                Tensor::from_vec(comfy_noise(seed, &shape), &shape, &candle_core::Device::Cpu)
                    .and_then(|t| t.to_device(device))
                    .map_err(&cerr)?,
            )
        }
        NoiseSource::Zeros => Some(start.zeros_like().map_err(&cerr)?),
        NoiseSource::Off => None,
    };
    // Inpainting keeps the latent where the mask is 0 and needs the run's noise to re-noise it.
    let inpaint = match &latent.noise_mask {
        None => None,
        Some(mask) => {
            let binarize = mask_rules == MaskRules::Diffusers;
            let tokens = mask_to_tokens(&mask.to_device(device).map_err(&cerr)?, h, w, binarize)
                .map_err(model_err("sampler: the latent's noise mask"))?;
            let mask_batch = tokens.dim(0).map_err(&cerr)?;
            if mask_batch != 1 && mask_batch != batch {
                return Err(NodeError::failed(format!(
                    "input 'latent': its noise mask has {mask_batch} images but the latent {batch}; \
                     give one mask or one per image"
                )));
            }
            let noise = match &noise_tensor {
                Some(n) => n.clone(),
                None => start.zeros_like().map_err(&cerr)?,
            };
            let pack = |t: &Tensor| -> Result<Tensor, NodeError> {
                pack_latents(t).map_err(model_err("sampler"))
            };
            Some((pack(&start)?, pack(&noise)?, tokens))
        }
    };
    let start = match noise_tensor {
        // Flow matching's noising: σ₀·noise + (1 − σ₀)·latent.
        Some(n) => {
            let s0 = f64::from(sigmas[0]);
            ((n * s0).map_err(&cerr)? + (start * (1.0 - s0)).map_err(&cerr)?).map_err(&cerr)?
        }
        None => start,
    };
    let x = pack_latents(&start.to_dtype(dtype).map_err(&cerr)?).map_err(model_err("sampler"))?;
    let img_ids = image_ids(h, w, device).map_err(model_err("sampler"))?;
    let batched = |c: &Conditioning| -> Result<(Tensor, Tensor), NodeError> {
        let txt = c
            .hidden
            .to_device(device)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| {
                let (_, l, d) = t.dims3()?;
                t.broadcast_as((batch, l, d))?.contiguous()
            })
            .map_err(&cerr)?;
        let ids = text_ids(txt.dim(1).map_err(&cerr)?, device).map_err(model_err("sampler"))?;
        Ok((txt, ids))
    };
    let (pos_txt, pos_ids) = batched(positive)?;
    let neg = match negative {
        Some(n) if guidance != 1.0 => Some(batched(n)?),
        _ => None,
    };
    if guidance != 1.0 && negative.is_none() {
        ctx.warn(format!(
            "guidance {guidance} needs a negative conditioning; sampling without guidance"
        ));
    }
    let references = |c: &Conditioning| -> Result<Option<References>, NodeError> {
        if c.references.is_empty() {
            return Ok(None);
        }
        References::new(&c.references, device)
            .map(Some)
            .map_err(model_err("sampler: the conditioning's references"))
    };
    let pos_refs = references(positive)?;
    let neg_refs = match (negative, &neg) {
        (Some(n), Some(_)) => Some(references(n)?),
        _ => None,
    };
    let ref_tokens = reference_tokens(positive).max(negative.map_or(0, reference_tokens));
    let activations = activations(
        handle,
        batch,
        h * w + ref_tokens,
        pos_txt.dim(1).map_err(&cerr)?,
    );
    let placed = with_loras(handle, placed_model(ctx, handle, activations)?)?;
    let model = Patched {
        model: &placed,
        attention: handle.patches.attention,
        compiled: handle.patches.compiled,
    };
    let total = sigmas.len() - 1;
    ctx.progress(0, total as u64);
    let mut last_x0: Option<Tensor> = None;
    let extras = DenoiseExtras {
        references: pos_refs.as_ref(),
        negative_references: neg_refs.as_ref().map(Option::as_ref),
        inpaint: inpaint.as_ref().map(|(image, noise, mask)| Inpaint {
            image,
            noise,
            mask,
            blend: match mask_rules {
                MaskRules::Diffusers => MaskBlend::AfterStep,
                MaskRules::ComfyUi => MaskBlend::BeforeModel,
            },
        }),
    };
    let out = denoise_with(
        &model,
        &x,
        &img_ids,
        TextCondition {
            txt: &pos_txt,
            txt_ids: &pos_ids,
        },
        neg.as_ref().map(|(txt, ids)| Cfg {
            negative: TextCondition { txt, txt_ids: ids },
            scale: guidance,
        }),
        sigmas,
        extras,
        |step, x0| {
            if let Some(image) = preview_image(x0, h, w) {
                ctx.preview(image);
            }
            last_x0 = Some(x0.clone());
            ctx.progress(step.index as u64 + 1, step.total as u64);
            if ctx.cancel.is_cancelled() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .map_err(model_err("sampling"))?;
    let unpacked = |t: &Tensor| -> Result<Tensor, NodeError> {
        unpack_latents(t, h, w)
            .map_err(model_err("sampler"))?
            .to_dtype(DType::F32)
            .map_err(&cerr)
    };
    let samples = unpacked(&out)?;
    let denoised = match &last_x0 {
        Some(x0) => unpacked(x0)?,
        None => samples.clone(),
    };

    let mut parameters = positive.prompt.clone();
    if let Some(n) = negative.filter(|_| neg.is_some()) {
        parameters.push_str(&format!("\nNegative prompt: {}", n.prompt));
    }
    let seed = noise
        .seed()
        .map_or_else(|| "none".to_string(), |s| s.to_string());
    parameters.push_str(&format!(
        "\nSteps: {total}, Sampler: {sampler}, Guidance: {guidance}, Seed: {seed}, Size: {}x{}, \
         Model: {}",
        w * PIXELS_PER_TOKEN,
        h * PIXELS_PER_TOKEN,
        handle
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if let NoiseSource::ComfyUi(_) = noise {
        parameters.push_str(", Noise: comfyui");
    }
    if !positive.references.is_empty() {
        parameters.push_str(&format!(", References: {}", positive.references.len()));
    }
    let meta = vec![("parameters".to_string(), parameters)];
    Ok(Sampled {
        // ComfyUI's sampler output keeps the input latent's mask.
        latent: Latent {
            noise_mask: latent.noise_mask.clone(),
            ..Latent::new(samples, meta.clone())
        },
        denoised: Latent::new(denoised, meta),
    })
}

impl NodeDef for Sampler {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// The forward pass's activations (see `activations`), so that the engine makes room for
    /// them before the first run; the weights the sampler places come on top, as the engine
    /// counts them from the model input.
    fn device_need(
        &self,
        _params: &veetance_core::Params,
        inputs: &[(&str, Value)],
    ) -> Option<u64> {
        sampling_need(
            linked::<ModelHandle>(inputs, "model")?,
            linked::<Latent>(inputs, "latent")?,
            linked::<Conditioning>(inputs, "positive")?,
        )
    }

    /// On the CPU, the same activations in host memory (see [`sampling_host_need`]).
    fn host_need(&self, _params: &veetance_core::Params, inputs: &[(&str, Value)]) -> Option<u64> {
        sampling_host_need(
            linked::<ModelHandle>(inputs, "model")?,
            linked::<Latent>(inputs, "latent")?,
            linked::<Conditioning>(inputs, "positive")?,
        )
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let handle = input::<ModelHandle>(ctx, "model", PortType::Model)?;
        let positive = input::<Conditioning>(ctx, "positive", PortType::Conditioning)?;
        let negative = optional_input::<Conditioning>(ctx, "negative", PortType::Conditioning)?;
        let latent = input::<Latent>(ctx, "latent", PortType::Latent)?;
        let seed = ctx.params.int("seed")? as u64;
        let steps = ctx.params.int("steps")? as usize;
        let noise = match (ctx.params.bool("add_noise")?, ctx.params.str("noise")?) {
            (false, _) => NoiseSource::Off,
            (true, "comfyui") => NoiseSource::ComfyUi(seed),
            (true, _) => NoiseSource::Veetance(seed),
        };
        let (_, _, h, w) = latent.samples.dims4().map_err(candle_err("sampler"))?;
        let strength = ctx.params.float("strength")?;
        let skip = strength_start(steps, strength);
        if skip >= steps {
            return Err(NodeError::failed(format!(
                "param 'strength': {strength} of {steps} steps leaves no step to run; raise the \
                 strength or the steps"
            )));
        }
        let sigmas = sigmas(handle.patches.schedule, steps, h * w)[skip..].to_vec();
        let sampled = sample(
            ctx,
            SampleArgs {
                model: handle,
                positive,
                negative,
                guidance: ctx.params.float("guidance")?,
                latent,
                noise,
                sigmas: &sigmas,
                sampler: ctx.params.str("sampler")?,
                mask_rules: MaskRules::Diffusers,
            },
        )?;
        Ok(vec![object(PortType::Latent, sampled.latent)])
    }
}
