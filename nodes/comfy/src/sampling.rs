//! ComfyUI's custom-sampling classes for FLUX.2 [klein]: the guiders, `KSamplerSelect`,
//! `RandomNoise` / `DisableNoise`, `Flux2Scheduler`, `EmptyFlux2LatentImage` and
//! `SamplerCustomAdvanced`.
//!
//! ComfyUI splits a sampler's inputs into values (noise, guider, sampler, sigmas); here they are
//! light values flowing through the one graph and cache, and `SamplerCustomAdvanced` runs the
//! native `Sampler`'s routine (`veetance_nodes_flux2::sampler::sample`) on them, so the same
//! model, prompts, seed and schedule give the same pixels on either path.

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, ParamKind, Params, PortType, Value,
};
use veetance_models::sampling::{self, LATENT_CHANNELS, PIXELS_PER_TOKEN};
use veetance_nodes_flux2::sampler::{
    sample, sampling_host_need, sampling_need, MaskRules, NoiseSource, SampleArgs, SEED_MAX,
};
use veetance_nodes_flux2::values::{
    candle_err, input, linked, object, Conditioning, Guider, Latent, ModelHandle,
};

use crate::values::{Noise, SamplerChoice, Sigmas};

/// ComfyUI's `MAX_RESOLUTION`.
const MAX_RESOLUTION: i64 = 16384;

/// An integer widget with ComfyUI's `step` (the UI's increment; values between are accepted).
fn int_step(name: &str, default: i64, min: i64, max: i64, step: i64, doc: &str) -> ParamDef {
    ParamDef::new(
        name,
        ParamKind::Int {
            default,
            min,
            max,
            step,
        },
        doc,
    )
}

// ---------------------------------------------------------------- guiders

pub struct CfgGuider {
    schema: NodeSchema,
}

impl CfgGuider {
    pub fn new() -> Self {
        CfgGuider {
            schema: NodeSchema::new("CFGGuider", "CFG Guider", "model/sampling/guiders")
                .doc(
                    "ComfyUI's CFGGuider: the model with a positive and a negative conditioning \
                     and the classifier-free guidance scale, for SamplerCustomAdvanced. At cfg 1 \
                     the negative is not run. Holds the model's handle (no weights copied).",
                )
                .input("model", PortType::Model, "The diffusion model.")
                .input("positive", PortType::Conditioning, "The prompt.")
                .input("negative", PortType::Conditioning, "The negative prompt.")
                .param(ParamDef::float(
                    "cfg",
                    8.0,
                    0.0,
                    100.0,
                    0.1,
                    "Classifier-free guidance scale; 1 turns it off.",
                ))
                .output("GUIDER", PortType::Guider, "The guider."),
        }
    }
}

impl Default for CfgGuider {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for CfgGuider {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let guider = Guider {
            model: input::<ModelHandle>(ctx, "model", PortType::Model)?.clone(),
            positive: input::<Conditioning>(ctx, "positive", PortType::Conditioning)?.clone(),
            negative: Some(input::<Conditioning>(ctx, "negative", PortType::Conditioning)?.clone()),
            cfg: ctx.params.float("cfg")?,
        };
        Ok(vec![object(PortType::Guider, guider)])
    }
}

pub struct BasicGuider {
    schema: NodeSchema,
}

impl BasicGuider {
    pub fn new() -> Self {
        BasicGuider {
            schema: NodeSchema::new("BasicGuider", "Basic Guider", "model/sampling/guiders")
                .doc(
                    "ComfyUI's BasicGuider: the model with one conditioning and no guidance, for \
                     SamplerCustomAdvanced (the distilled klein models).",
                )
                .input("model", PortType::Model, "The diffusion model.")
                .input("conditioning", PortType::Conditioning, "The prompt.")
                .output("GUIDER", PortType::Guider, "The guider."),
        }
    }
}

impl Default for BasicGuider {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for BasicGuider {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let guider = Guider {
            model: input::<ModelHandle>(ctx, "model", PortType::Model)?.clone(),
            positive: input::<Conditioning>(ctx, "conditioning", PortType::Conditioning)?.clone(),
            negative: None,
            cfg: 1.0,
        };
        Ok(vec![object(PortType::Guider, guider)])
    }
}

// ---------------------------------------------------------------- sampler, noise, sigmas

