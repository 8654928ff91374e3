//! LoRAs on the FLUX.2 transformer: a LoRA file's modules mapped onto our (BFL-named) linear
//! layers, and a patched model built from a loaded one without touching the base.
//!
//! Mapping ([`load_lora`]): each module name is looked up, for the model's configuration, among
//! every linear's BFL name (`double_blocks.0.img_attn.qkv`), its kohya form
//! (`double_blocks_0_img_attn_qkv`) and its diffusers names. diffusers splits our fused layers:
//! `to_q`/`to_k`/`to_v` (and `add_*_proj`) are the thirds of `img_attn.qkv` (`txt_attn.qkv`), so
//! their `B` lands on those rows of the fused weight; `norm_out.linear` keeps (scale, shift) where
//! BFL keeps (shift, scale), so its `B`'s halves are swapped. All modules on one linear are joined
//! into one low-rank pair `(down (R, in), up (out, R))`, scales folded into `up`. Shapes are
//! checked against the configuration: a LoRA for another model size fails here, naming the tensor.
//!
//! Applying ([`apply_loras`]): for each patched linear, with strengths `s_i`,
//!
//! * a dense (f32/f16/bf16) weight on the compute device is merged:
//!   `W' = W + Σ s_i · up_i · down_i`, computed in f32 and rounded once to the weight's dtype
//!   (exact in f32). Cost: a new copy of each patched linear's weight.
//! * an fp8 or GGUF weight, or a dense one in host memory (a block streamed to the device at every
//!   step), gets a low-rank side path (`QLinear::LowRank`): `y = base(x) + (x · downᵀ) · upᵀ` with
//!   every LoRA's factors concatenated along the rank. Cost: the factors only; the base weight is
//!   shared, untouched.
//!
//! Every layer not patched is shared with the base model (candle tensors are reference-counted),
//! so the base is never reloaded or copied whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::{Config, Flux2Transformer};
use crate::error::{Error, Result};
use crate::lora::{self, NamingStyle};
use crate::qlinear::QLinear;

/// Rows of a module's `B` placed in a linear's output rows: `(from, len, to)`.
type Piece = (usize, usize, usize);

struct Target {
    linear: String,
    in_dim: usize,
    out_dim: usize,
    pieces: Vec<Piece>,
}

/// Every linear of the model by BFL name, with `(in, out)`.
fn linears(cfg: &Config) -> Vec<(String, usize, usize)> {
    let (d, h) = (cfg.hidden_size(), cfg.mlp_hidden());
    let mut v: Vec<(String, usize, usize)> = vec![
        ("img_in".into(), cfg.in_channels, d),
        ("txt_in".into(), cfg.joint_attention_dim, d),
        ("time_in.in_layer".into(), cfg.timestep_guidance_channels, d),
        ("time_in.out_layer".into(), d, d),
        ("double_stream_modulation_img.lin".into(), d, 6 * d),
        ("double_stream_modulation_txt.lin".into(), d, 6 * d),
        ("single_stream_modulation.lin".into(), d, 3 * d),
        ("final_layer.adaLN_modulation.1".into(), d, 2 * d),
        ("final_layer.linear".into(), d, cfg.out_channels()),
    ];
    for i in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{s}");
            v.push((format!("{b}_attn.qkv"), d, 3 * d));
            v.push((format!("{b}_attn.proj"), d, d));
            v.push((format!("{b}_mlp.0"), d, 2 * h));
            v.push((format!("{b}_mlp.2"), h, d));
        }
    }
    for i in 0..cfg.num_single_layers {
        v.push((format!("single_blocks.{i}.linear1"), d, 3 * d + 2 * h));
        v.push((format!("single_blocks.{i}.linear2"), d + h, d));
    }
    v
}

