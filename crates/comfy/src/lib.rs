//! ComfyUI interop: its two graph formats (the API prompt and the UI workflow JSON) read into
//! Veetance graphs, `/object_info` written from node schemas, and ComfyUI's error shapes.
//!
//! - [`prompt_to_graph`]: an API prompt (`{"id": {"class_type", "inputs", "_meta"}}`) to a core
//!   [`Graph`] whose node ids are the prompt's ids (`"9"`, `"75:61"`).
//! - [`ui_to_prompt`]: a UI workflow as ComfyUI saves it (format 0.4, subgraphs, bypassed and
//!   muted nodes, primitive nodes, `widgets_values`) to the API prompt ComfyUI's frontend would
//!   queue for it.
//! - [`check_prompt`]: validation with ComfyUI's answer: which outputs can run, and
//!   `node_errors` keyed by node id with ComfyUI's error type names. [`prune`] then keeps the
//!   part of the graph those outputs need, which is what ComfyUI executes.
//! - [`object_info`]: ComfyUI's `/object_info` entries for every registered node type.
//!
//! ComfyUI's class names are Veetance node type names: a class's link inputs are the schema's
//! `inputs`, its widgets the schema's `params` in ComfyUI's `widgets_values` order. The rules of
//! each conversion, and where they follow ComfyUI's Python server (`execution.py`
//! `validate_prompt`) or its frontend (`graphToPrompt`, `ExecutableNodeDTO`), are in the module
//! docs of `prompt`, `check` and `ui`.

#![expect(
    clippy::result_large_err,
    reason = "PromptError is ComfyUI's whole error document (128 bytes), made once per refused \
              request; boxing it would buy nothing and change the API the server codes against"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value as Json};
use veetance_core::{Graph, NodeRegistry, RunEnv};

mod check;
mod object_info;
mod prompt;
pub mod types;
mod ui;

pub use check::prune;
pub use prompt::{prompt_to_graph_with_notices, Notice};
pub use ui::{ui_positions, MAX_FLAT_NODES};

/// Which of ComfyUI's two formats a JSON document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The API prompt: an object of node id → `{class_type, inputs}`.
    Api,
    /// The UI workflow: `{nodes: [...], links: [...], version, ...}`.
    Ui,
}

/// Tells the two formats apart; `None` for JSON that is neither.
pub fn detect(doc: &Json) -> Option<Format> {
    let obj = doc.as_object()?;
    if obj.get("nodes").is_some_and(Json::is_array) && obj.contains_key("links") {
        return Some(Format::Ui);
    }
    if !obj.is_empty()
        && obj
            .values()
            .all(|n| n.get("class_type").is_some() || n.get("inputs").is_some())
    {
        return Some(Format::Api);
    }
    None
}

/// One error in ComfyUI's shape: `{"type", "message", "details", "extra_info"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub details: String,
    pub extra_info: Json,
}

impl ErrorBody {
    pub(crate) fn new(kind: &str, message: impl Into<String>, details: impl Into<String>) -> Self {
        ErrorBody {
            kind: kind.into(),
            message: message.into(),
            details: details.into(),
            extra_info: json!({}),
        }
    }

    pub(crate) fn with_extra(mut self, extra_info: Json) -> Self {
        self.extra_info = extra_info;
        self
    }

    /// The input the error is about (`extra_info.input_name`), if any.
    pub fn input_name(&self) -> Option<&str> {
        self.extra_info.get("input_name").and_then(Json::as_str)
    }
}

/// The errors of one node: `{"errors": [...], "dependent_outputs": [...], "class_type"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeErrors {
    pub errors: Vec<ErrorBody>,
    pub dependent_outputs: Vec<String>,
    pub class_type: String,
}

/// A prompt ComfyUI would refuse with 400: `{"error": {...}, "node_errors": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("{}", self.error_line())]
pub struct PromptError {
    pub error: ErrorBody,
    pub node_errors: BTreeMap<String, NodeErrors>,
}

impl PromptError {
    pub(crate) fn top(error: ErrorBody) -> Self {
        PromptError {
            error,
            node_errors: BTreeMap::new(),
        }
    }

    fn error_line(&self) -> String {
        if self.error.details.is_empty() {
            self.error.message.clone()
        } else {
            format!("{}: {}", self.error.message, self.error.details)
        }
    }

    /// The error for people, one line each: the prompt's error (its message alone when node
    /// errors follow, as its details repeat them), then every node error naming the node id,
    /// its class and the input.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.node_errors.is_empty() {
            out.push(self.error_line());
        } else {
            out.push(self.error.message.clone());
            out.extend(node_error_lines(&self.node_errors));
        }
        out
    }
}

