//! UI workflows (as ComfyUI saves them) to the API prompts ComfyUI's frontend queues.

mod common;

use std::path::PathBuf;

use common::{assert_same_prompt, examples_dir, read_json, registry, registry_with_dev_example};
use serde_json::{json, Value as Json};
use veetance_comfy::{json_to_graph, ui_positions, ui_to_prompt};

#[test]
fn comfyui_example_workflow_converts_to_the_prompt_comfyui_wrote() {
    let Some(dir) = examples_dir() else { return };
    let ui = read_json(&dir, "ComfyUI_examples-flux2_example.workflow-ui.json");
    let api = read_json(&dir, "ComfyUI_examples-flux2_example.prompt-api.json");
    let reg = registry_with_dev_example();
    let prompt = ui_to_prompt(&ui, &reg).unwrap();
    assert_same_prompt(&prompt, &api);
    // Titles: the node's own, else the class's display name.
    assert_eq!(
        prompt["6"]["_meta"]["title"],
        "CLIP Text Encode (Positive Prompt)"
    );
    assert_eq!(prompt["8"]["_meta"]["title"], "VAE Decode");
    // Both forms read into the same graph.
    let from_ui = json_to_graph(&ui, &reg).unwrap();
    let from_api = json_to_graph(&api, &reg).unwrap();
    assert_eq!(from_ui.node_count(), from_api.node_count());
    let mut a = from_ui.links();
    let mut b = from_api.links();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// The folder of ComfyUI's workflow templates (`comfyui-workflow-templates-json`), from
/// `$VEETANCE_COMFY_TEMPLATES`: third-party files, never committed. Unset: the test is skipped.
fn templates_dir() -> Option<PathBuf> {
    match std::env::var_os("VEETANCE_COMFY_TEMPLATES") {
        Some(dir) => Some(dir.into()),
        None => {
            eprintln!(
                "skipped: set VEETANCE_COMFY_TEMPLATES to the templates folder of \
                 comfyui-workflow-templates-json 0.1.123 (pip download --no-deps \
                 comfyui-workflow-templates-json==0.1.123, unzip, \
                 comfyui_workflow_templates_json/templates)"
            );
            None
        }
    }
}

fn template(dir: &std::path::Path, name: &str) -> Json {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "VEETANCE_COMFY_TEMPLATES is set to {} but {name} is not there",
        dir.display()
    );
    read_json(dir, name)
}

#[test]
fn klein_4b_template_flattens_its_active_subgraph_and_drops_the_bypassed_one() {
    let Some(dir) = templates_dir() else { return };
    let ui = template(&dir, "image_flux2_klein_text_to_image.json");
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    let text = ui["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 76)
        .unwrap()["widgets_values"][0]
        .clone();
    let want = json!({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["75:65", 0]}},
        "76": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": text}},
        "75:61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "75:62": {"class_type": "Flux2Scheduler", "inputs": {"steps": 20, "width": ["75:68", 0], "height": ["75:69", 0]}},
        "75:63": {"class_type": "CFGGuider", "inputs": {"cfg": 5, "model": ["75:70", 0], "positive": ["75:74", 0], "negative": ["75:67", 0]}},
        "75:64": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["75:73", 0], "guider": ["75:63", 0], "sampler": ["75:61", 0], "sigmas": ["75:62", 0], "latent_image": ["75:66", 0]}},
        "75:65": {"class_type": "VAEDecode", "inputs": {"samples": ["75:64", 0], "vae": ["75:72", 0]}},
        "75:66": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": ["75:68", 0], "height": ["75:69", 0], "batch_size": 1}},
        "75:67": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["75:71", 0]}},
        "75:68": {"class_type": "PrimitiveInt", "inputs": {"value": 1024}},
        "75:69": {"class_type": "PrimitiveInt", "inputs": {"value": 1024}},
        "75:70": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-2-klein-base-4b.safetensors", "weight_dtype": "default"}},
        "75:71": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "flux2", "device": "default"}},
        "75:72": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae.safetensors"}},
        "75:73": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "75:74": {"class_type": "CLIPTextEncode", "inputs": {"text": ["76", 0], "clip": ["75:71", 0]}},
    });
    assert_same_prompt(&prompt, &want);
    let graph = json_to_graph(&ui, &registry()).unwrap();
    assert_eq!(graph.node_count(), 16);
}

