//! FLUX.2 [klein] transformer (4B and 9B).
//!
//! A rectified-flow transformer on packed latent tokens: double-stream blocks (separate weights for
//! image and text, joint attention) then parallel single-stream blocks, with modulation shared by
//! all blocks, QK RMSNorm, SwiGLU MLPs, 4-axis interleaved RoPE (text positions on the last axis)
//! and no biases anywhere. Reference: diffusers' `Flux2Transformer2DModel`
//! (`src/diffusers/models/transformers/transformer_flux2.py`) and BFL's `flux2/src/flux2/model.py`;
//! facts are gathered in `shared/reference/flux2-klein.md`.
//!
//! The model is written against BFL's single-file layout (`flux-2-klein-4b.safetensors`: fused qkv,
//! `double_blocks.*`, `single_blocks.*`). A diffusers `transformer/` folder is read through a name
//! map: `to_q/to_k/to_v` are concatenated into `qkv`, and the two halves of `norm_out.linear` are
//! swapped (diffusers stores (scale, shift), BFL (shift, scale)). The layout is told apart by tensor
//! names; a ComfyUI-style `model.diffusion_model.` prefix is accepted.
//!
//! GGUF files (ComfyUI-GGUF's conversions of the BFL file: same tensor names, linear weights in
//! Q8_0/Q4_K/..., norms in F32, `img_in`/`txt_in`/`time_in`/`final_layer` in F16/BF16) are told
//! apart by their magic and load through the same name map; quantized linear weights stay
//! quantized ([`crate::qlinear::QLinear`]). fp8 e4m3 safetensors (ComfyUI's fp8 files, with or
//! without `scale_weight`/`weight_scale`) keep their linear weights in fp8;
//! [`LinearFormat::Fp8E4M3`] converts a bf16/f32 checkpoint's linear weights to fp8 at load.
//!
//! ```no_run
//! # fn main() -> veetance_models::Result<()> {
//! use candle_core::{DType, Device};
//! use veetance_models::flux2;
//! let model = flux2::load_transformer(
//!     "flux-2-klein-4b.safetensors".as_ref(), None, DType::BF16, &Device::Cpu)?;
//! # Ok(()) }
//! ```

mod config;
pub mod lora;
mod model;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

pub use config::Config;
pub use model::{
    rope_tables, score_chunk_rows, AttentionBackend, BlockPlan, Flux2Transformer, ForwardOptions,
    LinearFn, StreamPlan, PLAIN_SCORE_LIMIT,
};

use crate::error::{Error, Result};
use crate::gguf::{is_gguf, GgufFile};
pub use crate::qlinear::LinearFormat;
use crate::weights::{
    build_quantizable, guess_model_kind, Source, TensorIndex, TensorStore, WeightFiles,
};

/// How the transformer's tensors are named in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// BFL's single file, optionally with a prefix such as `model.diffusion_model.`.
    Bfl { prefix: String },
    /// diffusers' `transformer/` folder.
    Diffusers { prefix: String },
}

const BFL_MARKER: &str = "double_blocks.0.img_attn.qkv.weight";
const DIFFUSERS_MARKER: &str = "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight";

/// Tells the layout from tensor names, or says what the checkpoint looks like instead.
pub fn detect_layout(files: &dyn TensorIndex) -> Result<Layout> {
    for name in files.tensor_names() {
        if let Some(prefix) = name.strip_suffix(BFL_MARKER) {
            return Ok(Layout::Bfl {
                prefix: prefix.to_string(),
            });
        }
        if let Some(prefix) = name.strip_suffix(DIFFUSERS_MARKER) {
            return Ok(Layout::Diffusers {
                prefix: prefix.to_string(),
            });
        }
    }
    Err(Error::WrongModel {
        path: files.first_path().to_path_buf(),
        expected: "a FLUX.2 transformer".into(),
        found: guess_model_kind(files),
    })
}

