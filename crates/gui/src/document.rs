//! The open workflow: the canvas model (`Snarl<NodeView>`), where it came from, whether it has
//! unsaved changes, and its undo/redo history.
//!
//! The snarl is the editing model; a [`WorkflowFile`] is produced from it for saving, running,
//! autosave and undo checkpoints, and a snarl is rebuilt from a file on open, undo and redo.
//! Node string ids live in [`NodeView::id`] and never change once given, so a node keeps its id
//! (and its `--set` name, and its cache entries) across edits, saves and reloads. Each node also
//! carries a sequence number that fixes its place in the saved file, so saving, reopening and
//! saving again writes the same text.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use egui::Pos2;
use egui_snarl::{InPinId, NodeId, OutPinId, Snarl};
use veetance_core::{NodeRegistry, NodeSchema, ParamDef, PortDef, PortType, Value};
use veetance_workflow::{
    Group, Layout, LinkEntry, NodeEntry, ParamValue, WorkflowFile, CURRENT_VERSION,
};

/// How many undo steps are kept.
const UNDO_LIMIT: usize = 200;

/// One node on the canvas.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The stable node id (`"sampler"`), unique in the document.
    pub id: String,
    pub type_name: String,
    /// Params set on the node; params not set here take their declared defaults.
    pub params: BTreeMap<String, Value>,
    /// Place in the saved file's node list.
    pub seq: u64,
}

/// An input pin of a node: a declared input, or a linkable param shown as a pin (like
/// ComfyUI's widget-to-input conversion). Non-linkable params have no pin and sit in the body.
#[derive(Clone, Copy, Debug)]
pub enum InputSlot<'s> {
    Port(&'s PortDef),
    Param(&'s ParamDef),
}

impl<'s> InputSlot<'s> {
    pub fn name(&self) -> &'s str {
        match self {
            InputSlot::Port(p) => &p.name,
            InputSlot::Param(p) => &p.name,
        }
    }

    pub fn ty(&self) -> PortType {
        match self {
            InputSlot::Port(p) => p.ty,
            InputSlot::Param(p) => p.kind.port_type(),
        }
    }

    pub fn doc(&self) -> &'s str {
        match self {
            InputSlot::Port(p) => &p.doc,
            InputSlot::Param(p) => &p.doc,
        }
    }
}

/// The input pins of a node type, in pin order: inputs first, then linkable params.
pub fn input_slots(schema: &NodeSchema) -> Vec<InputSlot<'_>> {
    schema
        .inputs
        .iter()
        .map(InputSlot::Port)
        .chain(
            schema
                .params
                .iter()
                .filter(|p| p.linkable)
                .map(InputSlot::Param),
        )
        .collect()
}

/// The pin index of input or linkable param `port`.
pub fn input_index(schema: &NodeSchema, port: &str) -> Option<usize> {
    input_slots(schema).iter().position(|s| s.name() == port)
}

/// A node id made from `base` (a type name) that no node in `snarl` uses: `blend`, `blend_2`…
pub fn fresh_id(snarl: &Snarl<NodeView>, base: &str) -> String {
    let mut stem: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if stem.is_empty() {
        stem = "node".into();
    }
    let taken = |id: &str| snarl.nodes().any(|n| n.id == id);
    if !taken(&stem) {
        return stem;
    }
    (2..)
        .map(|i| format!("{stem}_{i}"))
        .find(|id| !taken(id))
        .expect("some suffix is free")
}

/// The next sequence number for a new node.
pub fn next_seq(snarl: &Snarl<NodeView>) -> u64 {
    snarl.nodes().map(|n| n.seq + 1).max().unwrap_or(0)
}

/// Finds the snarl node with string id `id`.
pub fn find_node(snarl: &Snarl<NodeView>, id: &str) -> Option<NodeId> {
    snarl
        .nodes_ids_data()
        .find(|(_, n)| n.value.id == id)
        .map(|(nid, _)| nid)
}

