//! EmptyLatent, SaveLatent, LoadLatent. Latents are `(B, 128, H/16, W/16)` in the transformer's
//! normalised space, as ComfyUI keeps Flux2 latents; `.latent` files are ComfyUI's format
//! (safetensors with a `latent_tensor` entry).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    ExecContext, Freshness, NodeDef, NodeError, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};
use veetance_models::sampling::{LATENT_CHANNELS, PIXELS_PER_TOKEN};

use crate::values::{candle_err, input, object, Latent};

const MAX_SIDE: i64 = 16384;

pub struct EmptyLatent {
    schema: NodeSchema,
}

impl EmptyLatent {
    pub fn new() -> Self {
        EmptyLatent {
            schema: NodeSchema::new("EmptyLatent", "Empty Latent", "latent")
                .doc(
                    "A batch of zero latents for an image of width × height pixels (multiples of \
                     16). The sampler adds the seeded noise.",
                )
                .param(ParamDef::int(
                    "width",
                    1024,
                    16,
                    MAX_SIDE,
                    "Image width in pixels, a multiple of 16.",
                ))
                .param(ParamDef::int(
                    "height",
                    1024,
                    16,
                    MAX_SIDE,
                    "Image height in pixels, a multiple of 16.",
                ))
                .param(ParamDef::int("batch", 1, 1, 64, "Images per batch."))
                .output("latent", PortType::Latent, "The empty latent."),
        }
    }
}

impl Default for EmptyLatent {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for EmptyLatent {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        ["width", "height"]
            .into_iter()
            .filter_map(|p| {
                let v = params.int(p).ok()?;
                (v % PIXELS_PER_TOKEN as i64 != 0).then(|| ParamProblem {
                    param: p.into(),
                    message: format!(
                        "{v} is not a multiple of {PIXELS_PER_TOKEN} (try {})",
                        (v / 16).max(1) * 16
                    ),
                })
            })
            .collect()
    }

    /// The latent itself: `batch × 128 × h/16 × w/16` f32 values (32 GiB at the largest size
    /// and batch).
    fn host_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        let side = |p: &str| {
            params
                .int(p)
                .ok()
                .map(|v| v.max(0) as u64 / PIXELS_PER_TOKEN as u64)
        };
        let batch = params.int("batch").ok()?.max(0) as u64;
        Some(batch * LATENT_CHANNELS as u64 * side("height")? * side("width")? * 4)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let w = ctx.params.int("width")? as usize;
        let h = ctx.params.int("height")? as usize;
        let b = ctx.params.int("batch")? as usize;
        if w % PIXELS_PER_TOKEN != 0 || h % PIXELS_PER_TOKEN != 0 {
            return Err(NodeError::failed(format!(
                "size {w}×{h} is not a multiple of {PIXELS_PER_TOKEN}"
            )));
        }
        let samples = Tensor::zeros(
            (
                b,
                LATENT_CHANNELS,
                h / PIXELS_PER_TOKEN,
                w / PIXELS_PER_TOKEN,
            ),
            DType::F32,
            &Device::Cpu,
        )
        .map_err(candle_err("EmptyLatent"))?;
        Ok(vec![object(
            PortType::Latent,
            Latent::new(samples, Vec::new()),
        )])
    }
}

pub struct SaveLatent {
    schema: NodeSchema,
}

impl SaveLatent {
    pub fn new() -> Self {
        SaveLatent {
            schema: NodeSchema::new("SaveLatent", "Save Latent", "latent")
                .doc(
                    "Writes the latent to <out>/<filename_prefix>_NNNNN.latent in ComfyUI's format \
                     (safetensors with a `latent_tensor` entry), through a temporary file.",
                )
                .input("latent", PortType::Latent, "The latent to save.")
                .param(ParamDef::string(
                    "filename_prefix",
                    "latent",
                    "File name prefix (no folders).",
                ))
                .output("path", PortType::String, "The file written.")
                .output_node(),
        }
    }
}

