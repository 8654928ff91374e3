//! The API prompt to a core graph.
//!
//! Rules (ComfyUI's `execution.py` `validate_prompt` / `validate_inputs` where it has one):
//! - Every node needs a `class_type` naming a registered node type, else the prompt is refused
//!   with `missing_node_type` (`extra_info: {node_id, class_type, node_title}` from
//!   `_meta.title`), as ComfyUI refuses it before validating anything. The message lists the
//!   node types Veetance has.
//! - `[src_id, index]` is a link from output `index` of node `src_id`, by the source schema's
//!   output order, into the input or param of that name. A link of another shape, from a node
//!   that is not in the prompt, or from an output index the source does not have is
//!   `bad_linked_input` on the consumer.
//! - Other values set params: integers, floats, booleans and strings, converted as ComfyUI
//!   converts them (`int(val)` for INT: an integral float or a numeric string; `float(val)` for
//!   FLOAT: an integer or a numeric string; `str(val)` for STRING: a number; `bool(val)` for
//!   BOOLEAN: a number). What cannot be converted is left as it is for validation to report
//!   (`invalid_input_type`, with the value); unlike ComfyUI, a float is not truncated to an INT.
//! - `{"__value__": [...]}` (a list literal) is refused with `invalid_input_type`: no Veetance
//!   param holds a list. So are `null`, other objects, and a value for an input that takes
//!   only links.
//! - Inputs the class does not declare are ignored, as ComfyUI ignores them, and reported as
//!   [`Notice`]s so that front ends can say so (a misspelt widget name would otherwise silently
//!   run with the default).
//!
//! Shape errors are collected for every node and refused at once as
//! `prompt_outputs_failed_validation` with `node_errors`; ComfyUI would report most of them the
//! same way, though it would still run outputs that do not depend on the broken nodes.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value as Json};
use veetance_core::graph::is_valid_node_id;
use veetance_core::{Graph, Link, NodeRegistry, NodeSchema, ParamKind, PortRef, Value};

use crate::types::comfy_type;
use crate::{join, ErrorBody, NodeErrors, PromptError};

/// Something in the prompt that was ignored, as ComfyUI ignores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub node: String,
    pub class_type: String,
    pub input: String,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node '{}' ({}) input '{}': {}",
            self.node, self.class_type, self.input, self.message
        )
    }
}

