//! FLUX.2 VAE: the KL autoencoder with 32 latent channels, quant convs and a batch-norm
//! normalisation over 2x2-patchified latents.
//!
//! Reference: diffusers' `AutoencoderKLFlux2` (`autoencoder_kl_flux2.py`) and the klein pipeline's
//! latent handling, BFL's `flux2/src/flux2/autoencoder.py`. The convolutional encoder and decoder are
//! candle's FLUX.1 ones (`candle_transformers::models::flux::autoencoder`, BFL naming), which have
//! the same structure; this module adds `quant_conv`, `post_quant_conv` and the batch norm.
//!
//! Latent spaces: the transformer works on the *normalised* 128-channel latent `(B, 128, H/16,
//! W/16)`; the VAE decoder on the raw 32-channel latent `(B, 32, H/8, W/8)`.
//! `decode` = de-normalise (`z * sqrt(var + eps) + mean`) -> un-patchify -> `post_quant_conv` ->
//! decoder. `encode` = encoder -> `quant_conv` -> mean of the Gaussian -> patchify -> normalise.
//!
//! The decoder is our own copy of candle's (`decoder.rs`, same weights and names) so that on CUDA
//! in bf16/f16 it runs our kernels (`veetance_kernels::conv2d`, `veetance_kernels::group_norm`); the
//! candle ops stay its reference and CPU path ([`Flux2Vae::decode_with`] chooses).
//!
//! Both BFL names (`decoder.up.0.block.0...`, `encoder.quant_conv`, `decoder.post_quant_conv`) and
//! diffusers names (`decoder.up_blocks.3.resnets.0...`, top-level `quant_conv`) load; the
//! diffusers mid-block attention linears are read as BFL's 1x1 convolutions.
//!
//! The decoder may be narrower than the encoder: BFL's FLUX.2 small decoder
//! (`full_encoder_small_decoder.safetensors` in ComfyUI's templates) keeps the full encoder and
//! a decoder of the same levels with fewer channels (diffusers' `decoder_block_out_channels`;
//! ComfyUI's `comfy/sd.py` takes the decoder's base width from `decoder.conv_in.weight`). Without a
//! `config.json` the widths of both are read from the tensor shapes ([`Config::from_tensors`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{conv2d, Conv2d, VarBuilder};
use candle_transformers::models::flux::autoencoder as ldm;
use serde::Deserialize;

mod decoder;

pub use decoder::StageTimer;
use decoder::{Conv, Decoder};

use crate::error::{Error, Result};
use crate::placement::{TensorFn, WeightBytes};
use crate::weights::{
    build_model_recorded, guess_model_kind, Source, TensorIndex, TensorList, WeightFiles,
};
use veetance_kernels as kernels;

/// The VAE hyper-parameters (diffusers `config.json` names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    pub in_channels: usize,
    pub out_channels: usize,
    /// The encoder's width per level (and the decoder's, unless `decoder_block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// The decoder's width per level when it differs from the encoder's (a small decoder).
    pub decoder_block_out_channels: Option<Vec<usize>>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub batch_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self::flux2()
    }
}

