//! Full-size klein-4B parity against diffusers on the GPU (bf16).
//!
//! `gpu_parity <dir>` reads what `.verify/parity/gpu_reference.py <dir>` wrote (seeded random
//! klein-4B weights in the diffusers layout, the inputs and diffusers' outputs), runs the same
//! inputs through our transformer and sampler, and prints the relative errors
//! `||ours - ref||_2 / ||ref||_2` and timings. See docs/models.md.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use veetance_models::flux2;
use veetance_models::sampling::{self, TextCondition};

fn rel_err(ours: &Tensor, reference: &Tensor) -> veetance_models::Result<f64> {
    let ours = ours.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let reference = reference.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let diff = (&ours - &reference)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let norm = reference.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok(f64::from(diff / norm).sqrt())
}

fn main() -> veetance_models::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/gpu_parity".into()),
    );
    let device = Device::cuda_if_available(0)?;
    let sync = |d: &Device| d.synchronize();
    println!("device: {device:?}");

    let start = Instant::now();
    let model = flux2::load_transformer(
        &dir.join("transformer.safetensors"),
        Some(&flux2::Config::klein_4b()),
        DType::BF16,
        &device,
    )?;
    sync(&device)?;
    println!(
        "load (diffusers layout -> fused qkv, bf16): {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let inputs = candle_core::safetensors::load(dir.join("inputs.safetensors"), &device)?;
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let noise = inputs["noise"].to_dtype(DType::BF16)?;
    let txt = &inputs["txt"];
    let (_, _, h, w) = noise.dims4()?;
    let img = sampling::pack_latents(&noise)?;
    let img_ids = sampling::image_ids(h, w, &device)?;
    let txt_ids = sampling::text_ids(txt.dim(1)?, &device)?;
    let sigmas = sampling::schedule(4, h * w);
    let ours_sigmas = Tensor::new(sigmas.as_slice(), &Device::Cpu)?;
    println!(
        "sigmas {sigmas:?}: rel err {:.3e}",
        rel_err(&ours_sigmas, &reference["sigmas"])?
    );

    // Timestep as the pipeline feeds it: (sigma * 1000).to(bf16) / 1000.
    let t_of = |sigma: f32| sampling::pipeline_timestep(sigma, 1, DType::BF16, &device);
    let mut rows = Vec::new();
    for i in [0usize, 2] {
        let v = model.forward(&img, &img_ids, txt, &txt_ids, &t_of(sigmas[i])?)?;
        let err = rel_err(&v, &reference[&format!("velocity_{i}")])?;
        rows.push((format!("velocity at sigma {:.4}", sigmas[i]), err, 2e-2));
    }

    let t = t_of(sigmas[0])?;
    for _ in 0..2 {
        model.forward(&img, &img_ids, txt, &txt_ids, &t)?;
    }
    sync(&device)?;
    let start = Instant::now();
    let runs = 5;
    for _ in 0..runs {
        model.forward(&img, &img_ids, txt, &txt_ids, &t)?;
    }
    sync(&device)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);

    let pos = TextCondition {
        txt,
        txt_ids: &txt_ids,
    };
    let latent = sampling::denoise(&model, &img, &img_ids, pos, None, &sigmas, |_, _| {
        ControlFlow::Continue(())
    })?;
    rows.push((
        "4-step latent".into(),
        rel_err(&latent, &reference["latent_4step"])?,
        5e-2,
    ));
    // Informational (no bound): diffusers' own bf16 run is as far from this f32 run; see its log.
    rows.push((
        "4-step latent vs diffusers with f32 weights (informational)".into(),
        rel_err(&latent, &reference["latent_4step_f32"])?,
        f64::INFINITY,
    ));
    // Each step's velocity from diffusers' own intermediate latent: separates a per-step
    // difference from the growth of small differences along the trajectory.
    for (i, &sigma) in sigmas.iter().take(4).enumerate() {
        let x = reference[&format!("x_step{i}")]
            .to_dtype(DType::BF16)?
            .to_device(&device)?;
        let v = model.forward(&x, &img_ids, txt, &txt_ids, &t_of(sigma)?)?;
        let err = rel_err(&v, &reference[&format!("v_step{i}")])?;
        rows.push((
            format!("step {i} velocity from diffusers' latent"),
            err,
            2e-2,
        ));
    }

    println!(
        "our klein-4B bf16 forward at {}x{} ({} image + 512 text tokens): {forward_ms:.1} ms",
        w * 16,
        h * 16,
        h * w
    );
    println!("| quantity | rel err | bound | ok |");
    println!("| --- | --- | --- | --- |");
    let mut all_ok = true;
    for (what, err, bound) in rows {
        let ok = err <= bound;
        all_ok &= ok;
        println!(
            "| {what} | {err:.3e} | {bound:e} | {} |",
            if ok { "yes" } else { "NO" }
        );
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}
