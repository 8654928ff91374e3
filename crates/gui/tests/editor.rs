//! The editor, driven as a user drives it: through egui_kittest's harness, finding widgets by
//! their accessibility labels, clicking, typing and dragging. No display and no GPU needed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui::{Key, Modifiers, Pos2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use veetance_core::Value;
use veetance_gui::canvas::NodeRun;
use veetance_gui::demo::register_demo;
use veetance_gui::{EditorOptions, Settings, VeetanceApp};
use veetance_workflow::WorkflowFile;

const HELLO: &str = include_str!("../../../workflows/hello.ron");

/// A small model-free workflow: a 64×64 gradient saved as a PNG. Stands in for the FLUX.2
/// "tiny workflow" until that exists; when `workflows/flux2-klein-tiny.ron` is present, the
/// run test also runs it.
const TINY: &str = r##"(
    version: 1,
    nodes: [
        (id: "gradient", type: "GradientImage", params: {"width": 64, "height": 64, "color_a": "#4b0082", "color_b": "#ff69b4"}),
        (id: "save", type: "SaveImage", params: {"filename_prefix": "tiny"}),
    ],
    links: [
        (from: ("gradient", "image"), to: ("save", "images")),
    ],
    layout: Some((positions: {"gradient": (40.0, 40.0), "save": (420.0, 40.0)})),
)
"##;

/// A sampler stand-in feeding a saver: `steps` steps of `step_ms`.
fn slow_workflow(steps: u32, step_ms: u32) -> String {
    format!(
        r#"(
    version: 1,
    nodes: [
        (id: "sampler", type: "PreviewDemo", params: {{"steps": {steps}, "step_ms": {step_ms}, "size": 48}}),
        (id: "save", type: "SaveImage", params: {{"filename_prefix": "slow"}}),
    ],
    links: [
        (from: ("sampler", "image"), to: ("save", "images")),
    ],
    layout: Some((positions: {{"sampler": (40.0, 40.0), "save": (460.0, 40.0)}})),
)
"#
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn options(&self, workflow: Option<PathBuf>) -> EditorOptions {
        EditorOptions {
            workflow,
            out_dir: Some(self.path("out")),
            models_dir: Some(self.path("models")),
            state_dir: Some(self.path("state")),
            ..EditorOptions::default()
        }
    }

    fn app_with(&self, workflow: Option<PathBuf>, settings: Settings) -> VeetanceApp {
        let mut registry = veetance_gui::node_registry();
        register_demo(&mut registry);
        VeetanceApp::new(registry, self.options(workflow), settings)
    }

    fn app(&self, workflow: Option<PathBuf>) -> VeetanceApp {
        self.app_with(
            workflow,
            Settings {
                show_splash: false,
                ..Settings::default()
            },
        )
    }
}

fn harness(app: VeetanceApp) -> Harness<'static, VeetanceApp> {
    let mut h = Harness::builder()
        .with_size([1500.0, 950.0])
        .with_step_dt(1.0 / 60.0)
        .build_ui_state(|ui, app: &mut VeetanceApp| app.ui(ui), app);
    h.run_steps(3);
    h
}

/// Steps frames until `done` holds or `timeout` passes; returns whether it held.
fn step_until(
    h: &mut Harness<'_, VeetanceApp>,
    timeout: Duration,
    done: impl Fn(&VeetanceApp) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        h.step();
        if done(h.state()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Drags with the mouse from one point to another, as a user would.
fn drag(h: &mut Harness<'_, VeetanceApp>, from: Pos2, to: Pos2) {
    h.hover_at(from);
    h.step();
    h.drag_at(from);
    h.step();
    for i in 1..=6 {
        h.hover_at(from.lerp(to, i as f32 / 6.0));
        h.step();
    }
    // Release over the target (without the pointer leaving in the same frame).
    h.event(egui::Event::PointerButton {
        pos: to,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: Modifiers::NONE,
    });
    h.run_steps(3);
    h.remove_cursor();
    h.step();
}

/// Shift+drags a box on the canvas from `from` to `to`.
fn box_select(h: &mut Harness<'_, VeetanceApp>, from: Pos2, to: Pos2) {
    h.event(egui::Event::ModifiersChanged(Modifiers::SHIFT));
    h.event(egui::Event::PointerMoved(from));
    h.step();
    h.event(egui::Event::PointerButton {
        pos: from,
        button: egui::PointerButton::Primary,
        pressed: true,
        modifiers: Modifiers::SHIFT,
    });
    h.step();
    for i in 1..=6 {
        h.event(egui::Event::PointerMoved(from.lerp(to, i as f32 / 6.0)));
        h.step();
    }
    h.event(egui::Event::PointerButton {
        pos: to,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: Modifiers::SHIFT,
    });
    h.step();
    h.event(egui::Event::ModifiersChanged(Modifiers::NONE));
    h.run_steps(2);
}

fn pin(h: &Harness<'_, VeetanceApp>, node: &str, port: &str, output: bool) -> Pos2 {
    h.state()
        .pin_screen_pos(node, port, output)
        .unwrap_or_else(|| panic!("pin {node}.{port} is not on screen"))
}

/// The screen position of a label on the canvas (accessibility rects are in canvas coordinates).
fn on_screen(h: &Harness<'_, VeetanceApp>, label: &str) -> Pos2 {
    h.state().canvas_transform() * h.get_by_label(label).rect().center()
}

fn has_link(app: &VeetanceApp, from: (&str, &str), to: (&str, &str)) -> bool {
    app.workflow()
        .links
        .iter()
        .any(|l| l.from.0 == from.0 && l.from.1 == from.1 && l.to.0 == to.0 && l.to.1 == to.1)
}

#[test]
fn palette_adds_nodes_grouped_by_category_and_searchable() {
    let fx = Fixture::new();
    let mut h = harness(fx.app(None));
    // Categories from the registry are headers; entries are buttons.
    h.get_by_label("image/generate");
    h.get_by_role_and_label(Role::Button, "Gradient").click();
    h.run_steps(3);
    let wf = h.state().workflow();
    assert_eq!(wf.nodes.len(), 1);
    assert_eq!(wf.nodes[0].type_name, "GradientImage");
    // The node shows on the canvas with its title and id.
    h.get_by_label("gradientimage");

    let search = h.get_by_label("Search");
    search.focus();
    search.type_text("blend");
    h.run_steps(2);
    assert!(h
        .query_by_role_and_label(Role::Button, "Gradient")
        .is_none());
    h.get_by_role_and_label(Role::Button, "Blend Images")
        .click();
    h.run_steps(3);
    let types: Vec<String> = h
        .state()
        .workflow()
        .nodes
        .iter()
        .map(|n| n.type_name.clone())
        .collect();
    assert_eq!(types, ["GradientImage", "ImageBlend"]);
}

#[test]
fn dragging_from_an_output_to_a_compatible_input_connects_them() {
    let fx = Fixture::new();
    let unlinked = TINY.replace(
        r#"(from: ("gradient", "image"), to: ("save", "images")),"#,
        "",
    );
    let path = fx.write("unlinked.ron", &unlinked);
    let mut h = harness(fx.app(Some(path)));
    assert!(h.state().workflow().links.is_empty());
    let from = pin(&h, "gradient", "image", true);
    let to = pin(&h, "save", "images", false);
    drag(&mut h, from, to);
    assert!(
        has_link(h.state(), ("gradient", "image"), ("save", "images")),
        "links: {:?}",
        h.state().workflow().links
    );
}

#[test]
fn an_incompatible_connection_is_refused_with_the_reason() {
    let fx = Fixture::new();
    let text = TINY
        .replace(
            r#"(id: "save","#,
            r#"(id: "seed", type: "Seed", params: {"seed": 3}),
        (id: "save","#,
        )
        .replace(
            r#""save": (420.0, 40.0)"#,
            r#""save": (420.0, 40.0), "seed": (40.0, 300.0)"#,
        );
    let path = fx.write("seed.ron", &text);
    let mut h = harness(fx.app(Some(path)));
    let before = h.state().workflow().links.len();
    let from = pin(&h, "seed", "seed", true);
    let to = pin(&h, "save", "images", false);
    drag(&mut h, from, to);
    assert_eq!(h.state().workflow().links.len(), before);
    assert!(!has_link(h.state(), ("seed", "seed"), ("save", "images")));
    let notice = h.state().notice.clone().unwrap_or_default();
    assert!(notice.starts_with("Int cannot feed Image"), "{notice}");
    // The reason is on screen.
    h.get_by_label_contains("Int cannot feed Image");
}

#[test]
fn editing_a_param_widget_changes_the_document_and_undo_reverts_it() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    let field = h.get_by_label("filename_prefix");
    field.focus();
    field.type_text("_v2");
    h.run_steps(2);
    h.key_press(Key::Escape);
    h.run_steps(3);
    let params = h
        .state()
        .doc
        .snarl
        .nodes()
        .find(|n| n.id == "save")
        .unwrap()
        .params
        .clone();
    assert!(
        matches!(params.get("filename_prefix"), Some(Value::String(s)) if &**s == "tiny_v2"),
        "{params:?}"
    );
    assert!(h.state().doc.is_dirty());

    // Undo with Ctrl+Z, redo with Ctrl+Shift+Z.
    h.remove_cursor();
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(3);
    let wf = h.state().workflow();
    let save = wf.nodes.iter().find(|n| n.id == "save").unwrap();
    assert_eq!(save.params["filename_prefix"].to_string(), "\"tiny\"");
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.run_steps(3);
    let wf = h.state().workflow();
    let save = wf.nodes.iter().find(|n| n.id == "save").unwrap();
    assert_eq!(save.params["filename_prefix"].to_string(), "\"tiny_v2\"");
}

#[test]
fn saving_and_reopening_gives_the_identical_graph() {
    let fx = Fixture::new();
    let path = fx.write("hello.ron", HELLO);
    let mut h = harness(fx.app(Some(path)));
    // Change something: add a node from the palette.
    h.get_by_role_and_label(Role::Button, "Gradient").click();
    h.run_steps(3);
    assert!(h.state().doc.is_dirty());
    let before = h.state().workflow();

    // File → Save As…, type a name, Save.
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Save As…").click();
    h.run_steps(2);
    let name = h.get_by_label("File name");
    name.focus();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_label("File name").type_text("edited.ron");
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "Save").click();
    h.run_steps(3);
    let saved = fx.path("edited.ron");
    assert!(saved.exists(), "notice: {:?}", h.state().notice);
    assert!(!h.state().doc.is_dirty());

    let reopened = harness(fx.app(Some(saved.clone())));
    assert_eq!(reopened.state().workflow(), before);
    assert_eq!(WorkflowFile::load(&saved).unwrap(), before);
    // And the file is what saving writes again: the text is stable.
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), before.to_ron());
}

