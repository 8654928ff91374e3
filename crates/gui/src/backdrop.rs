//! The blurred backdrop of the generation overlay: the canvas as it was when the run started,
//! blurred by a gaussian of about [`BLUR_SIGMA_PX`] pixels.
//!
//! egui cannot read back what it has drawn within a frame, so the backdrop comes from the
//! window itself: `ViewportCommand::Screenshot` reads a frame back (with eframe's glow
//! renderer, the frame after the one that asks), the overlay is not painted in those two
//! frames, and the reply (`Event::Screenshot`, in a later frame's input) is cropped to the
//! canvas, [`downscale`]d by [`DOWNSCALE`] and blurred on a worker thread ([`blur_frame`]),
//! then uploaded as a texture. The blur is three box passes whose widths are chosen so their
//! variances add up to the gaussian's ([`box_radii`]); each pass costs the same whatever its
//! width (a running sum).
//!
//! A capture is taken when the overlay appears; again when the canvas's size has changed and
//! held for a quarter second; and when the user has panned or zoomed the canvas under the
//! overlay and stopped for half a second (at most once a second). Each costs two frames
//! without the overlay. Until a new one arrives the old texture follows the canvas transform.
//! What changes inside the canvas during a run (node states, previews on nodes) brings no new
//! capture: under a 24 px blur it does not show, and each capture would flicker. Where no
//! frame can be read back (the `egui_kittest` harness without a renderer), the overlay keeps
//! its fallback of stacked veils.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use egui::emath::TSTransform;
use egui::{Color32, ColorImage, Rect};

/// How far the backdrop is blurred: the gaussian's standard deviation, in window pixels.
pub const BLUR_SIGMA_PX: f32 = 24.0;
/// The screenshot is averaged over blocks of this many pixels a side before blurring.
pub const DOWNSCALE: usize = 4;
/// Box passes approximating the gaussian (three come within a few percent of its shape).
pub const BOX_PASSES: usize = 3;

/// An image of linear `f32` RGBA pixels (premultiplied, as egui's `Color32`), row by row.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbaImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[f32; 4]>,
}

impl RgbaImage {
    /// An image of one colour.
    pub fn filled(width: usize, height: usize, pixel: [f32; 4]) -> Self {
        RgbaImage {
            width,
            height,
            pixels: vec![pixel; width * height],
        }
    }

    pub fn get(&self, x: usize, y: usize) -> [f32; 4] {
        self.pixels[y * self.width + x]
    }

    pub fn set(&mut self, x: usize, y: usize, pixel: [f32; 4]) {
        self.pixels[y * self.width + x] = pixel;
    }

    /// To egui's 8-bit image (values clamped to 0..=255).
    pub fn to_color_image(&self) -> ColorImage {
        let to_u8 = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        let pixels = self
            .pixels
            .iter()
            .map(|p| {
                Color32::from_rgba_premultiplied(to_u8(p[0]), to_u8(p[1]), to_u8(p[2]), to_u8(p[3]))
            })
            .collect();
        ColorImage::new([self.width, self.height], pixels)
    }
}

/// The part `crop` (`[x, y, width, height]` in pixels, clipped to the image) of `image`,
/// averaged over `factor`×`factor` blocks. Blocks cut by the crop's right or bottom edge average
/// the pixels they hold. An empty crop gives an empty image.
pub fn downscale(image: &ColorImage, crop: [usize; 4], factor: usize) -> RgbaImage {
    let factor = factor.max(1);
    let [w, h] = image.size;
    let x0 = crop[0].min(w);
    let y0 = crop[1].min(h);
    let x1 = (crop[0].saturating_add(crop[2])).min(w);
    let y1 = (crop[1].saturating_add(crop[3])).min(h);
    let out_w = (x1 - x0).div_ceil(factor);
    let out_h = (y1 - y0).div_ceil(factor);
    let mut sums = vec![[0.0f32; 4]; out_w * out_h];
    let mut counts = vec![0u32; out_w * out_h];
    for y in y0..y1 {
        let row = &image.pixels[y * w..(y + 1) * w];
        let oy = (y - y0) / factor;
        for (x, c) in row.iter().enumerate().take(x1).skip(x0) {
            let o = oy * out_w + (x - x0) / factor;
            let s = &mut sums[o];
            s[0] += c.r() as f32;
            s[1] += c.g() as f32;
            s[2] += c.b() as f32;
            s[3] += c.a() as f32;
            counts[o] += 1;
        }
    }
    let pixels = sums
        .into_iter()
        .zip(counts)
        .map(|(s, n)| {
            let n = n.max(1) as f32;
            [s[0] / n, s[1] / n, s[2] / n, s[3] / n]
        })
        .collect();
    RgbaImage {
        width: out_w,
        height: out_h,
        pixels,
    }
}