/// diffusers module names of a BFL linear: `(name, pieces)`.
fn diffusers_names(bfl: &str, d: usize, out: usize) -> Vec<(String, Vec<Piece>)> {
    let whole = |n: String| vec![(n, vec![(0, out, 0)])];
    let fixed = [
        ("img_in", "x_embedder"),
        ("txt_in", "context_embedder"),
        (
            "time_in.in_layer",
            "time_guidance_embed.timestep_embedder.linear_1",
        ),
        (
            "time_in.out_layer",
            "time_guidance_embed.timestep_embedder.linear_2",
        ),
        (
            "double_stream_modulation_img.lin",
            "double_stream_modulation_img.linear",
        ),
        (
            "double_stream_modulation_txt.lin",
            "double_stream_modulation_txt.linear",
        ),
        (
            "single_stream_modulation.lin",
            "single_stream_modulation.linear",
        ),
        ("final_layer.linear", "proj_out"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == bfl) {
        return whole((*to).to_string());
    }
    if bfl == "final_layer.adaLN_modulation.1" {
        // diffusers (scale, shift) -> BFL (shift, scale)
        return vec![("norm_out.linear".into(), vec![(0, d, d), (d, d, 0)])];
    }
    if let Some(rest) = bfl.strip_prefix("double_blocks.") {
        let Some((i, field)) = rest.split_once('.') else {
            return Vec::new();
        };
        let b = format!("transformer_blocks.{i}");
        let thirds = |names: [&str; 3]| {
            names
                .iter()
                .enumerate()
                .map(|(k, n)| (format!("{b}.attn.{n}"), vec![(0, d, k * d)]))
                .collect()
        };
        return match field {
            "img_attn.qkv" => thirds(["to_q", "to_k", "to_v"]),
            "txt_attn.qkv" => thirds(["add_q_proj", "add_k_proj", "add_v_proj"]),
            "img_attn.proj" => whole(format!("{b}.attn.to_out.0")),
            "txt_attn.proj" => whole(format!("{b}.attn.to_add_out")),
            "img_mlp.0" => whole(format!("{b}.ff.linear_in")),
            "img_mlp.2" => whole(format!("{b}.ff.linear_out")),
            "txt_mlp.0" => whole(format!("{b}.ff_context.linear_in")),
            "txt_mlp.2" => whole(format!("{b}.ff_context.linear_out")),
            _ => Vec::new(),
        };
    }
    if let Some(rest) = bfl.strip_prefix("single_blocks.") {
        let Some((i, field)) = rest.split_once('.') else {
            return Vec::new();
        };
        let a = format!("single_transformer_blocks.{i}.attn");
        return match field {
            "linear1" => whole(format!("{a}.to_qkv_mlp_proj")),
            "linear2" => whole(format!("{a}.to_out")),
            _ => Vec::new(),
        };
    }
    Vec::new()
}

/// Every name a LoRA module may give a linear of this model, per style.
fn targets(cfg: &Config) -> (HashMap<String, Target>, HashMap<String, Target>) {
    let d = cfg.hidden_size();
    let mut dotted = HashMap::new();
    let mut kohya = HashMap::new();
    for (name, in_dim, out_dim) in linears(cfg) {
        let target = |pieces: Vec<Piece>| Target {
            linear: name.clone(),
            in_dim,
            out_dim,
            pieces,
        };
        for (alias, pieces) in diffusers_names(&name, d, out_dim) {
            dotted.insert(alias, target(pieces));
        }
        kohya.insert(name.replace('.', "_"), target(vec![(0, out_dim, 0)]));
        dotted.insert(name.clone(), target(vec![(0, out_dim, 0)]));
    }
    (dotted, kohya)
}

/// One linear's low-rank update `up · down` (scales folded into `up`), in f32 on the CPU.
#[derive(Debug, Clone)]
pub struct LinearDelta {
    /// `(R, in)`.
    pub down: Tensor,
    /// `(out, R)`.
    pub up: Tensor,
}

/// A LoRA file mapped onto the FLUX.2 transformer's linears; strength is applied later.
#[derive(Debug, Clone)]
pub struct Flux2Lora {
    pub path: PathBuf,
    pub style: NamingStyle,
    /// By BFL linear name.
    pub layers: BTreeMap<String, LinearDelta>,
    /// Modules in the file (a diffusers `to_q` counts one; several can land on one linear).
    pub modules: usize,
    /// Tensors skipped on purpose (text-encoder modules).
    pub skipped: Vec<String>,
}

impl Flux2Lora {
    /// Bytes of the low-rank factors in f32.
    pub fn factor_bytes(&self) -> u64 {
        self.layers
            .values()
            .map(|l| 4 * (l.down.elem_count() + l.up.elem_count()) as u64)
            .sum()
    }
}

/// `up`'s rows placed into a `(out, r)` matrix as `pieces` say, zeros elsewhere.
fn place_rows(up: &Tensor, pieces: &[Piece], out: usize) -> candle_core::Result<Tensor> {
    let r = up.dim(1)?;
    let mut sorted = pieces.to_vec();
    sorted.sort_by_key(|p| p.2);
    let mut parts = Vec::new();
    let mut row = 0;
    for (from, len, to) in sorted {
        if to > row {
            parts.push(Tensor::zeros((to - row, r), DType::F32, up.device())?);
        }
        parts.push(up.narrow(0, from, len)?);
        row = to + len;
    }
    if row < out {
        parts.push(Tensor::zeros((out - row, r), DType::F32, up.device())?);
    }
    Tensor::cat(&parts, 0)
}

/// Reads a LoRA file and maps it onto a transformer of configuration `cfg`. Errors name the file
/// and the tensor: a module no layer of this model has, or shapes of another model size.
pub fn load_lora(path: &Path, cfg: &Config) -> Result<Flux2Lora> {
    let file = lora::read(path)?;
    let (dotted, kohya) = targets(cfg);
    let err = |reason: String| Error::Lora {
        path: path.to_path_buf(),
        reason,
    };
    let mut joined: BTreeMap<String, (Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
    for m in &file.modules {
        let table = if file.style == NamingStyle::Kohya {
            &kohya
        } else {
            &dotted
        };
        let Some(t) = table.get(&m.name) else {
            return Err(err(format!(
                "tensor `{}`: no layer of this FLUX.2 transformer is named `{}` ({} double and \
                 {} single blocks); the LoRA may be for another model",
                m.tensor, m.name, cfg.num_layers, cfg.num_single_layers
            )));
        };
        let rows: usize = t.pieces.iter().map(|p| p.1).sum();
        let (_, in_dim) = m.down.dims2().map_err(Error::from)?;
        let up_rows = m.up.dim(0).map_err(Error::from)?;
        if in_dim != t.in_dim || up_rows != rows {
            return Err(err(format!(
                "tensor `{}`: the LoRA maps {in_dim} inputs to {up_rows} outputs, but `{}` \
                 ({}) takes {} inputs to {rows}; the LoRA was made for a model of another size",
                m.tensor, m.name, t.linear, t.in_dim
            )));
        }
        let up = place_rows(&(&m.up * m.scale)?, &t.pieces, t.out_dim)?;
        let entry = joined.entry(t.linear.clone()).or_default();
        entry.0.push(m.down.clone());
        entry.1.push(up);
    }
    let mut layers = BTreeMap::new();
    for (linear, (downs, ups)) in joined {
        layers.insert(
            linear,
            LinearDelta {
                down: Tensor::cat(&downs, 0)?,
                up: Tensor::cat(&ups, 1)?,
            },
        );
    }
    Ok(Flux2Lora {
        path: path.to_path_buf(),
        style: file.style,
        layers,
        modules: file.modules.len(),
        skipped: file.skipped,
    })
}

/// How [`apply_loras`] patches a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatchMode {
    /// Merge into dense weights on the compute device; a side path for quantized weights and for
    /// blocks in host memory.
    #[default]
    Auto,
    /// A side path everywhere (no weight copied).
    SidePath,
}

/// What [`apply_loras`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchReport {
    /// Linears whose weight was merged (a new copy each).
    pub merged: usize,
    /// Linears given a low-rank side path.
    pub side_path: usize,
    /// Bytes the patched model holds beyond the base: merged weights plus side-path factors.
    pub added_bytes: u64,
}

