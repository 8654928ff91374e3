//! The editor application: one document on a canvas, the panels around it, the engine thread
//! behind it. [`VeetanceApp::ui`] draws one frame; eframe calls it through [`eframe::App`], and
//! the tests call it through `egui_kittest`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::emath::TSTransform;
use egui::{Key, Modifiers, Pos2};
use egui_snarl::ui::{get_selected_nodes, SnarlStyle, SnarlWidget};

use crate::layout::ViewCommand;
use egui_snarl::NodeId;
use veetance_core::{CancelToken, Event, Image, NodeRegistry, Place, RunEnv};
use veetance_workflow::WorkflowFile;

use crate::canvas::{CanvasViewer, ModelIndex, NodeRun, PinTracker};
use crate::document::{self, Document};
use crate::engine_bridge::{Command, EngineBridge, Reply};
use crate::files::{Autosave, DialogMode, FileDialog};
use crate::history::{self, RunHistory, RunState};
use crate::settings::{Settings, STORAGE_KEY};
use crate::splash::Splash;
use crate::telemetry::{read_host_memory, CacheTelemetry, HostMemory};
use crate::EditorOptions;

/// The egui id of the canvas widget (selection lives under it).
pub const CANVAS_ID: &str = "veetance-canvas";

/// A run in progress.
pub struct ActiveRun {
    /// Its entry in the run history.
    pub entry: u64,
    pub cancel: CancelToken,
    pub started: Instant,
    /// Which quote of the bank the overlay starts from.
    pub quote_offset: usize,
}

/// What the editor knows of the current or last run.
#[derive(Default)]
pub struct RunView {
    pub active: Option<ActiveRun>,
    pub nodes: HashMap<String, NodeRun>,
    /// The latest preview or output image of each node.
    pub images: HashMap<String, egui::TextureHandle>,
    /// The node whose preview came last, and how far its progress was then.
    pub preview: Option<(String, f32)>,
    /// Images written by output nodes in the last run: (node, path, texture).
    pub outputs: Vec<(String, String, egui::TextureHandle)>,
    pub to_execute: usize,
    pub executed: usize,
    /// How the last run ended, for the status line.
    pub result: Option<String>,
}

impl RunView {
    /// The whole run's progress in 0..=1: finished nodes plus the running node's share.
    pub fn progress(&self) -> f32 {
        if self.to_execute == 0 {
            return if self.active.is_some() { 0.0 } else { 1.0 };
        }
        let running: f32 = self
            .nodes
            .values()
            .map(|s| match s {
                NodeRun::Running { step, total } if *total > 0 => *step as f32 / *total as f32,
                _ => 0.0,
            })
            .sum();
        ((self.executed as f32 + running) / self.to_execute as f32).clamp(0.0, 1.0)
    }
}

/// Something the unsaved-changes guard holds until the user decides.
#[derive(Clone, Debug, PartialEq)]
pub enum PendingAction {
    New,
    Open(PathBuf),
    OpenDialog,
    Quit,
}

pub struct VeetanceApp {
    pub(crate) registry: Arc<NodeRegistry>,
    pub doc: Document,
    pub settings: Settings,
    pub(crate) bridge: EngineBridge,
    pub run: RunView,
    /// Validation problems by node id.
    pub problems: BTreeMap<String, Vec<String>>,
    /// Problems that concern no one node (a file that cannot be read…).
    pub general_problems: Vec<String>,
    /// The latest message for the user (a refused connection, a saved file…).
    pub notice: Option<String>,
    pub(crate) palette_search: String,
    pub(crate) menu_search: String,
    pub(crate) dialog: Option<FileDialog>,
    pub(crate) guard: Option<PendingAction>,
    /// An autosaved document newer than what was opened, offered for restoring.
    pub(crate) recovery: Option<WorkflowFile>,
    pub(crate) splash: Option<Splash>,
    pub(crate) show_settings: bool,
    pub host_memory: HostMemory,
    host_memory_at: Option<Instant>,
    pub cache: Option<CacheTelemetry>,
    telemetry_at: Option<Instant>,
    pub(crate) autosave: Autosave,
    /// Where pins were drawn last frame.
    pub pins: PinTracker,
    pub(crate) transform: TSTransform,
    pub(crate) models: ModelIndex,
    /// Copied nodes, as workflow text (also put on the system clipboard).
    clipboard: Option<String>,
    dice: u64,
    repaint_registered: bool,
    close_confirmed: bool,
    pub(crate) out_dir: PathBuf,
    pub(crate) models_dir: PathBuf,
    /// Frames drawn so far.
    pub frames: u64,
    title: String,
    pub(crate) noise: Option<egui::TextureHandle>,
    /// The overlay's blurred canvas.
    pub backdrop: crate::backdrop::Backdrop,
    /// Each node's rectangle in graph coordinates, as drawn in the last frame.
    pub(crate) node_rects: std::collections::HashMap<egui_snarl::NodeId, (egui::Rect, u32)>,
    /// A fit / zoom / arrange the canvas applies once every node is measured.
    pub(crate) view_cmd: Option<ViewCommand>,
    /// The canvas area on screen in the last frame.
    pub(crate) viewport: egui::Rect,
    /// The node search opened by a double click on empty canvas.
    pub node_search: Option<NodeSearch>,
    /// Frames the node search has been open (the double click that opened it must not close it).
    frames_since_search: u32,
    /// Every run queued, and those waiting their turn.
    pub history: RunHistory,
    /// How many runs the Run button queues (a batch: each the next seed).
    pub batch: u32,
    /// Runs started so far: the run index a `Seed` node in `increment` mode adds.
    runs_started: u64,
    /// The image viewer window, when open.
    pub image_viewer: Option<crate::image_viewer::ImageViewer>,
}

