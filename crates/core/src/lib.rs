//! Veetance engine core: the typed node graph, node declarations and registry, validation, the
//! caching scheduler and its events. No UI and no model code live here; see
//! `docs/ARCHITECTURE.md` for how the crates fit together.

pub mod cache;
pub mod cancel;
pub mod engine;
pub mod events;
pub mod graph;
pub mod memory;
pub mod node;
pub mod registry;
pub mod schema;
pub mod validate;
pub mod value;

pub use cache::{Budgets, CacheKey, CacheStats, OutputCache, MAX_ENTRIES};
pub use cancel::CancelToken;
pub use engine::{Engine, MemoryKind, MemoryReport, RunError, RunOptions, RunReport};
pub use events::{CollectSink, Event, EventSink, FnSink, MemoryPoint, NullSink};
pub use graph::{Graph, GraphError, Link, NodeInstance, PortRef};
pub use memory::{DeviceMemory, DeviceProbe, HostMemory, SimulatedDevice};
pub use node::{ExecContext, Freshness, NodeDef, NodeError, ParamProblem, Params, RunEnv};
pub use registry::NodeRegistry;
pub use schema::{NodeSchema, ParamDef, ParamKind, PortDef};
pub use validate::{validate, Place, Problem, ValidationError};
pub use value::{Image, Mask, MemBytes, Object, Payload, PortType, Value};
