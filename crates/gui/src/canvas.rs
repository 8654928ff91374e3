//! The node canvas: how egui-snarl shows the document's nodes. Every node's pins, widgets and
//! docs come from its [`NodeSchema`]; nothing here knows a node type by name.
//!
//! Pins: a node's inputs, then its linkable params (a param's widget is hidden while a link
//! feeds it), on the left; its outputs on the right. Wires take the colour of their type.
//! [`CanvasViewer::connect`] refuses a link whose types do not fit (`PortType::can_feed`) and
//! says why.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use egui::emath::TSTransform;
use egui::{Color32, Pos2, RichText, Stroke, Ui};
use egui_snarl::ui::{BackgroundPattern, PinInfo, PinWireInfo, SnarlPin, SnarlStyle, SnarlViewer};
use egui_snarl::{InPin, NodeId, OutPin, Snarl};
use veetance_core::{NodeRegistry, NodeSchema, ParamDef, ParamKind, PortType, Value};

use crate::document::{add_node, input_slots, InputSlot, NodeView};
use crate::layout::{self, ViewCommand};
use crate::model_files::ModelFileInfo;

/// The colour of a port type's pins and wires.
pub fn type_color(ty: PortType) -> Color32 {
    match ty {
        PortType::Int => Color32::from_rgb(0x7d, 0xc4, 0xe4),
        PortType::Float => Color32::from_rgb(0x9a, 0xd9, 0x8f),
        PortType::Bool => Color32::from_rgb(0xe0, 0x8d, 0x79),
        PortType::String => Color32::from_rgb(0xd8, 0xc8, 0x7a),
        PortType::Choice => Color32::from_rgb(0xc7, 0xa8, 0x6b),
        PortType::Image => Color32::from_rgb(0x64, 0xb5, 0xf6),
        PortType::Latent => Color32::from_rgb(0xff, 0x9c, 0xd6),
        PortType::Conditioning => Color32::from_rgb(0xff, 0xa9, 0x31),
        PortType::Model => Color32::from_rgb(0xb3, 0x9d, 0xdb),
        PortType::TextEncoder => Color32::from_rgb(0xff, 0xd5, 0x00),
        PortType::Vae => Color32::from_rgb(0xff, 0x6e, 0x6e),
        PortType::Noise => Color32::from_rgb(0xb0, 0xb0, 0xb0),
        PortType::Guider => Color32::from_rgb(0x66, 0xff, 0xff),
        PortType::Sampler => Color32::from_rgb(0xec, 0xb4, 0xb4),
        PortType::Sigmas => Color32::from_rgb(0xcd, 0xff, 0xcd),
        PortType::Mask => Color32::from_rgb(0x81, 0xc7, 0x84),
        _ => Color32::GRAY,
    }
}

/// The brand colours.
pub const INDIGO: Color32 = Color32::from_rgb(0x4b, 0x00, 0x82);
pub const PINK: Color32 = Color32::from_rgb(0xff, 0x69, 0xb4);

/// What a node is doing in the current or last run.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeRun {
    Queued,
    Running { step: u64, total: u64 },
    Cached,
    Done { ms: f64 },
    Failed(String),
    Cancelled,
}

impl NodeRun {
    pub fn label(&self) -> String {
        match self {
            NodeRun::Queued => "queued".into(),
            NodeRun::Running { step, total } if *total > 0 => {
                format!("running {step}/{total}")
            }
            NodeRun::Running { .. } => "running".into(),
            NodeRun::Cached => "cached".into(),
            NodeRun::Done { ms } => format!("done {ms:.0} ms"),
            NodeRun::Failed(_) => "failed".into(),
            NodeRun::Cancelled => "cancelled".into(),
        }
    }

    fn color(&self) -> Color32 {
        match self {
            NodeRun::Queued => Color32::from_gray(150),
            NodeRun::Running { .. } => Color32::from_rgb(0xff, 0xc1, 0x07),
            NodeRun::Cached => Color32::from_rgb(0x80, 0xcb, 0xc4),
            NodeRun::Done { .. } => Color32::from_rgb(0x81, 0xc7, 0x84),
            NodeRun::Failed(_) => Color32::from_rgb(0xef, 0x53, 0x50),
            NodeRun::Cancelled => Color32::from_gray(170),
        }
    }
}

/// Which pin a screen position belongs to: (node id, port name, is output).
pub type PinKey = (String, String, bool);

