//! Opens the editor on a workflow, for screenshots under Xvfb (see `.verify/screenshots.sh`).
//!
//! ```sh
//! cargo run -p veetance-gui --example editor_shot -- workflows/hello.ron
//! VEETANCE_SHOT=run cargo run -p veetance-gui --example editor_shot -- slow.ron
//! VEETANCE_SHOT=splash cargo run -p veetance-gui --example editor_shot
//! ```
//!
//! `VEETANCE_SHOT`: `canvas` (default) opens the workflow; `run` also starts a run after a
//! second (`run-resize` as well, and resizes the window to 1200×800 at 3 s); `history` queues a batch of 3 after a second and, once all three have an image,
//! opens the image viewer on the third compared with the first; `frames-pan` pans the canvas
//! for 5 s and `frames-run` runs the workflow, each printing frame-time statistics and closing
//! (`frames-empty`: the same window with no editor in it, the renderer's floor);
//! `splash` holds the splash at `VEETANCE_SPLASH_AT` seconds (default 0.45);
//! `blur-bench` opens no window: it times the overlay's backdrop blur on a 1600×1000 frame and
//! prints the figures (`run` and `frames-run` print the time of each blur of the real window). The
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
    /// `run-resize`: whether the window has been resized yet.
    resized: bool,
    /// `frames-pan` / `frames-run`: when the last frame began, and what each frame took.
    last_frame: Option<Instant>,
    intervals_ms: Vec<f64>,
    ui_ms: Vec<f64>,
    measuring: bool,
    /// The last backdrop blur time printed.
    blur_printed: Option<std::time::Duration>,
}

/// Times the backdrop blur of a 1600×1000 frame (`blur-bench`): the whole of it, and its
/// downscale and blur apart, over 30 repeats each.
fn blur_bench() {
    use veetance_gui::backdrop::{blur_frame, downscale, gaussian_blur, BLUR_SIGMA_PX, DOWNSCALE};
    let (w, h) = (1600, 1000);
    // Stripes and a gradient, so the numbers are not those of a flat frame.
    let pixels = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let v = if (x / 40 + y / 40) % 2 == 0 { 230 } else { 30 };
            egui::Color32::from_rgb(v, (x * 255 / w) as u8, (y * 255 / h) as u8)
        })
        .collect();
    let frame = egui::ColorImage::new([w, h], pixels);
    let crop = [0, 0, w, h];
    let time = |f: &mut dyn FnMut()| {
        let mut ms: Vec<f64> = (0..30)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        ms
    };
    let whole = time(&mut || {
        std::hint::black_box(blur_frame(&frame, crop));
    });
    let down = time(&mut || {
        std::hint::black_box(downscale(&frame, crop, DOWNSCALE));
    });
    let small = downscale(&frame, crop, DOWNSCALE);
    let blur = time(&mut || {
        let mut image = small.clone();
        gaussian_blur(&mut image, BLUR_SIGMA_PX / DOWNSCALE as f32);
        std::hint::black_box(image);
    });
    println!(
        "backdrop blur of a {w}x{h} frame (sigma {BLUR_SIGMA_PX} px, downscaled by {DOWNSCALE}):"
    );
    println!(
        "{}",
        stats_of("whole (downscale, blur, to 8 bits)", &whole, "repeats")
    );
    println!("{}", stats_of("downscale", &down, "repeats"));
    println!("{}", stats_of("blur", &blur, "repeats"));
}

/// Frame-time statistics as one line: count, median, 99th percentile and slowest.
fn stats(name: &str, values: &[f64]) -> String {
    stats_of(name, values, "frames")
}