impl Config {
    /// The FLUX.2 VAE (shared by dev and klein).
    pub fn flux2() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            decoder_block_out_channels: None,
            layers_per_block: 2,
            latent_channels: 32,
            norm_num_groups: 32,
            batch_norm_eps: 1e-4,
        }
    }

    /// Reads a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads the text of a `config.json`.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The decoder's width per level.
    pub fn decoder_channels(&self) -> &[usize] {
        self.decoder_block_out_channels
            .as_deref()
            .unwrap_or(&self.block_out_channels)
    }

    /// The configuration read from the tensor shapes of a BFL-named or diffusers-named VAE: the
    /// levels and per-level widths of the encoder (`down.N.block.0.conv1`) and of the decoder
    /// (`up.N.block.0.conv1`) apart, the resnets per level, the latent, input and output channels.
    pub fn from_tensors(files: &dyn TensorIndex) -> Result<Self> {
        let diffusers = files
            .tensor_shape("decoder.up_blocks.0.resnets.0.conv1.weight")
            .is_some();
        let encoder_level = |i: usize| {
            if diffusers {
                format!("encoder.down_blocks.{i}.resnets")
            } else {
                format!("encoder.down.{i}.block")
            }
        };
        let levels = (0..)
            .take_while(|&i| {
                files
                    .tensor_shape(&format!("{}.0.conv1.weight", encoder_level(i)))
                    .is_some()
            })
            .count();
        let missing = |name: &str| Error::Config {
            path: files.first_path().to_path_buf(),
            reason: format!(
                "cannot read the VAE's configuration from its tensors: `{name}` is missing or not \
                 a convolution (found {})",
                guess_model_kind(files)
            ),
        };
        let dim = |name: String, axis: usize| -> Result<usize> {
            files
                .tensor_shape(&name)
                .filter(|s| s.len() == 4)
                .map(|s| s[axis])
                .ok_or_else(|| missing(&name))
        };
        if levels == 0 {
            return Err(missing(&format!("{}.0.conv1.weight", encoder_level(0))));
        }
        let encoder = (0..levels)
            .map(|i| dim(format!("{}.0.conv1.weight", encoder_level(i)), 0))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..levels)
            .map(|i| {
                let name = if diffusers {
                    format!(
                        "decoder.up_blocks.{}.resnets.0.conv1.weight",
                        levels - 1 - i
                    )
                } else {
                    format!("decoder.up.{i}.block.0.conv1.weight")
                };
                dim(name, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        let layers_per_block = (0..)
            .take_while(|&j| {
                files
                    .tensor_shape(&format!("{}.{j}.conv1.weight", encoder_level(0)))
                    .is_some()
            })
            .count();
        Ok(Self {
            in_channels: dim("encoder.conv_in.weight".into(), 1)?,
            out_channels: dim("decoder.conv_out.weight".into(), 0)?,
            decoder_block_out_channels: (decoder != encoder).then_some(decoder),
            block_out_channels: encoder,
            layers_per_block,
            latent_channels: dim("decoder.conv_in.weight".into(), 1)?,
            ..Self::flux2()
        })
    }

    /// candle's configurations of the encoder and of the decoder, or why the values cannot
    /// make one.
    pub fn validate(&self) -> std::result::Result<(ldm::Config, ldm::Config), String> {
        if self.norm_num_groups != 32 {
            return Err(format!(
                "norm_num_groups {} is not supported (the FLUX VAE uses 32)",
                self.norm_num_groups
            ));
        }
        let part = |what: &str, widths: &[usize]| {
            let ch = *widths.first().ok_or_else(|| format!("{what} is empty"))?;
            if ch == 0 || widths.iter().any(|c| c % ch != 0 || c % 32 != 0) {
                return Err(format!(
                    "{what} {widths:?} must be multiples of the first one and of 32"
                ));
            }
            Ok(ldm::Config {
                resolution: 256,
                in_channels: self.in_channels,
                ch,
                out_ch: self.out_channels,
                ch_mult: widths.iter().map(|c| c / ch).collect(),
                num_res_blocks: self.layers_per_block,
                z_channels: self.latent_channels,
                scale_factor: 1.0,
                shift_factor: 0.0,
            })
        };
        let encoder = part("block_out_channels", &self.block_out_channels)?;
        let decoder = part("decoder_block_out_channels", self.decoder_channels())?;
        if decoder.ch_mult.len() != encoder.ch_mult.len() {
            return Err(format!(
                "the decoder has {} levels and the encoder {}: decoder_block_out_channels {:?} \
                 must have one width per level of block_out_channels {:?}",
                decoder.ch_mult.len(),
                encoder.ch_mult.len(),
                self.decoder_channels(),
                self.block_out_channels
            ));
        }
        Ok((encoder, decoder))
    }
}

/// Which parts of the autoencoder to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    Decoder,
    EncoderAndDecoder,
}

/// The FLUX.2 autoencoder.
#[derive(Debug, Clone)]
pub struct Flux2Vae {
    encoder: Option<(ldm::Encoder, Conv2d)>,
    decoder: Decoder,
    post_quant_conv: Conv,
    bn_mean: Tensor,
    bn_std: Tensor,
    latent_channels: usize,
    dtype: DType,
    cfg: Config,
    parts: Parts,
    /// Whether `decode` takes our CUDA kernels where they apply (on by default).
    fast_kernels: bool,
    /// The tensors it was built from, by name (shared with the layers, not copied): candle's
    /// encoder and decoder keep their fields private, so a move rebuilds the VAE from this list.
    tensors: Arc<TensorList>,
}

