//! Host working memory: a node declares what it will allocate ([`NodeDef::host_need`]), and the
//! engine refuses to start one that cannot fit with the named out-of-memory error, instead of
//! letting the allocation abort the process; the engine keeps working afterwards.

mod common;

use std::sync::Arc;

use common::{ids, link, node, Const, Log, Sink};
use veetance_core::{
    Budgets, Engine, ExecContext, Graph, MemoryKind, NodeDef, NodeError, NodeRegistry, NodeSchema,
    NullSink, ParamDef, Params, PortType, RunError, RunOptions, Value,
};

/// `Hungry`: passes its `Int` input through and declares `need` bytes of host working memory
/// (allocating none: the check happens before `execute`).
struct Hungry {
    schema: NodeSchema,
    log: Log,
}

impl NodeDef for Hungry {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn host_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        params.int("need").ok().map(|n| n as u64)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        Ok(vec![ctx.required("x")?.clone()])
    }
}

fn registry(log: &Log) -> Arc<NodeRegistry> {
    let mut reg = NodeRegistry::new();
    reg.add(Const::new(log.clone()));
    reg.add(Sink::new(log.clone()));
    reg.add(Hungry {
        schema: NodeSchema::new("Hungry", "Hungry", "test")
            .input("x", PortType::Int, "input")
            .output("out", PortType::Int, "x")
            .param(ParamDef::int(
                "need",
                0,
                0,
                i64::MAX,
                "host bytes it declares",
            )),
        log: log.clone(),
    });
    Arc::new(reg)
}

/// `c -> hungry(need) -> sink`.
fn graph(need: i64) -> Graph {
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(7))]);
    node(&mut g, "hungry", "Hungry", &[("need", Value::Int(need))]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "hungry", "x");
    link(&mut g, "hungry", "out", "sink", "value");
    g
}

#[test]
fn a_node_over_the_host_limit_is_not_started_and_the_next_run_works() {
    let log = Log::default();
    let mut engine = Engine::new(registry(&log), Budgets::default()).with_host_limit(Some(1 << 20));
    let err = engine
        .run(&graph(3 << 20), &RunOptions::default(), &NullSink)
        .unwrap_err();
    match &err {
        RunError::OutOfMemory {
            node,
            node_type,
            memory,
            needed,
            free,
            ..
        } => {
            assert_eq!((node.as_str(), node_type.as_str()), ("hungry", "Hungry"));
            assert_eq!(*memory, MemoryKind::Host);
            assert_eq!(*needed, Some(3 << 20));
            assert!(free.is_some_and(|f| f <= 1 << 20), "{free:?}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("node 'hungry' (Hungry)")
            && text.contains("host memory")
            && text.contains("3.00 MiB")
            && text.contains("1.00 MiB")
            && text.contains("Lower the resolution"),
        "{text}"
    );
    assert!(!err.is_invalid_input());
    assert_eq!(log.take(), ids(&["c"]), "the hungry node never started");

    // Within the limit it runs; what ran before is served from the cache.
    let report = engine
        .run(&graph(1 << 10), &RunOptions::default(), &NullSink)
        .unwrap();
    assert_eq!(report.executed, ids(&["hungry", "sink"]));
    assert_eq!(report.cached, ids(&["c"]));
}

#[test]
#[cfg(target_os = "linux")]
fn a_node_needing_more_than_the_machine_has_is_refused_without_a_limit() {
    // No limit set: the system's available memory binds. Nothing has 4 EiB to give.
    let log = Log::default();
    let mut engine = Engine::new(registry(&log), Budgets::default());
    assert!(
        engine.host_room().is_some(),
        "MemAvailable is read on Linux"
    );
    let err = engine
        .run(&graph(1 << 62), &RunOptions::default(), &NullSink)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::OutOfMemory {
                memory: MemoryKind::Host,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is available"), "{err}");
    assert_eq!(log.take(), ids(&["c"]));
}