/// Where each pin was drawn in the last frame (screen coordinates); tests drag wires between
/// these points, as a user would.
#[derive(Clone, Debug, Default)]
pub struct PinTracker(Rc<RefCell<HashMap<PinKey, Pos2>>>);

impl PinTracker {
    pub fn get(&self, node: &str, port: &str, output: bool) -> Option<Pos2> {
        self.0
            .borrow()
            .get(&(node.to_string(), port.to_string(), output))
            .copied()
    }

    fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// A pin that records where it was drawn.
struct TrackedPin {
    info: PinInfo,
    key: PinKey,
    tracker: PinTracker,
}

impl SnarlPin for TrackedPin {
    fn draw(
        self,
        snarl_style: &SnarlStyle,
        style: &egui::Style,
        rect: egui::Rect,
        painter: &egui::Painter,
    ) -> PinWireInfo {
        self.tracker.0.borrow_mut().insert(self.key, rect.center());
        self.info.draw(snarl_style, style, rect, painter)
    }
}

/// A file's size and kind, with the modification time it was read at.
type StampedInfo = (Option<std::time::SystemTime>, Option<ModelFileInfo>);

/// Model files under the models folder, by sub-folder, re-listed every few seconds.
#[derive(Debug, Default)]
pub struct ModelIndex {
    pub root: PathBuf,
    folders: RefCell<HashMap<String, (Instant, Vec<String>)>>,
    /// Each file's size and kind, kept while its size and modification time stay the same.
    infos: RefCell<HashMap<PathBuf, StampedInfo>>,
}

impl ModelIndex {
    pub fn new(root: PathBuf) -> Self {
        ModelIndex {
            root,
            folders: RefCell::default(),
            infos: RefCell::default(),
        }
    }

    /// Size and kind of `<root>/<folder>/<name>` (read once per version of the file).
    pub fn info(&self, folder: &str, name: &str) -> Option<ModelFileInfo> {
        let path = self.root.join(folder).join(name);
        let meta = std::fs::metadata(&path).ok()?;
        let stamp = meta.modified().ok();
        let mut infos = self.infos.borrow_mut();
        if let Some((at, info)) = infos.get(&path) {
            if *at == stamp && info.as_ref().is_some_and(|i| i.bytes == meta.len()) {
                return info.clone();
            }
        }
        let info = crate::model_files::inspect(&path);
        infos.insert(path, (stamp, info.clone()));
        info
    }

    /// Files in `<root>/<folder>` (and one level of sub-folders), as names relative to it.
    pub fn files(&self, folder: &str) -> Vec<String> {
        let mut cache = self.folders.borrow_mut();
        if let Some((at, files)) = cache.get(folder) {
            if at.elapsed() < Duration::from_secs(3) {
                return files.clone();
            }
        }
        let mut files = Vec::new();
        list_files(&self.root.join(folder), Path::new(""), 2, &mut files);
        files.sort();
        cache.insert(folder.to_string(), (Instant::now(), files.clone()));
        files
    }
}

fn list_files(dir: &Path, prefix: &Path, depth: u32, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let rel = prefix.join(&name);
        match entry.file_type() {
            Ok(t) if t.is_dir() && depth > 1 => list_files(&entry.path(), &rel, depth - 1, out),
            Ok(t) if !t.is_dir() => out.push(rel.to_string_lossy().into_owned()),
            _ => {}
        }
    }
}

/// Shows the document's snarl, with what the app knows about the run.
pub struct CanvasViewer<'a> {
    pub registry: &'a NodeRegistry,
    pub node_runs: &'a HashMap<String, NodeRun>,
    pub node_images: &'a HashMap<String, egui::TextureHandle>,
    pub problems: &'a BTreeMap<String, Vec<String>>,
    pub models: &'a ModelIndex,
    pub pins: &'a PinTracker,
    /// A message for the status line (a refused connection…).
    pub notice: &'a mut Option<String>,
    /// The canvas transform (graph to screen), for placing new nodes in view.
    pub transform: &'a mut TSTransform,
    pub menu_search: &'a mut String,
    /// Seeds for the seed widget's dice button.
    pub dice: &'a mut u64,
    /// Each node's rectangle in graph coordinates as drawn in the last frame, and for how many
    /// frames before that its size has not changed.
    pub rects: &'a mut HashMap<NodeId, (egui::Rect, u32)>,
    /// A fit / zoom / arrange waiting for every node to be measured.
    pub view_cmd: &'a mut Option<ViewCommand>,
    /// The canvas area on screen.
    pub viewport: egui::Rect,
    /// The selected nodes (for zoom to selection).
    pub selected: &'a [NodeId],
    /// Keep `view_cmd` for a later frame (the panels are folding away this frame, so the
    /// canvas is about to grow).
    pub hold_view: bool,
    /// The zoom at which node text is [`layout::READABLE_TEXT`] pixels high.
    pub readable_scale: f32,
}

