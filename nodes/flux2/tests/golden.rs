//! The golden workflow on the tiny random-weight models: end to end, against the reference,
//! caching across seeds, and bad input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use veetance_core::{
    validate, Budgets, CollectSink, Engine, Event, Graph, NodeRegistry, Place, Problem, RunEnv,
    RunError, RunOptions, Value,
};
use veetance_workflow::WorkflowFile;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn registry() -> Arc<NodeRegistry> {
    let mut reg = NodeRegistry::new();
    veetance_nodes_basic::register(&mut reg);
    veetance_nodes_flux2::register(&mut reg);
    Arc::new(reg)
}

/// The tiny workflow with its model paths made absolute (tests do not run from the repo root).
fn tiny_workflow() -> (WorkflowFile, Graph) {
    let path = repo().join("workflows/flux2-klein-tiny.ron");
    let mut wf = WorkflowFile::load(&path).unwrap();
    for node in &mut wf.nodes {
        if let Some(veetance_workflow::ParamValue::String(file)) = node.params.get_mut("file") {
            *file = repo().join(&*file).display().to_string();
        }
    }
    let graph = wf.to_graph("flux2-klein-tiny.ron").unwrap();
    (wf, graph)
}

fn env(out: &Path, wf: &WorkflowFile) -> RunEnv {
    RunEnv {
        out_dir: out.to_path_buf(),
        models_dir: repo().join("assets/tiny-models"),
        run_index: 0,
        workflow: Some(wf.to_ron().into()),
        ..RunEnv::default()
    }
}

fn run(
    engine: &mut Engine,
    graph: &Graph,
    env: &RunEnv,
) -> (Result<veetance_core::RunReport, RunError>, Vec<Event>) {
    let sink = CollectSink::default();
    let options = RunOptions {
        targets: None,
        env: env.clone(),
        cancel: Default::default(),
    };
    let result = engine.run(graph, &options, &sink);
    (result, sink.take())
}

fn saved_path(report: &veetance_core::RunReport) -> PathBuf {
    match &report.outputs["save"][0] {
        Value::String(s) => PathBuf::from(&**s),
        other => panic!("unexpected {other:?}"),
    }
}

fn reference_u8() -> Vec<u8> {
    let t = candle_core::safetensors::load(
        repo().join("assets/tiny-models/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    t["image_u8"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap()
}

#[test]
fn tiny_workflow_matches_the_reference_and_repeats_exactly() {
    let (wf, graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let mut engine = Engine::new(registry(), Budgets::default());
    let (result, events) = run(&mut engine, &graph, &env);
    let report = result.unwrap_or_else(|e| panic!("{e}"));
    let first = saved_path(&report);
    let image = veetance_nodes_basic::read_png_image(&first).unwrap();
    assert_eq!((image.width, image.height, image.channels), (64, 64, 3));
    let ours = image.frame_u8(0);
    let reference = reference_u8();
    assert_eq!(ours.len(), reference.len());
    let max_diff = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (i16::from(*a) - i16::from(*b)).abs())
        .max()
        .unwrap();
    let off = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
    eprintln!("tiny workflow vs diffusers reference: max |diff| {max_diff} (8-bit), {off} of {} values differ", ours.len());
    assert!(max_diff <= 1, "max difference {max_diff} in 8-bit values");

    // Progress and a preview at every one of the 4 steps.
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { node, step, .. } if node == "sampler" => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4]);
    let previews = events
        .iter()
        .filter(|e| matches!(e, Event::Preview { node, .. } if node == "sampler"))
        .count();
    assert_eq!(previews, 4);
    // CompileModel says it fused nothing on the CPU.
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Warning { node: Some(n), .. } if n == "compile")));

    // A fresh engine (nothing cached) paints the same pixels.
    let mut engine2 = Engine::new(registry(), Budgets::default());
    let (again, _) = run(&mut engine2, &graph, &env);
    let second = saved_path(&again.unwrap());
    assert_ne!(first, second);
    let a = veetance_nodes_basic::read_png_image(&first).unwrap();
    let b = veetance_nodes_basic::read_png_image(&second).unwrap();
    assert_eq!(a.data, b.data);
    // The generation parameters travel into the PNG.
    let bytes = std::fs::read(&first).unwrap();
    let params = veetance_nodes_basic::read_png_text(&bytes, "parameters")
        .unwrap()
        .unwrap();
    assert!(
        params.contains("Seed: 42") && params.contains("Steps: 4"),
        "{params}"
    );
}

