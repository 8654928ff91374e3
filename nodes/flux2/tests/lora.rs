//! LoraLoader in a graph on the tiny models: what a new strength or a new LoRA file re-runs (the
//! engine's events), that strength 0 gives the unpatched model's pixels, and bad input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use veetance_core::{
    validate, Budgets, CollectSink, Engine, Event, Graph, Link, NodeRegistry, PortRef, RunEnv,
    RunError, RunOptions, RunReport, Value,
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

fn parity_lora(style: &str) -> PathBuf {
    repo().join(format!("assets/parity/lora/lora_{style}.safetensors"))
}

/// loader → LoRA → sampler → decode → save on the tiny models.
fn lora_graph(lora: &Path, strength: f64) -> (WorkflowFile, Graph) {
    let models = repo().join("assets/tiny-models");
    let text = format!(
        r#"(
    version: 1,
    nodes: [
        (id: "model", type: "LoadDiffusionModel", params: {{"file": "{dit}"}}),
        (id: "lora", type: "LoraLoader", params: {{"file": "{lora}", "strength": {strength:?}}}),
        (id: "text_encoder", type: "LoadTextEncoder", params: {{"file": "{te}"}}),
        (id: "prompt", type: "TextEncode", params: {{"text": "a red fox sitting in the snow at dawn"}}),
        (id: "vae", type: "LoadVae", params: {{"file": "{vae}"}}),
        (id: "latent", type: "EmptyLatent", params: {{"batch": 1, "height": 64, "width": 64}}),
        (id: "sampler", type: "Sampler", params: {{"guidance": 1.0, "seed": 42, "steps": 2}}),
        (id: "decode", type: "VaeDecode"),
        (id: "save", type: "SaveImage", params: {{"filename_prefix": "lora"}}),
    ],
    links: [
        (from: ("model", "model"), to: ("lora", "model")),
        (from: ("lora", "model"), to: ("sampler", "model")),
        (from: ("text_encoder", "text_encoder"), to: ("prompt", "text_encoder")),
        (from: ("prompt", "conditioning"), to: ("sampler", "positive")),
        (from: ("latent", "latent"), to: ("sampler", "latent")),
        (from: ("sampler", "latent"), to: ("decode", "latent")),
        (from: ("vae", "vae"), to: ("decode", "vae")),
        (from: ("decode", "image"), to: ("save", "images")),
    ],
)"#,
        dit = models
            .join("diffusion_models/flux2-klein-tiny.safetensors")
            .display(),
        te = models
            .join("text_encoders/qwen3-tiny.safetensors")
            .display(),
        vae = models.join("vae/flux2-vae-tiny").display(),
        lora = lora.display(),
    );
    let wf = WorkflowFile::parse(&text, "lora.ron").unwrap();
    let graph = wf.to_graph("lora.ron").unwrap();
    (wf, graph)
}

fn env(out: &Path) -> RunEnv {
    RunEnv {
        out_dir: out.to_path_buf(),
        models_dir: repo().join("assets/tiny-models"),
        ..RunEnv::default()
    }
}

fn run(
    engine: &mut Engine,
    graph: &Graph,
    env: &RunEnv,
) -> (Result<RunReport, RunError>, Vec<Event>) {
    let sink = CollectSink::default();
    let options = RunOptions {
        targets: None,
        env: env.clone(),
        cancel: Default::default(),
    };
    let result = engine.run(graph, &options, &sink);
    (result, sink.take())
}

fn pixels(report: &RunReport) -> Vec<f32> {
    match &report.outputs["save"][0] {
        Value::String(s) => veetance_nodes_basic::read_png_image(Path::new(&**s))
            .unwrap()
            .data
            .to_vec(),
        other => panic!("unexpected {other:?}"),
    }
}

fn cached(events: &[Event], id: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::NodeFinished { node, cached: true, .. } if node == id))
}

fn started(events: &[Event], id: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::NodeStarted { node, .. } if node == id))
}

