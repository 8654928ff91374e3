//! Our CUDA kernels against their candle-op references, on the GPU (needs the `cuda` feature and
//! a CUDA device; without a device every test returns early and says so). Run on the GPU machine:
//! `cargo test --release --features cuda -p veetance-kernels --test gpu`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Tensor, D};
use veetance_kernels::testing::{gpu, randn, rel};
use veetance_kernels::{self as kernels, FlashKernel};

type R<T> = candle_core::Result<T>;

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

/// Whether cuDNN was found (`VEETANCE_CUDNN`, the loader's path); its tests are skipped, and say
/// so, when it was not.
fn cudnn_loaded() -> bool {
    let status = kernels::cudnn_status();
    println!("{status}");
    !status.contains("not in use")
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
            let masked = causal || kv_len < lk;
            for kernel in [FlashKernel::MmaSync, FlashKernel::Wgmma, FlashKernel::Cudnn] {
                if kernel == FlashKernel::Cudnn && (masked || !cudnn_loaded()) {
                    continue;
                }
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
        // Any angles will do for the kernel (the model's tables are tested with the model).
        let theta = (Tensor::rand(0f32, 1f32, (l, 64), &dev)? * (2.0 * std::f64::consts::PI))?;
        let (cos, sin) = (theta.cos()?, theta.sin()?);
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

/// FP8 attention (q, k, v and P in e4m3, cuDNN's FP8 SDPA) against f32 attention on the same
/// normed and rotated bf16 q, k, v: one and two token ranges, v at two magnitudes (its scale
/// comes from its amax), and the SwiGLU columns after it.
#[test]
fn fp8_attention_matches_f32_attention() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    if !cudnn_loaded() {
        return Ok(());
    }
    let (heads, d, mlp) = (4usize, 128usize, 64usize);
    for (dtype, two_parts, gain) in [
        (DType::BF16, true, 1.0),
        (DType::BF16, false, 30.0),
        (DType::F16, true, 1.0),
    ] {
        let (n1, n2) = if two_parts { (256, 768) } else { (0, 1024) };
        let l = n1 + n2;
        let wide = (randn(&[1, n1.max(1), 3 * heads * d + 2 * mlp], dtype, &dev)? * gain)?;
        let p1 = wide.narrow(D::Minus1, 0, 3 * heads * d)?;
        let p2 = (randn(&[1, n2, 3 * heads * d], dtype, &dev)? * gain)?;
        let hin = randn(&[1, l, 2 * mlp], dtype, &dev)?;
        let norms: Vec<Tensor> = (0..4)
            .map(|_| (randn(&[d], dtype, &dev)? * 0.3)? + 1.0)
            .collect::<R<_>>()?;
        let theta = (Tensor::rand(0f32, 1f32, (l, 64), &dev)? * (2.0 * std::f64::consts::PI))?;
        let (cos, sin) = (theta.cos()?, theta.sin()?);
        let part = |qkv, i: usize| kernels::QkvPart {
            qkv,
            q_norm: &norms[i],
            k_norm: &norms[i + 1],
        };
        let parts = if two_parts {
            vec![part(&p1, 0), part(&p2, 2)]
        } else {
            vec![part(&p2, 2)]
        };
        let (q, k, v) = kernels::qkv_norm_rope(&parts, heads, &cos, &sin, 1e-6)?;
        let want = attention_ref(&q, &k, &v, false, l)?;
        let bf16 = kernels::flash_attention(&q, &k, &v, false, None)?;
        let got =
            kernels::attention_fp8(&parts, heads, &cos, &sin, 1e-6, Some((&hin, 0, mlp, mlp)))?;
        let Some(got) = got else {
            panic!("cuDNN is loaded but FP8 attention did not run ({dtype:?}, L {l})")
        };
        assert_eq!(got.dims(), [1, l, heads * d + mlp]);
        let e8 = rel(&got.narrow(D::Minus1, 0, heads * d)?, &want)?;
        let e16 = rel(&bf16, &want)?;
        let sw = (hin.narrow(D::Minus1, 0, mlp)?.silu()? * hin.narrow(D::Minus1, mlp, mlp)?)?;
        let esw = rel(&got.narrow(D::Minus1, heads * d, mlp)?, &sw)?;
        println!(
            "fp8 attention {dtype:?}, {} range(s), v x{gain}: {e8:.2e} (bf16 path {e16:.2e}), swiglu {esw:.2e}",
            parts.len()
        );
        assert!(e8 < 0.1, "fp8 attention error {e8}");
        assert!(esw < 1e-2);
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
            if cudnn_loaded() {
                let got = kernels::conv2d_with(
                    &x,
                    &wt,
                    Some(&bias),
                    res.as_ref(),
                    geom,
                    kernels::ConvPath::Cudnn,
                )?;
                assert_eq!(got.dims(), want.dims());
                let e = rel(&got, &want)?;
                eprintln!("  cuDNN: {e:.2e}");
                assert!(e < 1e-2, "cuDNN conv rel err {e}");
            }
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

/// The channels-last path (cuDNN's NHWC convolution with its fused bias and residual, our NHWC
/// GroupNorm and upsample) against the same NCHW references, the tensors permuted around them.
#[test]
fn vae_nhwc_kernels_match_candle() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let nhwc = |t: &Tensor| t.permute((0, 2, 3, 1))?.contiguous();
    let nchw = |t: &Tensor| t.permute((0, 3, 1, 2));
    for dtype in [DType::BF16, DType::F16] {
        // upsample
        let x = randn(&[2, 16, 5, 7], dtype, &dev)?;
        let got = nchw(&kernels::upsample2x_nhwc(&nhwc(&x)?)?)?;
        let want = x.upsample_nearest2d(10, 14)?;
        assert_eq!(got.dims(), want.dims());
        assert_eq!(
            got.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            want.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            "upsample2x_nhwc is a copy"
        );
        // group norm: cpg 1, 4, 8, 16 (the decoder's 128..512 channels have 4..16)
        for &(dims, offset) in &[
            (&[2usize, 32, 9, 11][..], 0.0),
            (&[1, 128, 33, 31][..], 0.0),
            (&[1, 256, 64, 64][..], 5.0),
            (&[2, 512, 16, 16][..], 0.0),
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
                let got = kernels::group_norm_nhwc(&nhwc(&x)?, &gamma, &beta, 32, 1e-6, silu)?;
                let e = rel(&nchw(&got)?, &want)?;
                eprintln!("group norm NHWC {dtype:?} {dims:?} +{offset} silu {silu}: {e:.2e}");
                assert!(e < 1e-2, "{e}");
            }
        }
        if !cudnn_loaded() {
            eprintln!("cuDNN not loaded: the NHWC convolution is not checked");
            continue;
        }
        // (b, cin, cout, h, w, k, pad, upsample, bias, residual)
        for &(b, cin, cout, h, w, k, pad, up, with_bias, with_res) in &[
            (1, 64, 32, 16, 24, 3, 1, 1, true, false),
            (2, 32, 48, 13, 10, 3, 1, 1, true, true),
            (1, 32, 32, 16, 16, 3, 1, 2, true, false),
            (1, 16, 16, 7, 9, 3, 1, 2, true, true),
            (2, 64, 32, 16, 16, 1, 0, 1, true, true),
            (1, 32, 16, 16, 16, 3, 1, 1, false, false),
            (1, 32, 16, 16, 16, 3, 1, 1, false, true),
        ] {
            let x = randn(&[b, cin, h, w], dtype, &dev)?;
            let wt =
                (randn(&[cout, cin, k, k], dtype, &dev)? * (1.0 / ((cin * k * k) as f64).sqrt()))?;
            let bias = if with_bias {
                randn(&[cout], dtype, &dev)?
            } else {
                Tensor::zeros(cout, dtype, &dev)?
            };
            let shape = conv_ref(&x, &wt, &bias, None, 1, pad, up)?.dims().to_vec();
            let res = if with_res {
                Some(randn(&shape, dtype, &dev)?)
            } else {
                None
            };
            let want = conv_ref(&x, &wt, &bias, res.as_ref(), 1, pad, up)?;
            let geom = kernels::ConvGeom {
                stride: 1,
                padding: pad,
                upsample: up,
            };
            let res_nhwc = res.as_ref().map(&nhwc).transpose()?;
            let got = kernels::conv2d_nhwc(
                &nhwc(&x)?,
                &wt.permute((0, 2, 3, 1))?.contiguous()?,
                with_bias.then_some(&bias),
                res_nhwc.as_ref(),
                geom,
            )?
            .expect("cuDNN runs the NHWC convolution");
            let got = nchw(&got)?;
            assert_eq!(got.dims(), want.dims());
            let e = rel(&got, &want)?;
            eprintln!(
                "conv NHWC {dtype:?} b{b} {cin}->{cout} {h}x{w} k{k} up{up} bias {with_bias} res {with_res}: {e:.2e}"
            );
            assert!(e < 1e-2, "{e}");
        }
    }
    Ok(())
}

/// Our row softmax (the VAE attention's) against candle's f32 softmax of the scaled input:
/// 16384-wide rows as in the decode, a row narrower than one pass of a block, a width that is
/// no multiple of 8 (the scalar path), and large scores (the running max must keep exp finite).
#[test]
fn softmax_rows_match_candle() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for dtype in [DType::BF16, DType::F16] {
        for &(rows, cols, std, scale) in &[
            (64usize, 16384usize, 1.0, 1.0 / 512f64.sqrt()),
            (300, 40, 1.0, 1.0),
            (33, 1001, 2.0, 0.7),
            (16, 8192, 30.0, 1.0),
        ] {
            let x = (randn(&[rows, cols], DType::F32, &dev)? * std)?.to_dtype(dtype)?;
            let want = candle_nn::ops::softmax_last_dim(&(x.to_dtype(DType::F32)? * scale)?)?;
            let got = kernels::softmax_last_dim(&x, scale)?;
            assert_eq!(got.dims(), &[rows, cols]);
            let e = rel(&got, &want)?;
            let sums = got.to_dtype(DType::F32)?.sum(D::Minus1)?;
            let worst = (sums - 1.0)?.abs()?.max_all()?.to_scalar::<f32>()?;
            eprintln!("softmax {dtype:?} {rows}x{cols} std {std}: rel err {e:.2e}, worst |row sum - 1| {worst:.2e}");
            assert!(e < 1e-2, "{e}");
            assert!(worst < 2e-2, "{worst}");
        }
    }
    Ok(())
}

