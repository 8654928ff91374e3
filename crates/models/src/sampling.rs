//! Flow-match Euler sampling for FLUX.2: schedule, latent packing, position ids, seeded noise and
//! the denoising loop.
//!
//! Follows diffusers' `Flux2KleinPipeline` (`compute_empirical_mu`, `_prepare_latent_ids`,
//! `_prepare_text_ids`, `_pack_latents`) and `FlowMatchEulerDiscreteScheduler` with dynamic
//! (exponential) shifting, which BFL's `get_schedule` and ComfyUI's `Flux2Scheduler` agree with.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Number of channels of a packed FLUX.2 latent token (32 VAE channels x 2 x 2 patch).
pub const LATENT_CHANNELS: usize = 128;
/// Pixels per latent token along each axis (8x VAE downscale, 2x2 patch).
pub const PIXELS_PER_TOKEN: usize = 16;

/// The empirical `mu` of FLUX.2's time shift, fitted by BFL on the number of image tokens and
/// steps. Above 4300 tokens it ignores the step count, which makes the schedule jump there; this
/// is replicated on purpose.
pub fn empirical_mu(image_seq_len: usize, num_steps: usize) -> f64 {
    let (a1, b1) = (8.738_095_24e-5, 1.898_333_33);
    let (a2, b2) = (0.000_169_27, 0.456_666_66);
    let seq = image_seq_len as f64;
    if image_seq_len > 4300 {
        return a2 * seq + b2;
    }
    let m_200 = a2 * seq + b2;
    let m_10 = a1 * seq + b1;
    let a = (m_200 - m_10) / 190.0;
    let b = m_200 - 200.0 * a;
    a * num_steps as f64 + b
}

/// The sigmas of a FLUX.2 run: `num_steps + 1` values from 1.0 down to 0.0.
///
/// `t_i = linspace(1, 1/N, N)` (in f64, then rounded to f32) shifted by
/// `exp(mu) / (exp(mu) + (1/t - 1))` in f32 arithmetic, as diffusers' scheduler does with numpy,
/// then a final 0.
pub fn schedule(num_steps: usize, image_seq_len: usize) -> Vec<f32> {
    if num_steps == 0 {
        return vec![0.0];
    }
    let mu = empirical_mu(image_seq_len, num_steps);
    let e = mu.exp() as f32;
    let n = num_steps as f64;
    let mut sigmas: Vec<f32> = (0..num_steps)
        .map(|i| {
            // np.linspace(1.0, 1/N, N)
            let t = if num_steps == 1 {
                1.0
            } else {
                1.0 + (1.0 / n - 1.0) * i as f64 / (n - 1.0)
            } as f32;
            e / (e + (1.0 / t - 1.0))
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// Number of image tokens for a picture of `width` x `height` pixels (both multiples of 16).
pub fn image_seq_len(width: usize, height: usize) -> usize {
    (width / PIXELS_PER_TOKEN) * (height / PIXELS_PER_TOKEN)
}

/// `(B, C, h, w)` -> `(B, h*w, C)`, row-major over `(h, w)`.
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    Ok(latents
        .reshape((b, c, h * w))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `(B, h*w, C)` -> `(B, C, h, w)`, the inverse of [`pack_latents`].
pub fn unpack_latents(tokens: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, n, c) = tokens.dims3()?;
    if n != height * width {
        return Err(Error::InvalidInput(format!(
            "{n} latent tokens cannot be unpacked to {height}x{width}"
        )));
    }
    Ok(tokens
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, c, height, width))?)
}

/// Image position ids `(h*w, 4)` in f32: `(t=0, y, x, l=0)`, y-major.
pub fn image_ids(height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(height * width * 4);
    for y in 0..height {
        for x in 0..width {
            ids.extend_from_slice(&[0.0f32, y as f32, x as f32, 0.0]);
        }
    }
    Ok(Tensor::from_vec(ids, (height * width, 4), device)?)
}

/// Text position ids `(len, 4)` in f32: `(0, 0, 0, token_index)` (text positions on the last axis).
pub fn text_ids(len: usize, device: &Device) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(len * 4);
    for l in 0..len {
        ids.extend_from_slice(&[0.0f32, 0.0, 0.0, l as f32]);
    }
    Ok(Tensor::from_vec(ids, (len, 4), device)?)
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard-normal f32 values for `seed`, computed on the host so that every device gets the same
/// numbers.
///
/// Counter-based: with `key = mix64(seed ^ 0xD1B54A32D192ED03)` and SplitMix64's increment
/// `G = 0x9E3779B97F4A7C15`, pair `j` (elements `2j`, `2j+1`) uses `h = mix64(key + (j + 1) * G)`
/// (wrapping); the top 24 bits give `u1 = (bits + 1) / 2^24` in (0, 1], the low 24 bits
/// `u2 = bits / 2^24`; Box-Muller in f64 gives `sqrt(-2 ln u1) * (cos, sin)(2 pi u2)`, rounded to
/// f32. Element `i` depends only on `(seed, i)`.
pub fn gaussian_noise_vec(seed: u64, len: usize) -> Vec<f32> {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    /// Pairs a task computes; tasks run on rayon's pool, each element still depends only on
    /// `(seed, i)`, so the values do not depend on the split.
    const PAIRS_PER_TASK: usize = 8192;
    let key = mix64(seed ^ 0xD1B5_4A32_D192_ED03);
    let mut out = vec![0.0f32; len.div_ceil(2) * 2];
    out.par_chunks_mut(2 * PAIRS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * PAIRS_PER_TASK;
            for (k, pair) in chunk.chunks_exact_mut(2).enumerate() {
                let j = (first + k) as u64;
                let h = mix64(key.wrapping_add((j + 1).wrapping_mul(GAMMA)));
                let u1 = ((h >> 40) + 1) as f64 / (1u64 << 24) as f64;
                let u2 = (h & 0xFF_FFFF) as f64 / (1u64 << 24) as f64;
                let r = (-2.0 * u1.ln()).sqrt();
                let angle = std::f64::consts::TAU * u2;
                pair[0] = (r * angle.cos()) as f32;
                pair[1] = (r * angle.sin()) as f32;
            }
        });
    out.truncate(len);
    out
}

