//! Our CUDA kernels against their candle-op references, on the GPU (needs the `cuda` feature and
//! a CUDA device; without a device every test returns early and says so). Run on the GPU machine:
//! `cargo test --release --features cuda -p veetance-models --test cuda_kernels`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use veetance_models::flux2::{AttentionBackend, Config, Flux2Transformer, ForwardOptions};
use veetance_models::kernels::{self, FlashKernel};
use veetance_models::qlinear::{LinearFormat, WeightBuilder};

type R<T> = candle_core::Result<T>;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}); skipping");
            None
        }
    }
}

/// ‖a − b‖ / ‖b‖ in f32.
fn rel(a: &Tensor, b: &Tensor) -> R<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(num / den.max(1e-30))
}

/// The bit patterns of a bf16 tensor, for exact comparisons.
fn bf16_bits(t: &Tensor) -> R<Vec<u16>> {
    Ok(t.flatten_all()?
        .to_vec1::<half::bf16>()?
        .into_iter()
        .map(|v| v.to_bits())
        .collect())
}

fn randn(shape: &[usize], dtype: DType, dev: &Device) -> R<Tensor> {
    Tensor::randn(0f32, 1f32, shape, dev)?.to_dtype(dtype)
}

/// softmax(q kᵀ/√d + mask) v in f32, as (B, L, H·D).
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, kv_len: usize) -> R<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dim(2)?;
    let qf = q.to_dtype(DType::F32)?;
    let kf = k.to_dtype(DType::F32)?;
    let vf = v.to_dtype(DType::F32)?;
    let mut s = (qf.matmul(&kf.t()?)? / (d as f64).sqrt())?;
    let mask: Vec<f32> = (0..lq)
        .flat_map(|i| {
            (0..lk).map(move |j| {
                if j >= kv_len || (causal && j > i) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (lq, lk), q.device())?;
    s = s.broadcast_add(&mask)?;
    let p = candle_nn::ops::softmax_last_dim(&s)?;
    p.matmul(&vf)?.transpose(1, 2)?.reshape((b, lq, h * d))
}

#[test]
fn flash_attention_matches_reference() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for dtype in [DType::BF16, DType::F16] {
        for &(b, h, lq, lk, causal, kv_len) in &[
            (1, 2, 64, 64, false, 64),
            (1, 3, 300, 300, false, 300),
            (2, 2, 1000, 1000, false, 1000),
            (1, 2, 4608, 4608, false, 4608), // the 8-warp path
            (1, 2, 200, 200, true, 200),
            (1, 2, 512, 512, true, 300), // causal + padding (the text encoder's mask)
            (1, 1, 77, 130, false, 130),
        ] {
            let q = randn(&[b, h, lq, 128], dtype, &dev)?;
            let k = randn(&[b, h, lk, 128], dtype, &dev)?;
            let v = randn(&[b, h, lk, 128], dtype, &dev)?;
            let want = attention_ref(&q, &k, &v, causal, kv_len)?;
            for kernel in [FlashKernel::MmaSync, FlashKernel::Wgmma] {
                let got =
                    match kernels::flash_attention_with(&q, &k, &v, causal, Some(kv_len), kernel) {
                        Err(e) if kernel == FlashKernel::Wgmma && e.to_string().contains("9.0") => {
                            println!("wgmma kernel skipped: {e}");
                            continue;
                        }
                        r => r?,
                    };
                assert_eq!(got.dims(), want.dims());
                let e = rel(&got, &want)?;
                println!("flash {kernel:?} {dtype:?} b{b} h{h} lq{lq} lk{lk} causal {causal} kv_len {kv_len}: rel err {e:.2e}");
                assert!(
                    e < 1e-2,
                    "flash attention ({kernel:?}) rel err {e} for {:?}",
                    (b, h, lq, lk, causal, kv_len)
                );
            }
        }
    }
    Ok(())
}

#[test]
fn attention_then_swiglu_fills_both_parts() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (h, l, d, mlp) = (2, 300, 256, 96);
    let q = randn(&[1, h, l, 128], DType::BF16, &dev)?;
    let k = randn(&[1, h, l, 128], DType::BF16, &dev)?;
    let v = randn(&[1, h, l, 128], DType::BF16, &dev)?;
    let hin = randn(&[1, l, 3 * d + 2 * mlp], DType::BF16, &dev)?;
    let got = kernels::attention_then_swiglu(&q, &k, &v, &hin, 3 * d, 3 * d + mlp, mlp)?;
    let attn = attention_ref(&q, &k, &v, false, l)?;
    let a = hin.narrow(D::Minus1, 3 * d, mlp)?;
    let bb = hin.narrow(D::Minus1, 3 * d + mlp, mlp)?;
    let sw = (a.silu()? * bb)?;
    let e1 = rel(&got.narrow(D::Minus1, 0, h * 128)?, &attn)?;
    let e2 = rel(&got.narrow(D::Minus1, h * 128, mlp)?, &sw)?;
    println!("attention+swiglu: attention part {e1:.2e}, swiglu part {e2:.2e}");
    assert!(e1 < 1e-2 && e2 < 1e-2);
    Ok(())
}