#[test]
fn klein_9b_template_takes_the_instance_widget_values() {
    let Some(dir) = templates_dir() else { return };
    let ui = template(&dir, "image_flux2_text_to_image_9b.json");
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids.len(), 15, "{ids:?}");
    assert!(prompt.get("79").is_none(), "the MarkdownNote is dropped");
    assert_eq!(prompt["9"]["inputs"]["images"], json!(["75:65", 0]));
    assert_eq!(prompt["75:73"]["inputs"]["noise_seed"], 145965955694731_i64);
    assert_eq!(
        prompt["75:70"]["inputs"]["unet_name"],
        "flux-2-klein-base-9b-fp8.safetensors"
    );
    assert_eq!(
        prompt["75:72"]["inputs"]["vae_name"],
        "full_encoder_small_decoder.safetensors"
    );
    assert!(prompt["75:74"]["inputs"]["text"]
        .as_str()
        .unwrap()
        .starts_with("A vintage motorcycle"));
    assert_eq!(prompt["75:68"]["inputs"]["value"], 1024);
    json_to_graph(&ui, &registry()).unwrap();
}

/// A workflow of top-level nodes and links `[id, from, from_slot, to, to_slot, type]`.
fn workflow(nodes: Json, links: Json) -> Json {
    json!({"version": 0.4, "nodes": nodes, "links": links})
}

#[test]
fn bypassed_node_passes_its_input_of_the_consumers_type() {
    let ui = workflow(
        json!([
            {"id": 1, "type": "CLIPLoader", "mode": 0, "outputs": [{"name": "CLIP", "type": "CLIP", "links": [1]}], "widgets_values": ["te.safetensors", "flux2", "default"]},
            {"id": 2, "type": "CLIPTextEncode", "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 1}], "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2]}], "widgets_values": ["a fox"]},
            // Bypassed: its CONDITIONING output is fed from its CONDITIONING input.
            {"id": 3, "type": "ConditioningZeroOut", "mode": 4, "inputs": [{"name": "conditioning", "type": "CONDITIONING", "link": 2}], "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [3]}]},
            {"id": 4, "type": "CFGGuider", "mode": 0, "inputs": [
                {"name": "model", "type": "MODEL", "link": null},
                {"name": "positive", "type": "CONDITIONING", "link": 3},
                {"name": "negative", "type": "CONDITIONING", "link": null}
            ], "widgets_values": [4.5]},
        ]),
        json!([
            [1, 1, 0, 2, 0, "CLIP"],
            [2, 2, 0, 3, 0, "CONDITIONING"],
            [3, 3, 0, 4, 1, "CONDITIONING"]
        ]),
    );
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    assert!(prompt.get("3").is_none());
    assert_eq!(
        prompt["4"]["inputs"],
        json!({"cfg": 4.5, "positive": ["2", 0]})
    );
}

