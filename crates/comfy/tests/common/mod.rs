//! Fake node types with the shapes of ComfyUI's classes (link inputs as schema inputs, widgets
//! as params in `widgets_values` order), so that the conversions can be tested without the
//! model code. They never run.

#![allow(dead_code)]

use std::path::Path;

use serde_json::Value as Json;
use veetance_core::{
    ExecContext, NodeDef, NodeError, NodeRegistry, NodeSchema, ParamDef, ParamProblem, Params,
    PortType, RunEnv, Value,
};

struct Fake {
    schema: NodeSchema,
    /// Params naming a file that must exist in `<models>/<folder>`, like ComfyUI's model combos.
    files: Vec<(&'static str, &'static str)>,
}

impl NodeDef for Fake {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, params: &Params, env: &RunEnv) -> Vec<ParamProblem> {
        self.files
            .iter()
            .filter_map(|(param, folder)| {
                let name = params
                    .get(param)
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let path = env.models_dir.join(folder).join(name);
                (!path.is_file()).then(|| ParamProblem {
                    param: param.to_string(),
                    message: format!(
                        "'{name}' not found in {}",
                        env.models_dir.join(folder).display()
                    ),
                })
            })
            .collect()
    }

    fn execute(&self, _ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Err(NodeError::failed("fake node"))
    }
}

fn add(reg: &mut NodeRegistry, schema: NodeSchema) {
    reg.add(Fake {
        schema,
        files: Vec::new(),
    });
}

fn add_loader(
    reg: &mut NodeRegistry,
    schema: NodeSchema,
    param: &'static str,
    folder: &'static str,
) {
    reg.add(Fake {
        schema,
        files: vec![(param, folder)],
    });
}

const MAX: i64 = 16384;

