//! Validation of a graph before anything runs. Every problem is reported at once, each naming
//! the node id and the port or param it concerns.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;

use petgraph::algo::tarjan_scc;
use petgraph::visit::NodeIndexable;

use crate::graph::Graph;
use crate::node::{panic_message, Params, RunEnv};
use crate::registry::NodeRegistry;
use crate::schema::{NodeSchema, ParamKind};
use crate::value::{PortType, Value};

/// Where on a node a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Node,
    Input(String),
    Output(String),
    Param(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Node => Ok(()),
            Place::Input(p) => write!(f, " input '{p}'"),
            Place::Output(p) => write!(f, " output '{p}'"),
            Place::Param(p) => write!(f, " param '{p}'"),
        }
    }
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    UnknownNodeType {
        type_name: String,
        suggestion: Option<String>,
    },
    MissingInput {
        ty: PortType,
    },
    TypeMismatch {
        expected: PortType,
        found: PortType,
        from: String,
    },
    /// A link names a node that does not exist.
    MissingNode {
        missing: String,
    },
    /// A link names a port that the node type does not have.
    MissingPort {
        node_type: String,
        available: Vec<String>,
    },
    /// A link into a param that only takes constants.
    NotLinkable,
    /// More than one link into one input.
    MultipleLinks {
        count: usize,
    },
    Cycle {
        nodes: Vec<String>,
    },
    UnknownParam {
        node_type: String,
    },
    ParamType {
        expected: String,
        found: String,
    },
    ParamRange {
        message: String,
    },
    /// A node-specific check failed (see [`crate::NodeDef::check`]).
    Invalid {
        message: String,
    },
}

/// One validation problem, located.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidationError {
    pub node: String,
    pub place: Place,
    pub problem: Problem,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node '{}'{}: ", self.node, self.place)?;
        match &self.problem {
            Problem::UnknownNodeType {
                type_name,
                suggestion,
            } => {
                write!(f, "unknown node type {type_name:?}")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean {s:?}?)")?;
                }
                write!(f, "; `veetance nodes` lists the known types")
            }
            Problem::MissingInput { ty } => {
                write!(f, "required input ({ty}) is not connected")
            }
            Problem::TypeMismatch {
                expected,
                found,
                from,
            } => write!(
                f,
                "expects {expected} but is linked to {from}, which gives {found}"
            ),
            Problem::MissingNode { missing } => {
                write!(f, "linked to node '{missing}', which does not exist")
            }
            Problem::MissingPort {
                node_type,
                available,
            } => write!(
                f,
                "{node_type} has no such port (it has: {})",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            Problem::NotLinkable => write!(f, "takes a constant only, not a link"),
            Problem::MultipleLinks { count } => {
                write!(f, "has {count} links; an input takes one")
            }
            Problem::Cycle { nodes } => write!(
                f,
                "is part of a cycle ({} -> {}); links must not loop",
                nodes.join(" -> "),
                nodes[0]
            ),
            Problem::UnknownParam { node_type } => write!(f, "{node_type} has no such param"),
            Problem::ParamType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            Problem::ParamRange { message } => f.write_str(message),
            Problem::Invalid { message } => f.write_str(message),
        }
    }
}

/// The params of `node` with defaults filled in, constants checked and coerced. Returns the
/// params and the problems found.
pub(crate) fn resolve_params(
    schema: &NodeSchema,
    set: &std::collections::BTreeMap<String, Value>,
) -> (Params, Vec<(String, Problem)>) {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(schema.params.len());
    for def in &schema.params {
        let value = match set.get(&def.name) {
            None => def.kind.default_value(),
            Some(v) => match def.kind.check(v) {
                Ok(v) => v,
                Err(message) => {
                    problems.push((def.name.clone(), param_problem(&def.kind, v, message)));
                    def.kind.default_value()
                }
            },
        };
        out.push((def.name.clone(), value));
    }
    for name in set.keys() {
        if schema.param_def(name).is_none() {
            problems.push((
                name.clone(),
                Problem::UnknownParam {
                    node_type: schema.type_name.clone(),
                },
            ));
        }
    }
    (Params(out), problems)
}

fn param_problem(kind: &ParamKind, value: &Value, message: String) -> Problem {
    let type_ok = value.port_type().can_feed(kind.port_type())
        || (matches!(kind, ParamKind::Float { .. }) && matches!(value, Value::Int(_)));
    if type_ok {
        Problem::ParamRange { message }
    } else {
        Problem::ParamType {
            expected: kind.describe(),
            found: format!("{} {value}", value.port_type()),
        }
    }
}