/// The step rules SamplerCustomAdvanced runs: flow-match Euler only.
const SAMPLER_NAMES: [&str; 1] = ["euler"];

pub struct KSamplerSelect {
    schema: NodeSchema,
}

impl KSamplerSelect {
    pub fn new() -> Self {
        KSamplerSelect {
            schema: NodeSchema::new(
                "KSamplerSelect",
                "KSamplerSelect",
                "model/sampling/samplers",
            )
            .doc(
                "ComfyUI's KSamplerSelect: chooses the step rule by name. Veetance runs euler \
                     (flow-match Euler), the klein templates' sampler; ComfyUI's other samplers \
                     are not offered.",
            )
            .param(ParamDef::choice(
                "sampler_name",
                &SAMPLER_NAMES,
                "euler",
                "The step rule.",
            ))
            .output("SAMPLER", PortType::Sampler, "The chosen step rule."),
        }
    }
}

impl Default for KSamplerSelect {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for KSamplerSelect {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let name = ctx.params.str("sampler_name")?.to_string();
        Ok(vec![object(PortType::Sampler, SamplerChoice { name })])
    }
}

pub struct RandomNoise {
    schema: NodeSchema,
}

impl RandomNoise {
    pub fn new() -> Self {
        RandomNoise {
            schema: NodeSchema::new("RandomNoise", "RandomNoise", "model/sampling/noise")
                .doc(
                    "ComfyUI's RandomNoise: the starting noise of this seed, drawn as ComfyUI \
                     draws it (PyTorch's CPU generator over the whole latent), so that a seed \
                     paints what it paints in ComfyUI.",
                )
                .param(
                    ParamDef::int(
                        "noise_seed",
                        0,
                        0,
                        SEED_MAX,
                        "The seed (0 to 2^53-1, the largest integer JSON tools keep exactly).",
                    )
                    .with_control_after_generate(),
                )
                .output("NOISE", PortType::Noise, "The noise source."),
        }
    }
}

impl Default for RandomNoise {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for RandomNoise {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let seed = ctx.params.int("noise_seed")?;
        let seed = u64::try_from(seed)
            .map_err(|_| NodeError::failed(format!("param 'noise_seed': {seed} is negative")))?;
        Ok(vec![object(PortType::Noise, Noise { seed: Some(seed) })])
    }
}

pub struct DisableNoise {
    schema: NodeSchema,
}

impl DisableNoise {
    pub fn new() -> Self {
        DisableNoise {
            schema: NodeSchema::new("DisableNoise", "DisableNoise", "model/sampling/noise")
                .doc(
                    "ComfyUI's DisableNoise: zero noise, so that the sampler starts from the \
                     latent as ComfyUI scales it, (1 − first sigma) · latent.",
                )
                .output("NOISE", PortType::Noise, "No noise."),
        }
    }
}

impl Default for DisableNoise {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for DisableNoise {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Ok(vec![object(PortType::Noise, Noise { seed: None })])
    }
}

pub struct Flux2Scheduler {
    schema: NodeSchema,
}

impl Flux2Scheduler {
    pub fn new() -> Self {
        Flux2Scheduler {
            schema: NodeSchema::new(
                "Flux2Scheduler",
                "Flux2Scheduler",
                "sampling/custom_sampling/schedulers",
            )
            .doc(
                "ComfyUI's Flux2Scheduler: FLUX.2's schedule for this many steps at this image \
                 size (the empirical mu of width × height / 256 tokens), the sigmas the native \
                 Sampler uses.",
            )
            .param(ParamDef::int("steps", 20, 1, 4096, "Denoising steps."))
            .param(ParamDef::int(
                "width",
                1024,
                16,
                MAX_RESOLUTION,
                "Image width in pixels.",
            ))
            .param(ParamDef::int(
                "height",
                1024,
                16,
                MAX_RESOLUTION,
                "Image height in pixels.",
            ))
            .output(
                "SIGMAS",
                PortType::Sigmas,
                "steps + 1 sigmas, from 1 down to 0.",
            ),
        }
    }
}

impl Default for Flux2Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