// ---- GGUF blocks

/// Our GGUF dequantization against candle's on the CPU, for every type we take: f32 bit for bit,
/// bf16 and f16 the same values rounded.
#[test]
fn gguf_dequant_matches_candle_cpu() -> R<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let Some(dev) = gpu() else { return Ok(()) };
    let (rows, cols) = (24usize, 1024usize);
    for kind in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        assert!(kernels::gguf_supported(kind));
        // Rows of different magnitudes and a mean off zero, so scales and mins both matter.
        let w =
            (Tensor::randn(0f32, 1f32, (rows, cols), &candle_core::Device::Cpu)?.broadcast_mul(
                &Tensor::arange(1f32, rows as f32 + 1.0, &candle_core::Device::Cpu)?
                    .reshape((rows, 1))?,
            )? + 0.3)?;
        let q = QTensor::quantize(&w, kind)?;
        let want = q.dequantize(&candle_core::Device::Cpu)?;
        let bytes = q.data()?;
        let blocks = Tensor::from_raw_buffer(&bytes, DType::U8, &[bytes.len()], &dev)?;
        let got = kernels::gguf_dequant(&blocks, kind, (rows, cols), DType::F32)?;
        let (g, wv) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        let diff = g
            .iter()
            .zip(&wv)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        eprintln!("gguf {kind:?}: {diff} of {} f32 values differ", g.len());
        assert_eq!(diff, 0, "{kind:?}");
        for dtype in [DType::BF16, DType::F16] {
            let got = kernels::gguf_dequant(&blocks, kind, (rows, cols), dtype)?;
            assert_eq!(got.dtype(), dtype);
            let want = want.to_dtype(dtype)?.to_dtype(DType::F32)?;
            let got = got
                .to_dtype(DType::F32)?
                .to_device(&candle_core::Device::Cpu)?;
            assert_eq!(
                got.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?,
                "{kind:?} {dtype:?}"
            );
        }
    }
    // Wrong sizes are named errors.
    let blocks = Tensor::zeros(100, DType::U8, &dev)?;
    let e = kernels::gguf_dequant(&blocks, GgmlDType::Q8_0, (2, 64), DType::BF16).unwrap_err();
    assert!(e.to_string().contains("GGUF blocks"), "{e}");
    let e = kernels::gguf_dequant(&blocks, GgmlDType::Q4K, (1, 100), DType::BF16).unwrap_err();
    assert!(e.to_string().contains("whole blocks"), "{e}");
    Ok(())
}

