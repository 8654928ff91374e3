//! Validation answered as ComfyUI's `validate_prompt` answers.
//!
//! Veetance's own validation ([`veetance_core::validate`]) finds the problems; this module maps
//! each to ComfyUI's per-node error type, keeps only those of nodes that some output needs (as
//! ComfyUI validates only what its outputs need), and decides which outputs can run:
//!
//! | Veetance problem | ComfyUI `type` |
//! |---|---|
//! | missing required input | `required_input_missing` |
//! | link from a wrong type | `return_type_mismatch` |
//! | param of the wrong kind, non-finite float | `invalid_input_type` |
//! | number below / above its range | `value_smaller_than_min` / `value_bigger_than_max` |
//! | choice not among the options | `value_not_in_list` |
//! | the node's own check (a model file that is missing) | `custom_validation_failed` |
//! | cycle | `dependency_cycle` (on every node of it) |
//! | link to a missing node or port, a link into a constant-only param, two links into one input | `bad_linked_input` |
//! | param the type does not have | `invalid_input_type` |
//! | a node's check that panicked | `exception_during_validation` |
//!
//! `message` is ComfyUI's; `details` starts, as ComfyUI's does, with the input's name, and then
//! says what to do. `extra_info` carries `input_name`, `input_config` (the input's
//! `/object_info` spec) and `received_value` where ComfyUI has them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde_json::{json, Value as Json};
use veetance_core::{
    validate, Graph, Link, NodeRegistry, NodeSchema, ParamKind, Place, Problem, RunEnv,
    ValidationError, Value,
};

use crate::prompt::missing_node_type;
use crate::types::{comfy_type, param_type_name, spec_of, value_json};
use crate::{join, node_error_lines, Checked, ErrorBody, NodeErrors, PromptError};

