//! VaeDecode: latent to image, whole or in overlapping tiles to save memory.

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value,
};

use crate::values::{candle_err, input, model_err, Latent, VaeHandle};

pub struct VaeDecode {
    schema: NodeSchema,
}

impl VaeDecode {
    pub fn new() -> Self {
        VaeDecode {
            schema: NodeSchema::new("VaeDecode", "VAE Decode", "latent")
                .doc(
                    "Decodes latents to images with the FLUX.2 VAE. Tiled decoding works on \
                     overlapping tiles, blended where they overlap: far less memory for large \
                     images, at the cost of small differences along tile seams.",
                )
                .input("vae", PortType::Vae, "From LoadVae.")
                .input("latent", PortType::Latent, "From the sampler.")
                .param(ParamDef::bool("tiled", false, "Decode in tiles."))
                .param(ParamDef::int(
                    "tile_size",
                    64,
                    8,
                    1024,
                    "Tile side in latent tokens (64 tokens = 1024 pixels).",
                ))
                .param(ParamDef::int(
                    "overlap",
                    8,
                    0,
                    256,
                    "Overlap between tiles in latent tokens.",
                ))
                .output("image", PortType::Image, "The decoded images."),
        }
    }
}

impl Default for VaeDecode {
    fn default() -> Self {
        Self::new()
    }
}

/// The image being assembled from tiles: weighted sums and the weight per pixel.
struct TileCanvas {
    sum: Vec<f32>,
    weight: Vec<f32>,
    height: usize,
    width: usize,
}

/// Decodes `(B, 128, h, w)` in overlapping tiles, blending with linear ramps across overlaps.
fn decode_tiled(
    ctx: &ExecContext<'_>,
    vae: &VaeHandle,
    latent: &Tensor,
    tile: usize,
    overlap: usize,
) -> Result<Tensor, NodeError> {
    let cerr = candle_err("tiled decode");
    let (b, _, h, w) = latent.dims4().map_err(&cerr)?;
    let overlap = overlap.min(tile / 2);
    let stride = (tile - overlap).max(1);
    let starts = |len: usize| -> Vec<usize> {
        if len <= tile {
            return vec![0];
        }
        let mut v: Vec<usize> = (0..)
            .map(|i| i * stride)
            .take_while(|&s| s + tile < len)
            .collect();
        v.push(len - tile);
        v
    };
    let (ys, xs) = (starts(h), starts(w));
    let total = (ys.len() * xs.len()) as u64;
    let mut acc: Option<TileCanvas> = None;
    let mut done = 0;
    for &y0 in &ys {
        for &x0 in &xs {
            ctx.check_cancelled()?;
            let th = tile.min(h);
            let tw = tile.min(w);
            let part = latent
                .narrow(2, y0, th)
                .and_then(|t| t.narrow(3, x0, tw))
                .map_err(&cerr)?;
            let img = vae
                .vae
                .decode(&part, None)
                .map_err(model_err("decoding a tile"))?
                .to_device(&Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(&cerr)?;
            let (_, c, ph, pw) = img.dims4().map_err(&cerr)?;
            let scale = ph / th;
            let canvas = acc.get_or_insert_with(|| {
                let (fh, fw) = (h * scale, w * scale);
                TileCanvas {
                    sum: vec![0.0; b * c * fh * fw],
                    weight: vec![0.0; fh * fw],
                    height: fh,
                    width: fw,
                }
            });
            let (full_h, full_w) = (canvas.height, canvas.width);
            let values = img
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(&cerr)?;
            let ramp = overlap * scale;
            let edge_weight = |pos: usize, len: usize, at_start: bool, at_end: bool| -> f32 {
                let mut wgt = 1.0f32;
                if ramp > 0 {
                    if !at_start && pos < ramp {
                        wgt = wgt.min((pos as f32 + 0.5) / ramp as f32);
                    }
                    if !at_end && len - pos <= ramp {
                        wgt = wgt.min(((len - pos) as f32 - 0.5) / ramp as f32);
                    }
                }
                wgt
            };
            let (py0, px0) = (y0 * scale, x0 * scale);
            for yy in 0..ph {
                let wy = edge_weight(yy, ph, y0 == 0, y0 + th >= h);
                for xx in 0..pw {
                    let wx = edge_weight(xx, pw, x0 == 0, x0 + tw >= w);
                    let wgt = wy * wx;
                    let o = (py0 + yy) * full_w + px0 + xx;
                    canvas.weight[o] += wgt;
                    for bi in 0..b {
                        for ci in 0..c {
                            let src = ((bi * c + ci) * ph + yy) * pw + xx;
                            let dst = ((bi * c + ci) * full_h + py0 + yy) * full_w + px0 + xx;
                            canvas.sum[dst] += values[src] * wgt;
                        }
                    }
                }
            }
            done += 1;
            ctx.progress(done, total);
        }
    }
    let TileCanvas {
        mut sum,
        weight,
        height: fh,
        width: fw,
    } = acc.ok_or_else(|| NodeError::failed("empty latent: nothing to decode"))?;
    let c = sum.len() / (b * fh * fw);
    for bi in 0..b {
        for ci in 0..c {
            for (i, wgt) in weight.iter().enumerate() {
                sum[(bi * c + ci) * fh * fw + i] /= wgt.max(1e-6);
            }
        }
    }
    Tensor::from_vec(sum, (b, c, fh, fw), &Device::Cpu).map_err(&cerr)
}

impl NodeDef for VaeDecode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let vae = input::<VaeHandle>(ctx, "vae", PortType::Vae)?;
        let latent = input::<Latent>(ctx, "latent", PortType::Latent)?;
        let cerr = candle_err("VaeDecode");
        let device = vae.device.clone();
        let samples = latent.samples.to_device(&device).map_err(&cerr)?;
        let decoded = if ctx.params.bool("tiled")? {
            decode_tiled(
                ctx,
                vae,
                &samples,
                ctx.params.int("tile_size")? as usize,
                ctx.params.int("overlap")? as usize,
            )?
        } else {
            vae.vae
                .decode(&samples, None)
                .map_err(model_err("decoding"))?
        };
        // (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) in [0, 1].
        let pixels = ((decoded.to_device(&Device::Cpu).map_err(&cerr)? + 1.0)
            .and_then(|t| t / 2.0)
            .and_then(|t| t.clamp(0f32, 1f32))
            .and_then(|t| t.permute((0, 2, 3, 1)))
            .and_then(|t| t.contiguous()))
        .map_err(&cerr)?;
        let (b, h, w, c) = pixels.dims4().map_err(&cerr)?;
        let data = pixels
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(&cerr)?;
        let image = Image::new(b as u32, h as u32, w as u32, c as u32, data)
            .map_err(NodeError::failed)?
            .with_meta(latent.meta.clone());
        Ok(vec![Value::Image(image)])
    }
}
