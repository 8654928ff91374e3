//! Where the FLUX.2 VAE decode's time goes on the GPU, candle's ops against our kernels, at the
//! real 1024² shapes (latent (1, 128, 64, 64) → image (1, 3, 1024, 1024)) with random weights,
//! in bf16. Every clock reading follows a device synchronise; medians after a warm-up.
//!
//! `cargo build --release --features cuda -p veetance-models --example vae_profile`, then
//! `target/release/examples/vae_profile [iters] [decode]` (default 5; about 20 s on an H200;
//! `decode`: only (1)). The fast decode runs channels-last where cuDNN is loaded
//! (`VEETANCE_VAE_NHWC=0`: NCHW); see docs/performance.md.
//!
//! Prints: (1) the whole decode, reference (candle ops) and fast (our kernels), with the relative
//! error between them; (2) both decodes stage by stage; (3) every convolution shape of the decoder,
//! candle's conv2d (+ bias) against ours and cuDNN's (NCHW and NHWC), with the bare GEMM each needs; candle's conv split into
//! GEMM, NHWC→NCHW copy and the rest (im2col) for 128→128 at 1024²; (4) GroupNorm (+ SiLU),
//! upsample and the mid-block attention, candle against ours.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use veetance_kernels::{self as kernels, ConvGeom};
use veetance_models::vae::{Config as VaeConfig, Flux2Vae, Parts, StageTimer};

type R<T> = candle_core::Result<T>;

