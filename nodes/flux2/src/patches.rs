//! Patch nodes: each returns a new model handle sharing the same weights, with one setting
//! changed. Nothing is copied, and the loader's cached output stays valid.

use veetance_core::{ExecContext, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value};

use crate::values::{input, object, AttentionImpl, ModelHandle, Schedule};

/// Why our CUDA kernels cannot run this model, if they cannot.
fn kernels_unavailable(model: &ModelHandle) -> Option<String> {
    if !cfg!(feature = "cuda") {
        return Some("needs a build with the cuda feature".into());
    }
    if !model.device.is_cuda() {
        return Some("needs the model on a CUDA device".into());
    }
    match model.model.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => None,
        d => Some(format!("needs bf16 or f16 weights (the model is {d:?})")),
    }
}

/// Switches `model` to our flash attention and fused kernels (what `PatchAttention(flash)` and
/// `CompileModel` do) when they apply: a CUDA build, the model on a CUDA device, bf16 or f16
/// weights. For graphs that cannot say so themselves (ComfyUI's, which have no such nodes).
/// Returns whether it did; elsewhere the model is left as it is.
pub fn use_fast_kernels_where_available(model: &mut ModelHandle) -> bool {
    if kernels_unavailable(model).is_some() {
        return false;
    }
    model.patches.attention = AttentionImpl::Flash;
    model.patches.compiled = true;
    true
}

fn model_in(ctx: &ExecContext<'_>) -> Result<ModelHandle, NodeError> {
    Ok(input::<ModelHandle>(ctx, "model", PortType::Model)?.clone())
}

pub struct PatchAttention {
    schema: NodeSchema,
}

impl PatchAttention {
    pub fn new() -> Self {
        PatchAttention {
            schema: NodeSchema::new("PatchAttention", "Patch Attention", "model_patches")
                .doc(
                    "Chooses how the transformer computes attention. plain: the whole score matrix \
                     at once (the reference). chunked: query rows in chunks, so the L×L score \
                     matrix is never in memory at once (same result, less memory). flash: our \
                     fused kernel (CUDA, bf16/f16): online softmax, no L×L matrix, about 17× \
                     faster than plain on an H200; elsewhere it falls back to plain with a warning. \
                     flash_fp8: with CompileModel on a Hopper GPU with cuDNN, q, k, v and the \
                     softmax in fp8 (e4m3) through cuDNN's FP8 attention: faster, with about 6% \
                     relative error in each attention's output; elsewhere it is flash.",
                )
                .input("model", PortType::Model, "The model to patch.")
                .param(ParamDef::choice(
                    "attention",
                    &["plain", "chunked", "flash", "flash_fp8"],
                    "plain",
                    "The attention implementation.",
                ))
                .param(ParamDef::int(
                    "chunk_size",
                    1024,
                    16,
                    65536,
                    "Query tokens per chunk (chunked only).",
                ))
                .output("model", PortType::Model, "The same weights, patched."),
        }
    }
}

impl Default for PatchAttention {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for PatchAttention {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let mut model = model_in(ctx)?;
        model.patches.attention = match ctx.params.str("attention")? {
            "chunked" => AttentionImpl::Chunked(ctx.params.int("chunk_size")? as usize),
            "flash" => {
                if let Some(why) = kernels_unavailable(&model) {
                    ctx.warn(format!("PatchAttention: flash {why}; attention runs plain"));
                }
                AttentionImpl::Flash
            }
            "flash_fp8" => {
                if let Some(why) = kernels_unavailable(&model) {
                    ctx.warn(format!(
                        "PatchAttention: flash_fp8 {why}; attention runs plain"
                    ));
                }
                AttentionImpl::FlashFp8
            }
            _ => AttentionImpl::Plain,
        };
        Ok(vec![object(PortType::Model, model)])
    }
}

pub struct ModelSampling {
    schema: NodeSchema,
}

impl ModelSampling {
    pub fn new() -> Self {
        ModelSampling {
            schema: NodeSchema::new("ModelSampling", "Model Sampling", "model_patches")
                .doc(
                    "Sets the noise schedule the sampler follows. empirical_mu: klein's default, a \
                     shift chosen from the image size and the step count. fixed_shift: \
                     sigma(t) = shift·t / (1 + (shift − 1)·t) for every size.",
                )
                .input("model", PortType::Model, "The model to patch.")
                .param(ParamDef::choice(
                    "schedule",
                    &["empirical_mu", "fixed_shift"],
                    "empirical_mu",
                    "How sigmas are spaced.",
                ))
                .param(ParamDef::float(
                    "shift",
                    3.0,
                    0.01,
                    100.0,
                    0.01,
                    "The shift for fixed_shift (1 = no shift).",
                ))
                .output("model", PortType::Model, "The same weights, patched."),
        }
    }
}

impl Default for ModelSampling {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for ModelSampling {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let mut model = model_in(ctx)?;
        model.patches.schedule = match ctx.params.str("schedule")? {
            "fixed_shift" => Schedule::FixedShift(ctx.params.float("shift")?),
            _ => Schedule::EmpiricalMu,
        };
        Ok(vec![object(PortType::Model, model)])
    }
}

pub struct CompileModel {
    schema: NodeSchema,
}

impl CompileModel {
    pub fn new() -> Self {
        CompileModel {
            schema: NodeSchema::new("CompileModel", "Compile Model", "model_patches")
                .doc(
                    "Switches the model to the fused execution path: our CUDA kernels for the \
                     work around the matmuls (modulated LayerNorm, QK norm + RoPE + head split, \
                     gated residuals, SwiGLU; with flash attention the single block's attention \
                     and MLP outputs land side by side, no concatenation). CUDA with bf16/f16 \
                     weights only: elsewhere the model runs unfused and a warning says so.",
                )
                .input("model", PortType::Model, "The model to compile.")
                .output(
                    "model",
                    PortType::Model,
                    "The same weights, marked for the fused path.",
                ),
        }
    }
}

impl Default for CompileModel {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for CompileModel {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let mut model = model_in(ctx)?;
        model.patches.compiled = true;
        if let Some(why) = kernels_unavailable(&model) {
            ctx.warn(format!(
                "CompileModel: the fused path {why}; the model runs unfused"
            ));
        }
        Ok(vec![object(PortType::Model, model)])
    }
}
