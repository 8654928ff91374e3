//! The splash: two diamonds, indigo and pink, change places twice; then the pink one falls and
//! the editor appears as it lands. About two seconds; a click or a key skips it.

use egui::{Color32, Id, LayerId, Order, Pos2, Shape, Stroke, Vec2};

use crate::canvas::{INDIGO, PINK};

/// Seconds the splash lasts.
pub const DURATION: f64 = 2.0;

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
    let fall = phase(t, 1.4, 1.9);
    (indigo, pink, fall)
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
        // The backdrop fades out as the pink diamond lands, so the editor appears under it.
        let fade = 1.0 - phase(t, 1.75, DURATION);
        painter.rect_filled(
            screen,
            0.0,
            Color32::from_rgb(0x0e, 0x0b, 0x16).gamma_multiply(fade),
        );
        let center = screen.center();
        let spread = 70.0;
        let (indigo, pink, fall) = positions(t, center, spread);
        let appear = smooth(phase(t, 0.0, 0.2));
        let radius = 38.0 * appear;
        painter.add(diamond(indigo, radius, INDIGO.gamma_multiply(fade)));
        let drop = fall * fall * (screen.bottom() - center.y + 60.0);
        painter.add(diamond(
            pink + Vec2::new(0.0, drop),
            radius,
            PINK.gamma_multiply(1.0 - fall * 0.3),
        ));
        painter.text(
            center + Vec2::new(0.0, 120.0),
            egui::Align2::CENTER_CENTER,
            "VEETANCE",
            egui::FontId::proportional(34.0),
            Color32::from_gray(230).gamma_multiply(appear * fade),
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
        let (i2, p2, f2) = positions(1.35, c, 70.0);
        assert!(i2.x < p2.x && f2 == 0.0, "second swap");
        let (_, _, f3) = positions(1.95, c, 70.0);
        assert_eq!(f3, 1.0);
    }
}
