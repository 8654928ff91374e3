//! The model files ComfyUI users have, against references computed by diffusers/transformers on
//! the same weights (fixtures from `.verify/files/make_fixtures.py`, in `assets/files/`):
//!
//! * scaled-fp8 FLUX.2 transformers: ComfyUI's `.comfy_quant` + `weight_scale` format, and the older
//!   `scaled_fp8` + `scale_weight` one with ComfyUI's `model.diffusion_model.` prefix;
//! * `*_fp8mixed` Qwen3 text encoders (some layers fp8, the rest bf16), described by `.comfy_quant`
//!   tensors or by the header's `_quantization_metadata`, configuration read from tensor shapes;
//! * a FLUX.2 VAE whose decoder is narrower than its encoder (`full_encoder_small_decoder`).
//!
//! The references use the dequantised weights (fp8 value * scale, in f32), so what is left is f32
//! rounding: our fp8 layers multiply by the scale after the matmul, diffusers before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use veetance_models::weights::{QuantSource, TensorIndex, WeightFiles};
use veetance_models::{flux2, qwen3, vae, Error};

const PROMPT: &str = "a red fox sitting in the snow at dawn";

fn files() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/files")
}

fn parity() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// `max |ours - reference| / max |reference|`.
fn max_rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    let ours = ours.to_dtype(DType::F64).unwrap();
    let reference = reference.to_dtype(DType::F64).unwrap();
    let diff = (&ours - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale
}

fn report(what: &str, err: f64, bound: f64) {
    println!("{what}: max rel err {err:.3e} (bound {bound:.0e})");
    assert!(err <= bound, "{what}: {err:.3e} > {bound:e}");
}

// ------------------------------------------------------------------------ fp8 transformers

#[test]
fn comfyui_fp8_transformers_match_diffusers_on_their_dequantised_weights() {
    let reference = load(&files().join("flux2_tiny_fp8_ref.safetensors"));
    let inputs = load(&parity().join("transformer_ref.safetensors"));
    for (file, source) in [
        (
            "flux2_tiny_fp8_comfy_quant.safetensors",
            QuantSource::ComfyQuantTensor,
        ),
        (
            "flux2_tiny_fp8_scaled.safetensors",
            QuantSource::ScaledFp8Marker,
        ),
    ] {
        let path = files().join(file);
        let weights = WeightFiles::open_path(&path).unwrap();
        // 2 double blocks x 8 linears, 2 single blocks x 2, 3 modulations.
        assert_eq!(weights.quantized_layer_count(), 23, "{file}");
        let name = if source == QuantSource::ScaledFp8Marker {
            "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"
        } else {
            "double_blocks.0.img_attn.qkv.weight"
        };
        let quant = weights.layer_quant(name).unwrap();
        assert_eq!(
            (quant.format.as_str(), quant.described_by),
            ("float8_e4m3fn", source)
        );

        let model = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap();
        for i in 0..3 {
            let v = model
                .forward(
                    &inputs["img"],
                    &inputs["img_ids"],
                    &inputs["txt"],
                    &inputs["txt_ids"],
                    &reference[&format!("t_{i}")],
                )
                .unwrap();
            let err = max_rel_err(&v, &reference[&format!("velocity_{i}")]);
            report(&format!("{file} velocity {i}"), err, 1e-5);
            // And it is the fp8 model, not the f32 one: the f32 velocity is ~1e-2 away.
            let from_f32 = max_rel_err(&v, &inputs[&format!("velocity_{i}")]);
            assert!(from_f32 > 1e-3, "{file}: {from_f32:.3e} from the f32 model");
        }
    }
}

/// Writes `tensors` with header metadata (the `safetensors` crate; candle's writer has none).
fn save_with_metadata(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: HashMap<String, String>,
) {
    let data: Vec<(&String, &Tensor)> = tensors.iter().collect();
    safetensors::serialize_to_file(data, Some(meta), path).unwrap();
}

