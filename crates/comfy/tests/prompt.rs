//! API prompts read into graphs.

mod common;

use common::registry;
use serde_json::{json, Value as Json};
use veetance_comfy::{prompt_to_graph, prompt_to_graph_with_notices, PromptError};
use veetance_core::{Link, PortRef, Value};

/// The FLUX.2 [klein] text-to-image graph as ComfyUI's frontend queues it (ids from the
/// template's subgraph).
fn klein_prompt() -> Json {
    json!({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["75:65", 0]}, "_meta": {"title": "Save Image"}},
        "76": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a hedgehog"}},
        "75:61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "75:62": {"class_type": "Flux2Scheduler", "inputs": {"steps": 4, "width": ["75:68", 0], "height": ["75:69", 0]}},
        "75:63": {"class_type": "CFGGuider", "inputs": {"cfg": 1, "model": ["75:70", 0], "positive": ["75:74", 0], "negative": ["75:67", 0]}},
        "75:64": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["75:73", 0], "guider": ["75:63", 0], "sampler": ["75:61", 0], "sigmas": ["75:62", 0], "latent_image": ["75:66", 0]}},
        "75:65": {"class_type": "VAEDecode", "inputs": {"samples": ["75:64", 0], "vae": ["75:72", 0]}},
        "75:66": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": ["75:68", 0], "height": ["75:69", 0], "batch_size": 1}},
        "75:67": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["75:74", 0]}},
        "75:68": {"class_type": "PrimitiveInt", "inputs": {"value": 1024}},
        "75:69": {"class_type": "PrimitiveInt", "inputs": {"value": 1024}},
        "75:70": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"}},
        "75:71": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}},
        "75:72": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "75:73": {"class_type": "RandomNoise", "inputs": {"noise_seed": 432262096973490_i64}},
        "75:74": {"class_type": "CLIPTextEncode", "inputs": {"text": ["76", 0], "clip": ["75:71", 0]}},
    })
}

fn link(from: (&str, &str), to: (&str, &str)) -> Link {
    Link {
        from: PortRef::new(from.0, from.1),
        to: PortRef::new(to.0, to.1),
    }
}

#[test]
fn prompt_reads_into_a_graph_with_the_prompts_ids_links_and_params() {
    let graph = prompt_to_graph(&klein_prompt(), &registry()).unwrap();
    assert_eq!(graph.node_count(), 16);
    let sampler = graph.node("75:64").unwrap();
    assert_eq!(sampler.type_name, "SamplerCustomAdvanced");
    let links = graph.links();
    // Links by output index, into inputs and into params alike.
    assert!(links.contains(&link(("75:65", "IMAGE"), ("9", "images"))));
    assert!(links.contains(&link(("75:68", "INT"), ("75:62", "width"))));
    assert!(links.contains(&link(("76", "STRING"), ("75:74", "text"))));
    assert_eq!(links.len(), 18);
    let seed = &graph.node("75:73").unwrap().params["noise_seed"];
    assert_eq!(seed.as_int(), Some(432262096973490));
    // ComfyUI's int widgets given to a float param become floats.
    assert!(matches!(graph.node("75:63").unwrap().params["cfg"], Value::Float(f) if f == 1.0));
    assert_eq!(
        graph.node("9").unwrap().params["filename_prefix"].as_str(),
        Some("Flux2-Klein")
    );
}

#[test]
fn links_take_the_source_output_of_their_index() {
    let mut prompt = klein_prompt();
    prompt["75:65"]["inputs"]["samples"] = json!(["75:64", 1]);
    let graph = prompt_to_graph(&prompt, &registry()).unwrap();
    assert!(graph
        .links()
        .contains(&link(("75:64", "denoised_output"), ("75:65", "samples"))));
}

#[test]
fn values_convert_as_comfyui_converts_them() {
    let prompt = json!({
        "1": {"class_type": "Flux2Scheduler", "inputs": {"steps": "8", "width": 512.0, "height": 640}},
        "2": {"class_type": "CFGGuider", "inputs": {"cfg": "3.5"}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": 12}},
        "4": {"class_type": "PrimitiveBoolean", "inputs": {"value": 1}},
        "5": {"class_type": "PrimitiveInt", "inputs": {"value": 2.5}},
    });
    let graph = prompt_to_graph(&prompt, &registry()).unwrap();
    let params = &graph.node("1").unwrap().params;
    assert_eq!(params["steps"].as_int(), Some(8));
    assert_eq!(params["width"].as_int(), Some(512));
    assert_eq!(params["height"].as_int(), Some(640));
    assert_eq!(graph.node("2").unwrap().params["cfg"].as_float(), Some(3.5));
    assert_eq!(
        graph.node("3").unwrap().params["filename_prefix"].as_str(),
        Some("12")
    );
    assert_eq!(
        graph.node("4").unwrap().params["value"].as_bool(),
        Some(true)
    );
    // ComfyUI would truncate 2.5 to 2; it is kept, for validation to refuse.
    assert!(matches!(graph.node("5").unwrap().params["value"], Value::Float(f) if f == 2.5));
}

#[test]
fn inputs_the_class_does_not_have_are_ignored_and_reported() {
    let mut prompt = klein_prompt();
    prompt["75:61"]["inputs"]["sampler"] = json!("heun");
    let (graph, notices) = prompt_to_graph_with_notices(&prompt, &registry()).unwrap();
    assert!(!graph.node("75:61").unwrap().params.contains_key("sampler"));
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].node, "75:61");
    assert_eq!(notices[0].input, "sampler");
    let text = notices[0].to_string();
    assert!(
        text.contains("KSamplerSelect has no input of this name"),
        "{text}"
    );
    assert!(text.contains("sampler_name"), "{text}");
}

