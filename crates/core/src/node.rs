//! The contract between the engine and a node type.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cancel::CancelToken;
use crate::events::{Event, EventSink};
use crate::schema::NodeSchema;
use crate::value::{Image, Object, PortType, Value};

/// What a node needs to know about the run it is part of.
#[derive(Clone, Debug)]
pub struct RunEnv {
    /// Where output nodes write files. Output nodes must never write outside it.
    pub out_dir: PathBuf,
    /// Where model files are looked up by name (ComfyUI layout: `diffusion_models/`, ...).
    pub models_dir: PathBuf,
    /// How many runs the engine has started before this one (0 for the first). Seed nodes in
    /// `increment` mode add it to their seed.
    pub run_index: u64,
    /// The workflow being run, as `.ron` text, for output nodes that embed it in their files.
    pub workflow: Option<Arc<str>>,
    /// More text chunks output nodes embed in the images they write, as (key, text): a
    /// ComfyUI graph run through the server or `--headless` carries ComfyUI's `prompt` (its API
    /// JSON) and `workflow` (its UI JSON), as ComfyUI writes them.
    pub png_text: Vec<(String, String)>,
    /// Where preview nodes (ComfyUI's `PreviewImage`) write their files; `None`: `out_dir/temp`
    /// (see [`RunEnv::temp_dir`]).
    pub temp_dir: Option<PathBuf>,
    /// Where image loaders resolve bare file names (ComfyUI's `input` folder); `None`: names
    /// are resolved against the current directory.
    pub input_dir: Option<PathBuf>,
}

impl Default for RunEnv {
    fn default() -> Self {
        RunEnv {
            out_dir: PathBuf::from("out"),
            models_dir: PathBuf::from("models"),
            run_index: 0,
            workflow: None,
            png_text: Vec::new(),
            temp_dir: None,
            input_dir: None,
        }
    }
}

impl RunEnv {
    /// The folder preview nodes write to: `temp_dir`, else `out_dir/temp`.
    pub fn temp_dir(&self) -> PathBuf {
        self.temp_dir
            .clone()
            .unwrap_or_else(|| self.out_dir.join("temp"))
    }
}

/// Whether a node's output is determined by its type, params and inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Same params and inputs, same output: cached by the usual key.
    Pure,
    /// The output also depends on something outside the graph (a file's identity, the run
    /// index); these bytes join the cache key so that a change re-runs the node.
    Fingerprint(Vec<u8>),
    /// Not deterministic by nature (a random seed): executed on every run and never served from
    /// the cache. Its outputs are keyed by their content, so descendants still hit the cache
    /// when the output comes out the same.
    Always,
}

/// The params of a node as it runs: every declared param, set, defaulted, or fed by a link.
#[derive(Clone, Debug, Default)]
pub struct Params(pub Vec<(String, Value)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn require(&self, name: &str) -> Result<&Value, NodeError> {
        self.get(name)
            .ok_or_else(|| NodeError::failed(format!("param '{name}' is not declared")))
    }

    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        self.require(name)?
            .as_int()
            .ok_or_else(|| NodeError::failed(format!("param '{name}' is not an integer")))
    }

    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        self.require(name)?
            .as_float()
            .ok_or_else(|| NodeError::failed(format!("param '{name}' is not a number")))
    }

    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        self.require(name)?
            .as_bool()
            .ok_or_else(|| NodeError::failed(format!("param '{name}' is not a bool")))
    }

    pub fn str(&self, name: &str) -> Result<&str, NodeError> {
        self.require(name)?
            .as_str()
            .ok_or_else(|| NodeError::failed(format!("param '{name}' is not a string")))
    }
}

/// Why a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
    /// The device ran out of memory. The engine also recognises `Failed` messages from candle's
    /// CUDA errors (`CUDA_ERROR_OUT_OF_MEMORY`, "out of memory"), so nodes may pass those on
    /// as they are.
    #[error("out of device memory: {message}")]
    OutOfMemory {
        /// Bytes the node asked for, when it knows.
        needed: Option<u64>,
        message: String,
    },
}

impl NodeError {
    pub fn failed(message: impl Into<String>) -> Self {
        NodeError::Failed(message.into())
    }

    pub fn out_of_memory(needed: Option<u64>, message: impl Into<String>) -> Self {
        NodeError::OutOfMemory {
            needed,
            message: message.into(),
        }
    }

    /// Whether this is a device out-of-memory error, structured or by its message.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            NodeError::OutOfMemory { .. } => true,
            NodeError::Failed(m) => crate::memory::is_out_of_memory_message(m),
            NodeError::Cancelled => false,
        }
    }
}

/// A problem found in a node's params before the run (a missing input file, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamProblem {
    pub param: String,
    pub message: String,
}