/// Clicks Run and steps until the run ends; returns the frames stepped.
fn run_to_end(h: &mut Harness<'_, VeetanceApp>, timeout: Duration) {
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.step();
    assert!(h.state().is_running(), "notice: {:?}", h.state().notice);
    assert!(
        step_until(h, timeout, |app| !app.is_running()),
        "the run did not finish"
    );
    h.run_steps(2);
}

#[test]
fn running_the_tiny_workflow_shows_its_image() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    run_to_end(&mut h, Duration::from_secs(20));
    let app = h.state();
    assert_eq!(app.run.outputs.len(), 1, "result: {:?}", app.run.result);
    let (node, png, texture) = &app.run.outputs[0];
    assert_eq!(node, "save");
    assert!(Path::new(png).exists());
    assert_eq!(texture.size(), [64, 64]);
    assert!(matches!(
        app.run.nodes.get("save"),
        Some(NodeRun::Done { .. })
    ));
    // In the viewer panel, labelled with its file.
    h.get_by_label(&format!("save: {png}"));
}

/// The golden FLUX.2 workflow on the tiny models (assets/tiny-models): runs in the editor and its
/// image shows. Built without the FLUX.2 nodes (`--no-default-features`) there is nothing to run.
#[test]
fn running_the_tiny_flux2_workflow_shows_its_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let registry = veetance_gui::node_registry();
    if registry.get("Sampler").is_none() {
        eprintln!("built without the FLUX.2 nodes: nothing to run");
        return;
    }
    let name = "flux2-klein-tiny.ron";
    let mut file = WorkflowFile::load(&root.join("workflows").join(name)).unwrap();
    // Its model paths are relative to the repository root; tests run elsewhere.
    for node in &mut file.nodes {
        if let Some(veetance_workflow::ParamValue::String(p)) = node.params.get_mut("file") {
            *p = root.join(&*p).display().to_string();
        }
    }
    let fx = Fixture::new();
    let path = fx.write(name, &file.to_ron());
    let mut h = harness(fx.app(Some(path)));
    run_to_end(&mut h, Duration::from_secs(300));
    let app = h.state();
    assert_eq!(app.run.outputs.len(), 1, "result: {:?}", app.run.result);
    let (node, png, texture) = &app.run.outputs[0];
    assert_eq!(node, "save");
    assert!(Path::new(png).exists());
    assert_eq!(texture.size(), [64, 64]);
    assert!(matches!(
        app.run.nodes.get("sampler"),
        Some(NodeRun::Done { .. })
    ));
    h.get_by_label(&format!("save: {png}"));
}

/// Noise with a seed into a saver: each seed makes a different image.
const SEEDED: &str = r##"(
    version: 1,
    nodes: [
        (id: "noise", type: "NoiseImage", params: {"width": 32, "height": 32, "seed": 7}),
        (id: "save", type: "SaveImage", params: {"filename_prefix": "batch"}),
    ],
    links: [
        (from: ("noise", "image"), to: ("save", "images")),
    ],
    layout: Some((positions: {"noise": (40.0, 40.0), "save": (420.0, 40.0)})),
)
"##;

/// The history holds `n` runs, all finished.
fn all_finished(app: &VeetanceApp, n: usize) -> bool {
    use veetance_gui::history::RunState;
    app.history.entries.len() == n
        && app
            .history
            .entries
            .iter()
            .all(|e| e.state == RunState::Finished)
}

fn noise_seed(file: &WorkflowFile) -> i64 {
    let node = file.nodes.iter().find(|n| n.id == "noise").unwrap();
    match node.params.get("seed") {
        Some(veetance_workflow::ParamValue::Int(s)) => *s,
        other => panic!("seed param: {other:?}"),
    }
}

