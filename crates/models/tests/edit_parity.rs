//! f32 parity of images in — img2img, inpainting and reference-image editing — with diffusers on
//! the tiny random-weight models. Fixtures: `.verify/parity/make_edit_fixtures.py` writes
//! `assets/parity/edit_ref.safetensors` (read its docstring for what each case runs).
//!
//! Relative error: `||ours - ref||_2 / ||ref||_2`, at most 1e-4 for each compared tensor.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::sampling::{
    self, Cfg, DenoiseExtras, Inpaint, MaskBlend, References, TextCondition,
};
use veetance_models::{flux2, vae};

const TOLERANCE: f64 = 1e-4;
const PROMPT: &str = "a red fox sitting in the snow at dawn";
const STEPS: usize = 4;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
}

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(assets().join("edit_ref.safetensors"), &Device::Cpu).unwrap()
}

fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    let ours = ours.to_dtype(DType::F64).unwrap();
    let reference = reference.to_dtype(DType::F64).unwrap();
    let diff = (&ours - &reference)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let norm = reference.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f64>().unwrap() / norm.to_scalar::<f64>().unwrap()).sqrt()
}

fn check(what: &str, ours: &Tensor, reference: &Tensor) {
    let err = rel_err(ours, reference);
    println!("parity {what}: rel err {err:.3e}");
    assert!(
        err <= TOLERANCE,
        "{what}: relative error {err:.3e} > {TOLERANCE:e}"
    );
}

/// The tiny models of `assets/parity/`, f32 on the CPU.
struct Models {
    encoder: TextEncoder,
    transformer: flux2::Flux2Transformer,
    vae: vae::Flux2Vae,
}

fn models() -> Models {
    let dev = Device::Cpu;
    let preset = qwen3::Config {
        output_layers: vec![1, 2, 3],
        max_length: 48,
        ..qwen3::Config::from_file(&assets().join("qwen3_tiny_config.json")).unwrap()
    };
    let files = TextEncoderFiles {
        weights: assets().join("qwen3_tiny.safetensors"),
        tokenizer: Some(assets().join("tokenizer.json")),
        config: Some(assets().join("qwen3_tiny_config.json")),
    };
    let encoder = TextEncoder::load(&files, Some(&preset), DType::F32, &dev).unwrap();
    let transformer = flux2::load_transformer(
        &assets().join("flux2_tiny_diffusers"),
        None,
        DType::F32,
        &dev,
    )
    .unwrap();
    let vae_cfg = vae::Config::from_file(&assets().join("vae_tiny_diffusers/config.json")).unwrap();
    let vae = vae::load_vae(
        &assets().join("vae_tiny_diffusers"),
        Some(&vae_cfg),
        vae::Parts::EncoderAndDecoder,
        DType::F32,
        &dev,
    )
    .unwrap();
    Models {
        encoder,
        transformer,
        vae,
    }
}

/// An image `(1, H, W, 3)` in [0, 1] -> its normalised latent `(1, 128, h, w)`, as the pipeline
/// preprocesses it (`2x - 1`) and encodes it (the Gaussian's mode).
fn encode(vae: &vae::Flux2Vae, image: &Tensor) -> Tensor {
    let pixels = ((image.permute((0, 3, 1, 2)).unwrap() * 2.0).unwrap() - 1.0).unwrap();
    vae.encode(&pixels).unwrap()
}

fn run(
    m: &Models,
    start: &Tensor,
    sigmas: &[f32],
    guidance: f64,
    extras: DenoiseExtras<'_>,
) -> Tensor {
    let dev = Device::Cpu;
    let (_, n, _) = start.dims3().unwrap();
    let side = (n as f64).sqrt() as usize;
    let img_ids = sampling::image_ids(side, side, &dev).unwrap();
    let positive = m.encoder.encode(PROMPT).unwrap().hidden;
    let negative = m.encoder.encode("").unwrap().hidden;
    let txt_ids = sampling::text_ids(positive.dim(1).unwrap(), &dev).unwrap();
    let pos = TextCondition {
        txt: &positive,
        txt_ids: &txt_ids,
    };
    let cfg = (guidance != 1.0).then_some(Cfg {
        negative: TextCondition {
            txt: &negative,
            txt_ids: &txt_ids,
        },
        scale: guidance,
    });
    sampling::denoise_with(
        &m.transformer,
        start,
        &img_ids,
        pos,
        cfg,
        sigmas,
        extras,
        |_, _| ControlFlow::Continue(()),
    )
    .unwrap()
}