/// The node search popup: where it was opened (screen and graph) and what was typed.
pub struct NodeSearch {
    pub screen: Pos2,
    pub graph: Pos2,
    pub text: String,
    focused: bool,
}

impl VeetanceApp {
    /// An editor over `registry`, opening `options.workflow` if given.
    pub fn new(registry: NodeRegistry, options: EditorOptions, settings: Settings) -> Self {
        let registry = Arc::new(registry);
        let models_dir = options
            .models_dir
            .clone()
            .unwrap_or_else(|| settings.models_dir.clone());
        let out_dir = options
            .out_dir
            .clone()
            .unwrap_or_else(|| settings.out_dir.clone());
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(crate::files::default_state_dir);
        let bridge = EngineBridge::spawn(
            registry.clone(),
            options.budgets,
            options.device_probe.clone(),
        );
        let splash = settings.show_splash.then(Splash::default);
        let mut app = VeetanceApp {
            doc: Document::new(&registry),
            registry,
            settings,
            bridge,
            run: RunView::default(),
            problems: BTreeMap::new(),
            general_problems: Vec::new(),
            notice: None,
            palette_search: String::new(),
            menu_search: String::new(),
            dialog: None,
            guard: None,
            recovery: None,
            splash,
            show_settings: false,
            host_memory: HostMemory::default(),
            host_memory_at: None,
            cache: None,
            telemetry_at: None,
            autosave: Autosave::new(state_dir.join("autosave.ron")),
            pins: PinTracker::default(),
            transform: TSTransform::IDENTITY,
            models: ModelIndex::new(models_dir.clone()),
            clipboard: None,
            dice: seed_from_time(),
            repaint_registered: false,
            close_confirmed: false,
            out_dir,
            models_dir,
            frames: 0,
            title: String::new(),
            noise: None,
            backdrop: Default::default(),
            node_rects: Default::default(),
            view_cmd: Some(ViewCommand::Open),
            viewport: egui::Rect::NOTHING,
            node_search: None,
            frames_since_search: 0,
            history: RunHistory::default(),
            batch: 1,
            runs_started: 0,
            image_viewer: None,
        };
        if let Some(path) = &options.workflow {
            if let Err(e) = app.open_path(path) {
                app.notice = Some(e.clone());
                app.general_problems.push(e);
            }
        }
        app.recovery = app
            .autosave
            .recoverable(app.doc.path.as_deref(), app.doc.current());
        let _ = app.bridge.send(Command::Telemetry);
        app
    }

    /// The editor as eframe starts it: settings from eframe's storage.
    pub fn from_creation(cc: &eframe::CreationContext<'_>, options: EditorOptions) -> Self {
        let settings = cc
            .storage
            .and_then(|s| s.get_string(STORAGE_KEY))
            .map(|text| Settings::from_ron(&text))
            .unwrap_or_default();
        let mut app = Self::new(crate::node_registry(), options, settings);
        app.register_repaint(&cc.egui_ctx);
        app
    }

    pub fn registry(&self) -> &NodeRegistry {
        &self.registry
    }

    fn register_repaint(&mut self, ctx: &egui::Context) {
        if !self.repaint_registered {
            self.repaint_registered = self.bridge.send(Command::SetRepaint(ctx.clone())).is_ok();
        }
    }

    /// The document as a workflow file, as it stands now.
    pub fn workflow(&self) -> WorkflowFile {
        self.doc.to_file(&self.registry)
    }

    pub fn is_running(&self) -> bool {
        self.run.active.is_some()
    }

    /// Shows the splash frozen at `t` seconds (for screenshots).
    pub fn hold_splash_at(&mut self, t: f64) {
        self.splash = Some(Splash {
            hold_at: Some(t),
            ..Splash::default()
        });
    }

    /// Where pin `node.port` was drawn last frame, in screen coordinates.
    pub fn pin_screen_pos(&self, node: &str, port: &str, output: bool) -> Option<Pos2> {
        self.pins
            .get(node, port, output)
            .map(|p| self.transform * p)
    }

    /// The canvas transform (graph coordinates to screen).
    pub fn canvas_transform(&self) -> TSTransform {
        self.transform
    }

    pub fn splash_visible(&self) -> bool {
        self.splash.is_some()
    }

    // ---- files -------------------------------------------------------------------------------

    /// Opens a `.ron` workflow, ComfyUI's JSON (API prompt or UI workflow), or the workflow
    /// embedded in a PNG written by SaveImage or by ComfyUI. Validation problems are shown on
    /// their nodes.
    pub fn open_path(&mut self, path: &Path) -> Result<(), String> {
        let (file, origin, save_path) = read_workflow(path, &self.registry)?;
        self.doc = Document::from_file(file, save_path, origin, &self.registry);
        self.opened_new_document();
        self.settings.push_recent(path);
        self.reset_run_view();
        self.problems.clear();
        self.general_problems.clear();
        self.notice = Some(format!("opened {}", path.display()));
        self.validate_document();
        Ok(())
    }

