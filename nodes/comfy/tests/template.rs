//! ComfyUI's FLUX.2 [klein] text-to-image templates, built from ComfyUI's classes on the tiny
//! random-weight models (under the templates' file names), against the native graph that does
//! the same: the same pixels, bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    validate, Budgets, CollectSink, Engine, Event, Graph, Image, Link, NodeRegistry, Payload,
    Place, PortRef, RunEnv, RunOptions, RunReport, Value,
};
use veetance_nodes_flux2::values::{Conditioning, Guider, Latent, ModelHandle};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn registry() -> Arc<NodeRegistry> {
    let mut reg = NodeRegistry::new();
    veetance_nodes_basic::register(&mut reg);
    veetance_nodes_flux2::register(&mut reg);
    veetance_nodes_comfy::register(&mut reg);
    Arc::new(reg)
}

#[cfg(unix)]
fn link_file(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// A models folder holding the tiny models under the names ComfyUI's klein templates use:
/// `diffusion_models/flux-2-klein-base-4b.safetensors` and `flux-2-klein-4b.safetensors`,
/// `text_encoders/qwen_3_4b.safetensors` (with `qwen_3_4b.tokenizer.json` and
/// `qwen_3_4b.config.json` beside it), and `vae/flux2-vae.safetensors` (the tiny diffusers VAE
/// folder under that name).
fn template_models(dir: &Path) {
    let tiny = repo().join("assets/tiny-models");
    for sub in ["diffusion_models", "text_encoders", "vae"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let transformer = tiny.join("diffusion_models/flux2-klein-tiny.safetensors");
    for name in [
        "flux-2-klein-base-4b.safetensors",
        "flux-2-klein-4b.safetensors",
    ] {
        link_file(&transformer, &dir.join("diffusion_models").join(name));
    }
    for (from, to) in [
        ("qwen3-tiny.safetensors", "qwen_3_4b.safetensors"),
        ("qwen3-tiny.tokenizer.json", "qwen_3_4b.tokenizer.json"),
        ("qwen3-tiny.config.json", "qwen_3_4b.config.json"),
    ] {
        link_file(
            &tiny.join("text_encoders").join(from),
            &dir.join("text_encoders").join(to),
        );
    }
    link_file(
        &tiny.join("vae/flux2-vae-tiny"),
        &dir.join("vae/flux2-vae.safetensors"),
    );
}

struct Setup {
    _models: tempfile::TempDir,
    out: tempfile::TempDir,
    env: RunEnv,
}

fn setup() -> Setup {
    let models = tempfile::tempdir().unwrap();
    template_models(models.path());
    let out = tempfile::tempdir().unwrap();
    let env = RunEnv {
        out_dir: out.path().to_path_buf(),
        models_dir: models.path().to_path_buf(),
        temp_dir: Some(out.path().join("temp")),
        ..RunEnv::default()
    };
    Setup {
        _models: models,
        out,
        env,
    }
}

fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn link(graph: &mut Graph, from: (&str, &str), to: (&str, &str)) {
    graph.add_link(Link {
        from: PortRef::new(from.0, from.1),
        to: PortRef::new(to.0, to.1),
    });
}

fn s(text: &str) -> Value {
    Value::string(text)
}

const PROMPT: &str = "a red fox sitting in the snow at dawn";

/// Which of the two 4B templates.
#[derive(Clone, Copy)]
struct Template {
    unet: &'static str,
    steps: i64,
    cfg: f64,
    /// Base: a second CLIPTextEncode with an empty prompt; distilled: ConditioningZeroOut.
    zero_out_negative: bool,
}

const BASE: Template = Template {
    unet: "flux-2-klein-base-4b.safetensors",
    steps: 20,
    cfg: 5.0,
    zero_out_negative: false,
};

const DISTILLED: Template = Template {
    unet: "flux-2-klein-4b.safetensors",
    steps: 4,
    cfg: 1.0,
    zero_out_negative: true,
};

/// The klein template's graph (subgraph ids as ComfyUI flattens them), at 64×64.
fn comfy_graph(t: Template, seed: i64) -> Graph {
    let mut g = Graph::new();
    let mut node = |id: &str, ty: &str, p: &[(&str, Value)]| {
        g.add_node(id, ty, params(p)).unwrap();
    };
    node("76", "PrimitiveStringMultiline", &[("value", s(PROMPT))]);
    node(
        "75:66",
        "UNETLoader",
        &[("unet_name", s(t.unet)), ("weight_dtype", s("default"))],
    );
    node(
        "75:62",
        "CLIPLoader",
        &[
            ("clip_name", s("qwen_3_4b.safetensors")),
            ("type", s("flux2")),
            ("device", s("default")),
        ],
    );
    node(
        "75:72",
        "VAELoader",
        &[("vae_name", s("flux2-vae.safetensors"))],
    );
    node("75:74", "CLIPTextEncode", &[]);
    if t.zero_out_negative {
        node("75:67", "ConditioningZeroOut", &[]);
    } else {
        node("75:67", "CLIPTextEncode", &[("text", s(""))]);
    }
    node("75:63", "CFGGuider", &[("cfg", Value::Float(t.cfg))]);
    node("75:73", "RandomNoise", &[("noise_seed", Value::Int(seed))]);
    node("75:61", "KSamplerSelect", &[("sampler_name", s("euler"))]);
    node("75:68", "PrimitiveInt", &[("value", Value::Int(64))]);
    node("75:69", "PrimitiveInt", &[("value", Value::Int(64))]);
    node(
        "75:71",
        "Flux2Scheduler",
        &[
            ("steps", Value::Int(t.steps)),
            ("width", Value::Int(1024)),
            ("height", Value::Int(1024)),
        ],
    );
    node(
        "75:70",
        "EmptyFlux2LatentImage",
        &[("batch_size", Value::Int(1))],
    );
    node("75:64", "SamplerCustomAdvanced", &[]);
    node("75:65", "VAEDecode", &[]);
    node("9", "SaveImage", &[("filename_prefix", s("Flux2-Klein"))]);
    link(&mut g, ("76", "STRING"), ("75:74", "text"));
    link(&mut g, ("75:62", "CLIP"), ("75:74", "clip"));
    if t.zero_out_negative {
        link(&mut g, ("75:74", "CONDITIONING"), ("75:67", "conditioning"));
    } else {
        link(&mut g, ("75:62", "CLIP"), ("75:67", "clip"));
    }
    link(&mut g, ("75:66", "MODEL"), ("75:63", "model"));
    link(&mut g, ("75:74", "CONDITIONING"), ("75:63", "positive"));
    link(&mut g, ("75:67", "CONDITIONING"), ("75:63", "negative"));
    for (primitive, side) in [("75:68", "width"), ("75:69", "height")] {
        link(&mut g, (primitive, "INT"), ("75:71", side));
        link(&mut g, (primitive, "INT"), ("75:70", side));
    }
    link(&mut g, ("75:73", "NOISE"), ("75:64", "noise"));
    link(&mut g, ("75:63", "GUIDER"), ("75:64", "guider"));
    link(&mut g, ("75:61", "SAMPLER"), ("75:64", "sampler"));
    link(&mut g, ("75:71", "SIGMAS"), ("75:64", "sigmas"));
    link(&mut g, ("75:70", "LATENT"), ("75:64", "latent_image"));
    link(&mut g, ("75:64", "output"), ("75:65", "samples"));
    link(&mut g, ("75:72", "VAE"), ("75:65", "vae"));
    link(&mut g, ("75:65", "IMAGE"), ("9", "images"));
    g
}

/// The native graph that does what the template does: the same files, ComfyUI's noise.
fn native_graph(t: Template, seed: i64) -> Graph {
    let mut g = Graph::new();
    let mut node = |id: &str, ty: &str, p: &[(&str, Value)]| {
        g.add_node(id, ty, params(p)).unwrap();
    };
    node("model", "LoadDiffusionModel", &[("file", s(t.unet))]);
    node(
        "text_encoder",
        "LoadTextEncoder",
        &[("file", s("qwen_3_4b.safetensors"))],
    );
    node("vae", "LoadVae", &[("file", s("flux2-vae.safetensors"))]);
    node("prompt", "TextEncode", &[("text", s(PROMPT))]);
    node(
        "latent",
        "EmptyLatent",
        &[("width", Value::Int(64)), ("height", Value::Int(64))],
    );
    node(
        "sampler",
        "Sampler",
        &[
            ("seed", Value::Int(seed)),
            ("noise", s("comfyui")),
            ("steps", Value::Int(t.steps)),
            ("guidance", Value::Float(t.cfg)),
        ],
    );
    node("decode", "VaeDecode", &[]);
    node("save", "SaveImage", &[("filename_prefix", s("native"))]);
    if !t.zero_out_negative {
        node("negative", "TextEncode", &[("text", s(""))]);
    }
    link(
        &mut g,
        ("text_encoder", "text_encoder"),
        ("prompt", "text_encoder"),
    );
    link(&mut g, ("model", "model"), ("sampler", "model"));
    link(&mut g, ("prompt", "conditioning"), ("sampler", "positive"));
    if !t.zero_out_negative {
        link(
            &mut g,
            ("text_encoder", "text_encoder"),
            ("negative", "text_encoder"),
        );
        link(
            &mut g,
            ("negative", "conditioning"),
            ("sampler", "negative"),
        );
    }
    link(&mut g, ("latent", "latent"), ("sampler", "latent"));
    link(&mut g, ("sampler", "latent"), ("decode", "latent"));
    link(&mut g, ("vae", "vae"), ("decode", "vae"));
    link(&mut g, ("decode", "image"), ("save", "images"));
    g
}

fn run(
    engine: &mut Engine,
    graph: &Graph,
    targets: &[&str],
    env: &RunEnv,
) -> (RunReport, Vec<Event>) {
    if let Err(errors) = validate(graph, engine.registry(), env) {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        panic!("validation failed: {text:#?}");
    }
    let sink = CollectSink::default();
    let options = RunOptions {
        targets: Some(targets.iter().map(|t| t.to_string()).collect()),
        env: env.clone(),
        cancel: Default::default(),
    };
    let report = engine
        .run(graph, &options, &sink)
        .unwrap_or_else(|e| panic!("{e}"));
    (report, sink.take())
}

fn image(report: &RunReport, node: &str) -> Image {
    match &report.outputs[node][0] {
        Value::Image(i) => i.clone(),
        other => panic!("{node}: not an image: {other:?}"),
    }
}

fn latent_bits(report: &RunReport, node: &str, output: usize) -> Vec<u32> {
    let Value::Object(o) = &report.outputs[node][output] else {
        panic!("{node}: not an object")
    };
    bits(&o.downcast::<Latent>().expect("a latent").samples)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn saved(report: &RunReport, node: &str) -> Image {
    let path = report.outputs[node][0]
        .as_str()
        .expect("a path")
        .to_string();
    veetance_nodes_basic::read_png_image(Path::new(&path)).unwrap()
}

/// Runs both graphs of `t` and checks that their pixels are the same, bit for bit; returns the
/// ComfyUI graph's decoded image.
fn same_pixels_as_native(t: Template, seed: i64) -> Image {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let (comfy, events) = run(
        &mut engine,
        &comfy_graph(t, seed),
        &["9", "75:65", "75:64"],
        &setup.env,
    );
    let (native, _) = run(
        &mut engine,
        &native_graph(t, seed),
        &["save", "decode", "sampler"],
        &setup.env,
    );
    assert_eq!(
        latent_bits(&comfy, "75:64", 0),
        latent_bits(&native, "sampler", 0),
        "the sampled latents differ"
    );
    // On the CPU in f32 the last step lands exactly on the last estimate of the clean latent.
    assert_eq!(
        latent_bits(&comfy, "75:64", 1),
        latent_bits(&comfy, "75:64", 0)
    );
    let (a, b) = (image(&comfy, "75:65"), image(&native, "decode"));
    assert_eq!((a.width, a.height, a.channels), (64, 64, 3));
    assert!(
        a.data
            .iter()
            .zip(b.data.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "the decoded images differ"
    );
    assert_eq!(saved(&comfy, "9").data, saved(&native, "save").data);
    // The image is a picture, not a constant: a test that could not fail would prove nothing.
    let mean = a.data.iter().sum::<f32>() / a.data.len() as f32;
    let spread = a.data.iter().map(|v| (v - mean).abs()).sum::<f32>() / a.data.len() as f32;
    assert!(spread > 1e-3, "a flat image (spread {spread})");
    // SamplerCustomAdvanced reports its steps and previews like the Sampler.
    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::Progress { node, .. } if node == "75:64"))
        .count();
    assert_eq!(steps as i64, t.steps + 1);
    let file = comfy.outputs["9"][0].as_str().unwrap().to_string();
    assert!(
        Path::new(&file).starts_with(setup.out.path()) && file.contains("Flux2-Klein_00001"),
        "{file}"
    );
    a
}

#[test]
fn base_template_paints_the_native_graphs_pixels() {
    let a = same_pixels_as_native(BASE, 0);
    // Another seed paints another picture.
    let b = same_pixels_as_native(BASE, 1);
    assert_ne!(a.data, b.data);
}

#[test]
fn distilled_template_paints_the_native_graphs_pixels() {
    same_pixels_as_native(DISTILLED, 0);
}

/// `workflows/flux2-klein-tiny-comfy-equivalent.ron` is the base template's native equivalent:
/// at 64×64 (its only change here; it is 1024×1024 as the template) it paints the template's
/// pixels.
#[test]
fn the_native_workflow_file_paints_the_base_templates_pixels() {
    let setup = setup();
    let path = repo().join("workflows/flux2-klein-tiny-comfy-equivalent.ron");
    let mut wf = veetance_workflow::WorkflowFile::load(&path).unwrap();
    for node in &mut wf.nodes {
        if let Some(veetance_workflow::ParamValue::String(file)) = node.params.get_mut("file") {
            *file = repo().join(&*file).display().to_string();
        }
    }
    let mut native = wf
        .to_graph("flux2-klein-tiny-comfy-equivalent.ron")
        .unwrap();
    native.set_param("latent", "width", Value::Int(64)).unwrap();
    native
        .set_param("latent", "height", Value::Int(64))
        .unwrap();
    let mut engine = Engine::new(registry(), Budgets::default());
    let (native, _) = run(&mut engine, &native, &["decode"], &setup.env);
    let (comfy, _) = run(&mut engine, &comfy_graph(BASE, 0), &["75:65"], &setup.env);
    assert_eq!(image(&native, "decode").data, image(&comfy, "75:65").data);
}

/// The folder of ComfyUI's workflow templates (`comfyui-workflow-templates-json`'s
/// `templates/`), from `$VEETANCE_COMFY_TEMPLATES`: third-party files, never committed. Unset:
/// the test says so and passes.
fn templates_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VEETANCE_COMFY_TEMPLATES").map(PathBuf::from);
    if dir.is_none() {
        eprintln!(
            "skipped: set VEETANCE_COMFY_TEMPLATES to the templates folder of \
             comfyui-workflow-templates-json (comfyui_workflow_templates_json/templates)"
        );
    }
    dir
}

/// ComfyUI's own klein 4B text-to-image template, read by the importer as ComfyUI's frontend
/// would queue it (base subgraph active, distilled bypassed), runs on the tiny models under the
/// template's file names and paints the native graph's pixels. Only the size is changed, from
/// 1024 to 64, to keep the test fast.
#[test]
fn comfyuis_own_klein_template_runs_and_paints_the_native_graphs_pixels() {
    let Some(dir) = templates_dir() else { return };
    let path = dir.join("image_flux2_klein_text_to_image.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ui: serde_json::Value = serde_json::from_str(&text).unwrap();
    let registry = registry();
    let prompt = veetance_comfy::ui_to_prompt(&ui, &registry).unwrap_or_else(|e| panic!("{e}"));
    let mut graph = veetance_comfy::prompt_to_graph(&prompt, &registry).unwrap();
    let nodes = prompt.as_object().unwrap();
    let of_class = |class: &str| -> Vec<String> {
        let mut ids: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| n["class_type"] == class)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    for id in of_class("PrimitiveInt") {
        graph.set_param(&id, "value", Value::Int(64)).unwrap();
    }
    let noise = &of_class("RandomNoise")[0];
    let seed = nodes[noise]["inputs"]["noise_seed"].as_i64().unwrap();
    let save = &of_class("SaveImage")[0];
    let decode = &of_class("VAEDecode")[0];
    let text = nodes["76"]["inputs"]["value"].as_str().unwrap().to_string();

    let setup = setup();
    let mut engine = Engine::new(registry.clone(), Budgets::default());
    let (comfy, _) = run(&mut engine, &graph, &[save, decode], &setup.env);
    let mut native = native_graph(BASE, seed);
    native.set_param("prompt", "text", s(&text)).unwrap();
    let (native, _) = run(&mut engine, &native, &["decode"], &setup.env);
    assert_eq!(image(&comfy, decode).data, image(&native, "decode").data);
    assert!(saved(&comfy, save).width == 64);
}

#[test]
fn cfg_of_one_runs_no_negative_and_other_cfgs_do() {
    // At cfg 1 the negative (here a real prompt) changes nothing; at cfg 5 it does.
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let mut with = |cfg: f64, negative: &str| {
        let mut g = comfy_graph(
            Template {
                cfg,
                steps: 2,
                ..BASE
            },
            3,
        );
        g.set_param("75:67", "text", s(negative)).unwrap();
        latent_bits(&run(&mut engine, &g, &["75:64"], &setup.env).0, "75:64", 0)
    };
    assert_eq!(with(1.0, ""), with(1.0, "blurry, dark"));
    assert_ne!(with(5.0, ""), with(5.0, "blurry, dark"));
}

#[test]
fn a_new_noise_seed_reruns_only_the_noise_and_what_follows() {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let mut g = comfy_graph(DISTILLED, 0);
    run(&mut engine, &g, &["9"], &setup.env);
    g.set_param("75:73", "noise_seed", Value::Int(5)).unwrap();
    let (report, _) = run(&mut engine, &g, &["9"], &setup.env);
    assert_eq!(report.executed, vec!["75:73", "75:64", "75:65", "9"]);
}

#[test]
fn disable_noise_starts_from_the_latent_scaled_as_comfyui_does() {
    // From an empty latent, (1 − σ₀)·0 is the native Sampler's zero start without noise.
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let mut comfy = comfy_graph(DISTILLED, 0);
    comfy.remove_node("75:73").unwrap();
    comfy
        .add_node("75:73", "DisableNoise", BTreeMap::new())
        .unwrap();
    link(&mut comfy, ("75:73", "NOISE"), ("75:64", "noise"));
    let mut native = native_graph(DISTILLED, 0);
    native
        .set_param("sampler", "add_noise", Value::Bool(false))
        .unwrap();
    let (a, _) = run(&mut engine, &comfy, &["75:64"], &setup.env);
    let (b, _) = run(&mut engine, &native, &["sampler"], &setup.env);
    assert_eq!(latent_bits(&a, "75:64", 0), latent_bits(&b, "sampler", 0));
    let (c, _) = run(
        &mut engine,
        &comfy_graph(DISTILLED, 0),
        &["75:64"],
        &setup.env,
    );
    assert_ne!(latent_bits(&a, "75:64", 0), latent_bits(&c, "75:64", 0));
}

#[test]
fn preview_image_writes_into_the_temp_folder() {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let mut g = comfy_graph(DISTILLED, 0);
    g.add_node("80", "PreviewImage", BTreeMap::new()).unwrap();
    link(&mut g, ("75:65", "IMAGE"), ("80", "images"));
    let (report, events) = run(&mut engine, &g, &["80"], &setup.env);
    let path = PathBuf::from(report.outputs["80"][0].as_str().unwrap());
    assert_eq!(path.parent(), Some(setup.out.path().join("temp").as_path()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("ComfyUI_temp_") && name.ends_with("_00001.png"),
        "{name}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::OutputWritten { node, path: p } if node == "80" && Path::new(p) == path)
    ));
    assert_eq!(
        veetance_nodes_basic::read_png_image(&path).unwrap().width,
        64
    );
}

fn problems(graph: &Graph, env: &RunEnv) -> Vec<(String, Place, String)> {
    validate(graph, &registry(), env)
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.node.clone(), e.place.clone(), e.to_string()))
        .collect()
}

