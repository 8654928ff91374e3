//! A misbehaving node fails its run with `RunError::NodeFailed` naming it; no panic escapes
//! `Engine::run`, nothing wrong is cached, and the engine keeps working.

mod common;

use common::{ids, link, node, Fault, Harness};
use veetance_core::{Engine, Graph, NullSink, RunError, RunOptions, Value};

/// `c -> guard (Faulty) -> sink`.
fn guarded() -> Graph {
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(6))]);
    node(&mut g, "guard", "Faulty", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "guard", "x");
    link(&mut g, "guard", "out", "sink", "value");
    g
}

/// Runs `guarded()` with `fault`, expecting `guard` to fail; returns the failure message.
fn fails_at_guard(h: &Harness, engine: &mut Engine, fault: Fault) -> String {
    h.fault.set(fault);
    let err = engine
        .run(&guarded(), &RunOptions::default(), &NullSink)
        .expect_err("the run fails");
    assert!(!err.is_invalid_input(), "{err}");
    match err {
        RunError::NodeFailed {
            node,
            node_type,
            message,
        } => {
            assert_eq!(node, "guard");
            assert_eq!(node_type, "Faulty");
            message
        }
        other => panic!("expected NodeFailed, got {other:?}"),
    }
}

/// After a failure, fixing the node lets the next run finish, executing the node again (its bad
/// result was not cached) and reading what ran before it from the cache.
fn engine_recovers(h: &Harness, engine: &mut Engine) {
    h.fault.set(Fault::None);
    h.log.take();
    let report = engine
        .run(&guarded(), &RunOptions::default(), &NullSink)
        .expect("the engine keeps working");
    assert_eq!(report.executed, ids(&["guard", "sink"]));
    assert_eq!(report.cached, ids(&["c"]));
    assert_eq!(report.outputs["sink"][0].as_int(), Some(6));
}

#[test]
fn panicking_node_fails_the_run_and_the_engine_keeps_working() {
    let h = Harness::new();
    let mut engine = h.engine();
    let message = fails_at_guard(&h, &mut engine, Fault::Panic);
    assert!(message.contains("panicked on purpose"), "{message}");
    assert_eq!(h.log.take(), ids(&["c", "guard"]), "nothing runs after it");
    engine_recovers(&h, &mut engine);
}

#[test]
fn node_returning_an_error_mid_run_fails_the_run_and_the_next_run_works() {
    // What a device out-of-memory in the middle of a sampler looks like to the engine when it is
    // not recognised as one: an error returned from `execute` after upstream nodes ran.
    let h = Harness::new();
    let mut engine = h.engine();
    let message = fails_at_guard(&h, &mut engine, Fault::Error);
    assert!(message.contains("failed on purpose"), "{message}");
    assert_eq!(h.log.take(), ids(&["c", "guard"]), "nothing runs after it");
    engine_recovers(&h, &mut engine);
}

#[test]
fn node_returning_too_many_outputs_is_a_node_failure() {
    let h = Harness::new();
    let mut engine = h.engine();
    let message = fails_at_guard(&h, &mut engine, Fault::TooManyOutputs);
    assert!(
        message.contains("returned 2 outputs, declares 1"),
        "{message}"
    );
    engine_recovers(&h, &mut engine);
}

#[test]
fn node_returning_the_wrong_output_type_is_a_node_failure() {
    let h = Harness::new();
    let mut engine = h.engine();
    let message = fails_at_guard(&h, &mut engine, Fault::WrongOutputType);
    assert!(
        message.contains("output 'out' is Float, declared Int"),
        "{message}"
    );
    engine_recovers(&h, &mut engine);
}

#[test]
fn panicking_check_is_a_validation_problem_not_a_panic() {
    let h = Harness::new();
    let mut engine = h.engine();
    h.fault.set(Fault::PanicInCheck);
    let err = engine
        .run(&guarded(), &RunOptions::default(), &NullSink)
        .expect_err("the run fails");
    match &err {
        RunError::Invalid(errors) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].node, "guard");
            assert!(
                errors[0].to_string().contains("panicked on purpose"),
                "{err}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(h.log.take().is_empty());
    h.fault.set(Fault::None);
    engine
        .run(&guarded(), &RunOptions::default(), &NullSink)
        .expect("the engine keeps working");
}

#[test]
fn panicking_freshness_is_a_node_failure() {
    let h = Harness::new();
    let mut engine = h.engine();
    let message = fails_at_guard(&h, &mut engine, Fault::PanicInFreshness);
    assert!(message.contains("panicked on purpose"), "{message}");
    assert!(
        h.log.take().is_empty(),
        "it fails while planning, before anything runs"
    );
    h.fault.set(Fault::None);
    let report = engine
        .run(&guarded(), &RunOptions::default(), &NullSink)
        .expect("the engine keeps working");
    assert_eq!(report.executed, ids(&["c", "guard", "sink"]));
}
