//! Times attention and one FLUX.2 transformer forward on the GPU for each attention backend and
//! with/without the fused kernels, on random weights (no files). A quick kernel-development check;
//! the full comparison with diffusers is `veetance bench` + `.verify/gpu/bench.sh`.
//!
//! `cargo run --release --features cuda -p veetance-models --example gpu_forward -- [4b|9b] [iters] [attention]`
//! (`attention`: stop after the attention timings; `gemm`: time the forward's matmul shapes alone,
//! as `.verify/gpu/gemm_torch.py` does with PyTorch; `profile`: the fused forward's time per
//! stage (CUDA events, `veetance_models::profile`); a fifth argument `fp8` converts the linear
//! weights to fp8 e4m3 first (anything else keeps bf16), a sixth `attn8` profiles FP8 attention
//! and prints the velocity's error against bf16 attention)

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use veetance_kernels as kernels;
use veetance_models::flux2::{AttentionBackend, Config, Flux2Transformer, ForwardOptions};
use veetance_models::qlinear::{LinearFormat, WeightBuilder};

fn sync(dev: &Device) -> candle_core::Result<()> {
    dev.synchronize()
}

fn time<F: FnMut() -> candle_core::Result<Tensor>>(
    dev: &Device,
    iters: usize,
    mut f: F,
) -> candle_core::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    sync(dev)?;
    let mut times = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        let out = f()?;
        sync(dev)?;
        drop(out);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("4b");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dev = Device::new_cuda(0)?;
    if which == "vae" {
        return vae(&dev, iters);
    }
    if args.get(3).map(String::as_str) == Some("gemm") {
        return gemms(&dev, which, iters);
    }
    let cfg = if which == "9b" {
        Config::klein_9b()
    } else {
        Config::klein_4b()
    };
    let heads = cfg.num_attention_heads;

    // attention alone at 1024² (4096 image + 512 text tokens)
    let l = 4608;
    let q = Tensor::randn(0f32, 1f32, (1, heads, l, 128), &dev)?.to_dtype(DType::BF16)?;
    let k = Tensor::randn(0f32, 1f32, (1, heads, l, 128), &dev)?.to_dtype(DType::BF16)?;
    let v = Tensor::randn(0f32, 1f32, (1, heads, l, 128), &dev)?.to_dtype(DType::BF16)?;
    let flops = 4.0 * (l * l * 128 * heads) as f64;
    let mut t_flash = f64::NAN;
    println!("{}", kernels::cudnn_status());
    for kernel in [
        kernels::FlashKernel::MmaSync,
        kernels::FlashKernel::Wgmma,
        kernels::FlashKernel::Cudnn,
    ] {
        let t = time(&dev, iters, || {
            kernels::flash_attention_with(&q, &k, &v, false, None, kernel)
        });
        match t {
            Ok(t) => {
                println!(
                    "attention {heads}x{l}x128 bf16, {kernel:?} kernel: {t:.3} ms ({:.0} TFLOP/s)",
                    flops / t / 1e9
                );
                t_flash = t;
            }
            Err(e) => println!("attention, {kernel:?} kernel: {e}"),
        }
    }
    let t_ref = time(&dev, iters, || {
        let s = (q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            / 128f64.sqrt())?;
        candle_nn::ops::softmax_last_dim(&s)?
            .to_dtype(DType::BF16)?
            .matmul(&v)
    })?;
    println!(
        "attention {heads}x{l}x128 bf16: flash (last kernel above) {t_flash:.3} ms, plain {t_ref:.3} ms",
    );

    if args.get(3).map(String::as_str) == Some("attention") {
        return Ok(());
    }
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &dev);
    let model = Flux2Transformer::new(
        &cfg,
        WeightBuilder::from_var_builder(vb, LinearFormat::AsStored),
    )?;
    // Random weights (the VarMap starts them at zero, which is not how the GPU runs real ones:
    // zeros draw less power and let the clocks run higher).
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let r = (Tensor::randn(0f32, 1f32, var.shape(), &dev)? * 0.02)?;
        let w = if name.contains("norm") { (r + 1.0)? } else { r };
        var.set(&w.to_dtype(var.dtype())?)?;
    }
    // `fp8` after the mode: the same random weights, linears converted to fp8 e4m3 at build (one
    // scale a row), as the loader's `weight_dtype=fp8_e4m3` does; FP8 GEMMs on Hopper.
    let mut bf16_model = None;
    let model = if args.get(4).map(String::as_str) == Some("fp8") {
        // Kept for `attn8`'s comparison: how far fp8 linears alone move this model's velocity.
        if args.get(5).map(String::as_str) == Some("attn8") {
            bf16_model = Some(model);
        } else {
            drop(model);
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &dev);
        println!("linear weights: fp8 e4m3");
        Flux2Transformer::new(
            &cfg,
            WeightBuilder::from_var_builder(vb, LinearFormat::Fp8E4M3),
        )?
    } else {
        model
    };
    let n_img = 64 * 64;
    let n_txt = 512;
    let img = Tensor::randn(0f32, 1f32, (1, n_img, 128), &dev)?.to_dtype(DType::BF16)?;
    let txt = (Tensor::randn(0f32, 1f32, (1, n_txt, cfg.joint_attention_dim), &dev)? * 0.1)?
        .to_dtype(DType::BF16)?;
    let img_ids: Vec<f32> = (0..n_img)
        .flat_map(|i| [0.0, (i / 64) as f32, (i % 64) as f32, 0.0])
        .collect();
    let img_ids = Tensor::from_vec(img_ids, (n_img, 4), &dev)?;
    let txt_ids: Vec<f32> = (0..n_txt).flat_map(|i| [0.0, 0.0, 0.0, i as f32]).collect();
    let txt_ids = Tensor::from_vec(txt_ids, (n_txt, 4), &dev)?;
    let t = Tensor::new(&[0.7f32], &dev)?;
    if args.get(3).map(String::as_str) == Some("profile") {
        let fp8_attention = args.get(5).map(String::as_str) == Some("attn8");
        let opts = ForwardOptions {
            attention: if fp8_attention {
                AttentionBackend::FlashFp8
            } else {
                AttentionBackend::Flash
            },
            fused: true,
        };
        if fp8_attention {
            let flash = ForwardOptions {
                attention: AttentionBackend::Flash,
                fused: true,
            };
            let a = model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &flash)?;
            let b = model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?;
            println!(
                "velocity with fp8 attention against flash (bf16 attention): rel err {:.2e}",
                kernels::testing::rel(&b, &a)?
            );
            if let Some(bf16) = bf16_model.take() {
                let w = bf16.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &flash)?;
                println!(
                    "for scale, fp8 linears alone (flash attention) against bf16 linears: rel err {:.2e}",
                    kernels::testing::rel(&a, &w)?
                );
            }
        }
        let total = time(&dev, iters, || {
            model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)
        })?;
        veetance_models::profile::set_enabled(true);
        let mut sums: Vec<(&'static str, f64)> = Vec::new();
        for _ in 0..iters {
            model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?;
            for (name, ms) in veetance_models::profile::take()? {
                match sums.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 += ms,
                    None => sums.push((name, ms)),
                }
            }
        }
        veetance_models::profile::set_enabled(false);
        let marked: f64 = sums.iter().map(|(_, ms)| ms).sum::<f64>() / iters as f64;
        println!("klein-{which} fused forward: {total:.2} ms (median of {iters}); per stage, mean over {iters} profiled runs (sum {marked:.2} ms):");
        for (name, ms) in &sums {
            println!("  {name:<40} {:8.3} ms", ms / iters as f64);
        }
        return Ok(());
    }
    let plain = model.forward(&img, &img_ids, &txt, &txt_ids, &t)?;
    for (attention, fused) in [
        (AttentionBackend::Plain, false),
        (AttentionBackend::Flash, false),
        (AttentionBackend::Flash, true),
    ] {
        let opts = ForwardOptions { attention, fused };
        let ms = time(&dev, iters, || {
            model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)
        })?;
        let out = model.forward_with(&img, &img_ids, &txt, &txt_ids, &t, &opts)?;
        let diff = (&out.to_dtype(DType::F32)? - &plain.to_dtype(DType::F32)?)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        let norm = plain
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        println!(
            "klein-{which} forward 1024² {attention:?} fused {fused}: {ms:.2} ms, rel err vs plain {:.2e}",
            diff / norm
        );
    }
    Ok(())
}