#[test]
fn reference_editing_matches_the_klein_pipeline_with_one_and_three_references() {
    let r = fixture();
    let m = models();
    let latents: Vec<Tensor> = (0..3)
        .map(|i| encode(&m.vae, &r[&format!("ref_{i}_image")]))
        .collect();
    // 64x64, 96x64 and 64x128 pixels on a VAE of 8 pixels per token.
    let grids: Vec<_> = latents.iter().map(|l| l.dims4().unwrap()).collect();
    assert_eq!(
        grids,
        vec![(1, 128, 8, 8), (1, 128, 8, 12), (1, 128, 16, 8)]
    );
    let start = sampling::pack_latents(&r["ref_noise"]).unwrap();
    let sigmas = sampling::schedule(STEPS, 16);
    for (name, count) in [("ref1", 1), ("ref3", 3)] {
        let refs = References::new(&latents[..count], &Device::Cpu).unwrap();
        let guidance = r[&format!("{name}_guidance")].to_vec1::<f32>().unwrap()[0];
        let extras = DenoiseExtras {
            references: Some(&refs),
            ..DenoiseExtras::default()
        };
        let out = run(&m, &start, &sigmas, f64::from(guidance), extras);
        check(
            &format!("{count} reference(s), guidance {guidance}"),
            &out,
            &r[&format!("{name}_latent")],
        );
    }
    // The references change the picture: without them the run is another one.
    let plain = run(&m, &start, &sigmas, 1.0, DenoiseExtras::default());
    assert!(rel_err(&plain, &r["ref1_latent"]) > 1e-2);
}

