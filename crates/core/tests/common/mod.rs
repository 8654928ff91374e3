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

use veetance_core::memory::SimAllocation;
use veetance_core::{
    Budgets, Engine, ExecContext, Freshness, Graph, Link, MemBytes, NodeDef, NodeError,
    NodeRegistry, NodeSchema, ParamDef, Params, Payload, PortRef, PortType, RunEnv,
    SimulatedDevice, Value,
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
    /// Returns an error from `execute` (as a model failing mid-run does).
    Error,
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
            Fault::Error => Err(NodeError::failed("faulty node failed on purpose")),
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

/// A tensor on a [`SimulatedDevice`]: `data` is its content; on the device it holds an
/// allocation of `data.len()` bytes there, in host memory none. It moves between the tiers like
/// a real tensor (`to_host` / `to_device` copy the bytes), and moving back can fail when the
/// device is full.
#[derive(Debug)]
pub struct SimTensor {
    pub data: Arc<[u8]>,
    device: Arc<SimulatedDevice>,
    allocation: Option<SimAllocation>,
    /// Lives in host memory by its maker's choice, like a model loaded to host because it did
    /// not fit: a node using it brings a copy onto the device for its run.
    host_home: bool,
    /// Nodes can use it from host memory (`Payload::streams_from_host`), like a model's weights.
    pub streams: bool,
}

impl SimTensor {
    /// A tensor of `data` on the device, or the device's out-of-memory error.
    pub fn on_device(device: &Arc<SimulatedDevice>, data: Vec<u8>) -> Result<Self, String> {
        let allocation = device.alloc(data.len() as u64)?;
        Ok(SimTensor {
            data: data.into(),
            device: device.clone(),
            allocation: Some(allocation),
            host_home: false,
            streams: false,
        })
    }

    /// A tensor of `data` that stays in host memory (see `host_home`).
    pub fn on_host(device: &Arc<SimulatedDevice>, data: Vec<u8>) -> Self {
        SimTensor {
            data: data.into(),
            device: device.clone(),
            allocation: None,
            host_home: true,
            streams: true,
        }
    }

    pub fn is_on_device(&self) -> bool {
        self.allocation.is_some()
    }
}

impl Payload for SimTensor {
    fn mem_bytes(&self) -> MemBytes {
        let n = self.data.len() as u64;
        if self.is_on_device() {
            MemBytes::device(n)
        } else {
            MemBytes::host(n)
        }
    }

    fn content_hash(&self) -> Option<[u8; 32]> {
        Some(*blake3::hash(&self.data).as_bytes())
    }

    fn to_host(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        self.is_on_device().then(|| {
            Ok(Arc::new(SimTensor {
                data: self.data.to_vec().into(),
                device: self.device.clone(),
                allocation: None,
                host_home: false,
                streams: self.streams,
            }) as Arc<dyn Payload>)
        })
    }

    fn to_device(&self) -> Option<Result<Arc<dyn Payload>, String>> {
        (!self.is_on_device() && !self.host_home).then(|| {
            SimTensor::on_device(&self.device, self.data.to_vec()).map(|mut t| {
                t.streams = self.streams;
                Arc::new(t) as Arc<dyn Payload>
            })
        })
    }

    fn streams_from_host(&self) -> bool {
        self.streams
    }

    fn device_wanted(&self) -> u64 {
        if self.host_home {
            self.data.len() as u64
        } else {
            0
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `SimOp`: a node on the simulated device. Optional `Latent` inputs `a` and `b` (which must be
/// on the device when it runs); it allocates `scratch_bytes` of working memory, then an output
/// of `out_bytes` whose content mixes `seed` with the inputs' bytes, then frees the scratch. An
/// allocation that fails is an out-of-memory error: structured, or (with `oom_as_text`) a plain
/// failure carrying candle's CUDA error text. Records the `device_room` it was given. An input
/// that lives in host memory by choice (`SimTensor::on_host`) is copied onto the device for the
/// run, like a model's weights; `host_out` makes the output such a tensor. With `streams` the
/// output can be used from host memory (a consumer then allocates nothing for it); with
/// `declare` the node tells the engine its scratch size before it runs.
pub struct SimOp {
    schema: NodeSchema,
    log: Log,
    device: Arc<SimulatedDevice>,
    rooms: Rooms,
}

/// A node id and the `device_room` it was given.
pub type Room = (String, Option<u64>);

/// The [`Room`] of every `SimOp` execution, in order.
#[derive(Clone, Debug, Default)]
pub struct Rooms(pub Arc<Mutex<Vec<Room>>>);

impl Rooms {
    pub fn take(&self) -> Vec<Room> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl SimOp {
    pub fn new(log: Log, device: Arc<SimulatedDevice>, rooms: Rooms) -> Self {
        SimOp {
            schema: NodeSchema::new("SimOp", "Simulated op", "test")
                .optional_input("a", PortType::Latent, "first input")
                .optional_input("b", PortType::Latent, "second input")
                .output("out", PortType::Latent, "the result")
                .param(ParamDef::int("out_bytes", 100, 1, 1 << 30, "output size"))
                .param(ParamDef::int(
                    "scratch_bytes",
                    0,
                    0,
                    1 << 30,
                    "working memory",
                ))
                .param(ParamDef::int("seed", 0, 0, 1 << 20, "content"))
                .param(ParamDef::bool("oom_as_text", false, "fail like candle"))
                .param(ParamDef::bool("host_out", false, "output in host memory"))
                .param(ParamDef::bool(
                    "streams",
                    false,
                    "output usable from host memory",
                ))
                .param(ParamDef::bool(
                    "declare",
                    false,
                    "declare scratch_bytes up front",
                )),
            log,
            device,
            rooms,
        }
    }
}

impl NodeDef for SimOp {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn device_need(&self, params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        if params.bool("declare").ok()? {
            Some(params.int("scratch_bytes").ok()? as u64)
        } else {
            None
        }
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        self.log.record(ctx.node_id);
        self.rooms
            .0
            .lock()
            .unwrap()
            .push((ctx.node_id.to_string(), ctx.device_room()));
        let as_text = ctx.params.bool("oom_as_text")?;
        let oom = |needed: u64, e: String| {
            if as_text {
                NodeError::failed(format!(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\") ({e})"
                ))
            } else {
                NodeError::out_of_memory(Some(needed), e)
            }
        };
        let mut inputs = Vec::new();
        let mut placed = Vec::new();
        for port in ["a", "b"] {
            if let Some(v) = ctx.input(port) {
                let t = v
                    .as_object()
                    .and_then(|o| o.downcast::<SimTensor>())
                    .ok_or_else(|| {
                        NodeError::failed(format!("input '{port}' is not a SimTensor"))
                    })?;
                if t.host_home {
                    let n = t.data.len() as u64;
                    placed.push(self.device.alloc(n).map_err(|e| oom(n, e))?);
                } else if !t.is_on_device() && !t.streams {
                    return Err(NodeError::failed(format!(
                        "input '{port}' is in host memory: the engine must move it back first"
                    )));
                }
                inputs.push(t.data.clone());
            }
        }
        let scratch_bytes = ctx.params.int("scratch_bytes")? as u64;
        let out_bytes = ctx.params.int("out_bytes")? as usize;
        let seed = ctx.params.int("seed")? as u64;
        let scratch = self
            .device
            .alloc(scratch_bytes)
            .map_err(|e| oom(scratch_bytes, e))?;
        let data: Vec<u8> = (0..out_bytes)
            .map(|i| {
                let mut x = seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64 * 31);
                for input in &inputs {
                    x = x
                        .wrapping_mul(131)
                        .wrapping_add(u64::from(input[i % input.len()]));
                }
                (x ^ (x >> 7)) as u8
            })
            .collect();
        let out = if ctx.params.bool("host_out")? {
            SimTensor::on_host(&self.device, data)
        } else {
            let mut t =
                SimTensor::on_device(&self.device, data).map_err(|e| oom(out_bytes as u64, e))?;
            t.streams = ctx.params.bool("streams")?;
            t
        };
        drop(scratch);
        drop(placed);
        Ok(vec![Value::Object(veetance_core::Object::new(
            PortType::Latent,
            out,
        ))])
    }
}

/// A registry of `SimOp` over one simulated device of `total` bytes.
pub struct SimHarness {
    pub log: Log,
    pub rooms: Rooms,
    pub device: Arc<SimulatedDevice>,
    pub registry: Arc<NodeRegistry>,
}

impl SimHarness {
    pub fn new(total: u64) -> Self {
        let log = Log::default();
        let rooms = Rooms::default();
        let device = SimulatedDevice::new(total);
        let mut reg = NodeRegistry::new();
        reg.add(SimOp::new(log.clone(), device.clone(), rooms.clone()));
        SimHarness {
            log,
            rooms,
            device,
            registry: Arc::new(reg),
        }
    }

    /// Like [`SimHarness::new`] over a device whose freed memory stays pooled until released.
    pub fn pooled(total: u64) -> Self {
        let mut h = SimHarness::new(total);
        h.device = SimulatedDevice::with_pool(total);
        let mut reg = NodeRegistry::new();
        reg.add(SimOp::new(h.log.clone(), h.device.clone(), h.rooms.clone()));
        h.registry = Arc::new(reg);
        h
    }

    /// An engine that reads the simulated device through its probe, with no byte budgets.
    pub fn engine(&self) -> Engine {
        Engine::new(self.registry.clone(), Budgets::default())
            .with_device_probe(self.device.clone())
    }
}