/// `width × height / 256` rounded half to even, as Python's `round` in ComfyUI's
/// `Flux2Scheduler` (`round(width * height / (16 * 16))`).
pub fn scheduler_tokens(width: u64, height: u64) -> usize {
    let pixels = width * height;
    let (q, r) = (pixels / 256, pixels % 256);
    let up = r > 128 || (r == 128 && q % 2 == 1);
    (q + u64::from(up)) as usize
}

/// The sigmas of ComfyUI's `Flux2Scheduler`: Veetance's FLUX.2 schedule for `steps` over
/// [`scheduler_tokens`], the very function the native Sampler uses, so both paths sample along
/// the same numbers.
///
/// ComfyUI computes `generalized_time_snr_shift(torch.linspace(1, 0, steps + 1), mu, 1.0)` with
/// `mu = compute_empirical_mu(tokens, steps)`: the same shift `e^mu / (e^mu + (1/t − 1))` of the
/// same `t = 1 − i/steps` (its last `t`, 0, gives sigma 0), so the two differ only by float
/// rounding (torch's linspace and f32 arithmetic against diffusers' numpy rounding that
/// `sampling::schedule` follows): a few ulps at most, not measured against torch here.
pub fn flux2_sigmas(steps: usize, width: u64, height: u64) -> Vec<f32> {
    sampling::schedule(steps, scheduler_tokens(width, height))
}

impl NodeDef for Flux2Scheduler {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let steps = ctx.params.int("steps")? as usize;
        let width = ctx.params.int("width")? as u64;
        let height = ctx.params.int("height")? as u64;
        let sigmas = flux2_sigmas(steps, width, height);
        Ok(vec![object(PortType::Sigmas, Sigmas { sigmas })])
    }
}

// ---------------------------------------------------------------- latent

pub struct EmptyFlux2LatentImage {
    schema: NodeSchema,
}

impl EmptyFlux2LatentImage {
    pub fn new() -> Self {
        EmptyFlux2LatentImage {
            schema: NodeSchema::new("EmptyFlux2LatentImage", "Empty Flux 2 Latent", "latent")
                .doc(
                    "ComfyUI's EmptyFlux2LatentImage: zero latents (B, 128, height/16, width/16) \
                     for a FLUX.2 image; sizes that are not multiples of 16 are rounded down, as \
                     in ComfyUI.",
                )
                .param(int_step(
                    "width",
                    1024,
                    16,
                    MAX_RESOLUTION,
                    16,
                    "Image width in pixels.",
                ))
                .param(int_step(
                    "height",
                    1024,
                    16,
                    MAX_RESOLUTION,
                    16,
                    "Image height in pixels.",
                ))
                .param(ParamDef::int("batch_size", 1, 1, 4096, "Images per batch."))
                .output("LATENT", PortType::Latent, "The empty latent."),
        }
    }
}

impl Default for EmptyFlux2LatentImage {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for EmptyFlux2LatentImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// The latent itself: `batch × 128 × h/16 × w/16` f32 values.
    fn host_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        let side = |p: &str| {
            params
                .int(p)
                .ok()
                .map(|v| v.max(0) as u64 / PIXELS_PER_TOKEN as u64)
        };
        let batch = params.int("batch_size").ok()?.max(0) as u64;
        Some(batch * LATENT_CHANNELS as u64 * side("height")? * side("width")? * 4)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let w = ctx.params.int("width")? as usize / PIXELS_PER_TOKEN;
        let h = ctx.params.int("height")? as usize / PIXELS_PER_TOKEN;
        let b = ctx.params.int("batch_size")? as usize;
        let samples = Tensor::zeros((b, LATENT_CHANNELS, h, w), DType::F32, &Device::Cpu)
            .map_err(candle_err("EmptyFlux2LatentImage"))?;
        Ok(vec![object(
            PortType::Latent,
            Latent::new(samples, Vec::new()),
        )])
    }
}

// ---------------------------------------------------------------- SamplerCustomAdvanced

pub struct SamplerCustomAdvanced {
    schema: NodeSchema,
}