/// [`crate::prompt_to_graph`], also returning what was ignored.
pub fn prompt_to_graph_with_notices(
    prompt: &Json,
    registry: &NodeRegistry,
) -> Result<(Graph, Vec<Notice>), PromptError> {
    let nodes = prompt.as_object().ok_or_else(|| {
        PromptError::top(ErrorBody::new(
            "invalid_prompt",
            "Invalid prompt",
            format!(
                "a prompt is a JSON object of node id → {{\"class_type\", \"inputs\"}}, not {}",
                json_kind(prompt)
            ),
        ))
    })?;

    // Every node's class first: ComfyUI refuses an unknown class before anything else.
    let mut schemas: BTreeMap<&str, &NodeSchema> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (id, node) in nodes {
        let Some(fields) = node.as_object() else {
            return Err(PromptError::top(ErrorBody::new(
                "invalid_prompt",
                "Invalid prompt",
                format!(
                    "node '{id}' is {}; each node is an object {{\"class_type\", \"inputs\"}}",
                    json_kind(node)
                ),
            )));
        };
        let title = fields
            .get("_meta")
            .and_then(|m| m.get("title"))
            .and_then(Json::as_str);
        let Some(class_type) = fields.get("class_type").and_then(Json::as_str) else {
            return Err(PromptError::top(
                ErrorBody::new(
                    "missing_node_type",
                    format!(
                        "Node '{}' has no class_type. The workflow may be corrupted or a custom \
                         node is missing.",
                        title.map_or_else(|| format!("ID #{id}"), str::to_string)
                    ),
                    format!("Node ID '#{id}'"),
                )
                .with_extra(json!({"node_id": id, "class_type": null, "node_title": title})),
            ));
        };
        let Some(def) = registry.get(class_type) else {
            unknown.push((id.as_str(), class_type, title));
            continue;
        };
        if !is_valid_node_id(id) {
            return Err(PromptError::top(ErrorBody::new(
                "invalid_prompt",
                "Invalid prompt",
                format!(
                    "node id {id:?} is not usable: Veetance node ids are letters, digits, '_', \
                     '-' and ':'"
                ),
            )));
        }
        schemas.insert(id, def.schema());
    }
    if let Some(&(id, class_type, title)) = unknown.first() {
        let mut err = missing_node_type(id, class_type, title, registry);
        let others: Vec<String> = unknown[1..]
            .iter()
            .map(|(id, class, _)| format!("{class} (node '{id}')"))
            .collect();
        if !others.is_empty() {
            err.error.message =
                format!("{}. Also unknown: {}", err.error.message, others.join(", "));
        }
        return Err(err);
    }

    let mut graph = Graph::new();
    let mut links = Vec::new();
    let mut notices = Vec::new();
    let mut errors: BTreeMap<String, Vec<ErrorBody>> = BTreeMap::new();
    for (id, node) in nodes {
        let schema = schemas[id.as_str()];
        let inputs = match node.get("inputs") {
            None => Map::new(),
            Some(Json::Object(inputs)) => inputs.clone(),
            Some(other) => {
                return Err(PromptError::top(ErrorBody::new(
                    "invalid_prompt",
                    "Invalid prompt",
                    format!(
                        "node '{id}' ({}): \"inputs\" is {}, not an object of input name → \
                         value or link",
                        schema.type_name,
                        json_kind(other)
                    ),
                )))
            }
        };
        let mut params = BTreeMap::new();
        for (name, value) in &inputs {
            let target = if let Some(port) = schema.input_def(name) {
                Target::Input(port.ty)
            } else if let Some(param) = schema.param_def(name) {
                Target::Param(&param.kind)
            } else {
                notices.push(Notice {
                    node: id.clone(),
                    class_type: schema.type_name.clone(),
                    input: name.clone(),
                    message: format!(
                        "{} has no input of this name; ignored (as ComfyUI ignores it). Its \
                         inputs: {}",
                        schema.type_name,
                        join(input_names(schema))
                    ),
                });
                continue;
            };
            match read_input(name, value, target, nodes, &schemas) {
                Ok(Read::Link(from)) => links.push(Link {
                    from,
                    to: PortRef::new(id, name),
                }),
                Ok(Read::Param(v)) => {
                    params.insert(name.clone(), v);
                }
                Err(e) => errors.entry(id.clone()).or_default().push(e),
            }
        }
        graph.add_node(id, &schema.type_name, params).map_err(|e| {
            PromptError::top(ErrorBody::new(
                "invalid_prompt",
                "Invalid prompt",
                e.to_string(),
            ))
        })?;
    }
    for link in links {
        graph.add_link(link);
    }

    if errors.is_empty() {
        return Ok((graph, notices));
    }
    let outputs = crate::check::output_nodes(&graph, registry);
    let upstream = crate::check::upstream_sets(&graph, &outputs);
    let mut node_errors = BTreeMap::new();
    let mut lines = Vec::new();
    for (id, errs) in errors {
        let class_type = schemas[id.as_str()].type_name.clone();
        for e in &errs {
            lines.push(format!("{}: {}", e.message, e.details));
        }
        let dependent_outputs = outputs
            .iter()
            .zip(&upstream)
            .filter(|(_, up)| up.contains(&id))
            .map(|(o, _)| o.clone())
            .collect();
        node_errors.insert(
            id,
            NodeErrors {
                errors: errs,
                dependent_outputs,
                class_type,
            },
        );
    }
    Err(PromptError {
        error: ErrorBody::new(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            lines.join("\n"),
        ),
        node_errors,
    })
}

/// ComfyUI's refusal of an unknown class, listing the node types Veetance has.
pub(crate) fn missing_node_type(
    id: &str,
    class_type: &str,
    title: Option<&str>,
    registry: &NodeRegistry,
) -> PromptError {
    let title = title.unwrap_or(class_type);
    let suggestion = registry
        .suggest(class_type)
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
    let known: Vec<&str> = registry.schemas().map(|s| s.type_name.as_str()).collect();
    PromptError::top(
        ErrorBody::new(
            "missing_node_type",
            format!(
                "Node '{title}' not found. Veetance has no node type '{class_type}'{suggestion}; \
                 the node types it has: {}",
                known.join(", ")
            ),
            format!("Node ID '#{id}'"),
        )
        .with_extra(json!({"node_id": id, "class_type": class_type, "node_title": title})),
    )
}

enum Target<'s> {
    Input(veetance_core::PortType),
    Param(&'s ParamKind),
}

enum Read {
    Link(PortRef),
    Param(Value),
}