impl CanvasViewer<'_> {
    /// Clears pin positions before a frame draws them anew.
    pub fn begin_frame(&self) {
        self.pins.clear();
    }

    fn schema(&self, node: &NodeView) -> Option<&NodeSchema> {
        self.registry.get(&node.type_name).map(|d| d.schema())
    }
}

/// A pin's look: filled with its type's colour, hollow when an optional input is unlinked.
fn pin_info(ty: PortType) -> PinInfo {
    PinInfo::circle()
        .with_fill(type_color(ty))
        .with_wire_color(type_color(ty))
}

impl SnarlViewer<NodeView> for CanvasViewer<'_> {
    fn title(&mut self, node: &NodeView) -> String {
        self.schema(node)
            .map(|s| s.display_name.clone())
            .unwrap_or_else(|| node.type_name.clone())
    }

    fn show_header(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) {
        let view = &snarl[node];
        let title = self.title(view);
        let doc = self.schema(view).map(|s| s.doc.clone()).unwrap_or_default();
        ui.horizontal(|ui| {
            let r = ui.label(RichText::new(title).strong());
            if !doc.is_empty() {
                r.on_hover_text(doc);
            }
            ui.label(RichText::new(&view.id).weak().small());
            if let Some(state) = self.node_runs.get(&view.id) {
                ui.label(RichText::new(state.label()).small().color(state.color()));
            }
        });
    }

    fn node_frame(
        &mut self,
        default: egui::Frame,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        snarl: &Snarl<NodeView>,
    ) -> egui::Frame {
        let id = &snarl[node].id;
        let failed = matches!(self.node_runs.get(id), Some(NodeRun::Failed(_)))
            || self.problems.contains_key(id);
        match self.node_runs.get(id) {
            _ if failed => default.stroke(Stroke::new(2.5, NodeRun::Failed(String::new()).color())),
            Some(state @ NodeRun::Running { .. }) => {
                default.stroke(Stroke::new(2.5, state.color()))
            }
            _ => default,
        }
    }

    fn inputs(&mut self, node: &NodeView) -> usize {
        self.schema(node).map(|s| input_slots(s).len()).unwrap_or(0)
    }

    fn outputs(&mut self, node: &NodeView) -> usize {
        self.schema(node).map(|s| s.outputs.len()).unwrap_or(0)
    }

    fn show_input(
        &mut self,
        pin: &InPin,
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) -> impl SnarlPin + 'static {
        let registry = self.registry;
        let view = &mut snarl[pin.id.node];
        let schema = registry.get(&view.type_name).map(|d| d.schema());
        let slot = schema.and_then(|s| input_slots(s).get(pin.id.input).copied());
        let Some(slot) = slot else {
            return TrackedPin {
                info: PinInfo::circle(),
                key: (view.id.clone(), String::new(), false),
                tracker: self.pins.clone(),
            };
        };
        let key = (view.id.clone(), slot.name().to_string(), false);
        match slot {
            InputSlot::Port(port) => {
                let text = if port.required {
                    port.name.clone()
                } else {
                    format!("{} (optional)", port.name)
                };
                ui.label(text)
                    .on_hover_text(format!("{}: {}\n{}", port.name, port.ty, port.doc));
            }
            InputSlot::Param(def) if pin.remotes.is_empty() => {
                let node_id = view.id.clone();
                param_widget(ui, def, &mut view.params, &node_id, self.models, self.dice);
            }
            InputSlot::Param(def) => {
                ui.label(RichText::new(format!("{} (linked)", def.name)).italics())
                    .on_hover_text(format!(
                        "{}: {}\n{}",
                        def.name,
                        def.kind.port_type(),
                        def.doc
                    ));
            }
        }
        TrackedPin {
            info: pin_info(slot.ty()),
            key,
            tracker: self.pins.clone(),
        }
    }

    fn show_output(
        &mut self,
        pin: &OutPin,
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) -> impl SnarlPin + 'static {
        let view = &snarl[pin.id.node];
        let port = self.schema(view).and_then(|s| s.outputs.get(pin.id.output));
        let Some(port) = port else {
            return TrackedPin {
                info: PinInfo::circle(),
                key: (view.id.clone(), String::new(), true),
                tracker: self.pins.clone(),
            };
        };
        ui.label(&port.name)
            .on_hover_text(format!("{}: {}\n{}", port.name, port.ty, port.doc));
        TrackedPin {
            info: pin_info(port.ty),
            key: (view.id.clone(), port.name.clone(), true),
            tracker: self.pins.clone(),
        }
    }

    fn has_body(&mut self, node: &NodeView) -> bool {
        match self.schema(node) {
            Some(s) => s.params.iter().any(|p| !p.linkable),
            None => true,
        }
    }

    fn show_body(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) {
        let registry = self.registry;
        let view = &mut snarl[node];
        let Some(schema) = registry.get(&view.type_name).map(|d| d.schema()) else {
            ui.colored_label(
                NodeRun::Failed(String::new()).color(),
                format!("unknown node type {:?}", view.type_name),
            );
            return;
        };
        ui.vertical(|ui| {
            let node_id = view.id.clone();
            for def in schema.params.iter().filter(|p| !p.linkable) {
                param_widget(ui, def, &mut view.params, &node_id, self.models, self.dice);
            }
        });
    }

    fn has_footer(&mut self, node: &NodeView) -> bool {
        self.node_runs.contains_key(&node.id)
            || self.problems.contains_key(&node.id)
            || self.node_images.contains_key(&node.id)
    }

    fn show_footer(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) {
        let id = snarl[node].id.clone();
        ui.vertical(|ui| {
            match self.node_runs.get(&id) {
                Some(NodeRun::Running { step, total }) if *total > 0 => {
                    ui.add(
                        egui::ProgressBar::new(*step as f32 / *total as f32)
                            .desired_width(180.0)
                            .text(format!("{step}/{total}")),
                    );
                }
                Some(NodeRun::Failed(message)) => problem_line(ui, message),
                _ => {}
            }
            if let Some(problems) = self.problems.get(&id) {
                for p in problems {
                    problem_line(ui, p);
                }
            }
            if let Some(texture) = self.node_images.get(&id) {
                let size = texture.size_vec2();
                let scale = (200.0 / size.x.max(size.y)).min(1.0);
                ui.add(egui::Image::new((texture.id(), size * scale)));
            }
        });
    }

    fn connect(&mut self, from: &OutPin, to: &InPin, snarl: &mut Snarl<NodeView>) {
        let (from_view, to_view) = (&snarl[from.id.node], &snarl[to.id.node]);
        let from_port = self
            .schema(from_view)
            .and_then(|s| s.outputs.get(from.id.output))
            .map(|p| (p.name.clone(), p.ty));
        let to_slot = self.schema(to_view).and_then(|s| {
            input_slots(s)
                .get(to.id.input)
                .map(|s| (s.name().to_string(), s.ty()))
        });
        let (Some((from_name, from_ty)), Some((to_name, to_ty))) = (from_port, to_slot) else {
            return;
        };
        if from.id.node == to.id.node {
            *self.notice = Some("a node cannot feed itself".into());
            return;
        }
        if !from_ty.can_feed(to_ty) {
            *self.notice = Some(format!(
                "{from_ty} cannot feed {to_ty}: {}.{from_name} → {}.{to_name} was not connected",
                from_view.id, to_view.id
            ));
            return;
        }
        // One link per input: a new link replaces the old one.
        snarl.drop_inputs(to.id);
        snarl.connect(from.id, to.id);
        *self.notice = None;
    }

    fn has_graph_menu(&mut self, _pos: Pos2, _snarl: &mut Snarl<NodeView>) -> bool {
        true
    }

    fn show_graph_menu(&mut self, pos: Pos2, ui: &mut Ui, snarl: &mut Snarl<NodeView>) {
        ui.label("Add node");
        ui.text_edit_singleline(self.menu_search).request_focus();
        let needle = self.menu_search.to_lowercase();
        let mut chosen = None;
        egui::ScrollArea::vertical()
            .max_height(320.0)
            .show(ui, |ui| {
                for schema in self.registry.schemas().filter(|s| offered(s)) {
                    if !needle.is_empty() && !matches_search(schema, &needle) {
                        continue;
                    }
                    let label = format!("{}  ({})", schema.display_name, schema.category);
                    if ui.button(label).on_hover_text(&schema.doc).clicked() {
                        chosen = Some(schema.type_name.clone());
                    }
                }
            });
        if let Some(type_name) = chosen {
            add_node(snarl, &type_name, pos);
            self.menu_search.clear();
            ui.close();
        }
    }

    fn has_node_menu(&mut self, _node: &NodeView) -> bool {
        true
    }

    fn show_node_menu(
        &mut self,
        node: NodeId,
        _inputs: &[InPin],
        _outputs: &[OutPin],
        ui: &mut Ui,
        snarl: &mut Snarl<NodeView>,
    ) {
        if ui.button("Duplicate").clicked() {
            if let Some(info) = snarl.get_node_info(node) {
                let (pos, view) = (info.pos, info.value.clone());
                let (nid, _) = add_node(snarl, &view.type_name, pos + egui::vec2(40.0, 40.0));
                snarl[nid].params = view.params;
            }
            ui.close();
        }
        if ui.button("Disconnect all").clicked() {
            let n_in = self.inputs(&snarl[node]);
            let n_out = self.outputs(&snarl[node]);
            for input in 0..n_in {
                snarl.drop_inputs(egui_snarl::InPinId { node, input });
            }
            for output in 0..n_out {
                snarl.drop_outputs(egui_snarl::OutPinId { node, output });
            }
            ui.close();
        }
        if ui.button("Delete").clicked() {
            snarl.remove_node(node);
            ui.close();
        }
    }

    fn final_node_rect(
        &mut self,
        node: NodeId,
        rect: egui::Rect,
        _ui: &mut Ui,
        _snarl: &mut Snarl<NodeView>,
    ) {
        let steady = match self.rects.get(&node) {
            Some((old, n)) if (old.size() - rect.size()).length() < 0.5 => n + 1,
            _ => 0,
        };
        self.rects.insert(node, (rect, steady));
    }

    /// The grid as one mesh of pixel-aligned lines (see [`crate::paint::grid_mesh`]) rather than egui-snarl's
    /// anti-aliased line per grid line.
    fn draw_background(
        &mut self,
        background: Option<&BackgroundPattern>,
        viewport: &egui::Rect,
        snarl_style: &SnarlStyle,
        style: &egui::Style,
        painter: &egui::Painter,
        _snarl: &Snarl<NodeView>,
    ) {
        match background {
            Some(BackgroundPattern::Grid(grid)) if grid.angle == 0.0 => {
                let stroke = snarl_style
                    .bg_pattern_stroke
                    .unwrap_or(style.visuals.widgets.noninteractive.bg_stroke);
                let pixels_per_point = painter.ctx().pixels_per_point();
                painter.add(crate::paint::grid_mesh(
                    *viewport,
                    *self.transform,
                    grid.spacing,
                    stroke,
                    pixels_per_point,
                ));
            }
            Some(pattern) => pattern.draw(viewport, snarl_style, style, painter),
            None => {}
        }
    }

    fn current_transform(&mut self, to_global: &mut TSTransform, snarl: &mut Snarl<NodeView>) {
        if let Some(cmd) = (*self.view_cmd).filter(|_| !self.hold_view) {
            if let Some(t) = apply_view_command(
                cmd,
                snarl,
                self.rects,
                self.selected,
                self.viewport,
                *to_global,
                self.readable_scale,
            ) {
                *to_global = t;
                *self.view_cmd = None;
            }
        }
        *self.transform = *to_global;
    }
}

