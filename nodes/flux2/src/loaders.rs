//! LoadDiffusionModel, LoadTextEncoder, LoadVae: weights found by name in the models folder
//! (ComfyUI layout) or by path, loaded memory-mapped in the dtype asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use veetance_core::{
    ExecContext, Freshness, MemBytes, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem,
    Params, PortType, RunEnv, Value,
};
use veetance_models::flux2::LinearFormat;
use veetance_models::gguf::{is_gguf, GgufFile};
use veetance_models::weights::WeightFiles;
use veetance_models::{flux2, qwen3, vae};

use crate::files::{self, check_device, DEVICES};
use crate::values::{
    mem_of, model_err, object, on_device, parse_dtype, ModelHandle, ModelPatches,
    TextEncoderHandle, VaeHandle,
};

const DTYPES: [&str; 4] = ["default", "bf16", "f16", "f32"];
/// The diffusion model also takes fp8: linear weights stored in fp8 e4m3 (one scale per row),
/// computed in the default dtype.
const MODEL_DTYPES: [&str; 5] = ["default", "bf16", "f16", "f32", "fp8_e4m3"];

const DTYPE_DOC: &str = "Precision the weights are loaded in: default is bf16 on a GPU and f32 on \
     the CPU. A .gguf file's quantized weights (Q8_0, Q4_K, ...) and an fp8 file's weights stay as \
     stored; this sets the dtype of the rest and of the computation.";

const MODEL_DTYPE_DOC: &str = "Precision the weights are loaded in: default is bf16 on a GPU and \
     f32 on the CPU. fp8_e4m3 keeps the linear layers' weights in 8 bits (one scale per row, about \
     half the memory of bf16) and computes in the default dtype. A .gguf file's quantized weights \
     and an fp8 file's weights stay as stored whatever is chosen.";

fn common_params(schema: NodeSchema, dtypes: &[&str], dtype_doc: &str) -> NodeSchema {
    schema
        .param(ParamDef::choice("weight_dtype", dtypes, "default", dtype_doc).constant())
        .param(
            ParamDef::choice(
                "device",
                &DEVICES,
                "auto",
                "Where the model runs: auto takes the GPU when this build has CUDA and one is present.",
            )
            .constant(),
        )
        .param(
            ParamDef::bool(
                "hash_content",
                false,
                "Key the cache by a hash of the file's bytes instead of its size and modification \
                 time (slower to check; keeps the cache when a file is touched but unchanged).",
            )
            .constant(),
        )
}

/// Checks that a file param resolves, as a validation problem on that param.
pub(crate) fn check_file(
    params: &Params,
    param: &str,
    folder: &str,
    env: &RunEnv,
) -> Vec<ParamProblem> {
    let name = params.str(param).unwrap_or_default();
    let mut problems = Vec::new();
    if let Err(message) = files::resolve(name, folder, env) {
        problems.push(ParamProblem {
            param: param.into(),
            message,
        });
    }
    problems
}

fn resolved(ctx: &ExecContext<'_>, param: &str, folder: &str) -> Result<PathBuf, NodeError> {
    let name = ctx.params.str(param)?;
    files::resolve(name, folder, ctx.env)
        .map_err(|m| NodeError::failed(format!("param '{param}': {m}")))
}

fn device_and_dtype(ctx: &ExecContext<'_>) -> Result<(Device, DType), NodeError> {
    let device = files::device(ctx.params.str("device")?)
        .map_err(|m| NodeError::failed(format!("param 'device': {m}")))?;
    let dtype = parse_dtype(ctx.params.str("weight_dtype")?, &device);
    Ok((device, dtype))
}

/// `fp8_e4m3` asks for fp8 linear weights (computed in the default dtype).
fn linear_format(ctx: &ExecContext<'_>) -> Result<LinearFormat, NodeError> {
    Ok(match ctx.params.str("weight_dtype")? {
        "fp8_e4m3" => LinearFormat::Fp8E4M3,
        _ => LinearFormat::AsStored,
    })
}