/// Builds a snarl from a workflow document. Links that match no pin (an unknown node type, a
/// port the type does not have) cannot be drawn; they are returned so that they survive a save
/// and validation can report them.
pub fn snarl_from_file(
    file: &WorkflowFile,
    registry: &NodeRegistry,
) -> (Snarl<NodeView>, Vec<LinkEntry>) {
    let mut snarl = Snarl::new();
    let positions = file
        .layout
        .as_ref()
        .map(|l| l.positions.clone())
        .unwrap_or_default();
    let mut ids: HashMap<&str, NodeId> = HashMap::new();
    for (i, node) in file.nodes.iter().enumerate() {
        let pos = positions
            .get(&node.id)
            .map(|&(x, y)| Pos2::new(x, y))
            // No layout: a simple left-to-right row, so the graph is at least visible.
            .unwrap_or(Pos2::new(i as f32 * 300.0, 0.0));
        let view = NodeView {
            id: node.id.clone(),
            type_name: node.type_name.clone(),
            params: node
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_value()))
                .collect(),
            seq: i as u64,
        };
        let nid = snarl.insert_node(pos, view);
        ids.entry(node.id.as_str()).or_insert(nid);
    }
    let mut unmapped = Vec::new();
    for link in &file.links {
        let from = ids.get(link.from.0.as_str()).and_then(|&nid| {
            let schema = registry.get(&snarl[nid].type_name)?.schema();
            Some(OutPinId {
                node: nid,
                output: schema.output_index(&link.from.1)?,
            })
        });
        let to = ids.get(link.to.0.as_str()).and_then(|&nid| {
            let schema = registry.get(&snarl[nid].type_name)?.schema();
            Some(InPinId {
                node: nid,
                input: input_index(schema, &link.to.1)?,
            })
        });
        match (from, to) {
            (Some(from), Some(to)) if !snarl.in_pin(to).remotes.contains(&from) => {
                snarl.connect(from, to);
            }
            _ => unmapped.push(link.clone()),
        }
    }
    (snarl, unmapped)
}

/// The document form of a snarl: nodes in sequence order, links ordered by the node and pin
/// they feed, then the links that could not be drawn, and every node's position.
pub fn file_from_snarl(
    snarl: &Snarl<NodeView>,
    registry: &NodeRegistry,
    unmapped: &[LinkEntry],
    description: Option<String>,
    groups: &[Group],
) -> WorkflowFile {
    let mut nodes: Vec<(NodeId, &NodeView, Pos2)> = snarl
        .nodes_pos_ids()
        .map(|(nid, pos, view)| (nid, view, pos))
        .collect();
    nodes.sort_by_key(|(_, v, _)| v.seq);
    let seq_of: HashMap<NodeId, u64> = nodes.iter().map(|(nid, v, _)| (*nid, v.seq)).collect();

    let mut links: Vec<((u64, usize, u64, usize), LinkEntry)> = snarl
        .wires()
        .filter_map(|(out, inp)| {
            let from = &snarl[out.node];
            let to = &snarl[inp.node];
            let from_schema = registry.get(&from.type_name)?.schema();
            let to_schema = registry.get(&to.type_name)?.schema();
            let from_port = from_schema.outputs.get(out.output)?.name.clone();
            let to_port = input_slots(to_schema).get(inp.input)?.name().to_string();
            Some((
                (seq_of[&inp.node], inp.input, seq_of[&out.node], out.output),
                LinkEntry {
                    from: (from.id.clone(), from_port),
                    to: (to.id.clone(), to_port),
                },
            ))
        })
        .collect();
    links.sort_by_key(|(key, _)| *key);

    WorkflowFile {
        version: CURRENT_VERSION,
        description,
        nodes: nodes
            .iter()
            .map(|(_, v, _)| NodeEntry {
                id: v.id.clone(),
                type_name: v.type_name.clone(),
                params: v
                    .params
                    .iter()
                    .filter_map(|(k, val)| ParamValue::from_value(val).map(|p| (k.clone(), p)))
                    .collect(),
            })
            .collect(),
        links: links
            .into_iter()
            .map(|(_, l)| l)
            .chain(unmapped.iter().cloned())
            .collect(),
        layout: Some(Layout {
            positions: nodes
                .iter()
                .map(|(_, v, pos)| (v.id.clone(), (pos.x, pos.y)))
                .collect(),
            groups: groups.to_vec(),
        }),
    }
}

/// The open workflow.
pub struct Document {
    pub snarl: Snarl<NodeView>,
    /// Where it was opened from or last saved to; `None` for a new document.
    pub path: Option<PathBuf>,
    /// Where it was restored from when that is not a `.ron` the editor can save over (a PNG).
    pub origin: String,
    pub description: Option<String>,
    pub groups: Vec<Group>,
    /// Links that match no pin; kept so that saving loses nothing.
    pub unmapped_links: Vec<LinkEntry>,
    /// The document as last saved or opened, to tell whether there are unsaved changes.
    saved: WorkflowFile,
    /// The last undo checkpoint.
    committed: WorkflowFile,
    undo: Vec<WorkflowFile>,
    redo: Vec<WorkflowFile>,
    /// The document as of the last [`Document::checkpoint`].
    current: WorkflowFile,
}

impl Document {
    /// An empty, unsaved document.
    pub fn new(registry: &NodeRegistry) -> Self {
        Self::from_file(empty_file(), None, "untitled".into(), registry)
    }

