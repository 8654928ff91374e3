//! The graph of node instances and links, on petgraph.
//!
//! Nodes have stable string ids (`"sampler"`), which is what workflow files, the CLI's
//! `--set node.param=…`, events and error messages use. Links join an output port of one node
//! to an input port (or a linkable param) of another, by name. A link whose end names a node that
//! does not exist is kept aside so that validation can report it rather than losing it.

use std::collections::{BTreeMap, HashMap};

use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::value::Value;

/// One node of a graph: its id, its type and the params set on it (others take defaults).
#[derive(Clone, Debug)]
pub struct NodeInstance {
    pub id: String,
    pub type_name: String,
    pub params: BTreeMap<String, Value>,
}

/// A port of a node, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRef {
    pub node: String,
    pub port: String,
}

impl PortRef {
    pub fn new(node: &str, port: &str) -> Self {
        PortRef {
            node: node.into(),
            port: port.into(),
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.node, self.port)
    }
}

/// A link from an output port to an input port or linkable param.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link {
    pub from: PortRef,
    pub to: PortRef,
}

/// The port names carried by a petgraph edge.
#[derive(Clone, Debug)]
pub struct LinkPorts {
    pub from_port: String,
    pub to_port: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("node id {0:?} is used twice; node ids must be unique")]
    DuplicateId(String),
    #[error("node id {0:?} is not valid: use letters, digits, '_', '-' and ':' (and not empty)")]
    InvalidId(String),
    #[error("there is no node {0:?}")]
    NoSuchNode(String),
}

/// Whether `id` is a valid node id: non-empty ASCII letters, digits, `_`, `-` and `:` (the
/// last for ComfyUI's subgraph paths such as `75:61`). Dots are excluded so that `--set
/// node.param=value` is unambiguous.
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    graph: StableDiGraph<NodeInstance, LinkPorts>,
    index: HashMap<String, NodeIndex>,
    /// Links with an end on a node that does not exist, in the order they were added.
    dangling: Vec<Link>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_node(
        &mut self,
        id: &str,
        type_name: &str,
        params: BTreeMap<String, Value>,
    ) -> Result<NodeIndex, GraphError> {
        if !is_valid_node_id(id) {
            return Err(GraphError::InvalidId(id.into()));
        }
        if self.index.contains_key(id) {
            return Err(GraphError::DuplicateId(id.into()));
        }
        let ix = self.graph.add_node(NodeInstance {
            id: id.into(),
            type_name: type_name.into(),
            params,
        });
        self.index.insert(id.into(), ix);
        // A dangling link may now be resolvable.
        if self
            .dangling
            .iter()
            .any(|l| l.from.node == id || l.to.node == id)
        {
            let pending = std::mem::take(&mut self.dangling);
            for link in pending {
                self.add_link(link);
            }
        }
        Ok(ix)
    }

    /// Removes a node and every link touching it.
    pub fn remove_node(&mut self, id: &str) -> Result<NodeInstance, GraphError> {
        let ix = self
            .index
            .remove(id)
            .ok_or_else(|| GraphError::NoSuchNode(id.into()))?;
        self.dangling
            .retain(|l| l.from.node != id && l.to.node != id);
        Ok(self.graph.remove_node(ix).expect("index map is in sync"))
    }

    /// Adds a link. A link naming a node that does not exist is kept for validation to report.
    pub fn add_link(&mut self, link: Link) {
        match (
            self.index.get(&link.from.node),
            self.index.get(&link.to.node),
        ) {
            (Some(&a), Some(&b)) => {
                self.graph.add_edge(
                    a,
                    b,
                    LinkPorts {
                        from_port: link.from.port,
                        to_port: link.to.port,
                    },
                );
            }
            _ => self.dangling.push(link),
        }
    }

    /// Removes a link; returns whether it was there.
    pub fn remove_link(&mut self, link: &Link) -> bool {
        if let Some(pos) = self.dangling.iter().position(|l| l == link) {
            self.dangling.remove(pos);
            return true;
        }
        let found = self.edge_of(link);
        if let Some(e) = found {
            self.graph.remove_edge(e);
        }
        found.is_some()
    }

    fn edge_of(&self, link: &Link) -> Option<EdgeIndex> {
        let a = *self.index.get(&link.from.node)?;
        let b = *self.index.get(&link.to.node)?;
        self.graph
            .edges_connecting(a, b)
            .find(|e| e.weight().from_port == link.from.port && e.weight().to_port == link.to.port)
            .map(|e| e.id())
    }

    pub fn node(&self, id: &str) -> Option<&NodeInstance> {
        self.index.get(id).map(|&ix| &self.graph[ix])
    }

    pub fn node_mut(&mut self, id: &str) -> Option<&mut NodeInstance> {
        self.index.get(id).map(|&ix| &mut self.graph[ix])
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Sets a param constant on a node (no checking; validation checks it).
    pub fn set_param(&mut self, node: &str, param: &str, value: Value) -> Result<(), GraphError> {
        let n = self
            .node_mut(node)
            .ok_or_else(|| GraphError::NoSuchNode(node.into()))?;
        n.params.insert(param.into(), value);
        Ok(())
    }

    /// Nodes in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInstance> + '_ {
        self.graph.node_indices().map(move |ix| &self.graph[ix])
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Every link: those between existing nodes in insertion order, then dangling ones.
    pub fn links(&self) -> Vec<Link> {
        let mut out: Vec<Link> = self
            .graph
            .edge_indices()
            .map(|e| {
                let (a, b) = self.graph.edge_endpoints(e).expect("edge exists");
                let w = &self.graph[e];
                Link {
                    from: PortRef::new(&self.graph[a].id, &w.from_port),
                    to: PortRef::new(&self.graph[b].id, &w.to_port),
                }
            })
            .collect();
        out.extend(self.dangling.iter().cloned());
        out
    }

    pub fn dangling_links(&self) -> &[Link] {
        &self.dangling
    }

    /// Links into `node`, as (source node id, source port, target port).
    pub fn incoming(&self, node: &str) -> Vec<(&str, &str, &str)> {
        let Some(&ix) = self.index.get(node) else {
            return Vec::new();
        };
        self.graph
            .edges_directed(ix, Direction::Incoming)
            .map(|e| {
                let w = e.weight();
                (
                    self.graph[e.source()].id.as_str(),
                    w.from_port.as_str(),
                    w.to_port.as_str(),
                )
            })
            .collect()
    }

    /// The underlying petgraph graph, for algorithms.
    pub fn petgraph(&self) -> &StableDiGraph<NodeInstance, LinkPorts> {
        &self.graph
    }

    pub fn index_of(&self, id: &str) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }
}
