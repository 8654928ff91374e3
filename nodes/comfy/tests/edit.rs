//! Images in through ComfyUI's classes (`VAEEncode`, `ReferenceLatent`) against the native nodes
//! (`VaeEncode`, `AddReference`, the Sampler's references) on the tiny random-weight models: the
//! same pixels, bit for bit. The native side is `workflows/flux2-klein-tiny-edit.ron`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use veetance_core::{
    validate, Budgets, CollectSink, Engine, Graph, Image, Link, NodeRegistry, PortRef, RunEnv,
    RunOptions, RunReport, Value,
};
use veetance_nodes_flux2::values::Latent;

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

/// A models folder with the tiny models under the klein edit templates' file names.
fn template_models(dir: &Path) {
    let tiny = repo().join("assets/tiny-models");
    for sub in ["diffusion_models", "text_encoders", "vae"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let link = |target: PathBuf, at: PathBuf| {
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    link(
        tiny.join("diffusion_models/flux2-klein-tiny.safetensors"),
        dir.join("diffusion_models/flux-2-klein-base-4b-fp8.safetensors"),
    );
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
        dir.join("vae/full_encoder_small_decoder.safetensors"),
    );
}

struct Setup {
    _models: tempfile::TempDir,
    _out: tempfile::TempDir,
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
        _out: out,
        env,
    }
}

fn s(text: &str) -> Value {
    Value::string(text)
}

