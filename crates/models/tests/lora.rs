//! LoRAs on the FLUX.2 transformer: parity with diffusers (PEFT layers, `set_adapters` strengths)
//! for each naming style and two LoRAs at once, the side path on fp8 and GGUF bases against the
//! merged result on the same base, and the errors for LoRAs that do not fit.
//!
//! Fixtures: assets/parity/lora/, made by .verify/parity/make_lora_fixtures.py (no Python here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use veetance_models::flux2::lora::{apply_loras, load_lora, Flux2Lora, PatchMode};
use veetance_models::flux2::{self, Flux2Transformer, LinearFormat};
use veetance_models::gguf;
use veetance_models::lora::NamingStyle;
use veetance_models::qlinear::QLinear;

const TOLERANCE: f64 = 1e-4;

fn parity() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
}

fn lora_path(style: &str) -> PathBuf {
    parity().join(format!("lora/lora_{style}.safetensors"))
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(parity().join("lora/velocity_ref.safetensors"), &Device::Cpu)
        .unwrap()
}

fn inputs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(parity().join("transformer_ref.safetensors"), &Device::Cpu)
        .unwrap()
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

fn base_model(linears: LinearFormat) -> Flux2Transformer {
    let path = parity().join("flux2_tiny_bfl.safetensors");
    flux2::load_transformer_with(&path, None, DType::F32, &Device::Cpu, linears).unwrap()
}

fn velocity(model: &Flux2Transformer, t: &Tensor) -> Tensor {
    let x = inputs();
    model
        .forward(&x["img"], &x["img_ids"], &x["txt"], &x["txt_ids"], t)
        .unwrap()
}

fn lora(style: &str, model: &Flux2Transformer) -> Flux2Lora {
    load_lora(&lora_path(style), model.config()).unwrap()
}

/// The worst relative error over the fixture's timesteps of `model` against `case`.
fn worst_err(model: &Flux2Transformer, case: &str) -> f64 {
    let r = reference();
    (0..2)
        .map(|i| {
            let v = velocity(model, &r[&format!("t_{i}")]);
            rel_err(&v, &r[&format!("{case}_velocity_{i}")])
        })
        .fold(0.0, f64::max)
}

fn check_case(case: &str, loras: &[(&str, f64)]) {
    let base = base_model(LinearFormat::AsStored);
    let files: Vec<Flux2Lora> = loras.iter().map(|(s, _)| lora(s, &base)).collect();
    let t = reference()["t_0"].clone();
    let before = velocity(&base, &t);
    let with: Vec<(&Flux2Lora, f64)> = files.iter().zip(loras).map(|(f, (_, s))| (f, *s)).collect();
    for mode in [PatchMode::Auto, PatchMode::SidePath] {
        let (patched, report) = apply_loras(&base, &with, mode).unwrap();
        match mode {
            PatchMode::Auto => assert_eq!(report.side_path, 0, "{report:?}"),
            PatchMode::SidePath => assert_eq!(report.merged, 0, "{report:?}"),
        }
        let err = worst_err(&patched, case);
        println!("parity LoRA {case} ({mode:?}, {report:?}): rel err {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "{case} {mode:?}: {err:.3e} > {TOLERANCE:e}"
        );
        // The test can fail: without the LoRA the velocity is far from the reference.
        let unpatched = worst_err(&base, case);
        assert!(
            unpatched > 0.1,
            "{case}: the LoRA changes too little ({unpatched})"
        );
    }
    // The base stays as loaded.
    assert_eq!(rel_err(&velocity(&base, &t), &before), 0.0);
}

#[test]
fn diffusers_named_lora_with_alpha_in_metadata_matches_diffusers() {
    let base = base_model(LinearFormat::AsStored);
    let l = lora("diffusers", &base);
    assert_eq!(l.style, NamingStyle::Diffusers);
    assert_eq!(l.modules, 14);
    // to_q and to_k land on one fused qkv; norm_out on the final adaLN (halves swapped).
    assert!(l.layers.contains_key("double_blocks.0.img_attn.qkv"));
    assert!(l.layers.contains_key("final_layer.adaLN_modulation.1"));
    assert_eq!(l.layers.len(), 13);
    check_case("diffusers", &[("diffusers", 0.8)]);
}

