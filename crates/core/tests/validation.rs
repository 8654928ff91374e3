//! Validation runs before anything executes and reports every problem at once, each naming the
//! node id and the port or param concerned.

mod common;

use common::{link, node, Harness};
use veetance_core::{
    validate, Graph, Place, PortType, Problem, RunEnv, RunError, RunOptions, ValidationError, Value,
};

fn problems(h: &Harness, g: &Graph) -> Vec<ValidationError> {
    validate(g, &h.registry, &RunEnv::default()).expect_err("graph should be invalid")
}

/// The only problem reported, checking that its message names the node.
fn single(h: &Harness, g: &Graph) -> ValidationError {
    let errors = problems(h, g);
    assert_eq!(errors.len(), 1, "expected exactly one problem: {errors:#?}");
    let e = errors.into_iter().next().unwrap();
    assert!(
        e.to_string().contains(&format!("node '{}'", e.node)),
        "message does not name the node: {e}"
    );
    e
}

#[test]
fn valid_graph_passes() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(3))]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "sink", "value");
    assert_eq!(validate(&g, &h.registry, &RunEnv::default()), Ok(()));
}

#[test]
fn unknown_node_type_is_reported_with_a_suggestion() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "n1", "const", &[]);
    let e = single(&h, &g);
    assert_eq!(e.node, "n1");
    assert_eq!(e.place, Place::Node);
    assert_eq!(
        e.problem,
        Problem::UnknownNodeType {
            type_name: "const".into(),
            suggestion: Some("Const".into()),
        }
    );
    assert!(e.to_string().contains("did you mean \"Const\""), "{e}");
}

#[test]
fn missing_required_input_names_the_input() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    node(&mut g, "adder", "Add", &[]);
    link(&mut g, "c", "out", "adder", "a");
    let e = single(&h, &g);
    assert_eq!(e.node, "adder");
    assert_eq!(e.place, Place::Input("b".into()));
    assert_eq!(e.problem, Problem::MissingInput { ty: PortType::Int });
    assert!(e.to_string().contains("input 'b'"), "{e}");
}

#[test]
fn link_between_mismatched_types_is_reported_at_the_target_input() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "blob", "Blob", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "blob", "blob", "sink", "value");
    let e = single(&h, &g);
    assert_eq!(e.node, "sink");
    assert_eq!(e.place, Place::Input("value".into()));
    assert_eq!(
        e.problem,
        Problem::TypeMismatch {
            expected: PortType::Int,
            found: PortType::Latent,
            from: "blob.blob".into(),
        }
    );
}

#[test]
fn link_into_a_param_of_another_type_is_reported_at_the_param() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "blob", "Blob", &[]);
    node(&mut g, "c", "Const", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "sink", "value");
    link(&mut g, "blob", "blob", "c", "value");
    let e = single(&h, &g);
    assert_eq!(e.node, "c");
    assert_eq!(e.place, Place::Param("value".into()));
    assert!(matches!(e.problem, Problem::TypeMismatch { .. }), "{e:?}");
}

#[test]
fn link_from_a_missing_node_is_reported_at_the_existing_end() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "ghost", "out", "sink", "value");
    let errors = problems(&h, &g);
    let e = errors
        .iter()
        .find(|e| matches!(e.problem, Problem::MissingNode { .. }))
        .expect("missing node reported");
    assert_eq!(e.node, "sink");
    assert_eq!(e.place, Place::Input("value".into()));
    assert_eq!(
        e.problem,
        Problem::MissingNode {
            missing: "ghost".into()
        }
    );
    assert!(e.to_string().contains("'ghost'"), "{e}");
}

#[test]
fn link_to_a_missing_node_is_reported_at_the_source_output() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    link(&mut g, "c", "out", "nowhere", "x");
    let e = single(&h, &g);
    assert_eq!(e.node, "c");
    assert_eq!(e.place, Place::Output("out".into()));
    assert_eq!(
        e.problem,
        Problem::MissingNode {
            missing: "nowhere".into()
        }
    );
}

#[test]
fn link_to_a_missing_port_lists_the_ports_there_are() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    node(&mut g, "adder", "Add", &[]);
    link(&mut g, "c", "out", "adder", "a");
    link(&mut g, "c", "out", "adder", "b");
    link(&mut g, "c", "out", "adder", "c");
    let e = single(&h, &g);
    assert_eq!(e.node, "adder");
    assert_eq!(e.place, Place::Input("c".into()));
    assert_eq!(
        e.problem,
        Problem::MissingPort {
            node_type: "Add".into(),
            available: vec!["a".into(), "b".into(), "bias".into()],
        }
    );
}

#[test]
fn link_from_a_missing_output_port_is_reported_at_the_source() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "result", "sink", "value");
    let e = single(&h, &g);
    assert_eq!(e.node, "c");
    assert_eq!(e.place, Place::Output("result".into()));
    assert!(matches!(e.problem, Problem::MissingPort { .. }), "{e:?}");
}

#[test]
fn cycle_is_reported_naming_its_nodes_from_the_first_in_the_file() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "first", "Inc", &[]);
    node(&mut g, "second", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "second", "out", "first", "x");
    link(&mut g, "first", "out", "second", "x");
    link(&mut g, "second", "out", "sink", "value");
    let e = single(&h, &g);
    assert_eq!(e.node, "first");
    assert_eq!(e.place, Place::Node);
    assert_eq!(
        e.problem,
        Problem::Cycle {
            nodes: vec!["first".into(), "second".into()]
        }
    );
}

#[test]
fn self_loop_is_a_cycle() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "loop", "Inc", &[]);
    link(&mut g, "loop", "out", "loop", "x");
    let e = single(&h, &g);
    assert_eq!(e.node, "loop");
    assert!(matches!(e.problem, Problem::Cycle { .. }), "{e:?}");
}

