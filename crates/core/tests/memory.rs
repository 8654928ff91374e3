//! Device memory on a simulated device: telemetry events, the tiered cache's eviction order,
//! offload and reload without changing a bit, out-of-memory errors that name the node and leave
//! the engine working, and node peaks learned on one run and used on the next.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ids, link, node, FakeTensor, SimHarness, SimTensor};
use veetance_core::cache::{Eviction, OutputCache};
use veetance_core::{
    Budgets, CacheKey, CollectSink, Engine, Event, Graph, MemBytes, MemoryPoint, NullSink, Object,
    PortType, RunError, RunOptions, RunReport, SimulatedDevice, Value,
};

fn sim_op(g: &mut Graph, id: &str, out: i64, scratch: i64, seed: i64) {
    node(
        g,
        id,
        "SimOp",
        &[
            ("out_bytes", Value::Int(out)),
            ("scratch_bytes", Value::Int(scratch)),
            ("seed", Value::Int(seed)),
        ],
    );
}

fn targets(ids: &[&str]) -> RunOptions {
    RunOptions {
        targets: Some(ids.iter().map(|s| s.to_string()).collect()),
        ..RunOptions::default()
    }
}

/// The bytes of `node`'s output in a report.
fn bytes_of(report: &RunReport, node: &str) -> Vec<u8> {
    report.outputs[node][0]
        .as_object()
        .and_then(|o| o.downcast::<SimTensor>())
        .expect("a SimTensor")
        .data
        .to_vec()
}

/// `a` and `b` (300 bytes each), `c` (500 bytes of scratch, 100 out, independent of them) and
/// `d = f(a, b)` (100 out). On an 800-byte device, `a` and `b` must leave the device for `c`
/// to run (its peak is 600) and come back for `d`. On a fresh engine the only guess for `c` is
/// the largest peak seen for its type (300, from `a`), so `c` runs out of memory once.
fn squeeze(seed: i64) -> Graph {
    let mut g = Graph::new();
    sim_op(&mut g, "a", 300, 0, seed);
    sim_op(&mut g, "b", 300, 0, seed + 1);
    sim_op(&mut g, "c", 100, 500, seed + 2);
    sim_op(&mut g, "d", 100, 0, seed + 3);
    link(&mut g, "a", "out", "d", "a");
    link(&mut g, "b", "out", "d", "b");
    g
}

#[test]
fn offload_and_reload_give_bit_identical_outputs() {
    // Plenty of room: nothing moves.
    let roomy = SimHarness::new(1 << 20);
    let mut engine = roomy.engine();
    let report = engine
        .run(&squeeze(1), &targets(&["c", "d"]), &NullSink)
        .unwrap();
    assert_eq!(report.memory.offloaded, 0);
    assert_eq!(report.memory.oom_retries, 0);
    let (c_roomy, d_roomy) = (bytes_of(&report, "c"), bytes_of(&report, "d"));

    // 800 bytes: `c` runs out of memory, `a` and `b` go to host memory, `c` is retried, then
    // `a` and `b` come back for `d`.
    let tight = SimHarness::new(800);
    let mut engine = tight.engine();
    let sink = CollectSink::default();
    let report = engine
        .run(&squeeze(1), &targets(&["c", "d"]), &sink)
        .unwrap();
    assert_eq!(report.executed, ids(&["a", "b", "c", "d"]));
    assert_eq!(tight.log.take(), ids(&["a", "b", "c", "c", "d"]));
    assert_eq!(report.memory.oom_retries, 1);
    assert!(report.memory.offloaded >= 2, "{:?}", report.memory);
    assert_eq!(report.memory.reloaded, 2, "{:?}", report.memory);
    assert_eq!(bytes_of(&report, "c"), c_roomy);
    assert_eq!(bytes_of(&report, "d"), d_roomy);
    assert!(report.memory.device_peak_used.unwrap() <= 800);
    let warned = sink.take().into_iter().any(|e| {
        matches!(e, Event::Warning { node: Some(n), message } if n == "c" && message.contains("retrying once"))
    });
    assert!(warned, "the retry is reported as a warning on the node");
    assert!(engine.cache().stats().offloads >= 2 && engine.cache().stats().reloads >= 2);
}

