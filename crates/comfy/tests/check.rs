//! Validation answered in ComfyUI's terms.

mod common;

use std::path::Path;

use common::registry;
use serde_json::{json, Value as Json};
use veetance_comfy::{check_prompt, prompt_to_graph, prune, Checked, PromptError};
use veetance_core::RunEnv;

/// A models folder holding the files the klein prompt names.
fn models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (folder, file) in [
        ("diffusion_models", "flux-2-klein-4b.safetensors"),
        ("text_encoders", "qwen_3_4b.safetensors"),
        ("vae", "flux2-vae.safetensors"),
    ] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        std::fs::write(dir.path().join(folder).join(file), b"").unwrap();
    }
    dir
}

fn env(models: &Path) -> RunEnv {
    RunEnv {
        models_dir: models.to_path_buf(),
        ..RunEnv::default()
    }
}

fn klein() -> Json {
    json!({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["65", 0]}},
        "61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "62": {"class_type": "Flux2Scheduler", "inputs": {"steps": 4, "width": 1024, "height": 1024}},
        "63": {"class_type": "CFGGuider", "inputs": {"cfg": 1, "model": ["70", 0], "positive": ["74", 0], "negative": ["67", 0]}},
        "64": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["73", 0], "guider": ["63", 0], "sampler": ["61", 0], "sigmas": ["62", 0], "latent_image": ["66", 0]}},
        "65": {"class_type": "VAEDecode", "inputs": {"samples": ["64", 0], "vae": ["72", 0]}},
        "66": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "67": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["74", 0]}},
        "70": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"}},
        "71": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}},
        "72": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "73": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
        "74": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["71", 0]}},
    })
}

#[expect(
    clippy::result_large_err,
    reason = "check_prompt's own result, passed on"
)]
fn check(prompt: &Json) -> Result<Checked, PromptError> {
    let dir = models();
    let graph = prompt_to_graph(prompt, &registry()).unwrap();
    check_prompt(&graph, &registry(), &env(dir.path()))
}

/// The single error of `node`, checking that it is the only one there.
fn only_error(err: &PromptError, node: &str) -> veetance_comfy::ErrorBody {
    let errors = &err.node_errors[node].errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].clone()
}

#[test]
fn a_valid_prompt_runs_every_output() {
    let checked = check(&klein()).unwrap();
    assert_eq!(checked.outputs, ["9"]);
    assert!(checked.node_errors.is_empty());
}