/// A node type. Implementations are registered once in a [`crate::NodeRegistry`].
pub trait NodeDef: Send + Sync + 'static {
    fn schema(&self) -> &NodeSchema;

    /// Whether the output depends on more than params and inputs. Called once per run, before
    /// anything executes, with the constant params (linked params show their constant or
    /// default here).
    fn freshness(&self, _params: &Params, _env: &RunEnv) -> Freshness {
        Freshness::Pure
    }

    /// Node-specific checks run by validation (a file that must exist, width a multiple of 16).
    fn check(&self, _params: &Params, _env: &RunEnv) -> Vec<ParamProblem> {
        Vec::new()
    }

    /// Computes the outputs, one value per declared output, in order.
    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError>;

    /// Device bytes the node will allocate as working memory beyond its inputs and the weights
    /// it places (activations, for a sampler), when it can tell from its params and inputs
    /// before running. The engine makes this much room first; without it, the engine uses the
    /// peak it measured on an earlier run. Called before `execute`; `None` by default.
    fn device_need(&self, _params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        None
    }

    /// Host (RAM) bytes the node will allocate while it runs, its outputs included, beyond its
    /// inputs: the pixels of an image it makes, a sampler's activations when the model runs on
    /// the CPU. Called before `execute`; the engine refuses to start a node whose need passes
    /// what the system has available (and the engine's host limit, when one is set), with
    /// [`crate::RunError::OutOfMemory`], instead of letting an allocation abort the process.
    /// `None` (the default): small or unknown.
    fn host_need(&self, _params: &Params, _inputs: &[(&str, Value)]) -> Option<u64> {
        None
    }
}

/// The text of a caught panic, for the error that reports it.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// What a node sees while it executes.
pub struct ExecContext<'a> {
    pub node_id: &'a str,
    pub params: Params,
    pub env: &'a RunEnv,
    pub cancel: &'a CancelToken,
    inputs: Vec<(&'a str, Value)>,
    events: &'a dyn EventSink,
    device_room: Option<u64>,
    host_room: Option<u64>,
}

impl<'a> ExecContext<'a> {
    pub fn new(
        node_id: &'a str,
        params: Params,
        inputs: Vec<(&'a str, Value)>,
        env: &'a RunEnv,
        cancel: &'a CancelToken,
        events: &'a dyn EventSink,
    ) -> Self {
        ExecContext {
            node_id,
            params,
            env,
            cancel,
            inputs,
            events,
            device_room: None,
            host_room: None,
        }
    }

    /// Sets the device bytes this node may use (see [`ExecContext::device_room`]).
    pub fn with_device_room(mut self, bytes: Option<u64>) -> Self {
        self.device_room = bytes;
        self
    }

    /// Sets the host bytes this node may use (see [`ExecContext::host_room`]).
    pub fn with_host_room(mut self, bytes: Option<u64>) -> Self {
        self.host_room = bytes;
        self
    }

    /// Host memory this node may allocate: what the system had available when it started, or
    /// the engine's host limit if smaller; `None` when unknown. Nodes that run on the CPU and can
    /// trade speed for memory (a tiled decode) choose their path by it.
    pub fn host_room(&self) -> Option<u64> {
        self.host_room
    }

    /// Device memory this node may allocate without leaving the run's VRAM budget, after the
    /// scheduler made room for it; `None` when no budget applies. Nodes that can trade speed for
    /// memory (tiled decode, streamed weights) choose their path by it.
    pub fn device_room(&self) -> Option<u64> {
        self.device_room
    }

    /// A linked input, or None when an optional input is not connected.
    pub fn input(&self, name: &str) -> Option<&Value> {
        self.inputs.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// A required input (validation guarantees it is linked).
    pub fn required(&self, name: &str) -> Result<&Value, NodeError> {
        self.input(name)
            .ok_or_else(|| NodeError::failed(format!("input '{name}' is not connected")))
    }

    pub fn image(&self, name: &str) -> Result<&Image, NodeError> {
        self.required(name)?
            .as_image()
            .ok_or_else(|| NodeError::failed(format!("input '{name}' is not an image")))
    }

    pub fn object(&self, name: &str, ty: PortType) -> Result<&Object, NodeError> {
        match self.required(name)? {
            Value::Object(o) if o.ty == ty => Ok(o),
            other => Err(NodeError::failed(format!(
                "input '{name}' should be {ty}, found {}",
                other.port_type()
            ))),
        }
    }

    /// Returns `Err(Cancelled)` if the run was cancelled; long loops call it every step.
    pub fn check_cancelled(&self) -> Result<(), NodeError> {
        if self.cancel.is_cancelled() {
            Err(NodeError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn progress(&self, step: u64, total: u64) {
        self.events.emit(&Event::Progress {
            node: self.node_id.into(),
            step,
            total,
        });
    }

    pub fn preview(&self, image: Image) {
        self.events.emit(&Event::Preview {
            node: self.node_id.into(),
            width: image.width,
            height: image.height,
            image,
        });
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.events.emit(&Event::Warning {
            node: Some(self.node_id.into()),
            message: message.into(),
        });
    }

    pub fn output_written(&self, path: impl Into<String>) {
        self.events.emit(&Event::OutputWritten {
            node: self.node_id.into(),
            path: path.into(),
        });
    }
}