pub(crate) fn check_prompt(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<Checked, PromptError> {
    if let Some(node) = graph.nodes().find(|n| registry.get(&n.type_name).is_none()) {
        return Err(missing_node_type(&node.id, &node.type_name, None, registry));
    }
    let outputs = output_nodes(graph, registry);
    if outputs.is_empty() {
        let kinds: Vec<&str> = registry
            .schemas()
            .filter(|s| s.is_output)
            .map(|s| s.type_name.as_str())
            .collect();
        return Err(PromptError::top(ErrorBody::new(
            "prompt_no_outputs",
            "Prompt has no outputs",
            format!(
                "nothing would run: add an output node ({}) and link what it should save to it",
                kinds.join(", ")
            ),
        )));
    }

    let problems = validate(graph, registry, env).err().unwrap_or_default();
    let mut by_node: BTreeMap<String, Vec<ErrorBody>> = BTreeMap::new();
    for problem in &problems {
        for (node, body) in to_comfy(problem, graph, registry, &env.models_dir) {
            let errors = by_node.entry(node).or_default();
            if !errors.contains(&body) {
                errors.push(body);
            }
        }
    }

    let upstream = upstream_sets(graph, &outputs);
    // Each node with errors, the outputs that need it (in the outputs' order): one pass over the
    // upstream sets, not one per node and output (32,768 failing outputs took minutes).
    let mut dependents: HashMap<&str, Vec<String>> = HashMap::new();
    for (output, up) in outputs.iter().zip(&upstream) {
        for node in up {
            if by_node.contains_key(node.as_str()) {
                dependents.entry(node).or_default().push(output.clone());
            }
        }
    }
    let mut node_errors = BTreeMap::new();
    for (node, errors) in by_node {
        let dependent_outputs = dependents.remove(node.as_str()).unwrap_or_default();
        if dependent_outputs.is_empty() {
            // Nothing that runs needs this node; ComfyUI neither validates nor runs it.
            continue;
        }
        let class_type = graph
            .node(&node)
            .map(|n| n.type_name.clone())
            .unwrap_or_default();
        node_errors.insert(
            node,
            NodeErrors {
                errors,
                dependent_outputs,
                class_type,
            },
        );
    }
    let failing: HashSet<&String> = node_errors
        .values()
        .flat_map(|n| &n.dependent_outputs)
        .collect();
    let good: Vec<String> = outputs
        .iter()
        .filter(|o| !failing.contains(o))
        .cloned()
        .collect();
    drop(failing);
    if good.is_empty() {
        return Err(PromptError {
            error: ErrorBody::new(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                node_error_lines(&node_errors).join("\n"),
            ),
            node_errors,
        });
    }
    Ok(Checked {
        outputs: good,
        node_errors,
    })
}

/// The output nodes of a graph (their type's schema is an output node), in graph order.
pub(crate) fn output_nodes(graph: &Graph, registry: &NodeRegistry) -> Vec<String> {
    graph
        .nodes()
        .filter(|n| {
            registry
                .get(&n.type_name)
                .is_some_and(|d| d.schema().is_output)
        })
        .map(|n| n.id.clone())
        .collect()
}

/// For each node of `outputs`, the ids of the nodes it needs, itself included.
pub(crate) fn upstream_sets(graph: &Graph, outputs: &[String]) -> Vec<HashSet<String>> {
    outputs
        .iter()
        .map(|o| {
            let mut seen = HashSet::new();
            let mut stack = vec![o.clone()];
            while let Some(id) = stack.pop() {
                if !seen.insert(id.clone()) {
                    continue;
                }
                for (src, _, _) in graph.incoming(&id) {
                    if !seen.contains(src) {
                        stack.push(src.to_string());
                    }
                }
            }
            seen
        })
        .collect()
}

/// The part of `graph` that `outputs` need: those nodes and every node upstream of them, with
/// the links between them. This is what ComfyUI executes for a prompt (nodes no output needs
/// are neither validated nor run), and what the engine should be given after
/// [`crate::check_prompt`]: `prune(&graph, &checked.outputs)`.
pub fn prune(graph: &Graph, outputs: &[String]) -> Graph {
    let keep: HashSet<String> = upstream_sets(graph, outputs)
        .into_iter()
        .flatten()
        .collect();
    let mut out = Graph::new();
    for node in graph.nodes().filter(|n| keep.contains(&n.id)) {
        out.add_node(&node.id, &node.type_name, node.params.clone())
            .expect("ids come from a valid graph");
    }
    for link in graph.links() {
        if keep.contains(&link.from.node) && keep.contains(&link.to.node) {
            out.add_link(Link {
                from: link.from.clone(),
                to: link.to.clone(),
            });
        }
    }
    out
}

/// One Veetance validation problem as ComfyUI errors, each with the node it belongs to (a cycle
/// gives one per node of the cycle).
fn to_comfy(
    problem: &ValidationError,
    graph: &Graph,
    registry: &NodeRegistry,
    models_dir: &Path,
) -> Vec<(String, ErrorBody)> {
    let node = graph.node(&problem.node);
    let schema: Option<&NodeSchema> = node
        .and_then(|n| registry.get(&n.type_name))
        .map(|d| d.schema());
    let (name, on_output) = match &problem.place {
        Place::Node => (None, false),
        Place::Input(p) | Place::Param(p) => (Some(p.as_str()), false),
        Place::Output(p) => (Some(p.as_str()), true),
    };
    let x = name.unwrap_or_default();
    let config = || {
        schema
            .zip(name)
            .and_then(|(s, n)| spec_of(s, n, models_dir))
            .unwrap_or(Json::Null)
    };
    let received = || {
        node.zip(name)
            .and_then(|(n, p)| n.params.get(p))
            .map(value_json)
            .unwrap_or(Json::Null)
    };
    let input_extra = || {
        if on_output {
            json!({})
        } else {
            json!({"input_name": x})
        }
    };
    let bad_link = |details: String| {
        ErrorBody::new(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            details,
        )
        .with_extra(input_extra())
    };
    let one = |body: ErrorBody| vec![(problem.node.clone(), body)];
    match &problem.problem {
        Problem::UnknownNodeType { type_name, .. } => {
            one(missing_node_type(&problem.node, type_name, None, registry).error)
        }
        Problem::MissingInput { ty } => one(ErrorBody::new(
            "required_input_missing",
            "Required input is missing",
            format!(
                "{x}: link a {} output to it{}",
                comfy_type(*ty),
                producers(registry, *ty)
            ),
        )
        .with_extra(json!({"input_name": x}))),
        Problem::TypeMismatch {
            expected,
            found,
            from,
        } => {
            let (src, port) = from.split_once('.').unwrap_or((from.as_str(), ""));
            let index = graph
                .node(src)
                .and_then(|n| registry.get(&n.type_name))
                .and_then(|d| d.schema().output_index(port));
            one(ErrorBody::new(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                format!(
                    "{x}, received_type({}) mismatch input_type({}); link a {} output to it{}",
                    comfy_type(*found),
                    comfy_type(*expected),
                    comfy_type(*expected),
                    producers(registry, *expected)
                ),
            )
            .with_extra(json!({
                "input_name": x,
                "input_config": config(),
                "received_type": comfy_type(*found),
                "linked_node": [src, index],
            })))
        }
        Problem::MissingNode { missing } => one(bad_link(if on_output {
            format!("output '{x}' is linked to node '{missing}', which is not in the prompt")
        } else {
            format!("{x}: linked to node '{missing}', which is not in the prompt")
        })),
        Problem::MissingPort {
            node_type,
            available,
        } => one(bad_link(if on_output {
            format!(
                "{node_type} has no output '{x}' (its outputs: {})",
                none_if_empty(available)
            )
        } else {
            format!(
                "{x}: {node_type} has no input of this name (its inputs: {})",
                none_if_empty(available)
            )
        })),
        Problem::NotLinkable => one(ErrorBody::new(
            "bad_linked_input",
            "Bad linked input: this input takes a value, not a link",
            format!("{x}: remove the link and set a value instead"),
        )
        .with_extra(json!({"input_name": x, "input_config": config()}))),
        Problem::MultipleLinks { count } => one(bad_link(format!(
            "{x}: {count} links go into it; an input takes one"
        ))),
        Problem::Cycle { nodes } => {
            let class = |id: &str| {
                graph
                    .node(id)
                    .map(|n| n.type_name.clone())
                    .unwrap_or_default()
            };
            let path = nodes
                .iter()
                .chain(nodes.first())
                .map(|id| format!("{id} ({})", class(id)))
                .collect::<Vec<_>>()
                .join(" -> ");
            nodes
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        ErrorBody::new(
                            "dependency_cycle",
                            "Dependency cycle detected",
                            format!("{path}; remove one of these links"),
                        )
                        .with_extra(json!({"node_id": id, "cycle_nodes": nodes})),
                    )
                })
                .collect()
        }
        Problem::UnknownParam { node_type } => one(ErrorBody::new(
            "invalid_input_type",
            "Unknown input",
            format!("{x}: {node_type} has no input of this name"),
        )
        .with_extra(json!({"input_name": x, "received_value": received()}))),
        Problem::ParamType { expected, found } => {
            let kind = schema.and_then(|s| s.param_def(x)).map(|p| &p.kind);
            let type_name = kind.map(param_type_name).unwrap_or("value");
            let value = received();
            one(ErrorBody::new(
                "invalid_input_type",
                format!("Failed to convert an input value to a {type_name} value"),
                format!("{x}, {}, expected {expected}", py_value(&value)),
            )
            .with_extra(json!({
                "input_name": x,
                "input_config": config(),
                "received_value": value,
                "exception_message": format!("expected {expected}, found {found}"),
            })))
        }
        Problem::ParamRange { message } => {
            let kind = schema.and_then(|s| s.param_def(x)).map(|p| &p.kind);
            let value = node.zip(name).and_then(|(n, p)| n.params.get(p));
            one(range_error(x, kind, value, message, config()))
        }
        Problem::Invalid { message } => match problem.place {
            Place::Node => one(ErrorBody::new(
                "exception_during_validation",
                "Exception when validating node",
                message.clone(),
            )
            .with_extra(json!({"exception_type": "panic", "traceback": []}))),
            _ => one(ErrorBody::new(
                "custom_validation_failed",
                "Custom validation failed for node",
                format!("{x} - {message}"),
            )
            .with_extra(json!({"input_name": x}))),
        },
    }
}