#[test]
fn elementwise_kernels_match_reference() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // (2, 37, 3072, 64) takes the 16-byte kernels; (1, 5, 1003, 3) the per-element ones.
    for (dtype, (b, l, n, off)) in [DType::BF16, DType::F16]
        .into_iter()
        .flat_map(|d| [(d, (2, 37, 3072, 64)), (d, (1, 5, 1003, 3))])
    {
        let x = randn(&[b, l, n], dtype, &dev)?;
        let m = (randn(&[b, 1, 3 * n], dtype, &dev)? * 0.5)?;
        let parts = m.chunk(3, D::Minus1)?; // strided views, as the model passes them
        let (shift, scale, gate) = (&parts[0], &parts[1], &parts[2]);

        let ones = Tensor::ones(n, dtype, &dev)?;
        let zeros = Tensor::zeros(n, dtype, &dev)?;
        let ln = candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6)?;
        let want = ln.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
        let got = kernels::modulate(&x, shift, scale, 1e-6)?;
        let e = rel(&got, &want)?;
        println!("modulate {dtype:?} n {n}: {e:.2e}");
        assert!(e < 1e-2);

        let y = randn(&[b, l, n], dtype, &dev)?;
        let want = (&x + y.broadcast_mul(gate)?)?;
        let got = kernels::gated_residual(&x, &y, gate)?;
        let e = rel(&got, &want)?;
        println!("gated residual {dtype:?} n {n}: {e:.2e}");
        assert!(e < 1e-2);

        let hh = randn(&[b, l, 2 * n + off], dtype, &dev)?;
        let want = (hh.narrow(D::Minus1, off, n)?.silu()? * hh.narrow(D::Minus1, off + n, n)?)?;
        let got = kernels::swiglu(&hh, off, off + n, n)?;
        let e = rel(&got, &want)?;
        println!("swiglu {dtype:?} n {n}: {e:.2e}");
        assert!(e < 1e-2);
    }
    Ok(())
}

#[test]
fn qkv_norm_rope_matches_reference() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (heads, d) = (3usize, 128usize);
    let (n1, n2) = (17usize, 50usize);
    let l = n1 + n2;
    for dtype in [DType::BF16, DType::F16] {
        // part 1 is a narrow of a wider projection (row stride > width), as in single blocks
        let wide = randn(&[1, n1, 3 * heads * d + 40], dtype, &dev)?;
        let p1 = wide.narrow(D::Minus1, 0, 3 * heads * d)?;
        let p2 = randn(&[1, n2, 3 * heads * d], dtype, &dev)?;
        let norms: Vec<Tensor> = (0..4)
            .map(|_| (randn(&[d], dtype, &dev)? * 0.1)? + 1.0)
            .collect::<R<_>>()?;
        let ids: Vec<f32> = (0..l)
            .flat_map(|i| [0.0, (i % 7) as f32, (i / 7) as f32, i as f32])
            .collect();
        let ids = Tensor::from_vec(ids, (l, 4), &dev)?;
        let (cos, sin) = veetance_models::flux2::rope_tables(&ids, &[32, 32, 32, 32], 2000.0)?;
        let (q, k, v) = kernels::qkv_norm_rope(
            &[
                kernels::QkvPart {
                    qkv: &p1,
                    q_norm: &norms[0],
                    k_norm: &norms[1],
                },
                kernels::QkvPart {
                    qkv: &p2,
                    q_norm: &norms[2],
                    k_norm: &norms[3],
                },
            ],
            heads,
            &cos,
            &sin,
            1e-6,
        )?;
        // reference: split, RMSNorm, RoPE in f32
        let split = |p: &Tensor| -> R<(Tensor, Tensor, Tensor)> {
            let (b, n, _) = p.dims3()?;
            let x = p.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
            Ok((
                x.get(0)?.contiguous()?,
                x.get(1)?.contiguous()?,
                x.get(2)?.contiguous()?,
            ))
        };
        let (q1, k1, v1) = split(&p1.contiguous()?)?;
        let (q2, k2, v2) = split(&p2)?;
        let q1 = candle_nn::ops::rms_norm(&q1, &norms[0], 1e-6)?;
        let k1 = candle_nn::ops::rms_norm(&k1, &norms[1], 1e-6)?;
        let q2 = candle_nn::ops::rms_norm(&q2, &norms[2], 1e-6)?;
        let k2 = candle_nn::ops::rms_norm(&k2, &norms[3], 1e-6)?;
        let rope = |x: Tensor| -> R<Tensor> {
            candle_nn::rotary_emb::rope_i(&x.to_dtype(DType::F32)?.contiguous()?, &cos, &sin)?
                .to_dtype(dtype)
        };
        let qr = rope(Tensor::cat(&[q1, q2], 2)?)?;
        let kr = rope(Tensor::cat(&[k1, k2], 2)?)?;
        let vr = Tensor::cat(&[v1, v2], 2)?;
        let (eq, ek, ev) = (rel(&q, &qr)?, rel(&k, &kr)?, rel(&v, &vr)?);
        println!("qkv_norm_rope {dtype:?}: q {eq:.2e} k {ek:.2e} v {ev:.2e}");
        assert!(eq < 1e-2 && ek < 1e-2 && ev == 0.0);
    }
    Ok(())
}