#[test]
fn changing_only_the_lora_strength_reruns_the_lora_and_what_follows_not_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let (_, mut graph) = lora_graph(&parity_lora("kohya"), 1.0);
    let mut engine = Engine::new(registry(), Budgets::default());
    let (first, events) = run(&mut engine, &graph, &env);
    let first = first.unwrap();
    assert!(started(&events, "model") && started(&events, "lora"));

    graph
        .set_param("lora", "strength", Value::Float(0.5))
        .unwrap();
    let (second, events) = run(&mut engine, &graph, &env);
    let second = second.unwrap();
    assert_eq!(second.executed, vec!["lora", "sampler", "decode", "save"]);
    for id in ["model", "text_encoder", "prompt", "vae", "latent"] {
        assert!(cached(&events, id), "{id} should be served from the cache");
        assert!(!started(&events, id), "{id} should not run again");
    }
    assert_ne!(
        pixels(&first),
        pixels(&second),
        "the strength changed nothing"
    );

    // Back to strength 1: served from the cache entirely (same keys as the first run).
    graph
        .set_param("lora", "strength", Value::Float(1.0))
        .unwrap();
    let (third, _) = run(&mut engine, &graph, &env);
    let third = third.unwrap();
    assert!(
        !third.executed.iter().any(|n| n == "lora" || n == "sampler"),
        "{:?}",
        third.executed
    );
}

#[test]
fn a_new_lora_file_reruns_the_lora_node_but_not_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let lora = dir.path().join("my-lora.safetensors");
    std::fs::copy(parity_lora("kohya"), &lora).unwrap();
    let (_, graph) = lora_graph(&lora, 1.0);
    let mut engine = Engine::new(registry(), Budgets::default());
    let first = run(&mut engine, &graph, &env).0.unwrap();

    // Another LoRA under the same name: the file's identity (size, mtime) changes the key.
    std::fs::copy(parity_lora("bfl"), &lora).unwrap();
    let (second, events) = run(&mut engine, &graph, &env);
    let second = second.unwrap();
    assert_eq!(second.executed, vec!["lora", "sampler", "decode", "save"]);
    assert!(cached(&events, "model") && !started(&events, "model"));
    assert_ne!(pixels(&first), pixels(&second));
}

#[test]
fn strength_zero_paints_the_unpatched_models_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let (_, graph) = lora_graph(&parity_lora("diffusers"), 0.0);
    let mut engine = Engine::new(registry(), Budgets::default());
    let with_zero = pixels(&run(&mut engine, &graph, &env).0.unwrap());

    // The same graph with the LoRA node bypassed by a link from the loader.
    let (_, mut plain) = lora_graph(&parity_lora("diffusers"), 1.0);
    plain.remove_node("lora").unwrap();
    plain.add_link(Link {
        from: PortRef::new("model", "model"),
        to: PortRef::new("sampler", "model"),
    });
    let without = pixels(&run(&mut engine, &plain, &env).0.unwrap());
    assert_eq!(with_zero, without);
}

#[test]
fn a_missing_lora_file_is_a_validation_error_on_the_file_param() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let (_, graph) = lora_graph(Path::new("no-such-lora.safetensors"), 1.0);
    let problems = validate(&graph, &registry(), &env).unwrap_err();
    let text = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("lora") && text.contains("file") && text.contains("loras"),
        "{text}"
    );
}

#[test]
fn a_lora_for_another_model_fails_naming_the_param_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    // The tiny text encoder's file is no LoRA at all.
    let not_lora = repo().join("assets/tiny-models/text_encoders/qwen3-tiny.safetensors");
    let (_, graph) = lora_graph(&not_lora, 1.0);
    let mut engine = Engine::new(registry(), Budgets::default());
    let err = run(&mut engine, &graph, &env).0.unwrap_err().to_string();
    assert!(
        err.contains("lora") && err.contains("param 'file'") && err.contains("qwen3-tiny"),
        "{err}"
    );
}