fn msg<E: std::fmt::Display>(e: E) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Median milliseconds of `iters` runs after `warm` runs, synchronised around each.
fn time<F: FnMut() -> R<Tensor>>(dev: &Device, warm: usize, iters: usize, mut f: F) -> R<f64> {
    for _ in 0..warm {
        f()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        drop(out);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// ‖a − b‖ / ‖b‖ in f32.
fn rel(a: &Tensor, b: &Tensor) -> R<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let num = (&a - &b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(num / den.max(1e-30))
}

fn randn(shape: &[usize], std: f64, dt: DType, dev: &Device) -> R<Tensor> {
    (Tensor::randn(0f32, 1f32, shape, dev)? * std)?.to_dtype(dt)
}

fn main() -> R<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let dev = Device::new_cuda(0)?;
    println!("{}", kernels::cudnn_status());
    let dt = DType::BF16;
    let t_start = Instant::now();

    // ---- (1) whole decode
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dt, &dev);
    let vae = Flux2Vae::new(&VaeConfig::flux2(), Parts::Decoder, vb).map_err(msg)?;
    let latent = Tensor::randn(0f32, 1f32, (1, 128, 64, 64), &dev)?;
    let decode = |fast: bool| vae.decode_with(&latent, None, fast, None).map_err(msg);
    let ref_img = decode(false)?;
    // The first fast decode of the process: our modules loaded, cuDNN's plans built (runtime
    // fusion engines compile their kernels then).
    dev.synchronize()?;
    let t_first = Instant::now();
    let fast_img = decode(true)?;
    dev.synchronize()?;
    println!(
        "first fast decode of this process (kernels loaded, cuDNN plans built): {:.1} ms",
        t_first.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "== VAE decode 1024² bf16 (latent {:?} -> image {:?})",
        latent.dims(),
        fast_img.dims()
    );
    let t_ref = time(&dev, 1, iters.min(3), || decode(false))?;
    let t_fast = time(&dev, 2, iters, || decode(true))?;
    println!(
        "whole decode: reference (candle ops) {t_ref:.2} ms | fast (our kernels) {t_fast:.2} ms | speed-up {:.2}x | rel err fast vs reference {:.2e}",
        t_ref / t_fast,
        rel(&fast_img, &ref_img)?
    );

    if std::env::args().nth(2).as_deref() == Some("decode") {
        return Ok(());
    }

    // ---- (2) stage by stage
    let stages = |fast: bool| -> R<Vec<(String, f64)>> {
        let mut timer = StageTimer::new(&dev)?;
        vae.decode_with(&latent, None, fast, Some(&mut timer))
            .map_err(msg)?;
        Ok(timer.stages)
    };
    let (ref_st, fast_st) = (stages(false)?, stages(true)?);
    println!("\n== stages (one synchronised run each, ms)");
    println!("{:<58} {:>10} {:>10}", "stage", "reference", "fast");
    let (mut sr, mut sf) = (0.0, 0.0);
    for ((name, a), (_, b)) in ref_st.iter().zip(&fast_st) {
        println!("{name:<58} {a:>10.2} {b:>10.2}");
        sr += a;
        sf += b;
    }
    println!("{:<58} {sr:>10.2} {sf:>10.2}", "sum");
    drop((ref_img, fast_img));

    // ---- (3) convolutions: (cin, cout, k, output size, upsample from half size)
    println!("\n== conv2d at the decoder's shapes (ms; candle includes + bias)");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "shape", "candle", "ours", "GEMM", "speed-up", "rel err"
    );
    let shapes: &[(usize, usize, usize, usize, bool, &str)] = &[
        (32, 512, 3, 128, false, "conv_in"),
        (512, 512, 3, 128, false, "mid / up.3 conv"),
        (512, 512, 1, 128, false, "attn q/k/v/proj (1x1)"),
        (512, 512, 3, 256, true, "up.3.upsample"),
        (512, 512, 3, 256, false, "up.2 conv"),
        (512, 512, 3, 512, true, "up.2.upsample"),
        (512, 256, 3, 512, false, "up.1.block.0.conv1"),
        (512, 256, 1, 512, false, "up.1.block.0.nin_shortcut"),
        (256, 256, 3, 512, false, "up.1 conv"),
        (256, 256, 3, 1024, true, "up.1.upsample"),
        (256, 128, 3, 1024, false, "up.0.block.0.conv1"),
        (256, 128, 1, 1024, false, "up.0.block.0.nin_shortcut"),
        (128, 128, 3, 1024, false, "up.0 conv"),
        (128, 3, 3, 1024, false, "conv_out"),
    ];
    let (mut tot_c, mut tot_o) = (0.0, 0.0);
    for &(cin, cout, k, size, up, what) in shapes {
        let hin = if up { size / 2 } else { size };
        let pad = k / 2;
        let x = randn(&[1, cin, hin, hin], 1.0, dt, &dev)?;
        let w = randn(
            &[cout, cin, k, k],
            1.0 / ((cin * k * k) as f64).sqrt(),
            dt,
            &dev,
        )?;
        let b = randn(&[cout], 0.1, dt, &dev)?;
        let candle = || -> R<Tensor> {
            let xi = if up {
                x.upsample_nearest2d(size, size)?
            } else {
                x.clone()
            };
            xi.conv2d(&w, pad, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, cout, 1, 1))?)
        };
        let geom = ConvGeom {
            stride: 1,
            padding: pad,
            upsample: if up { 2 } else { 1 },
        };
        let ours = || kernels::conv2d_with(&x, &w, Some(&b), None, geom, kernels::ConvPath::Ours);
        let cudnn = || kernels::conv2d_with(&x, &w, Some(&b), None, geom, kernels::ConvPath::Cudnn);
        let err = rel(&ours()?, &candle()?)?;
        let tc = time(&dev, 1, iters.min(3), &candle)?;
        let to = time(&dev, 2, iters, &ours)?;
        match cudnn().and_then(|y| rel(&y, &candle()?)) {
            Ok(e) => {
                let td = time(&dev, 2, iters, &cudnn)?;
                println!("  cuDNN: {td:.2} ms, rel err {e:.2e}");
            }
            Err(e) => println!("  cuDNN: {e}"),
        }
        if cout % 8 == 0 {
            let xn = x.permute((0, 2, 3, 1))?.contiguous()?;
            let wn = w.permute((0, 2, 3, 1))?.contiguous()?;
            let nhwc =
                || -> R<Option<Tensor>> { kernels::conv2d_nhwc(&xn, &wn, Some(&b), None, geom) };
            match nhwc()? {
                Some(y) => {
                    let e = rel(&y.permute((0, 3, 1, 2))?, &candle()?)?;
                    let td = time(&dev, 2, iters, || Ok(nhwc()?.expect("ran once")))?;
                    let tw = time(&dev, 2, iters, || w.permute((0, 2, 3, 1))?.contiguous())?;
                    println!(
                        "  cuDNN NHWC (+ bias fused): {td:.2} ms, rel err {e:.2e}; the weight's NHWC copy {tw:.3} ms"
                    );
                }
                None => println!("  cuDNN NHWC: no engine"),
            }
        }
        let kk = cin * k * k;
        let w2 = w.reshape((cout, kk))?;
        let col = randn(&[kk, size * size], 1.0, dt, &dev)?;
        let tg = time(&dev, 1, iters, || w2.matmul(&col))?;
        drop(col);
        tot_c += tc;
        tot_o += to;
        println!(
            "{:<34} {tc:>9.2} {to:>9.2} {tg:>9.2} {:>8.1}x {err:>9.2e}",
            format!("{cin}->{cout} k{k} {size}² {what}"),
            tc / to
        );
    }
    println!(
        "{:<34} {tot_c:>9.2} {tot_o:>9.2}   (each shape once; the decoder repeats some)",
        "sum"
    );

    // candle's conv2d split: im2col (rest), GEMM (M, K)@(K, N), NHWC→NCHW copy.
    {
        let (c, s) = (128, 1024);
        let x = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        let w = randn(&[c, c, 3, 3], 1.0 / 34.0, dt, &dev)?;
        let total = time(&dev, 1, iters.min(3), || x.conv2d(&w, 1, 1, 1, 1))?;
        let col = randn(&[s * s, c * 9], 1.0, dt, &dev)?;
        let wt = w.reshape((c, c * 9))?.t()?;
        let gemm = time(&dev, 1, iters, || col.matmul(&wt))?;
        drop(col);
        let nhwc = randn(&[1, s, s, c], 1.0, dt, &dev)?;
        let copy = time(&dev, 1, iters, || nhwc.permute((0, 3, 1, 2))?.contiguous())?;
        println!(
            "candle conv2d 128->128 k3 1024² split: total {total:.2} ms = GEMM {gemm:.2} + NHWC->NCHW copy {copy:.2} + im2col and the rest {:.2}",
            total - gemm - copy
        );
    }

    // ---- (4) group norm (+ SiLU), upsample, attention
    println!("\n== GroupNorm(32) + SiLU (ms)");
    println!(
        "{:<22} {:>12} {:>10} {:>12} {:>9} {:>9}",
        "shape", "candle gn", "+ swish", "ours gn+silu", "speed-up", "rel err"
    );
    for &(c, s) in &[
        (512usize, 128usize),
        (512, 256),
        (512, 512),
        (256, 512),
        (256, 1024),
        (128, 1024),
    ] {
        let x = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        let gamma = (randn(&[c], 0.1, dt, &dev)? + 1.0)?;
        let beta = randn(&[c], 0.1, dt, &dev)?;
        let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, 32, 1e-6)?;
        let candle_gn = time(&dev, 1, iters, || gn.forward(&x))?;
        let candle_both = || gn.forward(&x)?.apply(&candle_nn::Activation::Swish);
        let tb = time(&dev, 1, iters, &candle_both)?;
        let ours = || kernels::group_norm(&x, &gamma, &beta, 32, 1e-6, true);
        let to = time(&dev, 2, iters, &ours)?;
        println!(
            "{:<22} {candle_gn:>12.2} {:>10.2} {to:>12.2} {:>8.1}x {:>9.2e}",
            format!("{c}ch {s}²"),
            tb - candle_gn,
            tb / to,
            rel(&ours()?, &candle_both()?)?
        );
    }

    println!("\n== upsample nearest 2x, candle (ms; ours folds it into the next conv's im2col)");
    for &(c, s) in &[(512usize, 128usize), (512, 256), (256, 512)] {
        let x = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        let t = time(&dev, 1, iters, || x.upsample_nearest2d(2 * s, 2 * s))?;
        println!("{c}ch {s}² -> {}²: {t:.2}", 2 * s);
    }

    println!("\n== mid-block attention, 512ch at 128² (L = 16384, one head of 512), ms");
    {
        let (c, s) = (512usize, 128usize);
        let l = s * s;
        let q = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        let k = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        let v = randn(&[1, c, s, s], 1.0, dt, &dev)?;
        // candle_transformers' AttnBlock after its 1x1 convs
        let reference = || -> R<Tensor> {
            let qt = q.flatten_from(2)?.t()?.unsqueeze(1)?;
            let kt = k.flatten_from(2)?.t()?.unsqueeze(1)?;
            let vt = v.flatten_from(2)?.t()?.unsqueeze(1)?;
            let w = (qt.matmul(&kt.t()?)? * (1.0 / (c as f64).sqrt()))?;
            candle_nn::ops::softmax_last_dim(&w)?
                .matmul(&vt)?
                .squeeze(1)?
                .t()?
                .reshape((1, c, s, s))
        };
        // ours (decoder.rs's fast path)
        let ours = || -> R<Tensor> {
            let qs = q.reshape((1, c, l))?;
            let sc = qs.transpose(1, 2)?.matmul(&k.reshape((1, c, l))?)?;
            let p = kernels::softmax_last_dim(&sc, 1.0 / (c as f64).sqrt())?;
            v.reshape((1, c, l))?
                .matmul(&p.transpose(1, 2)?)?
                .reshape((1, c, s, s))
        };
        let err = rel(&ours()?, &reference()?)?;
        let tr = time(&dev, 1, iters, &reference)?;
        let to = time(&dev, 1, iters, &ours)?;
        let qf = q.reshape((1, c, l))?;
        let scores = qf.transpose(1, 2)?.matmul(&qf)?;
        let tqk = time(&dev, 1, iters, || qf.transpose(1, 2)?.matmul(&qf))?;
        let tsm = time(&dev, 1, iters, || candle_nn::ops::softmax_last_dim(&scores))?;
        let tsc = time(&dev, 1, iters, || scores.affine(0.5, 0.0))?;
        let tks = time(&dev, 1, iters, || kernels::softmax_last_dim(&scores, 0.5))?;
        let serr = rel(
            &kernels::softmax_last_dim(&scores, 0.5)?,
            &candle_nn::ops::softmax_last_dim(&(scores.to_dtype(DType::F32)? * 0.5)?)?,
        )?;
        println!(
            "reference {tr:.2} | ours {to:.2} (rel err {err:.2e}) | parts: qᵀk {tqk:.2}, candle's softmax {tsm:.2}, our softmax kernel {tks:.2} (rel err {serr:.2e} against f32), one elementwise pass over the scores {tsc:.2}"
        );
    }

    println!("\nprofile done in {:.1} s", t_start.elapsed().as_secs_f64());
    Ok(())
}