impl Flux2Vae {
    /// Builds from a `VarBuilder` in BFL naming.
    pub fn new(cfg: &Config, parts: Parts, vb: VarBuilder) -> candle_core::Result<Self> {
        let (encoder_cfg, decoder_cfg) = cfg.validate().map_err(candle_core::Error::Msg)?;
        let z = cfg.latent_channels;
        let patched = 4 * z;
        let encoder = match parts {
            Parts::Decoder => None,
            Parts::EncoderAndDecoder => Some((
                ldm::Encoder::new(&encoder_cfg, vb.pp("encoder"))?,
                conv2d(
                    2 * z,
                    2 * z,
                    1,
                    Default::default(),
                    vb.pp("encoder.quant_conv"),
                )?,
            )),
        };
        let decoder = Decoder::new(&decoder_cfg, vb.pp("decoder"))?;
        let post_quant_conv = Conv::new(z, z, 1, 1, 0, vb.pp("decoder.post_quant_conv"))?;
        // Statistics stay in f32 whatever the weights' dtype.
        let bn = vb.pp("bn").set_dtype(DType::F32);
        let bn_mean = bn
            .get(patched, "running_mean")?
            .reshape((1, patched, 1, 1))?;
        let bn_var = bn
            .get(patched, "running_var")?
            .reshape((1, patched, 1, 1))?;
        let bn_std = (bn_var + cfg.batch_norm_eps)?.sqrt()?;
        Ok(Self {
            encoder,
            decoder,
            post_quant_conv,
            bn_mean,
            bn_std,
            latent_channels: z,
            dtype: vb.dtype(),
            cfg: cfg.clone(),
            parts,
            fast_kernels: true,
            tensors: Arc::new(Vec::new()),
        })
    }

