//! ComfyUI's image scaling methods (`comfy.utils.common_upscale`): `nearest-exact`, `bilinear`,
//! `area` and `bicubic` as torch's `interpolate` computes them (no antialiasing, centres aligned,
//! f32 arithmetic), and `lanczos` as Pillow's `Image.resize(LANCZOS)` on 8-bit pixels, which is
//! what ComfyUI runs for it (values truncated to 8 bits on the way in, fixed-point filter taps,
//! two passes, each rounded to 8 bits; see `lanczos_frame` for the order).
//!
//! Every method is separable: taps are computed once per axis, then applied along rows and then
//! along columns. `assets/parity/resample_ref.safetensors` holds torch's and Pillow's results for
//! a few sizes (made by `.verify/parity/make_resample_fixture.py`).

use veetance_core::{CancelToken, Image, NodeError};

use crate::image_ops::{check_cancel, ROWS_PER_CHECK};

/// A scaling method, by ComfyUI's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    NearestExact,
    Bilinear,
    Area,
    Bicubic,
    Lanczos,
}

impl Method {
    /// ComfyUI's names, in ComfyUI's order (`ImageScale.upscale_methods`).
    pub const NAMES: [&'static str; 5] =
        ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"];

    pub fn parse(name: &str, param: &str) -> Result<Self, NodeError> {
        Ok(match name {
            "nearest-exact" => Method::NearestExact,
            "bilinear" => Method::Bilinear,
            "area" => Method::Area,
            "bicubic" => Method::Bicubic,
            "lanczos" => Method::Lanczos,
            other => {
                return Err(NodeError::failed(format!(
                    "param '{param}': {other:?} is not one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }
}

/// For one destination index: the first source index and the weights of the sources from there.
struct Tap {
    start: usize,
    weights: Vec<f32>,
}

/// torch's `area_pixel_compute_scale` without align_corners: `in / out`, in f32.
fn torch_scale(src: usize, dst: usize) -> f32 {
    src as f32 / dst as f32
}

fn nearest_taps(src: usize, dst: usize) -> Vec<Tap> {
    let scale = torch_scale(src, dst);
    (0..dst)
        .map(|d| {
            let i = (((d as f32 + 0.5) * scale).floor() as usize).min(src - 1);
            Tap {
                start: i,
                weights: vec![1.0],
            }
        })
        .collect()
}

fn bilinear_taps(src: usize, dst: usize) -> Vec<Tap> {
    let scale = torch_scale(src, dst);
    (0..dst)
        .map(|d| {
            let real = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i = (real as usize).min(src - 1);
            let step = usize::from(i < src - 1);
            let l1 = real - i as f32;
            let l0 = 1.0 - l1;
            if step == 0 {
                Tap {
                    start: i,
                    weights: vec![l0 + l1],
                }
            } else {
                Tap {
                    start: i,
                    weights: vec![l0, l1],
                }
            }
        })
        .collect()
}

/// Source taps with indices clamped into `0..src`, folded into a contiguous run.
fn clamped_tap(src: usize, first: isize, weights: &[f32]) -> Tap {
    let last = src as isize - 1;
    let lo = first.clamp(0, last) as usize;
    let hi = (first + weights.len() as isize - 1).clamp(0, last) as usize;
    let mut folded = vec![0.0f32; hi - lo + 1];
    for (k, w) in weights.iter().enumerate() {
        let i = (first + k as isize).clamp(0, last) as usize;
        folded[i - lo] += w;
    }
    Tap {
        start: lo,
        weights: folded,
    }
}

fn bicubic_taps(src: usize, dst: usize) -> Vec<Tap> {
    const A: f32 = -0.75;
    let scale = torch_scale(src, dst);
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    (0..dst)
        .map(|d| {
            let real = scale * (d as f32 + 0.5) - 0.5;
            let i = real.floor();
            let t = real - i;
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            clamped_tap(src, i as isize - 1, &weights)
        })
        .collect()
}

/// torch's adaptive average pooling: output `d` averages `floor(d*src/dst) .. ceil((d+1)*src/dst)`.
fn area_taps(src: usize, dst: usize) -> Vec<Tap> {
    (0..dst)
        .map(|d| {
            let start = d * src / dst;
            let end = ((d + 1) * src).div_ceil(dst);
            let n = end - start;
            Tap {
                start,
                weights: vec![1.0 / n as f32; n],
            }
        })
        .collect()
}

/// Applies `taps` along the rows of an `sh × sw × c` frame (channels interleaved).
fn apply_rows(
    src: &[f32],
    (sw, sh): (usize, usize),
    c: usize,
    taps: &[Tap],
    cancel: &CancelToken,
) -> Result<Vec<f32>, NodeError> {
    let dw = taps.len();
    let mut out = vec![0.0f32; dw * sh * c];
    for y in 0..sh {
        if y % ROWS_PER_CHECK == 0 {
            check_cancel(cancel)?;
        }
        let row = &src[y * sw * c..(y + 1) * sw * c];
        let orow = &mut out[y * dw * c..(y + 1) * dw * c];
        for (x, tap) in taps.iter().enumerate() {
            for k in 0..c {
                let mut acc = 0.0f32;
                for (j, w) in tap.weights.iter().enumerate() {
                    acc += w * row[(tap.start + j) * c + k];
                }
                orow[x * c + k] = acc;
            }
        }
    }
    Ok(out)
}

/// Applies `taps` along the columns of an `h × w × c` frame.
fn apply_cols(
    src: &[f32],
    (w, _sh): (usize, usize),
    c: usize,
    taps: &[Tap],
    cancel: &CancelToken,
) -> Result<Vec<f32>, NodeError> {
    let row_len = w * c;
    let dh = taps.len();
    let mut out = vec![0.0f32; dh * row_len];
    for (y, tap) in taps.iter().enumerate() {
        if y % ROWS_PER_CHECK == 0 {
            check_cancel(cancel)?;
        }
        let orow = &mut out[y * row_len..(y + 1) * row_len];
        for (j, wgt) in tap.weights.iter().enumerate() {
            let srow = &src[(tap.start + j) * row_len..(tap.start + j + 1) * row_len];
            for (o, s) in orow.iter_mut().zip(srow) {
                *o += wgt * s;
            }
        }
    }
    Ok(out)
}

fn float_taps(method: Method, src: usize, dst: usize) -> Vec<Tap> {
    match method {
        Method::NearestExact => nearest_taps(src, dst),
        Method::Bilinear => bilinear_taps(src, dst),
        Method::Area => area_taps(src, dst),
        Method::Bicubic => bicubic_taps(src, dst),
        Method::Lanczos => unreachable!("lanczos runs on 8-bit pixels"),
    }
}

// ---------------------------------------------------------------- Pillow's LANCZOS on 8 bits

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for LANCZOS (support 3).
fn pillow_taps(src: usize, dst: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = src as f64 / dst as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..dst)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = (((center + support + 0.5) as isize).min(src as isize) as usize) - xmin;
            let mut k: Vec<f64> = (0..xmax)
                .map(|x| lanczos((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                for w in &mut k {
                    *w /= total;
                }
            }
            let fixed = k
                .iter()
                .map(|&w| {
                    let v = w * f64::from(1u32 << PRECISION_BITS);
                    if w < 0.0 {
                        (-0.5 + v).trunc() as i32
                    } else {
                        (0.5 + v).trunc() as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

fn pillow_pass_rows(
    src: &[u8],
    (sw, sh): (usize, usize),
    c: usize,
    taps: &[(usize, Vec<i32>)],
) -> Vec<u8> {
    let dw = taps.len();
    let mut out = vec![0u8; dw * sh * c];
    for y in 0..sh {
        let row = &src[y * sw * c..(y + 1) * sw * c];
        for (x, (start, k)) in taps.iter().enumerate() {
            for ch in 0..c {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (j, w) in k.iter().enumerate() {
                    ss += i64::from(row[(start + j) * c + ch]) * i64::from(*w);
                }
                out[(y * dw + x) * c + ch] = clip8(ss);
            }
        }
    }
    out
}

fn pillow_pass_cols(src: &[u8], w: usize, c: usize, taps: &[(usize, Vec<i32>)]) -> Vec<u8> {
    let row_len = w * c;
    let dh = taps.len();
    let mut out = vec![0u8; dh * row_len];
    for (y, (start, k)) in taps.iter().enumerate() {
        for i in 0..row_len {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (j, wgt) in k.iter().enumerate() {
                ss += i64::from(src[(start + j) * row_len + i]) * i64::from(*wgt);
            }
            out[y * row_len + i] = clip8(ss);
        }
    }
    out
}

/// One frame through Pillow's LANCZOS, as ComfyUI calls it: `clip(255·x, 0, 255)` truncated to
/// 8 bits, resized, then `/ 255`.
fn lanczos_frame(
    src: &[f32],
    (sw, sh): (usize, usize),
    c: usize,
    (dw, dh): (usize, usize),
    cancel: &CancelToken,
) -> Result<Vec<f32>, NodeError> {
    let mut pixels: Vec<u8> = src
        .iter()
        .map(|v| (255.0 * v).clamp(0.0, 255.0) as u8)
        .collect();
    check_cancel(cancel)?;
    // Pillow 13 resamples rows first, except when an image grows in width and shrinks in height:
    // then columns first (seen on its wheels; its sources of August 2026 always go rows first).
    // For images shrunk on both axes it sometimes goes columns first too, by a rule not
    // identified here; results then differ by a few levels at sharp edges.
    let columns_first = dh < sh && dw > sw;
    let rows = |p: &[u8], h: usize| pillow_pass_rows(p, (sw, h), c, &pillow_taps(sw, dw));
    let cols = |p: &[u8], w: usize| pillow_pass_cols(p, w, c, &pillow_taps(sh, dh));
    if columns_first {
        if dh != sh {
            pixels = cols(&pixels, sw);
        }
        check_cancel(cancel)?;
        if dw != sw {
            pixels = rows(&pixels, dh);
        }
    } else {
        if dw != sw {
            pixels = rows(&pixels, sh);
        }
        check_cancel(cancel)?;
        if dh != sh {
            pixels = cols(&pixels, dw);
        }
    }
    Ok(pixels.iter().map(|&v| f32::from(v) / 255.0).collect())
}

/// One frame (`sh × sw × c`, f32) resized to `dh × dw` by `method`.
pub fn resize_frame(
    src: &[f32],
    (sw, sh): (usize, usize),
    c: usize,
    (dw, dh): (usize, usize),
    method: Method,
    cancel: &CancelToken,
) -> Result<Vec<f32>, NodeError> {
    if method == Method::Lanczos {
        return lanczos_frame(src, (sw, sh), c, (dw, dh), cancel);
    }
    let rows = apply_rows(src, (sw, sh), c, &float_taps(method, sw, dw), cancel)?;
    apply_cols(&rows, (dw, sh), c, &float_taps(method, sh, dh), cancel)
}

/// Every image of a batch resized to `width × height` by `method`; the metadata is kept.
pub fn resize_image(
    image: &Image,
    width: u32,
    height: u32,
    method: Method,
    cancel: &CancelToken,
) -> Result<Image, NodeError> {
    if width == 0 || height == 0 {
        return Err(NodeError::failed(format!(
            "cannot scale an image to {width}×{height} pixels"
        )));
    }
    let c = image.channels as usize;
    let mut data = Vec::with_capacity(width as usize * height as usize * c * image.batch as usize);
    for index in 0..image.batch {
        data.extend(resize_frame(
            image.frame(index),
            (image.width as usize, image.height as usize),
            c,
            (width as usize, height as usize),
            method,
            cancel,
        )?);
    }
    Image::new(image.batch, height, width, image.channels, data)
        .map(|img| img.with_meta(image.meta.to_vec()))
        .map_err(|e| NodeError::failed(format!("scale: {e}")))
}

/// `ImageScaleToTotalPixels`' target size for a `width × height` image: the aspect ratio kept,
/// `megapixels · 1024²` pixels in all, each side rounded (halves to even) to a multiple of
/// `steps`.
pub fn total_pixels_size(width: u32, height: u32, megapixels: f64, steps: u32) -> (u32, u32) {
    let total = megapixels * 1024.0 * 1024.0;
    let scale = (total / (f64::from(width) * f64::from(height))).sqrt();
    let steps = f64::from(steps.max(1));
    let side = |s: u32| (f64::from(s) * scale / steps).round_ties_even() * steps;
    (side(width) as u32, side(height) as u32)
}
