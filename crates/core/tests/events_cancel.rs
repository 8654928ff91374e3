//! Events of a run, their JSON-lines form, and cooperative cancellation between and inside nodes.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{ids, link, node, Fault, Harness};
use veetance_core::{
    CancelToken, CollectSink, Event, Graph, Image, NullSink, RunError, RunOptions, Value,
};

/// `c -> guard (Faulty) -> inc -> sink`.
fn guarded_chain() -> Graph {
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "guard", "Faulty", &[]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "guard", "x");
    link(&mut g, "guard", "out", "inc", "x");
    link(&mut g, "inc", "out", "sink", "value");
    g
}

fn with_token(cancel: &CancelToken) -> RunOptions {
    RunOptions {
        cancel: cancel.clone(),
        ..RunOptions::default()
    }
}

#[test]
fn cancellation_mid_run_stops_between_nodes() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = guarded_chain();
    h.fault.set(Fault::CancelToken);
    let cancel = CancelToken::new();
    let err = engine.run(&g, &with_token(&cancel), &NullSink).unwrap_err();
    match &err {
        RunError::Cancelled { node } => assert_eq!(node.as_deref(), Some("inc")),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(!err.is_invalid_input());
    assert_eq!(
        h.log.take(),
        ids(&["c", "guard"]),
        "later nodes must not run"
    );

    // A new run resumes from what completed: `guard` finished, so it and `c` are not re-run.
    h.fault.set(Fault::None);
    let report = engine
        .run(&g, &with_token(&CancelToken::new()), &NullSink)
        .unwrap();
    assert_eq!(report.executed, ids(&["inc", "sink"]));
    // `guard` is served; `c` is not needed, but its cached output is up to date.
    assert_eq!(report.cached, ids(&["guard"]));
    assert_eq!(report.up_to_date, 1); // `c`
    assert_eq!(report.outputs["sink"][0].as_int(), Some(2));
}

#[test]
fn cancelling_from_another_thread_stops_a_long_node() {
    let h = Harness::new();
    let mut engine = h.engine();
    let g = guarded_chain();
    h.fault.set(Fault::WaitForCancel);
    let cancel = CancelToken::new();
    let steps = h.fault.steps.clone();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while steps.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            cancel.cancel();
        })
    };
    let err = engine.run(&g, &with_token(&cancel), &NullSink).unwrap_err();
    canceller.join().unwrap();
    assert!(
        matches!(&err, RunError::Cancelled { node } if node.as_deref() == Some("guard")),
        "{err:?}"
    );
    assert!(h.fault.steps.load(Ordering::SeqCst) >= 3);
    assert_eq!(h.log.take(), ids(&["c", "guard"]));

    // The cancelled node left nothing in the cache; the node before it did.
    h.fault.set(Fault::None);
    let report = engine
        .run(&g, &with_token(&CancelToken::new()), &NullSink)
        .unwrap();
    assert_eq!(report.executed, ids(&["guard", "inc", "sink"]));
    assert_eq!(report.cached, ids(&["c"]));
}

#[test]
fn token_cancelled_before_the_run_executes_nothing() {
    let h = Harness::new();
    let mut engine = h.engine();
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = engine
        .run(&guarded_chain(), &with_token(&cancel), &NullSink)
        .unwrap_err();
    assert!(
        matches!(&err, RunError::Cancelled { node } if node.as_deref() == Some("c")),
        "{err:?}"
    );
    assert!(h.log.take().is_empty());
}

