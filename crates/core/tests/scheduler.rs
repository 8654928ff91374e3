//! The scheduler runs only what the requested outputs need, in topological order, and serves
//! every node whose content-hash key is cached from the cache.

mod common;

use common::{ids, int_output, link, node, sorted, Harness};
use veetance_core::{Engine, Graph, NullSink, RunError, RunOptions, RunReport, Value};

fn run(engine: &mut Engine, g: &Graph) -> RunReport {
    engine
        .run(g, &RunOptions::default(), &NullSink)
        .expect("run succeeds")
}

fn run_targets(engine: &mut Engine, g: &Graph, targets: &[&str]) -> RunReport {
    let options = RunOptions {
        targets: Some(ids(targets)),
        ..RunOptions::default()
    };
    engine.run(g, &options, &NullSink).expect("run succeeds")
}

/// `c1 (2), c2 (3) -> adder (+bias 10) -> inc (+1) -> sink`.
fn chain() -> Graph {
    let mut g = Graph::new();
    node(&mut g, "c1", "Const", &[("value", Value::Int(2))]);
    node(&mut g, "c2", "Const", &[("value", Value::Int(3))]);
    node(&mut g, "adder", "Add", &[("bias", Value::Int(10))]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c1", "out", "adder", "a");
    link(&mut g, "c2", "out", "adder", "b");
    link(&mut g, "adder", "sum", "inc", "x");
    link(&mut g, "inc", "out", "sink", "value");
    g
}

/// A diamond and an unrelated branch:
/// `src -> left, right -> join -> sink` and `other -> other_inc -> other_sink`.
fn diamond() -> Graph {
    let mut g = Graph::new();
    node(&mut g, "src", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "left", "Inc", &[("step", Value::Int(10))]);
    node(&mut g, "right", "Inc", &[("step", Value::Int(100))]);
    node(&mut g, "join", "Add", &[]);
    node(&mut g, "sink", "Sink", &[]);
    node(&mut g, "other", "Const", &[("value", Value::Int(5))]);
    node(&mut g, "other_inc", "Inc", &[]);
    node(&mut g, "other_sink", "Sink", &[]);
    link(&mut g, "src", "out", "left", "x");
    link(&mut g, "src", "out", "right", "x");
    link(&mut g, "left", "out", "join", "a");
    link(&mut g, "right", "out", "join", "b");
    link(&mut g, "join", "sum", "sink", "value");
    link(&mut g, "other", "out", "other_inc", "x");
    link(&mut g, "other_inc", "out", "other_sink", "value");
    g
}

#[test]
fn first_run_executes_everything_and_computes_the_result() {
    let h = Harness::new();
    let mut engine = h.engine();
    let report = run(&mut engine, &chain());
    assert_eq!(report.executed, ids(&["c1", "c2", "adder", "inc", "sink"]));
    assert!(report.cached.is_empty());
    assert_eq!(int_output(&report, "sink"), 2 + 3 + 10 + 1);
    assert_eq!(h.log.take(), report.executed);
}

#[test]
fn unchanged_graph_executes_nothing_on_second_run() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = chain();
    let first = run(&mut engine, &g);
    h.log.take();

    let second = run(&mut engine, &g);
    assert!(second.executed.is_empty(), "{:?}", second.executed);
    assert!(h.log.take().is_empty());
    // The target is served from the cache, so nothing upstream of it is even looked at.
    assert_eq!(second.cached, ids(&["sink"]));
    assert_eq!(int_output(&second, "sink"), int_output(&first, "sink"));
}

#[test]
fn changing_one_param_reruns_exactly_that_node_and_descendants() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = diamond();
    let first = run(&mut engine, &g);
    assert_eq!(int_output(&first, "sink"), (1 + 10) + (1 + 100));
    h.log.take();

    g.set_param("left", "step", Value::Int(20)).unwrap();
    let second = run(&mut engine, &g);
    assert_eq!(second.executed, ids(&["left", "join", "sink"]));
    assert_eq!(h.log.take(), second.executed);
    // The sibling, the shared source (read again because `left` re-runs) and the unrelated
    // branch are served from the cache.
    assert_eq!(sorted(&second.cached), ids(&["other_sink", "right", "src"]));
    assert_eq!(int_output(&second, "sink"), (1 + 20) + (1 + 100));
    assert_eq!(int_output(&second, "other_sink"), 5 + 1);
}

