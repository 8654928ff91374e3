//! The Veetance editor: an eframe app with an egui-snarl node canvas over the same engine and
//! the same `.ron` workflows as headless runs.
//!
//! [`run`] opens the window. [`VeetanceApp`] is the app itself; its [`VeetanceApp::ui`] draws
//! one frame, which is how the `egui_kittest` tests drive it. The engine runs on its own thread
//! ([`engine_bridge`]); the UI sends it commands over a bounded channel and never waits on it.
//! See `docs/editor.md` for the editor's use and `docs/ARCHITECTURE.md` for its place.

pub mod app;
pub mod backdrop;
pub mod canvas;
pub mod demo;
pub mod document;
pub mod engine_bridge;
pub mod files;
pub mod history;
pub mod image_viewer;
pub mod layout;
pub mod model_files;
pub mod overlay;
pub mod paint;
pub mod panels;
pub mod quotes;
pub mod settings;
pub mod splash;
pub mod telemetry;

use std::path::PathBuf;

pub use app::VeetanceApp;
pub use settings::Settings;
use veetance_core::{Budgets, DeviceProbe};

/// How the editor starts.
#[derive(Clone, Default)]
pub struct EditorOptions {
    /// A `.ron` workflow, or a PNG written by SaveImage, to open at start.
    pub workflow: Option<PathBuf>,
    /// Where model files are listed from; `None` uses the saved setting (default `models`).
    pub models_dir: Option<PathBuf>,
    /// Where output nodes write; `None` uses the saved setting (default `out`).
    pub out_dir: Option<PathBuf>,
    /// Byte budgets of the engine's output cache.
    pub budgets: Budgets,
    /// Where the autosave file goes; `None` means `$XDG_STATE_HOME/veetance`.
    pub state_dir: Option<PathBuf>,
    /// The GPU's memory as the driver reports it, for the engine's VRAM budget (making room
    /// before a node runs, streaming) and its memory events; `None`: no GPU, the budget only
    /// limits the output cache.
    pub device_probe: Option<std::sync::Arc<dyn DeviceProbe>>,
}

impl std::fmt::Debug for EditorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EditorOptions")
            .field("workflow", &self.workflow)
            .field("models_dir", &self.models_dir)
            .field("out_dir", &self.out_dir)
            .field("budgets", &self.budgets)
            .field("state_dir", &self.state_dir)
            .field("device_probe", &self.device_probe.is_some())
            .finish()
    }
}

/// Every node type the editor offers: all families with the `all-nodes` feature (the default),
/// else the model-free nodes only.
pub fn node_registry() -> veetance_core::NodeRegistry {
    #[cfg(feature = "all-nodes")]
    {
        veetance_nodes::registry()
    }
    #[cfg(not(feature = "all-nodes"))]
    {
        let mut registry = veetance_core::NodeRegistry::new();
        veetance_nodes_basic::register(&mut registry);
        registry
    }
}

/// Opens the editor window and runs until it is closed.
pub fn run(options: EditorOptions) -> Result<(), String> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Veetance")
            .with_inner_size([1600.0, 1000.0])
            .with_min_inner_size([800.0, 500.0]),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    eframe::run_native(
        "Veetance",
        native,
        Box::new(move |cc| Ok(Box::new(VeetanceApp::from_creation(cc, options)))),
    )
    .map_err(|e| format!("the editor window could not be opened: {e}"))
}
