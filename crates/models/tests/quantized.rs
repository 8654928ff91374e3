//! Quantized weights against the f32 model on the same weights: GGUF Q8_0 / Q4_K (ComfyUI-GGUF
//! naming for the transformer, llama.cpp naming for Qwen3) and fp8 e4m3.
//!
//! The GGUF files are written here, in a temporary folder, with candle's GGUF writer and the
//! policy ComfyUI-GGUF's converter follows: 1-D and small (<= 1024 elements) tensors F32,
//! `img_in`/`txt_in`/`time_in`/`final_layer` F16, rows that are not whole blocks F16, the rest in
//! the asked type. The parity fixture's layers are 32/48/96/128 wide, so Q4_K (blocks of 256) is
//! tested on seeded random models of width 256 built here.
//!
//! Relative error: `||ours - f32||_2 / ||f32||_2`. Run with `-- --nocapture` to see each number.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use veetance_models::flux2::{self, LinearFormat};
use veetance_models::gguf::{self, GgufFile};
use veetance_models::qlinear::WeightBuilder;
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::sampling;

const PROMPT: &str = "a red fox sitting in the snow at dawn";

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
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

fn report(what: &str, err: f64, bound: f64) {
    println!("quantized {what}: rel err {err:.3e} (bound {bound:.2e})");
    assert!(err < bound, "{what}: relative error {err:.3e} >= {bound:e}");
}

/// llama.cpp's choice for a language model, as a [`Policy`].
fn llama_cpp_type(_name: &str, shape: &[usize], qtype: GgmlDType) -> GgmlDType {
    gguf::llama_cpp_type(shape, qtype)
}

type Policy = fn(&str, &[usize], GgmlDType) -> GgmlDType;

/// Writes `tensors` (renamed by `rename`) to a GGUF file; returns how many were block-quantized.
fn write_gguf(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    rename: impl Fn(&str) -> String,
    qtype: GgmlDType,
    policy: Policy,
    metadata: &[(&str, gguf_file::Value)],
) -> usize {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut quantized = 0;
    let qtensors: Vec<(String, QTensor)> = names
        .into_iter()
        .map(|name| {
            let t = tensors[name].to_dtype(DType::F32).unwrap();
            let ty = policy(name, t.dims(), qtype);
            if ty == qtype {
                quantized += 1;
            }
            (rename(name), QTensor::quantize(&t, ty).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta, &refs).unwrap();
    quantized
}

fn seeded(seed: u64, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    let v = sampling::gaussian_noise_vec(seed, n);
    (Tensor::from_vec(v, shape, &Device::Cpu).unwrap() * scale).unwrap()
}

/// Seeded random weights for every tensor the model asks for: N(0, 1/fan_in) for matrices and
/// embeddings, 1 + N(0, 0.1^2) for norm scales.
fn random_weights(build: impl FnOnce(WeightBuilder)) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    build(WeightBuilder::from_var_builder(vb, LinearFormat::AsStored));
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let dims = data[name].as_tensor().dims().to_vec();
            let t = match dims.as_slice() {
                [d] => (seeded(1000 + i as u64, &[*d], 0.1) + 1.0).unwrap(),
                [_, _] if name.contains("embed") => seeded(1000 + i as u64, &dims, 1.0 / 16.0),
                [_, k] => seeded(1000 + i as u64, &dims, 1.0 / (*k as f64).sqrt()),
                _ => panic!("unexpected shape {dims:?} for {name}"),
            };
            (name.clone(), t)
        })
        .collect()
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

// ------------------------------------------------------------------------------- transformer

struct FluxInputs {
    img: Tensor,
    img_ids: Tensor,
    txt: Tensor,
    txt_ids: Tensor,
    t: Tensor,
}

fn fixture_inputs() -> FluxInputs {
    let r =
        candle_core::safetensors::load(assets().join("transformer_ref.safetensors"), &Device::Cpu)
            .unwrap();
    FluxInputs {
        img: r["img"].clone(),
        img_ids: r["img_ids"].clone(),
        txt: r["txt"].clone(),
        txt_ids: r["txt_ids"].clone(),
        t: r["t_1"].clone(),
    }
}

