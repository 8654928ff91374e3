//! Test node types and helpers shared by the core's integration tests.
//!
//! Every node records its executions (by node id) in a shared [`Log`], so tests can assert on
//! exactly which nodes ran, in which order, independently of the engine's own report.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use veetance_core::{
    Budgets, Engine, ExecContext, Freshness, Graph, Link, MemBytes, NodeDef, NodeError,
    NodeRegistry, NodeSchema, ParamDef, Params, Payload, PortRef, PortType, RunEnv, Value,
};

/// Node ids in the order they executed, shared by every test node of a registry.
#[derive(Clone, Debug, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn record(&self, node: &str) {
        self.0.lock().unwrap().push(node.to_string());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// `Const`: an `Int` param `value` (0..=1000) to an `Int` output `out`.
pub struct Const {
    schema: NodeSchema,
    log: Log,
}

impl Const {
    pub fn new(log: Log) -> Self {
        Const {
            schema: NodeSchema::new("Const", "Constant", "test")
                .output("out", PortType::Int, "the value")
                .param(ParamDef::int("value", 0, 0, 1000, "the value")),
            log,
        }
    }
}

impl NodeDef for Const {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        Ok(vec![Value::Int(ctx.params.int("value")?)])
    }
}

/// `Add`: required `Int` inputs `a` and `b`, plus a linkable `Int` param `bias`; outputs
/// `a + b + bias` as `sum`.
pub struct Add {
    schema: NodeSchema,
    log: Log,
}

impl Add {
    pub fn new(log: Log) -> Self {
        Self::with_version(log, 1)
    }

    pub fn with_version(log: Log, version: u32) -> Self {
        Add {
            schema: NodeSchema::new("Add", "Add", "test")
                .version(version)
                .input("a", PortType::Int, "left")
                .input("b", PortType::Int, "right")
                .output("sum", PortType::Int, "a + b + bias")
                .param(ParamDef::int("bias", 0, -1000, 1000, "added to the sum")),
            log,
        }
    }
}

impl NodeDef for Add {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        let a = ctx.required("a")?.as_int().unwrap();
        let b = ctx.required("b")?.as_int().unwrap();
        Ok(vec![Value::Int(a + b + ctx.params.int("bias")?)])
    }
}

/// `Inc`: one `Int` input `x`, a `step` param; outputs `x + step`. For chains.
pub struct Inc {
    schema: NodeSchema,
    log: Log,
}

impl Inc {
    pub fn new(log: Log) -> Self {
        Inc {
            schema: NodeSchema::new("Inc", "Increment", "test")
                .input("x", PortType::Int, "input")
                .output("out", PortType::Int, "x + step")
                .param(ParamDef::int("step", 1, 0, 1000, "added")),
            log,
        }
    }
}

impl NodeDef for Inc {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        let x = ctx.required("x")?.as_int().unwrap();
        Ok(vec![Value::Int(x + ctx.params.int("step")?)])
    }
}

/// `Sink`: an output node taking any `Int` and passing it through (so its output shows in
/// `RunReport::outputs`).
pub struct Sink {
    schema: NodeSchema,
    log: Log,
}

impl Sink {
    pub fn new(log: Log) -> Self {
        Sink {
            schema: NodeSchema::new("Sink", "Sink", "test")
                .input("value", PortType::Int, "what to keep")
                .output("value", PortType::Int, "the same value")
                .output_node(),
            log,
        }
    }
}

impl NodeDef for Sink {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        Ok(vec![ctx.required("value")?.clone()])
    }
}

/// A payload holding `host` bytes in host memory and `device` bytes "on the device" (it only
/// reports them; nothing is allocated). `tag` distinguishes contents.
#[derive(Debug, PartialEq, Eq)]
pub struct FakeTensor {
    pub tag: i64,
    pub bytes: MemBytes,
}

impl Payload for FakeTensor {
    fn mem_bytes(&self) -> MemBytes {
        self.bytes
    }

