//! The UI workflow (what ComfyUI saves and embeds as the `workflow` text chunk) to the API
//! prompt ComfyUI's frontend would queue for it.
//!
//! This follows the frontend's `graphToPrompt` (`src/utils/executionUtil.ts`) and
//! `ExecutableNodeDTO` (`src/lib/litegraph/src/subgraph/ExecutableNodeDTO.ts`,
//! Comfy-Org/ComfyUI_frontend):
//!
//! - **Nodes** keep their ids; nodes inside subgraph instances get execution ids
//!   `"instance:inner"` (`"75:61"`, nested: `"1:2:3"`). A node's `type` is its class, or the id
//!   of a subgraph in `definitions.subgraphs` (an instance, flattened recursively).
//! - **Widgets**: `widgets_values` (an array, or an object keyed by widget name) are matched to
//!   the class's params in order; a param marked `control_after_generate` is followed by the
//!   UI-only control value (`"randomize"`), which is skipped. Values left over at the end
//!   (the `"image"` of LoadImage's upload button) are UI-only widgets and are dropped. A list
//!   value is sent as `{"__value__": [...]}`.
//! - **Links**: each input that holds a link becomes `[origin_id, origin_slot]` of the node that
//!   finally produces the value (links are found by id from the input's `link`, so the
//!   frontend's dropping of unlinked widget slots does not matter). A link replaces the widget
//!   value of the same name.
//! - **Subgraph boundaries**: a link from the subgraph's input node (id -10) continues from the
//!   instance's input of that name in the parent graph; when that input has no link, a promoted
//!   widget gives the value: the instance's own value (`widgets_values`, one per promoted input
//!   in the subgraph's input order, with an extra slot after seed-like widgets when the array is
//!   longer; or `widgets_values` as an object by name), else the inner widget's value. An
//!   instance's output continues from the inner link into the output node (id -20).
//! - **Bypass** (mode 4): the node is left out, and a consumer of its output `k` is fed from its
//!   input of the matching type: input `k` when its type fits both the output and the consumer,
//!   else the first input of exactly the consumer's type, else the first that fits both. No such
//!   input: the consumer's input is left unset.
//! - **Mute** (mode 2): the node is left out, and so are the inputs linked to it (an input that
//!   was linked to a muted node is removed from its consumer, widget value included, as the
//!   frontend does). Bypassed and muted subgraph instances are not expanded.
//! - **Virtual nodes**: `Reroute` passes its input through; the legacy `PrimitiveNode` gives its
//!   value (`widgets_values[0]`) to every input it feeds (the frontend's `applyToGraph`); `Note`
//!   and `MarkdownNote` are dropped.
//! - `_meta.title` is the node's title, else its class's display name.
//!
//! Not handled: legacy group nodes (`workflow>…` types from `extra.groupNodes`, refused as
//! unknown classes), the PrimitiveNode's "Run widget replace on values" text substitution, and
//! widget values that the frontend computes when queueing (seeds are sent as saved).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value as Json};
use veetance_core::{NodeRegistry, NodeSchema};

use crate::prompt::missing_node_type;
use crate::{ErrorBody, PromptError};

const SUBGRAPH_INPUT_NODE: &str = "-10";
const SUBGRAPH_OUTPUT_NODE: &str = "-20";
const MODE_NEVER: i64 = 2;
const MODE_BYPASS: i64 = 4;

/// The most nodes a UI workflow may hold once its subgraph instances are flattened (instances
/// count as nodes). Instances nest, so a few kilobytes of subgraphs that each hold several
/// instances of the next would otherwise expand to billions of nodes (found by fuzzing:
/// `fuzz/regressions/comfy_json/`). Large real workflows hold a few hundred nodes; at 100,000
/// a 2 KB request still took 1.5-2 s to refuse, so the bound is 10,000.
pub const MAX_FLAT_NODES: usize = 10_000;

/// Frontend-only node types: never sent to the server.
const VIRTUAL_TYPES: &[&str] = &["Note", "MarkdownNote", "PrimitiveNode", "Reroute"];