/// A batch of 3 from the toolbar: three runs one after another, each the next seed, each a
/// history entry with its own image that restores the workflow it ran.
#[test]
fn a_batch_of_three_seeds_gives_three_history_entries_that_restore_their_workflow() {
    let fx = Fixture::new();
    let path = fx.write("seeded.ron", SEEDED);
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().batch = 3;
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.step();
    assert!(h.state().is_running(), "notice: {:?}", h.state().notice);
    assert!(
        step_until(&mut h, Duration::from_secs(60), |app| {
            all_finished(app, 3)
        }),
        "history: {:?}",
        h.state()
            .history
            .entries
            .iter()
            .map(|e| e.title())
            .collect::<Vec<_>>()
    );
    h.run_steps(2);
    let app = h.state();
    let seeds: Vec<i64> = app
        .history
        .entries
        .iter()
        .map(|e| noise_seed(&e.workflow))
        .collect();
    assert_eq!(seeds, [7, 8, 9]);
    let titles: Vec<String> = app.history.entries.iter().map(|e| e.title()).collect();
    assert_eq!(
        titles,
        [
            "#1 seed 7: finished",
            "#2 seed 8: finished",
            "#3 seed 9: finished"
        ]
    );
    // Each made its own image, and the images differ.
    let mut bytes = Vec::new();
    for e in &app.history.entries {
        assert_eq!(e.outputs.len(), 1, "{}", e.title());
        let (node, png, _) = &e.outputs[0];
        assert_eq!(node, "save");
        bytes.push(std::fs::read(png).unwrap());
    }
    assert!(bytes[0] != bytes[1] && bytes[1] != bytes[2] && bytes[0] != bytes[2]);
    // The list shows them newest first, each with Restore.
    h.get_by_label("#2 seed 8: finished");
    assert_eq!(
        h.get_all_by_role_and_label(Role::Button, "Restore").count(),
        3
    );
    // Restore the middle one from the list: the document now has its seed, as an undoable edit.
    h.get_all_by_role_and_label(Role::Button, "Restore")
        .nth(1)
        .unwrap()
        .click();
    h.run_steps(2);
    assert_eq!(noise_seed(&h.state().workflow()), 8);
    assert!(h.state().doc.can_undo());
    // And each entry restores its own.
    for (number, seed) in [(1, 7), (3, 9)] {
        h.state_mut().restore_run(number).unwrap();
        h.run_steps(1);
        assert_eq!(noise_seed(&h.state().workflow()), seed);
    }
}

/// A history image opens in the viewer: 1:1 and Fit, compare with an earlier run, and the
/// run's params copied.
#[test]
fn the_image_viewer_zooms_compares_and_copies_params() {
    let fx = Fixture::new();
    let path = fx.write("seeded.ron", SEEDED);
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().queue_runs(2);
    assert!(step_until(&mut h, Duration::from_secs(60), |app| {
        all_finished(app, 2)
    }));
    h.state_mut().open_image_viewer(2);
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "1:1").click();
    h.run_steps(2);
    assert_eq!(h.state().image_viewer.as_ref().unwrap().zoom, Some(1.0));
    h.get_by_label("100%");
    h.get_by_role_and_label(Role::Button, "Fit").click();
    h.run_steps(2);
    assert_eq!(h.state().image_viewer.as_ref().unwrap().zoom, None);
    // Compare with run #1: the menu lists it, and choosing it shows both.
    h.get_by_role(Role::ComboBox).click();
    h.run_steps(2);
    // (The history list shows the same title; the menu's entry comes last.)
    h.get_all_by_label("#1 seed 7: finished")
        .last()
        .unwrap()
        .click();
    h.run_steps(2);
    assert_eq!(h.state().image_viewer.as_ref().unwrap().compare, Some(1));
    h.get_by_role_and_label(Role::Button, "Copy seed & params")
        .click();
    h.run_steps(2);
    assert_eq!(
        h.state().notice.as_deref(),
        Some("copied the params of run #2 seed 8: finished")
    );
    // Closing the window forgets it.
    h.state_mut().image_viewer = None;
    h.run_steps(2);
    assert!(h.query_by_label("Copy seed & params").is_none());
}

/// Cancel during a batch stops the run and drops the runs still queued.
#[test]
fn cancel_during_a_batch_drops_the_queued_runs() {
    use veetance_gui::history::RunState;
    let fx = Fixture::new();
    let path = fx.write("slow.ron", &slow_workflow(400, 20));
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().queue_runs(3);
    assert!(step_until(&mut h, Duration::from_secs(10), |app| {
        matches!(app.run.nodes.get("sampler"), Some(NodeRun::Running { step, .. }) if *step > 2)
    }));
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    assert!(step_until(&mut h, Duration::from_secs(5), |app| !app.is_running()));
    h.run_steps(3);
    let states: Vec<RunState> = h
        .state()
        .history
        .entries
        .iter()
        .map(|e| e.state.clone())
        .collect();
    assert_eq!(states, vec![RunState::Cancelled; 3]);
    assert!(!h.state().is_running());
}

#[test]
fn cancel_stops_a_run_between_steps() {
    let fx = Fixture::new();
    let path = fx.write("slow.ron", &slow_workflow(400, 20));
    let mut h = harness(fx.app(Some(path)));
    h.get_by_role_and_label(Role::Button, "Run").click();
    assert!(step_until(&mut h, Duration::from_secs(10), |app| {
        matches!(app.run.nodes.get("sampler"), Some(NodeRun::Running { step, .. }) if *step > 2)
    }));
    let started = Instant::now();
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    assert!(step_until(&mut h, Duration::from_secs(5), |app| !app.is_running()));
    assert!(started.elapsed() < Duration::from_secs(2));
    let app = h.state();
    assert_eq!(app.run.nodes.get("sampler"), Some(&NodeRun::Cancelled));
    assert_eq!(app.run.result.as_deref(), Some("run cancelled"));
    assert!(app.run.outputs.is_empty());
}

#[test]
fn a_png_written_by_save_image_restores_its_workflow() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    run_to_end(&mut h, Duration::from_secs(20));
    let original = h.state().workflow();
    let png = PathBuf::from(&h.state().run.outputs[0].1);

    // A fresh editor; File → Open…, type the PNG's path, Open.
    let mut h = harness(fx.app(None));
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("Open…").click();
    h.run_steps(2);
    let name = h.get_by_label("File name");
    name.focus();
    name.type_text(&png.display().to_string());
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "Open").click();
    h.run_steps(3);
    assert_eq!(
        h.state().workflow(),
        original,
        "notice: {:?}",
        h.state().notice
    );
    // A restored PNG has no file to save over: Save asks for a name.
    assert!(h.state().doc.path.is_none());
}

#[test]
fn frames_keep_coming_while_the_engine_works() {
    let fx = Fixture::new();
    let path = fx.write("slow.ron", &slow_workflow(40, 25));
    let mut h = harness(fx.app(Some(path)));
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.step();
    let run_started = Instant::now();
    let mut frames = 0u32;
    let mut slowest = Duration::ZERO;
    let mut progress = Vec::new();
    let mut saw_preview = false;
    while h.state().is_running() && run_started.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        h.step();
        slowest = slowest.max(t.elapsed());
        frames += 1;
        progress.push(h.state().run.progress());
        saw_preview |= h.state().run.images.contains_key("sampler");
        std::thread::sleep(Duration::from_millis(4));
    }
    let run_time = run_started.elapsed();
    assert!(!h.state().is_running(), "the run did not finish");
    // 40 steps of 25 ms: about a second, during which the UI kept drawing.
    assert!(run_time >= Duration::from_millis(900), "{run_time:?}");
    assert!(frames >= 30, "only {frames} frames in {run_time:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "slowest frame {slowest:?}"
    );
    assert!(saw_preview, "no preview reached the sampler node");
    let distinct_rising = progress.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(distinct_rising >= 10, "progress seen: {progress:?}");
    assert!(progress.windows(2).all(|w| w[1] >= w[0] || w[1] == 1.0));
}

