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

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use crate::cache::{Budgets, CacheKey, OutputCache};
use crate::cancel::CancelToken;
use crate::events::{Event, EventSink};
use crate::graph::Graph;
use crate::node::{panic_message, ExecContext, Freshness, NodeDef, NodeError, Params, RunEnv};
use crate::registry::NodeRegistry;
use crate::validate::{check_graph, ValidationError};
use crate::value::Value;

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
    /// Remaining consumers among the nodes to process; the value is dropped at zero.
    consumers: usize,
    values: Option<Arc<[Value]>>,
}

/// Runs graphs against a registry, keeping an output cache across runs.
pub struct Engine {
    registry: Arc<NodeRegistry>,
    cache: OutputCache,
    runs: u64,
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

        let mut report = RunReport {
            run,
            executed: Vec::new(),
            cached: Vec::new(),
            up_to_date: 0,
            outputs: BTreeMap::new(),
            duration: Duration::ZERO,
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
                    let slot = slots[ix.index()].as_mut().expect("planned");
                    slot.key = key;
                    slot.values = hit;
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
                let (values, elapsed) = self.execute(ix, graph, &slots, env, options, events)?;
                let slot = slots[ix.index()].as_mut().expect("planned");
                if slot.freshness == Freshness::Always {
                    slot.key = content_key(slot, &values, pg, ix);
                } else if let KeyState::Known(k) = slot.key {
                    self.cache
                        .insert(k, &node.type_name, values.clone(), elapsed);
                }
                slot.values = Some(values);
                report.executed.push(node.id.clone());
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
        report.duration = started.elapsed();
        Ok(report)
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

    fn execute(
        &self,
        ix: NodeIndex,
        graph: &Graph,
        slots: &[Option<Slot<'_>>],
        env: &RunEnv,
        options: &RunOptions,
        events: &dyn EventSink,
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

        // Inputs, and linked params replacing their constants.
        let mut params = slot.params.clone();
        let mut inputs = Vec::with_capacity(slot.inputs.len());
        for (src, out_index, port) in &slot.inputs {
            let value = slots[src.index()]
                .as_ref()
                .and_then(|s| s.values.as_ref())
                .and_then(|v| v.get(*out_index).cloned())
                .ok_or_else(|| fail(format!("input '{port}' has no value (engine bug)")))?;
            if let Some(pdef) = schema.param_def(port) {
                let value = pdef
                    .kind
                    .check(&value)
                    .map_err(|m| fail(format!("linked param '{port}': {m}")))?;
                if let Some(p) = params.0.iter_mut().find(|(n, _)| n == port) {
                    p.1 = value;
                }
            } else {
                inputs.push((*port, value));
            }
        }

        events.emit(&Event::NodeStarted {
            node: node.id.clone(),
            node_type: node.type_name.clone(),
        });
        let t0 = Instant::now();
        let mut ctx = ExecContext::new(&node.id, params, inputs, env, &options.cancel, events);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| def.execute(&mut ctx)));
        let elapsed = t0.elapsed();
        let values = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(NodeError::Cancelled)) => {
                return Err(RunError::Cancelled {
                    node: Some(node.id.clone()),
                })
            }
            Ok(Err(NodeError::Failed(m))) => return Err(fail(m)),
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