#[test]
fn unsupported_clip_types_and_dtypes_are_validation_errors_saying_what_runs() {
    let setup = setup();
    let mut g = comfy_graph(BASE, 0);
    assert!(problems(&g, &setup.env).is_empty());
    g.set_param("75:62", "type", s("sd3")).unwrap();
    g.set_param("75:66", "weight_dtype", s("fp8_e5m2")).unwrap();
    let found = problems(&g, &setup.env);
    let clip = found
        .iter()
        .find(|(n, p, _)| n == "75:62" && *p == Place::Param("type".into()))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert!(
        clip.2.contains("sd3") && clip.2.contains("flux2"),
        "{}",
        clip.2
    );
    let dtype = found
        .iter()
        .find(|(n, p, _)| n == "75:66" && *p == Place::Param("weight_dtype".into()))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert!(dtype.2.contains("fp8_e4m3fn"), "{}", dtype.2);
}

#[test]
fn a_missing_template_file_names_the_file_and_the_folder() {
    let setup = setup();
    let mut g = comfy_graph(BASE, 0);
    g.set_param(
        "75:72",
        "vae_name",
        s("full_encoder_small_decoder.safetensors"),
    )
    .unwrap();
    let found = problems(&g, &setup.env);
    let (_, _, message) = found
        .iter()
        .find(|(n, p, _)| n == "75:72" && *p == Place::Param("vae_name".into()))
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert!(
        message.contains("full_encoder_small_decoder.safetensors") && message.contains("vae"),
        "{message}"
    );
}