    /// After the document was replaced: measure its nodes afresh, then arrange them if their
    /// positions overlap (or there were none) and fit the view (`ViewCommand::Open`).
    pub(crate) fn opened_new_document(&mut self) {
        self.node_rects.clear();
        self.view_cmd = Some(ViewCommand::Open);
    }

    /// Asks the canvas for a fit, zoom or arrange at its next frame.
    pub fn request_view(&mut self, cmd: ViewCommand) {
        self.view_cmd = Some(cmd);
    }

    /// Whether a requested view change is still waiting for the canvas.
    pub fn view_pending(&self) -> bool {
        self.view_cmd.is_some()
    }

    /// Each node's id and rectangle in graph coordinates as drawn in the last frame, in document
    /// order (`canvas_transform() * rect` is where it is on screen).
    pub fn node_layout(&self) -> Vec<(String, egui::Rect)> {
        self.doc
            .snarl
            .nodes_pos_ids()
            .filter_map(|(nid, pos, view)| {
                let (r, _) = self.node_rects.get(&nid)?;
                Some((view.id.clone(), r.translate(pos - r.min)))
            })
            .collect()
    }

    /// The canvas area on screen in the last frame.
    pub fn canvas_viewport(&self) -> egui::Rect {
        self.viewport
    }

    /// Saves the document as `path` (canonical `.ron`, positions in the layout section).
    pub fn save_to(&mut self, path: &Path) -> Result<(), String> {
        let path = if path.extension().is_none() {
            path.with_extension("ron")
        } else {
            path.to_path_buf()
        };
        self.doc.checkpoint(&self.registry, true);
        self.doc
            .current()
            .save(&path)
            .map_err(|e| format!("{}: cannot save: {e}", path.display()))?;
        self.doc.mark_saved(path.clone(), &self.registry);
        self.settings.push_recent(&path);
        self.autosave.discard();
        self.notice = Some(format!("saved {}", path.display()));
        Ok(())
    }

    /// Save: to the document's file, or through the Save As dialog when it has none.
    pub fn save(&mut self) {
        match self.doc.path.clone() {
            Some(path) => {
                if let Err(e) = self.save_to(&path) {
                    self.notice = Some(e);
                }
            }
            None => self.open_dialog(DialogMode::SaveAs),
        }
    }

    pub fn open_dialog(&mut self, mode: DialogMode) {
        let dir = self
            .doc
            .path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let name = match mode {
            DialogMode::SaveAs => self
                .doc
                .path
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow.ron".into()),
            DialogMode::Open => String::new(),
        };
        self.dialog = Some(FileDialog::new(mode, dir, name));
    }

    /// Runs `action` now, or asks first when there are unsaved changes.
    pub fn guarded(&mut self, action: PendingAction) {
        self.doc.checkpoint(&self.registry, true);
        if self.doc.is_dirty() {
            self.guard = Some(action);
        } else {
            self.perform(action);
        }
    }

    pub(crate) fn perform(&mut self, action: PendingAction) {
        match action {
            PendingAction::New => {
                self.doc = Document::new(&self.registry);
                self.opened_new_document();
                self.reset_run_view();
                self.problems.clear();
                self.general_problems.clear();
                self.autosave.discard();
            }
            PendingAction::Open(path) => {
                if let Err(e) = self.open_path(&path) {
                    self.notice = Some(e);
                }
            }
            PendingAction::OpenDialog => self.open_dialog(DialogMode::Open),
            PendingAction::Quit => {
                self.close_confirmed = true;
                self.autosave.discard();
            }
        }
    }

    /// Replaces the document's content with the autosaved one (an undoable edit).
    pub fn restore_recovery(&mut self) {
        if let Some(file) = self.recovery.take() {
            self.doc.restore(file, &self.registry);
            self.opened_new_document();
            self.notice = Some("restored the autosaved workflow".into());
        }
    }

    fn validate_document(&mut self) {
        let _ = self.bridge.send(Command::Validate {
            file: self.doc.current().clone(),
            env: self.run_env(None),
        });
    }

    fn run_env(&self, workflow: Option<Arc<str>>) -> RunEnv {
        RunEnv {
            out_dir: self.out_dir.clone(),
            models_dir: self.models_dir.clone(),
            run_index: 0,
            workflow,
            ..RunEnv::default()
        }
    }

    // ---- runs --------------------------------------------------------------------------------

    /// Queues a run of the document (or a batch of [`VeetanceApp::batch`] runs, each with the
    /// next seed); the first starts at once when nothing runs.
    pub fn start_run(&mut self) {
        self.queue_runs(self.batch.max(1));
    }

    /// Queues `count` runs of the document as it is now: one as it is, or a batch whose run `i`
    /// has every seed moved on by `i` (see [`history::with_seed_offset`]). They run one after
    /// another, each recorded in the history with the workflow it ran.
    pub fn queue_runs(&mut self, count: u32) {
        let count = count.clamp(1, history::BATCH_MAX);
        self.doc.checkpoint(&self.registry, true);
        let base = self.doc.current().clone();
        if count == 1 {
            self.history.queue(base, String::new());
        } else {
            for i in 0..count {
                let (file, label) = history::with_seed_offset(&base, i as u64, &self.registry);
                let label = label.unwrap_or_else(|| format!("{} of {count}", i + 1));
                self.history.queue(file, label);
            }
        }
        self.launch_next();
    }

