//! The server's door to `veetance-comfy`: prompt → graph and validation.
//!
//! While `veetance-comfy` still answers `not_implemented` (its functions are being written in
//! parallel), a minimal reader of API prompts over native node types stands in, so that the
//! server can run and be tested: links by output index, constants by the param's kind, and the
//! core's validation. It is used only for that answer and goes once the crate lands.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use veetance_comfy::{Checked, ErrorBody, NodeErrors, PromptError};
use veetance_core::{Graph, Link, NodeRegistry, ParamKind, PortRef, RunEnv, Value};

fn not_implemented(e: &PromptError) -> bool {
    e.error.kind == "not_implemented"
}

/// An API prompt as a graph (`veetance_comfy::prompt_to_graph`).
pub fn prompt_to_graph(prompt: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    match veetance_comfy::prompt_to_graph(prompt, registry) {
        Err(e) if not_implemented(&e) => fallback_prompt_to_graph(prompt, registry),
        other => other,
    }
}

/// Validation with ComfyUI's answer (`veetance_comfy::check_prompt`).
pub fn check_prompt(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<Checked, PromptError> {
    match veetance_comfy::check_prompt(graph, registry, env) {
        Err(e) if not_implemented(&e) => fallback_check(graph, registry, env),
        other => other,
    }
}

/// A UI workflow as an API prompt (`veetance_comfy::ui_to_prompt`).
pub fn ui_to_prompt(workflow: &Json, registry: &NodeRegistry) -> Result<Json, PromptError> {
    veetance_comfy::ui_to_prompt(workflow, registry)
}

pub fn error(kind: &str, message: &str, details: String) -> PromptError {
    PromptError {
        error: ErrorBody {
            kind: kind.into(),
            message: message.into(),
            details,
            extra_info: json!({}),
        },
        node_errors: BTreeMap::new(),
    }
}

fn fallback_prompt_to_graph(prompt: &Json, registry: &NodeRegistry) -> Result<Graph, PromptError> {
    let nodes = prompt.as_object().ok_or_else(|| {
        error(
            "invalid_prompt",
            "Invalid prompt",
            "the prompt must be an object of node id → {class_type, inputs}".into(),
        )
    })?;
    let mut graph = Graph::new();
    let mut links = Vec::new();
    for (id, node) in nodes {
        let class = node
            .get("class_type")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let Some(def) = registry.get(class) else {
            let mut e = error(
                "missing_node_type",
                &format!("Node '{id}' has no class_type or an unknown one: {class:?}"),
                format!("Node ID '#{id}'"),
            );
            e.error.extra_info = json!({ "node_id": id, "class_type": class, "node_title": class });
            return Err(e);
        };
        let schema = def.schema();
        let mut params = BTreeMap::new();
        if let Some(inputs) = node.get("inputs").and_then(Json::as_object) {
            for (name, value) in inputs {
                if let Some((src, index)) = crate::worker::link_of(value) {
                    links.push((src.to_string(), index as usize, id.clone(), name.clone()));
                    continue;
                }
                let Some(pdef) = schema.param_def(name) else {
                    continue;
                };
                let v = match (&pdef.kind, value) {
                    (ParamKind::Int { .. }, v) => v.as_i64().map(Value::Int),
                    (ParamKind::Float { .. }, v) => v.as_f64().map(Value::Float),
                    (ParamKind::Bool { .. }, v) => v.as_bool().map(Value::Bool),
                    (ParamKind::Choice { .. }, Json::String(s)) => Some(Value::choice(s.as_str())),
                    (_, Json::String(s)) => Some(Value::string(s.as_str())),
                    _ => None,
                };
                match v {
                    Some(v) => {
                        params.insert(name.clone(), v);
                    }
                    None => {
                        return Err(error(
                            "prompt_outputs_failed_validation",
                            "Prompt outputs failed validation",
                            format!(
                                "node '{id}' input '{name}': {value} is not a {}",
                                pdef.kind.describe()
                            ),
                        ))
                    }
                }
            }
        }
        graph
            .add_node(id, class, params)
            .map_err(|e| error("invalid_prompt", "Invalid prompt", e.to_string()))?;
    }
    for (src, index, to, port) in links {
        let from_port = nodes
            .get(&src)
            .and_then(|n| n.get("class_type"))
            .and_then(Json::as_str)
            .and_then(|c| registry.get(c))
            .and_then(|d| d.schema().outputs.get(index).map(|o| o.name.clone()))
            .unwrap_or_else(|| format!("#{index}"));
        graph.add_link(Link {
            from: PortRef::new(&src, &from_port),
            to: PortRef::new(&to, &port),
        });
    }
    Ok(graph)
}

fn fallback_check(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<Checked, PromptError> {
    if let Err(errors) = veetance_core::validate(graph, registry, env) {
        let mut node_errors: BTreeMap<String, NodeErrors> = BTreeMap::new();
        for e in &errors {
            let entry = node_errors.entry(e.node.clone()).or_default();
            entry.class_type = graph
                .node(&e.node)
                .map(|n| n.type_name.clone())
                .unwrap_or_default();
            entry.errors.push(ErrorBody {
                kind: "custom_validation_failed".into(),
                message: e.to_string(),
                details: String::new(),
                extra_info: json!({}),
            });
        }
        let mut err = error(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        err.node_errors = node_errors;
        return Err(err);
    }
    let outputs: Vec<String> = graph
        .nodes()
        .filter(|n| {
            registry
                .get(&n.type_name)
                .is_some_and(|d| d.schema().is_output)
        })
        .map(|n| n.id.clone())
        .collect();
    if outputs.is_empty() {
        return Err(error(
            "prompt_no_outputs",
            "Prompt has no outputs",
            String::new(),
        ));
    }
    Ok(Checked {
        outputs,
        node_errors: BTreeMap::new(),
    })
}