fn bytes_of(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// `model` with `loras` applied at their strengths (see the module docs). The base is untouched
/// and shares every layer the LoRAs do not patch with the result.
pub fn apply_loras(
    model: &Flux2Transformer,
    loras: &[(&Flux2Lora, f64)],
    mode: PatchMode,
) -> Result<(Flux2Transformer, PatchReport)> {
    let compute = model.device();
    let dtype = model.dtype();
    let mut report = PatchReport::default();
    let patched = model.map_linears(&mut |name, layer| {
        let deltas: Vec<(&LinearDelta, f64)> = loras
            .iter()
            .filter_map(|(l, s)| l.layers.get(name).map(|d| (d, *s)))
            .filter(|(_, s)| *s != 0.0)
            .collect();
        if deltas.is_empty() {
            return Ok(None);
        }
        let device = layer.device();
        match layer {
            QLinear::Dense(l)
                if mode == PatchMode::Auto
                    && l.bias().is_none()
                    && device.same_device(&compute) =>
            {
                let w = l.weight();
                let mut merged = w.to_dtype(DType::F32)?;
                for (d, s) in &deltas {
                    let up = (d.up.to_device(&device)? * *s)?;
                    merged = (merged + up.matmul(&d.down.to_device(&device)?)?)?;
                }
                let merged = merged.to_dtype(w.dtype())?;
                report.merged += 1;
                report.added_bytes += bytes_of(&merged);
                Ok(Some(QLinear::Dense(candle_nn::Linear::new(merged, None))))
            }
            _ => {
                let side = |t: Tensor| -> candle_core::Result<Tensor> {
                    t.to_dtype(dtype)?.to_device(&device)
                };
                let down =
                    Tensor::cat(&deltas.iter().map(|(d, _)| &d.down).collect::<Vec<_>>(), 0)?;
                let ups = deltas
                    .iter()
                    .map(|(d, s)| &d.up * *s)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let (down, up) = (side(down)?, side(Tensor::cat(&ups, 1)?)?);
                report.side_path += 1;
                report.added_bytes += bytes_of(&down) + bytes_of(&up);
                Ok(Some(QLinear::LowRank {
                    base: Box::new(layer.clone()),
                    down,
                    up,
                }))
            }
        }
    })?;
    Ok((patched, report))
}

/// Bytes [`apply_loras`] would add on the compute device for a model of `cfg` in `dtype` that is
/// all there and dense: a merged copy of each patched linear. An upper bound for quantized models.
pub fn merged_bytes(cfg: &Config, dtype: DType, loras: &[&Flux2Lora]) -> u64 {
    let sizes: HashMap<String, u64> = linears(cfg)
        .into_iter()
        .map(|(n, i, o)| (n, (i * o) as u64))
        .collect();
    let mut names: Vec<&String> = loras.iter().flat_map(|l| l.layers.keys()).collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|n| sizes.get(*n).copied().unwrap_or(0) * dtype.size_in_bytes() as u64)
        .sum()
}