/// Seeded starting noise `(B, 128, h, w)` for an image of `height` x `width` pixels, identical on
/// every device for a given seed (see [`gaussian_noise_vec`]).
pub fn seeded_noise(
    seed: u64,
    batch: usize,
    height: usize,
    width: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if height % PIXELS_PER_TOKEN != 0 || width % PIXELS_PER_TOKEN != 0 || height == 0 || width == 0
    {
        return Err(Error::InvalidInput(format!(
            "image size {width}x{height} is not a positive multiple of {PIXELS_PER_TOKEN}"
        )));
    }
    let (h, w) = (height / PIXELS_PER_TOKEN, width / PIXELS_PER_TOKEN);
    let shape = (batch, LATENT_CHANNELS, h, w);
    let values = gaussian_noise_vec(seed, batch * LATENT_CHANNELS * h * w);
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// The timestep tensor `(batch,)` as diffusers' klein pipeline feeds it for `sigma`:
/// `(sigma * 1000).to(dtype) / 1000`, the division done in f32 and rounded once to `dtype`.
///
/// In bf16 this matters: a division by 1000 done *in* bf16 (candle's CUDA affine kernel rounds the
/// factor 1/1000 to bf16) turns sigma 0.7672 into timestep 764 where PyTorch gets 768.
pub fn pipeline_timestep(
    sigma: f32,
    batch: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let t = Tensor::full(sigma * 1000.0, batch, device)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?;
    Ok((t / 1000.0)?.to_dtype(dtype)?)
}

/// What a sampler needs from a FLUX.2-like model: the velocity for packed image tokens.
///
/// `img`: `(B, N_img, 128)`; `img_ids`: `(N_img, 4)`; `txt`: `(B, N_txt, ctx)`; `txt_ids`:
/// `(N_txt, 4)`; `t`: `(B,)` the sigma in `[0, 1]`. Returns `(B, N_img, 128)`.
pub trait VelocityModel {
    fn velocity(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor>;
}

/// Text conditioning for one branch of the sampler.
#[derive(Debug, Clone, Copy)]
pub struct TextCondition<'a> {
    /// `(B, N_txt, ctx)` text-encoder output.
    pub txt: &'a Tensor,
    /// `(N_txt, 4)` text position ids.
    pub txt_ids: &'a Tensor,
}

/// Classifier-free guidance for the base (undistilled) models: `neg + scale * (pos - neg)`.
#[derive(Debug, Clone, Copy)]
pub struct Cfg<'a> {
    pub negative: TextCondition<'a>,
    pub scale: f64,
}