#[test]
fn validation_errors_from_a_loaded_file_point_at_their_nodes() {
    let fx = Fixture::new();
    let broken = TINY.replace(r#""width": 64"#, r#""width": 0"#);
    let path = fx.write("broken.ron", &broken);
    let mut h = harness(fx.app(Some(path)));
    assert!(step_until(&mut h, Duration::from_secs(5), |app| app
        .problems
        .contains_key("gradient")));
    let problems = &h.state().problems["gradient"];
    assert!(problems[0].contains("width"), "{problems:?}");
    // On the node, and in the viewer's problem list.
    assert!(h.get_all_by_label_contains("param 'width'").count() >= 1);
}

#[test]
fn delete_duplicate_copy_and_paste_act_on_the_selection() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    // Shift+click a node to select it.
    let at = on_screen(&h, "gradient");
    box_select(
        &mut h,
        at - egui::vec2(60.0, 40.0),
        at + egui::vec2(40.0, 60.0),
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::D);
    h.run_steps(2);
    let ids: Vec<String> = h
        .state()
        .workflow()
        .nodes
        .iter()
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(ids, ["gradient", "save", "gradient_2"]);

    h.key_press_modifiers(Modifiers::COMMAND, Key::C);
    h.key_press_modifiers(Modifiers::COMMAND, Key::V);
    h.run_steps(2);
    assert_eq!(h.state().workflow().nodes.len(), 4);

    let at = on_screen(&h, "save");
    box_select(
        &mut h,
        at - egui::vec2(20.0, 40.0),
        at + egui::vec2(120.0, 60.0),
    );
    h.key_press(Key::Delete);
    h.run_steps(2);
    let wf = h.state().workflow();
    assert!(wf.nodes.iter().all(|n| n.id != "save"));
    assert!(wf.links.is_empty(), "links into a deleted node go with it");
}

#[test]
fn box_select_picks_nodes_in_the_rectangle() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    let a = on_screen(&h, "gradient");
    let b = on_screen(&h, "save");
    let from = Pos2::new(a.x - 160.0, a.y - 60.0);
    let to = Pos2::new(b.x + 160.0, b.y + 300.0);
    box_select(&mut h, from, to);
    let ctx = h.ctx.clone();
    assert_eq!(h.state().selected_nodes(&ctx).len(), 2);
}

#[test]
fn unsaved_changes_are_guarded_and_autosaved_for_recovery() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let settings = Settings {
        show_splash: false,
        autosave_seconds: 1,
        ..Settings::default()
    };
    let mut h = harness(fx.app_with(Some(path.clone()), settings.clone()));
    h.get_by_role_and_label(Role::Button, "Gradient").click();
    h.run_steps(2);
    let edited = h.state().workflow();
    // Autosave writes within a second or so of the change.
    let autosave = fx.path("state/autosave.ron");
    assert!(step_until(&mut h, Duration::from_secs(4), |_| autosave.exists()));

    // New asks first.
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("New").click();
    h.run_steps(2);
    h.get_by_label("Unsaved changes");
    h.get_by_label("Keep editing").click();
    h.run_steps(2);
    assert_eq!(h.state().workflow(), edited);
    drop(h);

    // As if it had crashed: the next start offers the autosave.
    let mut h = harness(fx.app_with(Some(path), settings));
    h.get_by_label("Restore unsaved work?");
    h.get_by_label("Restore").click();
    h.run_steps(2);
    assert_eq!(h.state().workflow().nodes, edited.nodes);
    assert!(h.state().doc.is_dirty());
}

#[test]
fn splash_shows_at_start_and_a_click_skips_it() {
    let fx = Fixture::new();
    let mut h = harness(fx.app_with(None, Settings::default()));
    assert!(h.state().splash_visible());
    h.hover_at(Pos2::new(700.0, 400.0));
    h.drag_at(Pos2::new(700.0, 400.0));
    h.step();
    h.drop_at(Pos2::new(700.0, 400.0));
    h.run_steps(2);
    assert!(!h.state().splash_visible());

    let off = Settings {
        show_splash: false,
        ..Settings::default()
    };
    let h = harness(fx.app_with(None, off));
    assert!(!h.state().splash_visible());
}

#[test]
fn the_status_bar_shows_memory_telemetry() {
    let fx = Fixture::new();
    let mut h = harness(fx.app(None));
    assert!(step_until(&mut h, Duration::from_secs(5), |app| app
        .cache
        .is_some()));
    h.get_by_label("VRAM: no GPU telemetry");
    h.get_by_label_contains("Cache: RAM");
    if Path::new("/proc/meminfo").exists() {
        h.get_by_label_contains("RAM: editor");
    }
}

#[test]
fn opening_a_comfyui_workflow_shows_its_graph_where_it_was_laid_out() {
    let fx = Fixture::new();
    // A UI workflow as ComfyUI saves it, over Veetance's own image nodes, with a note.
    let ui = r##"{
        "version": 0.4,
        "nodes": [
            {"id": 3, "type": "GradientImage", "mode": 0, "pos": [40, 60],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [1]}],
             "widgets_values": [64, 48, "#000000", "#ffffff", "vertical"]},
            {"id": 7, "type": "SaveImage", "mode": 0, "pos": [400, 60],
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
             "widgets_values": ["from-comfy"]},
            {"id": 9, "type": "Note", "mode": 0, "pos": [0, 300], "widgets_values": ["hi"]}
        ],
        "links": [[1, 3, 0, 7, 0, "IMAGE"]]
    }"##;
    let path = fx.write("flow.json", ui);
    let h = harness(fx.app(Some(path)));
    let wf = h.state().workflow();
    let ids: Vec<&str> = wf.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["3", "7"], "notice: {:?}", h.state().notice);
    let gradient = &wf.nodes[0];
    assert_eq!(gradient.type_name, "GradientImage");
    assert_eq!(gradient.params["height"].to_string(), "48");
    assert_eq!(wf.links.len(), 1);
    let positions = &wf.layout.as_ref().unwrap().positions;
    assert_eq!(positions["3"], (40.0, 60.0));
    assert_eq!(positions["7"], (400.0, 60.0));
    // Saving writes a .ron elsewhere, never over the ComfyUI file.
    assert!(h.state().doc.path.is_none());
}

// ---- readable on open (fit, arrange)

/// What a user sees of the canvas after opening: each node's screen rectangle, the viewport, and
/// the node text height (the body font at the canvas's zoom) in pixels.
fn view_report(h: &Harness<'_, VeetanceApp>) -> (Vec<(String, egui::Rect)>, egui::Rect, f32) {
    let app = h.state();
    let t = app.canvas_transform();
    let rects = app
        .node_layout()
        .into_iter()
        .map(|(id, r)| (id, t * r))
        .collect();
    let body = h.ctx.global_style().text_styles[&egui::TextStyle::Body].size;
    (rects, app.canvas_viewport(), body * t.scaling)
}

/// Asserts: every node measured, no two node rectangles intersect, all inside the view, and the
/// graph as large as the view allows (100%, or filling the view's width or height up to the fit
/// margin); returns the text height.
fn assert_readable(h: &Harness<'_, VeetanceApp>, what: &str, nodes: usize) -> f32 {
    let (rects, view, text) = view_report(h);
    assert_eq!(rects.len(), nodes, "{what}: every node drawn and measured");
    let only: Vec<egui::Rect> = rects.iter().map(|(_, r)| *r).collect();
    for (i, (a_id, a)) in rects.iter().enumerate() {
        for (b_id, b) in &rects[i + 1..] {
            assert!(
                !a.intersects(*b),
                "{what}: nodes {a_id} {a:?} and {b_id} {b:?} overlap"
            );
        }
        assert!(
            view.contains_rect(*a),
            "{what}: node {a_id} {a:?} is outside the view {view:?}"
        );
    }
    assert!(!veetance_gui::layout::any_overlap(&only, 0.0));
    let bb = veetance_gui::layout::bounds(only.iter().copied());
    let margin = 2.0 * veetance_gui::layout::FIT_MARGIN + 2.0;
    let scale = h.state().canvas_transform().scaling;
    assert!(
        scale == 1.0
            || bb.width() >= view.width() - margin
            || bb.height() >= view.height() - margin,
        "{what}: fitted at {scale} but the graph {bb:?} does not fill the view {view:?}"
    );
    text
}

