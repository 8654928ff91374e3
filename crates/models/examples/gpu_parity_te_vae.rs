//! Full-size Qwen3-4B text encoder and FLUX.2 VAE parity against transformers/diffusers (bf16).
//!
//! `gpu_parity_te_vae <dir> <tokenizer.json>` reads what `.verify/parity/gpu_reference_te_vae.py`
//! wrote and prints relative errors `||ours - ref||_2 / ||ref||_2`. See docs/models.md.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::vae;

const PROMPT: &str = "a red fox sitting in the snow at dawn, photographed with a telephoto lens";

fn rel_err(ours: &Tensor, reference: &Tensor) -> veetance_models::Result<f64> {
    let ours = ours.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let reference = reference.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let diff = (&ours - &reference)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let norm = reference.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok(f64::from(diff / norm).sqrt())
}

fn main() -> veetance_models::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/gp2".into()));
    let tokenizer = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "assets/parity/tokenizer.json".into()),
    );
    let device = Device::cuda_if_available(0)?;
    let reference =
        candle_core::safetensors::load(dir.join("te_vae_reference.safetensors"), &Device::Cpu)?;
    let mut rows = Vec::new();

    let files = TextEncoderFiles {
        weights: dir.join("qwen3.safetensors"),
        tokenizer: Some(tokenizer),
        config: Some(dir.join("qwen3_config.json")),
    };
    let start = Instant::now();
    let te = TextEncoder::load(
        &files,
        Some(&qwen3::Config::qwen3_4b()),
        DType::BF16,
        &device,
    )?;
    println!("qwen3-4b load: {:.1} s", start.elapsed().as_secs_f64());
    let emb = te.encode(PROMPT)?;
    device.synchronize()?;
    let start = Instant::now();
    let emb2 = te.encode(PROMPT)?;
    device.synchronize()?;
    println!(
        "qwen3-4b encode (27 layers, 512 tokens): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    drop(emb2);
    rows.push((
        "text encoder (Qwen3-4B, 512 tokens)",
        rel_err(&emb.hidden, &reference["prompt_embeds"])?,
    ));
    rows.push((
        "text encoder vs transformers with f32 weights",
        rel_err(&emb.hidden, &reference["prompt_embeds_f32"])?,
    ));
    drop(te);

    let ae = vae::load_vae(
        &dir.join("vae"),
        None,
        vae::Parts::EncoderAndDecoder,
        DType::BF16,
        &device,
    )?;
    let latent = reference["latent"].to_device(&device)?;
    let image = ae.decode(&latent, None)?;
    device.synchronize()?;
    let start = Instant::now();
    let _ = ae.decode(&latent, None)?;
    device.synchronize()?;
    println!(
        "vae decode 1024x1024: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    rows.push((
        "VAE decode 1024x1024",
        rel_err(&image, &reference["image"])?,
    ));
    rows.push((
        "VAE decode vs diffusers with f32 weights",
        rel_err(&image, &reference["image_f32"])?,
    ));
    let encoded = ae.encode(&reference["pixels"].to_device(&device)?)?;
    rows.push((
        "VAE encode 512x512",
        rel_err(&encoded, &reference["encoded"])?,
    ));

    println!("| quantity | rel err |");
    println!("| --- | --- |");
    for (what, err) in rows {
        println!("| {what} | {err:.3e} |");
    }
    Ok(())
}