/// A problem written on its node: one red line as wide as the node (a long message does not
/// make the node taller or wider), the whole message on hover and in the viewer's list.
fn problem_line(ui: &mut Ui, message: &str) {
    let color = NodeRun::Failed(String::new()).color();
    ui.add(egui::Label::new(RichText::new(message).color(color)).truncate())
        .on_hover_text(message);
}

/// Whether the palette and the add-node menu offer a node type: test nodes
/// ([`crate::demo::TEST_CATEGORY`]) only in debug builds, where the tests drive them.
pub fn offered(schema: &NodeSchema) -> bool {
    cfg!(debug_assertions) || schema.category != crate::demo::TEST_CATEGORY
}

/// Whether a schema matches a lower-case search text (name, display name, category).
pub fn matches_search(schema: &NodeSchema, needle: &str) -> bool {
    schema.type_name.to_lowercase().contains(needle)
        || schema.display_name.to_lowercase().contains(needle)
        || schema.category.to_lowercase().contains(needle)
}

/// The widget for one param, fitted to its kind; writes into `params` when changed. Returns
/// whether the value changed.
pub fn param_widget(
    ui: &mut Ui,
    def: &ParamDef,
    params: &mut BTreeMap<String, Value>,
    node_id: &str,
    models: &ModelIndex,
    dice: &mut u64,
) -> bool {
    let current = params
        .get(&def.name)
        .cloned()
        .unwrap_or_else(|| def.kind.default_value());
    let hover = format!("{}: {}\n{}", def.name, def.kind.describe(), def.doc);
    let mut changed = None;
    ui.horizontal(|ui| {
        let label = ui.label(&def.name).on_hover_text(&hover);
        let response = match &def.kind {
            ParamKind::Int { min, max, step, .. } => {
                let mut v = current.as_int().unwrap_or_default();
                let r = if max.saturating_sub(*min) <= 100 {
                    ui.add(egui::Slider::new(&mut v, *min..=*max))
                } else {
                    ui.add(
                        egui::DragValue::new(&mut v)
                            .range(*min..=*max)
                            .speed((*step).max(1) as f64),
                    )
                };
                if r.changed() {
                    changed = Some(Value::Int(v));
                }
                if def.name == "seed"
                    && ui
                        .small_button("🎲")
                        .on_hover_text("a new random seed now")
                        .clicked()
                {
                    *dice = splitmix(*dice);
                    let span = (*max as i128 - *min as i128 + 1) as u128;
                    let v = (*min as i128 + (*dice as u128 % span) as i128) as i64;
                    changed = Some(Value::Int(v));
                }
                r
            }
            ParamKind::Float { min, max, step, .. } => {
                let mut v = current.as_float().unwrap_or_default();
                let r = if min.is_finite() && max.is_finite() && max - min <= 1e4 {
                    ui.add(egui::Slider::new(&mut v, *min..=*max).step_by(*step))
                } else {
                    ui.add(egui::DragValue::new(&mut v).range(*min..=*max).speed(*step))
                };
                if r.changed() {
                    changed = Some(Value::Float(v));
                }
                r
            }
            ParamKind::Bool { .. } => {
                let mut v = current.as_bool().unwrap_or_default();
                let r = ui.checkbox(&mut v, "");
                if r.changed() {
                    changed = Some(Value::Bool(v));
                }
                r
            }
            ParamKind::String { multiline, .. } => {
                let mut text = current.as_str().unwrap_or_default().to_string();
                let r = if *multiline {
                    prompt_field(ui, &mut text, egui::Id::new((node_id, &def.name, "text")))
                } else {
                    ui.add(egui::TextEdit::singleline(&mut text).desired_width(160.0))
                };
                if r.changed() {
                    changed = Some(Value::string(text));
                }
                r
            }
            ParamKind::Choice { options, .. } => {
                let selected = current.as_str().unwrap_or_default().to_string();
                let mut choice = selected.clone();
                let r = egui::ComboBox::from_id_salt((node_id, &def.name))
                    .selected_text(&selected)
                    .show_ui(ui, |ui| {
                        for o in options {
                            ui.selectable_value(&mut choice, o.clone(), o);
                        }
                    })
                    .response;
                if choice != selected {
                    changed = Some(Value::string(choice));
                }
                r
            }
            ParamKind::Path { folder, .. } => {
                let text = current.as_str().unwrap_or_default().to_string();
                let (r, picked) =
                    path_picker(ui, &text, folder.as_deref(), (node_id, &def.name), models);
                if picked.is_some() {
                    changed = picked.map(Value::string);
                }
                r
            }
        };
        response.labelled_by(label.id).on_hover_text(&hover);
    });
    match changed {
        Some(v) => {
            params.insert(def.name.clone(), v);
            true
        }
        None => false,
    }
}

