//! Scheduler overhead on a 1,000-node graph whose outputs are all cached: what a re-run of an
//! unchanged workflow costs (validation, planning, key computation, cache look-ups). Nothing
//! executes; the setup checks that.
//!
//! Run with `cargo bench -p veetance-core --bench scheduler`; figures go to docs/performance.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use veetance_core::{
    validate, Budgets, Engine, ExecContext, Graph, Link, NodeDef, NodeError, NodeRegistry,
    NodeSchema, NullSink, ParamDef, PortRef, PortType, RunEnv, RunOptions, Value,
};

/// `Source`: seed, scale and mode params to an Int.
struct Source(NodeSchema);
/// `Step`: one Int input, an `amount` (linkable) and a `label`.
struct Step(NodeSchema);
/// `Mix`: two Int inputs, a `weight` and an `op`.
struct Mix(NodeSchema);
/// `Save`: an output node with a `prefix` and a `format`.
struct Save(NodeSchema);

impl NodeDef for Source {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Ok(vec![Value::Int(ctx.params.int("seed")?)])
    }
}

impl NodeDef for Step {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let x = ctx.required("x")?.as_int().unwrap_or_default();
        Ok(vec![Value::Int(x.wrapping_add(ctx.params.int("amount")?))])
    }
}

impl NodeDef for Mix {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let a = ctx.required("a")?.as_int().unwrap_or_default();
        let b = ctx.required("b")?.as_int().unwrap_or_default();
        Ok(vec![Value::Int(a.wrapping_add(b))])
    }
}

impl NodeDef for Save {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        Ok(vec![ctx.required("value")?.clone()])
    }
}

fn registry() -> NodeRegistry {
    let mut reg = NodeRegistry::new();
    reg.add(Source(
        NodeSchema::new("Source", "Source", "bench")
            .output("out", PortType::Int, "")
            .param(ParamDef::int("seed", 0, 0, i64::MAX, ""))
            .param(ParamDef::float("scale", 1.0, 0.0, 10.0, 0.1, ""))
            .param(ParamDef::choice("mode", &["fixed", "random"], "fixed", "")),
    ));
    reg.add(Step(
        NodeSchema::new("Step", "Step", "bench")
            .input("x", PortType::Int, "")
            .output("out", PortType::Int, "")
            .param(ParamDef::int("amount", 1, 0, 1_000_000, ""))
            .param(ParamDef::string("label", "step", "")),
    ));
    reg.add(Mix(NodeSchema::new("Mix", "Mix", "bench")
        .input("a", PortType::Int, "")
        .input("b", PortType::Int, "")
        .output("out", PortType::Int, "")
        .param(ParamDef::float("weight", 0.5, 0.0, 1.0, 0.01, ""))
        .param(ParamDef::choice(
            "op",
            &["add", "mul", "max"],
            "add",
            "",
        ))));
    reg.add(Save(
        NodeSchema::new("Save", "Save", "bench")
            .input("value", PortType::Int, "")
            .output("value", PortType::Int, "")
            .param(ParamDef::string("prefix", "out", ""))
            .param(ParamDef::choice("format", &["png", "jpg"], "png", ""))
            .output_node(),
    ));
    reg
}

fn add(g: &mut Graph, id: String, ty: &str, params: &[(&str, Value)]) -> String {
    let params: BTreeMap<String, Value> = params
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    g.add_node(&id, ty, params).expect("valid id");
    id
}

fn connect(g: &mut Graph, from: &str, to: &str, port: &str) {
    g.add_link(Link {
        from: PortRef::new(from, "out"),
        to: PortRef::new(to, port),
    });
}

/// 20 pipelines of 50 nodes: four sources, each starting a chain of ten steps; the chains fan in
/// through three mixes, then two more steps and a save. Each pipeline's first chain takes a step
/// amount from the previous pipeline's first source (a linked param), so pipelines are joined.
fn thousand_node_graph() -> Graph {
    let mut g = Graph::new();
    let mut previous_source: Option<String> = None;
    for p in 0..20 {
        let mut chain_ends = Vec::new();
        let mut first_source = String::new();
        for c in 0..4 {
            let seed = (p * 4 + c) as i64;
            let mut prev = add(
                &mut g,
                format!("p{p}_src{c}"),
                "Source",
                &[
                    ("seed", Value::Int(seed)),
                    ("scale", Value::Float(1.5)),
                    ("mode", Value::choice("fixed")),
                ],
            );
            if c == 0 {
                first_source = prev.clone();
            }
            for s in 0..10 {
                let id = add(
                    &mut g,
                    format!("p{p}_c{c}_step{s}"),
                    "Step",
                    &[
                        ("amount", Value::Int(s + 1)),
                        ("label", Value::string(format!("chain {c} step {s}"))),
                    ],
                );
                connect(&mut g, &prev, &id, "x");
                if c == 0 && s == 5 {
                    if let Some(src) = &previous_source {
                        connect(&mut g, src, &id, "amount");
                    }
                }
                prev = id;
            }
            chain_ends.push(prev);
        }
        let mix = |g: &mut Graph, name: &str, a: &str, b: &str| {
            let id = add(
                g,
                format!("p{p}_{name}"),
                "Mix",
                &[("weight", Value::Float(0.25)), ("op", Value::choice("add"))],
            );
            connect(g, a, &id, "a");
            connect(g, b, &id, "b");
            id
        };
        let m01 = mix(&mut g, "mix01", &chain_ends[0], &chain_ends[1]);
        let m23 = mix(&mut g, "mix23", &chain_ends[2], &chain_ends[3]);
        let mut prev = mix(&mut g, "mix", &m01, &m23);
        for s in 0..2 {
            let id = add(
                &mut g,
                format!("p{p}_post{s}"),
                "Step",
                &[("amount", Value::Int(7)), ("label", Value::string("post"))],
            );
            connect(&mut g, &prev, &id, "x");
            prev = id;
        }
        let save = add(
            &mut g,
            format!("p{p}_save"),
            "Save",
            &[("prefix", Value::string(format!("pipeline_{p}")))],
        );
        connect(&mut g, &prev, &save, "value");
        previous_source = Some(first_source);
    }
    assert_eq!(g.node_count(), 1000);
    g
}

fn scheduler(c: &mut Criterion) {
    let registry = Arc::new(registry());
    let graph = thousand_node_graph();
    let env = RunEnv::default();
    validate(&graph, &registry, &env).expect("the bench graph is valid");

    let mut engine = Engine::new(registry.clone(), Budgets::default());
    let options = RunOptions::default();
    let first = engine.run(&graph, &options, &NullSink).expect("first run");
    assert_eq!(first.executed.len(), 1000, "the first run fills the cache");
    let again = engine.run(&graph, &options, &NullSink).expect("cached run");
    assert!(
        again.executed.is_empty(),
        "a cached re-run executes nothing"
    );
    assert_eq!(again.outputs.len(), 20);

    c.bench_function("cached_rerun_1000_nodes", |b| {
        b.iter(|| {
            let report = engine
                .run(black_box(&graph), &options, &NullSink)
                .expect("cached run");
            debug_assert!(report.executed.is_empty());
            black_box(report)
        })
    });

    c.bench_function("validate_1000_nodes", |b| {
        b.iter(|| validate(black_box(&graph), &registry, &env).expect("valid"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    targets = scheduler
}
criterion_main!(benches);