pub(crate) fn ui_to_prompt(workflow: &Json, registry: &NodeRegistry) -> Result<Json, PromptError> {
    let doc = Doc::parse(workflow)?;
    let mut flat = Flat {
        doc: &doc,
        registry,
        dtos: Vec::new(),
        index: HashMap::new(),
    };
    flat.expand(&doc.root, &[], None, &mut Vec::new())?;

    // Unknown classes first, all of them named, as ComfyUI refuses them before anything else.
    let unknown: Vec<&Dto<'_>> = flat
        .dtos
        .iter()
        .filter(|dto| is_sent(dto.node, &doc) && registry.get(&dto.node.ty).is_none())
        .collect();
    if let Some(first) = unknown.first() {
        let node = first.node;
        let mut err = missing_node_type(&first.exec_id, &node.ty, node.title.as_deref(), registry);
        if node.ty.starts_with("workflow>") || node.ty.starts_with("workflow/") {
            err.error.message.push_str(
                ". This is a legacy group node: convert it to a subgraph in ComfyUI and save the \
                 workflow again",
            );
        }
        let others: Vec<String> = unknown[1..]
            .iter()
            .map(|d| format!("{} (node '{}')", d.node.ty, d.exec_id))
            .collect();
        if !others.is_empty() {
            err.error.message =
                format!("{}. Also unknown: {}", err.error.message, others.join(", "));
        }
        return Err(err);
    }

    let mut output = Map::new();
    for dto in &flat.dtos {
        let node = dto.node;
        if !is_sent(node, &doc) {
            continue;
        }
        let Some(schema) = registry.get(&node.ty).map(|d| d.schema()) else {
            continue;
        };
        let mut inputs = Map::new();
        for (name, value) in widget_values(node, schema) {
            inputs.insert(name, wrap_list(value.clone()));
        }
        for (i, input) in node.inputs.iter().enumerate() {
            match flat.resolve_input(dto, i, None, &mut HashSet::new())? {
                Some(Resolved::Link(origin, slot)) => {
                    inputs.insert(input.name.clone(), json!([origin, slot]));
                }
                Some(Resolved::Value(value)) => {
                    inputs.insert(input.name.clone(), wrap_list(value));
                }
                None => {}
            }
        }
        let title = node
            .title
            .clone()
            .unwrap_or_else(|| schema.display_name.clone());
        output.insert(
            dto.exec_id.clone(),
            json!({"inputs": inputs, "class_type": node.ty, "_meta": {"title": title}}),
        );
    }

    // Inputs linked to nodes that were left out (muted) are removed, as the frontend does.
    let present: HashSet<String> = output.keys().cloned().collect();
    for node in output.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Json::as_object_mut) {
            inputs.retain(|_, v| match v.as_array().map(Vec::as_slice) {
                Some([Json::String(origin), Json::Number(_)]) => present.contains(origin),
                _ => true,
            });
        }
    }
    Ok(Json::Object(output))
}

/// Where the editor should place each node of a UI workflow, by the ids [`crate::ui_to_prompt`]
/// gives them: the saved position of top-level nodes; nodes inside a subgraph instance keep
/// their layout, moved to where the instance stands.
pub fn ui_positions(workflow: &Json) -> BTreeMap<String, (f32, f32)> {
    let mut out = BTreeMap::new();
    let Ok(doc) = Doc::parse(workflow) else {
        return out;
    };
    fn place(
        doc: &Doc<'_>,
        graph: &GraphDef<'_>,
        prefix: &str,
        offset: (f32, f32),
        out: &mut BTreeMap<String, (f32, f32)>,
        depth: usize,
        visited: &mut usize,
    ) {
        if depth > 16 {
            return;
        }
        let origin = graph
            .nodes
            .iter()
            .filter_map(|n| n.pos)
            .fold(None, |acc: Option<(f32, f32)>, (x, y)| {
                Some(acc.map_or((x, y), |(ax, ay)| (ax.min(x), ay.min(y))))
            })
            .unwrap_or((0.0, 0.0));
        for node in &graph.nodes {
            // As many as `ui_to_prompt` expands, no more (nested instances multiply).
            *visited += 1;
            if *visited > MAX_FLAT_NODES {
                return;
            }
            let Some((x, y)) = node.pos else { continue };
            let at = if prefix.is_empty() {
                (x, y)
            } else {
                (offset.0 + x - origin.0, offset.1 + y - origin.1)
            };
            let id = format!("{prefix}{}", node.id);
            if let Some(sg) = doc.subgraphs.get(&node.ty) {
                place(
                    doc,
                    &sg.graph,
                    &format!("{id}:"),
                    at,
                    out,
                    depth + 1,
                    visited,
                );
            } else if !node.is_virtual() {
                out.insert(id, at);
            }
        }
    }
    place(&doc, &doc.root, "", (0.0, 0.0), &mut out, 0, &mut 0);
    out
}

