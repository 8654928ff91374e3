//! The splash: two diamonds, indigo and pink, change places twice; then the pink one falls, and
//! where it lands the backdrop opens through a growing diamond-shaped hole that shows the editor
//! under it, until the hole takes the whole window. Two seconds; a click or a key skips it.
//!
//! The backdrop with its hole is drawn as four convex pieces, one per quadrant around the hole's
//! centre, each the quadrant less the hole ([`backdrop_pieces`]), joined into one mesh so no seam
//! shows between them; a pink ring along the hole's edge hides the mesh's hard edge.

use egui::epaint::Mesh;
use egui::{Color32, Id, LayerId, Order, Pos2, Rect, Shape, Stroke, Vec2};

use crate::canvas::{INDIGO, PINK};

/// Seconds the splash lasts.
pub const DURATION: f64 = 2.0;
/// When the pink diamond starts and ends its fall.
pub const FALL: (f64, f64) = (1.3, 1.65);
/// When the hole opens: just before the pink diamond lands, to the end.
pub const REVEAL: (f64, f64) = (1.6, DURATION);
/// The diamonds' half-diagonal, in points.
const RADIUS: f32 = 38.0;
const BACKDROP: Color32 = Color32::from_rgb(0x0e, 0x0b, 0x16);

#[derive(Debug, Default)]
pub struct Splash {
    pub(crate) started: Option<f64>,
    /// Holds the splash at a time (for screenshots): `Some(t)` draws frame `t` forever.
    pub hold_at: Option<f64>,
}

