//! Preparing images for a VAE: `ImageScaleToTotalPixels` and `GetImageSize` (ComfyUI's classes,
//! with its names, widget order and arithmetic) and `ImageCropToMultiple` (crop or pad each side
//! to a multiple of 16, what the FLUX.2 VAE and transformer need).

use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value,
};

use crate::png_io::MAX_SIDE;
use crate::resample::{resize_image, total_pixels_size, Method};

pub struct ImageScaleToTotalPixels {
    schema: NodeSchema,
}

impl Default for ImageScaleToTotalPixels {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageScaleToTotalPixels {
    pub fn new() -> Self {
        ImageScaleToTotalPixels {
            schema: NodeSchema::new(
                "ImageScaleToTotalPixels",
                "Scale Image to Total Pixels",
                "image/upscaling",
            )
            .doc(
                "Scales images to about `megapixels` × 1024² pixels, keeping the aspect ratio, \
                 each side rounded to a multiple of `resolution_steps`, as ComfyUI's \
                 ImageScaleToTotalPixels (same sizes, same methods: torch's nearest-exact, \
                 bilinear, area and bicubic; Pillow's 8-bit lanczos).",
            )
            .input("image", PortType::Image, "The images to scale.")
            .param(ParamDef::choice(
                "upscale_method",
                &Method::NAMES,
                "nearest-exact",
                "How pixels are resampled.",
            ))
            .param(ParamDef::float(
                "megapixels",
                1.0,
                0.01,
                16.0,
                0.01,
                "The target size in megapixels (1 = 1024² pixels).",
            ))
            .param(ParamDef::int(
                "resolution_steps",
                1,
                1,
                256,
                "Each side is rounded to a multiple of this (16 suits FLUX.2).",
            ))
            .output("image", PortType::Image, "The scaled images."),
        }
    }
}

impl NodeDef for ImageScaleToTotalPixels {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let method = Method::parse(ctx.params.str("upscale_method")?, "upscale_method")?;
        let megapixels = ctx.params.float("megapixels")?;
        let steps = ctx.params.int("resolution_steps")?;
        let image = ctx.image("image")?;
        let (w, h) = total_pixels_size(image.width, image.height, megapixels, steps as u32);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            return Err(NodeError::failed(format!(
                "scaling {}×{} to {megapixels} megapixels in steps of {steps} gives {w}×{h}, \
                 outside 1..={MAX_SIDE} pixels a side; change 'megapixels' or \
                 'resolution_steps'",
                image.width, image.height
            )));
        }
        let scaled = resize_image(image, w, h, method, ctx.cancel)?;
        Ok(vec![Value::Image(scaled)])
    }
}

pub struct GetImageSize {
    schema: NodeSchema,
}

impl Default for GetImageSize {
    fn default() -> Self {
        Self::new()
    }
}

impl GetImageSize {
    pub fn new() -> Self {
        GetImageSize {
            schema: NodeSchema::new("GetImageSize", "Get Image Size", "image")
                .doc("The width, height and batch size of images (ComfyUI's GetImageSize).")
                .input("image", PortType::Image, "The images.")
                .output("width", PortType::Int, "Width in pixels.")
                .output("height", PortType::Int, "Height in pixels.")
                .output(
                    "batch_size",
                    PortType::Int,
                    "How many images the batch holds.",
                ),
        }
    }
}

impl NodeDef for GetImageSize {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let image = ctx.image("image")?;
        Ok(vec![
            Value::Int(i64::from(image.width)),
            Value::Int(i64::from(image.height)),
            Value::Int(i64::from(image.batch)),
        ])
    }
}

const FIT: [&str; 2] = ["crop", "pad"];

pub struct ImageCropToMultiple {
    schema: NodeSchema,
}

impl Default for ImageCropToMultiple {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageCropToMultiple {
    pub fn new() -> Self {
        ImageCropToMultiple {
            schema: NodeSchema::new(
                "ImageCropToMultiple",
                "Crop/Pad to Multiple",
                "image/transform",
            )
            .doc(
                "Makes each side a multiple of `multiple` (16 for FLUX.2's VAE and \
                     transformer): `crop` cuts the extra pixels off evenly from both edges (as \
                     ComfyUI's VAEEncode does), `pad` adds edge pixels (replicated) evenly on \
                     both sides. Sides already a multiple are left as they are.",
            )
            .input("image", PortType::Image, "The images.")
            .param(ParamDef::int(
                "multiple",
                16,
                1,
                1024,
                "Each side becomes a multiple of this.",
            ))
            .param(ParamDef::choice(
                "fit",
                &FIT,
                "crop",
                "crop: remove pixels; pad: add replicated edge pixels.",
            ))
            .output("image", PortType::Image, "The cropped or padded images.")
            .output("width", PortType::Int, "Width of the result.")
            .output("height", PortType::Int, "Height of the result."),
        }
    }
}

/// `image` cropped (`pad` false) or edge-padded (`pad` true) so that each side is a multiple of
/// `multiple`; the extra (or missing) pixels are split evenly, the odd one at the end.
pub fn fit_to_multiple(image: &Image, multiple: u32, pad: bool) -> Result<Image, String> {
    let fit = |side: u32| {
        if pad {
            side.div_ceil(multiple) * multiple
        } else {
            side / multiple * multiple
        }
    };
    let (w, h) = (fit(image.width), fit(image.height));
    if w == 0 || h == 0 {
        return Err(format!(
            "a {}×{} image has no whole {multiple}-pixel block to keep; pad it instead",
            image.width, image.height
        ));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "padding gives {w}×{h}, over {MAX_SIDE} pixels a side"
        ));
    }
    // Offsets of the result's origin in the source (negative when padding).
    let x0 = (i64::from(image.width) - i64::from(w)) / 2;
    let y0 = (i64::from(image.height) - i64::from(h)) / 2;
    let c = image.channels as usize;
    let (sw, sh) = (i64::from(image.width), i64::from(image.height));
    let mut data = Vec::with_capacity(w as usize * h as usize * c * image.batch as usize);
    for b in 0..image.batch {
        let frame = image.frame(b);
        for y in 0..i64::from(h) {
            let sy = (y + y0).clamp(0, sh - 1) as usize;
            for x in 0..i64::from(w) {
                let sx = (x + x0).clamp(0, sw - 1) as usize;
                let at = (sy * sw as usize + sx) * c;
                data.extend_from_slice(&frame[at..at + c]);
            }
        }
    }
    Image::new(image.batch, h, w, image.channels, data).map(|i| i.with_meta(image.meta.to_vec()))
}

impl NodeDef for ImageCropToMultiple {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let multiple = ctx.params.int("multiple")? as u32;
        let pad = ctx.params.str("fit")? == "pad";
        let image = ctx.image("image")?;
        let out = fit_to_multiple(image, multiple, pad)
            .map_err(|e| NodeError::failed(format!("ImageCropToMultiple: {e}")))?;
        let (w, h) = (out.width, out.height);
        Ok(vec![
            Value::Image(out),
            Value::Int(i64::from(w)),
            Value::Int(i64::from(h)),
        ])
    }
}