impl Default for SaveLatent {
    fn default() -> Self {
        Self::new()
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.contains(['/', '\\', ':', '\0'])
        || prefix == "."
        || prefix == ".."
    {
        return Err(format!(
            "{prefix:?} is not a plain file name prefix (no folders, no '..')"
        ));
    }
    Ok(())
}

impl NodeDef for SaveLatent {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        match check_prefix(params.str("filename_prefix").unwrap_or_default()) {
            Ok(()) => Vec::new(),
            Err(message) => vec![ParamProblem {
                param: "filename_prefix".into(),
                message,
            }],
        }
    }

    fn freshness(&self, _params: &Params, env: &RunEnv) -> Freshness {
        Freshness::Fingerprint(env.out_dir.to_string_lossy().as_bytes().to_vec())
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let latent = input::<Latent>(ctx, "latent", PortType::Latent)?;
        let prefix = ctx.params.str("filename_prefix")?;
        check_prefix(prefix)
            .map_err(|m| NodeError::failed(format!("param 'filename_prefix': {m}")))?;
        let dir = &ctx.env.out_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| NodeError::failed(format!("cannot create {}: {e}", dir.display())))?;
        let mut number = 1u32;
        let path = loop {
            let p = dir.join(format!("{prefix}_{number:05}.latent"));
            if !p.exists() {
                break p;
            }
            number += 1;
        };
        let tmp = dir.join(format!(
            ".{prefix}_{number:05}.latent.{}.tmp",
            std::process::id()
        ));
        let samples = latent
            .samples
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(candle_err("SaveLatent"))?;
        let tensors: HashMap<String, Tensor> = [
            ("latent_tensor".to_string(), samples),
            (
                // ComfyUI writes this marker so that its loader does not rescale old latents.
                "latent_format_version_0".to_string(),
                Tensor::zeros(0, DType::F32, &Device::Cpu).map_err(candle_err("SaveLatent"))?,
            ),
        ]
        .into();
        let written = candle_core::safetensors::save(&tensors, &tmp)
            .map_err(|e| NodeError::failed(format!("cannot write {}: {e}", tmp.display())))
            .and_then(|_| {
                std::fs::rename(&tmp, &path).map_err(|e| {
                    NodeError::failed(format!("cannot move into {}: {e}", path.display()))
                })
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let shown = path.display().to_string();
        ctx.output_written(shown.clone());
        Ok(vec![Value::string(shown)])
    }
}

pub struct LoadLatent {
    schema: NodeSchema,
}

impl LoadLatent {
    pub fn new() -> Self {
        LoadLatent {
            schema: NodeSchema::new("LoadLatent", "Load Latent", "latent")
                .doc(
                    "Reads a .latent file (ComfyUI's format: safetensors with `latent_tensor`) \
                     holding a FLUX.2 latent of shape (B, 128, H/16, W/16).",
                )
                .param(ParamDef::path("path", "", None, "The .latent file.").constant())
                .output("latent", PortType::Latent, "The latent."),
        }
    }
}

impl Default for LoadLatent {
    fn default() -> Self {
        Self::new()
    }
}

fn read_latent(path: &str) -> Result<Tensor, String> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| format!("'{path}' is not a readable .latent file: {e}"))?;
    let t = tensors
        .get("latent_tensor")
        .ok_or_else(|| format!("'{path}' has no `latent_tensor` entry"))?;
    let dims = t.dims();
    if dims.len() != 4 || dims[1] != LATENT_CHANNELS {
        return Err(format!(
            "'{path}' holds a latent of shape {dims:?}; FLUX.2 latents are (B, {LATENT_CHANNELS}, H/16, W/16)"
        ));
    }
    t.to_dtype(DType::F32).map_err(|e| e.to_string())
}

impl NodeDef for LoadLatent {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        let path = params.str("path").unwrap_or_default();
        if std::path::Path::new(path).is_file() {
            Vec::new()
        } else {
            vec![ParamProblem {
                param: "path".into(),
                message: format!("latent file '{path}' does not exist"),
            }]
        }
    }

    fn freshness(&self, params: &Params, _env: &RunEnv) -> Freshness {
        let path = params.str("path").unwrap_or_default();
        crate::files::fingerprint(&[path.into()], false)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let samples = read_latent(ctx.params.str("path")?).map_err(NodeError::failed)?;
        Ok(vec![object(
            PortType::Latent,
            Latent::new(samples, Vec::new()),
        )])
    }
}