/// The classes of the FLUX.2 templates, shaped like ComfyUI's.
pub fn registry() -> NodeRegistry {
    let mut reg = NodeRegistry::new();
    use PortType::*;
    add_loader(
        &mut reg,
        NodeSchema::new("UNETLoader", "Load Diffusion Model", "advanced/loaders")
            .param(ParamDef::path(
                "unet_name",
                "",
                Some("diffusion_models"),
                "The model file.",
            ))
            .param(ParamDef::choice(
                "weight_dtype",
                &["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],
                "default",
                "",
            ))
            .output("MODEL", Model, ""),
        "unet_name",
        "diffusion_models",
    );
    add_loader(
        &mut reg,
        NodeSchema::new("CLIPLoader", "Load CLIP", "advanced/loaders")
            .param(ParamDef::path("clip_name", "", Some("text_encoders"), ""))
            .param(ParamDef::choice(
                "type",
                &["stable_diffusion", "flux2"],
                "stable_diffusion",
                "",
            ))
            .param(ParamDef::choice(
                "device",
                &["default", "cpu"],
                "default",
                "",
            ))
            .output("CLIP", TextEncoder, ""),
        "clip_name",
        "text_encoders",
    );
    add_loader(
        &mut reg,
        NodeSchema::new("VAELoader", "Load VAE", "loaders")
            .param(ParamDef::path("vae_name", "", Some("vae"), ""))
            .output("VAE", Vae, ""),
        "vae_name",
        "vae",
    );
    add(
        &mut reg,
        NodeSchema::new(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
        )
        .input("clip", TextEncoder, "")
        .param(ParamDef::text("text", "", "The text to encode."))
        .output("CONDITIONING", Conditioning, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "ConditioningZeroOut",
            "ConditioningZeroOut",
            "advanced/conditioning",
        )
        .input("conditioning", Conditioning, "")
        .output("CONDITIONING", Conditioning, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("CFGGuider", "CFGGuider", "sampling/custom_sampling/guiders")
            .input("model", Model, "")
            .input("positive", Conditioning, "")
            .input("negative", Conditioning, "")
            .param(ParamDef::float("cfg", 8.0, 0.0, 100.0, 0.1, ""))
            .output("GUIDER", Guider, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "BasicGuider",
            "BasicGuider",
            "sampling/custom_sampling/guiders",
        )
        .input("model", Model, "")
        .input("conditioning", Conditioning, "")
        .output("GUIDER", Guider, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "KSamplerSelect",
            "KSamplerSelect",
            "sampling/custom_sampling/samplers",
        )
        .param(ParamDef::choice(
            "sampler_name",
            &["euler", "heun"],
            "euler",
            "",
        ))
        .output("SAMPLER", Sampler, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "RandomNoise",
            "RandomNoise",
            "sampling/custom_sampling/noise",
        )
        .param(ParamDef::int("noise_seed", 0, 0, i64::MAX, "").with_control_after_generate())
        .output("NOISE", Noise, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "Flux2Scheduler",
            "Flux2Scheduler",
            "sampling/custom_sampling/schedulers",
        )
        .param(ParamDef::int("steps", 20, 1, 4096, ""))
        .param(ParamDef::int("width", 1024, 16, MAX, ""))
        .param(ParamDef::int("height", 1024, 16, MAX, ""))
        .output("SIGMAS", Sigmas, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("EmptyFlux2LatentImage", "Empty Flux 2 Latent", "latent")
            .param(ParamDef::int("width", 1024, 16, MAX, ""))
            .param(ParamDef::int("height", 1024, 16, MAX, ""))
            .param(ParamDef::int("batch_size", 1, 1, 4096, ""))
            .output("LATENT", Latent, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "SamplerCustomAdvanced",
            "SamplerCustomAdvanced",
            "sampling/custom_sampling",
        )
        .input("noise", Noise, "")
        .input("guider", Guider, "")
        .input("sampler", Sampler, "")
        .input("sigmas", Sigmas, "")
        .input("latent_image", Latent, "")
        .output("output", Latent, "")
        .output("denoised_output", Latent, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("VAEDecode", "VAE Decode", "latent")
            .input("samples", Latent, "")
            .input("vae", Vae, "")
            .output("IMAGE", Image, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("SaveImage", "Save Image", "image")
            .input("images", Image, "")
            .param(ParamDef::string("filename_prefix", "ComfyUI", ""))
            .output_node(),
    );
    add(
        &mut reg,
        NodeSchema::new("PreviewImage", "Preview Image", "image")
            .input("images", Image, "")
            .output_node(),
    );
    add(
        &mut reg,
        NodeSchema::new("PrimitiveInt", "Int", "utils/primitive")
            .param(ParamDef::int("value", 0, i64::MIN, i64::MAX, "").with_control_after_generate())
            .output("INT", Int, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("PrimitiveFloat", "Float", "utils/primitive")
            .param(ParamDef::float("value", 0.0, f64::MIN, f64::MAX, 0.1, ""))
            .output("FLOAT", Float, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("PrimitiveString", "String", "utils/primitive")
            .param(ParamDef::string("value", "", ""))
            .output("STRING", String, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("PrimitiveBoolean", "Boolean", "utils/primitive")
            .param(ParamDef::bool("value", false, ""))
            .output("BOOLEAN", Bool, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "PrimitiveStringMultiline",
            "String (Multiline)",
            "utils/primitive",
        )
        .param(ParamDef::text("value", "", ""))
        .output("STRING", String, ""),
    );
    reg
}

/// [`registry`] plus the classes of ComfyUI's FLUX.2 [dev] example that Veetance does not have
/// (FluxGuidance, ReferenceLatent, VAEEncode, ImageScaleToTotalPixels, LoadImage).
pub fn registry_with_dev_example() -> NodeRegistry {
    let mut reg = registry();
    use PortType::*;
    add(
        &mut reg,
        NodeSchema::new("FluxGuidance", "FluxGuidance", "advanced/conditioning/flux")
            .input("conditioning", Conditioning, "")
            .param(ParamDef::float("guidance", 3.5, 0.0, 100.0, 0.1, ""))
            .output("CONDITIONING", Conditioning, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "ReferenceLatent",
            "ReferenceLatent",
            "advanced/conditioning/edit_models",
        )
        .input("conditioning", Conditioning, "")
        .optional_input("latent", Latent, "")
        .output("CONDITIONING", Conditioning, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("VAEEncode", "VAE Encode", "latent")
            .input("pixels", Image, "")
            .input("vae", Vae, "")
            .output("LATENT", Latent, ""),
    );
    add(
        &mut reg,
        NodeSchema::new(
            "ImageScaleToTotalPixels",
            "ImageScaleToTotalPixels",
            "image/upscaling",
        )
        .input("image", Image, "")
        .param(ParamDef::choice(
            "upscale_method",
            &["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
            "nearest-exact",
            "",
        ))
        .param(ParamDef::float("megapixels", 1.0, 0.01, 16.0, 0.01, ""))
        .output("IMAGE", Image, ""),
    );
    add(
        &mut reg,
        NodeSchema::new("LoadImage", "Load Image", "image")
            .param(ParamDef::string("image", "", ""))
            .output("IMAGE", Image, ""),
    );
    reg
}

/// The folder of ComfyUI's own example files (`ComfyUI_examples-flux2_example.*.json`):
/// `$VEETANCE_COMFY_EXAMPLES`, else the shared reference folder next to the repository. They
/// are third-party files and are not committed; `None` (the test says it was skipped) when
/// neither is there, and a failure when the variable names a folder without them.
pub fn examples_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("VEETANCE_COMFY_EXAMPLES") {
        return Some(dir.into());
    }
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/comfyui-examples");
    if shared.is_dir() {
        return Some(shared);
    }
    eprintln!(
        "skipped: ComfyUI's example files are not here; set VEETANCE_COMFY_EXAMPLES to the folder \
         holding ComfyUI_examples-flux2_example.prompt-api.json and .workflow-ui.json"
    );
    None
}

/// Reads a JSON file from [`examples_dir`] or a templates folder, failing with a clear message.
pub fn read_json(dir: &Path, name: &str) -> Json {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (is the folder the right one?)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// JSON equality where numbers compare by value (ComfyUI writes `4.0` where the frontend sent
/// `4`).
pub fn same_json(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A prompt's nodes without what the frontend and server add for people (`_meta`,
/// `is_changed`).
pub fn strip_meta(prompt: &Json) -> Json {
    let mut out = prompt.clone();
    for node in out.as_object_mut().unwrap().values_mut() {
        let node = node.as_object_mut().unwrap();
        node.remove("_meta");
        node.remove("is_changed");
    }
    out
}

/// Asserts two prompts are the same graph, naming the first node that differs.
pub fn assert_same_prompt(got: &Json, want: &Json) {
    let (got, want) = (strip_meta(got), strip_meta(want));
    let got_ids: Vec<&String> = got.as_object().unwrap().keys().collect();
    let want_ids: Vec<&String> = want.as_object().unwrap().keys().collect();
    assert_eq!(got_ids, want_ids, "node ids differ");
    for (id, node) in want.as_object().unwrap() {
        assert!(
            same_json(&got[id], node),
            "node {id} differs:\n got  {}\n want {node}",
            got[id]
        );
    }
}