#[test]
fn changing_a_source_param_reruns_the_whole_diamond_but_not_the_other_branch() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = diamond();
    run(&mut engine, &g);
    h.log.take();

    g.set_param("src", "value", Value::Int(2)).unwrap();
    let report = run(&mut engine, &g);
    assert_eq!(
        report.executed,
        ids(&["src", "left", "right", "join", "sink"])
    );
    assert_eq!(report.cached, ids(&["other_sink"]));
    assert_eq!(int_output(&report, "sink"), (2 + 10) + (2 + 100));
}

#[test]
fn setting_a_param_to_its_default_explicitly_keeps_the_cache() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = chain();
    run(&mut engine, &g);
    // `inc` has no `step` set; its default is 1.
    g.set_param("inc", "step", Value::Int(1)).unwrap();
    let report = run(&mut engine, &g);
    assert!(report.executed.is_empty(), "{:?}", report.executed);
}

#[test]
fn renumbered_node_ids_hit_the_cache() {
    let h = Harness::new();
    let mut engine = h.engine();
    let first = run(&mut engine, &diamond());

    // The same graph with every id renamed, nodes added in reverse order and links shuffled.
    let mut g = Graph::new();
    node(&mut g, "n8", "Sink", &[]);
    node(&mut g, "n7", "Inc", &[]);
    node(&mut g, "n6", "Const", &[("value", Value::Int(5))]);
    node(&mut g, "n5", "Sink", &[]);
    node(&mut g, "n4", "Add", &[]);
    node(&mut g, "n3", "Inc", &[("step", Value::Int(100))]);
    node(&mut g, "n2", "Inc", &[("step", Value::Int(10))]);
    node(&mut g, "n1", "Const", &[("value", Value::Int(1))]);
    link(&mut g, "n4", "sum", "n5", "value");
    link(&mut g, "n3", "out", "n4", "b");
    link(&mut g, "n2", "out", "n4", "a");
    link(&mut g, "n1", "out", "n3", "x");
    link(&mut g, "n1", "out", "n2", "x");
    link(&mut g, "n7", "out", "n8", "value");
    link(&mut g, "n6", "out", "n7", "x");
    h.log.take();

    let second = run(&mut engine, &g);
    assert!(second.executed.is_empty(), "{:?}", second.executed);
    assert!(h.log.take().is_empty());
    assert_eq!(sorted(&second.cached), ids(&["n5", "n8"]));
    assert_eq!(int_output(&second, "n5"), int_output(&first, "sink"));
    assert_eq!(int_output(&second, "n8"), int_output(&first, "other_sink"));
}

#[test]
fn swapping_two_inputs_changes_the_key() {
    // Keys are built from port names, so a->b and b->a are different computations.
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "c1", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "c2", "Const", &[("value", Value::Int(2))]);
    node(&mut g, "inc1", "Inc", &[]);
    node(&mut g, "adder", "Add", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c1", "out", "inc1", "x");
    link(&mut g, "inc1", "out", "adder", "a");
    link(&mut g, "c2", "out", "adder", "b");
    link(&mut g, "adder", "sum", "sink", "value");
    run(&mut engine, &g);
    h.log.take();

    let mut swapped = Graph::new();
    for n in g.nodes() {
        swapped
            .add_node(&n.id, &n.type_name, n.params.clone())
            .unwrap();
    }
    link(&mut swapped, "c1", "out", "inc1", "x");
    link(&mut swapped, "inc1", "out", "adder", "b");
    link(&mut swapped, "c2", "out", "adder", "a");
    link(&mut swapped, "adder", "sum", "sink", "value");
    let report = run(&mut engine, &swapped);
    assert_eq!(report.executed, ids(&["adder", "sink"]));
}

#[test]
fn only_what_targets_need_runs() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = diamond();
    let report = run_targets(&mut engine, &g, &["other_sink"]);
    assert_eq!(report.executed, ids(&["other", "other_inc", "other_sink"]));
    assert_eq!(h.log.take(), report.executed);
    assert_eq!(report.outputs.keys().collect::<Vec<_>>(), ["other_sink"]);

    // An intermediate node may be a target; only its ancestors run.
    let report = run_targets(&mut engine, &g, &["left"]);
    assert_eq!(report.executed, ids(&["src", "left"]));
    assert_eq!(int_output(&report, "left"), 11);
}

