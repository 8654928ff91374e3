//! LoRA files (low-rank weight updates `ΔW = scale · B · A`) read from safetensors, whatever
//! model they are for: their tensors grouped per module, the naming style told from the names, and
//! each module's scale worked out. Mapping modules onto a model's layers is the model's business
//! (`crate::flux2::lora`).
//!
//! Styles (the tensor names LoRAs are published with):
//!
//! * diffusers/PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight`; the scale is PEFT's
//!   `lora_alpha / r` from the file's `lora_adapter_metadata` (written by diffusers'
//!   `save_lora_weights`; `alpha_pattern` entries by module name, `use_rslora` for
//!   `alpha / sqrt(r)`), or a `<module>.alpha` tensor, else 1.
//! * kohya/ComfyUI: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` /
//!   `.alpha`; scale `alpha / rank` (1 without alpha), as ComfyUI's `comfy/weight_adapter/lora.py`
//!   and diffusers' kohya converters compute it.
//! * BFL/ai-toolkit: `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (also
//!   `model.diffusion_model.`, PEFT's `base_model.model.`, `lora_down`/`lora_up`), optional
//!   `.alpha` as kohya.
//!
//! Text-encoder modules (`lora_te*`, `text_encoder*`) are skipped and listed; anything else that is
//! not a LoRA pair (DoRA's `dora_scale`, LoKr, LoHa, full `diff` weights, biases) is an error that
//! names the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// How a LoRA file names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingStyle {
    /// `transformer.`-prefixed diffusers module names, `lora_A`/`lora_B`.
    Diffusers,
    /// `lora_unet_` names with underscores, `lora_down`/`lora_up`/`alpha`.
    Kohya,
    /// `diffusion_model.`-prefixed (BFL / ai-toolkit / ComfyUI) names.
    Bfl,
    /// Module names with no known prefix.
    Unprefixed,
}

impl std::fmt::Display for NamingStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamingStyle::Diffusers => "diffusers/PEFT",
            NamingStyle::Kohya => "kohya",
            NamingStyle::Bfl => "BFL",
            NamingStyle::Unprefixed => "unprefixed",
        })
    }
}

/// One module's update: `ΔW = scale · up · down`, in f32 on the CPU.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// The module name with the style's prefix and the LoRA suffixes removed
    /// (`transformer_blocks.0.attn.to_q`, `double_blocks_0_img_attn_qkv`).
    pub name: String,
    /// The file's name of the `A`/`down` tensor, for messages.
    pub tensor: String,
    /// `(rank, in)`.
    pub down: Tensor,
    /// `(out, rank)`.
    pub up: Tensor,
    pub scale: f64,
}

/// A LoRA file's modules.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub path: PathBuf,
    pub style: NamingStyle,
    pub modules: Vec<LoraModule>,
    /// Tensors left out on purpose (text-encoder modules).
    pub skipped: Vec<String>,
}

const PREFIXES: [(&str, NamingStyle); 5] = [
    ("transformer.", NamingStyle::Diffusers),
    ("lora_unet_", NamingStyle::Kohya),
    ("model.diffusion_model.", NamingStyle::Bfl),
    ("diffusion_model.", NamingStyle::Bfl),
    ("base_model.model.", NamingStyle::Bfl),
];

const TEXT_ENCODER_PREFIXES: [&str; 4] = ["lora_te", "text_encoder", "te.", "te1."];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

const SUFFIXES: [(&str, Part); 5] = [
    (".lora_A.weight", Part::Down),
    (".lora_down.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_up.weight", Part::Up),
    (".alpha", Part::Alpha),
];

/// Why a tensor that is not a LoRA pair cannot be used, if it is a known kind.
fn unsupported(name: &str) -> Option<&'static str> {
    let kinds = [
        ("dora_scale", "DoRA LoRAs (dora_scale) are not supported"),
        (
            ".lora_mid",
            "LoCon mid weights (lora_mid) are not supported",
        ),
        (".lokr_", "LoKr adapters are not supported, only LoRA"),
        (".hada_", "LoHa adapters are not supported, only LoRA"),
    ];
    let endings = [
        (".diff", "full weight differences (diff) are not supported"),
        (
            ".diff_b",
            "full bias differences (diff_b) are not supported",
        ),
        (".bias", "LoRA biases are not supported"),
    ];
    kinds
        .iter()
        .find(|(k, _)| name.contains(k))
        .or_else(|| endings.iter().find(|(k, _)| name.ends_with(k)))
        .map(|(_, w)| *w)
}

/// PEFT's adapter config as diffusers stores it in the safetensors header.
#[derive(Default)]
struct PeftConfig {
    alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
    rslora: bool,
}

impl PeftConfig {
    fn from_header(meta: Option<&HashMap<String, String>>) -> Self {
        let Some(raw) = meta.and_then(|m| m.get("lora_adapter_metadata")) else {
            return Self::default();
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw)
        else {
            return Self::default();
        };
        let get = |key: &str| {
            map.get(&format!("transformer.{key}"))
                .or_else(|| map.get(key))
                .cloned()
        };
        let alpha_pattern = match get("alpha_pattern") {
            Some(serde_json::Value::Object(p)) => p
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .collect(),
            _ => Vec::new(),
        };
        PeftConfig {
            alpha: get("lora_alpha").and_then(|v| v.as_f64()),
            alpha_pattern,
            rslora: get("use_rslora").and_then(|v| v.as_bool()) == Some(true),
        }
    }

