//! The FLUX.2 transformer, written against BFL's tensor layout (fused qkv).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, TensorId, D};

use crate::qlinear::{linear_no_bias, QLinear, WeightBuilder};

use super::config::Config;
use crate::profile;
use crate::sampling::VelocityModel;
use crate::staging::{stream_parts, HostStage};
use veetance_kernels as kernels;

#[path = "stream.rs"]
mod stream;

#[path = "linears.rs"]
mod linears;
pub use linears::LinearFn;
pub use stream::{BlockPlan, StreamPlan};

type CResult<T> = candle_core::Result<T>;

/// How attention is computed (PatchAttention chooses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionBackend {
    /// Whole score matrix in f32 through candle ops: the reference.
    #[default]
    Plain,
    /// The reference path, `n` query rows at a time: never the whole `L × L` matrix.
    Chunked(usize),
    /// Our fused flash kernel (CUDA, bf16/f16); elsewhere the plain path.
    Flash,
    /// With the fused kernels on a Hopper GPU with cuDNN: q, k, v and the probabilities in fp8
    /// e4m3 (one scale a tensor) and cuDNN's FP8 attention ([`kernels::attention_fp8`]), about
    /// 6e-2 relative error per attention; elsewhere exactly [`AttentionBackend::Flash`].
    FlashFp8,
}

impl AttentionBackend {
    fn flash(self) -> bool {
        matches!(self, AttentionBackend::Flash | AttentionBackend::FlashFp8)
    }
}

/// Options of one forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    pub attention: AttentionBackend,
    /// Fused kernels for the work around the matmuls (CompileModel): modulated LayerNorm, QK
    /// norm + RoPE + head split, gated residuals, SwiGLU. CUDA bf16/f16 only; elsewhere the
    /// reference ops.
    pub fused: bool,
}

impl ForwardOptions {
    fn fused_on(&self, t: &Tensor) -> bool {
        self.fused && kernels::supported(t)
    }
}

/// Attention over `(B, H, L, D)` q, k, v with the chosen backend; `(B, L, H·D)`.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, opts: &ForwardOptions) -> CResult<Tensor> {
    match opts.attention {
        a if a.flash() && kernels::supported(q) && q.dim(D::Minus1)? == 128 => {
            kernels::flash_attention(q, k, v, false, None)
        }
        AttentionBackend::Chunked(n) => attention(q, k, v, Some(n)),
        _ => attention(q, k, v, None),
    }
}

/// Sinusoidal embedding of `t` (already scaled by 1000), `[cos | sin]`, computed in f32.
fn timestep_embedding(t: &Tensor, dim: usize) -> CResult<Tensor> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
}

/// cos/sin tables `(L, head_dim / 2)` in f32 for the interleaved RoPE over the 4 position axes.
pub fn rope_tables(ids: &Tensor, axes_dims: &[usize], theta: f64) -> CResult<(Tensor, Tensor)> {
    let ids_host = ids
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let half: usize = axes_dims.iter().sum::<usize>() / 2;
    // Each axis holds few distinct positions (64 rows, 64 columns, 512 text slots at 1024²), so
    // the cos/sin row of an (axis, position) pair is computed once and copied for every id that
    // has it: the same f64 arithmetic as computing each entry, ~10x less of it.
    let freqs: Vec<Vec<f64>> = axes_dims
        .iter()
        .map(|&dim| {
            (0..dim / 2)
                .map(|j| 1.0 / theta.powf((2 * j) as f64 / dim as f64))
                .collect()
        })
        .collect();
    // Per axis: position bits -> (cos row, sin row).
    type Rows = HashMap<u32, (Vec<f32>, Vec<f32>)>;
    let mut rows: Vec<Rows> = vec![HashMap::new(); axes_dims.len()];
    let mut cos = Vec::with_capacity(ids_host.len() * half);
    let mut sin = Vec::with_capacity(ids_host.len() * half);
    for pos in &ids_host {
        for (axis, freqs) in freqs.iter().enumerate() {
            let p = pos.get(axis).copied().unwrap_or(0.0);
            let (c, s) = rows[axis].entry(p.to_bits()).or_insert_with(|| {
                let p = f64::from(p);
                freqs
                    .iter()
                    .map(|&freq| {
                        let angle = p * freq;
                        (angle.cos() as f32, angle.sin() as f32)
                    })
                    .unzip()
            });
            cos.extend_from_slice(c);
            sin.extend_from_slice(s);
        }
    }
    let l = ids_host.len();
    Ok((
        Tensor::from_vec(cos, (l, half), ids.device())?,
        Tensor::from_vec(sin, (l, half), ids.device())?,
    ))
}