    /// Starts the next queued run when nothing runs.
    fn launch_next(&mut self) {
        if self.is_running() {
            return;
        }
        let Some(number) = self.history.take_next() else {
            return;
        };
        let Some(file) = self.history.get(number).map(|e| e.workflow.clone()) else {
            return;
        };
        let text: Arc<str> = file.to_ron().into();
        let cancel = CancelToken::new();
        let mut env = self.run_env(Some(text));
        env.run_index = self.runs_started;
        let command = Command::Run {
            file,
            env,
            cancel: cancel.clone(),
        };
        match self.bridge.send(command) {
            Ok(()) => {
                self.runs_started += 1;
                self.reset_run_view();
                self.problems.clear();
                self.general_problems.clear();
                for node in self.doc.snarl.nodes() {
                    self.run.nodes.insert(node.id.clone(), NodeRun::Queued);
                }
                self.run.active = Some(ActiveRun {
                    entry: number,
                    cancel,
                    started: Instant::now(),
                    quote_offset: (self.dice % crate::quotes::QUOTES.len() as u64) as usize,
                });
                self.dice = crate::canvas::splitmix(self.dice);
                self.notice = None;
                if let Some(e) = self.history.get_mut(number) {
                    e.state = RunState::Running;
                }
            }
            Err(e) => {
                if let Some(entry) = self.history.get_mut(number) {
                    entry.state = RunState::Failed(e.clone());
                }
                self.notice = Some(e);
            }
        }
    }

    /// Puts the workflow of history entry `number` back into the editor, as one undoable edit.
    pub fn restore_run(&mut self, number: u64) -> Result<(), String> {
        let entry = self
            .history
            .get(number)
            .ok_or_else(|| format!("run #{number} is no longer in the history"))?;
        let file = entry.workflow.clone();
        let title = entry.title();
        self.doc.restore(file, &self.registry);
        self.validate_document();
        self.notice = Some(format!("restored the workflow of run {title}"));
        Ok(())
    }

    /// Asks the run in progress to stop at its next check.
    /// The runs of a batch still waiting are dropped too.
    pub fn cancel_run(&mut self) {
        let dropped = self.history.cancel_pending();
        if let Some(run) = &self.run.active {
            run.cancel.cancel();
            self.notice = Some(if dropped > 0 {
                format!("cancelling… ({dropped} queued runs dropped)")
            } else {
                "cancelling…".into()
            });
        }
    }

    fn reset_run_view(&mut self) {
        let images = std::mem::take(&mut self.run.images);
        self.run = RunView::default();
        // Keep the images of nodes that still exist until the next run replaces them.
        self.run.images = images
            .into_iter()
            .filter(|(id, _)| document::find_node(&self.doc.snarl, id).is_some())
            .collect();
    }

    fn handle_reply(&mut self, ctx: &egui::Context, reply: Reply) {
        match reply {
            Reply::Event(event) => self.handle_event(ctx, event),
            Reply::OutputImage { node, path, image } => {
                let texture = upload(ctx, &format!("output-{node}"), &image);
                self.run.images.insert(node.clone(), texture.clone());
                if let Some(e) = self
                    .run
                    .active
                    .as_ref()
                    .and_then(|a| self.history.get_mut(a.entry))
                {
                    e.outputs
                        .push((node.clone(), path.clone(), texture.clone()));
                }
                self.run.outputs.push((node, path, texture));
                // The image is what the run was for: a folded viewer comes back to show it.
                self.settings.show_viewer = true;
            }
            Reply::RunDone {
                ok,
                message,
                failed_node,
                problems,
                cancelled,
            } => {
                if let Some(e) = self
                    .run
                    .active
                    .take()
                    .and_then(|a| self.history.get_mut(a.entry))
                {
                    e.state = if ok {
                        RunState::Finished
                    } else if cancelled {
                        RunState::Cancelled
                    } else {
                        RunState::Failed(message.clone().unwrap_or_else(|| "failed".into()))
                    };
                }
                self.run.nodes.retain(|_, s| *s != NodeRun::Queued);
                for state in self.run.nodes.values_mut() {
                    if matches!(state, NodeRun::Running { .. }) {
                        *state = if cancelled {
                            NodeRun::Cancelled
                        } else {
                            NodeRun::Failed(message.clone().unwrap_or_default())
                        };
                    }
                }
                if cancelled {
                    if let Some(node) = failed_node {
                        self.run.nodes.insert(node, NodeRun::Cancelled);
                    }
                }
                self.set_problems(&problems);
                self.run.result = Some(if ok {
                    format!(
                        "run finished: {} executed, {} from cache",
                        self.run.executed,
                        self.run
                            .nodes
                            .values()
                            .filter(|s| **s == NodeRun::Cached)
                            .count()
                    )
                } else if cancelled {
                    "run cancelled".into()
                } else {
                    message.unwrap_or_else(|| "run failed".into())
                });
                self.notice = self.run.result.clone();
                if self.history.pending() > 0 {
                    self.launch_next();
                }
            }
            Reply::Validated {
                problems,
                graph_error,
            } => {
                self.set_problems(&problems);
                if let Some(e) = graph_error {
                    self.general_problems.push(e);
                }
            }
            Reply::Cache(t) => self.cache = Some(t),
        }
    }

    fn set_problems(&mut self, problems: &[veetance_core::ValidationError]) {
        self.problems.clear();
        for p in problems {
            let place = match &p.place {
                Place::Node => String::new(),
                Place::Input(s) => format!("input '{s}': "),
                Place::Output(s) => format!("output '{s}': "),
                Place::Param(s) => format!("param '{s}': "),
            };
            let full = p.to_string();
            // The display form is "node 'id' place: problem"; the node shows "place: problem".
            let text = full
                .split_once(": ")
                .map(|(_, rest)| format!("{place}{rest}"))
                .unwrap_or(full);
            self.problems.entry(p.node.clone()).or_default().push(text);
        }
    }

