//! The FLUX VAE decoder (BFL naming), with two paths per layer:
//!
//! * the reference: candle's ops exactly as `candle_transformers::models::flux::autoencoder`'s
//!   `Decoder` runs them (`candle_nn` `Conv2d`, `GroupNorm`, `Activation::Swish`,
//!   `upsample_nearest2d`, plain attention); the CPU path and any dtype other than bf16/f16;
//! * the fast path on CUDA in bf16/f16 (our kernels, [`veetance_kernels`]): convolutions as a
//!   transposed im2col + one cuBLAS GEMM whose output is already NCHW, with the bias, the
//!   residual add and the nearest 2x upsample folded in; GroupNorm + SiLU in one pass with f32
//!   statistics; the mid-block attention without the transposes and the scaled score copy;
//! * where cuDNN is loaded, the fast path runs channels-last (NHWC) end to end: cuDNN's
//!   convolutions with the bias and residual adds fused into them, our NHWC GroupNorm and nearest
//!   upsample between them, the attention on `(B, L, C)` rows as they lie. The latent is turned
//!   NHWC once before `conv_in` and the image NCHW once after `conv_out`. Should cuDNN have no
//!   engine for one of its convolutions, the decode starts over on the NCHW path.
//!   `VEETANCE_VAE_NHWC=0` keeps the NCHW path (to compare).
//!
//! The weights and their names are those of candle's decoder (same `VarBuilder` calls in the same
//! order), so a file that loads there loads here.

use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::flux::autoencoder::Config;

use veetance_kernels as kernels;

/// Wall-clock times of a decode's stages, the device synchronised at every mark.
#[derive(Debug)]
pub struct StageTimer {
    device: Device,
    last: Instant,
    /// `(stage, milliseconds)` in order.
    pub stages: Vec<(String, f64)>,
}

impl StageTimer {
    /// Synchronises `device` and starts the clock.
    pub fn new(device: &Device) -> Result<Self> {
        device.synchronize()?;
        Ok(Self {
            device: device.clone(),
            last: Instant::now(),
            stages: Vec::new(),
        })
    }

    /// Synchronises and records the time since the previous mark under `stage`.
    pub fn mark(&mut self, stage: impl Into<String>) -> Result<()> {
        self.device.synchronize()?;
        let now = Instant::now();
        self.stages.push((
            stage.into(),
            now.duration_since(self.last).as_secs_f64() * 1e3,
        ));
        self.last = now;
        Ok(())
    }
}

fn mark(timer: &mut Option<&mut StageTimer>, stage: impl FnOnce() -> String) -> Result<()> {
    match timer {
        Some(t) => t.mark(stage()),
        None => Ok(()),
    }
}

/// A 2-D convolution with the reference (candle) and fast paths.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    inner: Conv2d,
    stride: usize,
    padding: usize,
}

impl Conv {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Self {
            inner: conv2d(cin, cout, k, cfg, vb)?,
            stride,
            padding,
        })
    }

    /// `residual + conv(upsample2x?(x))`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        fast: bool,
        upsample: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if fast && kernels::supported(x) {
            let geom = kernels::ConvGeom {
                stride: self.stride,
                padding: self.padding,
                upsample: if upsample { 2 } else { 1 },
            };
            return kernels::conv2d(x, self.inner.weight(), self.inner.bias(), residual, geom);
        }
        let y = if upsample {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(h * 2, w * 2)?.apply(&self.inner)?
        } else {
            x.apply(&self.inner)?
        };
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }

    /// [`Conv::forward`] on channels-last tensors through cuDNN: `x: (B, H, W, Cin)`, the
    /// residual and the result `(B, Ho, Wo, Cout)`. The weight is laid out `(Cout, kh, kw, Cin)`
    /// for the call (Cout padded with zero filters to a multiple of 8, the extra channels cut off
    /// again). `None`: cuDNN cannot run this convolution.
    fn forward_nhwc(
        &self,
        x: &Tensor,
        upsample: bool,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let w = self.inner.weight();
        let (cout, cin, _, _) = w.dims4()?;
        let padded = cout.next_multiple_of(8);
        if cin % 8 != 0 || (residual.is_some() && padded != cout) {
            return Ok(None);
        }
        let mut w = w.permute((0, 2, 3, 1))?.contiguous()?;
        let mut bias = self.inner.bias().cloned();
        if padded != cout {
            w = w.pad_with_zeros(0, 0, padded - cout)?;
            bias = bias
                .map(|b| b.pad_with_zeros(0, 0, padded - cout))
                .transpose()?;
        }
        let geom = kernels::ConvGeom {
            stride: self.stride,
            padding: self.padding,
            upsample: if upsample { 2 } else { 1 },
        };
        let y = kernels::conv2d_nhwc(x, &w, bias.as_ref(), residual, geom)?;
        match y {
            Some(y) if padded != cout => Ok(Some(y.narrow(3, 0, cout)?)),
            y => Ok(y),
        }
    }
}