#[test]
fn clip_loader_finds_a_folder_level_tokenizer_and_config() {
    let models = tempfile::tempdir().unwrap();
    let tiny = repo().join("assets/tiny-models/text_encoders");
    let encoders = models.path().join("text_encoders");
    std::fs::create_dir_all(&encoders).unwrap();
    link_file(
        &tiny.join("qwen3-tiny.safetensors"),
        &encoders.join("qwen_3_4b.safetensors"),
    );
    let env = RunEnv {
        models_dir: models.path().to_path_buf(),
        ..RunEnv::default()
    };
    let mut g = Graph::new();
    g.add_node(
        "clip",
        "CLIPLoader",
        params(&[("clip_name", s("qwen_3_4b.safetensors"))]),
    )
    .unwrap();
    let found = problems(&g, &env);
    assert!(
        found.iter().any(|(_, _, m)| m.contains("tokenizer")),
        "no tokenizer yet: {found:#?}"
    );
    link_file(
        &tiny.join("qwen3-tiny.tokenizer.json"),
        &encoders.join("tokenizer.json"),
    );
    link_file(
        &tiny.join("qwen3-tiny.config.json"),
        &encoders.join("config.json"),
    );
    assert!(problems(&g, &env).is_empty());
    let mut engine = Engine::new(registry(), Budgets::default());
    let (report, _) = run(&mut engine, &g, &["clip"], &env);
    assert_eq!(report.executed, vec!["clip"]);
}