#[test]
fn bypassed_node_without_a_matching_input_leaves_the_consumer_unlinked() {
    let ui = workflow(
        json!([
            {"id": 1, "type": "CLIPLoader", "mode": 4, "outputs": [{"name": "CLIP", "type": "CLIP", "links": [1]}], "widgets_values": ["te.safetensors", "flux2", "default"]},
            {"id": 2, "type": "CLIPTextEncode", "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 1}], "widgets_values": ["a fox"]},
        ]),
        json!([[1, 1, 0, 2, 0, "CLIP"]]),
    );
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    assert_eq!(prompt["2"]["inputs"], json!({"text": "a fox"}));
}

#[test]
fn muted_node_is_removed_with_the_inputs_linked_to_it() {
    let ui = workflow(
        json!([
            {"id": 1, "type": "PrimitiveInt", "mode": 2, "outputs": [{"name": "INT", "type": "INT", "links": [1]}], "widgets_values": [640, "fixed"]},
            {"id": 2, "type": "Flux2Scheduler", "mode": 0, "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1}], "widgets_values": [8, 512, 768]},
        ]),
        json!([[1, 1, 0, 2, 0, "INT"]]),
    );
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    assert!(prompt.get("1").is_none());
    // As the frontend does: the linked widget goes too, value and all.
    assert_eq!(prompt["2"]["inputs"], json!({"steps": 8, "height": 768}));
}

#[test]
fn reroutes_pass_through_and_primitive_nodes_push_their_value() {
    let ui = workflow(
        json!([
            {"id": 1, "type": "UNETLoader", "mode": 0, "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}], "widgets_values": ["m.safetensors", "default"]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}], "outputs": [{"name": "", "type": "MODEL", "links": [2]}]},
            {"id": 3, "type": "BasicGuider", "mode": 0, "inputs": [{"name": "model", "type": "MODEL", "link": 2}, {"name": "conditioning", "type": "CONDITIONING", "link": null}]},
            {"id": 4, "type": "PrimitiveNode", "mode": 0, "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "noise_seed"}, "links": [3]}], "widgets_values": [777, "increment"]},
            {"id": 5, "type": "RandomNoise", "mode": 0, "inputs": [{"name": "noise_seed", "type": "INT", "widget": {"name": "noise_seed"}, "link": 3}], "widgets_values": [1, "randomize"]},
            {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
            {"id": 7, "type": "MarkdownNote", "mode": 0, "widgets_values": ["# hello"]},
        ]),
        json!([
            [1, 1, 0, 2, 0, "*"],
            [2, 2, 0, 3, 0, "MODEL"],
            [3, 4, 0, 5, 0, "INT"]
        ]),
    );
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["1", "3", "5"]);
    assert_eq!(prompt["3"]["inputs"], json!({"model": ["1", 0]}));
    assert_eq!(prompt["5"]["inputs"], json!({"noise_seed": 777}));
}

#[test]
fn widgets_values_by_name_and_list_values_are_wrapped() {
    let ui = workflow(
        json!([
            {"id": 1, "type": "EmptyFlux2LatentImage", "mode": 0, "widgets_values": {"height": 512, "width": 256, "batch_size": 2}},
            {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": null}], "widgets_values": [["a", "b"]]},
        ]),
        json!([]),
    );
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    assert_eq!(
        prompt["1"]["inputs"],
        json!({"width": 256, "height": 512, "batch_size": 2})
    );
    assert_eq!(
        prompt["2"]["inputs"],
        json!({"filename_prefix": {"__value__": ["a", "b"]}})
    );
}

#[test]
fn unknown_class_is_missing_node_type_with_its_execution_id() {
    let ui = json!({
        "version": 0.4,
        "nodes": [{"id": 5, "type": "sg-1", "mode": 0}],
        "links": [],
        "definitions": {"subgraphs": [{
            "id": "sg-1", "name": "Inner", "inputs": [], "outputs": [],
            "nodes": [
                {"id": 9, "type": "KSampler", "mode": 0, "title": "My Sampler"},
                {"id": 10, "type": "LoraLoader", "mode": 0},
                {"id": 11, "type": "LoraLoader", "mode": 4}
            ],
            "links": []
        }]}
    });
    let err = ui_to_prompt(&ui, &registry()).unwrap_err();
    assert_eq!(err.error.kind, "missing_node_type");
    assert_eq!(
        err.error.extra_info,
        json!({"node_id": "5:9", "class_type": "KSampler", "node_title": "My Sampler"})
    );
    assert!(
        err.error.message.contains("UNETLoader"),
        "{}",
        err.error.message
    );
}

/// A subgraph with inputs `seed` (promoted from RandomNoise's seed) and `model` (a link), and
/// output IMAGE... here a NOISE, passed out of the subgraph.
fn seed_subgraph(id: &str) -> Json {
    json!({
        "id": id, "name": "Seeded",
        "inputs": [
            {"id": "a", "name": "seed", "type": "INT", "linkIds": [10]},
            {"id": "b", "name": "model", "type": "MODEL", "linkIds": [11]}
        ],
        "outputs": [{"id": "c", "name": "NOISE", "type": "NOISE", "linkIds": [12]}],
        "nodes": [
            {"id": 1, "type": "RandomNoise", "mode": 0,
             "inputs": [{"name": "noise_seed", "type": "INT", "widget": {"name": "noise_seed"}, "link": 10}],
             "outputs": [{"name": "NOISE", "type": "NOISE", "links": [12]}],
             "widgets_values": [5, "randomize"]},
            {"id": 2, "type": "BasicGuider", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 11}, {"name": "conditioning", "type": "CONDITIONING", "link": null}]}
        ],
        "links": [
            {"id": 10, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
            {"id": 11, "origin_id": -10, "origin_slot": 1, "target_id": 2, "target_slot": 0, "type": "MODEL"},
            {"id": 12, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "NOISE"}
        ]
    })
}

fn instance_workflow(instance_values: Json, instance_mode: i64) -> Json {
    json!({
        "version": 0.4,
        "nodes": [
            {"id": 1, "type": "UNETLoader", "mode": 0, "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}], "widgets_values": ["m.safetensors", "default"]},
            {"id": 7, "type": "sg-seed", "mode": instance_mode,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "NOISE", "type": "NOISE", "links": [2]}],
             "widgets_values": instance_values},
            {"id": 8, "type": "SamplerCustomAdvanced", "mode": 0,
             "inputs": [{"name": "noise", "type": "NOISE", "link": 2}]}
        ],
        "links": [[1, 1, 0, 7, 0, "MODEL"], [2, 7, 0, 8, 0, "NOISE"]],
        "definitions": {"subgraphs": [seed_subgraph("sg-seed")]}
    })
}

#[test]
fn subgraph_instances_flatten_with_their_links_across_the_boundary() {
    let prompt = ui_to_prompt(&instance_workflow(json!([]), 0), &registry()).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["1", "7:1", "7:2", "8"]);
    assert_eq!(prompt["7:2"]["inputs"], json!({"model": ["1", 0]}));
    assert_eq!(prompt["8"]["inputs"], json!({"noise": ["7:1", 0]}));
    // No value on the instance: the inner widget's value.
    assert_eq!(prompt["7:1"]["inputs"], json!({"noise_seed": 5}));
}

#[test]
fn instance_widget_values_override_the_inner_ones() {
    // One value per promoted input (current frontends).
    let prompt = ui_to_prompt(&instance_workflow(json!([99]), 0), &registry()).unwrap();
    assert_eq!(prompt["7:1"]["inputs"], json!({"noise_seed": 99}));
    // Older instances hold the control value after the seed as well.
    let prompt = ui_to_prompt(&instance_workflow(json!([42, "fixed"]), 0), &registry()).unwrap();
    assert_eq!(prompt["7:1"]["inputs"], json!({"noise_seed": 42}));
    // By name.
    let prompt = ui_to_prompt(&instance_workflow(json!({"seed": 7}), 0), &registry()).unwrap();
    assert_eq!(prompt["7:1"]["inputs"], json!({"noise_seed": 7}));
}

#[test]
fn bypassed_instance_is_not_expanded() {
    let prompt = ui_to_prompt(&instance_workflow(json!([]), 4), &registry()).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["1", "8"]);
    // Its NOISE output has no NOISE input to pass on.
    assert_eq!(prompt["8"]["inputs"], json!({}));
}

#[test]
fn nested_subgraphs_get_paths_of_instance_ids() {
    let mut inner = seed_subgraph("sg-inner");
    inner["outputs"] = json!([{"id": "c", "name": "NOISE", "type": "NOISE", "linkIds": [12]}]);
    let outer = json!({
        "id": "sg-outer", "name": "Outer",
        "inputs": [{"id": "x", "name": "model", "type": "MODEL", "linkIds": [20]}],
        "outputs": [{"id": "y", "name": "NOISE", "type": "NOISE", "linkIds": [21]}],
        "nodes": [{"id": 3, "type": "sg-inner", "mode": 0,
                   "inputs": [{"name": "model", "type": "MODEL", "link": 20}],
                   "outputs": [{"name": "NOISE", "type": "NOISE", "links": [21]}]}],
        "links": [
            {"id": 20, "origin_id": -10, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "MODEL"},
            {"id": 21, "origin_id": 3, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "NOISE"}
        ]
    });
    let ui = json!({
        "version": 0.4,
        "nodes": [
            {"id": 1, "type": "UNETLoader", "mode": 0, "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}], "widgets_values": ["m.safetensors", "default"]},
            {"id": 7, "type": "sg-outer", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "NOISE", "type": "NOISE", "links": [2]}]},
            {"id": 8, "type": "SamplerCustomAdvanced", "mode": 0, "inputs": [{"name": "noise", "type": "NOISE", "link": 2}]}
        ],
        "links": [[1, 1, 0, 7, 0, "MODEL"], [2, 7, 0, 8, 0, "NOISE"]],
        "definitions": {"subgraphs": [outer, inner]}
    });
    let prompt = ui_to_prompt(&ui, &registry()).unwrap();
    let ids: Vec<&String> = prompt.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["1", "7:3:1", "7:3:2", "8"]);
    assert_eq!(prompt["7:3:2"]["inputs"], json!({"model": ["1", 0]}));
    assert_eq!(prompt["8"]["inputs"], json!({"noise": ["7:3:1", 0]}));
    // Read into a graph, the ids are usable as they are.
    json_to_graph(&ui, &registry()).unwrap();
    let positions = ui_positions(&ui);
    assert!(positions.is_empty(), "no node had a position");
}