fn open_in_window(fx: &Fixture, path: PathBuf) -> Harness<'static, VeetanceApp> {
    let mut h = Harness::builder()
        .with_size([1600.0, 1000.0])
        .with_step_dt(1.0 / 60.0)
        .build_ui_state(|ui, app: &mut VeetanceApp| app.ui(ui), fx.app(Some(path)));
    let mut frames = 0;
    while h.state().view_pending() && frames < 30 {
        h.step();
        frames += 1;
    }
    h.run_steps(2);
    assert!(!h.state().view_pending(), "the view was never fitted");
    h
}

#[test]
fn bundled_workflows_and_a_klein_template_open_readable() {
    let fx = Fixture::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    match std::env::var_os("VEETANCE_COMFY_TEMPLATES") {
        Some(dir) => files.push(PathBuf::from(dir).join("image_flux2_klein_text_to_image.json")),
        None => eprintln!("ComfyUI klein template skipped: VEETANCE_COMFY_TEMPLATES is not set"),
    }
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let h = open_in_window(&fx, path.clone());
        let nodes = h.state().workflow().nodes.len();
        let what = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = assert_readable(&h, &what, nodes);
        eprintln!(
            "{what}: {nodes} nodes, node text {text:.1} px, canvas {:?}",
            h.state().canvas_viewport()
        );
        assert!(text >= 12.0, "{what}: node text {text:.1} px, under 12 px");
    }
}

#[test]
fn overlapping_positions_are_arranged_on_open_and_auto_arrange_keeps_a_60_node_graph_apart() {
    let fx = Fixture::new();
    // 20 chains seed → noise → save, every node saved at the same spot.
    let mut nodes = String::new();
    let mut links = String::new();
    let mut pos = String::new();
    for i in 0..20 {
        nodes += &format!(
            "(id: \"seed{i}\", type: \"Seed\", params: {{\"seed\": {i}}}),\n\
             (id: \"noise{i}\", type: \"NoiseImage\", params: {{\"width\": 64, \"height\": 64}}),\n\
             (id: \"save{i}\", type: \"SaveImage\", params: {{\"filename_prefix\": \"n{i}\"}}),\n"
        );
        links += &format!(
            "(from: (\"seed{i}\", \"seed\"), to: (\"noise{i}\", \"seed\")),\n\
             (from: (\"noise{i}\", \"image\"), to: (\"save{i}\", \"images\")),\n"
        );
        for n in ["seed", "noise", "save"] {
            pos += &format!("\"{n}{i}\": (100.0, 100.0), ");
        }
    }
    let text = format!(
        "(version: 1, nodes: [{nodes}], links: [{links}], layout: Some((positions: {{{pos}}})))"
    );
    let path = fx.write("sixty.ron", &text);
    let mut h = open_in_window(&fx, path);
    let t_open = assert_readable(&h, "60 nodes on open", 60);
    // Auto-arrange again (Ctrl+Shift+L) after moving a node onto another: apart again.
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::L);
    let mut frames = 0;
    while h.state().view_pending() && frames < 30 {
        h.step();
        frames += 1;
    }
    h.run_steps(2);
    let t_arranged = assert_readable(&h, "60 nodes arranged", 60);
    eprintln!("60 nodes: node text {t_open:.1} px on open, {t_arranged:.1} px after arranging");
}

#[test]
fn view_shortcuts_fit_zoom_and_zoom_to_selection() {
    let fx = Fixture::new();
    let path = fx.write("hello.ron", HELLO);
    let mut h = open_in_window(&fx, path);
    let fitted = h.state().canvas_transform();
    // Ctrl+0: 100%.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Num0);
    h.run_steps(3);
    assert_eq!(h.state().canvas_transform().scaling, 1.0);
    // Zoom out with the wheel, then "." fits again.
    h.event(egui::Event::Zoom(0.5));
    h.run_steps(3);
    h.key_press(Key::Period);
    h.run_steps(3);
    let again = h.state().canvas_transform();
    assert!(
        (again.scaling - fitted.scaling).abs() < 1e-3,
        "{again:?} vs {fitted:?}"
    );
    // Zoom to selection: a box around one node, then Shift+.
    let (rects, _, _) = view_report(&h);
    let save = rects.iter().find(|(id, _)| id == "save").unwrap().1;
    box_select(
        &mut h,
        save.min - egui::vec2(8.0, 8.0),
        save.max + egui::vec2(8.0, 8.0),
    );
    h.key_press_modifiers(Modifiers::SHIFT, Key::Period);
    h.run_steps(3);
    let (rects, view, _) = view_report(&h);
    let save = rects.iter().find(|(id, _)| id == "save").unwrap().1;
    assert!(
        (save.center() - view.center()).length() < 2.0,
        "{save:?} not centred in {view:?}"
    );
}

// ---- panels that give way

/// The FLUX.2 nodes are in this build (they are not with `--no-default-features`).
fn has_flux2_nodes() -> bool {
    veetance_gui::node_registry().get("Sampler").is_some()
}

#[test]
fn side_panels_fold_for_a_large_workflow_and_come_back_with_their_shortcuts() {
    if !has_flux2_nodes() {
        eprintln!("built without the FLUX.2 nodes: skipped");
        return;
    }
    let fx = Fixture::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
    // A small workflow reads at 100% between the panels: they stay.
    let h = open_in_window(&fx, root.join("hello.ron"));
    assert!(h.state().settings.show_palette && h.state().settings.show_viewer);
    assert_eq!(h.state().canvas_transform().scaling, 1.0);
    drop(h);
    // The 4B workflow does not: both fold, and the canvas takes the window's width.
    let mut h = open_in_window(&fx, root.join("flux2-klein-4b.ron"));
    let s = &h.state().settings;
    assert!(!s.show_palette && !s.show_viewer, "{s:?}");
    assert!(
        h.query_by_label("Search").is_none(),
        "the palette is folded"
    );
    assert!(h.state().canvas_viewport().width() > 1500.0);
    // Ctrl+B brings the palette back, Ctrl+Shift+B the viewer; settings remember both.
    h.key_press_modifiers(Modifiers::COMMAND, Key::B);
    h.run_steps(2);
    h.get_by_label("Search");
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::B);
    h.run_steps(2);
    h.get_by_label("Run the workflow to see its images here.");
    let saved = Settings::from_ron(&h.state().settings.to_ron());
    assert!(saved.show_palette && saved.show_viewer);
    h.key_press_modifiers(Modifiers::COMMAND, Key::B);
    h.run_steps(2);
    assert!(!h.state().settings.show_palette);
    drop(h);
    // With the setting off, the panels stay where they are.
    let app = fx.app_with(
        Some(root.join("flux2-klein-4b.ron")),
        Settings {
            show_splash: false,
            panels_give_way: false,
            ..Settings::default()
        },
    );
    let mut h = Harness::builder()
        .with_size([1600.0, 1000.0])
        .build_ui_state(|ui, app: &mut VeetanceApp| app.ui(ui), app);
    h.run_steps(10);
    assert!(h.state().settings.show_palette && h.state().settings.show_viewer);
}

// ---- files in: open and drag-and-drop

