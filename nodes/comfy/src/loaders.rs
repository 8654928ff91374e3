//! ComfyUI's loaders: `UNETLoader`, `CLIPLoader`, `VAELoader`, `LoraLoaderModelOnly`, over the FLUX.2 nodes' loading
//! code. Names resolve in the models folder as ComfyUI lays it out (`diffusion_models/`,
//! `text_encoders/`, `vae/`), or as paths; the cache is keyed by the files' identity.

use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};
use veetance_models::flux2::LinearFormat;
use veetance_nodes_flux2::files;
use veetance_nodes_flux2::loaders::{
    encoder_files, load_diffusion_model, load_text_encoder, load_vae, EncoderFiles,
};
use veetance_nodes_flux2::lora::{add_lora, lora_fingerprint, LORA_FOLDER};
use veetance_nodes_flux2::values::{input, object, parse_dtype, ModelHandle};

const CATEGORY: &str = "model/loaders";

/// A file param as ComfyUI's loaders have it: a name in `<models>/<folder>/` (which
/// `/object_info` lists) or a path; a constant, since the cache key reads the file's identity
/// before the run.
fn file_param(name: &str, default: &str, folder: &str, doc: &str) -> ParamDef {
    ParamDef::path(name, default, Some(folder), doc).constant()
}

/// The problem of a file param that does not resolve.
fn file_problem(params: &Params, param: &str, folder: &str, env: &RunEnv) -> Vec<ParamProblem> {
    match files::resolve(params.str(param).unwrap_or_default(), folder, env) {
        Ok(_) => Vec::new(),
        Err(message) => vec![ParamProblem {
            param: param.into(),
            message,
        }],
    }
}

fn resolved(
    ctx: &ExecContext<'_>,
    param: &str,
    folder: &str,
) -> Result<std::path::PathBuf, NodeError> {
    files::resolve(ctx.params.str(param)?, folder, ctx.env)
        .map_err(|m| NodeError::failed(format!("param '{param}': {m}")))
}

fn fingerprint(params: &Params, param: &str, folder: &str, env: &RunEnv) -> Freshness {
    let path =
        files::resolve(params.str(param).unwrap_or_default(), folder, env).unwrap_or_default();
    files::fingerprint(&[path], false)
}

/// The device models load on: the GPU when this build has CUDA and one is present (ComfyUI's
/// "default"), else the CPU.
fn auto_device() -> Result<candle_core::Device, NodeError> {
    files::device("auto").map_err(NodeError::failed)
}

// ---------------------------------------------------------------- UNETLoader

/// ComfyUI's `weight_dtype` options, in its order.
const UNET_DTYPES: [&str; 4] = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"];

pub struct UnetLoader {
    schema: NodeSchema,
}

impl UnetLoader {
    pub fn new() -> Self {
        UnetLoader {
            schema: NodeSchema::new("UNETLoader", "Load Diffusion Model", CATEGORY)
                .doc(
                    "ComfyUI's UNETLoader for FLUX.2 [klein]: loads the transformer from \
                     <models>/diffusion_models/ (a BFL single file, an fp8 file, a ComfyUI-GGUF \
                     .gguf file) as LoadDiffusionModel does, on the GPU when there is one. On a CUDA GPU \
                     in bf16/f16 it runs our flash attention and fused kernels (what \
                     PatchAttention(flash) + CompileModel do in a native graph).",
                )
                .param(file_param(
                    "unet_name",
                    "flux-2-klein-4b.safetensors",
                    "diffusion_models",
                    "File name in <models>/diffusion_models/, or a path.",
                ))
                .param(
                    ParamDef::choice(
                        "weight_dtype",
                        &UNET_DTYPES,
                        "default",
                        "default: as LoadDiffusionModel's default (bf16 on a GPU, f32 on the \
                         CPU). fp8_e4m3fn and fp8_e4m3fn_fast: linear weights kept in fp8 e4m3 \
                         (one scale per row). fp8_e5m2 is not supported.",
                    )
                    .constant(),
                )
                .output("MODEL", PortType::Model, "The transformer with no patches."),
        }
    }
}

impl Default for UnetLoader {
    fn default() -> Self {
        Self::new()
    }
}