/// Progress reported after each step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// 0-based index of the step just done.
    pub index: usize,
    /// Number of steps in the run.
    pub total: usize,
    /// The sigma the step started from.
    pub sigma: f32,
}

/// The time-axis distance between reference images' position ids: reference `i` (0-based) sits at
/// `t = 10 · (i + 1)`, as diffusers' `_prepare_image_ids(scale=10)` and ComfyUI's Flux2
/// `ref_index_scale = 10` (`ref_latents_method = "index"`) place it.
pub const REFERENCE_TIME_STEP: f32 = 10.0;

/// Position ids `(h*w, 4)` of reference image `index` (0-based): `(10·(index+1), y, x, 0)`,
/// y-major, in f32.
pub fn reference_ids(index: usize, height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let t = REFERENCE_TIME_STEP * (index + 1) as f32;
    let mut ids = Vec::with_capacity(height * width * 4);
    for y in 0..height {
        for x in 0..width {
            ids.extend_from_slice(&[t, y as f32, x as f32, 0.0]);
        }
    }
    Ok(Tensor::from_vec(ids, (height * width, 4), device)?)
}

/// Reference images for editing (FLUX.2 [klein]'s in-context conditioning): their clean,
/// normalised latents packed into tokens and joined after the noisy image tokens at every step,
/// each with its own position ids; the velocities the model returns for them are dropped.
///
/// Follows diffusers' `Flux2KleinPipeline(image=[...])` (`prepare_image_latents`: each image
/// encoded on its own, packed, concatenated in order) and ComfyUI's `ReferenceLatent` chain on
/// Flux2 (the same order, ids and offsets).
#[derive(Debug, Clone)]
pub struct References {
    /// `(1, N_ref, 128)` in f32: every reference's tokens, in order.
    pub tokens: Tensor,
    /// `(N_ref, 4)` f32 position ids (see [`reference_ids`]).
    pub ids: Tensor,
    /// Each reference's token grid `(h, w)`.
    pub sizes: Vec<(usize, usize)>,
}

impl References {
    /// Packs `latents` (each `(1, 128, h, w)`, normalised) as references 0, 1, ... on `device`.
    pub fn new(latents: &[Tensor], device: &Device) -> Result<Self> {
        if latents.is_empty() {
            return Err(Error::InvalidInput(
                "references: no reference latent given".into(),
            ));
        }
        let mut tokens = Vec::with_capacity(latents.len());
        let mut ids = Vec::with_capacity(latents.len());
        let mut sizes = Vec::with_capacity(latents.len());
        for (i, latent) in latents.iter().enumerate() {
            let (b, c, h, w) = latent.dims4().map_err(|_| {
                Error::InvalidInput(format!(
                    "reference {i}: expected a latent (1, {LATENT_CHANNELS}, h, w), got {:?}",
                    latent.dims()
                ))
            })?;
            if b != 1 || c != LATENT_CHANNELS {
                return Err(Error::InvalidInput(format!(
                    "reference {i}: expected a latent (1, {LATENT_CHANNELS}, h, w), got {:?}",
                    latent.dims()
                )));
            }
            let latent = latent.to_device(device)?.to_dtype(DType::F32)?;
            tokens.push(pack_latents(&latent)?);
            ids.push(reference_ids(i, h, w, device)?);
            sizes.push((h, w));
        }
        Ok(Self {
            tokens: Tensor::cat(&tokens, 1)?,
            ids: Tensor::cat(&ids, 0)?,
            sizes,
        })
    }

    /// Number of reference tokens joined to the sequence.
    pub fn token_count(&self) -> usize {
        self.sizes.iter().map(|(h, w)| h * w).sum()
    }
}