#[test]
fn without_targets_only_output_nodes_and_their_ancestors_run() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = chain();
    // A branch that ends in no output node.
    node(&mut g, "loose", "Const", &[]);
    node(&mut g, "loose_inc", "Inc", &[]);
    link(&mut g, "loose", "out", "loose_inc", "x");
    let report = run(&mut engine, &g);
    assert!(!report.executed.iter().any(|n| n.starts_with("loose")));
    assert_eq!(report.outputs.keys().collect::<Vec<_>>(), ["sink"]);
}

#[test]
fn nodes_run_in_topological_order_whatever_the_insertion_order() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "sink", "Sink", &[]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "adder", "Add", &[]);
    node(&mut g, "c2", "Const", &[]);
    node(&mut g, "c1", "Const", &[]);
    link(&mut g, "inc", "out", "sink", "value");
    link(&mut g, "adder", "sum", "inc", "x");
    link(&mut g, "c1", "out", "adder", "a");
    link(&mut g, "c2", "out", "adder", "b");
    let report = run(&mut engine, &g);
    let pos = |id: &str| report.executed.iter().position(|n| n == id).unwrap();
    assert!(pos("c1") < pos("adder") && pos("c2") < pos("adder"));
    assert!(pos("adder") < pos("inc") && pos("inc") < pos("sink"));
    // Free nodes are taken in file order.
    assert!(pos("c2") < pos("c1"));
}

#[test]
fn unknown_target_and_no_outputs_are_input_errors() {
    let h = Harness::new();
    let mut engine = h.engine();
    let options = RunOptions {
        targets: Some(ids(&["nope"])),
        ..RunOptions::default()
    };
    let err = engine.run(&chain(), &options, &NullSink).unwrap_err();
    assert!(matches!(err, RunError::UnknownTarget(ref t) if t == "nope"));
    assert!(err.is_invalid_input());

    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    let err = engine
        .run(&g, &RunOptions::default(), &NullSink)
        .unwrap_err();
    assert!(matches!(err, RunError::NoOutputs));
    assert!(h.log.take().is_empty());
}

/// `rnd (Always) -> inc -> sink`.
fn random_chain() -> Graph {
    let mut g = Graph::new();
    node(&mut g, "rnd", "Random", &[]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "rnd", "out", "inc", "x");
    link(&mut g, "inc", "out", "sink", "value");
    g
}

#[test]
fn always_nodes_run_every_time_and_descendants_hit_cache_when_output_repeats() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = random_chain();
    h.random.set(7);
    let first = run(&mut engine, &g);
    assert_eq!(first.executed, ids(&["rnd", "inc", "sink"]));
    assert_eq!(int_output(&first, "sink"), 8);
    h.log.take();

    let second = run(&mut engine, &g);
    assert_eq!(second.executed, ids(&["rnd"]));
    assert_eq!(second.cached, ids(&["inc", "sink"]));
    assert_eq!(h.log.take(), ids(&["rnd"]));
    assert_eq!(int_output(&second, "sink"), 8);
}

#[test]
fn always_nodes_are_never_served_stale_and_descendants_rerun_when_output_changes() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = random_chain();
    h.random.set(7);
    run(&mut engine, &g);
    h.log.take();

    h.random.set(40);
    let report = run(&mut engine, &g);
    assert_eq!(report.executed, ids(&["rnd", "inc", "sink"]));
    assert_eq!(int_output(&report, "sink"), 41);

    // Back to an earlier value: the descendants' earlier outputs are still cached.
    h.random.set(7);
    let report = run(&mut engine, &g);
    assert_eq!(report.executed, ids(&["rnd"]));
    assert_eq!(int_output(&report, "sink"), 8);
}

#[test]
fn always_node_as_target_runs_every_time() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = random_chain();
    for v in [1, 2, 2] {
        h.random.set(v);
        let report = run_targets(&mut engine, &g, &["rnd"]);
        assert_eq!(report.executed, ids(&["rnd"]));
        assert_eq!(int_output(&report, "rnd"), v);
    }
}