/// Whether a node is sent to the server: not virtual, muted, bypassed, nor a subgraph instance
/// (whose inner nodes are sent instead).
fn is_sent(node: &UiNode<'_>, doc: &Doc<'_>) -> bool {
    !(node.is_virtual()
        || node.mode == MODE_NEVER
        || node.mode == MODE_BYPASS
        || doc.subgraphs.contains_key(&node.ty))
}

/// The params a node's `widgets_values` set, by name, in the schema's order.
fn widget_values<'n>(node: &'n UiNode<'_>, schema: &NodeSchema) -> Vec<(String, &'n Json)> {
    let mut out = Vec::new();
    match node.widgets_values {
        Some(Json::Array(values)) => {
            let mut i = 0;
            for param in &schema.params {
                let Some(value) = values.get(i) else { break };
                out.push((param.name.clone(), value));
                i += 1 + usize::from(param.control_after_generate);
            }
        }
        Some(Json::Object(values)) => {
            for param in &schema.params {
                if let Some(value) = values.get(&param.name) {
                    out.push((param.name.clone(), value));
                }
            }
        }
        _ => {}
    }
    out
}

/// A list value is sent wrapped, since a bare list means a link.
fn wrap_list(value: Json) -> Json {
    if value.is_array() {
        json!({"__value__": value})
    } else {
        value
    }
}

/// What an input resolves to: a link to the output of a node that is sent, or a value.
#[derive(Debug)]
enum Resolved {
    Link(String, usize),
    Value(Json),
}

/// One node as it will be executed: the node, the graph it sits in, and the instances above it.
struct Dto<'d> {
    exec_id: String,
    node: &'d UiNode<'d>,
    graph: &'d GraphDef<'d>,
    /// Execution ids of the instances containing it, outermost first (empty at the top).
    path: Vec<String>,
}

impl Dto<'_> {
    fn child_id(&self, node_id: &str) -> String {
        match self.path.last() {
            Some(instance) => format!("{instance}:{node_id}"),
            None => node_id.to_string(),
        }
    }
}

struct Flat<'d> {
    doc: &'d Doc<'d>,
    registry: &'d NodeRegistry,
    dtos: Vec<Dto<'d>>,
    index: HashMap<String, usize>,
}

impl<'d> Flat<'d> {
    fn expand(
        &mut self,
        graph: &'d GraphDef<'d>,
        path: &[String],
        instance: Option<&str>,
        stack: &mut Vec<String>,
    ) -> Result<(), PromptError> {
        for node in &graph.nodes {
            let exec_id = match instance {
                Some(i) => format!("{i}:{}", node.id),
                None => node.id.clone(),
            };
            if self.dtos.len() >= MAX_FLAT_NODES {
                return Err(invalid(format!(
                    "the workflow holds more than {MAX_FLAT_NODES} nodes once its subgraph \
                     instances are flattened (at instance '{exec_id}'); subgraphs that nest \
                     instances of each other multiply their nodes"
                )));
            }
            self.index.insert(exec_id.clone(), self.dtos.len());
            self.dtos.push(Dto {
                exec_id: exec_id.clone(),
                node,
                graph,
                path: path.to_vec(),
            });
            let Some(sg) = self.doc.subgraphs.get(&node.ty) else {
                continue;
            };
            if node.mode == MODE_NEVER || node.mode == MODE_BYPASS {
                continue;
            }
            if stack.contains(&node.ty) {
                return Err(invalid(format!(
                    "subgraph '{}' contains itself (instance '{exec_id}'); a subgraph cannot \
                     hold an instance of itself",
                    sg.name
                )));
            }
            stack.push(node.ty.clone());
            let mut inner_path = path.to_vec();
            inner_path.push(exec_id.clone());
            self.expand(&sg.graph, &inner_path, Some(&exec_id), stack)?;
            stack.pop();
        }
        Ok(())
    }