impl SamplerCustomAdvanced {
    pub fn new() -> Self {
        SamplerCustomAdvanced {
            schema: NodeSchema::new(
                "SamplerCustomAdvanced",
                "SamplerCustomAdvanced",
                "model/sampling/custom",
            )
            .doc(
                "ComfyUI's SamplerCustomAdvanced: denoises the latent with the guider's model and \
                 conditionings along the sigmas, from the noise, with the chosen step rule. It \
                 runs the native Sampler's routine: progress and a preview every step, streamed \
                 blocks when the model does not fit the device.",
            )
            .input("noise", PortType::Noise, "From RandomNoise.")
            .input("guider", PortType::Guider, "From CFGGuider or BasicGuider.")
            .input("sampler", PortType::Sampler, "From KSamplerSelect.")
            .input("sigmas", PortType::Sigmas, "From Flux2Scheduler.")
            .input(
                "latent_image",
                PortType::Latent,
                "The starting latent (EmptyFlux2LatentImage for text-to-image).",
            )
            .output("output", PortType::Latent, "The denoised latent.")
            .output(
                "denoised_output",
                PortType::Latent,
                "The model's estimate of the clean latent at the last step.",
            ),
        }
    }
}

impl Default for SamplerCustomAdvanced {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for SamplerCustomAdvanced {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// As the native Sampler's: the forward pass's activations, the model found through the
    /// guider.
    fn device_need(&self, _params: &Params, inputs: &[(&str, Value)]) -> Option<u64> {
        let guider = linked::<Guider>(inputs, "guider")?;
        sampling_need(
            &guider.model,
            linked::<Latent>(inputs, "latent_image")?,
            &guider.positive,
        )
    }

    /// On the CPU, the same activations in host memory.
    fn host_need(&self, _params: &Params, inputs: &[(&str, Value)]) -> Option<u64> {
        let guider = linked::<Guider>(inputs, "guider")?;
        sampling_host_need(
            &guider.model,
            linked::<Latent>(inputs, "latent_image")?,
            &guider.positive,
        )
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let noise = input::<Noise>(ctx, "noise", PortType::Noise)?;
        let guider = input::<Guider>(ctx, "guider", PortType::Guider)?;
        let sampler = input::<SamplerChoice>(ctx, "sampler", PortType::Sampler)?;
        let sigmas = input::<Sigmas>(ctx, "sigmas", PortType::Sigmas)?;
        let latent = input::<Latent>(ctx, "latent_image", PortType::Latent)?;
        let sampled = sample(
            ctx,
            SampleArgs {
                model: &guider.model,
                positive: &guider.positive,
                negative: guider.negative.as_ref(),
                guidance: guider.cfg,
                latent,
                noise: match noise.seed {
                    Some(seed) => NoiseSource::ComfyUi(seed),
                    None => NoiseSource::Zeros,
                },
                sigmas: &sigmas.sigmas,
                sampler: &sampler.name,
                mask_rules: MaskRules::ComfyUi,
            },
        )?;
        Ok(vec![
            object(PortType::Latent, sampled.latent),
            object(PortType::Latent, sampled.denoised),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_tokens_round_half_to_even_as_python() {
        assert_eq!(scheduler_tokens(1024, 1024), 4096);
        assert_eq!(scheduler_tokens(64, 64), 16);
        // 24 × 16 = 384 pixels: 1.5 tokens → 2 (even); 8 × 16 × 5 = 640: 2.5 → 2.
        assert_eq!(scheduler_tokens(24, 16), 2);
        assert_eq!(scheduler_tokens(40, 16), 2);
        // 56 × 16 = 896: 3.5 → 4; 17 × 17 = 289: 1.13 → 1; 23 × 23 = 529: 2.07 → 2.
        assert_eq!(scheduler_tokens(56, 16), 4);
        assert_eq!(scheduler_tokens(17, 17), 1);
        assert_eq!(scheduler_tokens(23, 23), 2);
        // 1000 × 1000 / 256 = 3906.25 → 3906.
        assert_eq!(scheduler_tokens(1000, 1000), 3906);
    }

    #[test]
    fn flux2_sigmas_are_the_native_samplers_for_sizes_of_whole_tokens() {
        let native = veetance_nodes_flux2::sampler::sigmas(
            veetance_nodes_flux2::values::Schedule::EmpiricalMu,
            20,
            64 * 64,
        );
        assert_eq!(flux2_sigmas(20, 1024, 1024), native);
        let s = flux2_sigmas(4, 64, 64);
        assert_eq!(s.len(), 5);
        assert_eq!((s[0], s[4]), (1.0, 0.0));
        assert!(s.windows(2).all(|p| p[0] > p[1]), "{s:?}");
    }
}