/// diffusers' `get_timesteps` for img2img and inpainting (`FluxImg2ImgPipeline`,
/// `Flux2KleinInpaintPipeline`): how many of `num_steps` steps a run at `strength` skips.
/// `init = min(N·strength, N)`, `t_start = int(max(N − init, 0))`; the run starts at
/// `sigmas[t_start]`. Strength 1 skips none.
pub fn strength_start(num_steps: usize, strength: f64) -> usize {
    let n = num_steps as f64;
    let init = (n * strength).min(n);
    (n - init).max(0.0) as usize
}

/// Flow matching's forward noising (diffusers' `FlowMatchEulerDiscreteScheduler.scale_noise`,
/// ComfyUI's `CONST.noise_scaling`): `σ·noise + (1 − σ)·latent`, in f32.
pub fn noised(latent: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    let latent = latent.to_dtype(DType::F32)?;
    let noise = noise.to_dtype(DType::F32)?;
    let keep = 1.0f32 - sigma;
    Ok(((noise * f64::from(sigma))? + (latent * f64::from(keep))?)?)
}

/// A mask `(B, H, W)` in `[0, 1]` (1 = repaint) resized to the latent grid `h × w` and packed to
/// `(B, h*w, 1)`, f32: PyTorch's `interpolate(mode="bilinear", align_corners=False)` without
/// antialiasing, as both diffusers' `prepare_mask_latents` and ComfyUI's `reshape_mask` resize.
/// `binarize` first rounds the mask to 0/1 at 0.5, as diffusers' mask processor does
/// (`do_binarize`); ComfyUI does not.
pub fn mask_to_tokens(mask: &Tensor, h: usize, w: usize, binarize: bool) -> Result<Tensor> {
    let mask = match mask.rank() {
        2 => mask.unsqueeze(0)?,
        3 => mask.clone(),
        4 if mask.dim(1)? == 1 => mask.squeeze(1)?,
        _ => {
            return Err(Error::InvalidInput(format!(
                "mask: expected (B, H, W), got {:?}",
                mask.dims()
            )))
        }
    };
    let (b, in_h, in_w) = mask.dims3()?;
    if in_h == 0 || in_w == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidInput(format!(
            "mask: cannot resize a {in_w}x{in_h} mask to {w}x{h}"
        )));
    }
    let data: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let data: Vec<f32> = if binarize {
        data.iter()
            .map(|&v| if v < 0.5 { 0.0 } else { 1.0 })
            .collect()
    } else {
        data
    };
    // PyTorch's `area_pixel_compute_source_index` (align_corners=False) and the bilinear kernel.
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                let l1 = src - i0 as f32;
                (i0, i1, l1)
            })
            .collect()
    };
    let ys = axis(h, in_h);
    let xs = axis(w, in_w);
    let mut out = Vec::with_capacity(b * h * w);
    for bi in 0..b {
        let plane = &data[bi * in_h * in_w..(bi + 1) * in_h * in_w];
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let at = |y: usize, x: usize| plane[y * in_w + x];
                let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, h * w, 1), mask.device())?)
}

/// How an inpainting mask keeps the unmasked region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskBlend {
    /// diffusers (`Flux2KleinInpaintPipeline`, `FluxInpaintPipeline`): after each step,
    /// `x = (1 − m)·noised(image, σ_next) + m·x`, the clean image after the last step.
    AfterStep,
    /// ComfyUI (`KSamplerX0Inpaint`): before each model call the kept region of `x` is replaced by
    /// the image noised to the current σ, and the model's clean estimate's kept region by the
    /// image; the Euler step then moves from those. The same as `AfterStep` for a 0/1 mask; for
    /// soft masks the two differ.
    BeforeModel,
}

/// Inpainting: which tokens the sampler repaints and what it keeps elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Inpaint<'a> {
    /// `(B, N_img, 128)` the clean, normalised latent of the image, packed.
    pub image: &'a Tensor,
    /// `(B, N_img, 128)` the run's noise, packed (the one the start was noised with).
    pub noise: &'a Tensor,
    /// `(B, N_img, 1)` in `[0, 1]`: 1 repaints the token, 0 keeps the image (see
    /// [`mask_to_tokens`]).
    pub mask: &'a Tensor,
    pub blend: MaskBlend,
}