// ---- FP8 GEMMs

/// `fp8_linear` (activations quantized per row, cuBLASLt FP8 GEMM with both row scales) against
/// the same quantization done apart and an f32 matmul: equal up to accumulation and the bf16
/// output; and its error against the unquantized product, printed. Hopper only.
#[test]
fn fp8_linear_matches_quantized_reference() -> R<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let probe = Tensor::zeros((1, 16), DType::BF16, &dev)?;
    if !kernels::fp8_linear_supported(&probe) {
        eprintln!("no FP8 GEMMs on this GPU; skipping");
        return Ok(());
    }
    let dq = |q: &Tensor, s: &Tensor| -> R<Tensor> {
        kernels::fp8_dequant(q, None, DType::F32)?.broadcast_mul(&s.unsqueeze(1)?)
    };
    for &(m, k, n) in &[(40usize, 256usize, 96usize), (4096, 3072, 3072)] {
        let x = randn(&[m, k], DType::BF16, &dev)?;
        let w = (randn(&[n, k], DType::F32, &dev)? * 0.05)?;
        let (wq, ws) = kernels::fp8_quantize_rows(&w)?;
        let (xq, xs) = kernels::fp8_quantize_rows(&x.to_dtype(DType::F32)?)?;
        let want = dq(&xq, &xs)?.matmul(&dq(&wq, &ws)?.t()?)?;
        let exact = x.to_dtype(DType::F32)?.matmul(&w.t()?)?;
        let got = kernels::fp8_linear(&x, &wq, Some(&ws))?;
        assert_eq!(got.dims(), &[m, n]);
        assert_eq!(got.dtype(), DType::BF16);
        let e = rel(&got, &want)?;
        let e_exact = rel(&got, &exact)?;
        eprintln!("fp8 linear {m}x{k}x{n}: {e:.2e} against the quantized reference, {e_exact:.2e} against bf16 x f32 w");
        assert!(e < 1e-2, "{e}");
        assert!(e_exact < 8e-2, "{e_exact}");
        // Batched input (B, L, K) gives (B, L, N), the same rows.
        let got3 = kernels::fp8_linear(&x.reshape((2, m / 2, k))?, &wq, Some(&ws))?;
        assert_eq!(got3.dims(), &[2, m / 2, n]);
        assert!(rel(&got3.reshape((m, n))?, &got)? < 1e-6);
    }
    // No scale, and a single one, stand for ones and a broadcast.
    let x = randn(&[32, 128], DType::BF16, &dev)?;
    let w = (randn(&[48, 128], DType::F32, &dev)? * 0.05)?;
    let (wq, _) = kernels::fp8_quantize_rows(&w)?;
    let half = Tensor::new(&[0.5f32], &dev)?;
    let a = kernels::fp8_linear(&x, &wq, Some(&half))?;
    let b = (kernels::fp8_linear(&x, &wq, None)? * 0.5)?;
    assert!(rel(&a, &b)? < 1e-2);
    // Shapes cuBLASLt's FP8 GEMM cannot take are named errors.
    let (wq, _) = kernels::fp8_quantize_rows(&randn(&[40, 100], DType::F32, &dev)?)?;
    let e = kernels::fp8_linear(&randn(&[8, 100], DType::BF16, &dev)?, &wq, None).unwrap_err();
    assert!(e.to_string().contains("multiples of 16"), "{e}");
    Ok(())
}