    /// PEFT's scale for `module` of rank `r`, when the config gives an alpha.
    fn scale(&self, module: &str, r: usize) -> Option<f64> {
        // PEFT matches pattern keys as a suffix of the module name at a `.` boundary.
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
            .map(|(_, a)| *a)
            .or(self.alpha)?;
        let r = r as f64;
        Some(if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }
}

fn lora_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Lora {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a LoRA safetensors file: groups its tensors by module, tells the style, and computes each
/// module's scale. Errors name the file and the tensor.
pub fn read(path: &Path) -> Result<LoraFile> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_bytes(path, &bytes)
}

/// Reads a LoRA from the bytes of its safetensors file, as [`read`] does; `path` names it in
/// errors.
pub fn read_bytes(path: &Path, bytes: &[u8]) -> Result<LoraFile> {
    let header =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let peft = PeftConfig::from_header(header.1.metadata().as_ref());
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
        Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    parse(path, tensors, &peft)
}

struct Parts {
    down: Option<(String, Tensor)>,
    up: Option<(String, Tensor)>,
    alpha: Option<(String, Tensor)>,
}

fn parse(path: &Path, tensors: HashMap<String, Tensor>, peft: &PeftConfig) -> Result<LoraFile> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut style = None;
    let mut skipped = Vec::new();
    let mut modules: BTreeMap<String, Parts> = BTreeMap::new();
    for name in names {
        if TEXT_ENCODER_PREFIXES.iter().any(|p| name.starts_with(p)) {
            skipped.push(name.clone());
            continue;
        }
        if let Some(why) = unsupported(name) {
            return Err(lora_err(path, format!("tensor `{name}`: {why}")));
        }
        let (rest, this_style) = PREFIXES
            .iter()
            .find_map(|(p, s)| name.strip_prefix(p).map(|r| (r, *s)))
            .unwrap_or((name.as_str(), NamingStyle::Unprefixed));
        match style {
            None => style = Some(this_style),
            Some(s) if s != this_style => {
                return Err(lora_err(
                    path,
                    format!(
                        "tensor `{name}` is named in the {this_style} style, but earlier tensors \
                         in the {s} style; a file mixing styles is not supported"
                    ),
                ))
            }
            Some(_) => {}
        }
        let Some((module, part)) = SUFFIXES
            .iter()
            .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, *part)))
        else {
            return Err(lora_err(
                path,
                format!(
                    "tensor `{name}` is not part of a LoRA pair (expected names ending in \
                     .lora_A.weight/.lora_B.weight, .lora_down.weight/.lora_up.weight or .alpha)"
                ),
            ));
        };
        let entry = modules.entry(module.to_string()).or_insert(Parts {
            down: None,
            up: None,
            alpha: None,
        });
        let value = Some((name.clone(), tensors[name].clone()));
        match part {
            Part::Down => entry.down = value,
            Part::Up => entry.up = value,
            Part::Alpha => entry.alpha = value,
        }
    }
    let mut out = Vec::with_capacity(modules.len());
    for (module, parts) in modules {
        let (Some((down_name, down)), Some((up_name, up))) = (parts.down, parts.up) else {
            return Err(lora_err(
                path,
                format!(
                    "module `{module}` lacks its down (A) or up (B) tensor; the file is incomplete"
                ),
            ));
        };
        let (down, up) = (
            down.to_dtype(DType::F32).map_err(Error::from)?,
            up.to_dtype(DType::F32).map_err(Error::from)?,
        );
        let (rank, up_rank) = match (down.dims(), up.dims()) {
            ([r, _], [_, ur]) => (*r, *ur),
            _ => {
                return Err(lora_err(
                    path,
                    format!(
                        "tensors `{down_name}` {:?} and `{up_name}` {:?}: expected 2-D matrices \
                         (conv LoRAs are not supported)",
                        down.dims(),
                        up.dims()
                    ),
                ))
            }
        };
        if rank != up_rank || rank == 0 {
            return Err(lora_err(
                path,
                format!(
                    "tensors `{down_name}` {:?} and `{up_name}` {:?} disagree on the rank",
                    down.dims(),
                    up.dims()
                ),
            ));
        }
        let scale = match parts.alpha {
            Some((alpha_name, alpha)) => {
                let a = alpha
                    .flatten_all()
                    .and_then(|a| a.to_dtype(DType::F64))
                    .and_then(|a| a.to_vec1::<f64>())
                    .ok()
                    .and_then(|v| match v.as_slice() {
                        [a] => Some(*a),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        lora_err(
                            path,
                            format!("tensor `{alpha_name}` should hold one number (the alpha)"),
                        )
                    })?;
                a / rank as f64
            }
            None => peft.scale(&module, rank).unwrap_or(1.0),
        };
        out.push(LoraModule {
            name: module,
            tensor: down_name,
            down,
            up,
            scale,
        });
    }
    if out.is_empty() {
        return Err(lora_err(
            path,
            if skipped.is_empty() {
                "no LoRA tensors in the file".to_string()
            } else {
                format!(
                    "only text-encoder tensors ({}); nothing for the diffusion model",
                    skipped.len()
                )
            },
        ));
    }
    Ok(LoraFile {
        path: path.to_path_buf(),
        style: style.unwrap_or(NamingStyle::Unprefixed),
        modules: out,
        skipped,
    })
}