    fn dto(&self, exec_id: &str) -> Option<&Dto<'d>> {
        self.index.get(exec_id).map(|&i| &self.dtos[i])
    }

    /// Where input `index` of a node gets its value from (`ExecutableNodeDTO.resolveInput`).
    fn resolve_input(
        &self,
        dto: &Dto<'d>,
        index: usize,
        ty: Option<&str>,
        visited: &mut HashSet<(String, bool, usize)>,
    ) -> Result<Option<Resolved>, PromptError> {
        if !visited.insert((dto.exec_id.clone(), true, index)) {
            return Err(cycle(dto, "input", index));
        }
        let Some(input) = dto.node.inputs.get(index) else {
            return Ok(None);
        };
        let Some(link) = input.link.and_then(|id| dto.graph.links.get(&id)) else {
            return Ok(None);
        };
        if link.origin_id == SUBGRAPH_INPUT_NODE {
            // Up and out of the subgraph, through the instance's input of the same name.
            let Some(instance) = dto.path.last().and_then(|id| self.dto(id)) else {
                return Ok(None);
            };
            return self.through_instance_input(instance, link.origin_slot, visited);
        }
        let Some(origin) = self.dto(&dto.child_id(&link.origin_id)) else {
            return Ok(None);
        };
        let ty = ty.unwrap_or(&input.ty).to_string();
        self.resolve_output(origin, link.origin_slot, &ty, visited)
    }

    /// The value of an instance's input `slot` (the subgraph's input of that index): its link
    /// in the parent graph, else the promoted widget's value.
    fn through_instance_input(
        &self,
        instance: &Dto<'d>,
        slot: usize,
        visited: &mut HashSet<(String, bool, usize)>,
    ) -> Result<Option<Resolved>, PromptError> {
        let Some(sg) = self.doc.subgraphs.get(&instance.node.ty) else {
            return Ok(None);
        };
        let Some(sg_input) = sg.inputs.get(slot) else {
            return Ok(None);
        };
        let linked = instance
            .node
            .inputs
            .iter()
            .position(|i| i.name == sg_input.name && i.link.is_some());
        if let Some(position) = linked {
            return self.resolve_input(instance, position, None, visited);
        }
        Ok(self
            .promoted_value(instance.node, slot, 0)
            .map(Resolved::Value))
    }

    /// Where output `slot` of a node gets its value (`ExecutableNodeDTO.resolveOutput`).
    fn resolve_output(
        &self,
        dto: &Dto<'d>,
        slot: usize,
        ty: &str,
        visited: &mut HashSet<(String, bool, usize)>,
    ) -> Result<Option<Resolved>, PromptError> {
        if !visited.insert((dto.exec_id.clone(), false, slot)) {
            return Err(cycle(dto, "output", slot));
        }
        let node = dto.node;
        if node.mode == MODE_BYPASS {
            return match bypass_input(node, slot, ty) {
                Some(index) => self.resolve_input(dto, index, None, visited),
                None => Ok(None),
            };
        }
        if node.mode == MODE_NEVER {
            // Left out, and so will be the link (see the clean-up in `ui_to_prompt`).
            return Ok(Some(Resolved::Link(dto.exec_id.clone(), slot)));
        }
        if let Some(sg) = self.doc.subgraphs.get(&node.ty) {
            let inner = sg
                .outputs
                .get(slot)
                .and_then(|o| o.link_ids.iter().find_map(|id| sg.graph.links.get(id)))
                .or_else(|| {
                    sg.graph
                        .links
                        .values()
                        .find(|l| l.target_id == SUBGRAPH_OUTPUT_NODE && l.target_slot == slot)
                });
            let Some(inner) = inner else {
                return Ok(None);
            };
            if inner.origin_id == SUBGRAPH_INPUT_NODE {
                return self.through_instance_input(dto, inner.origin_slot, visited);
            }
            let Some(inner_dto) = self.dto(&format!("{}:{}", dto.exec_id, inner.origin_id)) else {
                return Ok(None);
            };
            return self.resolve_output(inner_dto, inner.origin_slot, ty, visited);
        }
        if node.ty == "PrimitiveNode" {
            // The frontend copies its value into the widget it feeds (`applyToGraph`).
            return Ok(node
                .widgets_values
                .and_then(|w| w.as_array())
                .and_then(|w| w.first())
                .cloned()
                .map(Resolved::Value));
        }
        if node.is_virtual() {
            if slot < node.inputs.len() {
                return self.resolve_input(dto, slot, Some(ty), visited);
            }
            return Ok(None);
        }
        Ok(Some(Resolved::Link(dto.exec_id.clone(), slot)))
    }

    /// The value of an instance's promoted widget for subgraph input `slot`: the instance's own
    /// value, else the inner widget's. `None` when that input feeds no widget.
    fn promoted_value(&self, instance: &UiNode<'_>, slot: usize, depth: usize) -> Option<Json> {
        let sg = self.doc.subgraphs.get(&instance.ty)?;
        if depth > 16 {
            return None;
        }
        let promoted: Vec<(usize, Json, bool)> = (0..sg.inputs.len())
            .filter_map(|i| {
                self.interior_widget(sg, i, depth)
                    .map(|(value, control)| (i, value, control))
            })
            .collect();
        let at = promoted.iter().position(|(i, _, _)| *i == slot)?;
        let own = match instance.widgets_values {
            Some(Json::Object(named)) => named.get(&sg.inputs[slot].name).cloned(),
            Some(Json::Array(values)) => {
                // Older instances hold an extra value after seed-like widgets.
                let with_controls = values.len() > promoted.len();
                let index: usize = promoted[..at]
                    .iter()
                    .map(|(_, _, control)| 1 + usize::from(with_controls && *control))
                    .sum();
                values.get(index).cloned().filter(|v| !v.is_null())
            }
            _ => None,
        };
        own.or_else(|| Some(promoted[at].1.clone()))
    }

    /// The inner widget subgraph input `slot` is promoted from, as (its value, whether a
    /// control_after_generate value follows it): the first link from the input to a widget.
    fn interior_widget(
        &self,
        sg: &Subgraph<'_>,
        slot: usize,
        depth: usize,
    ) -> Option<(Json, bool)> {
        for link_id in &sg.inputs[slot].link_ids {
            let Some(link) = sg.graph.links.get(link_id) else {
                continue;
            };
            let Some(target) = sg.graph.node(&link.target_id) else {
                continue;
            };
            let Some(input) = target
                .inputs
                .iter()
                .find(|i| i.link == Some(*link_id))
                .or_else(|| target.inputs.get(link.target_slot))
            else {
                continue;
            };
            if let Some(nested) = self.doc.subgraphs.get(&target.ty) {
                // Promoted from a nested instance's own promoted input.
                let value = nested
                    .inputs
                    .iter()
                    .position(|i| i.name == input.name)
                    .and_then(|nested_slot| self.promoted_value(target, nested_slot, depth + 1));
                if let Some(value) = value {
                    return Some((value, false));
                }
                continue;
            }
            let Some(widget) = &input.widget else {
                continue;
            };
            let Some(schema) = self.registry.get(&target.ty).map(|d| d.schema()) else {
                continue;
            };
            let control = schema
                .param_def(widget)
                .is_some_and(|p| p.control_after_generate);
            if let Some((_, value)) = widget_values(target, schema)
                .into_iter()
                .find(|(name, _)| name == widget)
            {
                return Some((value.clone(), control));
            }
        }
        None
    }
}

