//! What the editor hands the renderer, arranged to be cheaper to draw.
//!
//! egui's tessellator starts a new mesh, and the glow painter a new draw call, whenever the
//! clip rectangle changes from one shape to the next. Every widget of a node lies in clip
//! rectangles of its own (header, pins, body), so a 60-node canvas made about 470 draw calls a
//! frame, and each costs llvmpipe (the CPU renderer) time to set up and to rasterize apart.
//! Most shapes lie wholly inside their clip rectangle, where it clips nothing: such a shape
//! may take any clip rectangle that holds it, and [`share_clip_rects`] gives it the one of the
//! shape before it (or the whole window), so runs of shapes land in one mesh. What is drawn
//! does not change.
//!
//! [`grid_mesh`] draws the canvas grid as one mesh of pixel-aligned lines, without the
//! anti-aliasing fringe of egui's line segments. docs/editor.md ("Frame times") has the
//! figures.

use egui::epaint::{ClippedShape, Mesh, RectShape, Shape};
use egui::{Color32, Rect};

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

/// Splits nested shapes (`Shape::Vec`, as `egui::Frame` paints a shadow and its frame) into
/// clipped shapes of their own, in drawing order.
pub fn flatten(shapes: Vec<ClippedShape>) -> Vec<ClippedShape> {
    let mut out = Vec::with_capacity(shapes.len());
    let mut push = |clip_rect, shape| push_flat(&mut out, clip_rect, shape);
    for ClippedShape { clip_rect, shape } in shapes {
        push(clip_rect, shape);
    }
    out
}

fn push_flat(out: &mut Vec<ClippedShape>, clip_rect: Rect, shape: Shape) {
    match shape {
        Shape::Vec(inner) => {
            for shape in inner {
                push_flat(out, clip_rect, shape);
            }
        }
        Shape::Noop => {}
        shape => out.push(ClippedShape { clip_rect, shape }),
    }
}

/// The part of a shape's rectangle that an opaque rectangle hides: its fill is opaque and
/// untextured, its corners' rounding left out.
fn opaque_interior(shape: &Shape) -> Option<Rect> {
    let Shape::Rect(r) = shape else {
        return None;
    };
    let plain = r.fill.a() == 255 && r.blur_width == 0.0 && r.brush.is_none() && r.angle == 0.0;
    let c = r.corner_radius;
    plain.then(|| r.rect.shrink(f32::from(c.nw.max(c.ne).max(c.sw).max(c.se))))
}

/// `a` less `b`, as up to four rectangles (bands above, below, left and right of `b`).
pub fn subtract(a: Rect, b: Rect) -> Vec<Rect> {
    let b = a.intersect(b);
    if !b.is_positive() {
        return vec![a];
    }
    [
        Rect::from_min_max(a.min, egui::pos2(a.max.x, b.min.y)),
        Rect::from_min_max(egui::pos2(a.min.x, b.max.y), a.max),
        Rect::from_min_max(egui::pos2(a.min.x, b.min.y), egui::pos2(b.min.x, b.max.y)),
        Rect::from_min_max(egui::pos2(b.max.x, b.min.y), egui::pos2(a.max.x, b.max.y)),
    ]
    .into_iter()
    .filter(|r| r.is_positive())
    .collect()
}