/// What [`denoise_with`] adds to plain sampling: reference images and inpainting.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenoiseExtras<'a> {
    /// The positive pass's references (and the negative pass's unless
    /// `negative_references` is set): diffusers gives both passes the same.
    pub references: Option<&'a References>,
    /// The negative pass's own references where they differ (ComfyUI keeps references per
    /// conditioning); `Some(None)`: the negative pass has none.
    pub negative_references: Option<Option<&'a References>>,
    pub inpaint: Option<Inpaint<'a>>,
}

/// The model with reference tokens joined to the image tokens: the velocity of the image tokens
/// only.
struct WithReferences<'a, M: ?Sized> {
    model: &'a M,
    /// `(B, N_ref, 128)` in the latent's dtype.
    tokens: Tensor,
    /// `cat(img_ids, ref_ids)`, built once so that the model's RoPE cache keeps hitting.
    ids: Tensor,
}

impl<'a, M: VelocityModel + ?Sized> WithReferences<'a, M> {
    /// `refs` batched to `batch` in `dtype` on the ids' device.
    fn new(
        model: &'a M,
        refs: &References,
        img_ids: &Tensor,
        batch: usize,
        dtype: DType,
    ) -> Result<Self> {
        let (_, n_ref, c) = refs.tokens.dims3()?;
        let tokens = refs
            .tokens
            .to_device(img_ids.device())?
            .to_dtype(dtype)?
            .broadcast_as((batch, n_ref, c))?
            .contiguous()?;
        let ids = Tensor::cat(&[img_ids, &refs.ids.to_device(img_ids.device())?], 0)?;
        Ok(Self { model, tokens, ids })
    }

    fn velocity(&self, x: &Tensor, txt: TextCondition<'_>, t: &Tensor) -> Result<Tensor> {
        let n_img = x.dim(1)?;
        let input = Tensor::cat(&[x, &self.tokens], 1)?;
        let v = self
            .model
            .velocity(&input, &self.ids, txt.txt, txt.txt_ids, t)?;
        Ok(v.narrow(1, 0, n_img)?)
    }
}

/// Runs the Euler sampler from `latent` (`(B, N_img, 128)` packed noise at `sigmas[0]`) along
/// `sigmas`, and returns the final packed latent.
///
/// After each step `on_step` receives the step and the model's estimate of the clean latent
/// (`x0 = x - sigma * v`, packed, f32), e.g. for a preview; returning `ControlFlow::Break(())`
/// cancels the run with [`Error::Cancelled`]. The latent is kept in its own dtype between steps and
/// each update is done in f32, as diffusers does.
pub fn denoise<M: VelocityModel + ?Sized>(
    model: &M,
    latent: &Tensor,
    img_ids: &Tensor,
    positive: TextCondition<'_>,
    cfg: Option<Cfg<'_>>,
    sigmas: &[f32],
    on_step: impl FnMut(Step, &Tensor) -> ControlFlow<()>,
) -> Result<Tensor> {
    denoise_with(
        model,
        latent,
        img_ids,
        positive,
        cfg,
        sigmas,
        DenoiseExtras::default(),
        on_step,
    )
}