fn run(engine: &mut Engine, graph: &Graph, targets: &[&str], env: &RunEnv) -> RunReport {
    if let Err(errors) = validate(graph, engine.registry(), env) {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        panic!("validation failed: {text:#?}");
    }
    let options = RunOptions {
        targets: Some(targets.iter().map(|t| t.to_string()).collect()),
        env: env.clone(),
        cancel: Default::default(),
    };
    engine
        .run(graph, &options, &CollectSink::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn image(report: &RunReport, node: &str) -> Image {
    match &report.outputs[node][0] {
        Value::Image(i) => i.clone(),
        other => panic!("{node}: not an image: {other:?}"),
    }
}

fn latent(report: &RunReport, node: &str) -> Latent {
    let Value::Object(o) = &report.outputs[node][0] else {
        panic!("{node}: not an object")
    };
    o.downcast::<Latent>().expect("a latent").clone()
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

fn input_image(name: &str) -> String {
    repo()
        .join("assets/tiny-models/input")
        .join(name)
        .display()
        .to_string()
}

/// `workflows/flux2-klein-tiny-edit.ron` with its repository paths made absolute.
fn native_edit_workflow() -> Graph {
    let path = repo().join("workflows/flux2-klein-tiny-edit.ron");
    let mut wf = veetance_workflow::WorkflowFile::load(&path).unwrap();
    for node in &mut wf.nodes {
        for key in ["file", "path"] {
            if let Some(veetance_workflow::ParamValue::String(file)) = node.params.get_mut(key) {
                *file = repo().join(&*file).display().to_string();
            }
        }
    }
    wf.to_graph("flux2-klein-tiny-edit.ron").unwrap()
}

const PROMPT: &str = "a red fox sitting in the snow at dawn";

/// The klein 4B base image-edit template's graph (subgraph 75 flattened) over ComfyUI's classes,
/// with the image loaded by path and the size given as numbers (LoadImage, ImageScaleToTotalPixels
/// and GetImageSize left out); `references` images, each encoded by its own VAEEncode and chained
/// through ReferenceLatent on both conditionings.
fn comfy_edit_graph(references: &[&str], steps: i64, cfg: f64, seed: i64) -> Graph {
    let mut g = Graph::new();
    let mut node = |id: &str, ty: &str, p: &[(&str, Value)]| {
        let p: BTreeMap<String, Value> =
            p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        g.add_node(id, ty, p).unwrap();
    };
    node(
        "75:70",
        "UNETLoader",
        &[
            ("unet_name", s("flux-2-klein-base-4b-fp8.safetensors")),
            ("weight_dtype", s("default")),
        ],
    );
    node(
        "75:71",
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
        &[("vae_name", s("full_encoder_small_decoder.safetensors"))],
    );
    node("75:74", "CLIPTextEncode", &[("text", s(PROMPT))]);
    node("75:67", "CLIPTextEncode", &[("text", s(""))]);
    for (i, file) in references.iter().enumerate() {
        node(
            &format!("img{i}"),
            "LoadImage",
            &[("path", s(&input_image(file)))],
        );
        node(&format!("75:enc{i}"), "VAEEncode", &[]);
        node(&format!("75:pos{i}"), "ReferenceLatent", &[]);
        node(&format!("75:neg{i}"), "ReferenceLatent", &[]);
    }
    node("75:63", "CFGGuider", &[("cfg", Value::Float(cfg))]);
    node("75:73", "RandomNoise", &[("noise_seed", Value::Int(seed))]);
    node("75:61", "KSamplerSelect", &[("sampler_name", s("euler"))]);
    node(
        "75:62",
        "Flux2Scheduler",
        &[
            ("steps", Value::Int(steps)),
            ("width", Value::Int(64)),
            ("height", Value::Int(64)),
        ],
    );
    node(
        "75:66",
        "EmptyFlux2LatentImage",
        &[
            ("width", Value::Int(64)),
            ("height", Value::Int(64)),
            ("batch_size", Value::Int(1)),
        ],
    );
    node("75:64", "SamplerCustomAdvanced", &[]);
    node("75:65", "VAEDecode", &[]);
    let mut link = |from: (&str, &str), to: (&str, &str)| {
        g.add_link(Link {
            from: PortRef::new(from.0, from.1),
            to: PortRef::new(to.0, to.1),
        });
    };
    link(("75:71", "CLIP"), ("75:74", "clip"));
    link(("75:71", "CLIP"), ("75:67", "clip"));
    let (mut pos, mut neg) = (
        ("75:74".to_string(), "CONDITIONING"),
        ("75:67".to_string(), "CONDITIONING"),
    );
    for i in 0..references.len() {
        let (img, enc) = (format!("img{i}"), format!("75:enc{i}"));
        let (p, n) = (format!("75:pos{i}"), format!("75:neg{i}"));
        link((&img, "image"), (&enc, "pixels"));
        link(("75:72", "VAE"), (&enc, "vae"));
        link((&pos.0, pos.1), (&p, "conditioning"));
        link((&enc, "LATENT"), (&p, "latent"));
        link((&neg.0, neg.1), (&n, "conditioning"));
        link((&enc, "LATENT"), (&n, "latent"));
        pos = (p, "CONDITIONING");
        neg = (n, "CONDITIONING");
    }
    link(("75:70", "MODEL"), ("75:63", "model"));
    link((&pos.0, pos.1), ("75:63", "positive"));
    link((&neg.0, neg.1), ("75:63", "negative"));
    link(("75:73", "NOISE"), ("75:64", "noise"));
    link(("75:63", "GUIDER"), ("75:64", "guider"));
    link(("75:61", "SAMPLER"), ("75:64", "sampler"));
    link(("75:62", "SIGMAS"), ("75:64", "sigmas"));
    link(("75:66", "LATENT"), ("75:64", "latent_image"));
    link(("75:64", "output"), ("75:65", "samples"));
    link(("75:72", "VAE"), ("75:65", "vae"));
    g
}

/// Removes the link into `to` (node, input).
fn unlink_input(g: &mut Graph, to: (&str, &str)) {
    let target = PortRef::new(to.0, to.1);
    for l in g.links() {
        if l.to == target {
            g.remove_link(&l);
        }
    }
}

fn assert_same_bits(a: &Image, b: &Image) {
    assert_eq!(
        (a.width, a.height, a.channels),
        (b.width, b.height, b.channels)
    );
    assert!(
        a.data
            .iter()
            .zip(b.data.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "the decoded images differ"
    );
}

#[test]
fn comfy_edit_graph_paints_the_native_edit_workflows_pixels() {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let native = native_edit_workflow();
    let native = run(
        &mut engine,
        &native,
        &["decode", "sampler", "save"],
        &setup.env,
    );
    let comfy = comfy_edit_graph(&["edit-reference.png"], 20, 5.0, 0);
    let comfy = run(&mut engine, &comfy, &["75:65", "75:64"], &setup.env);
    assert_eq!(
        bits(&latent(&comfy, "75:64").samples),
        bits(&latent(&native, "sampler").samples),
        "the sampled latents differ"
    );
    let picture = image(&native, "decode");
    assert_same_bits(&image(&comfy, "75:65"), &picture);
    assert_eq!((picture.width, picture.height), (64, 64));

    // The reference is used: the same run without it paints another picture.
    let mut plain = native_edit_workflow();
    plain.remove_node("prompt_reference").unwrap();
    plain.remove_node("negative_reference").unwrap();
    plain.add_link(Link {
        from: PortRef::new("prompt", "conditioning"),
        to: PortRef::new("sampler", "positive"),
    });
    plain.add_link(Link {
        from: PortRef::new("negative", "conditioning"),
        to: PortRef::new("sampler", "negative"),
    });
    let plain = run(&mut engine, &plain, &["decode"], &setup.env);
    assert_ne!(image(&plain, "decode").data, picture.data);
}

#[test]
fn two_references_of_different_sizes_match_the_native_chain() {
    let setup = setup();
    let mut engine = Engine::new(registry(), Budgets::default());
    let refs = ["edit-reference.png", "edit-style.png"];
    let comfy = comfy_edit_graph(&refs, 4, 1.0, 7);
    let comfy = run(&mut engine, &comfy, &["75:65"], &setup.env);

    let mut native = native_edit_workflow();
    native
        .add_node(
            "style",
            "LoadImage",
            [("path".to_string(), s(&input_image("edit-style.png")))].into(),
        )
        .unwrap();
    native
        .add_node("encode_style", "VaeEncode", BTreeMap::new())
        .unwrap();
    native
        .add_node("style_reference", "AddReference", BTreeMap::new())
        .unwrap();
    for (from, to) in [
        (("style", "image"), ("encode_style", "image")),
        (("vae", "vae"), ("encode_style", "vae")),
        (
            ("prompt_reference", "conditioning"),
            ("style_reference", "conditioning"),
        ),
        (("encode_style", "latent"), ("style_reference", "latent")),
        (("style_reference", "conditioning"), ("sampler", "positive")),
    ] {
        unlink_input(&mut native, to);
        native.add_link(Link {
            from: PortRef::new(from.0, from.1),
            to: PortRef::new(to.0, to.1),
        });
    }
    for (param, value) in [
        ("steps", Value::Int(4)),
        ("guidance", Value::Float(1.0)),
        ("seed", Value::Int(7)),
    ] {
        native.set_param("sampler", param, value).unwrap();
    }
    let native = run(&mut engine, &native, &["decode"], &setup.env);
    assert_same_bits(&image(&comfy, "75:65"), &image(&native, "decode"));
}

#[test]
fn flux_kv_cache_is_refused_at_validation_with_a_reason() {
    let setup = setup();
    let mut g = comfy_edit_graph(&["edit-reference.png"], 4, 1.0, 0);
    g.add_node("139", "FluxKVCache", BTreeMap::new()).unwrap();
    unlink_input(&mut g, ("75:63", "model"));
    g.add_link(Link {
        from: PortRef::new("75:70", "MODEL"),
        to: PortRef::new("139", "model"),
    });
    g.add_link(Link {
        from: PortRef::new("139", "MODEL"),
        to: PortRef::new("75:63", "model"),
    });
    let errors = validate(&g, &registry(), &setup.env).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("139") && t.contains("FluxKVCache is not supported")),
        "{text:#?}"
    );
}