/// A ComfyUI UI workflow over Veetance's image nodes (as ComfyUI saves it), with a note.
const COMFY_UI: &str = r##"{
    "version": 0.4,
    "nodes": [
        {"id": 3, "type": "GradientImage", "mode": 0, "pos": [40, 60],
         "outputs": [{"name": "image", "type": "IMAGE", "links": [1]}],
         "widgets_values": [64, 48, "#000000", "#ffffff", "vertical"]},
        {"id": 7, "type": "SaveImage", "mode": 0, "pos": [400, 60],
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
         "widgets_values": ["from-comfy"]},
        {"id": 9, "type": "Note", "mode": 0, "pos": [0, 300], "widgets_values": ["hi"]}
    ],
    "links": [[1, 3, 0, 7, 0, "IMAGE"]]
}"##;

/// The same graph as ComfyUI's API prompt.
const COMFY_API: &str = r##"{
    "3": {"class_type": "GradientImage", "inputs": {"width": 64, "height": 40,
          "color_a": "#000000", "color_b": "#ffffff", "direction": "vertical"}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "api"}}
}"##;

/// A file dropped from a file manager: a path on disk.
#[derive(Debug)]
struct DiskFile(PathBuf);

impl egui::DroppedFile for DiskFile {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// Drops `path` on the window, as a file manager would.
fn drop_file(h: &mut Harness<'_, VeetanceApp>, path: &Path) {
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(DiskFile(path.to_path_buf())));
    h.run_steps(3);
}

fn node_ids(app: &VeetanceApp) -> Vec<String> {
    app.workflow().nodes.iter().map(|n| n.id.clone()).collect()
}

/// A 4×4 grey PNG carrying `chunks` as text chunks.
fn png_with(fx: &Fixture, name: &str, chunks: &[(&str, &str)]) -> PathBuf {
    let path = fx.path(name);
    let chunks: Vec<(String, String)> = chunks
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    veetance_nodes_basic::write_png(&path, &[0.5; 4 * 4 * 3], 4, 4, 3, &chunks).unwrap();
    path
}

#[test]
fn dropping_each_kind_of_workflow_file_opens_it() {
    let fx = Fixture::new();
    let mut h = harness(fx.app(None));
    let height = |app: &VeetanceApp| {
        let wf = app.workflow();
        let node = wf.nodes.iter().find(|n| n.id == "3").unwrap();
        node.params["height"].to_string()
    };
    // Our .ron.
    drop_file(&mut h, &fx.write("tiny.ron", TINY));
    assert_eq!(node_ids(h.state()), ["gradient", "save"]);
    assert!(h.state().doc.path.is_some(), "a .ron saves over itself");
    // ComfyUI's UI workflow: its positions kept, the note left out.
    drop_file(&mut h, &fx.write("ui.json", COMFY_UI));
    assert_eq!(node_ids(h.state()), ["3", "7"], "{:?}", h.state().notice);
    assert_eq!(height(h.state()), "48");
    assert!(
        h.state().doc.path.is_none(),
        "never saved over ComfyUI's file"
    );
    // ComfyUI's API prompt (told apart by its shape, whatever the name).
    drop_file(&mut h, &fx.write("prompt.txt", COMFY_API));
    assert_eq!(node_ids(h.state()), ["3", "7"], "{:?}", h.state().notice);
    assert_eq!(height(h.state()), "40");
    // Arranged while opening (ComfyUI's layout is for its own node sizes), yet no unsaved change.
    assert!(!h.state().doc.is_dirty());
    // A PNG written by SaveImage: our workflow.
    let ours = png_with(
        &fx,
        "ours.png",
        &[(veetance_nodes_basic::WORKFLOW_PNG_KEYWORD, TINY)],
    );
    drop_file(&mut h, &ours);
    assert_eq!(node_ids(h.state()), ["gradient", "save"]);
    // A PNG written by ComfyUI: the prompt that ran wins over the workflow.
    let comfy = png_with(
        &fx,
        "comfy.png",
        &[("prompt", COMFY_API), ("workflow", COMFY_UI)],
    );
    drop_file(&mut h, &comfy);
    assert_eq!(node_ids(h.state()), ["3", "7"], "{:?}", h.state().notice);
    assert_eq!(height(h.state()), "40");
    assert!(h
        .state()
        .notice
        .as_deref()
        .unwrap_or("")
        .contains("comfy.png"));
    // With only the workflow chunk, the workflow.
    let ui_only = png_with(&fx, "comfy-ui.png", &[("workflow", COMFY_UI)]);
    drop_file(&mut h, &ui_only);
    assert_eq!(height(h.state()), "48");
}

#[test]
fn a_dropped_file_that_cannot_be_opened_says_which_and_why() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    let before = h.state().workflow();
    let bad: Vec<(PathBuf, &str)> = vec![
        (fx.write("broken.json", r#"{"nodes": 3}"#), "neither"),
        (
            fx.write("typo.ron", "(version: 1, nodes: [(id: "),
            "typo.ron",
        ),
        (
            {
                let p = fx.path("garbage.png");
                std::fs::write(&p, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
                p
            },
            "PNG",
        ),
        (png_with(&fx, "plain.png", &[]), "holds no"),
        (fx.path("missing.ron"), "cannot read"),
    ];
    for (path, why) in bad {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        drop_file(&mut h, &path);
        let notice = h.state().notice.clone().unwrap_or_default();
        assert!(notice.contains(&name), "{name}: {notice}");
        assert!(notice.contains(why), "{name}: {notice}");
        // Said in the status bar, and the open workflow stays as it was.
        h.get_by_label_contains(&name);
        assert_eq!(h.state().workflow(), before, "{name}");
    }
}

// ---- the palette and the model pickers

#[test]
fn palette_entries_show_the_node_description_on_hover() {
    let fx = Fixture::new();
    let mut h = harness(fx.app(None));
    let registry = veetance_gui::node_registry();
    let doc = registry.get("GradientImage").unwrap().schema().doc.clone();
    h.get_by_role_and_label(Role::Button, "Gradient").hover();
    h.run_steps(60);
    h.get_by_label_contains(&doc[..40]);
    // Test nodes are not in the editor's registry, so never in its palette.
    assert!(registry
        .schemas()
        .all(|s| s.category != veetance_gui::demo::TEST_CATEGORY));
}

/// A safetensors file holding one 2×2 tensor of `dtype` (`elem` bytes an element).
fn safetensors(path: &Path, dtype: &str, elem: usize) {
    let mut header = format!(
        r#"{{"w":{{"dtype":"{dtype}","shape":[2,2],"data_offsets":[0,{}]}}}}"#,
        4 * elem
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 4 * elem));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn model_pickers_show_each_files_size_and_kind() {
    if !has_flux2_nodes() {
        eprintln!("built without the FLUX.2 nodes: skipped");
        return;
    }
    let fx = Fixture::new();
    let models = fx.path("models/diffusion_models");
    safetensors(&models.join("klein-bf16.safetensors"), "BF16", 2);
    safetensors(&models.join("klein-fp8.safetensors"), "F8_E4M3", 1);
    std::fs::write(models.join("notes.txt"), "not weights").unwrap();
    let flow = r#"(version: 1, nodes: [(id: "model", type: "LoadDiffusionModel",
        params: {"file": "klein-bf16.safetensors"})], links: [])"#;
    let path = fx.write("model.ron", flow);
    let mut h = harness(fx.app(Some(path)));
    // The picker shows the file's name; opened, every file with its size and kind.
    h.get_by_value("klein-bf16.safetensors").click_accesskit();
    h.run_steps(3);
    h.get_by_label("klein-fp8.safetensors");
    h.get_by_label_contains("· bf16");
    h.get_by_label_contains("· fp8 (e4m3)");
    h.get_by_label("notes.txt");
    // Picking a file sets the param.
    h.get_by_label("klein-fp8.safetensors").click_accesskit();
    h.run_steps(3);
    let wf = h.state().workflow();
    assert_eq!(
        wf.nodes[0].params["file"].to_string(),
        "\"klein-fp8.safetensors\""
    );
}