    fn handle_event(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::RunStarted { to_execute, .. } => self.run.to_execute = to_execute,
            Event::NodeStarted { node, .. } => {
                self.run
                    .nodes
                    .insert(node, NodeRun::Running { step: 0, total: 0 });
            }
            Event::Progress { node, step, total } => {
                self.run
                    .nodes
                    .insert(node, NodeRun::Running { step, total });
            }
            Event::Preview { node, image, .. } => {
                let texture = upload(ctx, &format!("preview-{node}"), &image);
                let progress = match self.run.nodes.get(&node) {
                    Some(NodeRun::Running { step, total }) if *total > 0 => {
                        *step as f32 / *total as f32
                    }
                    _ => 0.0,
                };
                self.run.images.insert(node.clone(), texture);
                self.run.preview = Some((node, progress));
            }
            Event::NodeFinished {
                node,
                duration_ms,
                cached,
                ..
            } => {
                if cached {
                    self.run.nodes.insert(node, NodeRun::Cached);
                } else {
                    self.run.executed += 1;
                    self.run
                        .nodes
                        .insert(node, NodeRun::Done { ms: duration_ms });
                }
            }
            Event::OutputWritten { .. } | Event::RunFinished { .. } | Event::Memory { .. } => {}
            Event::Warning { node, message } => {
                self.notice = Some(match node {
                    Some(n) => format!("warning from '{n}': {message}"),
                    None => format!("warning: {message}"),
                });
            }
            Event::Error { node, message } => {
                if let Some(node) = node {
                    let cancelled = self
                        .run
                        .active
                        .as_ref()
                        .is_some_and(|r| r.cancel.is_cancelled());
                    let state = if cancelled {
                        NodeRun::Cancelled
                    } else {
                        NodeRun::Failed(message)
                    };
                    self.run.nodes.insert(node, state);
                }
            }
        }
    }

    // ---- editing -----------------------------------------------------------------------------

    /// Where the middle of the canvas is, in graph coordinates.
    pub(crate) fn view_center(&self, ctx: &egui::Context) -> Pos2 {
        let screen = ctx.content_rect().center();
        let p = self.transform.inverse() * screen;
        // Nodes added one after another should not pile up exactly.
        let n = self.doc.snarl.nodes().count() as f32;
        p + egui::vec2((n % 5.0) * 24.0, (n % 5.0) * 24.0) - egui::vec2(120.0, 60.0)
    }

    /// Adds a node of `type_name` in view, on a free spot near the middle (nodes do not land on
    /// each other; a file saved afterwards then reopens as it was); returns its id.
    pub fn add_node_in_view(&mut self, ctx: &egui::Context, type_name: &str) -> String {
        let pos = self.free_spot(self.view_center(ctx));
        let (_, id) = self.doc.add_node(type_name, pos);
        id
    }

    /// The first position from `start` downwards (then rightwards) where a node of a typical size
    /// overlaps none of the nodes drawn in the last frame.
    fn free_spot(&self, start: Pos2) -> Pos2 {
        let size = egui::vec2(320.0, 200.0);
        let taken: Vec<egui::Rect> = self
            .node_layout()
            .into_iter()
            .map(|(_, r)| r.expand(crate::layout::ROW_GAP / 2.0))
            .collect();
        for col in 0..8 {
            for row in 0..16 {
                let p = start + egui::vec2(col as f32 * 360.0, row as f32 * 60.0);
                let r = egui::Rect::from_min_size(p, size);
                if !taken.iter().any(|t| t.intersects(r)) {
                    return p;
                }
            }
        }
        start
    }

    pub fn selected_nodes(&self, ctx: &egui::Context) -> Vec<NodeId> {
        get_selected_nodes(egui::Id::new(CANVAS_ID), ctx)
    }

    fn delete_selected(&mut self, ctx: &egui::Context) {
        for nid in self.selected_nodes(ctx) {
            if self.doc.snarl.get_node(nid).is_some() {
                self.doc.snarl.remove_node(nid);
            }
        }
    }

    fn copy_selected(&mut self, ctx: &egui::Context) -> bool {
        let selected = self.selected_nodes(ctx);
        if selected.is_empty() {
            return false;
        }
        let text = document::fragment(&self.doc.snarl, &self.registry, &selected).to_ron();
        ctx.copy_text(text.clone());
        self.clipboard = Some(text);
        true
    }

    fn paste_text(&mut self, text: &str) -> bool {
        match WorkflowFile::parse(text, "clipboard") {
            Ok(part) if !part.nodes.is_empty() => {
                document::paste(
                    &mut self.doc.snarl,
                    &self.registry,
                    &part,
                    egui::vec2(40.0, 40.0),
                );
                true
            }
            _ => false,
        }
    }

    fn duplicate_selected(&mut self, ctx: &egui::Context) {
        let selected = self.selected_nodes(ctx);
        if !selected.is_empty() {
            let part = document::fragment(&self.doc.snarl, &self.registry, &selected);
            document::paste(
                &mut self.doc.snarl,
                &self.registry,
                &part,
                egui::vec2(40.0, 40.0),
            );
        }
    }

    pub fn undo(&mut self) {
        self.doc.undo(&self.registry);
    }

    pub fn redo(&mut self) {
        self.doc.redo(&self.registry);
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let typing = ctx.egui_wants_keyboard_input();
        let events = ctx.input(|i| i.events.clone());
        for event in events {
            match event {
                egui::Event::Key {
                    key,
                    pressed: true,
                    modifiers,
                    ..
                } => self.key(ctx, key, modifiers, typing),
                egui::Event::Copy if !typing => {
                    self.copy_selected(ctx);
                }
                egui::Event::Cut if !typing && self.copy_selected(ctx) => {
                    self.delete_selected(ctx);
                }
                egui::Event::Paste(text) if !typing && !self.paste_text(&text) => {
                    // Not workflow text: paste what the editor copied itself, if anything.
                    if let Some(own) = self.clipboard.clone() {
                        self.paste_text(&own);
                    }
                }
                _ => {}
            }
        }
    }

    fn key(&mut self, ctx: &egui::Context, key: Key, m: Modifiers, typing: bool) {
        let cmd = m.command;
        match key {
            Key::S if cmd && m.shift => self.open_dialog(DialogMode::SaveAs),
            Key::S if cmd => self.save(),
            Key::O if cmd => self.guarded(PendingAction::OpenDialog),
            Key::N if cmd => self.guarded(PendingAction::New),
            Key::Enter if cmd => self.start_run(),
            Key::B if cmd && m.shift => self.settings.show_viewer ^= true,
            Key::B if cmd => self.settings.show_palette ^= true,
            Key::Escape if self.is_running() => self.cancel_run(),
            _ if typing => {}
            Key::Z if cmd && m.shift => self.redo(),
            Key::Z if cmd => self.undo(),
            Key::Y if cmd => self.redo(),
            Key::D if cmd => self.duplicate_selected(ctx),
            Key::C if cmd => {
                self.copy_selected(ctx);
            }
            Key::V if cmd => {
                if let Some(own) = self.clipboard.clone() {
                    self.paste_text(&own);
                }
            }
            Key::Delete | Key::Backspace => self.delete_selected(ctx),
            Key::Period if m.shift => self.request_view(ViewCommand::FitSelection),
            Key::Period | Key::Home => self.request_view(ViewCommand::FitAll),
            Key::Num0 if cmd => self.request_view(ViewCommand::Zoom100),
            Key::L if cmd && m.shift => self.request_view(ViewCommand::Arrange),
            _ => {}
        }
    }

    /// Files dropped on the window: the first opens (a `.ron` workflow, ComfyUI's JSON, or a PNG
    /// that carries a workflow), through the unsaved-changes guard like File → Open.
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        let Some(first) = dropped.first() else {
            return;
        };
        let path = first.path().to_path_buf();
        if !path.is_absolute() && !path.exists() {
            // Only a name (as browsers give): nothing on disk to open.
            self.notice = Some(format!(
                "{}: dropped without its place on disk; open it with File → Open…",
                path.display()
            ));
            return;
        }
        self.guarded(PendingAction::Open(path));
        if dropped.len() > 1 {
            let rest = dropped.len() - 1;
            let opened = self.notice.take().unwrap_or_default();
            self.notice = Some(format!(
                "{opened} (one workflow opens at a time: {rest} more dropped file(s) left aside)"
            ));
        }
    }

    // ---- the frame ---------------------------------------------------------------------------

    /// Draws one frame. Never waits on the engine.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        // Once per context (egui ignores a second plugin of one type).
        ctx.add_plugin(crate::paint::CheaperFrames);
        self.frames += 1;
        self.register_repaint(&ctx);
        while let Some(reply) = self.bridge.try_recv() {
            self.handle_reply(&ctx, reply);
        }
        self.periodic(&ctx);
        if self.splash.is_none() {
            self.shortcuts(&ctx);
        }
        self.dropped_files(&ctx);

        self.top_bar(ui);
        self.status_bar(ui);
        if self.settings.show_palette {
            self.palette_panel(ui);
        }
        if self.settings.show_viewer {
            self.viewer_panel(ui);
        }
        // A document just opened (not an autosave restored over one: that is an edit).
        let opening = self.view_cmd == Some(ViewCommand::Open) && !self.doc.is_dirty();
        let canvas_rect = egui::CentralPanel::default()
            .frame(egui::Frame::NONE)
            .show(ui, |ui| {
                self.canvas(ui);
                ui.max_rect()
            })
            .inner;
        if opening && self.view_cmd.is_none() {
            self.doc.settle_opened(&self.registry);
        }
        if self.is_running() && self.settings.show_overlay {
            self.overlay(&ctx, canvas_rect);
        } else {
            self.backdrop.clear();
        }
        if ctx.input(|i| !i.raw.hovered_files.is_empty()) {
            let painter = ctx.layer_painter(egui::LayerId::new(
                egui::Order::Foreground,
                egui::Id::new("veetance-drop"),
            ));
            painter.rect_filled(canvas_rect, 0.0, egui::Color32::from_black_alpha(150));
            painter.text(
                canvas_rect.center(),
                egui::Align2::CENTER_CENTER,
                "Drop to open: a .ron workflow, ComfyUI JSON, or a PNG that carries a workflow",
                egui::FontId::proportional(20.0),
                egui::Color32::WHITE,
            );
        }
        self.node_search_popup(&ctx);
        self.frames_since_search = if self.node_search.is_some() {
            self.frames_since_search + 1
        } else {
            0
        };
        self.dialogs(&ctx);
        self.image_viewer_window(&ctx);
        if let Some(splash) = &mut self.splash {
            if splash.show(&ctx) {
                self.splash = None;
            }
        }

        let settled = ctx.input(|i| !i.pointer.any_down()) && !ctx.egui_wants_keyboard_input();
        self.doc.checkpoint(&self.registry, settled);
        self.autosave.tick(
            self.doc.current(),
            self.doc.is_dirty(),
            &self.doc.origin,
            Duration::from_secs(self.settings.autosave_seconds.max(1) as u64),
        );
        self.update_title(&ctx);
        self.handle_close(&ctx);
        if self.is_running() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    fn periodic(&mut self, ctx: &egui::Context) {
        let due = |at: Option<Instant>, every: Duration| at.is_none_or(|t| t.elapsed() >= every);
        if due(self.host_memory_at, Duration::from_secs(1)) {
            self.host_memory = read_host_memory();
            self.host_memory_at = Some(Instant::now());
        }
        if !self.is_running() && due(self.telemetry_at, Duration::from_secs(3)) {
            let _ = self.bridge.send(Command::Telemetry);
            self.telemetry_at = Some(Instant::now());
        }
        ctx.request_repaint_after(Duration::from_secs(1));
    }

    fn canvas(&mut self, ui: &mut egui::Ui) {
        let mut style = SnarlStyle::new();
        style.collapsible = Some(true);
        // A double click on empty canvas opens the node search (as in ComfyUI), not a re-centre.
        style.centering = Some(false);
        style.bg_pattern = Some(egui_snarl::ui::BackgroundPattern::grid(
            egui::vec2(40.0, 40.0),
            0.0,
        ));
        // The canvas's colour is the window's clear colour (see `clear_color`): filling it
        // again would shade every pixel of the canvas once more each frame.
        style.bg_frame = Some(egui::Frame::canvas(ui.style()).fill(egui::Color32::TRANSPARENT));
        self.viewport = ui.available_rect_before_wrap();
        // Only zoom to selection reads the selection.
        let selected = if self.view_cmd == Some(ViewCommand::FitSelection) {
            self.selected_nodes(ui.ctx())
        } else {
            Vec::new()
        };
        let hold_view = self.view_cmd == Some(ViewCommand::Open) && self.fold_panels(ui.ctx());
        let mut viewer = CanvasViewer {
            registry: &self.registry,
            node_runs: &self.run.nodes,
            node_images: &self.run.images,
            problems: &self.problems,
            models: &self.models,
            pins: &self.pins,
            notice: &mut self.notice,
            transform: &mut self.transform,
            menu_search: &mut self.menu_search,
            dice: &mut self.dice,
            rects: &mut self.node_rects,
            view_cmd: &mut self.view_cmd,
            viewport: self.viewport,
            selected: &selected,
            hold_view,
            readable_scale: crate::canvas::readable_zoom(ui.ctx()),
        };
        viewer.begin_frame();
        let response = SnarlWidget::new()
            .id(egui::Id::new(CANVAS_ID))
            .style(style)
            .show(&mut self.doc.snarl, &mut viewer, ui);
        if response.double_clicked() {
            // The canvas draws in graph coordinates (its layer carries the zoom and pan), so
            // the pointer position its response reports is a graph position.
            if let Some(at) = response.interact_pointer_pos() {
                self.node_search = Some(NodeSearch {
                    screen: self.transform * at,
                    graph: at,
                    text: String::new(),
                    focused: false,
                });
            }
        }
    }

    /// The node search a double click on empty canvas opens: type, then Enter (or a click)
    /// adds the first match where the double click was; Esc or a click elsewhere closes it.
    fn node_search_popup(&mut self, ctx: &egui::Context) {
        let Some(search) = &mut self.node_search else {
            return;
        };
        let needle = search.text.to_lowercase();
        let matches: Vec<(String, String, String)> = self
            .registry
            .schemas()
            .filter(|s| crate::canvas::offered(s))
            .filter(|s| needle.is_empty() || crate::canvas::matches_search(s, &needle))
            .take(12)
            .map(|s| {
                (
                    s.type_name.clone(),
                    format!("{}  ({})", s.display_name, s.category),
                    s.doc.clone(),
                )
            })
            .collect();
        let mut chosen = None;
        let mut close = false;
        let area = egui::Area::new(egui::Id::new("veetance-node-search"))
            .order(egui::Order::Foreground)
            .fixed_pos(search.screen)
            .show(ctx, |ui| {
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    ui.set_width(300.0);
                    let label = ui.label("Search nodes");
                    let field = ui
                        .add(
                            egui::TextEdit::singleline(&mut search.text)
                                .hint_text("name, type or category; Enter adds the first")
                                .desired_width(280.0),
                        )
                        .labelled_by(label.id);
                    if !search.focused {
                        field.request_focus();
                        search.focused = true;
                    }
                    if field.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                        chosen = matches.first().map(|m| m.0.clone());
                    }
                    if ui.input(|i| i.key_pressed(Key::Escape)) {
                        close = true;
                    }
                    for (type_name, label, doc) in &matches {
                        if ui.button(label).on_hover_text(doc).clicked() {
                            chosen = Some(type_name.clone());
                        }
                    }
                    if matches.is_empty() {
                        ui.label("no node matches");
                    }
                });
            });
        let clicked_elsewhere = ctx.input(|i| i.pointer.any_pressed())
            && ctx
                .pointer_interact_pos()
                .is_some_and(|p| !area.response.rect.contains(p));
        let at = search.graph;
        if let Some(type_name) = chosen {
            let (_, id) = self.doc.add_node(&type_name, at);
            self.notice = Some(format!("added '{id}'"));
            self.node_search = None;
        } else if close || (clicked_elsewhere && search.focused && self.frames_since_search > 1) {
            self.node_search = None;
        }
    }

    /// On open: when the graph would not show at 100% between the side panels, fold them away
    /// (setting `panels_give_way`); returns whether it did, so the view waits a frame for the
    /// wider canvas.
    fn fold_panels(&mut self, ctx: &egui::Context) -> bool {
        let s = &self.settings;
        if !s.panels_give_way || !(s.show_palette || s.show_viewer) {
            return false;
        }
        // The canvas as it will be with both panels folded: the whole width between the bars.
        let content = ctx.content_rect();
        let wide = egui::Rect::from_x_y_ranges(content.x_range(), self.viewport.y_range());
        let style = ctx.global_style();
        let Some(bounds) =
            crate::canvas::open_bounds(&self.doc.snarl, &self.node_rects, wide, &style)
        else {
            return false;
        };
        if crate::layout::fit(bounds, self.viewport, 0.2, 1.0).scaling >= 1.0 {
            return false;
        }
        self.settings.show_palette = false;
        self.settings.show_viewer = false;
        self.notice = Some(
            "the panels folded away so the workflow reads at full size: Ctrl+B shows the \
             palette, Ctrl+Shift+B the viewer"
                .into(),
        );
        true
    }

    fn update_title(&mut self, ctx: &egui::Context) {
        let title = format!(
            "{}{} — Veetance",
            if self.doc.is_dirty() { "● " } else { "" },
            self.doc.title()
        );
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    fn handle_close(&mut self, ctx: &egui::Context) {
        if self.close_confirmed {
            self.close_confirmed = false;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if ctx.input(|i| i.viewport().close_requested()) && self.doc.is_dirty() {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.guard = Some(PendingAction::Quit);
        }
    }

    /// Persists settings (eframe calls this on exit and now and then).
    pub fn save_settings(&self, storage: &mut dyn eframe::Storage) {
        storage.set_string(STORAGE_KEY, self.settings.to_ron());
    }
}

impl eframe::App for VeetanceApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        VeetanceApp::ui(self, ui);
    }

    /// The canvas's background: the canvas is drawn without a fill of its own (one pass over
    /// its pixels fewer each frame); the panels fill themselves.
    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        visuals.extreme_bg_color.to_normalized_gamma_f32()
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.save_settings(storage);
    }

    fn auto_save_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// Reads a workflow from a `.ron` file, ComfyUI's JSON (an API prompt or a UI workflow, which