/// A value outside its range or options, in ComfyUI's terms.
fn range_error(
    x: &str,
    kind: Option<&ParamKind>,
    value: Option<&Value>,
    message: &str,
    config: Json,
) -> ErrorBody {
    let received = value.map(value_json).unwrap_or(Json::Null);
    let extra =
        |config: Json| json!({"input_name": x, "input_config": config, "received_value": received});
    let number = value.and_then(Value::as_float);
    let bounds = match kind {
        Some(ParamKind::Int { min, max, .. }) => Some((*min as f64, *max as f64, false)),
        Some(ParamKind::Float { min, max, .. }) => Some((*min, *max, true)),
        _ => None,
    };
    match (kind, number, bounds) {
        (_, Some(v), Some((min, _, is_float))) if v < min => ErrorBody::new(
            "value_smaller_than_min",
            format!(
                "Value {} smaller than min of {}",
                py_number(v, is_float),
                py_number(min, is_float)
            ),
            format!(
                "{x}: the smallest value allowed is {}",
                py_number(min, is_float)
            ),
        )
        .with_extra(extra(config)),
        (_, Some(v), Some((_, max, is_float))) if v > max => ErrorBody::new(
            "value_bigger_than_max",
            format!(
                "Value {} bigger than max of {}",
                py_number(v, is_float),
                py_number(max, is_float)
            ),
            format!(
                "{x}: the largest value allowed is {}",
                py_number(max, is_float)
            ),
        )
        .with_extra(extra(config)),
        (Some(ParamKind::Choice { options, .. }), _, _) => {
            // ComfyUI leaves long lists (scanned model files) out of the answer.
            let (list, config) = if options.len() > 20 {
                (format!("(list of length {})", options.len()), Json::Null)
            } else {
                (py_list(options), config)
            };
            let shown = value.and_then(Value::as_str).unwrap_or_default();
            ErrorBody::new(
                "value_not_in_list",
                "Value not in list",
                format!("{x}: '{shown}' not in {list}"),
            )
            .with_extra(extra(config))
        }
        _ => ErrorBody::new(
            "invalid_input_type",
            "Failed to convert an input value",
            format!("{x}, {message}"),
        )
        .with_extra(extra(config)),
    }
}

/// " (CLIPLoader gives one)": up to two node types with an output of this type.
fn producers(registry: &NodeRegistry, ty: veetance_core::PortType) -> String {
    let names: BTreeSet<&str> = registry
        .schemas()
        .filter(|s| s.outputs.iter().any(|o| o.ty == ty))
        .map(|s| s.type_name.as_str())
        .take(2)
        .collect();
    match names.len() {
        0 => String::new(),
        1 => format!(" ({} gives one)", join(&names)),
        _ => format!(
            " ({} give one)",
            names.into_iter().collect::<Vec<_>>().join(" or ")
        ),
    }
}

fn none_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// A number as Python prints it (`5`, `5.0`, `0.25`).
fn py_number(v: f64, is_float: bool) -> String {
    if is_float && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else if !is_float && v.fract() == 0.0 && v.abs() < 9.3e18 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A value as Python's f-strings print it, for details that quote the received value.
fn py_value(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Bool(true) => "True".into(),
        Json::Bool(false) => "False".into(),
        Json::Null => "None".into(),
        other => other.to_string(),
    }
}

/// A list of strings as Python prints it: `['a', 'b']`.
fn py_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