fn small_config() -> Config {
    Config {
        num_layers: 2,
        num_single_layers: 2,
        num_attention_heads: 2,
        joint_attention_dim: 96,
        ..Config::klein_4b()
    }
}

/// The VarMap starts every weight at zero, which makes every path output zeros (and any two
/// paths agree): draw them instead, norm scales near 1 and the rest small.
fn draw_weights(varmap: &candle_nn::VarMap) -> R<()> {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let r = (Tensor::randn(0f32, 1f32, var.shape(), var.device())? * 0.05)?;
        let w = if name.contains("norm") { (r + 1.0)? } else { r };
        var.set(&w.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Transformer inputs: a `side × side` image of 128 channels, `n_txt` text tokens of `txt_dim`,
/// their position ids and t = 0.7.
fn forward_inputs(
    side: usize,
    n_txt: usize,
    txt_dim: usize,
    dev: &Device,
) -> R<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
    let n_img = side * side;
    let img = randn(&[1, n_img, 128], DType::BF16, dev)?;
    let txt = randn(&[1, n_txt, txt_dim], DType::BF16, dev)?;
    let img_ids: Vec<f32> = (0..n_img)
        .flat_map(|i| [0.0, (i / side) as f32, (i % side) as f32, 0.0])
        .collect();
    let img_ids = Tensor::from_vec(img_ids, (n_img, 4), dev)?;
    let txt_ids: Vec<f32> = (0..n_txt).flat_map(|i| [0.0, 0.0, 0.0, i as f32]).collect();
    let txt_ids = Tensor::from_vec(txt_ids, (n_txt, 4), dev)?;
    let t = Tensor::new(&[0.7f32], dev)?;
    Ok((img, img_ids, txt, txt_ids, t))
}

#[test]
fn fused_forward_matches_plain_forward() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let cfg = small_config();
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &dev);
    let model = Flux2Transformer::new(
        &cfg,
        WeightBuilder::from_var_builder(vb, LinearFormat::AsStored),
    )?;
    draw_weights(&varmap)?;
    let (img, img_ids, txt, txt_ids, t) = forward_inputs(16, 40, 96, &dev)?;
    let plain = model.forward(&img, &img_ids, &txt, &txt_ids, &t)?;
    let norm = plain
        .to_dtype(DType::F32)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?;
    assert!(norm > 1e-6, "the reference output is all zeros ({norm})");
    for (attention, fused) in [
        (AttentionBackend::Flash, false),
        (AttentionBackend::Plain, true),
        (AttentionBackend::Flash, true),
    ] {
        let opts = ForwardOptions { attention, fused };
        let got = model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?;
        let e = rel(&got, &plain)?;
        println!("forward {attention:?} fused {fused}: rel err vs plain {e:.2e}");
        assert!(e < 2e-2, "{attention:?} fused {fused}: {e}");
    }
    Ok(())
}

// ---- VAE decoder kernels