/// Radii of `passes` box blurs whose variances add up as near as whole pixels allow to a
/// gaussian of standard deviation `sigma`. A box of radius `r` (width `2r + 1`) has variance
/// `r (r + 1) / 3`; the boxes take the two odd widths around the ideal one, as many of the
/// narrower as bring the sum closest to `sigma²`.
pub fn box_radii(sigma: f32, passes: usize) -> Vec<usize> {
    if sigma <= 0.0 || passes == 0 {
        return Vec::new();
    }
    let n = passes as f32;
    let variance = sigma * sigma;
    let ideal = (12.0 * variance / n + 1.0).sqrt();
    let mut narrow = ideal.floor() as usize;
    if narrow.is_multiple_of(2) {
        narrow = narrow.saturating_sub(1);
    }
    let narrow = narrow.max(1);
    let wide = narrow + 2;
    let box_variance = |width: usize| ((width * width - 1) as f32) / 12.0;
    // How many narrow boxes bring the total variance closest to sigma².
    let count_narrow = (0..=passes)
        .min_by(|&a, &b| {
            let total = |m: usize| {
                m as f32 * box_variance(narrow) + (passes - m) as f32 * box_variance(wide)
            };
            (total(a) - variance)
                .abs()
                .total_cmp(&(total(b) - variance).abs())
        })
        .unwrap_or(passes);
    (0..passes)
        .map(|i| if i < count_narrow { narrow } else { wide })
        .map(|width| width / 2)
        .collect()
}

/// The variance a sequence of box passes adds, in pixels²: what [`gaussian_blur`] spreads a
/// single pixel into along each axis.
pub fn boxes_variance(radii: &[usize]) -> f32 {
    radii.iter().map(|&r| (r * (r + 1)) as f32 / 3.0).sum()
}

/// One pass of a box blur of `radius` along rows or columns (pixels are taken as never
/// negative). Beyond the image's edges the edge pixel repeats, so a flat image stays flat to
/// its borders.
fn box_pass(src: &[[f32; 4]], dst: &mut [[f32; 4]], len: usize, stride: usize, radius: usize) {
    let width = (2 * radius + 1) as f64;
    let at = |i: isize| src[(i.clamp(0, len as isize - 1) as usize) * stride];
    // A running sum in f64: the dust it leaves where the window has passed stays far below
    // what 8 bits can show, and is kept from going negative.
    let mut sum = [0.0f64; 4];
    for i in -(radius as isize)..=(radius as isize) {
        let p = at(i);
        for c in 0..4 {
            sum[c] += p[c] as f64;
        }
    }
    for i in 0..len {
        dst[i * stride] = sum.map(|s| (s / width).max(0.0) as f32);
        let enter = at(i as isize + radius as isize + 1);
        let leave = at(i as isize - radius as isize);
        for c in 0..4 {
            sum[c] += enter[c] as f64 - leave[c] as f64;
        }
    }
}

/// Blurs `image` by a box of `radius` pixels along both axes.
pub fn box_blur(image: &mut RgbaImage, radius: usize) {
    let (w, h) = (image.width, image.height);
    if w == 0 || h == 0 || radius == 0 {
        return;
    }
    let mut scratch = vec![[0.0f32; 4]; w * h];
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        box_pass(&image.pixels[row.clone()], &mut scratch[row], w, 1, radius);
    }
    for x in 0..w {
        box_pass(&scratch[x..], &mut image.pixels[x..], h, w, radius);
    }
}

/// Blurs `image` by [`BOX_PASSES`] box passes approximating a gaussian of `sigma` pixels.
pub fn gaussian_blur(image: &mut RgbaImage, sigma: f32) {
    for radius in box_radii(sigma, BOX_PASSES) {
        box_blur(image, radius);
    }
}