#[test]
fn unknown_class_is_missing_node_type_naming_node_title_and_the_known_types() {
    let mut prompt = klein_prompt();
    prompt["3"] = json!({"class_type": "KSampler", "inputs": {}, "_meta": {"title": "My Sampler"}});
    prompt["4"] = json!({"class_type": "CheckpointLoaderSimple", "inputs": {}});
    let err = prompt_to_graph(&prompt, &registry()).unwrap_err();
    assert_eq!(err.error.kind, "missing_node_type");
    assert_eq!(
        err.error.extra_info,
        json!({"node_id": "3", "class_type": "KSampler", "node_title": "My Sampler"})
    );
    assert_eq!(err.error.details, "Node ID '#3'");
    assert!(err
        .error
        .message
        .starts_with("Node 'My Sampler' not found."));
    assert!(err.error.message.contains("SamplerCustomAdvanced"));
    assert!(
        err.error
            .message
            .contains("Also unknown: CheckpointLoaderSimple (node '4')"),
        "{}",
        err.error.message
    );
    assert!(err.node_errors.is_empty());
    let body = serde_json::to_value(&err).unwrap();
    assert_eq!(body["error"]["type"], "missing_node_type");
    assert_eq!(body["node_errors"], json!({}));
}

#[test]
fn node_without_class_type_is_missing_node_type() {
    let err = prompt_to_graph(&json!({"4": {"inputs": {}}}), &registry()).unwrap_err();
    assert_eq!(err.error.kind, "missing_node_type");
    assert!(err.error.message.contains("has no class_type"));
    assert_eq!(err.error.extra_info["class_type"], Json::Null);
}

fn node_error(err: &PromptError, node: &str) -> (String, String, Json) {
    let e = &err.node_errors[node].errors[0];
    (e.kind.clone(), e.details.clone(), e.extra_info.clone())
}

#[test]
fn malformed_links_are_bad_linked_input_on_the_consumer() {
    let mut prompt = klein_prompt();
    prompt["75:65"]["inputs"]["samples"] = json!(["75:64"]);
    prompt["75:62"]["inputs"]["width"] = json!(["99", 0]);
    prompt["75:63"]["inputs"]["model"] = json!(["75:70", 3]);
    let err = prompt_to_graph(&prompt, &registry()).unwrap_err();
    assert_eq!(err.error.kind, "prompt_outputs_failed_validation");

    let (kind, details, extra) = node_error(&err, "75:65");
    assert_eq!(kind, "bad_linked_input");
    assert!(details.starts_with("samples: "), "{details}");
    assert_eq!(extra["input_name"], "samples");
    assert_eq!(extra["received_value"], json!(["75:64"]));

    let (kind, details, _) = node_error(&err, "75:62");
    assert_eq!(kind, "bad_linked_input");
    assert!(
        details.contains("node '99', which is not in the prompt"),
        "{details}"
    );

    let (_, details, _) = node_error(&err, "75:63");
    assert!(
        details.contains("node '75:70' (UNETLoader) has no output 3; its outputs: 0 MODEL (MODEL)"),
        "{details}"
    );
    assert_eq!(err.node_errors["75:63"].class_type, "CFGGuider");
    // The consumer of the broken link still reaches the output.
    assert_eq!(err.node_errors["75:65"].dependent_outputs, ["9"]);
    let lines = err.lines();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("node '75:62' (Flux2Scheduler) input 'width': ")));
}

#[test]
fn list_values_and_values_for_link_inputs_are_invalid_input_type() {
    let mut prompt = klein_prompt();
    prompt["75:61"]["inputs"]["sampler_name"] = json!({"__value__": ["euler", "heun"]});
    prompt["75:65"]["inputs"]["vae"] = json!("flux2-vae.safetensors");
    let err = prompt_to_graph(&prompt, &registry()).unwrap_err();
    let (kind, details, _) = node_error(&err, "75:61");
    assert_eq!(kind, "invalid_input_type");
    assert!(details.contains("list value"), "{details}");
    let (kind, details, _) = node_error(&err, "75:65");
    assert_eq!(kind, "invalid_input_type");
    assert!(
        details.contains("takes a link from a VAE output"),
        "{details}"
    );
}

#[test]
fn a_prompt_that_is_not_an_object_is_invalid() {
    let err = prompt_to_graph(&json!([1, 2]), &registry()).unwrap_err();
    assert_eq!(err.error.kind, "invalid_prompt");
    let err =
        prompt_to_graph(&json!({"a b": {"class_type": "PrimitiveInt"}}), &registry()).unwrap_err();
    assert!(
        err.error.details.contains("not usable"),
        "{}",
        err.error.details
    );
}
