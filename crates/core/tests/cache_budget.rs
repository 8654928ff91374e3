//! Cache accounting: values report their bytes per tier, the cache keeps each tier within its
//! budget by evicting the least recently used values, and an evicted value is recomputed when it
//! is needed again.

mod common;

use std::sync::Arc;

use common::{ids, link, node, FakeTensor, Harness};
use veetance_core::{
    Budgets, Engine, Graph, Image, MemBytes, NullSink, Object, PortType, RunOptions, RunReport,
    Value,
};

fn run(engine: &mut Engine, g: &Graph) -> RunReport {
    engine
        .run(g, &RunOptions::default(), &NullSink)
        .expect("run succeeds")
}

/// Output `Blob` nodes `ids`, each `bytes` bytes in `tier`, tagged by position.
fn blobs(g: &mut Graph, ids: &[&str], bytes: i64, tier: &str) {
    for (i, id) in ids.iter().enumerate() {
        node(
            g,
            id,
            "Blob",
            &[
                ("bytes", Value::Int(bytes)),
                ("tag", Value::Int(i as i64)),
                ("tier", Value::choice(tier)),
            ],
        );
    }
}

fn tensor<'r>(report: &'r RunReport, node: &str) -> &'r FakeTensor {
    report.outputs[node][0]
        .as_object()
        .and_then(|o| o.downcast::<FakeTensor>())
        .expect("a FakeTensor")
}

#[test]
fn values_report_their_bytes_per_tier() {
    assert_eq!(Value::Int(3).mem_bytes(), MemBytes::ZERO);
    assert_eq!(Value::string("hello").mem_bytes(), MemBytes::host(5));
    let img = Image::new(1, 2, 2, 3, vec![0.5; 12]).unwrap();
    assert_eq!(Value::Image(img).mem_bytes(), MemBytes::host(12 * 4));
    let both = MemBytes {
        device: 1000,
        host: 24,
    };
    let obj = Object::new(
        PortType::Latent,
        FakeTensor {
            tag: 0,
            bytes: both,
        },
    );
    assert_eq!(Value::Object(obj).mem_bytes(), both);
}

#[test]
fn cache_usage_is_the_sum_of_what_it_holds() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    blobs(&mut g, &["h1", "h2"], 100, "host");
    blobs(&mut g, &["d1"], 700, "device");
    run(&mut engine, &g);
    assert_eq!(
        engine.cache().usage(),
        MemBytes {
            device: 700,
            host: 200
        }
    );
    assert_eq!(engine.cache().len(), 3);
}

#[test]
fn eviction_under_byte_budget_then_correct_recomputation() {
    let h = Harness::new();
    // Room for two of the three 100-byte values.
    let mut engine = h.engine_with(Budgets {
        device: None,
        host: Some(250),
    });
    let mut g = Graph::new();
    blobs(&mut g, &["b1", "b2", "b3"], 100, "host");

    let first = run(&mut engine, &g);
    assert_eq!(first.executed, ids(&["b1", "b2", "b3"]));
    assert_eq!(engine.cache().stats().evictions, 1);
    assert_eq!(engine.cache().usage().host, 200);
    assert_eq!(engine.cache().len(), 2);
    h.log.take();

    // b1 was the least recently used when b3 came in: exactly it is recomputed.
    let second = run(&mut engine, &g);
    assert_eq!(second.executed, ids(&["b1"]));
    assert_eq!(h.log.take(), ids(&["b1"]));
    assert_eq!(second.cached, ids(&["b2", "b3"]));
    for id in ["b1", "b2", "b3"] {
        assert_eq!(tensor(&first, id), tensor(&second, id), "{id} differs");
    }
    assert!(engine.cache().usage().host <= 250);
}

#[test]
fn device_budget_evicts_only_values_holding_device_bytes() {
    let h = Harness::new();
    let mut engine = h.engine_with(Budgets {
        device: Some(250),
        host: None,
    });
    let mut g = Graph::new();
    // The host value is the least recently used, but device pressure must not evict it.
    blobs(&mut g, &["host_blob"], 10_000, "host");
    blobs(&mut g, &["d1", "d2", "d3"], 100, "device");

    let first = run(&mut engine, &g);
    assert_eq!(first.executed, ids(&["host_blob", "d1", "d2", "d3"]));
    assert_eq!(
        engine.cache().usage(),
        MemBytes {
            device: 200,
            host: 10_000
        }
    );
    h.log.take();

    let second = run(&mut engine, &g);
    assert_eq!(second.executed, ids(&["d1"]));
    for id in ["host_blob", "d1", "d2", "d3"] {
        assert_eq!(tensor(&first, id), tensor(&second, id), "{id} differs");
    }
    assert!(engine.cache().usage().device <= 250);
}

#[test]
fn evicted_value_is_recomputed_only_when_a_run_needs_it() {
    let h = Harness::new();
    // Room for a single 100-byte string.
    let mut engine = h.engine_with(Budgets {
        device: None,
        host: Some(100),
    });
    // `second` evicts `first`; the Int chain holds no bytes and stays cached.
    let mut g = Graph::new();
    blobs(&mut g, &["first", "second"], 100, "host");
    node(&mut g, "c", "Const", &[("value", Value::Int(1))]);
    node(&mut g, "sink", "Sink", &[]);
    link(&mut g, "c", "out", "sink", "value");
    run(&mut engine, &g);
    h.log.take();

    // Only `sink` asked for: the evicted `first` is not recomputed because nothing needs it.
    let options = RunOptions {
        targets: Some(ids(&["sink"])),
        ..RunOptions::default()
    };
    let report = engine.run(&g, &options, &NullSink).unwrap();
    assert!(report.executed.is_empty(), "{:?}", report.executed);

    // Asked for it again, it is.
    let options = RunOptions {
        targets: Some(ids(&["first"])),
        ..RunOptions::default()
    };
    let report = engine.run(&g, &options, &NullSink).unwrap();
    assert_eq!(report.executed, ids(&["first"]));
}

#[test]
fn value_over_budget_is_returned_but_not_kept() {
    let h = Harness::new();
    let mut engine = h.engine_with(Budgets {
        device: Some(50),
        host: None,
    });
    let mut g = Graph::new();
    blobs(&mut g, &["huge"], 51, "device");
    for _ in 0..2 {
        let report = run(&mut engine, &g);
        assert_eq!(report.executed, ids(&["huge"]));
        assert_eq!(tensor(&report, "huge").bytes, MemBytes::device(51));
    }
    assert_eq!(engine.cache().stats().rejected, 2);
    assert!(engine.cache().is_empty());
}

#[test]
fn lowering_the_budget_between_runs_evicts_and_the_next_run_recomputes() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    blobs(&mut g, &["b1", "b2"], 100, "device");
    run(&mut engine, &g);
    let evicted = engine.cache_mut().set_budgets(Budgets {
        device: Some(100),
        host: None,
    });
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].node_type, "Blob");
    let report = run(&mut engine, &g);
    assert_eq!(report.executed.len(), 1);
    assert_eq!(engine.cache().usage().device, 100);
}

#[test]
fn cached_outputs_are_shared_not_copied() {
    let h = Harness::new();
    let mut engine = h.engine();
    let mut g = Graph::new();
    blobs(&mut g, &["b"], 1 << 30, "device");
    let first = run(&mut engine, &g);
    let second = run(&mut engine, &g);
    assert!(second.executed.is_empty());
    assert!(Arc::ptr_eq(&first.outputs["b"], &second.outputs["b"]));
}
