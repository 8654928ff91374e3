//! ComfyUI's node classes for FLUX.2 [klein] text-to-image, over Veetance's own nodes, so that
//! ComfyUI graphs (its klein templates) run as they are.
//!
//! Every class keeps ComfyUI's class name, input names, widget order (params in the order of
//! ComfyUI's `widgets_values`), defaults, ranges and outputs (named as ComfyUI names them:
//! `MODEL`, `CONDITIONING`, ..., `output` / `denoised_output`). The work is the FLUX.2 family's:
//! the loaders, text encoding, VAE decoding and, for `SamplerCustomAdvanced`, the native
//! Sampler's one sampling routine. ComfyUI's finer split of a sampler's inputs becomes light
//! values in the one graph and cache: NOISE ([`values::Noise`], a seed), SAMPLER
//! ([`values::SamplerChoice`], a name), SIGMAS ([`values::Sigmas`]), and GUIDER
//! (`veetance_nodes_flux2::values::Guider`, which holds the model's handle and so moves with the
//! model's storage group in the cache).
//!
//! `SaveImage` is the basic family's (it has ComfyUI's names and embeds ComfyUI's `prompt` and
//! `workflow` text); `Note` and `MarkdownNote` are UI-only and dropped by the importer.
//!
//! May depend on `veetance-core`, `veetance-models`, `veetance-nodes-basic`,
//! `veetance-nodes-flux2` and candle-core.

pub mod conditioning;
pub mod edit;
pub mod image;
pub mod loaders;
pub mod primitives;
pub mod sampling;
pub mod values;

use veetance_core::NodeRegistry;

/// Registers ComfyUI's node classes.
pub fn register(reg: &mut NodeRegistry) {
    reg.add(loaders::UnetLoader::new());
    reg.add(loaders::ClipLoader::new());
    reg.add(loaders::VaeLoader::new());
    reg.add(loaders::LoraLoaderModelOnly::new());
    reg.add(conditioning::ClipTextEncode::new());
    reg.add(conditioning::ConditioningZeroOut::new());
    reg.add(sampling::CfgGuider::new());
    reg.add(sampling::BasicGuider::new());
    reg.add(sampling::KSamplerSelect::new());
    reg.add(sampling::RandomNoise::new());
    reg.add(sampling::DisableNoise::new());
    reg.add(sampling::Flux2Scheduler::new());
    reg.add(sampling::EmptyFlux2LatentImage::new());
    reg.add(sampling::SamplerCustomAdvanced::new());
    reg.add(image::VaeDecode::new());
    reg.add(edit::VaeEncode::new());
    reg.add(edit::ReferenceLatent::new());
    reg.add(edit::FluxKvCache::new());
    reg.add(image::PreviewImage::new());
    reg.add(primitives::Primitive::int());
    reg.add(primitives::Primitive::float());
    reg.add(primitives::Primitive::string());
    reg.add(primitives::Primitive::string_multiline());
    reg.add(primitives::Primitive::boolean());
}