/// [`denoise`] with reference images and/or an inpainting mask.
///
/// References: their tokens are joined after `x` at every step (in the positive and the negative
/// pass alike) with their own ids, and only the image tokens' velocities are kept. The start
/// latent of an img2img or inpainting run is the caller's: `noised(image, noise, sigmas[0])`
/// packed, with `sigmas` cut by [`strength_start`] or a scheduler.
#[expect(
    clippy::too_many_arguments,
    reason = "denoise's arguments plus the extras; a struct would only rename them"
)]
pub fn denoise_with<M: VelocityModel + ?Sized>(
    model: &M,
    latent: &Tensor,
    img_ids: &Tensor,
    positive: TextCondition<'_>,
    cfg: Option<Cfg<'_>>,
    sigmas: &[f32],
    extras: DenoiseExtras<'_>,
    mut on_step: impl FnMut(Step, &Tensor) -> ControlFlow<()>,
) -> Result<Tensor> {
    let dtype = latent.dtype();
    let (batch, n_img, _) = latent.dims3()?;
    let device = latent.device().clone();
    let total = sigmas.len().saturating_sub(1);
    let refs_pos = extras
        .references
        .map(|r| WithReferences::new(model, r, img_ids, batch, dtype))
        .transpose()?;
    let refs_neg = match extras.negative_references {
        None => None,
        Some(r) => Some(
            r.map(|r| WithReferences::new(model, r, img_ids, batch, dtype))
                .transpose()?,
        ),
    };
    let inpaint = match extras.inpaint {
        None => None,
        Some(ip) => {
            let f32_on =
                |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&device)?.to_dtype(DType::F32)?) };
            let image = f32_on(ip.image)?;
            let noise = f32_on(ip.noise)?;
            let mask = f32_on(ip.mask)?;
            if image.dims() != latent.dims() || noise.dims() != latent.dims() {
                return Err(Error::InvalidInput(format!(
                    "inpaint: image {:?} and noise {:?} must have the latent's shape {:?}",
                    image.dims(),
                    noise.dims(),
                    latent.dims()
                )));
            }
            if mask.dims() != [batch, n_img, 1] && mask.dims() != [1, n_img, 1] {
                return Err(Error::InvalidInput(format!(
                    "inpaint: the mask is {:?}, expected ({batch}, {n_img}, 1)",
                    mask.dims()
                )));
            }
            let mask = mask.broadcast_as((batch, n_img, 1))?.contiguous()?;
            let keep = (1.0 - &mask)?;
            Some((image, noise, mask, keep, ip.blend))
        }
    };
    let velocity = |refs: Option<&WithReferences<'_, M>>,
                    x: &Tensor,
                    txt: TextCondition<'_>,
                    t: &Tensor|
     -> Result<Tensor> {
        match refs {
            Some(r) => r.velocity(x, txt, t),
            None => model.velocity(x, img_ids, txt.txt, txt.txt_ids, t),
        }
    };
    let neg_refs = match &refs_neg {
        Some(own) => own.as_ref(),
        None => refs_pos.as_ref(),
    };
    let mut x = latent.clone();
    for (index, pair) in sigmas.windows(2).enumerate() {
        let (sigma, sigma_next) = (pair[0], pair[1]);
        let t = pipeline_timestep(sigma, batch, dtype, &device)?;
        // ComfyUI's inpainting feeds the model the kept region noised to this sigma.
        if let Some((image, noise, mask, keep, MaskBlend::BeforeModel)) = &inpaint {
            let kept = noised(image, noise, sigma)?;
            x = ((x.to_dtype(DType::F32)?.broadcast_mul(mask)? + kept.broadcast_mul(keep)?)?)
                .to_dtype(dtype)?;
        }
        let v_pos = velocity(refs_pos.as_ref(), &x, positive, &t)?;
        let v = match cfg {
            None => v_pos,
            Some(cfg) => {
                let v_neg = velocity(neg_refs, &x, cfg.negative, &t)?;
                (&v_neg + ((&v_pos - &v_neg)? * cfg.scale)?)?
            }
        };
        let x32 = x.to_dtype(DType::F32)?;
        let v32 = v.to_dtype(DType::F32)?;
        let mut x0 = (&x32 - (&v32 * f64::from(sigma))?)?;
        let next = match &inpaint {
            None => (&x32 + (&v32 * f64::from(sigma_next - sigma))?)?,
            Some((image, noise, mask, keep, MaskBlend::AfterStep)) => {
                let stepped = (&x32 + (&v32 * f64::from(sigma_next - sigma))?)?;
                let kept = if index + 1 < total {
                    noised(image, noise, sigma_next)?
                } else {
                    image.clone()
                };
                (kept.broadcast_mul(keep)? + stepped.broadcast_mul(mask)?)?
            }
            Some((image, _, mask, keep, MaskBlend::BeforeModel)) => {
                // k-diffusion's Euler on the blended estimate: d = (x − x0) / σ.
                x0 = (x0.broadcast_mul(mask)? + image.broadcast_mul(keep)?)?;
                if sigma > 0.0 {
                    let d = ((&x32 - &x0)? / f64::from(sigma))?;
                    (&x32 + (d * f64::from(sigma_next - sigma))?)?
                } else {
                    x0.clone()
                }
            }
        };
        x = next.to_dtype(dtype)?;
        let step = Step {
            index,
            total,
            sigma,
        };
        if on_step(step, &x0).is_break() {
            return Err(Error::Cancelled { after_step: index });
        }
    }
    Ok(x)
}