/// [`stats`] of `values` counted as `unit`.
fn stats_of(name: &str, values: &[f64], unit: &str) -> String {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return format!("{name}: no {unit}");
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "{name}: {} {unit}, median {:.2} ms, p99 {:.2} ms, slowest {:.2} ms",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

impl eframe::App for Shot {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let after_a_second = self.opened.elapsed().as_secs_f32() > 1.0;
        let runs = self.mode == "run" || self.mode == "run-resize";
        if runs && !self.run_started && after_a_second {
            self.app.start_run();
            self.run_started = true;
        }
        if self.mode == "run-resize" && !self.resized && self.opened.elapsed().as_secs_f32() > 3.0 {
            // The overlay's blur is captured again once the new size holds.
            println!("resizing the window to 1200x800");
            ui.ctx()
                .send_viewport_cmd(egui::ViewportCommand::InnerSize(egui::vec2(1200.0, 800.0)));
            self.resized = true;
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
        // Frame times: `frames-pan` scrolls the canvas (a pan) for 5 s from the 2nd second;
        // `frames-run` starts a run after a second and measures until it ends.
        let t = self.opened.elapsed().as_secs_f64();
        if self.mode == "frames-run" && !self.run_started && t > 1.0 {
            self.app.start_run();
            self.run_started = true;
            self.measuring = true;
        }
        if self.mode == "frames-pan" || self.mode == "frames-empty" {
            self.measuring = (2.0..7.0).contains(&t);
        }
        let now = Instant::now();
        if self.measuring && self.intervals_ms.is_empty() && self.last_frame.is_some() {
            let t = self.app.canvas_transform();
            println!(
                "canvas at the start: translation {:?}, scale {:.3}",
                t.translation, t.scaling
            );
        }
        if self.measuring {
            if let Some(last) = self.last_frame {
                self.intervals_ms.push((now - last).as_secs_f64() * 1e3);
            }
        }
        self.last_frame = Some(now);
        if let Some(took) = self.app.backdrop.last_blur {
            if self.blur_printed != Some(took) {
                println!(
                    "backdrop blurred on its worker thread in {:.2} ms",
                    took.as_secs_f64() * 1e3
                );
                self.blur_printed = Some(took);
            }
        }
        let ui_start = Instant::now();
        if self.mode == "frames-empty" {
            // The floor: the same window with one label, no editor.
            ui.label("empty frame");
        } else {
            self.app.ui(ui);
        }
        if self.measuring {
            self.ui_ms.push(ui_start.elapsed().as_secs_f64() * 1e3);
        }
        let finished = match self.mode.as_str() {
            "frames-pan" | "frames-empty" => t > 7.5,
            "frames-run" => self.run_started && !self.app.is_running() && t > 2.0,
            _ => false,
        };
        if finished && !self.intervals_ms.is_empty() {
            self.measuring = false;
            println!("{}", stats("frame interval", &self.intervals_ms));
            println!("{}", stats("editor ui code", &self.ui_ms));
            let t = self.app.canvas_transform();
            println!(
                "canvas at the end: translation {:?}, scale {:.3}",
                t.translation, t.scaling
            );
            self.intervals_ms.clear();
            self.ui_ms.clear();
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
        }
        ui.ctx().request_repaint();
    }

    fn raw_input_hook(&mut self, _ctx: &egui::Context, raw: &mut egui::RawInput) {
        if !self.mode.starts_with("frames-") {
            // Xvfb parks its pointer mid-screen: a still should not show whatever tooltip
            // happens to be under it.
            raw.events.push(egui::Event::PointerGone);
        }
        if self.mode == "frames-pan" && self.measuring {
            // The pointer over the canvas, and a scroll every frame: the canvas pans.
            raw.events
                .push(egui::Event::PointerMoved(egui::pos2(700.0, 500.0)));
            raw.events.push(egui::Event::MouseWheel {
                unit: egui::MouseWheelUnit::Point,
                delta: egui::vec2(6.0, 2.0),
                phase: egui::TouchPhase::Move,
                modifiers: egui::Modifiers::NONE,
            });
        }
    }
}

fn main() -> Result<(), String> {
    let workflow = std::env::args().nth(1).map(PathBuf::from);
    let mode = std::env::var("VEETANCE_SHOT").unwrap_or_else(|_| "canvas".into());
    if mode == "blur-bench" {
        blur_bench();
        return Ok(());
    }
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
                resized: false,
                last_frame: None,
                intervals_ms: Vec::new(),
                ui_ms: Vec::new(),
                measuring: false,
                blur_printed: None,
            }))
        }),
    )
    .map_err(|e| e.to_string())
}