#[test]
fn new_seed_reruns_only_sampler_decode_and_save() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let mut engine = Engine::new(registry(), Budgets::default());
    let (first, _) = run(&mut engine, &graph, &env);
    first.unwrap();
    graph.set_param("sampler", "seed", Value::Int(7)).unwrap();
    let (second, events) = run(&mut engine, &graph, &env);
    let report = second.unwrap();
    assert_eq!(report.executed, vec!["sampler", "decode", "save"]);
    for cached in [
        "model",
        "text_encoder",
        "prompt",
        "vae",
        "latent",
        "compile",
    ] {
        assert!(
            events.iter().any(
                |e| matches!(e, Event::NodeFinished { node, cached: true, .. } if node == cached)
            ),
            "{cached} should be served from the cache"
        );
    }
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::NodeStarted { node, .. } if node == "prompt" || node == "text_encoder")));
}

#[test]
fn chunked_attention_gives_the_same_image() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let mut engine = Engine::new(registry(), Budgets::default());
    let plain = saved_path(&run(&mut engine, &graph, &env).0.unwrap());
    graph
        .set_param("attention", "attention", Value::string("chunked"))
        .unwrap();
    graph
        .set_param("attention", "chunk_size", Value::Int(16))
        .unwrap();
    let (chunked, _) = run(&mut engine, &graph, &env);
    let chunked = saved_path(&chunked.unwrap());
    let a = veetance_nodes_basic::read_png_image(&plain).unwrap();
    let b = veetance_nodes_basic::read_png_image(&chunked).unwrap();
    let max = a
        .data
        .iter()
        .zip(b.data.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max <= 1.0 / 255.0 + 1e-6,
        "chunked attention differs by {max}"
    );
}

fn problems(graph: &Graph, env: &RunEnv) -> Vec<veetance_core::ValidationError> {
    validate(graph, &registry(), env).err().unwrap_or_default()
}

#[test]
fn bad_sizes_and_steps_are_validation_errors_naming_node_and_param() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    graph.set_param("latent", "width", Value::Int(100)).unwrap();
    graph.set_param("sampler", "steps", Value::Int(0)).unwrap();
    let errors = problems(&graph, &env);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.node == "latent" && e.place == Place::Param("width".into())),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("multiple of 16")),
        "{text:?}"
    );
    assert!(
        errors.iter().any(|e| e.node == "sampler"
            && e.place == Place::Param("steps".into())
            && matches!(e.problem, Problem::ParamRange { .. })),
        "{text:?}"
    );
}

#[test]
fn missing_model_file_names_file_folder_and_what_to_do() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    graph
        .set_param(
            "model",
            "file",
            Value::string("flux-2-klein-4b.safetensors"),
        )
        .unwrap();
    let errors = problems(&graph, &env);
    let e = errors
        .iter()
        .find(|e| e.node == "model" && e.place == Place::Param("file".into()))
        .expect("an error on model.file");
    let msg = e.to_string();
    assert!(msg.contains("flux-2-klein-4b.safetensors"), "{msg}");
    assert!(msg.contains("diffusion_models"), "{msg}");
    assert!(msg.contains("--models-dir"), "{msg}");
}

