//! The image viewer: one run's image in a window of its own, zoomed (scroll, or 1:1 / Fit),
//! panned (drag), side by side with an earlier run's image under the same view, with the
//! run's seeds and params to copy and its file to reveal in the file manager.

use std::path::Path;

use egui::{Pos2, Rect, RichText, Vec2};
use veetance_workflow::{ParamValue, WorkflowFile};

use crate::app::VeetanceApp;

/// Zoom limits (screen pixels per image pixel).
pub const ZOOM_MIN: f32 = 0.05;
pub const ZOOM_MAX: f32 = 32.0;

/// What the viewer shows and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageViewer {
    /// The history entry shown.
    pub entry: u64,
    /// Which of its images (an entry may hold several).
    pub image: usize,
    /// An earlier entry shown beside it under the same zoom and pan.
    pub compare: Option<u64>,
    /// Screen pixels per image pixel; `None` fits the image to the area.
    pub zoom: Option<f32>,
    /// The image point at the middle of the area, in image pixels (`None`: the image's middle).
    pub center: Option<Vec2>,
    /// The size of an image pane in the last frame (for the zoom shown in the toolbar).
    pub pane: Vec2,
}

impl ImageViewer {
    pub fn new(entry: u64) -> Self {
        ImageViewer {
            entry,
            image: 0,
            compare: None,
            zoom: None,
            center: None,
            pane: Vec2::ZERO,
        }
    }

    /// The zoom in effect for an image of `size` in an area of `area` pixels.
    pub fn effective_zoom(&self, size: Vec2, area: Vec2) -> f32 {
        self.zoom.unwrap_or_else(|| fit_zoom(size, area))
    }
}

/// The zoom that fits `size` into `area` (a small image is enlarged at most 8×).
pub fn fit_zoom(size: Vec2, area: Vec2) -> f32 {
    if size.x <= 0.0 || size.y <= 0.0 {
        return 1.0;
    }
    (area.x / size.x).min(area.y / size.y).clamp(ZOOM_MIN, 8.0)
}

/// Where the image lies on screen in `area` for `zoom` and `center` (image pixels).
pub fn image_rect(area: Rect, size: Vec2, zoom: f32, center: Vec2) -> Rect {
    let min = area.center() - center * zoom;
    Rect::from_min_size(min, size * zoom)
}

/// The run's seeds and params as text, one `node.param = value` a line (what "Copy seed &
/// params" puts on the clipboard).
pub fn params_text(label: &str, file: &WorkflowFile) -> String {
    let mut out = String::new();
    if !label.is_empty() {
        out.push_str(label);
        out.push('\n');
    }
    for node in &file.nodes {
        for (name, value) in &node.params {
            let v = match value {
                ParamValue::Bool(b) => b.to_string(),
                ParamValue::Int(i) => i.to_string(),
                ParamValue::Float(f) => f.to_string(),
                ParamValue::String(s) => format!("{s:?}"),
            };
            out.push_str(&format!("{}.{name} = {v}\n", node.id));
        }
    }
    out
}

/// Opens the file manager on the folder holding `path` (its own file selected where the
/// platform allows).
pub fn reveal_in_folder(path: &Path) -> Result<(), String> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut command = if cfg!(target_os = "macos") {
        let mut c = std::process::Command::new("open");
        c.arg("-R").arg(path);
        c
    } else if cfg!(target_os = "windows") {
        let mut c = std::process::Command::new("explorer");
        c.arg(format!("/select,{}", path.display()));
        c
    } else {
        let mut c = std::process::Command::new("xdg-open");
        c.arg(folder);
        c
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot open the folder '{}': {e}", folder.display()))
}

impl VeetanceApp {
    /// Opens the viewer on history entry `number`'s first image.
    pub fn open_image_viewer(&mut self, number: u64) {
        self.image_viewer = Some(ImageViewer::new(number));
    }