/// An event reduced to what a test compares: (kind, node, cached flag). Memory readings are left
/// out (tests/memory.rs checks them).
fn outline(events: &[Event]) -> Vec<(&'static str, String, bool)> {
    events
        .iter()
        .filter(|e| !matches!(e, Event::Memory { .. }))
        .map(|e| match e {
            Event::RunStarted { to_execute, .. } => ("run_started", to_execute.to_string(), false),
            Event::NodeStarted { node, .. } => ("node_started", node.clone(), false),
            Event::NodeFinished { node, cached, .. } => ("node_finished", node.clone(), *cached),
            Event::RunFinished { ok, .. } => ("run_finished", String::new(), *ok),
            Event::Error { node, .. } => ("error", node.clone().unwrap_or_default(), false),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

fn ev(kind: &'static str, node: &str, flag: bool) -> (&'static str, String, bool) {
    (kind, node.to_string(), flag)
}

#[test]
fn events_of_a_run_then_of_a_cached_rerun() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "inc", "Inc", &[]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "inc", "x");
    link(&mut g, "inc", "out", "sink", "value");
    let sink = CollectSink::default();

    engine.run(&g, &RunOptions::default(), &sink).unwrap();
    let events = sink.take();
    assert_eq!(
        outline(&events),
        vec![
            ev("run_started", "3", false),
            ev("node_started", "c", false),
            ev("node_finished", "c", false),
            ev("node_started", "inc", false),
            ev("node_finished", "inc", false),
            ev("node_started", "sink", false),
            ev("node_finished", "sink", false),
            ev("run_finished", "", true),
        ]
    );
    assert!(matches!(
        events[0],
        Event::RunStarted {
            run: 0,
            nodes: 3,
            to_execute: 3
        }
    ));
    assert!(matches!(
        events.last().unwrap(),
        Event::RunFinished {
            run: 0,
            ok: true,
            executed: 3,
            cached: 0,
            ..
        }
    ));

    engine.run(&g, &RunOptions::default(), &sink).unwrap();
    let events = sink.take();
    assert_eq!(
        outline(&events),
        vec![
            ev("run_started", "0", false),
            // Upstream nodes are not needed (the sink is cached), but their outputs are still in
            // the cache: they are reported as cached, in topological order.
            ev("node_finished", "c", true),
            ev("node_finished", "inc", true),
            ev("node_finished", "sink", true),
            ev("run_finished", "", true),
        ]
    );
    assert!(matches!(
        events.last().unwrap(),
        Event::RunFinished {
            run: 1,
            executed: 0,
            cached: 3,
            ..
        }
    ));
}

#[test]
fn a_failed_run_ends_with_an_error_event_naming_the_node() {
    let h = Harness::new();
    let mut engine = h.engine();
    h.fault.set(Fault::Panic);
    let sink = CollectSink::default();
    engine
        .run(&guarded_chain(), &RunOptions::default(), &sink)
        .unwrap_err();
    let events = sink.take();
    let outline = outline(&events);
    let tail = &outline[outline.len() - 2..];
    assert_eq!(
        tail,
        [ev("error", "guard", false), ev("run_finished", "", false)]
    );
}

#[test]
fn events_serialize_to_json_lines() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(&mut g, "c", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "sink", "value");
    let sink = CollectSink::default();
    engine.run(&g, &RunOptions::default(), &sink).unwrap();
    let mut events = sink.take();
    events.push(Event::Preview {
        node: "c".into(),
        width: 2,
        height: 1,
        image: Image::new(1, 1, 2, 3, vec![0.0; 6]).unwrap(),
    });

    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    for line in &lines {
        assert!(!line.contains('\n'), "one event per line: {line}");
    }
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tags: Vec<&str> = parsed
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        [
            "run_started",
            "memory",
            "node_started",
            "node_finished",
            "memory",
            "node_started",
            "node_finished",
            "memory",
            "memory",
            "run_finished",
            "preview"
        ]
    );
    assert_eq!(parsed[0]["to_execute"], 2);
    assert_eq!(parsed[1]["at"], "run_started");
    assert_eq!(parsed[3]["node"], "c");
    assert_eq!(parsed[3]["node_type"], "Const");
    assert_eq!(parsed[3]["cached"], false);
    assert!(parsed[3]["duration_ms"].is_number());
    assert_eq!(parsed[4]["at"], "node_finished");
    assert_eq!(parsed[4]["node"], "c");
    // No device probe: device fields are null, cache bytes are numbers.
    assert!(parsed[4]["device_free"].is_null());
    assert_eq!(parsed[4]["cache_device"], 0);
    assert_eq!(parsed[8]["at"], "run_finished");
    assert_eq!(parsed[9]["ok"], true);
    assert_eq!(parsed[9]["executed"], 2);
    // Preview pixels stay in-process.
    assert_eq!(parsed[10]["width"], 2);
    assert!(parsed[10].get("image").is_none());
}
