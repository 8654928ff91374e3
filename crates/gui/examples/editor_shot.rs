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
//! for [`PAN_FRAMES`] frames, to and fro (every build draws the same views, however fast), and
//! `frames-run` runs the workflow, each printing frame-time statistics and closing
//! (`frames-empty`: the same window with no editor in it, the renderer's floor);
//! `splash` holds the splash at `VEETANCE_SPLASH_AT` seconds (default 0.45);
//! `.verify/frames.sh` writes the workflows the frame modes are measured on and runs them.
//!
//! The frame modes also print eframe's CPU time of each frame (the editor's code, egui's
//! layout, tessellation and the GL calls; not the buffer swap, where llvmpipe finishes
//! rasterizing). Profiling knobs, for the frame modes (see docs/editor.md, "Frame times"):
//! `VEETANCE_FRAMES_PROFILE=1` tessellates each frame's shapes once more, by kind, and prints per
//! kind the shapes, vertices, triangles and pixels covered per frame and the tessellation time
//! (that extra tessellation makes the frames slower: take frame times from runs without it);
//! `VEETANCE_FRAMES_DROP=text,shadow,…` leaves shapes of those kinds (the names of the profile's
//! table) out of what is drawn, to see what drawing them costs; `VEETANCE_FRAMES_SQUARE=1` draws
//! every rectangle with square corners; `VEETANCE_FRAMES_FEATHER=0` turns egui's anti-aliasing
//! (feathering) off.
//! `blur-bench` opens no window: it times the overlay's backdrop blur on a 1600×1000 frame and
//! prints the figures (`run` and `frames-run` print the time of each blur of the real window). The
//! `PreviewDemo` sampler stand-in is registered so a run shows progress and previews without a
//! model.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use egui::epaint::{ClippedPrimitive, ClippedShape, Primitive, Shape};

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
    /// eframe's CPU time of the frame before each measured one.
    cpu_ms: Vec<f64>,
    measuring: bool,
    /// The process's CPU time (every thread: llvmpipe's rasterizers too) and the wall clock
    /// when measuring began.
    cpu_at_start: Option<(f64, Instant)>,
    /// When `frames-pan` began measuring (once the view had settled after opening), and the
    /// frames it has panned since.
    pan_from: Option<f64>,
    pan_frames: u32,
    /// The shape profile, filled by [`ShapeProfiler`] while `measuring` is set in it.
    profile: Arc<Mutex<ShapeProfile>>,
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

/// How many frames `frames-pan` measures, and after how many it turns back.
const PAN_FRAMES: u32 = 200;
const PAN_TURN: u32 = 50;

/// This process's CPU time so far (user and system, every thread) in milliseconds, from
/// `/proc/self/stat` (in clock ticks, taken as Linux's usual 100 a second).
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
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

/// What kind of shape a frame's shape is, for the profile and for leaving kinds out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ShapeKind {
    Text,
    /// A blurred rectangle: egui's shadows (node frames, windows, menus).
    Shadow,
    Rect,
    /// Straight segments: the canvas grid, separators.
    Line,
    /// Polylines: the wires, checkmarks, combo-box arrows.
    Path,
    Circle,
    /// Meshes: images.
    Mesh,
    Other,
}

impl ShapeKind {
    const ALL: [ShapeKind; 8] = [
        ShapeKind::Text,
        ShapeKind::Shadow,
        ShapeKind::Rect,
        ShapeKind::Line,
        ShapeKind::Path,
        ShapeKind::Circle,
        ShapeKind::Mesh,
        ShapeKind::Other,
    ];

    fn of(shape: &Shape) -> ShapeKind {
        match shape {
            Shape::Text(_) => ShapeKind::Text,
            Shape::Rect(r) if r.blur_width > 0.0 => ShapeKind::Shadow,
            Shape::Rect(_) => ShapeKind::Rect,
            Shape::LineSegment { .. } => ShapeKind::Line,
            Shape::Path(_) | Shape::QuadraticBezier(_) | Shape::CubicBezier(_) => ShapeKind::Path,
            Shape::Circle(_) | Shape::Ellipse(_) => ShapeKind::Circle,
            Shape::Mesh(_) => ShapeKind::Mesh,
            _ => ShapeKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ShapeKind::Text => "text",
            ShapeKind::Shadow => "shadow",
            ShapeKind::Rect => "rect",
            ShapeKind::Line => "line",
            ShapeKind::Path => "path",
            ShapeKind::Circle => "circle",
            ShapeKind::Mesh => "mesh",
            ShapeKind::Other => "other",
        }
    }
}