    /// The image viewer window, when open.
    pub(crate) fn image_viewer_window(&mut self, ctx: &egui::Context) {
        let Some(mut viewer) = self.image_viewer.clone() else {
            return;
        };
        let Some(entry) = self.history.get(viewer.entry) else {
            self.image_viewer = None;
            return;
        };
        let Some((node, path, texture)) = entry
            .outputs
            .get(viewer.image)
            .or_else(|| entry.outputs.first())
            .cloned()
        else {
            self.image_viewer = None;
            return;
        };
        let title = entry.title();
        let label = entry.label.clone();
        let workflow = entry.workflow.clone();
        // Earlier (and later) runs with an image, for the compare menu.
        let others: Vec<(u64, String)> = self
            .history
            .entries
            .iter()
            .filter(|e| e.number != viewer.entry && !e.outputs.is_empty())
            .map(|e| (e.number, e.title()))
            .collect();
        let compare = viewer.compare.and_then(|n| {
            self.history
                .get(n)
                .and_then(|e| e.outputs.first().map(|o| (e.title(), o.2.clone())))
        });
        let mut open = true;
        let mut notice = None;
        egui::Window::new("Image")
            .id(egui::Id::new("veetance-image-viewer"))
            .open(&mut open)
            .default_size([720.0, 560.0])
            .resizable(true)
            .show(ctx, |ui| {
                ui.horizontal_wrapped(|ui| {
                    if ui
                        .button("Fit")
                        .on_hover_text("Fit the image to the window")
                        .clicked()
                    {
                        viewer.zoom = None;
                        viewer.center = None;
                    }
                    if ui
                        .button("1:1")
                        .on_hover_text("One screen pixel for each image pixel")
                        .clicked()
                    {
                        viewer.zoom = Some(1.0);
                    }
                    let size = texture.size_vec2();
                    let pane = if viewer.pane == Vec2::ZERO {
                        ui.available_size()
                    } else {
                        viewer.pane
                    };
                    let shown = viewer.effective_zoom(size, pane);
                    ui.label(format!("{:.0}%", shown * 100.0));
                    let current = compare
                        .as_ref()
                        .map_or("Compare with…".to_string(), |(t, _)| t.clone());
                    egui::ComboBox::from_id_salt("veetance-compare")
                        .selected_text(current)
                        .show_ui(ui, |ui| {
                            ui.selectable_value(&mut viewer.compare, None, "nothing");
                            for (n, t) in &others {
                                ui.selectable_value(&mut viewer.compare, Some(*n), t);
                            }
                        });
                    if ui
                        .button("Copy seed & params")
                        .on_hover_text("Every param of the run's workflow, as text")
                        .clicked()
                    {
                        ui.ctx().copy_text(params_text(&label, &workflow));
                        notice = Some(format!("copied the params of run {title}"));
                    }
                    if ui
                        .button("Reveal in folder")
                        .on_hover_text(path.as_str())
                        .clicked()
                    {
                        notice = Some(match reveal_in_folder(Path::new(&path)) {
                            Ok(()) => format!("opened the folder of {path}"),
                            Err(e) => e,
                        });
                    }
                });
                ui.label(RichText::new(format!("{title} · {node}: {path}")).weak());
                let area = ui.available_rect_before_wrap();
                let response = ui.allocate_rect(area, egui::Sense::click_and_drag());
                let panes: Vec<(Rect, &egui::TextureHandle, Option<&str>)> = match &compare {
                    Some((t, other)) => {
                        let half = area.width() / 2.0;
                        let left =
                            Rect::from_min_size(area.min, egui::vec2(half - 2.0, area.height()));
                        let right = Rect::from_min_size(
                            Pos2::new(area.min.x + half + 2.0, area.min.y),
                            egui::vec2(half - 2.0, area.height()),
                        );
                        vec![
                            (left, &texture, Some(title.as_str())),
                            (right, other, Some(t.as_str())),
                        ]
                    }
                    None => vec![(area, &texture, None)],
                };
                let size = texture.size_vec2();
                let pane_size = panes[0].0.size();
                viewer.pane = pane_size;
                let zoom = viewer.effective_zoom(size, pane_size);
                let mut center = viewer.center.unwrap_or(size / 2.0);
                // Scroll zooms about the pointer; drag pans.
                if response.hovered() {
                    let scroll = ui.input(|i| i.smooth_scroll_delta.y);
                    if scroll != 0.0 {
                        let factor = (scroll / 200.0).exp();
                        let next = (zoom * factor).clamp(ZOOM_MIN, ZOOM_MAX);
                        if let Some(pointer) = response.hover_pos() {
                            let pane = panes
                                .iter()
                                .map(|p| p.0)
                                .find(|r| r.contains(pointer))
                                .unwrap_or(panes[0].0);
                            let at = center + (pointer - pane.center()) / zoom;
                            center = at - (pointer - pane.center()) / next;
                        }
                        viewer.zoom = Some(next);
                        viewer.center = Some(center);
                    }
                }
                if response.dragged() {
                    center -= response.drag_delta() / zoom;
                    viewer.center = Some(center);
                    if viewer.zoom.is_none() {
                        viewer.zoom = Some(zoom);
                    }
                }
                let zoom = viewer.effective_zoom(size, pane_size);
                let painter = ui.painter_at(area);
                for (pane, tex, caption) in &panes {
                    let painter = painter.with_clip_rect(*pane);
                    let rect = image_rect(*pane, tex.size_vec2(), zoom, center);
                    painter.image(
                        tex.id(),
                        rect,
                        Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
                        egui::Color32::WHITE,
                    );
                    if let Some(caption) = caption {
                        painter.text(
                            pane.left_top() + egui::vec2(6.0, 6.0),
                            egui::Align2::LEFT_TOP,
                            *caption,
                            egui::FontId::proportional(13.0),
                            egui::Color32::WHITE,
                        );
                    }
                }
            });
        if let Some(n) = notice {
            self.notice = Some(n);
        }
        self.image_viewer = open.then_some(viewer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_and_one_to_one_place_the_image() {
        let area = Rect::from_min_size(Pos2::new(10.0, 20.0), Vec2::new(400.0, 300.0));
        let size = Vec2::new(1024.0, 512.0);
        let fit = fit_zoom(size, area.size());
        assert_eq!(fit, 400.0 / 1024.0);
        let r = image_rect(area, size, fit, size / 2.0);
        assert!((r.width() - 400.0).abs() < 1e-3 && (r.center() - area.center()).length() < 1e-3);
        // 1:1 about a point: that image point sits at the middle of the area.
        let r = image_rect(area, size, 1.0, Vec2::new(100.0, 50.0));
        assert_eq!(r.min + Vec2::new(100.0, 50.0), area.center());
        // A tiny image is enlarged at most 8x.
        assert_eq!(
            fit_zoom(Vec2::new(8.0, 8.0), Vec2::new(1000.0, 1000.0)),
            8.0
        );
    }

    #[test]
    fn params_text_lists_every_param() {
        let file = WorkflowFile::parse(
            r#"(version: 1, nodes: [(id: "noise", type: "NoiseImage", params: {"seed": 8, "scale": 2.5}), (id: "save", type: "SaveImage", params: {"filename_prefix": "a"})])"#,
            "test",
        )
        .unwrap();
        let text = params_text("seed 8", &file);
        assert_eq!(
            text,
            "seed 8\nnoise.scale = 2.5\nnoise.seed = 8\nsave.filename_prefix = \"a\"\n"
        );
    }
}