/// keeps its node positions), or a PNG written by SaveImage or by ComfyUI (its `prompt` and
/// `workflow` text chunks). Returns the file, a name for messages, and the path to save to
/// (none for a PNG or a ComfyUI file: saving writes `.ron` and must not overwrite them).
pub fn read_workflow(
    path: &Path,
    registry: &NodeRegistry,
) -> Result<(WorkflowFile, String, Option<PathBuf>), String> {
    if let Some((file, origin)) = read_comfy(path, registry)? {
        return Ok((file, origin, None));
    }
    let read = veetance_nodes_basic::read_workflow_text(path)?;
    let file = WorkflowFile::parse(&read.text, &read.origin).map_err(|e| e.to_string())?;
    let save_path = (!read.from_png).then(|| path.to_path_buf());
    Ok((file, read.origin, save_path))
}

/// A ComfyUI document, if the file is one (`veetance_comfy::read_file_bytes`, as the CLI reads
/// files): JSON, or a PNG with ComfyUI's text chunks and no Veetance workflow. Its UI positions
/// become the layout.
fn read_comfy(
    path: &Path,
    registry: &NodeRegistry,
) -> Result<Option<(WorkflowFile, String)>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    let Some(found) = veetance_comfy::read_file_bytes(
        path,
        &bytes,
        veetance_nodes_basic::WORKFLOW_PNG_KEYWORD,
        veetance_nodes_basic::read_png_text,
        registry,
    )
    .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let read = found.read;
    let layout = read.workflow.as_ref().map(|ui| veetance_workflow::Layout {
        positions: veetance_comfy::ui_positions(ui),
        groups: Vec::new(),
    });
    let mut file = WorkflowFile::from_graph(&read.graph, layout);
    file.description = Some(format!(
        "Read from ComfyUI's {} {}",
        match read.format {
            veetance_comfy::Format::Api => "API prompt",
            veetance_comfy::Format::Ui => "UI workflow",
        },
        found.origin
    ));
    Ok(Some((file, found.origin)))
}

/// Uploads the first image of a batch as a texture.
fn upload(ctx: &egui::Context, name: &str, image: &Image) -> egui::TextureHandle {
    let size = [image.width as usize, image.height as usize];
    let bytes = image.frame_u8(0);
    let color = if image.channels == 4 {
        egui::ColorImage::from_rgba_unmultiplied(size, &bytes)
    } else {
        egui::ColorImage::from_rgb(size, &bytes)
    };
    ctx.load_texture(name, color, egui::TextureOptions::LINEAR)
}

fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}