/// The input a bypassed node passes on to a consumer of its output `slot` of type `ty`.
fn bypass_input(node: &UiNode<'_>, slot: usize, ty: &str) -> Option<usize> {
    let inputs = &node.inputs;
    if inputs.is_empty() {
        return None;
    }
    if ty.is_empty() || ty == "*" {
        return Some(if inputs.len() > slot { slot } else { 0 });
    }
    let output_ty = node.outputs.get(slot).map_or("*", |o| o.ty.as_str());
    if let Some(same) = inputs.get(slot) {
        if fits(&same.ty, output_ty) && fits(&same.ty, ty) {
            return Some(slot);
        }
    }
    inputs.iter().position(|i| i.ty == ty).or_else(|| {
        inputs
            .iter()
            .position(|i| fits(&i.ty, output_ty) && fits(&i.ty, ty))
    })
}

/// LiteGraph's `isValidConnection`: `*` and empty types fit anything; otherwise the types
/// (or one of their comma-separated alternatives) are equal, ignoring case.
fn fits(a: &str, b: &str) -> bool {
    let any = |t: &str| t.is_empty() || t == "*";
    if any(a) || any(b) || a == b {
        return true;
    }
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',').any(|x| {
        b.split(',')
            .any(|y| x.trim() == y.trim() || any(x) || any(y))
    })
}

