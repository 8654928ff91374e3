//! The scheduler: runs what the requested outputs need, in topological order, serving every
//! node whose key is already cached from the cache.
//!
//! A run goes:
//! 1. validate the graph (nothing runs if anything is wrong);
//! 2. take the nodes the targets depend on, in topological order;
//! 3. compute each node's cache key from its type, version, params and input keys (nodes that
//!    are [`Freshness::Always`] get their key from their outputs' content once they ran);
//! 4. walking back from the targets, mark what must execute: a node whose outputs are cached
//!    stops the walk, so nothing upstream of it runs;
//! 5. execute the marked nodes in order, storing outputs in the cache, checking the cancel token
//!    between nodes, and dropping each intermediate value once its last consumer has run.
//!
//! Device memory (see `docs/ARCHITECTURE.md`, "Device memory"): before a node runs, the engine
//! makes room on the device for the node's peak use (learned from earlier runs) and for its
//! inputs that sit offloaded in host memory, by moving other cached values down a tier; it then
//! moves those inputs back and tells the node its room ([`ExecContext::device_room`]). While the
//! node runs, its peak is measured through the [`DeviceProbe`]. A node that runs out of device
//! memory is retried once after everything else has left the device.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use crate::cache::{Budgets, CacheKey, Eviction, OutputCache};
use crate::cancel::CancelToken;
use crate::events::{Event, EventSink, MemoryPoint};
use crate::graph::Graph;
use crate::memory::{format_bytes, DeviceMemory, DeviceProbe, HostMemory, PeakSampler};
use crate::node::{panic_message, ExecContext, Freshness, NodeDef, NodeError, Params, RunEnv};
use crate::registry::NodeRegistry;
use crate::validate::{check_graph, ValidationError};
use crate::value::{MemBytes, Object, Value};

/// How often the background sampler reads the device probe while a node runs.
const SAMPLE_PERIOD: Duration = Duration::from_millis(2);

/// What to run and where.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Node ids whose outputs are wanted; `None` means every output node of the graph.
    pub targets: Option<Vec<String>>,
    /// Run environment; `run_index` is set by the engine.
    pub env: RunEnv,
    pub cancel: CancelToken,
}

/// What a successful run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub run: u64,
    /// Node ids executed, in order.
    pub executed: Vec<String>,
    /// Node ids served from the cache.
    pub cached: Vec<String>,
    /// How many nodes were not needed this run (everything downstream of them was served from
    /// the cache) and still have their outputs in the cache. Events report each as cached.
    pub up_to_date: usize,
    /// The outputs of the target nodes.
    pub outputs: BTreeMap<String, Arc<[Value]>>,
    pub duration: Duration,
    /// Memory telemetry of the run.
    pub memory: MemoryReport,
}

/// What a run did with memory. The readings (everything `Option`) are taken when an event sink
/// listens or a device probe is set; the counters always.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryReport {
    /// Device size as the driver reports it.
    pub device_total: Option<u64>,
    /// The most device bytes in use (by every process) at any reading, samples taken while
    /// nodes ran included.
    pub device_peak_used: Option<u64>,
    /// The device budget the run kept to.
    pub device_budget: Option<u64>,
    /// The largest resident size of this process at a reading (start, after each node, end).
    pub process_rss_peak: Option<u64>,
    /// The most bytes the output cache held per tier at a reading.
    pub cache_peak: MemBytes,
    /// Cache entries moved from the device to host memory, moved back, and dropped.
    pub offloaded: usize,
    pub reloaded: usize,
    pub dropped: usize,
    /// Nodes run a second time after running out of device memory.
    pub oom_retries: usize,
    /// Device bytes each executed node added at its peak, by node id, in run order.
    pub node_peaks: Vec<(String, u64)>,
}

impl MemoryReport {
    fn observe(&mut self, device: Option<DeviceMemory>, host: &HostMemory, cache: MemBytes) {
        if let Some(d) = device {
            self.device_total = Some(d.total);
            self.device_peak_used = Some(self.device_peak_used.unwrap_or(0).max(d.used()));
        }
        if let Some(rss) = host.process_rss {
            self.process_rss_peak = Some(self.process_rss_peak.unwrap_or(0).max(rss));
        }
        self.cache_peak.device = self.cache_peak.device.max(cache.device);
        self.cache_peak.host = self.cache_peak.host.max(cache.host);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the workflow has {} problem(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ValidationError>),
    #[error("target '{0}' is not a node of this workflow")]
    UnknownTarget(String),
    #[error("the workflow has no output node (such as SaveImage), so there is nothing to run")]
    NoOutputs,
    #[error("node '{node}' ({node_type}) failed: {message}")]
    NodeFailed {
        node: String,
        node_type: String,
        message: String,
    },
    #[error("run cancelled{}", .node.as_ref().map(|n| format!(" at node '{n}'")).unwrap_or_default())]
    Cancelled { node: Option<String> },
    /// The node does not fit in memory. On the device: it ran out twice, once as planned, once
    /// more after every other cached value had left the device. In host memory: the working
    /// memory it declared ([`NodeDef::host_need`]) passes what the system has available (or the
    /// engine's host limit), so it was not started.
    #[error("{}", oom_message(.memory, .node, .node_type, .needed, .free, .message))]
    OutOfMemory {
        node: String,
        node_type: String,
        /// Which memory: the device's (the node ran and failed) or the host's (refused before).
        memory: MemoryKind,
        /// Bytes the node needed, as far as known: what it asked for, or its measured peak on an
        /// earlier run, whichever is larger.
        needed: Option<u64>,
        /// Bytes free to it: on the device when it failed the second time (the smaller of the
        /// driver's free memory and what the budget leaves); in host memory, what the system
        /// had available (or the host limit, if smaller).
        free: Option<u64>,
        message: String,
    },
}

/// Which memory a node ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    Device,
    Host,
}