#[test]
fn kohya_named_lora_with_alpha_tensors_matches_diffusers() {
    let base = base_model(LinearFormat::AsStored);
    let l = lora("kohya", &base);
    assert_eq!(l.style, NamingStyle::Kohya);
    assert_eq!((l.modules, l.layers.len()), (10, 10));
    check_case("kohya", &[("kohya", 1.3)]);
}

#[test]
fn bfl_named_lora_on_modulations_matches_diffusers() {
    let base = base_model(LinearFormat::AsStored);
    let l = lora("bfl", &base);
    assert_eq!(l.style, NamingStyle::Bfl);
    assert_eq!((l.modules, l.layers.len()), (11, 11));
    check_case("bfl", &[("bfl", 0.6)]);
}

#[test]
fn two_loras_at_once_with_different_strengths_match_diffusers_set_adapters() {
    check_case("two", &[("kohya", 0.75), ("bfl", -0.5)]);
}

/// `model` with every fp8 or GGUF linear dequantized to a dense f32 weight: the same base values.
fn dequantized(model: &Flux2Transformer) -> Flux2Transformer {
    model
        .map_linears(&mut |_, layer| {
            Ok(match layer {
                QLinear::Fp8 { weight, scale, .. } => {
                    let mut w = weight.to_dtype(DType::F32)?;
                    if let Some(s) = scale {
                        let s = s.to_dtype(DType::F32)?;
                        w = if s.rank() == 0 {
                            w.broadcast_mul(&s)?
                        } else {
                            w.broadcast_mul(&s.unsqueeze(1)?)?
                        };
                    }
                    Some(QLinear::Dense(candle_nn::Linear::new(w, None)))
                }
                QLinear::Ggml(QMatMul::QTensor(q)) => Some(QLinear::Dense(candle_nn::Linear::new(
                    q.dequantize(&Device::Cpu)?,
                    None,
                ))),
                _ => None,
            })
        })
        .unwrap()
}

fn two_loras(base: &Flux2Transformer) -> (Flux2Lora, Flux2Lora) {
    (lora("diffusers", base), lora("kohya", base))
}

#[test]
fn fp8_base_gets_a_side_path_equal_to_merging_into_the_same_base() {
    let fp8 = base_model(LinearFormat::Fp8E4M3);
    let (a, b) = two_loras(&fp8);
    let loras = [(&a, 0.8), (&b, -0.6)];
    let (side, report) = apply_loras(&fp8, &loras, PatchMode::Auto).unwrap();
    assert_eq!(report.merged, 0, "{report:?}");
    // diffusers' 13 linears and kohya's 10 overlap on 15; fp8 everywhere, so no merge.
    assert_eq!(report.side_path, 15, "{report:?}");
    let dense = dequantized(&fp8);
    let (merged, merged_report) = apply_loras(&dense, &loras, PatchMode::Auto).unwrap();
    assert_eq!(merged_report.side_path, 0);
    let t = Tensor::new(&[0.7f32], &Device::Cpu).unwrap();
    let err = rel_err(&velocity(&side, &t), &velocity(&merged, &t));
    println!("fp8 side path vs merged on the same base: rel err {err:.3e} ({report:?})");
    assert!(err <= 1e-5, "{err:.3e}");
    let lora_effect = rel_err(&velocity(&fp8, &t), &velocity(&merged, &t));
    assert!(lora_effect > 0.1, "{lora_effect}");
}