/// `residual + conv2d(upsample?(x), w) + bias` in f32 with candle's ops.
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    res: Option<&Tensor>,
    stride: usize,
    pad: usize,
    up: usize,
) -> R<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let (_, _, h, wd) = x.dims4()?;
    let x = if up == 2 {
        x.upsample_nearest2d(2 * h, 2 * wd)?
    } else {
        x
    };
    let y = x
        .conv2d(&w.to_dtype(DType::F32)?, pad, stride, 1, 1)?
        .broadcast_add(&b.to_dtype(DType::F32)?.reshape((1, (), 1, 1))?)?;
    match res {
        Some(r) => y + r.to_dtype(DType::F32)?,
        None => Ok(y),
    }
}

#[test]
fn vae_conv2d_matches_candle() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for dtype in [DType::BF16, DType::F16] {
        // (b, cin, cout, h, w, k, stride, pad, upsample, residual, im2col chunk limit)
        for &(b, cin, cout, h, w, k, stride, pad, up, with_res, limit) in &[
            (1, 64, 32, 16, 24, 3, 1, 1, 1, false, usize::MAX), // 8-wide path
            (2, 32, 48, 13, 10, 3, 1, 1, 1, true, usize::MAX),  // scalar path, batch 2
            (1, 32, 32, 16, 16, 3, 1, 1, 2, false, usize::MAX), // upsample folded in
            (1, 16, 16, 7, 9, 3, 1, 1, 2, true, usize::MAX),    // upsample, odd sizes
            (2, 64, 32, 16, 16, 1, 1, 0, 1, true, usize::MAX),  // 1x1: GEMM on x directly
            (1, 16, 24, 17, 17, 3, 2, 0, 1, false, usize::MAX), // stride 2 (the encoder's)
            (2, 32, 32, 32, 32, 3, 1, 1, 1, true, 32 * 9 * 32 * 5), // row chunks of 5
            (1, 128, 3, 24, 40, 3, 1, 1, 1, false, 128 * 9 * 40 * 7), // conv_out-like, chunks
        ] {
            let x = randn(&[b, cin, h, w], dtype, &dev)?;
            let wt =
                (randn(&[cout, cin, k, k], dtype, &dev)? * (1.0 / ((cin * k * k) as f64).sqrt()))?;
            let bias = randn(&[cout], dtype, &dev)?;
            let want = conv_ref(&x, &wt, &bias, None, stride, pad, up)?;
            let res = if with_res {
                Some(randn(want.dims(), dtype, &dev)?)
            } else {
                None
            };
            let want = conv_ref(&x, &wt, &bias, res.as_ref(), stride, pad, up)?;
            let geom = kernels::ConvGeom {
                stride,
                padding: pad,
                upsample: up,
            };
            let got = kernels::conv2d_with_limit(&x, &wt, Some(&bias), res.as_ref(), geom, limit)?;
            assert_eq!(got.dims(), want.dims());
            assert_eq!(got.dtype(), dtype);
            let e = rel(&got, &want)?;
            eprintln!(
                "conv {dtype:?} b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad} up{up}: {e:.2e}"
            );
            assert!(e < 1e-2, "{e}");
        }
        // no bias, no residual
        let x = randn(&[1, 32, 16, 16], dtype, &dev)?;
        let wt = (randn(&[16, 32, 3, 3], dtype, &dev)? * 0.05)?;
        let want = x
            .to_dtype(DType::F32)?
            .conv2d(&wt.to_dtype(DType::F32)?, 1, 1, 1, 1)?;
        let geom = kernels::ConvGeom {
            stride: 1,
            padding: 1,
            upsample: 1,
        };
        let got = kernels::conv2d(&x, &wt, None, None, geom)?;
        assert!(rel(&got, &want)? < 1e-2);
    }
    Ok(())
}