/// The linear-weight format a `weight_dtype` asks for; `Err` for one we do not run.
fn unet_linears(weight_dtype: &str) -> Result<LinearFormat, String> {
    match weight_dtype {
        "default" => Ok(LinearFormat::AsStored),
        "fp8_e4m3fn" | "fp8_e4m3fn_fast" => Ok(LinearFormat::Fp8E4M3),
        other => Err(format!(
            "weight_dtype {other} is not supported: choose default or fp8_e4m3fn"
        )),
    }
}

impl NodeDef for UnetLoader {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        let mut problems = file_problem(params, "unet_name", "diffusion_models", env);
        if let Err(message) = unet_linears(params.str("weight_dtype").unwrap_or_default()) {
            problems.push(ParamProblem {
                param: "weight_dtype".into(),
                message,
            });
        }
        problems
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        fingerprint(params, "unet_name", "diffusion_models", env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let path = resolved(ctx, "unet_name", "diffusion_models")?;
        let linears = unet_linears(ctx.params.str("weight_dtype")?)
            .map_err(|m| NodeError::failed(format!("param 'weight_dtype': {m}")))?;
        let device = auto_device()?;
        let dtype = parse_dtype("default", &device);
        let mut handle = load_diffusion_model(ctx, path, device, dtype, linears)?;
        // A ComfyUI graph has no PatchAttention/CompileModel nodes: on CUDA in bf16/f16 the model
        // runs our flash attention and fused kernels, as the native graph with those nodes does.
        veetance_nodes_flux2::patches::use_fast_kernels_where_available(&mut handle);
        Ok(vec![object(PortType::Model, handle)])
    }
}

// ---------------------------------------------------------------- CLIPLoader

/// ComfyUI's CLIPLoader `type` options, in its order (ComfyUI master, 2026). Only `flux2` runs
/// here; the others are listed so that a graph naming one gets a message saying so.
const CLIP_TYPES: [&str; 29] = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
    "longcat_image",
    "cogvideox",
    "lens",
    "pixeldit",
    "ideogram4",
    "boogu",
    "krea2",
    "joyimage",
    "mage",
    "minimax",
    "yue2",
];

/// The one CLIPLoader type Veetance runs.
const SUPPORTED_CLIP_TYPE: &str = "flux2";

pub struct ClipLoader {
    schema: NodeSchema,
}

impl ClipLoader {
    pub fn new() -> Self {
        ClipLoader {
            schema: NodeSchema::new("CLIPLoader", "Load CLIP", CATEGORY)
                .doc(
                    "ComfyUI's CLIPLoader for FLUX.2 [klein] (type flux2): loads the Qwen3 text \
                     encoder from <models>/text_encoders/ as LoadTextEncoder does (ComfyUI's \
                     bf16, fp8 and fp8mixed files). Its tokenizer is `<weights name>.tokenizer.json` \
                     or `tokenizer.json` beside the weights, else the Qwen3 tokenizer built into \
                     Veetance; its config `<weights name>.config.json` or `config.json`, else \
                     read from the tensor shapes (Qwen3-4B, -8B or another size).",
                )
                .param(file_param(
                    "clip_name",
                    "qwen_3_4b.safetensors",
                    "text_encoders",
                    "File name in <models>/text_encoders/, or a path.",
                ))
                .param(
                    ParamDef::choice(
                        "type",
                        &CLIP_TYPES,
                        SUPPORTED_CLIP_TYPE,
                        "The model family the encoder is for; only flux2 (FLUX.2 [klein]'s Qwen3) \
                         is supported.",
                    )
                    .constant(),
                )
                .param(
                    ParamDef::choice(
                        "device",
                        &["default", "cpu"],
                        "default",
                        "default: the GPU when there is one; cpu: always the CPU.",
                    )
                    .constant(),
                )
                .output("CLIP", PortType::TextEncoder, "The text encoder."),
        }
    }
}

impl Default for ClipLoader {
    fn default() -> Self {
        Self::new()
    }
}

fn clip_files(params: &Params, env: &RunEnv) -> Result<EncoderFiles, String> {
    encoder_files(params.str("clip_name").unwrap_or_default(), "", "", env)
        .map_err(|(_, message)| message)
}