#[test]
fn a_node_that_cannot_fit_fails_naming_node_needed_and_free_then_the_next_run_works() {
    let h = SimHarness::new(1000);
    let mut engine = h.engine();
    let mut g = Graph::new();
    sim_op(&mut g, "a", 300, 0, 1);
    sim_op(&mut g, "big", 10, 2000, 2);
    link(&mut g, "a", "out", "big", "a");

    let err = engine.run(&g, &targets(&["big"]), &NullSink).unwrap_err();
    match &err {
        RunError::OutOfMemory {
            node,
            node_type,
            needed,
            free,
            ..
        } => {
            assert_eq!(node, "big");
            assert_eq!(node_type, "SimOp");
            assert_eq!(*needed, Some(2000));
            // `a` is big's input: it stays on the device, the rest is free.
            assert_eq!(*free, Some(700));
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("node 'big'") && text.contains("1.95 KiB") && text.contains("700 B"),
        "{text}"
    );
    assert!(!err.is_invalid_input());
    assert_eq!(
        h.log.take(),
        ids(&["a", "big", "big"]),
        "retried exactly once"
    );

    // The engine and its cache keep working: `a` is served, `big` fits once it is smaller.
    let mut fixed = Graph::new();
    sim_op(&mut fixed, "a", 300, 0, 1);
    sim_op(&mut fixed, "big", 10, 500, 2);
    link(&mut fixed, "a", "out", "big", "a");
    let report = engine.run(&fixed, &targets(&["big"]), &NullSink).unwrap();
    assert_eq!(report.executed, ids(&["big"]));
    assert_eq!(report.cached, ids(&["a"]));
}

#[test]
fn candle_style_oom_text_is_recognised_as_out_of_memory() {
    let h = SimHarness::new(1000);
    let mut engine = h.engine();
    let mut g = Graph::new();
    node(
        &mut g,
        "big",
        "SimOp",
        &[
            ("scratch_bytes", Value::Int(5000)),
            ("oom_as_text", Value::Bool(true)),
        ],
    );
    let err = engine.run(&g, &targets(&["big"]), &NullSink).unwrap_err();
    match &err {
        RunError::OutOfMemory {
            node,
            needed,
            free,
            message,
            ..
        } => {
            assert_eq!(node, "big");
            assert_eq!(*needed, None, "candle's error does not say how much");
            assert_eq!(*free, Some(1000));
            assert!(message.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{message}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

#[test]
fn peaks_are_learned_on_the_first_run_and_make_room_on_the_second() {
    let h = SimHarness::new(800);
    let mut engine = h.engine();
    assert_eq!(engine.learned_peak("SimOp"), None);

    let first = engine
        .run(&squeeze(1), &targets(&["c", "d"]), &NullSink)
        .unwrap();
    assert_eq!(
        first.memory.oom_retries, 1,
        "nothing known yet: c runs out once"
    );
    // c's peak: its scratch and its output, alive together.
    assert_eq!(engine.learned_peak("SimOp"), Some(600));
    let c_peak = first
        .memory
        .node_peaks
        .iter()
        .find(|(n, _)| n == "c")
        .unwrap()
        .1;
    assert_eq!(c_peak, 600);
    drop(first); // its outputs hold device memory
    h.rooms.take();

    // New seeds: every node runs again (new cache keys), with the same shapes. The engine now
    // makes room for each node's peak before it runs, so nothing runs out of memory.
    let second = engine
        .run(&squeeze(7), &targets(&["c", "d"]), &NullSink)
        .unwrap();
    assert_eq!(second.executed, ids(&["a", "b", "c", "d"]));
    assert_eq!(second.memory.oom_retries, 0, "{:?}", second.memory);
    assert!(second.memory.offloaded > 0);
    let rooms = h.rooms.take();
    let c_room = rooms.iter().find(|(n, _)| n == "c").unwrap().1;
    assert!(
        c_room.unwrap() >= 600,
        "c was given room for its peak: {rooms:?}"
    );
}

#[test]
fn memory_events_come_at_start_after_each_executed_node_and_at_the_end() {
    let h = SimHarness::new(10_000);
    let mut engine = h.engine();
    let sink = CollectSink::default();
    engine
        .run(&squeeze(1), &targets(&["c", "d"]), &sink)
        .unwrap();
    let readings: Vec<_> = sink
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::Memory {
                at,
                node,
                device_total,
                device_free,
                node_peak,
                process_rss,
                cache_device,
                ..
            } => Some((
                at,
                node,
                device_total,
                device_free,
                node_peak,
                process_rss,
                cache_device,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(readings.len(), 6, "start, four nodes, end");
    assert_eq!(readings[0].0, MemoryPoint::RunStarted);
    assert_eq!(readings[5].0, MemoryPoint::RunFinished);
    let c = readings
        .iter()
        .find(|r| r.1.as_deref() == Some("c"))
        .unwrap();
    assert_eq!(c.0, MemoryPoint::NodeFinished);
    assert_eq!(c.2, Some(10_000));
    assert_eq!(c.4, Some(600), "c's peak: scratch and output");
    let end = &readings[5];
    assert_eq!(end.6, 800, "a, b, c, d cached on the device");
    assert_eq!(end.3, Some(10_000 - 800));
    if cfg!(target_os = "linux") {
        assert!(end.5.is_some_and(|rss| rss > 0));
    }
}

#[test]
fn without_a_probe_the_room_is_what_the_device_budget_leaves() {
    let h = SimHarness::new(1 << 20);
    let mut engine = Engine::new(
        h.registry.clone(),
        Budgets {
            device: Some(1000),
            host: None,
        },
    );
    let mut g = Graph::new();
    sim_op(&mut g, "a", 300, 0, 1);
    sim_op(&mut g, "b", 100, 0, 2);
    link(&mut g, "a", "out", "b", "a");
    engine.run(&g, &targets(&["b"]), &NullSink).unwrap();
    assert_eq!(
        h.rooms.take(),
        vec![("a".to_string(), Some(1000)), ("b".to_string(), Some(700))]
    );
    // Learned without a probe: the output's own device bytes, a lower bound.
    assert_eq!(engine.learned_peak("SimOp"), Some(300));
}

/// An engine over `h`'s device that keeps to a device budget.
fn budgeted(h: &SimHarness, device: u64) -> Engine {
    Engine::new(
        h.registry.clone(),
        Budgets {
            device: Some(device),
            host: None,
        },
    )
    .with_device_probe(h.device.clone())
}

#[test]
fn the_budget_counts_device_memory_the_cache_does_not_hold() {
    // 200 bytes in use that no value accounts for (a CUDA context, library workspaces): the
    // driver reports them, and the budget covers them.
    let h = SimHarness::new(10_000);
    let _context = h.device.alloc(200).unwrap();
    let mut engine = budgeted(&h, 1000);
    let mut g = Graph::new();
    sim_op(&mut g, "a", 300, 0, 1);
    sim_op(&mut g, "b", 100, 0, 2);
    link(&mut g, "a", "out", "b", "a");
    let report = engine.run(&g, &targets(&["b"]), &NullSink).unwrap();
    assert_eq!(
        h.rooms.take(),
        vec![("a".to_string(), Some(800)), ("b".to_string(), Some(500))]
    );
    assert!(report.memory.device_peak_used.unwrap() <= 1000);
}

#[test]
fn memory_the_allocator_pools_is_released_between_nodes() {
    // `a` uses 600 bytes of scratch. A pooling allocator keeps them after `a` ends; the engine
    // releases them before `b`, so `b` is offered the budget less `a`'s output, not less the
    // pool's high-water mark.
    let h = SimHarness::pooled(10_000);
    let mut engine = budgeted(&h, 1000);
    let mut g = Graph::new();
    sim_op(&mut g, "a", 100, 600, 1);
    sim_op(&mut g, "b", 100, 0, 2);
    link(&mut g, "a", "out", "b", "a");
    engine.run(&g, &targets(&["b"]), &NullSink).unwrap();
    assert_eq!(
        h.rooms.take(),
        vec![("a".to_string(), Some(1000)), ("b".to_string(), Some(900))]
    );
    assert_eq!(h.device.held(), 0, "released after the last node too");
}

/// `x` (300 bytes, on the device, cached) and `weights` (900 bytes kept in host memory, like a
/// model that did not fit when loaded); `use` copies the weights onto the device while it runs.
fn weights_graph(seed: i64) -> Graph {
    let mut g = Graph::new();
    sim_op(&mut g, "x", 300, 0, 1);
    node(
        &mut g,
        "weights",
        "SimOp",
        &[
            ("out_bytes", Value::Int(900)),
            ("host_out", Value::Bool(true)),
            ("seed", Value::Int(2)),
        ],
    );
    sim_op(&mut g, "use", 10, 0, seed);
    link(&mut g, "weights", "out", "use", "a");
    g
}

#[test]
fn room_is_made_for_host_weights_a_node_will_place_before_its_first_run() {
    let h = SimHarness::new(10_000);
    let mut engine = budgeted(&h, 1000);
    let g = weights_graph(3);
    engine.run(&g, &targets(&["x"]), &NullSink).unwrap();
    // `use` has never run, so it has no measured peak of its own (the largest of its type is
    // x's 300); what it wants on the device (the 900 bytes of weights) moves `x` to host memory
    // first, and the run stays within the budget.
    let report = engine.run(&g, &targets(&["use"]), &NullSink).unwrap();
    assert_eq!(report.memory.oom_retries, 0, "{:?}", report.memory);
    assert_eq!(report.memory.offloaded, 1, "{:?}", report.memory);
    let room = h
        .rooms
        .take()
        .into_iter()
        .find(|(n, _)| n == "use")
        .unwrap()
        .1;
    assert!(room.unwrap() >= 900, "{room:?}");
    assert!(report.memory.device_peak_used.unwrap() <= 1000);
}

/// `m`: 700 bytes on the device that its consumer can use from host memory (a model whose
/// blocks stream); `use` declares 500 bytes of working memory.
fn streaming_graph() -> Graph {
    let mut g = Graph::new();
    node(
        &mut g,
        "m",
        "SimOp",
        &[
            ("out_bytes", Value::Int(700)),
            ("streams", Value::Bool(true)),
            ("seed", Value::Int(5)),
        ],
    );
    node(
        &mut g,
        "use",
        "SimOp",
        &[
            ("out_bytes", Value::Int(10)),
            ("scratch_bytes", Value::Int(500)),
            ("declare", Value::Bool(true)),
            ("seed", Value::Int(6)),
        ],
    );
    link(&mut g, "m", "out", "use", "a");
    g
}

#[test]
fn an_input_the_node_can_stream_leaves_the_device_when_its_working_memory_needs_the_room() {
    let roomy = SimHarness::new(10_000);
    let expected = bytes_of(
        &budgeted(&roomy, 10_000)
            .run(&streaming_graph(), &targets(&["use"]), &NullSink)
            .unwrap(),
        "use",
    );

    // 1000 bytes: `m` (700) and `use`'s declared 500 cannot both be on the device. `m` is
    // `use`'s input but can be used from host memory, so it moves there, and stays there.
    let h = SimHarness::new(10_000);
    let mut engine = budgeted(&h, 1000);
    let report = engine
        .run(&streaming_graph(), &targets(&["use"]), &NullSink)
        .unwrap();
    assert_eq!(report.memory.oom_retries, 0, "{:?}", report.memory);
    assert_eq!(report.memory.offloaded, 1, "{:?}", report.memory);
    assert_eq!(report.memory.reloaded, 0, "{:?}", report.memory);
    assert!(
        report.memory.device_peak_used.unwrap() <= 1000,
        "{:?}",
        report.memory
    );
    let room = h
        .rooms
        .take()
        .into_iter()
        .find(|(n, _)| n == "use")
        .unwrap()
        .1;
    assert!(room.unwrap() >= 500, "{room:?}");
    assert_eq!(bytes_of(&report, "use"), expected);
}

fn key(n: u8) -> CacheKey {
    CacheKey([n; 32])
}

fn sim_value(device: &Arc<SimulatedDevice>, bytes: usize, fill: u8) -> Arc<[Value]> {
    let t = SimTensor::on_device(device, vec![fill; bytes]).unwrap();
    vec![Value::Object(Object::new(PortType::Latent, t))].into()
}

fn order_of(moves: Vec<Vec<Eviction>>) -> Vec<CacheKey> {
    moves.into_iter().flatten().map(|e| e.key).collect()
}

#[test]
fn eviction_order_follows_the_score() {
    let device = SimulatedDevice::new(1 << 20);
    let mut cache = OutputCache::new(Budgets::default());
    // score = bytes × max(idle, 1 s) / max(compute, 10 ms); all were used just now.
    let ms = Duration::from_millis;
    cache.insert(key(1), "BigSlow", sim_value(&device, 400, 1), ms(1000)); // 400
    cache.insert(key(2), "SmallCheap", sim_value(&device, 100, 2), ms(1)); // 10 000
    cache.insert(key(3), "BigCheap", sim_value(&device, 400, 3), ms(10)); // 40 000
    cache.insert(key(4), "SmallSlow", sim_value(&device, 100, 4), ms(5000)); // 20
    let moves: Vec<Vec<Eviction>> = (0..5).map(|_| cache.demote_best(&[])).collect();
    assert!(moves[4].is_empty(), "nothing left on the device");
    assert_eq!(
        order_of(moves.clone()),
        vec![key(3), key(2), key(1), key(4)]
    );
    // They moved to host memory (the payloads can move), bytes and contents intact.
    assert!(moves.iter().flatten().all(|e| e.offloaded.is_some()));
    assert_eq!(cache.usage(), MemBytes::host(1000));
    assert_eq!(device.used(), 0, "the device copies were freed");
    assert!(cache.is_offloaded(&key(3)));
    let back = cache.get(&key(3)).unwrap();
    let t = back[0]
        .as_object()
        .unwrap()
        .downcast::<SimTensor>()
        .unwrap();
    assert!(!t.is_on_device());
    assert_eq!(&*t.data, &[3u8; 400][..]);
}

#[test]
fn pinned_values_stay_and_unmovable_values_are_dropped() {
    let device = SimulatedDevice::new(1 << 20);
    let mut cache = OutputCache::new(Budgets::default());
    let fake: Arc<[Value]> = vec![Value::Object(Object::new(
        PortType::Latent,
        FakeTensor {
            tag: 0,
            bytes: MemBytes::device(500),
        },
    ))]
    .into();
    cache.insert(key(1), "Fake", fake, Duration::ZERO);
    cache.insert(key(2), "Sim", sim_value(&device, 500, 2), Duration::ZERO);
    // The pinned entry is never chosen; the other one cannot move, so it is dropped.
    let moved = cache.demote_best(&[key(2)]);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].key, key(1));
    assert!(moved[0].offloaded.is_none());
    assert!(!cache.contains(&key(1)));
    assert!(cache.demote_best(&[key(2)]).is_empty());
    assert_eq!(cache.stats().evictions, 1);
}

#[test]
fn an_offloaded_value_that_does_not_fit_the_host_budget_is_dropped() {
    let device = SimulatedDevice::new(1 << 20);
    let mut cache = OutputCache::new(Budgets {
        device: None,
        host: Some(600),
    });
    cache.insert(key(1), "A", sim_value(&device, 400, 1), Duration::ZERO);
    cache.insert(key(2), "B", sim_value(&device, 400, 2), Duration::ZERO);
    let first = cache.demote_best(&[]);
    assert_eq!(first.len(), 1);
    assert!(first[0].offloaded.is_some());
    // The second one fits the host tier only if the first leaves it: the score decides, and
    // among equal scores the least recently used (the first) goes.
    let second = cache.demote_best(&[]);
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(
        second[0].offloaded.is_none(),
        "a host entry was dropped for it"
    );
    assert!(second[1].offloaded.is_some());
    assert!(cache.usage().host <= 600);
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_device_budget_moves_values_to_host_memory_instead_of_dropping_them() {
    let device = SimulatedDevice::new(1 << 20);
    let mut cache = OutputCache::new(Budgets {
        device: Some(500),
        host: None,
    });
    cache.insert(key(1), "A", sim_value(&device, 300, 1), Duration::ZERO);
    let moved = cache.insert(key(2), "B", sim_value(&device, 300, 2), Duration::ZERO);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].key, key(1));
    assert!(moved[0].offloaded.is_some());
    assert_eq!(
        cache.usage(),
        MemBytes {
            device: 300,
            host: 300
        }
    );
    assert_eq!(cache.len(), 2);
    // Brought back by the engine, the entry counts on the device again, and the budget moves
    // the other one down.
    let back = {
        let host = cache.get(&key(1)).unwrap();
        let t = host[0].as_object().unwrap();
        let p = t.payload.to_device().unwrap().unwrap();
        Arc::from(vec![Value::Object(Object {
            ty: t.ty,
            payload: p,
        })])
    };
    let moved = cache.promote(&key(1), back, &[]);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].key, key(2));
    assert!(!cache.is_offloaded(&key(1)) && cache.is_offloaded(&key(2)));
    assert_eq!(cache.stats().reloads, 1);
}
