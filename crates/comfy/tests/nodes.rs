//! The conversions over Veetance's real node registry (`nodes/comfy` registers ComfyUI's
//! classes): ComfyUI's graphs read into graphs of those nodes and validate against the tiny
//! models under the templates' file names.
#![cfg(unix)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};
use veetance_comfy::{check_prompt, prompt_to_graph, read_json, ui_to_prompt};
use veetance_core::RunEnv;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A models folder with the tiny models under the klein templates' file names.
fn template_models(dir: &Path) {
    let tiny = repo().join("assets/tiny-models");
    let link = |target: PathBuf, at: PathBuf| {
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    for name in [
        "flux-2-klein-base-4b.safetensors",
        "flux-2-klein-4b.safetensors",
    ] {
        link(
            tiny.join("diffusion_models/flux2-klein-tiny.safetensors"),
            dir.join("diffusion_models").join(name),
        );
    }
    for (from, to) in [
        ("qwen3-tiny.safetensors", "qwen_3_4b.safetensors"),
        ("qwen3-tiny.tokenizer.json", "qwen_3_4b.tokenizer.json"),
        ("qwen3-tiny.config.json", "qwen_3_4b.config.json"),
    ] {
        link(
            tiny.join("text_encoders").join(from),
            dir.join("text_encoders").join(to),
        );
    }
    link(
        tiny.join("vae/flux2-vae-tiny"),
        dir.join("vae/flux2-vae.safetensors"),
    );
}

fn env(models: &Path) -> RunEnv {
    RunEnv {
        models_dir: models.to_path_buf(),
        ..RunEnv::default()
    }
}

/// The klein 4B text-to-image graph as ComfyUI's frontend queues it.
fn klein_prompt() -> Json {
    json!({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["75:65", 0]}},
        "76": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a hedgehog"}},
        "75:61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "75:62": {"class_type": "Flux2Scheduler", "inputs": {"steps": 4, "width": ["75:68", 0], "height": ["75:69", 0]}},
        "75:63": {"class_type": "CFGGuider", "inputs": {"cfg": 1, "model": ["75:70", 0], "positive": ["75:74", 0], "negative": ["75:67", 0]}},
        "75:64": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["75:73", 0], "guider": ["75:63", 0], "sampler": ["75:61", 0], "sigmas": ["75:62", 0], "latent_image": ["75:66", 0]}},
        "75:65": {"class_type": "VAEDecode", "inputs": {"samples": ["75:64", 0], "vae": ["75:72", 0]}},
        "75:66": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": ["75:68", 0], "height": ["75:69", 0], "batch_size": 1}},
        "75:67": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["75:74", 0]}},
        "75:68": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "75:69": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "75:70": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"}},
        "75:71": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}},
        "75:72": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "75:73": {"class_type": "RandomNoise", "inputs": {"noise_seed": 432262096973490_i64}},
        "75:74": {"class_type": "CLIPTextEncode", "inputs": {"text": ["76", 0], "clip": ["75:71", 0]}},
    })
}

#[test]
fn klein_prompt_validates_against_the_real_nodes_and_names_missing_model_files() {
    let registry = veetance_nodes::registry();
    let graph = prompt_to_graph(&klein_prompt(), &registry).unwrap();
    let models = tempfile::tempdir().unwrap();
    template_models(models.path());
    let checked = check_prompt(&graph, &registry, &env(models.path())).unwrap();
    assert_eq!(checked.outputs, ["9"]);
    assert!(checked.node_errors.is_empty(), "{:?}", checked.node_errors);

    let empty = tempfile::tempdir().unwrap();
    let err = check_prompt(&graph, &registry, &env(empty.path())).unwrap_err();
    assert_eq!(err.error.kind, "prompt_outputs_failed_validation");
    for (node, input) in [
        ("75:70", "unet_name"),
        ("75:71", "clip_name"),
        ("75:72", "vae_name"),
    ] {
        let e = &err.node_errors[node].errors[0];
        assert_eq!(e.kind, "custom_validation_failed", "{node}: {e:?}");
        assert_eq!(e.input_name(), Some(input));
        assert!(
            e.details.starts_with(&format!("{input} - ")),
            "{}",
            e.details
        );
        assert_eq!(err.node_errors[node].dependent_outputs, ["9"]);
    }
}

#[test]
fn klein_templates_read_into_the_real_nodes() {
    let Some(dir) = std::env::var_os("VEETANCE_COMFY_TEMPLATES").map(PathBuf::from) else {
        eprintln!("skipped: set VEETANCE_COMFY_TEMPLATES to run the templates against the nodes");
        return;
    };
    let registry = veetance_nodes::registry();
    let models = tempfile::tempdir().unwrap();
    template_models(models.path());
    let path = dir.join("image_flux2_klein_text_to_image.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "VEETANCE_COMFY_TEMPLATES is set but {}: {e}",
            path.display()
        )
    });
    let ui: Json = serde_json::from_str(&text).unwrap();
    let prompt = ui_to_prompt(&ui, &registry).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids.len(), 16, "{ids:?}");
    assert_eq!(prompt["75:74"]["inputs"]["text"], json!(["76", 0]));
    assert_eq!(prompt["9"]["inputs"]["images"], json!(["75:65", 0]));
    let read = read_json(&ui, &registry).unwrap();
    assert!(read.notices.is_empty(), "{:?}", read.notices);
    let checked = check_prompt(&read.graph, &registry, &env(models.path())).unwrap();
    assert_eq!(checked.outputs, ["9"]);
    assert!(checked.node_errors.is_empty(), "{:?}", checked.node_errors);
}