    fn content_hash(&self) -> Option<[u8; 32]> {
        let mut h = blake3::Hasher::new();
        h.update(&self.tag.to_le_bytes());
        Some(*h.finalize().as_bytes())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `Blob`: an output node producing a `Latent` [`FakeTensor`] of `bytes` bytes in the tier
/// named by `tier` ("host" or "device"), tagged with `tag`.
pub struct Blob {
    schema: NodeSchema,
    log: Log,
}

impl Blob {
    pub fn new(log: Log) -> Self {
        Blob {
            schema: NodeSchema::new("Blob", "Blob", "test")
                .output("blob", PortType::Latent, "the payload")
                .param(ParamDef::int("bytes", 0, 0, 1 << 40, "size"))
                .param(ParamDef::int("tag", 0, 0, 1000, "content"))
                .param(ParamDef::choice(
                    "tier",
                    &["host", "device"],
                    "host",
                    "memory tier",
                ))
                .output_node(),
            log,
        }
    }
}

impl NodeDef for Blob {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        let n = ctx.params.int("bytes")? as u64;
        let bytes = match ctx.params.str("tier")? {
            "device" => MemBytes::device(n),
            _ => MemBytes::host(n),
        };
        let tensor = FakeTensor {
            tag: ctx.params.int("tag")?,
            bytes,
        };
        Ok(vec![Value::Object(veetance_core::Object::new(
            PortType::Latent,
            tensor,
        ))])
    }
}

/// `Random`: [`Freshness::Always`]; outputs the next value of a script shared with the test
/// (`Script::set`), standing in for a source that is not deterministic.
pub struct Random {
    schema: NodeSchema,
    log: Log,
    next: Script,
}

/// The value the `Random` nodes of a registry produce next.
#[derive(Clone, Debug, Default)]
pub struct Script(Arc<AtomicI64>);

impl Script {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::SeqCst);
    }
}

impl Random {
    pub fn new(log: Log, next: Script) -> Self {
        Random {
            schema: NodeSchema::new("Random", "Random", "test").output(
                "out",
                PortType::Int,
                "a value from outside the graph",
            ),
            log,
            next,
        }
    }
}

impl NodeDef for Random {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn freshness(&self, _params: &Params, _env: &RunEnv) -> Freshness {
        Freshness::Always
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        Ok(vec![Value::Int(self.next.0.load(Ordering::SeqCst))])
    }
}

/// `Stamped`: like `Const` but its freshness is a fingerprint read from a shared cell (standing
/// in for a file's modification time).
pub struct Stamped {
    schema: NodeSchema,
    log: Log,
    stamp: Script,
}

impl Stamped {
    pub fn new(log: Log, stamp: Script) -> Self {
        Stamped {
            schema: NodeSchema::new("Stamped", "Stamped", "test")
                .output("out", PortType::Int, "the value")
                .param(ParamDef::int("value", 0, 0, 1000, "the value")),
            log,
            stamp,
        }
    }
}

impl NodeDef for Stamped {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn freshness(&self, _params: &Params, _env: &RunEnv) -> Freshness {
        Freshness::Fingerprint(self.stamp.0.load(Ordering::SeqCst).to_le_bytes().to_vec())
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        Ok(vec![Value::Int(ctx.params.int("value")?)])
    }
}

/// What a `Faulty` node does when executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    Panic,
    TooManyOutputs,
    WrongOutputType,
    /// Cancels the run's token, then returns normally.
    CancelToken,
    /// Loops until the token is cancelled (by another thread), checking it every step.
    WaitForCancel,
    /// Panics in `NodeDef::check`, during validation.
    PanicInCheck,
    /// Panics in `NodeDef::freshness`, during planning.
    PanicInFreshness,
}

/// `Faulty`: passes its `Int` input through, or misbehaves as the shared [`FaultSwitch`] says.
pub struct Faulty {
    schema: NodeSchema,
    log: Log,
    fault: FaultSwitch,
}

#[derive(Clone, Debug)]
pub struct FaultSwitch {
    fault: Arc<Mutex<Fault>>,
    /// Steps a `WaitForCancel` node has taken; a test thread waits for it to be non-zero.
    pub steps: Arc<AtomicUsize>,
}