fn oom_message(
    memory: &MemoryKind,
    node: &str,
    node_type: &str,
    needed: &Option<u64>,
    free: &Option<u64>,
    message: &str,
) -> String {
    match memory {
        MemoryKind::Device => format!(
            "node '{node}' ({node_type}) ran out of device memory{}{}: {message}. Lower the \
             resolution or batch size, use a tiled decode, close other programs using the GPU, \
             or raise --vram-budget if it is below the card's memory",
            needed
                .map(|n| format!(": it needed {}", format_bytes(n)))
                .unwrap_or_default(),
            free.map(|f| format!(
                ", {} was free after moving every other cached value off the device",
                format_bytes(f)
            ))
            .unwrap_or_default()
        ),
        MemoryKind::Host => format!(
            "node '{node}' ({node_type}) does not fit in host memory: it needs about {} of \
             working memory{}{}; it was not started. Lower the resolution or batch size, use \
             chunked attention or a tiled decode, or close other programs",
            needed.map(format_bytes).unwrap_or_else(|| "?".into()),
            free.map(|f| format!(" and {} is available", format_bytes(f)))
                .unwrap_or_default(),
            if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            }
        ),
    }
}

impl RunError {
    /// Whether the error is the input's fault (exit code 2) rather than a failure of the run
    /// (exit code 1).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            RunError::Invalid(_) | RunError::UnknownTarget(_) | RunError::NoOutputs
        )
    }
}

/// A node's cache key state during planning.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyState {
    Known(CacheKey),
    /// Depends on the output of an [`Freshness::Always`] node that has not run yet.
    Pending,
    /// Depends on a value that cannot be keyed by content: executed every time, never stored.
    Uncacheable,
}

/// Per-node planning data, indexed by petgraph node index.
struct Slot<'g> {
    def: Option<Arc<dyn NodeDef>>,
    params: Params,
    freshness: Freshness,
    key: KeyState,
    /// Incoming links as (source, source output index, target port), sorted by target port.
    inputs: Vec<(NodeIndex, usize, &'g str)>,
    required: bool,
    /// Served from the cache while planning, so its inputs were never asked for.
    served_in_plan: bool,
    /// `values` were moved to host memory by the cache; moved back before a node uses them.
    offloaded: bool,
    /// Remaining consumers among the nodes to process; the value is dropped at zero.
    consumers: usize,
    values: Option<Arc<[Value]>>,
}

/// Runs graphs against a registry, keeping an output cache across runs.
pub struct Engine {
    registry: Arc<NodeRegistry>,
    cache: OutputCache,
    runs: u64,
    probe: Option<Arc<dyn DeviceProbe>>,
    peaks: PeakBook,
    /// The most host bytes one node may declare as working memory ([`NodeDef::host_need`]),
    /// on top of the system's available memory; `None`: only what is available counts.
    host_limit: Option<u64>,
}

/// Device bytes nodes added at their peak, learned as they run.
///
/// Keyed by the node's *shape*: its type and version, its params other than seeds, and for each
/// linked input its port, type and byte size (see `shape_key`). A seed changes what a node
/// computes, not how much memory it takes; a different size, step count or model changes both.
/// The latest measurement wins, so a disturbance (another program allocating while a node was
/// sampled) heals on the next run. A shape never seen falls back to the largest peak of the node
/// type, a conservative guess.
#[derive(Debug, Default)]
struct PeakBook {
    by_shape: HashMap<[u8; 32], u64>,
    by_type: HashMap<String, u64>,
}

impl PeakBook {
    fn learn(&mut self, shape: [u8; 32], node_type: &str, peak: u64) {
        self.by_shape.insert(shape, peak);
        match self.by_type.get_mut(node_type) {
            Some(t) => *t = (*t).max(peak),
            None => {
                self.by_type.insert(node_type.to_string(), peak);
            }
        }
    }
}

/// What a run did so far with device memory, and the readings for its report.
#[derive(Default)]
struct Tally {
    report: MemoryReport,
    /// Take readings (an event sink listens or a probe is set).
    readings: bool,
}

/// Room on the device while the engine moves values off it. The driver may not report freed
/// memory at once (CUDA's stream-ordered allocator keeps freed blocks in its pool until the
/// stream synchronizes, where this process can reuse them but `cuMemGetInfo` does not count
/// them), so bytes the engine freed itself are credited on top of the free memory first read.
#[derive(Clone, Copy, Debug, Default)]
struct Credit {
    first_free: Option<u64>,
    freed: u64,
    reloaded: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("nodes", &self.registry.len())
            .field("cache", &self.cache)
            .field("runs", &self.runs)
            .finish()
    }
}

impl Engine {
    pub fn new(registry: Arc<NodeRegistry>, budgets: Budgets) -> Self {
        Engine {
            registry,
            cache: OutputCache::new(budgets),
            runs: 0,
            probe: None,
            peaks: PeakBook::default(),
            host_limit: None,
        }
    }

    /// Caps the host working memory one node may declare ([`NodeDef::host_need`]): a node that
    /// needs more is refused with [`RunError::OutOfMemory`] before it starts, as one that needs
    /// more than the system has available always is.
    pub fn with_host_limit(mut self, bytes: Option<u64>) -> Self {
        self.host_limit = bytes;
        self
    }

