//! ComfyUI interop: its two graph formats (the API prompt and the UI workflow JSON) read into
//! Veetance graphs, `/object_info` written from node schemas, and ComfyUI's error shapes.
//!
//! - [`prompt_to_graph`]: an API prompt (`{"id": {"class_type", "inputs", "_meta"}}`) to a core
//!   [`Graph`] whose node ids are the prompt's ids (`"9"`, `"75:61"`).
//! - [`ui_to_prompt`]: a UI workflow as ComfyUI saves it (format 0.4, subgraphs, bypassed and
//!   muted nodes, primitive nodes, `widgets_values`) to the API prompt ComfyUI's frontend would
//!   queue for it.
//! - [`check_prompt`]: validation with ComfyUI's answer: which outputs can run, and
//!   `node_errors` keyed by node id with ComfyUI's error type names.
//! - [`object_info`]: ComfyUI's `/object_info` entries for every registered node type.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;
use veetance_core::{Graph, NodeRegistry, RunEnv};

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

/// The errors of one node: `{"errors": [...], "dependent_outputs": [...], "class_type"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeErrors {
    pub errors: Vec<ErrorBody>,
    pub dependent_outputs: Vec<String>,
    pub class_type: String,
}

/// A prompt ComfyUI would refuse with 400: `{"error": {...}, "node_errors": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[error("{}: {}", error.message, error.details)]
pub struct PromptError {
    pub error: ErrorBody,
    pub node_errors: BTreeMap<String, NodeErrors>,
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
/// supported ones.
pub fn prompt_to_graph(prompt: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    let _ = (prompt, registry);
    Err(not_yet("prompt_to_graph"))
}

/// Validates a graph read from a prompt, as ComfyUI's `validate_prompt` answers: `Ok` with the
/// runnable outputs (and the broken ones' errors) when at least one output can run, else the
/// 400 error (`prompt_no_outputs`, `prompt_outputs_failed_validation`).
pub fn check_prompt(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<Checked, PromptError> {
    let _ = (graph, registry, env);
    Err(not_yet("check_prompt"))
}

/// Turns a UI workflow into the API prompt ComfyUI's frontend would queue for it: subgraphs
/// flattened to `"outer:inner"` ids, bypassed nodes bridged, muted and virtual nodes (notes,
/// reroutes, primitive nodes) removed, `widgets_values` mapped to input names in the schema's
/// order.
pub fn ui_to_prompt(workflow: &Json, registry: &NodeRegistry) -> Result<Json, PromptError> {
    let _ = (workflow, registry);
    Err(not_yet("ui_to_prompt"))
}

/// Either format to a graph (UI workflows through [`ui_to_prompt`]).
pub fn json_to_graph(doc: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    match detect(doc) {
        Some(Format::Ui) => prompt_to_graph(&ui_to_prompt(doc, registry)?, registry),
        Some(Format::Api) => prompt_to_graph(doc, registry),
        None => Err(PromptError {
            error: ErrorBody {
                kind: "invalid_prompt".into(),
                message: "Invalid prompt".into(),
                details: "the JSON is neither a ComfyUI API prompt nor a UI workflow".into(),
                extra_info: Json::Object(Default::default()),
            },
            node_errors: BTreeMap::new(),
        }),
    }
}

/// ComfyUI's `/object_info`: one entry per registered node type, in ComfyUI's full entry shape.
/// File params list the files found under `models_dir`'s folder for them.
pub fn object_info(registry: &NodeRegistry, models_dir: &Path) -> Json {
    let _ = (registry, models_dir);
    Json::Object(Default::default())
}

fn not_yet(what: &str) -> PromptError {
    PromptError {
        error: ErrorBody {
            kind: "not_implemented".into(),
            message: format!("{what} is not implemented yet"),
            details: String::new(),
            extra_info: Json::Object(Default::default()),
        },
        node_errors: BTreeMap::new(),
    }
}
