//! The generation overlay, painted over the canvas while a run is in progress: the canvas
//! blurred behind it, the live preview resolving from noise to the image as the sampler
//! advances, a quote about art that changes every eight seconds, and the run's progress.
//!
//! The blur is a captured frame of the window, blurred on the CPU ([`crate::backdrop`]), under
//! a dark tint that keeps the quote legible. Before the first capture has been blurred, and
//! where no frame can be read back (the `egui_kittest` harness has no renderer), a stack of
//! translucent veils mutes the canvas instead; that fallback is not a blur.

use egui::{Align2, Color32, FontId, Id, LayerId, Order, Rect, Stroke, Vec2};

use crate::app::VeetanceApp;
use crate::backdrop::BackdropFrame;
use crate::canvas::{INDIGO, PINK};
use crate::quotes::quote_at;

/// Seconds each quote stays.
pub const QUOTE_SECONDS: f64 = 8.0;

/// The dark violet laid over the blurred canvas so the quote and progress read on any graph.
const BACKDROP_TINT: Color32 = crate::backdrop::TINT;

impl VeetanceApp {
    pub(crate) fn overlay(&mut self, ctx: &egui::Context, rect: Rect) {
        let Some(run) = &self.run.active else {
            return;
        };
        let elapsed = run.started.elapsed().as_secs_f64();
        let quote = quote_at(elapsed, QUOTE_SECONDS, run.quote_offset);
        let progress = self.run.progress();
        let backdrop = self.backdrop.frame(ctx, rect, self.transform);
        let painter =
            ctx.layer_painter(LayerId::new(Order::Foreground, Id::new("veetance-overlay")));
        let painter = painter.with_clip_rect(rect);
        let blurred = match backdrop {
            // This frame is read back to be blurred: the overlay must not be in it.
            BackdropFrame::Capturing => {
                ctx.request_repaint();
                return;
            }
            BackdropFrame::Fallback => 0.0,
            BackdropFrame::Blurred {
                texture,
                rect: at,
                opacity,
            } => {
                let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                // Where the canvas has moved since the capture, the uncovered strip is dark.
                // Faded in, the frame hides the canvas: the tint goes only where it does not
                // reach (each layer over the whole canvas is a pass over its every pixel on a
                // CPU renderer). The frame carries its own tint (`backdrop::TINT_AMOUNT`).
                let under = if opacity < 1.0 {
                    vec![rect]
                } else {
                    crate::paint::subtract(rect, at)
                };
                for r in under {
                    painter.rect_filled(r, 0.0, BACKDROP_TINT.gamma_multiply(opacity));
                }
                painter.image(texture, at, uv, Color32::WHITE.gamma_multiply(opacity));
                opacity
            }
        };
        // The fallback veils, fading out as the blurred frame fades in: a dark base and two
        // tinted layers inset a little, for a soft edge.
        let veil = 1.0 - blurred;
        if veil > 0.0 {
            painter.rect_filled(
                rect,
                0.0,
                Color32::from_black_alpha(120).gamma_multiply(veil),
            );
            painter.rect_filled(
                rect.shrink(6.0),
                12.0,
                Color32::from_rgba_unmultiplied(20, 12, 34, 70).gamma_multiply(veil),
            );
            painter.rect_filled(
                rect.shrink(14.0),
                18.0,
                Color32::from_rgba_unmultiplied(30, 18, 44, 50).gamma_multiply(veil),
            );
        }

        let side = (rect.height() * 0.5)
            .min(rect.width() * 0.5)
            .clamp(160.0, 420.0);
        let image_rect = Rect::from_center_size(
            rect.center() - Vec2::new(0.0, side * 0.2),
            Vec2::splat(side),
        );
        painter.rect_filled(image_rect.expand(4.0), 8.0, Color32::from_black_alpha(160));
        let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        let preview = self
            .run
            .preview
            .as_ref()
            .and_then(|(node, _)| self.run.images.get(node).map(|t| (node.clone(), t.id())));
        let step_progress = match &preview {
            Some((node, _)) => match self.run.nodes.get(node) {
                Some(crate::canvas::NodeRun::Running { step, total }) if *total > 0 => {
                    *step as f32 / *total as f32
                }
                Some(crate::canvas::NodeRun::Done { .. }) => 1.0,
                _ => 0.0,
            },
            None => 0.0,
        };
        if let Some((_, texture)) = preview {
            painter.image(texture, image_rect, uv, Color32::WHITE);
        }
        // Noise over the preview, thinning as the sampler advances: the image resolves out of it.
        let noise = self.noise_texture(ctx);
        let noise_alpha = (1.0 - step_progress).clamp(0.0, 1.0);
        if noise_alpha > 0.0 {
            let shift = (elapsed * 7.0).fract() as f32;
            let uv_noise = Rect::from_min_size(egui::pos2(shift, shift * 0.5), Vec2::splat(1.0));
            painter.image(
                noise,
                image_rect,
                uv_noise,
                Color32::WHITE.gamma_multiply(noise_alpha * 0.85),
            );
        }
        painter.rect_stroke(
            image_rect.expand(4.0),
            8.0,
            Stroke::new(1.5, PINK.gamma_multiply(0.7)),
            egui::StrokeKind::Outside,
        );

        // Progress.
        let bar = Rect::from_min_size(
            egui::pos2(image_rect.left(), image_rect.bottom() + 18.0),
            Vec2::new(image_rect.width(), 6.0),
        );
        painter.rect_filled(bar, 3.0, Color32::from_white_alpha(30));
        let mut done = bar;
        done.set_width(bar.width() * progress);
        painter.rect_filled(done, 3.0, INDIGO.lerp_to_gamma(PINK, progress));

        // The quote.
        let wrap = (rect.width() * 0.6).max(240.0);
        let text_color = Color32::from_gray(235);
        let galley = painter.layout(
            format!("“{}”", quote.text),
            FontId::proportional(20.0),
            text_color,
            wrap,
        );
        let quote_pos = egui::pos2(rect.center().x - galley.size().x / 2.0, bar.bottom() + 22.0);
        let quote_height = galley.size().y;
        painter.galley(quote_pos, galley, text_color);
        let attribution = match quote.source {
            Some(source) => format!("— {}, {}", quote.author, source),
            None => format!("— {}", quote.author),
        };
        painter.text(
            egui::pos2(rect.center().x, quote_pos.y + quote_height + 16.0),
            Align2::CENTER_CENTER,
            attribution,
            FontId::proportional(14.0),
            Color32::from_gray(180),
        );
        ctx.request_repaint_after(std::time::Duration::from_millis(50));
    }

    fn noise_texture(&mut self, ctx: &egui::Context) -> egui::TextureId {
        self.noise
            .get_or_insert_with(|| {
                let n = 96;
                let mut state = 0x9e37_79b9_u64;
                let mut pixels = Vec::with_capacity(n * n);
                for _ in 0..n * n {
                    state = crate::canvas::splitmix(state);
                    let v = (state & 0xff) as u8;
                    let tint = ((state >> 8) & 0x3f) as u8;
                    pixels.push(Color32::from_rgb(
                        v,
                        v.saturating_sub(tint),
                        v.saturating_add(tint / 2),
                    ));
                }
                let image = egui::ColorImage::new([n, n], pixels);
                let options = egui::TextureOptions {
                    wrap_mode: egui::TextureWrapMode::Repeat,
                    ..egui::TextureOptions::NEAREST
                };
                ctx.load_texture("veetance-noise", image, options)
            })
            .id()
    }
}