/// How wide a model file picker is on a node: the file's name, not its folder.
pub const PICKER_WIDTH: f32 = 140.0;

/// A model file picker that takes little room on the node: a drop-down showing the file's name
/// (the whole path on hover). Opened, it has a field for any path and the files of the models
/// folder (`<models>/<folder>/`). Returns the response and the newly chosen path, if any.
fn path_picker(
    ui: &mut Ui,
    text: &str,
    folder: Option<&str>,
    id_salt: (&str, &String),
    models: &ModelIndex,
) -> (egui::Response, Option<String>) {
    let mut picked = None;
    let name = Path::new(text)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| text.to_string());
    let shown = if name.is_empty() {
        "(none)".into()
    } else {
        name
    };
    let r = egui::ComboBox::from_id_salt(id_salt)
        .selected_text(shown)
        .width(PICKER_WIDTH)
        .truncate()
        .height(420.0)
        .close_behavior(egui::PopupCloseBehavior::CloseOnClickOutside)
        .show_ui(ui, |ui| {
            let mut edit = text.to_string();
            let field = ui.add(
                egui::TextEdit::singleline(&mut edit)
                    .desired_width(360.0)
                    .hint_text("a path, or a file below"),
            );
            if field.changed() {
                picked = Some(edit);
            }
            let Some(folder) = folder else {
                return;
            };
            let dir = models.root.join(folder);
            ui.label(
                RichText::new(format!("in {}", dir.display()))
                    .weak()
                    .small(),
            );
            let files = models.files(folder);
            if files.is_empty() {
                ui.label(format!("no files in {}", dir.display()));
            }
            for f in &files {
                let info = models.info(folder, f);
                let clicked = ui
                    .horizontal(|ui| {
                        let r = ui.selectable_label(*f == text, f);
                        if let Some(info) = &info {
                            ui.label(RichText::new(info.label()).weak());
                        }
                        r.clicked()
                    })
                    .inner;
                if clicked {
                    picked = Some(f.clone());
                    ui.close();
                }
            }
        })
        .response
        .on_hover_text(if text.is_empty() {
            "no file chosen"
        } else {
            text
        });
    (r, picked)
}