/// LayerNorm without affine parameters.
fn layer_norm(xs: &Tensor, eps: f64) -> CResult<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let ones = Tensor::ones(d, xs.dtype(), xs.device())?;
    let zeros = Tensor::zeros(d, xs.dtype(), xs.device())?;
    candle_nn::ops::layer_norm(xs, &ones, &zeros, eps as f32)
}

/// `(1 + scale) * LN(x) + shift`.
fn modulate(xs: &Tensor, m: &ModulationOut, eps: f64) -> CResult<Tensor> {
    layer_norm(xs, eps)?
        .broadcast_mul(&(&m.scale + 1.0)?)?
        .broadcast_add(&m.shift)
}

/// RMSNorm over the head dim of q or k, weight named `scale` as in BFL.
#[derive(Debug, Clone)]
struct QkNorm {
    query_norm: Tensor,
    key_norm: Tensor,
    eps: f32,
}

impl QkNorm {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let d = cfg.attention_head_dim;
        Ok(Self {
            query_norm: vb.get(d, "query_norm.scale")?,
            key_norm: vb.get(d, "key_norm.scale")?,
            eps: cfg.eps as f32,
        })
    }

    fn forward(&self, q: &Tensor, k: &Tensor) -> CResult<(Tensor, Tensor)> {
        Ok((
            candle_nn::ops::rms_norm(&q.contiguous()?, &self.query_norm, self.eps)?,
            candle_nn::ops::rms_norm(&k.contiguous()?, &self.key_norm, self.eps)?,
        ))
    }
}

/// Interleaved RoPE, applied in f32 as diffusers does.
fn apply_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let dtype = xs.dtype();
    candle_nn::rotary_emb::rope_i(&xs.to_dtype(DType::F32)?.contiguous()?, cos, sin)?
        .to_dtype(dtype)
}

/// The most bytes of f32 scores the plain attention holds at once (1 GiB). Past it, query rows
/// are taken in chunks that stay under it ([`score_chunk_rows`]), with the same result: a 16384²
/// image has a million tokens, and its whole score matrix would ask for 8 TiB.
pub const PLAIN_SCORE_LIMIT: u64 = 1 << 30;

/// Query rows per chunk for softmax attention over `l` keys with `batch × heads` score rows each,
/// so that the f32 scores of one chunk stay within `limit` bytes (at least one row); `None` when
/// the whole matrix fits.
pub fn score_chunk_rows(batch: usize, heads: usize, l: usize, limit: u64) -> Option<usize> {
    let row_bytes = (batch as u64)
        .saturating_mul(heads as u64)
        .saturating_mul(l as u64)
        .saturating_mul(4)
        .max(1);
    let rows = (limit / row_bytes).max(1);
    (rows < l as u64).then_some(rows as usize)
}

/// Softmax attention over `(B, H, L, D)`. Scores and softmax are computed in f32 whatever the
/// dtype (as flash attention does internally); the probabilities go back to the dtype for `P @ V`.
///
/// With `chunk`, query rows are processed `chunk` at a time, so the `L × L` score matrix is never
/// held whole (each row's softmax is independent: the result is the same). Without it, chunks are
/// still taken when the whole matrix would pass [`PLAIN_SCORE_LIMIT`].
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, chunk: Option<usize>) -> CResult<Tensor> {
    attention_within(q, k, v, chunk, PLAIN_SCORE_LIMIT)
}

/// [`attention`] with the score limit as an argument (tests use a tiny one).
fn attention_within(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    chunk: Option<usize>,
    score_limit: u64,
) -> CResult<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    let chunk = chunk.or_else(|| score_chunk_rows(b, h, l, score_limit));
    let dtype = q.dtype();
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let k = k.to_dtype(DType::F32)?.t()?;
    let v = v.contiguous()?;
    let rows = |q: &Tensor| -> CResult<Tensor> {
        let scores = (q.to_dtype(DType::F32)?.matmul(&k)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        probs.matmul(&v) // (B, H, rows, D)
    };
    let out = match chunk {
        Some(n) if n > 0 && n < l => {
            let parts = (0..l)
                .step_by(n)
                .map(|start| rows(&q.narrow(2, start, n.min(l - start))?))
                .collect::<CResult<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?
        }
        _ => rows(q)?,
    };
    let (b, h, l, d) = out.dims4()?;
    out.transpose(1, 2)?.reshape((b, l, h * d))
}

