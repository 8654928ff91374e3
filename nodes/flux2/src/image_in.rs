//! Images in: VaeEncode (an image, and optionally an inpainting mask, to a latent) and
//! AddReference (a reference image's latent joined to a conditioning, for FLUX.2 [klein]'s
//! editing). ComfyUI's `VAEEncode`, `ReferenceLatent` and `SetLatentNoiseMask` share the routines
//! here.

use candle_core::{Device, Tensor};
use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value,
};

use crate::values::{candle_err, input, model_err, object, Conditioning, Latent, VaeHandle};

/// The crop ComfyUI's `vae_encode_crop_pixels` makes: each side cut down to a multiple of
/// `step`, centred (offset `(side % step) / 2`). Returns `(top, left, height, width)`.
pub fn centre_crop(height: usize, width: usize, step: usize) -> (usize, usize, usize, usize) {
    let (h, w) = ((height / step) * step, (width / step) * step);
    ((height % step) / 2, (width % step) / 2, h, w)
}

/// One channel of `image` (`channel`, e.g. 3 for alpha) cropped to `crop`, as `(B, h, w)`.
fn channel_plane(image: &Image, channel: usize, crop: (usize, usize, usize, usize)) -> Vec<f32> {
    let (top, left, h, w) = crop;
    let (iw, c) = (image.width as usize, image.channels as usize);
    let ih = image.height as usize;
    let mut out = Vec::with_capacity(image.batch as usize * h * w);
    for b in 0..image.batch as usize {
        for y in top..top + h {
            for x in left..left + w {
                out.push(image.data[((b * ih + y) * iw + x) * c + channel]);
            }
        }
    }
    out
}

/// Encodes an image batch (`[0, 1]`, RGB or RGBA; alpha is ignored) with the VAE, after cropping
/// it to a multiple of the VAE's pixels per token as ComfyUI's `VAEEncode` does (centred). Returns
/// the normalised latent `(B, 128, h, w)` in f32 and the crop `(top, left, height, width)`.
pub fn encode_image(
    vae: &VaeHandle,
    image: &Image,
    what: &str,
) -> Result<(Tensor, (usize, usize, usize, usize)), NodeError> {
    let step = vae.vae.pixels_per_token();
    let (height, width) = (image.height as usize, image.width as usize);
    let crop = centre_crop(height, width, step);
    if crop.2 == 0 || crop.3 == 0 {
        return Err(NodeError::failed(format!(
            "{what}: the image is {width}x{height} pixels, smaller than one latent token \
             ({step}x{step}); scale it up first"
        )));
    }
    let (b, h, w) = (image.batch as usize, crop.2, crop.3);
    let mut planes = Vec::with_capacity(b * 3 * h * w);
    let per_channel: Vec<Vec<f32>> = (0..3).map(|c| channel_plane(image, c, crop)).collect();
    for bi in 0..b {
        for plane in &per_channel {
            planes.extend(
                plane[bi * h * w..(bi + 1) * h * w]
                    .iter()
                    .map(|v| v * 2.0 - 1.0),
            );
        }
    }
    let cerr = candle_err(what);
    let pixels = Tensor::from_vec(planes, (b, 3, h, w), &Device::Cpu)
        .and_then(|t| t.to_device(&vae.device))
        .map_err(&cerr)?;
    let latent = vae.vae.encode(&pixels).map_err(model_err(what))?;
    Ok((latent, crop))
}

/// A mask `(B, h, w)` from an image's alpha channel under `crop`: `1 − alpha`, so that
/// transparent pixels are repainted (ComfyUI's `LoadImage` mask).
pub fn alpha_mask(
    image: &Image,
    crop: (usize, usize, usize, usize),
    what: &str,
) -> Result<Tensor, NodeError> {
    if image.channels != 4 {
        return Err(NodeError::failed(format!(
            "{what}: mask 'alpha' needs an image with an alpha channel (RGBA); this one has {} \
             channels: load a PNG with transparency, or link a mask image",
            image.channels
        )));
    }
    let plane: Vec<f32> = channel_plane(image, 3, crop)
        .into_iter()
        .map(|a| 1.0 - a)
        .collect();
    Tensor::from_vec(plane, (image.batch as usize, crop.2, crop.3), &Device::Cpu)
        .map_err(candle_err(what))
}

/// A mask `(B, h, w)` from a mask image: its first channel (white = repaint). It must have the
/// encoded image's size (after the crop); another size is refused.
fn image_mask(mask: &Image, size: (usize, usize), what: &str) -> Result<Tensor, NodeError> {
    let (h, w) = size;
    let (mh, mw) = (mask.height as usize, mask.width as usize);
    let crop = centre_crop(mh, mw, 1);
    if (mh, mw) != (h, w) {
        return Err(NodeError::failed(format!(
            "{what}: input 'mask' is {mw}x{mh} pixels but the encoded image is {w}x{h}; give a \
             mask of the image's size (after the crop to whole latent tokens)"
        )));
    }
    let plane = channel_plane(mask, 0, crop);
    Tensor::from_vec(plane, (mask.batch as usize, h, w), &Device::Cpu).map_err(candle_err(what))
}