/// Bytes the loaded weights take: the file's tensors converted to `dtype`, skipping tensors the
/// filter rejects (layers the model does not load).
///
/// A GGUF file's quantized tensors count at their stored size; with fp8 linears, 2-D weights count
/// one byte per element. (fp8-stored safetensors count in `dtype`: an over-estimate.)
fn weight_bytes(
    path: &Path,
    dtype: DType,
    device: &Device,
    linears: LinearFormat,
    keep: impl Fn(&str) -> bool,
) -> MemBytes {
    if path.is_file() && is_gguf(path) {
        let bytes: usize = GgufFile::open(path)
            .map(|file| {
                file.tensors
                    .iter()
                    .filter(|(n, _)| keep(n))
                    .map(|(n, info)| {
                        if info.ggml_type.is_float() {
                            info.shape.iter().product::<usize>() * dtype.size_in_bytes()
                        } else {
                            file.stored_bytes(n).unwrap_or(0)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0);
        return on_device(device, bytes as u64);
    }
    let bytes: usize = WeightFiles::open_path(path)
        .map(|files| {
            let names: Vec<String> = files.names().map(str::to_string).collect();
            names
                .iter()
                .filter(|n| keep(n))
                .filter_map(|n| files.shape(n))
                .map(|s| {
                    let elems = s.iter().product::<usize>();
                    match linears {
                        LinearFormat::Fp8E4M3 if s.len() == 2 => elems,
                        _ => elems * dtype.size_in_bytes(),
                    }
                })
                .sum()
        })
        .unwrap_or(0);
    on_device(device, bytes as u64)
}

/// Where a loader puts weights of `needed` bytes meant for `device`: there, unless a device room
/// is set and they do not fit it; then in host memory (with a warning), and the node that runs the
/// model streams it. The handle's `device` stays the home the model computes on.
fn load_device(
    ctx: &ExecContext<'_>,
    device: &Device,
    needed: u64,
    what: &str,
    then: &str,
) -> Device {
    match ctx.device_room() {
        Some(room) if !device.is_cpu() && needed > room => {
            ctx.warn(format!(
                "the {what}'s weights ({}) do not fit the device room ({}): they stay in host \
                 memory and {then}, which is slower; raise --vram-budget to keep them on the device",
                gib(needed),
                gib(room)
            ));
            Device::Cpu
        }
        _ => device.clone(),
    }
}

/// Bytes as GiB with two decimals, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

// ---------------------------------------------------------------- LoadDiffusionModel

pub struct LoadDiffusionModel {
    schema: NodeSchema,
}

impl LoadDiffusionModel {
    pub fn new() -> Self {
        let schema = NodeSchema::new("LoadDiffusionModel", "Load Diffusion Model", "loaders")
            .doc(
                "Loads a FLUX.2 [klein] transformer: a BFL single file (flux-2-klein-4b.safetensors, \
                 as ComfyUI keeps it in models/diffusion_models/), a ComfyUI-GGUF .gguf file \
                 (Q8_0, Q4_K, ... kept quantized), an fp8 file, or a diffusers transformer/ \
                 folder. The configuration (4B, 9B or another size) is read from the tensors.",
            )
            .param(
                ParamDef::path(
                    "file",
                    "flux-2-klein-4b.safetensors",
                    Some("diffusion_models"),
                    "File name in <models>/diffusion_models/, or a path.",
                )
                .constant(),
            )
            .output("model", PortType::Model, "The transformer with no patches.");
        LoadDiffusionModel {
            schema: common_params(schema, &MODEL_DTYPES, MODEL_DTYPE_DOC),
        }
    }
}

impl Default for LoadDiffusionModel {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for LoadDiffusionModel {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        let mut p = check_file(params, "file", "diffusion_models", env);
        p.extend(check_device(params.str("device").unwrap_or_default()));
        p
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        let name = params.str("file").unwrap_or_default();
        let path = files::resolve(name, "diffusion_models", env).unwrap_or_default();
        files::fingerprint(&[path], params.bool("hash_content").unwrap_or(false))
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let path = resolved(ctx, "file", "diffusion_models")?;
        let (device, dtype) = device_and_dtype(ctx)?;
        let linears = linear_format(ctx)?;
        let handle = load_diffusion_model(ctx, path, device, dtype, linears)?;
        Ok(vec![object(PortType::Model, handle)])
    }
}

/// Loads the transformer at `path` for `device` in `dtype` (linear weights as `linears` says),
/// left in host memory with a warning when the device room cannot hold it. LoadDiffusionModel and
/// ComfyUI's UNETLoader.
pub fn load_diffusion_model(
    ctx: &ExecContext<'_>,
    path: PathBuf,
    device: Device,
    dtype: DType,
    linears: LinearFormat,
) -> Result<ModelHandle, NodeError> {
    let file_bytes = weight_bytes(&path, dtype, &device, linears, |_| true);
    let load_on = load_device(
        ctx,
        &device,
        file_bytes.total(),
        "diffusion model",
        "the sampler streams its blocks",
    );
    let model = flux2::load_transformer_with(&path, None, dtype, &load_on, linears)
        .map_err(model_err("loading the diffusion model"))?;
    // GGUF-quantized weights are not candle tensors the model can walk: count them from the file.
    let held = if is_gguf(&path) {
        file_bytes
    } else {
        mem_of(model.weight_bytes())
    };
    Ok(ModelHandle {
        weight_bytes: held,
        model: Arc::new(model),
        device,
        file: path,
        patches: ModelPatches::default(),
        offloaded: false,
    })
}

// ---------------------------------------------------------------- LoadTextEncoder

pub struct LoadTextEncoder {
    schema: NodeSchema,
}

impl LoadTextEncoder {
    pub fn new() -> Self {
        let schema = NodeSchema::new("LoadTextEncoder", "Load Text Encoder", "loaders")
            .doc(
                "Loads the Qwen3 text encoder of FLUX.2 [klein] (Qwen3-4B for klein-4B, Qwen3-8B \
                 for klein-9B) and its tokenizer. Only the layers the encoder needs are run.",
            )
            .param(
                ParamDef::path(
                    "file",
                    "qwen_3_4b.safetensors",
                    Some("text_encoders"),
                    "Weights: a file name in <models>/text_encoders/, or a path (a .safetensors \
                     file, a folder of shards, or a llama.cpp .gguf file, whose quantized weights \
                     stay quantized).",
                )
                .constant(),
            )
            .param(
                ParamDef::path(
                    "tokenizer",
                    "",
                    Some("text_encoders"),
                    "The model's tokenizer.json. Empty: `<weights name>.tokenizer.json` or \
                     `tokenizer.json` beside the weights, else the Qwen3 tokenizer built into \
                     Veetance (as ComfyUI carries its own).",
                )
                .constant(),
            )
            .param(
                ParamDef::path(
                    "config",
                    "",
                    Some("text_encoders"),
                    "The model's config.json. Empty: `<weights name>.config.json` or \
                     `config.json` beside the weights if present, else read from the tensor \
                     shapes (a GGUF file: from its metadata).",
                )
                .constant(),
            )
            .output(
                "text_encoder",
                PortType::TextEncoder,
                "The encoder, ready for TextEncode.",
            );
        LoadTextEncoder {
            schema: common_params(schema, &DTYPES, DTYPE_DOC),
        }
    }
}

impl Default for LoadTextEncoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The tokenizer and config files of a text encoder whose weights are at `weights`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderFiles {
    pub weights: PathBuf,
    /// `None`: the built-in Qwen3 tokenizer.
    pub tokenizer: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

fn sibling(weights: &Path, suffix: &str, plain: &str) -> Option<PathBuf> {
    let dir = if weights.is_dir() {
        weights.to_path_buf()
    } else {
        weights.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let stem = weights
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    [dir.join(format!("{stem}.{suffix}")), dir.join(plain)]
        .into_iter()
        .find(|p| p.is_file())
}

fn encoder_files_of(params: &Params, env: &RunEnv) -> Result<EncoderFiles, (String, String)> {
    encoder_files(
        params.str("file").unwrap_or_default(),
        params.str("tokenizer").unwrap_or_default(),
        params.str("config").unwrap_or_default(),
        env,
    )
    .map_err(|(param, message)| (param.to_string(), message))
}

/// Finds a text encoder's files: the weights `file` (a name in `<models>/text_encoders/` or a
/// path); the tokenizer `tokenizer`, or when empty `<weights name>.tokenizer.json` or
/// `tokenizer.json` beside the weights, else none (the built-in Qwen3 tokenizer, as a ComfyUI
/// models folder has no tokenizer file); the config `config`, or when empty
/// `<weights name>.config.json` or `config.json` beside them if present. The error names the part
/// that failed (`file`, `tokenizer` or `config`: LoadTextEncoder's params) and says why.
pub fn encoder_files(
    file: &str,
    tokenizer: &str,
    config: &str,
    env: &RunEnv,
) -> Result<EncoderFiles, (&'static str, String)> {
    let weights = files::resolve(file, "text_encoders", env).map_err(|m| ("file", m))?;
    let tokenizer = if tokenizer.is_empty() {
        let beside = sibling(&weights, "tokenizer.json", "tokenizer.json");
        if beside.is_none() {
            // The built-in Qwen3 tokenizer: checked against the embedding table now (the header
            // alone), so that a model of another vocabulary is named before it is loaded.
            if let Some(rows) = qwen3::embedding_rows(&weights) {
                if rows < qwen3::BUILTIN_TOKENIZER_TOKENS {
                    return Err((
                        "tokenizer",
                        format!(
                            "no tokenizer beside {}, and {} ({} tokens) does not fit its \
                             embedding table ({rows} rows): put the model's tokenizer.json \
                             there (as `tokenizer.json` or `<weights name>.tokenizer.json`) or \
                             set this param",
                            weights.display(),
                            qwen3::BUILTIN_TOKENIZER,
                            qwen3::BUILTIN_TOKENIZER_TOKENS
                        ),
                    ));
                }
            }
        }
        beside
    } else {
        Some(files::resolve(tokenizer, "text_encoders", env).map_err(|m| ("tokenizer", m))?)
    };
    let config = if config.is_empty() {
        sibling(&weights, "config.json", "config.json")
    } else {
        Some(files::resolve(config, "text_encoders", env).map_err(|m| ("config", m))?)
    };
    Ok(EncoderFiles {
        weights,
        tokenizer,
        config,
    })
}

impl NodeDef for LoadTextEncoder {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        let mut problems: Vec<ParamProblem> = match encoder_files_of(params, env) {
            Ok(_) => Vec::new(),
            Err((param, message)) => vec![ParamProblem { param, message }],
        };
        problems.extend(check_device(params.str("device").unwrap_or_default()));
        problems
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        let paths = encoder_files_of(params, env)
            .map(|f| f.paths())
            .unwrap_or_default();
        files::fingerprint(&paths, params.bool("hash_content").unwrap_or(false))
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let found = encoder_files_of(&ctx.params, ctx.env)
            .map_err(|(param, m)| NodeError::failed(format!("param '{param}': {m}")))?;
        let (device, dtype) = device_and_dtype(ctx)?;
        let handle = load_text_encoder(ctx, found, device, dtype)?;
        Ok(vec![object(PortType::TextEncoder, handle)])
    }
}

impl EncoderFiles {
    /// The files, for a loader's fingerprint.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.weights.clone()];
        v.extend(self.tokenizer.clone());
        v.extend(self.config.clone());
        v
    }
}

/// Loads the Qwen3 text encoder from `found` for `device` in `dtype` (without a config, its
/// configuration is read from the tensor shapes), left in host memory with a warning when the device
/// room cannot hold it. LoadTextEncoder and ComfyUI's CLIPLoader.
pub fn load_text_encoder(
    ctx: &ExecContext<'_>,
    found: EncoderFiles,
    device: Device,
    dtype: DType,
) -> Result<TextEncoderHandle, NodeError> {
    // Every tensor of the file but the LM head: an upper bound (the layers past the last one
    // the encoder needs are not loaded either).
    let needed = weight_bytes(
        &found.weights,
        dtype,
        &device,
        LinearFormat::AsStored,
        |name| !name.contains("lm_head"),
    );
    let load_on = load_device(
        ctx,
        &device,
        needed.total(),
        "text encoder",
        "TextEncode streams its layers",
    );
    let encoder = qwen3::TextEncoder::load(
        &qwen3::TextEncoderFiles {
            weights: found.weights.clone(),
            tokenizer: found.tokenizer.clone(),
            config: found.config.clone(),
        },
        None,
        dtype,
        &load_on,
    )
    .map_err(model_err("loading the text encoder"))?;
    let layers_needed = encoder.config().layers_needed();
    let file_bytes = weight_bytes(
        &found.weights,
        dtype,
        &device,
        LinearFormat::AsStored,
        |name| {
            // Layers past the last one the encoder needs, and the LM head, are never loaded.
            let layer = name
                .split("layers.")
                .nth(1)
                .or_else(|| name.strip_prefix("blk."))
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            match layer {
                Some(i) => i < layers_needed,
                None => !name.contains("lm_head") && name != "output.weight",
            }
        },
    );
    let held = if is_gguf(&found.weights) {
        file_bytes
    } else {
        mem_of(encoder.weight_bytes())
    };
    Ok(TextEncoderHandle {
        weight_bytes: held,
        encoder: Arc::new(encoder),
        device,
        file: found.weights,
        offloaded: false,
    })
}

// ---------------------------------------------------------------- LoadVae

pub struct LoadVae {
    schema: NodeSchema,
}

impl LoadVae {
    pub fn new() -> Self {
        let schema = NodeSchema::new("LoadVae", "Load VAE", "loaders")
            .doc(
                "Loads the FLUX.2 autoencoder (32 latent channels with its batch-norm statistics): \
                 a BFL file (flux2-vae.safetensors) or a diffusers vae/ folder.",
            )
            .param(
                ParamDef::path(
                    "file",
                    "flux2-vae.safetensors",
                    Some("vae"),
                    "File name in <models>/vae/, or a path.",
                )
                .constant(),
            )
            .output("vae", PortType::Vae, "The autoencoder (decoder and encoder).");
        LoadVae {
            schema: common_params(schema, &DTYPES, DTYPE_DOC),
        }
    }
}

impl Default for LoadVae {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for LoadVae {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        let mut p = check_file(params, "file", "vae", env);
        p.extend(check_device(params.str("device").unwrap_or_default()));
        p
    }

    fn freshness(&self, params: &Params, env: &RunEnv) -> Freshness {
        let path =
            files::resolve(params.str("file").unwrap_or_default(), "vae", env).unwrap_or_default();
        files::fingerprint(&[path], params.bool("hash_content").unwrap_or(false))
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let path = resolved(ctx, "file", "vae")?;
        let (device, dtype) = device_and_dtype(ctx)?;
        Ok(vec![object(PortType::Vae, load_vae(path, device, dtype)?)])
    }
}

/// Loads the FLUX.2 VAE (encoder and decoder) at `path` for `device` in `dtype`. LoadVae and
/// ComfyUI's VAELoader.
pub fn load_vae(path: PathBuf, device: Device, dtype: DType) -> Result<VaeHandle, NodeError> {
    let model = vae::load_vae(&path, None, vae::Parts::EncoderAndDecoder, dtype, &device)
        .map_err(model_err("loading the VAE"))?;
    Ok(VaeHandle {
        weight_bytes: mem_of(model.weight_bytes()),
        vae: Arc::new(model),
        device,
        file: path,
        offloaded: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// A text-encoder file holding only its embedding table, `rows` x 1.
    fn embedding_only(dir: &Path, name: &str, rows: usize) -> PathBuf {
        let path = dir.join(name);
        let table = Tensor::zeros((rows, 1), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("model.embed_tokens.weight".to_string(), table)]),
            &path,
        )
        .unwrap();
        path
    }

    /// A ComfyUI models folder has no tokenizer beside `qwen_3_4b.safetensors`: the built-in one
    /// is used when it fits the embedding table, and refused by param when it does not.
    #[test]
    fn without_a_tokenizer_file_the_builtin_one_is_used_when_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let env = RunEnv::default();
        let qwen = embedding_only(dir.path(), "qwen_3_4b.safetensors", 151_936);
        let found = encoder_files(&qwen.to_string_lossy(), "", "", &env).unwrap();
        assert_eq!((found.tokenizer, found.config), (None, None));

        let other = embedding_only(dir.path(), "other.safetensors", 360);
        let (param, message) = encoder_files(&other.to_string_lossy(), "", "", &env).unwrap_err();
        assert_eq!(param, "tokenizer");
        assert!(
            message.contains("360 rows") && message.contains("other.safetensors"),
            "{message}"
        );

        // A tokenizer beside the weights is still taken first.
        let beside = dir.path().join("other.tokenizer.json");
        std::fs::write(&beside, "{}").unwrap();
        let found = encoder_files(&other.to_string_lossy(), "", "", &env).unwrap();
        assert_eq!(found.tokenizer, Some(beside));
    }
}