/// `Some(v)` → `v`; `None` (cuDNN cannot run a step of the channels-last path) → return `None`.
macro_rules! or_none {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

/// Whether the channels-last path may run: cuDNN loaded and `VEETANCE_VAE_NHWC` not `0`/`off`.
fn nhwc_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("VEETANCE_VAE_NHWC").as_deref(),
            Ok("0") | Ok("off")
        )
    }) && kernels::cudnn_loaded()
}

/// GroupNorm(32) with an optional SiLU after it.
#[derive(Debug, Clone)]
struct Norm {
    inner: GroupNorm,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

const GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

impl Norm {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        // As candle_nn::group_norm builds it.
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        let inner = GroupNorm::new(weight.clone(), bias.clone(), channels, GROUPS, NORM_EPS)?;
        Ok(Self {
            inner,
            weight,
            bias,
            eps: NORM_EPS,
        })
    }

    fn forward(&self, x: &Tensor, fast: bool, silu: bool) -> Result<Tensor> {
        if fast && kernels::supported(x) {
            return kernels::group_norm(x, &self.weight, &self.bias, GROUPS, self.eps, silu);
        }
        let y = x.apply(&self.inner)?;
        if silu {
            y.apply(&candle_nn::Activation::Swish)
        } else {
            Ok(y)
        }
    }

    /// On a channels-last `x`; `None` for a channel count our NHWC kernel does not take.
    fn forward_nhwc(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let c = x.dim(D::Minus1)?;
        if c % 8 != 0 || c > 2048 || 256 % (c / 8) != 0 || c % GROUPS != 0 {
            return Ok(None);
        }
        kernels::group_norm_nhwc(x, &self.weight, &self.bias, GROUPS, self.eps, silu).map(Some)
    }
}

#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    nin_shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let norm1 = Norm::new(in_c, vb.pp("norm1"))?;
        let conv1 = Conv::new(in_c, out_c, 3, 1, 1, vb.pp("conv1"))?;
        let norm2 = Norm::new(out_c, vb.pp("norm2"))?;
        let conv2 = Conv::new(out_c, out_c, 3, 1, 1, vb.pp("conv2"))?;
        let nin_shortcut = if in_c == out_c {
            None
        } else {
            Some(Conv::new(in_c, out_c, 1, 1, 0, vb.pp("nin_shortcut"))?)
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            nin_shortcut,
        })
    }

    fn forward(&self, xs: &Tensor, fast: bool) -> Result<Tensor> {
        let h = self.norm1.forward(xs, fast, true)?;
        let h = self.conv1.forward(&h, fast, false, None)?;
        let h = self.norm2.forward(&h, fast, true)?;
        let shortcut = match &self.nin_shortcut {
            None => xs.clone(),
            Some(c) => c.forward(xs, fast, false, None)?,
        };
        self.conv2.forward(&h, fast, false, Some(&shortcut))
    }

    fn forward_nhwc(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        let h = or_none!(self.norm1.forward_nhwc(xs, true));
        let h = or_none!(self.conv1.forward_nhwc(&h, false, None));
        let h = or_none!(self.norm2.forward_nhwc(&h, true));
        let shortcut = match &self.nin_shortcut {
            None => xs.clone(),
            Some(c) => or_none!(c.forward_nhwc(xs, false, None)),
        };
        self.conv2.forward_nhwc(&h, false, Some(&shortcut))
    }
}