/// One line per node error: `node '75:70' (UNETLoader) input 'unet_name': message: details`.
pub fn node_error_lines(node_errors: &BTreeMap<String, NodeErrors>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, node) in node_errors {
        for e in &node.errors {
            let place = e
                .input_name()
                .map(|i| format!(" input '{i}'"))
                .unwrap_or_default();
            let details = if e.details.is_empty() {
                String::new()
            } else {
                format!(": {}", e.details)
            };
            out.push(format!(
                "node '{id}' ({}){place}: {}{details}",
                node.class_type, e.message
            ));
        }
    }
    out
}

/// What validation found in a prompt ComfyUI would accept (200): the output nodes that can run
/// and the errors of the others (`node_errors`, possibly empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checked {
    pub outputs: Vec<String>,
    pub node_errors: BTreeMap<String, NodeErrors>,
}

/// Reads an API prompt into a graph. Links (`["src_id", output_index]`) join the source's output
/// of that index to the input or param of that name; other values set params. Unknown class
/// types are ComfyUI's `missing_node_type` error naming the node and class and listing the
/// supported ones. Inputs the class does not declare are ignored, as ComfyUI ignores them;
/// [`prompt_to_graph_with_notices`] also says which.
pub fn prompt_to_graph(prompt: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    prompt_to_graph_with_notices(prompt, registry).map(|(graph, _)| graph)
}

/// Validates a graph read from a prompt, as ComfyUI's `validate_prompt` answers: `Ok` with the
/// runnable outputs (and the broken ones' errors) when at least one output can run, else the
/// 400 error (`prompt_no_outputs`, `prompt_outputs_failed_validation`).
pub fn check_prompt(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<Checked, PromptError> {
    check::check_prompt(graph, registry, env)
}

/// Turns a UI workflow into the API prompt ComfyUI's frontend would queue for it: subgraphs
/// flattened to `"outer:inner"` ids, bypassed nodes bridged, muted and virtual nodes (notes,
/// reroutes, primitive nodes) removed, `widgets_values` mapped to input names in the schema's
/// order.
pub fn ui_to_prompt(workflow: &Json, registry: &NodeRegistry) -> Result<Json, PromptError> {
    ui::ui_to_prompt(workflow, registry)
}

/// Either format to a graph (UI workflows through [`ui_to_prompt`]).
pub fn json_to_graph(doc: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    read_json(doc, registry).map(|read| read.graph)
}

/// A ComfyUI document read for running: the graph, the API prompt it came from (for the
/// `prompt` text chunk of images), the UI workflow when there was one (the `workflow` chunk),
/// and what was ignored on the way.
#[derive(Clone, Debug)]
pub struct ReadJson {
    pub format: Format,
    /// The API prompt: the document itself, or what [`ui_to_prompt`] made of a UI workflow.
    pub prompt: Json,
    /// The UI workflow, when the document was one (or came with one, as in ComfyUI's PNGs).
    pub workflow: Option<Json>,
    pub graph: Graph,
    pub notices: Vec<Notice>,
}

/// Either format to a graph, keeping the API prompt and the notices (see [`json_to_graph`]).
pub fn read_json(doc: &Json, registry: &NodeRegistry) -> Result<ReadJson, PromptError> {
    let format = detect(doc).ok_or_else(|| {
        PromptError::top(ErrorBody::new(
            "invalid_prompt",
            "Invalid prompt",
            "the JSON is neither a ComfyUI API prompt ({\"id\": {\"class_type\", \"inputs\"}}) \
             nor a UI workflow ({\"nodes\", \"links\", ...})",
        ))
    })?;
    let prompt = match format {
        Format::Ui => ui_to_prompt(doc, registry)?,
        Format::Api => doc.clone(),
    };
    let (graph, notices) = prompt_to_graph_with_notices(&prompt, registry)?;
    Ok(ReadJson {
        format,
        prompt,
        workflow: (format == Format::Ui).then(|| doc.clone()),
        graph,
        notices,
    })
}

/// ComfyUI JSON text (an API prompt or a UI workflow) read into a graph; a syntax error is
/// `invalid_prompt` naming its line and column.
pub fn read_json_text(text: &str, registry: &NodeRegistry) -> Result<ReadJson, PromptError> {
    read_json(&parse_text(text, "")?, registry)
}

/// The text chunks ComfyUI writes into its PNGs, `prompt` (the API prompt that ran) and
/// `workflow` (the UI workflow), read into a graph: the prompt when there is one, as it is
/// exactly what ran, else the workflow. The workflow is kept either way.
pub fn read_png_texts(
    prompt: Option<&str>,
    workflow: Option<&str>,
    registry: &NodeRegistry,
) -> Result<ReadJson, PromptError> {
    let ui = workflow
        .map(|w| parse_text(w, "the PNG's workflow chunk, "))
        .transpose()?;
    match (prompt, ui) {
        (Some(p), ui) => {
            let mut read = read_json(&parse_text(p, "the PNG's prompt chunk, ")?, registry)?;
            read.workflow = ui.or(read.workflow);
            Ok(read)
        }
        (None, Some(ui)) => read_json(&ui, registry),
        (None, None) => Err(PromptError::top(ErrorBody::new(
            "invalid_prompt",
            "Invalid prompt",
            "the PNG holds neither a ComfyUI prompt nor a workflow",
        ))),
    }
}

/// A ComfyUI document read from a file.
pub struct ComfyFile {
    pub read: ReadJson,
    /// The name messages use: the path, and for a PNG "(embedded ComfyUI workflow)".
    pub origin: String,
}

/// Why a file that looked like ComfyUI's could not be read.
#[derive(Debug)]
pub enum FileError {
    /// Not readable as what it is (a PNG that does not decode, JSON that is not UTF-8); the
    /// message names the file.
    Unreadable(String),
    /// Read, but refused, with ComfyUI's error; `origin` names the file.
    Refused { origin: String, error: PromptError },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Unreadable(message) => f.write_str(message),
            FileError::Refused { origin, error } => {
                write!(f, "{origin}: {}", error.lines().join("; "))
            }
        }
    }
}