/// egui's shadow (a rectangle blurred by `blur_width`: its colour fades linearly to nothing
/// across a band `blur_width` wide centred on its edge) as a mesh of at most 24 triangles: the
/// solid inside, less the part `covered` by an opaque shape drawn right after it, and the fade
/// as four side quads and four corner quads. egui tessellates it as a rounded polygon filled
/// as a fan from one corner, whose long thin triangles each cross the whole rectangle:
/// llvmpipe, the CPU renderer, shades a thin triangle block by block, so a frame's 50 node
/// shadows cost about as much as everything else on the canvas. The fade's corners are
/// squared off rather than round, a difference of a few pixels at a few percent of opacity.
/// `None` when the shape is not a plain blurred rectangle (it is then drawn as egui would).
pub fn shadow_mesh(shadow: &RectShape, covered: Option<Rect>) -> Option<Mesh> {
    let plain = shadow.brush.is_none() && shadow.angle == 0.0 && shadow.stroke.is_empty();
    // egui cannot blur more than the smallest side; it then draws something else.
    let blur = shadow.blur_width;
    if !plain || blur <= 0.0 || blur >= shadow.rect.size().min_elem() - 0.1 {
        return None;
    }
    let color = shadow.fill;
    let inner = shadow.rect.shrink(blur / 2.0);
    let outer = shadow.rect.expand(blur / 2.0);
    let mut mesh = Mesh::default();
    let solid = match covered {
        Some(c) => subtract(inner, c),
        None => vec![inner],
    };
    for r in solid {
        mesh.add_colored_rect(r, color);
    }
    let clear = Color32::TRANSPARENT;
    // One quad: corners in order, each with its colour.
    let mut quad = |corners: [(egui::Pos2, Color32); 4]| {
        let base = mesh.vertices.len() as u32;
        for (pos, c) in corners {
            mesh.colored_vertex(pos, c);
        }
        mesh.add_triangle(base, base + 1, base + 2);
        mesh.add_triangle(base, base + 2, base + 3);
    };
    let (i, o) = (inner, outer);
    let p = egui::pos2;
    // Sides: solid on the inner edge, clear on the outer.
    quad([
        (i.left_top(), color),
        (i.right_top(), color),
        (p(i.max.x, o.min.y), clear),
        (p(i.min.x, o.min.y), clear),
    ]);
    quad([
        (i.left_bottom(), color),
        (i.right_bottom(), color),
        (p(i.max.x, o.max.y), clear),
        (p(i.min.x, o.max.y), clear),
    ]);
    quad([
        (i.left_top(), color),
        (i.left_bottom(), color),
        (p(o.min.x, i.max.y), clear),
        (p(o.min.x, i.min.y), clear),
    ]);
    quad([
        (i.right_top(), color),
        (i.right_bottom(), color),
        (p(o.max.x, i.max.y), clear),
        (p(o.max.x, i.min.y), clear),
    ]);
    // Corners: solid at the inner corner only, split along the diagonal through it.
    for (corner, outer_corner) in [
        (i.left_top(), o.left_top()),
        (i.right_top(), o.right_top()),
        (i.left_bottom(), o.left_bottom()),
        (i.right_bottom(), o.right_bottom()),
    ] {
        quad([
            (corner, color),
            (p(outer_corner.x, corner.y), clear),
            (outer_corner, clear),
            (p(corner.x, outer_corner.y), clear),
        ]);
    }
    Some(mesh)
}

/// Replaces each shadow (a blurred rectangle) by [`shadow_mesh`], leaving out the part the
/// opaque shape drawn right after it (a frame's fill, as `egui::Frame` paints them) hides.
pub fn cheaper_shadows(shapes: &mut [ClippedShape]) {
    for k in 0..shapes.len() {
        let Shape::Rect(r) = &shapes[k].shape else {
            continue;
        };
        if r.blur_width <= 0.0 {
            continue;
        }
        let covered = shapes
            .get(k + 1)
            .filter(|next| next.clip_rect.contains_rect(shapes[k].clip_rect))
            .and_then(|next| opaque_interior(&next.shape));
        if let Some(mesh) = shadow_mesh(r, covered) {
            shapes[k].shape = Shape::mesh(mesh);
        }
    }
}

/// Runs [`cheaper_shadows`] and [`share_clip_rects`] on every frame's shapes, before eframe
/// tessellates them.
#[derive(Debug, Default)]
pub struct CheaperFrames;

