//! LoraLoader: LoRAs on a model handle, applied when the sampler materialises the model.
//!
//! The node reads the LoRA file (small) and maps it onto the transformer's layers
//! (`veetance_models::flux2::lora`), then returns the input handle with the LoRA added to its
//! patches: the same `Arc` of base weights, so the loader's cached output stays valid, the cache
//! counts the weights once and moves the patched handle with the base (one storage group), and
//! neither a new strength nor another LoRA ever reloads or copies the base. The sampler applies the
//! patches to the model it runs (merged into dense weights on the device, a low-rank side path for
//! fp8/GGUF weights and streamed blocks) and drops the patched copy afterwards.

use std::path::Path;
use std::sync::Arc;

use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};
use veetance_models::flux2::lora::load_lora;

use crate::files;
use crate::loaders::check_file;
use crate::values::{input, object, AppliedLora, ModelHandle};

/// The models folder's subfolder LoRAs are found in (ComfyUI's).
pub const LORA_FOLDER: &str = "loras";

/// `model` with the LoRA at `path` added at `strength`; `param` names the file param in errors.
/// LoraLoader and ComfyUI's LoraLoaderModelOnly.
pub fn add_lora(
    ctx: &ExecContext<'_>,
    model: &ModelHandle,
    path: &Path,
    strength: f64,
    param: &str,
) -> Result<ModelHandle, NodeError> {
    let lora = load_lora(path, model.model.config())
        .map_err(|e| NodeError::failed(format!("param '{param}': {e}")))?;
    if !lora.skipped.is_empty() {
        ctx.warn(format!(
            "LoRA {}: {} text-encoder tensors skipped (only the diffusion model is patched here)",
            path.display(),
            lora.skipped.len()
        ));
    }
    let mut out = model.clone();
    out.patches.loras.push(AppliedLora {
        lora: Arc::new(lora),
        strength,
    });
    Ok(out)
}

/// The cache fingerprint of a LoRA file param: the resolved file's path, size and modification
/// time (the strength is a param, so it is in the key already).
pub fn lora_fingerprint(params: &Params, param: &str, env: &RunEnv) -> Freshness {
    let path =
        files::resolve(params.str(param).unwrap_or_default(), LORA_FOLDER, env).unwrap_or_default();
    files::fingerprint(&[path], false)
}

pub struct LoraLoader {
    schema: NodeSchema,
}

impl LoraLoader {
    pub fn new() -> Self {
        LoraLoader {
            schema: NodeSchema::new("LoraLoader", "Load LoRA", "loaders")
                .doc(
                    "Applies a LoRA to the diffusion model at a strength. Reads diffusers/PEFT \
                     (transformer.…lora_A), kohya/ComfyUI (lora_unet_…lora_down, .alpha) and \
                     BFL (diffusion_model.…lora_A) names; chain several nodes for several LoRAs. \
                     The base weights are shared, never reloaded: a new strength re-runs only \
                     this node and what follows. Dense weights get the LoRA merged in when the \
                     sampler runs; fp8 and GGUF weights a low-rank side path.",
                )
                .input("model", PortType::Model, "The model to patch.")
                .param(
                    ParamDef::path(
                        "file",
                        "",
                        Some(LORA_FOLDER),
                        "LoRA file name in <models>/loras/, or a path (.safetensors).",
                    )
                    .constant(),
                )
                .param(ParamDef::float(
                    "strength",
                    1.0,
                    -100.0,
                    100.0,
                    0.01,
                    "How strongly the LoRA applies (0: not at all, negative: reversed).",
                ))
                .output("model", PortType::Model, "The same weights with the LoRA."),
        }
    }
}

impl Default for LoraLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for LoraLoader {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        check_file(params, "file", LORA_FOLDER, env)
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        lora_fingerprint(params, "file", env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let model = input::<ModelHandle>(ctx, "model", PortType::Model)?;
        let path = files::resolve(ctx.params.str("file")?, LORA_FOLDER, ctx.env)
            .map_err(|m| NodeError::failed(format!("param 'file': {m}")))?;
        let strength = ctx.params.float("strength")?;
        let out = add_lora(ctx, model, &path, strength, "file")?;
        Ok(vec![object(PortType::Model, out)])
    }
}
