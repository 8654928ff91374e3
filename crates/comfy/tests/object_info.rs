//! `/object_info` in ComfyUI's full entry shape.

mod common;

use serde_json::json;
use veetance_comfy::object_info;

/// The keys comfy-catapult's strict pydantic model requires of every entry.
const REQUIRED: &[&str] = &[
    "input",
    "output",
    "output_is_list",
    "output_name",
    "name",
    "display_name",
    "description",
    "category",
    "output_node",
];

#[test]
fn entries_describe_inputs_widgets_and_outputs_as_comfyui_does() {
    let models = tempfile::tempdir().unwrap();
    let unets = models.path().join("diffusion_models");
    std::fs::create_dir_all(unets.join("klein")).unwrap();
    std::fs::write(unets.join("b.safetensors"), b"").unwrap();
    std::fs::write(unets.join("klein/a.gguf"), b"").unwrap();
    std::fs::write(unets.join("readme.txt"), b"").unwrap();
    let info = object_info(&common::registry(), models.path());

    let noise = &info["RandomNoise"];
    assert_eq!(
        noise["input"]["required"]["noise_seed"],
        json!(["INT", {"default": 0, "min": 0, "max": i64::MAX, "step": 1, "control_after_generate": true}])
    );
    assert_eq!(noise["output"], json!(["NOISE"]));
    assert_eq!(noise["output_name"], json!(["NOISE"]));
    assert_eq!(noise["output_is_list"], json!([false]));

    let guider = &info["CFGGuider"];
    assert_eq!(guider["input"]["required"]["model"], json!(["MODEL", {}]));
    assert_eq!(
        guider["input"]["required"]["cfg"],
        json!(["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.1}])
    );
    assert_eq!(
        guider["input_order"],
        json!({"required": ["model", "positive", "negative", "cfg"]})
    );

    let encode = &info["CLIPTextEncode"];
    assert_eq!(encode["input"]["required"]["clip"][0], "CLIP");
    assert_eq!(
        encode["input"]["required"]["text"],
        json!(["STRING", {"default": "", "multiline": true, "tooltip": "The text to encode."}])
    );

    let unet = &info["UNETLoader"];
    assert_eq!(
        unet["input"]["required"]["unet_name"][0],
        json!(["b.safetensors", "klein/a.gguf"])
    );
    assert_eq!(
        unet["input"]["required"]["weight_dtype"],
        json!([["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {"default": "default"}])
    );
    assert_eq!(
        info["VAELoader"]["input"]["required"]["vae_name"][0],
        json!([])
    );

    let reference = &common::registry_with_dev_example();
    let info2 = object_info(reference, models.path());
    assert_eq!(
        info2["ReferenceLatent"]["input"]["optional"]["latent"],
        json!(["LATENT", {}])
    );
    assert_eq!(
        info2["ReferenceLatent"]["input_order"],
        json!({"required": ["conditioning"], "optional": ["latent"]})
    );

    let save = &info["SaveImage"];
    assert_eq!(save["output_node"], true);
    assert_eq!(save["output"], json!([]));
    assert_eq!(save["name"], "SaveImage");
    assert_eq!(save["display_name"], "Save Image");
    assert_eq!(save["category"], "image");
    // ComfyUI's own class: the frontend files it under "Comfy Core".
    assert_eq!(save["python_module"], "nodes");
    assert_eq!(save["deprecated"], false);
    assert_eq!(save["experimental"], false);
    assert_eq!(save["search_aliases"], json!([]));
}

#[test]
fn every_registered_node_has_the_fields_strict_clients_require() {
    let registry = veetance_nodes::registry();
    let info = object_info(&registry, std::path::Path::new("no-such-models-folder"));
    let entries = info.as_object().unwrap();
    assert_eq!(entries.len(), registry.len());
    for (name, entry) in entries {
        for key in REQUIRED {
            assert!(entry.get(key).is_some(), "{name} has no {key}");
        }
        assert!(entry["input"]["required"].is_object(), "{name}");
        for (input, spec) in entry["input"]["required"].as_object().unwrap() {
            let spec = spec.as_array().unwrap();
            assert!(
                (1..=2).contains(&spec.len()),
                "{name}.{input}: a spec is [type] or [type, options]"
            );
            assert!(spec[0].is_string() || spec[0].is_array(), "{name}.{input}");
        }
        let outputs = entry["output"].as_array().unwrap().len();
        assert_eq!(entry["output_is_list"].as_array().unwrap().len(), outputs);
        assert_eq!(entry["output_name"].as_array().unwrap().len(), outputs);
    }
}