#[test]
fn positions_follow_the_saved_layout() {
    let mut ui = instance_workflow(json!([]), 0);
    ui["nodes"][0]["pos"] = json!([10, 20]);
    ui["nodes"][1]["pos"] = json!([300, 400]);
    ui["definitions"]["subgraphs"][0]["nodes"][0]["pos"] = json!([-100, 50]);
    ui["definitions"]["subgraphs"][0]["nodes"][1]["pos"] = json!([0, 150]);
    let positions = ui_positions(&ui);
    assert_eq!(positions["1"], (10.0, 20.0));
    assert_eq!(positions["7:1"], (300.0, 400.0));
    assert_eq!(positions["7:2"], (400.0, 500.0));
    assert!(!positions.contains_key("7"));
}

/// Subgraphs that each hold several instances of the next expand exponentially: 8 instances
/// over 15 levels would be 8^15 nodes from 6 KB of JSON. Refused by count, quickly.
#[test]
fn nested_instances_that_multiply_are_refused() {
    let levels = 15;
    let subgraphs: Vec<Json> = (0..levels)
        .map(|l| {
            let inner = if l + 1 < levels {
                format!("sg{}", l + 1)
            } else {
                "UNETLoader".to_string()
            };
            let nodes: Vec<Json> = (1..=8)
                .map(|i| json!({"id": i, "type": inner, "mode": 0, "pos": [i, i]}))
                .collect();
            json!({"id": format!("sg{l}"), "name": "L", "inputs": [], "outputs": [],
                   "nodes": nodes, "links": []})
        })
        .collect();
    let ui = json!({
        "version": 0.4,
        "nodes": [{"id": 1, "type": "sg0", "mode": 0, "pos": [0, 0]}],
        "links": [],
        "definitions": {"subgraphs": subgraphs}
    });
    let start = std::time::Instant::now();
    let err = ui_to_prompt(&ui, &registry()).unwrap_err();
    assert!(
        err.error.details.contains("more than 10000 nodes"),
        "{err:?}"
    );
    assert!(ui_positions(&ui).len() <= veetance_comfy::MAX_FLAT_NODES);
    assert!(start.elapsed().as_secs() < 10);
}