impl egui::Plugin for CheaperFrames {
    fn debug_name(&self) -> &'static str {
        "veetance-cheaper-frames"
    }

    fn output_hook(&mut self, ctx: &egui::Context, output: &mut egui::FullOutput) {
        let mut shapes = flatten(std::mem::take(&mut output.shapes));
        cheaper_shadows(&mut shapes);
        share_clip_rects(&mut shapes, ctx.viewport_rect());
        output.shapes = shapes;
    }
}

/// The grid's lines are never closer than this on screen (points): zoomed out, every other line
/// goes, so the grid does not turn into a grey haze.
pub const GRID_MIN_SPACING: f32 = 16.0;

/// The canvas grid over `viewport` (graph coordinates, drawn through `to_screen`): one mesh of
/// untextured quads, each line a whole number of physical pixels wide and placed on pixel
/// boundaries, with the stroke's colour weakened by how much of a pixel the stroke covers (as
/// egui draws a hairline). No anti-aliasing fringe, so it rasterizes about half the pixels
/// and a twentieth of the triangles of egui-snarl's grid of line segments, and its lines are
/// as crisp at every pan offset. The spacing doubles until the lines are at least
/// [`GRID_MIN_SPACING`] apart on screen.
pub fn grid_mesh(
    viewport: egui::Rect,
    to_screen: egui::emath::TSTransform,
    spacing: egui::Vec2,
    stroke: egui::Stroke,
    pixels_per_point: f32,
) -> egui::Shape {
    let scale = to_screen.scaling;
    if stroke.is_empty() || scale <= 0.0 || !viewport.is_positive() {
        return egui::Shape::Noop;
    }
    let mut spacing = spacing.max(egui::vec2(1.0, 1.0));
    while spacing.x * scale < GRID_MIN_SPACING {
        spacing.x *= 2.0;
    }
    while spacing.y * scale < GRID_MIN_SPACING {
        spacing.y *= 2.0;
    }
    // Width in physical pixels: at least one, with the colour scaled by the coverage below one.
    let width_px = stroke.width * scale * pixels_per_point;
    let color = stroke.color.gamma_multiply(width_px.min(1.0));
    let width_px = width_px.round().max(1.0);
    let pixel = 1.0 / (scale * pixels_per_point);
    // A graph coordinate snapped to the physical pixel boundary at or left of it.
    let snap = |g: f32, offset: f32| {
        let px = ((g * scale + offset) * pixels_per_point).floor();
        (px / pixels_per_point - offset) / scale
    };
    let mut mesh = egui::Mesh::default();
    let first = (viewport.min.x / spacing.x).ceil() as i64;
    let last = (viewport.max.x / spacing.x).floor() as i64;
    for k in first..=last {
        let x = snap(k as f32 * spacing.x, to_screen.translation.x);
        let r =
            egui::Rect::from_x_y_ranges(x..=x + width_px * pixel, viewport.min.y..=viewport.max.y);
        mesh.add_colored_rect(r, color);
    }
    let first = (viewport.min.y / spacing.y).ceil() as i64;
    let last = (viewport.max.y / spacing.y).floor() as i64;
    for k in first..=last {
        let y = snap(k as f32 * spacing.y, to_screen.translation.y);
        let r =
            egui::Rect::from_x_y_ranges(viewport.min.x..=viewport.max.x, y..=y + width_px * pixel);
        mesh.add_colored_rect(r, color);
    }
    egui::Shape::mesh(mesh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::emath::TSTransform;
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
        let options = egui::epaint::TessellationOptions::default();
        let mut tessellator = egui::epaint::Tessellator::new(1.0, options, [1, 1], Vec::new());
        assert_eq!(tessellator.tessellate_shapes(shapes).len(), 1);
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

    #[test]
    fn grid_lines_sit_on_whole_pixels_at_any_pan_and_thin_out_when_zoomed_out() {
        let stroke = Stroke::new(1.0, Color32::from_gray(60));
        let spacing = vec2(40.0, 40.0);
        for (scale, pan, ppp) in [(0.48, 13.37, 1.0), (1.0, 0.25, 1.0), (0.7, 101.9, 2.0)] {
            let to_screen = TSTransform::new(vec2(pan, -pan), scale);
            let screen = Rect::from_min_size(pos2(0.0, 0.0), vec2(1600.0, 1000.0));
            let viewport = to_screen.inverse() * screen;
            let Shape::Mesh(mesh) = grid_mesh(viewport, to_screen, spacing, stroke, ppp) else {
                panic!("no mesh");
            };
            let on_pixel = |v: f32| ((v * ppp).round() - v * ppp).abs() < 1e-2;
            for quad in mesh.vertices.chunks_exact(4) {
                // add_colored_rect's corners: left top, right top, left bottom, right bottom.
                let (a, c) = (to_screen * quad[0].pos, to_screen * quad[3].pos);
                let vertical = (c.y - a.y).abs() > (c.x - a.x).abs();
                let (lo, hi) = if vertical { (a.x, c.x) } else { (a.y, c.y) };
                assert!(on_pixel(lo) && on_pixel(hi), "{lo} {hi} at {scale} {pan}");
                assert!(((hi - lo) * ppp - (scale * ppp).round().max(1.0)).abs() < 1e-2);
            }
            let lines = mesh.vertices.len() / 4;
            let expected = (1600.0 / (40.0 * scale)) + (1000.0 / (40.0 * scale));
            assert!(
                (lines as f32 - expected).abs() <= 3.0,
                "{lines} vs {expected}"
            );
        }
        // At 20% a 40-point grid would be 8 px apart: every other line goes (16 px).
        let to_screen = TSTransform::new(vec2(0.0, 0.0), 0.2);
        let viewport =
            to_screen.inverse() * Rect::from_min_size(pos2(0.0, 0.0), vec2(1600.0, 1000.0));
        let Shape::Mesh(mesh) = grid_mesh(viewport, to_screen, spacing, stroke, 1.0) else {
            panic!("no mesh");
        };
        assert!((mesh.vertices.len() / 4) as f32 <= 1600.0 / 16.0 + 1000.0 / 16.0 + 2.0);
    }

    #[test]
    fn a_shadow_mesh_spans_what_egui_blurs_in_a_few_triangles_less_the_hidden_part() {
        let node = Rect::from_min_size(pos2(100.0, 100.0), vec2(150.0, 80.0));
        let shadow = egui::epaint::Shadow {
            offset: [5, 10],
            blur: 8,
            spread: 0,
            color: Color32::from_black_alpha(96),
        }
        .as_shape(node, 3);
        let options = egui::epaint::TessellationOptions::default();
        let mut tessellator = egui::epaint::Tessellator::new(1.0, options, [1, 1], Vec::new());
        let mut egui_mesh = Mesh::default();
        tessellator.tessellate_rect(&shadow, &mut egui_mesh);
        let ours = shadow_mesh(&shadow, Some(node.shrink(3.0))).unwrap();
        let (a, b) = (egui_mesh.calc_bounds(), ours.calc_bounds());
        assert!((a.min - b.min).length() < 1.0 && (a.max - b.max).length() < 1.0);
        assert!(ours.indices.len() / 3 <= 24);
        assert!(egui_mesh.indices.len() > 2 * ours.indices.len());
        // Nothing of it under the middle of the node, which hides it.
        let centre = node.center();
        let inside = |t: &[u32]| {
            let [p, q, r] = [0, 1, 2].map(|i| ours.vertices[t[i] as usize].pos);
            let side = |u: egui::Pos2, v: egui::Pos2| {
                (v - u).x * (centre - u).y - (v - u).y * (centre - u).x
            };
            let (d1, d2, d3) = (side(p, q), side(q, r), side(r, p));
            (d1 >= 0.0 && d2 >= 0.0 && d3 >= 0.0) || (d1 <= 0.0 && d2 <= 0.0 && d3 <= 0.0)
        };
        assert!(!ours.indices.chunks_exact(3).any(inside));
    }
}