/// A prompt field that stays small on the node (two lines, scrolled) until it has the keyboard,
/// then opens to its whole text.
fn prompt_field(ui: &mut Ui, text: &mut String, id: egui::Id) -> egui::Response {
    let focused = ui.memory(|m| m.has_focus(id));
    let rows = if focused { 6 } else { 2 };
    let edit = egui::TextEdit::multiline(text)
        .id(id)
        .desired_rows(rows)
        .desired_width(PROMPT_WIDTH);
    if focused {
        return ui.add(edit);
    }
    let row = ui.text_style_height(&egui::TextStyle::Body);
    egui::ScrollArea::vertical()
        .id_salt(id.with("scroll"))
        .max_height(2.0 * row + 2.0 * ui.spacing().button_padding.y + 4.0)
        .show(ui, |ui| ui.add(edit))
        .inner
}

/// How wide a prompt field is on a node.
pub const PROMPT_WIDTH: f32 = 180.0;

/// A small, fast mixing function for the dice button (not for anything cryptographic).
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Scales the fit may use: never above 100% (text at its normal size), never below snarl's floor.
const FIT_SCALES: (f32, f32) = (0.2, 1.0);

/// Every node with its measured rectangle moved to where the node is now (positions may have
/// changed since it was drawn); `None` while some node has not been measured and settled yet
/// (sizes settle over a frame or two after a node first shows).
fn measured(
    snarl: &Snarl<NodeView>,
    rects: &HashMap<NodeId, (egui::Rect, u32)>,
) -> Option<Vec<(NodeId, egui::Rect)>> {
    snarl
        .nodes_pos_ids()
        .map(|(id, pos, _)| {
            let (r, steady) = rects.get(&id)?;
            (*steady >= 1).then(|| (id, r.translate(pos - r.min)))
        })
        .collect()
}