/// The whole backdrop: `crop` of the window's `frame`, downscaled by [`DOWNSCALE`] and blurred
/// by [`BLUR_SIGMA_PX`] (as measured at full size).
pub fn blur_frame(frame: &ColorImage, crop: [usize; 4]) -> ColorImage {
    let mut small = downscale(frame, crop, DOWNSCALE);
    gaussian_blur(&mut small, BLUR_SIGMA_PX / DOWNSCALE as f32);
    small.to_color_image()
}

/// The dark violet over the blurred canvas that keeps the overlay's quote legible on any graph.
pub const TINT: Color32 = Color32::from_rgb(14, 10, 24);

/// How much of [`TINT`] the blurred frame takes (baked into it on the worker thread, so the
/// overlay draws it in one layer, not as the frame and a translucent rectangle over it).
pub const TINT_AMOUNT: f32 = 0.25;

/// Mixes `amount` of `color` into every pixel, as a rectangle of `color` at that opacity
/// drawn over the image would (egui blends in gamma space).
pub fn tint(image: &mut ColorImage, color: Color32, amount: f32) {
    let mix = |a: u8, b: u8| (f32::from(a) * (1.0 - amount) + f32::from(b) * amount).round() as u8;
    for p in &mut image.pixels {
        *p = Color32::from_rgba_premultiplied(
            mix(p.r(), color.r()),
            mix(p.g(), color.g()),
            mix(p.b(), color.b()),
            p.a(),
        );
    }
}

/// What a capture shows: the canvas's rectangle and transform in the frame it was taken from.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Capture {
    rect: Rect,
    transform: TSTransform,
    pixels_per_point: f32,
}

/// The overlay's blurred backdrop and the captures on their way to it.
#[derive(Default)]
pub struct Backdrop {
    texture: Option<(egui::TextureHandle, Capture, Instant)>,
    /// A screenshot asked for and not yet come back: when, and in which frame.
    requested: Option<(Instant, u64)>,
    /// A screenshot being blurred on a worker thread.
    blurring: Option<mpsc::Receiver<(ColorImage, Capture, Duration)>>,
    last_request: Option<Instant>,
    /// The canvas transform, and since when it has held (within a point).
    transform: Option<(TSTransform, Instant)>,
    /// The canvas's rectangle, and since when it has held (within a point).
    rect: Option<(Rect, Instant)>,
    /// No screenshot came back: the fallback veils stay until the canvas's size changes.
    unavailable: Option<egui::Vec2>,
    /// How long the latest blur took on its worker thread.
    pub last_blur: Option<Duration>,
}

/// What the overlay paints under its content this frame.
pub enum BackdropFrame {
    /// Nothing: this frame may be the one read back for the backdrop.
    Capturing,
    /// The veils only: no blurred frame yet.
    Fallback,
    /// The blurred canvas, at `rect` on screen, faded in by `opacity` (0..=1).
    Blurred {
        texture: egui::TextureId,
        rect: Rect,
        opacity: f32,
    },
}

/// Whether an edge of the canvas's rectangle has moved by more than a point between `a` and
/// `b` (side panels settle by fractions of a point from frame to frame: a blur of 24 px does
/// not need a new capture for those).
fn rect_moved(a: Rect, b: Rect) -> bool {
    (a.min - b.min).abs().max((a.max - b.max).abs()).max_elem() > 1.0
}

/// Whether the canvas has been panned or zoomed between `a` and `b` by more than a point (or
/// a thousandth of its zoom).
fn transform_moved(a: TSTransform, b: TSTransform) -> bool {
    (a.translation - b.translation).abs().max_elem() > 1.0
        || (a.scaling / b.scaling - 1.0).abs() > 1e-3
}

/// Tags our screenshot requests, and carries what the captured frame shows.
struct CaptureTag(Capture);

const NO_REPLY_AFTER: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_millis(500);
const RESIZE_SETTLE: Duration = Duration::from_millis(250);
const REFRESH_EVERY: Duration = Duration::from_secs(1);
const FADE_IN: f32 = 0.25;

