//! Image operations: `ImageResize` and `ImageBlend`. Plain loops over f32 rows, with per-axis
//! sample tables computed once, so nothing is allocated per pixel.

use veetance_core::{
    CancelToken, ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, Params, PortType,
    Value,
};

use crate::png_io::MAX_SIDE;
use crate::resample::Method;

/// Rows processed between two cancellation checks.
pub(crate) const ROWS_PER_CHECK: usize = 64;

pub(crate) fn check_cancel(cancel: &CancelToken) -> Result<(), NodeError> {
    if cancel.is_cancelled() {
        Err(NodeError::Cancelled)
    } else {
        Ok(())
    }
}

/// Host bytes of a `batch` of f32 images of the `width` × `height` params with `channels`
/// channels: what a node making them allocates (`NodeDef::host_need`); 4 GiB for one RGBA
/// image at the largest side.
pub(crate) fn sized_image_bytes(params: &Params, batch: u64, channels: u64) -> Option<u64> {
    let side = |p: &str| params.int(p).ok().map(|v| v.max(0) as u64);
    Some(batch * side("width")? * side("height")? * channels * 4)
}

/// A `width`/`height` param shared by the nodes that make images.
pub(crate) fn side_param(name: &str, doc: &str) -> ParamDef {
    ParamDef::int(name, 512, 1, MAX_SIDE as i64, doc)
}

/// `ImageResize`'s two methods, by their names there; the resampling is
/// [`crate::resample`]'s (torch's nearest-exact and bilinear, as ComfyUI scales).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResizeMethod {
    Nearest,
    Bilinear,
}