impl NodeDef for ClipLoader {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        let mut problems = Vec::new();
        if let Err(message) = clip_files(params, env) {
            problems.push(ParamProblem {
                param: "clip_name".into(),
                message,
            });
        }
        let kind = params.str("type").unwrap_or_default();
        if kind != SUPPORTED_CLIP_TYPE {
            problems.push(ParamProblem {
                param: "type".into(),
                message: format!(
                    "type {kind} is not supported: Veetance runs FLUX.2 [klein] only, whose text \
                     encoder (Qwen3) is type {SUPPORTED_CLIP_TYPE}"
                ),
            });
        }
        problems
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        let paths = clip_files(params, env)
            .map(|f| f.paths())
            .unwrap_or_default();
        files::fingerprint(&paths, false)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let found = clip_files(&ctx.params, ctx.env)
            .map_err(|m| NodeError::failed(format!("param 'clip_name': {m}")))?;
        let device = match ctx.params.str("device")? {
            "cpu" => candle_core::Device::Cpu,
            _ => auto_device()?,
        };
        let dtype = parse_dtype("default", &device);
        let handle = load_text_encoder(ctx, found, device, dtype)?;
        Ok(vec![object(PortType::TextEncoder, handle)])
    }
}

// ---------------------------------------------------------------- VAELoader

pub struct VaeLoader {
    schema: NodeSchema,
}

impl VaeLoader {
    pub fn new() -> Self {
        VaeLoader {
            schema: NodeSchema::new("VAELoader", "Load VAE", CATEGORY)
                .doc(
                    "ComfyUI's VAELoader for FLUX.2: loads the FLUX.2 autoencoder from \
                     <models>/vae/ (a BFL file such as flux2-vae.safetensors, or a diffusers vae/ \
                     folder) as LoadVae does.",
                )
                .param(file_param(
                    "vae_name",
                    "flux2-vae.safetensors",
                    "vae",
                    "File name in <models>/vae/, or a path.",
                ))
                .output("VAE", PortType::Vae, "The autoencoder."),
        }
    }
}

impl Default for VaeLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for VaeLoader {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        file_problem(params, "vae_name", "vae", env)
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        fingerprint(params, "vae_name", "vae", env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let path = resolved(ctx, "vae_name", "vae")?;
        let device = auto_device()?;
        let dtype = parse_dtype("default", &device);
        Ok(vec![object(PortType::Vae, load_vae(path, device, dtype)?)])
    }
}

// ---------------------------------------------------------------- LoraLoaderModelOnly

pub struct LoraLoaderModelOnly {
    schema: NodeSchema,
}

impl LoraLoaderModelOnly {
    pub fn new() -> Self {
        LoraLoaderModelOnly {
            schema: NodeSchema::new("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders")
                .doc(
                    "ComfyUI's LoraLoaderModelOnly: applies a LoRA from <models>/loras/ to the \
                     diffusion model at strength_model, as the native LoraLoader does (diffusers, \
                     kohya and BFL names; the base weights shared, never reloaded).",
                )
                .input("model", PortType::Model, "The model to patch.")
                .param(file_param(
                    "lora_name",
                    "",
                    LORA_FOLDER,
                    "LoRA file name in <models>/loras/, or a path.",
                ))
                .param(ParamDef::float(
                    "strength_model",
                    1.0,
                    -100.0,
                    100.0,
                    0.01,
                    "How strongly the LoRA applies (negative: reversed).",
                ))
                .output("MODEL", PortType::Model, "The model with the LoRA."),
        }
    }
}

impl Default for LoraLoaderModelOnly {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for LoraLoaderModelOnly {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        file_problem(params, "lora_name", LORA_FOLDER, env)
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        lora_fingerprint(params, "lora_name", env)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let model = input::<ModelHandle>(ctx, "model", PortType::Model)?;
        let path = resolved(ctx, "lora_name", LORA_FOLDER)?;
        let strength = ctx.params.float("strength_model")?;
        let out = add_lora(ctx, model, &path, strength, "lora_name")?;
        Ok(vec![object(PortType::Model, out)])
    }
}