fn velocity(model: &flux2::Flux2Transformer, x: &FluxInputs) -> Tensor {
    model
        .forward(&x.img, &x.img_ids, &x.txt, &x.txt_ids, &x.t)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn load_flux(path: &Path, linears: LinearFormat) -> flux2::Flux2Transformer {
    flux2::load_transformer_with(path, None, DType::F32, &Device::Cpu, linears).unwrap()
}

fn parity_transformer() -> (PathBuf, HashMap<String, Tensor>) {
    let path = assets().join("flux2_tiny_bfl.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    (path, tensors)
}

#[test]
fn gguf_q8_0_transformer_in_comfyui_naming_stays_within_1e_2_of_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = parity_transformer();
    let x = fixture_inputs();
    let reference = velocity(&load_flux(&path, LinearFormat::AsStored), &x);

    let gguf = dir.path().join("flux2-tiny-Q8_0.gguf");
    let arch = gguf_file::Value::String("flux".into());
    let n = write_gguf(
        &gguf,
        &tensors,
        str::to_string,
        GgmlDType::Q8_0,
        gguf::comfy_flux_type,
        &[("general.architecture", arch.clone())],
    );
    assert!(n >= 10, "only {n} tensors were quantized");
    let err = rel_err(
        &velocity(&load_flux(&gguf, LinearFormat::AsStored), &x),
        &reference,
    );
    report("velocity, GGUF Q8_0 (parity fixture)", err, 1e-2);
    assert!(
        err > 0.0,
        "Q8_0 gave the f32 result exactly: nothing was quantized"
    );

    // ComfyUI checkpoints converted without stripping keep `model.diffusion_model.`.
    let prefixed = dir.path().join("flux2-tiny-prefixed-Q8_0.gguf");
    write_gguf(
        &prefixed,
        &tensors,
        |n| format!("model.diffusion_model.{n}"),
        GgmlDType::Q8_0,
        gguf::comfy_flux_type,
        &[("general.architecture", arch)],
    );
    let err_prefixed = rel_err(
        &velocity(&load_flux(&prefixed, LinearFormat::AsStored), &x),
        &reference,
    );
    assert!((err_prefixed - err).abs() < 1e-9, "{err_prefixed} vs {err}");
}

fn wide_flux_config() -> flux2::Config {
    flux2::Config {
        in_channels: 128,
        num_layers: 2,
        num_single_layers: 2,
        attention_head_dim: 128,
        num_attention_heads: 2,
        joint_attention_dim: 256,
        axes_dims_rope: vec![32; 4],
        ..flux2::Config::klein_4b()
    }
}

fn wide_inputs(cfg: &flux2::Config) -> FluxInputs {
    let (h, w, l_txt) = (4, 4, 8);
    let dev = Device::Cpu;
    FluxInputs {
        img: seeded(1, &[1, h * w, cfg.in_channels], 1.0),
        img_ids: sampling::image_ids(h, w, &dev).unwrap(),
        txt: seeded(2, &[1, l_txt, cfg.joint_attention_dim], 1.0),
        txt_ids: sampling::text_ids(l_txt, &dev).unwrap(),
        t: Tensor::new(&[0.7f32], &dev).unwrap(),
    }
}

#[test]
fn gguf_q4_k_and_q8_0_transformer_of_width_256_stay_within_measured_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = wide_flux_config();
    let tensors = random_weights(|vb| {
        flux2::Flux2Transformer::new(&cfg, vb).unwrap();
    });
    let f32_path = dir.path().join("wide.safetensors");
    save(&f32_path, &tensors);
    let x = wide_inputs(&cfg);
    let reference = velocity(&load_flux(&f32_path, LinearFormat::AsStored), &x);

    for (qtype, bound) in [(GgmlDType::Q8_0, 1e-2), (GgmlDType::Q4K, 8e-2)] {
        let gguf = dir.path().join(format!("wide-{qtype:?}.gguf"));
        let n = write_gguf(
            &gguf,
            &tensors,
            str::to_string,
            qtype,
            gguf::comfy_flux_type,
            &[],
        );
        // 2 x (2 x 4) double-block linears + 2 x 2 single-block + 3 modulations.
        assert_eq!(n, 23, "{qtype:?}: quantized tensors");
        let file = GgufFile::open(&gguf).unwrap();
        let ty = file.ggml_type("double_blocks.1.txt_mlp.2.weight").unwrap();
        assert_eq!(
            ty.name(),
            if qtype == GgmlDType::Q8_0 {
                "Q8_0"
            } else {
                "Q4_K"
            }
        );
        let err = rel_err(
            &velocity(&load_flux(&gguf, LinearFormat::AsStored), &x),
            &reference,
        );
        report(&format!("velocity, GGUF {qtype:?} (width 256)"), err, bound);
        assert!(
            err > 1e-5,
            "{qtype:?} gave the f32 result: nothing was quantized"
        );
    }

    let err = rel_err(
        &velocity(&load_flux(&f32_path, LinearFormat::Fp8E4M3), &x),
        &reference,
    );
    report("velocity, fp8 e4m3 at load (width 256)", err, 6e-2);
}