    /// A copy with every weight on `device` (bit-identical values), rebuilt from the tensors it was
    /// loaded from. Only a VAE from [`load_vae`] knows them.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let (moved, _) = self.map_tensors(&mut |t| crate::placement::move_tensor(t, device))?;
        Ok(moved)
    }

    /// This VAE rebuilt on the device of the mapped tensors, with every weight replaced by
    /// `f(weight)`; also returns how many tensors went through `f`.
    pub fn map_tensors(&self, f: TensorFn<'_>) -> Result<(Self, usize)> {
        if self.tensors.is_empty() {
            return Err(Error::InvalidInput(
                "this VAE was built without its tensor list, so it cannot move between devices; \
                 load it with vae::load_vae"
                    .into(),
            ));
        }
        let moved = self
            .tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), f(t)?)))
            .collect::<candle_core::Result<TensorList>>()?;
        let device = moved
            .first()
            .map(|(_, t)| t.device().clone())
            .unwrap_or(Device::Cpu);
        let map: HashMap<String, Tensor> = moved.iter().cloned().collect();
        let vb = VarBuilder::from_tensors(map, self.dtype, &device);
        let mut vae = Self::new(&self.cfg, self.parts, vb)?;
        vae.fast_kernels = self.fast_kernels;
        let count = moved.len();
        vae.tensors = Arc::new(moved);
        Ok((vae, count))
    }

    /// This VAE with our CUDA kernels for `decode` on (the default) or off (candle's ops only, the
    /// reference). They only ever run on a CUDA device in bf16/f16.
    pub fn with_fast_kernels(mut self, on: bool) -> Self {
        self.fast_kernels = on;
        self
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// How many weight tensors the VAE was loaded from.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Weight bytes per tier, as the VAE is placed now.
    pub fn weight_bytes(&self) -> WeightBytes {
        let mut bytes = WeightBytes::default();
        for (_, t) in self.tensors.iter() {
            bytes.add(t);
        }
        bytes
    }

    /// The device the VAE computes on.
    pub fn device(&self) -> &Device {
        self.bn_mean.device()
    }

    /// An estimate of the device bytes a whole decode of a `(B, 128, h, w)` latent needs beyond
    /// the weights. Convolutions lower to im2col and a matmul, so the widest full-resolution
    /// convolution dominates: the last level's upsampler and first resnet conv read
    /// the decoder's `block_out_channels[1]` channels (its own widths: a small decoder's are
    /// narrower than the encoder's) at full resolution, whose im2col buffer holds nine values
    /// per input channel and pixel; beside it the input, the output and its layout copy, and the
    /// group norm's f32 copies. With a margin of 1.5x. On candle's path a whole 1024² decode in
    /// bf16 peaked at 10.6 GiB on the H200; this gives 11.3 GiB. Our CUDA kernels
    /// (`kernels::conv2d`, `kernels::group_norm`) write im2col in chunks of at most
    /// [`kernels::CONV_COL_LIMIT`] elements and normalise without an f32 copy, so where they run
    /// the buffer is capped and the norm term goes (not yet measured on the GPU).
    pub fn decode_bytes(&self, batch: usize, h: usize, w: usize) -> u64 {
        let pixels = (batch * h * w * 256) as u64; // 16x upscale on both axes
        let chans = self.cfg.decoder_channels();
        let c0 = chans.first().copied().unwrap_or(128) as u64;
        let c1 = chans.get(1).copied().unwrap_or(2 * c0 as usize) as u64;
        let s = self.dtype.size_in_bytes() as u64;
        let ours = self.fast_kernels
            && cfg!(feature = "cuda")
            && self.device().is_cuda()
            && matches!(self.dtype, DType::BF16 | DType::F16);
        let mut im2col = pixels * 9 * c1 * s;
        let mut norm = pixels * c1 * 4 * 2;
        if ours {
            im2col = im2col.min(kernels::CONV_COL_LIMIT as u64 * s);
            norm = 0;
        }
        let tensors = pixels * (c1 + 2 * c0) * s;
        let image = pixels * 3 * 4;
        (im2col + tensors + norm + image) * 3 / 2
    }

    /// `(B, 128, h, w)` normalised latent (or packed tokens with `token_hw`) -> image
    /// `(B, 3, 8*2h, 8*2w)` in about [-1, 1] (not clamped), f32.
    pub fn decode(&self, latent: &Tensor, token_hw: Option<(usize, usize)>) -> Result<Tensor> {
        self.decode_with(latent, token_hw, self.fast_kernels, None)
    }

    /// [`Flux2Vae::decode`] with the kernel choice given (`fast`: our CUDA kernels where they
    /// apply; `false`: candle's ops only) and, with `timer`, the time of every decoder stage
    /// (the device synchronised between stages).
    pub fn decode_with(
        &self,
        latent: &Tensor,
        token_hw: Option<(usize, usize)>,
        fast: bool,
        mut timer: Option<&mut StageTimer>,
    ) -> Result<Tensor> {
        let latent = match (latent.rank(), token_hw) {
            (3, Some((h, w))) => crate::sampling::unpack_latents(latent, h, w)?,
            (4, _) => latent.clone(),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "decode: expected (B, 128, h, w), or (B, h*w, 128) tokens with their height and width, got {:?}",
                    latent.dims()
                )))
            }
        };
        let c = latent.dim(1)?;
        if c != 4 * self.latent_channels {
            return Err(Error::InvalidInput(format!(
                "decode: expected {} latent channels, got {c}",
                4 * self.latent_channels
            )));
        }
        let z = latent
            .to_dtype(DType::F32)?
            .broadcast_mul(&self.bn_std)?
            .broadcast_add(&self.bn_mean)?;
        let z = unpatchify(&z)?.to_dtype(self.dtype)?;
        let z = self.post_quant_conv.forward(&z, fast, false, None)?;
        if let Some(t) = timer.as_deref_mut() {
            t.mark("de-normalise + unpatchify + post_quant_conv")?;
        }
        let image = self.decoder.forward(&z, fast, timer.as_deref_mut())?;
        let image = image.to_dtype(DType::F32)?;
        if let Some(t) = timer {
            t.mark("to f32")?;
        }
        Ok(image)
    }

    /// Pixels per latent token along each axis: the encoder's downscale (2 per level after the
    /// first) times the 2x2 patch; 16 for the FLUX.2 VAE.
    pub fn pixels_per_token(&self) -> usize {
        2usize.pow(self.cfg.block_out_channels.len().saturating_sub(1) as u32) * 2
    }

    /// Image `(B, 3, H, W)` in [-1, 1] (H, W multiples of [`Self::pixels_per_token`], 16 for
    /// FLUX.2) -> normalised latent `(B, 128, H/16, W/16)`, f32. The Gaussian's mean is taken
    /// (no sampling).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let (encoder, quant_conv) = self
            .encoder
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("this VAE was loaded without its encoder".into()))?;
        let (_, _, h, w) = image.dims4()?;
        let step = self.pixels_per_token();
        if h % step != 0 || w % step != 0 || h == 0 || w == 0 {
            return Err(Error::InvalidInput(format!(
                "encode: image size {w}x{h} is not a positive multiple of {step}"
            )));
        }
        let moments = quant_conv.forward(&encoder.forward(&image.to_dtype(self.dtype)?)?)?;
        let mean = moments
            .narrow(1, 0, self.latent_channels)?
            .to_dtype(DType::F32)?;
        Ok(patchify(&mean)?
            .broadcast_sub(&self.bn_mean)?
            .broadcast_div(&self.bn_std)?)
    }
}