fn read_input(
    name: &str,
    value: &Json,
    target: Target<'_>,
    nodes: &Map<String, Json>,
    schemas: &BTreeMap<&str, &NodeSchema>,
) -> Result<Read, ErrorBody> {
    let bad_link = |details: String| {
        ErrorBody::new(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            details,
        )
        .with_extra(json!({"input_name": name, "received_value": value}))
    };
    let invalid = |message: String, details: String| {
        ErrorBody::new("invalid_input_type", message, details)
            .with_extra(json!({"input_name": name, "received_value": value}))
    };
    match value {
        Json::Array(items) => {
            let (src, index) = match items.as_slice() {
                [src, index] => (
                    src.as_str()
                        .map(str::to_string)
                        .or_else(|| src.as_i64().map(|i| i.to_string())),
                    index.as_u64(),
                ),
                _ => (None, None),
            };
            let (Some(src), Some(index)) = (src, index) else {
                return Err(bad_link(format!(
                    "{name}: {value} is not a link; a link is [\"node id\", output index], and a \
                     list value is written {{\"__value__\": [...]}}"
                )));
            };
            if !nodes.contains_key(&src) {
                return Err(bad_link(format!(
                    "{name}: linked to node '{src}', which is not in the prompt"
                )));
            }
            let source = schemas[src.as_str()];
            let Some(port) = usize::try_from(index)
                .ok()
                .and_then(|i| source.outputs.get(i))
            else {
                let outputs: Vec<String> = source
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("{i} {} ({})", p.name, comfy_type(p.ty)))
                    .collect();
                return Err(bad_link(format!(
                    "{name}: node '{src}' ({}) has no output {index}; its outputs: {}",
                    source.type_name,
                    if outputs.is_empty() {
                        "none".to_string()
                    } else {
                        outputs.join(", ")
                    }
                )));
            };
            Ok(Read::Link(PortRef::new(&src, &port.name)))
        }
        Json::Object(fields) if fields.contains_key("__value__") => Err(invalid(
            "Failed to convert an input value".into(),
            format!(
                "{name}: a list value ({}) is not supported: Veetance's {} takes one value here",
                fields["__value__"],
                match target {
                    Target::Input(ty) => comfy_type(ty).to_string(),
                    Target::Param(kind) => crate::types::param_type_name(kind).to_string(),
                }
            ),
        )),
        Json::Object(_) | Json::Null => Err(invalid(
            "Failed to convert an input value".into(),
            format!(
                "{name}: {} is not a value; give a number, string or boolean, or a link \
                 [\"node id\", output index]",
                json_kind(value)
            ),
        )),
        scalar => match target {
            Target::Input(ty) => Err(invalid(
                format!(
                    "Failed to convert an input value to a {} value",
                    comfy_type(ty)
                ),
                format!(
                    "{name}, {scalar}: this input takes a link from a {} output \
                     ([\"node id\", output index]), not a value",
                    comfy_type(ty)
                ),
            )),
            Target::Param(kind) => Ok(Read::Param(convert(scalar, kind))),
        },
    }
}

/// A JSON scalar as a param value, converted as ComfyUI converts widget values. What does not
/// convert is kept as it is, for validation to report with the value.
fn convert(value: &Json, kind: &ParamKind) -> Value {
    let raw = || match value {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::string(s.as_str()),
        other => Value::string(other.to_string()),
    };
    match (kind, value) {
        (ParamKind::Int { .. }, Json::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
                _ => raw(),
            },
        },
        (ParamKind::Int { .. }, Json::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .unwrap_or_else(|_| raw()),
        (ParamKind::Float { .. }, Json::Number(n)) => {
            n.as_f64().map(Value::Float).unwrap_or_else(raw)
        }
        (ParamKind::Float { .. }, Json::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .unwrap_or_else(|_| raw()),
        (ParamKind::String { .. } | ParamKind::Path { .. }, Json::Number(n)) => {
            Value::string(n.to_string())
        }
        (ParamKind::Bool { .. }, Json::Number(n)) => Value::Bool(n.as_f64() != Some(0.0)),
        _ => raw(),
    }
}

/// The names a prompt may set on a node of this schema: its inputs, then its params.
fn input_names(schema: &NodeSchema) -> Vec<&str> {
    schema
        .inputs
        .iter()
        .map(|p| p.name.as_str())
        .chain(schema.params.iter().map(|p| p.name.as_str()))
        .collect()
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}