#[test]
fn fp8_e4m3_weights_converted_at_load_stay_close_to_f32() {
    let (path, _) = parity_transformer();
    let x = fixture_inputs();
    let reference = velocity(&load_flux(&path, LinearFormat::AsStored), &x);
    let err = rel_err(
        &velocity(&load_flux(&path, LinearFormat::Fp8E4M3), &x),
        &reference,
    );
    report("velocity, fp8 e4m3 at load (parity fixture)", err, 6e-2);
    assert!(err > 1e-5, "fp8 gave the f32 result: nothing was converted");
}

#[test]
fn comfyui_fp8_files_with_and_without_scale_weight_load_as_fp8() {
    let dir = tempfile::tempdir().unwrap();
    let (path, tensors) = parity_transformer();
    let x = fixture_inputs();
    let reference = velocity(&load_flux(&path, LinearFormat::AsStored), &x);

    // Scaled: ComfyUI's `scaled_fp8` files keep `<layer>.scale_weight` (one value per tensor) and
    // an empty `scaled_fp8` marker; unscaled: the weights cast to float8_e4m3fn as they are.
    for scaled in [true, false] {
        let mut out = HashMap::new();
        for (name, t) in &tensors {
            let is_linear = t.rank() == 2 && name.ends_with(".weight");
            if !is_linear {
                out.insert(name.clone(), t.clone());
                continue;
            }
            let amax = t
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = if scaled { amax / 448.0 } else { 1.0 };
            let q = (t / f64::from(scale))
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap();
            out.insert(name.clone(), q);
            if scaled {
                let layer = name.strip_suffix(".weight").unwrap();
                out.insert(
                    format!("{layer}.scale_weight"),
                    Tensor::new(&[scale], &Device::Cpu).unwrap(),
                );
            }
        }
        if scaled {
            out.insert(
                "scaled_fp8".into(),
                Tensor::zeros(0, DType::F8E4M3, &Device::Cpu).unwrap(),
            );
        }
        let file = dir.path().join(format!("fp8-scaled-{scaled}.safetensors"));
        save(&file, &out);
        let err = rel_err(
            &velocity(&load_flux(&file, LinearFormat::AsStored), &x),
            &reference,
        );
        let what = if scaled { "with" } else { "without" };
        report(
            &format!("velocity, ComfyUI fp8 file {what} scale_weight"),
            err,
            if scaled { 6e-2 } else { 1.5e-1 },
        );
        assert!(err > 1e-5);
    }
}

// ------------------------------------------------------------------------------ text encoder

fn tiny_preset() -> qwen3::Config {
    qwen3::Config {
        output_layers: vec![1, 2, 3],
        max_length: 48,
        ..qwen3::Config::from_file(&assets().join("qwen3_tiny_config.json")).unwrap()
    }
}

fn encode(weights: &Path, config: Option<PathBuf>, preset: &qwen3::Config) -> Tensor {
    let files = TextEncoderFiles {
        weights: weights.to_path_buf(),
        tokenizer: Some(assets().join("tokenizer.json")),
        config,
    };
    TextEncoder::load(&files, Some(preset), DType::F32, &Device::Cpu)
        .unwrap()
        .encode(PROMPT)
        .unwrap()
        .hidden
}

/// The same encoder with bf16 weights and activations: the rounding yardstick for the GGUF errors.
fn bf16_yardstick(
    weights: &Path,
    config: Option<PathBuf>,
    preset: &qwen3::Config,
    reference: &Tensor,
) -> f64 {
    let files = TextEncoderFiles {
        weights: weights.to_path_buf(),
        tokenizer: Some(assets().join("tokenizer.json")),
        config,
    };
    let hidden = TextEncoder::load(&files, Some(preset), DType::BF16, &Device::Cpu)
        .unwrap()
        .encode(PROMPT)
        .unwrap()
        .hidden;
    let err = rel_err(&hidden.to_dtype(DType::F32).unwrap(), reference);
    println!("quantized (yardstick) text encoder hidden states, bf16: rel err {err:.3e}");
    err
}

