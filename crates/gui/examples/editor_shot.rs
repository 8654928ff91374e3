//! Opens the editor on a workflow, for screenshots under Xvfb (see `.verify/screenshots.sh`).
//!
//! ```sh
//! cargo run -p veetance-gui --example editor_shot -- workflows/hello.ron
//! VEETANCE_SHOT=run cargo run -p veetance-gui --example editor_shot -- slow.ron
//! VEETANCE_SHOT=splash cargo run -p veetance-gui --example editor_shot
//! ```
//!
//! `VEETANCE_SHOT`: `canvas` (default) opens the workflow; `run` also starts a run after a
//! second; `history` queues a batch of 3 after a second and, once all three have an image,
//! opens the image viewer on the third compared with the first; `splash` holds the splash at `VEETANCE_SPLASH_AT` seconds (default 0.45). The
//! `PreviewDemo` sampler stand-in is registered so a run shows progress and previews without a
//! model.

use std::path::PathBuf;
use std::time::Instant;

use veetance_gui::demo::register_demo;
use veetance_gui::{EditorOptions, Settings, VeetanceApp};

struct Shot {
    app: VeetanceApp,
    mode: String,
    opened: Instant,
    run_started: bool,
}

impl eframe::App for Shot {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let after_a_second = self.opened.elapsed().as_secs_f32() > 1.0;
        if self.mode == "run" && !self.run_started && after_a_second {
            self.app.start_run();
            self.run_started = true;
        }
        if self.mode == "history" && !self.run_started && after_a_second {
            self.app.queue_runs(3);
            self.run_started = true;
        }
        if self.mode == "history" && self.run_started && self.app.image_viewer.is_none() {
            let done = self.app.history.entries.len() == 3
                && self
                    .app
                    .history
                    .entries
                    .iter()
                    .all(|e| !e.outputs.is_empty());
            if done {
                self.app.open_image_viewer(3);
                if let Some(v) = &mut self.app.image_viewer {
                    v.compare = Some(1);
                }
            }
        }
        self.app.ui(ui);
        ui.ctx().request_repaint();
    }
}

fn main() -> Result<(), String> {
    let workflow = std::env::args().nth(1).map(PathBuf::from);
    let mode = std::env::var("VEETANCE_SHOT").unwrap_or_else(|_| "canvas".into());
    let state = std::env::temp_dir().join(format!("veetance-shot-{}", std::process::id()));
    let options = EditorOptions {
        workflow,
        out_dir: Some(state.join("out")),
        state_dir: Some(state.clone()),
        ..EditorOptions::default()
    };
    let settings = Settings {
        show_splash: mode == "splash",
        ..Settings::default()
    };
    let mut registry = veetance_gui::node_registry();
    register_demo(&mut registry);
    let mut app = VeetanceApp::new(registry, options, settings);
    if mode == "splash" {
        let at = std::env::var("VEETANCE_SPLASH_AT")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.45);
        app.hold_splash_at(at);
    }
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Veetance")
            .with_inner_size([1600.0, 1000.0])
            .with_position([0.0, 0.0]),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    eframe::run_native(
        "Veetance",
        native,
        Box::new(move |_cc| {
            Ok(Box::new(Shot {
                app,
                mode,
                opened: Instant::now(),
                run_started: false,
            }))
        }),
    )
    .map_err(|e| e.to_string())
}