// ---- ComfyUI's shortcuts

/// Two clicks at `at` in quick succession.
fn double_click(h: &mut Harness<'_, VeetanceApp>, at: Pos2) {
    h.hover_at(at);
    h.step();
    for _ in 0..2 {
        for pressed in [true, false] {
            h.event(egui::Event::PointerButton {
                pos: at,
                button: egui::PointerButton::Primary,
                pressed,
                modifiers: Modifiers::NONE,
            });
        }
        h.step();
    }
    h.run_steps(2);
}

#[test]
fn double_click_on_empty_canvas_searches_and_adds_a_node_there() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path)));
    // An empty spot: below the nodes, in the canvas.
    let view = h.state().canvas_viewport();
    let at = Pos2::new(view.center().x, view.max.y - 120.0);
    let graph_at = h.state().canvas_transform().inverse() * at;
    double_click(&mut h, at);
    assert!(h.state().node_search.is_some(), "no search opened");
    let field = h.get_by_label("Search nodes");
    field.type_text("blend");
    h.run_steps(2);
    h.key_press(Key::Enter);
    h.run_steps(3);
    assert!(h.state().node_search.is_none());
    let wf = h.state().workflow();
    let blend = wf.nodes.iter().find(|n| n.type_name == "ImageBlend");
    let blend = blend.unwrap_or_else(|| panic!("no node added: {:?}", h.state().notice));
    let pos = wf.layout.as_ref().unwrap().positions[&blend.id];
    assert!(
        (pos.0 - graph_at.x).abs() < 1.0 && (pos.1 - graph_at.y).abs() < 1.0,
        "{pos:?} vs {graph_at:?}"
    );
    // Esc closes it without adding anything (after a pause: clicks in a row count as one
    // triple click).
    h.run_steps(40);
    double_click(&mut h, at - egui::vec2(320.0, 0.0));
    assert!(h.state().node_search.is_some());
    h.key_press(Key::Escape);
    h.run_steps(2);
    assert!(h.state().node_search.is_none());
    assert_eq!(h.state().workflow().nodes.len(), 3);
}

#[test]
fn comfyui_shortcuts_save_run_and_redo() {
    let fx = Fixture::new();
    let path = fx.write("tiny.ron", TINY);
    let mut h = harness(fx.app(Some(path.clone())));
    // Edit (add a node), Ctrl+Z undoes it, Ctrl+Y redoes it.
    h.get_by_role_and_label(Role::Button, "Gradient").click();
    h.run_steps(3);
    assert_eq!(h.state().workflow().nodes.len(), 3);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().workflow().nodes.len(), 2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Y);
    h.run_steps(2);
    assert_eq!(h.state().workflow().nodes.len(), 3);
    // Ctrl+S saves over the file.
    assert!(h.state().doc.is_dirty());
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.run_steps(2);
    assert!(!h.state().doc.is_dirty());
    assert_eq!(WorkflowFile::load(&path).unwrap().nodes.len(), 3);
    // Ctrl+Enter queues a run.
    // (The tiny graph may finish within the frame that started it.)
    h.key_press_modifiers(Modifiers::COMMAND, Key::Enter);
    h.step();
    let finished = |app: &VeetanceApp| {
        app.notice
            .as_deref()
            .is_some_and(|n| n.starts_with("run finished"))
    };
    assert!(
        h.state().is_running() || finished(h.state()),
        "{:?}",
        h.state().notice
    );
    assert!(step_until(&mut h, Duration::from_secs(20), |app| !app.is_running()));
    assert!(finished(h.state()), "{:?}", h.state().notice);
}

/// The screenshot requests in the harness's last frame.
fn screenshot_requests(h: &Harness<'_, VeetanceApp>) -> Vec<egui::UserData> {
    h.output()
        .viewport_output
        .values()
        .flat_map(|v| v.commands.iter())
        .filter_map(|c| match c {
            egui::ViewportCommand::Screenshot(data) => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// The overlay asks for a frame when it appears (and paints nothing in that frame), waits for
/// the reply without asking again, blurs the reply into a texture, asks again once a resized
/// window holds its size, and drops it when the run ends. The harness has no renderer, so the test answers the request as eframe would.
#[test]
fn the_overlay_blurs_a_captured_frame_of_the_canvas() {
    let fx = Fixture::new();
    let path = fx.write("slow.ron", &slow_workflow(400, 20));
    let mut h = harness(fx.app(Some(path)));
    assert!(screenshot_requests(&h).is_empty());
    h.state_mut().start_run();
    h.step();
    assert!(h.state().is_running());
    let requests = screenshot_requests(&h);
    assert_eq!(requests.len(), 1, "one capture when the overlay appears");
    assert!(!h.state().backdrop.is_ready());
    assert!(
        !overlay_painted(&h),
        "the frame to be read back holds no overlay"
    );
    h.step();
    assert!(
        !overlay_painted(&h),
        "nor the next (eframe's glow reads that one)"
    );
    for _ in 0..5 {
        h.step();
        assert!(
            screenshot_requests(&h).is_empty(),
            "no second request while one waits"
        );
        assert!(overlay_painted(&h), "the veils and the quote meanwhile");
    }
    // A reply to someone else's request is not taken.
    let frame = egui::ColorImage::new(
        [1500, 950],
        (0..1500 * 950)
            .map(|i| {
                if (i % 1500 / 50 + i / 1500 / 50) % 2 == 0 {
                    egui::Color32::WHITE
                } else {
                    egui::Color32::BLACK
                }
            })
            .collect(),
    );
    let frame = std::sync::Arc::new(frame);
    h.event(egui::Event::Screenshot {
        viewport_id: egui::ViewportId::ROOT,
        user_data: egui::UserData::new("someone else's"),
        image: frame.clone(),
    });
    h.run_steps(3);
    assert!(!h.state().backdrop.is_ready());
    h.event(egui::Event::Screenshot {
        viewport_id: egui::ViewportId::ROOT,
        user_data: requests[0].clone(),
        image: frame,
    });
    assert!(
        step_until(&mut h, Duration::from_secs(10), |app| app
            .backdrop
            .is_ready()),
        "the captured frame was blurred and uploaded"
    );
    assert!(h.state().backdrop.last_blur.is_some());
    for _ in 0..5 {
        h.step();
        assert!(
            screenshot_requests(&h).is_empty(),
            "nothing changed: no new capture"
        );
    }
    // A resized window asks for a new frame, keeping the old one meanwhile.
    h.set_size(egui::vec2(1300.0, 900.0));
    let resized = Instant::now();
    let mut asked = Vec::new();
    while resized.elapsed() < Duration::from_millis(1000) {
        h.step();
        if !screenshot_requests(&h).is_empty() {
            asked.push(resized.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(asked.len(), 1, "a capture at the new size: {asked:?}");
    assert!(
        asked[0] >= Duration::from_millis(250),
        "once the size held: {asked:?}"
    );
    assert!(h.state().backdrop.is_ready());
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    assert!(step_until(&mut h, Duration::from_secs(5), |app| !app.is_running()));
    h.step();
    assert!(
        !h.state().backdrop.is_ready(),
        "the backdrop goes with the overlay"
    );
}

/// Opens the image viewer on run #1 of [`SEEDED`] at 1:1; returns the harness, the image's
/// size, and a point on the image area `offset` from its centre (estimated from the caption
/// above the area and the pane size the viewer recorded).
fn viewer_at_one_to_one(fx: &Fixture) -> (Harness<'static, VeetanceApp>, egui::Vec2, Pos2) {
    let path = fx.write("seeded.ron", SEEDED);
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().queue_runs(1);
    assert!(step_until(&mut h, Duration::from_secs(60), |app| {
        all_finished(app, 1)
    }));
    let size = h.state().history.get(1).unwrap().outputs[0].2.size_vec2();
    h.state_mut().open_image_viewer(1);
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "1:1").click();
    h.run_steps(3);
    let caption = h.get_by_label_contains(" · save: ").rect();
    let pane = h.state().image_viewer.as_ref().unwrap().pane;
    assert!(pane.x > 100.0 && pane.y > 100.0, "pane {pane:?}");
    // The area starts under the caption (one item spacing, 4 points, below).
    let centre = Pos2::new(
        caption.left() + pane.x / 2.0,
        caption.bottom() + 4.0 + pane.y / 2.0,
    );
    (h, size, centre)
}

/// Scrolling over the image zooms about the pointer: the image point under it stays there.
#[test]
fn the_image_viewer_zooms_about_the_pointer() {
    let fx = Fixture::new();
    let (mut h, size, centre) = viewer_at_one_to_one(&fx);
    let before = h.state().image_viewer.clone().unwrap();
    assert_eq!(before.zoom, Some(1.0));
    let c0 = before.center.unwrap_or(size / 2.0);
    let offset = egui::vec2(90.0, -50.0);
    h.hover_at(centre + offset);
    h.step();
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: egui::vec2(0.0, 120.0),
        phase: egui::TouchPhase::Move,
        modifiers: Modifiers::NONE,
    });
    h.run_steps(40);
    let after = h.state().image_viewer.clone().unwrap();
    let z1 = after.zoom.unwrap();
    assert!(z1 > 1.5, "scrolling up zooms in: {z1}");
    let c1 = after.center.unwrap();
    // The image point under the pointer, before and after: c + d / zoom for the pointer's
    // offset d from the pane's centre. Solving for d from the two centres gives the offset the
    // viewer zoomed about: it must be where the pointer was (within the estimate of the
    // pane's position), not the pane's centre.
    let d = (c1 - c0) / (1.0 - 1.0 / z1);
    assert!(
        (d - offset).length() < 6.0,
        "zoomed about {d:?}, the pointer was at {offset:?} from the centre"
    );
    // Scrolling down zooms out, and zoom stays within its limits.
    for _ in 0..6 {
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, -2000.0),
            phase: egui::TouchPhase::Move,
            modifiers: Modifiers::NONE,
        });
        h.run_steps(10);
    }
    let z2 = h.state().image_viewer.as_ref().unwrap().zoom.unwrap();
    assert_eq!(z2, veetance_gui::image_viewer::ZOOM_MIN, "{z2}");
}