impl ResizeMethod {
    const OPTIONS: [&'static str; 2] = ["nearest", "bilinear"];

    fn parse(name: &str) -> Result<Self, NodeError> {
        match name {
            "nearest" => Ok(ResizeMethod::Nearest),
            "bilinear" => Ok(ResizeMethod::Bilinear),
            other => Err(NodeError::failed(format!(
                "param 'method': {other:?} is not one of {}",
                Self::OPTIONS.join(", ")
            ))),
        }
    }
}

/// Resizes every image of a batch.
pub(crate) fn resize_image(
    image: &Image,
    width: u32,
    height: u32,
    method: ResizeMethod,
    cancel: &CancelToken,
) -> Result<Image, NodeError> {
    let method = match method {
        ResizeMethod::Nearest => Method::NearestExact,
        ResizeMethod::Bilinear => Method::Bilinear,
    };
    crate::resample::resize_image(image, width, height, method, cancel)
}

pub struct ImageResize {
    schema: NodeSchema,
}

impl Default for ImageResize {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageResize {
    pub fn new() -> Self {
        ImageResize {
            schema: NodeSchema::new("ImageResize", "Resize Image", "image/transform")
                .doc(
                    "Resizes every image of the batch to width × height (the aspect ratio is not \
                     kept). Bilinear does not low-pass filter, so shrinking by more than 2× \
                     aliases; nearest copies pixels exactly.",
                )
                .input("image", PortType::Image, "The images to resize.")
                .param(side_param("width", "Width of the result in pixels."))
                .param(side_param("height", "Height of the result in pixels."))
                .param(ParamDef::choice(
                    "method",
                    &ResizeMethod::OPTIONS,
                    "bilinear",
                    "nearest: pick the closest pixel (sharp, blocky); bilinear: mix the four \
                     closest pixels (smooth).",
                ))
                .output("image", PortType::Image, "The resized images."),
        }
    }
}

impl NodeDef for ImageResize {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    /// The resized batch, with the input's channels.
    fn host_need(&self, params: &Params, inputs: &[(&str, Value)]) -> Option<u64> {
        let image = inputs.iter().find(|(p, _)| *p == "image")?.1.as_image()?;
        sized_image_bytes(params, image.batch as u64, image.channels as u64)
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let width = ctx.params.int("width")?;
        let height = ctx.params.int("height")?;
        let method = ResizeMethod::parse(ctx.params.str("method")?)?;
        let image = ctx.image("image")?;
        let resized = resize_image(image, width as u32, height as u32, method, ctx.cancel)?;
        Ok(vec![Value::Image(resized)])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlendMode {
    Normal,
    Multiply,
    Screen,
    Add,
    Difference,
}

impl BlendMode {
    const OPTIONS: [&'static str; 5] = ["normal", "multiply", "screen", "add", "difference"];

    fn parse(name: &str) -> Result<Self, NodeError> {
        Ok(match name {
            "normal" => BlendMode::Normal,
            "multiply" => BlendMode::Multiply,
            "screen" => BlendMode::Screen,
            "add" => BlendMode::Add,
            "difference" => BlendMode::Difference,
            other => {
                return Err(NodeError::failed(format!(
                    "param 'mode': {other:?} is not one of {}",
                    Self::OPTIONS.join(", ")
                )))
            }
        })
    }
}

/// Blends frame `b` (already at `a`'s size) over frame `a` into `out`, using `blend` for the
/// colour channels and a plain mix for alpha.
#[expect(
    clippy::too_many_arguments,
    reason = "two frames, their channels and the mix"
)]
fn blend_frame(
    a: &[f32],
    a_channels: usize,
    b: &[f32],
    b_channels: usize,
    factor: f32,
    blend: impl Fn(f32, f32) -> f32,
    out: &mut [f32],
    row_len: usize,
    cancel: &CancelToken,
) -> Result<(), NodeError> {
    let pixels_per_row = row_len / a_channels;
    let a_rows = a.chunks_exact(row_len);
    let b_rows = b.chunks_exact(pixels_per_row * b_channels);
    for (y, ((out_row, a_row), b_row)) in out
        .chunks_exact_mut(row_len)
        .zip(a_rows)
        .zip(b_rows)
        .enumerate()
    {
        if y % ROWS_PER_CHECK == 0 {
            check_cancel(cancel)?;
        }
        let pixels = out_row
            .chunks_exact_mut(a_channels)
            .zip(a_row.chunks_exact(a_channels))
            .zip(b_row.chunks_exact(b_channels));
        for ((o, pa), pb) in pixels {
            for k in 0..3 {
                o[k] = pa[k] + (blend(pa[k], pb[k]) - pa[k]) * factor;
            }
            if a_channels == 4 {
                let b_alpha = if b_channels == 4 { pb[3] } else { 1.0 };
                o[3] = pa[3] + (b_alpha - pa[3]) * factor;
            }
        }
    }
    Ok(())
}

pub struct ImageBlend {
    schema: NodeSchema,
}

impl Default for ImageBlend {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBlend {
    pub fn new() -> Self {
        ImageBlend {
            schema: NodeSchema::new("ImageBlend", "Blend Images", "image/composite")
                .doc(
                    "Blends `b` over `a`: result = a + (mode(a, b) − a) × factor. `b` is resized \
                     (bilinear) to `a`'s size when they differ. The result has `a`'s channels; \
                     with alpha, alpha mixes linearly towards b's alpha (1 for RGB). Batches must \
                     be the same size, or one of them a single image used for every image of the \
                     other.",
                )
                .input("a", PortType::Image, "The base images.")
                .input("b", PortType::Image, "The images blended over `a`.")
                .param(ParamDef::float(
                    "factor",
                    0.5,
                    0.0,
                    1.0,
                    0.01,
                    "How much of the blend to apply: 0 gives `a`, 1 the full blend.",
                ))
                .param(ParamDef::choice(
                    "mode",
                    &BlendMode::OPTIONS,
                    "normal",
                    "normal: b; multiply: a×b (darkens); screen: 1−(1−a)(1−b) (lightens); add: \
                     a+b, clipped at 1; difference: |a−b|.",
                ))
                .output("image", PortType::Image, "The blended images."),
        }
    }
}

impl NodeDef for ImageBlend {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let factor = ctx.params.float("factor")? as f32;
        let mode = BlendMode::parse(ctx.params.str("mode")?)?;
        let a = ctx.image("a")?;
        let b = ctx.image("b")?;
        let batch = if a.batch == b.batch || b.batch == 1 {
            a.batch
        } else if a.batch == 1 {
            b.batch
        } else {
            return Err(NodeError::failed(format!(
                "input 'a' has {} images and 'b' has {}; batches must match, or one must hold a \
                 single image",
                a.batch, b.batch
            )));
        };
        let resized;
        let b = if (b.width, b.height) == (a.width, a.height) {
            b
        } else {
            resized = resize_image(b, a.width, a.height, ResizeMethod::Bilinear, ctx.cancel)?;
            &resized
        };
        let frame_len = a.frame_len();
        let row_len = a.width as usize * a.channels as usize;
        let mut data = vec![0.0f32; frame_len * batch as usize];
        for (index, out) in data.chunks_exact_mut(frame_len).enumerate() {
            let index = index as u32;
            let fa = a.frame(if a.batch == 1 { 0 } else { index });
            let fb = b.frame(if b.batch == 1 { 0 } else { index });
            let (ac, bc) = (a.channels as usize, b.channels as usize);
            let cancel = ctx.cancel;
            match mode {
                BlendMode::Normal => {
                    blend_frame(fa, ac, fb, bc, factor, |_, b| b, out, row_len, cancel)
                }
                BlendMode::Multiply => {
                    blend_frame(fa, ac, fb, bc, factor, |a, b| a * b, out, row_len, cancel)
                }
                BlendMode::Screen => blend_frame(
                    fa,
                    ac,
                    fb,
                    bc,
                    factor,
                    |a, b| 1.0 - (1.0 - a) * (1.0 - b),
                    out,
                    row_len,
                    cancel,
                ),
                BlendMode::Add => blend_frame(
                    fa,
                    ac,
                    fb,
                    bc,
                    factor,
                    |a, b| (a + b).min(1.0),
                    out,
                    row_len,
                    cancel,
                ),
                BlendMode::Difference => blend_frame(
                    fa,
                    ac,
                    fb,
                    bc,
                    factor,
                    |a, b| (a - b).abs(),
                    out,
                    row_len,
                    cancel,
                ),
            }?;
        }
        let image = Image::new(batch, a.height, a.width, a.channels, data)
            .map_err(|e| NodeError::failed(format!("blend: {e}")))?
            .with_meta(a.meta.to_vec());
        Ok(vec![Value::Image(image)])
    }
}