fn qwen3_metadata(cfg: &qwen3::Config) -> Vec<(&'static str, gguf_file::Value)> {
    use gguf_file::Value;
    let u = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture", Value::String("qwen3".into())),
        ("qwen3.block_count", u(cfg.num_hidden_layers)),
        ("qwen3.embedding_length", u(cfg.hidden_size)),
        ("qwen3.feed_forward_length", u(cfg.intermediate_size)),
        ("qwen3.attention.head_count", u(cfg.num_attention_heads)),
        ("qwen3.attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("qwen3.attention.key_length", u(cfg.head_dim())),
        (
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("qwen3.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
    ]
}

#[test]
fn gguf_q8_0_qwen3_in_llama_cpp_naming_stays_within_twice_the_bf16_error() {
    let dir = tempfile::tempdir().unwrap();
    let st = assets().join("qwen3_tiny.safetensors");
    let preset = tiny_preset();
    let config = Some(assets().join("qwen3_tiny_config.json"));
    let reference = encode(&st, config.clone(), &preset);
    let bf16 = bf16_yardstick(&st, config, &preset, &reference);

    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let gguf = dir.path().join("qwen3-tiny-Q8_0.gguf");
    let n = write_gguf(
        &gguf,
        &tensors,
        qwen3::llama_cpp_name,
        GgmlDType::Q8_0,
        llama_cpp_type,
        &qwen3_metadata(&preset),
    );
    assert!(n >= 16, "only {n} tensors were quantized");
    // No config.json: the configuration comes from the GGUF metadata.
    let err = rel_err(&encode(&gguf, None, &preset), &reference);
    // This random encoder amplifies rounding: bf16 alone is ~2e-2 from f32 (see the yardstick).
    report(
        "text encoder hidden states, GGUF Q8_0 (parity fixture)",
        err,
        2.0 * bf16,
    );
    assert!(err > 0.0);
}

#[test]
fn gguf_q4_k_and_q8_0_qwen3_of_width_256_stay_within_measured_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = qwen3::Config {
        hidden_size: 256,
        intermediate_size: 768,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: Some(128),
        ..tiny_preset()
    };
    let tensors = random_weights(|vb| {
        qwen3::Qwen3Encoder::new(&cfg, vb).unwrap();
    });
    let st = dir.path().join("wide-qwen3.safetensors");
    save(&st, &tensors);
    std::fs::write(
        dir.path().join("wide-qwen3.config.json"),
        format!(
            r#"{{"vocab_size": {}, "hidden_size": 256, "intermediate_size": 768,
               "num_hidden_layers": {}, "num_attention_heads": 2, "num_key_value_heads": 1,
               "head_dim": 128}}"#,
            cfg.vocab_size, cfg.num_hidden_layers
        ),
    )
    .unwrap();
    let config = Some(dir.path().join("wide-qwen3.config.json"));
    let reference = encode(&st, config.clone(), &cfg);
    bf16_yardstick(&st, config, &cfg, &reference);

    // Measured 3.9e-2 / 3.2e-1 with a bf16 yardstick of 1.7e-2: this random encoder amplifies
    // per-matmul error about 5x (Q8_0 ~0.8%, Q4_K ~6% per matmul, weights and activations).
    for (qtype, bound) in [(GgmlDType::Q8_0, 6e-2), (GgmlDType::Q4K, 4.5e-1)] {
        let gguf = dir.path().join(format!("wide-qwen3-{qtype:?}.gguf"));
        let n = write_gguf(
            &gguf,
            &tensors,
            qwen3::llama_cpp_name,
            qtype,
            llama_cpp_type,
            &qwen3_metadata(&cfg),
        );
        // 7 matrices in each of the 3 layers the encoder runs, and the embedding.
        assert_eq!(
            n,
            7 * cfg.layers_needed() + 1,
            "{qtype:?}: quantized tensors"
        );
        let err = rel_err(&encode(&gguf, None, &cfg), &reference);
        report(
            &format!("text encoder hidden states, GGUF {qtype:?} (width 256)"),
            err,
            bound,
        );
        assert!(err > 1e-5);
    }
}

