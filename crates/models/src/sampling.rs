//! Flow-match Euler sampling for FLUX.2: schedule, latent packing, position ids, seeded noise and
//! the denoising loop.
//!
//! Follows diffusers' `Flux2KleinPipeline` (`compute_empirical_mu`, `_prepare_latent_ids`,
//! `_prepare_text_ids`, `_pack_latents`) and `FlowMatchEulerDiscreteScheduler` with dynamic
//! (exponential) shifting, which BFL's `get_schedule` and ComfyUI's `Flux2Scheduler` agree with.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};

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
    let key = mix64(seed ^ 0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len + 1);
    for j in 0..len.div_ceil(2) {
        let h = mix64(key.wrapping_add((j as u64 + 1).wrapping_mul(GAMMA)));
        let u1 = ((h >> 40) + 1) as f64 / (1u64 << 24) as f64;
        let u2 = (h & 0xFF_FFFF) as f64 / (1u64 << 24) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        out.push((r * angle.cos()) as f32);
        out.push((r * angle.sin()) as f32);
    }
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
    mut on_step: impl FnMut(Step, &Tensor) -> ControlFlow<()>,
) -> Result<Tensor> {
    let dtype = latent.dtype();
    let batch = latent.dim(0)?;
    let device = latent.device().clone();
    let total = sigmas.len().saturating_sub(1);
    let mut x = latent.clone();
    for (index, pair) in sigmas.windows(2).enumerate() {
        let (sigma, sigma_next) = (pair[0], pair[1]);
        let t = pipeline_timestep(sigma, batch, dtype, &device)?;
        let v_pos = model.velocity(&x, img_ids, positive.txt, positive.txt_ids, &t)?;
        let v = match cfg {
            None => v_pos,
            Some(cfg) => {
                let neg = cfg.negative;
                let v_neg = model.velocity(&x, img_ids, neg.txt, neg.txt_ids, &t)?;
                (&v_neg + ((&v_pos - &v_neg)? * cfg.scale)?)?
            }
        };
        let x32 = x.to_dtype(DType::F32)?;
        let v32 = v.to_dtype(DType::F32)?;
        let x0 = (&x32 - (&v32 * f64::from(sigma))?)?;
        x = (&x32 + (&v32 * f64::from(sigma_next - sigma))?)?.to_dtype(dtype)?;
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
