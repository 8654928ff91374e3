//! Bad input gives a clear error naming the file, never a panic or an out-of-bounds read.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use veetance_models::qwen3::{self, TextEncoder, TextEncoderFiles};
use veetance_models::{flux2, vae, Error};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/parity")
}

fn tiny_transformer() -> PathBuf {
    assets().join("flux2_tiny_bfl.safetensors")
}

fn load_transformer(path: &Path) -> Result<flux2::Flux2Transformer, Error> {
    flux2::load_transformer(path, None, DType::F32, &Device::Cpu)
}

/// Splits a safetensors file into its JSON header and data section.
fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Loading `bytes` as a transformer fails with a safetensors error naming the file.
fn assert_rejected_as_invalid_file(bytes: &[u8], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "broken.safetensors", bytes);
    let err = load_transformer(&path).unwrap_err();
    let msg = err.to_string();
    println!("{what}: {msg}");
    assert!(matches!(err, Error::Safetensors { .. }), "{what}: {err:?}");
    assert!(msg.contains("broken.safetensors"), "{what}: {msg}");
}

#[test]
fn truncated_files_are_rejected_naming_the_file() {
    let bytes = std::fs::read(tiny_transformer()).unwrap();
    assert_rejected_as_invalid_file(&bytes[..bytes.len() / 2], "truncated in the data");
    assert_rejected_as_invalid_file(&bytes[..bytes.len() - 1], "one byte short");
    assert_rejected_as_invalid_file(&bytes[..100], "truncated in the header");
    assert_rejected_as_invalid_file(&bytes[..4], "shorter than the length field");
    assert_rejected_as_invalid_file(&[], "empty");
}

#[test]
fn corrupt_headers_are_rejected_naming_the_file() {
    let bytes = std::fs::read(tiny_transformer()).unwrap();
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_rejected_as_invalid_file(&huge, "header length beyond the file");
    let mut garbage = bytes.clone();
    for b in &mut garbage[8..40] {
        *b = b'#';
    }
    assert_rejected_as_invalid_file(&garbage, "header is not JSON");
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&[0; 16]);
    assert_rejected_as_invalid_file(&trailing, "bytes after the data");
}

#[test]
fn headers_that_lie_about_sizes_or_offsets_are_rejected() {
    let bytes = std::fs::read(tiny_transformer()).unwrap();
    let (header, data) = split(&bytes);

    let mut lie = header.clone();
    lie["img_in.weight"]["shape"] = serde_json::json!([64, 128]);
    assert_rejected_as_invalid_file(&join(&lie, &data), "shape larger than its bytes");

    let mut lie = header.clone();
    let end = data.len() as u64;
    let start = lie["img_in.weight"]["data_offsets"][0].as_u64().unwrap();
    lie["img_in.weight"]["data_offsets"] = serde_json::json!([start, end + 4096]);
    assert_rejected_as_invalid_file(&join(&lie, &data), "offsets past the end");

    let mut lie = header.clone();
    lie["img_in.weight"]["data_offsets"] = serde_json::json!([u64::MAX - 8, u64::MAX]);
    assert_rejected_as_invalid_file(&join(&lie, &data), "offsets near u64::MAX");

    let mut lie = header;
    lie["img_in.weight"]["dtype"] = serde_json::json!("F64");
    assert_rejected_as_invalid_file(&join(&lie, &data), "dtype with another size");
}

