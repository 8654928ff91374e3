//! Helpers shared by the integration tests: a registry of this crate's nodes, graph building,
//! and running one node directly.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;
use std::sync::Arc;

use veetance_core::{
    Budgets, CancelToken, Engine, ExecContext, Graph, Link, NodeDef, NodeError, NodeRegistry,
    NullSink, Params, PortRef, RunEnv, RunError, RunOptions, RunReport, Value,
};

pub fn registry() -> NodeRegistry {
    let mut reg = NodeRegistry::new();
    veetance_nodes_basic::register(&mut reg);
    reg
}

pub fn engine() -> Engine {
    Engine::new(Arc::new(registry()), Budgets::default())
}

/// A params map from `(name, value)` pairs.
pub fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn link(graph: &mut Graph, from: (&str, &str), to: (&str, &str)) {
    graph.add_link(Link {
        from: PortRef::new(from.0, from.1),
        to: PortRef::new(to.0, to.1),
    });
}

pub fn run(
    engine: &mut Engine,
    graph: &Graph,
    targets: &[&str],
    env: &RunEnv,
) -> Result<RunReport, RunError> {
    let options = RunOptions {
        targets: Some(targets.iter().map(|t| t.to_string()).collect()),
        env: env.clone(),
        cancel: CancelToken::new(),
    };
    engine.run(graph, &options, &NullSink)
}

/// Executes one node of `registry()` directly: its declared params at their defaults, except
/// those in `set`, with the given inputs.
pub fn exec_with(
    type_name: &str,
    set: &[(&str, Value)],
    inputs: Vec<(&str, Value)>,
    env: &RunEnv,
    cancel: &CancelToken,
) -> Result<Vec<Value>, NodeError> {
    let reg = registry();
    let def: &Arc<dyn NodeDef> = reg.get(type_name).expect("registered");
    let values = def
        .schema()
        .params
        .iter()
        .map(|p| {
            let value = set
                .iter()
                .find(|(n, _)| *n == p.name)
                .map(|(_, v)| p.kind.check(v).expect("valid test param"))
                .unwrap_or_else(|| p.kind.default_value());
            (p.name.clone(), value)
        })
        .collect();
    let mut ctx = ExecContext::new("test", Params(values), inputs, env, cancel, &NullSink);
    def.execute(&mut ctx)
}

pub fn exec(
    type_name: &str,
    set: &[(&str, Value)],
    inputs: Vec<(&str, Value)>,
) -> Result<Vec<Value>, NodeError> {
    exec_with(
        type_name,
        set,
        inputs,
        &RunEnv::default(),
        &CancelToken::new(),
    )
}

/// The single image output of a node run directly.
pub fn exec_image(
    type_name: &str,
    set: &[(&str, Value)],
    inputs: Vec<(&str, Value)>,
) -> veetance_core::Image {
    let out = exec(type_name, set, inputs).expect("node runs");
    out[0].as_image().expect("an image").clone()
}

/// A one-image batch filled with `value` in every channel.
pub fn flat(width: u32, height: u32, channels: u32, value: f32) -> veetance_core::Image {
    veetance_core::Image::new(
        1,
        height,
        width,
        channels,
        vec![value; (width * height * channels) as usize],
    )
    .expect("valid image")
}