/// One frame's figures for one kind of shape.
#[derive(Clone, Copy, Debug, Default)]
struct KindFrame {
    shapes: usize,
    vertices: usize,
    triangles: usize,
    /// Pixels covered by its triangles, inside their clip rectangles (overdraw counted).
    pixels: f64,
    /// The 4×4-pixel blocks its triangles' bounding boxes touch (inside their clip
    /// rectangles), summed over triangles: llvmpipe shades a partly covered block at a time,
    /// so thin and small triangles cost more than their pixels say.
    blocks: f64,
    tessellate_ms: f64,
}

/// What the frames drew, by kind (`VEETANCE_FRAMES_PROFILE=1`), and the knobs that change it.
#[derive(Debug, Default)]
struct ShapeProfile {
    enabled: bool,
    measuring: bool,
    /// Kinds left out of what is drawn (`VEETANCE_FRAMES_DROP`).
    drop: Vec<ShapeKind>,
    /// Every rectangle with square corners (`VEETANCE_FRAMES_SQUARE=1`).
    square: bool,
    /// Per measured frame: the tessellation of all its shapes at once, and each kind apart.
    tessellate_ms: Vec<f64>,
    /// Per measured frame: the meshes eframe draws (one draw call each) and their triangles.
    draw_calls: Vec<f64>,
    triangles: Vec<f64>,
    kinds: Vec<[KindFrame; 8]>,
}

/// Vertices, triangles and covered pixels (each triangle's area within its clip rectangle,
/// taken as the part of its bounding box inside the clip times its area ratio) of tessellated
/// primitives.
fn mesh_figures(primitives: &[ClippedPrimitive]) -> (usize, usize, f64, f64) {
    let (mut vertices, mut triangles, mut pixels, mut blocks) = (0, 0, 0.0, 0.0);
    for p in primitives {
        let Primitive::Mesh(mesh) = &p.primitive else {
            continue;
        };
        vertices += mesh.vertices.len();
        triangles += mesh.indices.len() / 3;
        for t in mesh.indices.chunks_exact(3) {
            let [a, b, c] = [0, 1, 2].map(|i| mesh.vertices[t[i] as usize].pos);
            let area = ((b - a).x * (c - a).y - (b - a).y * (c - a).x).abs() / 2.0;
            let bbox = egui::Rect::from_points(&[a, b, c]);
            let inside = bbox.intersect(p.clip_rect);
            if area > 0.0 && inside.is_positive() {
                pixels += f64::from(area * inside.area() / bbox.area().max(1e-6));
                let span = |lo: f32, hi: f32| ((hi / 4.0).ceil() - (lo / 4.0).floor()).max(1.0);
                blocks +=
                    f64::from(span(inside.min.x, inside.max.x) * span(inside.min.y, inside.max.y));
            }
        }
    }
    (vertices, triangles, pixels, blocks)
}

/// Sees every frame's shapes before eframe tessellates them: profiles them, and applies the
/// knobs of [`ShapeProfile`].
struct ShapeProfiler(Arc<Mutex<ShapeProfile>>);

