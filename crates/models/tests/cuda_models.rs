//! The models' CUDA paths against their references, on the GPU (needs the `cuda` feature and a
//! CUDA device; without a device every test returns early and says so): the fused forward, the
//! VAE decode on our kernels, fp8 weights, streamed blocks and host copies. The kernels alone are
//! tested in `crates/kernels/tests/gpu.rs`. Run on the GPU machine:
//! `cargo test --release --features cuda -p veetance-models --test cuda_models`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use veetance_kernels as kernels;
use veetance_kernels::testing::{bf16_bits, gpu, randn, rel};
use veetance_models::flux2::{AttentionBackend, Config, Flux2Transformer, ForwardOptions};
use veetance_models::qlinear::{LinearFormat, WeightBuilder};

type R<T> = candle_core::Result<T>;

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

#[test]
fn vae_fast_decode_matches_reference_decode() -> R<()> {
    use veetance_models::vae::{Config as VaeConfig, Flux2Vae, Parts};
    let Some(dev) = gpu() else { return Ok(()) };
    // 4 latent channels: conv_in takes 4, so the NCHW fast path runs; 8: every channel count
    // is a multiple of 8, so with cuDNN loaded the channels-last path runs (its stage names say).
    for latent_channels in [4, 8] {
        let cfg = VaeConfig {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            latent_channels,
            ..VaeConfig::flux2()
        };
        for dtype in [DType::BF16, DType::F16] {
            let varmap = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
            let vae = Flux2Vae::new(&cfg, Parts::Decoder, vb)?;
            let latent = Tensor::randn(0f32, 1f32, (1, 4 * latent_channels, 8, 12), &dev)?;
            let want = vae
                .decode_with(&latent, None, false, None)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut timer = veetance_models::vae::StageTimer::new(&dev)?;
            let got = vae
                .decode_with(&latent, None, true, Some(&mut timer))
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let nhwc = timer.stages.iter().any(|(s, _)| s.contains("to NHWC"));
            let cudnn = !veetance_kernels::cudnn_status().contains("not in use");
            assert_eq!(
                nhwc,
                cudnn && latent_channels == 8 && std::env::var("VEETANCE_VAE_NHWC").is_err(),
                "channels-last path taken: {nhwc}, cuDNN: {cudnn}"
            );
            assert_eq!(got.dims(), &[1, 3, 32, 48]);
            let e = rel(&got, &want)?;
            eprintln!(
                "decode {dtype:?}, {latent_channels} latent channels, channels-last {nhwc}: \
                 fast vs reference {e:.2e}"
            );
            assert!(e < 5e-2, "{e}");
        }
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
        // On Hopper the layer runs an FP8 GEMM (activations quantized to fp8 too).
        let fp8_gemm = kernels::fp8_linear_supported(&y_gpu);
        eprintln!("fp8 layer ({cols} columns): bf16 GPU vs f32 CPU {e:.2e} (FP8 GEMM: {fp8_gemm})");
        assert!(e < if fp8_gemm { 6e-2 } else { 2e-2 }, "{e}");
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

/// A GGUF layer on the GPU keeps its raw blocks and dequantizes them per matmul: the same output
/// as the dense layer of candle's CPU dequantization (the same GEMM), and it can move between
/// devices (an offload) and still compute there.
#[test]
fn gguf_blocks_layer_matches_dense_dequantized() -> R<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use veetance_models::qlinear::QLinear;
    let Some(dev) = gpu() else { return Ok(()) };
    let w = (Tensor::randn(0f32, 1f32, (96, 512), &Device::Cpu)? * 0.05)?;
    let x = randn(&[2, 7, 512], DType::BF16, &dev)?;
    for kind in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        let q = QTensor::quantize(&w, kind)?;
        let bytes = q.data()?;
        let layer = QLinear::gguf_blocks(&bytes, kind, (96, 512), DType::BF16, &dev)?;
        assert!(
            matches!(layer, QLinear::Blocks { .. }),
            "{}",
            layer.storage()
        );
        let dense = q
            .dequantize(&Device::Cpu)?
            .to_dtype(DType::BF16)?
            .to_device(&dev)?;
        let want = QLinear::Dense(candle_nn::Linear::new(dense, None)).forward(&x)?;
        let got = layer.forward(&x)?;
        assert_eq!(bf16_bits(&got)?, bf16_bits(&want)?, "{kind:?}");
        // Offloaded to the CPU (candle's quantized matmul there), then back.
        let cpu = layer.map_tensors(&mut |t| t.to_device(&Device::Cpu))?;
        let y = cpu.forward(&x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)?;
        let e = rel(&y, &want.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)?;
        assert!(e < 3e-2, "{kind:?} on the CPU: {e}");
        let back = cpu.map_tensors(&mut |t| t.to_device(&dev))?;
        assert_eq!(bf16_bits(&back.forward(&x)?)?, bf16_bits(&want)?);
    }
    Ok(())
}