// ---------------------------------------------------------------- the guider in the cache

fn handle() -> ModelHandle {
    let model = veetance_models::flux2::load_transformer(
        &repo().join("assets/tiny-models/diffusion_models/flux2-klein-tiny.safetensors"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    ModelHandle {
        weight_bytes: veetance_nodes_flux2::values::mem_of(model.weight_bytes()),
        model: Arc::new(model),
        device: Device::Cpu,
        file: "flux2-klein-tiny.safetensors".into(),
        patches: Default::default(),
        offloaded: false,
    }
}

fn conditioning(value: f32) -> Conditioning {
    Conditioning {
        hidden: Tensor::full(value, (1, 3, 4), &Device::Cpu).unwrap(),
        prompt: "p".into(),
        references: Vec::new(),
        home: None,
    }
}

fn model_ptr(h: &ModelHandle) -> usize {
    Arc::as_ptr(&h.model) as usize
}

#[test]
fn a_guider_is_a_member_of_its_models_storage_group() {
    let model = handle();
    let guider = Guider {
        model: model.clone(),
        positive: conditioning(1.0),
        negative: Some(conditioning(2.0)),
        cfg: 5.0,
    };
    // Same storage, the model's bytes and its conditionings'.
    assert_eq!(guider.storage_id(), model.storage_id());
    let conds = conditioning(1.0).mem_bytes().host * 2;
    assert_eq!(guider.mem_bytes().host, model.mem_bytes().host + conds);
    assert!(guider.streams_from_host());
    // On the host nothing moves.
    assert!(guider.to_host().is_none() && guider.to_device().is_none());

    // The model comes back from the cache's host tier: a new copy of the weights. The guider
    // rebases onto it, and the loader's handle rebases onto the guider just the same, whichever
    // of the group the cache moved.
    let offloaded = ModelHandle {
        offloaded: true,
        ..model.clone()
    };
    let moved = offloaded.to_device().unwrap().unwrap();
    let moved = moved.as_any().downcast_ref::<ModelHandle>().unwrap();
    assert_ne!(model_ptr(moved), model_ptr(&model));
    let rebased = guider.rebase(moved).unwrap();
    let rebased = rebased.as_any().downcast_ref::<Guider>().unwrap();
    assert_eq!(model_ptr(&rebased.model), model_ptr(moved));
    assert_eq!(rebased.storage_id(), moved.storage_id());
    assert_eq!(rebased.cfg, 5.0);
    assert_eq!(
        bits(&rebased.negative.as_ref().unwrap().hidden),
        bits(&conditioning(2.0).hidden)
    );
    let loader = model.rebase(rebased).unwrap();
    let loader = loader.as_any().downcast_ref::<ModelHandle>().unwrap();
    assert_eq!(model_ptr(loader), model_ptr(moved));
    // An unrelated payload is no member.
    assert!(model.rebase(&conditioning(0.0)).is_none());
}

#[test]
fn a_guider_brought_back_from_the_host_tier_samples_the_same_bits() {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let g = comfy_graph(Template { steps: 2, ..BASE }, 9);
    let (report, _) = run(&mut engine, &g, &["75:63", "75:64"], &setup.env);
    let Value::Object(guider) = &report.outputs["75:63"][0] else {
        panic!()
    };
    let guider = guider.downcast::<Guider>().unwrap();
    // As the cache's host tier holds it: model offloaded, conditionings away from home.
    let away = |c: &Conditioning| Conditioning {
        home: Some(Device::Cpu),
        ..c.clone()
    };
    let offloaded = Guider {
        model: ModelHandle {
            offloaded: true,
            ..guider.model.clone()
        },
        positive: away(&guider.positive),
        negative: guider.negative.as_ref().map(away),
        cfg: guider.cfg,
    };
    let back = offloaded.to_device().unwrap().unwrap();
    let back = back.as_any().downcast_ref::<Guider>().unwrap();
    assert!(!back.model.offloaded && back.positive.home.is_none());
    assert_ne!(model_ptr(&back.model), model_ptr(&guider.model));

    let node = veetance_nodes_comfy::sampling::SamplerCustomAdvanced::new();
    let inputs: Vec<(&str, Value)> = ["noise", "sampler", "sigmas", "latent_image"]
        .into_iter()
        .map(|port| {
            let from = g
                .incoming("75:64")
                .into_iter()
                .find(|(_, _, to)| *to == port)
                .map(|(from, _, _)| from.to_string())
                .unwrap();
            let (report, _) = run(&mut engine, &g, &[&from], &setup.env);
            (port, report.outputs[&from][0].clone())
        })
        .chain([(
            "guider",
            Value::Object(veetance_core::Object::new(
                veetance_core::PortType::Guider,
                back.clone(),
            )),
        )])
        .collect();
    let env = setup.env.clone();
    let cancel = veetance_core::CancelToken::default();
    let sink = CollectSink::default();
    let mut ctx =
        veetance_core::ExecContext::new("75:64", Default::default(), inputs, &env, &cancel, &sink);
    let out = veetance_core::NodeDef::execute(&node, &mut ctx).unwrap();
    let Value::Object(o) = &out[0] else { panic!() };
    assert_eq!(
        bits(&o.downcast::<Latent>().unwrap().samples),
        latent_bits(&report, "75:64", 0)
    );
}
