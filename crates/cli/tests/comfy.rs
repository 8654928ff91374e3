//! ComfyUI's JSON wherever a workflow goes: `veetance --headless file.json` and
//! `veetance validate file.json`, with ComfyUI's rules and its terms in errors. These graphs use
//! Veetance's own image nodes under their type names (valid class types in an API prompt), so
//! that they run in milliseconds without models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value as Json};

fn veetance() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veetance"));
    cmd.env_remove("VEETANCE_CONFIG").env_remove("VEETANCE_LOG");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("veetance runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write_json(dir: &Path, name: &str, doc: &Json) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    path
}

/// Width and height from a PNG's IHDR.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn api_prompt() -> Json {
    json!({
        "1": {"class_type": "GradientImage", "inputs": {"width": 64, "height": 32, "direction": "vertical"}, "_meta": {"title": "Gradient"}},
        "2": {"class_type": "ImageResize", "inputs": {"image": ["1", 0], "width": 16, "height": 16, "method": "nearest"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "comfy"}},
    })
}

#[test]
fn comfyui_api_prompt_runs_headless_with_overrides_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "prompt.json", &api_prompt());
    let out = dir.path().join("out");
    let (code, stdout, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(["--set", "2.width=24", "--events", "-"]));
    assert_eq!(code, 0, "{stderr}");
    let written = out.join("comfy_00001.png");
    assert_eq!(png_size(&written), (24, 16));
    let events: Vec<Json> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let finished: Vec<&Json> = events
        .iter()
        .filter(|e| e["event"] == "node_finished")
        .collect();
    assert_eq!(finished.len(), 3);
    assert!(finished.iter().any(|e| e["node"] == "3"));
}

#[test]
fn comfyui_ui_workflow_runs_without_its_notes_bypassed_and_muted_nodes() {
    let ui = json!({
        "version": 0.4,
        "nodes": [
            {"id": 1, "type": "GradientImage", "mode": 0, "pos": [0, 0],
             "inputs": [{"name": "height", "type": "INT", "widget": {"name": "height"}, "link": 4}],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [1]}],
             "widgets_values": [64, 32, "#000000", "#ffffff", "horizontal"]},
            {"id": 2, "type": "ImageResize", "mode": 4,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [2]}],
             "widgets_values": [16, 16, "nearest"]},
            {"id": 3, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
             "widgets_values": ["from-ui"]},
            {"id": 4, "type": "PrimitiveNode", "mode": 0,
             "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "height"}, "links": [4]}],
             "widgets_values": [40, "fixed"]},
            {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
            {"id": 6, "type": "NoSuchNode", "mode": 2}
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [4, 4, 0, 1, 0, "INT"]]
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "workflow.json", &ui);
    let out = dir.path().join("out");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    // The bypassed resize is bridged; the primitive node set the height.
    assert_eq!(png_size(&out.join("from-ui_00001.png")), (64, 40));
}

#[test]
fn comfyui_problems_name_node_class_and_input_and_exit_2() {
    let mut prompt = api_prompt();
    prompt["3"]["inputs"]["images"] = json!(["1", 5]);
    prompt["2"]["inputs"]["width"] = json!(0);
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "bad.json", &prompt);
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("out")));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("node '3' (SaveImage) input 'images': Bad linked input"),
        "{stderr}"
    );
    assert!(
        stderr.contains("node '1' (GradientImage) has no output 5; its outputs: 0 image (IMAGE)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: ") && stderr.contains("nothing was run"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists());

    // Validation problems, in ComfyUI's terms.
    let mut prompt = api_prompt();
    prompt["2"]["inputs"]["width"] = json!(0);
    let file = write_json(dir.path(), "range.json", &prompt);
    let (code, _, stderr) = run(veetance().arg("validate").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "node '2' (ImageResize) input 'width': Value 0 smaller than min of 1: width: the \
             smallest value allowed is 1"
        ),
        "{stderr}"
    );
}

#[test]
fn unknown_comfyui_class_is_invalid_listing_the_node_types_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(
        dir.path(),
        "sd15.json",
        &json!({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "_meta": {"title": "Load Checkpoint"}}}),
    );
    let (code, _, stderr) = run(veetance().arg("validate").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "Node 'Load Checkpoint' not found. Veetance has no node type 'CheckpointLoaderSimple'"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("GradientImage"), "{stderr}");
    assert!(stderr.contains("Node ID '#4'"), "{stderr}");
}

