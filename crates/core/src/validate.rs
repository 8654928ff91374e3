//! Validation of a graph before anything runs. Every problem is reported at once, each naming
//! the node id and the port or param it concerns.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use petgraph::algo::{is_cyclic_directed, tarjan_scc};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use petgraph::Direction;

use crate::graph::{Graph, NodeInstance};
use crate::node::{panic_message, NodeDef, Params, RunEnv};
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
    let mut known = 0;
    for def in &schema.params {
        let value = match set.get(&def.name) {
            None => def.kind.default_value(),
            Some(v) => {
                known += 1;
                def.kind.check(v).unwrap_or_else(|message| {
                    problems.push((def.name.clone(), param_problem(&def.kind, v, message)));
                    def.kind.default_value()
                })
            }
        };
        out.push((def.name.clone(), value));
    }
    // Every set param was found above unless some are unknown; only then look for which.
    for name in set.keys().filter(|_| known < set.len()) {
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

/// Checks one link between existing nodes: both ports exist, the target may take a link, and
/// the types agree. `None` schemas belong to nodes of unknown type, reported elsewhere.
fn check_link(
    errors: &mut Vec<ValidationError>,
    (from, from_port, from_schema): (&NodeInstance, &str, Option<&NodeSchema>),
    (to, to_port, to_schema): (&NodeInstance, &str, Option<&NodeSchema>),
) {
    let err = |node: &str, place: Place, problem: Problem| ValidationError {
        node: node.into(),
        place,
        problem,
    };
    let from_ty = from_schema.map(|s| match s.output_index(from_port) {
        Some(i) => Ok(s.outputs[i].ty),
        None => Err(s),
    });
    if let Some(Err(s)) = from_ty {
        errors.push(err(
            &from.id,
            Place::Output(from_port.into()),
            Problem::MissingPort {
                node_type: s.type_name.clone(),
                available: s.outputs.iter().map(|p| p.name.clone()).collect(),
            },
        ));
    }
    let to_ty = to_schema.map(|s| match s.link_target_type(to_port) {
        Some(t) => Ok(t),
        None => Err(s),
    });
    match to_ty {
        Some(Err(s)) if s.param_def(to_port).is_some() => errors.push(err(
            &to.id,
            Place::Param(to_port.into()),
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
                Place::Input(to_port.into()),
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
            let place = match to_schema.and_then(|s| s.input_def(to_port)) {
                Some(_) => Place::Input(to_port.into()),
                None => Place::Param(to_port.into()),
            };
            errors.push(err(
                &to.id,
                place,
                Problem::TypeMismatch {
                    expected,
                    found,
                    from: format!("{}.{from_port}", from.id),
                },
            ));
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

/// A node of known type, as validation found it: its definition and resolved params.
pub(crate) struct Resolved<'r> {
    pub def: &'r Arc<dyn NodeDef>,
    pub params: Params,
}

/// Validation, also returning each node's definition and resolved params, indexed by petgraph
/// node index (`None` for nodes of unknown type), so that the engine need not look them up again.
pub(crate) fn check_graph<'r>(
    graph: &Graph,
    registry: &'r NodeRegistry,
    env: &RunEnv,
) -> (Vec<ValidationError>, Vec<Option<Resolved<'r>>>) {
    let mut errors = Vec::new();
    let pg = graph.petgraph();
    let mut resolved: Vec<Option<Resolved<'r>>> = (0..pg.node_bound()).map(|_| None).collect();
    let mut schemas: Vec<Option<&NodeSchema>> = vec![None; pg.node_bound()];
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
        schemas[ix.index()] = Some(def.schema());
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
        resolved[ix.index()] = Some(Resolved { def, params });
    }

    // Links: those between nodes (in insertion order), then those with a missing end.
    for e in pg.edge_indices() {
        let (a, b) = pg.edge_endpoints(e).expect("edge exists");
        let ports = &pg[e];
        check_link(
            &mut errors,
            (&pg[a], &ports.from_port, schemas[a.index()]),
            (&pg[b], &ports.to_port, schemas[b.index()]),
        );
    }
    for link in graph.dangling_links() {
        let from = graph.node(&link.from.node);
        let to = graph.node(&link.to.node);
        if let (Some(from), Some(to)) = (from, to) {
            let schema = |n: &NodeInstance| registry.get(&n.type_name).map(|d| d.schema());
            check_link(
                &mut errors,
                (from, &link.from.port, schema(from)),
                (to, &link.to.port, schema(to)),
            );
            continue;
        }
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
    }

    // Inputs: each required one linked, none linked twice. A node's links are few, so they are
    // counted by scanning its incoming edges rather than through a map.
    let links_into = |ix: NodeIndex, port: &str| {
        pg.edges_directed(ix, Direction::Incoming)
            .filter(|e| e.weight().to_port == port)
            .count()
    };
    for ix in pg.node_indices() {
        let Some(schema) = schemas[ix.index()] else {
            continue;
        };
        for input in schema.inputs.iter().filter(|i| i.required) {
            if links_into(ix, &input.name) == 0 {
                errors.push(err(
                    &pg[ix].id,
                    Place::Input(input.name.clone()),
                    Problem::MissingInput { ty: input.ty },
                ));
            }
        }
    }
    for ix in pg.node_indices() {
        for (i, e) in pg.edges_directed(ix, Direction::Incoming).enumerate() {
            let port = e.weight().to_port.as_str();
            let first_of_its_port = pg
                .edges_directed(ix, Direction::Incoming)
                .position(|e| e.weight().to_port == port)
                == Some(i);
            let count = links_into(ix, port);
            if first_of_its_port && count > 1 {
                errors.push(err(
                    &pg[ix].id,
                    Place::Input(port.into()),
                    Problem::MultipleLinks { count },
                ));
            }
        }
    }

    // Cycles. Finding strongly connected components allocates per node, so it runs only when a
    // cheap search has found that there is a cycle to name.
    if is_cyclic_directed(pg) {
        for scc in tarjan_scc(pg) {
            let is_cycle = scc.len() > 1 || pg.contains_edge(scc[0], scc[0]);
            if is_cycle {
                let mut nodes: Vec<String> =
                    scc.iter().rev().map(|&ix| pg[ix].id.clone()).collect();
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
    }
    (errors, resolved)
}