/// Where the layered layout puts `nodes` (measured rectangles) in a view of `viewport`.
fn arranged(
    snarl: &Snarl<NodeView>,
    nodes: &[(NodeId, egui::Rect)],
    viewport: egui::Rect,
) -> HashMap<NodeId, Pos2> {
    let sizes: Vec<(NodeId, egui::Vec2)> = nodes.iter().map(|(id, r)| (*id, r.size())).collect();
    let edges: Vec<(NodeId, NodeId)> = snarl.wires().map(|(o, i)| (o.node, i.node)).collect();
    let origin = nodes
        .iter()
        .map(|(_, r)| r.min)
        .fold(Pos2::new(f32::MAX, f32::MAX), |a, p| a.min(p));
    // Columns no taller than the view shows at 100%, so the graph reads at its normal size
    // when it fits at all.
    let max_height = (viewport.height() - 2.0 * layout::FIT_MARGIN).max(200.0);
    layout::layered(&sizes, &edges, origin, max_height, viewport.size())
}

/// The scale at which node text reaches [`layout::READABLE_TEXT`] pixels.
fn readable_scale(ui_style: &egui::Style) -> f32 {
    let body = ui_style
        .text_styles
        .get(&egui::TextStyle::Body)
        .map_or(13.0, |f| f.size);
    layout::READABLE_TEXT / body
}

