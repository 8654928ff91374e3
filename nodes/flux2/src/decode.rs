//! VaeDecode: latent to image, whole or in overlapping tiles to save memory.

use candle_core::{DType, Device, Tensor};
use veetance_core::{
    ExecContext, Image, NodeDef, NodeError, NodeSchema, ParamDef, PortType, Value,
};

use veetance_models::placement::is_out_of_memory;

use crate::loaders::gib;
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
                     images, at the cost of small differences along tile seams. Tiles are also \
                     used, with a warning, when a whole decode would not fit the VRAM budget or \
                     runs out of device memory.",
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

/// Why a decode that was not asked to tile does: the estimate and the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoTiled {
    pub whole: u64,
    pub room: u64,
    /// Whether the chosen tile's estimate fits the room.
    pub fits: bool,
}

/// How VaeDecode decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeMode {
    Whole,
    /// In tiles of `tile` latent tokens; `auto` when the room chose it rather than the param.
    Tiled {
        tile: usize,
        auto: Option<AutoTiled>,
    },
}

/// Whole, unless the param asks for tiles or the device room cannot hold a whole decode
/// (`need(h, w)`: estimated bytes for a latent of that many tokens). An automatic tile is the
/// `tile_size` param, halved while its estimate is over the room (not below 8 tokens).
pub fn choose_mode(
    tiled: bool,
    room: Option<u64>,
    tile_size: usize,
    need: impl Fn(usize, usize) -> u64,
) -> DecodeMode {
    if tiled {
        return DecodeMode::Tiled {
            tile: tile_size,
            auto: None,
        };
    }
    let Some(room) = room else {
        return DecodeMode::Whole;
    };
    let whole = need(usize::MAX, usize::MAX);
    if whole <= room {
        return DecodeMode::Whole;
    }
    let mut tile = tile_size.max(8);
    while tile > 8 && need(tile, tile) > room {
        tile = (tile / 2).max(8);
    }
    DecodeMode::Tiled {
        tile,
        auto: Some(AutoTiled {
            whole,
            room,
            fits: need(tile, tile) <= room,
        }),
    }
}

/// Runs `whole`; when it fails because the device ran out of memory, warns and runs `tiled`.
pub fn decode_with_fallback(
    ctx: &ExecContext<'_>,
    whole: impl FnOnce() -> veetance_models::Result<Tensor>,
    tiled: impl FnOnce() -> Result<Tensor, NodeError>,
) -> Result<Tensor, NodeError> {
    match whole() {
        Ok(t) => Ok(t),
        Err(e) if is_out_of_memory(&e.to_string()) => {
            ctx.warn(format!(
                "the whole decode ran out of device memory ({e}); decoding again in tiles"
            ));
            tiled()
        }
        Err(e) => Err(model_err("decoding")(e)),
    }
}

impl NodeDef for VaeDecode {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn execute(&self, ctx: &mut ExecContext<'_>) -> Result<Vec<Value>, NodeError> {
        let vae = input::<VaeHandle>(ctx, "vae", PortType::Vae)?;
        let latent = input::<Latent>(ctx, "latent", PortType::Latent)?;
        let tiles = Tiles {
            asked: ctx.params.bool("tiled")?,
            size: ctx.params.int("tile_size")? as usize,
            overlap: ctx.params.int("overlap")? as usize,
        };
        Ok(vec![Value::Image(decode_latent(ctx, vae, latent, tiles)?)])
    }

    fn host_need(&self, params: &veetance_core::Params, inputs: &[(&str, Value)]) -> Option<u64> {
        let tiles = Tiles {
            asked: params.bool("tiled").ok()?,
            size: params.int("tile_size").ok()? as usize,
            overlap: 0,
        };
        decode_host_need(inputs, tiles)
    }
}

/// How [`decode_latent`] may tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// Tile whatever the room.
    pub asked: bool,
    /// Tile side in latent tokens (the start when the room chooses tiles).
    pub size: usize,
    /// Overlap between tiles in latent tokens.
    pub overlap: usize,
}

impl Default for Tiles {
    /// VaeDecode's defaults: whole unless the room is short, then tiles of 64 tokens overlapping
    /// by 8.
    fn default() -> Self {
        Tiles {
            asked: false,
            size: 64,
            overlap: 8,
        }
    }
}

/// Host bytes of the decoded image batch as the decode holds it at its end: the f32 pixels
/// assembled (tiles' weighted sums or the device's copy), the tensor, and the image value.
fn image_host_bytes(batch: usize, h: usize, w: usize) -> u64 {
    let pixels = (batch as u64) * (h as u64) * (w as u64) * 256; // 16x upscale on both axes
    3 * pixels * 3 * 4
}

/// Host bytes a decode of the `latent` input with `vae` needs at least, for
/// `NodeDef::host_need`: the image it makes, and on the CPU the decode's own working memory in
/// the smallest tiles it may choose (the asked tile size, else 8 tokens; a whole decode is
/// chosen only when the room holds it, see [`decode_latent`]).
pub fn decode_host_need(inputs: &[(&str, Value)], tiles: Tiles) -> Option<u64> {
    let find = |port: &str| {
        inputs
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(port))
            .and_then(|(_, v)| v.as_object())
    };
    let vae = find("vae")?.downcast::<VaeHandle>()?;
    let latent = find("latent")
        .or_else(|| find("samples"))?
        .downcast::<Latent>()?;
    let (batch, _, h, w) = latent.samples.dims4().ok()?;
    let work = if vae.device.is_cpu() {
        let tile = if tiles.asked { tiles.size } else { 8 };
        vae.vae.decode_bytes(batch, tile.min(h), tile.min(w))
    } else {
        0
    };
    Some(image_host_bytes(batch, h, w).saturating_add(work))
}