/// VaeEncode: an image to a latent for img2img, inpainting or as a reference.
pub struct VaeEncode {
    schema: NodeSchema,
}

impl VaeEncode {
    pub fn new() -> Self {
        VaeEncode {
            schema: NodeSchema::new("VaeEncode", "VAE Encode", "latent")
                .doc(
                    "Encodes an image with the VAE's encoder into the sampler's latent space (the \
                     Gaussian's mean, batch-norm normalised). The image is first cropped, centred, \
                     to whole latent tokens (16 pixels for FLUX.2), as ComfyUI's VAEEncode does. \
                     With a mask the latent carries it, and the sampler repaints only where the \
                     mask is white (inpainting).",
                )
                .input("vae", PortType::Vae, "From LoadVae.")
                .input(
                    "image",
                    PortType::Image,
                    "The image, RGB or RGBA, in [0, 1].",
                )
                .optional_input(
                    "mask",
                    PortType::Image,
                    "Inpainting mask of the image's size: its first channel, white = repaint.",
                )
                .param(ParamDef::choice(
                    "mask_from",
                    &["none", "alpha", "input"],
                    "none",
                    "Where the inpainting mask comes from: none; the image's alpha channel \
                     (transparent = repaint, as ComfyUI's LoadImage mask 1 − alpha); or the \
                     'mask' input.",
                ))
                .output(
                    "latent",
                    PortType::Latent,
                    "The encoded latent (with its mask).",
                ),
        }
    }
}

impl Default for VaeEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeDef for VaeEncode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let vae = input::<VaeHandle>(ctx, "vae", PortType::Vae)?;
        let image = ctx.image("image")?;
        let (samples, crop) = encode_image(vae, image, "VaeEncode")?;
        let noise_mask = match ctx.params.str("mask_from")? {
            "alpha" => Some(alpha_mask(image, crop, "VaeEncode")?),
            "input" => {
                let mask = ctx.input("mask").and_then(Value::as_image).ok_or_else(|| {
                    NodeError::failed(
                        "VaeEncode: mask_from 'input' needs the 'mask' input linked to a mask \
                         image",
                    )
                })?;
                Some(image_mask(mask, (crop.2, crop.3), "VaeEncode")?)
            }
            _ => None,
        };
        Ok(vec![object(
            PortType::Latent,
            Latent {
                noise_mask,
                ..Latent::new(samples, Vec::new())
            },
        )])
    }
}

/// AddReference: a reference image's latent joined to a conditioning (FLUX.2 [klein] editing).
pub struct AddReference {
    schema: NodeSchema,
}

impl AddReference {
    pub fn new() -> Self {
        AddReference {
            schema: NodeSchema::new("AddReference", "Add Reference", "conditioning")
                .doc(
                    "Appends a reference image (its latent, from VaeEncode) to a conditioning. \
                     The sampler joins every reference's tokens to the image's at each step with \
                     their own positions (time index 10, 20, 30, ... in order), as diffusers' \
                     Flux2KleinPipeline(image=[...]) and ComfyUI's ReferenceLatent do. Chain it \
                     for several references; give the negative conditioning the same chain for \
                     CFG, as diffusers does.",
                )
                .input("conditioning", PortType::Conditioning, "The prompt.")
                .input("latent", PortType::Latent, "The reference image's latent.")
                .output(
                    "conditioning",
                    PortType::Conditioning,
                    "The prompt with the reference appended.",
                ),
        }
    }
}

impl Default for AddReference {
    fn default() -> Self {
        Self::new()
    }
}

/// `conditioning` with every image of `latent`'s batch appended as a reference.
pub fn with_reference(
    conditioning: &Conditioning,
    latent: &Latent,
    what: &str,
) -> Result<Conditioning, NodeError> {
    let cerr = candle_err(what);
    let (b, c, _, _) = latent.samples.dims4().map_err(&cerr)?;
    if c != veetance_models::sampling::LATENT_CHANNELS {
        return Err(NodeError::failed(format!(
            "{what}: input 'latent' has {c} channels; a FLUX.2 reference latent has {}",
            veetance_models::sampling::LATENT_CHANNELS
        )));
    }
    let mut out = conditioning.clone();
    for i in 0..b {
        out.references
            .push(latent.samples.narrow(0, i, 1).map_err(&cerr)?);
    }
    Ok(out)
}

impl NodeDef for AddReference {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let conditioning = input::<Conditioning>(ctx, "conditioning", PortType::Conditioning)?;
        let latent = input::<Latent>(ctx, "latent", PortType::Latent)?;
        Ok(vec![object(
            PortType::Conditioning,
            with_reference(conditioning, latent, "AddReference")?,
        )])
    }
}