/// Where an internal (BFL) tensor name is stored in the diffusers layout.
pub fn diffusers_source(name: &str) -> Source {
    let direct = |s: String| Source::Name(s);
    let fixed = [
        ("img_in.weight", "x_embedder.weight"),
        ("txt_in.weight", "context_embedder.weight"),
        (
            "time_in.in_layer.weight",
            "time_guidance_embed.timestep_embedder.linear_1.weight",
        ),
        (
            "time_in.out_layer.weight",
            "time_guidance_embed.timestep_embedder.linear_2.weight",
        ),
        (
            "double_stream_modulation_img.lin.weight",
            "double_stream_modulation_img.linear.weight",
        ),
        (
            "double_stream_modulation_txt.lin.weight",
            "double_stream_modulation_txt.linear.weight",
        ),
        (
            "single_stream_modulation.lin.weight",
            "single_stream_modulation.linear.weight",
        ),
        ("final_layer.linear.weight", "proj_out.weight"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == name) {
        return direct((*to).to_string());
    }
    if name == "final_layer.adaLN_modulation.1.weight" {
        return Source::SwapHalves("norm_out.linear.weight".into());
    }
    if let Some(rest) = name.strip_prefix("double_blocks.") {
        if let Some((i, field)) = rest.split_once('.') {
            let b = format!("transformer_blocks.{i}");
            let attn = |n: &str| format!("{b}.attn.{n}.weight");
            return match field {
                "img_attn.qkv.weight" => {
                    Source::Concat(vec![attn("to_q"), attn("to_k"), attn("to_v")])
                }
                "txt_attn.qkv.weight" => Source::Concat(vec![
                    attn("add_q_proj"),
                    attn("add_k_proj"),
                    attn("add_v_proj"),
                ]),
                "img_attn.norm.query_norm.scale" => direct(attn("norm_q")),
                "img_attn.norm.key_norm.scale" => direct(attn("norm_k")),
                "txt_attn.norm.query_norm.scale" => direct(attn("norm_added_q")),
                "txt_attn.norm.key_norm.scale" => direct(attn("norm_added_k")),
                "img_attn.proj.weight" => direct(attn("to_out.0")),
                "txt_attn.proj.weight" => direct(attn("to_add_out")),
                "img_mlp.0.weight" => direct(format!("{b}.ff.linear_in.weight")),
                "img_mlp.2.weight" => direct(format!("{b}.ff.linear_out.weight")),
                "txt_mlp.0.weight" => direct(format!("{b}.ff_context.linear_in.weight")),
                "txt_mlp.2.weight" => direct(format!("{b}.ff_context.linear_out.weight")),
                _ => direct(name.to_string()),
            };
        }
    }
    if let Some(rest) = name.strip_prefix("single_blocks.") {
        if let Some((i, field)) = rest.split_once('.') {
            let b = format!("single_transformer_blocks.{i}.attn");
            return match field {
                "linear1.weight" => direct(format!("{b}.to_qkv_mlp_proj.weight")),
                "linear2.weight" => direct(format!("{b}.to_out.weight")),
                "norm.query_norm.scale" => direct(format!("{b}.norm_q.weight")),
                "norm.key_norm.scale" => direct(format!("{b}.norm_k.weight")),
                _ => direct(name.to_string()),
            };
        }
    }
    direct(name.to_string())
}

fn with_prefix(prefix: &str, source: Source) -> Source {
    if prefix.is_empty() {
        return source;
    }
    let p = |n: String| format!("{prefix}{n}");
    match source {
        Source::Name(n) => Source::Name(p(n)),
        Source::SwapHalves(n) => Source::SwapHalves(p(n)),
        Source::Reshape(n) => Source::Reshape(p(n)),
        Source::Concat(parts) => Source::Concat(parts.into_iter().map(p).collect()),
    }
}

/// The configuration implied by the shapes of a checkpoint's tensors (the klein values for what
/// shapes do not show: mlp ratio 3, RoPE theta 2000, the head dim split evenly over 4 axes).
pub fn infer_config(files: &dyn TensorIndex, layout: &Layout) -> Result<Config> {
    let (prefix, img_in, txt_in, qk_norm, double, single) = match layout {
        Layout::Bfl { prefix } => (
            prefix,
            "img_in.weight",
            "txt_in.weight",
            "single_blocks.0.norm.query_norm.scale",
            "double_blocks.",
            "single_blocks.",
        ),
        Layout::Diffusers { prefix } => (
            prefix,
            "x_embedder.weight",
            "context_embedder.weight",
            "single_transformer_blocks.0.attn.norm_q.weight",
            "transformer_blocks.",
            "single_transformer_blocks.",
        ),
    };
    let shape_of = |n: &str| {
        let full = format!("{prefix}{n}");
        files.tensor_shape(&full).ok_or(Error::MissingTensor {
            name: full,
            files: files.describe_files(),
        })
    };
    let img_in = shape_of(img_in)?;
    let txt_in = shape_of(txt_in)?;
    let count = |block: &str| {
        let start = format!("{prefix}{block}");
        files
            .tensor_names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(start.as_str()))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1)
    };
    let (hidden, in_channels) = match img_in.as_slice() {
        [h, c] => (*h, *c),
        _ => {
            return Err(Error::WrongModel {
                path: files.first_path().to_path_buf(),
                expected: "a FLUX.2 transformer".into(),
                found: format!("an input projection of shape {img_in:?}"),
            })
        }
    };
    let base = Config::klein_4b();
    let head_dim = shape_of(qk_norm)?
        .first()
        .copied()
        .unwrap_or(base.attention_head_dim);
    if head_dim == 0 || hidden % head_dim != 0 || head_dim % 8 != 0 {
        return Err(Error::WrongModel {
            path: files.first_path().to_path_buf(),
            expected: "a FLUX.2 transformer".into(),
            found: format!("hidden size {hidden} with head dim {head_dim}"),
        });
    }
    Ok(Config {
        in_channels,
        attention_head_dim: head_dim,
        // FLUX.2 splits the head dim evenly over the 4 position axes.
        axes_dims_rope: vec![head_dim / 4; 4],
        num_layers: count(double),
        num_single_layers: count(single),
        num_attention_heads: hidden / head_dim,
        joint_attention_dim: txt_in.get(1).copied().unwrap_or(base.joint_attention_dim),
        ..base
    })
}