#[test]
fn qwen3_tensor_names_map_onto_llama_cpp_names() {
    // llama.cpp's names for Qwen3 (gguf-py `MODEL_TENSORS[MODEL_ARCH.QWEN3]`), as ComfyUI-GGUF's
    // LLAMA_SD_MAP maps them back.
    let expected = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        (
            "model.layers.7.input_layernorm.weight",
            "blk.7.attn_norm.weight",
        ),
        (
            "model.layers.7.post_attention_layernorm.weight",
            "blk.7.ffn_norm.weight",
        ),
        (
            "model.layers.7.self_attn.q_proj.weight",
            "blk.7.attn_q.weight",
        ),
        (
            "model.layers.7.self_attn.k_proj.weight",
            "blk.7.attn_k.weight",
        ),
        (
            "model.layers.7.self_attn.v_proj.weight",
            "blk.7.attn_v.weight",
        ),
        (
            "model.layers.7.self_attn.o_proj.weight",
            "blk.7.attn_output.weight",
        ),
        (
            "model.layers.7.self_attn.q_norm.weight",
            "blk.7.attn_q_norm.weight",
        ),
        (
            "model.layers.7.self_attn.k_norm.weight",
            "blk.7.attn_k_norm.weight",
        ),
        (
            "model.layers.7.mlp.gate_proj.weight",
            "blk.7.ffn_gate.weight",
        ),
        ("model.layers.7.mlp.up_proj.weight", "blk.7.ffn_up.weight"),
        (
            "model.layers.7.mlp.down_proj.weight",
            "blk.7.ffn_down.weight",
        ),
    ];
    for (ours, llama) in expected {
        assert_eq!(qwen3::llama_cpp_name(ours), llama);
    }
}

// ------------------------------------------------------------------------------ bad files

fn q8_0_fixture_file(dir: &Path) -> PathBuf {
    let (_, tensors) = parity_transformer();
    let gguf = dir.join("flux2-tiny-Q8_0.gguf");
    write_gguf(
        &gguf,
        &tensors,
        str::to_string,
        GgmlDType::Q8_0,
        gguf::comfy_flux_type,
        &[],
    );
    gguf
}

#[test]
fn an_unsupported_gguf_type_is_reported_with_the_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = q8_0_fixture_file(dir.path());
    // Rewrite one tensor's type id to IQ4_XS (23), which candle cannot compute with.
    let mut bytes = std::fs::read(&gguf).unwrap();
    let name = b"double_blocks.0.img_attn.qkv.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor info present");
    let after_name = at + name.len();
    let n_dims = u32::from_le_bytes(bytes[after_name..after_name + 4].try_into().unwrap()) as usize;
    let type_at = after_name + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&23u32.to_le_bytes());
    std::fs::write(&gguf, &bytes).unwrap();

    let err = flux2::load_transformer(&gguf, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains("double_blocks.0.img_attn.qkv.weight"), "{err}");
    assert!(err.contains("IQ4_XS"), "{err}");
    assert!(err.contains("flux2-tiny-Q8_0.gguf"), "{err}");
}

#[test]
fn truncated_or_corrupt_gguf_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = q8_0_fixture_file(dir.path());
    let bytes = std::fs::read(&gguf).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated in the data", bytes[..bytes.len() - 100].to_vec()),
        ("truncated in the header", bytes[..200].to_vec()),
        ("magic only", bytes[..4].to_vec()),
        ("huge tensor count", {
            let mut b = bytes.clone();
            b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("version 1", {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&1u32.to_le_bytes());
            b
        }),
    ];
    for (what, content) in cases {
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, content).unwrap();
        let err = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        println!("{what}: {err}");
        assert!(err.contains("bad.gguf"), "{what}: {err}");
        assert!(err.contains("GGUF"), "{what}: {err}");
    }
}

#[test]
fn a_qwen3_gguf_given_as_the_diffusion_model_is_named_as_a_language_model() {
    let dir = tempfile::tempdir().unwrap();
    let st = assets().join("qwen3_tiny.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let gguf = dir.path().join("qwen3.gguf");
    write_gguf(
        &gguf,
        &tensors,
        qwen3::llama_cpp_name,
        GgmlDType::Q8_0,
        llama_cpp_type,
        &[],
    );
    let err = flux2::load_transformer(&gguf, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("language model"), "{err}");
}
