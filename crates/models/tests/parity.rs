//! f32 parity with the reference implementations (diffusers, transformers) on tiny random-weight
//! models of the real structure. Fixtures come from `.verify/parity/make_fixtures.py`.
//!
//! Relative error: `||ours - ref||_2 / ||ref||_2`, at most 1e-4 for each compared tensor.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::sampling::{self, Cfg, TextCondition};
use veetance_models::{flux2, vae};

const TOLERANCE: f64 = 1e-4;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(assets().join(name), &Device::Cpu).unwrap()
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

fn tiny_qwen3_preset() -> qwen3::Config {
    qwen3::Config {
        output_layers: vec![1, 2, 3],
        max_length: 48,
        ..qwen3::Config::from_file(&assets().join("qwen3_tiny_config.json")).unwrap()
    }
}

fn text_encoder() -> TextEncoder {
    let files = TextEncoderFiles {
        weights: assets().join("qwen3_tiny.safetensors"),
        tokenizer: Some(assets().join("tokenizer.json")),
        config: Some(assets().join("qwen3_tiny_config.json")),
    };
    TextEncoder::load(&files, Some(&tiny_qwen3_preset()), DType::F32, &Device::Cpu).unwrap()
}

const PROMPT: &str = "a red fox sitting in the snow at dawn";

#[test]
fn sigmas_match_diffusers_scheduler_including_the_jump_at_4300_tokens() {
    let reference = fixture("schedule_ref.safetensors");
    for (name, expected) in &reference {
        let mut parts = name.strip_prefix("sigmas_").unwrap().split('_');
        let steps: usize = parts.next().unwrap().parse().unwrap();
        let seq: usize = parts.next().unwrap().parse().unwrap();
        let ours = sampling::schedule(steps, seq);
        let ours = Tensor::new(ours.as_slice(), &Device::Cpu).unwrap();
        check(
            &format!("sigmas steps={steps} tokens={seq}"),
            &ours,
            expected,
        );
    }
}

