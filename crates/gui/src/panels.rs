//! The panels around the canvas: the menu and run bar, the node palette, the viewer (previews,
//! outputs, problems), the status bar with memory telemetry, and the dialogs.

use std::collections::BTreeMap;

use egui::{Color32, RichText};
use veetance_core::NodeSchema;

use crate::app::{PendingAction, VeetanceApp};
use crate::canvas::{matches_search, offered};
use crate::files::{DialogMode, DialogOutcome};
use crate::layout::ViewCommand;
use crate::telemetry::{format_bytes, usage_text};

const ERROR_RED: Color32 = Color32::from_rgb(0xef, 0x53, 0x50);

impl VeetanceApp {
    pub(crate) fn top_bar(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("veetance-top").show(ui, |ui| {
            egui::MenuBar::new().ui(ui, |ui| {
                ui.menu_button("File", |ui| {
                    if ui.button("New").clicked() {
                        self.guarded(PendingAction::New);
                        ui.close();
                    }
                    if ui.button("Open…").clicked() {
                        self.guarded(PendingAction::OpenDialog);
                        ui.close();
                    }
                    if ui.button("Save").clicked() {
                        self.save();
                        ui.close();
                    }
                    if ui.button("Save As…").clicked() {
                        self.open_dialog(DialogMode::SaveAs);
                        ui.close();
                    }
                    ui.menu_button("Open Recent", |ui| {
                        if self.settings.recent_files.is_empty() {
                            ui.label("no recent files");
                        }
                        for path in self.settings.recent_files.clone() {
                            if ui.button(path.display().to_string()).clicked() {
                                self.guarded(PendingAction::Open(path));
                                ui.close();
                            }
                        }
                    });
                    ui.separator();
                    if ui.button("Quit").clicked() {
                        self.guarded(PendingAction::Quit);
                        ui.close();
                    }
                });
                ui.menu_button("Edit", |ui| {
                    if ui
                        .add_enabled(self.doc.can_undo(), egui::Button::new("Undo"))
                        .clicked()
                    {
                        self.undo();
                        ui.close();
                    }
                    if ui
                        .add_enabled(self.doc.can_redo(), egui::Button::new("Redo"))
                        .clicked()
                    {
                        self.redo();
                        ui.close();
                    }
                    ui.separator();
                    ui.label("Delete, Ctrl+C, Ctrl+V, Ctrl+D act on the selected nodes");
                    ui.label("Shift+drag on the canvas selects a box of nodes");
                });
                ui.menu_button("View", |ui| {
                    for (label, keys, cmd) in [
                        ("Fit View", ". or Home", ViewCommand::FitAll),
                        ("Zoom to Selection", "Shift+.", ViewCommand::FitSelection),
                        ("Zoom 100%", "Ctrl+0", ViewCommand::Zoom100),
                        ("Auto-arrange", "Ctrl+Shift+L", ViewCommand::Arrange),
                    ] {
                        if ui
                            .add(egui::Button::new(label).shortcut_text(keys))
                            .clicked()
                        {
                            self.request_view(cmd);
                            ui.close();
                        }
                    }
                    ui.separator();
                    ui.add(egui::Checkbox::new(
                        &mut self.settings.show_palette,
                        "Node Palette",
                    ))
                    .on_hover_text("Ctrl+B");
                    ui.add(egui::Checkbox::new(
                        &mut self.settings.show_viewer,
                        "Viewer",
                    ))
                    .on_hover_text("Ctrl+Shift+B");
                    ui.checkbox(
                        &mut self.settings.panels_give_way,
                        "Fold the panels when a large workflow opens",
                    );
                    ui.separator();
                    if ui.button("Settings…").clicked() {
                        self.show_settings = true;
                        ui.close();
                    }
                });
                ui.separator();
                ui.toggle_value(&mut self.settings.show_palette, "Nodes")
                    .on_hover_text("Show or fold the node palette (Ctrl+B)");
                ui.separator();
                let running = self.is_running();
                if ui
                    .button("Run")
                    .on_hover_text(
                        "Run the workflow (Ctrl+Enter); while a run goes on, queue one more. \
                         With a batch above 1, queue that many runs, each with the next seed.",
                    )
                    .clicked()
                {
                    self.start_run();
                }
                ui.add(
                    egui::DragValue::new(&mut self.batch)
                        .range(1..=crate::history::BATCH_MAX)
                        .prefix("× "),
                )
                .on_hover_text("Batch: how many runs Run queues, each with the next seed");
                let waiting = self.history.pending();
                if waiting > 0 {
                    ui.label(format!("{waiting} queued"));
                }
                if ui
                    .add_enabled(running, egui::Button::new("Cancel"))
                    .on_hover_text("Stop the run at its next check (Esc)")
                    .clicked()
                {
                    self.cancel_run();
                }
                if running {
                    let p = self.run.progress();
                    ui.add(
                        egui::ProgressBar::new(p)
                            .desired_width(220.0)
                            .show_percentage()
                            .animate(true),
                    );
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    // Right to left: the viewer's toggle at the right edge, above its panel.
                    ui.toggle_value(&mut self.settings.show_viewer, "Viewer")
                        .on_hover_text("Show or fold the viewer (Ctrl+Shift+B)");
                    ui.separator();
                    let dirty = if self.doc.is_dirty() { " ●" } else { "" };
                    ui.label(format!("{}{dirty}", self.doc.title()))
                        .on_hover_text(&self.doc.origin);
                });
            });
        });
    }

    pub(crate) fn status_bar(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("veetance-status").show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                let m = self.host_memory;
                let ram = match (m.process_rss, m.total, m.available) {
                    (Some(rss), Some(total), Some(avail)) => format!(
                        "RAM: editor {} · system {} used of {}",
                        format_bytes(rss),
                        format_bytes(total.saturating_sub(avail)),
                        format_bytes(total)
                    ),
                    _ => "RAM: not reported on this system".into(),
                };
                ui.label(ram);
                ui.separator();
                ui.label("VRAM: no GPU telemetry")
                    .on_hover_text("GPU driver telemetry is not wired in yet; the cache's device bytes are what the engine accounts for.");
                ui.separator();
                match &self.cache {
                    Some(c) => {
                        let r = ui.label(format!(
                            "Cache: RAM {} · VRAM {} · {} entries · {} hits / {} misses",
                            usage_text(c.usage.host, c.budgets.host),
                            usage_text(c.usage.device, c.budgets.device),
                            c.entries,
                            c.stats.hits,
                            c.stats.misses
                        ));
                        r.on_hover_ui(|ui| {
                            ui.label(RichText::new("Largest cache entries").strong());
                            if c.largest.is_empty() {
                                ui.label("the cache is empty");
                            }
                            for e in &c.largest {
                                ui.label(format!(
                                    "{}: {} host, {} device, computed in {:.0} ms",
                                    e.node_type,
                                    format_bytes(e.bytes.host),
                                    format_bytes(e.bytes.device),
                                    e.compute_ms
                                ));
                            }
                            ui.label(format!(
                                "{} evictions, {} too large to keep",
                                c.stats.evictions, c.stats.rejected
                            ));
                        });
                    }
                    None => {
                        ui.label("Cache: waiting for the engine");
                    }
                }
                if let Some(notice) = &self.notice {
                    ui.separator();
                    let refused = notice.contains("cannot feed") || notice.contains("cannot");
                    let color = if refused { ERROR_RED } else { ui.visuals().text_color() };
                    ui.colored_label(color, notice);
                }
            });
        });
    }

    pub(crate) fn palette_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::left("veetance-palette")
            .default_size(220.0)
            .show(ui, |ui| {
                ui.heading("Nodes");
                let hint = ui.label("Search");
                ui.add(
                    egui::TextEdit::singleline(&mut self.palette_search)
                        .hint_text("name or category"),
                )
                .labelled_by(hint.id);
                ui.separator();
                let needle = self.palette_search.to_lowercase();
                let mut groups: BTreeMap<String, Vec<&NodeSchema>> = BTreeMap::new();
                for schema in self.registry.schemas().filter(|s| offered(s)) {
                    if needle.is_empty() || matches_search(schema, &needle) {
                        groups
                            .entry(schema.category.clone())
                            .or_default()
                            .push(schema);
                    }
                }
                let mut chosen = None;
                egui::ScrollArea::vertical().show(ui, |ui| {
                    for (category, schemas) in &groups {
                        egui::CollapsingHeader::new(category)
                            .default_open(true)
                            .open(if needle.is_empty() { None } else { Some(true) })
                            .show(ui, |ui| {
                                for schema in schemas {
                                    let r = ui.button(&schema.display_name).on_hover_text(format!(
                                        "{} ({})\n{}",
                                        schema.display_name, schema.type_name, schema.doc
                                    ));
                                    if r.clicked() {
                                        chosen = Some(schema.type_name.clone());
                                    }
                                }
                            });
                    }
                    if groups.is_empty() {
                        ui.label("no node matches");
                    }
                });
                if let Some(type_name) = chosen {
                    let ctx = ui.ctx().clone();
                    let id = self.add_node_in_view(&ctx, &type_name);
                    self.notice = Some(format!("added '{id}'"));
                }
            });
    }

    pub(crate) fn viewer_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::right("veetance-viewer")
            .default_size(320.0)
            .show(ui, |ui| {
                ui.heading("Viewer");
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let width = ui.available_width();
                    let shown = self
                        .run
                        .preview
                        .as_ref()
                        .filter(|_| self.is_running())
                        .and_then(|(node, _)| {
                            self.run.images.get(node).map(|t| (node.clone(), t.clone()))
                        });
                    if let Some((node, texture)) = shown {
                        ui.label(format!("preview of '{node}'"));
                        fit_image(ui, &texture, width);
                    }
                    for (node, path, texture) in &self.run.outputs {
                        ui.label(format!("{node}: {path}"));
                        fit_image(ui, texture, width);
                    }
                    if self.run.outputs.is_empty() && !self.is_running() {
                        ui.label(RichText::new("Run the workflow to see its images here.").weak());
                    }
                    if let Some(result) = &self.run.result {
                        ui.separator();
                        ui.label(result);
                    }
                    self.history_list(ui);
                    if !self.problems.is_empty() || !self.general_problems.is_empty() {
                        ui.separator();
                        ui.label(RichText::new("Problems").strong().color(ERROR_RED));
                        for p in &self.general_problems {
                            ui.colored_label(ERROR_RED, p);
                        }
                        for (node, list) in &self.problems {
                            for p in list {
                                ui.colored_label(ERROR_RED, format!("{node}: {p}"));
                            }
                        }
                    }
                    if let Some(description) = &self.doc.description {
                        ui.separator();
                        ui.label(RichText::new(description).weak());
                    }
                });
            });
    }

    /// The run history, newest first: each run's title, its first image as a thumbnail, and
    /// Restore, which puts the workflow it ran back into the editor.
    fn history_list(&mut self, ui: &mut egui::Ui) {
        if self.history.entries.is_empty() {
            return;
        }
        ui.separator();
        ui.label(RichText::new("History").strong());
        let mut restore = None;
        let mut view = None;
        for entry in self.history.entries.iter().rev() {
            ui.horizontal(|ui| {
                if let Some((_, path, texture)) = entry.outputs.first() {
                    let size = texture.size_vec2();
                    let scale = 48.0 / size.x.max(size.y).max(1.0);
                    if ui
                        .add(
                            egui::Button::image(egui::Image::new((texture.id(), size * scale)))
                                .frame(false),
                        )
                        .on_hover_text(format!("{path}\nclick to open in the image viewer"))
                        .clicked()
                    {
                        view = Some(entry.number);
                    }
                }
                ui.label(entry.title());
                if ui
                    .button("Restore")
                    .on_hover_text("Put the workflow this run ran back into the editor")
                    .clicked()
                {
                    restore = Some(entry.number);
                }
            });
        }
        if let Some(number) = view {
            self.open_image_viewer(number);
        }
        if let Some(number) = restore {
            if let Err(e) = self.restore_run(number) {
                self.notice = Some(e);
            }
        }
    }

    pub(crate) fn dialogs(&mut self, ctx: &egui::Context) {
        if let Some(dialog) = &mut self.dialog {
            let mode = dialog.mode;
            match dialog.show(ctx) {
                Some(DialogOutcome::Chosen(path)) => {
                    let result = match mode {
                        DialogMode::Open => self.open_path(&path),
                        DialogMode::SaveAs => self.save_to(&path),
                    };
                    match result {
                        Ok(()) => self.dialog = None,
                        Err(e) => {
                            if let Some(d) = &mut self.dialog {
                                d.error = Some(e);
                            }
                        }
                    }
                }
                Some(DialogOutcome::Cancelled) => self.dialog = None,
                None => {}
            }
        }

        if let Some(action) = self.guard.clone() {
            let modal = egui::Modal::new(egui::Id::new("veetance-unsaved")).show(ctx, |ui| {
                ui.heading("Unsaved changes");
                ui.label(format!(
                    "'{}' has changes that are not saved.",
                    self.doc.title()
                ));
                let mut decided = None;
                ui.horizontal(|ui| {
                    if ui.button("Save").clicked() {
                        decided = Some(1);
                    }
                    if ui.button("Discard changes").clicked() {
                        decided = Some(2);
                    }
                    if ui.button("Keep editing").clicked() {
                        decided = Some(3);
                    }
                });
                decided
            });
            match modal.inner {
                Some(1) => {
                    self.guard = None;
                    if self.doc.path.is_some() {
                        self.save();
                        self.perform(action);
                    } else {
                        self.open_dialog(DialogMode::SaveAs);
                    }
                }
                Some(2) => {
                    self.guard = None;
                    self.perform(action);
                }
                Some(3) => self.guard = None,
                _ => {}
            }
        }

        if self.recovery.is_some() && self.splash.is_none() {
            let modal = egui::Modal::new(egui::Id::new("veetance-recovery")).show(ctx, |ui| {
                ui.heading("Restore unsaved work?");
                ui.label(format!(
                    "An autosaved workflow newer than what was opened was found at {}.",
                    self.autosave.path.display()
                ));
                let mut decided = None;
                ui.horizontal(|ui| {
                    if ui.button("Restore").clicked() {
                        decided = Some(true);
                    }
                    if ui.button("Discard autosave").clicked() {
                        decided = Some(false);
                    }
                });
                decided
            });
            match modal.inner {
                Some(true) => self.restore_recovery(),
                Some(false) => {
                    self.recovery = None;
                    self.autosave.discard();
                }
                None => {}
            }
        }

        if self.show_settings {
            let mut open = true;
            egui::Window::new("Settings")
                .open(&mut open)
                .collapsible(false)
                .show(ctx, |ui| {
                    ui.checkbox(&mut self.settings.show_splash, "Splash at start");
                    ui.checkbox(
                        &mut self.settings.show_overlay,
                        "Generation overlay during runs",
                    );
                    ui.horizontal(|ui| {
                        ui.label("Autosave every");
                        ui.add(
                            egui::DragValue::new(&mut self.settings.autosave_seconds)
                                .range(1..=600)
                                .suffix(" s"),
                        );
                    });
                    ui.label(format!("Models folder: {}", self.models_dir.display()));
                    ui.label(format!("Output folder: {}", self.out_dir.display()));
                    if ui.button("Clear recent files").clicked() {
                        self.settings.recent_files.clear();
                    }
                });
            self.show_settings = open;
        }
    }
}

fn fit_image(ui: &mut egui::Ui, texture: &egui::TextureHandle, width: f32) {
    let size = texture.size_vec2();
    let scale = (width / size.x).min(1.0);
    ui.add(egui::Image::new((texture.id(), size * scale)));
}