#[test]
fn missing_required_input_is_required_input_missing() {
    let mut prompt = klein();
    prompt["65"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("vae");
    let err = check(&prompt).unwrap_err();
    assert_eq!(err.error.kind, "prompt_outputs_failed_validation");
    assert_eq!(err.error.message, "Prompt outputs failed validation");
    let e = only_error(&err, "65");
    assert_eq!(e.kind, "required_input_missing");
    assert_eq!(e.message, "Required input is missing");
    assert!(
        e.details.starts_with("vae: link a VAE output to it"),
        "{}",
        e.details
    );
    assert_eq!(e.extra_info, json!({"input_name": "vae"}));
    assert_eq!(err.node_errors["65"].class_type, "VAEDecode");
    assert_eq!(err.node_errors["65"].dependent_outputs, ["9"]);
    assert!(err
        .error
        .details
        .contains("node '65' (VAEDecode) input 'vae'"));
}

#[test]
fn link_of_the_wrong_type_is_return_type_mismatch() {
    let mut prompt = klein();
    prompt["65"]["inputs"]["vae"] = json!(["70", 0]);
    let e = only_error(&check(&prompt).unwrap_err(), "65");
    assert_eq!(e.kind, "return_type_mismatch");
    assert_eq!(e.message, "Return type mismatch between linked nodes");
    assert!(
        e.details
            .starts_with("vae, received_type(MODEL) mismatch input_type(VAE)"),
        "{}",
        e.details
    );
    assert_eq!(e.extra_info["received_type"], "MODEL");
    assert_eq!(e.extra_info["linked_node"], json!(["70", 0]));
    assert_eq!(e.extra_info["input_config"][0], "VAE");
}

#[test]
fn numbers_out_of_range_are_smaller_or_bigger_than_their_limits() {
    let mut prompt = klein();
    prompt["62"]["inputs"]["steps"] = json!(0);
    prompt["63"]["inputs"]["cfg"] = json!(250);
    let err = check(&prompt).unwrap_err();
    let e = only_error(&err, "62");
    assert_eq!(e.kind, "value_smaller_than_min");
    assert_eq!(e.message, "Value 0 smaller than min of 1");
    assert!(e.details.starts_with("steps"));
    assert_eq!(e.extra_info["received_value"], 0);
    assert_eq!(e.extra_info["input_config"][1]["min"], 1);
    let e = only_error(&err, "63");
    assert_eq!(e.kind, "value_bigger_than_max");
    assert_eq!(e.message, "Value 250.0 bigger than max of 100.0");
}

#[test]
fn choice_not_offered_is_value_not_in_list() {
    let mut prompt = klein();
    prompt["61"]["inputs"]["sampler_name"] = json!("dpmpp_2m");
    let e = only_error(&check(&prompt).unwrap_err(), "61");
    assert_eq!(e.kind, "value_not_in_list");
    assert_eq!(e.message, "Value not in list");
    assert_eq!(
        e.details,
        "sampler_name: 'dpmpp_2m' not in ['euler', 'heun']"
    );
    assert_eq!(e.extra_info["received_value"], "dpmpp_2m");
}

#[test]
fn value_of_the_wrong_kind_is_invalid_input_type() {
    let mut prompt = klein();
    prompt["62"]["inputs"]["steps"] = json!("many");
    let e = only_error(&check(&prompt).unwrap_err(), "62");
    assert_eq!(e.kind, "invalid_input_type");
    assert_eq!(e.message, "Failed to convert an input value to a INT value");
    assert!(
        e.details.starts_with("steps, many, expected"),
        "{}",
        e.details
    );
}

#[test]
fn missing_model_file_is_custom_validation_failed() {
    let mut prompt = klein();
    prompt["70"]["inputs"]["unet_name"] = json!("flux-2-klein-9b.safetensors");
    let e = only_error(&check(&prompt).unwrap_err(), "70");
    assert_eq!(e.kind, "custom_validation_failed");
    assert_eq!(e.message, "Custom validation failed for node");
    assert!(
        e.details
            .starts_with("unet_name - 'flux-2-klein-9b.safetensors' not found"),
        "{}",
        e.details
    );
    assert_eq!(e.extra_info, json!({"input_name": "unet_name"}));
}

#[test]
fn cycle_is_dependency_cycle_on_each_of_its_nodes() {
    let mut prompt = klein();
    prompt["67"]["inputs"]["conditioning"] = json!(["68", 0]);
    prompt["68"] =
        json!({"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["67", 0]}});
    let err = check(&prompt).unwrap_err();
    for node in ["67", "68"] {
        let e = only_error(&err, node);
        assert_eq!(e.kind, "dependency_cycle");
        assert_eq!(e.message, "Dependency cycle detected");
        assert!(e.details.contains("ConditioningZeroOut"), "{}", e.details);
        assert_eq!(e.extra_info["node_id"], node);
        assert_eq!(err.node_errors[node].dependent_outputs, ["9"]);
    }
}

#[test]
fn a_prompt_without_output_nodes_is_prompt_no_outputs() {
    let mut prompt = klein();
    prompt.as_object_mut().unwrap().remove("9");
    let err = check(&prompt).unwrap_err();
    assert_eq!(err.error.kind, "prompt_no_outputs");
    assert_eq!(err.error.message, "Prompt has no outputs");
    assert!(err.error.details.contains("SaveImage"));
}

#[test]
fn good_outputs_run_while_broken_ones_are_reported() {
    let mut prompt = klein();
    // A second output whose input is broken, and one that is fine.
    prompt["20"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}});
    prompt["21"] = json!({"class_type": "VAEDecode", "inputs": {"samples": ["64", 0]}});
    prompt["30"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["65", 0]}});
    let checked = check(&prompt).unwrap();
    assert_eq!(checked.outputs, ["30", "9"]);
    assert_eq!(checked.node_errors.len(), 1);
    let broken = &checked.node_errors["21"];
    assert_eq!(broken.dependent_outputs, ["20"]);
    assert_eq!(broken.errors[0].kind, "required_input_missing");
    // An upstream error breaks every output depending on it.
    prompt["72"]["inputs"]["vae_name"] = json!("missing.safetensors");
    let err = check(&prompt).unwrap_err();
    assert_eq!(err.error.kind, "prompt_outputs_failed_validation");
    assert_eq!(err.node_errors["72"].dependent_outputs, ["30", "9"]);
    assert_eq!(err.node_errors["21"].dependent_outputs, ["20"]);
}

#[test]
fn nodes_no_output_needs_are_neither_checked_nor_run() {
    let mut prompt = klein();
    prompt["50"] = json!({"class_type": "VAEDecode", "inputs": {}});
    let dir = models();
    let graph = prompt_to_graph(&prompt, &registry()).unwrap();
    let checked = check_prompt(&graph, &registry(), &env(dir.path())).unwrap();
    assert_eq!(checked.outputs, ["9"]);
    assert!(checked.node_errors.is_empty());
    let runnable = prune(&graph, &checked.outputs);
    assert!(!runnable.contains("50"));
    assert_eq!(runnable.node_count(), 13);
    assert_eq!(runnable.links().len(), graph.links().len());
    veetance_core::validate(&runnable, &registry(), &env(dir.path())).unwrap();
}

#[test]
fn prompt_error_serializes_in_comfyuis_shape() {
    let mut prompt = klein();
    prompt["65"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("vae");
    let err = check(&prompt).unwrap_err();
    let body = serde_json::to_value(&err).unwrap();
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        body["node_errors"]["65"],
        json!({
            "errors": [{
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": body["node_errors"]["65"]["errors"][0]["details"],
                "extra_info": {"input_name": "vae"}
            }],
            "dependent_outputs": ["9"],
            "class_type": "VAEDecode"
        })
    );
}