#[test]
fn param_of_the_wrong_type_names_the_param() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::string("seven"))]);
    let e = single(&h, &g);
    assert_eq!(e.node, "c");
    assert_eq!(e.place, Place::Param("value".into()));
    assert!(matches!(e.problem, Problem::ParamType { .. }), "{e:?}");
    assert!(e.to_string().contains("param 'value'"), "{e}");
}

#[test]
fn param_out_of_range_names_the_param_and_the_range() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(5000))]);
    let e = single(&h, &g);
    assert_eq!(e.node, "c");
    assert_eq!(e.place, Place::Param("value".into()));
    assert!(matches!(e.problem, Problem::ParamRange { .. }), "{e:?}");
    assert!(e.to_string().contains("0..=1000"), "{e}");
}

#[test]
fn choice_param_outside_its_options_is_a_range_problem() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "b", "Blob", &[("tier", Value::choice("disk"))]);
    let e = single(&h, &g);
    assert_eq!(e.place, Place::Param("tier".into()));
    assert!(matches!(e.problem, Problem::ParamRange { .. }), "{e:?}");
}

#[test]
fn unknown_param_is_reported() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("valeu", Value::Int(1))]);
    let e = single(&h, &g);
    assert_eq!(e.place, Place::Param("valeu".into()));
    assert_eq!(
        e.problem,
        Problem::UnknownParam {
            node_type: "Const".into()
        }
    );
}

#[test]
fn two_links_into_one_input_are_reported() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c1", "Const", &[]);
    node(&mut g, "c2", "Const", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c1", "out", "sink", "value");
    link(&mut g, "c2", "out", "sink", "value");
    let e = single(&h, &g);
    assert_eq!(e.node, "sink");
    assert_eq!(e.problem, Problem::MultipleLinks { count: 2 });
}

#[test]
fn every_problem_is_reported_at_once() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "mystery", "Nope", &[]);
    node(&mut g, "c", "Const", &[("value", Value::Int(-1))]);
    node(&mut g, "s", "Const", &[("value", Value::Bool(true))]);
    node(&mut g, "adder", "Add", &[]);
    node(&mut g, "blob", "Blob", &[]);
    node(&mut g, "sink", "Sink", &[]);
    node(&mut g, "x", "Inc", &[]);
    node(&mut g, "y", "Inc", &[]);
    link(&mut g, "c", "out", "adder", "a"); // adder.b left unlinked
    link(&mut g, "blob", "blob", "sink", "value"); // Latent into Int
    link(&mut g, "ghost", "out", "x", "x"); // no such node
    link(&mut g, "c", "out", "y", "nope"); // no such port
    link(&mut g, "y", "out", "y", "x"); // cycle

    let errors = problems(&h, &g);
    let found: Vec<(&str, &Place, &str)> = errors
        .iter()
        .map(|e| (e.node.as_str(), &e.place, kind(&e.problem)))
        .collect();
    let expected = [
        ("mystery", Place::Node, "UnknownNodeType"),
        ("c", Place::Param("value".into()), "ParamRange"),
        ("s", Place::Param("value".into()), "ParamType"),
        ("adder", Place::Input("b".into()), "MissingInput"),
        ("sink", Place::Input("value".into()), "TypeMismatch"),
        ("x", Place::Input("x".into()), "MissingNode"),
        ("y", Place::Input("nope".into()), "MissingPort"),
        ("y", Place::Node, "Cycle"),
    ];
    for (node, place, problem) in &expected {
        assert!(
            found.contains(&(node, place, problem)),
            "{problem} at {node}{place} not reported; got {found:#?}"
        );
    }
    for e in &errors {
        assert!(e.to_string().contains(&format!("node '{}'", e.node)), "{e}");
    }

    // The engine refuses the graph with the same list, and runs nothing.
    let mut engine = h.engine();
    let err = engine
        .run(&g, &RunOptions::default(), &veetance_core::NullSink)
        .unwrap_err();
    match &err {
        RunError::Invalid(list) => assert_eq!(list, &errors),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(err.is_invalid_input());
    assert!(
        h.log.take().is_empty(),
        "nothing may run on an invalid graph"
    );
}

#[test]
fn invalid_graph_runs_nothing_even_where_it_is_valid() {
    let h = Harness::new();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[]);
    node(&mut g, "good", "Sink", &[]);
    node(&mut g, "bad", "Sink", &[]);
    link(&mut g, "c", "out", "good", "value");
    let mut engine = h.engine();
    let err = engine
        .run(&g, &RunOptions::default(), &veetance_core::NullSink)
        .unwrap_err();
    assert!(matches!(err, RunError::Invalid(ref e) if e.len() == 1 && e[0].node == "bad"));
    assert!(err.to_string().contains("node 'bad'"), "{err}");
    assert!(h.log.take().is_empty());
}

fn kind(p: &Problem) -> &'static str {
    match p {
        Problem::UnknownNodeType { .. } => "UnknownNodeType",
        Problem::MissingInput { .. } => "MissingInput",
        Problem::TypeMismatch { .. } => "TypeMismatch",
        Problem::MissingNode { .. } => "MissingNode",
        Problem::MissingPort { .. } => "MissingPort",
        Problem::NotLinkable => "NotLinkable",
        Problem::MultipleLinks { .. } => "MultipleLinks",
        Problem::Cycle { .. } => "Cycle",
        Problem::UnknownParam { .. } => "UnknownParam",
        Problem::ParamType { .. } => "ParamType",
        Problem::ParamRange { .. } => "ParamRange",
        Problem::Invalid { .. } => "Invalid",
    }
}