/// Loads a FLUX.2 transformer from a BFL single file, a ComfyUI-GGUF `.gguf` file or a diffusers
/// `transformer/` folder (or one of its shards' folder), in `dtype` on `device`.
///
/// `config`: `None` reads `config.json` beside a diffusers folder, or infers the configuration
/// from the tensor shapes; `Some` (e.g. `Config::klein_4b()`) is checked against every tensor.
pub fn load_transformer(
    path: &Path,
    config: Option<&Config>,
    dtype: DType,
    device: &Device,
) -> Result<Flux2Transformer> {
    load_transformer_with(path, config, dtype, device, LinearFormat::AsStored)
}

/// [`load_transformer`] with a choice of how dense linear weights are kept (`Fp8E4M3`: converted
/// to fp8 at load, computed in `dtype`). GGUF-quantized and fp8-stored weights stay as stored.
pub fn load_transformer_with(
    path: &Path,
    config: Option<&Config>,
    dtype: DType,
    device: &Device,
    linears: LinearFormat,
) -> Result<Flux2Transformer> {
    check_dtype(dtype, device)?;
    let (files, index): (Arc<dyn TensorStore>, Arc<dyn TensorIndex + Send + Sync>) =
        if path.is_file() && is_gguf(path) {
            let file = Arc::new(GgufFile::open(path)?);
            (file.clone(), file)
        } else {
            let files = Arc::new(WeightFiles::open_path(path)?);
            (files.clone(), files)
        };
    let layout = detect_layout(index.as_ref())?;
    let config = match config {
        Some(c) => c.clone(),
        None => {
            let json = path.join("config.json");
            if path.is_dir() && json.is_file() {
                Config::from_file(&json)?
            } else {
                infer_config(index.as_ref(), &layout)?
            }
        }
    };
    config.validate().map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })?;
    load_from_files(files, layout, &config, dtype, device, linears)
}

/// Builds the transformer from already opened files (safetensors or GGUF).
pub fn load_from_files(
    files: Arc<dyn TensorStore>,
    layout: Layout,
    config: &Config,
    dtype: DType,
    device: &Device,
    linears: LinearFormat,
) -> Result<Flux2Transformer> {
    let build = |vb| Flux2Transformer::new(config, vb);
    match layout {
        Layout::Bfl { prefix } => build_quantizable(
            files,
            move |n| with_prefix(&prefix, Source::Name(n.to_string())),
            dtype,
            device,
            linears,
            build,
        ),
        Layout::Diffusers { prefix } => build_quantizable(
            files,
            move |n| with_prefix(&prefix, diffusers_source(n)),
            dtype,
            device,
            linears,
            build,
        ),
    }
}

/// Rejects dtype/device pairs the model cannot run with, once, at load time.
pub(crate) fn check_dtype(dtype: DType, _device: &Device) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::InvalidInput(format!(
            "weights can be loaded as f32, f16 or bf16, not {other:?}"
        ))),
    }
}