/// Checks the whole graph. Returns every problem found, or `Ok` when it may run.
pub fn validate(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> Result<(), Vec<ValidationError>> {
    let (errors, _) = check_graph(graph, registry, env);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Validation, also returning each node's resolved params, indexed by petgraph node index
/// (`None` for nodes of unknown type).
pub(crate) fn check_graph(
    graph: &Graph,
    registry: &NodeRegistry,
    env: &RunEnv,
) -> (Vec<ValidationError>, Vec<Option<Params>>) {
    let mut errors = Vec::new();
    let pg = graph.petgraph();
    let mut resolved: Vec<Option<Params>> = vec![None; pg.node_bound()];
    let err = |node: &str, place: Place, problem: Problem| ValidationError {
        node: node.into(),
        place,
        problem,
    };

    // Node types and params.
    for ix in pg.node_indices() {
        let node = &pg[ix];
        let Some(def) = registry.get(&node.type_name) else {
            errors.push(err(
                &node.id,
                Place::Node,
                Problem::UnknownNodeType {
                    type_name: node.type_name.clone(),
                    suggestion: registry.suggest(&node.type_name).map(Into::into),
                },
            ));
            continue;
        };
        let (params, problems) = resolve_params(def.schema(), &node.params);
        let had_problems = !problems.is_empty();
        for (param, problem) in problems {
            errors.push(err(&node.id, Place::Param(param), problem));
        }
        if !had_problems {
            // Node code runs here, before the engine's guard around `execute`: a panicking check
            // must not take the caller down.
            let checked = std::panic::catch_unwind(AssertUnwindSafe(|| def.check(&params, env)));
            match checked {
                Ok(problems) => {
                    for p in problems {
                        errors.push(err(
                            &node.id,
                            Place::Param(p.param),
                            Problem::Invalid { message: p.message },
                        ));
                    }
                }
                Err(panic) => errors.push(err(
                    &node.id,
                    Place::Node,
                    Problem::Invalid {
                        message: format!(
                            "its check failed with an internal error (please report): {}",
                            panic_message(&*panic)
                        ),
                    },
                )),
            }
        }
        resolved[ix.index()] = Some(params);
    }

    // Links.
    let mut into_port: HashMap<(&str, &str), usize> = HashMap::new();
    let links = graph.links();
    for link in &links {
        let from = graph.node(&link.from.node);
        let to = graph.node(&link.to.node);
        let (Some(from), Some(to)) = (from, to) else {
            // Report at whichever end exists; if neither does, at the target id.
            let (at, place, missing) = match (from, to) {
                (Some(_), None) => (
                    &link.from.node,
                    Place::Output(link.from.port.clone()),
                    &link.to.node,
                ),
                _ => (
                    &link.to.node,
                    Place::Input(link.to.port.clone()),
                    &link.from.node,
                ),
            };
            errors.push(err(
                at,
                place,
                Problem::MissingNode {
                    missing: missing.clone(),
                },
            ));
            continue;
        };
        *into_port
            .entry((to.id.as_str(), link.to.port.as_str()))
            .or_default() += 1;
        let from_schema = registry.get(&from.type_name).map(|d| d.schema());
        let to_schema = registry.get(&to.type_name).map(|d| d.schema());
        let from_ty = from_schema.map(|s| match s.output_index(&link.from.port) {
            Some(i) => Ok(s.outputs[i].ty),
            None => Err(s),
        });
        if let Some(Err(s)) = from_ty {
            errors.push(err(
                &from.id,
                Place::Output(link.from.port.clone()),
                Problem::MissingPort {
                    node_type: s.type_name.clone(),
                    available: s.outputs.iter().map(|p| p.name.clone()).collect(),
                },
            ));
        }
        let to_ty = to_schema.map(|s| match s.link_target_type(&link.to.port) {
            Some(t) => Ok(t),
            None => Err(s),
        });
        match to_ty {
            Some(Err(s)) if s.param_def(&link.to.port).is_some() => errors.push(err(
                &to.id,
                Place::Param(link.to.port.clone()),
                Problem::NotLinkable,
            )),
            Some(Err(s)) => {
                let mut available: Vec<String> = s.inputs.iter().map(|p| p.name.clone()).collect();
                available.extend(
                    s.params
                        .iter()
                        .filter(|p| p.linkable)
                        .map(|p| p.name.clone()),
                );
                errors.push(err(
                    &to.id,
                    Place::Input(link.to.port.clone()),
                    Problem::MissingPort {
                        node_type: s.type_name.clone(),
                        available,
                    },
                ))
            }
            _ => {}
        }
        if let (Some(Ok(found)), Some(Ok(expected))) = (from_ty, to_ty) {
            if !found.can_feed(expected) {
                let place = match to_schema.and_then(|s| s.input_def(&link.to.port)) {
                    Some(_) => Place::Input(link.to.port.clone()),
                    None => Place::Param(link.to.port.clone()),
                };
                errors.push(err(
                    &to.id,
                    place,
                    Problem::TypeMismatch {
                        expected,
                        found,
                        from: link.from.to_string(),
                    },
                ));
            }
        }
    }
    for node in graph.nodes() {
        let Some(def) = registry.get(&node.type_name) else {
            continue;
        };
        for input in &def.schema().inputs {
            let count = into_port
                .get(&(node.id.as_str(), input.name.as_str()))
                .copied()
                .unwrap_or(0);
            if count == 0 && input.required {
                errors.push(err(
                    &node.id,
                    Place::Input(input.name.clone()),
                    Problem::MissingInput { ty: input.ty },
                ));
            }
        }
    }
    for ((node, port), count) in &into_port {
        if *count > 1 {
            errors.push(err(
                node,
                Place::Input((*port).into()),
                Problem::MultipleLinks { count: *count },
            ));
        }
    }

    // Cycles.
    for scc in tarjan_scc(pg) {
        let is_cycle = scc.len() > 1 || pg.contains_edge(scc[0], scc[0]);
        if is_cycle {
            let mut nodes: Vec<String> = scc.iter().rev().map(|&ix| pg[ix].id.clone()).collect();
            // Name the cycle from the node that comes first in the file.
            if let Some(first) = graph.nodes().find(|n| nodes.contains(&n.id)) {
                let at = nodes.iter().position(|n| *n == first.id).unwrap_or(0);
                nodes.rotate_left(at);
            }
            errors.push(err(
                &nodes[0].clone(),
                Place::Node,
                Problem::Cycle { nodes },
            ));
        }
    }
    (errors, resolved)
}