#[test]
fn vae_group_norm_matches_candle() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for dtype in [DType::BF16, DType::F16] {
        for &(dims, offset) in &[
            (&[2usize, 64, 16, 16][..], 0.0),
            (&[1, 128, 33, 31][..], 0.0), // scalar path
            (&[1, 256, 64, 64][..], 5.0), // a mean far from 0
            (&[2, 96, 40][..], 0.0),      // rank 3
        ] {
            let c = dims[1];
            let x = (randn(dims, DType::F32, &dev)? + offset)?.to_dtype(dtype)?;
            let gamma = ((randn(&[c], DType::F32, &dev)? * 0.2)? + 1.0)?.to_dtype(dtype)?;
            let beta = (randn(&[c], DType::F32, &dev)? * 0.2)?.to_dtype(dtype)?;
            let gn = candle_nn::GroupNorm::new(
                gamma.to_dtype(DType::F32)?,
                beta.to_dtype(DType::F32)?,
                c,
                32,
                1e-6,
            )?;
            let normed = candle_nn::Module::forward(&gn, &x.to_dtype(DType::F32)?)?;
            for silu in [false, true] {
                let want = if silu {
                    candle_nn::ops::silu(&normed)?
                } else {
                    normed.clone()
                };
                let got = kernels::group_norm(&x, &gamma, &beta, 32, 1e-6, silu)?;
                assert_eq!(got.dims(), dims);
                let e = rel(&got, &want)?;
                eprintln!("group norm {dtype:?} {dims:?} +{offset} silu {silu}: {e:.2e}");
                assert!(e < 1e-2, "{e}");
            }
        }
    }
    Ok(())
}