/// The first bytes of every PNG file.
pub const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Reads a ComfyUI document from a file's bytes, the way the CLI and the editor open files:
/// JSON (a `.json` name, or text starting with `{`) as an API prompt or a UI workflow, told
/// apart by shape; a PNG by its `prompt` / `workflow` text chunks. `Ok(None)`: the file is not
/// ComfyUI's (a `.ron` workflow, or a PNG carrying `own_keyword`, a Veetance workflow, which
/// wins over ComfyUI's chunks). `png_text(bytes, keyword)` reads one text chunk of a PNG (the
/// PNG codec lives with the image nodes, which this crate does not depend on).
pub fn read_file_bytes(
    path: &Path,
    bytes: &[u8],
    own_keyword: &str,
    png_text: impl Fn(&[u8], &str) -> Result<Option<String>, String>,
    registry: &NodeRegistry,
) -> Result<Option<ComfyFile>, FileError> {
    let origin = path.display().to_string();
    if bytes.starts_with(PNG_MAGIC) {
        let text = |key: &str| {
            png_text(bytes, key)
                .map_err(|e| FileError::Unreadable(format!("{origin}: not a readable PNG: {e}")))
        };
        if text(own_keyword)?.is_some() {
            return Ok(None);
        }
        let (prompt, workflow) = (text("prompt")?, text("workflow")?);
        if prompt.is_none() && workflow.is_none() {
            return Ok(None);
        }
        let origin = format!("{origin} (embedded ComfyUI workflow)");
        return match read_png_texts(prompt.as_deref(), workflow.as_deref(), registry) {
            Ok(read) => Ok(Some(ComfyFile { read, origin })),
            Err(error) => Err(FileError::Refused { origin, error }),
        };
    }
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_json {
        return Ok(None);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        FileError::Unreadable(format!(
            "{origin}: not UTF-8 text, so not ComfyUI JSON (nor a .ron workflow)"
        ))
    })?;
    match read_json_text(text, registry) {
        Ok(read) => Ok(Some(ComfyFile { read, origin })),
        Err(error) => Err(FileError::Refused { origin, error }),
    }
}

fn parse_text(text: &str, place: &str) -> Result<Json, PromptError> {
    serde_json::from_str(text).map_err(|e| {
        PromptError::top(ErrorBody::new(
            "invalid_prompt",
            "Invalid prompt",
            format!("{place}not valid JSON: {e}"),
        ))
    })
}

/// ComfyUI's `/object_info`: one entry per registered node type, in ComfyUI's full entry shape.
/// File params list the files found under `models_dir`'s folder for them.
pub fn object_info(registry: &NodeRegistry, models_dir: &Path) -> Json {
    object_info::object_info(registry, models_dir)
}

/// One class's `/object_info` entry (for `/object_info/{class}`).
pub fn object_info_entry(schema: &veetance_core::NodeSchema, models_dir: &Path) -> Json {
    object_info::entry(schema, models_dir)
}

/// A list for messages: `a, b, c`.
pub(crate) fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