impl Default for FaultSwitch {
    fn default() -> Self {
        FaultSwitch {
            fault: Arc::new(Mutex::new(Fault::None)),
            steps: Arc::default(),
        }
    }
}

impl FaultSwitch {
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Faulty {
    pub fn new(log: Log, fault: FaultSwitch) -> Self {
        Faulty {
            schema: NodeSchema::new("Faulty", "Faulty", "test")
                .input("x", PortType::Int, "input")
                .output("out", PortType::Int, "x")
                .param(ParamDef::int("salt", 0, 0, 1000, "changes the key")),
            log,
            fault,
        }
    }
}

impl NodeDef for Faulty {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn check(&self, _params: &Params, _env: &RunEnv) -> Vec<veetance_core::ParamProblem> {
        if *self.fault.fault.lock().unwrap() == Fault::PanicInCheck {
            panic!("faulty check panicked on purpose");
        }
        Vec::new()
    }

    fn freshness(&self, _params: &Params, _env: &RunEnv) -> Freshness {
        if *self.fault.fault.lock().unwrap() == Fault::PanicInFreshness {
            panic!("faulty freshness panicked on purpose");
        }
        Freshness::Pure
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        let x = ctx.required("x")?.clone();
        let fault = *self.fault.fault.lock().unwrap();
        match fault {
            Fault::None | Fault::PanicInCheck | Fault::PanicInFreshness => Ok(vec![x]),
            Fault::Panic => panic!("faulty node panicked on purpose"),
            Fault::TooManyOutputs => Ok(vec![x.clone(), x]),
            Fault::WrongOutputType => Ok(vec![Value::Float(1.5)]),
            Fault::CancelToken => {
                ctx.cancel.cancel();
                Ok(vec![x])
            }
            Fault::WaitForCancel => loop {
                self.fault.steps.fetch_add(1, Ordering::SeqCst);
                ctx.check_cancelled()?;
                std::thread::sleep(std::time::Duration::from_millis(1));
            },
        }
    }
}

/// Everything a test needs: a registry of the test nodes and the shared handles.
pub struct Harness {
    pub log: Log,
    pub random: Script,
    pub stamp: Script,
    pub fault: FaultSwitch,
    pub registry: Arc<NodeRegistry>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_add_version(1)
    }

    /// A registry whose `Add` node declares `version`.
    pub fn with_add_version(version: u32) -> Self {
        let log = Log::default();
        let random = Script::default();
        let stamp = Script::default();
        let fault = FaultSwitch::default();
        let mut reg = NodeRegistry::new();
        reg.add(Const::new(log.clone()));
        reg.add(Add::with_version(log.clone(), version));
        reg.add(Inc::new(log.clone()));
        reg.add(Sink::new(log.clone()));
        reg.add(Blob::new(log.clone()));
        reg.add(Random::new(log.clone(), random.clone()));
        reg.add(Stamped::new(log.clone(), stamp.clone()));
        reg.add(Faulty::new(log.clone(), fault.clone()));
        Harness {
            log,
            random,
            stamp,
            fault,
            registry: Arc::new(reg),
        }
    }

    pub fn engine(&self) -> Engine {
        Engine::new(self.registry.clone(), Budgets::default())
    }

    pub fn engine_with(&self, budgets: Budgets) -> Engine {
        Engine::new(self.registry.clone(), budgets)
    }
}

/// Params from `(name, value)` pairs.
pub fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

/// Adds a node, panicking on a bad id (tests use valid ids).
pub fn node(g: &mut Graph, id: &str, ty: &str, pairs: &[(&str, Value)]) {
    g.add_node(id, ty, params(pairs)).unwrap();
}

/// Links `from.out_port` to `to.in_port`.
pub fn link(g: &mut Graph, from: &str, out_port: &str, to: &str, in_port: &str) {
    g.add_link(Link {
        from: PortRef::new(from, out_port),
        to: PortRef::new(to, in_port),
    });
}

/// Sorted copy, for comparing sets of node ids.
pub fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

pub fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The `Int` output 0 of `node` in a run's report.
pub fn int_output(report: &veetance_core::RunReport, node: &str) -> i64 {
    report.outputs[node][0].as_int().unwrap()
}