impl Backdrop {
    /// Forgets the texture and any capture on its way (the overlay is gone).
    pub fn clear(&mut self) {
        *self = Backdrop {
            last_blur: self.last_blur,
            ..Backdrop::default()
        };
    }

    /// Whether a blurred frame is ready to paint.
    pub fn is_ready(&self) -> bool {
        self.texture.is_some()
    }

    /// Takes in replies and blurred frames, asks for a new capture when one is due, and says
    /// what to paint under the overlay on the canvas at `rect` seen through `transform`.
    pub fn frame(
        &mut self,
        ctx: &egui::Context,
        rect: Rect,
        transform: TSTransform,
    ) -> BackdropFrame {
        let now = Instant::now();
        self.take_replies(ctx);
        if let Some(rx) = &self.blurring {
            match rx.try_recv() {
                Ok((image, capture, took)) => {
                    let texture =
                        ctx.load_texture("veetance-backdrop", image, egui::TextureOptions::LINEAR);
                    self.texture = Some((texture, capture, now));
                    self.last_blur = Some(took);
                    self.blurring = None;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.blurring = None,
            }
        }
        let frame_nr = ctx.cumulative_frame_nr();
        match self.requested {
            Some((at, _)) if now.duration_since(at) > NO_REPLY_AFTER => {
                self.requested = None;
                self.unavailable = Some(rect.size());
            }
            // eframe (glow) reads back the frame painted after the one that asked, so that one
            // is kept clear of the overlay too.
            Some((_, asked_in)) if frame_nr <= asked_in + 1 => return BackdropFrame::Capturing,
            _ => {}
        }
        // Since when the canvas has stayed (within a point) where it is, and its size.
        let settled_since = match self.transform {
            Some((t, since)) if !transform_moved(t, transform) => since,
            _ => {
                self.transform = Some((transform, now));
                now
            }
        };
        let sized_since = match self.rect {
            Some((r, since)) if !rect_moved(r, rect) => since,
            _ => {
                self.rect = Some((rect, now));
                now
            }
        };

        let ppp = ctx.pixels_per_point();
        let shown = self.texture.as_ref().map(|(_, c, _)| *c);
        let busy = self.requested.is_some() || self.blurring.is_some();
        let can_capture = self.unavailable.is_none_or(|size| size != rect.size());
        let due = match shown {
            None => true,
            Some(c) => {
                // While a window is being resized, one capture once it holds its size rather
                // than a flickering capture every few frames.
                let resized = (rect_moved(c.rect, rect) || c.pixels_per_point != ppp)
                    && now.duration_since(sized_since) >= RESIZE_SETTLE;
                let moved = transform_moved(c.transform, transform)
                    && now.duration_since(settled_since) >= SETTLE
                    && self
                        .last_request
                        .is_none_or(|at| now.duration_since(at) >= REFRESH_EVERY);
                resized || moved
            }
        };
        if due && !busy && can_capture && rect.is_positive() {
            let capture = Capture {
                rect,
                transform,
                pixels_per_point: ppp,
            };
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::new(
                CaptureTag(capture),
            )));
            self.requested = Some((now, frame_nr));
            self.last_request = Some(now);
            self.unavailable = None;
            return BackdropFrame::Capturing;
        }
        match &self.texture {
            Some((texture, capture, arrived)) => {
                // Where the captured canvas is now: through the transform since the capture.
                let since = transform * capture.transform.inverse();
                let opacity = (now.duration_since(*arrived).as_secs_f32() / FADE_IN).min(1.0);
                if opacity < 1.0 {
                    ctx.request_repaint();
                }
                BackdropFrame::Blurred {
                    texture: texture.id(),
                    rect: since * capture.rect,
                    opacity,
                }
            }
            None => BackdropFrame::Fallback,
        }
    }

    /// Hands a screenshot that answers our request to a worker thread to blur.
    fn take_replies(&mut self, ctx: &egui::Context) {
        let reply = ctx.input(|i| {
            i.events.iter().find_map(|e| match e {
                egui::Event::Screenshot {
                    user_data, image, ..
                } => user_data
                    .data
                    .as_ref()
                    .and_then(|d| d.downcast_ref::<CaptureTag>())
                    .map(|tag| (tag.0, image.clone())),
                _ => None,
            })
        });
        let Some((capture, image)) = reply else {
            return;
        };
        if self.requested.take().is_none() {
            return; // asked for by an overlay since cleared
        }
        let ppp = capture.pixels_per_point;
        let r = capture.rect;
        let crop = [
            (r.left() * ppp).round().max(0.0) as usize,
            (r.top() * ppp).round().max(0.0) as usize,
            (r.width() * ppp).round().max(0.0) as usize,
            (r.height() * ppp).round().max(0.0) as usize,
        ];
        let (tx, rx) = mpsc::sync_channel(1);
        let repaint = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("veetance-backdrop-blur".into())
            .spawn(move || {
                let start = Instant::now();
                let mut blurred = blur_frame(&image, crop);
                tint(&mut blurred, TINT, TINT_AMOUNT);
                let _ = tx.send((blurred, capture, start.elapsed()));
                repaint.request_repaint();
            });
        // No thread: the veils stay, as where no frame can be read back.
        match spawned {
            Ok(_) => self.blurring = Some(rx),
            Err(_) => self.unavailable = Some(r.size()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impulse(size: usize, at: (usize, usize)) -> RgbaImage {
        let mut image = RgbaImage::filled(size, size, [0.0; 4]);
        image.set(at.0, at.1, [1.0, 2.0, 3.0, 4.0]);
        image
    }

    #[test]
    fn box_radii_add_up_to_the_gaussians_variance() {
        // sigma 6: one box of width 11 and two of 13 (variances 10 + 14 + 14 = 38 ≈ 36; two of
        // 11 and one of 13 would miss by as much, 34, and the first of a tie is taken).
        assert_eq!(box_radii(6.0, 3), vec![5, 6, 6]);
        for sigma in [1.5f32, 3.0, 6.0, 10.0] {
            let radii = box_radii(sigma, 3);
            let variance = boxes_variance(&radii);
            assert!(
                (variance - sigma * sigma).abs() / (sigma * sigma) < 0.15,
                "sigma {sigma}: radii {radii:?} give variance {variance}"
            );
        }
        assert!(box_radii(0.0, 3).is_empty());
    }

    #[test]
    fn a_bright_pixel_spreads_into_a_symmetric_kernel_of_the_expected_width() {
        let sigma = 6.0;
        let radii = box_radii(sigma, BOX_PASSES);
        let reach: usize = radii.iter().sum();
        let size = 2 * reach + 11;
        let c = size / 2;
        let mut image = impulse(size, (c, c));
        gaussian_blur(&mut image, sigma);

        // The sum is kept (no part of the kernel reaches an edge).
        let sum: f32 = image.pixels.iter().map(|p| p[3]).sum();
        assert!((sum - 4.0).abs() < 1e-3, "alpha sum {sum}");
        // Symmetric about the pixel, and the same along both axes.
        for dy in 0..=reach {
            for dx in 0..=reach {
                let v = image.get(c + dx, c + dy)[0];
                for (x, y) in [
                    (c - dx, c + dy),
                    (c + dx, c - dy),
                    (c - dx, c - dy),
                    (c + dy, c + dx),
                ] {
                    assert!((image.get(x, y)[0] - v).abs() < 1e-6, "({dx}, {dy})");
                }
            }
        }
        // Nonzero exactly out to the sum of the radii.
        // (A running sum leaves rounding dust of about 1e-9 where the kernel has passed.)
        assert!(image.get(c + reach, c)[0] > 1e-5);
        assert!(image.get(c + reach + 1, c)[0].abs() < 1e-7);
        assert_eq!(image.get(c - reach - 1, c)[0], 0.0);
        // Its spread along a row is the boxes' variance, within 10% of sigma².
        let row: Vec<f32> = (0..size).map(|x| image.get(x, c)[0]).collect();
        let mass: f32 = row.iter().sum();
        let variance: f32 = row
            .iter()
            .enumerate()
            .map(|(x, v)| v * (x as f32 - c as f32).powi(2))
            .sum::<f32>()
            / mass;
        assert!(
            (variance - boxes_variance(&radii)).abs() < 1e-2,
            "{variance}"
        );
        assert!((variance - sigma * sigma).abs() / (sigma * sigma) < 0.1);
        // A bell: the centre is the peak, falling off outwards.
        assert!(row.windows(2).take(c).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_flat_image_stays_flat_to_its_edges() {
        let pixel = [40.0, 80.0, 120.0, 255.0];
        let mut image = RgbaImage::filled(37, 23, pixel);
        gaussian_blur(&mut image, 6.0);
        for p in &image.pixels {
            for c in 0..4 {
                assert!((p[c] - pixel[c]).abs() < 1e-3, "{p:?}");
            }
        }
    }

    #[test]
    fn edges_repeat_rather_than_darken() {
        // A bright pixel in a corner: nothing is lost past the edge and nothing goes negative.
        let mut image = impulse(30, (0, 0));
        gaussian_blur(&mut image, 3.0);
        assert!(image.pixels.iter().all(|p| p.iter().all(|v| *v >= 0.0)));
        let sum: f32 = image.pixels.iter().map(|p| p[3]).sum();
        assert!(sum >= 4.0 - 1e-3, "a corner keeps at least its mass: {sum}");
        // A half-black, half-white image: far from the step, each side keeps its value.
        let mut step = RgbaImage::filled(60, 8, [0.0; 4]);
        for y in 0..8 {
            for x in 30..60 {
                step.set(x, y, [255.0; 4]);
            }
        }
        gaussian_blur(&mut step, 3.0);
        let reach: usize = box_radii(3.0, BOX_PASSES).iter().sum();
        for y in 0..8 {
            assert_eq!(step.get(0, y)[0], 0.0);
            assert!((step.get(59, y)[0] - 255.0).abs() < 1e-3);
            assert_eq!(step.get(30 - reach - 1, y)[0], 0.0);
            assert!(step.get(29, y)[0] > 0.0 && step.get(30, y)[0] < 255.0);
        }
    }

    #[test]
    fn downscale_averages_blocks_within_the_crop() {
        // 10×6: the left half black, the right half white; crop out a 9×6 area from x = 1.
        let pixels = (0..60)
            .map(|i| {
                if i % 10 < 5 {
                    Color32::BLACK
                } else {
                    Color32::WHITE
                }
            })
            .collect();
        let image = ColorImage::new([10, 6], pixels);
        let small = downscale(&image, [1, 0, 9, 6], 4);
        assert_eq!((small.width, small.height), (3, 2));
        // Block 0 covers x 1..5 (all black), block 1 x 5..9 (white), block 2 x 9 (white).
        assert_eq!(small.get(0, 0), [0.0, 0.0, 0.0, 255.0]);
        assert_eq!(small.get(1, 1), [255.0; 4]);
        assert_eq!(small.get(2, 0), [255.0; 4]);
        // A block that straddles the step averages it.
        let mixed = downscale(&image, [3, 0, 4, 4], 4);
        assert_eq!(mixed.get(0, 0), [127.5, 127.5, 127.5, 255.0]);
        // A crop past the image is clipped; an empty one gives an empty image.
        assert_eq!(downscale(&image, [8, 4, 100, 100], 4).width, 1);
        assert_eq!(downscale(&image, [20, 0, 5, 5], 4).pixels.len(), 0);
    }

    #[test]
    fn blur_frame_gives_the_downscaled_size() {
        let image = ColorImage::new([1600, 1000], vec![Color32::from_rgb(10, 20, 30); 1_600_000]);
        let blurred = blur_frame(&image, [0, 40, 1600, 930]);
        assert_eq!(blurred.size, [400, 233]);
        assert!(blurred
            .pixels
            .iter()
            .all(|p| *p == Color32::from_rgb(10, 20, 30)));
    }

    #[test]
    fn the_tint_mixes_in_as_a_translucent_rectangle_over_the_frame_would() {
        let mut image = ColorImage::new([2, 1], vec![Color32::BLACK, Color32::WHITE]);
        tint(&mut image, TINT, TINT_AMOUNT);
        let over = |c: u8, t: u8| (f32::from(c) * 0.75 + f32::from(t) * 0.25).round() as u8;
        for (p, c) in image.pixels.iter().zip([0, 255]) {
            assert_eq!(
                *p,
                Color32::from_rgb(over(c, TINT.r()), over(c, TINT.g()), over(c, TINT.b()))
            );
        }
    }
}