/// The VAE decode at 1024² and the candle ops it is made of, to see where its time goes.
fn vae(dev: &Device, iters: usize) -> candle_core::Result<()> {
    use candle_core::Module;
    use veetance_models::vae::{Config as VaeConfig, Flux2Vae, Parts};
    for dtype in [DType::BF16, DType::F32] {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, dev);
        let vae = Flux2Vae::new(&VaeConfig::flux2(), Parts::Decoder, vb)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let latent = Tensor::randn(0f32, 1f32, (1, 128, 64, 64), dev)?;
        let ms = time(dev, iters, || {
            vae.decode(&latent, None)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        println!("vae decode 1024² {dtype:?}: {ms:.2} ms");

        let x = Tensor::randn(0f32, 1f32, (1, 128, 1024, 1024), dev)?.to_dtype(dtype)?;
        let w = (Tensor::randn(0f32, 1f32, (128, 128, 3, 3), dev)? * 0.03)?.to_dtype(dtype)?;
        let ms = time(dev, iters, || x.conv2d(&w, 1, 1, 1, 1))?;
        println!("  conv2d 3x3 128->128 at 1024² {dtype:?}: {ms:.2} ms");
        let gn = candle_nn::group_norm(
            32,
            128,
            1e-6,
            candle_nn::VarBuilder::from_varmap(&candle_nn::VarMap::new(), dtype, dev),
        )?;
        let ms = time(dev, iters, || gn.forward(&x))?;
        println!("  group_norm(32) 128ch at 1024² {dtype:?}: {ms:.2} ms");
        let ms = time(dev, iters, || candle_nn::ops::silu(&x))?;
        println!("  silu 128ch at 1024² {dtype:?}: {ms:.2} ms");
        let half = x.narrow(2, 0, 512)?.narrow(3, 0, 512)?.contiguous()?;
        let ms = time(dev, iters, || half.upsample_nearest2d(1024, 1024))?;
        println!("  upsample x2 128ch to 1024² {dtype:?}: {ms:.2} ms");
    }
    Ok(())
}

/// The matmul shapes of one 1024² forward `(tokens, in, out, count)`: `x (M, K) @ wᵀ`, `w (N, K)`,
/// as the model's linear layers run them.
pub fn forward_gemms(which: &str) -> Vec<(usize, usize, usize, usize)> {
    let (d, double, single) = if which == "9b" {
        (4096, 8, 24)
    } else {
        (3072, 5, 20)
    };
    let mlp = 3 * d;
    let mut v = Vec::new();
    for m in [4096, 512] {
        v.push((m, d, 3 * d, double));
        v.push((m, d, d, double));
        v.push((m, d, 2 * mlp, double));
        v.push((m, mlp, d, double));
    }
    v.push((4608, d, 3 * d + 2 * mlp, single));
    v.push((4608, d + mlp, d, single));
    v
}

fn gemms(dev: &Device, which: &str, iters: usize) -> candle_core::Result<()> {
    let mut total_ms = 0.0;
    let mut total_flop = 0.0;
    for (m, k, n, count) in forward_gemms(which) {
        let x = Tensor::randn(0f32, 1f32, (1, m, k), dev)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 1f32, (n, k), dev)?.to_dtype(DType::BF16)?;
        let ms = time(dev, iters, || x.broadcast_matmul(&w.t()?))?;
        let flop = 2.0 * (m * k * n) as f64;
        println!(
            "gemm {m}x{k}x{n} (x{count}): {ms:.3} ms, {:.0} TFLOP/s",
            flop / ms / 1e9
        );
        total_ms += ms * count as f64;
        total_flop += flop * count as f64;
    }
    println!(
        "gemm total per forward ({which}): {total_ms:.2} ms, {:.0} TFLOP/s",
        total_flop / total_ms / 1e9
    );
    Ok(())
}