/// Eases 0..1 in and out.
fn smooth(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// The fraction of `t` through `[a, b]`.
fn phase(t: f64, a: f64, b: f64) -> f32 {
    ((t - a) / (b - a)).clamp(0.0, 1.0) as f32
}

fn diamond(center: Pos2, radius: f32, color: Color32) -> Shape {
    Shape::convex_polygon(
        vec![
            center + Vec2::new(0.0, -radius),
            center + Vec2::new(radius, 0.0),
            center + Vec2::new(0.0, radius),
            center + Vec2::new(-radius, 0.0),
        ],
        color,
        Stroke::NONE,
    )
}

/// Where the two diamonds are at time `t`: (indigo, pink, pink's fall in 0..1).
pub fn positions(t: f64, center: Pos2, spread: f32) -> (Pos2, Pos2, f32) {
    let left = center - Vec2::new(spread, 0.0);
    let right = center + Vec2::new(spread, 0.0);
    // A swap moves both along half circles around the centre, one above, one below.
    let swap = |u: f32, from: Pos2, to: Pos2, above: bool| {
        let angle = std::f32::consts::PI * smooth(u);
        let mid = from.lerp(to, 0.5);
        let r = (to.x - from.x) / 2.0;
        let y = angle.sin() * spread * 0.8 * if above { -1.0 } else { 1.0 };
        Pos2::new(mid.x - r * angle.cos(), mid.y + y)
    };
    let s1 = phase(t, 0.2, 0.7);
    let s2 = phase(t, 0.8, 1.3);
    let (indigo, pink) = if s1 < 1.0 {
        (swap(s1, left, right, true), swap(s1, right, left, false))
    } else {
        (swap(s2, right, left, true), swap(s2, left, right, false))
    };
    let fall = phase(t, FALL.0, FALL.1);
    (indigo, pink, fall)
}

/// Where the pink diamond lands on `screen`: straight below its place after the swaps.
pub fn landing(screen: Rect, spread: f32) -> Pos2 {
    let center = screen.center();
    Pos2::new(
        center.x + spread,
        center.y + (screen.height() * 0.22).min(200.0),
    )
}

/// How far the hole is open at `t`: its half-diagonal, from 0 before [`REVEAL`] to one that
/// takes in every corner of `screen` at its end.
pub fn hole_radius(t: f64, screen: Rect, center: Pos2) -> f32 {
    let open = phase(t, REVEAL.0, REVEAL.1);
    if open <= 0.0 {
        return 0.0;
    }
    // A diamond holds the points within its radius in |dx| + |dy|: the farthest corner sets it.
    let cover = [
        screen.left_top(),
        screen.right_top(),
        screen.left_bottom(),
        screen.right_bottom(),
    ]
    .iter()
    .map(|c| (c.x - center.x).abs() + (c.y - center.y).abs())
    .fold(0.0, f32::max);
    // Eased in and out; the linear point keeps it growing from the first frame and ends it a
    // point past the farthest corner.
    cover * smooth(open) + open
}

/// The backdrop on `screen` less a diamond hole of half-diagonal `radius` centred at `center`:
/// convex polygons, one for each quadrant around `center` that the hole does not swallow whole.
pub fn backdrop_pieces(screen: Rect, center: Pos2, radius: f32) -> Vec<Vec<Pos2>> {
    let mut pieces = Vec::new();
    for (sx, sy) in [(-1.0f32, -1.0f32), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
        let x = if sx < 0.0 {
            screen.left()..=center.x.clamp(screen.left(), screen.right())
        } else {
            center.x.clamp(screen.left(), screen.right())..=screen.right()
        };
        let y = if sy < 0.0 {
            screen.top()..=center.y.clamp(screen.top(), screen.bottom())
        } else {
            center.y.clamp(screen.top(), screen.bottom())..=screen.bottom()
        };
        let quadrant = Rect::from_x_y_ranges(x, y);
        if quadrant.width() <= 0.0 || quadrant.height() <= 0.0 {
            continue;
        }
        // Outside the hole in this quadrant: sx (x - cx) + sy (y - cy) >= radius.
        let outside = |p: Pos2| sx * (p.x - center.x) + sy * (p.y - center.y) - radius;
        let corners = [
            quadrant.left_top(),
            quadrant.right_top(),
            quadrant.right_bottom(),
            quadrant.left_bottom(),
        ];
        // Clip the quadrant by that half-plane (one step of Sutherland–Hodgman).
        let mut polygon = Vec::with_capacity(5);
        for i in 0..4 {
            let (a, b) = (corners[i], corners[(i + 1) % 4]);
            let (da, db) = (outside(a), outside(b));
            if da >= 0.0 {
                polygon.push(a);
            }
            if (da >= 0.0) != (db >= 0.0) {
                polygon.push(a + (b - a) * (da / (da - db)));
            }
        }
        if polygon.len() >= 3 {
            pieces.push(polygon);
        }
    }
    pieces
}

/// The pieces as one mesh of `color` (fans of triangles), without anti-aliased edges, which
/// would leave faint seams where two pieces meet.
fn pieces_mesh(pieces: &[Vec<Pos2>], color: Color32) -> Mesh {
    let mut mesh = Mesh::default();
    for piece in pieces {
        let first = mesh.vertices.len() as u32;
        for p in piece {
            mesh.colored_vertex(*p, color);
        }
        for i in 1..piece.len() as u32 - 1 {
            mesh.add_triangle(first, first + i, first + i + 1);
        }
    }
    mesh
}

impl Splash {
    /// Draws the splash over everything; returns true when it is over.
    pub fn show(&mut self, ctx: &egui::Context) -> bool {
        let now = ctx.input(|i| i.time);
        let started = *self.started.get_or_insert(now);
        let t = self.hold_at.unwrap_or(now - started);
        let skipped = self.hold_at.is_none()
            && ctx.input(|i| {
                i.pointer.any_pressed()
                    || i.events
                        .iter()
                        .any(|e| matches!(e, egui::Event::Key { pressed: true, .. }))
            });
        if skipped || t >= DURATION {
            return true;
        }
        let screen = ctx.content_rect();
        let painter =
            ctx.layer_painter(LayerId::new(Order::Foreground, Id::new("veetance-splash")));
        let spread = 70.0;
        let center = screen.center();
        let land = landing(screen, spread);
        let hole = hole_radius(t, screen, land);
        let open = phase(t, REVEAL.0, REVEAL.1);
        // The backdrop, with the editor showing through the hole where the pink diamond lands.
        painter.add(Shape::mesh(pieces_mesh(
            &backdrop_pieces(screen, land, hole),
            BACKDROP,
        )));
        let (indigo, pink, fall) = positions(t, center, spread);
        let appear = smooth(phase(t, 0.0, 0.2));
        let radius = RADIUS * appear;
        let fade = 1.0 - open;
        painter.add(diamond(
            indigo,
            radius,
            INDIGO.gamma_multiply((1.0 - 2.5 * open).max(0.0)),
        ));
        let pink_at = pink.lerp(land, fall * fall);
        painter.add(diamond(
            pink_at,
            radius,
            PINK.gamma_multiply((1.0 - 3.0 * open).max(0.0)),
        ));
        if hole > 0.0 {
            // The pink diamond's edge, opened into the hole's rim.
            let rim = [
                land + Vec2::new(0.0, -hole),
                land + Vec2::new(hole, 0.0),
                land + Vec2::new(0.0, hole),
                land + Vec2::new(-hole, 0.0),
            ];
            painter.add(Shape::closed_line(
                rim.to_vec(),
                Stroke::new(3.0, PINK.gamma_multiply(fade)),
            ));
        }
        painter.text(
            center + Vec2::new(0.0, 120.0),
            egui::Align2::CENTER_CENTER,
            "VEETANCE",
            egui::FontId::proportional(34.0),
            Color32::from_gray(230).gamma_multiply(appear * (1.0 - phase(t, FALL.0, REVEAL.0))),
        );
        ctx.request_repaint();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diamonds_change_places_twice_then_pink_falls() {
        let c = Pos2::new(0.0, 0.0);
        let (i0, p0, f0) = positions(0.0, c, 70.0);
        assert!(i0.x < p0.x && f0 == 0.0);
        let (i1, p1, _) = positions(0.75, c, 70.0);
        assert!(i1.x > p1.x, "first swap");
        let (i2, p2, f2) = positions(FALL.0, c, 70.0);
        assert!(i2.x < p2.x && f2 == 0.0, "second swap");
        let (_, _, f3) = positions(FALL.1, c, 70.0);
        assert_eq!(f3, 1.0);
        assert!(REVEAL.0 < FALL.1 && REVEAL.1 == DURATION);
    }

    /// Twice the area of a polygon (shoelace).
    fn area(polygon: &[Pos2]) -> f32 {
        let n = polygon.len();
        (0..n)
            .map(|i| {
                let (a, b) = (polygon[i], polygon[(i + 1) % n]);
                a.x * b.y - b.x * a.y
            })
            .sum::<f32>()
            .abs()
            / 2.0
    }

    fn contains(polygon: &[Pos2], p: Pos2) -> bool {
        // Convex: p is on the same side of every edge.
        let n = polygon.len();
        let sides: Vec<f32> = (0..n)
            .map(|i| {
                let (a, b) = (polygon[i], polygon[(i + 1) % n]);
                (b - a).x * (p - a).y - (b - a).y * (p - a).x
            })
            .collect();
        sides.iter().all(|s| *s >= -1e-3) || sides.iter().all(|s| *s <= 1e-3)
    }

    #[test]
    fn the_backdrop_covers_the_window_less_the_diamond_hole() {
        let screen = Rect::from_min_size(Pos2::ZERO, Vec2::new(1600.0, 1000.0));
        let center = Pos2::new(870.0, 720.0);
        let radius = 150.0;
        let pieces = backdrop_pieces(screen, center, radius);
        assert_eq!(pieces.len(), 4);
        // The pieces' area is the window's less the hole's (2 r², all of it inside).
        let total: f32 = pieces.iter().map(|p| area(p)).sum();
        let expected = 1600.0 * 1000.0 - 2.0 * radius * radius;
        assert!((total - expected).abs() < 1.0, "{total} vs {expected}");
        // Sample the window: inside the hole nothing covers, outside exactly one piece does.
        for yi in 0..50 {
            for xi in 0..80 {
                let p = Pos2::new(xi as f32 * 20.0 + 3.3, yi as f32 * 20.0 + 7.7);
                let l1 = (p.x - center.x).abs() + (p.y - center.y).abs();
                let covered = pieces.iter().filter(|piece| contains(piece, p)).count();
                if l1 < radius - 0.5 {
                    assert_eq!(covered, 0, "{p:?} is in the hole");
                } else if l1 > radius + 0.5 {
                    assert_eq!(covered, 1, "{p:?} is outside the hole");
                }
            }
        }
        // A hole that reaches past an edge leaves less; one that takes every corner, nothing.
        let near_edge = backdrop_pieces(screen, Pos2::new(1550.0, 500.0), 200.0);
        let total: f32 = near_edge.iter().map(|p| area(p)).sum();
        // The part of the diamond past x = 1600 is a triangle of half-diagonal 150.
        let inside = 2.0 * 200.0 * 200.0 - 150.0 * 150.0;
        assert!((total - (1600.0 * 1000.0 - inside)).abs() < 1.0, "{total}");
        assert!(backdrop_pieces(screen, center, 2000.0).is_empty());
    }

    #[test]
    fn the_hole_opens_where_pink_lands_and_takes_the_window_by_the_end() {
        let screen = Rect::from_min_size(Pos2::ZERO, Vec2::new(1600.0, 1000.0));
        let land = landing(screen, 70.0);
        // Pink ends its fall on the landing point, and the hole is centred there.
        let (_, pink, fall) = positions(FALL.1, screen.center(), 70.0);
        assert_eq!(fall, 1.0);
        assert_eq!(pink.x, land.x);
        assert!(screen.contains(land));
        // Closed until the reveal, then growing, and past every corner at the end.
        assert_eq!(hole_radius(REVEAL.0 - 0.01, screen, land), 0.0);
        let mut last = 0.0;
        for i in 1..=20 {
            let t = REVEAL.0 + (REVEAL.1 - REVEAL.0) * i as f64 / 20.0;
            let r = hole_radius(t, screen, land);
            assert!(r > last, "t {t}: {r} after {last}");
            last = r;
        }
        assert!(backdrop_pieces(screen, land, hole_radius(DURATION, screen, land)).is_empty());
        // Halfway through the reveal the editor shows through a hole, not all of it.
        let mid = (REVEAL.0 + REVEAL.1) / 2.0;
        let pieces = backdrop_pieces(screen, land, hole_radius(mid, screen, land));
        let covered: f32 = pieces.iter().map(|p| area(p)).sum();
        assert!(covered > 0.2 * 1.6e6 && covered < 0.95 * 1.6e6, "{covered}");
    }
}