    /// Opens a document from a workflow file.
    pub fn from_file(
        file: WorkflowFile,
        path: Option<PathBuf>,
        origin: String,
        registry: &NodeRegistry,
    ) -> Self {
        let (snarl, unmapped_links) = snarl_from_file(&file, registry);
        let groups = file
            .layout
            .as_ref()
            .map(|l| l.groups.clone())
            .unwrap_or_default();
        let mut doc = Document {
            snarl,
            path,
            origin,
            description: file.description.clone(),
            groups,
            unmapped_links,
            saved: file.clone(),
            committed: file.clone(),
            undo: Vec::new(),
            redo: Vec::new(),
            current: file,
        };
        // What counts as "unchanged" is the document as the editor writes it.
        let canonical = doc.to_file(registry);
        doc.saved = canonical.clone();
        doc.committed = canonical.clone();
        doc.current = canonical;
        doc
    }

    /// The document as it stands now.
    pub fn to_file(&self, registry: &NodeRegistry) -> WorkflowFile {
        file_from_snarl(
            &self.snarl,
            registry,
            &self.unmapped_links,
            self.description.clone(),
            &self.groups,
        )
    }

    /// The document as of the last checkpoint (cheap; used every frame).
    pub fn current(&self) -> &WorkflowFile {
        &self.current
    }