/// Where opening puts the nodes, when it moves them (`None`: they stay): the arrangement by
/// rank when the saved positions overlap at the nodes' real sizes (a file without a layout has
/// every node at one spot), or when they spread so far that the view would show node text
/// under [`layout::READABLE_TEXT`] pixels while the arrangement shows it larger (a layout
/// made for other node sizes, such as ComfyUI's).
fn open_arrangement(
    snarl: &Snarl<NodeView>,
    nodes: &[(NodeId, egui::Rect)],
    viewport: egui::Rect,
    readable: f32,
) -> Option<HashMap<NodeId, Pos2>> {
    if nodes.is_empty() {
        return None;
    }
    let all: Vec<egui::Rect> = nodes.iter().map(|(_, r)| *r).collect();
    let placed = arranged(snarl, nodes, viewport);
    if layout::any_overlap(&all, 1.0) {
        return Some(placed);
    }
    let (min, max) = FIT_SCALES;
    let saved = layout::fit(layout::bounds(all), viewport, min, max).scaling;
    if saved >= readable {
        return None;
    }
    let bounds = layout::bounds(nodes.iter().map(|(id, r)| r.translate(placed[id] - r.min)));
    (layout::fit(bounds, viewport, min, max).scaling > saved * 1.05).then_some(placed)
}

/// The bounds the graph will have once [`ViewCommand::Open`] is carried out in `viewport`:
/// where its nodes are, or where the arrangement will put them. `None` until every node is
/// measured, and for an empty graph.
pub fn open_bounds(
    snarl: &Snarl<NodeView>,
    rects: &HashMap<NodeId, (egui::Rect, u32)>,
    viewport: egui::Rect,
    style: &egui::Style,
) -> Option<egui::Rect> {
    let nodes = measured(snarl, rects)?;
    if nodes.is_empty() {
        return None;
    }
    Some(
        match open_arrangement(snarl, &nodes, viewport, readable_scale(style)) {
            Some(placed) => {
                layout::bounds(nodes.iter().map(|(id, r)| r.translate(placed[id] - r.min)))
            }
            None => layout::bounds(nodes.iter().map(|(_, r)| *r)),
        },
    )
}

/// The zoom at which node text is [`layout::READABLE_TEXT`] pixels high in `ctx`'s style.
pub fn readable_zoom(ctx: &egui::Context) -> f32 {
    readable_scale(&ctx.global_style())
}

/// Carries out `cmd` once every node has a measured rectangle (`None` until then: the caller
/// keeps the command for the next frame). Arranging moves the nodes in `snarl` and their
/// rectangles in `rects`; the result is the new canvas transform.
pub fn apply_view_command(
    cmd: ViewCommand,
    snarl: &mut Snarl<NodeView>,
    rects: &mut HashMap<NodeId, (egui::Rect, u32)>,
    selected: &[NodeId],
    viewport: egui::Rect,
    current: TSTransform,
    readable: f32,
) -> Option<TSTransform> {
    if viewport.width() < 1.0 {
        return None;
    }
    let nodes = measured(snarl, rects)?;
    let placed = match cmd {
        ViewCommand::Arrange if !nodes.is_empty() => Some(arranged(snarl, &nodes, viewport)),
        ViewCommand::Open => open_arrangement(snarl, &nodes, viewport, readable),
        _ => None,
    };
    if let Some(placed) = placed {
        for (id, pos) in placed {
            if let Some(info) = snarl.get_node_info_mut(id) {
                info.pos = pos;
            }
            if let Some((r, _)) = rects.get_mut(&id) {
                *r = r.translate(pos - r.min);
            }
        }
    }
    let pick: Vec<egui::Rect> = snarl
        .nodes_pos_ids()
        .filter(|(id, _, _)| cmd != ViewCommand::FitSelection || selected.contains(id))
        .map(|(id, pos, _)| {
            let r = rects[&id].0;
            r.translate(pos - r.min)
        })
        .collect();
    let (min, max) = FIT_SCALES;
    Some(match cmd {
        ViewCommand::Zoom100 => {
            let centre = current.inverse() * viewport.center();
            layout::centred(centre, viewport.center(), 1.0)
        }
        _ if pick.is_empty() => current,
        _ => layout::fit(layout::bounds(pick), viewport, min, max),
    })
}