#[test]
fn fingerprint_change_reruns_node() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "file", "Stamped", &[("value", Value::Int(4))]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "file", "out", "inc", "x");
    link(&mut g, "inc", "out", "sink", "value");
    h.stamp.set(1);
    run(&mut engine, &g);
    h.log.take();

    let same = run(&mut engine, &g);
    assert!(same.executed.is_empty(), "{:?}", same.executed);

    h.stamp.set(2);
    let changed = run(&mut engine, &g);
    assert_eq!(changed.executed, ids(&["file", "inc", "sink"]));
    assert_eq!(h.log.take(), changed.executed);
}

/// `k (Const) -> adder.bias` (a linkable param), with `c1, c2 -> adder -> sink`.
fn linked_bias(bias_constant: i64, k: i64) -> Graph {
    let mut g = Graph::new();
    node(&mut g, "c1", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "c2", "Const", &[("value", Value::Int(2))]);
    node(&mut g, "k", "Const", &[("value", Value::Int(k))]);
    node(
        &mut g,
        "adder",
        "Add",
        &[("bias", Value::Int(bias_constant))],
    );
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c1", "out", "adder", "a");
    link(&mut g, "c2", "out", "adder", "b");
    link(&mut g, "k", "out", "adder", "bias");
    link(&mut g, "adder", "sum", "sink", "value");
    g
}

#[test]
fn linked_param_replaces_its_constant_and_is_keyed_by_its_source() {
    let h = Harness::new();
    let mut engine = h.engine();
    let report = run(&mut engine, &linked_bias(500, 30));
    assert_eq!(int_output(&report, "sink"), 1 + 2 + 30, "link wins");
    assert_eq!(report.executed.len(), 5);

    // The constant under a link does not take part in the key.
    let report = run(&mut engine, &linked_bias(600, 30));
    assert!(report.executed.is_empty(), "{:?}", report.executed);

    // The source does.
    let report = run(&mut engine, &linked_bias(600, 31));
    assert_eq!(report.executed, ids(&["k", "adder", "sink"]));
    assert_eq!(int_output(&report, "sink"), 1 + 2 + 31);
}

#[test]
fn linked_param_value_out_of_range_fails_the_node() {
    let h = Harness::new();
    let mut engine = h.engine();
    // Inc.step is 0..=1000; Add can produce more.
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(900))]);
    node(&mut g, "adder", "Add", &[]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "adder", "a");
    link(&mut g, "c", "out", "adder", "b");
    link(&mut g, "c", "out", "inc", "x");
    link(&mut g, "adder", "sum", "inc", "step");
    link(&mut g, "inc", "out", "sink", "value");
    let err = engine
        .run(&g, &RunOptions::default(), &NullSink)
        .unwrap_err();
    match err {
        RunError::NodeFailed { node, message, .. } => {
            assert_eq!(node, "inc");
            assert!(message.contains("step"), "{message}");
        }
        other => panic!("expected NodeFailed, got {other:?}"),
    }
}

#[test]
fn node_version_bump_changes_the_key() {
    let v1 = Harness::with_add_version(1);
    let v2 = Harness::with_add_version(2);
    let mut engine_v1 = v1.engine();
    let mut engine_v2 = v2.engine();
    let g = chain();
    run(&mut engine_v1, &g);

    // The same cache, now seen by a registry whose Add is version 2.
    std::mem::swap(engine_v1.cache_mut(), engine_v2.cache_mut());
    let report = run(&mut engine_v2, &g);
    assert_eq!(report.executed, ids(&["adder", "inc", "sink"]));
    assert_eq!(sorted(&report.cached), ids(&["c1", "c2"]));

    // Both versions' outputs are now cached side by side.
    std::mem::swap(engine_v1.cache_mut(), engine_v2.cache_mut());
    let report = run(&mut engine_v1, &g);
    assert!(report.executed.is_empty(), "{:?}", report.executed);
}

#[test]
fn duplicate_subgraphs_share_one_cache_entry() {
    // Two identical branches have identical keys: the second is served by the first's output.
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "a", "Const", &[("value", Value::Int(9))]);
    node(&mut g, "a_sink", "Sink", &[]);
    node(&mut g, "b", "Const", &[("value", Value::Int(9))]);
    node(&mut g, "b_sink", "Sink", &[]);
    link(&mut g, "a", "out", "a_sink", "value");
    link(&mut g, "b", "out", "b_sink", "value");
    run(&mut engine, &g);
    assert_eq!(engine.cache().len(), 2, "one entry per distinct key");
}
