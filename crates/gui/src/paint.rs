//! What the editor hands the renderer, arranged to be cheaper to draw.
//!
//! egui's tessellator starts a new mesh, and the glow painter a new draw call, whenever the
//! clip rectangle changes from one shape to the next. Every widget of a node lies in clip
//! rectangles of its own (header, pins, body), so a 60-node canvas made about 470 draw calls a
//! frame, and each costs llvmpipe (the CPU renderer) time to set up and to rasterize apart.
//! Most shapes lie wholly inside their clip rectangle, where it clips nothing: such a shape
//! may take any clip rectangle that holds it, and [`share_clip_rects`] gives it the one of the
//! shape before it (or the whole window), so runs of shapes land in one mesh. What is drawn
//! does not change. docs/editor.md ("Frame times") has the figures.

use egui::epaint::{ClippedShape, Shape};
use egui::Rect;

/// How far outside its bounds a shape may paint: egui's anti-aliasing (feathering) adds half a
/// pixel; one point covers it at every pixels-per-point of 1 or more.
const FEATHER_MARGIN: f32 = 1.0;

/// Gives every shape that its clip rectangle does not clip the clip rectangle of the shape
/// before it, when that one holds it too, else `window`; shapes that their clip rectangle does
/// cut keep it. Paint callbacks keep theirs.
pub fn share_clip_rects(shapes: &mut [ClippedShape], window: Rect) {
    let mut previous: Option<Rect> = None;
    for clipped in shapes {
        if matches!(clipped.shape, Shape::Callback(_) | Shape::Noop) {
            previous = None;
            continue;
        }
        let bounds = clipped.shape.visual_bounding_rect().expand(FEATHER_MARGIN);
        if clipped.clip_rect.contains_rect(bounds) {
            clipped.clip_rect = match previous {
                Some(p) if p.contains_rect(bounds) => p,
                _ => window,
            };
        }
        previous = Some(clipped.clip_rect);
    }
}

/// Runs [`share_clip_rects`] on every frame's shapes, before eframe tessellates them.
#[derive(Debug, Default)]
pub struct FewerDrawCalls;

impl egui::Plugin for FewerDrawCalls {
    fn debug_name(&self) -> &'static str {
        "veetance-fewer-draw-calls"
    }

    fn output_hook(&mut self, ctx: &egui::Context, output: &mut egui::FullOutput) {
        share_clip_rects(&mut output.shapes, ctx.viewport_rect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::{pos2, vec2, Color32, Stroke};

    fn rect(min: (f32, f32), size: f32) -> Shape {
        Shape::rect_filled(
            Rect::from_min_size(pos2(min.0, min.1), vec2(size, size)),
            0.0,
            Color32::WHITE,
        )
    }

    fn clipped(clip: Rect, shape: Shape) -> ClippedShape {
        ClippedShape {
            clip_rect: clip,
            shape,
        }
    }

    #[test]
    fn shapes_their_clip_does_not_cut_share_one_clip_and_one_mesh() {
        let window = Rect::from_min_size(pos2(0.0, 0.0), vec2(800.0, 600.0));
        let node = Rect::from_min_size(pos2(100.0, 100.0), vec2(200.0, 100.0));
        let pin = Rect::from_min_size(pos2(110.0, 110.0), vec2(20.0, 20.0));
        let mut shapes = vec![
            clipped(window, rect((100.0, 100.0), 50.0)),
            clipped(node, rect((120.0, 120.0), 10.0)),
            clipped(pin, rect((115.0, 115.0), 5.0)),
        ];
        share_clip_rects(&mut shapes, window);
        assert!(shapes.iter().all(|s| s.clip_rect == window));
        let ctx = egui::Context::default();
        ctx.begin_pass(egui::RawInput::default());
        let _ = ctx.end_pass();
        assert_eq!(ctx.tessellate(shapes, 1.0).len(), 1);
    }

    #[test]
    fn a_shape_its_clip_cuts_keeps_it_and_what_follows_inside_it_shares_it() {
        let window = Rect::from_min_size(pos2(0.0, 0.0), vec2(800.0, 600.0));
        let label = Rect::from_min_size(pos2(100.0, 100.0), vec2(40.0, 20.0));
        let cut = Shape::line_segment(
            [pos2(90.0, 110.0), pos2(200.0, 110.0)],
            Stroke::new(1.0, Color32::WHITE),
        );
        let mut shapes = vec![
            clipped(label, cut),
            clipped(window, rect((105.0, 104.0), 10.0)),
            clipped(window, rect((400.0, 400.0), 10.0)),
        ];
        share_clip_rects(&mut shapes, window);
        assert_eq!(shapes[0].clip_rect, label);
        assert_eq!(shapes[1].clip_rect, label);
        assert_eq!(shapes[2].clip_rect, window);
    }
}
