//! ComfyUI's LoraLoaderModelOnly: its inputs as ComfyUI declares them, and a run that patches the
//! model handle without reloading the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use veetance_core::{
    Budgets, CollectSink, Engine, Graph, Link, NodeRegistry, ParamKind, PortRef, RunEnv,
    RunOptions, Value,
};
use veetance_nodes_flux2::values::ModelHandle;

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

#[test]
fn lora_loader_model_only_has_comfyuis_inputs_widgets_and_ranges() {
    let reg = registry();
    let schema = reg.get("LoraLoaderModelOnly").unwrap().schema();
    let inputs: Vec<&str> = schema.inputs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(inputs, ["model"]);
    let params: Vec<&str> = schema.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["lora_name", "strength_model"]);
    assert!(matches!(
        schema.params[1].kind,
        ParamKind::Float { default, min, max, step }
            if default == 1.0 && min == -100.0 && max == 100.0 && step == 0.01
    ));
    let outputs: Vec<&str> = schema.outputs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(outputs, ["MODEL"]);
}

fn string(s: String) -> Value {
    Value::string(s)
}

#[test]
fn lora_loader_model_only_adds_the_lora_to_the_loaders_handle() {
    let mut graph = Graph::new();
    let dit = repo().join("assets/tiny-models/diffusion_models/flux2-klein-tiny.safetensors");
    let lora = repo().join("assets/parity/lora/lora_kohya.safetensors");
    graph
        .add_node(
            "1",
            "UNETLoader",
            BTreeMap::from([("unet_name".to_string(), string(dit.display().to_string()))]),
        )
        .unwrap();
    graph
        .add_node(
            "2",
            "LoraLoaderModelOnly",
            BTreeMap::from([
                ("lora_name".to_string(), string(lora.display().to_string())),
                ("strength_model".to_string(), Value::Float(0.7)),
            ]),
        )
        .unwrap();
    graph.add_link(Link {
        from: PortRef::new("1", "MODEL"),
        to: PortRef::new("2", "model"),
    });
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        targets: Some(vec!["2".into()]),
        env: RunEnv {
            out_dir: dir.path().to_path_buf(),
            models_dir: repo().join("assets/tiny-models"),
            ..RunEnv::default()
        },
        cancel: Default::default(),
    };
    let mut engine = Engine::new(registry(), Budgets::default());
    let report = engine
        .run(&graph, &options, &CollectSink::default())
        .unwrap();
    let patched = report.outputs["2"][0]
        .as_object()
        .and_then(|o| o.downcast::<ModelHandle>())
        .unwrap();
    assert_eq!(patched.patches.loras.len(), 1);
    assert_eq!(patched.patches.loras[0].strength, 0.7);
    assert_eq!(patched.patches.loras[0].lora.layers.len(), 10);
}