fn invalid(details: String) -> PromptError {
    PromptError::top(ErrorBody::new("invalid_prompt", "Invalid prompt", details))
}

fn cycle(dto: &Dto<'_>, what: &str, slot: usize) -> PromptError {
    invalid(format!(
        "circular reference while resolving {what} {slot} of node '{}' ({}): links through \
         bypassed nodes, reroutes or subgraphs loop",
        dto.exec_id, dto.node.ty
    ))
}

// ---- the document ---------------------------------------------------------------------------

struct Doc<'j> {
    root: GraphDef<'j>,
    subgraphs: HashMap<String, Subgraph<'j>>,
}

struct Subgraph<'j> {
    name: String,
    inputs: Vec<SubgraphSlot>,
    outputs: Vec<SubgraphSlot>,
    graph: GraphDef<'j>,
}

struct SubgraphSlot {
    name: String,
    link_ids: Vec<i64>,
}

struct GraphDef<'j> {
    nodes: Vec<UiNode<'j>>,
    by_id: HashMap<String, usize>,
    links: HashMap<i64, UiLink>,
}

impl GraphDef<'_> {
    fn node(&self, id: &str) -> Option<&UiNode<'_>> {
        self.by_id.get(id).map(|&i| &self.nodes[i])
    }
}

struct UiNode<'j> {
    id: String,
    ty: String,
    mode: i64,
    title: Option<String>,
    pos: Option<(f32, f32)>,
    inputs: Vec<UiInput>,
    outputs: Vec<UiOutput>,
    widgets_values: Option<&'j Json>,
}

impl UiNode<'_> {
    fn is_virtual(&self) -> bool {
        VIRTUAL_TYPES.contains(&self.ty.as_str())
    }
}

struct UiInput {
    name: String,
    ty: String,
    link: Option<i64>,
    widget: Option<String>,
}

struct UiOutput {
    ty: String,
}

struct UiLink {
    origin_id: String,
    origin_slot: usize,
    target_id: String,
    target_slot: usize,
}

impl<'j> Doc<'j> {
    fn parse(workflow: &'j Json) -> Result<Self, PromptError> {
        let root = GraphDef::parse(workflow, "the workflow")?;
        let mut subgraphs = HashMap::new();
        collect_subgraphs(workflow, &mut subgraphs, 0)?;
        Ok(Doc { root, subgraphs })
    }
}