#[test]
fn a_layer_in_a_format_we_cannot_read_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = load(&files().join("flux2_tiny_fp8_comfy_quant.safetensors"));
    let nvfp4 = br#"{"format": "nvfp4"}"#.to_vec();
    let n = nvfp4.len();
    tensors.insert(
        "single_blocks.1.linear2.comfy_quant".into(),
        Tensor::from_vec(nvfp4, n, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("nvfp4.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = flux2::load_transformer(&path, None, DType::F32, &Device::Cpu).unwrap_err();
    match &err {
        Error::UnsupportedQuantization { layer, format, .. } => {
            assert_eq!(
                (layer.as_str(), format.as_str()),
                ("single_blocks.1.linear2", "nvfp4")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nvfp4.safetensors"), "{err}");

    // Header metadata that is not ComfyUI's JSON names the file and the key.
    let bad = dir.path().join("bad-meta.safetensors");
    let meta = HashMap::from([("_quantization_metadata".to_string(), "{layers".to_string())]);
    save_with_metadata(
        &bad,
        &load(&files().join("qwen3_tiny_fp8mixed_meta.safetensors")),
        meta,
    );
    let err = WeightFiles::open_path(&bad).unwrap_err();
    assert!(
        matches!(err, Error::Safetensors { .. })
            && err.to_string().contains("_quantization_metadata"),
        "{err}"
    );
}

// ------------------------------------------------------------------------ fp8mixed text encoder

fn tiny_preset() -> qwen3::Config {
    qwen3::Config {
        output_layers: vec![1, 2, 3],
        max_length: 48,
        ..qwen3::Config::qwen3_4b()
    }
}

#[test]
fn comfyui_fp8mixed_text_encoders_match_transformers_on_their_dequantised_weights() {
    let reference = load(&files().join("qwen3_tiny_fp8mixed_ref.safetensors"));
    let f32_reference = load(&parity().join("text_encoder_ref.safetensors"));
    for (file, source) in [
        (
            "qwen3_tiny_fp8mixed.safetensors",
            QuantSource::ComfyQuantTensor,
        ),
        (
            "qwen3_tiny_fp8mixed_meta.safetensors",
            QuantSource::HeaderMetadata,
        ),
    ] {
        let path = files().join(file);
        let weights = WeightFiles::open_path(&path).unwrap();
        // Layers 0 and 2: 7 linears each; layers 1 and 3 are bf16.
        assert_eq!(weights.quantized_layer_count(), 14, "{file}");
        let q = weights
            .layer_quant("model.layers.2.mlp.down_proj.weight")
            .unwrap();
        assert_eq!(q.described_by, source);
        assert!(weights
            .layer_quant("model.layers.1.mlp.down_proj.weight")
            .is_none());

        // No config file: the configuration comes from the tensor shapes.
        let encoder = qwen3::TextEncoder::load(
            &qwen3::TextEncoderFiles {
                weights: path.clone(),
                tokenizer: Some(parity().join("tokenizer.json")),
                config: None,
            },
            Some(&tiny_preset()),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(encoder.config().hidden_size, 32);
        let (ids, _, _) = encoder.tokenize(PROMPT).unwrap();
        let want: Vec<u32> = reference["input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ids, want);
        let hidden = encoder.encode(PROMPT).unwrap().hidden;
        let err = max_rel_err(&hidden, &reference["prompt_embeds"]);
        report(&format!("{file} hidden states"), err, 1e-5);
        let from_f32 = max_rel_err(&hidden, &f32_reference["prompt_embeds"]);
        assert!(
            from_f32 > 1e-3,
            "{file}: {from_f32:.3e} from the f32 encoder"
        );
    }
}

// ------------------------------------------------------------------------ config from shapes

/// A tensor index with given shapes and no weights.
struct ShapesOnly {
    shapes: HashMap<String, Vec<usize>>,
    path: PathBuf,
}

impl TensorIndex for ShapesOnly {
    fn tensor_names(&self) -> Vec<&str> {
        self.shapes.keys().map(String::as_str).collect()
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }
    fn describe_files(&self) -> String {
        self.path.display().to_string()
    }
    fn first_path(&self) -> &Path {
        &self.path
    }
}

/// The tensor shapes of a real Qwen3 checkpoint of this size, as ComfyUI's `qwen_3_4b` /
/// `qwen_3_8b` files have them (HF names, 36 layers, 32 query and 8 key/value heads of 128).
fn qwen3_shapes(hidden: usize, mlp: usize, prefix: &str) -> ShapesOnly {
    let mut shapes = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>| shapes.insert(format!("{prefix}{name}"), shape);
    add("embed_tokens.weight".into(), vec![151_936, hidden]);
    add("norm.weight".into(), vec![hidden]);
    for i in 0..36 {
        let l = format!("layers.{i}.");
        add(format!("{l}self_attn.q_proj.weight"), vec![4096, hidden]);
        add(format!("{l}self_attn.k_proj.weight"), vec![1024, hidden]);
        add(format!("{l}self_attn.v_proj.weight"), vec![1024, hidden]);
        add(format!("{l}self_attn.o_proj.weight"), vec![hidden, 4096]);
        add(format!("{l}self_attn.q_norm.weight"), vec![128]);
        add(format!("{l}self_attn.k_norm.weight"), vec![128]);
        add(format!("{l}mlp.gate_proj.weight"), vec![mlp, hidden]);
        add(format!("{l}mlp.up_proj.weight"), vec![mlp, hidden]);
        add(format!("{l}mlp.down_proj.weight"), vec![hidden, mlp]);
        add(format!("{l}input_layernorm.weight"), vec![hidden]);
        add(format!("{l}post_attention_layernorm.weight"), vec![hidden]);
    }
    ShapesOnly {
        shapes,
        path: PathBuf::from("qwen_3.safetensors"),
    }
}

#[test]
fn text_encoder_config_is_read_from_tensor_shapes() {
    let four = qwen3::Config::from_tensors(&qwen3_shapes(2560, 9728, "model.")).unwrap();
    assert_eq!(four, qwen3::Config::qwen3_4b());
    let eight = qwen3::Config::from_tensors(&qwen3_shapes(4096, 12288, "")).unwrap();
    assert_eq!(eight, qwen3::Config::qwen3_8b());

    let tiny = WeightFiles::open_path(&parity().join("qwen3_tiny.safetensors")).unwrap();
    let from_shapes = qwen3::Config::from_tensors(&tiny).unwrap();
    let from_file = qwen3::Config::from_file(&parity().join("qwen3_tiny_config.json")).unwrap();
    assert_eq!(from_shapes, from_file);
    assert_eq!(from_shapes.num_key_value_heads, 2);
    assert_eq!(from_shapes.num_attention_heads, 4);

    // A missing tensor is named.
    let mut broken = qwen3_shapes(2560, 9728, "model.");
    broken
        .shapes
        .remove("model.layers.0.self_attn.q_norm.weight");
    let err = qwen3::Config::from_tensors(&broken).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.0.self_attn.q_norm.weight")
            && err.to_string().contains("qwen_3.safetensors"),
        "{err}"
    );
}

#[test]
fn the_builtin_tokenizer_is_refused_for_a_model_of_another_vocabulary() {
    let weights = parity().join("qwen3_tiny.safetensors");
    assert_eq!(qwen3::embedding_rows(&weights), Some(360));
    let err = qwen3::TextEncoder::load(
        &qwen3::TextEncoderFiles {
            weights: weights.clone(),
            tokenizer: None,
            config: None,
        },
        Some(&tiny_preset()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Tokenizer { .. })
            && msg.contains("built-in Qwen3 tokenizer has 151669 tokens")
            && msg.contains("360 rows")
            && msg.contains("qwen3_tiny.safetensors"),
        "{msg}"
    );
}

// ------------------------------------------------------------------------ small-decoder VAE

#[test]
fn small_decoder_vae_config_comes_from_shapes_and_decodes_like_diffusers() {
    let path = files().join("vae_small_decoder.safetensors");
    let reference = load(&files().join("vae_small_decoder_ref.safetensors"));
    let model = vae::load_vae(
        &path,
        None,
        vae::Parts::EncoderAndDecoder,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let cfg = model.config();
    assert_eq!(cfg.block_out_channels, vec![64]);
    assert_eq!(cfg.decoder_block_out_channels, Some(vec![32]));
    assert_eq!(cfg.decoder_channels(), &[32]);
    assert_eq!((cfg.layers_per_block, cfg.latent_channels), (1, 32));

    let image = model.decode(&reference["latent"], None).unwrap();
    let err = max_rel_err(&image, &reference["image"]);
    report("small-decoder VAE decode", err, 1e-4);

    // The decode estimate is the small decoder's, not the encoder-wide one's.
    let full_width = vae::Config {
        decoder_block_out_channels: None,
        ..cfg.clone()
    };
    let zeros = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let wide = vae::Flux2Vae::new(&full_width, vae::Parts::Decoder, zeros).unwrap();
    let (small, wide) = (model.decode_bytes(1, 64, 64), wide.decode_bytes(1, 64, 64));
    assert!(small < wide, "{small} vs {wide}");

    // The standard tiny VAE: no decoder override.
    let tiny = WeightFiles::open_path(&parity().join("vae_tiny_bfl.safetensors")).unwrap();
    let cfg = vae::Config::from_tensors(&tiny).unwrap();
    assert_eq!(cfg.block_out_channels, vec![32, 32, 32]);
    assert_eq!(cfg.decoder_block_out_channels, None);
}