impl egui::Plugin for ShapeProfiler {
    fn debug_name(&self) -> &'static str {
        "veetance-shape-profiler"
    }

    fn output_hook(&mut self, ctx: &egui::Context, output: &mut egui::FullOutput) {
        let mut profile = self.0.lock().unwrap();
        if !profile.enabled && profile.drop.is_empty() && !profile.square {
            return;
        }
        let mut shapes = veetance_gui::paint::flatten(std::mem::take(&mut output.shapes));
        shapes.retain(|s| !profile.drop.contains(&ShapeKind::of(&s.shape)));
        if profile.square {
            for s in &mut shapes {
                if let Shape::Rect(r) = &mut s.shape {
                    r.corner_radius = egui::CornerRadius::ZERO;
                }
            }
        }
        if profile.enabled && profile.measuring {
            let ppp = output.pixels_per_point;
            let start = Instant::now();
            let all = ctx.tessellate(shapes.clone(), ppp);
            profile
                .tessellate_ms
                .push(start.elapsed().as_secs_f64() * 1e3);
            profile.draw_calls.push(all.len() as f64);
            profile.triangles.push(mesh_figures(&all).1 as f64);
            let mut frame = [KindFrame::default(); 8];
            for (i, kind) in ShapeKind::ALL.into_iter().enumerate() {
                let of_kind: Vec<ClippedShape> = shapes
                    .iter()
                    .filter(|s| ShapeKind::of(&s.shape) == kind)
                    .cloned()
                    .collect();
                let count = of_kind.len();
                let start = Instant::now();
                let primitives = ctx.tessellate(of_kind, ppp);
                let ms = start.elapsed().as_secs_f64() * 1e3;
                let (vertices, triangles, pixels, blocks) = mesh_figures(&primitives);
                frame[i] = KindFrame {
                    shapes: count,
                    vertices,
                    triangles,
                    pixels,
                    blocks,
                    tessellate_ms: ms,
                };
            }
            profile.kinds.push(frame);
        }
        output.shapes = shapes;
    }
}

/// The median of `values` (0 when empty).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The profile as a table: per kind, the median per frame of each figure.
fn print_profile(profile: &ShapeProfile) {
    println!(
        "{}",
        stats("tessellation of all shapes", &profile.tessellate_ms)
    );
    println!(
        "meshes (draw calls) per frame: median {:.0}; triangles per frame: median {:.0}",
        median(profile.draw_calls.iter().copied()),
        median(profile.triangles.iter().copied())
    );
    println!(
        "kind     shapes  vertices  triangles  Mpixels  kblocks  tessellate ms  (medians per frame)"
    );
    for (i, kind) in ShapeKind::ALL.into_iter().enumerate() {
        let of = |f: fn(&KindFrame) -> f64| median(profile.kinds.iter().map(|k| f(&k[i])));
        println!(
            "{:<8} {:>6.0} {:>9.0} {:>10.0} {:>8.3} {:>8.1} {:>14.3}",
            kind.name(),
            of(|k| k.shapes as f64),
            of(|k| k.vertices as f64),
            of(|k| k.triangles as f64),
            of(|k| k.pixels / 1e6),
            of(|k| k.blocks / 1e3),
            of(|k| k.tessellate_ms),
        );
    }
}

impl eframe::App for Shot {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
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
        // Frame times: `frames-pan` scrolls the canvas (a pan) for PAN_FRAMES frames, from the
        // 2nd second or once the view has settled after opening (the layout and fit on open
        // are not part of a pan); `frames-run` starts a run after a second and measures until
        // it ends.
        let t = self.opened.elapsed().as_secs_f64();
        if self.mode == "frames-run" && !self.run_started && t > 1.0 {
            self.app.start_run();
            self.run_started = true;
            self.measuring = true;
        }
        if self.mode == "frames-pan"
            && self.pan_from.is_none()
            && t > 2.0
            && !self.app.view_pending()
        {
            self.pan_from = Some(t);
        }
        if self.mode == "frames-pan" {
            self.measuring = self.pan_from.is_some() && self.pan_frames < PAN_FRAMES;
            self.pan_frames += u32::from(self.measuring);
        }
        if self.mode == "frames-empty" {
            self.measuring = (2.0..7.0).contains(&t);
        }
        self.profile.lock().unwrap().measuring = self.measuring;
        let now = Instant::now();
        if self.measuring && self.intervals_ms.is_empty() && self.last_frame.is_some() {
            let t = self.app.canvas_transform();
            println!(
                "canvas at the start: translation {:?}, scale {:.3}",
                t.translation, t.scaling
            );
        }
        if self.measuring && self.cpu_at_start.is_none() {
            self.cpu_at_start = process_cpu_ms().map(|ms| (ms, now));
        }
        if self.measuring {
            if let Some(last) = self.last_frame {
                self.intervals_ms.push((now - last).as_secs_f64() * 1e3);
                if let Some(cpu) = frame.info().cpu_usage {
                    self.cpu_ms.push(f64::from(cpu) * 1e3);
                }
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
        // After the editor's own plugins (added in its first frame): the profile sees what
        // eframe is handed.
        ui.ctx().add_plugin(ShapeProfiler(self.profile.clone()));
        if self.measuring {
            self.ui_ms.push(ui_start.elapsed().as_secs_f64() * 1e3);
        }
        let finished = match self.mode.as_str() {
            "frames-pan" => self.pan_frames >= PAN_FRAMES,
            "frames-empty" => t > 7.5,
            "frames-run" => self.run_started && !self.app.is_running() && t > 2.0,
            _ => false,
        };
        if finished && !self.intervals_ms.is_empty() {
            self.measuring = false;
            println!("{}", stats("frame interval", &self.intervals_ms));
            println!("{}", stats("editor ui code", &self.ui_ms));
            println!("{}", stats("eframe cpu (no swap)", &self.cpu_ms));
            if let (Some((start, at)), Some(end)) = (self.cpu_at_start, process_cpu_ms()) {
                let frames = self.intervals_ms.len().max(1) as f64;
                println!(
                    "process cpu (all threads): {:.2} ms per frame, {:.0}% of {:.1} s",
                    (end - start) / frames,
                    100.0 * (end - start) / (at.elapsed().as_secs_f64() * 1e3),
                    at.elapsed().as_secs_f64()
                );
            }
            let profile = self.profile.lock().unwrap();
            if profile.enabled {
                print_profile(&profile);
            }
            drop(profile);
            let t = self.app.canvas_transform();
            println!(
                "canvas at the end: translation {:?}, scale {:.3}",
                t.translation, t.scaling
            );
            self.intervals_ms.clear();
            self.ui_ms.clear();
            self.cpu_ms.clear();
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
        }
        ui.ctx().request_repaint();
    }

    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        if self.mode == "frames-empty" {
            egui::Color32::from_rgba_unmultiplied(12, 12, 12, 180).to_normalized_gamma_f32()
        } else {
            eframe::App::clear_color(&self.app, visuals)
        }
    }