#[derive(Debug, Clone)]
struct AttnBlock {
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
    norm: Norm,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: Conv::new(c, c, 1, 1, 0, vb.pp("q"))?,
            k: Conv::new(c, c, 1, 1, 0, vb.pp("k"))?,
            v: Conv::new(c, c, 1, 1, 0, vb.pp("v"))?,
            proj_out: Conv::new(c, c, 1, 1, 0, vb.pp("proj_out"))?,
            norm: Norm::new(c, vb.pp("norm"))?,
        })
    }

    fn forward(&self, xs: &Tensor, fast: bool) -> Result<Tensor> {
        let h = self.norm.forward(xs, fast, false)?;
        let q = self.q.forward(&h, fast, false, None)?;
        let k = self.k.forward(&h, fast, false, None)?;
        let v = self.v.forward(&h, fast, false, None)?;
        let (b, c, hh, ww) = q.dims4()?;
        let attn = if fast && kernels::supported(xs) {
            // Single head, d = c, over the (c, L) channel-major maps as they are:
            // S = qᵀ k (L×L), P = softmax(S·scale) (our row kernel, the scale folded in),
            // out = v Pᵀ (c×L), which is NCHW again.
            let l = hh * ww;
            let q = q.reshape((b, c, l))?;
            let k = k.reshape((b, c, l))?;
            let v = v.reshape((b, c, l))?;
            let s = q.transpose(1, 2)?.matmul(&k)?;
            let p = kernels::softmax_last_dim(&s, 1.0 / (c as f64).sqrt())?;
            v.matmul(&p.transpose(1, 2)?)?.reshape((b, c, hh, ww))?
        } else {
            // candle's AttnBlock, as it is.
            let q = q.flatten_from(2)?.t()?.unsqueeze(1)?;
            let k = k.flatten_from(2)?.t()?.unsqueeze(1)?;
            let v = v.flatten_from(2)?.t()?.unsqueeze(1)?;
            let dim = q.dim(D::Minus1)?;
            let scale = 1.0 / (dim as f64).sqrt();
            let kt = k.t()?;
            let rows = |q: &Tensor| -> Result<Tensor> {
                let w = (q.matmul(&kt)? * scale)?;
                candle_nn::ops::softmax_last_dim(&w)?.matmul(&v)
            };
            // Query rows in chunks when the L × L scores would pass the plain attention's
            // limit (a 16384² image: 4M latent pixels, 64 TiB of scores); same result.
            let l = hh * ww;
            let o = match crate::flux2::score_chunk_rows(b, 1, l, crate::flux2::PLAIN_SCORE_LIMIT) {
                Some(n) => {
                    let parts = (0..l)
                        .step_by(n)
                        .map(|start| rows(&q.narrow(2, start, n.min(l - start))?))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 2)?
                }
                None => rows(&q)?,
            };
            o.squeeze(1)?.t()?.reshape((b, c, hh, ww))?
        };
        self.proj_out.forward(&attn, fast, false, Some(xs))
    }

    /// Channels-last: q, k, v are `(B, L, C)` rows as they lie, so `S = q kᵀ`, our row softmax,
    /// then `P v` is channels-last again.
    fn forward_nhwc(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        let h = or_none!(self.norm.forward_nhwc(xs, false));
        let q = or_none!(self.q.forward_nhwc(&h, false, None));
        let k = or_none!(self.k.forward_nhwc(&h, false, None));
        let v = or_none!(self.v.forward_nhwc(&h, false, None));
        let (b, hh, ww, c) = q.dims4()?;
        let l = hh * ww;
        let s = q.reshape((b, l, c))?.matmul(&k.reshape((b, l, c))?.t()?)?;
        let p = kernels::softmax_last_dim(&s, 1.0 / (c as f64).sqrt())?;
        let o = p.matmul(&v.reshape((b, l, c))?)?.reshape((b, hh, ww, c))?;
        self.proj_out.forward_nhwc(&o, false, Some(xs))
    }
}

#[derive(Debug, Clone)]
struct UpBlock {
    block: Vec<ResnetBlock>,
    upsample: Option<Conv>,
}

/// The decoder: `conv_in`, mid block (resnet, attention, resnet), the up levels from the deepest,
/// `norm_out` + SiLU, `conv_out`.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: Norm,
    conv_out: Conv,
    /// Level 0 (full resolution) first, as the weights are numbered.
    up: Vec<UpBlock>,
}