    /// Host bytes a node may allocate now: what the system has available (`MemAvailable`) and
    /// the host limit, whichever is smaller; `None` when neither is known.
    pub fn host_room(&self) -> Option<u64> {
        match (HostMemory::read().available, self.host_limit) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        }
    }

    /// Reads device memory through `probe`: runs then measure each node's peak, make room for
    /// it before it runs, and report device telemetry. Without a probe only the cache's own byte
    /// accounting and the device budget guide the engine.
    pub fn with_device_probe(mut self, probe: Arc<dyn DeviceProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    pub fn set_device_probe(&mut self, probe: Option<Arc<dyn DeviceProbe>>) {
        self.probe = probe;
    }

    /// Lets the probe hand memory no value holds back to the driver ([`DeviceProbe::release`]);
    /// whether it did.
    fn release_device(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| p.release())
    }

    /// After values moved off the device: the driver's reading is exact once the probe released
    /// the allocator's pool (the credit starts over from it); otherwise the moved bytes are
    /// credited.
    fn credit_moves(&self, credit: &mut Credit, freed: u64) {
        if self.release_device() {
            *credit = Credit {
                first_free: self.device_memory().map(|m| m.free),
                ..Credit::default()
            };
        } else {
            credit.freed += freed;
        }
    }

    /// The device's memory now, when a probe is set and answers.
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        self.probe.as_ref().and_then(|p| p.memory())
    }

    /// The largest peak learned for a node type, in device bytes.
    pub fn learned_peak(&self, node_type: &str) -> Option<u64> {
        self.peaks.by_type.get(node_type).copied()
    }

    /// Device bytes a node may use now: what the budget leaves beside the cache's device bytes,
    /// and what the driver reports free, whichever is smaller; `None` when neither is known.
    pub fn device_room(&self) -> Option<u64> {
        self.room(Credit::default())
    }

    /// The budget caps all device memory in use as the driver reports it (the CUDA context,
    /// library workspaces and allocator slack included; the driver's reading cannot tell other
    /// programs apart, so theirs counts too), and never less than the cache's own device bytes.
    fn room(&self, credit: Credit) -> Option<u64> {
        let driver = self.device_memory().map(|m| {
            let free = match credit.first_free {
                Some(first) => m
                    .free
                    .max((first + credit.freed).saturating_sub(credit.reloaded)),
                None => m.free,
            };
            (free, m.total.saturating_sub(free))
        });
        let in_use = driver
            .map_or(0, |(_, used)| used)
            .max(self.cache.usage().device);
        let budget_room = self
            .cache
            .budgets()
            .device
            .map(|b| b.saturating_sub(in_use));
        let driver_room = driver.map(|(free, _)| free);
        match (budget_room, driver_room) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.registry
    }

    pub fn cache(&self) -> &OutputCache {
        &self.cache
    }

    pub fn cache_mut(&mut self) -> &mut OutputCache {
        &mut self.cache
    }

    /// Runs the graph. Completed outputs stay cached whatever happens later in the run.
    pub fn run(
        &mut self,
        graph: &Graph,
        options: &RunOptions,
        events: &dyn EventSink,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let run = self.runs;
        self.runs += 1;
        let mut env = options.env.clone();
        env.run_index = run;

        let result = self.run_inner(graph, options, &env, events, run, started);
        let (ok, executed, cached) = match &result {
            Ok(r) => (true, r.executed.len(), r.cached.len() + r.up_to_date),
            Err(e) => {
                let node = match e {
                    RunError::NodeFailed { node, .. } => Some(node.clone()),
                    RunError::Cancelled { node } => node.clone(),
                    RunError::OutOfMemory { node, .. } => Some(node.clone()),
                    _ => None,
                };
                events.emit(&Event::Error {
                    node,
                    message: e.to_string(),
                });
                (false, 0, 0)
            }
        };
        events.emit(&Event::RunFinished {
            run,
            ok,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            executed,
            cached,
        });
        result
    }

    fn run_inner(
        &mut self,
        graph: &Graph,
        options: &RunOptions,
        env: &RunEnv,
        events: &dyn EventSink,
        run: u64,
        started: Instant,
    ) -> Result<RunReport, RunError> {
        let (errors, mut resolved) = check_graph(graph, &self.registry, env);
        if !errors.is_empty() {
            return Err(RunError::Invalid(errors));
        }
        let pg = graph.petgraph();

        // Targets.
        let targets: Vec<NodeIndex> = match &options.targets {
            Some(ids) => ids
                .iter()
                .map(|id| {
                    graph
                        .index_of(id)
                        .ok_or_else(|| RunError::UnknownTarget(id.clone()))
                })
                .collect::<Result<_, _>>()?,
            None => pg
                .node_indices()
                .filter(|&ix| {
                    resolved[ix.index()]
                        .as_ref()
                        .is_some_and(|r| r.def.schema().is_output)
                })
                .collect(),
        };
        if targets.is_empty() {
            return Err(RunError::NoOutputs);
        }

        // The nodes the targets depend on, in topological order.
        let order = needed_in_topological_order(graph, &targets);

        // Planning data and keys, in topological order.
        let mut key_bytes = Vec::with_capacity(512);
        let mut slots: Vec<Option<Slot<'_>>> = (0..pg.node_bound()).map(|_| None).collect();
        for &ix in &order {
            let node = &pg[ix];
            let (def, params) = match resolved[ix.index()].take() {
                Some(r) => (Some(r.def.clone()), r.params),
                None => (None, Params::default()),
            };
            let schema = def.as_ref().map(|d| d.schema());
            let mut inputs: Vec<(NodeIndex, usize, &str)> = pg
                .edges_directed(ix, Direction::Incoming)
                .map(|e| {
                    let src = e.source();
                    // Sources come earlier in the order, so their slots are filled.
                    let out_index = slots[src.index()]
                        .as_ref()
                        .and_then(|s| s.def.as_ref())
                        .and_then(|d| d.schema().output_index(&e.weight().from_port))
                        .unwrap_or(0);
                    (src, out_index, e.weight().to_port.as_str())
                })
                .collect();
            inputs.sort_by(|a, b| a.2.cmp(b.2));
            let freshness = match &def {
                // Node code: guarded like `execute`, so that a panic fails the run, not the caller.
                Some(d) => std::panic::catch_unwind(AssertUnwindSafe(|| d.freshness(&params, env)))
                    .map_err(|panic| RunError::NodeFailed {
                        node: node.id.clone(),
                        node_type: node.type_name.clone(),
                        message: format!(
                            "internal error while planning (please report): {}",
                            panic_message(&*panic)
                        ),
                    })?,
                None => Freshness::Pure,
            };
            let key = match &freshness {
                Freshness::Always => KeyState::Pending,
                _ => {
                    let upstream = || {
                        inputs.iter().map(|(s, _, _)| {
                            slots[s.index()]
                                .as_ref()
                                .map_or(KeyState::Uncacheable, |s| s.key)
                        })
                    };
                    if upstream().any(|k| k == KeyState::Uncacheable) {
                        KeyState::Uncacheable
                    } else if upstream().any(|k| k == KeyState::Pending) {
                        KeyState::Pending
                    } else if let Some(schema) = schema {
                        KeyState::Known(node_key(
                            schema,
                            &params,
                            &freshness,
                            &inputs,
                            &slots,
                            &mut key_bytes,
                        ))
                    } else {
                        KeyState::Uncacheable
                    }
                }
            };
            slots[ix.index()] = Some(Slot {
                def,
                params,
                freshness,
                key,
                inputs,
                required: false,
                served_in_plan: false,
                offloaded: false,
                consumers: 0,
                values: None,
            });
        }

        // Walk back from the targets: cached nodes stop the walk.
        for &t in &targets {
            if let Some(s) = slots[t.index()].as_mut() {
                s.required = true;
                s.consumers += 1; // the run itself consumes target outputs
            }
        }
        for &ix in order.iter().rev() {
            let slot = slots[ix.index()].as_mut().expect("planned");
            if !slot.required {
                continue;
            }
            let hit = match slot.key {
                KeyState::Known(k) if slot.freshness != Freshness::Always => self.cache.get(&k),
                _ => None,
            };
            if let Some(values) = hit {
                slot.values = Some(values);
                slot.served_in_plan = true;
                if let KeyState::Known(k) = slot.key {
                    slot.offloaded = self.cache.is_offloaded(&k);
                }
                continue;
            }
            let sources: Vec<NodeIndex> = slot.inputs.iter().map(|(s, _, _)| *s).collect();
            for s in sources {
                let src = slots[s.index()].as_mut().expect("planned");
                src.required = true;
                src.consumers += 1;
            }
        }
        let to_execute = order
            .iter()
            .filter(|ix| {
                let s = slots[ix.index()].as_ref().expect("planned");
                s.required && s.values.is_none()
            })
            .count();
        events.emit(&Event::RunStarted {
            run,
            nodes: order.len(),
            to_execute,
        });
        let mut tally = Tally {
            readings: events.enabled() || self.probe.is_some(),
            ..Tally::default()
        };
        tally.report.device_budget = self.cache.budgets().device;
        self.memory_reading(run, MemoryPoint::RunStarted, None, None, events, &mut tally);

        let mut report = RunReport {
            run,
            executed: Vec::new(),
            cached: Vec::new(),
            up_to_date: 0,
            outputs: BTreeMap::new(),
            duration: Duration::ZERO,
            memory: MemoryReport::default(),
        };

        for &ix in &order {
            let node = &pg[ix];
            let (required, has_values) = {
                let s = slots[ix.index()].as_ref().expect("planned");
                (s.required, s.values.is_some())
            };
            if !required {
                // Not needed because everything downstream of it was served from the cache. Its
                // own output is still up to date in the cache when its key is there: report it so
                // (the editor shows every node's state), without touching its recency.
                let s = slots[ix.index()].as_ref().expect("planned");
                if let KeyState::Known(k) = s.key {
                    if s.freshness != Freshness::Always && self.cache.contains(&k) {
                        report.up_to_date += 1;
                        if events.enabled() {
                            events.emit(&Event::NodeFinished {
                                node: node.id.clone(),
                                node_type: node.type_name.clone(),
                                duration_ms: 0.0,
                                cached: true,
                            });
                        }
                    }
                }
                continue;
            }
            if !has_values {
                // A key that waited on an Always node upstream can be computed now.
                let slot = slots[ix.index()].as_ref().expect("planned");
                if slot.key == KeyState::Pending && slot.freshness != Freshness::Always {
                    let key = self.late_key(ix, &slots);
                    let hit = match key {
                        KeyState::Known(k) => self.cache.get(&k),
                        _ => None,
                    };
                    let offloaded = match key {
                        KeyState::Known(k) => self.cache.is_offloaded(&k),
                        _ => false,
                    };
                    let slot = slots[ix.index()].as_mut().expect("planned");
                    slot.key = key;
                    slot.values = hit;
                    slot.offloaded = offloaded;
                }
            }
            let slot = slots[ix.index()].as_ref().expect("planned");
            if slot.values.is_some() {
                events.emit(&Event::NodeFinished {
                    node: node.id.clone(),
                    node_type: node.type_name.clone(),
                    duration_ms: 0.0,
                    cached: true,
                });
                report.cached.push(node.id.clone());
            } else {
                if options.cancel.is_cancelled() {
                    return Err(RunError::Cancelled {
                        node: Some(node.id.clone()),
                    });
                }
                let (values, elapsed) =
                    self.run_node(ix, graph, &mut slots, env, options, events, &mut tally)?;
                let slot = slots[ix.index()].as_mut().expect("planned");
                if slot.freshness == Freshness::Always {
                    slot.key = content_key(slot, &values, pg, ix);
                } else if let KeyState::Known(k) = slot.key {
                    let moved = self
                        .cache
                        .insert(k, &node.type_name, values.clone(), elapsed);
                    apply_moves(&moved, &mut slots, &mut tally);
                }
                let slot = slots[ix.index()].as_mut().expect("planned");
                slot.values = Some(values);
                slot.offloaded = false;
                report.executed.push(node.id.clone());
                self.memory_reading(
                    run,
                    MemoryPoint::NodeFinished,
                    Some(&node.id),
                    tally.report.node_peaks.last().map(|(_, p)| *p),
                    events,
                    &mut tally,
                );
            }
            // This node has consumed its inputs: release those with no consumer left.
            let slot = slots[ix.index()].as_ref().expect("planned");
            let sources: Vec<NodeIndex> = slot.inputs.iter().map(|(s, _, _)| *s).collect();
            if !slot.served_in_plan {
                for s in sources {
                    let src = slots[s.index()].as_mut().expect("planned");
                    src.consumers = src.consumers.saturating_sub(1);
                    if src.consumers == 0 {
                        src.values = None;
                    }
                }
            }
        }

        for &t in &targets {
            if let Some(v) = slots[t.index()].as_ref().and_then(|s| s.values.clone()) {
                report.outputs.insert(pg[t].id.clone(), v);
            }
        }
        self.memory_reading(
            run,
            MemoryPoint::RunFinished,
            None,
            None,
            events,
            &mut tally,
        );
        report.memory = tally.report;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Takes a memory reading: into the run's report, and as an [`Event::Memory`].
    fn memory_reading(
        &self,
        run: u64,
        at: MemoryPoint,
        node: Option<&str>,
        node_peak: Option<u64>,
        events: &dyn EventSink,
        tally: &mut Tally,
    ) {
        if !tally.readings {
            return;
        }
        let device = self.device_memory();
        let host = HostMemory::read();
        let cache = self.cache.usage();
        tally.report.observe(device, &host, cache);
        if events.enabled() {
            let r = &tally.report;
            events.emit(&Event::Memory {
                run,
                at,
                node: node.map(str::to_string),
                device_free: device.map(|d| d.free),
                device_total: device.map(|d| d.total),
                device_budget: self.cache.budgets().device,
                node_peak,
                process_rss: host.process_rss,
                host_available: host.available,
                host_total: host.total,
                cache_device: cache.device,
                cache_host: cache.host,
                offloaded: r.offloaded,
                reloaded: r.reloaded,
                dropped: r.dropped,
            });
        }
    }

    /// Runs one node with device memory in mind: makes room for its learned peak and for its
    /// offloaded inputs, moves those inputs back to the device, executes it while measuring its
    /// peak, and on running out of device memory moves every other cached value off the device
    /// and tries once more.
    #[expect(
        clippy::too_many_arguments,
        reason = "the run's state, passed down once"
    )]
    fn run_node(
        &mut self,
        ix: NodeIndex,
        graph: &Graph,
        slots: &mut [Option<Slot<'_>>],
        env: &RunEnv,
        options: &RunOptions,
        events: &dyn EventSink,
        tally: &mut Tally,
    ) -> Result<(Arc<[Value]>, Duration), RunError> {
        let node = &graph.petgraph()[ix];
        self.host_fit(ix, node, slots, tally)?;
        let plan = self.memory_plan(ix, graph, slots);
        let mut credit = self.make_room(plan.need, &plan.pinned, &plan.streamable, slots, tally);

        let mut retried = false;
        loop {
            let attempt = self
                .reload_inputs(ix, node, &plan, slots, tally, &mut credit)
                .and_then(|()| {
                    let room = self.room(credit);
                    let sampler = self
                        .probe
                        .clone()
                        .map(|p| PeakSampler::start(p, SAMPLE_PERIOD));
                    let result = self.execute(ix, graph, slots, env, options, events, room);
                    let seen = sampler.map(PeakSampler::finish);
                    self.release_device();
                    if let Some(peak) = seen.and_then(|s| s.peak_used) {
                        let r = &mut tally.report;
                        r.device_peak_used = Some(r.device_peak_used.unwrap_or(0).max(peak));
                    }
                    result.map(|ok| (ok, seen.and_then(|s| s.node_peak)))
                });
            match attempt {
                Ok(((values, elapsed), measured)) => {
                    // Without a probe, the outputs' own device bytes: a lower bound.
                    let peak = measured.unwrap_or_else(|| {
                        values.iter().map(|v| v.mem_bytes().device).sum::<u64>()
                    });
                    self.peaks.learn(plan.shape, &node.type_name, peak);
                    tally.report.node_peaks.push((node.id.clone(), peak));
                    return Ok((values, elapsed));
                }
                Err(RunError::OutOfMemory { message, .. }) if !retried => {
                    retried = true;
                    tally.report.oom_retries += 1;
                    let moved = self.offload_all(&plan.pinned, slots, tally, &mut credit);
                    events.emit(&Event::Warning {
                        node: Some(node.id.clone()),
                        message: format!(
                            "out of device memory ({message}); moved {moved} cached value(s) off \
                             the device, retrying once"
                        ),
                    });
                }
                Err(RunError::OutOfMemory {
                    node,
                    node_type,
                    memory,
                    needed,
                    message,
                    ..
                }) => {
                    // The type-wide fallback is a guess; only this shape's own peak is evidence.
                    let measured = self.peaks.by_shape.get(&plan.shape).copied();
                    let needed = match (needed, measured) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    return Err(RunError::OutOfMemory {
                        node,
                        node_type,
                        memory,
                        needed,
                        free: self.room(credit),
                        message,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks the host working memory the node declares ([`NodeDef::host_need`]) against the
    /// room in host memory, dropping values from the cache's host tier (best score first, never
    /// one this run still holds) while it does not fit. A node that still does not fit is not
    /// started: an allocation the system cannot give would abort the whole process.
    fn host_fit(
        &mut self,
        ix: NodeIndex,
        node: &crate::graph::NodeInstance,
        slots: &mut [Option<Slot<'_>>],
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        let Some(need) = self.declared_host_need(ix, slots).filter(|&n| n > 0) else {
            return Ok(());
        };
        loop {
            let room = self.host_room();
            if room.is_none_or(|room| need <= room) {
                return Ok(());
            }
            // Dropping cached values helps only when the system's memory is what binds.
            let over_limit = self.host_limit.is_some_and(|limit| need > limit);
            let dropped = if over_limit {
                Vec::new()
            } else {
                self.cache.drop_best_host(&held_keys(slots))
            };
            if dropped.is_empty() {
                let available = HostMemory::read().available;
                let message = match (self.host_limit, available) {
                    (Some(limit), Some(a)) if limit < a => {
                        format!("the engine's host limit is {}", format_bytes(limit))
                    }
                    (_, Some(_)) => "what the system has available".into(),
                    _ => String::new(),
                };
                return Err(RunError::OutOfMemory {
                    node: node.id.clone(),
                    node_type: node.type_name.clone(),
                    memory: MemoryKind::Host,
                    needed: Some(need),
                    free: room,
                    message,
                });
            }
            apply_moves(&dropped, slots, tally);
        }
    }

    /// The node's own estimate of its host working memory ([`NodeDef::host_need`]); a panic in
    /// it counts as no estimate (the node's `execute` will report its own trouble).
    fn declared_host_need(&self, ix: NodeIndex, slots: &[Option<Slot<'_>>]) -> Option<u64> {
        let slot = slots[ix.index()].as_ref().expect("planned");
        let def = slot.def.as_ref()?;
        let (params, inputs) = gather_inputs(ix, slots).ok()?;
        std::panic::catch_unwind(AssertUnwindSafe(|| def.host_need(&params, &inputs)))
            .ok()
            .flatten()
    }

    /// What the node about to run needs on the device, and which of its inputs must stay there.
    fn memory_plan(&self, ix: NodeIndex, graph: &Graph, slots: &[Option<Slot<'_>>]) -> MemoryPlan {
        let node = &graph.petgraph()[ix];
        let slot = slots[ix.index()].as_ref().expect("planned");
        let mut plan = MemoryPlan {
            shape: shape_key(slot, slots),
            ..MemoryPlan::default()
        };
        let mut reload = 0;
        let mut wanted = 0;
        let mut seen = Vec::new();
        for (src, _, _) in &slot.inputs {
            let Some(s) = slots[src.index()].as_ref() else {
                continue;
            };
            if seen.contains(src) {
                continue;
            }
            seen.push(*src);
            let values = s.values.as_deref().unwrap_or_default();
            let streams = !values.is_empty() && values.iter().all(streams_from_host);
            if let KeyState::Known(k) = s.key {
                if streams {
                    plan.streamable.push(k);
                } else {
                    plan.pinned.push(k);
                }
            }
            if s.offloaded && !streams {
                reload += object_host_bytes(values);
            } else if s.offloaded {
                wanted += object_host_bytes(values);
            } else {
                wanted += object_device_wanted(values);
            }
        }
        // The node's own working memory: what it declares (it knows its shapes), else its
        // measured peak, else the largest peak of its type (a conservative guess).
        let declared = self.declared_need(ix, slots);
        let measured = self.peaks.by_shape.get(&plan.shape).copied();
        let typed = self.peaks.by_type.get(&node.type_name).copied();
        plan.work = declared.or(measured).or(typed).unwrap_or(0);
        // A measured peak includes the weights the node placed; before there is one, room for
        // the host-resident weights it would like to place.
        plan.need = reload
            + match measured {
                Some(peak) => peak.max(plan.work),
                None => plan.work + wanted,
            };
        plan
    }

    /// The node's own estimate of its device working memory ([`NodeDef::device_need`]).
    fn declared_need(&self, ix: NodeIndex, slots: &[Option<Slot<'_>>]) -> Option<u64> {
        let slot = slots[ix.index()].as_ref().expect("planned");
        let def = slot.def.as_ref()?;
        let (params, inputs) = gather_inputs(ix, slots).ok()?;
        def.device_need(&params, &inputs)
    }

    /// Moves cached values down a tier, best score first, until `need` device bytes are free to
    /// the next node or nothing more can move. `pinned` never moves; `streamable` inputs (the
    /// node can use them from host memory) move last, when nothing else is left.
    fn make_room(
        &mut self,
        need: u64,
        pinned: &[CacheKey],
        streamable: &[CacheKey],
        slots: &mut [Option<Slot<'_>>],
        tally: &mut Tally,
    ) -> Credit {
        // Memory freed since the last node (consumed inputs, the allocator pool's slack) back to
        // the driver first, so that the readings are what is live.
        self.release_device();
        let mut credit = Credit {
            first_free: self.device_memory().map(|m| m.free),
            ..Credit::default()
        };
        if need == 0 {
            return credit;
        }
        let all: Vec<CacheKey> = pinned.iter().chain(streamable).copied().collect();
        let held = held_keys(slots);
        for keep in [&all[..], pinned] {
            while self.room(credit).is_some_and(|room| room < need) {
                let moved = self.cache.demote_best_unless_held(keep, &held);
                if moved.is_empty() {
                    break;
                }
                let freed = apply_moves(&moved, slots, tally);
                self.credit_moves(&mut credit, freed);
            }
        }
        credit
    }

    /// Moves every cached value but `pinned` off the device. Returns how many moved.
    fn offload_all(
        &mut self,
        pinned: &[CacheKey],
        slots: &mut [Option<Slot<'_>>],
        tally: &mut Tally,
        credit: &mut Credit,
    ) -> usize {
        let mut count = 0;
        let held = held_keys(slots);
        loop {
            let moved = self.cache.demote_best_unless_held(pinned, &held);
            if moved.is_empty() {
                return count;
            }
            count += moved.len();
            let freed = apply_moves(&moved, slots, tally);
            self.credit_moves(credit, freed);
        }
    }

    /// Moves the node's offloaded inputs back to the device ([`crate::Payload::to_device`]).
    fn reload_inputs(
        &mut self,
        ix: NodeIndex,
        node: &crate::graph::NodeInstance,
        plan: &MemoryPlan,
        slots: &mut [Option<Slot<'_>>],
        tally: &mut Tally,
        credit: &mut Credit,
    ) -> Result<(), RunError> {
        let pinned: Vec<CacheKey> = plan
            .pinned
            .iter()
            .chain(&plan.streamable)
            .copied()
            .collect();
        let pinned = &pinned[..];
        let inputs = slots[ix.index()].as_ref().expect("planned").inputs.clone();
        for (src, _, port) in inputs {
            let Some(s) = slots[src.index()].as_ref() else {
                continue;
            };
            let (true, Some(values)) = (s.offloaded, s.values.clone()) else {
                continue;
            };
            let key = s.key;
            // A value the node can stream stays in host memory unless it fits beside the
            // node's working memory; the node then places what its room allows.
            if values.iter().all(streams_from_host) {
                let bytes = object_host_bytes(&values);
                if self
                    .room(*credit)
                    .is_some_and(|room| room < bytes.saturating_add(plan.work))
                {
                    continue;
                }
            }
            let mut back = Vec::with_capacity(values.len());
            for v in values.iter() {
                match v {
                    Value::Object(o) => match o.payload.to_device() {
                        Some(Ok(payload)) => back.push(Value::Object(Object { ty: o.ty, payload })),
                        Some(Err(e)) => {
                            let message = format!(
                                "input '{port}': its cached value could not be moved back to \
                                 the device: {e}"
                            );
                            return Err(if crate::memory::is_out_of_memory_message(&e) {
                                RunError::OutOfMemory {
                                    node: node.id.clone(),
                                    node_type: node.type_name.clone(),
                                    memory: MemoryKind::Device,
                                    needed: Some(object_host_bytes(&values)),
                                    free: None,
                                    message,
                                }
                            } else {
                                RunError::NodeFailed {
                                    node: node.id.clone(),
                                    node_type: node.type_name.clone(),
                                    message,
                                }
                            });
                        }
                        None => back.push(v.clone()),
                    },
                    other => back.push(other.clone()),
                }
            }
            let back: Arc<[Value]> = back.into();
            credit.reloaded += back.iter().map(|v| v.mem_bytes().device).sum::<u64>();
            tally.report.reloaded += 1;
            for slot in slots.iter_mut().flatten() {
                if slot.key == key && slot.offloaded && slot.values.is_some() {
                    slot.values = Some(back.clone());
                    slot.offloaded = false;
                }
            }
            if let Some(s) = slots[src.index()].as_mut() {
                // Not keyed (never cached): only this slot holds it.
                s.values = Some(back.clone());
                s.offloaded = false;
            }
            if let KeyState::Known(k) = key {
                let moved = self.cache.promote(&k, back, pinned);
                let freed = apply_moves(&moved, slots, tally);
                self.credit_moves(credit, freed);
            }
        }
        Ok(())
    }

    /// Computes a key once the Always nodes it depends on have run.
    fn late_key(&self, ix: NodeIndex, slots: &[Option<Slot<'_>>]) -> KeyState {
        let slot = slots[ix.index()].as_ref().expect("planned");
        let upstream: Vec<KeyState> = slot
            .inputs
            .iter()
            .map(|(s, _, _)| {
                slots[s.index()]
                    .as_ref()
                    .map_or(KeyState::Uncacheable, |s| s.key)
            })
            .collect();
        if upstream
            .iter()
            .any(|k| matches!(k, KeyState::Uncacheable | KeyState::Pending))
        {
            return KeyState::Uncacheable;
        }
        match slot.def.as_ref() {
            Some(def) => KeyState::Known(node_key(
                def.schema(),
                &slot.params,
                &slot.freshness,
                &slot.inputs,
                slots,
                &mut Vec::new(),
            )),
            None => KeyState::Uncacheable,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the run's state, passed down once"
    )]
    fn execute(
        &self,
        ix: NodeIndex,
        graph: &Graph,
        slots: &[Option<Slot<'_>>],
        env: &RunEnv,
        options: &RunOptions,
        events: &dyn EventSink,
        device_room: Option<u64>,
    ) -> Result<(Arc<[Value]>, Duration), RunError> {
        let pg = graph.petgraph();
        let node = &pg[ix];
        let slot = slots[ix.index()].as_ref().expect("planned");
        let def = slot.def.as_ref().expect("validated");
        let schema = def.schema();
        let fail = |message: String| RunError::NodeFailed {
            node: node.id.clone(),
            node_type: node.type_name.clone(),
            message,
        };

        let (params, inputs) = gather_inputs(ix, slots).map_err(fail)?;

        events.emit(&Event::NodeStarted {
            node: node.id.clone(),
            node_type: node.type_name.clone(),
        });
        let t0 = Instant::now();
        let mut ctx = ExecContext::new(&node.id, params, inputs, env, &options.cancel, events)
            .with_device_room(device_room)
            .with_host_room(self.host_room());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| def.execute(&mut ctx)));
        let elapsed = t0.elapsed();
        let values = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(NodeError::Cancelled)) => {
                return Err(RunError::Cancelled {
                    node: Some(node.id.clone()),
                })
            }
            Ok(Err(e)) if e.is_out_of_memory() => {
                let (needed, message) = match e {
                    NodeError::OutOfMemory { needed, message } => (needed, message),
                    other => (None, other.to_string()),
                };
                return Err(RunError::OutOfMemory {
                    node: node.id.clone(),
                    node_type: node.type_name.clone(),
                    memory: MemoryKind::Device,
                    needed,
                    free: None,
                    message,
                });
            }
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(panic) => {
                return Err(fail(format!(
                    "internal error (please report): {}",
                    panic_message(&*panic)
                )));
            }
        };
        if values.len() != schema.outputs.len() {
            return Err(fail(format!(
                "returned {} outputs, declares {} (node bug)",
                values.len(),
                schema.outputs.len()
            )));
        }
        for (v, port) in values.iter().zip(&schema.outputs) {
            if v.port_type() != port.ty {
                return Err(fail(format!(
                    "output '{}' is {}, declared {} (node bug)",
                    port.name,
                    v.port_type(),
                    port.ty
                )));
            }
        }
        events.emit(&Event::NodeFinished {
            node: node.id.clone(),
            node_type: node.type_name.clone(),
            duration_ms: elapsed.as_secs_f64() * 1e3,
            cached: false,
        });
        Ok((values.into(), elapsed))
    }
}

/// The nodes that `targets` depend on (targets included), in topological order.
fn needed_in_topological_order(graph: &Graph, targets: &[NodeIndex]) -> Vec<NodeIndex> {
    let pg = graph.petgraph();
    let mut needed = vec![false; pg.node_bound()];
    let mut stack: Vec<NodeIndex> = targets.to_vec();
    while let Some(ix) = stack.pop() {
        if std::mem::replace(&mut needed[ix.index()], true) {
            continue;
        }
        stack.extend(pg.neighbors_directed(ix, Direction::Incoming));
    }
    // Kahn's algorithm over the needed subgraph, taking nodes in index (file) order when free.
    let mut indegree = vec![0usize; pg.node_bound()];
    for ix in pg.node_indices().filter(|ix| needed[ix.index()]) {
        indegree[ix.index()] = pg.edges_directed(ix, Direction::Incoming).count();
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = pg
        .node_indices()
        .filter(|ix| needed[ix.index()] && indegree[ix.index()] == 0)
        .map(|ix| std::cmp::Reverse(ix.index()))
        .collect();
    let mut order = Vec::new();
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        let ix = NodeIndex::new(i);
        order.push(ix);
        for e in pg.edges_directed(ix, Direction::Outgoing) {
            let t = e.target();
            if needed[t.index()] {
                indegree[t.index()] -= 1;
                if indegree[t.index()] == 0 {
                    ready.push(std::cmp::Reverse(t.index()));
                }
            }
        }
    }
    order
}

/// The content-hash key of a node: type, version, constant params, fingerprint, and for each
/// linked port (sorted by name) the key and output index of its source. The bytes are gathered
/// in `buf` (reused across nodes) and hashed at once.
fn node_key(
    schema: &crate::schema::NodeSchema,
    params: &Params,
    freshness: &Freshness,
    inputs: &[(NodeIndex, usize, &str)],
    slots: &[Option<Slot<'_>>],
    buf: &mut Vec<u8>,
) -> CacheKey {
    buf.clear();
    buf.extend_from_slice(b"veetance-node-v1\0");
    buf.extend_from_slice(schema.type_name.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&schema.version.to_le_bytes());
    for (name, value) in &params.0 {
        if inputs.iter().any(|(_, _, port)| port == name) {
            continue; // linked: its source's key stands for it
        }
        buf.push(b'p');
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        value.write_content(buf);
    }
    for (src, out_index, port) in inputs {
        buf.push(b'i');
        buf.extend_from_slice(port.as_bytes());
        buf.push(0);
        if let Some(KeyState::Known(k)) = slots[src.index()].as_ref().map(|s| s.key) {
            buf.extend_from_slice(&k.0);
        }
        buf.extend_from_slice(&(*out_index as u64).to_le_bytes());
    }
    if let Freshness::Fingerprint(bytes) = freshness {
        buf.push(b'f');
        buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(bytes);
    }
    CacheKey(*blake3::hash(buf).as_bytes())
}

/// The key of an Always node's outputs: its type and version plus the outputs' content, so that
/// descendants hit the cache when it produced the same values as before.
fn content_key(
    slot: &Slot<'_>,
    values: &[Value],
    pg: &petgraph::stable_graph::StableDiGraph<crate::graph::NodeInstance, crate::graph::LinkPorts>,
    ix: NodeIndex,
) -> KeyState {
    let mut h = blake3::Hasher::new();
    h.update(b"veetance-content-v1\0");
    h.update(pg[ix].type_name.as_bytes());
    if let Some(def) = &slot.def {
        h.update(&def.schema().version.to_le_bytes());
    }
    for v in values {
        if !v.hash_content(&mut h) {
            return KeyState::Uncacheable;
        }
    }
    KeyState::Known(CacheKey(*h.finalize().as_bytes()))
}

/// Keys of the values the run still holds for nodes yet to run: dropping one of these from the
/// cache would free nothing.
fn held_keys(slots: &[Option<Slot<'_>>]) -> Vec<CacheKey> {
    slots
        .iter()
        .flatten()
        .filter(|s| s.values.is_some())
        .filter_map(|s| match s.key {
            KeyState::Known(k) => Some(k),
            _ => None,
        })
        .collect()
}

/// Applies cache moves to the run's values: a slot holding a value the cache moved to host
/// memory takes the host copy (so the device copy is really freed); a dropped value a slot still
/// holds stays with the run until its consumers ran. Returns the device bytes freed.
fn apply_moves(moved: &[Eviction], slots: &mut [Option<Slot<'_>>], tally: &mut Tally) -> u64 {
    let mut freed = 0;
    for ev in moved {
        match ev.offloaded {
            Some(_) => tally.report.offloaded += 1,
            None => tally.report.dropped += 1,
        }
        let mut still_on_device = false;
        for slot in slots.iter_mut().flatten() {
            if slot.key != KeyState::Known(ev.key) || slot.values.is_none() || slot.offloaded {
                continue;
            }
            match &ev.offloaded {
                Some(host) => {
                    slot.values = Some(host.clone());
                    slot.offloaded = true;
                }
                None => still_on_device = true,
            }
        }
        if !still_on_device {
            freed += ev.bytes.device;
        }
    }
    freed
}

/// Host bytes of the objects among `values`: what moving them back to the device takes.
/// A node's params and its inputs by port.
type Gathered<'s> = (Params, Vec<(&'s str, Value)>);

/// A node's params, with linked params replacing their constants, and its inputs.
fn gather_inputs<'s>(ix: NodeIndex, slots: &[Option<Slot<'s>>]) -> Result<Gathered<'s>, String> {
    let slot = slots[ix.index()].as_ref().expect("planned");
    let schema = slot.def.as_ref().expect("validated").schema();
    let mut params = slot.params.clone();
    let mut inputs = Vec::with_capacity(slot.inputs.len());
    for (src, out_index, port) in &slot.inputs {
        let value = slots[src.index()]
            .as_ref()
            .and_then(|s| s.values.as_ref())
            .and_then(|v| v.get(*out_index).cloned())
            .ok_or_else(|| format!("input '{port}' has no value (engine bug)"))?;
        if let Some(pdef) = schema.param_def(port) {
            let value = pdef
                .kind
                .check(&value)
                .map_err(|m| format!("linked param '{port}': {m}"))?;
            if let Some(p) = params.0.iter_mut().find(|(n, _)| n == port) {
                p.1 = value;
            }
        } else {
            inputs.push((*port, value));
        }
    }
    Ok((params, inputs))
}

/// What a node needs on the device before it runs (see `Engine::memory_plan`).
#[derive(Debug, Default)]
struct MemoryPlan {
    /// The key its measured peak is learned under.
    shape: [u8; 32],
    /// Device bytes to make free: its working memory, inputs to move back, weights to place.
    need: u64,
    /// Its own working memory, beyond inputs and weights.
    work: u64,
    /// Inputs that must be on the device while it runs.
    pinned: Vec<CacheKey>,
    /// Inputs it can use from host memory ([`crate::Payload::streams_from_host`]).
    streamable: Vec<CacheKey>,
}

/// Whether a value can be used from host memory by the nodes that take it.
fn streams_from_host(v: &Value) -> bool {
    matches!(v, Value::Object(o) if o.payload.streams_from_host())
}

/// Host bytes of `values` that would rather be on the device ([`crate::Payload::device_wanted`]).
fn object_device_wanted(values: &[Value]) -> u64 {
    values
        .iter()
        .map(|v| match v {
            Value::Object(o) => o.payload.device_wanted(),
            _ => 0,
        })
        .sum()
}

fn object_host_bytes(values: &[Value]) -> u64 {
    values
        .iter()
        .filter(|v| matches!(v, Value::Object(_)))
        .map(|v| v.mem_bytes().host)
        .sum()
}

/// Whether a param is a seed: it changes what a node computes, not the memory it takes, so it
/// stays out of the peak key. Names: `seed`, `noise_seed`, or anything ending in `_seed`.
fn is_seed_param(name: &str) -> bool {
    name == "seed" || name.ends_with("_seed")
}

/// The key under which a node's device peak is learned: type, version, params except seeds
/// (linked params by their value), and each linked input's port, type and byte size.
fn shape_key(slot: &Slot<'_>, slots: &[Option<Slot<'_>>]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"veetance-peak-v1\0");
    let Some(def) = &slot.def else {
        return *h.finalize().as_bytes();
    };
    let schema = def.schema();
    h.update(schema.type_name.as_bytes());
    h.update(&schema.version.to_le_bytes());
    let source = |src: NodeIndex, out: usize| {
        slots[src.index()]
            .as_ref()
            .and_then(|s| s.values.as_ref())
            .and_then(|v| v.get(out).cloned())
    };
    for (name, value) in &slot.params.0 {
        if is_seed_param(name) {
            continue;
        }
        h.update(b"p");
        h.update(name.as_bytes());
        h.update(&[0]);
        let linked = slot.inputs.iter().find(|(_, _, port)| port == name);
        let value = match linked {
            Some((src, out, _)) => source(*src, *out),
            None => Some(value.clone()),
        };
        if let Some(v) = value {
            if !v.hash_content(&mut h) {
                h.update(&v.mem_bytes().total().to_le_bytes());
            }
        }
    }
    for (src, out, port) in &slot.inputs {
        if schema.param_def(port).is_some() {
            continue;
        }
        h.update(b"i");
        h.update(port.as_bytes());
        h.update(&[0]);
        if let Some(v) = source(*src, *out) {
            h.update(v.port_type().name().as_bytes());
            h.update(&v.mem_bytes().total().to_le_bytes());
        }
    }
    *h.finalize().as_bytes()
}