#[test]
fn vae_fast_decode_matches_reference_decode() -> R<()> {
    use veetance_models::vae::{Config as VaeConfig, Flux2Vae, Parts};
    let Some(dev) = gpu() else { return Ok(()) };
    let cfg = VaeConfig {
        block_out_channels: vec![32, 64],
        layers_per_block: 1,
        latent_channels: 4,
        ..VaeConfig::flux2()
    };
    for dtype in [DType::BF16, DType::F16] {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
        let vae = Flux2Vae::new(&cfg, Parts::Decoder, vb)?;
        let latent = Tensor::randn(0f32, 1f32, (1, 16, 8, 12), &dev)?;
        let want = vae
            .decode_with(&latent, None, false, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let got = vae
            .decode_with(&latent, None, true, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!(got.dims(), &[1, 3, 32, 48]);
        let e = rel(&got, &want)?;
        eprintln!("decode {dtype:?}: fast vs reference {e:.2e}");
        assert!(e < 5e-2, "{e}");
    }
    Ok(())
}

/// fp8 weights on the GPU (our kernels) against the CPU path (candle + the float8 crate): the
/// quantized bytes are identical, the scales equal, and a layer's output agrees.
#[test]
fn fp8_weights_match_cpu() -> R<()> {
    use veetance_models::qlinear::QLinear;
    let Some(dev) = gpu() else { return Ok(()) };
    // 200 columns take the 4-byte path, 198 the one-byte path.
    for cols in [200, 198] {
        let w = (Tensor::randn(0f32, 1f32, (96, cols), &Device::Cpu)? * 0.05)?;
        let on_cpu = QLinear::quantize_fp8(&w, DType::F32)?;
        let on_gpu = QLinear::quantize_fp8(&w.to_device(&dev)?, DType::F32)?;
        let (
            QLinear::Fp8 {
                weight: qc,
                scale: Some(sc),
                ..
            },
            QLinear::Fp8 {
                weight: qg,
                scale: Some(sg),
                ..
            },
        ) = (&on_cpu, &on_gpu)
        else {
            panic!("quantize_fp8 must give fp8 weights with row scales")
        };
        assert_eq!(qg.dtype(), DType::F8E4M3);
        let qg_host = qg.to_device(&Device::Cpu)?;
        let bytes =
            |t: &Tensor| -> R<Vec<f32>> { t.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
        assert_eq!(
            bytes(qc)?,
            bytes(&qg_host)?,
            "fp8 values differ ({cols} columns)"
        );
        assert_eq!(
            sc.to_vec1::<f32>()?,
            sg.to_device(&Device::Cpu)?.to_vec1::<f32>()?
        );
        // The dequantized weight: fp8 value times the row scale, exactly as the CPU computes it.
        let want = qc.to_dtype(DType::F32)?.broadcast_mul(&sc.unsqueeze(1)?)?;
        let got = kernels::fp8_dequant(qg, Some(sg), DType::F32)?.to_device(&Device::Cpu)?;
        assert_eq!(rel(&got, &want)?, 0.0);
        // One scale for the whole tensor, as ComfyUI's scaled-fp8 files store it.
        let half = Tensor::new(0.5f32, &dev)?;
        let got = kernels::fp8_dequant(qg, Some(&half), DType::F32)?.to_device(&Device::Cpu)?;
        assert_eq!(rel(&got, &(qc.to_dtype(DType::F32)? * 0.5)?)?, 0.0);
        let unscaled = kernels::fp8_dequant(qg, None, DType::F32)?.to_device(&Device::Cpu)?;
        assert_eq!(rel(&unscaled, &qc.to_dtype(DType::F32)?)?, 0.0);
        // A layer in bf16 on the GPU against the f32 layer on the CPU.
        let x = Tensor::randn(0f32, 1f32, (2, 5, cols), &Device::Cpu)?;
        let y_cpu = on_cpu.forward(&x)?;
        let gpu_bf16 = QLinear::fp8(qg.clone(), Some(sg.clone()), DType::BF16)
            .map_err(candle_core::Error::Msg)?;
        let y_gpu = gpu_bf16.forward(&x.to_device(&dev)?.to_dtype(DType::BF16)?)?;
        let e = rel(&y_gpu.to_device(&Device::Cpu)?, &y_cpu)?;
        eprintln!("fp8 layer ({cols} columns): bf16 GPU vs f32 CPU {e:.2e}");
        assert!(e < 2e-2, "{e}");
    }
    Ok(())
}

/// Streamed blocks copied on our copy stream, one ahead of use, from page-locked memory: the
/// result is bit-identical to the resident model's, every time (a missing wait between the
/// streams would show as a wrong or varying result), and the big weights are locked in place.
#[test]
fn streamed_blocks_match_resident_bits() -> R<()> {
    use veetance_models::flux2::BlockPlan;
    let Some(dev) = gpu() else { return Ok(()) };
    // Hidden 1024: a block's large weights are over a MiB, so they are page-locked in place.
    let cfg = Config {
        num_layers: 3,
        num_single_layers: 4,
        num_attention_heads: 8,
        joint_attention_dim: 96,
        ..Config::klein_4b()
    };
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &Device::Cpu);
    let host = Flux2Transformer::new(
        &cfg,
        WeightBuilder::from_var_builder(vb, LinearFormat::AsStored),
    )?;
    draw_weights(&varmap)?;
    let (img, img_ids, txt, txt_ids, t) = forward_inputs(32, 64, 96, &dev)?;
    let opts = ForwardOptions {
        attention: AttentionBackend::Flash,
        fused: true,
    };
    let resident = host.to_device(&dev)?;
    let want = bf16_bits(&resident.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?)?;
    assert!(
        want.iter().any(|&b| b & 0x7fff != 0),
        "the resident output is all zeros"
    );
    for plan in [
        BlockPlan::none(),
        BlockPlan {
            resident_double: 1,
            resident_single: 2,
        },
    ] {
        let streamed = host.place(&dev, plan)?;
        assert!(streamed.streamed_blocks() > 0);
        for round in 0..3 {
            let got = streamed.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?;
            assert!(bf16_bits(&got)? == want, "{plan:?}, round {round}: differs");
        }
        let stats = streamed.stage_stats();
        eprintln!("{plan:?}: {stats:?}");
        assert!(stats.locked_bytes > 0, "{stats:?}");
        assert_eq!(stats.unlocked_bytes, 0, "{stats:?}");
    }
    Ok(())
}

/// `staging::to_host` (page-locked bounce buffers, parallel copy-out) gives candle's bits, for a
/// tensor over several bounce buffers with a ragged tail and for a view at an offset; prints
/// both paths' rates for 2 GiB.
#[test]
fn to_host_through_bounce_buffers_matches_candle() -> R<()> {
    use veetance_models::staging;
    let Some(dev) = gpu() else { return Ok(()) };
    let t = randn(&[40_000_037], DType::BF16, &dev)?;
    for view in [t.clone(), t.narrow(0, 3, 40_000_000)?] {
        let fast = staging::to_host(&view)?;
        assert!(fast.device().is_cpu());
        assert_eq!(fast.dims(), view.dims());
        assert!(bf16_bits(&fast)? == bf16_bits(&view.to_device(&Device::Cpu)?)?);
    }
    let big = Tensor::zeros((1 << 30,), DType::BF16, &dev)?;
    for (name, slow) in [
        ("candle", true),
        ("bounce", false),
        ("candle", true),
        ("bounce", false),
    ] {
        dev.synchronize()?;
        let start = std::time::Instant::now();
        let host = if slow {
            big.to_device(&Device::Cpu)?
        } else {
            staging::to_host(&big)?
        };
        let s = start.elapsed().as_secs_f64();
        eprintln!("to host, 2 GiB, {name}: {:.2} GB/s", 2.0 * 1.073741824 / s);
        drop(host);
    }
    Ok(())
}