#[test]
fn gguf_base_gets_a_side_path_close_to_merging_into_the_dequantized_base() {
    let dir = tempfile::tempdir().unwrap();
    let tensors =
        candle_core::safetensors::load(parity().join("flux2_tiny_bfl.safetensors"), &Device::Cpu)
            .unwrap();
    let path = dir.path().join("tiny-Q8_0.gguf");
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let q: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| {
            let t = &tensors[*n];
            let ty = gguf::comfy_flux_type(n, t.dims(), GgmlDType::Q8_0);
            ((*n).clone(), QTensor::quantize(t, ty).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let arch = gguf_file::Value::String("flux".into());
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &refs).unwrap();
    drop(file);

    let quant = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap();
    let (a, b) = two_loras(&quant);
    let loras = [(&a, 0.8), (&b, -0.6)];
    let (side, report) = apply_loras(&quant, &loras, PatchMode::Auto).unwrap();
    // ComfyUI-GGUF keeps the embedders and the final layer dense: those are merged.
    assert_eq!(report.merged + report.side_path, 15, "{report:?}");
    assert!(report.side_path >= 5, "{report:?}");
    let dense = dequantized(&quant);
    let (merged, _) = apply_loras(&dense, &loras, PatchMode::Auto).unwrap();
    let t = Tensor::new(&[0.7f32], &Device::Cpu).unwrap();
    // candle's CPU Q8_0 matmul quantizes the activations too: the bases themselves differ by that.
    let base_gap = rel_err(&velocity(&quant, &t), &velocity(&dense, &t));
    let err = rel_err(&velocity(&side, &t), &velocity(&merged, &t));
    println!("GGUF Q8_0 side path vs merged: rel err {err:.3e} (bases differ by {base_gap:.3e})");
    assert!(
        err <= 3.0 * base_gap.max(1e-4),
        "{err:.3e} vs {base_gap:.3e}"
    );
    let lora_effect = rel_err(&velocity(&quant, &t), &velocity(&side, &t));
    assert!(lora_effect > 0.1, "{lora_effect}");
}

fn write_lora(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

#[test]
fn loras_that_do_not_fit_are_refused_naming_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_model(LinearFormat::AsStored).config().clone();
    let message = |path: &Path| load_lora(path, &cfg).unwrap_err().to_string();

    let unknown = write_lora(
        dir.path(),
        "unknown.safetensors",
        &[
            (
                "transformer.transformer_blocks.7.attn.to_q.lora_A.weight",
                randn(&[2, 32]),
            ),
            (
                "transformer.transformer_blocks.7.attn.to_q.lora_B.weight",
                randn(&[32, 2]),
            ),
        ],
    );
    let m = message(&unknown);
    assert!(
        m.contains("unknown.safetensors") && m.contains("transformer_blocks.7.attn.to_q.lora_A"),
        "{m}"
    );

    let wrong_size = write_lora(
        dir.path(),
        "nine_b.safetensors",
        &[
            (
                "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight",
                randn(&[2, 64]),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight",
                randn(&[64, 2]),
            ),
        ],
    );
    let m = message(&wrong_size);
    assert!(
        m.contains("nine_b.safetensors") && m.contains("another size"),
        "{m}"
    );

    let dora = write_lora(
        dir.path(),
        "dora.safetensors",
        &[
            ("diffusion_model.img_in.lora_A.weight", randn(&[2, 128])),
            ("diffusion_model.img_in.lora_B.weight", randn(&[32, 2])),
            ("diffusion_model.img_in.dora_scale", randn(&[32, 1])),
        ],
    );
    let m = message(&dora);
    assert!(
        m.contains("diffusion_model.img_in.dora_scale") && m.contains("DoRA"),
        "{m}"
    );

    let half = write_lora(
        dir.path(),
        "half.safetensors",
        &[("diffusion_model.img_in.lora_A.weight", randn(&[2, 128]))],
    );
    assert!(message(&half).contains("lacks"), "{}", message(&half));

    // Text-encoder modules are skipped and listed, not errors.
    let with_te = write_lora(
        dir.path(),
        "with_te.safetensors",
        &[
            ("lora_unet_img_in.lora_down.weight", randn(&[2, 128])),
            ("lora_unet_img_in.lora_up.weight", randn(&[32, 2])),
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                randn(&[2, 8]),
            ),
        ],
    );
    let l = load_lora(&with_te, &cfg).unwrap();
    assert_eq!((l.layers.len(), l.skipped.len()), (1, 1));
}