    fn raw_input_hook(&mut self, _ctx: &egui::Context, raw: &mut egui::RawInput) {
        if !self.mode.starts_with("frames-") {
            // Xvfb parks its pointer mid-screen: a still should not show whatever tooltip
            // happens to be under it.
            raw.events.push(egui::Event::PointerGone);
        }
        if self.mode == "frames-pan" && self.measuring {
            // The pointer over the canvas, and a scroll every frame: the canvas pans, turning
            // back every PAN_TURN frames so the graph stays in view.
            let back = (self.pan_frames / PAN_TURN) % 2 == 1;
            raw.events
                .push(egui::Event::PointerMoved(egui::pos2(700.0, 500.0)));
            raw.events.push(egui::Event::MouseWheel {
                unit: egui::MouseWheelUnit::Point,
                delta: egui::vec2(6.0, 2.0) * if back { -1.0 } else { 1.0 },
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
        dithering: std::env::var("VEETANCE_FRAMES_DITHER").map_or(true, |v| v != "0"),
        ..Default::default()
    };
    let flag = |name: &str| std::env::var(name).ok();
    let profile = Arc::new(Mutex::new(ShapeProfile {
        enabled: flag("VEETANCE_FRAMES_PROFILE").is_some_and(|v| v == "1"),
        drop: flag("VEETANCE_FRAMES_DROP")
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| {
                ShapeKind::ALL
                    .into_iter()
                    .find(|k| k.name() == n)
                    .ok_or_else(|| format!("VEETANCE_FRAMES_DROP: no shape kind {n:?}"))
            })
            .collect::<Result<_, _>>()?,
        square: flag("VEETANCE_FRAMES_SQUARE").is_some_and(|v| v == "1"),
        ..ShapeProfile::default()
    }));
    let feathering = flag("VEETANCE_FRAMES_FEATHER").is_none_or(|v| v != "0");
    eframe::run_native(
        "Veetance",
        native,
        Box::new(move |cc| {
            cc.egui_ctx
                .tessellation_options_mut(|o| o.feathering = feathering);
            Ok(Box::new(Shot {
                app,
                mode,
                opened: Instant::now(),
                run_started: false,
                resized: false,
                last_frame: None,
                intervals_ms: Vec::new(),
                ui_ms: Vec::new(),
                cpu_ms: Vec::new(),
                measuring: false,
                pan_from: None,
                pan_frames: 0,
                cpu_at_start: None,
                profile,
                blur_printed: None,
            }))
        }),
    )
    .map_err(|e| e.to_string())
}