fn collect_subgraphs<'j>(
    holder: &'j Json,
    out: &mut HashMap<String, Subgraph<'j>>,
    depth: usize,
) -> Result<(), PromptError> {
    if depth > 16 {
        return Ok(());
    }
    let Some(list) = holder
        .get("definitions")
        .and_then(|d| d.get("subgraphs"))
        .and_then(Json::as_array)
    else {
        return Ok(());
    };
    for sg in list {
        let Some(id) = sg.get("id").and_then(Json::as_str) else {
            return Err(invalid(
                "a subgraph in definitions.subgraphs has no id".into(),
            ));
        };
        let name = sg
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or(id)
            .to_string();
        let slots = |key: &str| -> Vec<SubgraphSlot> {
            sg.get(key)
                .and_then(Json::as_array)
                .map(|slots| {
                    slots
                        .iter()
                        .map(|s| SubgraphSlot {
                            name: str_field(s, "name").unwrap_or_default(),
                            link_ids: s
                                .get("linkIds")
                                .and_then(Json::as_array)
                                .map(|ids| ids.iter().filter_map(Json::as_i64).collect())
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let graph = GraphDef::parse(sg, &format!("subgraph '{name}'"))?;
        out.insert(
            id.to_string(),
            Subgraph {
                inputs: slots("inputs"),
                outputs: slots("outputs"),
                name,
                graph,
            },
        );
        collect_subgraphs(sg, out, depth + 1)?;
    }
    Ok(())
}

impl<'j> GraphDef<'j> {
    fn parse(holder: &'j Json, what: &str) -> Result<Self, PromptError> {
        let nodes_json = holder
            .get("nodes")
            .and_then(Json::as_array)
            .ok_or_else(|| invalid(format!("{what} has no \"nodes\" list")))?;
        let mut nodes = Vec::with_capacity(nodes_json.len());
        let mut by_id = HashMap::new();
        for n in nodes_json {
            let id = n
                .get("id")
                .and_then(id_text)
                .ok_or_else(|| invalid(format!("a node of {what} has no id")))?;
            let ty = str_field(n, "type")
                .ok_or_else(|| invalid(format!("node {id} of {what} has no \"type\"")))?;
            let inputs = n
                .get("inputs")
                .and_then(Json::as_array)
                .map(|list| {
                    list.iter()
                        .map(|i| UiInput {
                            name: str_field(i, "name").unwrap_or_default(),
                            ty: type_field(i),
                            link: i.get("link").and_then(Json::as_i64),
                            widget: i
                                .get("widget")
                                .and_then(|w| w.get("name"))
                                .and_then(Json::as_str)
                                .map(str::to_string),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let outputs = n
                .get("outputs")
                .and_then(Json::as_array)
                .map(|list| {
                    list.iter()
                        .map(|o| UiOutput { ty: type_field(o) })
                        .collect()
                })
                .unwrap_or_default();
            by_id.insert(id.clone(), nodes.len());
            nodes.push(UiNode {
                id,
                ty,
                mode: n.get("mode").and_then(Json::as_i64).unwrap_or(0),
                title: str_field(n, "title"),
                pos: n.get("pos").and_then(position),
                inputs,
                outputs,
                widgets_values: n.get("widgets_values"),
            });
        }
        let mut links = HashMap::new();
        if let Some(list) = holder.get("links").and_then(Json::as_array) {
            for l in list {
                if let Some((id, link)) = parse_link(l) {
                    links.insert(id, link);
                }
            }
        }
        Ok(GraphDef {
            nodes,
            by_id,
            links,
        })
    }
}

/// A link, as an array `[id, origin_id, origin_slot, target_id, target_slot, type]` (the
/// top level of format 0.4) or an object (subgraphs, format 1).
fn parse_link(l: &Json) -> Option<(i64, UiLink)> {
    let slot = |v: Option<&Json>| v.and_then(Json::as_u64).map(|s| s as usize);
    match l {
        Json::Array(a) => Some((
            a.first()?.as_i64()?,
            UiLink {
                origin_id: id_text(a.get(1)?)?,
                origin_slot: slot(a.get(2))?,
                target_id: id_text(a.get(3)?)?,
                target_slot: slot(a.get(4))?,
            },
        )),
        Json::Object(o) => Some((
            o.get("id")?.as_i64()?,
            UiLink {
                origin_id: id_text(o.get("origin_id")?)?,
                origin_slot: slot(o.get("origin_slot"))?,
                target_id: id_text(o.get("target_id")?)?,
                target_slot: slot(o.get("target_slot"))?,
            },
        )),
        _ => None,
    }
}

/// A node id as text: ids are numbers in saved workflows, strings in some.
fn id_text(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn str_field(v: &Json, key: &str) -> Option<String> {
    v.get(key).and_then(Json::as_str).map(str::to_string)
}

/// A slot's type: a string, or `*`-like when absent or not a string (LiteGraph allows 0).
fn type_field(v: &Json) -> String {
    v.get("type")
        .and_then(Json::as_str)
        .unwrap_or("*")
        .to_string()
}

/// A position `[x, y]`, or `{"0": x, "1": y}` as old workflows store it.
fn position(v: &Json) -> Option<(f32, f32)> {
    let (x, y) = match v {
        Json::Array(a) => (a.first()?, a.get(1)?),
        Json::Object(o) => (o.get("0")?, o.get("1")?),
        _ => return None,
    };
    Some((x.as_f64()? as f32, y.as_f64()? as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_fit_as_litegraph_checks_connections() {
        assert!(fits("LATENT", "LATENT"));
        assert!(fits("*", "MODEL"));
        assert!(fits("", "MODEL"));
        assert!(fits("latent", "LATENT"));
        assert!(fits("IMAGE,MASK", "MASK"));
        assert!(!fits("LATENT", "CONDITIONING"));
    }
}