/// Splits `(B, L, 3 * H * D)` into q, k, v of `(B, H, L, D)`.
fn split_qkv(qkv: &Tensor, heads: usize) -> CResult<(Tensor, Tensor, Tensor)> {
    let (b, l, three_hd) = qkv.dims3()?;
    let d = three_hd / 3 / heads;
    let qkv = qkv.reshape((b, l, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

#[derive(Debug, Clone)]
struct ModulationOut {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

/// A modulation linear `D -> n * 3D` applied to `silu(temb)`; yields `n` (shift, scale, gate) sets.
#[derive(Debug, Clone)]
struct Modulation {
    lin: QLinear,
    sets: usize,
}

impl Modulation {
    fn new(dim: usize, sets: usize, vb: WeightBuilder) -> CResult<Self> {
        Ok(Self {
            lin: linear_no_bias(dim, 3 * sets * dim, vb.pp("lin"))?,
            sets,
        })
    }

    fn forward(&self, temb: &Tensor) -> CResult<Vec<ModulationOut>> {
        let out = self.lin.forward(&temb.silu()?)?.unsqueeze(1)?;
        let chunks = out.chunk(3 * self.sets, D::Minus1)?;
        Ok(chunks
            .chunks(3)
            .map(|c| ModulationOut {
                shift: c[0].clone(),
                scale: c[1].clone(),
                gate: c[2].clone(),
            })
            .collect())
    }
}

/// SwiGLU: `linear_out(silu(a) * b)` with `[a | b] = linear_in(x)`; BFL names `0` and `2`.
#[derive(Debug, Clone)]
struct Mlp {
    lin_in: QLinear,
    lin_out: QLinear,
}

impl Mlp {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let (d, h) = (cfg.hidden_size(), cfg.mlp_hidden());
        Ok(Self {
            lin_in: linear_no_bias(d, 2 * h, vb.pp("0"))?,
            lin_out: linear_no_bias(h, d, vb.pp("2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        let h = self.lin_in.forward(xs)?;
        let parts = h.chunk(2, D::Minus1)?;
        self.lin_out.forward(&(parts[0].silu()? * &parts[1])?)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: QLinear,
    norm: QkNorm,
    proj: QLinear,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let d = cfg.hidden_size();
        Ok(Self {
            qkv: linear_no_bias(d, 3 * d, vb.pp("qkv"))?,
            norm: QkNorm::new(cfg, vb.pp("norm"))?,
            proj: linear_no_bias(d, d, vb.pp("proj"))?,
        })
    }

    /// Normed q, k and v of `(B, H, L, D)` (RoPE not yet applied).
    fn qkv(&self, xs: &Tensor, heads: usize) -> CResult<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = split_qkv(&self.qkv.forward(xs)?, heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        Ok((q, k, v))
    }
}

#[derive(Debug, Clone)]
struct DoubleStreamBlock {
    img_attn: SelfAttention,
    img_mlp: Mlp,
    txt_attn: SelfAttention,
    txt_mlp: Mlp,
    heads: usize,
    eps: f64,
}

impl DoubleStreamBlock {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        Ok(Self {
            img_attn: SelfAttention::new(cfg, vb.pp("img_attn"))?,
            img_mlp: Mlp::new(cfg, vb.pp("img_mlp"))?,
            txt_attn: SelfAttention::new(cfg, vb.pp("txt_attn"))?,
            txt_mlp: Mlp::new(cfg, vb.pp("txt_mlp"))?,
            heads: cfg.num_attention_heads,
            eps: cfg.eps,
        })
    }

    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        mod_img: &[ModulationOut],
        mod_txt: &[ModulationOut],
        (cos, sin): (&Tensor, &Tensor),
        opts: &ForwardOptions,
    ) -> CResult<(Tensor, Tensor)> {
        if opts.fused_on(img) {
            return self.forward_fused(img, txt, mod_img, mod_txt, (cos, sin), opts);
        }
        let n_txt = txt.dim(1)?;
        let (img_q, img_k, img_v) = self
            .img_attn
            .qkv(&modulate(img, &mod_img[0], self.eps)?, self.heads)?;
        let (txt_q, txt_k, txt_v) = self
            .txt_attn
            .qkv(&modulate(txt, &mod_txt[0], self.eps)?, self.heads)?;
        let q = apply_rope(&Tensor::cat(&[txt_q, img_q], 2)?, cos, sin)?;
        let k = apply_rope(&Tensor::cat(&[txt_k, img_k], 2)?, cos, sin)?;
        let v = Tensor::cat(&[txt_v, img_v], 2)?;
        let attn = attend(&q, &k, &v, opts)?;
        let l = attn.dim(1)?;
        let txt_attn = attn.narrow(1, 0, n_txt)?;
        let img_attn = attn.narrow(1, n_txt, l - n_txt)?;

        let img = (img
            + self
                .img_attn
                .proj
                .forward(&img_attn)?
                .broadcast_mul(&mod_img[0].gate)?)?;
        let img_mlp = self
            .img_mlp
            .forward(&modulate(&img, &mod_img[1], self.eps)?)?;
        let img = (&img + img_mlp.broadcast_mul(&mod_img[1].gate)?)?;

        let txt = (txt
            + self
                .txt_attn
                .proj
                .forward(&txt_attn)?
                .broadcast_mul(&mod_txt[0].gate)?)?;
        let txt_mlp = self
            .txt_mlp
            .forward(&modulate(&txt, &mod_txt[1], self.eps)?)?;
        let txt = (&txt + txt_mlp.broadcast_mul(&mod_txt[1].gate)?)?;
        Ok((img, txt))
    }

    /// The same computation through our fused kernels (CompileModel).
    fn forward_fused(
        &self,
        img: &Tensor,
        txt: &Tensor,
        mod_img: &[ModulationOut],
        mod_txt: &[ModulationOut],
        (cos, sin): (&Tensor, &Tensor),
        opts: &ForwardOptions,
    ) -> CResult<(Tensor, Tensor)> {
        let eps = self.eps as f32;
        let n_txt = txt.dim(1)?;
        let dev = img.device();
        let img_mod = kernels::modulate(img, &mod_img[0].shift, &mod_img[0].scale, eps)?;
        let txt_mod = kernels::modulate(txt, &mod_txt[0].shift, &mod_txt[0].scale, eps)?;
        profile::mark(dev, "double: modulate");
        let img_qkv = self.img_attn.qkv.forward(&img_mod)?;
        let txt_qkv = self.txt_attn.qkv.forward(&txt_mod)?;
        profile::mark(dev, "double: qkv matmul");
        let parts = [
            kernels::QkvPart {
                qkv: &txt_qkv,
                q_norm: &self.txt_attn.norm.query_norm,
                k_norm: &self.txt_attn.norm.key_norm,
            },
            kernels::QkvPart {
                qkv: &img_qkv,
                q_norm: &self.img_attn.norm.query_norm,
                k_norm: &self.img_attn.norm.key_norm,
            },
        ];
        let eps_qk = self.img_attn.norm.eps;
        let fp8 = match opts.attention {
            AttentionBackend::FlashFp8 => {
                kernels::attention_fp8(&parts, self.heads, cos, sin, eps_qk, None)?
            }
            _ => None,
        };
        let attn = match fp8 {
            Some(attn) => {
                profile::mark(dev, "double: attention");
                attn
            }
            None => {
                let (q, k, v) = kernels::qkv_norm_rope(&parts, self.heads, cos, sin, eps_qk)?;
                profile::mark(dev, "double: qk norm + rope");
                let attn = attend(&q, &k, &v, opts)?;
                profile::mark(dev, "double: attention");
                attn
            }
        };
        let l = attn.dim(1)?;
        let txt_attn = attn.narrow(1, 0, n_txt)?;
        let img_attn = attn.narrow(1, n_txt, l - n_txt)?;

        let stream = |x: &Tensor,
                      attn: &Tensor,
                      sa: &SelfAttention,
                      mlp: &Mlp,
                      m: &[ModulationOut]|
         -> CResult<Tensor> {
            let y = sa.proj.forward(attn)?;
            profile::mark(dev, "double: proj matmul");
            let x = kernels::gated_residual(x, &y, &m[0].gate)?;
            let x_mod = kernels::modulate(&x, &m[1].shift, &m[1].scale, eps)?;
            profile::mark(dev, "double: residual + modulate");
            let h = mlp.lin_in.forward(&x_mod)?;
            profile::mark(dev, "double: mlp in matmul");
            let hidden = h.dim(D::Minus1)? / 2;
            let act = kernels::swiglu(&h, 0, hidden, hidden)?;
            profile::mark(dev, "double: swiglu");
            let y = mlp.lin_out.forward(&act)?;
            profile::mark(dev, "double: mlp out matmul");
            let out = kernels::gated_residual(&x, &y, &m[1].gate)?;
            profile::mark(dev, "double: residual");
            Ok(out)
        };
        let img = stream(img, &img_attn, &self.img_attn, &self.img_mlp, mod_img)?;
        let txt = stream(txt, &txt_attn, &self.txt_attn, &self.txt_mlp, mod_txt)?;
        Ok((img, txt))
    }
}

/// The parallel block: one linear gives q, k, v and the MLP input; one linear takes attention and
/// MLP outputs back.
#[derive(Debug, Clone)]
struct SingleStreamBlock {
    linear1: QLinear,
    linear2: QLinear,
    norm: QkNorm,
    heads: usize,
    hidden: usize,
    mlp_hidden: usize,
    eps: f64,
}

impl SingleStreamBlock {
    fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let (d, h) = (cfg.hidden_size(), cfg.mlp_hidden());
        Ok(Self {
            linear1: linear_no_bias(d, 3 * d + 2 * h, vb.pp("linear1"))?,
            linear2: linear_no_bias(d + h, d, vb.pp("linear2"))?,
            norm: QkNorm::new(cfg, vb.pp("norm"))?,
            heads: cfg.num_attention_heads,
            hidden: d,
            mlp_hidden: h,
            eps: cfg.eps,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        m: &ModulationOut,
        cos: &Tensor,
        sin: &Tensor,
        opts: &ForwardOptions,
    ) -> CResult<Tensor> {
        if opts.fused_on(xs) {
            return self.forward_fused(xs, m, cos, sin, opts);
        }
        let h = self.linear1.forward(&modulate(xs, m, self.eps)?)?;
        let qkv = h.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let gate = h.narrow(D::Minus1, 3 * self.hidden, self.mlp_hidden)?;
        let up = h.narrow(
            D::Minus1,
            3 * self.hidden + self.mlp_hidden,
            self.mlp_hidden,
        )?;
        let (q, k, v) = split_qkv(&qkv, self.heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        let q = apply_rope(&q, cos, sin)?;
        let k = apply_rope(&k, cos, sin)?;
        let attn = attend(&q, &k, &v, opts)?;
        let mlp = (gate.silu()? * up)?;
        let out = self
            .linear2
            .forward(&Tensor::cat(&[attn, mlp], D::Minus1)?)?;
        xs + out.broadcast_mul(&m.gate)?
    }

    /// The same computation through our fused kernels (CompileModel). With flash attention the
    /// attention and SwiGLU outputs are written side by side into `linear2`'s input.
    fn forward_fused(
        &self,
        xs: &Tensor,
        m: &ModulationOut,
        cos: &Tensor,
        sin: &Tensor,
        opts: &ForwardOptions,
    ) -> CResult<Tensor> {
        let eps = self.eps as f32;
        let dev = xs.device();
        let x_mod = kernels::modulate(xs, &m.shift, &m.scale, eps)?;
        profile::mark(dev, "single: modulate");
        let h = self.linear1.forward(&x_mod)?;
        profile::mark(dev, "single: linear1 matmul");
        let (d, mh) = (self.hidden, self.mlp_hidden);
        let qkv = h.narrow(D::Minus1, 0, 3 * d)?;
        let parts = [kernels::QkvPart {
            qkv: &qkv,
            q_norm: &self.norm.query_norm,
            k_norm: &self.norm.key_norm,
        }];
        let mlp = (&h, 3 * d, 3 * d + mh, mh);
        let fp8 = match opts.attention {
            AttentionBackend::FlashFp8 => {
                kernels::attention_fp8(&parts, self.heads, cos, sin, self.norm.eps, Some(mlp))?
            }
            _ => None,
        };
        let joined = match fp8 {
            Some(joined) => joined,
            None => {
                let (q, k, v) =
                    kernels::qkv_norm_rope(&parts, self.heads, cos, sin, self.norm.eps)?;
                profile::mark(dev, "single: qk norm + rope");
                match opts.attention {
                    a if a.flash() && q.dim(D::Minus1)? == 128 => {
                        kernels::attention_then_swiglu(&q, &k, &v, &h, 3 * d, 3 * d + mh, mh)?
                    }
                    _ => {
                        let attn = attend(&q, &k, &v, opts)?;
                        let mlp = kernels::swiglu(&h, 3 * d, 3 * d + mh, mh)?;
                        Tensor::cat(&[attn, mlp], D::Minus1)?
                    }
                }
            }
        };
        profile::mark(dev, "single: attention + swiglu");
        let y = self.linear2.forward(&joined)?;
        profile::mark(dev, "single: linear2 matmul");
        let out = kernels::gated_residual(xs, &y, &m.gate)?;
        profile::mark(dev, "single: residual");
        Ok(out)
    }
}

/// `time_in`: sinusoidal embedding -> in_layer -> SiLU -> out_layer.
#[derive(Debug, Clone)]
struct MlpEmbedder {
    in_layer: QLinear,
    out_layer: QLinear,
}

impl MlpEmbedder {
    fn new(in_dim: usize, dim: usize, vb: WeightBuilder) -> CResult<Self> {
        Ok(Self {
            in_layer: linear_no_bias(in_dim, dim, vb.pp("in_layer"))?,
            out_layer: linear_no_bias(dim, dim, vb.pp("out_layer"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        self.out_layer.forward(&self.in_layer.forward(xs)?.silu()?)
    }
}

/// The FLUX.2 transformer (velocity prediction on packed latent tokens).
#[derive(Debug, Clone)]
pub struct Flux2Transformer {
    img_in: QLinear,
    txt_in: QLinear,
    time_in: MlpEmbedder,
    double_stream_modulation_img: Modulation,
    double_stream_modulation_txt: Modulation,
    single_stream_modulation: Modulation,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_adaln: QLinear,
    final_linear: QLinear,
    cfg: Config,
    dtype: DType,
    /// RoPE tables of the last (txt_ids, img_ids) pair; see [`Flux2Transformer::rope_for`].
    rope_cache: Arc<Mutex<Option<RopeEntry>>>,
    /// Page-locked host memory of streamed blocks (shared by clones; see [`crate::staging`]).
    stage: HostStage,
}

type RopeEntry = ((TensorId, TensorId), Tensor, Tensor);

impl Flux2Transformer {
    /// Builds the model from a `VarBuilder` in BFL naming.
    pub fn new(cfg: &Config, vb: WeightBuilder) -> CResult<Self> {
        let d = cfg.hidden_size();
        let double_blocks = (0..cfg.num_layers)
            .map(|i| DoubleStreamBlock::new(cfg, vb.pp("double_blocks").pp(i)))
            .collect::<CResult<Vec<_>>>()?;
        let single_blocks = (0..cfg.num_single_layers)
            .map(|i| SingleStreamBlock::new(cfg, vb.pp("single_blocks").pp(i)))
            .collect::<CResult<Vec<_>>>()?;
        Ok(Self {
            img_in: linear_no_bias(cfg.in_channels, d, vb.pp("img_in"))?,
            txt_in: linear_no_bias(cfg.joint_attention_dim, d, vb.pp("txt_in"))?,
            time_in: MlpEmbedder::new(cfg.timestep_guidance_channels, d, vb.pp("time_in"))?,
            double_stream_modulation_img: Modulation::new(
                d,
                2,
                vb.pp("double_stream_modulation_img"),
            )?,
            double_stream_modulation_txt: Modulation::new(
                d,
                2,
                vb.pp("double_stream_modulation_txt"),
            )?,
            single_stream_modulation: Modulation::new(d, 1, vb.pp("single_stream_modulation"))?,
            double_blocks,
            single_blocks,
            final_adaln: linear_no_bias(d, 2 * d, vb.pp("final_layer.adaLN_modulation.1"))?,
            final_linear: linear_no_bias(d, cfg.out_channels(), vb.pp("final_layer.linear"))?,
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            rope_cache: Arc::default(),
            stage: HostStage::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The velocity for packed image tokens; see [`VelocityModel`].
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> CResult<Tensor> {
        self.forward_chunked(img, img_ids, txt, txt_ids, t, None)
    }

    /// [`Self::forward`] with attention computed `chunk` query tokens at a time (`None`: all at
    /// once). Same result, lower peak memory.
    pub fn forward_chunked(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
        chunk: Option<usize>,
    ) -> CResult<Tensor> {
        let attention = match chunk {
            Some(n) => AttentionBackend::Chunked(n),
            None => AttentionBackend::Plain,
        };
        let opts = ForwardOptions {
            attention,
            fused: false,
        };
        self.forward_with(img, img_ids, txt, txt_ids, t, &opts)
    }

    /// RoPE tables for `cat(txt_ids, img_ids)`, remembered for the last pair of id tensors: a
    /// sampler passes the same ids every step, so the tables are built once per generation.
    fn rope_for(&self, txt_ids: &Tensor, img_ids: &Tensor) -> CResult<(Tensor, Tensor)> {
        let key = (txt_ids.id(), img_ids.id());
        if let Ok(guard) = self.rope_cache.lock() {
            if let Some((k, cos, sin)) = guard.as_ref() {
                if *k == key {
                    return Ok((cos.clone(), sin.clone()));
                }
            }
        }
        let ids = Tensor::cat(&[txt_ids, img_ids], 0)?;
        let (cos, sin) = rope_tables(&ids, &self.cfg.axes_dims_rope, self.cfg.rope_theta)?;
        if let Ok(mut guard) = self.rope_cache.lock() {
            *guard = Some((key, cos.clone(), sin.clone()));
        }
        Ok((cos, sin))
    }

    /// [`Self::forward`] with explicit [`ForwardOptions`].
    pub fn forward_with(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
        opts: &ForwardOptions,
    ) -> CResult<Tensor> {
        let dtype = self.dtype;
        profile::mark(img.device(), "start");
        let img = img.to_dtype(dtype)?;
        let txt = txt.to_dtype(dtype)?;
        let n_txt = txt.dim(1)?;

        // diffusers: `timestep.to(dtype) * 1000`, a bf16 product rounded once; multiply in f32 so
        // that no backend rounds the factor first.
        let t = (t.to_dtype(dtype)?.to_dtype(DType::F32)? * 1000.0)?.to_dtype(dtype)?;
        let temb = self.time_in.forward(
            &timestep_embedding(&t, self.cfg.timestep_guidance_channels)?.to_dtype(dtype)?,
        )?;
        let mod_img = self.double_stream_modulation_img.forward(&temb)?;
        let mod_txt = self.double_stream_modulation_txt.forward(&temb)?;
        let mod_single = self.single_stream_modulation.forward(&temb)?;

        let mut img = self.img_in.forward(&img)?;
        let mut txt = self.txt_in.forward(&txt)?;
        let (cos, sin) = self.rope_for(txt_ids, img_ids)?;
        profile::mark(img.device(), "embeddings, modulations, rope tables");

        // Streamed blocks (in host memory) are copied to the compute device one block ahead of
        // use, the copy overlapping the compute of the block before (see `staging`).
        let device = img.device().clone();
        for block in stream_parts(&self.double_blocks, &device, &self.stage) {
            let block = block?;
            (img, txt) = block.forward(&img, &txt, &mod_img, &mod_txt, (&cos, &sin), opts)?;
        }
        let mut xs = Tensor::cat(&[txt, img], 1)?;
        profile::mark(xs.device(), "joining the streams");
        for block in stream_parts(&self.single_blocks, &device, &self.stage) {
            let block = block?;
            xs = block.forward(&xs, &mod_single[0], &cos, &sin, opts)?;
        }
        let l = xs.dim(1)?;
        let img = xs.narrow(1, n_txt, l - n_txt)?;

        let final_mod = self.final_adaln.forward(&temb.silu()?)?.unsqueeze(1)?;
        let parts = final_mod.chunk(2, D::Minus1)?; // BFL order: shift, scale
        let img = if opts.fused_on(&img) {
            kernels::modulate(&img, &parts[0], &parts[1], self.cfg.eps as f32)?
        } else {
            layer_norm(&img, self.cfg.eps)?
                .broadcast_mul(&(&parts[1] + 1.0)?)?
                .broadcast_add(&parts[0])?
        };
        let out = self.final_linear.forward(&img)?;
        profile::mark(out.device(), "final layer");
        Ok(out)
    }
}

impl VelocityModel for Flux2Transformer {
    fn velocity(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
    ) -> crate::Result<Tensor> {
        Ok(self.forward(img, img_ids, txt, txt_ids, t)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry by entry, as the tables were first computed: `cos/sin(p * theta^(-2j / dim))` in
    /// f64 for each id's position on each axis.
    #[test]
    fn rope_tables_match_the_direct_formula_bit_for_bit() {
        let axes = [16usize, 8, 24, 16];
        let theta = 2000.0;
        // Repeated, fractional, negative and large positions, as ids of references, text and
        // image tokens give them.
        let mut ids = Vec::new();
        for i in 0..300 {
            let i = i as f32;
            ids.extend_from_slice(&[(i * 0.25).floor(), i % 7.0, -(i % 5.0), i * 3.5 + 0.5]);
        }
        let n = ids.len() / 4;
        let rows: Vec<[f32; 4]> = ids.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let ids = Tensor::from_vec(ids, (n, 4), &Device::Cpu).unwrap();
        let (cos, sin) = rope_tables(&ids, &axes, theta).unwrap();
        let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
        for (r, pos) in rows.iter().enumerate() {
            let mut col = 0;
            for (axis, &dim) in axes.iter().enumerate() {
                for j in 0..dim / 2 {
                    let freq = 1.0 / f64::powf(theta, (2 * j) as f64 / dim as f64);
                    let angle = f64::from(pos[axis]) * freq;
                    assert_eq!(cos[r][col].to_bits(), (angle.cos() as f32).to_bits());
                    assert_eq!(sin[r][col].to_bits(), (angle.sin() as f32).to_bits());
                    col += 1;
                }
            }
        }
    }

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        // A small LCG: deterministic values in [-1, 1) without a RNG dependency.
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn chunk_rows_keep_scores_within_the_limit() {
        // 2 × 3 score rows of 100 keys: 2400 bytes a query row.
        assert_eq!(score_chunk_rows(2, 3, 100, 240_000), None, "all fits");
        assert_eq!(score_chunk_rows(2, 3, 100, 24_000), Some(10));
        assert_eq!(score_chunk_rows(2, 3, 100, 1), Some(1), "at least a row");
        // The headline case: a 16384² image is 1,048,576 tokens (+ a prompt); its whole score
        // matrix (2 heads, f32) would be 8 TiB. Chunks keep each to the limit.
        let l = 1_048_576 + 48;
        let rows = score_chunk_rows(1, 2, l, PLAIN_SCORE_LIMIT).unwrap();
        assert!(2 * rows as u64 * l as u64 * 4 <= PLAIN_SCORE_LIMIT);
        assert!(2 * (rows as u64 + 1) * l as u64 * 4 > PLAIN_SCORE_LIMIT);
    }

    #[test]
    fn plain_attention_past_its_limit_gives_the_unchunked_result() {
        let (b, h, l, d) = (2, 3, 37, 8);
        let q = random((b, h, l, d), 1);
        let k = random((b, h, l, d), 2);
        let v = random((b, h, l, d), 3);
        let whole = attention_within(&q, &k, &v, None, u64::MAX).unwrap();
        // A limit of 5 query rows' scores: 8 chunks, the last one short.
        let limit = (b * h * l * 4 * 5) as u64;
        assert_eq!(score_chunk_rows(b, h, l, limit), Some(5));
        let chunked = attention_within(&q, &k, &v, None, limit).unwrap();
        assert_eq!(chunked.dims(), whole.dims());
        let diff = (chunked - &whole)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-6, "chunked differs by {diff}");
        // One row at a time too.
        let rows = attention_within(&q, &k, &v, None, 1).unwrap();
        let diff = (rows - &whole)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-6, "row by row differs by {diff}");
    }
}
