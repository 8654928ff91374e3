//! Nodes for FLUX.2 [klein]: the golden workflow's stages as typed nodes.
//!
//! LoadDiffusionModel → PatchAttention → ModelSampling → CompileModel → Sampler → VaeDecode, with
//! LoadTextEncoder, TextEncode, LoadVae, EmptyLatent (and SaveLatent / LoadLatent) around them.
//! The model code is `veetance-models`; this crate only adapts it to the graph: values are
//! [`veetance_core::Payload`]s that report their memory, and loaders key the cache by the
//! identity of their files.

pub mod decode;
pub mod encode;
pub mod files;
pub mod image_in;
pub mod latent;
pub mod loaders;
pub mod lora;
pub mod patches;
pub mod sampler;
pub mod values;

use veetance_core::NodeRegistry;

/// Registers every FLUX.2 node.
pub fn register(reg: &mut NodeRegistry) {
    reg.add(loaders::LoadDiffusionModel::new());
    reg.add(loaders::LoadTextEncoder::new());
    reg.add(loaders::LoadVae::new());
    reg.add(lora::LoraLoader::new());
    reg.add(patches::PatchAttention::new());
    reg.add(patches::ModelSampling::new());
    reg.add(patches::CompileModel::new());
    reg.add(encode::TextEncode::new());
    reg.add(latent::EmptyLatent::new());
    reg.add(latent::SaveLatent::new());
    reg.add(latent::LoadLatent::new());
    reg.add(sampler::Sampler::new());
    reg.add(decode::VaeDecode::new());
    reg.add(image_in::VaeEncode::new());
    reg.add(image_in::AddReference::new());
}