    /// Records the current state. When it differs from the last checkpoint and `settled` (no
    /// drag or text entry in progress), the previous checkpoint becomes an undo step, so one
    /// drag or one edited field is one step.
    pub fn checkpoint(&mut self, registry: &NodeRegistry, settled: bool) {
        self.current = self.to_file(registry);
        if settled && self.current != self.committed {
            let previous = std::mem::replace(&mut self.committed, self.current.clone());
            self.undo.push(previous);
            if self.undo.len() > UNDO_LIMIT {
                self.undo.remove(0);
            }
            self.redo.clear();
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.current != self.saved
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty() || self.current != self.committed
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub fn undo(&mut self, registry: &NodeRegistry) -> bool {
        self.checkpoint(registry, true);
        let Some(previous) = self.undo.pop() else {
            return false;
        };
        let now = std::mem::replace(&mut self.committed, previous.clone());
        self.redo.push(now);
        self.replace_content(previous, registry);
        true
    }

    pub fn redo(&mut self, registry: &NodeRegistry) -> bool {
        self.checkpoint(registry, true);
        let Some(next) = self.redo.pop() else {
            return false;
        };
        let now = std::mem::replace(&mut self.committed, next.clone());
        self.undo.push(now);
        self.replace_content(next, registry);
        true
    }

    /// Replaces the content with `file` (an autosave being restored) as one undoable edit.
    pub fn restore(&mut self, file: WorkflowFile, registry: &NodeRegistry) {
        self.checkpoint(registry, true);
        let now = std::mem::replace(&mut self.committed, file.clone());
        self.undo.push(now);
        self.redo.clear();
        self.replace_content(file, registry);
    }

    fn replace_content(&mut self, file: WorkflowFile, registry: &NodeRegistry) {
        let (snarl, unmapped) = snarl_from_file(&file, registry);
        self.snarl = snarl;
        self.unmapped_links = unmapped;
        self.description = file.description.clone();
        self.groups = file
            .layout
            .as_ref()
            .map(|l| l.groups.clone())
            .unwrap_or_default();
        self.current = file;
    }

    /// Takes the state as it is now as the document as opened: what the editor did while
    /// opening it (the arrangement of a layout that overlaps or does not read) is neither an
    /// unsaved change nor an undo step.
    pub fn settle_opened(&mut self, registry: &NodeRegistry) {
        let file = self.to_file(registry);
        self.saved = file.clone();
        self.committed = file.clone();
        self.current = file;
    }

    /// Marks the current state as saved at `path`.
    pub fn mark_saved(&mut self, path: PathBuf, registry: &NodeRegistry) {
        self.checkpoint(registry, true);
        self.saved = self.current.clone();
        self.origin = path.display().to_string();
        self.path = Some(path);
    }

    /// A short name for the title bar.
    pub fn title(&self) -> String {
        self.path
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.origin.clone())
    }

    /// Adds a node of `type_name` at `pos`; returns its id.
    pub fn add_node(&mut self, type_name: &str, pos: Pos2) -> (NodeId, String) {
        add_node(&mut self.snarl, type_name, pos)
    }
}

/// Adds a node of `type_name` at `pos` to `snarl`; returns its snarl id and string id.
pub fn add_node(snarl: &mut Snarl<NodeView>, type_name: &str, pos: Pos2) -> (NodeId, String) {
    let id = fresh_id(snarl, type_name);
    let view = NodeView {
        id: id.clone(),
        type_name: type_name.into(),
        params: BTreeMap::new(),
        seq: next_seq(snarl),
    };
    (snarl.insert_node(pos, view), id)
}

fn empty_file() -> WorkflowFile {
    WorkflowFile {
        version: CURRENT_VERSION,
        description: None,
        nodes: Vec::new(),
        links: Vec::new(),
        layout: None,
    }
}

/// The selected nodes and the links among them, as a workflow fragment (the clipboard format).
pub fn fragment(
    snarl: &Snarl<NodeView>,
    registry: &NodeRegistry,
    selected: &[NodeId],
) -> WorkflowFile {
    let mut part = Snarl::new();
    let mut map = HashMap::new();
    for &nid in selected {
        if let Some(info) = snarl.get_node_info(nid) {
            map.insert(nid, part.insert_node(info.pos, info.value.clone()));
        }
    }
    for (out, inp) in snarl.wires() {
        if let (Some(&a), Some(&b)) = (map.get(&out.node), map.get(&inp.node)) {
            part.connect(
                OutPinId {
                    node: a,
                    output: out.output,
                },
                InPinId {
                    node: b,
                    input: inp.input,
                },
            );
        }
    }
    file_from_snarl(&part, registry, &[], None, &[])
}

/// Pastes a fragment into `snarl`, offset by `offset`, giving nodes fresh ids where theirs are
/// taken. Returns the new snarl ids.
pub fn paste(
    snarl: &mut Snarl<NodeView>,
    registry: &NodeRegistry,
    part: &WorkflowFile,
    offset: egui::Vec2,
) -> Vec<NodeId> {
    let (piece, _) = snarl_from_file(part, registry);
    let mut map = HashMap::new();
    let mut added = Vec::new();
    let first_seq = next_seq(snarl);
    let mut order: Vec<(NodeId, Pos2, NodeView)> = piece
        .nodes_pos_ids()
        .map(|(nid, pos, v)| (nid, pos, v.clone()))
        .collect();
    order.sort_by_key(|(_, _, v)| v.seq);
    for (i, (old, pos, mut view)) in order.into_iter().enumerate() {
        view.id = fresh_id(snarl, &view.id);
        view.seq = first_seq + i as u64;
        let nid = snarl.insert_node(pos + offset, view);
        map.insert(old, nid);
        added.push(nid);
    }
    for (out, inp) in piece.wires() {
        snarl.connect(
            OutPinId {
                node: map[&out.node],
                output: out.output,
            },
            InPinId {
                node: map[&inp.node],
                input: inp.input,
            },
        );
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = include_str!("../../../workflows/hello.ron");

    #[test]
    fn hello_round_trips_through_the_canvas_model() {
        let registry = crate::node_registry();
        let file = WorkflowFile::parse(HELLO, "hello.ron").unwrap();
        let doc = Document::from_file(file.clone(), None, "hello".into(), &registry);
        let out = doc.to_file(&registry);
        assert_eq!(out, file, "hello.ron is already in canonical order");
        assert!(!doc.is_dirty());
    }

    #[test]
    fn undo_and_redo_restore_the_document() {
        let registry = crate::node_registry();
        let file = WorkflowFile::parse(HELLO, "hello.ron").unwrap();
        let mut doc = Document::from_file(file.clone(), None, "hello".into(), &registry);
        doc.add_node("GradientImage", Pos2::new(0.0, 500.0));
        doc.checkpoint(&registry, true);
        assert!(doc.is_dirty());
        let edited = doc.current().clone();
        assert!(doc.undo(&registry));
        assert_eq!(doc.current(), &file);
        assert!(doc.redo(&registry));
        assert_eq!(doc.current(), &edited);
    }

    #[test]
    fn pasting_renames_clashing_ids_and_keeps_inner_links() {
        let registry = crate::node_registry();
        let file = WorkflowFile::parse(HELLO, "hello.ron").unwrap();
        let mut doc = Document::from_file(file, None, "hello".into(), &registry);
        let ids: Vec<NodeId> = ["blend", "resize"]
            .iter()
            .map(|id| find_node(&doc.snarl, id).unwrap())
            .collect();
        let part = fragment(&doc.snarl, &registry, &ids);
        assert_eq!(part.links.len(), 1);
        paste(&mut doc.snarl, &registry, &part, egui::vec2(0.0, 300.0));
        let out = doc.to_file(&registry);
        assert!(out.nodes.iter().any(|n| n.id == "blend_2"));
        assert!(out
            .links
            .iter()
            .any(|l| l.from.0 == "blend_2" && l.to.0 == "resize_2"));
    }
}