/// `(B, C, 2h, 2w)` -> `(B, 4C, h, w)`, channel `c*4 + py*2 + px`.
pub fn patchify(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h2, w2) = xs.dims4()?;
    let (h, w) = (h2 / 2, w2 / 2);
    Ok(xs
        .reshape((b, c, h, 2, w, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * 4, h, w))?)
}

/// `(B, 4C, h, w)` -> `(B, C, 2h, 2w)`, the inverse of [`patchify`].
pub fn unpatchify(xs: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = xs.dims4()?;
    let c = c4 / 4;
    Ok(xs
        .reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// Where an internal (BFL) VAE tensor name is stored in the diffusers layout.
pub fn diffusers_source(name: &str, num_levels: usize) -> Source {
    if let Some(rest) = name.strip_prefix("encoder.quant_conv.") {
        return Source::Name(format!("quant_conv.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("decoder.post_quant_conv.") {
        return Source::Name(format!("post_quant_conv.{rest}"));
    }
    let Some((part, rest)) = name.split_once('.') else {
        return Source::Name(name.to_string());
    };
    if part != "encoder" && part != "decoder" {
        return Source::Name(name.to_string());
    }
    let resnet = |field: &str| field.replace("nin_shortcut", "conv_shortcut");
    let mapped = if let Some(r) = rest.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{r}")
    } else if let Some(r) = rest.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{r}")
    } else if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (field, kind) = r.split_once('.').unwrap_or((r, ""));
        let target = match field {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            _ => "to_out.0",
        };
        let full = format!("{part}.mid_block.attentions.0.{target}.{kind}");
        return if field != "norm" && kind == "weight" {
            Source::Reshape(full)
        } else {
            Source::Name(full)
        };
    } else if let Some(r) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("down.") {
        // down.{i}.block.{j}.x -> down_blocks.{i}.resnets.{j}.x ; down.{i}.downsample.conv.x
        let mut it = r.splitn(3, '.');
        let (i, kind, tail) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        match kind {
            "block" => format!("down_blocks.{i}.resnets.{}", resnet(tail)),
            _ => format!("down_blocks.{i}.downsamplers.0.{tail}"),
        }
    } else if let Some(r) = rest.strip_prefix("up.") {
        let mut it = r.splitn(3, '.');
        let (i, kind, tail) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let i = i
            .parse::<usize>()
            .map_or(0, |i| num_levels.saturating_sub(1 + i));
        match kind {
            "block" => format!("up_blocks.{i}.resnets.{}", resnet(tail)),
            _ => format!("up_blocks.{i}.upsamplers.0.{tail}"),
        }
    } else {
        rest.to_string()
    };
    Source::Name(format!("{part}.{mapped}"))
}

/// Loads the FLUX.2 VAE from a BFL file (`flux2-vae.safetensors`/`ae.safetensors`, or the small
/// decoder's `full_encoder_small_decoder.safetensors`) or a diffusers `vae/` folder, in `dtype` on
/// `device`. `config`: `None` reads `config.json` in a diffusers folder, else the configuration
/// is read from the tensor shapes ([`Config::from_tensors`]), else [`Config::flux2`].
pub fn load_vae(
    path: &Path,
    config: Option<&Config>,
    parts: Parts,
    dtype: DType,
    device: &Device,
) -> Result<Flux2Vae> {
    crate::flux2::check_dtype(dtype, device)?;
    let files = Arc::new(WeightFiles::open_path(path)?);
    let config = match config {
        Some(c) => c.clone(),
        None => {
            let json = path.join("config.json");
            if path.is_dir() && json.is_file() {
                Config::from_file(&json)?
            } else {
                Config::from_tensors(files.as_ref()).unwrap_or_else(|_| Config::flux2())
            }
        }
    };
    config.validate().map_err(|reason| Error::Config {
        path: path.to_path_buf(),
        reason,
    })?;
    if !files.contains("bn.running_mean") {
        return Err(Error::WrongModel {
            path: files.path().to_path_buf(),
            expected: "the FLUX.2 VAE (with bn.running_mean)".into(),
            found: guess_model_kind(files.as_ref()),
        });
    }
    let diffusers = files.contains("decoder.up_blocks.0.resnets.0.conv1.weight");
    let levels = config.block_out_channels.len();
    let build = |vb| Flux2Vae::new(&config, parts, vb);
    let (mut vae, tensors) = if diffusers {
        build_model_recorded(
            files,
            move |n| diffusers_source(n, levels),
            dtype,
            device,
            build,
        )?
    } else {
        build_model_recorded(files, |n| Source::Name(n.to_string()), dtype, device, build)?
    };
    vae.tensors = Arc::new(tensors);
    Ok(vae)
}
