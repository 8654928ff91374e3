//! A cheap latent-to-RGB preview of a FLUX.2 latent, for showing progress at every step.
//!
//! ComfyUI's `Latent2RGBPreviewer` with the `Flux2` factors (`comfy/latent_formats.py`): the
//! 128-channel packed latent is un-patchified to 32 channels at twice the token resolution, and each
//! pixel is a fixed linear map of its 32 channels to RGB. One (3 x 32) matrix product per pixel, so
//! a 1024x1024 image (64x64 tokens) gives a 128x128 preview for about 0.8 MFLOP.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::sampling::LATENT_CHANNELS;

/// Row `c` maps VAE latent channel `c` to (R, G, B).
const FLUX2_RGB_FACTORS: [[f32; 3]; 32] = [
    [0.0058, 0.0113, 0.0073],
    [0.0495, 0.0443, 0.0836],
    [-0.0099, 0.0096, 0.0644],
    [0.2144, 0.3009, 0.3652],
    [0.0166, -0.0039, -0.0054],
    [0.0157, 0.0103, -0.0160],
    [-0.0398, 0.0902, -0.0235],
    [-0.0052, 0.0095, 0.0109],
    [-0.3527, -0.2712, -0.1666],
    [-0.0301, -0.0356, -0.0180],
    [-0.0107, 0.0078, 0.0013],
    [0.0746, 0.0090, -0.0941],
    [0.0156, 0.0169, 0.0070],
    [-0.0034, -0.0040, -0.0114],
    [0.0032, 0.0181, 0.0080],
    [-0.0939, -0.0008, 0.0186],
    [0.0018, 0.0043, 0.0104],
    [0.0284, 0.0056, -0.0127],
    [-0.0024, -0.0022, -0.0030],
    [0.1207, -0.0026, 0.0065],
    [0.0128, 0.0101, 0.0142],
    [0.0137, -0.0072, -0.0007],
    [0.0095, 0.0092, -0.0059],
    [0.0000, -0.0077, -0.0049],
    [-0.0465, -0.0204, -0.0312],
    [0.0095, 0.0012, -0.0066],
    [0.0290, -0.0034, 0.0025],
    [0.0220, 0.0169, -0.0048],
    [-0.0332, -0.0457, -0.0468],
    [-0.0085, 0.0389, 0.0609],
    [-0.0076, 0.0003, -0.0043],
    [-0.0111, -0.0460, -0.0614],
];
const FLUX2_RGB_BIAS: [f32; 3] = [-0.0329, -0.0718, -0.0851];

/// An 8-bit RGB picture, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Preview of the first latent of a batch.
///
/// `latent` is either packed tokens `(B, h*w, 128)` (then `height`/`width` in tokens are needed) or
/// `(B, 128, h, w)`. The picture is `2w x 2h` pixels. The latent is copied to the host once; the
/// arithmetic is done there in f32.
pub fn preview_rgb(latent: &Tensor, token_hw: Option<(usize, usize)>) -> Result<RgbImage> {
    let (c, h, w, values) = match (latent.rank(), token_hw) {
        (3, Some((h, w))) => {
            let (_, n, c) = latent.dims3()?;
            if n != h * w {
                return Err(Error::InvalidInput(format!(
                    "preview: {n} tokens do not make a {h}x{w} latent"
                )));
            }
            // (h*w, C) token-major
            let v = latent.get(0)?.to_dtype(DType::F32)?.t()?.contiguous()?;
            (c, h, w, v.flatten_all()?.to_vec1::<f32>()?)
        }
        (4, _) => {
            let (_, c, h, w) = latent.dims4()?;
            let v = latent.get(0)?.to_dtype(DType::F32)?.flatten_all()?;
            (c, h, w, v.to_vec1::<f32>()?)
        }
        _ => {
            return Err(Error::InvalidInput(format!(
                "preview: expected (B, N, 128) tokens with their height and width, or (B, 128, h, w), got {:?}",
                latent.dims()
            )))
        }
    };
    if c != LATENT_CHANNELS {
        return Err(Error::InvalidInput(format!(
            "preview: expected {LATENT_CHANNELS} latent channels, got {c}"
        )));
    }
    // `values` is channel-major (C, h, w); channel = c32 * 4 + py * 2 + px.
    let (out_w, out_h) = (2 * w, 2 * h);
    let mut pixels = vec![0u8; out_w * out_h * 3];
    for y in 0..h {
        for x in 0..w {
            for py in 0..2 {
                for px in 0..2 {
                    let mut rgb = FLUX2_RGB_BIAS;
                    for (c32, factors) in FLUX2_RGB_FACTORS.iter().enumerate() {
                        let ch = c32 * 4 + py * 2 + px;
                        let v = values[(ch * h + y) * w + x];
                        for (acc, f) in rgb.iter_mut().zip(factors) {
                            *acc += v * f;
                        }
                    }
                    let o = ((2 * y + py) * out_w + 2 * x + px) * 3;
                    for (k, value) in rgb.iter().enumerate() {
                        pixels[o + k] = (((value + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
                    }
                }
            }
        }
    }
    Ok(RgbImage {
        width: out_w,
        height: out_h,
        pixels,
    })
}