#[test]
fn reference_ids_step_the_time_axis_by_ten_per_reference() {
    let dev = Device::Cpu;
    let a = Tensor::zeros((1, 128, 2, 3), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((1, 128, 1, 2), DType::F32, &dev).unwrap();
    let refs = References::new(&[a, b], &dev).unwrap();
    assert_eq!(refs.token_count(), 8);
    let ids: Vec<Vec<f32>> = refs.ids.to_vec2().unwrap();
    assert_eq!(ids[0], vec![10.0, 0.0, 0.0, 0.0]);
    assert_eq!(ids[5], vec![10.0, 1.0, 2.0, 0.0]);
    assert_eq!(ids[6], vec![20.0, 0.0, 0.0, 0.0]);
    assert_eq!(ids[7], vec![20.0, 0.0, 1.0, 0.0]);
    let bad = Tensor::zeros((1, 64, 2, 2), DType::F32, &dev).unwrap();
    let err = References::new(&[bad], &dev).unwrap_err().to_string();
    assert!(err.contains("reference 0") && err.contains("128"), "{err}");
}

#[test]
fn img2img_matches_flux_img2img_at_two_strengths() {
    let r = fixture();
    let m = models();
    let image = encode(&m.vae, &r["source_image"]);
    check("img2img source encode", &image, &r["source_latent"]);
    let noise = &r["i2i_noise"];
    for k in 0..2 {
        let strength = r[&format!("i2i_{k}_strength")].to_vec1::<f32>().unwrap()[0];
        let skip = sampling::strength_start(STEPS, f64::from(strength));
        let sigmas = &sampling::schedule(STEPS, 16)[skip..];
        check(
            &format!("img2img sigmas at strength {strength}"),
            &Tensor::new(sigmas, &Device::Cpu).unwrap(),
            &r[&format!("i2i_{k}_sigmas")],
        );
        let start =
            sampling::pack_latents(&sampling::noised(&image, noise, sigmas[0]).unwrap()).unwrap();
        let out = run(&m, &start, sigmas, 1.0, DenoiseExtras::default());
        check(
            &format!(
                "img2img at strength {strength} ({} steps)",
                sigmas.len() - 1
            ),
            &out,
            &r[&format!("i2i_{k}_latent")],
        );
    }
    assert_eq!(sampling::strength_start(4, 1.0), 0);
    assert_eq!(sampling::strength_start(4, 0.0), 4);
}

#[test]
fn inpainting_matches_the_klein_inpaint_pipeline() {
    let r = fixture();
    let m = models();
    let image = encode(&m.vae, &r["source_image"]);
    let packed = sampling::pack_latents(&image).unwrap();
    let mask = sampling::mask_to_tokens(&r["mask_image"], 4, 4, true).unwrap();
    check("inpaint mask tokens", &mask, &r["inpaint_mask_tokens"]);
    // The mask has soft token values at the rectangle's edges.
    let values: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().any(|&v| v > 0.0 && v < 1.0), "{values:?}");

    let strength = r["inpaint_strength"].to_vec1::<f32>().unwrap()[0];
    let sigmas = &sampling::schedule(STEPS, 16)[sampling::strength_start(STEPS, strength.into())..];
    let noise = &r["inpaint_noise"];
    let start = sampling::noised(&packed, noise, sigmas[0]).unwrap();
    check("inpaint start latent", &start, &r["inpaint_start"]);
    // diffusers' klein inpainting also passes the source image as a reference.
    let refs = References::new(std::slice::from_ref(&image), &Device::Cpu).unwrap();
    let inpaint = |mask, blend| DenoiseExtras {
        references: Some(&refs),
        negative_references: None,
        inpaint: Some(Inpaint {
            image: &packed,
            noise,
            mask,
            blend,
        }),
    };
    let out = run(
        &m,
        &start,
        sigmas,
        1.0,
        inpaint(&mask, MaskBlend::AfterStep),
    );
    check(
        "inpainting (3 steps, soft-edged mask)",
        &out,
        &r["inpaint_latent"],
    );

    // ComfyUI's blend (KSamplerX0Inpaint) is the same sampler for a 0/1 mask.
    let hard = mask.ge(0.5).unwrap().to_dtype(DType::F32).unwrap();
    let after = run(
        &m,
        &start,
        sigmas,
        1.0,
        inpaint(&hard, MaskBlend::AfterStep),
    );
    let before = run(
        &m,
        &start,
        sigmas,
        1.0,
        inpaint(&hard, MaskBlend::BeforeModel),
    );
    check("ComfyUI's and diffusers' blends, 0/1 mask", &before, &after);
    // And the kept tokens end exactly on the image.
    let kept = packed.broadcast_mul(&(1.0 - &hard).unwrap()).unwrap();
    let ours = after.broadcast_mul(&(1.0 - &hard).unwrap()).unwrap();
    assert!(rel_err(&ours, &kept) < 1e-6);
}

#[test]
fn masks_resize_like_torch_bilinear() {
    let dev = Device::Cpu;
    // 4x4 -> 2x2: each output averages the centre 2x2 of its 2x2 block... at scale 2 the source
    // index is 2o + 0.5, so it blends rows/columns 2o and 2o + 1 equally.
    let m = Tensor::new(
        &[
            [0f32, 1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.4, 0.6],
            [0.0, 0.0, 0.6, 0.6],
        ],
        &dev,
    )
    .unwrap();
    let t = sampling::mask_to_tokens(&m, 2, 2, false).unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let expected = [0.75, 0.0, 0.0, 0.55];
    for (a, b) in v.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6, "{v:?}");
    }
    let t = sampling::mask_to_tokens(&m, 2, 2, true).unwrap();
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![0.75, 0.0, 0.0, 0.75]);
    assert!(sampling::mask_to_tokens(&m, 0, 2, false).is_err());
}