impl Decoder {
    /// Same construction (names, shapes, order of `VarBuilder` calls) as candle's `Decoder::new`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mut block_in = cfg.ch * cfg.ch_mult.last().unwrap_or(&1);
        let conv_in = Conv::new(cfg.z_channels, block_in, 3, 1, 1, vb.pp("conv_in"))?;
        let mid_block_1 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, vb.pp("mid.attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_2"))?;
        let mut up = Vec::with_capacity(cfg.ch_mult.len());
        let vb_u = vb.pp("up");
        for (i_level, ch_mult) in cfg.ch_mult.iter().enumerate().rev() {
            let block_out = cfg.ch * ch_mult;
            let vb_u = vb_u.pp(i_level);
            let vb_b = vb_u.pp("block");
            let mut block = Vec::with_capacity(cfg.num_res_blocks + 1);
            for i_block in 0..=cfg.num_res_blocks {
                block.push(ResnetBlock::new(block_in, block_out, vb_b.pp(i_block))?);
                block_in = block_out;
            }
            let upsample = if i_level != 0 {
                Some(Conv::new(
                    block_in,
                    block_in,
                    3,
                    1,
                    1,
                    vb_u.pp("upsample.conv"),
                )?)
            } else {
                None
            };
            up.push(UpBlock { block, upsample });
        }
        up.reverse();
        let norm_out = Norm::new(block_in, vb.pp("norm_out"))?;
        let conv_out = Conv::new(block_in, cfg.out_ch, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            norm_out,
            conv_out,
            up,
        })
    }

    /// Decodes `z` (B, z_channels, h, w); `fast` takes our kernels where they apply; `timer`
    /// records every stage (synchronising the device between them).
    pub fn forward(
        &self,
        z: &Tensor,
        fast: bool,
        mut timer: Option<&mut StageTimer>,
    ) -> Result<Tensor> {
        if fast && kernels::supported(z) && nhwc_enabled() {
            if let Some(image) = self.forward_nhwc(z, timer.as_deref_mut())? {
                return Ok(image);
            }
            static REPORTED: OnceLock<()> = OnceLock::new();
            REPORTED.get_or_init(|| {
                eprintln!(
                    "veetance: the VAE decoder's channels-last path could not run here (cuDNN has \
                     no engine for one of its steps); decoding in NCHW"
                )
            });
        }
        let res = |t: &Tensor| {
            t.dims4()
                .map(|(_, c, h, w)| format!("{c}ch {h}x{w}"))
                .unwrap_or_default()
        };
        let h = self.conv_in.forward(z, fast, false, None)?;
        mark(&mut timer, || format!("conv_in -> {}", res(&h)))?;
        let h = self.mid_block_1.forward(&h, fast)?;
        mark(&mut timer, || format!("mid.block_1 {}", res(&h)))?;
        let h = self.mid_attn_1.forward(&h, fast)?;
        mark(&mut timer, || format!("mid.attn_1 {}", res(&h)))?;
        let mut h = self.mid_block_2.forward(&h, fast)?;
        mark(&mut timer, || format!("mid.block_2 {}", res(&h)))?;
        for (i_level, block) in self.up.iter().enumerate().rev() {
            for (i, b) in block.block.iter().enumerate() {
                h = b.forward(&h, fast)?;
                mark(&mut timer, || {
                    format!("up.{i_level}.block.{i} -> {}", res(&h))
                })?;
            }
            if let Some(us) = block.upsample.as_ref() {
                h = us.forward(&h, fast, true, None)?;
                mark(&mut timer, || {
                    format!("up.{i_level}.upsample (nearest 2x + conv) -> {}", res(&h))
                })?;
            }
        }
        let h = self.norm_out.forward(&h, fast, true)?;
        mark(&mut timer, || format!("norm_out + silu {}", res(&h)))?;
        let h = self.conv_out.forward(&h, fast, false, None)?;
        mark(&mut timer, || format!("conv_out -> {}", res(&h)))?;
        Ok(h)
    }
}

impl Decoder {
    /// The channels-last decode (cuDNN); `None` when one of its steps cannot run here.
    fn forward_nhwc(
        &self,
        z: &Tensor,
        mut timer: Option<&mut StageTimer>,
    ) -> Result<Option<Tensor>> {
        let res = |t: &Tensor| {
            t.dims4()
                .map(|(_, h, w, c)| format!("{c}ch {h}x{w}"))
                .unwrap_or_default()
        };
        let x = z.permute((0, 2, 3, 1))?.contiguous()?;
        let h = or_none!(self.conv_in.forward_nhwc(&x, false, None));
        mark(&mut timer, || format!("to NHWC + conv_in -> {}", res(&h)))?;
        let h = or_none!(self.mid_block_1.forward_nhwc(&h));
        mark(&mut timer, || format!("mid.block_1 {}", res(&h)))?;
        let h = or_none!(self.mid_attn_1.forward_nhwc(&h));
        mark(&mut timer, || format!("mid.attn_1 {}", res(&h)))?;
        let mut h = or_none!(self.mid_block_2.forward_nhwc(&h));
        mark(&mut timer, || format!("mid.block_2 {}", res(&h)))?;
        for (i_level, block) in self.up.iter().enumerate().rev() {
            for (i, b) in block.block.iter().enumerate() {
                h = or_none!(b.forward_nhwc(&h));
                mark(&mut timer, || {
                    format!("up.{i_level}.block.{i} -> {}", res(&h))
                })?;
            }
            if let Some(us) = block.upsample.as_ref() {
                h = or_none!(us.forward_nhwc(&h, true, None));
                mark(&mut timer, || {
                    format!("up.{i_level}.upsample (nearest 2x + conv) -> {}", res(&h))
                })?;
            }
        }
        let h = or_none!(self.norm_out.forward_nhwc(&h, true));
        mark(&mut timer, || format!("norm_out + silu {}", res(&h)))?;
        let h = or_none!(self.conv_out.forward_nhwc(&h, false, None));
        let h = h.permute((0, 3, 1, 2))?.contiguous()?;
        mark(&mut timer, || "conv_out + to NCHW".to_string())?;
        Ok(Some(h))
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Decoder::forward(self, xs, true, None)
    }
}
