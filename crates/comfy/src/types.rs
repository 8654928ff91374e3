//! ComfyUI's names for Veetance's port and param types, and ComfyUI's input specs
//! (`[TYPE, {opts}]`) written from node schemas, shared by `/object_info` and the `input_config`
//! of validation errors.

use std::path::Path;

use serde_json::{json, Map, Value as Json};
use veetance_core::{NodeSchema, ParamDef, ParamKind, PortType, Value};

/// ComfyUI's type name for a port type (`MODEL`, `CLIP`, `INT`...).
pub fn comfy_type(ty: PortType) -> &'static str {
    match ty {
        PortType::Int => "INT",
        PortType::Float => "FLOAT",
        PortType::Bool => "BOOLEAN",
        PortType::String => "STRING",
        PortType::Choice => "COMBO",
        PortType::Image => "IMAGE",
        PortType::Latent => "LATENT",
        PortType::Conditioning => "CONDITIONING",
        PortType::Model => "MODEL",
        PortType::TextEncoder => "CLIP",
        PortType::Vae => "VAE",
        PortType::Noise => "NOISE",
        PortType::Guider => "GUIDER",
        PortType::Sampler => "SAMPLER",
        PortType::Sigmas => "SIGMAS",
        PortType::Mask => "MASK",
        // `PortType` is non-exhaustive: a type added later is named by Veetance's name until it
        // gets a row here.
        other => other.name(),
    }
}

/// ComfyUI's type name for what a param holds: a combo for choices and model files.
pub fn param_type_name(kind: &ParamKind) -> &'static str {
    match kind {
        ParamKind::Int { .. } => "INT",
        ParamKind::Float { .. } => "FLOAT",
        ParamKind::Bool { .. } => "BOOLEAN",
        ParamKind::String { .. } | ParamKind::Path { folder: None, .. } => "STRING",
        ParamKind::Choice { .. }
        | ParamKind::Path {
            folder: Some(_), ..
        } => "COMBO",
    }
}

/// The input spec of a linked input: `["MODEL", {"tooltip": ...}]`.
pub fn input_spec(ty: PortType, doc: &str) -> Json {
    let mut opts = Map::new();
    if !doc.is_empty() {
        opts.insert("tooltip".into(), doc.into());
    }
    json!([comfy_type(ty), opts])
}

/// The input spec of a param (a widget in ComfyUI): `["INT", {default, min, max, step}]`, or a
/// combo `[[options...], {default}]`. A file param with a models folder is a combo of the model
/// files found in `<models_dir>/<folder>`.
pub fn param_spec(param: &ParamDef, models_dir: &Path) -> Json {
    let mut opts = Map::new();
    let head = match &param.kind {
        ParamKind::Int {
            default,
            min,
            max,
            step,
        } => {
            opts.insert("default".into(), json!(default));
            opts.insert("min".into(), json!(min));
            opts.insert("max".into(), json!(max));
            opts.insert("step".into(), json!(step));
            if param.control_after_generate {
                opts.insert("control_after_generate".into(), json!(true));
            }
            json!("INT")
        }
        ParamKind::Float {
            default,
            min,
            max,
            step,
        } => {
            opts.insert("default".into(), json!(default));
            opts.insert("min".into(), json!(min));
            opts.insert("max".into(), json!(max));
            opts.insert("step".into(), json!(step));
            opts.insert("round".into(), json!(round_for_step(*step)));
            json!("FLOAT")
        }
        ParamKind::Bool { default } => {
            opts.insert("default".into(), json!(default));
            json!("BOOLEAN")
        }
        ParamKind::String { default, multiline } => {
            opts.insert("default".into(), json!(default));
            opts.insert("multiline".into(), json!(multiline));
            json!("STRING")
        }
        ParamKind::Path {
            default,
            folder: None,
        } => {
            opts.insert("default".into(), json!(default));
            opts.insert("multiline".into(), json!(false));
            json!("STRING")
        }
        ParamKind::Choice { options, default } => {
            opts.insert("default".into(), json!(default));
            json!(options)
        }
        ParamKind::Path {
            default,
            folder: Some(folder),
        } => {
            let files = model_files(&models_dir.join(folder));
            if files.iter().any(|f| f == default) {
                opts.insert("default".into(), json!(default));
            }
            json!(files)
        }
    };
    if !param.doc.is_empty() {
        opts.insert("tooltip".into(), param.doc.clone().into());
    }
    json!([head, opts])
}

/// The spec of the input or param `name` of a schema, as ComfyUI's `input_config`.
pub fn spec_of(schema: &NodeSchema, name: &str, models_dir: &Path) -> Option<Json> {
    if let Some(port) = schema.input_def(name) {
        return Some(input_spec(port.ty, &port.doc));
    }
    schema.param_def(name).map(|p| param_spec(p, models_dir))
}

/// The rounding ComfyUI's float widgets apply: the precision of the step (0.01 for a step of
/// 0.05, 1 for whole steps).
fn round_for_step(step: f64) -> f64 {
    if !(step.is_finite() && step > 0.0) || step >= 1.0 {
        return 1.0;
    }
    let mut round = 1.0;
    let mut scaled = step;
    for _ in 0..10 {
        if (scaled - scaled.round()).abs() < 1e-9 {
            break;
        }
        scaled *= 10.0;
        round /= 10.0;
    }
    round
}

/// Model files under `dir` as ComfyUI lists them: every `.safetensors`, `.gguf` and `.sft` file
/// at any depth (sub-folders as `sub/name`), and folders holding a diffusers model
/// (`config.json` or `model_index.json`) as one entry; sorted. Empty when the folder does not
/// exist.
pub fn model_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, "", &mut out, 0);
    out.sort();
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>, depth: usize) {
    // Symbolic links may loop; ComfyUI's own listing follows them, so a depth cap stands in.
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = format!("{prefix}{name}");
        if path.is_dir() {
            if path.join("config.json").is_file() || path.join("model_index.json").is_file() {
                out.push(rel);
            } else {
                walk(&path, &format!("{rel}/"), out, depth + 1);
            }
        } else if path
            .extension()
            .is_some_and(|x| x == "safetensors" || x == "gguf" || x == "sft")
        {
            out.push(rel);
        }
    }
}

/// A param value as JSON (scalars only; images and objects are never params).
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Int(v) => json!(v),
        Value::Float(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::String(s) | Value::Choice(s) => json!(&**s),
        other => json!(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_rounding_follows_the_step_precision() {
        assert_eq!(round_for_step(0.1), 0.1);
        assert!((round_for_step(0.05) - 0.01).abs() < 1e-12);
        assert_eq!(round_for_step(1.0), 1.0);
        assert_eq!(round_for_step(0.5), 0.1);
    }

    #[test]
    fn model_files_lists_weights_and_diffusers_folders_sorted() {
        let dir = std::env::temp_dir().join(format!("veetance-comfy-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("vae-diffusers")).unwrap();
        std::fs::write(dir.join("b.safetensors"), b"").unwrap();
        std::fs::write(dir.join("a.gguf"), b"").unwrap();
        std::fs::write(dir.join("c.sft"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"").unwrap();
        std::fs::write(dir.join("sub/d.safetensors"), b"").unwrap();
        std::fs::write(dir.join("vae-diffusers/config.json"), b"{}").unwrap();
        std::fs::write(dir.join("vae-diffusers/x.safetensors"), b"").unwrap();
        assert_eq!(
            model_files(&dir),
            [
                "a.gguf",
                "b.safetensors",
                "c.sft",
                "sub/d.safetensors",
                "vae-diffusers"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(model_files(&dir).is_empty());
    }
}