/// Dragging the image pans it by the pointer's movement, at 1:1 and from Fit (which keeps the
/// fitted zoom).
#[test]
fn the_image_viewer_pans_by_dragging() {
    let fx = Fixture::new();
    let (mut h, size, centre) = viewer_at_one_to_one(&fx);
    let c0 = h
        .state()
        .image_viewer
        .as_ref()
        .unwrap()
        .center
        .unwrap_or(size / 2.0);
    let start = centre + egui::vec2(20.0, 10.0);
    let moved = egui::vec2(60.0, -40.0);
    h.drag_at(start);
    h.step();
    h.hover_at(start + moved);
    h.step();
    h.drop_at(start + moved);
    h.run_steps(2);
    let v = h.state().image_viewer.clone().unwrap();
    assert_eq!(v.zoom, Some(1.0), "a pan keeps the zoom");
    let c1 = v.center.unwrap();
    // At 1:1 the image moves with the pointer: its centre point moves the other way.
    assert!((c1 - (c0 - moved)).length() < 0.5, "{c0:?} -> {c1:?}");

    // From Fit: the zoom becomes the fitted one, and the pan is in image pixels at that zoom.
    h.get_by_role_and_label(Role::Button, "Fit").click();
    h.run_steps(2);
    let fitted = h.state().image_viewer.clone().unwrap();
    assert_eq!((fitted.zoom, fitted.center), (None, None));
    let fit = veetance_gui::image_viewer::fit_zoom(size, fitted.pane);
    assert!(fit > 1.0, "the 32 px image is enlarged to fit: {fit}");
    h.drag_at(start);
    h.step();
    h.hover_at(start + moved);
    h.step();
    h.drop_at(start + moved);
    h.run_steps(2);
    let v = h.state().image_viewer.clone().unwrap();
    assert_eq!(v.zoom, Some(fit));
    let c2 = v.center.unwrap();
    assert!((c2 - (size / 2.0 - moved / fit)).length() < 0.05, "{c2:?}");
}

/// Starts a long run and answers the overlay's first capture; returns once it is blurred.
fn running_with_backdrop(fx: &Fixture) -> Harness<'static, VeetanceApp> {
    let path = fx.write("slow.ron", &slow_workflow(1000, 20));
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().start_run();
    h.step();
    let request = screenshot_requests(&h)
        .pop()
        .expect("a capture when the overlay appears");
    h.event(egui::Event::Screenshot {
        viewport_id: egui::ViewportId::ROOT,
        user_data: request,
        image: std::sync::Arc::new(egui::ColorImage::new(
            [1500, 950],
            vec![egui::Color32::from_gray(90); 1500 * 950],
        )),
    });
    assert!(step_until(&mut h, Duration::from_secs(10), |app| app
        .backdrop
        .is_ready()));
    h
}

/// Panning the canvas under the overlay asks for a new capture once the canvas has held still
/// for half a second, and only one.
#[test]
fn panning_under_the_overlay_refreshes_the_blur_once_it_settles() {
    let fx = Fixture::new();
    let mut h = running_with_backdrop(&fx);
    let before = h.state().canvas_transform();
    h.hover_at(Pos2::new(700.0, 700.0));
    h.step();
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: egui::vec2(80.0, 40.0),
        phase: egui::TouchPhase::Move,
        modifiers: Modifiers::NONE,
    });
    let panned = Instant::now();
    let mut asked = Vec::new();
    while panned.elapsed() < Duration::from_millis(2500) {
        h.step();
        if !screenshot_requests(&h).is_empty() {
            asked.push(panned.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = h.state().canvas_transform();
    assert!(
        (after.translation - before.translation).length() > 20.0,
        "the canvas panned: {before:?} -> {after:?}"
    );
    assert_eq!(asked.len(), 1, "one new capture after the pan: {asked:?}");
    assert!(asked[0] >= Duration::from_millis(500), "{asked:?}");
    assert!(h.state().is_running());
}

/// Where no frame comes back (this harness has no renderer), the overlay gives up after 2 s and
/// keeps its veils: no capture is asked for again while the window keeps its size.
#[test]
fn without_a_renderer_the_overlay_asks_once_and_keeps_its_veils() {
    let fx = Fixture::new();
    let path = fx.write("slow.ron", &slow_workflow(1000, 20));
    let mut h = harness(fx.app(Some(path)));
    h.state_mut().start_run();
    let started = Instant::now();
    let mut asked = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        h.step();
        asked += screenshot_requests(&h).len();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(h.state().is_running());
    assert_eq!(asked, 1);
    assert!(!h.state().backdrop.is_ready());
    assert!(
        overlay_painted(&h),
        "the overlay (its quote) is painted over the veils"
    );
}

/// Whether the last frame painted the overlay's quote (a text opening with “).
fn overlay_painted(h: &Harness<'_, VeetanceApp>) -> bool {
    h.output()
        .shapes
        .iter()
        .any(|clipped| match &clipped.shape {
            egui::Shape::Text(text) => text.galley.text().starts_with('“'),
            _ => false,
        })
}