#[test]
fn a_missing_tensor_is_named() {
    let mut tensors = candle_core::safetensors::load(tiny_transformer(), &Device::Cpu).unwrap();
    tensors.remove("single_blocks.1.linear2.weight");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incomplete.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_transformer(&path).unwrap_err();
    println!("{err}");
    match &err {
        Error::MissingTensor { name, files } => {
            assert_eq!(name, "single_blocks.1.linear2.weight");
            assert!(files.contains("incomplete.safetensors"));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes_and_the_file() {
    // The tiny checkpoint read with the real klein-4B configuration.
    let err = flux2::load_transformer(
        &tiny_transformer(),
        Some(&flux2::Config::klein_4b()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    match &err {
        Error::ShapeMismatch {
            name,
            path,
            expected,
            found,
        } => {
            assert_eq!(name, "double_blocks.0.img_attn.qkv.weight");
            assert_eq!(expected, &[9216, 3072]);
            assert_eq!(found, &[96, 32]);
            assert!(path.ends_with("flux2_tiny_bfl.safetensors"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(msg.contains("[9216, 3072]") && msg.contains("[96, 32]"));
}

#[test]
fn checkpoints_of_other_models_are_recognised_as_such() {
    let err = load_transformer(&assets().join("vae_tiny_bfl.safetensors")).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::WrongModel { found, .. } if found.contains("VAE")),
        "{err:?}"
    );
    assert!(err.to_string().contains("vae_tiny_bfl.safetensors"));

    let err = load_transformer(&assets().join("qwen3_tiny.safetensors")).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::WrongModel { found, .. } if found.contains("language model")),
        "{err:?}"
    );

    let err = vae::load_vae(
        &tiny_transformer(),
        None,
        vae::Parts::Decoder,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::WrongModel { found, .. } if found.contains("FLUX.2 transformer")),
        "{err:?}"
    );

    let files = TextEncoderFiles {
        weights: tiny_transformer(),
        tokenizer: Some(assets().join("tokenizer.json")),
        config: Some(assets().join("qwen3_tiny_config.json")),
    };
    let err =
        TextEncoder::load(&files, Some(&tiny_preset()), DType::F32, &Device::Cpu).unwrap_err();
    println!("{err}");
    assert!(matches!(&err, Error::WrongModel { .. }), "{err:?}");
}

fn tiny_text_encoder_files(tokenizer: PathBuf) -> TextEncoderFiles {
    TextEncoderFiles {
        weights: assets().join("qwen3_tiny.safetensors"),
        tokenizer: Some(tokenizer),
        config: Some(assets().join("qwen3_tiny_config.json")),
    }
}

fn tiny_preset() -> qwen3::Config {
    qwen3::Config {
        output_layers: vec![1, 2, 3],
        max_length: 48,
        ..qwen3::Config::qwen3_4b()
    }
}

#[test]
fn a_missing_or_corrupt_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokenizer.json");
    let err = TextEncoder::load(
        &tiny_text_encoder_files(missing),
        Some(&tiny_preset()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::Tokenizer { path, .. } if path.ends_with("tokenizer.json")),
        "{err:?}"
    );

    let corrupt = write(&dir, "corrupt.json", b"{\"model\": 42");
    let err = TextEncoder::load(
        &tiny_text_encoder_files(corrupt),
        Some(&tiny_preset()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::Tokenizer { path, .. } if path.ends_with("corrupt.json")),
        "{err:?}"
    );
}

#[test]
fn missing_files_and_bad_configs_are_named() {
    let err = load_transformer(Path::new("/nonexistent/flux-2-klein-4b.safetensors")).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("flux-2-klein-4b.safetensors"))
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "config.json", b"{\"num_layers\": \"five\"}");
    let err = flux2::Config::from_file(&bad).unwrap_err();
    println!("{err}");
    assert!(matches!(&err, Error::Config { path, .. } if path.ends_with("config.json")));

    let bad = write(&dir, "config.json", b"{\"axes_dims_rope\": [32, 32, 32]}");
    let err = flux2::Config::from_file(&bad).unwrap_err();
    println!("{err}");
    assert!(matches!(&err, Error::Config { .. }));

    let empty = tempfile::tempdir().unwrap();
    let err = load_transformer(empty.path()).unwrap_err();
    println!("{err}");
    assert!(matches!(&err, Error::Io { .. }));
}

#[test]
fn unsupported_dtypes_are_refused_at_load() {
    let err =
        flux2::load_transformer(&tiny_transformer(), None, DType::U8, &Device::Cpu).unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::InvalidInput(_)));
}