#[test]
fn outputs_with_problems_are_skipped_as_comfyui_skips_them() {
    let mut prompt = api_prompt();
    // A second output with nothing linked into it, and a node no output needs.
    prompt["4"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "broken"}});
    prompt["5"] = json!({"class_type": "ImageResize", "inputs": {"width": 8, "height": 8}});
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), "partly.json", &prompt);
    let (code, _, stderr) = run(veetance().arg("validate").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("node '4' (SaveImage) input 'images': Required input is missing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ComfyUI would run only output(s) 3"),
        "{stderr}"
    );
    assert!(!stderr.contains("node '5'"), "{stderr}");

    let out = dir.path().join("out");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warning: "), "{stderr}");
    assert!(out.join("comfy_00001.png").is_file());
    assert!(!out.join("broken_00001.png").exists());
}

#[test]
fn malformed_comfyui_json_is_invalid_naming_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, "{\n  \"1\": {\"class_type\": }\n}").unwrap();
    let (code, _, stderr) = run(veetance().arg("validate").arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("line 2 column"), "{stderr}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A models folder with the tiny random-weight models under the klein templates' file names.
#[cfg(unix)]
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

/// The klein 4B text-to-image graph as ComfyUI's frontend queues it, at 64×64.
fn klein_prompt() -> Json {
    json!({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Flux2-Klein", "images": ["75:65", 0]}, "_meta": {"title": "Save Image"}},
        "76": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a hedgehog in a party hat"}},
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

/// The PNGs under `dir`.
fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn chunk(png: &Path, key: &str) -> Option<String> {
    veetance_nodes_basic::read_png_text(&std::fs::read(png).unwrap(), key).unwrap()
}

#[cfg(unix)]
#[test]
fn comfyui_klein_prompt_runs_on_the_tiny_models_and_its_images_carry_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    template_models(&models);
    let file = write_json(dir.path(), "klein.json", &klein_prompt());
    let out = dir.path().join("out");
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&file)
        .arg("--models-dir")
        .arg(&models)
        .arg("--out")
        .arg(&out)
        .args(["--set", "75:62.steps=2"]));
    assert_eq!(code, 0, "{stderr}");
    let written = pngs(&out);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(png_size(&written[0]), (64, 64));
    // ComfyUI's prompt chunk: the prompt as it ran, the override included.
    let prompt: Json = serde_json::from_str(&chunk(&written[0], "prompt").unwrap()).unwrap();
    let mut want = klein_prompt();
    want["75:62"]["inputs"]["steps"] = json!(2);
    assert_eq!(prompt, want);
    assert_eq!(
        chunk(&written[0], "workflow"),
        None,
        "an API prompt has no UI workflow"
    );
    // Veetance's own chunk too, so that the image reopens in Veetance.
    assert!(chunk(&written[0], "veetance-workflow").is_some());
}

#[cfg(unix)]
#[test]
fn klein_template_runs_headless_and_its_images_carry_prompt_and_workflow() {
    let Some(templates) = std::env::var_os("VEETANCE_COMFY_TEMPLATES").map(PathBuf::from) else {
        eprintln!(
            "skipped: set VEETANCE_COMFY_TEMPLATES to the templates folder of \
             comfyui-workflow-templates-json 0.1.123 to run the klein template"
        );
        return;
    };
    let template = templates.join("image_flux2_klein_text_to_image.json");
    assert!(
        template.is_file(),
        "VEETANCE_COMFY_TEMPLATES is set but {} is not there",
        template.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    template_models(&models);
    let out = dir.path().join("out");
    // The template at 64×64 and 2 steps: its inner nodes are set by their flattened ids.
    let (code, _, stderr) = run(veetance()
        .args(["--headless", "-q"])
        .arg(&template)
        .arg("--models-dir")
        .arg(&models)
        .arg("--out")
        .arg(&out)
        .args([
            "--set",
            "75:62.steps=2",
            "--set",
            "75:68.value=64",
            "--set",
            "75:69.value=64",
        ]));
    assert_eq!(code, 0, "{stderr}");
    let written = pngs(&out);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(png_size(&written[0]), (64, 64));
    let workflow: Json = serde_json::from_str(&chunk(&written[0], "workflow").unwrap()).unwrap();
    let original: Json =
        serde_json::from_str(&std::fs::read_to_string(&template).unwrap()).unwrap();
    assert_eq!(workflow, original);
    let prompt: Json = serde_json::from_str(&chunk(&written[0], "prompt").unwrap()).unwrap();
    assert_eq!(prompt["75:62"]["inputs"]["steps"], 2);
    assert_eq!(prompt["75:68"]["inputs"]["value"], 64);
    assert!(
        prompt.get("77:64").is_none(),
        "the bypassed subgraph is not in the prompt"
    );

    // The image opens again, through its ComfyUI chunks... and Veetance's own, which wins.
    let (code, stdout, stderr) = run(veetance()
        .arg("validate")
        .arg(&written[0])
        .arg("--models-dir")
        .arg(&models));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (16 nodes"), "{stdout}");
}