#[test]
fn long_prompt_is_cut_with_a_warning() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let long = "a very long prompt about a small house by the lake ".repeat(20);
    graph
        .set_param("prompt", "text", Value::string(long))
        .unwrap();
    let mut engine = Engine::new(registry(), Budgets::default());
    let (result, events) = run(&mut engine, &graph, &env);
    result.unwrap();
    assert!(events.iter().any(|e| matches!(e,
        Event::Warning { node: Some(n), message } if n == "prompt" && message.contains("cut"))));
}

#[test]
fn checkpoint_of_another_model_is_a_load_error_naming_the_file() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let qwen = repo().join("assets/tiny-models/text_encoders/qwen3-tiny.safetensors");
    graph
        .set_param("model", "file", Value::string(qwen.display().to_string()))
        .unwrap();
    let mut engine = Engine::new(registry(), Budgets::default());
    let (result, _) = run(&mut engine, &graph, &env);
    match result {
        Err(RunError::NodeFailed { node, message, .. }) => {
            assert_eq!(node, "model");
            assert!(message.contains("qwen3-tiny.safetensors"), "{message}");
        }
        other => panic!("expected a load failure, got {other:?}"),
    }
}

#[test]
fn latents_round_trip_through_a_latent_file() {
    let (wf, graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let mut g = graph.clone();
    g.add_node("save_latent", "SaveLatent", Default::default())
        .unwrap();
    g.add_link(veetance_core::Link {
        from: veetance_core::PortRef::new("sampler", "latent"),
        to: veetance_core::PortRef::new("save_latent", "latent"),
    });
    let mut engine = Engine::new(registry(), Budgets::default());
    let report = run(&mut engine, &g, &env).0.unwrap();
    let Value::String(latent_path) = &report.outputs["save_latent"][0] else {
        panic!()
    };
    let tensors = candle_core::safetensors::load(&**latent_path, &Device::Cpu).unwrap();
    assert_eq!(tensors["latent_tensor"].dims(), &[1, 128, 4, 4]);
    // Decode the saved latent: the same picture as the direct path.
    let mut g2 = graph.clone();
    g2.remove_link(&veetance_core::Link {
        from: veetance_core::PortRef::new("sampler", "latent"),
        to: veetance_core::PortRef::new("decode", "latent"),
    });
    let mut params = std::collections::BTreeMap::new();
    params.insert("path".to_string(), Value::string(latent_path.to_string()));
    g2.add_node("load_latent", "LoadLatent", params).unwrap();
    g2.add_link(veetance_core::Link {
        from: veetance_core::PortRef::new("load_latent", "latent"),
        to: veetance_core::PortRef::new("decode", "latent"),
    });
    let direct = saved_path(&report);
    let via_file = saved_path(&run(&mut engine, &g2, &env).0.unwrap());
    let a = veetance_nodes_basic::read_png_image(&direct).unwrap();
    let b = veetance_nodes_basic::read_png_image(&via_file).unwrap();
    assert_eq!(a.data, b.data);
}

/// The reference script ports our noise generator to Python; both must give the same numbers.
#[test]
fn seeded_noise_matches_the_reference_scripts_port() {
    let t = candle_core::safetensors::load(
        repo().join("assets/tiny-models/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let r = t["noise"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours = veetance_models::sampling::gaussian_noise_vec(42, r.len());
    let max = r
        .iter()
        .zip(&ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(max, 0.0, "first values {:?} vs {:?}", &r[..3], &ours[..3]);
}

#[test]
fn tiled_decode_matches_the_whole_decode_closely() {
    let (wf, mut graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    graph.set_param("latent", "width", Value::Int(256)).unwrap();
    graph
        .set_param("latent", "height", Value::Int(192))
        .unwrap();
    let mut engine = Engine::new(registry(), Budgets::default());
    let whole = saved_path(&run(&mut engine, &graph, &env).0.unwrap());
    graph
        .set_param("decode", "tiled", Value::Bool(true))
        .unwrap();
    graph
        .set_param("decode", "tile_size", Value::Int(8))
        .unwrap();
    graph.set_param("decode", "overlap", Value::Int(2)).unwrap();
    let (tiled, events) = run(&mut engine, &graph, &env);
    let tiled = saved_path(&tiled.unwrap());
    // 16×12 tokens in 8-token tiles with overlap 2: 3 × 2 tiles, each reported.
    let tiles = events
        .iter()
        .filter(|e| matches!(e, Event::Progress { node, .. } if node == "decode"))
        .count();
    assert_eq!(tiles, 6);
    let a = veetance_nodes_basic::read_png_image(&whole).unwrap();
    let b = veetance_nodes_basic::read_png_image(&tiled).unwrap();
    assert_eq!((b.width, b.height), (256, 192));
    let mean = a
        .data
        .iter()
        .zip(b.data.iter())
        .map(|(x, y)| (x - y).abs())
        .sum::<f32>()
        / a.data.len() as f32;
    eprintln!("tiled vs whole decode: mean |diff| {mean:.4}");
    assert!(mean < 0.05, "tiled decode differs by {mean} on average");

    // One tile covering the whole latent is the whole decode.
    graph
        .set_param("decode", "tile_size", Value::Int(64))
        .unwrap();
    let single = saved_path(&run(&mut engine, &graph, &env).0.unwrap());
    let c = veetance_nodes_basic::read_png_image(&single).unwrap();
    assert_eq!(a.data, c.data);
}

/// `noise: comfyui` starts from `comfy_noise` of the seed over the whole latent: the same image
/// as no added noise from a latent holding exactly those numbers (the first sigma is 1).
#[test]
fn comfyui_noise_starts_from_comfy_noise_of_the_seed() {
    let (wf, graph) = tiny_workflow();
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), &wf);
    let mut engine = Engine::new(registry(), Budgets::default());
    let mut with_noise = graph.clone();
    with_noise
        .set_param("sampler", "noise", Value::string("comfyui"))
        .unwrap();
    let noised = saved_path(&run(&mut engine, &with_noise, &env).0.unwrap());

    let shape = [1, 128, 4, 4];
    let noise = veetance_models::torch_rng::comfy_noise(42, &shape);
    let path = dir.path().join("noise.latent");
    let tensors = std::collections::HashMap::from([(
        "latent_tensor".to_string(),
        candle_core::Tensor::from_vec(noise, &shape, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let mut from_file = graph.clone();
    from_file.remove_link(&veetance_core::Link {
        from: veetance_core::PortRef::new("latent", "latent"),
        to: veetance_core::PortRef::new("sampler", "latent"),
    });
    let mut params = std::collections::BTreeMap::new();
    params.insert(
        "path".to_string(),
        Value::string(path.display().to_string()),
    );
    from_file
        .add_node("load_latent", "LoadLatent", params)
        .unwrap();
    from_file.add_link(veetance_core::Link {
        from: veetance_core::PortRef::new("load_latent", "latent"),
        to: veetance_core::PortRef::new("sampler", "latent"),
    });
    from_file
        .set_param("sampler", "add_noise", Value::Bool(false))
        .unwrap();
    let given = saved_path(&run(&mut engine, &from_file, &env).0.unwrap());
    let a = veetance_nodes_basic::read_png_image(&noised).unwrap();
    let b = veetance_nodes_basic::read_png_image(&given).unwrap();
    assert_eq!(a.data, b.data);
    // Not our own noise: another picture for the same seed.
    let ours = saved_path(&run(&mut engine, &graph, &env).0.unwrap());
    assert_ne!(
        a.data,
        veetance_nodes_basic::read_png_image(&ours).unwrap().data
    );
    // The seed's parameters say which noise painted it.
    let text = veetance_nodes_basic::read_png_text(&std::fs::read(&noised).unwrap(), "parameters")
        .unwrap()
        .unwrap();
    assert!(text.contains("Noise: comfyui"), "{text}");
}