/// Decodes `latent` to an image batch in [0, 1] with its `meta`: whole, or in tiles when asked or
/// when the room cannot hold a whole decode (with a warning), and again in tiles when a whole
/// decode runs out of device memory. The room is the device's, or on the CPU the host memory
/// left beside the image. VaeDecode and ComfyUI's VAEDecode.
pub fn decode_latent(
    ctx: &ExecContext<'_>,
    vae: &VaeHandle,
    latent: &Latent,
    tiles: Tiles,
) -> Result<Image, NodeError> {
    let cerr = candle_err("VaeDecode");
    let device = vae.device.clone();
    let samples = latent.samples.to_device(&device).map_err(&cerr)?;
    let (batch, _, h, w) = samples.dims4().map_err(&cerr)?;
    let Tiles {
        asked,
        size: tile_size,
        overlap,
    } = tiles;
    // On the CPU the decode lives in host memory: the free host memory (less the image it
    // makes) bounds it, and so does a budget the run set for its device, whichever is smaller.
    let host_room = if device.is_cpu() {
        ctx.host_room()
            .map(|r| r.saturating_sub(image_host_bytes(batch, h, w)))
    } else {
        None
    };
    let (room, room_of) = match (host_room, ctx.device_room()) {
        (Some(host), Some(dev)) if host < dev => (Some(host), "host memory"),
        (Some(host), None) => (Some(host), "host memory"),
        (_, dev) => (dev, "device"),
    };
    let mode = choose_mode(asked, room, tile_size, |th, tw| {
        vae.vae.decode_bytes(batch, th.min(h), tw.min(w))
    });
    let decoded = match mode {
        DecodeMode::Whole => decode_with_fallback(
            ctx,
            || vae.vae.decode(&samples, None),
            || decode_tiled(ctx, vae, &samples, tile_size, overlap),
        )?,
        DecodeMode::Tiled { tile, auto } => {
            if let Some(auto) = auto {
                ctx.warn(format!(
                    "decoding in tiles of {tile} latent tokens: a whole decode needs about {}, \
                     more than the {room_of} room ({}){}",
                    gib(auto.whole),
                    gib(auto.room),
                    if auto.fits {
                        String::new()
                    } else {
                        "; even the smallest tile may not fit".to_string()
                    }
                ));
            }
            decode_tiled(ctx, vae, &samples, tile, overlap)?
        }
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
    Ok(Image::new(b as u32, h as u32, w as u32, c as u32, data)
        .map_err(NodeError::failed)?
        .with_meta(latent.meta.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use veetance_core::{CancelToken, CollectSink, Event, Params, RunEnv};

    /// A decode of `h × w` tokens needs `h * w` bytes in these tests.
    fn need(h: usize, w: usize) -> u64 {
        (h.min(100) * w.min(100)) as u64
    }

    #[test]
    fn whole_when_no_room_is_set_or_it_fits() {
        assert_eq!(choose_mode(false, None, 64, need), DecodeMode::Whole);
        assert_eq!(
            choose_mode(false, Some(10_000), 64, need),
            DecodeMode::Whole
        );
    }

    #[test]
    fn the_tiled_param_wins_and_is_not_reported_as_automatic() {
        assert_eq!(
            choose_mode(true, None, 32, need),
            DecodeMode::Tiled {
                tile: 32,
                auto: None
            }
        );
    }

    #[test]
    fn a_small_room_halves_the_tile_until_it_fits() {
        // 64² = 4096 > 2000, 32² = 1024 fits.
        assert_eq!(
            choose_mode(false, Some(2000), 64, need),
            DecodeMode::Tiled {
                tile: 32,
                auto: Some(AutoTiled {
                    whole: 10_000,
                    room: 2000,
                    fits: true
                })
            }
        );
        // Nothing fits: the smallest tile, flagged.
        let DecodeMode::Tiled { tile, auto } = choose_mode(false, Some(1), 64, need) else {
            panic!("expected tiles")
        };
        assert_eq!(tile, 8);
        assert!(!auto.unwrap().fits);
    }

    fn with_ctx(f: impl FnOnce(&ExecContext<'_>)) -> Vec<String> {
        let env = RunEnv {
            out_dir: std::env::temp_dir(),
            models_dir: std::env::temp_dir(),
            run_index: 0,
            workflow: None,
            ..RunEnv::default()
        };
        let cancel = CancelToken::default();
        let sink = CollectSink::default();
        let ctx = ExecContext::new(
            "decode",
            Params::default(),
            Vec::new(),
            &env,
            &cancel,
            &sink,
        );
        f(&ctx);
        sink.take()
            .into_iter()
            .filter_map(|e| match e {
                Event::Warning { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    fn one() -> Tensor {
        Tensor::new(&[1f32], &Device::Cpu).unwrap()
    }

    #[test]
    fn an_out_of_memory_whole_decode_is_retried_in_tiles_with_a_warning() {
        let warnings = with_ctx(|ctx| {
            let oom = candle_core::Error::Msg(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
            );
            let out = decode_with_fallback(ctx, || Err(oom.into()), || Ok(one())).unwrap();
            assert_eq!(out.to_vec1::<f32>().unwrap(), vec![1.0]);
        });
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("decoding again in tiles"),
            "{warnings:?}"
        );
    }

    #[test]
    fn other_decode_errors_are_not_retried() {
        let warnings = with_ctx(|ctx| {
            let err = veetance_models::Error::InvalidInput("bad latent".into());
            let result = decode_with_fallback(ctx, || Err(err), || panic!("must not tile"));
            let message = result.unwrap_err().to_string();
            assert!(message.contains("bad latent"), "{message}");
        });
        assert!(warnings.is_empty());
    }
}