#[test]
fn prompt_tokens_match_the_hf_tokenizer_with_chat_template_and_padding() {
    let reference = fixture("text_encoder_ref.safetensors");
    let encoder = text_encoder();
    let (ids, num_real, truncated) = encoder.tokenize(PROMPT).unwrap();
    let expected: Vec<i64> = reference["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mask: Vec<i64> = reference["attention_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(num_real as i64, mask.iter().sum::<i64>());
    assert!(!truncated);

    let long = "a very long prompt about a small house by the lake ".repeat(6);
    let (ids, num_real, truncated) = encoder.tokenize(long.trim_end()).unwrap();
    let expected: Vec<i64> = reference["long_input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(num_real, 48);
    assert!(truncated);
}

#[test]
fn text_encoder_hidden_states_match_transformers_for_a_padded_prompt() {
    let reference = fixture("text_encoder_ref.safetensors");
    let encoder = text_encoder();
    let out = encoder.encode(PROMPT).unwrap();
    check(
        "text encoder (padded prompt)",
        &out.hidden,
        &reference["prompt_embeds"],
    );
    let neg = encoder.encode("").unwrap();
    check(
        "text encoder (empty negative prompt)",
        &neg.hidden,
        &reference["negative_embeds"],
    );
}

fn check_velocity(model: &flux2::Flux2Transformer, layout: &str) {
    let r = fixture("transformer_ref.safetensors");
    for i in 0..3 {
        let v = model
            .forward(
                &r["img"],
                &r["img_ids"],
                &r["txt"],
                &r["txt_ids"],
                &r[&format!("t_{i}")],
            )
            .unwrap();
        let t: Vec<f32> = r[&format!("t_{i}")].to_vec1().unwrap();
        check(
            &format!("velocity {layout} t={}", t[0]),
            &v,
            &r[&format!("velocity_{i}")],
        );
    }
}

#[test]
fn transformer_velocity_matches_diffusers_from_the_bfl_single_file() {
    let path = assets().join("flux2_tiny_bfl.safetensors");
    // No config given: inferred from the tensor shapes, and equal to the diffusers config.json.
    let model = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap();
    let cfg = flux2::Config::from_file(&assets().join("flux2_tiny_diffusers/config.json")).unwrap();
    assert_eq!(model.config(), &cfg);
    check_velocity(&model, "bfl");
}

#[test]
fn transformer_velocity_matches_diffusers_from_the_sharded_diffusers_folder() {
    let path = assets().join("flux2_tiny_diffusers");
    let model = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap();
    check_velocity(&model, "diffusers");
}

fn vae_config() -> vae::Config {
    vae::Config::from_file(&assets().join("vae_tiny_diffusers/config.json")).unwrap()
}

#[test]
fn vae_decode_and_encode_match_diffusers_in_both_layouts() {
    let r = fixture("vae_ref.safetensors");
    for (layout, path) in [
        ("diffusers", assets().join("vae_tiny_diffusers")),
        ("bfl", assets().join("vae_tiny_bfl.safetensors")),
    ] {
        let model = vae::load_vae(
            &path,
            Some(&vae_config()),
            vae::Parts::EncoderAndDecoder,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        check(
            &format!("vae decode {layout}"),
            &model.decode(&r["latent"], None).unwrap(),
            &r["image"],
        );
        check(
            &format!("vae encode {layout}"),
            &model.encode(&r["pixels"]).unwrap(),
            &r["encoded"],
        );
    }
}

#[test]
fn four_step_generations_match_the_klein_pipeline_with_and_without_cfg() {
    let r = fixture("generation_ref.safetensors");
    let dev = Device::Cpu;
    let encoder = text_encoder();
    let cfg = flux2::Config::from_file(&assets().join("flux2_tiny_diffusers/config.json")).unwrap();
    let model = flux2::load_transformer(
        &assets().join("flux2_tiny_bfl.safetensors"),
        Some(&cfg),
        DType::F32,
        &dev,
    )
    .unwrap();
    let vae = vae::load_vae(
        &assets().join("vae_tiny_bfl.safetensors"),
        Some(&vae_config()),
        vae::Parts::Decoder,
        DType::F32,
        &dev,
    )
    .unwrap();

    let noise = &r["noise"];
    let (_, _, h, w) = noise.dims4().unwrap();
    let latent = sampling::pack_latents(noise).unwrap();
    let img_ids = sampling::image_ids(h, w, &dev).unwrap();
    let sigmas = sampling::schedule(4, h * w);
    let positive = encoder.encode(PROMPT).unwrap().hidden;
    let negative = encoder.encode("").unwrap().hidden;
    let txt_ids = sampling::text_ids(positive.dim(1).unwrap(), &dev).unwrap();
    let pos = TextCondition {
        txt: &positive,
        txt_ids: &txt_ids,
    };

    let mut latents_seen = Vec::new();
    let out = sampling::denoise(&model, &latent, &img_ids, pos, None, &sigmas, |step, x0| {
        assert_eq!(step.total, 4);
        // The preview runs at every step.
        let preview = veetance_models::preview::preview_rgb(x0, Some((h, w))).unwrap();
        assert_eq!((preview.width, preview.height), (2 * w, 2 * h));
        latents_seen.push(x0.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(latents_seen.len(), 4);
    check(
        "4-step generation (distilled, no CFG)",
        &out,
        &r["distilled_latent"],
    );
    let image = vae.decode(&out, Some((h, w))).unwrap();
    check(
        "4-step generation decoded image",
        &image,
        &r["distilled_image"],
    );

    let neg = Cfg {
        negative: TextCondition {
            txt: &negative,
            txt_ids: &txt_ids,
        },
        scale: 4.0,
    };
    let out = sampling::denoise(
        &model,
        &latent,
        &img_ids,
        pos,
        Some(neg),
        &sigmas,
        |_, _| ControlFlow::Continue(()),
    )
    .unwrap();
    check(
        "4-step generation (base, CFG 4.0, empty negative)",
        &out,
        &r["cfg_latent"],
    );
}

#[test]
fn denoise_stops_when_the_callback_breaks() {
    let r = fixture("generation_ref.safetensors");
    let dev = Device::Cpu;
    let cfg = flux2::Config::from_file(&assets().join("flux2_tiny_diffusers/config.json")).unwrap();
    let model = flux2::load_transformer(
        &assets().join("flux2_tiny_bfl.safetensors"),
        Some(&cfg),
        DType::F32,
        &dev,
    )
    .unwrap();
    let latent = sampling::pack_latents(&r["noise"]).unwrap();
    let img_ids = sampling::image_ids(4, 4, &dev).unwrap();
    let txt = Tensor::zeros((1, 8, 96), DType::F32, &dev).unwrap();
    let txt_ids = sampling::text_ids(8, &dev).unwrap();
    let pos = TextCondition {
        txt: &txt,
        txt_ids: &txt_ids,
    };
    let err = sampling::denoise(
        &model,
        &latent,
        &img_ids,
        pos,
        None,
        &sampling::schedule(4, 16),
        |s, _| {
            if s.index == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, veetance_models::Error::Cancelled { after_step: 1 }),
        "{err}"
    );
}

#[test]
fn bf16_weights_stay_close_to_the_f32_reference() {
    let r = fixture("transformer_ref.safetensors");
    let model = flux2::load_transformer(
        &assets().join("flux2_tiny_bfl.safetensors"),
        None,
        DType::BF16,
        &Device::Cpu,
    )
    .unwrap();
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let v = model
        .forward(
            &bf(&r["img"]),
            &r["img_ids"],
            &bf(&r["txt"]),
            &r["txt_ids"],
            &r["t_0"],
        )
        .unwrap();
    let err = rel_err(&v, &r["velocity_0"]);
    println!("parity velocity bf16 weights vs f32 reference: rel err {err:.3e}");
    assert!(err < 3e-2, "{err}");
}

#[test]
fn a_comfyui_prefixed_bfl_file_loads_like_the_plain_one() {
    let tensors =
        candle_core::safetensors::load(assets().join("flux2_tiny_bfl.safetensors"), &Device::Cpu)
            .unwrap();
    let prefixed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (format!("model.diffusion_model.{k}"), v))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux-2-klein-tiny.safetensors");
    candle_core::safetensors::save(&prefixed, &path).unwrap();
    let model = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap();
    check_velocity(&model, "bfl with model.diffusion_model. prefix");
}
